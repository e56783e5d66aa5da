//! The command line: every subcommand and flag, each flag with a `PULSECHECK_*` environment
//! variable.
//!
//! Parsing is the first line of defence against bad input: a value clap can check alone (a
//! zero duration, a percentage over 100, an unknown effect) is rejected here with the flag's
//! name and exit code 2. Checks that need several flags at once live in [`crate::config`].
//! `docs/configuration.md` is checked against this file's `--help` output in CI.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

/// Finds Kubernetes nodes that claim Ready but are dead, and taints or cordons them safely.
#[derive(Debug, Parser)]
#[command(name = "pulsecheck", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// pulsecheck's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller: watch Nodes and Leases, judge every node, taint or cordon zombies.
    Run(Box<RunArgs>),
    /// Judge the nodes of the current cluster once and print a table (also `kubectl pulsecheck`).
    Check(Box<crate::check::CheckArgs>),
    /// A one-minute tour: a local control plane, a simulated fleet and pulsecheck at work.
    Demo(Box<crate::demo::DemoArgs>),
    /// Remove every taint, annotation and condition pulsecheck ever put on any Node.
    Cleanup(Box<CleanupArgs>),
    /// A real local control plane and a simulated kubelet fleet, for tests and experiments.
    #[command(subcommand)]
    Lab(crate::lab::args::LabCommand),
}

/// How to reach the cluster.
#[derive(Debug, Clone, Args, Default)]
pub struct ClientArgs {
    /// Kubeconfig file; without it, the in-cluster config, then $KUBECONFIG / ~/.kube/config.
    #[arg(long, env = "PULSECHECK_KUBECONFIG", value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use instead of the current one.
    #[arg(long, env = "PULSECHECK_CONTEXT", value_name = "NAME")]
    pub context: Option<String>,
    /// Timeout of every non-watch request to the apiserver.
    #[arg(long, env = "PULSECHECK_REQUEST_TIMEOUT", value_name = "DURATION", default_value = "10s", value_parser = positive_duration)]
    pub request_timeout: Duration,
}

/// What pulsecheck does to a zombie node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum)]
pub enum Action {
    /// Add the pulsecheck taint.
    Taint,
    /// Set `spec.unschedulable` (recorded so only our cordons are undone).
    Cordon,
}

/// Effect of the pulsecheck taint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TaintEffect {
    /// New pods are not scheduled on the node; running pods stay.
    #[value(name = "NoSchedule")]
    NoSchedule,
    /// Like NoSchedule, and pods without a matching toleration are evicted.
    #[value(name = "NoExecute")]
    NoExecute,
}

impl TaintEffect {
    /// The effect as Kubernetes spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            TaintEffect::NoSchedule => "NoSchedule",
            TaintEffect::NoExecute => "NoExecute",
        }
    }
}

/// How pulsecheck asks a kubelet whether it still works.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProbeMode {
    /// HTTPS GET /healthz on the kubelet port with the ServiceAccount token (RBAC: nodes/healthz).
    KubeletHealthz,
    /// A TCP connect and TLS handshake with the kubelet port; no credentials are sent.
    Tcp,
    /// GET /api/v1/nodes/NAME/proxy/healthz through the apiserver (RBAC: nodes/proxy, which also allows exec!).
    ApiserverProxy,
    /// No probes.
    None,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

/// Logging and the admin HTTP server.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// Address of the admin server (/metrics, /livez, /readyz).
    #[arg(long, env = "PULSECHECK_ADMIN_ADDR", value_name = "ADDR", default_value = "0.0.0.0:8080")]
    pub admin_addr: SocketAddr,
    /// Log line format.
    #[arg(long, env = "PULSECHECK_LOG_FORMAT", value_enum, default_value = "plain")]
    pub log_format: LogFormat,
    /// Log filter in tracing's env-filter syntax.
    #[arg(long, env = "PULSECHECK_LOG", value_name = "FILTER", default_value = "info")]
    pub log_filter: String,
    /// Export per-node series (verdict, heartbeat times, probe success); turn off in very large clusters.
    #[arg(long, env = "PULSECHECK_PER_NODE_METRICS", value_name = "BOOL", default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub per_node_metrics: bool,
}

