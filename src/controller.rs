//! `pulsecheck run`: the loop that ties the edges to the decision core.
//!
//! Death is silence, so decisions are time-driven: every `--evaluation-interval` the fleet is
//! judged from the shared [`View`](crate::observe::View) (the watches only update facts) — but a
//! tick costs what changed, not the fleet's size: the [`Docket`] judges again only the nodes
//! whose facts changed or whose verdict may turn by the clock alone, and every stage after it (metrics, the guard's counts, verdict changes, conditions,
//! probe targets) looks at those nodes and the few pulsecheck wrote to. A tick reads as three
//! stages:
//! 1. **Judge**, under the view's lock and without I/O: fold in probe results, check sight
//!    ([`crate::observe::Sight::blindness`]) and the probe partition guard, judge the nodes the
//!    docket names ([`crate::verdict::assess`]), publish their metrics, and ask the guard for a
//!    plan ([`crate::guard::plan_changed`]). The result is one `Judgement`.
//! 2. **Plan**: turn the judgement, the verdict changes and the guard's plan into planned steps
//!    ([`Step`]): every write to a Node — the `HeartbeatConsistent` condition included — and
//!    every Event is one step for one node, data the loop can check before it happens
//!    (`plan_steps`, pure).
//! 3. **Carry out**: hand each step to the [`Actuator`], which takes it from the confirming
//!    fresh read to the Event and returns an [`Outcome`]; the controller folds the outcome into
//!    the view, the guard's [`Memory`], the write back-off and the metrics (`Ledger::settle`,
//!    pure).
//!
//! Why this shape: a write is one value passing one loop, so the rules that hold for every
//! write are written once — leadership is checked before each step (a tick slowed down by a
//! struggling apiserver stops writing the moment leadership is lost), a node whose writes keep
//! failing waits out its back-off — and the decisions stay here while the actuator only carries
//! them out. Even the question the actuator must ask mid-write ("does this fresh read still call
//! for a remediation?") is answered by the controller's judge, passed in as a closure.
//!
//! Only the leader writes or publishes Events; while blind nothing new is decided. On shutdown
//! the current tick (and its in-flight writes) finishes, then the loop stops.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::SocketAddr,
    time::Duration,
};

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::{
    actuate::{Actions, Actuator, Change, Effect, FreshRead, Outcome, Planned, Step},
    admin::{AdminServer, Readiness},
    cadence::CadenceSource,
    config::{RunArgs, Settings},
    docket::Docket,
    facts::{FleetFacts, NodeMap, NodeName, NodeSet, ProbeOutcome},
    guard::{self, Hold, Memory, Plan},
    leader::Leadership,
    metrics::{ActionLabel, Metrics, NodeHeartbeats, ResultLabel, WriteKind, WriteResult},
    names,
    observe::{self, SharedView, View, lock},
    probe::{self, ProbeMode, ProbeReport, ProbeTarget, Prober},
    verdict::{self, Assessment, Assessments, Verdict},
};

/// First wait after a failed Node write; doubles per failure in a row.
const WRITE_BACKOFF_BASE: Duration = Duration::from_secs(5);
/// Longest wait between attempts to write a Node whose writes keep failing.
const WRITE_BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Events that could not be published in their tick (it ran out of time) wait for the next
/// one; beyond this many the oldest are dropped, with a log line.
const DEFERRED_EVENTS_MAX: usize = 1000;

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
pub async fn run(args: RunArgs) -> Result<crate::Outcome, Error> {
    crate::admin::init_logging(args.admin.log_format, &args.admin.log_filter)?;
    let mut settings = Settings::from_args(&args)?;
    let config = crate::connect::config(&args.client).await?;
    // Outside a Pod (no ServiceAccount token to read), kubelet probes may send the kubeconfig
    // user's bearer token instead.
    settings.probe.kubeconfig_credential = crate::connect::kubelet_credential(&config).map_err(str::to_string);
    let client = kube::Client::try_from(config).map_err(crate::connect::Error::Client)?;
    let running = start(client, settings).await?;
    wait_for_signal().await;
    info!("shutting down: finishing in-flight writes");
    running.stop().await;
    Ok(crate::Outcome::Clean)
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
    // The opt-in node agents' Leases live in pulsecheck's own namespace (wherever the leader
    // Lease is), watched only with --agent-evidence: without the agent's admission policy
    // anyone allowed to write Leases there could forge a report.
    if let Some(namespace) = &settings.agent_namespace {
        tasks.push(tokio::spawn(observe::watch_agent_leases(
            Api::namespaced(client.clone(), namespace),
            view.clone(),
            metrics.clone(),
            watch_shutdown.clone(),
        )));
    }

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

    // Every write checks leadership right before it is sent, and is bounded by the leadership
    // left: a step that began as leader cannot finish as a follower.
    let mut actuator = Actuator::new(client.clone(), settings.actions.clone(), settings.request_timeout, Some(settings.leader.identity.clone()))
        .with_leadership(leadership.current())
        .with_metrics(metrics.clone());
    if let Some(namespace) = &settings.agent_namespace {
        actuator = actuator.with_agent_leases(Api::namespaced(client, namespace));
    }
    let controller = Controller {
        judge: Judge::new(settings, metrics.clone(), readiness),
        view,
        actuator,
        probe_targets: targets_tx,
        probe_results: results_rx,
        leading: None,
    };
    tasks.push(tokio::spawn(controller.run(leadership, shutdown.clone(), watch_shutdown)));
    Ok(Running { admin_addr, metrics, shutdown, tasks })
}

/// The decision loop: the [`Judge`], and the edges it drives.
struct Controller {
    judge: Judge,
    view: SharedView,
    actuator: Actuator,
    probe_targets: tokio::sync::watch::Sender<Vec<ProbeTarget>>,
    probe_results: mpsc::Receiver<ProbeReport>,
    /// Leadership as of now (not as of the tick's start): checked before every step, so a
    /// tick slowed down by a struggling apiserver stops writing the moment leadership is lost.
    leading: Option<crate::leader::LeaderCheck>,
}

/// Everything a tick decides before it writes: the judging and planning stages, without I/O.
/// The controller's tick runs [`Judge::decide`] and then carries out its steps; the tick
/// benchmark (`benches/tick.rs`) runs the same `decide`, metrics included, so what it measures
/// is what a tick costs.
pub struct Judge {
    config: Settings,
    metrics: Metrics,
    readiness: Readiness,
    /// What pulsecheck remembers of its own writes between ticks.
    ledger: Ledger,
    /// Last reported verdict per node.
    verdicts: NodeMap<Verdict>,
    /// Nodes whose hold was reported (once per episode).
    held_reported: NodeSet,
    blind_reported: Option<String>,
    circuit_reported: bool,
    /// A probe partition was reported and has not ended yet.
    partition_reported: bool,
    /// Nodes whose probes are pulsecheck's own problem, already logged.
    misconfigured_reported: HashSet<String>,
    /// A `/configz` read failed and was logged (once per run).
    configz_failure_reported: bool,
    /// Nodes whose probes are pulsecheck's own problem whose Event a leader's tick planned.
    misconfigured_evented: HashSet<String>,
    /// Events planned in an earlier tick that ran out of time before publishing them.
    deferred_events: Vec<Planned>,
    /// Every node's last verdict and when it must be judged again.
    docket: Docket,
    /// What the per-node series were last told.
    series: Published,
    /// Nodes judged since the last tick that could see: their series and verdict changes wait
    /// for one (a blind view's verdicts are not reported).
    unseen: NodeSet,
    /// Nodes a step was carried out on since the last tick.
    settled: NodeSet,
    /// What each node counts for in the guard's plan.
    roster: guard::Roster,
    /// The nodes the prober asks, as last sent (`None`: never sent).
    probe_targets: Option<NodeMap<ProbeTarget>>,
    /// Nodes judged or written since a leader last planned steps.
    unplanned: NodeSet,
    /// Nodes the leader's last plan gave a step.
    last_planned: NodeSet,
}

/// What one tick decided ([`Judge::decide`]).
pub struct Decisions {
    judgement: Judgement,
    /// The steps to carry out, most urgent first; `None` when nothing is to be written (blind,
    /// or not the leader).
    steps: Option<Vec<Planned>>,
}

impl Decisions {
    /// The steps to carry out; `None` when blind or not the leader.
    pub fn steps(&self) -> Option<&[Planned]> {
        self.steps.as_deref()
    }

    /// Why pulsecheck could not trust its view, if it could not.
    pub fn blindness(&self) -> Option<&observe::Blindness> {
        self.judgement.blindness.as_ref()
    }

    /// The nodes this tick judged (every other node kept its verdict), sorted.
    pub fn judged(&self) -> &[NodeName] {
        &self.judgement.judged
    }

    /// Every node's verdict.
    pub fn assessments(&self) -> &Assessments {
        &self.judgement.assessments
    }

    /// The nodes the prober is to ask next, when they changed since the last tick.
    pub fn probe_targets(&self) -> Option<&[ProbeTarget]> {
        self.judgement.probe_targets.as_deref()
    }
}

/// What the judging stage of a tick concluded, for the stages that run after the view is
/// unlocked.
struct Judgement {
    /// Every node's verdict.
    assessments: std::sync::Arc<Assessments>,
    /// The guard's plan.
    plan: Plan,
    /// Why pulsecheck cannot trust its view, if it cannot: then nothing is planned.
    blindness: Option<observe::Blindness>,
    /// What the steps need to know about each node.
    notes: NodeMap<NodeNote>,
    /// The nodes the prober asks next, when they changed.
    probe_targets: Option<Vec<ProbeTarget>>,
    /// Nodes whose cordon pulsecheck set and somebody else undid: the cordon is theirs now.
    cordons_taken_over: Vec<String>,
    /// `--min-available-nodes`, for the message of a node held for the last capacity.
    min_available: usize,
    /// `--act-on-dead`: a dead node is pulsecheck's to remediate too (for its condition).
    act_on_dead: bool,
    /// Nodes whose probes just turned out to be pulsecheck's own problem, and why (one Event
    /// each, per episode).
    newly_misconfigured: Vec<(String, String)>,
    /// Nodes still under pulsecheck's cordon whose record somebody deleted, with its start.
    records_lost: Vec<(String, Option<Timestamp>)>,
    /// Whether probe evidence counted in this tick's verdicts (no probe partition).
    probes_trusted: bool,
    /// Whether agents' silence counted in this tick's verdicts (no agent partition).
    agent_silence_counts: bool,
    /// The instant the verdicts were judged as of (the view's horizon).
    judged_at: Timestamp,
    /// The nodes judged in this tick (the others kept their verdict), sorted.
    judged: Vec<NodeName>,
    /// When the view can be trusted: the nodes judged since the last tick that could see, sorted
    /// (the only ones whose series or verdict can have changed); empty while blind.
    seen: Vec<NodeName>,
    /// The nodes a leader's steps may be for, sorted: those judged or written since the last
    /// leader's plan, and those it gave a step. No other node's steps can have changed.
    planning: Vec<NodeName>,
    /// How many nodes have each verdict.
    verdict_counts: Vec<(Verdict, usize)>,
}

impl Judgement {
    /// Why the guard holds node `name` back, if it does (for its condition): worked out only
    /// for the nodes a condition is planned for — in a mass failure the held are most of the
    /// fleet's trouble, at every tick.
    fn hold(&self, name: &str) -> Option<String> {
        let held = &self.plan.held;
        let i = held.binary_search_by(|(n, _)| (**n).cmp(name)).ok()?;
        Some(hold_message(&self.plan, held[i].1, self.min_available))
    }
}

/// What the steps need to know about a node after the view is unlocked.
#[derive(Debug, Clone, Default, PartialEq)]
struct NodeNote {
    /// `metadata.uid`, for Events.
    uid: Option<String>,
    /// pulsecheck's condition on the node, `(status, reason)`, if it is there.
    our_condition: Option<(String, String)>,
    /// Why that condition says the node is not remediated, while its status is `Unknown`
    /// ([`NodeFacts::our_condition_why`]).
    why: Option<String>,
    /// pulsecheck holds a remediation on the node (its taint, cordon or record is on it).
    remediated: bool,
}

/// The notes on the nodes `names` of `facts` (a name twice is noted once).
fn notes<'a>(facts: &FleetFacts, memory: &Memory, names: impl IntoIterator<Item = &'a str>) -> NodeMap<NodeNote> {
    let mut notes = NodeMap::default();
    for (n, f) in names.into_iter().filter_map(|n| facts.nodes.get_key_value(n)) {
        if !notes.contains_key(n) {
            let note = NodeNote {
                uid: Some(f.uid.clone()).filter(|u| !u.is_empty()),
                our_condition: f.our_condition.clone(),
                why: f.our_condition_why.clone(),
                remediated: memory.holds_node(n, f),
            };
            notes.insert(n.clone(), note);
        }
    }
    notes
}

/// A verdict worth reporting: it changed, and it is not the first sight of a node with nothing
/// to report.
#[derive(Debug, Clone, PartialEq)]
struct VerdictChange {
    node: NodeName,
    previous: Option<Verdict>,
    verdict: Verdict,
}

/// The condition pulsecheck wants on a node for a verdict: `(status, reason)`. `remediated`
/// says whether pulsecheck holds a remediation on the node.
///
/// `False` means exactly "pulsecheck concluded this node is not alive **and acted on it**": it is
/// written only on a node pulsecheck remediated, after the confirming fresh read and behind the
/// fleet guard. Tools that key on the condition (a NodeHealthCheck, draino) therefore never act
/// beyond the guard or before that read — after a mass false positive (an outage, a clock step of
/// pulsecheck's pod) the circuit opens and no node says `False`. A Zombie or Dead node that
/// pulsecheck has not remediated (held by the guard, not yet confirmed, or dead and left to
/// kube-controller-manager) is `Unknown`, with the reason in the message. A Suspect node is still
/// `True` (reason `Suspect`). `NotJudged` and `Excluded` are only written to replace a condition
/// pulsecheck wrote earlier ([`condition_step`]), so a stale `False` never outlives the verdict.
///
/// A node pulsecheck remediated keeps its taint until it has been healthy on evidence for
/// `--recover-after`, and its condition says which way it is going meanwhile — never the plain
/// `True/HeartbeatsConsistent` over pulsecheck's own taint: healthy on evidence it is
/// `True/Recovering` (a NodeHealthCheck keyed on `False` stops, as it should for a node that
/// works again); Suspect, not judged, or healthy on evidence that cannot confirm it (a probe
/// partition, an expired or inconclusive probe) it is `Unknown/RecoveryUnconfirmed` — not
/// `False`, which is pulsecheck's conclusion that the node is dead, and not `True` either.
/// `confirmed` is [`Assessment::healthy_on_evidence`].
fn desired_condition(verdict: Verdict, remediated: bool, confirmed: bool) -> (&'static str, &'static str) {
    match verdict {
        Verdict::Healthy if remediated && confirmed => ("True", "Recovering"),
        Verdict::Healthy | Verdict::Suspect | Verdict::Unknown if remediated => ("Unknown", "RecoveryUnconfirmed"),
        Verdict::Healthy => ("True", "HeartbeatsConsistent"),
        Verdict::Suspect => ("True", "Suspect"),
        Verdict::Zombie if remediated => ("False", "ZombieDetected"),
        Verdict::Zombie => ("Unknown", "ZombieNotRemediated"),
        Verdict::Dead if remediated => ("False", "LeaseAndStatusStale"),
        Verdict::Dead => ("Unknown", "LeaseAndStatusStale"),
        Verdict::Unknown => ("True", "NotJudged"),
        // Only over a condition pulsecheck wrote earlier: a stale False must not outlive the
        // exclusion (tools keyed on it would act on a node a person excluded).
        Verdict::Excluded => ("True", "Excluded"),
    }
}

