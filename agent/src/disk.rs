//! The disk loop: does, on the node's disk, what a wedged kubelet gets stuck on, and says how it
//! went.
//!
//! A kubelet whose status loop hangs on its disk still renews its Lease; what hangs is a plain
//! read of `/etc/os-release` (cadvisor) or a write under its root dir. So each round of this
//! loop reads the host's `/etc/os-release` fully, stats the scratch directory on the filesystem
//! that holds the kubelet's root dir, writes a small heartbeat file there, fsyncs it and reads it
//! back — every operation under a deadline.
//!
//! It runs on a dedicated OS thread, never on tokio: a read of a hung disk blocks in
//! uninterruptible sleep (D state) and cannot be cancelled, so a task would take a runtime
//! worker with it. The thread is alone and sequential: while one operation is stuck, no new
//! round starts (no pile-up of stuck threads, one blocked request on the device), and when the
//! operation finally returns, rounds resume. A stuck operation is not waited for by anyone:
//! [`DiskStatus::health`] tells from the operation's start time, by the monotonic clock, that
//! it is past its deadline (`hung for N s`), so the network loop reports it without ever
//! touching the disk itself.
//!
//! What the loop must never do: run more than one operation at a time, hold the status lock
//! across an operation (the network loop reads it), or report a path as the container sees it
//! (reports name host paths).

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Read, Write},
    path::{Component, Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard, PoisonError, mpsc},
    time::{Duration, Instant},
};

use clap::Args;
use pulsecheck::{agent::DiskHealth, parse::positive_duration};

/// Where the host's files are and how often and how patiently the disk is checked.
#[derive(Debug, Clone, Args)]
pub struct DiskArgs {
    /// Where the host's files are mounted in the agent's container: host path P is opened as <host-root>P.
    #[arg(long, env = "PULSECHECK_AGENT_HOST_ROOT", value_name = "DIR", default_value = "/host")]
    pub host_root: PathBuf,
    /// The host's os-release file (a host path, read through --host-root), as cadvisor reads it.
    #[arg(long, env = "PULSECHECK_AGENT_OS_RELEASE", value_name = "HOST_PATH", default_value = "/etc/os-release", value_parser = host_path)]
    pub os_release: String,
    /// A writable directory (a host path, reached through --host-root unless --scratch-mount says where it is mounted) on the filesystem that holds the kubelet's root dir; created if missing. Reports name it.
    #[arg(long, env = "PULSECHECK_AGENT_SCRATCH_DIR", value_name = "HOST_PATH", default_value = "/var/lib/kubelet/pulsecheck-agent", value_parser = host_path)]
    pub scratch_dir: String,
    /// Where --scratch-dir is mounted in the container, when not under --host-root: the chart mounts an emptyDir (which the kubelet keeps under its root dir, writable by any uid) and names its host path in --scratch-dir.
    #[arg(long, env = "PULSECHECK_AGENT_SCRATCH_MOUNT", value_name = "DIR")]
    pub scratch_mount: Option<PathBuf>,
    /// How often a round of disk checks starts (a round that ends late is followed by the next at once).
    #[arg(long, env = "PULSECHECK_AGENT_DISK_INTERVAL", value_name = "DURATION", default_value = "5s", value_parser = positive_duration)]
    pub disk_interval: Duration,
    /// How long one disk operation may take before the disk counts as hung.
    #[arg(long, env = "PULSECHECK_AGENT_DISK_DEADLINE", value_name = "DURATION", default_value = "10s", value_parser = positive_duration)]
    pub disk_deadline: Duration,
}

/// Parses a host path: absolute, without `..` (it is resolved under `--host-root`).
pub fn host_path(s: &str) -> Result<String, String> {
    let path = Path::new(s);
    if !path.is_absolute() {
        return Err(format!("'{s}' is not an absolute path (a path on the node, like /etc/os-release)"));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(format!("'{s}' contains '..'"));
    }
    let trimmed = s.trim_end_matches('/');
    Ok(if trimmed.is_empty() { "/".into() } else { trimmed.into() })
}