/// Thresholds of the decision core; defaults follow kubelet and kube-controller-manager defaults.
#[derive(Debug, Clone, Args)]
pub struct ThresholdArgs {
    /// A Lease seen renewed (by pulsecheck's clock) within this long counts as alive (kube-controller-manager's node-monitor-grace-period).
    #[arg(long, env = "PULSECHECK_LEASE_GRACE", value_name = "DURATION", default_value = "50s", value_parser = positive_duration)]
    pub lease_grace: Duration,
    /// NodeStatus not seen refreshed for this long while the Lease is alive makes a node a zombie (kubelet reports every 5m with up to 50% jitter).
    #[arg(long, env = "PULSECHECK_STATUS_STALE_AFTER", value_name = "DURATION", default_value = "10m", value_parser = positive_duration)]
    pub status_stale_after: Duration,
    /// osImage that turned from a real value to "Unknown" and stayed so this long is conclusive on its own.
    #[arg(long, env = "PULSECHECK_OS_IMAGE_UNKNOWN_AFTER", value_name = "DURATION", default_value = "2m", value_parser = positive_duration)]
    pub os_image_unknown_after: Duration,
    /// Node condition types that, when True, are evidence of a broken node (as node-problem-detector sets them).
    #[arg(
        long,
        env = "PULSECHECK_PROBLEM_CONDITIONS",
        value_name = "TYPES",
        value_delimiter = ',',
        default_value = "ReadonlyFilesystem,KernelDeadlock,FilesystemCorruption"
    )]
    pub problem_conditions: Vec<String>,
    /// A zombie must be healthy continuously this long before pulsecheck releases it.
    #[arg(long, env = "PULSECHECK_RECOVER_AFTER", value_name = "DURATION", default_value = "2m", value_parser = positive_duration)]
    pub recover_after: Duration,
    /// How often every node is judged.
    #[arg(long, env = "PULSECHECK_EVALUATION_INTERVAL", value_name = "DURATION", default_value = "5s", value_parser = positive_duration)]
    pub evaluation_interval: Duration,
}

/// Limits that keep pulsecheck from ever causing a remediation storm.
#[derive(Debug, Clone, Args)]
pub struct GuardArgs {
    /// At most this percentage of eligible nodes (at least one) is remediated at once; beyond it the circuit opens.
    #[arg(long, env = "PULSECHECK_MAX_UNHEALTHY", value_name = "PERCENT", default_value = "20", value_parser = percentage)]
    pub max_unhealthy: f64,
    /// At most this many new remediations start per minute.
    #[arg(long, env = "PULSECHECK_MAX_REMEDIATIONS_PER_MINUTE", value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_remediations_per_minute: u32,
    /// Also remediate Dead nodes (Lease and status both stale), which kube-controller-manager already taints.
    #[arg(long, env = "PULSECHECK_ACT_ON_DEAD", value_name = "BOOL", default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub act_on_dead: bool,
    /// Decide and report everything, write nothing to any Node.
    #[arg(long, env = "PULSECHECK_DRY_RUN", value_name = "BOOL", default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub dry_run: bool,
}

/// Which nodes pulsecheck looks after and what it does to zombies.
#[derive(Debug, Clone, Args)]
pub struct ActionArgs {
    /// Only nodes matching this label selector are eligible (the rest are Excluded).
    #[arg(long, env = "PULSECHECK_NODE_SELECTOR", value_name = "SELECTOR", default_value = "")]
    pub node_selector: String,
    /// What to do to a zombie: taint, cordon, or both (comma-separated).
    #[arg(long, env = "PULSECHECK_ACTION", value_enum, value_delimiter = ',', default_value = "taint")]
    pub action: Vec<Action>,
    /// Key of the taint pulsecheck adds.
    #[arg(long, env = "PULSECHECK_TAINT_KEY", value_name = "KEY", default_value = crate::names::TAINT_KEY, value_parser = taint_key)]
    pub taint_key: String,
    /// Effect of the taint.
    #[arg(long, env = "PULSECHECK_TAINT_EFFECT", value_enum, default_value = "NoSchedule")]
    pub taint_effect: TaintEffect,
}