/// The Event reason for a verdict change, and whether it is a Warning.
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

/// Compares this tick's verdicts with the ones reported before, and remembers them: the changes
/// worth reporting, by node name. A node only waiting for its first Lease renewal is not judged
/// yet and is skipped; the first sight of a node that is healthy, excluded or unjudged is not a
/// change (a restart must not flood the log or the cluster with one line or Event per node).
/// Only the nodes `names` (sorted) are compared: no other node's verdict can have changed since
/// it was last reported.
fn verdict_changes_of(reported: &mut NodeMap<Verdict>, assessments: &Assessments, names: &[NodeName]) -> Vec<VerdictChange> {
    let mut changes = Vec::new();
    for name in names {
        let Some(a) = assessments.get(name) else {
            reported.remove(name);
            continue;
        };
        if a.awaiting_first_renewal() {
            continue;
        }
        let previous = match reported.get_mut(name) {
            Some(known) => Some(std::mem::replace(known, a.verdict)),
            None => reported.insert(name.clone(), a.verdict),
        };
        let first_sight_of_nothing = previous.is_none() && matches!(a.verdict, Verdict::Healthy | Verdict::Excluded | Verdict::Unknown);
        if previous != Some(a.verdict) && !first_sight_of_nothing {
            changes.push(VerdictChange { node: name.clone(), previous, verdict: a.verdict });
        }
    }
    changes.sort_unstable_by(|a, b| a.node.cmp(&b.node));
    changes
}

/// The step that brings a node's condition in line with its verdict, if it differs. Healthy,
/// unjudged and excluded nodes that never had the condition are left alone: a healthy fleet
/// costs no writes. A provisional verdict ([`Assessment::provisional`]) never changes a
/// condition that is there: the record and condition on the Node are the memory that survives
/// a restart, and a fresh instance has not seen enough to overrule them.
fn condition_step(a: &Assessment, note: Option<&NodeNote>, hold: Option<&str>, act_on_dead: bool, now: Timestamp) -> Option<Step> {
    let current = note.and_then(|n| n.our_condition.as_ref());
    let remediated = note.is_some_and(|n| n.remediated);
    if a.provisional && remediated && current.is_some() {
        // Not watched long enough to contradict what an earlier run left on a node it
        // remediated (its False). A False with no remediation behind it is corrected at once.
        return None;
    }
    let (status, reason) = desired_condition(a.verdict, remediated, a.healthy_on_evidence());
    if current.is_none() && !remediated && matches!(a.verdict, Verdict::Healthy | Verdict::Unknown | Verdict::Excluded) {
        return None;
    }
    // Why an unremediated node is not remediated (an Unknown condition's first clause): it can
    // change while the reason stays.
    let kcms = a.verdict == Verdict::Dead && !act_on_dead;
    let why = match (status, hold) {
        _ if reason == "RecoveryUnconfirmed" => None,
        ("Unknown", Some(_)) => Some(Unremediated::Held),
        ("Unknown", None) if kcms => Some(Unremediated::DeadIsKcms),
        ("Unknown", None) => Some(Unremediated::Confirming),
        _ => None,
    };
    let why_current = note.and_then(|n| n.why.as_deref()).map(Unremediated::of);
    if current.is_some_and(|(s, r)| s == status && r == reason) && why.is_none_or(|w| why_current == Some(w)) {
        return None;
    }
    let message = match (status, hold) {
        _ if reason == "Recovering" => "healthy again on evidence; pulsecheck's remediation comes off once it has stayed so for --recover-after".to_string(),
        _ if reason == "RecoveryUnconfirmed" => format!(
            "remediated by pulsecheck; the evidence against it has faded but its health is not confirmed ({}), so the remediation stays",
            a.unconfirmed.unwrap_or(if a.provisional { "not watched long enough yet" } else { "the verdict is not healthy" })
        ),
        ("Unknown", Some(hold)) => format!("{hold}; {}", a.explain(now)),
        ("Unknown", None) if kcms => format!("{DEAD_IS_KCMS} (--act-on-dead); {}", a.explain(now)),
        ("Unknown", None) => format!("{CONFIRMING}; {}", a.explain(now)),
        _ => a.explain(now),
    };
    Some(Step::SetCondition { status, reason, message, previous_status: current.map(|(s, _)| s.clone()) })
}

/// Why an unremediated node is not remediated, as its condition says, told apart by what may
/// change while the condition's reason stays. The guard's holds are one: a circuit flapping
/// around its limit turns every held node from "circuit open" to "rate limited" and back, and
/// rewriting each held node's condition at every flip would be a write storm in the middle of a
/// mass failure (the node's `RemediationBlocked` Event and the guard's metrics say which hold).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unremediated {
    /// Held back by the guard.
    Held,
    /// About to be remediated: waiting for the confirming read.
    Confirming,
    /// Dead: kube-controller-manager's case (without --act-on-dead).
    DeadIsKcms,
}

impl Unremediated {
    /// What the first clause of a condition's message ([`crate::facts::why_not_remediated`]) says.
    fn of(why: &str) -> Unremediated {
        match why {
            CONFIRMING => Unremediated::Confirming,
            DEAD_IS_KCMS => Unremediated::DeadIsKcms,
            _ => Unremediated::Held,
        }
    }
}

/// Why a dead node is not remediated, in its condition (unless --act-on-dead).
const DEAD_IS_KCMS: &str = "not remediated: a dead node is kube-controller-manager's";
/// Why a zombie nothing holds back is not remediated yet, in its condition.
const CONFIRMING: &str = "not remediated yet: waiting for the fresh read that confirms it";

/// Why a held node is not remediated now, for its log line, Event and condition. With the
/// circuit open every node that wants remediation is held, so the nodes that would be
/// unavailable are those already out and those wanting.
fn hold_message(plan: &Plan, hold: Hold, min_available: usize) -> String {
    match hold {
        Hold::CircuitOpen => format!(
            "not remediated: the circuit is open ({} nodes would be unavailable, the limit is {} of {} eligible; --max-unhealthy)",
            plan.unavailable + plan.wanting,
            plan.limit,
            plan.eligible
        ),
        Hold::RateLimited => "not remediated yet: --max-remediations-per-minute reached; will retry".to_string(),
        Hold::LastCapacity => format!("not remediated: it would leave fewer than {min_available} schedulable node(s) (--min-available-nodes)"),
    }
}

/// The steps of one tick as leader, in the order they are carried out — most urgent first,
/// because a tick whose time runs out leaves the rest to the next one: the guard's
/// remediations; its releases; the cordons others took over; per node (by name) its
/// condition; then the Events — verdict changes, and the nodes newly held back by the guard.
/// A dry run writes nothing to a Node: no condition, no record, and remediations and releases
/// only reported.
fn plan_steps(judgement: &Judgement, changes: &[VerdictChange], newly_held: &[(String, String)], dry_run: bool) -> Vec<Planned> {
    let uid = |name: &str| judgement.notes.get(name).and_then(|n| n.uid.clone());
    let planned = |name: &str, step: Step| Planned { node: name.to_string(), uid: uid(name), step };
    let judged: Vec<(&NodeName, &Assessment)> =
        judgement.planning.iter().filter_map(|n| judgement.assessments.get_key_value(n)).filter(|(_, a)| !a.awaiting_first_renewal()).collect();
    let mut steps = Vec::new();
    for name in &judgement.plan.remediate {
        steps.push(planned(name, Step::Remediate { dry_run }));
    }
    // A node whose record is being written back is released on a later tick, from the record:
    // released now, nothing would be undone and the cordon would be forgotten.
    let restoring = |name: &str| !dry_run && judgement.records_lost.iter().any(|(n, _)| n == name);
    for name in judgement.plan.release.iter().filter(|n| !restoring(n)) {
        let why = judgement.assessments.get(name.as_str()).map(|a| a.explain(judgement.judged_at)).unwrap_or_default();
        // A cordon taken over is released with the record even before the record disowns it.
        let undo_cordon = !judgement.cordons_taken_over.contains(name);
        steps.push(planned(name, Step::Release { why, undo_cordon, dry_run }));
    }
    if !dry_run {
        let mut taken_over: Vec<&String> = judgement.cordons_taken_over.iter().collect();
        taken_over.sort_unstable();
        steps.extend(taken_over.into_iter().map(|name| planned(name, Step::DisownCordon)));
        steps.extend(judgement.records_lost.iter().map(|(name, since)| planned(name, Step::RestoreRecord { since: *since })));
        for (name, a) in &judged {
            if let Some(step) = condition_step(a, judgement.notes.get(*name), judgement.hold(name).as_deref(), judgement.act_on_dead, judgement.judged_at) {
                steps.push(planned(name, step));
            }
        }
    }
    for change in changes {
        let Some(a) = judgement.assessments.get(&change.node) else { continue };
        let (reason, warning) = verdict_reason(a.verdict);
        steps.push(planned(
            &change.node,
            Step::Report { warning, reason, action: "Evaluate", note: format!("{}: {}", a.verdict, a.explain(judgement.judged_at)) },
        ));
    }
    for (name, why) in newly_held {
        steps.push(planned(name, Step::Report { warning: true, reason: "RemediationBlocked", action: "Remediate", note: why.clone() }));
    }
    for (name, why) in &judgement.newly_misconfigured {
        let note = format!("kubelet probes of this node cannot work for a reason on pulsecheck's side, so they are no evidence against it: {why}");
        steps.push(planned(name, Step::Report { warning: true, reason: "ProbeMisconfigured", action: "Probe", note }));
    }
    steps
}

/// The kind of write a step is, for its back-off and its metric.
fn write_kind(step: &Step) -> WriteKind {
    match step {
        Step::Remediate { .. } => WriteKind::Remediation,
        Step::Release { .. } => WriteKind::Release,
        Step::DisownCordon | Step::RestoreRecord { .. } => WriteKind::Record,
        Step::SetCondition { .. } => WriteKind::Condition,
        Step::Report { .. } => WriteKind::Event,
    }
}

/// What became of a step that was carried out, for `pulsecheck_writes_total`.
fn write_result(effect: &Effect) -> WriteResult {
    match effect {
        Effect::Failed(_) => WriteResult::Error,
        Effect::Unconfirmed | Effect::Gone | Effect::CordonKept => WriteResult::Superseded,
        _ => WriteResult::Success,
    }
}

/// The metric labels of the configured actions.
fn action_labels(actions: &Actions) -> Vec<ActionLabel> {
    let mut labels = Vec::new();
    if actions.taint {
        labels.push(ActionLabel::Taint);
    }
    if actions.cordon {
        labels.push(ActionLabel::Cordon);
    }
    labels
}

/// Writes that failed, per node and kind: failures in a row, and the earliest next attempt.
/// The first wait is 5 s, doubling per failure, at most 5 min — so a missing permission costs
/// one error line (and metric) per back-off step, not per tick, and a kind of write that fails
/// (Events, say) never holds back another (a taint).
#[derive(Debug, Default)]
struct WriteBackoff(HashMap<(String, WriteKind), (u32, Timestamp)>);

impl WriteBackoff {
    /// True while a node's last write of `kind` failed too recently to try again.
    fn waiting(&self, node: &str, kind: WriteKind, now: Timestamp) -> bool {
        self.0.get(&(node.to_string(), kind)).is_some_and(|(_, next)| now < *next)
    }

    /// Records a failed write of `kind` at `now`.
    fn failed(&mut self, node: &str, kind: WriteKind, now: Timestamp) {
        let key = (node.to_string(), kind);
        let failures = self.0.get(&key).map_or(0, |(n, _)| *n) + 1;
        let wait = (WRITE_BACKOFF_BASE * 2u32.saturating_pow(failures.min(16) - 1)).min(WRITE_BACKOFF_MAX);
        let next = now.checked_add(SignedDuration::try_from(wait).unwrap_or(SignedDuration::ZERO)).unwrap_or(now);
        self.0.insert(key, (failures, next));
    }

    /// A write of `kind` succeeded: the next failure starts from 5 s again.
    fn succeeded(&mut self, node: &str, kind: WriteKind) {
        self.0.remove(&(node.to_string(), kind));
    }

    /// Forgets nodes that no longer exist.
    fn retain(&mut self, exists: impl Fn(&str) -> bool) {
        self.0.retain(|(n, _), _| exists(n));
    }
}

/// What pulsecheck remembers of its own writes: the guard's [`Memory`] (remediations started,
/// releases, dry-run simulations) and the write back-off.
#[derive(Debug, Default)]
struct Ledger {
    memory: Memory,
    backoff: WriteBackoff,
}

