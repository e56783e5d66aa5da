//! The decision core: a pure function from facts and `now` to a verdict per node.
//!
//! Nothing here reads a clock, a socket or the cluster, so every rule is unit-tested with
//! virtual time. The rules, and why their defaults are what they are, are explained in
//! `docs/design.md`; in short:
//!
//! * A node is judged only while it claims `Ready=True` and its Lease is alive (seen renewed,
//!   by pulsecheck's clock, within `lease_grace`, or within a quarter more than the Lease's own
//!   `leaseDurationSeconds` when that is longer). That is exactly the case the node lifecycle
//!   controller accepts as healthy.
//! * Evidence is either **conclusive** (enough alone) or **supporting** (two different kinds
//!   together are conclusive; one alone makes the node Suspect):
//!   - NodeStatus not seen refreshed for the node's own status threshold — conclusive (from
//!     its kubelet's cadence, the intervals pulsecheck saw, else `status_stale_after`; see
//!     [`crate::cadence`]);
//!   - osImage "Unknown": conclusive when pulsecheck saw a real value turn into it and it stayed
//!     for `os_image_unknown_after`; supporting when the node always said so or not yet long enough;
//!   - a problem condition set by another tool (node-problem-detector) — supporting;
//!   - kubelet probes failing `probe_failure_threshold` times in a row, on a kubelet that has
//!     answered pulsecheck before — supporting; conclusive once pulsecheck has got through to the
//!     kubelet in every failure for `probe_zombie_after` (it answered unhealthy, or took the
//!     request over TLS and hung or broke off). Not getting through (no connection, a TLS
//!     handshake that never completes, an apiserver proxy that cannot reach it) is the way to it
//!     failing as often as the node, so it stays supporting; ignored during a probe partition.
//! * A Lease not renewed within `lease_grace` while the status is stale too (or kube-controller-
//!   manager already marked the node Unknown) is **Dead**: kube-controller-manager's case.
//!
//! This module never decides what to *do*; [`crate::guard`] does.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use crate::{
    agent::{self, DiskHealth},
    cadence::StatusThreshold,
    facts::{AgentFacts, FleetFacts, LeaseFacts, NodeFacts, NodeName, ProbeFacts, ProbeOutcome, ReadyState},
    parse::{Contradiction, below, positive_duration},
};

/// What pulsecheck concludes about a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Lease dead and status stale: the node lifecycle controller's case.
    Dead,
    /// Lease alive, but the node is dead by evidence.
    Zombie,
    /// Some evidence, not yet conclusive.
    Suspect,
    /// Not judged: no Lease, or the node does not claim Ready.
    Unknown,
    /// Heartbeats consistent, no evidence.
    Healthy,
    /// Labelled `pulsecheck.dev/exclude=true` or outside `--node-selector`.
    Excluded,
}

impl Verdict {
    /// Every verdict, worst first (the order `check` sorts by).
    pub const ALL: [Verdict; 6] = [Verdict::Zombie, Verdict::Dead, Verdict::Suspect, Verdict::Unknown, Verdict::Healthy, Verdict::Excluded];

    /// Lower-case name, as used in metrics and output.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Healthy => "healthy",
            Verdict::Suspect => "suspect",
            Verdict::Zombie => "zombie",
            Verdict::Dead => "dead",
            Verdict::Unknown => "unknown",
            Verdict::Excluded => "excluded",
        }
    }

    /// Rank for sorting worst first.
    pub fn severity(self) -> u8 {
        match self {
            Verdict::Zombie => 0,
            Verdict::Dead => 1,
            Verdict::Suspect => 2,
            Verdict::Unknown => 3,
            Verdict::Healthy => 4,
            Verdict::Excluded => 5,
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One piece of evidence about a node, with what an operator needs to check it. What grows with
/// time is held as the instant it started, never as an age: an assessment stays true, word for
/// word, until its facts change or a clock rule turns ([`turns_at`]), so it need not be made again
/// at every tick to be told right ([`Evidence::told`] counts the ages to the instant it is told).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Evidence {
    /// NodeStatus (Ready's lastHeartbeatTime) not seen changing since `since`.
    StatusStale { since: Timestamp },
    /// osImage is "Unknown" since `since`; `turned` when pulsecheck saw it change from a real value.
    OsImageUnknown { since: Timestamp, turned: bool },
    /// A problem condition set by another tool is True.
    ProblemCondition { condition: String, reason: String },
    /// Kubelet probes failed `consecutive` times in a row, since `since`.
    ProbeFailing { consecutive: u32, since: Timestamp, last_error: String },
    /// The Lease was not seen renewed since `since`.
    LeaseStale { since: Timestamp },
    /// The node has no Lease in kube-node-lease.
    NoLease,
    /// The node does not claim Ready (Ready is False, Unknown or missing).
    NotClaimingReady { ready: ReadyState, reason: String },
    /// pulsecheck first saw the Lease at `since` and has not seen it renewed yet: it cannot tell
    /// a live Lease from a dead one before a renewal or `--lease-grace`.
    NotObservedYet { since: Timestamp },
    /// The node's agent, still renewing its own Lease, reports a disk operation on `path` hung
    /// (`problem` "hung") or failing (`problem` the error) for `for_seconds` — as it reported
    /// them, which is all pulsecheck counts (see `agent_evidence`).
    AgentDisk { path: String, operation: String, problem: String, for_seconds: i64 },
    /// The node's agent stopped renewing its Lease at `since` while the kubelet's renews.
    AgentSilent { since: Timestamp },
}

impl Evidence {
    /// Short snake_case name, used as a metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Evidence::StatusStale { .. } => "status_stale",
            Evidence::OsImageUnknown { .. } => "os_image_unknown",
            Evidence::ProblemCondition { .. } => "problem_condition",
            Evidence::ProbeFailing { .. } => "probe_failing",
            Evidence::LeaseStale { .. } => "lease_stale",
            Evidence::NoLease => "no_lease",
            Evidence::NotClaimingReady { .. } => "not_claiming_ready",
            Evidence::NotObservedYet { .. } => "not_observed_yet",
            Evidence::AgentDisk { .. } => "agent_disk",
            Evidence::AgentSilent { .. } => "agent_silent",
        }
    }

    /// The evidence as told at `now`: its ages in whole seconds up to `now`.
    pub fn told(&self, now: Timestamp) -> Told {
        let secs = |since: &Timestamp| age(now, *since).as_secs();
        match self {
            Evidence::StatusStale { since } => Told::StatusStale { for_seconds: secs(since) },
            Evidence::OsImageUnknown { since, turned } => Told::OsImageUnknown { for_seconds: secs(since), turned: *turned },
            Evidence::ProblemCondition { condition, reason } => Told::ProblemCondition { condition: condition.clone(), reason: reason.clone() },
            Evidence::ProbeFailing { consecutive, since, last_error } => {
                Told::ProbeFailing { consecutive: *consecutive, for_seconds: secs(since), last_error: last_error.clone() }
            }
            Evidence::LeaseStale { since } => Told::LeaseStale { for_seconds: secs(since) },
            Evidence::NoLease => Told::NoLease,
            Evidence::NotClaimingReady { ready, reason } => Told::NotClaimingReady { ready: *ready, reason: reason.clone() },
            Evidence::NotObservedYet { since } => Told::NotObservedYet { for_seconds: secs(since) },
            Evidence::AgentDisk { path, operation, problem, for_seconds } => {
                Told::AgentDisk { path: path.clone(), operation: operation.clone(), problem: problem.clone(), for_seconds: *for_seconds }
            }
            Evidence::AgentSilent { since } => Told::AgentSilent { for_seconds: secs(since) },
        }
    }
}

/// [`Evidence`] as told at one instant — in Events, logs, the node condition and `check`'s
/// output — with its ages in whole seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Told {
    /// NodeStatus not seen changing for `for_seconds`.
    StatusStale { for_seconds: i64 },
    /// osImage "Unknown" for `for_seconds`.
    OsImageUnknown { for_seconds: i64, turned: bool },
    /// A problem condition set by another tool is True.
    ProblemCondition { condition: String, reason: String },
    /// Kubelet probes failed `consecutive` times in a row, for `for_seconds`.
    ProbeFailing { consecutive: u32, for_seconds: i64, last_error: String },
    /// The Lease not seen renewed for `for_seconds`.
    LeaseStale { for_seconds: i64 },
    /// No Lease in kube-node-lease.
    NoLease,
    /// The node does not claim Ready.
    NotClaimingReady { ready: ReadyState, reason: String },
    /// The Lease first seen `for_seconds` ago, not yet seen renewed.
    NotObservedYet { for_seconds: i64 },
    /// The agent reports a disk operation hung or failing for `for_seconds`.
    AgentDisk { path: String, operation: String, problem: String, for_seconds: i64 },
    /// The agent's Lease not renewed for `for_seconds` while the kubelet's is.
    AgentSilent { for_seconds: i64 },
}

impl std::fmt::Display for Told {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Told::StatusStale { for_seconds } => write!(f, "NodeStatus not refreshed for {}", human(*for_seconds)),
            Told::OsImageUnknown { for_seconds, turned: true } => {
                write!(f, "osImage turned \"Unknown\" {} ago", human(*for_seconds))
            }
            Told::OsImageUnknown { for_seconds, turned: false } => {
                write!(f, "osImage \"Unknown\" (as first seen) for {}", human(*for_seconds))
            }
            Told::ProblemCondition { condition, reason } => write!(f, "condition {condition}=True ({reason})"),
            Told::ProbeFailing { consecutive, for_seconds, last_error } => {
                write!(f, "kubelet probe failed {consecutive}x over {}: {last_error}", human(*for_seconds))
            }
            Told::LeaseStale { for_seconds } => write!(f, "Lease not renewed for {}", human(*for_seconds)),
            Told::NoLease => write!(f, "no Lease in kube-node-lease"),
            Told::NotClaimingReady { ready, reason } => write!(f, "Ready={} ({reason})", ready.as_str()),
            Told::NotObservedYet { for_seconds } => {
                write!(f, "Lease first seen {} ago and not yet seen renewed: not judged before it renews or --lease-grace passes", human(*for_seconds))
            }
            Told::AgentDisk { path, operation, problem, for_seconds } if problem == "hung" => {
                write!(f, "pulsecheck-agent: {operation} of {path} hung for {}", human(*for_seconds))
            }
            Told::AgentDisk { path, operation, problem, for_seconds } => {
                write!(f, "pulsecheck-agent: {operation} of {path} failing for {}: {problem}", human(*for_seconds))
            }
            Told::AgentSilent { for_seconds } => {
                write!(f, "pulsecheck-agent's Lease not renewed for {} while the kubelet's is", human(*for_seconds))
            }
        }
    }
}

/// Seconds as "1h2m3s" (whole seconds).
pub fn human(seconds: i64) -> String {
    humantime::format_duration(Duration::from_secs(seconds.max(0).unsigned_abs())).to_string()
}

/// The verdict on one node with the evidence behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment {
    /// The verdict.
    pub verdict: Verdict,
    /// Why; empty for a healthy node.
    pub evidence: Vec<Evidence>,
    /// For a Healthy node that is probed: why the probes cannot confirm its health right now
    /// (a probe partition, an expired result, a last probe that did not succeed). Health that
    /// rests on ignored or missing evidence never releases a node.
    pub unconfirmed: Option<&'static str>,
    /// A Healthy or Suspect verdict that rests on a NodeStatus this instance has not yet seen
    /// change: right after a start (or a re-created node) a frozen status looks as fresh as a
    /// live one until it has been watched for `--status-stale-after`. Such a verdict is shown
    /// but changes nothing — no condition write, no step towards a release — so a restart never
    /// undoes what an earlier run concluded before it has seen for itself.
    pub provisional: bool,
}

