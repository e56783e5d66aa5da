//! `pulsecheck check` (also `kubectl pulsecheck`): judge the nodes of the current cluster once,
//! for a person at a terminal or a script.
//!
//! It exists so that anyone with `kubectl` access can ask "which of my nodes claim Ready but are
//! dead?" without installing the controller, and get the same answer the controller would give:
//! it uses the same decision core ([`crate::verdict::evaluate`]) with the same threshold flags
//! and defaults as `pulsecheck run`.
//!
//! The one thing it cannot borrow from the controller is history. Two modes:
//! - **`--observe DURATION`** watches Nodes and Leases for that long and judges by *its own*
//!   clock, exactly like the controller: only changes of a node's timestamps count, so a node
//!   whose clock is skewed cannot look fresh. A heartbeat it never saw change counts as seen
//!   at the start of the observation (the controller's first-sight rule), so staleness shorter
//!   than the observation cannot be proven.
//! - **Without it**, it has one snapshot and no history: the observation times are the nodes'
//!   own timestamps (Ready `lastHeartbeatTime`, Lease `renewTime`) judged against the local
//!   clock. That is fast but trusts the node's clock; it says so on stderr every time.
//!
//! The command is three steps, one sub-module each, wired here: [`read`] the cluster (RBAC-aware,
//! read-only), judge it into a [`report`] (pure), [`render`](mod@render) the report. This module holds the
//! flags ([`CheckArgs`]) and the one place they become a [`CheckSettings`], so the steps take
//! typed settings and `check` can be run without a command line.
//!
//! It only reads (`get`/`list`/`watch` on nodes and on leases in kube-node-lease); it never writes
//! anything to the cluster. Exit codes: 0 every node healthy, excluded or not judged; 1 some node
//! is suspect, zombie or dead; 2 on any error (with the missing permission named).

pub mod read;
pub mod render;
pub mod report;

use std::{ffi::OsString, io::Write, path::Path, time::Duration};

use clap::ArgAction;
use k8s_openapi::jiff::Timestamp;

use crate::{
    Outcome,
    connect::ClientArgs,
    facts::Scope,
    names,
    parse::{Contradiction, positive_duration, taint_key},
    probe::ProbeMode,
    verdict::{ThresholdArgs, Thresholds},
};

pub use read::{KubeletProbe, probe_all};
pub use render::{OutputFormat, render, render_table};
pub use report::{Clock, NodeReport, ProbeResult, Report, build_report, compact, facts_from_snapshot};

/// Arguments of `pulsecheck check`.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub thresholds: ThresholdArgs,
    /// Judge only this node (exit 2 when there is no such node).
    #[arg(long, env = "PULSECHECK_CHECK_NODE", value_name = "NAME")]
    pub node: Option<String>,
    /// Output format: a table for people, json or yaml for scripts.
    #[arg(short = 'o', long, env = "PULSECHECK_OUTPUT", value_enum, default_value = "table")]
    pub output: OutputFormat,
    /// Watch Nodes and Leases this long and judge by pulsecheck's own clock, like the controller (immune to node clock skew).
    #[arg(long, env = "PULSECHECK_OBSERVE", value_name = "DURATION", value_parser = positive_duration)]
    pub observe: Option<Duration>,
    /// Probe each kubelet once; `--probe` alone uses apiserver-proxy (your kubeconfig's nodes/proxy access).
    #[arg(long, env = "PULSECHECK_CHECK_PROBE", value_enum, value_name = "MODE", default_value = "none", num_args = 0..=1, default_missing_value = "apiserver-proxy")]
    pub probe: ProbeMode,
    /// Timeout of one kubelet probe.
    #[arg(long, env = "PULSECHECK_PROBE_TIMEOUT", value_name = "DURATION", default_value = "5s", value_parser = positive_duration)]
    pub probe_timeout: Duration,
    /// Key of pulsecheck's taint (as configured for `run`), shown as TAINTED in json/yaml.
    #[arg(long, env = "PULSECHECK_TAINT_KEY", value_name = "KEY", default_value = names::TAINT_KEY, value_parser = taint_key)]
    pub taint_key: String,
    /// Print notes (clock trust, skewed timestamps) on stderr.
    #[arg(long, env = "PULSECHECK_CHECK_NOTES", value_name = "BOOL", default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub notes: bool,
}

/// Everything `check` needs besides a client: built from the flags by
/// [`CheckSettings::from_args`], or written directly.
#[derive(Debug, Clone)]
pub struct CheckSettings {
    /// The thresholds it judges with (`run`'s flags and rules; `run`'s probe defaults).
    pub thresholds: Thresholds,
    /// The taint key pulsecheck owns and the problem condition types (no node selector: `check`
    /// judges every node, or the one `node` names).
    pub scope: Scope,
    /// Judge only this node.
    pub node: Option<String>,
    /// Watch this long and judge by pulsecheck's own clock; `None` judges one snapshot.
    pub observe: Option<Duration>,
    /// Probe each kubelet once this way (`ProbeMode::None`: not at all).
    pub probe: ProbeMode,
    /// Timeout of one kubelet probe.
    pub probe_timeout: Duration,
    /// Timeout of every non-watch request.
    pub request_timeout: Duration,
    /// How the report is printed.
    pub output: OutputFormat,
    /// Print the notes on stderr.
    pub notes: bool,
}

