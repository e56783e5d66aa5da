//! Runs kubelet probes forever: every target once per interval, spread out, bounded.
//!
//! Probing 5,000 kubelets every 30 s at once would be a burst of 5,000 connections every
//! 30 s; probing them one after the other would let one hanging kubelet delay everyone. So each
//! node keeps its own slot: the first probe falls at a random point of the first interval, the
//! next ones an interval (±10 %) later; at most `concurrency` probes are in flight, each bounded
//! by the probe timeout, and a node whose previous probe is still running skips a round rather
//! than queueing a second one. The slot bookkeeping ([`Schedule`]) is pure and takes `now`;
//! only [`run_scheduler`] touches clocks and tasks. Nothing here judges an outcome.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use k8s_openapi::jiff::Timestamp;
use tokio::{
    sync::{Semaphore, mpsc, watch},
    task::{Id, JoinSet},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::{ProbeTarget, Prober};
use crate::{cadence::KubeletCadence, facts::ProbeOutcome, metrics::Metrics, probe::ProbeMode};

/// One probe result, as delivered to the controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeReport {
    /// The probed Node's name.
    pub node: String,
    /// What the probe found.
    pub outcome: ProbeOutcome,
    /// When the probe finished (pulsecheck's clock).
    pub at: Timestamp,
    /// What the kubelet's `/configz` says of its status cadence, when it was read along with
    /// this probe (at most every [`CADENCE_REFRESH`] per node, after a successful probe).
    pub cadence: Option<Result<KubeletCadence, String>>,
    /// When `/configz` was asked for (pulsecheck's clock): a status report pulsecheck saw after
    /// this may come from a kubelet restarted with another configuration than the one read.
    pub cadence_asked_at: Timestamp,
}

/// How often a node's kubelet configuration is read again: kubelets change configuration only
/// when restarted, and `/configz` is one more request to every kubelet.
pub const CADENCE_REFRESH: Duration = Duration::from_secs(600);
/// How soon it is read again when asked (`cadence::StatusCadence::recheck`: a report came early —
/// a status change, or a restart that may have brought a new configuration — or the status went
/// quiet for a threshold a read from before the latest report gives): within a kubelet's
/// shortest threshold, and never more often (nor more often than the node is probed).
pub const CADENCE_RECHECK: Duration = Duration::from_secs(30);

