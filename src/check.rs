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
//! It only reads (`get`/`list`/`watch` on nodes and on leases in kube-node-lease); it never writes
//! anything to the cluster. Exit codes: 0 every node healthy, excluded or not judged; 1 some node
//! is suspect, zombie or dead; 2 on any error (with the missing permission named).

use std::{
    collections::{BTreeMap, HashSet},
    ffi::OsString,
    future::Future,
    io::Write,
    path::{Path, PathBuf},
    pin::Pin,
    time::Duration,
};

use clap::{ArgAction, ValueEnum};
use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::{
    Api,
    api::ListParams,
    runtime::{WatchStreamExt, watcher},
};
use serde::Serialize;

use crate::{
    Outcome,
    connect::ClientArgs,
    facts::{FleetFacts, ProbeOutcome, Scope, SlimLease, SlimNode},
    names,
    parse::{positive_duration, taint_key},
    probe::{ProbeMode, ProbeSettings, ProbeTarget, Prober},
    verdict::{self, Evidence, ThresholdArgs, Thresholds, Verdict},
};

/// Percentage of failing probes beyond which probe evidence is ignored (as `run`'s default).
const PROBE_PARTITION_THRESHOLD: f64 = 50.0;
/// Probes in flight at most with `--probe`.
const PROBE_CONCURRENCY: usize = 32;
/// Page size of the node and lease lists.
const PAGE_SIZE: u32 = 500;
/// Nodes named one by one in a note before "and N more".
const NOTE_NAMES: usize = 5;

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

/// How `check` prints its report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns, worst node first.
    Table,
    /// One JSON document.
    Json,
    /// One YAML document.
    Yaml,
}

/// What can stop `check` from giving an answer. Every one exits 2.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No client could be built from the kubeconfig.
    #[error(transparent)]
    Connect(#[from] crate::connect::Error),
    /// Two flags contradict each other.
    #[error("{0}")]
    Usage(String),
    /// The identity lacks a permission.
    #[error("cannot {action}: forbidden — the identity needs {needs}{}", detail.as_ref().map(|d| format!(" (apiserver: {d})")).unwrap_or_default())]
    Forbidden {
        /// What was attempted, e.g. "list leases in namespace kube-node-lease".
        action: String,
        /// The permission that is missing, e.g. "`list` on `leases` (coordination.k8s.io) there".
        needs: String,
        /// The apiserver's own message, naming the user.
        detail: Option<String>,
    },
    /// The credentials were rejected.
    #[error("cannot {action}: the apiserver rejected the credentials (401 Unauthorized); check the user of the kubeconfig context (--kubeconfig, --context)")]
    Unauthorized {
        /// What was attempted.
        action: String,
    },
    /// The apiserver could not be reached.
    #[error("cannot {action}: cannot reach the apiserver ({detail}); check --kubeconfig/--context and that the cluster is up")]
    Unreachable {
        /// What was attempted.
        action: String,
        /// Why, from the client.
        detail: String,
    },
    /// The apiserver did not answer in time.
    #[error("cannot {action}: no answer from the apiserver within {timeout} (--request-timeout)")]
    Timeout {
        /// What was attempted.
        action: String,
        /// The timeout.
        timeout: String,
    },
    /// Another apiserver error.
    #[error("cannot {action}: {code} {reason}: {message}")]
    Api {
        /// What was attempted.
        action: String,
        /// HTTP status.
        code: u16,
        /// The apiserver's reason.
        reason: String,
        /// The apiserver's message.
        message: String,
    },
    /// `--node` names a node that does not exist.
    #[error("node {0:?} not found in the cluster (--node)")]
    NodeNotFound(String),
    /// A watch never delivered its initial list during `--observe`.
    #[error("the {what} watch never finished its initial list during --observe{}", last_error.as_ref().map(|e| format!(" (last error: {e})")).unwrap_or_default())]
    NotSynced {
        /// "Node" or "Lease".
        what: &'static str,
        /// The last error the watch reported.
        last_error: Option<String>,
    },
    /// The kubelet prober cannot be set up.
    #[error(transparent)]
    Probe(#[from] crate::probe::Error),
    /// The report could not be serialized.
    #[error("cannot write the {format} report: {detail}")]
    Output {
        /// "json" or "yaml".
        format: &'static str,
        /// Why.
        detail: String,
    },
}

/// Result of this module's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where `check`'s verdicts take their time from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Clock {
    /// `--observe`: pulsecheck's own clock, changes seen during the observation.
    Observed,
    /// One snapshot: the nodes' own timestamps against the local clock.
    NodeTimestamps,
}