impl CheckSettings {
    /// The settings the flags give; the one place where rules between flags are applied (the
    /// threshold rule `run` shares: [`ThresholdArgs::thresholds`]).
    pub fn from_args(args: &CheckArgs) -> Result<CheckSettings> {
        Ok(CheckSettings {
            thresholds: args.thresholds.thresholds()?,
            scope: Scope { taint_key: args.taint_key.clone(), problem_conditions: args.thresholds.problem_conditions(), ..Scope::default() },
            node: args.node.clone(),
            observe: args.observe,
            probe: args.probe,
            probe_timeout: args.probe_timeout,
            request_timeout: args.client.request_timeout,
            output: args.output,
            notes: args.notes,
        })
    }
}

/// What can stop `check` from giving an answer. Every one exits 2.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No client could be built from the kubeconfig.
    #[error(transparent)]
    Connect(#[from] crate::connect::Error),
    /// Two flags contradict each other.
    #[error(transparent)]
    Usage(#[from] Contradiction),
    /// The cluster could not be read (a missing permission is named).
    #[error(transparent)]
    Read(#[from] read::Error),
    /// The report could not be written.
    #[error(transparent)]
    Render(#[from] render::Error),
}

/// Result of this module's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The arguments `argv` with `check` inserted when the program was invoked as
/// `kubectl-pulsecheck` (a kubectl plugin: `ln -s $(which pulsecheck) ~/bin/kubectl-pulsecheck`),
/// so that `kubectl pulsecheck --node n1` runs `pulsecheck check --node n1`. Other names are
/// left alone, and so is an explicit `kubectl pulsecheck check …`.
pub fn argv_as_check(mut args: Vec<OsString>) -> Vec<OsString> {
    let as_plugin = args.first().and_then(|a| Path::new(a).file_name()).is_some_and(|name| name.to_string_lossy().ends_with("kubectl-pulsecheck"));
    if as_plugin && args.get(1).is_none_or(|a| a != "check") {
        args.insert(1, OsString::from("check"));
    }
    args
}

/// Runs `pulsecheck check`: prints the report on stdout and notes on stderr.
/// [`Outcome::Findings`] when some node is suspect, zombie or dead.
pub async fn run(args: CheckArgs) -> Result<Outcome> {
    let settings = CheckSettings::from_args(&args)?;
    let client = crate::connect::client(&args.client).await?;
    let report = check(client, &settings).await?;
    if settings.notes {
        for note in &report.notes {
            eprintln!("note: {note}");
        }
    }
    let text = render(&report, settings.output)?;
    let mut out = std::io::stdout().lock();
    // A closed pipe (`| head`) is not an error worth reporting.
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    Ok(if report.needs_attention() { Outcome::Findings } else { Outcome::Clean })
}

/// Reads the cluster (once, or for `--observe`), judges every node and builds the report.
pub async fn check(client: kube::Client, settings: &CheckSettings) -> Result<Report> {
    let th = &settings.thresholds;
    let prober = read::kubelet_prober(settings.probe, settings.probe_timeout, &client)?;
    let reader = read::Reader::new(client, settings.request_timeout);
    let node = settings.node.as_deref();
    let mut notes = Vec::new();
    let (mut facts, clock, lower_bounds) = match settings.observe {
        Some(duration) => {
            reader.preflight(node).await?;
            notes.extend(report::short_observation_note(duration, th.status_stale_after));
            let observation = reader.observe(node, &settings.scope, duration).await?;
            (observation.facts, Clock::Observed, Some(observation.leases_synced_at))
        }
        None => {
            let (nodes, leases) = reader.snapshot(node).await?;
            notes.push(report::node_timestamps_note(th.status_stale_after));
            (facts_from_snapshot(&nodes, &leases, &settings.scope, Timestamp::now()), Clock::NodeTimestamps, None)
        }
    };
    if let Some((probe, fallback)) = &prober {
        notes.extend(fallback.clone());
        probe_all(&mut facts, probe, read::PROBE_CONCURRENCY).await;
    }
    let now = Timestamp::now();
    let mut report = build_report(now, &facts, th, clock, lower_bounds);
    report.observed_seconds = settings.observe.map(|d| d.as_secs());
    notes.extend(report::skew_notes(&report));
    report.notes = notes;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn args(extra: &[&str]) -> CheckArgs {
        let mut argv = vec!["pulsecheck", "check"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Check(a) => *a,
            _ => unreachable!(),
        }
    }

    fn thresholds(args: &CheckArgs) -> Result<Thresholds> {
        CheckSettings::from_args(args).map(|s| s.thresholds)
    }

    #[test]
    fn thresholds_and_their_defaults_are_those_of_run() {
        let run = match Cli::try_parse_from(["pulsecheck", "run"]).unwrap().command {
            Command::Run(a) => crate::config::Settings::from_args(&a).unwrap(),
            _ => unreachable!(),
        };
        assert_eq!(thresholds(&args(&[])).unwrap(), run.thresholds);
        let fast = thresholds(&args(&["--status-stale-after=6s", "--lease-grace=2s"])).unwrap();
        assert_eq!(fast.status_stale_after, Duration::from_secs(6));
        let e = thresholds(&args(&["--status-stale-after=6s"])).unwrap_err().to_string();
        assert!(e.contains("--lease-grace") && e.contains("--status-stale-after"), "{e}");
    }

    #[test]
    fn settings_carry_every_flag_and_the_scope_of_run() {
        let run = match Cli::try_parse_from(["pulsecheck", "run"]).unwrap().command {
            Command::Run(a) => crate::config::Settings::from_args(&a).unwrap(),
            _ => unreachable!(),
        };
        let plain = CheckSettings::from_args(&args(&[])).unwrap();
        assert_eq!((&plain.scope.taint_key, &plain.scope.problem_conditions), (&run.scope.taint_key, &run.scope.problem_conditions));
        assert_eq!((plain.node, plain.observe, plain.probe, plain.output, plain.notes), (None, None, ProbeMode::None, OutputFormat::Table, true));
        assert_eq!((plain.probe_timeout, plain.request_timeout), (Duration::from_secs(5), run.request_timeout));
        let s = CheckSettings::from_args(&args(&[
            "--node=n1",
            "--observe=90s",
            "--probe=tcp",
            "--probe-timeout=2s",
            "--request-timeout=3s",
            "-o",
            "json",
            "--notes=false",
            "--taint-key=example.com/dead",
            "--problem-conditions=A, ,B",
        ]))
        .unwrap();
        assert_eq!(
            (s.node.as_deref(), s.observe, s.probe, s.probe_timeout, s.request_timeout, s.output, s.notes),
            (Some("n1"), Some(Duration::from_secs(90)), ProbeMode::Tcp, Duration::from_secs(2), Duration::from_secs(3), OutputFormat::Json, false)
        );
        assert_eq!((s.scope.taint_key.as_str(), s.scope.problem_conditions), ("example.com/dead", vec!["A".to_string(), "B".to_string()]));
    }

    #[test]
    fn kubectl_plugin_name_runs_check() {
        let os = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(argv_as_check(os(&["/home/me/bin/kubectl-pulsecheck", "--node", "n1"])), os(&["/home/me/bin/kubectl-pulsecheck", "check", "--node", "n1"]));
        assert_eq!(argv_as_check(os(&["kubectl-pulsecheck"])), os(&["kubectl-pulsecheck", "check"]));
        assert_eq!(argv_as_check(os(&["kubectl-pulsecheck", "check", "-o", "json"])), os(&["kubectl-pulsecheck", "check", "-o", "json"]));
        assert_eq!(argv_as_check(os(&["/usr/bin/pulsecheck", "run"])), os(&["/usr/bin/pulsecheck", "run"]));
        assert_eq!(argv_as_check(vec![]), Vec::<OsString>::new());
        let cli = Cli::try_parse_from(argv_as_check(os(&["kubectl-pulsecheck", "--node", "n1", "-o", "yaml"]))).unwrap();
        let Command::Check(a) = cli.command else { panic!("not check") };
        assert_eq!((a.node.as_deref(), a.output), (Some("n1"), OutputFormat::Yaml));
    }

    #[test]
    fn probe_flag_alone_means_apiserver_proxy_and_is_off_by_default() {
        assert_eq!(args(&[]).probe, ProbeMode::None);
        assert_eq!(args(&["--probe"]).probe, ProbeMode::ApiserverProxy);
        assert_eq!(args(&["--probe=tcp"]).probe, ProbeMode::Tcp);
    }

    #[test]
    fn run_only_flags_are_not_flags_of_check() {
        use clap::CommandFactory;
        let cli = Cli::command();
        let check = cli.find_subcommand("check").unwrap();
        let longs: Vec<_> = check.get_arguments().filter_map(|a| a.get_long()).collect();
        for run_only in ["recover-after", "evaluation-interval", "max-unhealthy", "leader-elect"] {
            assert!(!longs.contains(&run_only), "check accepts --{run_only}");
        }
        assert!(longs.contains(&"lease-grace") && longs.contains(&"status-stale-after"), "check judges with run's thresholds");
    }
}