/// Runs probes until `shutdown` fires (or nobody listens to `results` any more).
///
/// Every node in the latest `targets` (the controller publishes the nodes with a live Lease
/// that claim Ready and are not excluded) is probed every `interval` with ±10 % jitter; new
/// nodes get their first probe at a random point within one interval, so a start or a large
/// change does not become a burst. At most `concurrency` probes are in flight and each is
/// bounded by the prober's timeout, so a hanging kubelet never delays the others. Each result
/// goes to `metrics.probe(..)` and to `results` as a [`ProbeReport`]. With
/// [`ProbeMode::None`] nothing is probed and this only waits for `shutdown`.
pub async fn run_scheduler(
    prober: Prober,
    interval: Duration,
    concurrency: usize,
    mut targets: watch::Receiver<Vec<ProbeTarget>>,
    results: mpsc::Sender<ProbeReport>,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    if prober.effective_mode() == ProbeMode::None {
        shutdown.cancelled().await;
        return;
    }
    let concurrency = concurrency.clamp(1, Semaphore::MAX_PERMITS);
    info!(mode = ?prober.effective_mode(), ?interval, concurrency, timeout = ?prober.timeout(), "probing kubelets");
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut jitter = || rand::random::<f64>();
    let mut schedule = Schedule::new(interval);
    schedule.set_targets(targets.borrow_and_update().clone(), Instant::now(), &mut jitter);
    let mut targets_open = true;
    let mut tasks = JoinSet::new();
    let mut running: HashMap<Id, String> = HashMap::new();
    // When each node's /configz was last read (or tried after a successful probe), and how many
    // reads in a row failed.
    let mut cadence_read: HashMap<String, Instant> = HashMap::new();
    let mut cadence_failures: HashMap<String, u32> = HashMap::new();
    let recheck_spacing = CADENCE_RECHECK.min(interval);
    loop {
        let wake = schedule.next_due();
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = results.closed() => break,
            changed = targets.changed(), if targets_open => match changed {
                Ok(()) => schedule.set_targets(targets.borrow_and_update().clone(), Instant::now(), &mut jitter),
                // The controller is gone; keep probing the last targets until shutdown.
                Err(_) => targets_open = false,
            },
            Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                let (id, cadence_read_ok) = match done {
                    Ok((id, read)) => (id, read),
                    Err(e) => (e.id(), None),
                };
                if let Some(node) = running.remove(&id) {
                    schedule.finished(&node);
                    match cadence_read_ok {
                        Some(true) => {
                            cadence_failures.remove(&node);
                        }
                        Some(false) => *cadence_failures.entry(node.clone()).or_default() += 1,
                        None => {}
                    }
                    if cadence_read_ok.is_some() {
                        cadence_read.insert(node, Instant::now());
                    }
                }
            }
            _ = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {
                let now = Instant::now();
                cadence_read.retain(|node, _| schedule.slots.contains_key(node));
                cadence_failures.retain(|node, _| schedule.slots.contains_key(node));
                for target in schedule.take_due(now, &mut jitter) {
                    let node = target.node.clone();
                    let since_read = cadence_read.get(&node).map(|at| now.duration_since(*at));
                    let failures = cadence_failures.get(&node).copied().unwrap_or(0);
                    let read_cadence = prober.reads_configz() && configz_due(since_read, target.recheck_cadence, failures, recheck_spacing);
                    let task = probe_one(prober.clone(), target, permits.clone(), results.clone(), metrics.clone(), read_cadence);
                    running.insert(tasks.spawn(task).id(), node);
                }
            }
        }
    }
    // Dropping the set aborts the probes still in flight.
    tasks.abort_all();
}

/// Whether a node's `/configz` is due with this probe: never read; read [`CADENCE_REFRESH`] ago;
/// or asked for again (`recheck`) and read `recheck_spacing` ago — doubled for each read in a row
/// that failed, up to [`CADENCE_REFRESH`], so a kubelet that keeps refusing (RBAC without
/// `nodes/configz`, an old kubelet) is not asked every half minute for ever.
fn configz_due(since_read: Option<Duration>, recheck: bool, failures: u32, recheck_spacing: Duration) -> bool {
    let Some(since) = since_read else { return true };
    let spacing = recheck_spacing.saturating_mul(1u32.checked_shl(failures.min(16)).unwrap_or(u32::MAX)).min(CADENCE_REFRESH);
    since >= CADENCE_REFRESH || (recheck && since >= spacing)
}

/// One probe, and with `read_cadence` a `/configz` read after a successful one; whether the read
/// worked, when it was tried.
async fn probe_one(
    prober: Prober,
    target: ProbeTarget,
    permits: Arc<Semaphore>,
    results: mpsc::Sender<ProbeReport>,
    metrics: Metrics,
    read_cadence: bool,
) -> Option<bool> {
    // The semaphore is never closed; if it were, there would be nothing sensible to probe with.
    let Ok(permit) = permits.acquire_owned().await else { return None };
    let started = Instant::now();
    let outcome = prober.probe(&target).await;
    let seconds = started.elapsed().as_secs_f64();
    // Only a kubelet that just answered is asked for its configuration: a dead one would cost
    // a second timeout, and its cadence can wait until it answers again.
    let cadence_asked_at = Timestamp::now();
    let cadence = if read_cadence && outcome == ProbeOutcome::Success { prober.kubelet_cadence(&target).await } else { None };
    drop(permit);
    metrics.probe(&outcome, seconds);
    if let Some(read) = &cadence {
        metrics.kubelet_configz_read(read.is_ok());
    }
    let read = cadence.as_ref().map(Result::is_ok);
    let _ = results.send(ProbeReport { node: target.node, outcome, at: Timestamp::now(), cadence, cadence_asked_at }).await;
    read
}