/// The result of one kubelet probe, as `check` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProbeResult {
    /// `ok`, `fail`, `timeout`, `denied` (401/403) or `n/a` (could not probe).
    pub result: &'static str,
    /// The error, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl ProbeResult {
    fn from_outcome(outcome: &ProbeOutcome) -> ProbeResult {
        let (result, detail) = match outcome {
            ProbeOutcome::Success => ("ok", None),
            ProbeOutcome::Failure(e) => ("fail", Some(e.clone())),
            ProbeOutcome::Timeout => ("timeout", None),
            ProbeOutcome::Unreachable(e) => ("unreachable", Some(e.clone())),
            ProbeOutcome::Untrusted(e) => ("untrusted", Some(e.clone())),
            ProbeOutcome::Unauthorized(e) => ("denied", Some(e.clone())),
            ProbeOutcome::NotProbed(e) => ("n/a", Some(e.clone())),
        };
        ProbeResult { result, detail }
    }
}

/// One node in the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeReport {
    /// Node name.
    pub name: String,
    /// `topology.kubernetes.io/zone`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// The Ready condition's status, as `kubectl get nodes` shows it.
    pub ready: String,
    /// The Ready condition's reason.
    pub ready_reason: String,
    /// Seconds since the Lease was renewed (by the clock of [`Report::clock`]); none without a Lease.
    pub lease_age_seconds: Option<i64>,
    /// The Lease was never seen renewed during `--observe`: its age is at least this.
    pub lease_age_is_lower_bound: bool,
    /// Seconds since NodeStatus was refreshed (Ready's lastHeartbeatTime).
    pub status_age_seconds: i64,
    /// NodeStatus was never seen refreshed during `--observe`: its age is at least this.
    pub status_age_is_lower_bound: bool,
    /// `status.nodeInfo.osImage`.
    pub os_image: String,
    /// The kubelet probe, with `--probe`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe: Option<ProbeResult>,
    /// pulsecheck's verdict.
    pub verdict: Verdict,
    /// The evidence behind it.
    pub evidence: Vec<Evidence>,
    /// The evidence as one sentence; empty for a healthy node.
    pub why: String,
    /// pulsecheck's taint is on the node.
    pub tainted: bool,
    /// pulsecheck cordoned the node (as recorded on it).
    pub cordoned_by_pulsecheck: bool,
}

/// Everything `check` found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Where the ages and verdicts take their time from.
    pub clock: Clock,
    /// How long it observed, with `--observe`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_seconds: Option<u64>,
    /// When the verdicts were made (local clock).
    pub evaluated_at: Timestamp,
    /// Nodes per verdict.
    pub summary: BTreeMap<Verdict, usize>,
    /// Every node, worst first.
    pub nodes: Vec<NodeReport>,
    /// Caveats a person should know (also printed on stderr).
    pub notes: Vec<String>,
}

impl Report {
    /// True when some node is suspect, zombie or dead (exit code 1).
    pub fn needs_attention(&self) -> bool {
        self.nodes.iter().any(|n| matches!(n.verdict, Verdict::Suspect | Verdict::Zombie | Verdict::Dead))
    }
}

/// Probes one kubelet; `check --probe` is wired to [`crate::probe`] through this.
pub type KubeletProbe = Box<dyn Fn(ProbeTarget) -> Pin<Box<dyn Future<Output = ProbeOutcome> + Send>> + Send + Sync>;

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
    let report = check(&args).await?;
    if args.notes {
        for note in &report.notes {
            eprintln!("note: {note}");
        }
    }
    let text = render(&report, args.output)?;
    let mut out = std::io::stdout().lock();
    // A closed pipe (`| head`) is not an error worth reporting.
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    Ok(if report.needs_attention() { Outcome::Findings } else { Outcome::Clean })
}

/// The thresholds `check` judges with: `run`'s threshold flags and rules, and `run`'s probe defaults.
pub fn thresholds(args: &ThresholdArgs) -> Result<Thresholds> {
    args.thresholds().map_err(|e| Error::Usage(e.to_string()))
}

