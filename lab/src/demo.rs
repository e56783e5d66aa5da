//! `pulsecheck demo`: the gap pulsecheck closes, shown live in about a minute.
//!
//! Telling someone "Kubernetes keeps a node Ready while it is dead" convinces nobody; showing it
//! does. The demo starts the real programs a cluster runs — kube-apiserver and etcd
//! ([`crate::controlplane`]) and kube-controller-manager running only the node lifecycle
//! controller — next to a simulated fleet of 20 kubelets in 3 zones ([`crate::fleet`]) and
//! the pulsecheck controller in-process ([`pulsecheck::controller::start`]), every period compressed
//! from minutes to seconds. Then it injects faults on a timeline: a zombie (status loop wedged,
//! Lease still renewing), a node whose osImage turns "Unknown", a dead node, and later the
//! zombie's recovery. Each node's row shows Ready and taints as Kubernetes reports them beside
//! pulsecheck's verdict, evidence and taint.
//!
//! It ends with a summary of what must have happened — Kubernetes kept the zombie Ready while
//! pulsecheck tainted it and released it after recovery, and both agree on the dead node — and
//! exits 0 only when all of it did, so `make demo` doubles as an end-to-end check.
//!
//! The demo never touches any cluster but the one it starts, and leaves no process behind:
//! kube-controller-manager, like the control plane, dies with the demo (kill on drop and
//! `PR_SET_PDEATHSIG`), on SIGINT/SIGTERM too.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    io::{IsTerminal, Write},
    path::{Path, PathBuf},
    time::Duration,
};

use clap::ArgAction;
use k8s_openapi::{
    api::core::v1::{Event, Node},
    jiff::Timestamp,
};
use kube::{Api, api::ListParams};
use tokio::time::Instant;

use pulsecheck::{
    Outcome,
    actuate::Actions,
    config::Settings,
    controller::{self, Running},
    guard::GuardConfig,
    names,
    parse::positive_duration,
    probe::{ProbeMode, ProbeSettings},
    verdict::{Thresholds, Verdict},
};

use crate::{
    binaries::{self, Binaries},
    controllers::{self, Controller},
    controlplane::{self, ControlPlane, ControlPlaneOptions},
    fleet::{self, Fault, Fleet, FleetOptions},
    realdemo, realnode,
};

/// Simulated nodes.
const NODES: usize = 20;
/// Zones they are spread over.
const ZONES: usize = 3;
/// The node that becomes a zombie (zone-a), the one whose osImage turns "Unknown" (zone-b) and
/// the one that dies (zone-c).
const ZOMBIE: usize = 3;
const OS_IMAGE: usize = 7;
const DEAD: usize = 11;
/// kube-controller-manager's grace before it marks a silent node Unknown (default 50 s).
const KCM_GRACE: Duration = Duration::from_secs(6);
/// How long after the last expectation held the final view stays up.
const LINGER: Duration = Duration::from_secs(3);
/// The shortest `--duration` that fits the timeline.
const MIN_DURATION: Duration = Duration::from_secs(45);
/// How long each start-up step may take.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(90);
/// Lines of recent happenings kept under the live view.
const RECENT_LINES: usize = 8;
/// How often `--no-tty` prints a status line when nothing changes.
const STATUS_LINE_EVERY: Duration = Duration::from_secs(10);
const KCM_LOG: &str = "kube-controller-manager.log";
const PULSECHECK_LOG: &str = "pulsecheck.log";
/// The taint kube-controller-manager puts on a node it stopped hearing from.
const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";

