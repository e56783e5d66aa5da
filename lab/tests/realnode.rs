//! Real nodes: the upstream kubelet and containerd in namespaces of their own. What an operator
//! of the lab relies on: a node registers and goes Ready like a production one, runs Pods, takes
//! faults from `pulsecheck-lab fault`, and nothing of it — process, mount, veth, cgroup —
//! outlives it, whether it is stopped or the lab is killed with SIGKILL.

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::{Container, Node, Pod, PodSpec};
use kube::{Api, api::PostParams};
use pulsecheck_lab::{
    controlplane::{ControlPlane, ControlPlaneOptions},
    realnode::{self, HostTools, KubeletTiming, NodeFault, RealNode, RealNodeOptions},
};

/// Upper bound of every wait (two cores).
const DEADLINE: Duration = Duration::from_secs(120);

/// The tests here each start real nodes and look at the whole machine: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What real nodes leave on the machine, seen from outside: veths, cgroups, mounts naming
/// their folder, processes in their PID namespaces, and files in the host paths containerd,
/// runc, CNI and the kubelet write to when nothing stops them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Traces {
    links: BTreeSet<String>,
    cgroups: BTreeSet<String>,
    mounts: BTreeSet<String>,
    /// PID namespaces (`pid:[inode]`) of processes whose command line names the folder.
    pid_namespaces: BTreeSet<String>,
    processes: BTreeSet<String>,
    host_files: BTreeSet<String>,
}

/// Paths where a node's programs would write on the host's disk by default.
const HOST_PATHS: [&str; 7] =
    ["/run/containerd", "/run/netns", "/var/lib/cni", "/var/log/pods", "/var/log/containers", "/var/lib/kubelet", "/usr/libexec/kubernetes"];

fn files_under(path: &Path, depth: usize, out: &mut BTreeSet<String>) {
    let Ok(entries) = std::fs::read_dir(path) else { return };
    for entry in entries.flatten() {
        out.insert(entry.path().display().to_string());
        if depth > 0 && entry.file_type().is_ok_and(|t| t.is_dir()) {
            files_under(&entry.path(), depth - 1, out);
        }
    }
}

fn traces(dir: &Path, namespaces: &BTreeSet<String>) -> Traces {
    let dir = dir.display().to_string();
    let mut t = Traces::default();
    for entry in std::fs::read_dir("/sys/class/net").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("pcl") {
            t.links.insert(name);
        }
    }
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        if let Ok(nodes) = std::fs::read_dir(hierarchy.path().join("pulsecheck-lab")) {
            t.cgroups.extend(nodes.flatten().filter(|e| e.path().is_dir()).map(|e| e.path().display().to_string()));
        }
    }
    for process in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = process.file_name().to_string_lossy().into_owned();
        if !pid.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let cmdline = std::fs::read(process.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let namespace = std::fs::read_link(process.path().join("ns/pid")).map(|l| l.display().to_string()).unwrap_or_default();
        if cmdline.contains(&dir) {
            t.pid_namespaces.insert(namespace.clone());
        }
        if cmdline.contains(&dir) || namespaces.contains(&namespace) {
            t.processes.insert(format!("{pid} {cmdline}"));
        }
        let mountinfo = std::fs::read_to_string(process.path().join("mountinfo")).unwrap_or_default();
        t.mounts.extend(mountinfo.lines().filter(|l| l.contains(&dir)).map(|l| format!("{pid}: {l}")));
    }
    // The lab's own PID namespace is not a node's.
    if let Ok(own) = std::fs::read_link("/proc/self/ns/pid") {
        t.pid_namespaces.remove(&own.display().to_string());
    }
    for path in HOST_PATHS {
        if Path::new(path).exists() {
            t.host_files.insert(path.to_owned());
        }
        files_under(Path::new(path), 2, &mut t.host_files);
    }
    t
}

