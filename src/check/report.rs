//! What `check` found: the report model, the judging that fills it, and the notes that qualify it.
//!
//! It exists so that `check` gives the controller's answer, not an answer of its own: every
//! verdict comes from [`verdict::evaluate`] with `run`'s thresholds, and this module only lays
//! the assessments out per node (ages, lower bounds, the evidence as one sentence) and says what
//! a person must know to trust them — above all when the verdicts rest on the nodes' own clocks
//! ([`Clock::NodeTimestamps`]) instead of pulsecheck's.
//!
//! Pure: no I/O and no clock (`now` is passed in), so every rule here is unit-tested with fixed
//! timestamps. How the report is printed is [`super::render`](mod@super::render)'s business.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::jiff::Timestamp;
use serde::Serialize;

use crate::{
    cadence::CadenceSource,
    facts::{FleetFacts, ProbeOutcome, Scope, SlimLease, SlimNode},
    verdict::{self, Thresholds, Told, Verdict},
};

/// Percentage of failing probes beyond which probe evidence is ignored (as `run`'s default).
const PROBE_PARTITION_THRESHOLD: f64 = 50.0;
/// Nodes named one by one in a note before "and N more".
const NOTE_NAMES: usize = 5;

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
    /// `ok`, `fail`, `timeout`, `no-answer`, `unreachable`, `no-handshake`, `untrusted`, `denied`
    /// (401/403), `inconclusive` (an answer that says nothing about health) or `n/a` (could not probe).
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
            ProbeOutcome::NoAnswer(e) => ("no-answer", Some(e.clone())),
            ProbeOutcome::NoHandshake(e) => ("no-handshake", Some(e.clone())),
            ProbeOutcome::Inconclusive(e) => ("inconclusive", Some(e.clone())),
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
    /// How old NodeStatus may be before it is stale, for this node (see `pulsecheck::cadence`).
    pub status_threshold_seconds: u64,
    /// Where that threshold comes from: `kubelet` (/configz), `observed`, `flag`, or
    /// `flag-doubled` (fewer than two report intervals seen).
    pub status_threshold_source: CadenceSource,
    /// `status.nodeInfo.osImage`.
    pub os_image: String,
    /// The kubelet probe, with `--probe`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe: Option<ProbeResult>,
    /// pulsecheck's verdict.
    pub verdict: Verdict,
    /// The evidence behind it.
    pub evidence: Vec<Told>,
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

/// Facts from one snapshot, without history: every heartbeat counts as observed at the time the
/// node itself wrote into it (a missing timestamp counts as `now`). osImage "Unknown" then counts
/// from the node's last status report, a lower bound of how long it has been so.
pub fn facts_from_snapshot(nodes: &[SlimNode], leases: &[SlimLease], scope: &Scope, now: Timestamp) -> FleetFacts {
    let mut facts = FleetFacts::default();
    for node in nodes {
        let written = node.condition("Ready").and_then(|c| c.last_heartbeat_time.as_ref()).map_or(now, |t| t.0);
        facts.apply_node(node, scope, written);
        // The status's age is the node's own, not one since pulsecheck's first sight: nothing to
        // wait for either (see `crate::cadence`: the doubled threshold covers first sight).
        if let Some(n) = node.metadata.name.as_deref().and_then(|name| facts.nodes.get_mut(name)) {
            n.status.seen_changing = true;
            n.cadence.assume_settled();
        }
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
            let why = if a.verdict == Verdict::Healthy { String::new() } else { a.explain(now) };
            let threshold = th.status_threshold_for(n, lease);
            Some(NodeReport {
                name: name.to_string(),
                zone: n.zone.clone(),
                ready: n.ready.as_str().to_string(),
                ready_reason: n.ready_reason.clone(),
                lease_age_seconds: lease.map(|l| now.duration_since(l.renew.observed_at).as_secs()),
                lease_age_is_lower_bound: matches!((lease, leases_synced_at), (Some(l), Some(at)) if l.renew.observed_at <= at),
                status_age_seconds: now.duration_since(n.status.observed_at).as_secs(),
                status_age_is_lower_bound: clock == Clock::Observed && !n.status.seen_changing,
                status_threshold_seconds: threshold.after.as_secs(),
                status_threshold_source: threshold.source,
                os_image: n.os_image.current.clone(),
                probe: facts.probes.get(name).and_then(|p| p.last.as_ref()).map(|(o, _)| ProbeResult::from_outcome(o)),
                verdict: a.verdict,
                evidence: a.told(now),
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

/// The note of every snapshot: its verdicts trust the nodes' clocks, and how to avoid that.
pub(super) fn node_timestamps_note(status_stale_after: Duration) -> String {
    format!(
        "without --observe these verdicts rest on the nodes' own timestamps (Ready lastHeartbeatTime, Lease renewTime) against this machine's clock; a node whose clock is skewed can look fresh while it is dead. Run with --observe {} to judge by pulsecheck's own clock, as the controller does.",
        humantime::format_duration(2 * status_stale_after)
    )
}

/// The note of an observation too short to prove a stale NodeStatus, if it is: a status never
/// seen refreshed is stale only after twice `--status-stale-after` (see `crate::cadence`).
pub(super) fn short_observation_note(observe: Duration, status_stale_after: Duration) -> Option<String> {
    (observe < 2 * status_stale_after).then(|| {
        format!(
            "--observe {} is shorter than twice --status-stale-after {}: a NodeStatus never seen refreshed is stale only after {} (it may be a slow reporter's), so it cannot be proven stale in that time (observe longer, or lower --status-stale-after; a healthy kubelet reports every 5m ± 50%)",
            humantime::format_duration(observe),
            humantime::format_duration(status_stale_after),
            humantime::format_duration(2 * status_stale_after)
        )
    })
}

/// Notes about nodes whose timestamps are ahead of the local clock (only meaningful when the
/// verdicts rest on them).
pub(super) fn skew_notes(report: &Report) -> Vec<String> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{facts::fixtures::*, names};

    fn scope() -> Scope {
        Scope { taint_key: names::TAINT_KEY.into(), ..Default::default() }
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
    fn an_observation_shorter_than_the_status_threshold_says_so() {
        let stale = Duration::from_secs(600);
        let note = short_observation_note(Duration::from_secs(60), stale).unwrap();
        assert!(note.starts_with("--observe 1m is shorter than twice --status-stale-after 10m"), "{note}");
        assert!(short_observation_note(stale, stale).is_some());
        assert_eq!(short_observation_note(2 * stale, stale), None);
        assert!(node_timestamps_note(stale).contains("Run with --observe 20m"));
    }

    #[test]
    fn ages_read_compactly() {
        assert_eq!(compact(4), "4s");
        assert_eq!(compact(662), "11m2s");
        assert_eq!(compact(3 * 3600 + 301), "3h5m");
        assert_eq!(compact(2 * 86_400 + 4 * 3600 + 1), "2d4h");
        assert_eq!(compact(-3598), "-59m58s");
    }
}