/// Name of the heartbeat file in the scratch directory.
pub const HEARTBEAT_FILE: &str = "heartbeat";

/// Largest os-release the loop reads (the real one is well under a page).
const OS_RELEASE_LIMIT: u64 = 1 << 20;

/// One disk operation, named as reports name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Open and read a file fully.
    Read,
    /// Stat a directory.
    Stat,
    /// Create the scratch directory (only when it is missing).
    Mkdir,
    /// Open (create, truncate) a file and write it.
    Write,
    /// fsync a written file and close it.
    Fsync,
}

impl Operation {
    /// The name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Read => "read",
            Operation::Stat => "stat",
            Operation::Mkdir => "mkdir",
            Operation::Write => "write",
            Operation::Fsync => "fsync",
        }
    }
}

/// What a round does, in order (`CreateScratch` only after a stat found the directory missing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Read the os-release file fully.
    ReadOsRelease,
    /// Stat the scratch directory.
    StatScratch,
    /// Create the scratch directory.
    CreateScratch,
    /// Write the heartbeat file (content with the round's number).
    WriteHeartbeat,
    /// fsync and close the heartbeat file.
    SyncHeartbeat,
    /// Read the heartbeat file back and compare it with what was written.
    ReadHeartbeat,
}

impl Step {
    /// The operation this step is.
    pub fn operation(self) -> Operation {
        match self {
            Step::ReadOsRelease | Step::ReadHeartbeat => Operation::Read,
            Step::StatScratch => Operation::Stat,
            Step::CreateScratch => Operation::Mkdir,
            Step::WriteHeartbeat => Operation::Write,
            Step::SyncHeartbeat => Operation::Fsync,
        }
    }
}

/// The files a round operates on, as host paths (what reports name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Targets {
    /// The os-release file.
    pub os_release: String,
    /// The scratch directory.
    pub scratch_dir: String,
    /// The heartbeat file in it.
    pub heartbeat: String,
}

impl Targets {
    /// The targets `args` name.
    pub fn from_args(args: &DiskArgs) -> Targets {
        let heartbeat = format!("{}/{HEARTBEAT_FILE}", args.scratch_dir.trim_end_matches('/'));
        Targets { os_release: args.os_release.clone(), scratch_dir: args.scratch_dir.clone(), heartbeat }
    }

    /// The host path `step` operates on.
    pub fn of(&self, step: Step) -> &str {
        match step {
            Step::ReadOsRelease => &self.os_release,
            Step::StatScratch | Step::CreateScratch => &self.scratch_dir,
            Step::WriteHeartbeat | Step::SyncHeartbeat | Step::ReadHeartbeat => &self.heartbeat,
        }
    }
}

/// Performs the steps of a round on some disk: the host's ([`HostDisk`]) or a test's.
pub trait Disk: Send + 'static {
    /// Performs `step` of round number `round`. It may block for as long as the disk does.
    fn perform(&mut self, step: Step, round: u64) -> io::Result<()>;
}

/// A monotonic clock, injected so the state machine can be tested without waiting.
pub trait Clock: Send + Sync + 'static {
    /// Now, monotonic.
    fn now(&self) -> Instant;
}

/// The process's monotonic clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// The operation running right now.
#[derive(Debug, Clone, PartialEq, Eq)]
struct InFlight {
    path: String,
    operation: Operation,
    since: Instant,
}

/// How the latest finished round ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Finished {
    /// No round has finished yet.
    None,
    /// Every operation succeeded within its deadline.
    Ok,
    /// An operation failed (or returned only after its deadline).
    Failed { path: String, operation: Operation, error: String, class: FailureClass },
}

/// What kind of failure a round ended with: the OS's error number, or a step that returned only
/// after its deadline. A failing streak is one class: ten minutes of ENOSPC followed by one EIO
/// are an EIO for as long as the EIO lasts, not for ten minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailureClass {
    Os(i32),
    Late,
    Other(io::ErrorKind),
}

impl FailureClass {
    fn of(error: &io::Error) -> FailureClass {
        error.raw_os_error().map_or(FailureClass::Other(error.kind()), FailureClass::Os)
    }
}

