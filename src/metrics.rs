//! Prometheus metrics: what pulsecheck sees, decides and does, in a form alerts can page on.
//!
//! Conventions: prefix `pulsecheck_`, base units (seconds), counters end in `_total`, no node
//! label on counters or histograms (cardinality stays bounded by the fleet size only in gauges),
//! and per-node series only where they pay for themselves: by default
//! (`--per-node-metrics=unhealthy`) only for the nodes pulsecheck does not judge healthy, holds
//! evidence against or has remediated, so their number follows the trouble, not the fleet size;
//! `all` adds every healthy node (~10 series each), `none` drops them.
//! A node's series are removed when the Node is deleted. The alert rules in
//! `deploy/prometheus/` and the dashboard use only the families in [`METRIC_NAMES`], and
//! `docs/metrics.md` lists them; CI checks both against this list.

use prometheus::{Encoder, Gauge, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::{
    cadence::CadenceSource,
    facts::ProbeOutcome,
    verdict::{Assessment, Verdict},
};

/// Every metric family pulsecheck exports.
pub const METRIC_NAMES: &[&str] = &[
    "pulsecheck_node_verdict",
    "pulsecheck_node_evidence",
    "pulsecheck_node_lease_observed_timestamp_seconds",
    "pulsecheck_node_status_observed_timestamp_seconds",
    "pulsecheck_node_probe_success",
    "pulsecheck_node_remediated",
    "pulsecheck_node_status_threshold_seconds",
    "pulsecheck_nodes",
    "pulsecheck_status_threshold_nodes",
    "pulsecheck_kubelet_configz_reads_total",
    "pulsecheck_remediations_active",
    "pulsecheck_remediation_limit",
    "pulsecheck_circuit_open",
    "pulsecheck_blind",
    "pulsecheck_probe_partition",
    "pulsecheck_probe_misconfigured",
    "pulsecheck_probe_mode",
    "pulsecheck_agents",
    "pulsecheck_remediations_total",
    "pulsecheck_verdict_changes_total",
    "pulsecheck_writes_total",
    "pulsecheck_write_stage_duration_seconds",
    "pulsecheck_probes_total",
    "pulsecheck_probe_duration_seconds",
    "pulsecheck_watch_events_total",
    "pulsecheck_evaluation_duration_seconds",
    "pulsecheck_leader",
    "pulsecheck_build_info",
];

/// Evidence kinds exported as `pulsecheck_node_evidence{evidence=..}`.
pub const EVIDENCE_KINDS: &[&str] = &["status_stale", "os_image_unknown", "problem_condition", "probe_failing", "lease_stale", "agent_disk", "agent_silent"];

/// A remediation action, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionLabel {
    /// Taint added.
    Taint,
    /// Taint removed.
    Untaint,
    /// Cordoned.
    Cordon,
    /// Uncordoned.
    Uncordon,
}

impl ActionLabel {
    fn as_str(self) -> &'static str {
        match self {
            ActionLabel::Taint => "taint",
            ActionLabel::Untaint => "untaint",
            ActionLabel::Cordon => "cordon",
            ActionLabel::Uncordon => "uncordon",
        }
    }
}

/// The result of a remediation action, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultLabel {
    /// Written.
    Success,
    /// The write failed.
    Error,
    /// `--dry-run`: decided, not written.
    DryRun,
    /// Held back by the guard.
    Blocked,
}

impl ResultLabel {
    fn as_str(self) -> &'static str {
        match self {
            ResultLabel::Success => "success",
            ResultLabel::Error => "error",
            ResultLabel::DryRun => "dry_run",
            ResultLabel::Blocked => "blocked",
        }
    }
}

/// A kind of write to the cluster, as a metric label; each kind backs off on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WriteKind {
    /// Taint and/or cordon a node, with the record.
    Remediation,
    /// Remove pulsecheck's taint, cordon and record.
    Release,
    /// Update the record alone (a cordon somebody else took over).
    Record,
    /// The `HeartbeatConsistent` node condition.
    Condition,
    /// An Event about a node.
    Event,
}

impl WriteKind {
    /// Every kind, for tests and documentation.
    pub const ALL: [WriteKind; 5] = [WriteKind::Remediation, WriteKind::Release, WriteKind::Record, WriteKind::Condition, WriteKind::Event];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            WriteKind::Remediation => "remediation",
            WriteKind::Release => "release",
            WriteKind::Record => "record",
            WriteKind::Condition => "condition",
            WriteKind::Event => "event",
        }
    }
}

