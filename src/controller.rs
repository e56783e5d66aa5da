//! `pulsecheck run`: the loop that ties the edges to the decision core.
//!
//! Death is silence, so decisions are time-driven: every `--evaluation-interval` the whole
//! fleet is judged from the shared [`View`](crate::observe::View) (the watches only update
//! facts). One tick:
//! 1. folds in probe results, checks sight ([`crate::observe::Sight::blindness`]) and the probe
//!    partition guard;
//! 2. judges every node ([`crate::verdict::assess`]) and publishes metrics;
//! 3. reports verdict changes (log line, Event, `HeartbeatConsistent` condition);
//! 4. asks the guard for a plan ([`crate::guard::plan`]) and carries it out — each new
//!    remediation only after a fresh GET of the Node and its Lease confirms the verdict.
//!
//! Only the leader writes or publishes Events; while blind nothing new is decided. On shutdown
//! the current tick (and its in-flight writes) finishes, then the loop stops.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    time::Duration,
};

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::{
    Outcome,
    actuate::{Actuator, Change, Error as ActuateError},
    admin::{AdminServer, Readiness},
    config::{RunArgs, Settings},
    facts::{FleetFacts, NodeName, ProbeOutcome, SlimLease, SlimNode},
    guard::{self, Hold, Memory, Plan},
    leader::Leadership,
    metrics::{ActionLabel, Metrics, NodeHeartbeats, ResultLabel},
    names,
    observe::{self, SharedView, lock},
    probe::{self, ProbeMode, ProbeReport, ProbeTarget, Prober},
    verdict::{self, Assessment, Assessments, Verdict},
};