#[derive(Debug)]
struct Record {
    in_flight: Option<InFlight>,
    finished: Finished,
    /// When the first round of the current failing streak started.
    failing_since: Option<Instant>,
    /// Rounds started so far.
    rounds: u64,
    /// Rounds finished so far (they run one after the other: round n finished once this is n).
    finished_rounds: u64,
}

/// What the disk loop knows, shared with the network loop: written by the disk thread around
/// each operation (never across one), read at each renewal.
#[derive(Debug)]
pub struct DiskStatus {
    deadline: Duration,
    record: Mutex<Record>,
}

impl DiskStatus {
    /// A status for operations with `deadline`, before any round.
    pub fn new(deadline: Duration) -> DiskStatus {
        DiskStatus { deadline, record: Mutex::new(Record { in_flight: None, finished: Finished::None, failing_since: None, rounds: 0, finished_rounds: 0 }) }
    }

    fn lock(&self) -> MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The disk's health at `now`: hung while an operation has been running for the deadline
    /// or longer (for as long as it has been running), else how the latest round ended.
    pub fn health(&self, now: Instant) -> DiskHealth {
        let record = self.lock();
        if let Some(op) = &record.in_flight {
            let running = now.saturating_duration_since(op.since);
            if running >= self.deadline {
                return DiskHealth::Hung { path: op.path.clone(), operation: op.operation.as_str().into(), for_seconds: running.as_secs() };
            }
        }
        match &record.finished {
            Finished::None => DiskHealth::Starting,
            Finished::Ok => DiskHealth::Ok,
            Finished::Failed { path, operation, error, .. } => DiskHealth::Failing {
                path: path.clone(),
                operation: operation.as_str().into(),
                error: error.clone(),
                for_seconds: record.failing_since.map_or(0, |since| now.saturating_duration_since(since).as_secs()),
            },
        }
    }

    /// How many rounds have started.
    #[cfg(test)]
    fn rounds(&self) -> u64 {
        self.lock().rounds
    }

    /// How many rounds have started and how many have finished: a round that starts after
    /// `started` has finished once `finished` exceeds it.
    pub fn progress(&self) -> (u64, u64) {
        let record = self.lock();
        (record.rounds, record.finished_rounds)
    }

    fn round_started(&self) -> u64 {
        let mut record = self.lock();
        record.rounds += 1;
        record.rounds
    }

    fn begin(&self, path: &str, operation: Operation, since: Instant) {
        self.lock().in_flight = Some(InFlight { path: path.into(), operation, since });
    }

    fn end(&self) {
        self.lock().in_flight = None;
    }

    fn round_ended(&self, started: Instant, outcome: Finished) {
        let mut record = self.lock();
        record.failing_since = match (&record.finished, &outcome) {
            (Finished::Failed { class: was, .. }, Finished::Failed { class, .. }) if was == class => record.failing_since.or(Some(started)),
            (_, Finished::Failed { .. }) => Some(started),
            (_, Finished::Ok | Finished::None) => None,
        };
        record.finished = outcome;
        record.finished_rounds += 1;
    }
}

/// Runs one round of checks on `disk` and records it in `status`: each step is marked as in
/// flight while it runs; the round stops at the first step that fails or returns after its
/// deadline.
pub fn run_round(disk: &mut dyn Disk, targets: &Targets, status: &DiskStatus, clock: &dyn Clock) {
    let round = status.round_started();
    let started = clock.now();
    let mut steps = vec![Step::ReadOsRelease, Step::StatScratch, Step::WriteHeartbeat, Step::SyncHeartbeat, Step::ReadHeartbeat];
    let mut i = 0;
    while let Some(&step) = steps.get(i) {
        i += 1;
        let path = targets.of(step);
        let since = clock.now();
        status.begin(path, step.operation(), since);
        let result = disk.perform(step, round);
        let took = clock.now().saturating_duration_since(since);
        status.end();
        let failure = match result {
            Err(e) if step == Step::StatScratch && e.kind() == io::ErrorKind::NotFound => {
                steps.insert(i, Step::CreateScratch);
                continue;
            }
            Err(e) => Some((e.to_string(), FailureClass::of(&e))),
            Ok(()) if took >= status.deadline => {
                Some((format!("returned after {}s, over the {} deadline", took.as_secs(), humantime::format_duration(status.deadline)), FailureClass::Late))
            }
            Ok(()) => None,
        };
        if let Some((error, class)) = failure {
            tracing::debug!(round, path, operation = step.operation().as_str(), %error, "disk check failed");
            status.round_ended(started, Finished::Failed { path: path.into(), operation: step.operation(), error, class });
            return;
        }
    }
    status.round_ended(started, Finished::Ok);
}