/// What appeared since `before`: the nodes' own traces (other labs' may come and go).
fn since(before: &Traces, now: &Traces) -> Traces {
    let new = |a: &BTreeSet<String>, b: &BTreeSet<String>| b.difference(a).cloned().collect();
    Traces {
        links: new(&before.links, &now.links),
        cgroups: new(&before.cgroups, &now.cgroups),
        mounts: new(&before.mounts, &now.mounts),
        pid_namespaces: new(&before.pid_namespaces, &now.pid_namespaces),
        processes: new(&before.processes, &now.processes),
        host_files: new(&before.host_files, &now.host_files),
    }
}

/// Polls until nothing of the nodes is left on the machine: none of `ours` (links, cgroups,
/// namespaces), no mount or process naming `dir`, nothing new in the host paths.
async fn wait_nothing_left(dir: &Path, before: &Traces, ours: &Traces) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = traces(dir, &ours.pid_namespaces);
        let left = Traces {
            links: now.links.intersection(&ours.links).cloned().collect(),
            cgroups: now.cgroups.intersection(&ours.cgroups).cloned().collect(),
            mounts: now.mounts,
            pid_namespaces: BTreeSet::new(),
            processes: now.processes,
            host_files: now.host_files.difference(&before.host_files).cloned().collect(),
        };
        if left == Traces::default() {
            return;
        }
        assert!(Instant::now() < deadline, "left behind: {left:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A child process killed when the test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn timing() -> KubeletTiming {
    KubeletTiming {
        status_update_frequency: Some(Duration::from_secs(2)),
        status_report_frequency: Some(Duration::from_secs(20)),
        lease_duration: Some(Duration::from_secs(8)),
    }
}