impl Assessment {
    /// A verdict with its evidence, confirmed and not provisional.
    pub fn new(verdict: Verdict, evidence: Vec<Evidence>) -> Self {
        Assessment { verdict, evidence, unconfirmed: None, provisional: false }
    }

    /// The node is only waiting for its first observed Lease renewal: not a verdict anyone
    /// should hear about (a restart would otherwise report every node twice).
    pub fn awaiting_first_renewal(&self) -> bool {
        matches!(self.evidence.as_slice(), [Evidence::NotObservedYet { .. }])
    }

    /// Healthy on evidence that would catch the failure again: not resting on probes that
    /// cannot confirm it, nor on a status this instance has not seen change. Only such health
    /// counts towards a release.
    pub fn healthy_on_evidence(&self) -> bool {
        self.verdict == Verdict::Healthy && self.unconfirmed.is_none() && !self.provisional
    }

    /// One line for Events, logs and the node condition, told at `now`.
    pub fn explain(&self, now: Timestamp) -> String {
        if self.evidence.is_empty() {
            return match self.verdict {
                Verdict::Healthy => "Lease and NodeStatus heartbeats are consistent".into(),
                Verdict::Excluded => "excluded by label pulsecheck.dev/exclude=true or --node-selector".into(),
                v => v.as_str().into(),
            };
        }
        self.evidence.iter().map(|e| e.told(now).to_string()).collect::<Vec<_>>().join("; ")
    }

    /// The evidence as told at `now`.
    pub fn told(&self, now: Timestamp) -> Vec<Told> {
        self.evidence.iter().map(|e| e.told(now)).collect()
    }
}

/// Thresholds of the decision core; defaults follow kubelet and kube-controller-manager defaults.
#[derive(Debug, Clone, clap::Args)]
pub struct ThresholdArgs {
    /// A Lease seen renewed (by pulsecheck's clock) within this long counts as alive (kube-controller-manager's node-monitor-grace-period); a Lease whose own leaseDurationSeconds plus a quarter is longer gets that (at most half of --status-stale-after).
    #[arg(long, env = "PULSECHECK_LEASE_GRACE", value_name = "DURATION", default_value = "50s", value_parser = positive_duration)]
    pub lease_grace: Duration,
    /// NodeStatus not seen refreshed for this long while the Lease is alive makes a node a zombie, on nodes whose kubelet's cadence is not known (doubled until two of its report intervals are seen); a kubelet's /configz or the report intervals seen override it (see docs/design.md).
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
    /// A node agent (pulsecheck-agent) that keeps renewing its Lease and reports a disk operation hung or failing for this long is conclusive on its own; shorter, it is supporting.
    #[arg(long, env = "PULSECHECK_AGENT_DISK_AFTER", value_name = "DURATION", default_value = "30s", value_parser = positive_duration)]
    pub agent_disk_after: Duration,
    /// Count node agents' reports (pulsecheck-agent Leases in pulsecheck's namespace) as evidence. Set only where the agent runs with its admission policy (the chart's agent.enabled does): without that policy anyone allowed to write Leases there could forge a report.
    #[arg(long, env = "PULSECHECK_AGENT_EVIDENCE", value_name = "BOOL", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub agent_evidence: bool,
}

impl ThresholdArgs {
    /// The thresholds these flags give (the probe thresholds keep their defaults; `run` sets
    /// them from its probe flags). The rule `run` and `check` share: the Lease grace must be
    /// shorter than the status threshold, or a live Lease could never outlast a stale status.
    pub fn thresholds(&self) -> Result<Thresholds, Contradiction> {
        below(("--lease-grace", self.lease_grace), ("--status-stale-after", self.status_stale_after))?;
        Ok(Thresholds {
            lease_grace: self.lease_grace,
            status_stale_after: self.status_stale_after,
            os_image_unknown_after: self.os_image_unknown_after,
            agent_disk_after: self.agent_disk_after,
            ..Thresholds::default()
        })
    }

    /// The problem condition types, trimmed, without empty entries.
    pub fn problem_conditions(&self) -> Vec<String> {
        self.problem_conditions.iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
    }
}

/// Thresholds of the decision core (validated by [`crate::config`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    /// A Lease seen renewed within this long is alive.
    pub lease_grace: Duration,
    /// Status not seen refreshed for this long is stale.
    pub status_stale_after: Duration,
    /// A real osImage turned "Unknown" for this long is conclusive.
    pub os_image_unknown_after: Duration,
    /// Consecutive probe failures that become evidence.
    pub probe_failure_threshold: u32,
    /// Probes failing this long are conclusive.
    pub probe_zombie_after: Duration,
    /// A probe record older than this is ignored (results expire).
    pub probe_result_ttl: Duration,
    /// An agent reporting its disk hung or failing this long is conclusive.
    pub agent_disk_after: Duration,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            lease_grace: Duration::from_secs(50),
            status_stale_after: Duration::from_secs(600),
            os_image_unknown_after: Duration::from_secs(120),
            probe_failure_threshold: 3,
            probe_zombie_after: Duration::from_secs(180),
            probe_result_ttl: Duration::from_secs(90),
            agent_disk_after: Duration::from_secs(30),
        }
    }
}

impl Thresholds {
    /// How long `lease` may go unrenewed and still count as alive: `--lease-grace`, or a quarter
    /// more than the Lease's own `leaseDurationSeconds` when that is longer (at most half of
    /// `--status-stale-after`). A kubelet renews
    /// every quarter of its duration, so with `nodeLeaseDurationSeconds: 200` it renews every
    /// 50 s and a fixed 50 s grace would call every such Lease stale between renewals; the
    /// default 40 s duration gives exactly the default 50 s.
    pub fn lease_grace_for(&self, lease: &LeaseFacts) -> Duration {
        // Never more than half the status threshold: a Lease must go stale well before a
        // stopped node's status does, or a powered-off node would look like a zombie.
        lease.duration.map_or(self.lease_grace, |d| self.lease_grace.max((d + d / 4).min(self.status_stale_after / 2)))
    }

    /// Node `node`'s own status threshold: from its kubelet's `/configz`, the intervals
    /// pulsecheck saw, or `--status-stale-after` (see [`crate::cadence`]).
    pub fn status_threshold_for(&self, node: &NodeFacts, lease: Option<&LeaseFacts>) -> StatusThreshold {
        let grace = lease.map_or(self.lease_grace, |l| self.lease_grace_for(l));
        node.cadence.threshold(self.status_stale_after, grace)
    }

    /// True while `lease` counts as alive at `at`: seen renewed within its grace.
    pub fn lease_alive(&self, at: Timestamp, lease: &LeaseFacts) -> bool {
        !at_least(age(at, lease.renew.observed_at), self.lease_grace_for(lease))
    }
}

fn age(now: Timestamp, since: Timestamp) -> SignedDuration {
    now.duration_since(since)
}

fn at_least(d: SignedDuration, threshold: Duration) -> bool {
    SignedDuration::try_from(threshold).is_ok_and(|t| d >= t)
}