impl Ledger {
    /// Books the outcome of one step at `now`; returns the remediation counts the metrics record.
    fn settle(&mut self, now: Timestamp, planned: &Planned, effect: &Effect, actions: &Actions) -> Vec<(ActionLabel, ResultLabel)> {
        let node = planned.node.as_str();
        let kind = write_kind(&planned.step);
        match effect {
            Effect::Failed(_) => self.backoff.failed(node, kind, now),
            Effect::Unconfirmed | Effect::WouldRemediate | Effect::WouldRelease => {}
            _ => self.backoff.succeeded(node, kind),
        }
        let each = |result| action_labels(actions).into_iter().map(|a| (a, result)).collect::<Vec<_>>();
        match (&planned.step, effect) {
            (_, Effect::Remediated(change)) => {
                self.memory.remediation_started(node, now, false);
                if change.cordon {
                    self.memory.cordoned_now(node, planned.uid.as_deref().unwrap_or_default(), now);
                }
                written(change, ActionLabel::Taint, ActionLabel::Cordon)
            }
            (_, Effect::WouldRemediate) => {
                self.memory.remediation_started(node, now, true);
                each(ResultLabel::DryRun)
            }
            (_, Effect::Released(change)) => {
                self.memory.released(node, false);
                written(change, ActionLabel::Untaint, ActionLabel::Uncordon)
            }
            (_, Effect::WouldRelease) => {
                self.memory.released(node, true);
                Vec::new()
            }
            (Step::Release { .. }, Effect::Gone) => {
                self.memory.released(node, false);
                Vec::new()
            }
            (Step::Remediate { .. }, Effect::Failed(_)) => each(ResultLabel::Error),
            (Step::Release { .. }, Effect::Failed(_)) => action_labels(actions)
                .into_iter()
                .map(|a| (if a == ActionLabel::Cordon { ActionLabel::Uncordon } else { ActionLabel::Untaint }, ResultLabel::Error))
                .collect(),
            // An unconfirmed remediation, an Event, a condition, a kept cordon leave nothing
            // else to remember.
            _ => Vec::new(),
        }
    }
}

/// The success counts of what a remediation or release changed.
fn written(change: &Change, taint: ActionLabel, cordon: ActionLabel) -> Vec<(ActionLabel, ResultLabel)> {
    let mut counts = Vec::new();
    if change.taint {
        counts.push((taint, ResultLabel::Success));
    }
    if change.cordon {
        counts.push((cordon, ResultLabel::Success));
    }
    counts
}

/// A step as it should be carried out now (see [`Controller::rejudge`]), on the view's facts as
/// they are now; `remediated`: pulsecheck's remediation is on the node. The node is judged again
/// with the tick's probe trust: a condition or a verdict Event whose verdict no longer holds —
/// the fresh read before a remediation refuted it (a status the watch had not delivered yet, a
/// Lease that is gone), or the watches moved on — is dropped, and the next tick writes what is
/// true then, instead of a condition and an Event that are taken back a tick later.
fn rejudged(now: Timestamp, facts: &FleetFacts, remediated: bool, judgement: &Judgement, th: &verdict::Thresholds, planned: Planned) -> Option<Planned> {
    let name = planned.node.as_str();
    let again = |at: Timestamp| {
        let agent = verdict::AgentSight::of(facts, name, judgement.agent_silence_counts);
        facts.nodes.get(name).map(|n| verdict::assess(at, n, facts.leases.get(name), facts.probes.get(name), agent, th, judgement.probes_trusted))
    };
    let planned_verdict = judgement.assessments.get(name).map(|a| a.verdict);
    match &planned.step {
        Step::SetCondition { .. } => {
            let a = again(judgement.judged_at)?;
            if Some(a.verdict) != planned_verdict {
                return None;
            }
            let f = facts.nodes.get(name)?;
            let note = NodeNote { uid: planned.uid.clone(), our_condition: f.our_condition.clone(), why: f.our_condition_why.clone(), remediated };
            let step = condition_step(&a, Some(&note), judgement.hold(name).as_deref(), judgement.act_on_dead, judgement.judged_at)?;
            Some(Planned { step, ..planned })
        }
        Step::Report { action: "Evaluate", .. } => (again(judgement.judged_at)?.verdict == planned_verdict?).then_some(planned),
        Step::Release { .. } => {
            if !remediated {
                return None;
            }
            let a = again(now)?;
            if a.healthy_on_evidence() || a.verdict == Verdict::Excluded {
                // Somebody may have undone and redone the cordon since the plan was made (the
                // steps before this one can take a while): a cordon taken over stays.
                let taken_over = facts.nodes.get(name).is_some_and(|f| f.cordon_taken_over);
                match planned.step {
                    Step::Release { why, undo_cordon, dry_run } => {
                        Some(Planned { step: Step::Release { why, undo_cordon: undo_cordon && !taken_over, dry_run }, ..planned })
                    }
                    _ => Some(planned),
                }
            } else {
                info!(node = name, verdict = a.verdict.as_str(), "release no longer called for when its turn came; not releasing");
                None
            }
        }
        _ => Some(planned),
    }
}

impl Controller {
    async fn run(mut self, mut leadership: Leadership, shutdown: CancellationToken, watch_shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.judge.config.evaluation_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut was_leader = false;
        self.leading = Some(leadership.current());
        let both_synced = lock(&self.view).sight.both_synced.clone();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => {},
                _ = leadership.changed() => {},
                () = both_synced.notified() => {},
            }
            let leader = leadership.is_leader();
            if leader != was_leader {
                info!(leader, "leadership changed");
                was_leader = leader;
            }
            self.judge.metrics.set_leader(leader);
            self.tick(Timestamp::now(), leader).await;
        }
        watch_shutdown.cancel();
        self.judge.readiness.set(false);
        leadership.resign(Duration::from_secs(3)).await;
        self.judge.metrics.set_leader(false);
    }

    /// One evaluation and the actions it calls for: judge and plan ([`Judge::decide`]), then
    /// carry out.
    async fn tick(&mut self, now: Timestamp, leader: bool) {
        let mut reports = Vec::new();
        while let Ok(report) = self.probe_results.try_recv() {
            reports.push(report);
        }
        let Decisions { mut judgement, steps } = self.judge.decide(now, leader, &self.view, reports);
        if let Some(targets) = judgement.probe_targets.take() {
            self.probe_targets.send_replace(targets);
        }
        if let Some(steps) = steps {
            self.carry_out(now, &judgement, steps).await;
        }
    }
}

impl Judge {
    /// A judge with nothing remembered yet: `metrics` and `readiness` are the ones the admin
    /// server exports.
    pub fn new(config: Settings, metrics: Metrics, readiness: Readiness) -> Judge {
        Judge {
            config,
            metrics,
            readiness,
            ledger: Ledger::default(),
            verdicts: NodeMap::default(),
            held_reported: NodeSet::default(),
            blind_reported: None,
            circuit_reported: false,
            partition_reported: false,
            misconfigured_reported: HashSet::new(),
            configz_failure_reported: false,
            misconfigured_evented: HashSet::new(),
            deferred_events: Vec::new(),
            docket: Docket::new(),
            series: Published::default(),
            unseen: NodeSet::default(),
            settled: NodeSet::default(),
            roster: guard::Roster::default(),
            probe_targets: None,
            unplanned: NodeSet::default(),
            last_planned: NodeSet::default(),
        }
    }

    /// Makes the next tick judge the whole fleet, as the first one does (the docket carries
    /// nothing over): what a tick cost before ticks judged what changed, for the benchmark.
    pub fn forget(&mut self) {
        self.docket.forget();
    }

    /// Everything a tick decides at `now` before it writes: fold in `probe_reports`, judge the
    /// fleet on `view`, publish metrics (`pulsecheck_evaluation_duration_seconds` is the time
    /// this takes), report verdict changes and holds, and plan the steps a leader carries out.
    pub fn decide(&mut self, now: Timestamp, leader: bool, view: &SharedView, probe_reports: Vec<ProbeReport>) -> Decisions {
        let started = std::time::Instant::now();
        let judgement = self.judge(now, leader, view, probe_reports);
        let steps = self.plan(leader, &judgement);
        self.metrics.evaluation(started.elapsed().as_secs_f64());
        Decisions { judgement, steps }
    }

    /// The planning stage: the fleet's metrics, the verdict changes and holds reported, and, for
    /// a leader that can see, the steps to carry out.
    fn plan(&mut self, leader: bool, judgement: &Judgement) -> Option<Vec<Planned>> {
        if judgement.blindness.is_none() {
            self.metrics.fleet(&judgement.verdict_counts, judgement.plan.active, judgement.plan.limit, judgement.plan.circuit_open);
        }
        self.report_blindness(judgement.blindness.as_ref());
        if !leader || judgement.blindness.is_some() {
            // A tick that reports no holds (a follower's, a blind one's) still sees a hold's
            // episode end: the node no longer needs a remediation (it recovered, or went). Held
            // again later — while another instance led, say — it is reported anew. One that
            // still needs it is not: a leadership blip is no new episode, and a mass failure's
            // thousand held nodes must not get a thousand Events again at every blip.
            let guard = &self.config.guard;
            self.held_reported.retain(|n| judgement.assessments.get(n).is_some_and(|a| guard::needs_remediation(a.verdict, guard)));
        }
        if judgement.blindness.is_some() {
            return None;
        }
        // Only a node judged since the last report can have a new verdict.
        let changes = verdict_changes_of(&mut self.verdicts, &judgement.assessments, &judgement.seen);
        report_verdicts(judgement.judged_at, &judgement.assessments, &changes);
        for change in &changes {
            self.metrics.verdict_changed(change.verdict);
        }
        if !leader {
            for p in std::mem::take(&mut self.deferred_events) {
                self.event_not_sent(&p);
            }
            return None;
        }
        let newly_held = self.report_holds(&judgement.plan);
        self.misconfigured_evented.extend(judgement.newly_misconfigured.iter().map(|(n, _)| n.clone()));
        let mut steps = plan_steps(judgement, &changes, &newly_held, self.config.dry_run);
        // Events an earlier tick had no time for go before this tick's, oldest first.
        let first_event = steps.iter().position(|p| matches!(p.step, Step::Report { .. })).unwrap_or(steps.len());
        steps.splice(first_event..first_event, std::mem::take(&mut self.deferred_events));
        self.unplanned.clear();
        self.last_planned = steps.iter().filter_map(|p| judgement.notes.get_key_value(p.node.as_str()).map(|(n, _)| n.clone())).collect();
        Some(steps)
    }

