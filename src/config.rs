//! Validated configuration of `pulsecheck run`.
//!
//! clap rejects what one flag can get wrong on its own; this module rejects what flags get wrong
//! together (a Lease grace not shorter than the status threshold, a probe timeout longer than
//! its interval) and turns the flags into the typed settings each part of pulsecheck takes.
//! Every error names the flags involved; `main` exits 2 on it.

use std::time::Duration;

use crate::{
    cli::{Action, ProbeMode, RunArgs, TaintEffect},
    facts::{Scope, Selector, SelectorError},
    guard::GuardConfig,
    verdict::Thresholds,
};

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Two flags contradict each other.
    #[error("{flag} ({value}) must be {relation} {other} ({other_value})")]
    Contradiction { flag: &'static str, value: String, relation: &'static str, other: &'static str, other_value: String },
    /// `--node-selector` does not parse.
    #[error("--node-selector: {0}")]
    Selector(#[from] SelectorError),
    /// `--action` is empty.
    #[error("--action: name at least one of taint, cordon")]
    NoAction,
    /// A file flag names something unreadable.
    #[error("{flag}: cannot read {path}: {source}")]
    File { flag: &'static str, path: String, source: std::io::Error },
    /// A list flag holds an unknown value.
    #[error("{flag}: unknown value '{value}' (expected one of {expected})")]
    UnknownValue { flag: &'static str, value: String, expected: &'static str },
}

/// What pulsecheck does to a zombie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actions {
    /// Add the taint.
    pub taint: bool,
    /// Cordon.
    pub cordon: bool,
    /// Taint key.
    pub taint_key: String,
    /// Taint effect.
    pub taint_effect: TaintEffect,
}

/// Validated settings of the controller.
#[derive(Debug, Clone)]
pub struct Config {
    /// Decision thresholds.
    pub thresholds: Thresholds,
    /// Fleet guard.
    pub guard: GuardConfig,
    /// Which nodes and which taint are ours.
    pub scope: Scope,
    /// The raw `--node-selector`, for list/watch calls.
    pub node_selector: String,
    /// What to do to zombies.
    pub actions: Actions,
    /// Write nothing to Nodes.
    pub dry_run: bool,
    /// How often the fleet is judged.
    pub evaluation_interval: Duration,
    /// How long sight must be back after blindness before new decisions.
    pub settle_after_blindness: Duration,
    /// Timeout of each non-watch request.
    pub request_timeout: Duration,
    /// Probe mode and limits.
    pub probe: ProbeMode,
    /// Probe percentage beyond which pulsecheck assumes its own network is cut off.
    pub probe_partition_threshold: f64,
}

const ADDRESS_TYPES: &[&str] = &["InternalIP", "ExternalIP", "Hostname", "InternalDNS", "ExternalDNS"];

impl Config {
    /// Validates `pulsecheck run`'s flags.
    pub fn from_args(args: &RunArgs) -> Result<Config, Error> {
        let th = &args.thresholds;
        let p = &args.probe;
        below(("--lease-grace", th.lease_grace), ("--status-stale-after", th.status_stale_after))?;
        below(("--probe-timeout", p.probe_timeout), ("--probe-interval", p.probe_interval))?;
        if p.probe != ProbeMode::None {
            below(("--probe-interval", p.probe_interval), ("--probe-zombie-after", p.probe_zombie_after))?;
        }
        for t in &p.kubelet_preferred_address_types {
            if !ADDRESS_TYPES.contains(&t.as_str()) {
                return Err(Error::UnknownValue {
                    flag: "--kubelet-preferred-address-types",
                    value: t.clone(),
                    expected: "InternalIP, ExternalIP, Hostname, InternalDNS, ExternalDNS",
                });
            }
        }
        if let Some(ca) = &p.kubelet_certificate_authority {
            std::fs::metadata(ca).map_err(|source| Error::File { flag: "--kubelet-certificate-authority", path: ca.display().to_string(), source })?;
        }
        if args.action.action.is_empty() {
            return Err(Error::NoAction);
        }
        let selector = Selector::parse(&args.action.node_selector)?;
        // Probe results expire after three intervals: a hanging prober never leaves old evidence behind.
        let probe_result_ttl = p.probe_interval * 3;
        Ok(Config {
            thresholds: Thresholds {
                lease_grace: th.lease_grace,
                status_stale_after: th.status_stale_after,
                os_image_unknown_after: th.os_image_unknown_after,
                probe_failure_threshold: p.probe_failure_threshold,
                probe_zombie_after: p.probe_zombie_after,
                probe_result_ttl,
            },
            guard: GuardConfig {
                max_unhealthy_percent: args.guard.max_unhealthy,
                max_per_minute: args.guard.max_remediations_per_minute,
                act_on_dead: args.guard.act_on_dead,
                recover_after: th.recover_after,
            },
            scope: Scope {
                selector,
                taint_key: args.action.taint_key.clone(),
                problem_conditions: th.problem_conditions.iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
            },
            node_selector: args.action.node_selector.clone(),
            actions: Actions {
                taint: args.action.action.contains(&Action::Taint),
                cordon: args.action.action.contains(&Action::Cordon),
                taint_key: args.action.taint_key.clone(),
                taint_effect: args.action.taint_effect,
            },
            dry_run: args.guard.dry_run,
            evaluation_interval: th.evaluation_interval,
            settle_after_blindness: th.lease_grace,
            request_timeout: args.client.request_timeout,
            probe: p.probe,
            probe_partition_threshold: p.probe_partition_threshold,
        })
    }
}

/// `Ok` when the first duration flag is strictly smaller than the second.
fn below((flag, value): (&'static str, Duration), (other, other_value): (&'static str, Duration)) -> Result<(), Error> {
    if value < other_value {
        return Ok(());
    }
    Err(Error::Contradiction { flag, value: show(value), relation: "smaller than", other, other_value: show(other_value) })
}

fn show(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn args(extra: &[&str]) -> RunArgs {
        let mut argv = vec!["pulsecheck", "run"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Run(a) => *a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::from_args(&args(&[])).unwrap();
        assert_eq!(c.thresholds.status_stale_after, Duration::from_secs(600));
        assert!(c.actions.taint && !c.actions.cordon);
        assert_eq!(c.scope.problem_conditions.len(), 3);
    }

    #[test]
    fn lease_grace_must_be_below_status_threshold() {
        let e = Config::from_args(&args(&["--lease-grace", "10m"])).unwrap_err().to_string();
        assert!(e.contains("--lease-grace") && e.contains("--status-stale-after"), "{e}");
    }

    #[test]
    fn probe_timeout_must_be_below_interval() {
        let e = Config::from_args(&args(&["--probe-timeout", "30s"])).unwrap_err().to_string();
        assert!(e.contains("--probe-timeout"), "{e}");
    }

    #[test]
    fn bad_selector_and_address_type_name_their_flag() {
        let e = Config::from_args(&args(&["--node-selector", "a in (b)"])).unwrap_err().to_string();
        assert!(e.starts_with("--node-selector"), "{e}");
        let e = Config::from_args(&args(&["--kubelet-preferred-address-types", "InternalIP,Bogus"])).unwrap_err().to_string();
        assert!(e.contains("--kubelet-preferred-address-types") && e.contains("Bogus"), "{e}");
    }

    #[test]
    fn missing_ca_file_names_the_flag() {
        let e = Config::from_args(&args(&["--kubelet-certificate-authority", "/nonexistent/ca.pem"])).unwrap_err().to_string();
        assert!(e.contains("--kubelet-certificate-authority") && e.contains("/nonexistent/ca.pem"), "{e}");
    }
}
