//! The agent binary against a real kube-apiserver and a real (FUSE) disk that can be made to
//! hang or fail: what an operator sees in the agent's Lease — `ok`, `hung` with the host path
//! and a growing `forSeconds` while renewals go on, `failing` with the OS's error, and
//! `terminating` on SIGTERM — with no more rights than the chart grants (leases get, create,
//! update in its namespace).

use std::{
    collections::BTreeMap,
    future::Future,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    time::Duration,
};

use k8s_openapi::{
    api::{
        coordination::v1::{Lease, LeaseSpec},
        core::v1::{Container, Pod, PodSpec},
        rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject},
    },
    apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference},
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api,
    api::{DeleteParams, ObjectMeta, PostParams},
};
use pulsecheck::agent::{COMPONENT, COMPONENT_LABEL, DiskHealth, REPORT_ANNOTATION, Report, lease_name};
use pulsecheck_lab::{
    controlplane::ControlPlane,
    faultfs::{DiskFault, FaultDisk},
};
use tokio::time::Instant;

const NAMESPACE: &str = "pulsecheck";
const NODE: &str = "node-a";
const AGENT: &str = env!("CARGO_BIN_EXE_pulsecheck-agent");
/// Upper bound of every wait.
const WAIT: Duration = Duration::from_secs(30);

/// The compressed timings the agent runs with here (the lease duration long enough that a
/// renewal delayed on a loaded machine never looks like a holder gone silent).
const FAST: &[&str] = &["--renew-interval=1s", "--lease-duration=8s", "--request-timeout=5s", "--disk-interval=200ms", "--disk-deadline=1s"];

/// The host paths the agent operates on.
const OS_RELEASE: &str = "/etc/os-release";
const SCRATCH: &str = "/var/lib/kubelet/pulsecheck-agent";
const HEARTBEAT: &str = "/var/lib/kubelet/pulsecheck-agent/heartbeat";

fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Polls `check` every 100 ms until it returns `Some`, or panics after `timeout` naming `what`.
async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The agent's Lease, if it exists.
async fn lease(leases: &Api<Lease>) -> Option<Lease> {
    leases.get_opt(&lease_name(NODE).unwrap()).await.expect("read the agent Lease")
}

fn report_of(lease: &Lease) -> Option<Report> {
    let value = lease.metadata.annotations.as_ref()?.get(REPORT_ANNOTATION)?;
    Some(Report::from_annotation(value).expect("the report parses"))
}

fn renewed_at(lease: &Lease) -> Timestamp {
    lease.spec.as_ref().and_then(|s| s.renew_time.as_ref()).map(|t| t.0).expect("renewTime set")
}

/// Waits until the Lease's report satisfies `check`, and returns the Lease and its report.
async fn wait_report(leases: &Api<Lease>, what: &str, check: impl Fn(&Report) -> bool) -> (Lease, Report) {
    let check = &check;
    eventually(what, WAIT, || async move {
        let lease = lease(leases).await?;
        let report = report_of(&lease)?;
        check(&report).then_some((lease, report))
    })
    .await
}

async fn create_pod(pods: &Api<Pod>, name: &str) -> Pod {
    let pod = Pod {
        metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
        spec: Some(PodSpec {
            node_name: Some(NODE.into()),
            containers: vec![Container { name: "agent".into(), image: Some("pulsecheck:test".into()), ..Default::default() }],
            ..Default::default()
        }),
        ..Default::default()
    };
    pods.create(&PostParams::default(), &pod).await.expect("create a Pod")
}

/// A kubeconfig for a ServiceAccount with exactly the agent's rights: leases get, create and
/// update in its namespace.
async fn agent_kubeconfig(cp: &ControlPlane, dir: &Path) -> PathBuf {
    let token = cp.service_account_token(NAMESPACE, "pulsecheck-agent").await.expect("token for the agent's ServiceAccount");
    let role = Role {
        metadata: ObjectMeta { name: Some("pulsecheck-agent".into()), ..Default::default() },
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["coordination.k8s.io".into()]),
            resources: Some(vec!["leases".into()]),
            // The chart's Role: delete is what OwnerReferencesPermissionEnforcement (on in the
            // lab) asks of a write that changes the Lease's owners.
            verbs: vec!["get".into(), "create".into(), "update".into(), "delete".into()],
            ..Default::default()
        }]),
    };
    Api::<Role>::namespaced(cp.client(), NAMESPACE).create(&PostParams::default(), &role).await.expect("create the Role");
    let binding = RoleBinding {
        metadata: ObjectMeta { name: Some("pulsecheck-agent".into()), ..Default::default() },
        role_ref: RoleRef { api_group: "rbac.authorization.k8s.io".into(), kind: "Role".into(), name: "pulsecheck-agent".into() },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: "pulsecheck-agent".into(),
            namespace: Some(NAMESPACE.into()),
            ..Default::default()
        }]),
    };
    Api::<RoleBinding>::namespaced(cp.client(), NAMESPACE).create(&PostParams::default(), &binding).await.expect("create the RoleBinding");
    let path = dir.join("agent.kubeconfig");
    cp.write_kubeconfig_for_token(&token, &path).expect("write the agent's kubeconfig");
    path
}