/// What the node's agent (the opt-in `pulsecheck-agent`, [`crate::agent`]) lets a verdict see.
#[derive(Debug, Clone, Copy)]
pub enum AgentSight<'a> {
    /// No agent Lease for the node: an agent absent (not installed, not scheduled there, its Pod
    /// deleted and its Lease collected with it) is no evidence at all.
    Absent,
    /// The node has an agent, but its reports cannot be relied on now (their watch is broken):
    /// no evidence either way, and the node's health is not confirmed.
    Hidden(&'a str),
    /// The agent's facts; `silence_counts` is false during an agent partition (most agents
    /// silent at once: pulsecheck's watch, the agents' RBAC or their DaemonSet, not the nodes).
    Seen(&'a AgentFacts, bool),
}

impl<'a> AgentSight<'a> {
    /// Node `name`'s agent as [`evaluate`] sees it in `facts`.
    pub fn of(facts: &'a FleetFacts, name: &str, silence_counts: bool) -> AgentSight<'a> {
        match (facts.agents.get(name), facts.agents_hidden.as_deref()) {
            (None, _) => AgentSight::Absent,
            (Some(_), Some(why)) => AgentSight::Hidden(why),
            (Some(a), None) => AgentSight::Seen(a, silence_counts),
        }
    }
}

/// How long an agent Lease may go unrenewed and still count as alive: a quarter more than its
/// own duration (the agent renews several times within it), else `--lease-grace`.
pub fn agent_grace(agent: &AgentFacts, th: &Thresholds) -> Duration {
    agent.duration.map_or(th.lease_grace, |d| d + d / 4)
}

/// How long an agent's report of `operation` in trouble (`problem`: "hung" or the error) must
/// last before it condemns the node. A read or stat (what the kubelet's status loop does: its
/// cadvisor reads `/etc/os-release`) that hangs, and any operation failing with EIO/EROFS, condemn
/// after `--agent-disk-after`. A write or fsync that is still running is different: a healthy but
/// throttled cloud volume can stall an fsync for tens of seconds under a large image pull, and the
/// kubelet's status loop never fsyncs; such a hang condemns only after four times as long (120 s by
/// default, the kernel's own hung-task timeout), and is supporting before.
fn condemning_after(operation: &str, problem: &str, th: &Thresholds) -> Duration {
    if problem == "hung" && matches!(operation, "write" | "fsync" | "mkdir") { th.agent_disk_after * 4 } else { th.agent_disk_after }
}

/// How long the agent Lease watch may deliver nothing while agents exist: the shortest agent
/// grace (every agent renews several times within it).
pub fn agent_watch_silence(facts: &FleetFacts, th: &Thresholds) -> Duration {
    facts.agents.values().map(|a| agent_grace(a, th)).min().unwrap_or(th.lease_grace)
}

/// The reports a node agent can be counted under in `pulsecheck_agents`.
pub const AGENT_REPORTS: [&str; 8] = ["ok", "starting", "hung", "failing", "silent", "terminating", "unreadable", "hidden"];

/// How many agents report what at `now`, in [`AGENT_REPORTS`] order.
pub fn agent_reports(now: Timestamp, facts: &FleetFacts, th: &Thresholds) -> Vec<(&'static str, usize)> {
    let mut counts: Vec<(&'static str, usize)> = AGENT_REPORTS.iter().map(|r| (*r, 0)).collect();
    for a in facts.agents.values() {
        let report = if facts.agents_hidden.is_some() { "hidden" } else { agent_report(now, a, th) };
        if let Some(c) = counts.iter_mut().find(|(r, _)| *r == report) {
            c.1 += 1;
        }
    }
    counts
}

/// What `agent` reports at `now`, as counted in `pulsecheck_agents` while its reports can be
/// seen (one of [`AGENT_REPORTS`] but "hidden").
pub fn agent_report(now: Timestamp, a: &AgentFacts, th: &Thresholds) -> &'static str {
    match &a.report {
        Err(_) => "unreadable",
        Ok(r) if r.terminating => "terminating",
        Ok(_) if at_least(age(now, a.renew.observed_at), agent_grace(a, th)) => "silent",
        Ok(r) => match r.disk {
            DiskHealth::Ok => "ok",
            DiskHealth::Starting => "starting",
            DiskHealth::Hung { .. } => "hung",
            DiskHealth::Failing { .. } => "failing",
        },
    }
}

/// True when `agent` is silent in a way that counts: it was seen renewing, it did not say it was
/// going away, and it has not renewed within its grace.
pub fn agent_silent(now: Timestamp, agent: &AgentFacts, th: &Thresholds) -> bool {
    agent.renew.seen_changing && !agent.report.as_ref().is_ok_and(|r| r.terminating) && at_least(age(now, agent.renew.observed_at), agent_grace(agent, th))
}

/// What the agent says of the node: evidence (and whether it is conclusive), and why it does
/// not confirm the node's health when it does not. An agent that renews and reports its disk
/// loop hung or failing is the one thing that can condemn a node before its kubelet's report
/// period; everything else it can say (starting, terminating, unreadable, silent) is weak: the
/// agent may have been evicted, OOM-killed or upgraded, which says nothing about the node.
fn agent_evidence(now: Timestamp, agent: AgentSight<'_>, th: &Thresholds) -> (Option<(Evidence, bool)>, Option<&'static str>) {
    let (a, silence_counts) = match agent {
        AgentSight::Absent => return (None, None),
        AgentSight::Hidden(_) => return (None, Some("the node's agent reports cannot be seen")),
        AgentSight::Seen(a, silence_counts) => (a, silence_counts),
    };
    let report = match &a.report {
        Ok(r) if r.terminating => return (None, Some("the node's agent is terminating")),
        Ok(r) => r,
        Err(_) => return (None, Some("the node's agent report cannot be read")),
    };
    let since_renewal = age(now, a.renew.observed_at);
    if at_least(since_renewal, agent_grace(a, th)) {
        let silent = (agent_silent(now, a, th) && silence_counts).then_some((Evidence::AgentSilent { since: a.renew.observed_at }, false));
        return (silent, Some("the node's agent stopped renewing"));
    }
    if !a.renew.seen_changing {
        // First sight (a restart of pulsecheck): the report may be a dead agent's last word.
        return (None, Some("the node's agent has not been seen renewing yet"));
    }
    let (path, operation, problem, reported, can_condemn) = match &report.disk {
        DiskHealth::Ok => return (None, None),
        DiskHealth::Starting => return (None, Some("the node's agent has not finished its first disk check")),
        DiskHealth::Hung { path, operation, for_seconds } => (path, operation, "hung".to_string(), *for_seconds, true),
        DiskHealth::Failing { path, operation, error, for_seconds } => (path, operation, error.clone(), *for_seconds, agent::failure_condemns(error)),
    };
    // The seconds as the agent reported them, never more: it renews at once when its disk state
    // changes and then every renew interval from that moment, so its reports reach
    // --agent-disk-after on time by themselves. A guess at how long the trouble went on since
    // the last renewal would grow a short stall whose "back to ok" renewal was lost (or is late
    // in a lagging watch) into a conclusive one.
    let for_seconds = i64::try_from(reported).unwrap_or(i64::MAX);
    let conclusive = can_condemn && u64::try_from(for_seconds).is_ok_and(|s| s >= condemning_after(operation, &problem, th).as_secs());
    let evidence = Evidence::AgentDisk { path: path.clone(), operation: operation.clone(), problem, for_seconds };
    (Some((evidence, conclusive)), Some("the node's agent reports its disk in trouble"))
}

/// Judges one node. `probes_trusted` is false during a probe partition: probe evidence is
/// then ignored entirely.
pub fn assess(
    now: Timestamp,
    node: &NodeFacts,
    lease: Option<&LeaseFacts>,
    probe: Option<&ProbeFacts>,
    agent: AgentSight<'_>,
    th: &Thresholds,
    probes_trusted: bool,
) -> Assessment {
    if node.excluded_by_label || !node.selected {
        return Assessment::new(Verdict::Excluded, vec![]);
    }
    let Some(lease) = lease else {
        return Assessment::new(Verdict::Unknown, vec![Evidence::NoLease]);
    };
    let lease_age = age(now, lease.renew.observed_at);
    let status_age = age(now, node.status.observed_at);
    let status_stale = at_least(status_age, th.status_threshold_for(node, Some(lease)).stale_after());
    let stale_status = Evidence::StatusStale { since: node.status.observed_at };

    if at_least(lease_age, th.lease_grace_for(lease)) {
        let lease_stale = Evidence::LeaseStale { since: lease.renew.observed_at };
        if status_stale || node.ready == ReadyState::Unknown {
            let mut evidence = vec![lease_stale];
            if status_stale {
                evidence.push(stale_status);
            }
            return Assessment::new(Verdict::Dead, evidence);
        }
        // The status is still fresh: the kubelet works, only its Lease does not. Odd, not dead.
        return Assessment::new(Verdict::Suspect, vec![lease_stale]);
    }
    if !lease.renew.seen_changing {
        // First sight only (a restart, a new node): a dead Lease looks as fresh as a live one
        // until it renews or --lease-grace passes. Judging now would call a dead node healthy.
        return Assessment::new(Verdict::Unknown, vec![Evidence::NotObservedYet { since: lease.renew.observed_at }]);
    }
    if node.ready != ReadyState::True {
        // The kubelet itself (or kube-controller-manager) says not ready: nothing to cross-check.
        return Assessment::new(Verdict::Unknown, vec![Evidence::NotClaimingReady { ready: node.ready, reason: node.ready_reason.clone() }]);
    }

    // Ready=True and the Lease is alive: look for evidence that the node is dead anyway.
    let mut conclusive = 0;
    let mut supporting_kinds = 0;
    let mut evidence = Vec::new();
    if status_stale {
        conclusive += 1;
        evidence.push(stale_status);
    }
    if let Some(since) = node.os_image.unknown_since {
        let d = age(now, since);
        if node.os_image.turned_unknown && at_least(d, th.os_image_unknown_after) {
            conclusive += 1;
        } else {
            supporting_kinds += 1;
        }
        evidence.push(Evidence::OsImageUnknown { since, turned: node.os_image.turned_unknown });
    }
    if !node.problems.is_empty() {
        supporting_kinds += 1;
        evidence.extend(node.problems.iter().map(|p| Evidence::ProblemCondition { condition: p.kind.clone(), reason: p.reason.clone() }));
    }
    if let Some(p) = probe.filter(|_| probes_trusted)
        && let Some(failing) = probe_evidence(now, p, th)
    {
        if let Evidence::ProbeFailing { .. } = failing {
            // Conclusive only once pulsecheck has got through to the kubelet in every failure for
            // the whole `probe_zombie_after` (it answered unhealthy, or took the request and hung
            // or broke off). Not getting through, on a kubelet answered before, is the way to it
            // failing (a firewall, a NetworkPolicy, a path dropping large packets between
            // pulsecheck and port 10250) as often as the node: supporting only — a node that is
            // dead too stops its status, and the status threshold condemns it. A kubelet that
            // answers unhealthy (its own 5xx healthz report) condemns itself even while its
            // status loop reports. One that takes the request and hangs or breaks off is
            // supporting evidence only, however long: the hang may be pulsecheck's own request
            // (the kubelet's authentication webhook to the apiserver throttled, a proxy or mesh
            // sidecar on pulsecheck's side that took the bytes) rather than the node, and "no
            // report since the hangs began" says nothing while they are shorter than the node's
            // report period (5 m by default). A node whose status stopped as well is condemned by
            // its status threshold; one that also shows another kind of evidence, at once.
            let answered_unhealthy = matches!(p.last, Some((ProbeOutcome::Failure(_), _)));
            if answered_unhealthy && p.connected_since.is_some_and(|since| at_least(age(now, since), th.probe_zombie_after)) {
                conclusive += 1;
            } else {
                supporting_kinds += 1;
            }
        }
        evidence.push(failing);
    }
    let (agent_said, agent_unconfirmed) = agent_evidence(now, agent, th);
    if let Some((said, is_conclusive)) = agent_said {
        // One event is one kind of evidence: a failing read of /etc/os-release is also what turns
        // osImage "Unknown" (cadvisor's read), and an agent gone silent while probes cannot get
        // through are both the node's network — neither pair may add up to a Zombie on its own.
        let same_event = match &said {
            Evidence::AgentDisk { path, .. } => path.ends_with("os-release") && node.os_image.unknown_since.is_some(),
            Evidence::AgentSilent { .. } => evidence.iter().any(|e| matches!(e, Evidence::ProbeFailing { .. })),
            _ => false,
        };
        if is_conclusive {
            conclusive += 1;
        } else if !same_event {
            supporting_kinds += 1;
        }
        evidence.push(said);
    }
    let verdict = if conclusive > 0 || supporting_kinds >= 2 {
        Verdict::Zombie
    } else if supporting_kinds == 1 {
        Verdict::Suspect
    } else {
        Verdict::Healthy
    };
    let mut assessment = Assessment::new(verdict, evidence);
    if verdict == Verdict::Healthy {
        assessment.unconfirmed = probe.and_then(|p| unconfirmed_by_probes(now, p, th, probes_trusted)).or(agent_unconfirmed);
    }
    // A Zombie rests on what pulsecheck saw for itself (a status it watched not change for the
    // whole threshold, osImage turning, probes failing); the milder verdicts, on a status never
    // seen changing, may rest on a frozen status not watched long enough yet.
    assessment.provisional = matches!(verdict, Verdict::Healthy | Verdict::Suspect) && !node.status.seen_changing;
    assessment
}

/// The earliest instant after `at` at which a clock rule of this module turns for the facts of
/// one name, or `None` when only a change of its facts can change anything: every rule that looks
/// at the clock — in [`assess`], and in the fleet-wide [`probe_partition`],
/// [`agent_silence_counts`] and [`agent_reports`] — compares an age with a threshold
/// (`age(now, x) >= t`), which turns once, at `x + t`. Until the earliest such instant still
/// ahead, the verdict, its evidence kinds, `unconfirmed` and `provisional` stay as they are (only
/// the ages the evidence is told with grow), and so does the name's share of the fleet-wide
/// figures. The [`crate::docket::Docket`] looks at a name again at this instant instead of at
/// every tick. (An excluded node gets the same instants: one look too many costs nothing.)
pub fn turns_at(
    at: Timestamp,
    node: Option<&NodeFacts>,
    lease: Option<&LeaseFacts>,
    probe: Option<&ProbeFacts>,
    agent: Option<&AgentFacts>,
    th: &Thresholds,
) -> Option<Timestamp> {
    let mut turns: Vec<(Timestamp, Duration)> = Vec::new();
    if let Some(l) = lease {
        turns.push((l.renew.observed_at, th.lease_grace_for(l)));
    }
    if let Some(n) = node {
        let threshold = th.status_threshold_for(n, lease);
        turns.push((n.status.observed_at, threshold.stale_after()));
        if threshold.until_reread.is_some() {
            // Not a verdict's turn, but [`note_cadence_rereads`]'s: the shorter threshold reached
            // asks for the kubelet's configuration to be read again.
            turns.push((n.status.observed_at, threshold.after));
        }
        if let Some(since) = n.os_image.unknown_since {
            turns.push((since, th.os_image_unknown_after));
        }
    }
    if let Some(p) = probe {
        if let Some((_, last)) = &p.last {
            turns.push((*last, th.probe_result_ttl));
        }
        if let Some(since) = p.connected_since {
            turns.push((since, th.probe_zombie_after));
        }
    }
    if let Some(a) = agent {
        turns.push((a.renew.observed_at, agent_grace(a, th)));
    }
    turns.into_iter().filter_map(|(since, after)| since.checked_add(SignedDuration::try_from(after).ok()?).ok()).filter(|t| *t > at).min()
}

/// Why the probes of a node pulsecheck can probe do not confirm its health right now, if they
/// do not. Nodes it cannot probe at all (never reached, refused, untrusted) need no confirmation.
fn unconfirmed_by_probes(now: Timestamp, probe: &ProbeFacts, th: &Thresholds, probes_trusted: bool) -> Option<&'static str> {
    if !probe.reached || probe.misconfiguration().is_some() {
        return None;
    }
    let Some((last, at)) = &probe.last else { return Some("not probed yet") };
    if !probes_trusted {
        Some("probe evidence is ignored during a probe partition")
    } else if at_least(age(now, *at), th.probe_result_ttl) {
        Some("the latest probe result expired")
    } else if *last != ProbeOutcome::Success {
        Some("the latest probe did not succeed")
    } else {
        None
    }
}

/// Marks every node whose current status gap is not a cadence (see
/// [`NodeFacts::uncadenced_gap`]): its status judged stale (a wedge caught), its Lease stale,
/// no Lease, or not claiming Ready (a reboot, a stopped kubelet). The controller calls this after
/// every evaluation it can see by, with the nodes it judged. A node merely not observed long
/// enough yet is left alone: its first interval is what protects a slow reporter at pulsecheck's
/// start.
pub fn note_uncadenced_gaps<'a>(facts: &mut FleetFacts, judged: impl IntoIterator<Item = (&'a NodeName, &'a Assessment)>) {
    for (name, a) in judged {
        let not_a_cadence = a
            .evidence
            .iter()
            .any(|e| matches!(e, Evidence::StatusStale { .. } | Evidence::LeaseStale { .. } | Evidence::NoLease | Evidence::NotClaimingReady { .. }));
        if not_a_cadence {
            facts.mark_uncadenced_gap(name);
        }
    }
}

