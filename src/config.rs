//! The settings of `pulsecheck run`: one value, built from the flags in one place
//! ([`Settings::from_args`]) or written directly (the demo, the tests).
//!
//! clap rejects what one flag can get wrong on its own; this module rejects what flags get wrong
//! together (a Lease grace not shorter than the status threshold, a probe timeout longer than
//! its interval) and turns the flag groups into the typed settings each part of pulsecheck
//! takes. Every error names the flags involved; the process exits 2 on it.
//! [`Settings::default`] is what `pulsecheck run` does without flags (a unit test holds the two
//! together).

use std::{net::SocketAddr, time::Duration};

use clap::Args;

use crate::{
    actuate::{ActionArgs, Actions},
    admin::AdminArgs,
    connect::ClientArgs,
    facts::{Scope, Selector, SelectorError},
    guard::{GuardArgs, GuardConfig},
    leader::{LeaderArgs, LeaderSettings},
    metrics::MetricsArgs,
    parse::{Contradiction, below, positive_duration},
    probe::{ProbeArgs, ProbeMode, ProbeSettings},
    verdict::{ThresholdArgs, Thresholds},
};

/// `pulsecheck run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub thresholds: ThresholdArgs,
    #[command(flatten)]
    pub tick: TickArgs,
    #[command(flatten)]
    pub guard: GuardArgs,
    #[command(flatten)]
    pub action: ActionArgs,
    #[command(flatten)]
    pub probe: ProbeArgs,
    #[command(flatten)]
    pub leader: LeaderArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
    #[command(flatten)]
    pub metrics: MetricsArgs,
}

/// The decision loop's own flags.
#[derive(Debug, Clone, Args)]
pub struct TickArgs {
    /// How often every node is judged.
    #[arg(long, env = "PULSECHECK_EVALUATION_INTERVAL", value_name = "DURATION", default_value = "5s", value_parser = positive_duration)]
    pub evaluation_interval: Duration,
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Two flags contradict each other.
    #[error(transparent)]
    Contradiction(#[from] Contradiction),
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

/// Everything `pulsecheck run` needs besides a client.
#[derive(Debug, Clone)]
pub struct Settings {
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
    /// The prober's settings.
    pub probe: ProbeSettings,
    /// Probe percentage beyond which pulsecheck assumes its own network is cut off.
    pub probe_partition_threshold: f64,
    /// Leader election.
    pub leader: LeaderSettings,
    /// The namespace whose node agent Leases pulsecheck watches: its own
    /// ([`crate::leader::own_namespace`]), whatever namespace the leader Lease is in; `None`
    /// without `--agent-evidence` (no agent watch, no agent evidence).
    pub agent_namespace: Option<String>,
    /// Admin server address (port 0 for any).
    pub admin_addr: SocketAddr,
    /// Which nodes get per-node metric series.
    pub per_node_metrics: crate::metrics::PerNodeMetrics,
}

impl Default for Settings {
    /// `pulsecheck run` without flags, except that leader election is off (there is no Pod to
    /// take the identity and namespace from).
    fn default() -> Self {
        let thresholds = Thresholds::default();
        Settings {
            guard: GuardConfig::default(),
            scope: Scope {
                taint_key: crate::names::TAINT_KEY.into(),
                problem_conditions: DEFAULT_PROBLEM_CONDITIONS.iter().map(|s| s.to_string()).collect(),
                ..Scope::default()
            },
            node_selector: String::new(),
            actions: Actions::default(),
            dry_run: false,
            evaluation_interval: Duration::from_secs(5),
            settle_after_blindness: thresholds.lease_grace,
            request_timeout: Duration::from_secs(10),
            probe: ProbeSettings::default(),
            probe_partition_threshold: 50.0,
            leader: LeaderSettings::disabled("pulsecheck"),
            agent_namespace: None,
            admin_addr: SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 8080)),
            per_node_metrics: crate::metrics::PerNodeMetrics::Unhealthy,
            thresholds,
        }
    }
}

/// `--problem-conditions`' default.
const DEFAULT_PROBLEM_CONDITIONS: &[&str] = &["ReadonlyFilesystem", "KernelDeadlock", "FilesystemCorruption"];

const ADDRESS_TYPES: &[&str] = &["InternalIP", "ExternalIP", "Hostname", "InternalDNS", "ExternalDNS"];

impl Settings {
    /// Probes every `interval`: results then expire after three intervals, so a hanging prober
    /// never leaves old evidence behind.
    pub fn probe_every(&mut self, interval: Duration) {
        self.probe.interval = interval;
        self.thresholds.probe_result_ttl = interval * 3;
    }

    /// The Lease grace; sight regained after blindness settles for as long.
    pub fn lease_grace(&mut self, grace: Duration) {
        self.thresholds.lease_grace = grace;
        self.settle_after_blindness = grace;
    }