/// The disk loop's thread; dropping the handle stops it after its current operation (if that
/// never returns, the thread stays blocked, as any thread would).
#[derive(Debug)]
pub struct DiskLoop {
    _stop: mpsc::Sender<()>,
}

impl DiskLoop {
    /// Starts the loop on a thread of its own, recording in `status`: a round every `interval`
    /// (the next at once if one ended late), each operation with `status`'s deadline.
    pub fn spawn(mut disk: Box<dyn Disk>, targets: Targets, status: Arc<DiskStatus>, interval: Duration, clock: Arc<dyn Clock>) -> io::Result<DiskLoop> {
        let (stop, stopped) = mpsc::channel::<()>();
        std::thread::Builder::new().name("disk-loop".into()).spawn(move || {
            loop {
                let started = clock.now();
                run_round(disk.as_mut(), &targets, &status, clock.as_ref());
                let wait = (started + interval).saturating_duration_since(clock.now());
                match stopped.recv_timeout(wait) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
        })?;
        Ok(DiskLoop { _stop: stop })
    }
}

/// The host's disk, reached through `--host-root`.
#[derive(Debug)]
pub struct HostDisk {
    os_release: PathBuf,
    scratch_dir: PathBuf,
    heartbeat: PathBuf,
    /// The heartbeat file between its write and its fsync.
    written: Option<File>,
    /// What the latest write put in it.
    content: Vec<u8>,
}

/// `host_path` as the container sees it: under `host_root`.
pub fn in_container(host_root: &Path, host_path: &str) -> PathBuf {
    host_root.join(host_path.trim_start_matches('/'))
}

impl HostDisk {
    /// The disk of `targets`, under `host_root`; the scratch directory at `scratch_mount` when
    /// it is mounted elsewhere. Relative flags are made absolute now: the network loop later
    /// changes the working directory (`lease::client`).
    pub fn new(host_root: &Path, scratch_mount: Option<&Path>, targets: &Targets) -> HostDisk {
        let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        let host_root = &absolute(host_root);
        let scratch_dir = scratch_mount.map_or_else(|| in_container(host_root, &targets.scratch_dir), absolute);
        HostDisk {
            os_release: in_container(host_root, &targets.os_release),
            heartbeat: scratch_dir.join(HEARTBEAT_FILE),
            scratch_dir,
            written: None,
            content: Vec::new(),
        }
    }
}

impl HostDisk {
    /// Where the scratch directory (or, while it does not exist, its nearest existing ancestor)
    /// is on a read-only filesystem at start, that place: every round would then fail with EROFS,
    /// which pulsecheck reads as a dead disk. At start the fault is the configuration's (the
    /// container's read-only root filesystem, a scratch dir left unmounted), not the node's — a
    /// disk that never worked for this agent is no evidence, so the agent refuses to run.
    pub fn read_only_scratch(&self) -> Option<PathBuf> {
        let mut at = self.scratch_dir.as_path();
        loop {
            match nix::sys::statvfs::statvfs(at) {
                Ok(fs) => return fs.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY).then(|| at.to_path_buf()),
                Err(_) => at = at.parent()?,
            }
        }
    }
}