/// The agent process; prints its log if the test fails.
struct Agent {
    child: tokio::process::Child,
    log: PathBuf,
}

impl Agent {
    fn start(kubeconfig: &Path, host_root: &Path, pod: &Pod, log: PathBuf) -> Agent {
        Agent::start_with(kubeconfig, host_root, pod, log, &[])
    }

    /// Started with `extra` arguments too.
    fn start_with(kubeconfig: &Path, host_root: &Path, pod: &Pod, log: PathBuf, extra: &[&str]) -> Agent {
        let stderr = std::fs::File::create(&log).expect("create the agent's log file");
        let child = tokio::process::Command::new(AGENT)
            .args(["--node-name", NODE, "--namespace", NAMESPACE, "--log-filter", "info,pulsecheck_agent=debug"])
            .arg("--pod-name")
            .arg(pod.metadata.name.as_deref().unwrap())
            .arg("--pod-uid")
            .arg(pod.metadata.uid.as_deref().unwrap())
            .arg("--host-root")
            .arg(host_root)
            .args(FAST)
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("start pulsecheck-agent");
        Agent { child, log }
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("the agent runs")
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("poll the agent")
    }

    /// Sends `signal` to the agent.
    fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(i32::try_from(self.pid()).unwrap()), signal).unwrap_or_else(|e| panic!("{signal}: {e}"));
    }

    /// Waits until the agent's log contains `text`.
    async fn logged(&self, text: &str) {
        eventually(&format!("the agent's log says {text:?}"), WAIT, || {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            async move { log.contains(text).then_some(()) }
        })
        .await;
    }

    /// Waits for the agent to exit after a SIGTERM, and checks it exited 0.
    async fn terminated(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let status = eventually("the agent exits after SIGTERM", Duration::from_secs(15), || {
            let exited = self.exited();
            async move { exited }
        })
        .await;
        assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("AGENT_TEST_SHOW_LOG").is_some() {
            eprintln!("--- pulsecheck-agent log ---\n{}", std::fs::read_to_string(&self.log).unwrap_or_default());
        }
    }
}

/// Resident memory (kB) and CPU time (s, user + system) of process `pid`, from /proc.
fn usage(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command (which may contain spaces), counted from field 3.
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // /proc counts CPU time in USER_HZ ticks: 100 per second on Linux.
    (rss, ticks as f64 / 100.0)
}