/// Asks for `/configz` to be read again on every node whose status has been quiet for the shorter
/// threshold its kubelet's configuration gives, when that configuration was read before the
/// node's latest report ([`crate::cadence::StatusCadence::reread_after`]): the kubelet may have
/// restarted with another one since. The node is judged by the other sources until the read
/// confirms the short threshold — one probe interval later — so a rollout that lengthens the
/// report frequency condemns nobody, and a wedge on a fast reporter is still caught in seconds.
/// Looks at the nodes named in `judged` (their facts changed or a clock rule came due: the
/// quieter threshold's instant is one of [`turns_at`]'s).
pub fn note_cadence_rereads<'a>(at: Timestamp, facts: &mut FleetFacts, th: &Thresholds, judged: impl IntoIterator<Item = &'a NodeName>) {
    let FleetFacts { nodes, leases, .. } = facts;
    for name in judged {
        let Some(node) = nodes.get_mut(name) else { continue };
        let threshold = th.status_threshold_for(node, leases.get(name));
        if threshold.until_reread.is_some() && at_least(age(at, node.status.observed_at), threshold.after) {
            node.cadence.recheck = true;
        }
    }
}

/// Verdicts by node name.
pub type Assessments = crate::facts::NodeMap<Assessment>;

/// The verdicts on a whole fleet at one instant.
#[derive(Debug, Clone, Default)]
pub struct Evaluation {
    /// Verdict per node name.
    pub assessments: Assessments,
    /// False during a probe partition (probe evidence ignored).
    pub probes_trusted: bool,
    /// Live nodes whose latest probe failed.
    pub probes_failing: usize,
    /// Live nodes with a recent probe result.
    pub probes_recent: usize,
    /// False during an agent partition (agents' silence ignored, see [`agent_silence_counts`]).
    pub agent_silence_counts: bool,
}

/// Judges every node: one evaluation pass, the controller's tick and `check`'s core.
pub fn evaluate(now: Timestamp, facts: &FleetFacts, th: &Thresholds, partition_threshold_percent: f64) -> Evaluation {
    let (probes_trusted, probes_failing, probes_recent) = probe_partition(now, facts, th, partition_threshold_percent);
    let silence_counts = agent_silence_counts(now, facts, th, partition_threshold_percent);
    let assessments = facts
        .nodes
        .iter()
        .map(|(name, n)| {
            let agent = AgentSight::of(facts, name, silence_counts);
            (name.clone(), assess(now, n, facts.leases.get(name), facts.probes.get(name), agent, th, probes_trusted))
        })
        .collect();
    Evaluation { assessments, probes_trusted, probes_failing, probes_recent, agent_silence_counts: silence_counts }
}

/// Judges node `name` alone, as [`evaluate`] would (the probe partition computed over the
/// fleet): for a step that must be judged again on the view as it is now.
pub fn assess_node(now: Timestamp, facts: &FleetFacts, name: &str, th: &Thresholds, partition_threshold_percent: f64) -> Option<Assessment> {
    let node = facts.nodes.get(name)?;
    let (trusted, _, _) = probe_partition(now, facts, th, partition_threshold_percent);
    let agent = AgentSight::of(facts, name, agent_silence_counts(now, facts, th, partition_threshold_percent));
    Some(assess(now, node, facts.leases.get(name), facts.probes.get(name), agent, th, trusted))
}

/// Whether an agent's silence may count as evidence: not while more than
/// `partition_threshold_percent` of the agents on nodes whose kubelet Leases are alive are silent
/// at once (at least two of them) — a DaemonSet rolled or broken, the agents' RBAC or admission
/// policy refusing them, or pulsecheck's own watch, not that many nodes.
pub fn agent_silence_counts(now: Timestamp, facts: &FleetFacts, th: &Thresholds, partition_threshold_percent: f64) -> bool {
    let mut agents = 0usize;
    let mut silent = 0usize;
    for (name, agent) in &facts.agents {
        if facts.leases.get(name).is_some_and(|l| th.lease_alive(now, l)) {
            agents += 1;
            silent += usize::from(agent_silent(now, agent, th));
        }
    }
    silence_counts(silent, agents, partition_threshold_percent)
}

/// [`agent_silence_counts`] from its counts: `silent` of the `agents` on nodes whose kubelet
/// Leases are alive.
pub fn silence_counts(silent: usize, agents: usize, partition_threshold_percent: f64) -> bool {
    silent < 2 || (silent as f64) * 100.0 <= partition_threshold_percent * agents as f64
}

/// Probe evidence, when the failures reached the threshold and the latest result is recent.
fn probe_evidence(now: Timestamp, probe: &ProbeFacts, th: &Thresholds) -> Option<Evidence> {
    let (last, at) = probe.last.as_ref()?;
    // Failures count only against a kubelet pulsecheck has reached before: a port blocked from
    // the start, a certificate never trusted, an address of the wrong family say nothing about
    // the node (they are reported as pulsecheck's misconfiguration instead).
    if !probe.reached || at_least(age(now, *at), th.probe_result_ttl) || probe.consecutive_failures < th.probe_failure_threshold {
        return None;
    }
    let since = probe.failing_since?;
    let last_error = match last {
        ProbeOutcome::Failure(e) | ProbeOutcome::NoAnswer(e) | ProbeOutcome::Unreachable(e) | ProbeOutcome::NoHandshake(e) => e.clone(),
        ProbeOutcome::Timeout => "timed out".into(),
        _ => return None,
    };
    Some(Evidence::ProbeFailing { consecutive: probe.consecutive_failures, since, last_error })
}

/// Whether probe evidence can be trusted: false when probes fail for more than
/// `partition_threshold_percent` of the nodes whose Leases are alive — then pulsecheck's own
/// network is the likelier culprit. Returns `(trusted, failing, probed)`.
pub fn probe_partition(now: Timestamp, facts: &FleetFacts, th: &Thresholds, partition_threshold_percent: f64) -> (bool, usize, usize) {
    let mut probed = 0usize;
    let mut failing = 0usize;
    for (name, probe) in &facts.probes {
        let alive = facts.leases.get(name).is_some_and(|l| th.lease_alive(now, l));
        if let Some(fails) = probe_counts(now, probe, alive, th) {
            probed += 1;
            failing += usize::from(fails);
        }
    }
    (!partitioned(failing, probed, partition_threshold_percent), failing, probed)
}

/// How a node's probe record counts towards the probe partition at `now`: `Some(failing)` when
/// it counts (its Lease is alive, its latest result recent, succeeded or failed), `None` when not.
pub fn probe_counts(now: Timestamp, probe: &ProbeFacts, lease_alive: bool, th: &Thresholds) -> Option<bool> {
    let (last, at) = probe.last.as_ref()?;
    if !lease_alive || at_least(age(now, *at), th.probe_result_ttl) {
        return None;
    }
    // Nodes pulsecheck never reached are its own configuration problem (a blocked port, a
    // wrong address family), reported as such: they must not switch the guard on for all.
    if probe.misconfiguration().is_some() {
        return None;
    }
    match last {
        ProbeOutcome::Success => Some(false),
        o if o.is_failure() => Some(true),
        _ => None,
    }
}