/// Arguments of `pulsecheck demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Print plain timestamped lines instead of redrawing the screen (automatic when stdout is not a terminal).
    #[arg(long, env = "PULSECHECK_DEMO_NO_TTY", value_name = "BOOL", default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub no_tty: bool,
    /// Longest the timeline runs once everything is up; the demo ends earlier once every expectation held.
    #[arg(long, env = "PULSECHECK_DEMO_DURATION", value_name = "DURATION", default_value = "90s", value_parser = positive_duration)]
    pub duration: Duration,
    /// Folder for the lab and the logs (kube-controller-manager.log, pulsecheck.log), kept afterwards. Default: a temporary folder, kept only when an expectation failed.
    #[arg(long, env = "PULSECHECK_DEMO_DIR", value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// What can stop the demo from running to its summary.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A program is missing.
    #[error(transparent)]
    Binaries(#[from] binaries::Error),
    /// The control plane did not start.
    #[error("cannot start the local control plane: {0}")]
    ControlPlane(#[from] controlplane::Error),
    /// The simulated fleet did not start.
    #[error("cannot start the simulated fleet: {0}")]
    Fleet(#[from] fleet::Error),
    /// The pulsecheck controller did not start.
    #[error("cannot start the pulsecheck controller: {0}")]
    Controller(#[from] controller::Error),
    /// kube-controller-manager could not start or stopped.
    #[error("kube-controller-manager {what}; last lines of {}:\n{tail}", .log.display())]
    KubeControllerManager {
        /// What happened.
        what: String,
        /// Its log.
        log: PathBuf,
        /// The last lines of its log.
        tail: String,
    },
    /// The real-kubelet act could not be played.
    #[error(transparent)]
    Real(#[from] realdemo::Error),
    /// kube-controller-manager could not start or stopped.
    #[error(transparent)]
    KubernetesController(#[from] controllers::Error),
    /// Something did not become ready in time.
    #[error("{0}")]
    NotReady(String),
    /// A file or folder could not be made.
    #[error("cannot {action} {}: {source}", .path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Flags out of range.
    #[error("{0}")]
    Usage(String),
    /// SIGINT or SIGTERM.
    #[error("interrupted")]
    Interrupted,
}

/// Result of this module's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Runs the demo: [`Outcome::Clean`] when every expectation of the summary held,
/// [`Outcome::Findings`] when one did not; bad flags and failures to start are errors.
pub async fn run(args: DemoArgs) -> Result<Outcome> {
    if args.duration < MIN_DURATION {
        return Err(Error::Usage(format!(
            "--duration {} is too short: the timeline needs at least {}",
            humantime::format_duration(args.duration),
            humantime::format_duration(MIN_DURATION)
        )));
    }
    let tty = !args.no_tty && std::io::stdout().is_terminal();
    let mut screen = Screen { tty, out: std::io::stdout() };
    let held = tokio::select! {
        r = tour(&args, &mut screen) => r?,
        _ = controller::wait_for_signal() => return Err(Error::Interrupted),
    };
    Ok(if held { Outcome::Clean } else { Outcome::Findings })
}

/// The lab folder: the one given, or a temporary one removed after a successful run.
enum LabDir {
    Given(PathBuf),
    Temporary(tempfile::TempDir),
}

impl LabDir {
    fn path(&self) -> &Path {
        match self {
            LabDir::Given(p) => p,
            LabDir::Temporary(t) => t.path(),
        }
    }
}

/// Starts everything, plays the timeline, stops everything, prints the summary.
async fn tour(args: &DemoArgs, screen: &mut Screen) -> Result<bool> {
    let binaries = Binaries::locate()?;
    let kcm_program = binaries.require_kube_controller_manager()?.to_path_buf();
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(|source| Error::Io { action: "create", path: d.clone(), source })?;
            LabDir::Given(d.clone())
        }
        None => LabDir::Temporary(tempfile::Builder::new().prefix("pulsecheck-demo-").tempdir().map_err(|source| Error::Io {
            action: "create a temporary folder in",
            path: std::env::temp_dir(),
            source,
        })?),
    };
    log_to_file(&dir.path().join(PULSECHECK_LOG))?;
    // The seed failure on a real kubelet when this machine can run one; the simulated fleet shows
    // it (and the rest) either way.
    let real = match realnode::HostTools::check() {
        Ok(tools) => {
            screen.line("this machine can run a real kubelet: act 1 shows the seed failure (a hung root disk) on a real node, act 2 the simulated fleet");
            let mut say = |line: &str| screen.line(line);
            match realdemo::run(&tools, &kcm_program, &dir.path().join("real"), &mut say).await {
                Ok(held) => held,
                Err(e) => {
                    keep(dir, screen);
                    return Err(e.into());
                }
            }
        }
        Err(why) => {
            screen.line(&format!("this machine cannot run a real kubelet, so the seed failure is shown on the simulated fleet only ({why})"));
            Vec::new()
        }
    };
    for (held, line) in &real {
        screen.line(&format!("{} {line}", if *held { "[ok]  " } else { "[FAIL]" }));
    }
    let real_held = real.iter().all(|(held, _)| *held);
    screen.line(&format!("act 2 — starting kube-apiserver + etcd in {} …", dir.path().display()));
    let cp = ControlPlane::start(ControlPlaneOptions { dir: Some(dir.path().to_path_buf()), ..Default::default() }).await?;
    let result = with_control_plane(&cp, dir.path(), &kcm_program, args.duration, screen).await;
    let _ = cp.stop().await;
    let held = match result {
        Ok(held) => held && real_held,
        Err(e) => {
            keep(dir, screen);
            return Err(e);
        }
    };
    match dir {
        LabDir::Temporary(t) if held => drop(t),
        other => keep(other, screen),
    }
    Ok(held)
}

/// Keeps the lab folder and says where the logs are.
fn keep(dir: LabDir, screen: &mut Screen) {
    let path = match dir {
        LabDir::Given(p) => p,
        LabDir::Temporary(t) => t.keep(),
    };
    screen.line(&format!("logs kept in {} ({KCM_LOG}, {PULSECHECK_LOG})", path.display()));
}

/// Everything after the control plane is up: fleet, kube-controller-manager, pulsecheck, timeline.
async fn with_control_plane(cp: &ControlPlane, dir: &Path, kcm_program: &Path, duration: Duration, screen: &mut Screen) -> Result<bool> {
    let client = cp.client();
    screen.line(&format!("starting {NODES} simulated kubelets in {ZONES} zones …"));
    let fleet = Fleet::start(client.clone(), fleet_options()).await?;
    let names = fleet.node_names();
    screen.line("starting kube-controller-manager (node lifecycle controller only) …");
    let mut kcm = Controller::kube_controller_manager(kcm_program, cp.kubeconfig_path(), KCM_GRACE, &dir.join(KCM_LOG))?;
    wait_registered(&client, &names, &mut kcm).await?;
    screen.line("starting the pulsecheck controller in-process …");
    let running = controller::start(client.clone(), controller_settings()).await?;
    let world = World { client: client.clone(), running: &running };
    let first = wait_agreement(&world, &names, &mut kcm).await?;

    let story = Story::new(&names);
    let header = Header { kubeconfig: cp.kubeconfig_path().to_path_buf(), dir: dir.to_path_buf() };
    let mut show = Show { screen, header, story, timeline: Timeline::new(&names), recent: VecDeque::new(), previous: first };
    let played = show.play(&fleet, &world, &mut kcm, duration).await;
    let (screen, story) = (show.screen, show.story);

    running.stop().await;
    kcm.stop().await;
    fleet.stop().await;
    played?;
    let summary = story.summary();
    screen.line("");
    for (held, line) in &summary {
        screen.line(&format!("{} {line}", if *held { "[ok]  " } else { "[FAIL]" }));
    }
    let failed = summary.iter().filter(|(held, _)| !held).count();
    if failed == 0 {
        screen.line("every expectation held: Kubernetes kept the zombie Ready, pulsecheck caught it and let it go; both agree on the dead node");
    } else {
        screen.line(&format!("{failed} expectation(s) did not hold"));
    }
    Ok(failed == 0)
}

/// The fleet: kubelet periods compressed from 10 s / 5 min to 1 s / 2 s (see tests/common).
fn fleet_options() -> FleetOptions {
    FleetOptions {
        nodes: NODES,
        name_prefix: "sim-".into(),
        zones: ZONES,
        lease_duration: Duration::from_secs(4),
        status_update_frequency: Duration::from_secs(1),
        status_report_frequency: Duration::from_secs(2),
        kubelet_endpoints: true,
        force: false,
        no_pods: false,
    }
}

/// pulsecheck's settings, compressed like the fleet (its kubelets report status at least every
/// 3 s): written out in full, so `PULSECHECK_*` variables in the environment cannot change the
/// story.
fn controller_settings() -> Settings {
    let mut s = Settings {
        thresholds: Thresholds {
            status_stale_after: Duration::from_secs(8),
            os_image_unknown_after: Duration::from_secs(5),
            probe_zombie_after: Duration::from_secs(60),
            ..Thresholds::default()
        },
        guard: GuardConfig { max_per_minute: 100, recover_after: Duration::from_secs(4), ..GuardConfig::default() },
        actions: Actions::default(),
        dry_run: false,
        evaluation_interval: Duration::from_millis(500),
        request_timeout: Duration::from_secs(5),
        probe: ProbeSettings { mode: ProbeMode::Tcp, timeout: Duration::from_secs(1), ..ProbeSettings::default() },
        admin_addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        // The demo's table shows every node's verdict, read from /metrics.
        per_node_metrics: pulsecheck::metrics::PerNodeMetrics::All,
        ..Settings::default()
    };
    s.lease_grace(Duration::from_secs(3));
    s.probe_every(Duration::from_secs(3));
    s
}

/// Logs of the in-process controller, fleet and control plane go to a file, not the screen.
fn log_to_file(path: &Path) -> Result<()> {
    let file = std::fs::File::create(path).map_err(|source| Error::Io { action: "create", path: path.to_path_buf(), source })?;
    let filter = tracing_subscriber::EnvFilter::try_from_env("PULSECHECK_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_writer(std::sync::Mutex::new(file)).with_ansi(false).with_env_filter(filter).try_init();
    Ok(())
}

/// Waits until kube-controller-manager has registered every node (its `RegisteredNode` Events).
async fn wait_registered(client: &kube::Client, names: &[String], kcm: &mut Controller) -> Result<()> {
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        kcm.check_alive()?;
        let registered: BTreeSet<String> = match events.list(&ListParams::default().fields("reason=RegisteredNode")).await {
            Ok(list) => list.items.into_iter().filter_map(|e| e.involved_object.name).collect(),
            Err(_) => BTreeSet::new(),
        };
        if names.iter().all(|n| registered.contains(n)) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::KubeControllerManager {
                what: format!("registered only {} of {} nodes within {STARTUP_TIMEOUT:?}", registered.len(), names.len()),
                log: kcm.log().to_path_buf(),
                tail: kcm.log_tail(),
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until Kubernetes and pulsecheck both see every node healthy: the starting line.
async fn wait_agreement(world: &World<'_>, names: &[String], kcm: &mut Controller) -> Result<BTreeMap<String, Row>> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        kcm.check_alive()?;
        if let Ok(rows) = world.rows().await {
            let calm = names
                .iter()
                .all(|n| rows.get(n).is_some_and(|r| r.ready == "True" && r.kcm_taints.is_empty() && r.verdict == Some(Verdict::Healthy) && !r.our_taint));
            if calm {
                return Ok(rows);
            }
        }
        if Instant::now() >= deadline {
            return Err(Error::NotReady(format!("Kubernetes and pulsecheck did not both see all {} nodes healthy within {STARTUP_TIMEOUT:?}", names.len())));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One node as both sides see it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    zone: String,
    /// Ready as Kubernetes reports it.
    ready: String,
    /// kube-controller-manager's taints (`node.kubernetes.io/*`), as `unreachable:NoSchedule`.
    kcm_taints: Vec<String>,
    /// pulsecheck's verdict (from its metrics); none before its first judgement.
    verdict: Option<Verdict>,
    /// pulsecheck's taint is on the node.
    our_taint: bool,
    /// pulsecheck's evidence, from its `HeartbeatConsistent` condition.
    why: String,
}

impl Row {
    fn kcm_taint_cell(&self) -> String {
        if self.kcm_taints.is_empty() { "-".into() } else { self.kcm_taints.join(",") }
    }

    fn has_unreachable_taint(&self) -> bool {
        let key = UNREACHABLE_TAINT.trim_start_matches("node.kubernetes.io/");
        self.kcm_taints.iter().any(|t| t.starts_with(&format!("{key}:")))
    }

    /// What changed from `before`, in words; empty when nothing did.
    fn changes(&self, before: &Row) -> Vec<String> {
        let mut said = Vec::new();
        if self.ready != before.ready {
            said.push(format!("Kubernetes: Ready {} → {}", before.ready, self.ready));
        }
        if self.kcm_taints != before.kcm_taints {
            said.push(format!("kube-controller-manager taints: {}", self.kcm_taint_cell()));
        }
        if self.verdict != before.verdict {
            let v = |v: Option<Verdict>| v.map_or("-".to_string(), |v| v.to_string());
            let why = if self.why.is_empty() || self.verdict == Some(Verdict::Healthy) { String::new() } else { format!(" ({})", self.why) };
            said.push(format!("pulsecheck: {} → {}{why}", v(before.verdict), v(self.verdict)));
        }
        if self.our_taint != before.our_taint {
            said.push(if self.our_taint { format!("pulsecheck added its taint {}", names::TAINT_KEY) } else { "pulsecheck removed its taint".to_string() });
        }
        said
    }
}

/// Where the demo looks: the cluster (as Kubernetes reports it) and the controller's metrics.
struct World<'a> {
    client: kube::Client,
    running: &'a Running,
}

impl World<'_> {
    async fn rows(&self) -> Result<BTreeMap<String, Row>, kube::Error> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let list = tokio::time::timeout(Duration::from_secs(5), nodes.list(&ListParams::default()))
            .await
            .map_err(|_| kube::Error::Service("listing nodes timed out".into()))??;
        let verdicts = verdicts(&self.running.metrics.render());
        Ok(list
            .items
            .into_iter()
            .filter_map(|n| {
                let name = n.metadata.name.clone()?;
                let labels = n.metadata.labels.clone().unwrap_or_default();
                let conditions = n.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
                let ready = conditions.iter().find(|c| c.type_ == "Ready").map_or("Missing".to_string(), |c| c.status.clone());
                let why =
                    conditions.iter().find(|c| c.type_ == names::CONDITION_TYPE && c.status != "True").and_then(|c| c.message.clone()).unwrap_or_default();
                let taints = n.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
                let mut kcm: BTreeMap<String, Vec<String>> = BTreeMap::new();
                for t in taints.iter().filter(|t| t.key.starts_with("node.kubernetes.io/")) {
                    kcm.entry(t.key.trim_start_matches("node.kubernetes.io/").to_string()).or_default().push(t.effect.clone());
                }
                let row = Row {
                    zone: labels.get("topology.kubernetes.io/zone").cloned().unwrap_or_default(),
                    ready,
                    kcm_taints: kcm
                        .into_iter()
                        .map(|(k, mut e)| {
                            e.sort();
                            format!("{k}:{}", e.join("+"))
                        })
                        .collect(),
                    verdict: verdicts.get(&name).copied(),
                    our_taint: taints.iter().any(|t| t.key == names::TAINT_KEY),
                    why,
                };
                Some((name, row))
            })
            .collect())
    }
}

/// Each node's current verdict from the exposition text (`pulsecheck_node_verdict{..} 1`).
pub(crate) fn verdicts(exposition: &str) -> HashMap<String, Verdict> {
    let mut out = HashMap::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix("pulsecheck_node_verdict{") else { continue };
        let Some((labels, value)) = rest.split_once("} ") else { continue };
        if value.trim() != "1" {
            continue;
        }
        let label = |key: &str| labels.split(',').find_map(|kv| kv.strip_prefix(&format!("{key}=\""))?.strip_suffix('"').map(str::to_string));
        if let (Some(node), Some(v)) = (label("node"), label("verdict"))
            && let Some(verdict) = Verdict::ALL.into_iter().find(|x| x.as_str() == v)
        {
            out.insert(node, verdict);
        }
    }
    out
}

/// One fault on the timeline.
#[derive(Debug, Clone)]
struct Step {
    node: String,
    fault: Fault,
    /// Not before this long after the start.
    at: Duration,
    /// And not before the zombie has been tainted this long (for the recovery).
    after_zombie_tainted: Option<Duration>,
    /// What it means, for people.
    says: String,
}

/// The faults, in order.
struct Timeline {
    steps: Vec<Step>,
    next: usize,
}

impl Timeline {
    fn new(names: &[String]) -> Timeline {
        let name = |i: usize| names.get(i).cloned().unwrap_or_default();
        let step = |i: usize, fault, at, says: &str| Step { node: name(i), fault, at: Duration::from_secs(at), after_zombie_tainted: None, says: says.into() };
        let mut recover = step(ZOMBIE, Fault::Recover, 30, "recovers: its status loop posts again");
        recover.after_zombie_tainted = Some(Duration::from_secs(3));
        Timeline {
            steps: vec![
                step(ZOMBIE, Fault::Zombie, 5, "becomes a zombie: its status loop hangs (think disk I/O), its Lease keeps renewing"),
                step(OS_IMAGE, Fault::OsImageUnknown, 10, "cannot read /etc/os-release: osImage turns \"Unknown\"; status and Lease go on"),
                step(DEAD, Fault::Dead, 15, "loses power: Lease, status and kubelet all stop"),
                recover,
            ],
            next: 0,
        }
    }

    /// The next step, if it is due at `t`.
    fn due(&mut self, t: Duration, story: &Story) -> Option<Step> {
        let step = self.steps.get(self.next)?;
        if t < step.at {
            return None;
        }
        if let Some(after) = step.after_zombie_tainted {
            match story.zombie_tainted.as_ref() {
                Some(tainted) if t >= tainted.at + after => {}
                _ => return None,
            }
        }
        self.next += 1;
        Some(step.clone())
    }

    /// "next: sim-0011 loses power … in 3s", or what the next step waits for.
    fn countdown(&self, t: Duration, story: &Story) -> String {
        let Some(step) = self.steps.get(self.next) else {
            return "no more faults; waiting for the last effects".into();
        };
        let first_words = step.says.split(':').next().unwrap_or_default();
        let mut at = step.at;
        if let Some(after) = step.after_zombie_tainted {
            match story.zombie_tainted.as_ref() {
                Some(tainted) => at = at.max(tainted.at + after),
                None => return format!("next: {} {first_words}, once pulsecheck has tainted it", step.node),
            }
        }
        format!("next: {} {first_words} in {}s", step.node, at.saturating_sub(t).as_secs())
    }
}

/// A moment worth telling in the summary.
#[derive(Debug, Clone)]
struct Moment {
    at: Duration,
    /// What Kubernetes said then (Ready and kcm taints).
    kubernetes: String,
    /// pulsecheck's evidence then.
    why: String,
}

/// What happened to the three nodes of the story and everyone else, frame by frame.
struct Story {
    zombie: String,
    os_image: String,
    dead: String,
    faulted_at: HashMap<String, Duration>,
    recovered_at: Option<Duration>,
    zombie_tainted: Option<Moment>,
    /// Frames in which Kubernetes did not report the zombie Ready without taints (while it was one).
    zombie_lapses: Vec<String>,
    zombie_released: Option<Duration>,
    os_image_tainted: Option<Moment>,
    dead_agreed: Option<Moment>,
    dead_tainted_by_pulsecheck: bool,
    others_tainted: BTreeSet<String>,
    others: usize,
    last_t: Duration,
}

impl Story {
    fn new(names: &[String]) -> Story {
        let name = |i: usize| names.get(i).cloned().unwrap_or_default();
        Story {
            zombie: name(ZOMBIE),
            os_image: name(OS_IMAGE),
            dead: name(DEAD),
            faulted_at: HashMap::new(),
            recovered_at: None,
            zombie_tainted: None,
            zombie_lapses: Vec::new(),
            zombie_released: None,
            os_image_tainted: None,
            dead_agreed: None,
            dead_tainted_by_pulsecheck: false,
            others_tainted: BTreeSet::new(),
            others: names.len().saturating_sub(3),
            last_t: Duration::ZERO,
        }
    }

    fn injected(&mut self, step: &Step, t: Duration) {
        if step.fault == Fault::Recover {
            if step.node == self.zombie {
                self.recovered_at = Some(t);
            }
        } else {
            self.faulted_at.entry(step.node.clone()).or_insert(t);
        }
    }

    fn observe(&mut self, t: Duration, rows: &BTreeMap<String, Row>) {
        self.last_t = t;
        for (name, row) in rows {
            let kubernetes =
                format!("Ready={}{}", row.ready, if row.kcm_taints.is_empty() { String::new() } else { format!(", taints {}", row.kcm_taint_cell()) });
            let moment = || Moment { at: t, kubernetes: kubernetes.clone(), why: row.why.clone() };
            if *name == self.zombie {
                if self.faulted_at.contains_key(name) && self.recovered_at.is_none() && (row.ready != "True" || !row.kcm_taints.is_empty()) {
                    self.zombie_lapses.push(format!("t+{}s {kubernetes}", t.as_secs()));
                }
                if row.our_taint && self.zombie_tainted.is_none() {
                    self.zombie_tainted = Some(moment());
                }
                if !row.our_taint && self.zombie_tainted.is_some() && self.recovered_at.is_some() && self.zombie_released.is_none() {
                    self.zombie_released = Some(t);
                }
            } else if *name == self.os_image {
                if row.our_taint && self.os_image_tainted.is_none() {
                    self.os_image_tainted = Some(moment());
                }
            } else if *name == self.dead {
                self.dead_tainted_by_pulsecheck |= row.our_taint;
                if self.dead_agreed.is_none() && row.ready == "Unknown" && row.has_unreachable_taint() && row.verdict == Some(Verdict::Dead) {
                    self.dead_agreed = Some(moment());
                }
            } else if row.our_taint {
                self.others_tainted.insert(name.clone());
            }
        }
    }

    /// Every expectation held (the demo may end).
    fn done(&self) -> bool {
        self.summary().iter().all(|(held, _)| *held)
    }

    /// One line per expectation, and whether it held.
    fn summary(&self) -> Vec<(bool, String)> {
        let after =
            |node: &str, at: Duration| self.faulted_at.get(node).map(|f| format!(", {}s after the fault", at.saturating_sub(*f).as_secs())).unwrap_or_default();
        let mut lines = Vec::new();
        lines.push(match &self.zombie_tainted {
            Some(m) if self.zombie_lapses.is_empty() => (
                true,
                format!(
                    "zombie {}: Kubernetes kept it Ready=True with no taint while pulsecheck tainted it (t+{}s{}: {})",
                    self.zombie,
                    m.at.as_secs(),
                    after(&self.zombie, m.at),
                    m.why
                ),
            ),
            Some(_) => {
                (false, format!("zombie {}: pulsecheck tainted it, but Kubernetes did not keep it Ready ({})", self.zombie, self.zombie_lapses.join("; ")))
            }
            None => (false, format!("zombie {}: pulsecheck never tainted it", self.zombie)),
        });
        lines.push(match (self.recovered_at, self.zombie_released) {
            (Some(r), Some(at)) => (
                true,
                format!(
                    "zombie {}: pulsecheck released it after it recovered (t+{}s, {}s after recovery)",
                    self.zombie,
                    at.as_secs(),
                    at.saturating_sub(r).as_secs()
                ),
            ),
            (Some(_), None) => (false, format!("zombie {}: recovered, but pulsecheck never released it", self.zombie)),
            (None, _) => (false, format!("zombie {}: the timeline never reached its recovery (--duration too short?)", self.zombie)),
        });
        lines.push(match &self.os_image_tainted {
            Some(m) if m.kubernetes == "Ready=True" => (
                true,
                format!(
                    "osImage \"Unknown\" {}: Kubernetes kept it Ready=True while pulsecheck tainted it (t+{}s{}: {})",
                    self.os_image,
                    m.at.as_secs(),
                    after(&self.os_image, m.at),
                    m.why
                ),
            ),
            Some(m) => (false, format!("osImage \"Unknown\" {}: pulsecheck tainted it while Kubernetes said {}", self.os_image, m.kubernetes)),
            None => (false, format!("osImage \"Unknown\" {}: pulsecheck never tainted it", self.os_image)),
        });
        lines.push(match &self.dead_agreed {
            Some(m) if !self.dead_tainted_by_pulsecheck => (
                true,
                format!(
                    "dead {}: both agree (t+{}s{}) — Kubernetes: {}; pulsecheck: dead, left to Kubernetes (no pulsecheck taint)",
                    self.dead,
                    m.at.as_secs(),
                    after(&self.dead, m.at),
                    m.kubernetes
                ),
            ),
            Some(_) => (false, format!("dead {}: both agree it is dead, but pulsecheck tainted it without --act-on-dead", self.dead)),
            None => (false, format!("dead {}: Kubernetes (Ready=Unknown, {UNREACHABLE_TAINT}) and pulsecheck (dead) never agreed", self.dead)),
        });
        lines.push(if self.others_tainted.is_empty() {
            (true, format!("the other {} nodes: never tainted by pulsecheck", self.others))
        } else {
            (false, format!("pulsecheck tainted healthy nodes: {}", self.others_tainted.iter().cloned().collect::<Vec<_>>().join(", ")))
        });
        lines
    }
}

/// Where the lab can be reached from another terminal.
struct Header {
    kubeconfig: PathBuf,
    dir: PathBuf,
}

/// The live view: the timeline played against the world, redrawn or printed line by line.
struct Show<'s> {
    screen: &'s mut Screen,
    header: Header,
    story: Story,
    timeline: Timeline,
    recent: VecDeque<String>,
    previous: BTreeMap<String, Row>,
}

impl Show<'_> {
    async fn play(&mut self, fleet: &Fleet, world: &World<'_>, kcm: &mut Controller, duration: Duration) -> Result<()> {
        let start = Instant::now();
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut done_at: Option<Duration> = None;
        let mut last_status_line = Duration::ZERO;
        self.tell(Duration::ZERO, &format!("all {} nodes Ready (Kubernetes) and healthy (pulsecheck); the timeline starts", self.previous.len()));
        loop {
            ticker.tick().await;
            let t = start.elapsed();
            kcm.check_alive()?;
            while let Some(step) = self.timeline.due(t, &self.story) {
                fleet.set_fault(&step.node, step.fault)?;
                self.story.injected(&step, t);
                self.tell(t, &format!("fault: {} {}", step.node, step.says));
            }
            match world.rows().await {
                Ok(rows) => {
                    for (name, row) in &rows {
                        let said = self.previous.get(name).map(|before| row.changes(before)).unwrap_or_default();
                        if !said.is_empty() {
                            self.tell(t, &format!("{name}: {}", said.join("; ")));
                        }
                    }
                    self.story.observe(t, &rows);
                    self.previous = rows;
                }
                Err(e) => self.tell(t, &format!("cannot read the nodes: {e}")),
            }
            if self.screen.tty {
                let frame = self.frame(t);
                self.screen.redraw(&frame);
            } else if t >= last_status_line + STATUS_LINE_EVERY {
                last_status_line = t;
                let status = format!("{} · {}", self.tally(), self.timeline.countdown(t, &self.story));
                self.tell(t, &status);
            }
            if self.story.done() {
                let at = *done_at.get_or_insert(t);
                if t >= at + LINGER {
                    return Ok(());
                }
            }
            if t >= duration {
                self.tell(t, &format!("--duration {} reached", humantime::format_duration(duration)));
                return Ok(());
            }
        }
    }

    /// A happening: printed at once without a terminal, kept under the view with one.
    fn tell(&mut self, t: Duration, what: &str) {
        let line = format!("t+{:<3} {what}", format!("{}s", t.as_secs()));
        if self.screen.tty {
            self.recent.push_back(line);
            while self.recent.len() > RECENT_LINES {
                self.recent.pop_front();
            }
        } else {
            let clock = Timestamp::now().strftime("%H:%M:%S").to_string();
            self.screen.line(&format!("{clock} {line}"));
        }
    }

    /// "17 healthy, 1 zombie, 1 dead".
    fn tally(&self) -> String {
        let mut counts: BTreeMap<u8, (String, usize)> = BTreeMap::new();
        for row in self.previous.values() {
            let v = row.verdict.map_or("not judged".to_string(), |v| v.to_string());
            let rank = row.verdict.map_or(9, Verdict::severity);
            counts.entry(rank).or_insert((v, 0)).1 += 1;
        }
        let parts: Vec<String> = counts.values().rev().map(|(v, n)| format!("{n} {v}")).collect();
        format!("pulsecheck: {}", parts.join(", "))
    }

    /// The whole screen.
    fn frame(&self, t: Duration) -> String {
        let mut f = String::new();
        f.push_str(&format!("\x1b[1mpulsecheck demo\x1b[0m · {NODES} simulated kubelets in {ZONES} zones · real kube-apiserver + etcd + kube-controller-manager (node lifecycle) · pulsecheck in-process\n"));
        f.push_str(&format!("compressed time: Lease renewed every 1s, status every 1–3s · kube-controller-manager grace {}s · pulsecheck: status stale after 8s, osImage \"Unknown\" after 5s, Lease grace 3s\n", KCM_GRACE.as_secs()));
        f.push_str(&format!(
            "look for yourself: kubectl --kubeconfig {} get nodes   (logs in {})\n\n",
            self.header.kubeconfig.display(),
            self.header.dir.display()
        ));
        f.push_str(&format!("\x1b[1mt+{}s\x1b[0m   {}\n\n", t.as_secs(), self.timeline.countdown(t, &self.story)));
        let mut table = vec![[
            "NODE".to_string(),
            "ZONE".into(),
            "K8S READY".into(),
            "K8S TAINTS (kcm)".into(),
            "PULSECHECK".into(),
            "OUR TAINT".into(),
            "WHY (pulsecheck's evidence)".into(),
        ]];
        for (name, row) in &self.previous {
            let mut label = name.clone();
            if *name == self.story.zombie || *name == self.story.os_image || *name == self.story.dead {
                label.push_str(" *");
            }
            table.push([
                label,
                row.zone.clone(),
                row.ready.clone(),
                row.kcm_taint_cell(),
                row.verdict.map_or("-".into(), |v| v.to_string()),
                if row.our_taint { "tainted".into() } else { "-".into() },
                row.why.clone(),
            ]);
        }
        let widths: Vec<usize> = (0..7).map(|i| table.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
        for (i, r) in table.iter().enumerate() {
            let mut line = String::new();
            for (c, cell) in r.iter().enumerate() {
                let padded = if c == 6 { cell.clone() } else { format!("{cell}{}", " ".repeat(widths[c] - cell.chars().count() + 2)) };
                let style = match (i, c) {
                    (0, _) => "\x1b[1m",
                    (_, 2) if cell != "True" => "\x1b[33m",
                    (_, 3) if cell != "-" => "\x1b[33m",
                    (_, 4) if cell == "zombie" || cell == "dead" => "\x1b[31;1m",
                    (_, 4) if cell == "suspect" => "\x1b[33m",
                    (_, 5) if cell == "tainted" => "\x1b[31;1m",
                    _ => "",
                };
                if style.is_empty() {
                    line.push_str(&padded);
                } else {
                    line.push_str(&format!("{style}{padded}\x1b[0m"));
                }
            }
            f.push_str(line.trim_end());
            f.push('\n');
        }
        f.push_str("\n* the nodes the timeline breaks\n\n\x1b[1mwhat happened\x1b[0m\n");
        for line in &self.recent {
            f.push_str(&format!("  {line}\n"));
        }
        f
    }
}

/// stdout: redrawn in place on a terminal, plain lines otherwise. Write errors (a closed pipe)
/// are ignored: the demo's exit code still tells the outcome.
struct Screen {
    tty: bool,
    out: std::io::Stdout,
}

impl Screen {
    fn line(&mut self, text: &str) {
        let _ = writeln!(self.out, "{text}");
        let _ = self.out.flush();
    }

    fn redraw(&mut self, frame: &str) {
        let _ = write!(self.out, "\x1b[H\x1b[2J{frame}");
        let _ = self.out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        (0..NODES).map(|i| fleet::node_name("sim-", i, NODES)).collect()
    }

    fn row(ready: &str, kcm: &[&str], verdict: Verdict, our_taint: bool) -> Row {
        Row {
            zone: "zone-a".into(),
            ready: ready.into(),
            kcm_taints: kcm.iter().map(|s| s.to_string()).collect(),
            verdict: Some(verdict),
            our_taint,
            why: String::new(),
        }
    }

    fn world(overrides: &[(usize, Row)]) -> BTreeMap<String, Row> {
        let mut rows: BTreeMap<String, Row> = names().into_iter().map(|n| (n, row("True", &[], Verdict::Healthy, false))).collect();
        for (i, r) in overrides {
            rows.insert(names()[*i].clone(), r.clone());
        }
        rows
    }

    #[test]
    fn controller_settings_keep_the_rules_the_flags_are_held_to() {
        let s = controller_settings();
        assert!(s.thresholds.lease_grace < s.thresholds.status_stale_after);
        assert!(s.probe.timeout < s.probe.interval && s.probe.interval < s.thresholds.probe_zombie_after);
        assert!(!s.leader.enabled && !s.dry_run);
        assert!(s.admin_addr.ip().is_loopback(), "the demo serves its metrics on loopback only");
    }

    #[test]
    fn verdicts_are_read_from_the_exposition() {
        let text = "# HELP x\npulsecheck_node_verdict{node=\"sim-0003\",verdict=\"healthy\"} 0\npulsecheck_node_verdict{node=\"sim-0003\",verdict=\"zombie\"} 1\npulsecheck_nodes{verdict=\"zombie\"} 1\n";
        assert_eq!(verdicts(text), HashMap::from([("sim-0003".to_string(), Verdict::Zombie)]));
    }

    #[test]
    fn the_whole_story_makes_every_expectation_hold() {
        let n = names();
        let mut tl = Timeline::new(&n);
        let mut story = Story::new(&n);
        story.observe(Duration::from_secs(1), &world(&[]));
        assert!(!story.done());
        for t in [5, 10, 15] {
            let step = tl.due(Duration::from_secs(t), &story).unwrap();
            story.injected(&step, Duration::from_secs(t));
        }
        // The recovery waits for the zombie's taint.
        assert!(tl.due(Duration::from_secs(40), &story).is_none());
        assert!(tl.countdown(Duration::from_secs(40), &story).contains("once pulsecheck has tainted it"));
        let tainted = row("True", &[], Verdict::Zombie, true);
        let dead = row("Unknown", &["unreachable:NoExecute+NoSchedule"], Verdict::Dead, false);
        story.observe(Duration::from_secs(20), &world(&[(ZOMBIE, tainted.clone()), (OS_IMAGE, tainted.clone()), (DEAD, dead.clone())]));
        assert_eq!(tl.countdown(Duration::from_secs(20), &story), "next: sim-0003 recovers in 10s");
        assert!(tl.due(Duration::from_secs(29), &story).is_none());
        let recover = tl.due(Duration::from_secs(30), &story).unwrap();
        assert_eq!(recover.fault, Fault::Recover);
        story.injected(&recover, Duration::from_secs(30));
        assert!(!story.done());
        story.observe(Duration::from_secs(35), &world(&[(OS_IMAGE, tainted), (DEAD, dead)]));
        let summary = story.summary();
        assert!(story.done(), "{summary:?}");
        assert!(
            summary[0].1.contains("Kubernetes kept it Ready=True with no taint while pulsecheck tainted it (t+20s, 15s after the fault"),
            "{}",
            summary[0].1
        );
        assert!(summary[1].1.contains("released it after it recovered (t+35s, 5s after recovery)"), "{}", summary[1].1);
        assert!(summary[3].1.contains("both agree") && summary[3].1.contains("Ready=Unknown, taints unreachable:NoExecute+NoSchedule"), "{}", summary[3].1);
    }

    #[test]
    fn kubernetes_marking_the_zombie_or_a_healthy_node_tainted_fails_the_story() {
        let n = names();
        let mut story = Story::new(&n);
        story.faulted_at.insert(n[ZOMBIE].clone(), Duration::from_secs(5));
        story.observe(
            Duration::from_secs(9),
            &world(&[(ZOMBIE, row("Unknown", &["unreachable:NoSchedule"], Verdict::Zombie, true)), (0, row("True", &[], Verdict::Zombie, true))]),
        );
        let summary = story.summary();
        assert!(!summary[0].0 && summary[0].1.contains("did not keep it Ready"), "{summary:?}");
        assert!(!summary[4].0 && summary[4].1.contains("sim-0000"), "{summary:?}");
    }

    #[test]
    fn row_changes_read_like_sentences() {
        let before = row("True", &[], Verdict::Healthy, false);
        let mut after = row("True", &[], Verdict::Zombie, true);
        after.why = "NodeStatus not refreshed for 8s".into();
        assert_eq!(
            after.changes(&before),
            vec!["pulsecheck: healthy → zombie (NodeStatus not refreshed for 8s)".to_string(), format!("pulsecheck added its taint {}", names::TAINT_KEY)]
        );
        assert!(before.changes(&before).is_empty());
    }
}