/// A host root under `dir` whose `/etc/os-release` and `/var/lib/kubelet` are served through a
/// fault switch (the FUSE disk, over `dir/backing`): the host root and the mounted disk.
fn fault_host(dir: &Path) -> (PathBuf, FaultDisk) {
    let backing = dir.join("backing");
    let host = dir.join("host");
    std::fs::create_dir_all(backing.join("etc")).unwrap();
    std::fs::create_dir_all(backing.join("var/lib/kubelet")).unwrap();
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(backing.join("etc/os-release"), "PRETTY_NAME=\"Lab Linux\"\nID=lab\n").unwrap();
    let disk = FaultDisk::mount(&backing, &host).expect("mount the fault disk (needs root and /dev/fuse)");
    (host, disk)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_lease_reports_ok_then_a_hung_disk_then_an_io_error_and_terminating_once_the_disk_is_fine_after_sigterm() {
    init();
    let cp = ControlPlane::start(Default::default()).await.expect("control plane starts");
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = agent_kubeconfig(&cp, dir.path()).await;
    let pods: Api<Pod> = Api::namespaced(cp.client(), NAMESPACE);
    let leases: Api<Lease> = Api::namespaced(cp.client(), NAMESPACE);
    let old_pod = create_pod(&pods, "pulsecheck-agent-old").await;
    let pod = create_pod(&pods, "pulsecheck-agent-new").await;
    let (pod_name, pod_uid) = (pod.metadata.name.clone().unwrap(), pod.metadata.uid.clone().unwrap());

    // The Lease of the node's previous agent Pod is there already, its last word "terminating"
    // (a rollout stopped it): the new agent takes it over.
    let old_owner = OwnerReference {
        api_version: "v1".into(),
        kind: "Pod".into(),
        name: "pulsecheck-agent-old".into(),
        uid: old_pod.metadata.uid.clone().unwrap(),
        ..Default::default()
    };
    let last_word = Report { disk: DiskHealth::Ok, terminating: true }.to_annotation();
    let previous = Lease {
        metadata: ObjectMeta {
            name: lease_name(NODE),
            owner_references: Some(vec![old_owner]),
            annotations: Some(BTreeMap::from([(REPORT_ANNOTATION.to_string(), last_word)])),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some("pulsecheck-agent-old".into()),
            lease_duration_seconds: Some(40),
            renew_time: Some(MicroTime(Timestamp::now())),
            lease_transitions: Some(0),
            ..Default::default()
        }),
    };
    leases.create(&PostParams::default(), &previous).await.expect("create the old agent's Lease");

    // The host's disk: /etc/os-release and the kubelet's dir, served through a fault switch.
    // The scratch dir does not exist yet: the agent creates it.
    let (host, disk) = fault_host(dir.path());
    let switch = disk.switch().clone();

    let mut agent = Agent::start(&kubeconfig, &host, &pod, dir.path().join("agent.log"));
    let pid = agent.pid();

    // Taken over: held and owned by the new Pod only, labelled, and the disk is ok.
    let (taken, _) = wait_report(&leases, "the new agent reports ok", |r| r.disk == DiskHealth::Ok && !r.terminating).await;
    let labels = taken.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("app.kubernetes.io/name").map(String::as_str), Some("pulsecheck"), "{labels:?}");
    assert_eq!(labels.get(COMPONENT_LABEL).map(String::as_str), Some(COMPONENT), "{labels:?}");
    let owned_by: Vec<(String, String, String, String)> =
        taken.metadata.owner_references.clone().unwrap_or_default().into_iter().map(|o| (o.api_version, o.kind, o.name, o.uid)).collect();
    assert_eq!(owned_by, [("v1".to_string(), "Pod".to_string(), pod_name.clone(), pod_uid.clone())]);
    let spec = taken.spec.clone().unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some(pod_name.as_str()));
    assert_eq!((spec.lease_duration_seconds, spec.lease_transitions), (Some(8), Some(1)));
    let heartbeat = std::fs::read_to_string(dir.path().join("backing").join(HEARTBEAT.trim_start_matches('/'))).expect("the heartbeat file is written");
    assert!(heartbeat.starts_with("pulsecheck-agent heartbeat"), "{heartbeat}");
    // It runs from memory, not from its file.
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert!(exe.to_string_lossy().starts_with("/memfd:pulsecheck-agent"), "the agent runs from {}", exe.display());

    // Renewed, again and again.
    let first = renewed_at(&taken);
    eventually("renewTime advances", WAIT, || {
        let leases = leases.clone();
        async move { lease(&leases).await.filter(|l| renewed_at(l) > first) }
    })
    .await;
    let (cpu_start, wall_start) = (usage(pid).1, Instant::now());

    // Someone else writes the Lease meanwhile (its update conflicts with the agent's next one):
    // the agent reads it again and goes on, keeping the other writer's annotation.
    let noted = eventually("another writer's update goes through", WAIT, || {
        let leases = leases.clone();
        async move {
            let mut l = lease(&leases).await?;
            l.metadata.annotations.get_or_insert_default().insert("example.com/note".into(), "kept".into());
            // A 409 when the agent renewed in between: read again and retry.
            leases.replace(&lease_name(NODE).unwrap(), &PostParams::default(), &l).await.ok()
        }
    })
    .await;
    let after_note = renewed_at(&noted);
    eventually("a renewal after the other write, keeping its annotation", WAIT, || {
        let leases = leases.clone();
        async move {
            let l = lease(&leases).await?;
            (renewed_at(&l) > after_note && l.metadata.annotations.as_ref()?.get("example.com/note").map(String::as_str) == Some("kept")).then_some(())
        }
    })
    .await;
    eventually("the agent's log tells of the conflict", WAIT, || {
        let log = std::fs::read_to_string(&agent.log).unwrap_or_default();
        async move { log.contains("changed since it was read").then_some(()) }
    })
    .await;

    // The Lease is deleted: the agent creates it again.
    let old_uid = noted.metadata.uid.clone();
    leases.delete(&lease_name(NODE).unwrap(), &DeleteParams::default()).await.expect("delete the Lease");
    eventually("the Lease is created again", WAIT, || {
        let leases = leases.clone();
        let old_uid = old_uid.clone();
        async move { lease(&leases).await.filter(|l| l.metadata.uid != old_uid && report_of(l).is_some()) }
    })
    .await;

    // The disk hangs: the Lease goes on being renewed, says which operation on which host
    // path has not returned, and for how long, growing.
    switch.set(DiskFault::Hang);
    let (hung_lease, hung) = wait_report(&leases, "the report says hung", |r| matches!(r.disk, DiskHealth::Hung { .. })).await;
    let DiskHealth::Hung { path, operation, for_seconds } = hung.disk.clone() else { unreachable!() };
    assert!([OS_RELEASE, SCRATCH, HEARTBEAT].contains(&path.as_str()), "a host path, not the container's: {path}");
    assert!(["read", "stat", "write", "fsync"].contains(&operation.as_str()), "{operation}");
    let hung_since = renewed_at(&hung_lease);
    let (later, _) = wait_report(
        &leases,
        "forSeconds grows while the disk hangs",
        |r| matches!(&r.disk, DiskHealth::Hung { path: p, operation: o, for_seconds: f } if *p == path && *o == operation && *f >= for_seconds + 2),
    )
    .await;
    assert!(renewed_at(&later) > hung_since, "renewals go on while the disk hangs");
    // One operation stuck on the disk, not one per round.
    assert_eq!(switch.blocked(), 1, "operations blocked on the hung disk");
    let (rss_kb, cpu_end) = usage(pid);
    let wall = wall_start.elapsed().as_secs_f64();
    eprintln!(
        "pulsecheck-agent (this build's profile) RSS {rss_kb} kB while the disk hangs; CPU {:.2} s over {wall:.1} s ({:.2} %) with a renewal every 1 s and a disk round every 200 ms",
        cpu_end - cpu_start,
        100.0 * (cpu_end - cpu_start) / wall
    );

    // The disk recovers: ok again.
    switch.set(DiskFault::Healthy);
    wait_report(&leases, "ok once the disk recovers", |r| r.disk == DiskHealth::Ok).await;

    // /etc/os-release fails with EIO (cadvisor's osImage "Unknown"): failing, with the error.
    switch.fail_file("etc/os-release", true);
    let (_, failing) = wait_report(&leases, "the report says failing", |r| matches!(r.disk, DiskHealth::Failing { .. })).await;
    let DiskHealth::Failing { path, operation, error, .. } = failing.disk else { unreachable!() };
    assert_eq!((path.as_str(), operation.as_str()), (OS_RELEASE, "read"));
    assert!(error.contains("Input/output error"), "{error}");
    let (still_failing, _) =
        wait_report(&leases, "failing for a growing time", |r| matches!(r.disk, DiskHealth::Failing { for_seconds, .. } if for_seconds >= 2)).await;

    // SIGTERM while the disk fails: the agent stays and goes on reporting the failure (a
    // "terminating" would be no evidence), however many renewals pass.
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    agent.logged("asked to stop while the disk is in trouble").await;
    let mut seen = renewed_at(&lease(&leases).await.unwrap());
    for _ in 0..3 {
        let before = seen;
        let renewed = eventually("a renewal after SIGTERM", WAIT, || {
            let leases = leases.clone();
            async move { lease(&leases).await.filter(|l| renewed_at(l) > before) }
        })
        .await;
        let report = report_of(&renewed).unwrap();
        assert!(matches!(report.disk, DiskHealth::Failing { .. }) && !report.terminating, "{report:?}");
        seen = renewed_at(&renewed);
    }
    assert!(seen > renewed_at(&still_failing));
    assert!(agent.exited().is_none(), "the agent stays while its disk fails");
    // Staying, its Lease is no longer its Pod's: killed and its Pod deleted, the agent would be
    // silent (its node never released on unconfirmed health), not absent.
    assert_eq!(owners(&lease(&leases).await.unwrap()), Vec::<String>::new(), "the Lease of an agent staying through trouble");

    // The file reads again: now the agent stops, its last word "terminating", and exits 0.
    switch.fail_file("etc/os-release", false);
    let status = eventually("the agent exits once its disk is fine", WAIT, || {
        let exited = agent.exited();
        async move { exited }
    })
    .await;
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
    let (last_lease, last) = wait_report(&leases, "the report says terminating", |r| r.terminating).await;
    assert_eq!(last.disk, DiskHealth::Ok);
    agent.logged("the disk answers: stopping").await;
    // Going away with the disk fine, the Lease is its Pod's again: collected with it.
    assert_eq!(owners(&last_lease), [pod_name.as_str()]);

    drop(agent);
    drop(disk);
    cp.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_stopped_while_its_disk_hangs_goes_on_reporting_the_hang_and_a_second_signal_leaves_it_reported() {
    init();
    let cp = ControlPlane::start(Default::default()).await.expect("control plane starts");
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = agent_kubeconfig(&cp, dir.path()).await;
    let pods: Api<Pod> = Api::namespaced(cp.client(), NAMESPACE);
    let leases: Api<Lease> = Api::namespaced(cp.client(), NAMESPACE);
    let pod = create_pod(&pods, "pulsecheck-agent-hung").await;
    let (host, disk) = fault_host(dir.path());
    let mut agent = Agent::start(&kubeconfig, &host, &pod, dir.path().join("agent.log"));
    wait_report(&leases, "the agent reports ok", |r| r.disk == DiskHealth::Ok).await;

    // The disk hangs, and at that very moment the agent is stopped (the Pod deleted, the
    // DaemonSet rolled): its disk still looks fine, no operation has outlasted its deadline yet.
    // It waits for a round started after the signal, finds the hang, stays, and the hang it
    // reports goes on growing.
    let before = lease(&leases).await.unwrap();
    disk.switch().set(DiskFault::Hang);
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    let hung_for = |r: &Report| match r.disk {
        DiskHealth::Hung { for_seconds, .. } => for_seconds,
        _ => 0,
    };
    let (hung, _) = wait_report(&leases, "the report says hung", |r| matches!(r.disk, DiskHealth::Hung { .. })).await;
    agent.logged("asked to stop while the disk is in trouble").await;
    let at_stay = hung_for(&report_of(&lease(&leases).await.unwrap()).unwrap());
    let (grown, report) = wait_report(&leases, "the hang reported growing after SIGTERM", |r| !r.terminating && hung_for(r) >= at_stay + 2).await;
    assert!(renewed_at(&grown) > renewed_at(&hung) && renewed_at(&hung) > renewed_at(&before) && !report.terminating, "{report:?}");
    assert!(agent.exited().is_none(), "the agent stays while its disk hangs");

    // A second signal: it stops renewing at once, the Lease left saying the disk hangs. (The
    // process ends only once the disk answers: a thread stuck in the kernel on a disk request
    // holds the exit, as on a real node.) Had it not stopped, the disk back would now make it
    // renew once more, saying terminating.
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    agent.logged("second signal with the disk still in trouble").await;
    disk.switch().set(DiskFault::Healthy);
    let status = eventually("the agent exits once its stuck read returns", WAIT, || {
        let exited = agent.exited();
        async move { exited }
    })
    .await;
    assert_eq!(status.code(), Some(0));
    let left_lease = lease(&leases).await.unwrap();
    let left = report_of(&left_lease).unwrap();
    assert!(matches!(left.disk, DiskHealth::Hung { .. }) && !left.terminating, "{left:?}");
    // Left without an owner: the Pod's deletion does not take the hang's report with it.
    assert_eq!(owners(&left_lease), Vec::<String>::new());

    drop(agent);
    drop(disk);
    cp.stop().await.unwrap();
}