/// Reads the cluster (once, or for `--observe`), judges every node and builds the report.
pub async fn check(args: &CheckArgs) -> Result<Report> {
    let th = thresholds(&args.thresholds)?;
    let client = crate::connect::client(&args.client).await?;
    let prober = kubelet_prober(args, &client)?;
    let scope = Scope { taint_key: args.taint_key.clone(), problem_conditions: args.thresholds.problem_conditions(), ..Scope::default() };
    let reader = Reader { client, timeout: args.client.request_timeout };
    let mut notes = Vec::new();
    let (mut facts, clock, lower_bounds) = match args.observe {
        Some(duration) => {
            reader.preflight(args.node.as_deref()).await?;
            if duration < th.status_stale_after {
                notes.push(format!(
                    "--observe {} is shorter than --status-stale-after {}: a stale NodeStatus cannot be proven in that time (observe longer, or lower --status-stale-after; a healthy kubelet reports every 5m ± 50%)",
                    humantime::format_duration(duration),
                    humantime::format_duration(th.status_stale_after)
                ));
            }
            let observation = observe(&reader, args.node.as_deref(), &scope, duration).await?;
            (observation.facts, Clock::Observed, Some(observation.leases_synced_at))
        }
        None => {
            let (nodes, leases) = reader.snapshot(args.node.as_deref()).await?;
            notes.push(format!(
                "without --observe these verdicts rest on the nodes' own timestamps (Ready lastHeartbeatTime, Lease renewTime) against this machine's clock; a node whose clock is skewed can look fresh while it is dead. Run with --observe {} to judge by pulsecheck's own clock, as the controller does.",
                humantime::format_duration(th.status_stale_after)
            ));
            (facts_from_snapshot(&nodes, &leases, &scope, Timestamp::now()), Clock::NodeTimestamps, None)
        }
    };
    if let Some((probe, fallback)) = &prober {
        notes.extend(fallback.clone());
        probe_all(&mut facts, probe, PROBE_CONCURRENCY).await;
    }
    let now = Timestamp::now();
    let mut report = build_report(now, &facts, &th, clock, lower_bounds);
    report.observed_seconds = args.observe.map(|d| d.as_secs());
    notes.extend(skew_notes(&report));
    report.notes = notes;
    Ok(report)
}

/// The kubelet prober for `--probe`, if asked for: the controller's own prober, probing once.
///
/// `check` runs as the person at the terminal, not as a ServiceAccount, so it has no token file
/// and no kubelet CA: `kubelet-healthz` falls back to `tcp` (a note says so), and
/// `apiserver-proxy` (what `--probe` alone means) uses the kubeconfig's own credentials.
fn kubelet_prober(args: &CheckArgs, client: &kube::Client) -> Result<Option<(KubeletProbe, Option<String>)>> {
    if args.probe == ProbeMode::None {
        return Ok(None);
    }
    let settings = ProbeSettings {
        mode: args.probe,
        timeout: args.probe_timeout,
        interval: args.probe_timeout,
        concurrency: PROBE_CONCURRENCY,
        preferred_address_types: ["InternalIP", "ExternalIP", "Hostname"].map(String::from).to_vec(),
        ca: None,
        insecure_tls: false,
        token_file: PathBuf::new(),
    };
    let prober = Prober::new(settings, client.clone())?;
    let note = prober.fallback_reason().map(str::to_string);
    let probe: KubeletProbe = Box::new(move |target| {
        let prober = prober.clone();
        Box::pin(async move { prober.probe(&target).await })
    });
    Ok(Some((probe, note)))
}