impl Disk for HostDisk {
    fn perform(&mut self, step: Step, round: u64) -> io::Result<()> {
        // Every file is closed inside the step that used it: a close on a hung disk can block
        // too (FUSE flushes), and it must count as part of a marked operation.
        match step {
            Step::ReadOsRelease => {
                let mut content = Vec::with_capacity(4096);
                File::open(&self.os_release)?.take(OS_RELEASE_LIMIT).read_to_end(&mut content)?;
                Ok(())
            }
            Step::StatScratch => {
                if fs::metadata(&self.scratch_dir)?.is_dir() {
                    Ok(())
                } else {
                    Err(io::Error::new(io::ErrorKind::NotADirectory, "not a directory"))
                }
            }
            Step::CreateScratch => fs::create_dir_all(&self.scratch_dir),
            Step::WriteHeartbeat => {
                self.written = None;
                self.content = format!("pulsecheck-agent heartbeat, round {round}, pid {}\n", std::process::id()).into_bytes();
                let mut file = OpenOptions::new().write(true).create(true).truncate(true).open(&self.heartbeat)?;
                file.write_all(&self.content)?;
                self.written = Some(file);
                Ok(())
            }
            Step::SyncHeartbeat => {
                let file = self.written.take().ok_or_else(|| io::Error::other("no heartbeat file written this round"))?;
                file.sync_all()?;
                drop(file);
                Ok(())
            }
            Step::ReadHeartbeat => {
                let read = fs::read(&self.heartbeat)?;
                if read == self.content {
                    Ok(())
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("read back {} bytes that differ from the {} written", read.len(), self.content.len()),
                    ))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clock the test moves.
    #[derive(Debug)]
    struct FakeClock(Mutex<Instant>);

    impl FakeClock {
        fn new() -> Arc<FakeClock> {
            Arc::new(FakeClock(Mutex::new(Instant::now())))
        }
        fn advance(&self, by: Duration) {
            *self.0.lock().unwrap() += by;
        }
    }

    impl Clock for FakeClock {
        fn now(&self) -> Instant {
            *self.0.lock().unwrap()
        }
    }

    /// What the fake disk does at a step.
    enum Behaviour {
        Succeed,
        /// Fail with this errno.
        Fail(i32),
        /// Take this long (by the fake clock), then succeed.
        Take(Duration),
    }

    /// A disk whose steps do what the test says; records the steps performed.
    struct ScriptedDisk {
        clock: Arc<FakeClock>,
        rule: Box<dyn FnMut(Step) -> Behaviour + Send>,
        performed: Arc<Mutex<Vec<Step>>>,
    }

    impl Disk for ScriptedDisk {
        fn perform(&mut self, step: Step, _round: u64) -> io::Result<()> {
            self.performed.lock().unwrap().push(step);
            match (self.rule)(step) {
                Behaviour::Succeed => Ok(()),
                Behaviour::Fail(errno) => Err(io::Error::from_raw_os_error(errno)),
                Behaviour::Take(d) => {
                    self.clock.advance(d);
                    Ok(())
                }
            }
        }
    }

    fn args() -> DiskArgs {
        DiskArgs {
            host_root: "/host".into(),
            os_release: "/etc/os-release".into(),
            scratch_dir: "/var/lib/kubelet/pulsecheck-agent".into(),
            scratch_mount: None,
            disk_interval: Duration::from_secs(5),
            disk_deadline: Duration::from_secs(10),
        }
    }

    fn targets() -> Targets {
        Targets::from_args(&args())
    }

    const DEADLINE: Duration = Duration::from_secs(10);

    const EIO: i32 = 5;
    const ENOENT: i32 = 2;
    const EACCES: i32 = 13;
    const ENOSPC: i32 = 28;

    #[test]
    fn health_goes_from_starting_to_ok_to_failing_and_back_with_the_streak_timed_by_the_monotonic_clock() {
        let clock = FakeClock::new();
        let status = DiskStatus::new(DEADLINE);
        assert_eq!(status.health(clock.now()), DiskHealth::Starting);
        let failing = Arc::new(Mutex::new(None::<Step>));
        let mut disk = ScriptedDisk {
            clock: clock.clone(),
            rule: {
                let failing = failing.clone();
                Box::new(move |step| if *failing.lock().unwrap() == Some(step) { Behaviour::Fail(EACCES) } else { Behaviour::Succeed })
            },
            performed: Default::default(),
        };
        let targets = targets();

        run_round(&mut disk, &targets, &status, clock.as_ref());
        assert_eq!(status.health(clock.now()), DiskHealth::Ok);
        assert_eq!(*disk.performed.lock().unwrap(), [Step::ReadOsRelease, Step::StatScratch, Step::WriteHeartbeat, Step::SyncHeartbeat, Step::ReadHeartbeat]);

        // fsync starts failing: the round stops there, and the streak is timed from the start
        // of its first round, whatever rounds follow.
        *failing.lock().unwrap() = Some(Step::SyncHeartbeat);
        clock.advance(Duration::from_secs(5));
        run_round(&mut disk, &targets, &status, clock.as_ref());
        let failing_health = |for_seconds| DiskHealth::Failing {
            path: "/var/lib/kubelet/pulsecheck-agent/heartbeat".into(),
            operation: "fsync".into(),
            error: "Permission denied (os error 13)".into(),
            for_seconds,
        };
        assert_eq!(status.health(clock.now()), failing_health(0));
        assert_eq!(disk.performed.lock().unwrap().last(), Some(&Step::SyncHeartbeat), "no read-back after a failed fsync");
        clock.advance(Duration::from_secs(5));
        run_round(&mut disk, &targets, &status, clock.as_ref());
        clock.advance(Duration::from_millis(2500));
        assert_eq!(status.health(clock.now()), failing_health(7));

        // A fully successful round ends the streak.
        *failing.lock().unwrap() = None;
        run_round(&mut disk, &targets, &status, clock.as_ref());
        assert_eq!(status.health(clock.now()), DiskHealth::Ok);
        // A new streak starts from zero, on the path that fails now.
        *failing.lock().unwrap() = Some(Step::ReadOsRelease);
        clock.advance(Duration::from_secs(60));
        run_round(&mut disk, &targets, &status, clock.as_ref());
        assert!(matches!(status.health(clock.now()), DiskHealth::Failing { ref path, for_seconds: 0, .. } if path == "/etc/os-release"));
        assert_eq!(status.rounds(), 5);
    }

    #[test]
    fn a_failing_streak_is_timed_from_the_first_round_of_the_error_it_reports_now() {
        // Ten minutes of a full disk (supporting only), then one EIO: the report must say EIO
        // for as long as the EIO lasts, not for the ten minutes, or one transient EIO after a
        // long ENOSPC streak would condemn the node at once.
        let clock = FakeClock::new();
        let status = DiskStatus::new(DEADLINE);
        let error = Arc::new(Mutex::new(ENOSPC));
        let mut disk = ScriptedDisk {
            clock: clock.clone(),
            rule: {
                let error = error.clone();
                Box::new(move |step| if step == Step::WriteHeartbeat { Behaviour::Fail(*error.lock().unwrap()) } else { Behaviour::Succeed })
            },
            performed: Default::default(),
        };
        let targets = targets();
        for _ in 0..120 {
            run_round(&mut disk, &targets, &status, clock.as_ref());
            clock.advance(Duration::from_secs(5));
        }
        assert!(matches!(status.health(clock.now()), DiskHealth::Failing { for_seconds: 600, ref error, .. } if error.contains("(os error 28)")));
        *error.lock().unwrap() = EIO;
        run_round(&mut disk, &targets, &status, clock.as_ref());
        clock.advance(Duration::from_secs(2));
        let DiskHealth::Failing { error: now, for_seconds, .. } = status.health(clock.now()) else { panic!("not failing") };
        assert_eq!((now.as_str(), for_seconds), ("Input/output error (os error 5)", 2));
        clock.advance(Duration::from_secs(3));
        run_round(&mut disk, &targets, &status, clock.as_ref());
        assert!(matches!(status.health(clock.now()), DiskHealth::Failing { for_seconds: 5, .. }), "the EIO streak goes on: {:?}", status.health(clock.now()));
    }

    #[test]
    fn an_io_error_is_reported_as_the_os_puts_it_on_the_host_path() {
        let clock = FakeClock::new();
        let status = DiskStatus::new(DEADLINE);
        let mut disk = ScriptedDisk {
            clock: clock.clone(),
            rule: Box::new(|step| if step == Step::ReadOsRelease { Behaviour::Fail(EIO) } else { Behaviour::Succeed }),
            performed: Default::default(),
        };
        run_round(&mut disk, &targets(), &status, clock.as_ref());
        let DiskHealth::Failing { path, operation, error, .. } = status.health(clock.now()) else { panic!("not failing") };
        assert_eq!((path.as_str(), operation.as_str()), ("/etc/os-release", "read"));
        assert_eq!(error, "Input/output error (os error 5)");
    }

    #[test]
    fn a_missing_scratch_dir_is_created_and_an_operation_over_its_deadline_fails_the_round() {
        let clock = FakeClock::new();
        let status = DiskStatus::new(DEADLINE);
        let mut created = false;
        let mut disk = ScriptedDisk {
            clock: clock.clone(),
            rule: Box::new(move |step| match step {
                Step::StatScratch if !created => Behaviour::Fail(ENOENT),
                Step::CreateScratch => {
                    created = true;
                    Behaviour::Succeed
                }
                _ => Behaviour::Succeed,
            }),
            performed: Default::default(),
        };
        let targets = targets();
        run_round(&mut disk, &targets, &status, clock.as_ref());
        assert_eq!(status.health(clock.now()), DiskHealth::Ok);
        assert_eq!(disk.performed.lock().unwrap()[..3], [Step::ReadOsRelease, Step::StatScratch, Step::CreateScratch]);

        // A write that takes 12 s, though it succeeds, fails the round: the disk is too slow.
        disk.rule = Box::new(|step| if step == Step::WriteHeartbeat { Behaviour::Take(Duration::from_secs(12)) } else { Behaviour::Succeed });
        run_round(&mut disk, &targets, &status, clock.as_ref());
        let DiskHealth::Failing { operation, error, for_seconds, .. } = status.health(clock.now()) else {
            panic!("not failing: {:?}", status.health(clock.now()))
        };
        assert_eq!((operation.as_str(), for_seconds), ("write", 12));
        assert!(error.contains("12s") && error.contains("10s deadline"), "{error}");
    }

    /// A disk whose os-release read blocks until the test sends it a result.
    struct BlockingDisk {
        release: mpsc::Receiver<io::Result<()>>,
        reads: Arc<Mutex<u64>>,
    }

    impl Disk for BlockingDisk {
        fn perform(&mut self, step: Step, _round: u64) -> io::Result<()> {
            if step != Step::ReadOsRelease {
                return Ok(());
            }
            *self.reads.lock().unwrap() += 1;
            // The first read blocks; later ones return at once (the disk recovered).
            match self.release.recv() {
                Ok(result) => result,
                Err(mpsc::RecvError) => Ok(()),
            }
        }
    }

    fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_stuck_operation_is_hung_for_as_long_as_it_has_not_returned_and_no_other_round_starts_meanwhile() {
        let clock = FakeClock::new();
        let status = Arc::new(DiskStatus::new(DEADLINE));
        let (release, released) = mpsc::channel();
        let reads = Arc::new(Mutex::new(0));
        let disk = BlockingDisk { release: released, reads: reads.clone() };
        // A round every millisecond of the fake clock: any round that could start would.
        let running = DiskLoop::spawn(Box::new(disk), targets(), status.clone(), Duration::from_millis(1), clock.clone()).unwrap();
        wait_for("the first read to start", || *reads.lock().unwrap() == 1);
        // Within the deadline, still starting.
        clock.advance(Duration::from_secs(9));
        assert_eq!(status.health(clock.now()), DiskHealth::Starting);
        clock.advance(Duration::from_secs(1));
        let hung = |for_seconds| DiskHealth::Hung { path: "/etc/os-release".into(), operation: "read".into(), for_seconds };
        assert_eq!(status.health(clock.now()), hung(10));
        clock.advance(Duration::from_secs(35));
        assert_eq!(status.health(clock.now()), hung(45));
        // The same one operation all along: no second round, no second read.
        assert_eq!((*reads.lock().unwrap(), status.rounds()), (1, 1));

        // It returns with an error: the round fails (its streak began when the round began),
        // and the next round starts at once, since it is overdue.
        release.send(Err(io::Error::from_raw_os_error(EIO))).unwrap();
        wait_for("the next round", || status.rounds() >= 2);
        // The second read blocks as well, but only just started: the first round's end shows.
        assert!(
            matches!(status.health(clock.now()), DiskHealth::Failing { ref operation, for_seconds: 45, .. } if operation == "read"),
            "{:?}",
            status.health(clock.now())
        );
        // The disk recovers: rounds resume and end ok.
        drop(release);
        wait_for("a successful round", || status.health(clock.now()) == DiskHealth::Ok);
        drop(running);
    }

    #[test]
    fn host_paths_must_be_absolute_and_stay_under_the_host_root() {
        assert_eq!(host_path("/etc/os-release").as_deref(), Ok("/etc/os-release"));
        assert_eq!(host_path("/var/lib/kubelet/x/").as_deref(), Ok("/var/lib/kubelet/x"));
        assert!(host_path("etc/os-release").unwrap_err().contains("absolute"));
        assert!(host_path("/var/../etc").unwrap_err().contains(".."));
        assert_eq!(in_container(Path::new("/host"), "/etc/os-release"), PathBuf::from("/host/etc/os-release"));
        assert_eq!(targets().heartbeat, "/var/lib/kubelet/pulsecheck-agent/heartbeat");
    }

    #[test]
    fn the_host_disk_writes_syncs_and_reads_back_its_heartbeat() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("etc")).unwrap();
        fs::write(root.path().join("etc/os-release"), "ID=lab\n").unwrap();
        let targets = targets();
        let status = DiskStatus::new(DEADLINE);
        let mut disk = HostDisk::new(root.path(), None, &targets);
        run_round(&mut disk, &targets, &status, &SystemClock);
        assert_eq!(status.health(Instant::now()), DiskHealth::Ok);
        let heartbeat = fs::read_to_string(root.path().join("var/lib/kubelet/pulsecheck-agent/heartbeat")).unwrap();
        assert!(heartbeat.starts_with("pulsecheck-agent heartbeat, round 1"), "{heartbeat}");
        fs::remove_file(root.path().join("etc/os-release")).unwrap();
        run_round(&mut disk, &targets, &status, &SystemClock);
        assert!(matches!(status.health(Instant::now()), DiskHealth::Failing { ref error, .. } if error.contains("No such file")));
    }