/// When each node is due next: a pure timetable driven by `now` and a jitter source
/// returning values in `[0, 1)`.
#[derive(Debug)]
struct Schedule {
    interval: Duration,
    slots: HashMap<String, Slot>,
    /// Slots by due time; the sequence number makes keys unique.
    queue: BTreeMap<(Instant, u64), String>,
    sequence: u64,
}

#[derive(Debug)]
struct Slot {
    target: ProbeTarget,
    due: (Instant, u64),
    in_flight: bool,
}

impl Schedule {
    fn new(interval: Duration) -> Schedule {
        Schedule { interval: interval.max(Duration::from_millis(1)), slots: HashMap::new(), queue: BTreeMap::new(), sequence: 0 }
    }

    fn key(&mut self, at: Instant) -> (Instant, u64) {
        self.sequence += 1;
        (at, self.sequence)
    }

    /// Replaces the target set: new nodes are first due at a random point within one interval,
    /// known nodes keep their slot (with the latest endpoint), vanished nodes are dropped.
    fn set_targets(&mut self, targets: Vec<ProbeTarget>, now: Instant, jitter: &mut dyn FnMut() -> f64) {
        let mut wanted: HashMap<String, ProbeTarget> = targets.into_iter().map(|t| (t.node.clone(), t)).collect();
        let queue = &mut self.queue;
        self.slots.retain(|node, slot| match wanted.remove(node) {
            Some(target) => {
                slot.target = target;
                true
            }
            None => {
                queue.remove(&slot.due);
                false
            }
        });
        for (node, target) in wanted {
            let due = self.key(now + self.interval.mul_f64(unit(jitter())));
            self.queue.insert(due, node.clone());
            self.slots.insert(node, Slot { target, due, in_flight: false });
        }
    }

    /// The earliest due time, if any node is scheduled.
    fn next_due(&self) -> Option<Instant> {
        self.queue.first_key_value().map(|((at, _), _)| *at)
    }

    /// Takes every node due at `now` and schedules its next probe an interval (±10 %) later.
    /// A node whose previous probe is still in flight skips this round.
    fn take_due(&mut self, now: Instant, jitter: &mut dyn FnMut() -> f64) -> Vec<ProbeTarget> {
        let mut due = Vec::new();
        while let Some(entry) = self.queue.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let node = entry.remove();
            let next = self.key(now + self.interval.mul_f64(0.9 + 0.2 * unit(jitter())));
            let Some(slot) = self.slots.get_mut(&node) else { continue };
            slot.due = next;
            self.queue.insert(next, node);
            if !slot.in_flight {
                slot.in_flight = true;
                due.push(slot.target.clone());
            }
        }
        due
    }

    /// The probe of `node` finished.
    fn finished(&mut self, node: &str) {
        if let Some(slot) = self.slots.get_mut(node) {
            slot.in_flight = false;
        }
    }
}