/// A control plane and one Ready real node `real-1`, with what the machine showed before it.
async fn one_real_node() -> (ControlPlane, std::path::PathBuf, Traces, RealNode) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tools = HostTools::check().unwrap_or_else(|e| panic!("{e}"));
    let cp = ControlPlane::start(ControlPlaneOptions::default()).await.unwrap_or_else(|e| panic!("{e}"));
    let dir = cp.dir().join("nodes").join("real-1");
    let before = traces(&dir, &BTreeSet::new());
    let node =
        RealNode::start(&cp, &tools, RealNodeOptions { name: "real-1".into(), dir: dir.clone(), timing: timing() }).await.unwrap_or_else(|e| panic!("{e}"));
    (cp, dir, before, node)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_node_goes_ready_runs_a_pod_and_leaves_nothing_behind_when_stopped() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (cp, dir, before, node) = one_real_node().await;

    // Registered as a production node is: its own address, osImage from its own disk.
    let nodes: Api<Node> = Api::all(cp.client());
    let n = nodes.get("real-1").await.unwrap();
    let status = n.status.clone().unwrap();
    assert_eq!(status.node_info.as_ref().unwrap().os_image, realnode::OS_IMAGE);
    let addresses: Vec<(String, String)> = status.addresses.unwrap_or_default().into_iter().map(|a| (a.type_, a.address)).collect();
    assert!(addresses.contains(&("InternalIP".into(), node.address().to_string())), "{addresses:?}");
    assert_eq!(n.metadata.labels.unwrap_or_default().get(realnode::REAL_NODE_LABEL).map(String::as_str), Some("true"));

    // A Pod (not hostNetwork) on it reaches Running with an address from the node's bridge.
    let pods: Api<Pod> = Api::namespaced(cp.client(), "default");
    let pod = Pod {
        metadata: kube::api::ObjectMeta { name: Some("pause".into()), ..Default::default() },
        spec: Some(PodSpec {
            node_name: Some("real-1".into()),
            containers: vec![Container {
                name: "pause".into(),
                image: Some(realnode::PAUSE_IMAGE.into()),
                image_pull_policy: Some("Never".into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let deadline = Instant::now() + DEADLINE;
    let ip = loop {
        let status = pods.get("pause").await.unwrap().status.unwrap_or_default();
        if status.phase.as_deref() == Some("Running") {
            break status.pod_ip.unwrap_or_default();
        }
        assert!(Instant::now() < deadline, "the Pod did not reach Running: {status:?}\n{}", pulsecheck_lab::process::log_tail(node.kubelet_log()));
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(ip.starts_with("10.214."), "Pod address {ip} is not from the node's CNI bridge");

    let ours = since(&before, &traces(&dir, &BTreeSet::new()));
    assert_eq!(ours.links, BTreeSet::from([node.host_link()]), "{ours:#?}");
    assert_eq!(ours.pid_namespaces.len(), 1, "every process of the node in one PID namespace: {ours:#?}");
    assert_eq!(ours.host_files, BTreeSet::new(), "a node with a running Pod writes nothing into the host's paths");
    assert!(!node.cgroup_dirs().is_empty() && node.cgroup_dirs().iter().all(|d| ours.cgroups.contains(&d.display().to_string())), "{ours:#?}");
    assert!(ours.processes.iter().any(|p| p.contains("janitor")) && ours.processes.iter().any(|p| p.contains("kubelet")), "{ours:#?}");
    assert!(ours.mounts.iter().any(|m| m.contains("pulsecheck-lab-disk")), "the disk is mounted in the node's namespace: {ours:#?}");
    assert!(!std::fs::read_to_string("/proc/self/mountinfo").unwrap().contains("pulsecheck-lab-disk"), "but not in the lab's");
    node.stop().await;
    wait_nothing_left(&dir, &before, &ours).await;
    cp.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_disk_hangs_still_stops_at_once_and_leaves_nothing_behind() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (cp, dir, before, mut node) = one_real_node().await;
    node.inject(NodeFault::DiskHang).unwrap();
    // The kubelet's status loop and containerd are caught in the hang.
    let deadline = Instant::now() + DEADLINE;
    while node.blocked_disk_operations() == 0 {
        assert!(Instant::now() < deadline, "nothing blocked on the hung disk");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ours = since(&before, &traces(&dir, &BTreeSet::new()));
    let stopping = Instant::now();
    node.stop().await;
    let took = stopping.elapsed();
    wait_nothing_left(&dir, &before, &ours).await;
    // Within the time a stop waits for the namespace to empty: not held up by the hang.
    assert!(took < Duration::from_secs(10), "stopping a node with a hung disk took {took:?}");
    cp.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lab_killed_with_sigkill_leaves_no_real_node_behind() {
    let _one = ONE_AT_A_TIME.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lab");
    let nodes_dir = dir.join("nodes");
    let before = traces(&nodes_dir, &BTreeSet::new());
    let mut lab = Command::new(env!("CARGO_BIN_EXE_pulsecheck-lab"))
        .args(["up", "--real-nodes", "2", "--node-status-report-frequency", "20s", "--node-lease-duration", "8s", "--dir"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(tmp.path().join("lab.log")).unwrap()))
        .spawn()
        .unwrap();
    let stdout = lab.stdout.take().unwrap();
    let mut lab = KillOnDrop(lab);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line =
        rx.recv_timeout(DEADLINE).unwrap_or_else(|_| panic!("no ready line: {}", std::fs::read_to_string(tmp.path().join("lab.log")).unwrap_or_default()));
    assert!(line.starts_with("ready: "), "{line}");

    // `pulsecheck-lab fault` reaches the running lab, and names what it does not know.
    let fault =
        |node: &str, kind: &str| Command::new(env!("CARGO_BIN_EXE_pulsecheck-lab")).args(["fault", "--dir"]).arg(&dir).args([node, kind]).output().unwrap();
    let ok = fault("real-2", "os-release-error");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let unknown = fault("real-9", "disk-hang");
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("no real node named real-9 (the lab has real-1, real-2)"),
        "{}",
        String::from_utf8_lossy(&unknown.stderr)
    );

    let ours = since(&before, &traces(&nodes_dir, &BTreeSet::new()));
    assert!(ours.links.len() == 2 && ours.pid_namespaces.len() == 2 && !ours.cgroups.is_empty() && !ours.mounts.is_empty(), "{ours:#?}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(lab.0.id() as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    lab.0.wait().unwrap();
    wait_nothing_left(&nodes_dir, &before, &ours).await;
}

#[test]
fn a_fault_for_a_lab_that_is_not_running_says_where_it_looked() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pulsecheck-lab")).args(["fault", "--dir"]).arg(tmp.path()).args(["real-1", "disk-hang"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("lab.sock") && stderr.contains("pulsecheck-lab up --real-nodes"), "{stderr}");
}