    /// The judging stage: everything decided under the view's lock.
    fn judge(&mut self, now: Timestamp, leader: bool, view: &SharedView, probe_reports: Vec<ProbeReport>) -> Judgement {
        let cfg = &self.config;
        let mut v = lock(view);
        for report in probe_reports {
            match report.cadence {
                Some(Ok(cadence)) => v.facts.record_kubelet_cadence(&report.node, cadence, report.cadence_asked_at),
                Some(Err(why)) if !self.configz_failure_reported => {
                    warn!(node = %report.node, why = %why, "cannot read a kubelet's /configz: its status cadence is learned from the intervals pulsecheck sees instead (reported once; pulsecheck_kubelet_configz_reads_total counts the rest)");
                    self.configz_failure_reported = true;
                }
                Some(Err(_)) | None => {}
            }
            v.facts.record_probe(&report.node, report.outcome, report.at, cfg.thresholds.probe_result_ttl);
        }
        // Judged as of the last instant the Lease watch proved it could see (a blink behind
        // `now` in a live fleet): a silence the watch has not had the chance to break is no
        // node's fault, and the fleet-wide silence rule wins the race against it.
        let at = v.sight.horizon(now, &v.facts);
        // What changed and what came due since the last tick, folded into the fleet-wide
        // figures; only those nodes are judged again below.
        self.docket.observe(at, &mut v.facts, &cfg.thresholds);
        // The Lease watch may be quiet for as long as the most often renewing live Lease allows:
        // a fleet whose every kubelet renews every 50 s (nodeLeaseDurationSeconds: 200) is not a
        // silent watch after 50 s — and a dead node's short Lease sets nothing.
        let silence = self.docket.lease_silence(&cfg.thresholds);
        let node_silence = self.docket.status_silence();
        let blindness = v.see(now, silence, node_silence, cfg.settle_after_blindness);
        let agent_silence = self.docket.agent_watch_silence(&cfg.thresholds);
        v.facts.agents_hidden = v.sight.agents_hidden(now, &v.facts, agent_silence);
        let can_see_at_all = v.sight.nodes.synced && v.sight.leases.synced;
        self.readiness.set(
            can_see_at_all
                && !matches!(
                    blindness,
                    Some(
                        observe::Blindness::WatchFailing(..)
                            | observe::Blindness::LeasesSilent(_)
                            | observe::Blindness::NodesSilent(_)
                            | observe::Blindness::NodeWatchLags { .. }
                    )
                ),
        );
        let evaluation = self.docket.pass(at, &mut v.facts, &cfg.thresholds, cfg.probe_partition_threshold);
        self.metrics.set_probe_partition(!evaluation.probes_trusted);
        self.metrics.set_agents(&self.docket.agent_reports(v.facts.agents_hidden.is_some()));
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
        // never reached, no probe at all): reported once per node and episode, never evidence.
        let misconfigured: HashMap<String, String> = self.docket.misconfigured().iter().map(|(node, why)| (node.to_string(), why.clone())).collect();
        self.metrics.set_probe_misconfigured(!misconfigured.is_empty());
        for (node, why) in &misconfigured {
            if !self.misconfigured_reported.contains(node) {
                error!(node = %node, why = %why, "kubelet probes of this node cannot work: a configuration problem of pulsecheck (RBAC, kubelet CA, network path to port 10250, token file), not evidence against the node");
            }
        }
        // The Event goes out from the leader, once per node and episode: a node counts as told
        // only once a leader's tick has planned its Event (see `tick`).
        self.misconfigured_evented.retain(|n| misconfigured.contains_key(n));
        let mut newly_misconfigured: Vec<(String, String)> =
            misconfigured.iter().filter(|(n, _)| !self.misconfigured_evented.contains(*n)).map(|(n, w)| (n.clone(), w.clone())).collect();
        newly_misconfigured.sort_unstable();
        if misconfigured.is_empty() && !self.misconfigured_reported.is_empty() {
            info!("kubelet probes work again on every node");
        }
        self.misconfigured_reported = misconfigured.into_keys().collect();
        let assessments = evaluation.assessments;
        let judged = evaluation.judged;
        self.unseen.extend(judged.iter().cloned());
        let mut seen: Vec<NodeName> = Vec::new();
        if blindness.is_none() {
            seen = self.unseen.drain().collect();
            seen.sort_unstable();
            verdict::note_uncadenced_gaps(&mut v.facts, judged.iter().filter_map(|n| Some((n, assessments.get(n)?))));
            verdict::note_cadence_rereads(at, &mut v.facts, &cfg.thresholds, &judged);
            // A blind view's verdicts are not verdicts: the series keep what was last seen, and
            // pulsecheck_blind says why they do not move (no zombie alert fires on a blind spell).
            // A renewal let wait changed no verdict, only the node's lease_observed series (one
            // only `--per-node-metrics=all` keeps for a quietly healthy node).
            let renewed = if cfg.per_node_metrics == crate::metrics::PerNodeMetrics::All { &evaluation.renewed[..] } else { &[] };
            self.series.publish(&self.metrics, &cfg.thresholds, &self.ledger.memory, &v.facts, &assessments, &seen, renewed);
        }
        let stance = match (blindness.is_some(), leader) {
            (true, _) => guard::Stance::Blind,
            (false, true) => guard::Stance::Act,
            (false, false) => guard::Stance::Watch,
        };
        // Looked at again by the guard: the nodes judged now, and those a step was carried out on
        // (pulsecheck's memory of them changed). After a blind plan every node is: a blind view
        // resets every node's hysteresis clock, so the docket's next pass judges the whole fleet.
        let mut looked_at = judged.clone();
        looked_at.extend(std::mem::take(&mut self.settled));
        looked_at.sort_unstable();
        looked_at.dedup();
        if blindness.is_some() {
            self.docket.forget();
        }
        let uncordoned = v.facts.take_uncordons();
        self.ledger.memory.note_cordons_of(&v.facts, &uncordoned, &looked_at);
        let plan = guard::plan_changed(now, &mut self.roster, &looked_at, &assessments, &v.facts, &mut self.ledger.memory, &cfg.guard, stance);
        self.ledger.memory.retain(|n| v.facts.nodes.contains_key(n), false);
        self.ledger.backoff.retain(|n| v.facts.nodes.contains_key(n));
        let records_lost = self.ledger.memory.lost_records(&v.facts);
        // Probed: every node in scope whose Lease pulsecheck saw renewed within the grace. A node
        // with a stale or missing Lease is kube-controller-manager's case; probing it adds nothing.
        let lease_alive = |n: &NodeName| v.facts.leases.get(n).is_some_and(|l| cfg.thresholds.lease_alive(at, l));
        let mut targets_changed = self.probe_targets.is_none();
        let targets = self.probe_targets.get_or_insert_with(NodeMap::default);
        for name in &looked_at {
            let probed = assessments.get(name).filter(|a| a.verdict != Verdict::Excluded && lease_alive(name)).and_then(|_| v.facts.nodes.get(name));
            let was = match probed {
                // Most nodes looked at are probed as they were: compared before anything is copied.
                Some(f) if targets.get(name).is_some_and(|t| t.endpoint == f.kubelet && t.recheck_cadence == f.cadence.recheck) => continue,
                Some(f) => {
                    targets.insert(name.clone(), ProbeTarget { node: name.to_string(), endpoint: f.kubelet.clone(), recheck_cadence: f.cadence.recheck })
                }
                None => targets.remove(name),
            };
            targets_changed |= was.is_some() || targets.contains_key(name);
        }
        let probe_targets = targets_changed.then(|| targets.values().cloned().collect());
        // The nodes a leader's steps may be planned for: judged or written since the last plan,
        // or given a step by it (a failed, deferred or superseded step is planned again). Only a
        // leader that can see plans steps.
        self.unplanned.extend(looked_at.iter().cloned());
        let mut planning: Vec<NodeName> = Vec::new();
        if stance == guard::Stance::Act {
            planning.extend(self.unplanned.iter().chain(&self.last_planned).cloned());
            planning.sort_unstable();
            planning.dedup();
        }
        // Our cordon, undone by somebody else: the schedulability is theirs from now on.
        // Over the releases too: a release comes from the guard's hysteresis, not only from a
        // node looked at in this tick, and must know whose cordon is there.
        let mut cordons_taken_over: Vec<String> = planning
            .iter()
            .map(|n| &**n)
            .chain(plan.release.iter().map(String::as_str))
            .filter(|n| v.facts.nodes.get(*n).is_some_and(|f| f.cordon_taken_over))
            .map(str::to_string)
            .collect();
        cordons_taken_over.sort_unstable();
        cordons_taken_over.dedup();
        // Notes of a held node are needed for the Event that says it is held: once per episode.
        let newly_held = plan.held.iter().filter(|(n, _)| !self.held_reported.contains(&**n));
        let noted = planning
            .iter()
            .map(|n| &**n)
            .chain(plan.remediate.iter().chain(&plan.release).chain(&cordons_taken_over).map(String::as_str))
            .chain(records_lost.iter().map(|(n, _)| n.as_str()))
            .chain(newly_held.map(|(n, _)| &**n))
            .chain(newly_misconfigured.iter().map(|(n, _)| n.as_str()));
        let notes = notes(&v.facts, &self.ledger.memory, noted);
        Judgement {
            assessments,
            plan,
            blindness,
            notes,
            probe_targets,
            cordons_taken_over,
            min_available: cfg.guard.min_available,
            act_on_dead: cfg.guard.act_on_dead,
            newly_misconfigured,
            records_lost,
            probes_trusted: evaluation.probes_trusted,
            agent_silence_counts: evaluation.agent_silence_counts,
            judged_at: at,
            judged,
            seen,
            planning,
            verdict_counts: self.docket.verdict_counts(),
        }
    }

    /// Books the outcome of one step carried out at `now` (`Ledger::settle`) and counts it. The
    /// node is looked at again at the next tick: what pulsecheck remembers of its own writes
    /// (a dry run's remediation, a cordon it knows is its own) is part of its view of the node.
    /// The controller's tick calls it after every step; `benches/tick.rs`, whose writes land on
    /// paper, does too.
    pub fn settle(&mut self, now: Timestamp, planned: &Planned, effect: &Effect) {
        if matches!(effect, Effect::Failed(_)) {
            self.event_not_sent(planned);
        }
        for (action, result) in self.ledger.settle(now, planned, effect, &self.config.actions) {
            self.metrics.remediation(action, result);
        }
        if let Some((name, _)) = self.verdicts.get_key_value(planned.node.as_str()) {
            self.settled.insert(name.clone());
        } else {
            self.settled.insert(NodeName::from(planned.node.as_str()));
        }
    }