/// Probes every node once, at most `concurrency` at a time, and records the outcomes.
pub async fn probe_all(facts: &mut FleetFacts, probe: &KubeletProbe, concurrency: usize) {
    let targets: Vec<ProbeTarget> = facts.nodes.iter().map(|(n, f)| ProbeTarget { node: n.to_string(), endpoint: f.kubelet.clone() }).collect();
    let outcomes: Vec<(String, ProbeOutcome, Timestamp)> = futures::stream::iter(targets)
        .map(|t| {
            let node = t.node.clone();
            let outcome = probe(t);
            async move { (node, outcome.await, Timestamp::now()) }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    for (node, outcome, at) in outcomes {
        // One round: no earlier result to be separated from by a gap.
        facts.record_probe(&node, outcome, at, std::time::Duration::MAX);
    }
}

/// Facts from one snapshot, without history: every heartbeat counts as observed at the time the
/// node itself wrote into it (a missing timestamp counts as `now`). osImage "Unknown" then counts
/// from the node's last status report, a lower bound of how long it has been so.
pub fn facts_from_snapshot(nodes: &[SlimNode], leases: &[SlimLease], scope: &Scope, now: Timestamp) -> FleetFacts {
    let mut facts = FleetFacts::default();
    for node in nodes {
        let written = node.condition("Ready").and_then(|c| c.last_heartbeat_time.as_ref()).map_or(now, |t| t.0);
        facts.apply_node(node, scope, written);
    }
    for lease in leases {
        facts.apply_lease(lease, lease.renew_time().unwrap_or(now));
        // A snapshot takes the renewTime the kubelet wrote as the renewal itself (that is what
        // "rests on the nodes' own timestamps" means); there is nothing to wait for.
        if let Some(l) = lease.metadata.name.as_deref().and_then(|name| facts.leases.get_mut(name)) {
            l.renew.seen_changing = true;
        }
    }
    facts
}

/// Judges the facts at `now` and lays them out worst first (severity, then name).
/// `leases_synced_at` is given with `--observe`: a heartbeat not seen changing since then is a
/// lower bound.
pub fn build_report(now: Timestamp, facts: &FleetFacts, th: &Thresholds, clock: Clock, leases_synced_at: Option<Timestamp>) -> Report {
    let evaluation = verdict::evaluate(now, facts, th, PROBE_PARTITION_THRESHOLD);
    let mut nodes: Vec<NodeReport> = evaluation
        .assessments
        .iter()
        .filter_map(|(name, a)| {
            let n = facts.nodes.get(name)?;
            let lease = facts.leases.get(name);
            let why = if a.verdict == Verdict::Healthy { String::new() } else { a.explain() };
            Some(NodeReport {
                name: name.to_string(),
                zone: n.zone.clone(),
                ready: n.ready.as_str().to_string(),
                ready_reason: n.ready_reason.clone(),
                lease_age_seconds: lease.map(|l| now.duration_since(l.renew.observed_at).as_secs()),
                lease_age_is_lower_bound: matches!((lease, leases_synced_at), (Some(l), Some(at)) if l.renew.observed_at <= at),
                status_age_seconds: now.duration_since(n.status.observed_at).as_secs(),
                status_age_is_lower_bound: clock == Clock::Observed && !n.status.seen_changing,
                os_image: n.os_image.current.clone(),
                probe: facts.probes.get(name).and_then(|p| p.last.as_ref()).map(|(o, _)| ProbeResult::from_outcome(o)),
                verdict: a.verdict,
                evidence: a.evidence.clone(),
                why,
                tainted: n.has_our_taint,
                cordoned_by_pulsecheck: n.remediation.cordoned,
            })
        })
        .collect();
    nodes.sort_by(|a, b| a.verdict.severity().cmp(&b.verdict.severity()).then_with(|| a.name.cmp(&b.name)));
    let mut summary = BTreeMap::new();
    for n in &nodes {
        *summary.entry(n.verdict).or_insert(0) += 1;
    }
    Report { clock, observed_seconds: None, evaluated_at: now, summary, nodes, notes: Vec::new() }
}

/// Notes about nodes whose timestamps are ahead of the local clock (only meaningful when the
/// verdicts rest on them).
fn skew_notes(report: &Report) -> Vec<String> {
    if report.clock != Clock::NodeTimestamps {
        return Vec::new();
    }
    let ahead: Vec<(&str, i64)> = report
        .nodes
        .iter()
        .filter_map(|n| {
            let most = n.status_age_seconds.min(n.lease_age_seconds.unwrap_or(0));
            (most < 0).then_some((n.name.as_str(), -most))
        })
        .collect();
    if ahead.is_empty() {
        return Vec::new();
    }
    let mut named: Vec<String> = ahead.iter().take(NOTE_NAMES).map(|(n, s)| format!("{n} (by {})", compact(*s))).collect();
    if ahead.len() > NOTE_NAMES {
        named.push(format!("and {} more", ahead.len() - NOTE_NAMES));
    }
    vec![format!(
        "timestamps ahead of this machine's clock (negative ages): {} — their clocks (or this one) are skewed, so their freshness above cannot be trusted; --observe judges them by pulsecheck's own clock",
        named.join(", ")
    )]
}

/// The report in the requested format.
pub fn render(report: &Report, format: OutputFormat) -> Result<String> {
    match format {
        OutputFormat::Table => Ok(render_table(report)),
        OutputFormat::Json => serde_json::to_string_pretty(report).map(|s| s + "\n").map_err(|e| Error::Output { format: "json", detail: e.to_string() }),
        OutputFormat::Yaml => serde_yaml_ng::to_string(report).map_err(|e| Error::Output { format: "yaml", detail: e.to_string() }),
    }
}

/// The table: NODE, READY, LEASE (age), STATUS (age), OS-IMAGE, PROBE, VERDICT, WHY.
pub fn render_table(report: &Report) -> String {
    if report.nodes.is_empty() {
        return "No nodes.\n".to_string();
    }
    let header = ["NODE", "READY", "LEASE", "STATUS", "OS-IMAGE", "PROBE", "VERDICT", "WHY"].map(String::from);
    let rows: Vec<[String; 8]> = report
        .nodes
        .iter()
        .map(|n| {
            [
                n.name.clone(),
                n.ready.clone(),
                n.lease_age_seconds.map_or("-".to_string(), |s| age_cell(s, n.lease_age_is_lower_bound)),
                age_cell(n.status_age_seconds, n.status_age_is_lower_bound),
                if n.os_image.is_empty() { "-".to_string() } else { n.os_image.clone() },
                n.probe.as_ref().map_or("-".to_string(), |p| p.result.to_string()),
                n.verdict.to_string(),
                n.why.clone(),
            ]
        })
        .collect();
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(widths[i] - cell.chars().count() + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// An age cell: `4s`, `11m2s`, `≥1m` for a lower bound, `-59m58s` for a timestamp in the future.
fn age_cell(seconds: i64, lower_bound: bool) -> String {
    if lower_bound { format!(">={}", compact(seconds)) } else { compact(seconds) }
}

/// Seconds as the two largest units: `4s`, `11m2s`, `3h5m`, `2d4h`; negative with a `-`.
pub fn compact(seconds: i64) -> String {
    let s = seconds.unsigned_abs();
    let (d, h, m, sec) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60, s % 60);
    let body = if d > 0 {
        format!("{d}d{h}h")
    } else if h > 0 {
        format!("{h}h{m}m")
    } else if m > 0 {
        format!("{m}m{sec}s")
    } else {
        format!("{sec}s")
    };
    if seconds < 0 { format!("-{body}") } else { body }
}

/// The object kinds `check` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Nodes,
    Leases,
}

/// One request, described the way an RBAC error must name it.
#[derive(Debug, Clone)]
struct Request {
    verb: &'static str,
    kind: Kind,
    name: Option<String>,
}

impl Request {
    fn new(verb: &'static str, kind: Kind, name: Option<&str>) -> Request {
        Request { verb, kind, name: name.map(str::to_string) }
    }

    /// "list leases in namespace kube-node-lease", "get node n1".
    fn action(&self) -> String {
        let what = match (self.kind, &self.name) {
            (Kind::Nodes, None) => "nodes".to_string(),
            (Kind::Nodes, Some(n)) => format!("node {n}"),
            (Kind::Leases, None) => format!("leases in namespace {}", names::NODE_LEASE_NAMESPACE),
            (Kind::Leases, Some(n)) => format!("lease {n} in namespace {}", names::NODE_LEASE_NAMESPACE),
        };
        format!("{} {what}", self.verb)
    }

    /// "`list` on `leases` (coordination.k8s.io) there".
    fn needs(&self) -> String {
        match self.kind {
            Kind::Nodes => format!("`{}` on `nodes` (core API group, cluster-wide)", self.verb),
            Kind::Leases => format!("`{}` on `leases` (coordination.k8s.io) there", self.verb),
        }
    }

    fn error(&self, e: kube::Error) -> Error {
        match e {
            kube::Error::Api(status) => self.status_error(status.code, status.reason, status.message),
            other => Error::Unreachable { action: self.action(), detail: error_chain(&other) },
        }
    }

    fn status_error(&self, code: u16, reason: String, message: String) -> Error {
        match code {
            403 => Error::Forbidden { action: self.action(), needs: self.needs(), detail: Some(message).filter(|m| !m.is_empty()) },
            401 => Error::Unauthorized { action: self.action() },
            _ => Error::Api { action: self.action(), code, reason, message },
        }
    }
}

/// An error and its sources as one line, without repeating a source its parent already quotes.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// Reads Nodes and Leases, every call bounded by `--request-timeout`.
struct Reader {
    client: kube::Client,
    timeout: Duration,
}

impl Reader {
    fn nodes(&self) -> Api<SlimNode> {
        Api::all(self.client.clone())
    }

    fn leases(&self) -> Api<SlimLease> {
        Api::namespaced(self.client.clone(), names::NODE_LEASE_NAMESPACE)
    }

    async fn call<T>(&self, request: &Request, call: impl Future<Output = kube::Result<T>>) -> Result<T> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(request.error(e)),
            Err(_) => Err(Error::Timeout { action: request.action(), timeout: humantime::format_duration(self.timeout).to_string() }),
        }
    }

    /// Every object of `api`, page by page.
    async fn list_all<K>(&self, api: &Api<K>, request: &Request) -> Result<Vec<K>>
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let mut items = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut params = ListParams::default().limit(PAGE_SIZE);
            if let Some(t) = &token {
                params = params.continue_token(t);
            }
            let page = self.call(request, api.list(&params)).await?;
            items.extend(page.items);
            token = page.metadata.continue_.filter(|t| !t.is_empty());
            if token.is_none() {
                return Ok(items);
            }
        }
    }

    /// One node by name: not found is [`Error::NodeNotFound`].
    async fn node(&self, name: &str) -> Result<SlimNode> {
        let request = Request::new("get", Kind::Nodes, Some(name));
        self.call(&request, self.nodes().get_opt(name)).await?.ok_or_else(|| Error::NodeNotFound(name.to_string()))
    }

    /// The Nodes and Leases now: all of them, or the one `--node` names.
    async fn snapshot(&self, node: Option<&str>) -> Result<(Vec<SlimNode>, Vec<SlimLease>)> {
        match node {
            Some(name) => {
                let node = self.node(name).await?;
                let request = Request::new("get", Kind::Leases, Some(name));
                let lease = self.call(&request, self.leases().get_opt(name)).await?;
                Ok((vec![node], lease.into_iter().collect()))
            }
            None => {
                let nodes = self.list_all(&self.nodes(), &Request::new("list", Kind::Nodes, None)).await?;
                let leases = self.list_all(&self.leases(), &Request::new("list", Kind::Leases, None)).await?;
                Ok((nodes, leases))
            }
        }
    }

    /// Before watching for a long time: fails at once on a missing permission or node.
    async fn preflight(&self, node: Option<&str>) -> Result<()> {
        let one = ListParams::default().limit(1);
        match node {
            Some(name) => {
                self.node(name).await?;
            }
            None => {
                self.call(&Request::new("list", Kind::Nodes, None), self.nodes().list_metadata(&one)).await?;
            }
        }
        self.call(&Request::new("list", Kind::Leases, None), self.leases().list_metadata(&one)).await?;
        Ok(())
    }
}