/// What became of one planned write, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteResult {
    /// Written (or, in a dry run, reported).
    Success,
    /// Sent and failed (refused, timed out, conflicting, or leadership ended first).
    Error,
    /// Not sent: no longer called for when its turn came (judged again, or the fresh read did
    /// not confirm it, or the node is gone).
    Superseded,
    /// Not sent: this node's writes of this kind failed recently and are backing off.
    Backoff,
    /// Not sent: the tick's time for writes was used up; the next tick plans it again.
    Deadline,
}

impl WriteResult {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            WriteResult::Success => "success",
            WriteResult::Error => "error",
            WriteResult::Superseded => "superseded",
            WriteResult::Backoff => "backoff",
            WriteResult::Deadline => "deadline",
        }
    }
}

/// What pulsecheck exports.
#[derive(Debug, Clone, clap::Args)]
pub struct MetricsArgs {
    /// Which nodes get per-node series (verdict, evidence, heartbeat times, probe success):
    /// `unhealthy` (nodes not judged healthy, with evidence held against them or remediated),
    /// `all`, or `none`; `true` and `false` mean `all` and `none`.
    #[arg(long, env = "PULSECHECK_PER_NODE_METRICS", value_name = "WHICH", value_enum, default_value_t = PerNodeMetrics::Unhealthy, num_args = 0..=1, default_missing_value = "all")]
    pub per_node_metrics: PerNodeMetrics,
}

/// Which nodes get per-node series (`--per-node-metrics`).
///
/// Every node costs ~10 series (six of them the verdict state set). At 20,000 nodes `all` is a
/// 13 MB scrape that takes over a second to render and holds ~130 MiB while it does
/// (docs/performance.md); the node alerts and the dashboard's node panels need only the nodes
/// in trouble, so `unhealthy` names exactly those and costs nothing on a healthy fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PerNodeMetrics {
    /// Series for the nodes pulsecheck does not judge healthy, holds evidence against, or has
    /// tainted or cordoned; a node's series go when it is healthy again.
    Unhealthy,
    /// Series for every node.
    #[value(alias = "true")]
    All,
    /// No per-node series: the node alerts fire from the fleet counts, without a node label.
    #[value(alias = "false")]
    None,
}

impl PerNodeMetrics {
    /// The flag's value as it is written.
    pub fn as_str(self) -> &'static str {
        match self {
            PerNodeMetrics::Unhealthy => "unhealthy",
            PerNodeMetrics::All => "all",
            PerNodeMetrics::None => "none",
        }
    }
}

/// All of pulsecheck's metrics, registered in their own registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    per_node: PerNodeMetrics,
    node_series: NodeSeries,
    nodes: IntGaugeVec,
    status_threshold_sources: IntGaugeVec,
    configz_reads: IntCounterVec,
    remediations_active: IntGauge,
    remediation_limit: IntGauge,
    circuit_open: IntGauge,
    blind: IntGauge,
    probe_partition: IntGauge,
    agents: IntGaugeVec,
    probe_misconfigured: IntGauge,
    probe_mode: IntGaugeVec,
    remediations: IntCounterVec,
    verdict_changes: IntCounterVec,
    writes: IntCounterVec,
    write_stage_duration: Histogram,
    probes: IntCounterVec,
    probe_duration: Histogram,
    watch_events: IntCounterVec,
    evaluation_duration: Histogram,
    leader: IntGauge,
    _build_info: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").field("per_node", &self.per_node).finish_non_exhaustive()
    }
}

/// Values of `pulsecheck_probe_mode`'s `mode` label: `--probe`'s values.
pub const PROBE_MODES: &[&str] = &["kubelet-healthz", "tcp", "apiserver-proxy", "none"];

/// Per-node values for one evaluation.
#[derive(Debug, Clone, Copy)]
pub struct NodeHeartbeats {
    /// When the Lease was last seen renewed (unix seconds), if there is a Lease.
    pub lease_observed: Option<f64>,
    /// When the status was last seen refreshed (unix seconds).
    pub status_observed: f64,
    /// Whether pulsecheck holds a remediation on the node.
    pub remediated: bool,
    /// The last counted kubelet probe: `Some(true)` success, `Some(false)` failure or timeout,
    /// `None` when never probed or when the last answer carried no evidence (401/403, not probed).
    pub probe_success: Option<bool>,
    /// The node's own status threshold (seconds), see [`crate::cadence`].
    pub status_threshold: f64,
}