    #[test]
    fn a_scratch_dir_mounted_elsewhere_is_written_there_and_named_by_its_host_path() {
        let root = tempfile::tempdir().unwrap();
        let mount = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("etc")).unwrap();
        fs::write(root.path().join("etc/os-release"), "ID=lab\n").unwrap();
        let host = "/var/lib/kubelet/pods/u-1/volumes/kubernetes.io~empty-dir/scratch";
        let targets = Targets::from_args(&DiskArgs { scratch_dir: host.into(), scratch_mount: Some(mount.path().into()), ..args() });
        let status = DiskStatus::new(DEADLINE);
        let mut disk = HostDisk::new(root.path(), Some(mount.path()), &targets);
        run_round(&mut disk, &targets, &status, &SystemClock);
        assert_eq!(status.health(Instant::now()), DiskHealth::Ok);
        assert!(fs::read_to_string(mount.path().join(HEARTBEAT_FILE)).unwrap().starts_with("pulsecheck-agent heartbeat"));
        assert!(!root.path().join("var").exists(), "nothing written under the host root");
        // A failure there names the host path, not the container's.
        fs::remove_file(mount.path().join(HEARTBEAT_FILE)).unwrap();
        fs::create_dir(mount.path().join(HEARTBEAT_FILE)).unwrap();
        run_round(&mut disk, &targets, &status, &SystemClock);
        assert!(
            matches!(status.health(Instant::now()), DiskHealth::Failing { ref path, .. } if path == &format!("{host}/{HEARTBEAT_FILE}")),
            "{:?}",
            status.health(Instant::now())
        );
    }
}