    /// A step planned but not carried out, or carried out and failed: when it was the Event
    /// that tells a node is held back, the node is not told yet, and is told at the next tick
    /// that holds it as leader. A node counts as told once its Event is planned (so that two
    /// ticks do not both plan one); one dropped — leadership lost mid-tick, a lagging watch, a
    /// back-off, a deferred Event a follower or the deferral cap let go, a failed write — must
    /// not leave it told.
    fn event_not_sent(&mut self, planned: &Planned) {
        if matches!(planned.step, Step::Report { reason: "RemediationBlocked", .. }) {
            self.held_reported.remove(planned.node.as_str());
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

    /// Logs the circuit opening or closing and each node newly held back (with its metric);
    /// returns the newly held nodes with the reason, for their Events. A hold is reported once
    /// per episode.
    fn report_holds(&mut self, plan: &Plan) -> Vec<(String, String)> {
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
        let mut newly_held = Vec::new();
        for (name, hold) in &plan.held {
            if self.held_reported.contains(&**name) {
                continue;
            }
            let why = hold_message(plan, *hold, self.config.guard.min_available);
            warn!(node = &**name, hold = ?hold, "{why}");
            for action in action_labels(&self.config.actions) {
                self.metrics.remediation(action, ResultLabel::Blocked);
            }
            self.held_reported.insert(name.clone());
            newly_held.push((name.to_string(), why));
        }
        // Every node held now is reported now; any other one reported is held no more. In
        // steady state there is none, and nothing to look up.
        if self.held_reported.len() > plan.held.len() {
            let held_now: HashSet<&str> = plan.held.iter().map(|(n, _)| &**n).collect();
            self.held_reported.retain(|n| held_now.contains(&**n));
        }
        newly_held
    }
}

impl Controller {
    /// The carrying-out stage: each step goes to the actuator, and its outcome is booked.
    ///
    /// Its time is bounded: no step starts once `--evaluation-interval` has passed since the
    /// stage began (so a tick takes at most that plus the one step in flight, each request of
    /// which is bounded by `--request-timeout`). The steps left over are not carried out late
    /// from an old plan: the next tick judges again and plans them anew — except Events, which
    /// report what happened and wait for the next tick. Each step is judged again right before
    /// it is carried out ([`Controller::rejudge`]), and a node whose writes of a kind keep
    /// failing waits out its back-off for that kind.
    async fn carry_out(&mut self, now: Timestamp, judgement: &Judgement, steps: Vec<Planned>) {
        let started = std::time::Instant::now();
        let budget = self.judge.config.evaluation_interval;
        let mut steps = steps.into_iter();
        while let Some(planned) = steps.next() {
            if !self.still_leading() {
                warn!("leadership lost during the tick; remaining writes skipped");
                for p in std::iter::once(&planned).chain(steps.as_slice()) {
                    self.judge.event_not_sent(p);
                }
                break;
            }
            if lock(&self.view).sight.node_lag.is_some() {
                // The plan came from a view now known to be behind: nothing of it is carried out.
                let left = 1 + steps.len();
                warn!(left, "the Node watch lags behind the apiserver; the rest of this tick's writes are skipped");
                self.judge.metrics.write(write_kind(&planned.step), WriteResult::Superseded);
                self.judge.event_not_sent(&planned);
                for p in steps.by_ref() {
                    self.judge.metrics.write(write_kind(&p.step), WriteResult::Superseded);
                    self.judge.event_not_sent(&p);
                }
                break;
            }
            let kind = write_kind(&planned.step);
            if started.elapsed() >= budget {
                let left: Vec<Planned> = std::iter::once(planned).chain(steps.by_ref()).collect();
                warn!(left = left.len(), budget = ?budget, "the tick's time for writes is used up (--evaluation-interval); the rest are planned again from the next judgement");
                for p in left {
                    self.judge.metrics.write(write_kind(&p.step), WriteResult::Deadline);
                    if matches!(p.step, Step::Report { .. }) {
                        self.judge.deferred_events.push(p);
                    }
                }
                if self.judge.deferred_events.len() > DEFERRED_EVENTS_MAX {
                    let dropped = self.judge.deferred_events.len() - DEFERRED_EVENTS_MAX;
                    for p in self.judge.deferred_events.drain(..dropped).collect::<Vec<_>>() {
                        self.judge.event_not_sent(&p);
                    }
                    warn!(dropped, "too many Events waiting for a tick with time to publish them; the oldest are dropped");
                }
                break;
            }
            if self.judge.ledger.backoff.waiting(&planned.node, kind, now) {
                self.judge.metrics.write(kind, WriteResult::Backoff);
                self.judge.event_not_sent(&planned);
                continue;
            }
            let Some(planned) = self.rejudge(now, judgement, planned) else {
                self.judge.metrics.write(kind, WriteResult::Superseded);
                continue;
            };
            let outcome: Outcome = self.actuator.carry_out(&planned, now, |read| self.confirm(now, &planned.node, read)).await;
            if let Some(node) = &outcome.node {
                lock(&self.view).facts.apply_node(node, &self.judge.config.scope, now);
            }
            // Events are counted by the actuator, with the ones it publishes inside other steps.
            if kind != WriteKind::Event {
                self.judge.metrics.write(kind, write_result(&outcome.effect));
            }
            self.judge.settle(now, &planned, &outcome.effect);
        }
        self.judge.metrics.write_stage(started.elapsed().as_secs_f64());
    }

    /// A step as it should be carried out now, or `None` when it is no longer called for. The
    /// plan was made at the start of the tick, and earlier steps (or the watches) may have
    /// changed the node since: a condition is worked out again from the node as the view holds
    /// it now (after this tick's remediation of it, `False` at once), and a release happens only
    /// while the node is still pulsecheck's and still judged healthy on evidence — never from a
    /// plan whose premise no longer holds. A remediation needs nothing here: the actuator judges
    /// it on a fresh read of the cluster ([`Controller::confirm`]).
    fn rejudge(&self, now: Timestamp, judgement: &Judgement, planned: Planned) -> Option<Planned> {
        let v = lock(&self.view);
        let remediated = self.judge.ledger.memory.holds(&v.facts, &planned.node);
        rejudged(now, &v.facts, remediated, judgement, &self.judge.config.thresholds, planned)
    }

    /// The judge the actuator asks before each remediation patch. The fresh read of the Node and
    /// its Lease is taken as the truth and folded into the view — a Lease the read did not find
    /// is gone: the cached one must not confirm a verdict the cluster no longer supports — and
    /// the node is judged again. Returns the assessment when it still calls for remediation.
    ///
    /// A read showing a status the Node watch never delivered, posted well before (half the Lease
    /// watch's silence allowance), proves the watch lags: pulsecheck is blind from here
    /// ([`observe::Blindness::NodeWatchLags`]) until the watch catches up, and nothing is done.
    /// On a small or quiet fleet a Node watch that stalls without an error is seen no other way
    /// before its staleness reaches a node's status threshold.
    fn confirm(&self, now: Timestamp, name: &str, read: &FreshRead) -> Option<Assessment> {
        judge_fresh_read(now, &mut lock(&self.view), name, read, &self.judge.config)
    }

    /// True while this instance is the leader right now (always, without leader election).
    fn still_leading(&self) -> bool {
        self.leading.as_ref().is_none_or(crate::leader::LeaderCheck::is_leader)
    }
}

/// [`Controller::confirm`] on the view `v`: the fresh read folded in, the node judged again.
fn judge_fresh_read(now: Timestamp, v: &mut View, name: &str, read: &FreshRead, cfg: &Settings) -> Option<Assessment> {
    let node = &read.node;
    let allowance = lease_silence(now, &v.facts, &cfg.thresholds) / 2;
    let lag = v.facts.nodes.get(name).and_then(|cached| observe::node_watch_lag(cached, node, now, allowance));
    if let Some(lag) = lag {
        warn!(
            node = name,
            behind_seconds = now.duration_since(lag.posted_at).as_secs(),
            "the fresh read shows a status the Node watch never delivered: the watch lags; pulsecheck counts itself blind until it catches up, and does nothing"
        );
        v.facts.apply_node(node, &cfg.scope, now);
        v.sight.node_lag.get_or_insert(lag);
        return None;
    }
    v.facts.apply_node(node, &cfg.scope, now);
    match &read.lease {
        Some(l) => v.facts.apply_lease(l, now),
        None => v.facts.delete_lease(name),
    }
    // An agent's report that condemns must still be in the cluster, not only in a
    // watch that may lag behind the agent's "back to ok".
    match &read.agent {
        Some(Some(agent)) => v.facts.apply_agent_lease(agent, now),
        Some(None) => v.facts.delete_agent_node(name),
        None => {}
    }
    let confirmed = verdict::assess_node(now, &v.facts, name, &cfg.thresholds, cfg.probe_partition_threshold)?;
    if !guard::needs_remediation(confirmed.verdict, &cfg.guard) {
        info!(node = name, verdict = confirmed.verdict.as_str(), "fresh read does not confirm the verdict; not acting");
        return None;
    }
    Some(confirmed)
}

/// How long the Lease watch may deliver nothing before pulsecheck calls itself blind: the
/// shortest grace among the Leases alive at `at` (the watch delivers at least that often while
/// they live), or the longest grace of any Lease when none is alive.
pub(crate) fn lease_silence(at: Timestamp, facts: &FleetFacts, th: &verdict::Thresholds) -> Duration {
    facts
        .leases
        .values()
        .filter(|l| th.lease_alive(at, l))
        .map(|l| th.lease_grace_for(l))
        .min()
        .or_else(|| facts.leases.values().map(|l| th.lease_grace_for(l)).max())
        .unwrap_or(th.lease_grace)
}

/// What the per-node series and the status-threshold counts were last told, so that a tick
/// publishes only the nodes it judged (and the few whose remediation pulsecheck's own memory
/// may have changed without their facts changing).
#[derive(Debug, Default)]
struct Published {
    /// Each node's status-threshold source, as counted in `pulsecheck_status_threshold_source`.
    sources: NodeMap<CadenceSource>,
    counts: BTreeMap<CadenceSource, usize>,
    /// The nodes whose series say pulsecheck holds a remediation on them.
    remediated: NodeSet,
}

impl Published {
    /// Publishes the series of the nodes in `names`, of those published as remediated, and of
    /// those remediated in a dry run (pulsecheck's memory, which no watch event reports).
    #[allow(clippy::too_many_arguments)]
    fn publish(
        &mut self,
        metrics: &Metrics,
        th: &verdict::Thresholds,
        memory: &Memory,
        facts: &FleetFacts,
        assessments: &Assessments,
        seen: &[NodeName],
        renewed: &[NodeName],
    ) {
        let mut names: NodeSet = seen.iter().chain(renewed).cloned().collect();
        names.extend(self.remediated.iter().cloned());
        names.extend(memory.simulated_nodes().filter_map(|n| facts.nodes.get_key_value(n)).map(|(k, _)| k.clone()));
        for name in names {
            let Some(n) = facts.nodes.get(&name) else {
                self.remediated.remove(&name);
                if let Some(source) = self.sources.remove(&name) {
                    self.count(source, false);
                }
                continue;
            };
            let lease = facts.leases.get(&name);
            let threshold = th.status_threshold_for(n, lease);
            match self.sources.get_mut(&name) {
                Some(was) if *was == threshold.source => {}
                Some(was) => {
                    let was = std::mem::replace(was, threshold.source);
                    self.count(was, false);
                    self.count(threshold.source, true);
                }
                None => {
                    self.sources.insert(name.clone(), threshold.source);
                    self.count(threshold.source, true);
                }
            }
            let remediated = memory.holds_node(&name, n);
            if remediated {
                self.remediated.insert(name.clone());
            } else {
                self.remediated.remove(&name);
            }
            let Some(a) = assessments.get(&name) else { continue };
            let heartbeats = NodeHeartbeats {
                lease_observed: lease.map(|l| l.renew.observed_at.as_millisecond() as f64 / 1000.0),
                status_observed: n.status.observed_at.as_millisecond() as f64 / 1000.0,
                remediated,
                probe_success: facts.probes.get(&name).and_then(|p| match &p.last {
                    Some((ProbeOutcome::Success, _)) => Some(true),
                    Some((o, _)) if o.is_failure() => Some(false),
                    _ => None,
                }),
                status_threshold: threshold.after.as_secs_f64(),
            };
            metrics.node(&name, a, heartbeats);
        }
        metrics.status_threshold_sources(&self.counts.iter().map(|(s, n)| (*s, *n)).collect::<Vec<_>>());
    }

    fn count(&mut self, source: CadenceSource, up: bool) {
        let n = self.counts.entry(source).or_default();
        *n = if up { *n + 1 } else { n.saturating_sub(1) };
    }
}

/// One log line per verdict change.
fn report_verdicts(now: Timestamp, assessments: &Assessments, changes: &[VerdictChange]) {
    for c in changes {
        let Some(a) = assessments.get(&c.node) else { continue };
        let evidence = serde_json::to_string(&a.told(now)).unwrap_or_default();
        info!(node = &*c.node, verdict = c.verdict.as_str(), previous = c.previous.map(Verdict::as_str), evidence, why = a.explain(now), "verdict");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        actuate::Error as ActuateError,
        facts::{Remediation, Scope, SlimAgentLease, fixtures::*},
        guard::GuardConfig,
        observe::WatchSight,
        verdict::Evidence,
    };

    /// Two judges on one simulated fleet (see [`crate::docket::timeline`]) — one judging what
    /// changed, as `run` does, one looking at the whole fleet at every tick — through an hour and
    /// a half of wedges, deaths, recoveries, deletions, pulsecheck's taint put on and taken off,
    /// blind spells, lost and regained leadership, and writes that succeed, fail or are
    /// superseded — the successful ones written back into the fleet, so the watch delivers
    /// pulsecheck's taints, cordons and records, which people then undo, redo or delete: at
    /// every tick both must give the same verdicts, blindness, probe targets, steps and metrics.
    /// With and without --dry-run, cordoning, and with a guard that holds most zombies back
    /// (one remediation a minute), whose held nodes are planned again without being judged again.
    #[test]
    fn a_tick_judging_what_changed_decides_what_a_tick_judging_the_whole_fleet_decides() {
        use crate::docket::timeline::{Dice, Timeline};
        use crate::metrics::PerNodeMetrics::{All, Unhealthy};
        // Series for every node (a renewal let wait still moves its lease_observed series) and the
        // default (only nodes in trouble named).
        for (dry_run, cordon, strict, per_node_metrics) in [
            (false, false, false, Unhealthy),
            (false, false, false, All),
            (true, false, false, All),
            (false, true, false, Unhealthy),
            (false, false, true, Unhealthy),
        ] {
            let mut cfg = Settings { dry_run, per_node_metrics, ..Settings::default() };
            cfg.actions.cordon = cordon;
            if strict {
                cfg.guard.max_per_minute = 1;
            }
            let mut held_seen = 0usize;
            let th = cfg.thresholds.clone();
            let mut fleet = Timeline::new(60, 0xfeed_beef_0123_4567);
            let views = [SharedView::default(), SharedView::default()];
            let metrics = [Metrics::new(per_node_metrics), Metrics::new(per_node_metrics)];
            let mut judges =
                [Judge::new(cfg.clone(), metrics[0].clone(), Readiness::default()), Judge::new(cfg.clone(), metrics[1].clone(), Readiness::default())];
            judges[1].docket.forgetful = true;
            let mut dice = Dice(0x0ddba11);
            let mut targets: [Vec<ProbeTarget>; 2] = [Vec::new(), Vec::new()];
            let (mut next, mut steps_seen, mut blind_ticks, mut partial) = (5, 0usize, 0, 0);
            let mut kinds_seen = std::collections::BTreeSet::new();
            for now in 0..5400i64 {
                let events = fleet.second(now, |n| lock(&views[0]).facts.nodes.contains_key(n));
                // The Lease watch fails for a while now and then: blind, then a discounted spell.
                let failing = now % 1500 >= 1400 && now % 1500 < 1430;
                for view in &views {
                    let mut v = lock(view);
                    for e in &events {
                        e.apply(&mut v.facts, &cfg.scope, &th, t(now));
                    }
                    let delivering = WatchSight { synced: true, last_event: Some(t(now)), error: None, longest_gap: None };
                    v.sight.nodes = delivering.clone();
                    v.sight.agents = delivering.clone();
                    if failing {
                        v.sight.leases.error = Some(("connection refused".into(), t(now)));
                    } else {
                        v.sight.leases = delivering;
                    }
                    v.sight.ever_synced = true;
                }
                if now < next {
                    continue;
                }
                next = now + [1, 5, 5, 5, 7][dice.roll(5) as usize];
                let leader = now % 1200 < 1000;
                let [a, b] = &mut judges;
                let one = a.decide(t(now), leader, &views[0], Vec::new());
                let whole = b.decide(t(now), leader, &views[1], Vec::new());
                assert_eq!(one.blindness(), whole.blindness(), "at {now}");
                assert_eq!(one.assessments(), whole.assessments(), "at {now}");
                assert_eq!(one.steps(), whole.steps(), "at {now}");
                for (i, d) in [&one, &whole].into_iter().enumerate() {
                    if let Some(sent) = d.probe_targets() {
                        targets[i] = sent.to_vec();
                        targets[i].sort_unstable_by(|x, y| x.node.cmp(&y.node));
                    }
                }
                assert_eq!(targets[0], targets[1], "at {now}");
                let render = |m: &Metrics| m.render().lines().filter(|l| !l.contains("_duration_seconds")).map(str::to_string).collect::<Vec<_>>();
                assert_eq!(render(&metrics[0]), render(&metrics[1]), "at {now}");
                blind_ticks += usize::from(one.blindness().is_some());
                partial += usize::from(one.judged().len() < lock(&views[0]).facts.nodes.len());
                // Carry the steps out on paper: the same effect for both judges.
                for planned in one.steps().unwrap_or_default() {
                    steps_seen += 1;
                    held_seen += usize::from(matches!(planned.step, Step::Report { reason: "RemediationBlocked", .. }));
                    // Effect is not Clone (its error holds a kube::Error): made twice from one draw.
                    let draw = dice.roll(3);
                    let effect = || match (&planned.step, draw) {
                        (Step::Remediate { .. }, _) if dry_run => Effect::WouldRemediate,
                        (Step::Remediate { .. }, 0) => Effect::Remediated(Change { taint: true, cordon }),
                        (Step::Remediate { .. }, 1) => Effect::Unconfirmed,
                        (Step::Release { .. }, _) if dry_run => Effect::WouldRelease,
                        (Step::Release { .. }, 0) => Effect::Released(Change { taint: true, cordon }),
                        (Step::Release { .. }, 1) => Effect::Gone,
                        (Step::SetCondition { .. }, 0 | 1) => Effect::ConditionSet,
                        (Step::Report { .. }, _) => Effect::Reported,
                        (Step::DisownCordon, _) => Effect::CordonDisowned,
                        (Step::RestoreRecord { .. }, _) => Effect::RecordRestored,
                        _ => Effect::Failed(ActuateError::Timeout { what: "write", node: planned.node.clone(), timeout: Duration::from_secs(10) }),
                    };
                    a.settle(t(now), planned, &effect());
                    b.settle(t(now), planned, &effect());
                    // What was written comes back through the Node watch.
                    let node = planned.node.as_str();
                    let written = match effect() {
                        Effect::Remediated(change) => {
                            let since = Some(t(now));
                            fleet.written(node, Some(true), change.cordon.then_some(true), |_| {
                                Some(Remediation { tainted: true, cordoned: change.cordon, since })
                            });
                            "remediated"
                        }
                        Effect::Released(_) => {
                            let undo_cordon = matches!(planned.step, Step::Release { undo_cordon: true, .. });
                            let ours = undo_cordon && fleet.record(node).is_some_and(|r| r.cordoned);
                            fleet.written(node, Some(false), ours.then_some(false), |_| None);
                            "released"
                        }
                        Effect::CordonDisowned => {
                            fleet.written(node, None, None, |r| r.map(|r| Remediation { cordoned: false, ..r }));
                            "disowned"
                        }
                        Effect::RecordRestored => {
                            let since = Some(t(now));
                            fleet.written(node, None, None, |_| Some(Remediation { tainted: false, cordoned: true, since }));
                            "restored"
                        }
                        _ => "nothing",
                    };
                    kinds_seen.insert(written);
                }
            }
            assert!(steps_seen > 50 && blind_ticks > 0 && partial > 100, "dry run {dry_run}: {steps_seen} steps, {blind_ticks} blind ticks, {partial} partial");
            let expected: &[&str] = match (dry_run, cordon) {
                (true, _) => &["nothing"],
                (false, false) => &["nothing", "released", "remediated"],
                (false, true) => &["disowned", "nothing", "released", "remediated"],
            };
            assert!(expected.iter().all(|k| kinds_seen.contains(k)), "dry run {dry_run}, cordon {cordon}: writes seen {kinds_seen:?}");
            assert!(!strict || held_seen > 5, "a strict guard held {held_seen} remediations back");
        }
    }

    /// Somebody uncordons a node pulsecheck cordoned, and cordons it again, between two ticks of
    /// a pulsecheck that cannot write then (a follower), or whose write of that fact fails: the
    /// cordon is theirs from the uncordon on. pulsecheck must still disown it when it can —
    /// until its record stops claiming the cordon — or a later release would undo their cordon.
    #[test]
    fn a_cordon_taken_over_is_disowned_even_when_the_tick_that_saw_it_could_not_write() {
        let cfg = Settings::default();
        let view = SharedView::default();
        let ours = Remediation { tainted: false, cordoned: true, since: Some(t(0)) };
        let disowned = Remediation { cordoned: false, ..ours.clone() };
        let see = |at: i64, name: &str, cordoned: bool, record: &Remediation| {
            let mut v = lock(&view);
            v.facts.apply_node(&node(name).ready_at(t(at)).unschedulable(cordoned).record(record).build(), &cfg.scope, t(at));
            v.facts.apply_lease(&lease(name, t(at)), t(at));
            let delivering = WatchSight { synced: true, last_event: Some(t(at)), error: None, longest_gap: None };
            v.sight.nodes = delivering.clone();
            v.sight.leases = delivering.clone();
            v.sight.agents = delivering;
            v.sight.ever_synced = true;
        };
        let disowns =
            |d: &Decisions| d.steps().unwrap_or_default().iter().filter(|p| p.node == "a" && p.step == Step::DisownCordon).cloned().collect::<Vec<_>>();
        for (a_follower_saw_it, name) in [(true, "follower"), (false, "failed write")] {
            let mut judge = Judge::new(cfg.clone(), Metrics::new(crate::metrics::PerNodeMetrics::None), Readiness::default());
            for at in [0, 1] {
                see(at, "a", true, &ours);
                see(at, "b", false, &Remediation::default());
                see(at, "c", false, &Remediation::default());
            }
            let first = judge.decide(t(2), true, &view, Vec::new());
            assert!(disowns(&first).is_empty(), "{name}: our cordon is ours");
            // Uncordoned and cordoned again by somebody else, both seen before the next tick.
            see(3, "a", false, &ours);
            see(4, "a", true, &ours);
            if a_follower_saw_it {
                let follower = judge.decide(t(5), false, &view, Vec::new());
                assert!(follower.steps().unwrap_or_default().is_empty(), "{name}: a follower writes nothing");
            } else {
                let leader = judge.decide(t(5), true, &view, Vec::new());
                let planned = disowns(&leader);
                assert_eq!(planned.len(), 1, "{name}: {:?}", leader.steps());
                let failed = Effect::Failed(ActuateError::Timeout { what: "write", node: "a".into(), timeout: Duration::from_secs(10) });
                judge.settle(t(5), &planned[0], &failed);
            }
            for at in [10, 20, 30] {
                see(at, "b", false, &Remediation::default());
                let later = judge.decide(t(at + 1), true, &view, Vec::new());
                assert_eq!(disowns(&later).len(), 1, "{name}: at {at}, the cordon is not ours any more: {:?}", later.steps());
            }
            // Once the record no longer claims the cordon there is nothing left to disown, and
            // the cordon is never pulsecheck's to undo.
            see(40, "a", true, &disowned);
            let after = judge.decide(t(41), true, &view, Vec::new());
            assert!(disowns(&after).is_empty(), "{name}: {:?}", after.steps());
            // Released later (the record goes), their cordon stays: no record of a cordon of
            // pulsecheck's is written back, so no later release undoes it.
            lock(&view).facts.apply_node(&node("a").ready_at(t(50)).unschedulable(true).build(), &cfg.scope, t(50));
            assert!(judge.ledger.memory.lost_records(&lock(&view).facts).is_empty(), "{name}: the cordon is somebody else's");
            let released = judge.decide(t(51), true, &view, Vec::new());
            assert!(!released.steps().unwrap_or_default().iter().any(|p| matches!(p.step, Step::RestoreRecord { .. })), "{name}: {:?}", released.steps());
            lock(&view).facts = FleetFacts::default();
        }
    }

    /// [`verdict_changes_of`] every node, reported or assessed.
    #[test]
    fn a_held_node_and_only_a_held_node_has_the_reason_it_is_held() {
        let held = vec![("b".into(), Hold::CircuitOpen), ("d".into(), Hold::RateLimited), ("x".into(), Hold::LastCapacity)];
        let plan = Plan { held, wanting: 3, unavailable: 1, limit: 2, eligible: 20, ..Plan::default() };
        let verdicts: Vec<(&str, Verdict)> = ["a", "b", "c", "d", "x", "z"].iter().map(|n| (*n, Verdict::Zombie)).collect();
        let j = judgement(&verdicts, &[], plan);
        assert_eq!(j.hold("b").as_deref(), Some(hold_message(&j.plan, Hold::CircuitOpen, 1).as_str()));
        assert!(j.hold("b").is_some_and(|m| m.contains("(4 nodes would be unavailable, the limit is 2 of 20 eligible")), "{:?}", j.hold("b"));
        assert_eq!(j.hold("d").as_deref(), Some(hold_message(&j.plan, Hold::RateLimited, 1).as_str()));
        assert_eq!(j.hold("x").as_deref(), Some(hold_message(&j.plan, Hold::LastCapacity, 1).as_str()));
        for free in ["a", "c", "z", "nope"] {
            assert_eq!(j.hold(free), None, "{free} is not held");
        }
    }

    /// A hold is reported once per episode by the leader, and an episode ends when the node no
    /// longer needs a remediation. A follower, or a blind tick, plans no holds, but sees that
    /// end: a node held anew after one (while another instance led, or while this one could not
    /// see) gets its Event when this instance leads again; a node held throughout a leadership
    /// blip does not get a second one.
    #[test]
    fn a_node_held_again_after_a_spell_as_follower_is_reported_again() {
        for (name, blindness) in [("follower", None), ("blind follower", Some(observe::Blindness::LeasesSilent(60)))] {
            let mut judge = Judge::new(Settings::default(), Metrics::new(crate::metrics::PerNodeMetrics::None), Readiness::default());
            let held = || Plan { held: vec![("x".into(), Hold::RateLimited)], wanting: 1, limit: 5, eligible: 20, ..Plan::default() };
            let zombie = [("a", Verdict::Healthy), ("x", Verdict::Zombie)];
            let recovered = [("a", Verdict::Healthy), ("x", Verdict::Healthy)];
            let blocked = |steps: Option<Vec<Planned>>| {
                steps
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|p| matches!(p.step, Step::Report { reason: "RemediationBlocked", .. }))
                    .map(|p| p.node)
                    .collect::<Vec<_>>()
            };
            let away = |verdicts: &[(&str, Verdict)]| Judgement { blindness: blindness.clone(), ..judgement(verdicts, &[], Plan::default()) };
            assert_eq!(blocked(judge.plan(true, &judgement(&zombie, &[], held()))), vec!["x".to_string()], "{name}");
            assert!(blocked(judge.plan(true, &judgement(&zombie, &[], held()))).is_empty(), "{name}: one Event per episode");
            // A blip: a tick away with the node still a zombie, then leading again.
            assert_eq!(judge.plan(false, &away(&zombie)), None);
            assert!(blocked(judge.plan(true, &judgement(&zombie, &[], held()))).is_empty(), "{name}: a blip is no new episode");
            // Away while the node recovered, and held again: a new episode.
            assert_eq!(judge.plan(false, &away(&recovered)), None);
            assert_eq!(blocked(judge.plan(true, &judgement(&zombie, &[], held()))), vec!["x".to_string()], "{name}: a new episode");
        }
    }

    /// A node counts as told it is held once its Event is planned; an Event that then fails, or
    /// is let go unsent (here: deferred for lack of time, then dropped by a tick as follower),
    /// leaves it untold, and the next tick that holds it as leader tells it.
    #[test]
    fn a_hold_whose_event_was_not_sent_is_reported_again() {
        let mut judge = Judge::new(Settings::default(), Metrics::new(crate::metrics::PerNodeMetrics::None), Readiness::default());
        let held = || Plan { held: vec![("x".into(), Hold::RateLimited)], wanting: 1, limit: 5, eligible: 20, ..Plan::default() };
        let zombie = [("a", Verdict::Healthy), ("x", Verdict::Zombie)];
        let blocked = |steps: Option<Vec<Planned>>| {
            steps.unwrap_or_default().into_iter().filter(|p| matches!(p.step, Step::Report { reason: "RemediationBlocked", .. })).collect::<Vec<_>>()
        };
        let first = blocked(judge.plan(true, &judgement(&zombie, &[], held())));
        assert_eq!(first.len(), 1);
        let failed = Effect::Failed(ActuateError::Timeout { what: "write", node: "x".into(), timeout: Duration::from_secs(10) });
        judge.settle(t(1), &first[0], &failed);
        let again = blocked(judge.plan(true, &judgement(&zombie, &[], held())));
        assert_eq!(again.len(), 1, "the failed Event is planned again");
        judge.settle(t(2), &again[0], &Effect::Reported);
        assert!(blocked(judge.plan(true, &judgement(&zombie, &[], held()))).is_empty(), "told once it went out");
        // Deferred (the tick's time ran out), then let go by a tick as follower.
        judge.held_reported.clear();
        let deferred = blocked(judge.plan(true, &judgement(&zombie, &[], held())));
        judge.deferred_events.extend(deferred);
        assert_eq!(judge.plan(false, &judgement(&zombie, &[], Plan::default())), None);
        assert_eq!(blocked(judge.plan(true, &judgement(&zombie, &[], held()))).len(), 1, "the Event let go is planned again");
    }

    fn verdict_changes(reported: &mut NodeMap<Verdict>, assessments: &Assessments) -> Vec<VerdictChange> {
        let mut names: Vec<NodeName> = assessments.keys().chain(reported.keys()).cloned().collect();
        names.sort_unstable();
        names.dedup();
        verdict_changes_of(reported, assessments, &names)
    }

    fn sorted(names: &[&str]) -> Vec<NodeName> {
        let mut names: Vec<NodeName> = names.iter().map(|n| NodeName::from(*n)).collect();
        names.sort_unstable();
        names
    }

    fn assessments(verdicts: &[(&str, Verdict)]) -> Assessments {
        verdicts.iter().map(|(n, v)| (NodeName::from(*n), Assessment::new(*v, vec![]))).collect()
    }

    /// A fleet of nodes seen by the watch at t(0), then refreshed at t(1).
    fn fleet(names: &[&str]) -> FleetFacts {
        let scope = Scope { taint_key: names::TAINT_KEY.into(), ..Default::default() };
        let mut facts = FleetFacts::default();
        for n in names {
            facts.apply_node(&node(n).ready_at(t(0)).build(), &scope, t(0));
            facts.apply_node(&node(n).ready_at(t(1)).build(), &scope, t(1));
        }
        facts
    }

    /// A judgement of `verdicts` on a fleet of those nodes, with pulsecheck's condition already
    /// on the nodes named in `conditions`.
    fn judgement(verdicts: &[(&str, Verdict)], conditions: &[(&str, &str, &str)], plan: Plan) -> Judgement {
        let names: Vec<&str> = verdicts.iter().map(|(n, _)| *n).collect();
        let mut notes = notes(&fleet(&names), &Memory::default(), names.iter().copied());
        for (n, status, reason) in conditions {
            notes.get_mut(*n).expect("a node of the fleet").our_condition = Some((status.to_string(), reason.to_string()));
        }
        Judgement {
            assessments: std::sync::Arc::new(assessments(verdicts)),
            plan,
            blindness: None,
            notes,
            probe_targets: None,
            cordons_taken_over: Vec::new(),
            min_available: 1,
            act_on_dead: false,
            newly_misconfigured: Vec::new(),
            records_lost: Vec::new(),
            probes_trusted: true,
            agent_silence_counts: true,
            judged_at: t(1),
            judged: sorted(&names),
            seen: sorted(&names),
            planning: sorted(&names),
            verdict_counts: Vec::new(),
        }
    }

    fn planned(node: &str, step: Step) -> Planned {
        Planned { node: node.into(), uid: Some(format!("uid-{node}")), step }
    }

    /// The steps of a tick on `j` when `previous` were the verdicts reported before.
    fn steps(j: &Judgement, previous: &[(&str, Verdict)], dry_run: bool) -> Vec<Planned> {
        let mut reported: NodeMap<Verdict> = previous.iter().map(|(n, v)| (NodeName::from(*n), *v)).collect();
        let changes = verdict_changes(&mut reported, &j.assessments);
        plan_steps(j, &changes, &[], dry_run)
    }

    #[test]
    fn a_remediation_on_an_agent_s_report_rests_on_a_fresh_read_of_that_report() {
        use crate::agent::{DiskHealth, Report};
        // The agent watch delivered "read of /etc/os-release hung for 40 s" but not the "ok" the
        // agent wrote since (a lagging watch cache): the confirming read of its Lease decides.
        let cfg = Settings { agent_namespace: Some("pulsecheck".into()), ..Settings::default() };
        let hung = Report { disk: DiskHealth::Hung { path: "/etc/os-release".into(), operation: "read".into(), for_seconds: 40 }, terminating: false };
        let ok = Report { disk: DiskHealth::Ok, terminating: false };
        let mut facts = FleetFacts::default();
        for s in (0..=60).step_by(10) {
            facts.apply_node(&node("n").ready_at(t(0)).build(), &cfg.scope, t(s));
            facts.apply_lease(&lease("n", t(s)), t(s));
            facts.apply_agent_lease(&agent_lease("n", t(s), if s < 30 { &ok } else { &hung }), t(s));
        }
        let view = || View { facts: facts.clone(), sight: Default::default() };
        let read = |agent: Option<Option<SlimAgentLease>>| FreshRead { node: node("n").ready_at(t(0)).build(), lease: Some(lease("n", t(61))), agent };
        let now = t(62);
        let cached = verdict::assess_node(now, &facts, "n", &cfg.thresholds, cfg.probe_partition_threshold).unwrap();
        assert_eq!(cached.verdict, Verdict::Zombie, "{cached:?}");

        let still_hung = judge_fresh_read(now, &mut view(), "n", &read(Some(Some(agent_lease("n", t(61), &hung)))), &cfg);
        assert_eq!(still_hung.map(|a| a.verdict), Some(Verdict::Zombie));
        let recovered = judge_fresh_read(now, &mut view(), "n", &read(Some(Some(agent_lease("n", t(61), &ok)))), &cfg);
        assert_eq!(recovered, None, "the cluster says ok: nothing to act on");
        let gone = judge_fresh_read(now, &mut view(), "n", &read(Some(None)), &cfg);
        assert_eq!(gone, None, "no agent Lease: no agent evidence");
    }

    /// A release planned while the cordon was pulsecheck's, carried out after somebody
    /// uncordoned and cordoned the node again (the steps before it took their time): the cordon
    /// stays, the rest is released.
    #[test]
    fn a_release_whose_cordon_was_taken_over_after_the_plan_leaves_the_cordon() {
        let th = verdict::Thresholds::default();
        let scope = Scope { taint_key: names::TAINT_KEY.into(), ..Default::default() };
        let ours = Remediation { tainted: true, cordoned: true, since: Some(t(0)) };
        let mut facts = FleetFacts::default();
        for at in [0, 60, 120] {
            facts.apply_node(&node("n").ready_at(t(at)).unschedulable(true).record(&ours).build(), &scope, t(at));
            facts.apply_lease(&lease("n", t(at)), t(at));
        }
        let mut j = judgement(&[("n", Verdict::Healthy)], &[], Plan::default());
        j.assessments = verdict::evaluate(t(121), &facts, &th, 50.0).assessments.into();
        j.judged_at = t(121);
        let release = Planned { node: "n".into(), uid: None, step: Step::Release { why: "healthy".into(), undo_cordon: true, dry_run: false } };
        let undoes = |p: Option<Planned>| match p {
            Some(Planned { step: Step::Release { undo_cordon, .. }, .. }) => undo_cordon,
            other => panic!("not a release: {other:?}"),
        };
        assert!(undoes(rejudged(t(121), &facts, true, &j, &th, release.clone())), "the cordon is ours");
        facts.apply_node(&node("n").ready_at(t(120)).unschedulable(false).record(&ours).build(), &scope, t(121));
        facts.apply_node(&node("n").ready_at(t(120)).unschedulable(true).record(&ours).build(), &scope, t(121));
        assert!(!undoes(rejudged(t(121), &facts, true, &j, &th, release)), "the cordon is somebody else's now");
    }

    #[test]
    fn a_zombie_the_fresh_read_refutes_gets_neither_condition_nor_event_in_that_tick() {
        let th = verdict::Thresholds::default();
        let scope = Scope { taint_key: names::TAINT_KEY.into(), ..Default::default() };
        let mut facts = FleetFacts::default();
        for at in [0, 60, 120] {
            facts.apply_node(&node("n").ready_at(t(at)).build(), &scope, t(at));
        }
        for at in (0..=800).step_by(10) {
            facts.apply_lease(&lease("n", t(at)), t(at));
        }
        // Judged on the cached view at 800: status 680 s old, past the 10m flag — a Zombie.
        let evaluation = verdict::evaluate(t(800), &facts, &th, 50.0);
        assert_eq!(evaluation.assessments["n"].verdict, Verdict::Zombie);
        let mut j = judgement(&[("n", Verdict::Zombie)], &[], Plan::default());
        j.assessments = evaluation.assessments.into();
        j.judged_at = t(800);
        let planned_steps = steps(&j, &[("n", Verdict::Healthy)], false);
        let condition = planned_steps.iter().find(|p| matches!(p.step, Step::SetCondition { .. })).expect("a condition planned").clone();
        let event = planned_steps.iter().find(|p| matches!(p.step, Step::Report { action: "Evaluate", .. })).expect("an Event planned").clone();
        // Unrefuted, both are written as planned.
        assert!(matches!(
            rejudged(t(800), &facts, false, &j, &th, condition.clone()),
            Some(Planned { step: Step::SetCondition { reason: "ZombieNotRemediated", .. }, .. })
        ));
        assert!(rejudged(t(800), &facts, false, &j, &th, event.clone()).is_some());
        // The fresh read before the remediation shows a status posted 5 s ago, which the watch
        // had not delivered: the verdict no longer holds, and neither step is written.
        facts.apply_node(&node("n").ready_at(t(795)).build(), &scope, t(800));
        assert_eq!(rejudged(t(800), &facts, false, &j, &th, condition), None);
        assert_eq!(rejudged(t(800), &facts, false, &j, &th, event), None);
    }

    #[test]
    fn every_verdict_has_its_condition_and_event_reason() {
        // (verdict, condition while not remediated, condition once remediated, Event reason)
        let table = [
            (Verdict::Healthy, ("True", "HeartbeatsConsistent"), ("True", "Recovering"), ("HeartbeatsConsistent", false)),
            (Verdict::Suspect, ("True", "Suspect"), ("Unknown", "RecoveryUnconfirmed"), ("NodeSuspect", true)),
            (Verdict::Zombie, ("Unknown", "ZombieNotRemediated"), ("False", "ZombieDetected"), ("ZombieDetected", true)),
            (Verdict::Dead, ("Unknown", "LeaseAndStatusStale"), ("False", "LeaseAndStatusStale"), ("NodeDead", true)),
            (Verdict::Unknown, ("True", "NotJudged"), ("Unknown", "RecoveryUnconfirmed"), ("NotJudged", false)),
            (Verdict::Excluded, ("True", "Excluded"), ("True", "Excluded"), ("Excluded", false)),
        ];
        for verdict in Verdict::ALL {
            let (_, before, after, reason) = table.iter().find(|(v, ..)| *v == verdict).unwrap_or_else(|| panic!("{verdict} missing from the table"));
            assert_eq!(desired_condition(verdict, false, true), *before, "{verdict}");
            assert_eq!(desired_condition(verdict, true, true), *after, "{verdict}");
            assert_eq!(desired_condition(verdict, false, false), *before, "{verdict} unconfirmed, not remediated");
            assert_eq!(verdict_reason(verdict), *reason, "{verdict}");
            // False only where pulsecheck itself acted.
            assert!(desired_condition(verdict, false, true).0 != "False", "{verdict} says False before pulsecheck acted");
            // Health that cannot be confirmed never says True over pulsecheck's own taint.
            if verdict == Verdict::Healthy {
                assert_eq!(desired_condition(verdict, true, false), ("Unknown", "RecoveryUnconfirmed"));
            }
        }
    }

    #[test]
    fn write_backoff_doubles_from_5s_to_5min_resets_on_success_and_forgets_deleted_nodes() {
        const R: WriteKind = WriteKind::Remediation;
        let mut backoff = WriteBackoff::default();
        assert!(!backoff.waiting("n", R, t(0)));
        let mut at = 0;
        for wait in [5, 10, 20, 40, 80, 160, 300, 300, 300] {
            backoff.failed("n", R, t(at));
            assert!(backoff.waiting("n", R, t(at + wait - 1)), "failure at {at}: still waiting at {}", at + wait - 1);
            assert!(!backoff.waiting("n", R, t(at + wait)), "failure at {at}: the wait is {wait}s");
            at += wait;
        }
        assert!(!backoff.waiting("other", R, t(at)), "a node's back-off is its own");
        for other in WriteKind::ALL.into_iter().filter(|k| *k != R) {
            assert!(!backoff.waiting("n", other, t(at)), "a failing kind of write holds back no other ({other:?})");
        }
        backoff.succeeded("n", R);
        backoff.failed("n", R, t(at));
        assert!(!backoff.waiting("n", R, t(at + 5)), "a success starts the doubling from 5 s again");
        backoff.failed("gone", R, t(at));
        backoff.retain(|n| n != "gone");
        assert!(!backoff.waiting("gone", R, t(at)), "a deleted node is forgotten");
        assert!(backoff.waiting("n", R, t(at + 4)), "the others stay");
    }

    #[test]
    fn the_first_sight_of_a_node_with_nothing_to_report_is_no_change() {
        let mut reported = NodeMap::default();
        let first = assessments(&[("h", Verdict::Healthy), ("x", Verdict::Excluded), ("u", Verdict::Unknown), ("s", Verdict::Suspect), ("z", Verdict::Zombie)]);
        let changes = verdict_changes(&mut reported, &first);
        assert_eq!(
            changes.iter().map(|c| (&*c.node, c.previous, c.verdict)).collect::<Vec<_>>(),
            [("s", None, Verdict::Suspect), ("z", None, Verdict::Zombie)]
        );
        assert!(verdict_changes(&mut reported, &first).is_empty(), "the same verdicts again are no change");
        // No Event and no condition for a healthy node seen for the first time.
        assert!(steps(&judgement(&[("h", Verdict::Healthy)], &[], Plan::default()), &[], false).is_empty());
        // A real change is, with the verdict it replaces.
        let later = assessments(&[("h", Verdict::Suspect), ("x", Verdict::Excluded), ("u", Verdict::Unknown), ("s", Verdict::Suspect), ("z", Verdict::Zombie)]);
        let changes = verdict_changes(&mut reported, &later);
        assert_eq!(changes, vec![VerdictChange { node: "h".into(), previous: Some(Verdict::Healthy), verdict: Verdict::Suspect }]);
        // A node only waiting for its first Lease renewal is neither reported nor remembered.
        let mut waiting = assessments(&[("w", Verdict::Unknown)]);
        waiting.get_mut("w").unwrap().evidence = vec![Evidence::NotObservedYet { since: t(0) }];
        let mut reported = NodeMap::default();
        assert!(verdict_changes(&mut reported, &waiting).is_empty());
        assert!(reported.is_empty());
        // A deleted node is forgotten: when a node of that name appears, its verdict is news again.
        let mut reported: NodeMap<Verdict> = [(NodeName::from("z"), Verdict::Zombie)].into_iter().collect();
        verdict_changes(&mut reported, &Assessments::default());
        assert_eq!(verdict_changes(&mut reported, &assessments(&[("z", Verdict::Zombie)])).len(), 1);
    }

    #[test]
    fn a_suspect_node_is_reported_and_its_condition_stays_true() {
        let j = judgement(&[("s", Verdict::Suspect)], &[], Plan::default());
        let steps = steps(&j, &[], false);
        assert_eq!(steps.len(), 2, "{steps:?}");
        assert_eq!(steps[0], planned("s", Step::SetCondition { status: "True", reason: "Suspect", message: "suspect".into(), previous_status: None }));
        assert!(matches!(&steps[1].step, Step::Report { warning: true, reason: "NodeSuspect", action: "Evaluate", note } if note.starts_with("suspect: ")));
    }

    #[test]
    fn a_condition_is_written_only_when_it_differs_and_excluded_only_replaces_one() {
        // (verdict, pulsecheck remediated it, pulsecheck's condition on the node, the condition the step writes)
        type Condition = Option<(&'static str, &'static str)>;
        let cases: [(Verdict, bool, Condition, Condition); 12] = [
            (Verdict::Excluded, false, None, None),
            (Verdict::Excluded, false, Some(("False", "ZombieDetected")), Some(("True", "Excluded"))),
            (Verdict::Healthy, false, None, None),
            (Verdict::Healthy, false, Some(("True", "HeartbeatsConsistent")), None),
            // Still pulsecheck's: never the plain healthy condition until released.
            (Verdict::Healthy, true, Some(("False", "ZombieDetected")), Some(("True", "Recovering"))),
            (Verdict::Suspect, true, Some(("False", "ZombieDetected")), Some(("Unknown", "RecoveryUnconfirmed"))),
            (Verdict::Healthy, false, Some(("True", "Recovering")), Some(("True", "HeartbeatsConsistent"))),
            (Verdict::Unknown, false, None, None),
            (Verdict::Zombie, false, None, Some(("Unknown", "ZombieNotRemediated"))),
            (Verdict::Zombie, true, Some(("Unknown", "ZombieNotRemediated")), Some(("False", "ZombieDetected"))),
            (Verdict::Zombie, true, Some(("False", "ZombieDetected")), None),
            (Verdict::Dead, false, None, Some(("Unknown", "LeaseAndStatusStale"))),
        ];
        for (verdict, remediated, current, wanted) in cases {
            let a = Assessment::new(verdict, vec![]);
            let current = current.map(|(s, r)| (s.to_string(), r.to_string()));
            let note = NodeNote { uid: None, our_condition: current.clone(), why: None, remediated };
            let step = condition_step(&a, Some(&note), None, false, t(0));
            let status_written = match &step {
                Some(Step::SetCondition { status, reason, .. }) => Some((*status, *reason)),
                _ => None,
            };
            assert_eq!(status_written, wanted, "{verdict} (remediated: {remediated}) over {current:?}");
            if let Some(Step::SetCondition { previous_status, .. }) = &step {
                assert_eq!(previous_status, &current.as_ref().map(|(s, _)| s.clone()));
            }
        }
    }

    #[test]
    fn the_node_watch_is_silent_only_when_half_the_live_nodes_are_overdue() {
        use crate::cadence::KubeletCadence;
        let th = verdict::Thresholds::default();
        let scope = Scope { taint_key: names::TAINT_KEY.into(), ..Default::default() };
        let fleet = |fast: usize, slow: usize| {
            let mut f = FleetFacts::default();
            for i in 0..fast + slow {
                let name = format!("n{i}");
                f.apply_node(&node(&name).ready_at(t(0)).build(), &scope, t(0));
                f.apply_lease(&lease(&name, t(990)), t(990));
                let report = if i < fast { 4 } else { 1200 };
                f.record_kubelet_cadence(&name, KubeletCadence { report: Duration::from_secs(report), update: Duration::from_secs(4) }, t(0));
            }
            f
        };
        let status_silence = |at: Timestamp, mut facts: FleetFacts, th: &verdict::Thresholds| {
            let mut docket = Docket::new();
            docket.observe(at, &mut facts, th);
            docket.status_silence()
        };
        // One fast reporter among slow ones: its going quiet is its own wedge, not a silent watch.
        assert_eq!(status_silence(t(1000), fleet(1, 2), &th), Duration::from_secs(2408));
        // A fleet of fast reporters: a watch quiet for their threshold is a silent watch.
        assert_eq!(status_silence(t(1000), fleet(4, 0), &th), Duration::from_secs(60));
        // Half the fleet must be overdue: 3 fast, 3 slow → the third threshold, a fast one.
        assert_eq!(status_silence(t(1000), fleet(3, 3), &th), Duration::from_secs(60));
        assert_eq!(status_silence(t(1000), fleet(2, 3), &th), Duration::from_secs(2408));
        // One node, or none: the Node watch's silence alone says nothing.
        assert_eq!(status_silence(t(1000), fleet(1, 0), &th), Duration::MAX);
        assert_eq!(status_silence(t(5000), fleet(4, 0), &th), Duration::MAX, "no live Lease");
    }

    #[test]
    fn the_lease_watch_silence_follows_the_live_leases_not_a_dead_node_s_short_one() {
        use crate::facts::fixtures::lease_lasting;
        let th = verdict::Thresholds::default();
        let mut f = FleetFacts::default();
        // A dead node with a default 40 s Lease, last renewed long ago; a live one renewing a 200 s Lease.
        f.apply_lease(&lease_lasting("dead", t(0), 40), t(0));
        f.apply_lease(&lease_lasting("live", t(990), 200), t(990));
        assert_eq!(lease_silence(t(1000), &f, &th), Duration::from_secs(250));
        f.apply_lease(&lease_lasting("default", t(995), 40), t(995));
        assert_eq!(lease_silence(t(1000), &f, &th), Duration::from_secs(50));
        // None alive: the longest grace.
        assert_eq!(lease_silence(t(5000), &f, &th), Duration::from_secs(250));
        assert_eq!(lease_silence(t(5000), &FleetFacts::default(), &th), th.lease_grace);
    }

    #[test]
    fn a_provisional_verdict_never_changes_a_condition_that_is_there() {
        for verdict in [Verdict::Healthy, Verdict::Suspect] {
            let mut a = Assessment::new(verdict, vec![]);
            a.provisional = true;
            let over_false = NodeNote { uid: None, our_condition: Some(("False".into(), "ZombieDetected".into())), why: None, remediated: true };
            assert_eq!(condition_step(&a, Some(&over_false), None, false, t(0)), None, "{verdict} over an earlier run's False");
            // Where there is nothing to contradict, the verdict is written as usual…
            let nothing = NodeNote::default();
            assert_eq!(condition_step(&a, Some(&nothing), None, false, t(0)).is_some(), verdict == Verdict::Suspect, "{verdict} over nothing");
            // …and a False no remediation backs (taint and record gone) never stays.
            let unbacked = NodeNote { remediated: false, ..over_false.clone() };
            assert!(condition_step(&a, Some(&unbacked), None, false, t(0)).is_some(), "{verdict} over a False nothing backs");
        }
    }

    #[test]
    fn a_zombie_the_guard_holds_says_why_in_an_unknown_condition() {
        let a = Assessment::new(Verdict::Zombie, vec![]);
        let note = NodeNote::default();
        let Some(Step::SetCondition { status, reason, message, .. }) =
            condition_step(&a, Some(&note), Some("not remediated: the circuit is open"), false, t(0))
        else {
            panic!("no condition step")
        };
        assert_eq!((status, reason), ("Unknown", "ZombieNotRemediated"));
        assert!(message.starts_with("not remediated: the circuit is open"), "{message}");
    }

    /// The reason of an unremediated zombie's condition stays `ZombieNotRemediated` whatever
    /// keeps it from being remediated; its message says what, and is rewritten when the node
    /// goes from held by the guard to waiting for its confirming read or back — not when only
    /// the hold or the counts in it change (in a mass failure, a circuit flapping around its
    /// limit would rewrite every held node's condition at every flip). A dead node's condition
    /// says it is kube-controller-manager's only without --act-on-dead.
    #[test]
    fn an_unremediated_node_s_condition_is_rewritten_when_why_changes_and_not_between_holds() {
        let scope = Scope { taint_key: names::TAINT_KEY.into(), ..Default::default() };
        let a = Assessment::new(Verdict::Zombie, vec![]);
        let plan = |unavailable: usize, hold: Hold| Plan { held: vec![("z".into(), hold)], unavailable, limit: 2, eligible: 20, ..Plan::default() };
        let circuit = hold_message(&plan(3, Hold::CircuitOpen), Hold::CircuitOpen, 1);
        let circuit_later = hold_message(&plan(7, Hold::CircuitOpen), Hold::CircuitOpen, 1);
        let rate = hold_message(&plan(0, Hold::RateLimited), Hold::RateLimited, 1);
        let capacity = hold_message(&plan(0, Hold::LastCapacity), Hold::LastCapacity, 1);
        assert_ne!(circuit, circuit_later);
        // What the condition on the node says now, as an earlier tick wrote it, and what holds
        // the node back at this tick (None: nothing, it waits for the confirming read).
        let written = |hold: Option<&str>| match condition_step(&a, Some(&NodeNote::default()), hold, false, t(0)) {
            Some(Step::SetCondition { message, .. }) => message,
            other => panic!("a condition is written over none: {other:?}"),
        };
        let cases: [(Option<&str>, Option<&str>, bool); 8] = [
            (None, Some(&circuit), true),
            (Some(&capacity), Some(&capacity), false),
            (Some(&circuit), Some(&circuit_later), false),
            (Some(&circuit), Some(&rate), false),
            (Some(&rate), Some(&circuit), false),
            (Some(&rate), Some(&capacity), false),
            (Some(&capacity), None, true),
            (None, None, false),
        ];
        for (before, now, rewritten) in cases {
            let message = written(before);
            let mut facts = FleetFacts::default();
            facts.apply_node(&node("z").ready_at(t(0)).ours("Unknown", "ZombieNotRemediated", &message).build(), &scope, t(0));
            let notes = notes(&facts, &Memory::default(), ["z"]);
            let step = condition_step(&a, notes.get("z"), now, false, t(0));
            assert_eq!(step.is_some(), rewritten, "from {message:?} to {now:?}: {step:?}");
            if let Some(Step::SetCondition { message, reason, .. }) = step {
                assert_eq!(reason, "ZombieNotRemediated");
                assert!(message.starts_with(now.unwrap_or(CONFIRMING)), "{message}");
            }
        }
        // A dead node, with and without --act-on-dead, and its condition as written read back.
        let dead = Assessment::new(Verdict::Dead, vec![]);
        for (act_on_dead, says) in [(false, DEAD_IS_KCMS), (true, CONFIRMING)] {
            let Some(Step::SetCondition { message, .. }) = condition_step(&dead, Some(&NodeNote::default()), None, act_on_dead, t(0)) else {
                panic!("a dead node's condition is written")
            };
            assert!(message.starts_with(says), "act on dead {act_on_dead}: {message}");
            let mut facts = FleetFacts::default();
            facts.apply_node(&node("d").ready_at(t(0)).ours("Unknown", "LeaseAndStatusStale", &message).build(), &scope, t(0));
            let notes = notes(&facts, &Memory::default(), ["d"]);
            assert_eq!(condition_step(&dead, notes.get("d"), None, act_on_dead, t(0)), None, "act on dead {act_on_dead}: written once");
            assert!(condition_step(&dead, notes.get("d"), None, !act_on_dead, t(0)).is_some(), "act on dead {act_on_dead}: the flag changed");
        }
    }

    #[test]
    fn the_plan_becomes_steps_in_order_and_a_dry_run_writes_nothing_to_a_node() {
        let plan = Plan { remediate: vec!["z".into()], release: vec!["r".into()], held: vec![("y".into(), Hold::RateLimited)], ..Plan::default() };
        let mut j = judgement(
            &[("z", Verdict::Zombie), ("y", Verdict::Zombie), ("r", Verdict::Healthy), ("c", Verdict::Healthy)],
            &[("r", "False", "ZombieDetected")],
            plan,
        );
        j.cordons_taken_over = vec!["c".into()];
        j.newly_misconfigured = vec![("c".into(), "certificate not trusted".into())];
        let mut reported: NodeMap<Verdict> =
            [(NodeName::from("z"), Verdict::Suspect), (NodeName::from("y"), Verdict::Zombie), (NodeName::from("r"), Verdict::Zombie)].into_iter().collect();
        let changes = verdict_changes(&mut reported, &j.assessments);
        let held = vec![("y".to_string(), hold_message(&j.plan, Hold::RateLimited, 1))];
        let healthy = "Lease and NodeStatus heartbeats are consistent";
        let condition = |status, reason: &'static str, message: &str, previous: Option<&str>| Step::SetCondition {
            status,
            reason,
            message: message.into(),
            previous_status: previous.map(Into::into),
        };
        let report = |warning, reason, action, note: &str| Step::Report { warning, reason, action, note: note.into() };
        let misconfigured =
            "kubelet probes of this node cannot work for a reason on pulsecheck's side, so they are no evidence against it: certificate not trusted";
        // Most urgent first: remediations, releases, records, conditions, then Events.
        assert_eq!(
            plan_steps(&j, &changes, &held, false),
            vec![
                planned("z", Step::Remediate { dry_run: false }),
                planned("r", Step::Release { why: healthy.into(), undo_cordon: true, dry_run: false }),
                planned("c", Step::DisownCordon),
                planned("r", condition("True", "HeartbeatsConsistent", healthy, Some("False"))),
                // Held back by the guard, or not yet confirmed by a fresh read: never False.
                planned(
                    "y",
                    condition("Unknown", "ZombieNotRemediated", "not remediated yet: --max-remediations-per-minute reached; will retry; zombie", None)
                ),
                planned("z", condition("Unknown", "ZombieNotRemediated", "not remediated yet: waiting for the fresh read that confirms it; zombie", None)),
                planned("r", report(false, "HeartbeatsConsistent", "Evaluate", &format!("healthy: {healthy}"))),
                planned("z", report(true, "ZombieDetected", "Evaluate", "zombie: zombie")),
                planned("y", report(true, "RemediationBlocked", "Remediate", "not remediated yet: --max-remediations-per-minute reached; will retry")),
                planned("c", report(true, "ProbeMisconfigured", "Probe", misconfigured)),
            ]
        );
        // A dry run: the same Events, no condition and no record written, and the remediation and
        // release only simulated.
        assert_eq!(
            plan_steps(&j, &changes, &held, true),
            vec![
                planned("z", Step::Remediate { dry_run: true }),
                planned("r", Step::Release { why: healthy.into(), undo_cordon: true, dry_run: true }),
                planned("r", report(false, "HeartbeatsConsistent", "Evaluate", &format!("healthy: {healthy}"))),
                planned("z", report(true, "ZombieDetected", "Evaluate", "zombie: zombie")),
                planned("y", report(true, "RemediationBlocked", "Remediate", "not remediated yet: --max-remediations-per-minute reached; will retry")),
                planned("c", report(true, "ProbeMisconfigured", "Probe", misconfigured)),
            ]
        );
        let kinds: Vec<WriteKind> = plan_steps(&j, &changes, &held, false).iter().map(|p| write_kind(&p.step)).collect();
        assert_eq!(kinds.iter().collect::<HashSet<_>>().len(), WriteKind::ALL.len(), "every kind of write has its own back-off and metric");
    }