/// First wait after a failed Node write; doubles per failure in a row.
const WRITE_BACKOFF_BASE: Duration = Duration::from_secs(5);
/// Longest wait between attempts to write a Node whose writes keep failing.
const WRITE_BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Errors starting the controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The flags do not make a working configuration.
    #[error(transparent)]
    Config(#[from] crate::config::Error),
    /// The admin server or logging cannot start.
    #[error(transparent)]
    Admin(#[from] crate::admin::Error),
    /// Leader election cannot start.
    #[error(transparent)]
    Leader(#[from] crate::leader::Error),
    /// No client.
    #[error(transparent)]
    Connect(#[from] crate::connect::Error),
    /// The prober cannot be set up.
    #[error(transparent)]
    Probe(#[from] crate::probe::Error),
}

/// `pulsecheck run`: runs until SIGINT/SIGTERM.
pub async fn run(args: RunArgs) -> Result<Outcome, Error> {
    crate::admin::init_logging(args.admin.log_format, &args.admin.log_filter)?;
    let settings = Settings::from_args(&args)?;
    let client = crate::connect::client(&args.client).await?;
    let running = start(client, settings).await?;
    wait_for_signal().await;
    info!("shutting down: finishing in-flight writes");
    running.stop().await;
    Ok(Outcome::Clean)
}

/// Resolves on SIGINT or SIGTERM.
pub async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// A running controller.
pub struct Running {
    /// Where the admin server listens.
    pub admin_addr: SocketAddr,
    /// The controller's metrics.
    pub metrics: Metrics,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops deciding, lets in-flight writes finish, releases leadership, stops the server.
    pub async fn stop(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}

/// Starts watches, prober, admin server, leader election and the decision loop.
pub async fn start(client: kube::Client, settings: Settings) -> Result<Running, Error> {
    let metrics = Metrics::new(settings.per_node_metrics);
    let readiness = Readiness::default();
    let shutdown = CancellationToken::new();
    let server = AdminServer::bind(settings.admin_addr, metrics.clone(), readiness.clone()).await?;
    let admin_addr = server.local_addr().unwrap_or(settings.admin_addr);
    let prober = match settings.probe.mode {
        ProbeMode::None => None,
        _ => Some(Prober::new(settings.probe.clone(), client.clone())?),
    };
    let leadership = Leadership::start(client.clone(), &settings.leader).await?;

    let view: SharedView = SharedView::default();
    let mut tasks = vec![tokio::spawn(server.serve(shutdown.clone()))];
    let watch_shutdown = shutdown.child_token();
    tasks.push(tokio::spawn(observe::watch_nodes(Api::all(client.clone()), view.clone(), settings.scope.clone(), metrics.clone(), watch_shutdown.clone())));
    tasks.push(tokio::spawn(observe::watch_leases(
        Api::namespaced(client.clone(), names::NODE_LEASE_NAMESPACE),
        view.clone(),
        metrics.clone(),
        watch_shutdown.clone(),
    )));

    let (targets_tx, targets_rx) = tokio::sync::watch::channel(Vec::new());
    let (results_tx, results_rx) = mpsc::channel(4096);
    let effective = prober.as_ref().map_or(ProbeMode::None, Prober::effective_mode);
    metrics.set_probe_mode(effective.as_str());
    if let Some(prober) = prober {
        // The fallback itself was logged once by Prober::new; the gauge keeps it visible.
        tasks.push(tokio::spawn(probe::run_scheduler(
            prober,
            settings.probe.interval,
            settings.probe.concurrency,
            targets_rx,
            results_tx,
            metrics.clone(),
            watch_shutdown.clone(),
        )));
    }

    let actuator = Actuator::new(client, settings.actions.clone(), settings.request_timeout, Some(settings.leader.identity.clone()));
    let controller = Controller {
        config: settings,
        view,
        actuator,
        metrics: metrics.clone(),
        readiness,
        memory: Memory::default(),
        verdicts: HashMap::new(),
        held_reported: HashSet::new(),
        blind_reported: None,
        circuit_reported: false,
        partition_reported: false,
        misconfigured_reported: HashSet::new(),
        backoff: HashMap::new(),
        probe_targets: targets_tx,
        probe_results: results_rx,
        leading: None,
    };
    tasks.push(tokio::spawn(controller.run(leadership, shutdown.clone(), watch_shutdown)));
    Ok(Running { admin_addr, metrics, shutdown, tasks })
}

/// The decision loop's state.
struct Controller {
    config: Settings,
    view: SharedView,
    actuator: Actuator,
    metrics: Metrics,
    readiness: Readiness,
    memory: Memory,
    /// Last reported verdict per node.
    verdicts: HashMap<NodeName, Verdict>,
    /// Nodes whose hold was reported (once per episode).
    held_reported: HashSet<String>,
    blind_reported: Option<String>,
    circuit_reported: bool,
    /// A probe partition was reported and has not ended yet.
    partition_reported: bool,
    /// Nodes whose probes are pulsecheck's own problem, already reported.
    misconfigured_reported: HashSet<String>,
    /// Nodes whose last remediation or release failed: failures in a row, and the next attempt.
    backoff: HashMap<String, (u32, Timestamp)>,
    probe_targets: tokio::sync::watch::Sender<Vec<ProbeTarget>>,
    probe_results: mpsc::Receiver<ProbeReport>,
    /// Leadership as of now (not as of the tick's start): checked before every Node write, so a
    /// tick slowed down by a struggling apiserver stops writing the moment leadership is lost.
    leading: Option<crate::leader::LeaderCheck>,
}

/// What a tick needs to know about a node after the view is unlocked.
struct NodeNote {
    uid: Option<String>,
    our_condition: Option<(String, String)>,
}

/// The condition pulsecheck wants on a node for a verdict: `(status, reason)`.
///
/// `False` means exactly "pulsecheck has concluded this node is not alive" (Zombie or Dead).
/// A Suspect node is still `True` (reason `Suspect`, the signal in the message): tools that key on
/// the condition (a NodeHealthCheck, draino) must not act on a signal pulsecheck itself does not
/// yet act on, and must not bypass its fleet guard. `NotJudged` and `Excluded` are only written
/// to replace a condition pulsecheck wrote earlier, so a stale `False` never outlives the verdict.
fn desired_condition(verdict: Verdict) -> Option<(&'static str, &'static str)> {
    match verdict {
        Verdict::Healthy => Some(("True", "HeartbeatsConsistent")),
        Verdict::Suspect => Some(("True", "Suspect")),
        Verdict::Zombie => Some(("False", "ZombieDetected")),
        Verdict::Dead => Some(("False", "LeaseAndStatusStale")),
        Verdict::Unknown => Some(("True", "NotJudged")),
        // Only over a condition pulsecheck wrote earlier: a stale False must not outlive the
        // exclusion (tools keyed on it would act on a node a person excluded).
        Verdict::Excluded => Some(("True", "Excluded")),
    }
}

/// The Event reason for a verdict change.
fn verdict_reason(verdict: Verdict) -> (&'static str, bool) {
    match verdict {
        Verdict::Healthy => ("HeartbeatsConsistent", false),
        Verdict::Suspect => ("NodeSuspect", true),
        Verdict::Zombie => ("ZombieDetected", true),
        Verdict::Dead => ("NodeDead", true),
        Verdict::Unknown => ("NotJudged", false),
        Verdict::Excluded => ("Excluded", false),
    }
}

impl Controller {
    async fn run(mut self, mut leadership: Leadership, shutdown: CancellationToken, watch_shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.config.evaluation_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut was_leader = false;
        self.leading = Some(leadership.current());
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => {},
                _ = leadership.changed() => {},
            }
            let leader = leadership.is_leader();
            if leader != was_leader {
                info!(leader, "leadership changed");
                was_leader = leader;
            }
            self.metrics.set_leader(leader);
            self.tick(Timestamp::now(), leader).await;
        }
        watch_shutdown.cancel();
        self.readiness.set(false);
        leadership.resign(Duration::from_secs(3)).await;
        self.metrics.set_leader(false);
    }

    /// One evaluation and the actions it calls for.
    async fn tick(&mut self, now: Timestamp, leader: bool) {
        let started = std::time::Instant::now();
        let cfg = &self.config;
        let (assessments, plan, blind, notes, targets, cordon_taken_over) = {
            let mut v = lock(&self.view);
            while let Ok(report) = self.probe_results.try_recv() {
                v.facts.record_probe(&report.node, report.outcome, report.at, cfg.thresholds.probe_result_ttl);
            }
            let blind = v.sight.blindness(now, &v.facts, cfg.thresholds.lease_grace, cfg.thresholds.status_stale_after, cfg.settle_after_blindness);
            let can_see_at_all = v.sight.nodes.synced && v.sight.leases.synced;
            self.readiness.set(
                can_see_at_all
                    && !matches!(blind, Some(observe::Blindness::WatchFailing(..) | observe::Blindness::LeasesSilent(_) | observe::Blindness::NodesSilent(_))),
            );
            let evaluation = verdict::evaluate(now, &v.facts, &cfg.thresholds, cfg.probe_partition_threshold);
            self.metrics.set_probe_partition(!evaluation.probes_trusted);
            if !evaluation.probes_trusted && !self.partition_reported {
                warn!(
                    failing = evaluation.probes_failing,
                    probed = evaluation.probes_recent,
                    "probe partition: most kubelet probes fail; pulsecheck assumes its own network is cut off and ignores probe evidence"
                );
            } else if evaluation.probes_trusted && self.partition_reported {
                info!(failing = evaluation.probes_failing, probed = evaluation.probes_recent, "probe partition over: probe evidence counts again");
            }
            self.partition_reported = !evaluation.probes_trusted;
            // Probes that are pulsecheck's own problem (refused, certificate not trusted, a kubelet
            // never reached): reported once per node and episode, never evidence.
            let misconfigured: HashMap<String, String> =
                v.facts.probes.iter().filter_map(|(node, p)| p.misconfiguration().map(|why| (node.to_string(), why.to_string()))).collect();
            self.metrics.set_probe_misconfigured(!misconfigured.is_empty());
            for (node, why) in &misconfigured {
                if !self.misconfigured_reported.contains(node) {
                    error!(node = %node, why = %why, "kubelet probes of this node cannot work: a configuration problem of pulsecheck (RBAC, kubelet CA, network path to port 10250), not evidence against the node");
                }
            }
            if misconfigured.is_empty() && !self.misconfigured_reported.is_empty() {
                info!("kubelet probes work again on every node");
            }
            self.misconfigured_reported = misconfigured.into_keys().collect();
            let assessments = evaluation.assessments;
            self.publish_metrics(&v.facts, &assessments);
            let stance = match (blind.is_some(), leader) {
                (true, _) => guard::Stance::Blind,
                (false, true) => guard::Stance::Act,
                (false, false) => guard::Stance::Watch,
            };
            let plan = guard::plan(now, &assessments, &v.facts, &mut self.memory, &cfg.guard, stance);
            self.memory.retain(|n| v.facts.nodes.contains_key(n));
            let notes: HashMap<NodeName, NodeNote> = v
                .facts
                .nodes
                .iter()
                .map(|(n, f)| (n.clone(), NodeNote { uid: Some(f.uid.clone()).filter(|u| !u.is_empty()), our_condition: f.our_condition.clone() }))
                .collect();
            // Probed: every node in scope whose Lease pulsecheck saw renewed within the grace. A node
            // with a stale or missing Lease is kube-controller-manager's case; probing it adds nothing.
            let lease_grace = SignedDuration::try_from(cfg.thresholds.lease_grace).unwrap_or(SignedDuration::MAX);
            let lease_alive = |n: &NodeName| v.facts.leases.get(n).is_some_and(|l| now.duration_since(l.renew.observed_at) < lease_grace);
            let targets: Vec<ProbeTarget> = assessments
                .iter()
                .filter(|(n, a)| a.verdict != Verdict::Excluded && lease_alive(n))
                .filter_map(|(n, _)| v.facts.nodes.get(n).map(|f| ProbeTarget { node: n.to_string(), endpoint: f.kubelet.clone() }))
                .collect();
            // Our cordon, undone by somebody else: the schedulability is theirs from now on.
            let cordon_taken_over: Vec<String> =
                v.facts.nodes.iter().filter(|(_, f)| f.remediation.cordoned && !f.unschedulable).map(|(n, _)| n.to_string()).collect();
            (assessments, plan, blind, notes, targets, cordon_taken_over)
        };
        self.probe_targets.send_replace(targets);
        let counts: Vec<(Verdict, usize)> = Verdict::ALL.iter().map(|v| (*v, assessments.values().filter(|a| a.verdict == *v).count())).collect();
        self.metrics.fleet(&counts, plan.active, plan.limit, plan.circuit_open);
        self.metrics.evaluation(started.elapsed().as_secs_f64());

        self.report_blindness(blind.as_ref());
        if blind.is_some() {
            return;
        }
        self.report_verdicts(now, &assessments, &notes, leader).await;
        if !leader {
            return;
        }
        if !self.config.dry_run {
            for name in &cordon_taken_over {
                if !self.still_leading() {
                    return;
                }
                self.disown_cordon(now, name, notes.get(name.as_str())).await;
            }
        }
        self.carry_out(now, plan, &assessments, &notes).await;
    }

    /// Records that somebody else uncordoned a node pulsecheck had cordoned, so that a later
    /// cordon of theirs is never undone when pulsecheck releases the node.
    async fn disown_cordon(&mut self, now: Timestamp, name: &str, note: Option<&NodeNote>) {
        if self.backing_off(name, now) {
            return;
        }
        match self.actuator.disown_cordon(name).await {
            Ok((node, _)) => {
                self.apply_fresh(&node, None, now);
                if crate::facts::remediation_from_annotations(node.metadata.annotations.as_ref()).cordoned {
                    // Cordoned again before we wrote (the fresh read saw it): nothing was disowned.
                    return;
                }
                info!(node = name, "somebody else uncordoned the node; pulsecheck no longer owns spec.unschedulable");
                let uid = note.and_then(|n| n.uid.as_deref());
                let message =
                    "spec.unschedulable was cleared by somebody else: pulsecheck will not cordon or uncordon this node again for this remediation".to_string();
                self.actuator.event(name, uid, false, "CordonTakenOver", "Record", message).await;
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                warn!(node = name, error = %e, "could not update the remediation record after an uncordon by somebody else");
                self.write_failed(name, now);
            }
        }
    }

    fn publish_metrics(&self, facts: &FleetFacts, assessments: &Assessments) {
        for (name, a) in assessments {
            let Some(n) = facts.nodes.get(name) else { continue };
            let heartbeats = NodeHeartbeats {
                lease_observed: facts.leases.get(name).map(|l| l.renew.observed_at.as_millisecond() as f64 / 1000.0),
                status_observed: n.status.observed_at.as_millisecond() as f64 / 1000.0,
                remediated: self.memory.holds(facts, name),
                probe_success: facts.probes.get(name).and_then(|p| match &p.last {
                    Some((ProbeOutcome::Success, _)) => Some(true),
                    Some((ProbeOutcome::Failure(_) | ProbeOutcome::Timeout | ProbeOutcome::Unreachable(_), _)) => Some(false),
                    _ => None,
                }),
            };
            self.metrics.node(name, a, heartbeats);
        }
    }

    fn report_blindness(&mut self, blind: Option<&observe::Blindness>) {
        self.metrics.set_blind(blind.is_some());
        let now = blind.map(ToString::to_string);
        if now != self.blind_reported {
            match &now {
                Some(why) => warn!(why = why.as_str(), "blind: no new decisions"),
                None => info!("sight: watches synced and delivering; deciding"),
            }
            self.blind_reported = now;
        }
    }

    async fn report_verdicts(&mut self, now: Timestamp, assessments: &Assessments, notes: &HashMap<NodeName, NodeNote>, leader: bool) {
        self.verdicts.retain(|n, _| assessments.contains_key(n));
        for (name, a) in assessments {
            if a.awaiting_first_renewal() {
                // Not judged yet (first sight of its Lease): nothing changed that anyone should hear.
                continue;
            }
            let previous = self.verdicts.insert(name.clone(), a.verdict);
            let changed = previous != Some(a.verdict);
            // The first sight of a node that is healthy, excluded or unjudged is not a change: a
            // restart must not flood the log or the cluster with one line or Event per node.
            let first_sight_of_nothing = previous.is_none() && matches!(a.verdict, Verdict::Healthy | Verdict::Excluded | Verdict::Unknown);
            if changed && !first_sight_of_nothing {
                let evidence = serde_json::to_string(&a.evidence).unwrap_or_default();
                info!(node = &**name, verdict = a.verdict.as_str(), previous = previous.map(Verdict::as_str), evidence, why = a.explain(), "verdict");
            }
            if !leader || !self.still_leading() {
                continue;
            }
            let note = notes.get(name);
            if changed && !first_sight_of_nothing {
                let (reason, warning) = verdict_reason(a.verdict);
                self.actuator.event(name, note.and_then(|n| n.uid.as_deref()), warning, reason, "Evaluate", format!("{}: {}", a.verdict, a.explain())).await;
            }
            if !self.config.dry_run {
                self.sync_condition(now, name, a, note).await;
            }
        }
    }

    /// Writes the node condition when it differs from what the verdict calls for. Healthy
    /// nodes that never had the condition are left alone: a healthy fleet costs no writes.
    async fn sync_condition(&self, now: Timestamp, name: &str, a: &Assessment, note: Option<&NodeNote>) {
        let Some((status, reason)) = desired_condition(a.verdict) else { return };
        let current = note.and_then(|n| n.our_condition.as_ref());
        if current.is_none() && matches!(a.verdict, Verdict::Healthy | Verdict::Unknown | Verdict::Excluded) {
            return;
        }
        if current.is_some_and(|(s, r)| s == status && r == reason) {
            return;
        }
        match self.actuator.set_condition(name, status, reason, &a.explain(), current.map(|(s, _)| s.as_str()), now).await {
            Ok(node) => self.apply_fresh(&node, None, now),
            Err(e) if e.is_not_found() => {}
            Err(e) => warn!(node = name, error = %e, "could not set the HeartbeatConsistent condition"),
        }
    }

    fn apply_fresh(&self, node: &SlimNode, lease: Option<&SlimLease>, now: Timestamp) {
        let mut v = lock(&self.view);
        v.facts.apply_node(node, &self.config.scope, now);
        if let Some(l) = lease {
            v.facts.apply_lease(l, now);
        }
    }

    /// Applies a fresh read of a node and its Lease: a Lease the read did not find is gone (the
    /// cached one must not confirm a verdict the cluster no longer supports).
    fn apply_fresh_read(&self, name: &str, node: &SlimNode, lease: Option<&SlimLease>, now: Timestamp) {
        self.apply_fresh(node, lease, now);
        if lease.is_none() {
            lock(&self.view).facts.delete_lease(name);
        }
    }

    /// Re-judges one node after a fresh read.
    fn reassess(&self, name: &str, now: Timestamp) -> Option<Assessment> {
        let v = lock(&self.view);
        let n = v.facts.nodes.get(name)?;
        let (trusted, _, _) = verdict::probe_partition(now, &v.facts, &self.config.thresholds, self.config.probe_partition_threshold);
        Some(verdict::assess(now, n, v.facts.leases.get(name), v.facts.probes.get(name), &self.config.thresholds, trusted))
    }

    async fn carry_out(&mut self, now: Timestamp, plan: Plan, assessments: &Assessments, notes: &HashMap<NodeName, NodeNote>) {
        if plan.circuit_open != self.circuit_reported {
            if plan.circuit_open {
                warn!(
                    limit = plan.limit,
                    active = plan.active,
                    eligible = plan.eligible,
                    held = plan.held.len(),
                    "circuit open: more nodes need remediation than the limit; nothing new is remediated"
                );
            } else {
                info!("circuit closed");
            }
            self.circuit_reported = plan.circuit_open;
        }
        let held_now: HashSet<String> = plan.held.iter().map(|(n, _)| n.clone()).collect();
        for (name, hold) in &plan.held {
            if self.held_reported.contains(name) {
                continue;
            }
            let why = match hold {
                Hold::CircuitOpen => format!(
                    "not remediated: the circuit is open ({} nodes need remediation, the limit is {} of {} eligible; --max-unhealthy)",
                    plan.active + plan.held.iter().filter(|(_, h)| *h == Hold::CircuitOpen).count(),
                    plan.limit,
                    plan.eligible
                ),
                Hold::RateLimited => "not remediated yet: --max-remediations-per-minute reached; will retry".to_string(),
                Hold::LastCapacity => {
                    format!("not remediated: it would leave fewer than {} schedulable node(s) (--min-available-nodes)", self.config.guard.min_available)
                }
            };
            warn!(node = name.as_str(), hold = ?hold, "{why}");
            for action in self.actions() {
                self.metrics.remediation(action, ResultLabel::Blocked);
            }
            self.actuator.event(name, notes.get(name.as_str()).and_then(|n| n.uid.as_deref()), true, "RemediationBlocked", "Remediate", why).await;
            self.held_reported.insert(name.clone());
        }
        self.held_reported.retain(|n| held_now.contains(n));

        self.backoff.retain(|n, _| notes.contains_key(n.as_str()));
        for name in plan.remediate {
            if !self.still_leading() {
                warn!("leadership lost during the tick; remaining writes skipped");
                return;
            }
            if self.backing_off(&name, now) {
                continue;
            }
            self.remediate(now, &name, notes.get(name.as_str())).await;
        }
        for name in plan.release {
            if !self.still_leading() {
                warn!("leadership lost during the tick; remaining writes skipped");
                return;
            }
            if self.backing_off(&name, now) {
                continue;
            }
            let why = assessments.get(name.as_str()).map(Assessment::explain).unwrap_or_default();
            self.release(now, &name, notes.get(name.as_str()), &why).await;
        }
    }

    /// True while this instance is the leader right now (always, without leader election).
    fn still_leading(&self) -> bool {
        self.leading.as_ref().is_none_or(crate::leader::LeaderCheck::is_leader)
    }

    /// True while a node's last write failed too recently to try again.
    fn backing_off(&self, name: &str, now: Timestamp) -> bool {
        self.backoff.get(name).is_some_and(|(_, next)| now < *next)
    }

    /// Records a failed write: the next attempt waits 5 s, doubling per failure, at most 5 min —
    /// so a missing permission costs one Event and one error line per back-off step, not per tick.
    fn write_failed(&mut self, name: &str, now: Timestamp) {
        let failures = self.backoff.get(name).map_or(0, |(n, _)| *n) + 1;
        let wait = (WRITE_BACKOFF_BASE * 2u32.saturating_pow(failures.min(16) - 1)).min(WRITE_BACKOFF_MAX);
        let next = now.checked_add(SignedDuration::try_from(wait).unwrap_or(SignedDuration::ZERO)).unwrap_or(now);
        self.backoff.insert(name.to_string(), (failures, next));
    }

    fn actions(&self) -> Vec<ActionLabel> {
        let mut a = Vec::new();
        if self.config.actions.taint {
            a.push(ActionLabel::Taint);
        }
        if self.config.actions.cordon {
            a.push(ActionLabel::Cordon);
        }
        a
    }

    /// Confirms the verdict on a fresh read of the Node and its Lease: a cached view may be stale
    /// (a missed watch event, a lagging cache), and acting on it could condemn a live node.
    /// Returns the read and the verdict it confirms, or `None` when it does not.
    async fn confirm(&mut self, now: Timestamp, name: &str) -> Option<(SlimNode, Assessment)> {
        let node = match self.actuator.fresh(name).await {
            Ok((node, lease)) => {
                self.apply_fresh_read(name, &node, lease.as_ref(), now);
                node
            }
            Err(e) => {
                warn!(node = name, error = %e, "could not confirm the verdict with a fresh read; not acting");
                return None;
            }
        };
        let confirmed = self.reassess(name, now)?;
        let wanted = confirmed.verdict == Verdict::Zombie || (self.config.guard.act_on_dead && confirmed.verdict == Verdict::Dead);
        if !wanted {
            info!(node = name, verdict = confirmed.verdict.as_str(), "fresh read does not confirm the verdict; not acting");
            return None;
        }
        Some((node, confirmed))
    }

    async fn remediate(&mut self, now: Timestamp, name: &str, note: Option<&NodeNote>) {
        let Some((mut node, mut confirmed)) = self.confirm(now, name).await else { return };
        let uid = note.and_then(|n| n.uid.as_deref());
        if self.config.dry_run {
            let why = confirmed.explain();
            for action in self.actions() {
                self.metrics.remediation(action, ResultLabel::DryRun);
            }
            self.memory.remediation_started(name, now, true);
            info!(node = name, actions = ?self.actions(), why, "dry run: would remediate");
            self.actuator.event(name, uid, true, "WouldRemediate", "Remediate", format!("dry run: would {} ({why})", self.describe_actions())).await;
            return;
        }
        // Patch exactly the read that was judged; when the Node changed meanwhile, read and
        // judge again.
        let mut outcome = self.actuator.remediate_confirmed(name, &node, now).await;
        for _ in 1..crate::actuate::CONFLICT_ATTEMPTS {
            if !matches!(outcome, Err(ActuateError::Conflict { .. })) {
                break;
            }
            tracing::debug!(node = name, "the node changed since the confirming read; judging it again");
            let Some(again) = self.confirm(now, name).await else { return };
            (node, confirmed) = again;
            outcome = self.actuator.remediate_confirmed(name, &node, now).await;
        }
        let why = confirmed.explain();
        match outcome {
            Ok((node, change)) => {
                self.backoff.remove(name);
                self.apply_fresh(&node, None, now);
                self.memory.remediation_started(name, now, false);
                self.count(&change, ActionLabel::Taint, ActionLabel::Cordon, ResultLabel::Success);
                if !change.taint && !change.cordon {
                    info!(
                        node = name,
                        why, "remediation recorded; nothing to change: the node is already unschedulable (cordoned by someone else, who keeps that cordon)"
                    );
                    let msg = format!("already cordoned by someone else; pulsecheck records the remediation and will not uncordon it ({why})");
                    self.actuator.event(name, uid, true, "AlreadyCordoned", "Remediate", msg).await;
                    return;
                }
                info!(node = name, tainted = change.taint, cordoned = change.cordon, why, "remediated");
                if change.taint {
                    let msg = format!("added taint {}:{} ({why})", self.config.actions.taint_key, self.config.actions.taint_effect.as_str());
                    self.actuator.event(name, uid, true, "Tainted", "Taint", msg).await;
                }
                if change.cordon {
                    self.actuator.event(name, uid, true, "Cordoned", "Cordon", format!("cordoned ({why})")).await;
                }
            }
            Err(e) => {
                for action in self.actions() {
                    self.metrics.remediation(action, ResultLabel::Error);
                }
                self.write_failed(name, now);
                error!(node = name, error = %e, kind = e.label(), "remediation failed");
                self.actuator.event(name, uid, true, "RemediationFailed", "Remediate", e.to_string()).await;
            }
        }
    }

    async fn release(&mut self, now: Timestamp, name: &str, note: Option<&NodeNote>, why: &str) {
        let uid = note.and_then(|n| n.uid.as_deref());
        if self.config.dry_run {
            self.memory.released(name, true);
            info!(node = name, "dry run: would release");
            self.actuator.event(name, uid, false, "WouldRelease", "Release", format!("dry run: would release ({why})")).await;
            return;
        }
        match self.actuator.release(name).await {
            Ok((node, change)) => {
                self.backoff.remove(name);
                self.apply_fresh(&node, None, now);
                self.memory.released(name, false);
                self.count(&change, ActionLabel::Untaint, ActionLabel::Uncordon, ResultLabel::Success);
                info!(node = name, untainted = change.taint, uncordoned = change.cordon, why, "released");
                let mut done = Vec::new();
                if change.taint {
                    done.push(format!("removed taint {}", self.config.actions.taint_key));
                }
                if change.cordon {
                    done.push("uncordoned".to_string());
                }
                if done.is_empty() {
                    done.push("cleared pulsecheck's record".into());
                }
                self.actuator.event(name, uid, false, "Released", "Release", format!("{} ({why})", done.join(", "))).await;
            }
            Err(e) if e.is_not_found() => self.memory.released(name, false),
            Err(e) => {
                for action in self.actions() {
                    let undo = if action == ActionLabel::Cordon { ActionLabel::Uncordon } else { ActionLabel::Untaint };
                    self.metrics.remediation(undo, ResultLabel::Error);
                }
                self.write_failed(name, now);
                error!(node = name, error = %e, why, "release failed");
            }
        }
    }

    fn count(&self, change: &Change, taint: ActionLabel, cordon: ActionLabel, result: ResultLabel) {
        if change.taint {
            self.metrics.remediation(taint, result);
        }
        if change.cordon {
            self.metrics.remediation(cordon, result);
        }
    }

    fn describe_actions(&self) -> String {
        let a = &self.config.actions;
        let mut parts = Vec::new();
        if a.taint {
            parts.push(format!("taint {}:{}", a.taint_key, a.taint_effect.as_str()));
        }
        if a.cordon {
            parts.push("cordon".into());
        }
        parts.join(" and ")
    }
}