/// The names of the Lease's owners.
fn owners(lease: &Lease) -> Vec<String> {
    lease.metadata.owner_references.iter().flatten().map(|o| o.name.clone()).collect()
}

fn holder(lease: &Lease) -> String {
    lease.spec.as_ref().and_then(|s| s.holder_identity.clone()).unwrap_or_default()
}

/// Watches the Lease through `renewals` renewals and checks that `holder` held it throughout,
/// with no other Pod taking it over meanwhile.
async fn held_throughout(leases: &Api<Lease>, pod: &str, renewals: usize) {
    let mut seen = lease(leases).await.expect("the Lease");
    let transitions = seen.spec.as_ref().and_then(|s| s.lease_transitions);
    for _ in 0..renewals {
        let before = renewed_at(&seen);
        seen = eventually("the next renewal", WAIT, || async move { lease(leases).await.filter(|l| renewed_at(l) > before) }).await;
        assert_eq!(holder(&seen), pod, "another agent took over the Lease: {:?}", seen.spec);
        assert_eq!(seen.spec.as_ref().and_then(|s| s.lease_transitions), transitions, "leaseTransitions");
        assert!(report_of(&seen).is_some_and(|r| !r.terminating), "{seen:?}");
    }
}

/// Waits until `pod` holds the Lease and reports its disk ok.
async fn held_ok_by(leases: &Api<Lease>, pod: &str) -> Lease {
    eventually(&format!("{pod} holds the Lease and reports ok"), WAIT, || async move {
        let lease = lease(leases).await?;
        (holder(&lease) == pod && report_of(&lease).is_some_and(|r| r.disk == DiskHealth::Ok && !r.terminating)).then_some(lease)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_of_one_node_take_turns_the_new_one_standing_by_until_the_holder_terminates_or_falls_silent() {
    init();
    let cp = ControlPlane::start(Default::default()).await.expect("control plane starts");
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = agent_kubeconfig(&cp, dir.path()).await;
    let pods: Api<Pod> = Api::namespaced(cp.client(), NAMESPACE);
    let leases: Api<Lease> = Api::namespaced(cp.client(), NAMESPACE);
    let host = dir.path().join("host");
    std::fs::create_dir_all(host.join("etc")).unwrap();
    std::fs::create_dir_all(host.join("var/lib/kubelet")).unwrap();
    std::fs::write(host.join("etc/os-release"), "ID=lab\n").unwrap();
    // As in the chart, each Pod has a scratch dir of its own (its emptyDir).
    let start = |name: &'static str| {
        let (kubeconfig, host, log, pods) = (kubeconfig.clone(), host.clone(), dir.path().join(format!("{name}.log")), pods.clone());
        async move {
            let pod = create_pod(&pods, name).await;
            let scratch = format!("--scratch-dir=/var/lib/kubelet/{name}");
            Agent::start_with(&kubeconfig, &host, &pod, log, &[&scratch])
        }
    };

    let mut old = start("pulsecheck-agent-old").await;
    held_ok_by(&leases, "pulsecheck-agent-old").await;

    // A rollout's surge Pod starts beside it: it stands by, and the old agent goes on holding
    // the Lease, renewal after renewal.
    let mut new = start("pulsecheck-agent-new").await;
    held_throughout(&leases, "pulsecheck-agent-old", 4).await;
    new.logged("standing by").await;

    // The old agent freezes (SIGSTOP): the new one takes over once the old one's renewals have
    // stopped for its lease duration (8 s), as it watched them.
    old.signal(nix::sys::signal::Signal::SIGSTOP);
    // The old agent's last renewal (one may land just after the signal), then the takeover.
    let last_old = std::sync::Mutex::new(lease(&leases).await.unwrap());
    let taken = eventually("the new agent takes the frozen agent's Lease over", WAIT, || {
        let (leases, last_old) = (leases.clone(), &last_old);
        async move {
            let l = lease(&leases).await?;
            if holder(&l) == "pulsecheck-agent-old" {
                *last_old.lock().unwrap() = l;
                return None;
            }
            Some(l)
        }
    })
    .await;
    let silent = renewed_at(&taken).duration_since(renewed_at(&last_old.lock().unwrap()));
    assert_eq!(holder(&taken), "pulsecheck-agent-new");
    assert!(silent >= SignedDuration::from_secs(8), "taken over {silent:?} after the holder's last renewal, before its lease duration");
    held_ok_by(&leases, "pulsecheck-agent-new").await;
    new.logged("has not renewed it for its lease duration").await;
    // Thawed, the old one finds the Lease taken and stands by in turn.
    old.signal(nix::sys::signal::Signal::SIGCONT);
    held_throughout(&leases, "pulsecheck-agent-new", 4).await;
    eventually("the thawed agent stands by", WAIT, || {
        let log = std::fs::read_to_string(&old.log).unwrap_or_default();
        async move { (log.matches("standing by").count() >= 1 && log.contains("holder=pulsecheck-agent-new")).then_some(()) }
    })
    .await;

    // The agent standing by is stopped: it leaves the holder's Lease alone, no "terminating".
    old.terminated().await;
    old.logged("not the Lease's holder").await;
    held_throughout(&leases, "pulsecheck-agent-new", 2).await;

    // The next rollout: another surge Pod stands by; the holder is stopped, its last word is
    // "terminating", and the Pod standing by takes the Lease over at once.
    let next = start("pulsecheck-agent-next").await;
    next.logged("standing by").await;
    held_throughout(&leases, "pulsecheck-agent-new", 2).await;
    new.terminated().await;
    new.logged("Lease marked terminating").await;
    let taken = held_ok_by(&leases, "pulsecheck-agent-next").await;
    next.logged("it said it is terminating").await;
    assert_eq!(taken.metadata.owner_references.unwrap_or_default().iter().map(|o| o.name.as_str()).collect::<Vec<_>>(), ["pulsecheck-agent-next"]);

    drop((old, new, next));
    cp.stop().await.unwrap();
}

/// Runs the agent with `args` (no identity from the environment, no cluster to reach).
async fn run_agent(args: &[&str]) -> (Option<i32>, String) {
    let run = tokio::process::Command::new(AGENT)
        .args(args)
        .env_remove("NODE_NAME")
        .env_remove("POD_NAMESPACE")
        .env_remove("POD_NAME")
        .env_remove("POD_UID")
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(WAIT, run).await.expect("the agent exits").expect("the agent runs");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test]
async fn bad_flags_exit_non_zero_naming_the_flags() {
    let identity = ["--node-name", NODE, "--namespace", NAMESPACE, "--pod-name", "p", "--pod-uid", "u"];
    let cases: BTreeMap<&str, (Vec<&str>, Vec<&str>)> = BTreeMap::from([
        ("lease duration not above the renew interval", (vec!["--lease-duration=10s", "--renew-interval=10s"], vec!["--lease-duration", "--renew-interval"])),
        ("lease duration below the renew interval", (vec!["--lease-duration=5s"], vec!["--lease-duration", "--renew-interval"])),
        ("zero disk deadline", (vec!["--disk-deadline=0s"], vec!["--disk-deadline"])),
        ("relative scratch dir", (vec!["--scratch-dir=var/lib/kubelet"], vec!["--scratch-dir"])),
    ]);
    for (case, (extra, named)) in &cases {
        let mut args = identity.to_vec();
        args.extend(extra);
        let (code, stderr) = run_agent(&args).await;
        assert!(code.is_some_and(|c| c != 0), "{case}: exit {code:?}\n{stderr}");
        for flag in named {
            assert!(stderr.contains(flag), "{case}: the message names {flag}: {stderr}");
        }
    }

    // A scratch dir on a read-only filesystem (the container's own root, with --scratch-dir
    // and --scratch-mount dropped by an overlay that replaced the args): refused at start, not
    // reported as EROFS on every node — which pulsecheck would read as every disk dead.
    let host = tempfile::tempdir().unwrap();
    nix::mount::mount(Some("tmpfs"), host.path(), Some("tmpfs"), nix::mount::MsFlags::MS_RDONLY, None::<&str>)
        .expect("a read-only tmpfs (the tests run as root)");
    let host_root = format!("--host-root={}", host.path().display());
    let mut args = identity.to_vec();
    args.push(&host_root);
    let (code, stderr) = run_agent(&args).await;
    nix::mount::umount(host.path()).unwrap();
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--scratch-dir /var/lib/kubelet/pulsecheck-agent is on a read-only filesystem"), "{stderr}");

    // No node name at all, and one too long for a Lease name.
    let (code, stderr) = run_agent(&identity[2..]).await;
    assert!(code.is_some_and(|c| c != 0) && stderr.contains("--node-name"), "exit {code:?}\n{stderr}");
    let long = "n".repeat(237);
    let mut args = identity.to_vec();
    args[1] = &long;
    let (code, stderr) = run_agent(&args).await;
    assert!(code.is_some_and(|c| c != 0) && stderr.contains("--node-name") && stderr.contains("too long"), "exit {code:?}\n{stderr}");
}