/// One node's per-node series as of its latest tick.
#[derive(Debug, Clone, Copy)]
struct NodeState {
    verdict: Verdict,
    /// Bit `i` set: the evidence of kind `EVIDENCE_KINDS[i]` is held against the node.
    evidence: u8,
    heartbeats: NodeHeartbeats,
}

impl NodeState {
    /// Whether `--per-node-metrics=unhealthy` names the node: anything but a healthy verdict,
    /// any evidence held (a healthy verdict may carry evidence not yet conclusive), or a
    /// remediation pulsecheck holds (until its release lands).
    fn in_trouble(&self) -> bool {
        !matches!(self.verdict, Verdict::Healthy | Verdict::Excluded)
            || self.evidence != 0
            || self.heartbeats.remediated
            || self.heartbeats.probe_success == Some(false)
    }
}

/// The per-node families (`pulsecheck_node_*`), kept as one small record per node and rendered
/// only when scraped. A tick publishes a node with one map update instead of the dozen label-set
/// lookups (each hashing the node's name, some taking a write lock to remove a series) that the
/// `prometheus` crate's metric vectors need — at tens of thousands of nodes, every 5 s, that was
/// most of a tick's cost, for series that are read every 30 s or so.
#[derive(Clone, Default)]
struct NodeSeries {
    nodes: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, NodeState, foldhash::fast::RandomState>>>,
}

/// `(name, help, labels)` of each per-node family, in the order [`NodeSeries::render_into`] writes them.
const NODE_FAMILIES: [(&str, &str, &[&str]); 7] = [
    ("pulsecheck_node_verdict", "State set: 1 for the node's current verdict, 0 for the others", &["node", "verdict"]),
    ("pulsecheck_node_evidence", "1 for each kind of evidence currently held against the node", &["evidence", "node"]),
    ("pulsecheck_node_lease_observed_timestamp_seconds", "When pulsecheck last saw the node's Lease renewTime change (its own clock)", &["node"]),
    ("pulsecheck_node_status_observed_timestamp_seconds", "When pulsecheck last saw the node's Ready lastHeartbeatTime change (its own clock)", &["node"]),
    ("pulsecheck_node_probe_success", "1 when the last kubelet probe of the node succeeded, 0 when it failed", &["node"]),
    ("pulsecheck_node_remediated", "1 while pulsecheck holds a taint or cordon on the node", &["node"]),
    (
        "pulsecheck_node_status_threshold_seconds",
        "How long the node's status may go unrefreshed before it is stale: from its kubelet's cadence, the intervals seen, or --status-stale-after",
        &["node"],
    ),
];