    #[test]
    fn outcomes_are_booked_in_the_guards_memory_and_the_write_backoff() {
        let both = Actions { cordon: true, ..Actions::default() };
        let failed = || Effect::Failed(ActuateError::Timeout { what: "remediate", node: "n".into(), timeout: Duration::from_secs(10) });
        let remediate = |n: &str, dry_run| planned(n, Step::Remediate { dry_run });
        let release = |n: &str, dry_run| planned(n, Step::Release { why: "healthy".into(), undo_cordon: true, dry_run });
        let mut ledger = Ledger::default();

        // A failed remediation: every configured action counts an error, and the node backs off.
        let counts = ledger.settle(t(0), &remediate("a", false), &failed(), &both);
        assert_eq!(counts, [(ActionLabel::Taint, ResultLabel::Error), (ActionLabel::Cordon, ResultLabel::Error)]);
        assert!(ledger.backoff.waiting("a", WriteKind::Remediation, t(4)));
        // A success: what changed counts, the back-off is over, and the start counts against the rate.
        let counts = ledger.settle(t(5), &remediate("a", false), &Effect::Remediated(Change { taint: true, cordon: false }), &both);
        assert_eq!(counts, [(ActionLabel::Taint, ResultLabel::Success)]);
        assert!(!ledger.backoff.waiting("a", WriteKind::Remediation, t(5)));
        let facts = fleet(&["a", "b", "c", "d", "e"]);
        let cfg = GuardConfig { max_per_minute: 1, max_unhealthy_percent: 100.0, ..GuardConfig::default() };
        let zombie_b =
            assessments(&[("a", Verdict::Healthy), ("b", Verdict::Zombie), ("c", Verdict::Healthy), ("d", Verdict::Healthy), ("e", Verdict::Healthy)]);
        let p = guard::plan(t(10), &zombie_b, &facts, &mut ledger.memory, &cfg, guard::Stance::Act);
        assert_eq!(p.held, [("b".into(), Hold::RateLimited)], "the remediation of a started the minute");
        assert_eq!(guard::plan(t(65), &zombie_b, &facts, &mut ledger.memory, &cfg, guard::Stance::Act).remediate, ["b".to_string()]);

        // A failed release counts an error for each undo, and backs off.
        let counts = ledger.settle(t(100), &release("d", false), &failed(), &both);
        assert_eq!(counts, [(ActionLabel::Untaint, ResultLabel::Error), (ActionLabel::Uncordon, ResultLabel::Error)]);
        assert!(ledger.backoff.waiting("d", WriteKind::Release, t(104)));
        assert!(!ledger.backoff.waiting("d", WriteKind::Condition, t(104)), "a failed release holds back no condition");
        let counts = ledger.settle(t(105), &release("d", false), &Effect::Released(Change { taint: true, cordon: true }), &both);
        assert_eq!(counts, [(ActionLabel::Untaint, ResultLabel::Success), (ActionLabel::Uncordon, ResultLabel::Success)]);
        assert!(!ledger.backoff.waiting("d", WriteKind::Release, t(105)));

        // Failed record updates, conditions and Events back off too, each kind on its own.
        assert!(ledger.settle(t(200), &planned("e", Step::DisownCordon), &failed(), &both).is_empty());
        assert!(ledger.backoff.waiting("e", WriteKind::Record, t(204)));
        let condition = Step::SetCondition { status: "False", reason: "ZombieDetected", message: String::new(), previous_status: None };
        assert!(ledger.settle(t(200), &planned("c", condition.clone()), &failed(), &both).is_empty());
        assert!(ledger.backoff.waiting("c", WriteKind::Condition, t(204)));
        assert!(!ledger.backoff.waiting("c", WriteKind::Remediation, t(204)));
        ledger.settle(t(205), &planned("c", condition), &Effect::ConditionSet, &both);
        assert!(!ledger.backoff.waiting("c", WriteKind::Condition, t(205)));
        let event = Step::Report { warning: true, reason: "NodeSuspect", action: "Evaluate", note: String::new() };
        ledger.settle(t(206), &planned("c", event), &failed(), &both);
        assert!(ledger.backoff.waiting("c", WriteKind::Event, t(210)));

        // Dry run: the guard's memory holds the simulated remediation until the simulated release.
        let counts = ledger.settle(t(300), &remediate("c", true), &Effect::WouldRemediate, &both);
        assert_eq!(counts, [(ActionLabel::Taint, ResultLabel::DryRun), (ActionLabel::Cordon, ResultLabel::DryRun)]);
        assert!(ledger.memory.holds(&facts, "c"));
        assert!(ledger.settle(t(310), &release("c", true), &Effect::WouldRelease, &both).is_empty());
        assert!(!ledger.memory.holds(&facts, "c"));
        // A node gone by its release holds nothing any more.
        ledger.settle(t(320), &remediate("b", true), &Effect::WouldRemediate, &both);
        ledger.settle(t(330), &release("b", false), &Effect::Gone, &both);
        assert!(!ledger.memory.holds(&facts, "b"));

        // A remediation the fresh read did not confirm, and an Event, leave nothing behind.
        let before = guard::plan(t(400), &zombie_b, &facts, &mut ledger.memory.clone(), &cfg, guard::Stance::Act);
        assert!(ledger.settle(t(400), &remediate("b", false), &Effect::Unconfirmed, &both).is_empty());
        let report = Step::Report { warning: true, reason: "NodeSuspect", action: "Evaluate", note: String::new() };
        assert!(ledger.settle(t(400), &planned("b", report), &Effect::Reported, &both).is_empty());
        assert_eq!(guard::plan(t(400), &zombie_b, &facts, &mut ledger.memory, &cfg, guard::Stance::Act), before);
        assert!(!ledger.backoff.waiting("b", WriteKind::Remediation, t(400)));
    }
}