/// Clamps a jitter sample into `[0, 1)`.
fn unit(x: f64) -> f64 {
    if x.is_finite() { x.clamp(0.0, 0.999_999) } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::KubeletEndpoint;

    fn target(node: &str) -> ProbeTarget {
        ProbeTarget {
            node: node.into(),
            endpoint: KubeletEndpoint { addresses: vec![("InternalIP".into(), "10.0.0.1".into())], port: Some(10250) },
            recheck_cadence: false,
        }
    }

    fn targets(n: usize) -> Vec<ProbeTarget> {
        (0..n).map(|i| target(&format!("n{i}"))).collect()
    }

    /// A deterministic jitter source cycling through `[0, 1)` in `steps` steps.
    fn sweep(steps: u32) -> impl FnMut() -> f64 {
        let mut i = 0u32;
        move || {
            i = (i + 1) % steps;
            f64::from(i) / f64::from(steps)
        }
    }

    const INTERVAL: Duration = Duration::from_secs(30);

    #[test]
    fn first_round_is_spread_over_the_interval() {
        let t0 = Instant::now();
        let mut s = Schedule::new(INTERVAL);
        s.set_targets(targets(100), t0, &mut sweep(100));
        // In every tenth of the first interval, about a tenth of the nodes get their first probe.
        let mut seen = std::collections::HashSet::new();
        for tenth in 1..=10u32 {
            let now = t0 + INTERVAL * tenth / 10 - Duration::from_millis(1);
            let first: Vec<String> = s.take_due(now, &mut sweep(7)).into_iter().map(|t| t.node).filter(|n| seen.insert(n.clone())).collect();
            assert!((5..=15).contains(&first.len()), "tenth {tenth}: {} first probes", first.len());
            for t in 0..100 {
                s.finished(&format!("n{t}"));
            }
        }
        assert_eq!(seen.len(), 100);
    }

    #[test]
    fn every_node_is_probed_once_per_interval() {
        let t0 = Instant::now();
        let mut s = Schedule::new(INTERVAL);
        s.set_targets(targets(50), t0, &mut sweep(50));
        let mut counts: HashMap<String, u32> = HashMap::new();
        let mut jitter = sweep(11);
        let step = Duration::from_millis(100);
        let mut now = t0;
        while now < t0 + INTERVAL * 10 {
            for t in s.take_due(now, &mut jitter) {
                *counts.entry(t.node.clone()).or_default() += 1;
                s.finished(&t.node);
            }
            now += step;
        }
        assert_eq!(counts.len(), 50);
        for (node, n) in counts {
            assert!((9..=11).contains(&n), "{node} probed {n} times in 10 intervals");
        }
    }

    #[test]
    fn node_still_in_flight_skips_a_round_instead_of_doubling() {
        let t0 = Instant::now();
        let mut s = Schedule::new(INTERVAL);
        s.set_targets(vec![target("slow")], t0, &mut || 0.0);
        assert_eq!(s.take_due(t0, &mut || 0.5).len(), 1);
        // Not finished: the next due time passes without a second probe.
        assert!(s.take_due(t0 + INTERVAL * 2, &mut || 0.5).is_empty());
        s.finished("slow");
        assert_eq!(s.take_due(t0 + INTERVAL * 4, &mut || 0.5).len(), 1);
    }

    #[test]
    fn vanished_nodes_stop_and_changed_endpoints_are_used() {
        let t0 = Instant::now();
        let mut s = Schedule::new(INTERVAL);
        s.set_targets(vec![target("a"), target("b")], t0, &mut || 0.0);
        let mut moved = target("b");
        moved.endpoint.port = Some(11250);
        s.set_targets(vec![moved.clone()], t0, &mut || 0.0);
        assert_eq!(s.take_due(t0, &mut || 0.5), vec![moved]);
        assert_eq!(s.queue.len(), 1);
        s.set_targets(vec![], t0, &mut || 0.0);
        assert_eq!(s.next_due(), None);
    }

    fn offline_prober(mode: ProbeMode) -> Prober {
        let settings = super::super::ProbeSettings {
            mode,
            timeout: Duration::from_secs(1),
            interval: INTERVAL,
            concurrency: 2,
            preferred_address_types: vec!["InternalIP".into()],
            ca: None,
            insecure_tls: false,
            token_file: "/nonexistent".into(),
            configz: false,
            kubeconfig_credential: Err("none".into()),
        };
        let client = kube::Client::try_from(kube::Config::new("https://127.0.0.1:9".parse().unwrap())).unwrap();
        Prober::new(settings, client).unwrap()
    }

    /// Real time, short intervals; asserts only what cannot depend on timing.
    #[tokio::test]
    async fn scheduler_reports_every_target_repeatedly_and_stops_on_shutdown() {
        // Targets without a port are NotProbed at once: no sockets involved.
        let interval = Duration::from_millis(50);
        let unprobeable =
            |n: usize| (0..n).map(|i| ProbeTarget { node: format!("n{i}"), endpoint: KubeletEndpoint::default(), recheck_cadence: false }).collect::<Vec<_>>();
        let (targets_tx, targets_rx) = watch::channel(unprobeable(5));
        let (results_tx, mut results_rx) = mpsc::channel(64);
        let metrics = Metrics::new(crate::metrics::PerNodeMetrics::All);
        let shutdown = CancellationToken::new();
        let scheduler = tokio::spawn(run_scheduler(offline_prober(ProbeMode::Tcp), interval, 2, targets_rx, results_tx, metrics.clone(), shutdown.clone()));
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut per_node: HashMap<String, u32> = HashMap::new();
        while per_node.len() < 5 || per_node.values().any(|n| *n < 3) {
            let report = tokio::time::timeout_at(deadline, results_rx.recv()).await.expect("every node reported 3 times").unwrap();
            assert!(matches!(report.outcome, ProbeOutcome::NotProbed(_)), "{report:?}");
            *per_node.entry(report.node).or_default() += 1;
        }
        assert!(metrics.render().contains(r#"pulsecheck_probes_total{result="error"}"#));
        // Nodes that leave the target set get at most the one probe already started.
        targets_tx.send_replace(unprobeable(1));
        let mut after: HashMap<String, u32> = HashMap::new();
        while after.get("n0").copied().unwrap_or(0) < 5 {
            let report = tokio::time::timeout_at(deadline, results_rx.recv()).await.expect("n0 keeps being probed").unwrap();
            *after.entry(report.node).or_default() += 1;
        }
        assert!(after.iter().all(|(node, n)| node == "n0" || *n <= 1), "{after:?}");
        shutdown.cancel();
        tokio::time::timeout_at(deadline, scheduler).await.expect("scheduler stops on shutdown").unwrap();
    }

    #[tokio::test]
    async fn mode_none_probes_nothing_and_waits_for_shutdown() {
        let (_targets_tx, targets_rx) = watch::channel(vec![target("a")]);
        let (results_tx, mut results_rx) = mpsc::channel(1);
        let shutdown = CancellationToken::new();
        let scheduler = tokio::spawn(run_scheduler(
            offline_prober(ProbeMode::None),
            Duration::from_millis(10),
            1,
            targets_rx,
            results_tx,
            Metrics::new(crate::metrics::PerNodeMetrics::All),
            shutdown.clone(),
        ));
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), scheduler).await.expect("scheduler stops on shutdown").unwrap();
        assert!(results_rx.recv().await.is_none(), "no probe was reported");
    }

    #[test]
    fn configz_is_read_again_when_asked_but_backs_off_while_reads_fail() {
        let spacing = CADENCE_RECHECK;
        let secs = Duration::from_secs;
        assert!(configz_due(None, false, 0, spacing), "never read");
        assert!(!configz_due(Some(secs(60)), false, 0, spacing), "read a minute ago, nothing asks");
        assert!(configz_due(Some(CADENCE_REFRESH), false, 0, spacing), "the regular refresh");
        assert!(configz_due(Some(secs(30)), true, 0, spacing), "asked for, 30 s after the last read");
        assert!(!configz_due(Some(secs(29)), true, 0, spacing));
        // Each failed read in a row doubles the wait for the next asked-for one: 60 s, 120 s, …
        assert!(!configz_due(Some(secs(59)), true, 1, spacing));
        assert!(configz_due(Some(secs(60)), true, 1, spacing));
        assert!(!configz_due(Some(secs(239)), true, 3, spacing));
        assert!(configz_due(Some(secs(240)), true, 3, spacing));
        // ... up to the regular refresh, however many failed.
        assert!(!configz_due(Some(CADENCE_REFRESH - secs(1)), true, 40, spacing));
        assert!(configz_due(Some(CADENCE_REFRESH), true, 40, spacing));
    }
}