impl NodeSeries {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, NodeState, foldhash::fast::RandomState>> {
        // Every update is one insert: a panic elsewhere leaves consistent data.
        self.nodes.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl NodeSeries {
    /// Appends the per-node families to `out` in the text exposition format, straight from the
    /// records, sorted by node name (a scrape is reproducible).
    ///
    /// Not a `prometheus` Collector on purpose: the crate's gather would first build a protobuf
    /// message per sample (two owned strings per label) — at 5,000 nodes with every node named
    /// some 60,000 of them — only to turn them into this text; the allocator keeps that peak
    /// resident after the scrape, which was most of pulsecheck's memory with `--per-node-metrics
    /// all`. Written directly, a scrape costs its output and a list of references.
    fn render_into(&self, out: &mut String) {
        let nodes = self.lock();
        let mut sorted: Vec<(&str, &NodeState)> = nodes.iter().map(|(name, s)| (name.as_str(), s)).collect();
        sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
        // About 650 bytes a node when every node is named; one allocation in the common case.
        out.reserve(sorted.len() * 700);
        // Within a node, samples in label-value order too, as the `prometheus` crate writes them.
        let mut verdicts = Verdict::ALL;
        verdicts.sort_unstable_by_key(|v| v.as_str());
        let mut kinds: Vec<(usize, &str)> = EVIDENCE_KINDS.iter().copied().enumerate().collect();
        kinds.sort_unstable_by_key(|&(_, kind)| kind);
        for (family, (name, help, _)) in NODE_FAMILIES.iter().enumerate() {
            let mut header = false;
            let mut sample = |out: &mut String, node: &str, extra: Option<(&str, &str)>, value: f64| {
                if !header {
                    header = true;
                    push_header(out, name, help);
                }
                out.push_str(name);
                out.push('{');
                // Label names in the order the families declare them (alphabetical).
                match extra {
                    Some((label, v)) if label < "node" => {
                        push_label(out, label, v);
                        out.push(',');
                        push_label(out, "node", node);
                    }
                    Some((label, v)) => {
                        push_label(out, "node", node);
                        out.push(',');
                        push_label(out, label, v);
                    }
                    None => push_label(out, "node", node),
                }
                out.push_str("} ");
                push_value(out, value);
                out.push('\n');
            };
            for &(node, s) in &sorted {
                let hb = &s.heartbeats;
                match family {
                    0 => {
                        for &v in &verdicts {
                            sample(out, node, Some(("verdict", v.as_str())), f64::from(u8::from(v == s.verdict)));
                        }
                    }
                    1 => {
                        for &(_, kind) in kinds.iter().filter(|&&(i, _)| s.evidence & (1 << i) != 0) {
                            sample(out, node, Some(("evidence", kind)), 1.0);
                        }
                    }
                    2 => {
                        if let Some(t) = hb.lease_observed {
                            sample(out, node, None, t);
                        }
                    }
                    3 => sample(out, node, None, hb.status_observed),
                    4 => {
                        if let Some(ok) = hb.probe_success {
                            sample(out, node, None, f64::from(u8::from(ok)));
                        }
                    }
                    5 => sample(out, node, None, f64::from(u8::from(hb.remediated))),
                    _ => sample(out, node, None, hb.status_threshold),
                }
            }
        }
    }
}

/// `# HELP` and `# TYPE` lines of a gauge family.
fn push_header(out: &mut String, name: &str, help: &str) {
    out.push_str("# HELP ");
    out.push_str(name);
    out.push(' ');
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push_str("\n# TYPE ");
    out.push_str(name);
    out.push_str(" gauge\n");
}

/// `name="value"`, the value escaped as the text format requires. Node names the apiserver
/// accepted need no escaping; the format is kept whatever a name holds.
fn push_label(out: &mut String, name: &str, value: &str) {
    out.push_str(name);
    out.push_str("=\"");
    if value.contains(['\\', '"', '\n']) {
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
    } else {
        out.push_str(value);
    }
    out.push('"');
}

/// A sample's value as the text format spells it (`NaN`, `+Inf`, `-Inf`, or the shortest
/// decimal that reads back as the same number).
fn push_value(out: &mut String, value: f64) {
    use std::fmt::Write;
    if value.is_nan() {
        out.push_str("NaN");
    } else if value.is_infinite() {
        out.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        // Writing into a String cannot fail.
        let _ = write!(out, "{value}");
    }
}

impl Metrics {
    /// Creates and registers every family. `per_node` is `--per-node-metrics`.
    pub fn new(per_node: PerNodeMetrics) -> Metrics {
        let registry = Registry::new();
        fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
            // Names are fixed and unique, so registration cannot fail; a duplicate would be a bug
            // caught by the unit tests.
            r.register(Box::new(c.clone())).expect("metric families are unique");
            c
        }
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("valid metric");
        let seconds_buckets = vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
        let build_info =
            Gauge::with_opts(Opts::new("pulsecheck_build_info", "pulsecheck build information; always 1").const_label("version", env!("CARGO_PKG_VERSION")))
                .expect("valid metric");
        build_info.set(1.0);
        let metrics = Metrics {
            per_node,
            node_series: NodeSeries::default(),
            nodes: reg(&registry, gauge_vec("pulsecheck_nodes", "Nodes per verdict", &["verdict"])),
            status_threshold_sources: reg(
                &registry,
                gauge_vec(
                    "pulsecheck_status_threshold_nodes",
                    "Nodes by where their status threshold comes from (kubelet: /configz; observed: intervals seen; flag; flag-doubled: fewer than two report intervals seen)",
                    &["source"],
                ),
            ),
            configz_reads: reg(
                &registry,
                IntCounterVec::new(Opts::new("pulsecheck_kubelet_configz_reads_total", "Reads of kubelets' /configz (status cadence) by result"), &["result"])
                    .expect("valid metric"),
            ),
            remediations_active: reg(&registry, gauge("pulsecheck_remediations_active", "Nodes pulsecheck currently holds a remediation on")),
            remediation_limit: reg(
                &registry,
                gauge("pulsecheck_remediation_limit", "Nodes that may be remediated at once: max(1, max-unhealthy x eligible nodes)"),
            ),
            circuit_open: reg(&registry, gauge("pulsecheck_circuit_open", "1 when more nodes need remediation than the limit: nothing new is remediated")),
            blind: reg(&registry, gauge("pulsecheck_blind", "1 while a watch is unsynced or silent: pulsecheck makes no new decisions")),
            probe_partition: reg(
                &registry,
                gauge("pulsecheck_probe_partition", "1 while probes fail for more than the partition threshold of live nodes: probe evidence is ignored"),
            ),
            agents: reg(
                &registry,
                gauge_vec(
                    "pulsecheck_agents",
                    "Node agents (pulsecheck-agent Leases) per report: ok, starting, hung, failing, silent, terminating, unreadable, hidden (their watch cannot be relied on)",
                    &["report"],
                ),
            ),
            probe_misconfigured: reg(
                &registry,
                gauge("pulsecheck_probe_misconfigured", "1 while kubelets answer probes with 401/403: pulsecheck lacks permission (nodes/healthz get)"),
            ),
            probe_mode: reg(
                &registry,
                gauge_vec(
                    "pulsecheck_probe_mode",
                    "State set: 1 for the kubelet probe mode in force (tcp when kubelet-healthz fell back for lack of a CA or the insecure flag)",
                    &["mode"],
                ),
            ),
            remediations: reg(
                &registry,
                IntCounterVec::new(Opts::new("pulsecheck_remediations_total", "Remediation actions by action and result"), &["action", "result"])
                    .expect("valid metric"),
            ),
            verdict_changes: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new("pulsecheck_verdict_changes_total", "Verdict changes reported (log line and Event), by the new verdict"),
                    &["verdict"],
                )
                .expect("valid metric"),
            ),
            writes: reg(
                &registry,
                IntCounterVec::new(Opts::new("pulsecheck_writes_total", "Planned writes to the cluster by kind and what became of them"), &["kind", "result"])
                    .expect("valid metric"),
            ),
            write_stage_duration: reg(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new("pulsecheck_write_stage_duration_seconds", "Time one tick spent carrying out its writes")
                        .buckets(vec![0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
                )
                .expect("valid metric"),
            ),
            probes: reg(&registry, IntCounterVec::new(Opts::new("pulsecheck_probes_total", "Kubelet probes by result"), &["result"]).expect("valid metric")),
            probe_duration: reg(
                &registry,
                Histogram::with_opts(HistogramOpts::new("pulsecheck_probe_duration_seconds", "Duration of kubelet probes").buckets(seconds_buckets.clone()))
                    .expect("valid metric"),
            ),
            watch_events: reg(
                &registry,
                IntCounterVec::new(Opts::new("pulsecheck_watch_events_total", "Objects delivered by the watches"), &["resource"]).expect("valid metric"),
            ),
            evaluation_duration: reg(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new("pulsecheck_evaluation_duration_seconds", "Duration of one evaluation pass over the fleet").buckets(seconds_buckets),
                )
                .expect("valid metric"),
            ),
            leader: reg(&registry, gauge("pulsecheck_leader", "1 while this instance holds leadership and may act")),
            _build_info: reg(&registry, build_info),
            registry,
        };
        // Zero until agents report: a dashboard shows "no agents", not "no data".
        metrics.set_agents(&crate::verdict::AGENT_REPORTS.map(|r| (r, 0)));
        metrics
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        let mut text = String::from_utf8(buf).unwrap_or_default();
        self.node_series.render_into(&mut text);
        text
    }

    /// Publishes one node's verdict, evidence and heartbeats: one map update, no label lookup
    /// (the series are rendered at scrape time, see [`NodeSeries`]).
    pub fn node(&self, name: &str, assessment: &Assessment, heartbeats: NodeHeartbeats) {
        if self.per_node == PerNodeMetrics::None {
            return;
        }
        let evidence = EVIDENCE_KINDS
            .iter()
            .enumerate()
            .filter(|(_, kind)| assessment.evidence.iter().any(|e| e.kind() == **kind))
            .fold(0u8, |bits, (i, _)| bits | 1 << i);
        let series = NodeState { verdict: assessment.verdict, evidence, heartbeats };
        let mut nodes = self.node_series.lock();
        if self.per_node == PerNodeMetrics::Unhealthy && !series.in_trouble() {
            nodes.remove(name);
            return;
        }
        match nodes.get_mut(name) {
            Some(known) => *known = series,
            None => {
                nodes.insert(name.to_string(), series);
            }
        }
    }

    /// Removes every series of a deleted node.
    pub fn forget_node(&self, name: &str) {
        self.node_series.lock().remove(name);
    }

    /// Publishes how many nodes get their status threshold from each source.
    pub fn status_threshold_sources(&self, counts: &[(CadenceSource, usize)]) {
        for source in CadenceSource::ALL {
            let n = counts.iter().find(|(s, _)| *s == source).map_or(0, |(_, n)| *n);
            self.status_threshold_sources.with_label_values(&[source.as_str()]).set(n as i64);
        }
    }

    /// Counts one read of a kubelet's `/configz`.
    pub fn kubelet_configz_read(&self, ok: bool) {
        self.configz_reads.with_label_values(&[if ok { "ok" } else { "error" }]).inc();
    }

    /// Publishes the fleet totals of one evaluation.
    pub fn fleet(&self, counts: &[(Verdict, usize)], active: usize, limit: usize, circuit_open: bool) {
        for (v, n) in counts {
            self.nodes.with_label_values(&[v.as_str()]).set(*n as i64);
        }
        self.remediations_active.set(active as i64);
        self.remediation_limit.set(limit as i64);
        self.circuit_open.set(i64::from(circuit_open));
    }

    /// Sets the blind gauge.
    pub fn set_blind(&self, blind: bool) {
        self.blind.set(i64::from(blind));
    }

    /// Sets the probe partition gauge.
    pub fn set_probe_partition(&self, partition: bool) {
        self.probe_partition.set(i64::from(partition));
    }

    /// Publishes how many node agents report what ([`crate::verdict::agent_reports`]).
    pub fn set_agents(&self, counts: &[(&'static str, usize)]) {
        for (report, n) in counts {
            self.agents.with_label_values(&[report]).set(*n as i64);
        }
    }

    /// Sets the state set of the probe mode in force (`ProbeMode` names as on the command line).
    pub fn set_probe_mode(&self, mode: &str) {
        for m in PROBE_MODES {
            self.probe_mode.with_label_values(&[m]).set(i64::from(*m == mode));
        }
    }

    /// Sets the probe misconfiguration gauge.
    pub fn set_probe_misconfigured(&self, misconfigured: bool) {
        self.probe_misconfigured.set(i64::from(misconfigured));
    }

    /// Sets the leader gauge.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// Counts a remediation action.
    pub fn remediation(&self, action: ActionLabel, result: ResultLabel) {
        self.remediations.with_label_values(&[action.as_str(), result.as_str()]).inc();
    }

    /// Counts one planned write by what became of it.
    pub fn write(&self, kind: WriteKind, result: WriteResult) {
        self.writes.with_label_values(&[kind.as_str(), result.as_str()]).inc();
    }

    /// Records how long one tick's write stage took.
    pub fn write_stage(&self, seconds: f64) {
        self.write_stage_duration.observe(seconds);
    }

    /// Counts one reported verdict change, by the new verdict.
    pub fn verdict_changed(&self, verdict: Verdict) {
        self.verdict_changes.with_label_values(&[verdict.as_str()]).inc();
    }

    /// Counts one object delivered by a watch (`nodes` or `leases`).
    pub fn watch_event(&self, resource: &str) {
        self.watch_events.with_label_values(&[resource]).inc();
    }

    /// Records one evaluation pass.
    pub fn evaluation(&self, seconds: f64) {
        self.evaluation_duration.observe(seconds);
    }

    /// Records one probe (fleet-wide counters only: the per-node `pulsecheck_node_probe_success`
    /// is set with the node's other series in [`Metrics::node`], from the facts, so a probe that
    /// finishes after its Node was deleted cannot bring the deleted node's series back).
    pub fn probe(&self, outcome: &ProbeOutcome, seconds: f64) {
        let result = match outcome {
            ProbeOutcome::Success => "success",
            ProbeOutcome::Failure(_) => "failure",
            ProbeOutcome::Timeout => "timeout",
            ProbeOutcome::NoAnswer(_) => "no_answer",
            ProbeOutcome::NoHandshake(_) => "no_handshake",
            ProbeOutcome::Inconclusive(_) => "inconclusive",
            ProbeOutcome::Unreachable(_) => "unreachable",
            ProbeOutcome::Untrusted(_) => "untrusted",
            ProbeOutcome::Unauthorized(_) => "unauthorized",
            ProbeOutcome::NotProbed(_) => "error",
        };
        self.probes.with_label_values(&[result]).inc();
        self.probe_duration.observe(seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::Evidence;

    #[test]
    fn every_listed_family_is_exported_and_nothing_else() {
        let m = Metrics::new(PerNodeMetrics::All);
        let a = Assessment::new(Verdict::Zombie, vec![Evidence::StatusStale { since: k8s_openapi::jiff::Timestamp::UNIX_EPOCH }]);
        m.node(
            "n1",
            &a,
            NodeHeartbeats { lease_observed: Some(1.0), status_observed: 2.0, remediated: true, probe_success: Some(false), status_threshold: 600.0 },
        );
        m.fleet(&[(Verdict::Zombie, 1)], 1, 1, false);
        m.status_threshold_sources(&[(CadenceSource::Kubelet, 1)]);
        m.kubelet_configz_read(true);
        m.remediation(ActionLabel::Taint, ResultLabel::Success);
        m.verdict_changed(Verdict::Zombie);
        m.write(WriteKind::Condition, WriteResult::Backoff);
        m.write_stage(0.5);
        m.probe(&ProbeOutcome::Timeout, 5.0);
        m.set_probe_mode("tcp");
        m.watch_event("leases");
        m.evaluation(0.001);
        let text = m.render();
        let mut names: Vec<String> =
            text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).map(|l| l.split(' ').next().unwrap_or_default().to_string()).collect();
        names.sort();
        let mut expected: Vec<String> = METRIC_NAMES.iter().map(|s| s.to_string()).collect();
        expected.sort();
        assert_eq!(names, expected);
    }

    #[test]
    fn verdict_is_a_state_set_and_a_deleted_node_leaves_no_series() {
        let m = Metrics::new(PerNodeMetrics::All);
        let a = Assessment::new(Verdict::Suspect, vec![Evidence::OsImageUnknown { since: k8s_openapi::jiff::Timestamp::UNIX_EPOCH, turned: false }]);
        m.node("n1", &a, NodeHeartbeats { lease_observed: None, status_observed: 2.0, remediated: false, probe_success: Some(false), status_threshold: 600.0 });
        assert!(m.render().contains(r#"pulsecheck_node_probe_success{node="n1"} 0"#));
        let text = m.render();
        assert!(text.contains(r#"pulsecheck_node_verdict{node="n1",verdict="suspect"} 1"#), "{text}");
        assert!(text.contains(r#"pulsecheck_node_verdict{node="n1",verdict="healthy"} 0"#), "{text}");
        assert!(text.contains(r#"pulsecheck_node_evidence{evidence="os_image_unknown",node="n1"} 1"#), "{text}");
        m.forget_node("n1");
        assert!(!m.render().contains(r#"node="n1""#));
    }

    #[test]
    fn by_default_only_nodes_in_trouble_are_named_and_a_node_healthy_again_is_not() {
        let m = Metrics::new(PerNodeMetrics::Unhealthy);
        let beats =
            |remediated| NodeHeartbeats { lease_observed: Some(1.0), status_observed: 2.0, remediated, probe_success: Some(true), status_threshold: 600.0 };
        m.node("fine", &Assessment::new(Verdict::Healthy, vec![]), beats(false));
        m.node("out", &Assessment::new(Verdict::Excluded, vec![]), beats(false));
        m.node("sick", &Assessment::new(Verdict::Zombie, vec![]), beats(true));
        m.node("unsure", &Assessment::new(Verdict::Unknown, vec![]), beats(false));
        let since = k8s_openapi::jiff::Timestamp::UNIX_EPOCH;
        m.node("brewing", &Assessment::new(Verdict::Healthy, vec![Evidence::OsImageUnknown { since, turned: false }]), beats(false));
        m.node("releasing", &Assessment::new(Verdict::Healthy, vec![]), beats(true));
        m.node("refused", &Assessment::new(Verdict::Healthy, vec![]), NodeHeartbeats { probe_success: Some(false), ..beats(false) });
        let text = m.render();
        for named in ["sick", "unsure", "brewing", "releasing", "refused"] {
            assert!(text.contains(&format!(r#"pulsecheck_node_status_observed_timestamp_seconds{{node="{named}"}} 2"#)), "{named} not named: {text}");
        }
        assert!(text.contains(r#"pulsecheck_node_verdict{node="sick",verdict="zombie"} 1"#), "{text}");
        assert!(!text.contains(r#"node="fine""#) && !text.contains(r#"node="out""#), "{text}");
        // Healthy again, released: the series go.
        m.node("sick", &Assessment::new(Verdict::Healthy, vec![]), beats(false));
        assert!(!m.render().contains(r#"node="sick""#));
    }

    #[test]
    fn per_node_text_is_what_the_prometheus_crate_would_encode() {
        // The oracle: the same samples through the crate's own metric vectors and text encoder.
        let since = k8s_openapi::jiff::Timestamp::UNIX_EPOCH;
        let nodes: [(&str, Assessment, NodeHeartbeats); 3] = [
            (
                "b-node",
                Assessment::new(Verdict::Zombie, vec![Evidence::StatusStale { since }, Evidence::OsImageUnknown { since, turned: true }]),
                NodeHeartbeats {
                    lease_observed: Some(1_765_000_000.125),
                    status_observed: 1_764_999_000.5,
                    remediated: true,
                    probe_success: Some(false),
                    status_threshold: 600.0,
                },
            ),
            (
                "a\\odd\"name\nhere",
                Assessment::new(Verdict::Suspect, vec![]),
                NodeHeartbeats { lease_observed: None, status_observed: 0.0, remediated: false, probe_success: None, status_threshold: 1e21 },
            ),
            (
                "c",
                Assessment::new(Verdict::Healthy, vec![]),
                NodeHeartbeats { lease_observed: Some(1e-7), status_observed: -3.25, remediated: false, probe_success: Some(true), status_threshold: 0.1 },
            ),
        ];
        let m = Metrics::new(PerNodeMetrics::All);
        let registry = Registry::new();
        let vecs: Vec<prometheus::GaugeVec> = NODE_FAMILIES
            .iter()
            .map(|(name, help, labels)| {
                let v = prometheus::GaugeVec::new(Opts::new(*name, *help), labels).expect("valid metric");
                registry.register(Box::new(v.clone())).expect("unique");
                v
            })
            .collect();
        for (name, a, hb) in &nodes {
            m.node(name, a, *hb);
            for v in Verdict::ALL {
                vecs[0].with_label_values(&[name, v.as_str()]).set(f64::from(u8::from(v == a.verdict)));
            }
            for kind in EVIDENCE_KINDS.iter().filter(|kind| a.evidence.iter().any(|e| e.kind() == **kind)) {
                vecs[1].with_label_values(&[kind, name]).set(1.0);
            }
            if let Some(t) = hb.lease_observed {
                vecs[2].with_label_values(&[name]).set(t);
            }
            vecs[3].with_label_values(&[name]).set(hb.status_observed);
            if let Some(ok) = hb.probe_success {
                vecs[4].with_label_values(&[name]).set(f64::from(u8::from(ok)));
            }
            vecs[5].with_label_values(&[name]).set(f64::from(u8::from(hb.remediated)));
            vecs[6].with_label_values(&[name]).set(hb.status_threshold);
        }
        let mut families = registry.gather();
        // The crate sorts families by name; the rendering keeps NODE_FAMILIES' order.
        families.sort_by_key(|f| NODE_FAMILIES.iter().position(|(n, _, _)| *n == f.name()));
        let mut expected = Vec::new();
        TextEncoder::new().encode(&families, &mut expected).expect("encodes");
        let mut text = String::new();
        m.node_series.render_into(&mut text);
        assert_eq!(text, String::from_utf8(expected).expect("utf-8"));
        // Where the crate writes `inf`, the exposition format's own spelling.
        let mut special = String::new();
        for v in [f64::INFINITY, f64::NEG_INFINITY, f64::NAN] {
            push_value(&mut special, v);
            special.push(' ');
        }
        assert_eq!(special, "+Inf -Inf NaN ");
    }

    #[test]
    fn per_node_series_can_be_switched_off() {
        let m = Metrics::new(PerNodeMetrics::None);
        let a = Assessment::new(Verdict::Zombie, vec![]);
        m.node(
            "n1",
            &a,
            NodeHeartbeats { lease_observed: Some(1.0), status_observed: 2.0, remediated: true, probe_success: Some(true), status_threshold: 600.0 },
        );
        m.probe(&ProbeOutcome::Success, 0.1);
        assert!(!m.render().contains("node=\"n1\""));
    }
}