    /// Validates `pulsecheck run`'s flags.
    pub fn from_args(args: &RunArgs) -> Result<Settings, Error> {
        let p = &args.probe;
        let mut thresholds = args.thresholds.thresholds()?;
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
        let actions = Actions::from_args(&args.action).ok_or(Error::NoAction)?;
        let selector = Selector::parse(&args.action.node_selector)?;
        thresholds.probe_failure_threshold = p.probe_failure_threshold;
        thresholds.probe_zombie_after = p.probe_zombie_after;
        let mut settings = Settings {
            guard: GuardConfig::from_args(&args.guard),
            scope: Scope { selector, taint_key: actions.taint_key.clone(), problem_conditions: args.thresholds.problem_conditions() },
            node_selector: args.action.node_selector.clone(),
            actions,
            dry_run: args.action.dry_run,
            evaluation_interval: args.tick.evaluation_interval,
            settle_after_blindness: thresholds.lease_grace,
            request_timeout: args.client.request_timeout,
            probe: ProbeSettings::from_args(p),
            probe_partition_threshold: p.probe_partition_threshold,
            leader: LeaderSettings::from_args(&args.leader),
            agent_namespace: args.thresholds.agent_evidence.then(crate::leader::own_namespace),
            admin_addr: args.admin.admin_addr,
            per_node_metrics: args.metrics.per_node_metrics,
            thresholds,
        };
        settings.probe_every(p.probe_interval);
        Ok(settings)
    }
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
        let c = Settings::from_args(&args(&[])).unwrap();
        assert_eq!(c.thresholds.status_stale_after, Duration::from_secs(600));
        assert!(c.actions.taint && !c.actions.cordon);
        assert_eq!(c.scope.problem_conditions.len(), 3);
    }

    #[test]
    fn settings_written_directly_default_to_what_the_flags_default_to() {
        // Only the variables of `run`'s own flags change what it parses (PULSECHECK_CACHE, say, is the
        // build cache of the tools, set by CI).
        use clap::CommandFactory;
        let cli = Cli::command();
        let run = cli.find_subcommand("run").unwrap();
        let flag_vars: Vec<String> = run.get_arguments().filter_map(|a| a.get_env()).map(|e| e.to_string_lossy().into_owned()).collect();
        let set: Vec<&String> = flag_vars.iter().filter(|v| std::env::var_os(v).is_some()).collect();
        assert!(set.is_empty(), "unset {set:?} to compare the flags' defaults with Settings::default()");
        let parsed = Settings::from_args(&args(&["--leader-elect=false", "--identity=pulsecheck"])).unwrap();
        let written = Settings::default();
        assert_eq!(parsed.thresholds, written.thresholds);
        assert_eq!(parsed.guard, written.guard);
        assert_eq!(parsed.scope.problem_conditions, written.scope.problem_conditions);
        assert_eq!(parsed.scope.taint_key, written.scope.taint_key);
        assert!(parsed.scope.selector.is_empty() && written.scope.selector.is_empty());
        assert_eq!(parsed.node_selector, written.node_selector);
        assert_eq!(parsed.actions, written.actions);
        assert_eq!(parsed.dry_run, written.dry_run);
        assert_eq!(parsed.evaluation_interval, written.evaluation_interval);
        assert_eq!(parsed.settle_after_blindness, written.settle_after_blindness);
        assert_eq!(parsed.request_timeout, written.request_timeout);
        assert_eq!(parsed.probe, written.probe);
        assert_eq!(parsed.probe_partition_threshold, written.probe_partition_threshold);
        assert_eq!(parsed.leader.enabled, written.leader.enabled);
        assert_eq!(parsed.leader.identity, written.leader.identity);
        assert_eq!(parsed.leader.name, written.leader.name);
        assert_eq!(parsed.leader.duration, written.leader.duration);
        assert_eq!(parsed.admin_addr, written.admin_addr);
        assert_eq!(parsed.per_node_metrics, written.per_node_metrics);
    }

    #[test]
    fn lease_grace_must_be_below_status_threshold() {
        let e = Settings::from_args(&args(&["--lease-grace", "10m"])).unwrap_err().to_string();
        assert!(e.contains("--lease-grace") && e.contains("--status-stale-after"), "{e}");
    }

    #[test]
    fn probe_timeout_must_be_below_interval() {
        let e = Settings::from_args(&args(&["--probe-timeout", "30s"])).unwrap_err().to_string();
        assert!(e.contains("--probe-timeout"), "{e}");
    }

    #[test]
    fn bad_selector_and_address_type_name_their_flag() {
        let e = Settings::from_args(&args(&["--node-selector", "a in (b)"])).unwrap_err().to_string();
        assert!(e.starts_with("--node-selector"), "{e}");
        let e = Settings::from_args(&args(&["--kubelet-preferred-address-types", "InternalIP,Bogus"])).unwrap_err().to_string();
        assert!(e.contains("--kubelet-preferred-address-types") && e.contains("Bogus"), "{e}");
    }

    #[test]
    fn missing_ca_file_names_the_flag() {
        let e = Settings::from_args(&args(&["--kubelet-certificate-authority", "/nonexistent/ca.pem"])).unwrap_err().to_string();
        assert!(e.contains("--kubelet-certificate-authority") && e.contains("/nonexistent/ca.pem"), "{e}");
    }
}