/// Leader election, so that two replicas never act at once.
#[derive(Debug, Clone, Args)]
pub struct LeaderArgs {
    /// Take a coordination.k8s.io Lease before acting.
    #[arg(long, env = "PULSECHECK_LEADER_ELECT", value_name = "BOOL", default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub leader_elect: bool,
    /// Namespace of the leader Lease (defaults to the pod's namespace, else "pulsecheck").
    #[arg(long, env = "PULSECHECK_LEADER_ELECTION_NAMESPACE", value_name = "NAMESPACE")]
    pub leader_election_namespace: Option<String>,
    /// Name of the leader Lease.
    #[arg(long, env = "PULSECHECK_LEADER_ELECTION_NAME", value_name = "NAME", default_value = "pulsecheck")]
    pub leader_election_name: String,
    /// How long a leader's claim lasts without renewal.
    #[arg(long, env = "PULSECHECK_LEADER_ELECTION_LEASE_DURATION", value_name = "DURATION", default_value = "15s", value_parser = positive_duration)]
    pub leader_election_lease_duration: Duration,
    /// Identity in the leader Lease (defaults to the pod name, else the host name).
    #[arg(long, env = "PULSECHECK_IDENTITY", value_name = "NAME")]
    pub identity: Option<String>,
}

/// Kubelet probes: faster, independent evidence.
#[derive(Debug, Clone, Args)]
pub struct ProbeArgs {
    /// How to probe kubelets.
    #[arg(long = "probe", env = "PULSECHECK_PROBE", value_enum, default_value = "kubelet-healthz")]
    pub probe: ProbeMode,
    /// How often each node with a live Lease is probed (with jitter).
    #[arg(long, env = "PULSECHECK_PROBE_INTERVAL", value_name = "DURATION", default_value = "30s", value_parser = positive_duration)]
    pub probe_interval: Duration,
    /// Timeout of one probe.
    #[arg(long, env = "PULSECHECK_PROBE_TIMEOUT", value_name = "DURATION", default_value = "5s", value_parser = positive_duration)]
    pub probe_timeout: Duration,
    /// At most this many probes in flight.
    #[arg(long, env = "PULSECHECK_PROBE_CONCURRENCY", value_name = "N", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub probe_concurrency: u32,
    /// Consecutive failed probes (while the Lease is alive) that become evidence.
    #[arg(long, env = "PULSECHECK_PROBE_FAILURE_THRESHOLD", value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub probe_failure_threshold: u32,
    /// Probes failing this long make a node a zombie without other evidence.
    #[arg(long, env = "PULSECHECK_PROBE_ZOMBIE_AFTER", value_name = "DURATION", default_value = "3m", value_parser = positive_duration)]
    pub probe_zombie_after: Duration,
    /// When probes fail for more than this percentage of nodes with live Leases, pulsecheck assumes its own network is cut off.
    #[arg(long, env = "PULSECHECK_PROBE_PARTITION_THRESHOLD", value_name = "PERCENT", default_value = "50", value_parser = percentage)]
    pub probe_partition_threshold: f64,
    /// Order of node address types to probe.
    #[arg(
        long,
        env = "PULSECHECK_KUBELET_PREFERRED_ADDRESS_TYPES",
        value_name = "TYPES",
        value_delimiter = ',',
        default_value = "InternalIP,ExternalIP,Hostname"
    )]
    pub kubelet_preferred_address_types: Vec<String>,
    /// CA bundle that signs kubelet serving certificates; with it the token is sent over verified TLS.
    #[arg(long, env = "PULSECHECK_KUBELET_CERTIFICATE_AUTHORITY", value_name = "PATH")]
    pub kubelet_certificate_authority: Option<PathBuf>,
    /// Send the token to kubelets without verifying their certificates (the metrics-server precedent). Insecure.
    #[arg(long, env = "PULSECHECK_KUBELET_INSECURE_TLS", value_name = "BOOL", default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub kubelet_insecure_tls: bool,
    /// Bearer token file for kubelet-healthz probes, re-read on every probe (projected tokens rotate).
    #[arg(long, env = "PULSECHECK_TOKEN_FILE", value_name = "PATH", default_value = "/var/run/secrets/kubernetes.io/serviceaccount/token")]
    pub token_file: PathBuf,
}