/// Whether `failing` of `probed` nodes' probes failing is a probe partition. A single node
/// cannot be a partition; below two probed nodes the guard stays closed.
pub fn partitioned(failing: usize, probed: usize, partition_threshold_percent: f64) -> bool {
    probed >= 2 && (failing as f64) * 100.0 > partition_threshold_percent * probed as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::{Scope, fixtures::*};
    use crate::names;

    fn scope() -> Scope {
        Scope { taint_key: names::TAINT_KEY.into(), problem_conditions: vec!["ReadonlyFilesystem".into()], ..Default::default() }
    }

    /// A fleet observed since t(0): node `n` with the given builder, Lease renewed as given.
    struct World {
        facts: FleetFacts,
        th: Thresholds,
    }

    impl World {
        fn new() -> Self {
            World { facts: FleetFacts::default(), th: Thresholds::default() }
        }
        fn node(&mut self, at: i64, b: NodeBuilder) -> &mut Self {
            self.facts.apply_node(&b.build(), &scope(), t(at));
            self
        }
        fn lease(&mut self, at: i64, renew: i64) -> &mut Self {
            self.facts.apply_lease(&lease("n", t(renew)), t(at));
            self
        }
        /// Node `n`'s agent renewing at `at` (its clock three hours ahead) with `disk`.
        fn agent(&mut self, at: i64, disk: DiskHealth) -> &mut Self {
            self.agent_report(at, crate::agent::Report { disk, terminating: false })
        }
        fn agent_report(&mut self, at: i64, report: crate::agent::Report) -> &mut Self {
            self.facts.apply_agent_lease(&agent_lease("n", t(at + 3 * 3600), &report), t(at));
            self
        }
        /// A healthy node `n` observed from 0 to `to`: status every 60 s, Lease every 10 s, its
        /// agent reporting ok every 10 s.
        fn healthy_with_agent(&mut self, to: i64) -> &mut Self {
            let mut s = 0;
            while s <= to {
                if s % 60 == 0 {
                    self.node(s, node("n").ready_at(t(s)));
                }
                self.lease(s, s);
                self.agent(s, DiskHealth::Ok);
                s += 10;
            }
            self
        }
        /// A kubelet renewing its lease every 10 s from `from` to `to`.
        fn renewing(&mut self, from: i64, to: i64) -> &mut Self {
            let mut s = from;
            while s <= to {
                self.lease(s, s);
                s += 10;
            }
            self
        }
        fn at(&self, now: i64) -> Assessment {
            if let Some((outcome, at)) = self.facts.probes.get("n").and_then(|p| p.last.as_ref()) {
                assert!(*at <= t(now), "judged at {now} with a probe result ({outcome:?}) from {at}: a test must not look into the future");
            }
            let n = &self.facts.nodes["n"];
            assess(t(now), n, self.facts.leases.get("n"), self.facts.probes.get("n"), AgentSight::of(&self.facts, "n", true), &self.th, true)
        }
    }

    #[test]
    fn a_configz_read_asked_for_before_a_restart_report_never_condemns_the_restarted_kubelet() {
        use crate::cadence::KubeletCadence;
        // A rollout from R = 1m to 20m: the old kubelet answers /configz at 215, restarts and
        // reports at 218 (the watch delivers it), and the read is folded in at the tick at 220.
        let mut w = World::new();
        for at in [0, 70, 140, 210, 218] {
            w.node(at, node("n").ready_at(t(at)));
        }
        w.facts.record_kubelet_cadence("n", KubeletCadence { report: Duration::from_secs(60), update: Duration::from_secs(10) }, t(215));
        w.renewing(0, 600);
        assert!(w.facts.nodes["n"].cadence.recheck, "the read is asked for again");
        let a = w.at(218 + 160);
        assert_ne!(a.verdict, Verdict::Zombie, "a healthy 20m reporter condemned 160 s after its restart: {a:?}");
        // Read after the latest report, the same configuration does give its short threshold.
        let mut w = World::new();
        for at in [0, 70, 140, 210] {
            w.node(at, node("n").ready_at(t(at)));
        }
        w.facts.record_kubelet_cadence("n", KubeletCadence { report: Duration::from_secs(60), update: Duration::from_secs(10) }, t(215));
        w.renewing(0, 600);
        assert_eq!(w.at(210 + 160).verdict, Verdict::Zombie, "a 1m reporter silent for 160 s");
    }

    #[test]
    fn a_stall_just_under_the_threshold_does_not_lengthen_it_for_the_next_one() {
        use crate::cadence::KubeletCadence;
        let mut w = World::new();
        for at in [0, 300, 600, 900] {
            w.node(at, node("n").ready_at(t(at)));
        }
        let five = KubeletCadence { report: Duration::from_secs(300), update: Duration::from_secs(10) };
        w.facts.record_kubelet_cadence("n", five, t(905));
        assert_eq!(w.th.status_threshold_for(&w.facts.nodes["n"], None).after, Duration::from_secs(620));
        // The status loop stalls 9.5 minutes (under 10m20s: not judged stale), then reports.
        w.node(1470, node("n").ready_at(t(1470)));
        w.facts.record_kubelet_cadence("n", five, t(1475));
        assert_eq!(w.th.status_threshold_for(&w.facts.nodes["n"], None).after, Duration::from_secs(620), "the stall became the node's cadence");
        // The next, longer stall is caught at the kubelet's own threshold.
        w.renewing(0, 2200);
        assert_eq!(w.at(1470 + 630).verdict, Verdict::Zombie);
    }

    #[test]
    fn healthy_node_with_default_kubelet_settings_stays_healthy() {
        // kubelet reports status every 5 min with up to ±50% jitter (worst gap 7.5 min).
        let mut w = World::new();
        w.node(0, node("n").ready_at(t(0)));
        w.renewing(0, 3600);
        let mut reports = vec![0, 450, 750, 1200, 1650, 1950, 2400, 2850, 3150, 3600];
        reports.dedup();
        for (i, at) in reports.iter().enumerate() {
            w.node(*at, node("n").ready_at(t(*at)));
            if let Some(next) = reports.get(i + 1) {
                for now in (*at..*next).step_by(5) {
                    assert_eq!(w.at(now).verdict, Verdict::Healthy, "at {now}: {:?}", w.at(now));
                }
            }
        }
    }

    #[test]
    fn gaps_that_are_not_a_cadence_are_never_learned() {
        // A reboot: Lease and status stop for 15 minutes, then both come back.
        let mut w = World::new();
        for at in [-600, -300, 0] {
            w.node(at, node("n").ready_at(t(at)));
        }
        w.renewing(0, 100);
        let a = w.at(200);
        assert_eq!(a.verdict, Verdict::Suspect, "{a:?}");
        note_uncadenced_gaps(&mut w.facts, [(&crate::facts::NodeName::from("n"), &a)]);
        w.renewing(900, 1000);
        w.node(900, node("n").ready_at(t(900)));
        assert_eq!(w.facts.nodes["n"].cadence.longest_interval(), Some(Duration::from_secs(300)), "the 15-minute gap is not a cadence");
        // A gap pulsecheck could not see all of (a blind spell taken off): not learned either.
        w.facts.discount(t(950), t(1000));
        w.node(1200, node("n").ready_at(t(1200)));
        assert_eq!(w.facts.nodes["n"].cadence.longest_interval(), Some(Duration::from_secs(300)));
        // An ordinary interval after it is learned again.
        w.node(1500, node("n").ready_at(t(1500)));
        assert_eq!(w.facts.nodes["n"].cadence.intervals, 3);
    }

    #[test]
    fn zombie_when_lease_renews_but_status_stops() {
        let mut w = World::new();
        w.node(-600, node("n").ready_at(t(-600)));
        w.node(-300, node("n").ready_at(t(-300)));
        w.node(0, node("n").ready_at(t(0)));
        w.renewing(0, 700);
        assert_eq!(w.at(599).verdict, Verdict::Healthy);
        let a = w.at(600);
        assert_eq!(a.verdict, Verdict::Zombie);
        assert_eq!(a.told(t(600)), vec![Told::StatusStale { for_seconds: 600 }]);
    }

    #[test]
    fn health_on_a_status_never_seen_changing_is_provisional() {
        // A (re)start at 1000 sees a status written at 900 and a renewing Lease: a frozen
        // status and a live one look the same until one changes or the threshold passes.
        let mut w = World::new();
        w.node(1000, node("n").ready_at(t(900)));
        w.renewing(1000, 2300);
        let a = w.at(1100);
        assert_eq!((a.verdict, a.provisional), (Verdict::Healthy, true));
        // Not after --status-stale-after: a status never seen changing may be a slow reporter's
        // whose next report is still to come, so it gets twice the flag.
        let a = w.at(1600);
        assert_eq!((a.verdict, a.provisional), (Verdict::Healthy, true));
        // Watched for twice the threshold without a change: a Zombie, on pulsecheck's own sight.
        let a = w.at(2200);
        assert_eq!((a.verdict, a.provisional), (Verdict::Zombie, false));
        // Seen changing: health is confirmed.
        w.node(2250, node("n").ready_at(t(2250)));
        let a = w.at(2260);
        assert_eq!((a.verdict, a.provisional), (Verdict::Healthy, false));
    }

    #[test]
    fn a_lease_is_judged_against_its_own_duration_when_that_is_longer_than_the_grace() {
        // nodeLeaseDurationSeconds: 200 — the kubelet renews every 50 s.
        let mut w = World::new();
        w.node(0, node("n").ready_at(t(0)));
        for at in (0..=600).step_by(50) {
            w.facts.apply_lease(&lease_lasting("n", t(at), 200), t(at));
        }
        for at in 1..=8 {
            w.node(at * 60, node("n").ready_at(t(at * 60)));
        }
        for now in (600..650).step_by(5) {
            assert_eq!(w.at(now).verdict, Verdict::Healthy, "at {now}: between renewals every 50 s is no staleness");
        }
        // Unrenewed for its duration and a quarter (250 s): stale; the status is fresh, so Suspect.
        assert_eq!(w.at(849).verdict, Verdict::Healthy);
        assert_eq!(w.at(850).verdict, Verdict::Suspect);
        // A short duration never shortens the grace below --lease-grace, and a huge one never
        // lengthens it beyond half the status threshold.
        let short = LeaseFacts { renew: w.facts.leases["n"].renew, duration: Some(Duration::from_secs(10)) };
        assert_eq!(w.th.lease_grace_for(&short), Duration::from_secs(50));
        let huge = LeaseFacts { duration: Some(Duration::from_secs(3600)), ..short };
        assert_eq!(w.th.lease_grace_for(&huge), Duration::from_secs(300));
    }

    #[test]
    fn node_clock_hours_off_is_judged_like_any_other() {
        for skew in [-3600, 3600, 86_400] {
            let mut w = World::new();
            // The node writes timestamps `skew` seconds off; only their changes count.
            for at in (0..=1800).step_by(10) {
                w.lease(at, at + skew);
            }
            for at in (0..=1800).step_by(300) {
                w.node(at, node("n").ready_at(t(at + skew)));
            }
            assert_eq!(w.at(1800).verdict, Verdict::Healthy, "skew {skew}");
        }
    }

    #[test]
    fn a_lease_seen_once_is_not_judged_until_it_renews_or_the_grace_passes() {
        // pulsecheck (re)starts at 1000 and lists a Lease: alive or dead looks the same.
        let mut live = World::new();
        live.node(1000, node("n").ready_at(t(990)));
        live.lease(1000, 995);
        let a = live.at(1004);
        assert_eq!((a.verdict, a.told(t(1004))), (Verdict::Unknown, vec![Told::NotObservedYet { for_seconds: 4 }]));
        live.lease(1005, 1005);
        assert_eq!(live.at(1006).verdict, Verdict::Healthy);
        // A Lease that never renews: unjudged for the grace, then its staleness decides.
        let mut dead = World::new();
        dead.node(1000, node("n").ready_at(t(400)).os_image("Unknown"));
        dead.lease(1000, 400);
        assert_eq!(dead.at(1049).verdict, Verdict::Unknown);
        assert_eq!(dead.at(1050).verdict, Verdict::Suspect);
        assert_eq!(dead.at(2200).verdict, Verdict::Dead);
    }

    #[test]
    fn dead_when_lease_and_status_both_stale() {
        let mut w = World::new();
        w.node(-600, node("n").ready_at(t(-600)));
        w.node(-300, node("n").ready_at(t(-300)));
        w.node(0, node("n").ready_at(t(0)));
        w.renewing(0, 100);
        // Lease stops at 100: suspect while the status is fresh, dead when both are stale.
        assert_eq!(w.at(160).verdict, Verdict::Suspect);
        assert_eq!(w.at(600).verdict, Verdict::Dead);
        // kube-controller-manager marks it Unknown after its grace: dead at once.
        w.node(200, node("n").not_ready_at("Unknown", t(0)));
        assert_eq!(w.at(200).verdict, Verdict::Dead);
    }

    #[test]
    fn os_image_unknown_from_the_start_is_only_suspect_and_zombie_with_stale_status() {
        let mut w = World::new();
        w.node(0, node("n").ready_at(t(0)).os_image("Unknown"));
        w.renewing(0, 1300);
        let a = w.at(300);
        assert_eq!(a.verdict, Verdict::Suspect);
        assert_eq!(a.told(t(300)), vec![Told::OsImageUnknown { for_seconds: 300, turned: false }]);
        // First sight: the status counts as stale after twice the flag.
        assert_eq!(w.at(1199).verdict, Verdict::Suspect);
        assert_eq!(w.at(1200).verdict, Verdict::Zombie);
    }

    #[test]
    fn os_image_turning_unknown_is_conclusive_after_it_persists() {
        let mut w = World::new();
        w.node(0, node("n").ready_at(t(0)));
        w.renewing(0, 400);
        w.node(100, node("n").ready_at(t(100)).os_image("Unknown"));
        assert_eq!(w.at(219).verdict, Verdict::Suspect);
        assert_eq!(w.at(220).verdict, Verdict::Zombie);
        // Recovers when the real value comes back.
        w.node(300, node("n").ready_at(t(300)));
        assert_eq!(w.at(300).verdict, Verdict::Healthy);
    }

    #[test]
    fn problem_condition_alone_is_suspect_and_corroborated_is_zombie() {
        let mut w = World::new();
        w.node(0, node("n").ready_at(t(0)).problem("ReadonlyFilesystem", "FilesystemIsReadOnly"));
        w.renewing(0, 100);
        assert_eq!(w.at(50).verdict, Verdict::Suspect);
        w.node(60, node("n").ready_at(t(0)).os_image("Unknown").problem("ReadonlyFilesystem", "FilesystemIsReadOnly"));
        assert_eq!(w.at(70).verdict, Verdict::Zombie);
    }

    #[test]
    fn probe_failures_are_evidence_after_the_threshold_and_conclusive_after_a_while() {
        let mut w = World::new();
        w.node(0, node("n").ready_at(t(0)));
        w.renewing(0, 400);
        for at in [30, 60] {
            w.facts.record_probe("n", ProbeOutcome::Failure("500".into()), t(at), Thresholds::default().probe_result_ttl);
        }
        assert_eq!(w.at(61).verdict, Verdict::Healthy);
        w.facts.record_probe("n", ProbeOutcome::Failure("500".into()), t(90), Thresholds::default().probe_result_ttl);
        assert_eq!(w.at(91).verdict, Verdict::Suspect);
        for at in (120..=180).step_by(30) {
            w.facts.record_probe("n", ProbeOutcome::Timeout, t(at), Thresholds::default().probe_result_ttl);
        }
        // Got through in every failure since 30, and answers unhealthy again at 210: 180 s.
        w.facts.record_probe("n", ProbeOutcome::Failure("500".into()), t(210), Thresholds::default().probe_result_ttl);
        assert_eq!(w.at(210).verdict, Verdict::Zombie);
        // A success resets the run.
        w.facts.record_probe("n", ProbeOutcome::Success, t(240), Thresholds::default().probe_result_ttl);
        assert_eq!(w.at(240).verdict, Verdict::Healthy);
    }

    #[test]
    fn a_kubelet_that_hangs_on_probes_is_only_suspect_until_another_kind_of_evidence_joins() {
        // Every probe takes the request and times out from 30 s on (a throttled authentication
        // webhook, a sidecar on pulsecheck's side that took the bytes), while the kubelet reports
        // at 100 s: the probes are supporting evidence only, however long they fail.
        let ttl = Thresholds::default().probe_result_ttl;
        let mut w = World::new();
        w.node(0, node("n").ready_at(t(0)));
        w.renewing(0, 400);
        w.facts.record_probe("n", ProbeOutcome::Success, t(0), ttl);
        for at in (30..=90).step_by(30) {
            w.facts.record_probe("n", ProbeOutcome::Timeout, t(at), ttl);
        }
        w.node(100, node("n").ready_at(t(100)));
        for at in (120..=270).step_by(30) {
            w.facts.record_probe("n", ProbeOutcome::Timeout, t(at), ttl);
        }
        assert_eq!(w.at(270).verdict, Verdict::Suspect, "{:?}", w.at(270));
        // A 5-minute reporter whose probes hang for 180 s before its next report is due: still
        // only Suspect (it was a Zombie, tainted, before).
        let mut w = World::new();
        w.node(0, node("n").ready_at(t(0)));
        w.node(300, node("n").ready_at(t(300)));
        w.node(600, node("n").ready_at(t(600)));
        w.renewing(0, 900);
        w.facts.record_probe("n", ProbeOutcome::Success, t(600), ttl);
        for at in (630..=840).step_by(30) {
            w.facts.record_probe("n", ProbeOutcome::Timeout, t(at), ttl);
        }
        assert_eq!(w.at(840).verdict, Verdict::Suspect, "{:?}", w.at(840));
        // With another kind of evidence (osImage gone Unknown) it is a Zombie at once.
        w.node(845, node("n").ready_at(t(600)).os_image("Unknown"));
        assert_eq!(w.at(845).verdict, Verdict::Zombie, "{:?}", w.at(845));
    }

    #[test]
    fn a_kubelet_unreachable_from_pulsecheck_while_it_keeps_reporting_is_never_condemned_by_probes() {
        // A firewall change between pulsecheck and the kubelet: from 330 s on no connection gets
        // through, while the kubelet goes on reporting every 5 minutes (at 300, 600, 900 s, …) —
        // with a healthy gap of 450 s (1.5 periods) after 900 s as well.
        let ttl = Thresholds::default().probe_result_ttl;
        let mut w = World::new();
        for at in [0, 300] {
            w.node(at, node("n").ready_at(t(at)));
        }
        w.renewing(0, 2400);
        // Reached before the change.
        w.facts.record_probe("n", ProbeOutcome::Success, t(300), ttl);
        for at in (330..=2100).step_by(30) {
            w.facts.record_probe("n", ProbeOutcome::Unreachable("connect timed out".into()), t(at), ttl);
            if [600, 900, 1350, 1650, 1950].contains(&at) {
                w.node(at, node("n").ready_at(t(at)));
            }
            let a = w.at(at);
            assert_ne!(a.verdict, Verdict::Zombie, "at {at}: {:?}", a.evidence);
        }
        let a = w.at(2100);
        assert_eq!(a.verdict, Verdict::Suspect);
        assert!(matches!(a.told(t(2100)).as_slice(), [Told::ProbeFailing { for_seconds: 1770, .. }]), "{:?}", a.evidence);
    }

    #[test]
    fn a_kubelet_that_answers_unhealthy_condemns_itself_even_while_it_reports_one_that_hangs_does_not() {
        let ttl = Thresholds::default().probe_result_ttl;
        // /healthz answers 500 ([-]syncloop failed) while the status loop still reports: the
        // kubelet's own word. One that accepts the request and hangs or breaks off: only
        // supporting, reporting or not (a_kubelet_that_hangs_on_probes_is_only_suspect_until_another_kind_of_evidence_joins).
        for (outcome, reporting, expected) in [
            (ProbeOutcome::Failure("kubelet answered 500".into()), true, Verdict::Zombie),
            (ProbeOutcome::Timeout, true, Verdict::Suspect),
            (ProbeOutcome::NoAnswer("connection reset".into()), true, Verdict::Suspect),
            (ProbeOutcome::Timeout, false, Verdict::Suspect),
            (ProbeOutcome::NoAnswer("connection reset".into()), false, Verdict::Suspect),
        ] {
            let mut w = World::new();
            w.node(0, node("n").ready_at(t(0)));
            w.renewing(0, 400);
            // Answered healthy once: the kubelet is reachable and answers.
            w.facts.record_probe("n", ProbeOutcome::Success, t(0), ttl);
            for at in (30..=210).step_by(30) {
                if at == 210 {
                    assert_eq!(w.at(209).verdict, Verdict::Suspect, "{outcome:?}");
                }
                w.facts.record_probe("n", outcome.clone(), t(at), ttl);
                if reporting {
                    w.node(at, node("n").ready_at(t(at)));
                }
            }
            assert_eq!(w.at(210).verdict, expected, "{outcome:?}, reporting {reporting}");
        }
    }

    #[test]
    fn probe_zombie_after_counts_only_the_streak_in_which_pulsecheck_got_through() {
        let ttl = Thresholds::default().probe_result_ttl;
        let mut w = World::new();
        w.node(0, node("n").ready_at(t(0)));
        w.renewing(0, 800);
        // A hang, then health again, then only dropped connections for 4 minutes.
        w.facts.record_probe("n", ProbeOutcome::Timeout, t(30), ttl);
        w.facts.record_probe("n", ProbeOutcome::Success, t(60), ttl);
        for at in (90..=330).step_by(30) {
            w.facts.record_probe("n", ProbeOutcome::Unreachable("connect timed out".into()), t(at), ttl);
            w.node(at, node("n").ready_at(t(at)));
        }
        assert_eq!(w.facts.probes["n"].connected_since, None);
        assert_eq!(w.at(330).verdict, Verdict::Suspect);
        // Then the kubelet takes requests and answers unhealthy: conclusive once it has for the
        // whole --probe-zombie-after, not at once on the strength of the unreachable spell before.
        for at in (360..=540).step_by(30) {
            w.facts.record_probe("n", ProbeOutcome::Failure("kubelet answered 500".into()), t(at), ttl);
            let expected = if at < 540 { Verdict::Suspect } else { Verdict::Zombie };
            assert_eq!(w.at(at).verdict, expected, "at {at}");
        }
        // One connection that does not get through ends the streak.
        w.facts.record_probe("n", ProbeOutcome::Unreachable("TLS handshake did not complete".into()), t(570), ttl);
        assert_eq!(w.at(570).verdict, Verdict::Suspect);
    }

    #[test]
    fn only_time_pulsecheck_saw_the_kubelet_fail_counts_towards_probe_zombie_after() {
        let ttl = Thresholds::default().probe_result_ttl;
        let mut w = World::new();
        w.node(0, node("n").ready_at(t(0)));
        w.renewing(0, 900);
        w.facts.record_probe("n", ProbeOutcome::Success, t(0), ttl);
        w.facts.record_probe("n", ProbeOutcome::Failure("kubelet answered 500".into()), t(30), ttl);
        // Four minutes of answers that say nothing (the apiserver throttling, the kubelet unable
        // to authorize): no failure seen, so no time of the streak.
        for at in (60..=270).step_by(30) {
            w.facts.record_probe("n", ProbeOutcome::Inconclusive("answered 429".into()), t(at), ttl);
            w.node(at, node("n").ready_at(t(at)));
        }
        for at in [300, 330] {
            w.facts.record_probe("n", ProbeOutcome::Failure("kubelet answered 500".into()), t(at), ttl);
            w.node(at, node("n").ready_at(t(at)));
        }
        assert_eq!(w.facts.probes["n"].connected_since, Some(t(300)));
        assert_eq!(w.at(330).verdict, Verdict::Suspect, "conclusive on time pulsecheck never saw failing");
    }

    #[test]
    fn handshakes_that_do_not_complete_neither_start_nor_end_a_streak_of_hangs() {
        // A starved kubelet: some probes answer unhealthy, some never finish the handshake.
        let ttl = Thresholds::default().probe_result_ttl;
        let mut w = World::new();
        w.node(0, node("n").ready_at(t(0)));
        w.renewing(0, 600);
        w.facts.record_probe("n", ProbeOutcome::Success, t(0), ttl);
        for at in (30..=210).step_by(30) {
            let outcome = if at % 60 == 0 {
                ProbeOutcome::NoHandshake("TLS handshake did not complete".into())
            } else {
                ProbeOutcome::Failure("kubelet answered 500".into())
            };
            w.facts.record_probe("n", outcome, t(at), ttl);
        }
        assert_eq!(w.at(210).verdict, Verdict::Zombie, "unhealthy from 30 s on, through the handshakes that did not complete");
        // Handshakes that never complete alone (a path dropping large packets) start nothing.
        let mut w = World::new();
        w.node(0, node("n").ready_at(t(0)));
        w.renewing(0, 900);
        w.facts.record_probe("n", ProbeOutcome::Success, t(0), ttl);
        for at in (30..=600).step_by(30) {
            w.facts.record_probe("n", ProbeOutcome::NoHandshake("TLS handshake did not complete".into()), t(at), ttl);
            if at % 300 == 0 {
                w.node(at, node("n").ready_at(t(at)));
            }
            assert_ne!(w.at(at).verdict, Verdict::Zombie, "at {at}");
        }
        assert_eq!(w.facts.probes["n"].connected_since, None);
    }

    #[test]
    fn an_inconclusive_answer_is_no_evidence_and_no_confirmation_of_health() {
        let ttl = Thresholds::default().probe_result_ttl;
        let mut w = World::new();
        w.node(0, node("n").ready_at(t(0)));
        w.renewing(0, 100);
        w.facts.record_probe("n", ProbeOutcome::Success, t(0), ttl);
        w.facts.record_probe("n", ProbeOutcome::Inconclusive("answered 429".into()), t(30), ttl);
        let a = w.at(30);
        assert_eq!(a.verdict, Verdict::Healthy);
        assert!(!a.healthy_on_evidence(), "a node held on its probes would be released on an answer that says nothing");
        assert_eq!(w.facts.probes["n"].misconfiguration(), None, "not pulsecheck's configuration either");
    }

    #[test]
    fn a_kubelet_unreachable_and_no_longer_reporting_is_condemned_by_its_status() {
        let ttl = Thresholds::default().probe_result_ttl;
        let mut w = World::new();
        for at in [0, 300, 600] {
            w.node(at, node("n").ready_at(t(at)));
        }
        w.renewing(0, 3000);
        w.facts.record_probe("n", ProbeOutcome::Success, t(540), ttl);
        let threshold = w.th.status_threshold_for(&w.facts.nodes["n"], Some(&w.facts.leases["n"])).after.as_secs() as i64;
        let mut at = 570;
        while at < 600 + threshold {
            w.facts.record_probe("n", ProbeOutcome::Unreachable("connect timed out".into()), t(at), ttl);
            at += 30;
        }
        assert_eq!(w.at(600 + threshold - 1).verdict, Verdict::Suspect);
        w.facts.record_probe("n", ProbeOutcome::Unreachable("connect timed out".into()), t(600 + threshold), ttl);
        let a = w.at(600 + threshold);
        assert_eq!(a.verdict, Verdict::Zombie);
        assert!(a.evidence.iter().any(|e| matches!(e, Evidence::StatusStale { .. })), "{:?}", a.evidence);
    }

    #[test]
    fn failures_before_a_gap_in_probing_do_not_add_up_with_one_after_it() {
        let ttl = Thresholds::default().probe_result_ttl;
        let mut w = World::new();
        w.node(0, node("n").ready_at(t(0)));
        w.renewing(0, 4000);
        for at in [0, 30, 60] {
            w.facts.record_probe("n", ProbeOutcome::Failure("500".into()), t(at), ttl);
        }
        // Not probed for an hour (its Lease was stale, say); then one failure, a blip.
        w.node(3690, node("n").ready_at(t(3690)));
        w.facts.record_probe("n", ProbeOutcome::Failure("connection refused".into()), t(3700), ttl);
        let probes = &w.facts.probes["n"];
        assert_eq!((probes.consecutive_failures, probes.failing_since), (1, Some(t(3700))));
        assert_eq!(w.at(3701).verdict, Verdict::Healthy);
    }

    #[test]
    fn a_kubelet_never_reached_is_no_evidence_until_it_answered_once() {
        let ttl = Thresholds::default().probe_result_ttl;
        let mut w = World::new();
        w.node(0, node("n").ready_at(t(0)));
        w.renewing(0, 1000);
        // Port 10250 blocked from the start, or an untrusted certificate: never evidence.
        for at in (30..=390).step_by(30) {
            let outcome = if at % 60 == 0 { ProbeOutcome::Unreachable("refused".into()) } else { ProbeOutcome::Untrusted("unknown issuer".into()) };
            w.facts.record_probe("n", outcome, t(at), ttl);
        }
        assert_eq!(w.at(390).verdict, Verdict::Healthy);
        assert!(w.facts.probes["n"].misconfiguration().is_some());
        // Once the kubelet has answered, losing it is evidence again.
        w.facts.record_probe("n", ProbeOutcome::Success, t(420), ttl);
        assert_eq!(w.facts.probes["n"].misconfiguration(), None);
        for at in [450, 480, 510] {
            w.facts.record_probe("n", ProbeOutcome::Unreachable("refused".into()), t(at), ttl);
        }
        assert_eq!(w.at(511).verdict, Verdict::Suspect);
        assert_eq!(w.facts.probes["n"].misconfiguration(), None, "a kubelet reached before is not a misconfiguration");
        // No probe at all (an unreadable --token-file outside a Pod) is pulsecheck's problem too.
        w.facts.record_probe("n", ProbeOutcome::NotProbed("cannot read the token file".into()), t(540), ttl);
        assert_eq!(w.facts.probes["n"].misconfiguration(), Some("cannot read the token file"));
    }

    #[test]
    fn a_kubelet_that_accepts_and_then_hangs_is_evidence_even_for_a_freshly_started_pulsecheck() {
        // A restarted pulsecheck (or a new leader) has no probe history: a kubelet that accepts
        // the connection and never answers is still reached, and its timeouts count.
        let ttl = Thresholds::default().probe_result_ttl;
        let mut w = World::new();
        w.node(0, node("n").ready_at(t(0)));
        w.renewing(0, 400);
        for at in [30, 60, 90] {
            w.facts.record_probe("n", ProbeOutcome::Timeout, t(at), ttl);
        }
        assert_eq!(w.at(91).verdict, Verdict::Suspect);
    }

    #[test]
    fn kubelets_pulsecheck_never_reached_do_not_switch_the_partition_guard_on() {
        let mut facts = FleetFacts::default();
        for i in 0..10 {
            let name = format!("n{i}");
            facts.apply_node(&node(&name).ready_at(t(0)).build(), &scope(), t(0));
            facts.apply_lease(&lease(&name, t(0)), t(0));
            // A pool of six whose port 10250 a security group blocks from the start.
            let outcome = if i < 6 { ProbeOutcome::Unreachable("refused".into()) } else { ProbeOutcome::Success };
            facts.record_probe(&name, outcome, t(5), Thresholds::default().probe_result_ttl);
        }
        assert_eq!(probe_partition(t(10), &facts, &Thresholds::default(), 50.0), (true, 0, 4));
    }

    #[test]
    fn a_kubelet_that_answers_unhealthy_from_the_start_is_evidence() {
        let ttl = Thresholds::default().probe_result_ttl;
        let mut w = World::new();
        w.node(0, node("n").ready_at(t(0)));
        w.renewing(0, 400);
        for at in [30, 60, 90] {
            w.facts.record_probe("n", ProbeOutcome::Failure("kubelet answered 500".into()), t(at), ttl);
        }
        assert_eq!(w.at(91).verdict, Verdict::Suspect, "an answer is an answer: the kubelet was reached");
    }

    #[test]
    fn health_the_probes_cannot_confirm_is_marked_unconfirmed() {
        let ttl = Thresholds::default().probe_result_ttl;
        let mut w = World::new();
        w.node(0, node("n").ready_at(t(0)));
        w.renewing(0, 400);
        // Never probed: nothing to confirm with.
        assert_eq!((w.at(10).verdict, w.at(10).unconfirmed), (Verdict::Healthy, None));
        w.facts.record_probe("n", ProbeOutcome::Success, t(20), ttl);
        assert_eq!(w.at(21).unconfirmed, None);
        // During a probe partition the same record confirms nothing.
        let during_partition = assess(t(21), &w.facts.nodes["n"], w.facts.leases.get("n"), w.facts.probes.get("n"), AgentSight::Absent, &w.th, false);
        assert_eq!((during_partition.verdict, during_partition.unconfirmed.is_some()), (Verdict::Healthy, true));
        // An expired result, or a failure below the threshold, confirms nothing either.
        assert!(w.at(20 + ttl.as_secs() as i64).unconfirmed.is_some());
        w.facts.record_probe("n", ProbeOutcome::Timeout, t(200), ttl);
        assert_eq!((w.at(201).verdict, w.at(201).unconfirmed.is_some()), (Verdict::Healthy, true));
    }

    #[test]
    fn unauthorized_probes_are_never_evidence() {
        let mut w = World::new();
        w.node(0, node("n").ready_at(t(0)));
        w.renewing(0, 400);
        for at in (30..=390).step_by(30) {
            w.facts.record_probe("n", ProbeOutcome::Unauthorized("401".into()), t(at), Thresholds::default().probe_result_ttl);
        }
        assert_eq!(w.at(390).verdict, Verdict::Healthy);
    }

    #[test]
    fn expired_probe_results_are_ignored() {
        let mut w = World::new();
        w.node(0, node("n").ready_at(t(0)));
        w.renewing(0, 400);
        w.facts.record_probe("n", ProbeOutcome::Success, t(5), Thresholds::default().probe_result_ttl);
        for at in [10, 20, 30] {
            w.facts.record_probe("n", ProbeOutcome::Timeout, t(at), Thresholds::default().probe_result_ttl);
        }
        assert_eq!(w.at(31).verdict, Verdict::Suspect);
        assert_eq!(w.at(130).verdict, Verdict::Healthy);
    }

    #[test]
    fn partition_when_most_live_nodes_fail_probes() {
        let mut facts = FleetFacts::default();
        for i in 0..10 {
            let name = format!("n{i}");
            facts.apply_node(&node(&name).ready_at(t(0)).build(), &scope(), t(0));
            facts.apply_lease(&lease(&name, t(0)), t(0));
            let outcome = if i < 6 { ProbeOutcome::Timeout } else { ProbeOutcome::Success };
            facts.record_probe(&name, outcome, t(5), Thresholds::default().probe_result_ttl);
        }
        let th = Thresholds::default();
        assert_eq!(probe_partition(t(10), &facts, &th, 50.0), (false, 6, 10));
        assert_eq!(probe_partition(t(10), &facts, &th, 60.0), (true, 6, 10));
    }

    #[test]
    fn excluded_and_unleased_nodes() {
        let mut w = World::new();
        w.node(0, node("n").ready_at(t(0)).label(names::EXCLUDE_LABEL, "true"));
        assert_eq!(w.at(5000).verdict, Verdict::Excluded);
        let mut w = World::new();
        w.node(0, node("n").ready_at(t(0)));
        assert_eq!(w.at(10).evidence, vec![Evidence::NoLease]);
    }

    #[test]
    fn not_ready_nodes_are_left_to_kubernetes() {
        let mut w = World::new();
        w.node(0, node("n").not_ready_at("False", t(0)));
        w.renewing(0, 100);
        assert_eq!(w.at(50).verdict, Verdict::Unknown);
    }

    #[test]
    fn explanations_read_like_sentences() {
        let a = Assessment::new(Verdict::Zombie, vec![Evidence::StatusStale { since: t(-630) }, Evidence::OsImageUnknown { since: t(-150), turned: true }]);
        assert_eq!(a.explain(t(0)), "NodeStatus not refreshed for 10m 30s; osImage turned \"Unknown\" 2m 30s ago");
    }

    fn hung(for_seconds: u64) -> DiskHealth {
        DiskHealth::Hung { path: "/etc/os-release".into(), operation: "read".into(), for_seconds }
    }

    #[test]
    fn an_agent_that_renews_and_reports_its_disk_hung_condemns_the_node_once_the_hang_lasted_agent_disk_after() {
        let mut w = World::new();
        w.healthy_with_agent(120);
        assert_eq!(w.at(125).verdict, Verdict::Healthy);
        assert_eq!(w.at(125).unconfirmed, None, "an agent reporting ok confirms the node's health");
        // The read began at 118, hung past the agent's 10 s deadline: the agent renews at once.
        w.agent(130, hung(12));
        w.lease(130, 130);
        let early = w.at(131);
        assert_eq!(early.verdict, Verdict::Suspect, "a hang shorter than --agent-disk-after is supporting: {early:?}");
        // No renewal since: pulsecheck takes the report's 12 s as they are, however long ago (the
        // agent's "back to ok" may have been lost): a lost renewal does not condemn.
        w.lease(140, 140);
        assert_eq!(w.at(148).verdict, Verdict::Suspect, "a report of 12 s not renewed for 18 s is still 12 s");
        w.agent(140, hung(22));
        assert_eq!(w.at(149).verdict, Verdict::Suspect, "22 s reported");
        // The agent renews every 10 s from the hang's report: at 30 s of it.
        w.agent(150, hung(32)).lease(150, 150);
        let a = w.at(151);
        assert_eq!(a.verdict, Verdict::Zombie, "{a:?}");
        assert_eq!(a.evidence, vec![Evidence::AgentDisk { path: "/etc/os-release".into(), operation: "read".into(), problem: "hung".into(), for_seconds: 32 }]);
        assert_eq!(a.explain(t(151)), "pulsecheck-agent: read of /etc/os-release hung for 32s");
        // The disk comes back: the agent says so at once, and nothing condemns the node.
        w.agent(155, DiskHealth::Ok);
        assert_eq!(w.at(156).verdict, Verdict::Healthy);
    }

    #[test]
    fn a_write_or_fsync_still_running_condemns_only_after_four_times_agent_disk_after() {
        // A throttled cloud volume stalls one fsync for 35 s under a large image pull: the disk
        // works, and the kubelet's status loop never fsyncs — no taint. Two minutes is the
        // kernel's own hung-task timeout: then the disk is dead.
        let mut w = World::new();
        w.healthy_with_agent(120);
        let fsync = |s| DiskHealth::Hung {
            path: "/var/lib/kubelet/pods/u/volumes/kubernetes.io~empty-dir/scratch/heartbeat".into(),
            operation: "fsync".into(),
            for_seconds: s,
        };
        w.agent(130, fsync(12)).lease(130, 130).agent(140, fsync(22)).lease(140, 140).agent(150, fsync(32)).lease(150, 150);
        let slow = w.at(151);
        assert_eq!(slow.verdict, Verdict::Suspect, "a 32 s fsync is a slow disk, supporting only: {slow:?}");
        for at in (160..=230).step_by(10) {
            w.agent(at, fsync(at as u64 - 118)).lease(at, at);
        }
        assert_eq!(w.at(231).verdict, Verdict::Suspect, "112 s");
        w.agent(240, fsync(122)).lease(240, 240);
        let dead = w.at(241);
        assert_eq!(dead.verdict, Verdict::Zombie, "an fsync hung for 122 s: {dead:?}");
        assert_eq!(dead.explain(t(241)), "pulsecheck-agent: fsync of /var/lib/kubelet/pods/u/volumes/kubernetes.io~empty-dir/scratch/heartbeat hung for 2m 2s");
    }

    #[test]
    fn an_agent_whose_disk_loop_keeps_failing_names_the_path_and_the_error() {
        let mut w = World::new();
        w.healthy_with_agent(60);
        let failing = |s| DiskHealth::Failing {
            path: "/var/lib/kubelet/pulsecheck-agent/heartbeat".into(),
            operation: "fsync".into(),
            error: "Input/output error (os error 5)".into(),
            for_seconds: s,
        };
        w.agent(65, failing(0)).lease(65, 65);
        assert_eq!(w.at(66).verdict, Verdict::Suspect);
        w.agent(75, failing(10)).lease(75, 75).agent(85, failing(20)).lease(85, 85).agent(95, failing(30)).lease(95, 95);
        let a = w.at(96);
        assert_eq!(a.verdict, Verdict::Zombie, "{a:?}");
        assert_eq!(a.explain(t(96)), "pulsecheck-agent: fsync of /var/lib/kubelet/pulsecheck-agent/heartbeat failing for 30s: Input/output error (os error 5)");
    }

    #[test]
    fn an_agent_that_stops_renewing_is_supporting_only_and_one_going_away_is_no_evidence() {
        let mut w = World::new();
        w.healthy_with_agent(100);
        w.renewing(110, 300).node(120, node("n").ready_at(t(120))).node(180, node("n").ready_at(t(180))).node(240, node("n").ready_at(t(240)));
        // 50 s of grace (a quarter more than its 40 s Lease): still alive at 145.
        assert_eq!(w.at(145).verdict, Verdict::Healthy);
        let silent = w.at(200);
        assert_eq!(silent.verdict, Verdict::Suspect, "an agent evicted or OOM-killed condemns nobody: {silent:?}");
        assert_eq!(silent.told(t(200)), vec![Told::AgentSilent { for_seconds: 100 }]);
        // An agent that said it was going away (a rollout) is silent for a reason.
        let mut w = World::new();
        w.healthy_with_agent(100);
        w.agent_report(105, crate::agent::Report { disk: DiskHealth::Ok, terminating: true });
        w.renewing(110, 300).node(120, node("n").ready_at(t(120))).node(180, node("n").ready_at(t(180))).node(240, node("n").ready_at(t(240)));
        let gone = w.at(250);
        assert_eq!((gone.verdict, gone.unconfirmed), (Verdict::Healthy, Some("the node's agent is terminating")));
        // Its Lease collected with its Pod: an absent agent is no evidence at all.
        w.facts.delete_agent_lease(&crate::agent::lease_name("n").unwrap());
        assert_eq!((w.at(250).verdict, w.at(250).unconfirmed), (Verdict::Healthy, None));
    }

    #[test]
    fn an_agent_report_first_seen_or_hidden_by_a_broken_watch_is_no_evidence_and_confirms_nothing() {
        // pulsecheck starts and lists an agent Lease whose report says hung: maybe a dead agent's
        // last word. Nothing until it is seen renewing.
        let mut w = World::new();
        w.renewing(0, 100).node(0, node("n").ready_at(t(0))).node(60, node("n").ready_at(t(60)));
        w.agent(0, hung(600));
        let first = w.at(30);
        assert_ne!(first.verdict, Verdict::Zombie, "{first:?}");
        assert_eq!(first.unconfirmed, Some("the node's agent has not been seen renewing yet"));
        w.agent(40, hung(640));
        assert_eq!(w.at(41).verdict, Verdict::Zombie);
        // The agent watch broken: its reports count for nothing either way.
        w.facts.agents_hidden = Some("the agent Lease watch fails: 403".into());
        let hidden = evaluate(t(41), &w.facts, &w.th, 50.0).assessments["n"].clone();
        assert_eq!((hidden.verdict, hidden.unconfirmed), (Verdict::Healthy, Some("the node's agent reports cannot be seen")));
        assert!(!hidden.healthy_on_evidence(), "health on hidden agent reports never releases a node");
    }

    #[test]
    fn most_agents_silent_at_once_is_an_agent_partition_not_evidence_against_each_node() {
        let mut facts = FleetFacts::default();
        let th = Thresholds::default();
        let names = ["a", "b", "c", "d"];
        for s in (0..=300).step_by(10) {
            for n in names {
                if s % 60 == 0 {
                    facts.apply_node(&node(n).ready_at(t(s)).build(), &scope(), t(s));
                }
                facts.apply_lease(&lease(n, t(s)), t(s));
                // Agents renew until 100; then a, b and c fall silent (their DaemonSet broken).
                if s <= 100 || n == "d" {
                    facts.apply_agent_lease(&agent_lease(n, t(s), &crate::agent::Report { disk: DiskHealth::Ok, terminating: false }), t(s));
                }
            }
        }
        let e = evaluate(t(300), &facts, &th, 50.0);
        assert!(!e.agent_silence_counts);
        assert!(names.iter().all(|n| e.assessments[*n].verdict == Verdict::Healthy), "{:?}", e.assessments);
        // One silent agent among four is that node's business (supporting evidence).
        let mut facts = facts.clone();
        for n in ["a", "b"] {
            facts.apply_agent_lease(&agent_lease(n, t(301), &crate::agent::Report { disk: DiskHealth::Ok, terminating: false }), t(301));
            facts.apply_agent_lease(&agent_lease(n, t(302), &crate::agent::Report { disk: DiskHealth::Ok, terminating: false }), t(302));
        }
        let e = evaluate(t(303), &facts, &th, 50.0);
        assert!(e.agent_silence_counts);
        assert_eq!(e.assessments["c"].verdict, Verdict::Suspect);
    }

    #[test]
    fn disk_errors_of_a_full_or_denied_disk_or_a_slow_one_never_condemn_alone_and_one_event_is_one_kind() {
        let failing = |error: &str, s| DiskHealth::Failing {
            path: "/var/lib/kubelet/pulsecheck-agent/heartbeat".into(),
            operation: "write".into(),
            error: error.into(),
            for_seconds: s,
        };
        for error in ["No space left on device (os error 28)", "Permission denied (os error 13)", "returned after 11s, over the 10s deadline"] {
            let mut w = World::new();
            w.healthy_with_agent(60);
            w.agent(65, failing(error, 300)).lease(65, 65);
            let a = w.at(66);
            assert_eq!(a.verdict, Verdict::Suspect, "{error}: {a:?}");
        }
        let mut w = World::new();
        w.healthy_with_agent(60);
        w.agent(65, failing("Read-only file system (os error 30)", 30)).lease(65, 65);
        assert_eq!(w.at(66).verdict, Verdict::Zombie);
        // One EIO on /etc/os-release: cadvisor turns osImage "Unknown" and the agent's read fails.
        // One event, one kind of evidence: Suspect until either is conclusive on its own.
        let mut w = World::new();
        w.healthy_with_agent(60);
        w.node(62, node("n").ready_at(t(62)).os_image("Unknown"));
        let eio = DiskHealth::Failing { path: "/etc/os-release".into(), operation: "read".into(), error: "I/O error (os error 5)".into(), for_seconds: 0 };
        w.agent(63, eio).lease(63, 63);
        let a = w.at(64);
        assert_eq!(a.verdict, Verdict::Suspect, "{a:?}");
        let eio = |s| DiskHealth::Failing { path: "/etc/os-release".into(), operation: "read".into(), error: "I/O error (os error 5)".into(), for_seconds: s };
        w.agent(73, eio(10)).agent(83, eio(20)).agent(93, eio(30)).lease(73, 73).lease(83, 83).lease(93, 93);
        assert_eq!(w.at(94).verdict, Verdict::Zombie, "the agent's EIO for --agent-disk-after is conclusive");
    }
}