/// What `--observe` saw.
struct Observation {
    facts: FleetFacts,
    /// When the Lease watch finished its first list: renewals not seen since are lower bounds.
    leases_synced_at: Timestamp,
}

/// The state of one watch during `--observe`.
#[derive(Default)]
struct WatchState {
    synced_at: Option<Timestamp>,
    relisted: Option<HashSet<String>>,
    last_error: Option<String>,
}

impl WatchState {
    /// Folds one watch event into `facts` through `apply`/`delete`/`retain`; returns a forbidden
    /// error at once (waiting would only repeat it).
    fn fold<K: kube::Resource>(
        &mut self,
        event: std::result::Result<watcher::Event<K>, watcher::Error>,
        request: Kind,
        mut apply: impl FnMut(&K, Timestamp),
        mut delete: impl FnMut(&str),
        retain: impl FnOnce(&HashSet<String>),
    ) -> Result<()> {
        let now = Timestamp::now();
        match event {
            Ok(watcher::Event::Init) => self.relisted = Some(HashSet::new()),
            Ok(watcher::Event::InitApply(obj)) => {
                if let (Some(set), Some(name)) = (self.relisted.as_mut(), obj.meta().name.clone()) {
                    set.insert(name);
                }
                apply(&obj, now);
            }
            Ok(watcher::Event::InitDone) => {
                if let Some(set) = self.relisted.take() {
                    retain(&set);
                }
                self.synced_at.get_or_insert(now);
                self.last_error = None;
            }
            Ok(watcher::Event::Apply(obj)) => apply(&obj, now),
            Ok(watcher::Event::Delete(obj)) => {
                if let Some(name) = obj.meta().name.as_deref() {
                    delete(name);
                }
            }
            Err(e) => {
                let forbidden = |verb, status: &kube::core::Status| {
                    (status.code == 403).then(|| Request::new(verb, request, None).status_error(status.code, status.reason.clone(), status.message.clone()))
                };
                let fatal = match &e {
                    watcher::Error::InitialListFailed(kube::Error::Api(s)) => forbidden("list", s),
                    watcher::Error::WatchStartFailed(kube::Error::Api(s)) | watcher::Error::WatchFailed(kube::Error::Api(s)) => forbidden("watch", s),
                    watcher::Error::WatchError(s) => forbidden("watch", s),
                    _ => None,
                };
                if let Some(fatal) = fatal {
                    return Err(fatal);
                }
                self.last_error = Some(error_chain(&e));
            }
        }
        Ok(())
    }
}