/// `pulsecheck run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub thresholds: ThresholdArgs,
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
}

/// `pulsecheck cleanup`.
#[derive(Debug, Clone, Args)]
pub struct CleanupArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Key of the taint to remove (as configured for `run`).
    #[arg(long, env = "PULSECHECK_TAINT_KEY", value_name = "KEY", default_value = crate::names::TAINT_KEY, value_parser = taint_key)]
    pub taint_key: String,
    /// Say what would be removed, remove nothing.
    #[arg(long, env = "PULSECHECK_DRY_RUN", value_name = "BOOL", default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub dry_run: bool,
}

/// Parses a humantime duration ("90s", "10m", "1h30m") that must be greater than zero.
pub fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| format!("not a duration ({e}); write it like 90s, 10m or 1h30m"))?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

/// Parses a percentage between 0 and 100 (a trailing `%` is allowed).
pub fn percentage(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().trim_end_matches('%').parse().map_err(|_| "not a number; write a percentage like 20".to_string())?;
    if !(0.0..=100.0).contains(&v) || v.is_nan() {
        return Err("must be between 0 and 100".into());
    }
    Ok(v)
}

/// Parses a taint key: non-empty, optional DNS prefix, name of at most 63 characters.
pub fn taint_key(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.chars().last().is_some_and(|c| c.is_ascii_alphanumeric());
    let prefix_ok =
        prefix.is_none_or(|p| !p.is_empty() && p.len() <= 253 && p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.')));
    if !name_ok || !prefix_ok {
        return Err(format!("'{s}' is not a valid taint key (want [prefix/]name, name of at most 63 alphanumerics, '-', '_', '.')"));
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn zero_duration_names_the_flag() {
        let err = Cli::try_parse_from(["pulsecheck", "run", "--lease-grace", "0s"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let msg = err.to_string();
        assert!(msg.contains("--lease-grace"), "{msg}");
        assert!(msg.contains("greater than zero"), "{msg}");
    }

    #[test]
    fn percentage_out_of_range_names_the_flag() {
        let err = Cli::try_parse_from(["pulsecheck", "run", "--max-unhealthy", "120"]).unwrap_err();
        assert!(err.to_string().contains("--max-unhealthy"));
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn unknown_effect_and_action_are_rejected() {
        for args in [["--taint-effect", "PreferNoSchedule"], ["--action", "drain"]] {
            let err = Cli::try_parse_from(["pulsecheck", "run", args[0], args[1]]).unwrap_err();
            assert_eq!(err.exit_code(), 2);
            assert!(err.to_string().contains(args[0]), "{err}");
        }
    }

    #[test]
    fn empty_taint_key_is_rejected() {
        let err = Cli::try_parse_from(["pulsecheck", "run", "--taint-key", ""]).unwrap_err();
        assert!(err.to_string().contains("--taint-key"), "{err}");
    }

    #[test]
    fn action_list_parses_both() {
        let cli = Cli::try_parse_from(["pulsecheck", "run", "--action", "taint,cordon", "--leader-elect=false"]).unwrap();
        let Command::Run(args) = cli.command else { panic!("not run") };
        assert_eq!(args.action.action, vec![Action::Taint, Action::Cordon]);
        assert!(!args.leader.leader_elect);
    }

    #[test]
    fn unknown_subcommand_exits_2() {
        let err = Cli::try_parse_from(["pulsecheck", "frobnicate"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }
}