/// Watches Nodes and Leases for `duration`, applying every change at the time it is seen.
async fn observe(reader: &Reader, node: Option<&str>, scope: &Scope, duration: Duration) -> Result<Observation> {
    let config = match node {
        Some(name) => watcher::Config::default().fields(&format!("metadata.name={name}")),
        None => watcher::Config::default().page_size(PAGE_SIZE),
    };
    let mut node_events = std::pin::pin!(watcher(reader.nodes(), config.clone()).default_backoff());
    let mut lease_events = std::pin::pin!(watcher(reader.leases(), config).default_backoff());
    let deadline = tokio::time::Instant::now() + duration;
    let mut facts = FleetFacts::default();
    let (mut nodes, mut leases) = (WatchState::default(), WatchState::default());
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            Some(event) = node_events.next() => {
                let f = std::cell::RefCell::new(&mut facts);
                nodes.fold(
                    event,
                    Kind::Nodes,
                    |n: &SlimNode, now| f.borrow_mut().apply_node(n, scope, now),
                    |name| f.borrow_mut().delete_node(name),
                    |set| f.borrow_mut().retain_nodes(set),
                )?;
            }
            Some(event) = lease_events.next() => {
                let f = std::cell::RefCell::new(&mut facts);
                leases.fold(
                    event,
                    Kind::Leases,
                    |l: &SlimLease, now| f.borrow_mut().apply_lease(l, now),
                    |name| f.borrow_mut().delete_lease(name),
                    |set| f.borrow_mut().retain_leases(set),
                )?;
            }
        }
    }
    if nodes.synced_at.is_none() {
        return Err(Error::NotSynced { what: "Node", last_error: nodes.last_error });
    }
    let Some(leases_synced_at) = leases.synced_at else {
        return Err(Error::NotSynced { what: "Lease", last_error: leases.last_error });
    };
    if let Some(name) = node
        && !facts.nodes.contains_key(name)
    {
        return Err(Error::NodeNotFound(name.to_string()));
    }
    Ok(Observation { facts, leases_synced_at })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        cli::{Cli, Command},
        facts::fixtures::*,
    };
    use clap::Parser;

    fn args(extra: &[&str]) -> CheckArgs {
        let mut argv = vec!["pulsecheck", "check"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Check(a) => *a,
            _ => unreachable!(),
        }
    }

    fn scope() -> Scope {
        Scope { taint_key: names::TAINT_KEY.into(), ..Default::default() }
    }

    #[test]
    fn thresholds_and_their_defaults_are_those_of_run() {
        let run = match Cli::try_parse_from(["pulsecheck", "run"]).unwrap().command {
            Command::Run(a) => crate::config::Settings::from_args(&a).unwrap(),
            _ => unreachable!(),
        };
        assert_eq!(thresholds(&args(&[]).thresholds).unwrap(), run.thresholds);
        let fast = thresholds(&args(&["--status-stale-after=6s", "--lease-grace=2s"]).thresholds).unwrap();
        assert_eq!(fast.status_stale_after, Duration::from_secs(6));
        let e = thresholds(&args(&["--status-stale-after=6s"]).thresholds).unwrap_err().to_string();
        assert!(e.contains("--lease-grace") && e.contains("--status-stale-after"), "{e}");
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

    #[test]
    fn snapshot_judges_by_the_nodes_timestamps_against_the_local_clock() {
        // now = t(1000). n-zombie: status written at 300 (700 s ago), Lease renewed at 995.
        let nodes = vec![
            node("n-zombie").ready_at(t(300)).build(),
            node("n-fine").ready_at(t(900)).build(),
            node("n-dead").ready_at(t(100)).build(),
            node("n-unknown-os").ready_at(t(990)).os_image("Unknown").build(),
            node("n-skewed").ready_at(t(300 + 3600)).build(),
        ];
        let leases =
            vec![lease("n-zombie", t(995)), lease("n-fine", t(998)), lease("n-dead", t(100)), lease("n-unknown-os", t(999)), lease("n-skewed", t(999 + 3600))];
        let facts = facts_from_snapshot(&nodes, &leases, &scope(), t(1000));
        let report = build_report(t(1000), &facts, &Thresholds::default(), Clock::NodeTimestamps, None);
        let order: Vec<(&str, Verdict)> = report.nodes.iter().map(|n| (n.name.as_str(), n.verdict)).collect();
        assert_eq!(
            order,
            [
                ("n-zombie", Verdict::Zombie),
                ("n-dead", Verdict::Dead),
                ("n-unknown-os", Verdict::Suspect),
                ("n-fine", Verdict::Healthy),
                // The node's clock is an hour ahead: its stale status looks fresh (the trap --observe avoids).
                ("n-skewed", Verdict::Healthy),
            ]
        );
        let zombie = &report.nodes[0];
        assert_eq!((zombie.status_age_seconds, zombie.lease_age_seconds), (700, Some(5)));
        assert_eq!(zombie.why, "NodeStatus not refreshed for 11m 40s");
        assert!(report.needs_attention());
        let skewed = report.nodes.iter().find(|n| n.name == "n-skewed").unwrap();
        assert_eq!(skewed.status_age_seconds, -2900);
        let notes = skew_notes(&report);
        assert!(notes.len() == 1 && notes[0].contains("n-skewed (by 59m59s)"), "{notes:?}");
    }

    #[test]
    fn healthy_and_excluded_nodes_need_no_attention() {
        let nodes = vec![node("a").ready_at(t(990)).build(), node("b").ready_at(t(0)).label(names::EXCLUDE_LABEL, "true").build()];
        let leases = vec![lease("a", t(999)), lease("b", t(0))];
        let report = build_report(t(1000), &facts_from_snapshot(&nodes, &leases, &scope(), t(1000)), &Thresholds::default(), Clock::NodeTimestamps, None);
        assert!(!report.needs_attention());
        assert_eq!(report.summary, BTreeMap::from([(Verdict::Healthy, 1), (Verdict::Excluded, 1)]));
    }

    #[test]
    fn table_is_aligned_worst_first_with_marked_lower_bounds() {
        let mut facts = FleetFacts::default();
        facts.apply_node(&node("b-ok").ready_at(t(0)).build(), &scope(), t(0));
        facts.apply_node(&node("b-ok").ready_at(t(55)).build(), &scope(), t(55));
        facts.apply_lease(&lease("b-ok", t(49)), t(50));
        facts.apply_lease(&lease("b-ok", t(59)), t(59));
        facts.apply_node(&node("a-zombie").ready_at(t(0)).taint(names::TAINT_KEY).build(), &scope(), t(0));
        facts.apply_lease(&lease("a-zombie", t(49)), t(50));
        facts.apply_lease(&lease("a-zombie", t(59)), t(59));
        let th = Thresholds { status_stale_after: Duration::from_secs(30), lease_grace: Duration::from_secs(5), ..Thresholds::default() };
        let report = build_report(t(60), &facts, &th, Clock::Observed, Some(t(1)));
        let table = render_table(&report);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "NODE      READY  LEASE  STATUS  OS-IMAGE            PROBE  VERDICT  WHY");
        assert_eq!(lines[1], "a-zombie  True   1s     >=1m0s  Ubuntu 24.04.1 LTS  -      zombie   NodeStatus not refreshed for 1m");
        assert_eq!(lines[2], "b-ok      True   1s     5s      Ubuntu 24.04.1 LTS  -      healthy");
        assert!(report.nodes[0].tainted);
        assert_eq!(render_table(&build_report(t(0), &FleetFacts::default(), &th, Clock::Observed, None)), "No nodes.\n");
    }

    #[test]
    fn json_and_yaml_carry_verdicts_evidence_and_ages() {
        let nodes = vec![node("z").ready_at(t(0)).os_image("Unknown").build()];
        let leases = vec![lease("z", t(999))];
        let report = build_report(t(1000), &facts_from_snapshot(&nodes, &leases, &scope(), t(1000)), &Thresholds::default(), Clock::NodeTimestamps, None);
        let json: serde_json::Value = serde_json::from_str(&render(&report, OutputFormat::Json).unwrap()).unwrap();
        assert_eq!(json["clock"], "node-timestamps");
        assert_eq!(json["summary"]["zombie"], 1);
        let z = &json["nodes"][0];
        assert_eq!((z["name"].as_str(), z["verdict"].as_str(), z["status_age_seconds"].as_i64()), (Some("z"), Some("zombie"), Some(1000)));
        assert_eq!(z["evidence"][0]["kind"], "status_stale");
        assert_eq!(z["evidence"][1], serde_json::json!({"kind": "os_image_unknown", "for_seconds": 1000, "turned": false}));
        let yaml: serde_json::Value = serde_yaml_ng::from_str(&render(&report, OutputFormat::Yaml).unwrap()).unwrap();
        assert_eq!(yaml["nodes"][0]["verdict"], "zombie");
    }

    #[test]
    fn ages_read_compactly() {
        assert_eq!(compact(4), "4s");
        assert_eq!(compact(662), "11m2s");
        assert_eq!(compact(3 * 3600 + 301), "3h5m");
        assert_eq!(compact(2 * 86_400 + 4 * 3600 + 1), "2d4h");
        assert_eq!(compact(-3598), "-59m58s");
    }

    #[test]
    fn forbidden_names_the_missing_permission() {
        let e = Request::new("list", Kind::Leases, None).status_error(403, "Forbidden".into(), "leases is forbidden: User \"x\" cannot list".into());
        assert_eq!(
            e.to_string(),
            "cannot list leases in namespace kube-node-lease: forbidden — the identity needs `list` on `leases` (coordination.k8s.io) there (apiserver: leases is forbidden: User \"x\" cannot list)"
        );
        let e = Request::new("get", Kind::Nodes, Some("n1")).status_error(403, String::new(), String::new());
        assert_eq!(e.to_string(), "cannot get node n1: forbidden — the identity needs `get` on `nodes` (core API group, cluster-wide)");
        assert!(Request::new("list", Kind::Nodes, None).status_error(401, String::new(), String::new()).to_string().contains("401 Unauthorized"));
    }

    #[tokio::test]
    async fn probes_are_recorded_for_every_node() {
        let mut facts = FleetFacts::default();
        for n in ["a", "b"] {
            facts.apply_node(&node(n).ready_at(t(0)).build(), &scope(), t(0));
        }
        let probe: KubeletProbe = Box::new(|target: ProbeTarget| {
            Box::pin(async move { if target.node == "a" { ProbeOutcome::Success } else { ProbeOutcome::Failure("500 syncloop".into()) } })
        });
        probe_all(&mut facts, &probe, 4).await;
        let report = build_report(t(1), &facts, &Thresholds::default(), Clock::Observed, Some(t(0)));
        let probes: Vec<_> = report.nodes.iter().map(|n| (n.name.as_str(), n.probe.as_ref().map(|p| p.result))).collect();
        assert_eq!(probes, [("a", Some("ok")), ("b", Some("fail"))]);
    }
}
