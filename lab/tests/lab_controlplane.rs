//! The lab control plane: a real kube-apiserver + etcd that every other integration test,
//! the demo and the benchmarks stand on. What an operator of the test suite relies on: it
//! starts, it enforces RBAC, and it leaves nothing behind — no process, no folder.

use std::{
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    core::v1::{Namespace, Node, Secret},
    rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject},
};
use kube::{
    Api,
    api::{DeleteParams, ListParams, ObjectMeta, PostParams},
};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use pulsecheck_lab::{
    binaries::Binaries,
    controlplane::{ControlPlane, ControlPlaneOptions},
};

/// Generous: CI runs several control planes on two cores.
const DEADLINE: Duration = Duration::from_secs(120);

async fn start() -> ControlPlane {
    ControlPlane::start(ControlPlaneOptions::default()).await.unwrap_or_else(|err| panic!("{err}"))
}

/// True while a process with this pid exists (zombies included: `/proc/<pid>` stays until reaped).
fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn name_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_owned()
}

fn names<K: kube::Resource + Clone>(list: &kube::core::ObjectList<K>) -> Vec<String> {
    list.items.iter().filter_map(|o| o.meta().name.clone()).collect()
}

fn status_code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

#[tokio::test]
async fn admin_sees_the_system_namespaces_of_a_fresh_control_plane() {
    let cp = start().await;
    let namespaces: Api<Namespace> = Api::all(cp.client());
    let listed = names(&namespaces.list(&ListParams::default()).await.unwrap());
    assert!(listed.contains(&"default".to_owned()), "{listed:?}");
    assert!(listed.contains(&"kube-node-lease".to_owned()), "{listed:?}");
    assert!(cp.server_url().starts_with("https://127.0.0.1:"), "{}", cp.server_url());
    assert!(cp.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
    assert_eq!(cp.pids().len(), 2);
    for pid in cp.pids() {
        let name = name_of(pid);
        assert!(name == "etcd" || name == "kube-apiserver", "pid {pid} is {name:?}");
    }
    cp.stop().await.unwrap();
}

#[tokio::test]
async fn admin_kubeconfig_file_reaches_the_apiserver_as_admin() {
    let cp = start().await;
    let kubeconfig = kube::config::Kubeconfig::read_from(cp.kubeconfig_path()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let secrets: Api<Secret> = Api::all(client);
    secrets.list(&ListParams::default()).await.expect("admin may list secrets everywhere");
    cp.stop().await.unwrap();
}

#[tokio::test]
async fn stop_leaves_no_etcd_or_apiserver_process_and_no_folder() {
    let cp = start().await;
    let pids = cp.pids();
    let dir = cp.dir().to_path_buf();
    assert!(dir.join("kubeconfig").exists());
    assert!(pids.iter().all(|&pid| process_exists(pid)));
    cp.stop().await.unwrap();
    for pid in pids {
        assert!(!process_exists(pid), "pid {pid} ({}) survived stop()", name_of(pid));
        assert_eq!(kill(Pid::from_raw(pid as i32), None), Err(nix::errno::Errno::ESRCH));
    }
    assert!(!dir.exists(), "{} survived stop()", dir.display());
}

#[tokio::test]
async fn dropping_without_stop_leaves_no_process_and_no_folder() {
    let cp = start().await;
    let pids = cp.pids();
    let dir = cp.dir().to_path_buf();
    drop(cp);
    // Drop kills and reaps before it returns: nothing to wait for.
    for pid in pids {
        assert!(!process_exists(pid), "pid {pid} ({}) survived drop", name_of(pid));
    }
    assert!(!dir.exists(), "{} survived drop", dir.display());
}

#[tokio::test]
async fn chosen_folder_stays_but_only_with_what_was_there_before() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lab");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("notes.txt"), "mine").unwrap();
    let cp = ControlPlane::start(ControlPlaneOptions { dir: Some(dir.clone()), ..Default::default() }).await.unwrap();
    assert_eq!(cp.kubeconfig_path(), std::fs::canonicalize(&dir).unwrap().join("kubeconfig"));
    assert!(dir.join("kube-apiserver.log").exists());
    cp.stop().await.unwrap();
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("notes.txt")]);
}

#[tokio::test]
async fn unknown_token_is_unauthorized() {
    let cp = start().await;
    let stranger = cp.client_with_token("not-a-token-anyone-issued").await.unwrap();
    let err = Api::<Namespace>::all(stranger).list(&ListParams::default()).await.unwrap_err();
    assert_eq!(status_code(&err), Some(401), "{err}");
    cp.stop().await.unwrap();
}

#[tokio::test]
async fn restricted_service_account_gets_only_what_its_role_grants() {
    let cp = start().await;
    let admin = cp.client();
    let node = Node { metadata: named("restricted-test-node"), ..Default::default() };
    Api::<Node>::all(admin.clone()).create(&PostParams::default(), &node).await.unwrap();
    let role = ClusterRole {
        metadata: named("node-getter"),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["nodes".to_owned()]),
            verbs: vec!["get".to_owned()],
            ..Default::default()
        }]),
        ..Default::default()
    };
    Api::<ClusterRole>::all(admin.clone()).create(&PostParams::default(), &role).await.unwrap();
    let binding = ClusterRoleBinding {
        metadata: named("node-getter"),
        role_ref: RoleRef { api_group: "rbac.authorization.k8s.io".to_owned(), kind: "ClusterRole".to_owned(), name: "node-getter".to_owned() },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_owned(),
            name: "reader".to_owned(),
            namespace: Some("lab-rbac".to_owned()),
            ..Default::default()
        }]),
    };
    Api::<ClusterRoleBinding>::all(admin).create(&PostParams::default(), &binding).await.unwrap();

    let token = cp.service_account_token("lab-rbac", "reader").await.unwrap();
    // Through a kubeconfig file, as a separate program (pulsecheck run, kubectl) would.
    let tmp = tempfile::tempdir().unwrap();
    let kubeconfig_path = tmp.path().join("reader.kubeconfig");
    cp.write_kubeconfig_for_token(&token, &kubeconfig_path).unwrap();
    let kubeconfig = kube::config::Kubeconfig::read_from(&kubeconfig_path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.unwrap();
    let reader = kube::Client::try_from(config).unwrap();
    let nodes: Api<Node> = Api::all(reader.clone());

    // RBAC reads its bindings from an informer: allow it a moment to see the new one.
    let deadline = Instant::now() + DEADLINE;
    loop {
        match nodes.get("restricted-test-node").await {
            Ok(got) => {
                assert_eq!(got.metadata.name.as_deref(), Some("restricted-test-node"));
                break;
            }
            Err(err) if status_code(&err) == Some(403) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!("get on a node should be allowed: {err}"),
        }
    }
    let err = Api::<Secret>::all(reader.clone()).list(&ListParams::default()).await.unwrap_err();
    assert_eq!(status_code(&err), Some(403), "list secrets: {err}");
    let err = nodes.delete("restricted-test-node", &DeleteParams::default()).await.unwrap_err();
    assert_eq!(status_code(&err), Some(403), "delete node: {err}");
    let err = nodes.list(&ListParams::default()).await.unwrap_err();
    assert_eq!(status_code(&err), Some(403), "list nodes: {err}");
    cp.stop().await.unwrap();
}

#[tokio::test]
async fn two_control_planes_run_side_by_side() {
    let (a, b) = tokio::join!(start(), start());
    assert_ne!(a.server_url(), b.server_url());
    let ns = Namespace { metadata: named("only-in-a"), ..Default::default() };
    Api::<Namespace>::all(a.client()).create(&PostParams::default(), &ns).await.unwrap();
    let err = Api::<Namespace>::all(b.client()).get("only-in-a").await.unwrap_err();
    assert_eq!(status_code(&err), Some(404), "{err}");
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[test]
fn missing_binaries_error_names_them_the_folders_and_the_build_command() {
    let tmp = tempfile::tempdir().unwrap();
    let assets = tmp.path().join("assets");
    std::fs::create_dir_all(&assets).unwrap();
    let cache = tmp.path().join("cache");
    let message = Binaries::locate_in(Some(&assets), &cache).unwrap_err().to_string();
    assert!(message.contains("kube-apiserver"), "{message}");
    assert!(message.contains("etcd"), "{message}");
    assert!(message.contains(&assets.display().to_string()), "{message}");
    assert!(message.contains(&cache.join("bin/current").display().to_string()), "{message}");
    assert!(message.contains("bash tools/build.sh control"), "{message}");
}

fn named(name: &str) -> ObjectMeta {
    ObjectMeta { name: Some(name.to_owned()), ..Default::default() }
}

// ---------------------------------------------------------------------------------------------
// `pulsecheck lab up`

/// A running `pulsecheck lab up --dir DIR`, killed if the test fails half-way.
struct LabUp {
    child: std::process::Child,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Drop for LabUp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lab_up(dir: &Path) -> LabUp {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pulsecheck-lab"))
        .args(["up", "--dir"])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    LabUp { child, stdout }
}

/// Reads the first stdout line on a thread, so a hung start fails at the deadline.
fn first_line(lab: &mut LabUp) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut line = String::new();
            let _ = tx.send(lab.stdout.read_line(&mut line).map(|_| line));
        });
        match rx.recv_timeout(DEADLINE) {
            Ok(line) => line.unwrap(),
            Err(_) => {
                let _ = lab.child.kill(); // unblocks the reader
                panic!("no ready line within {DEADLINE:?}");
            }
        }
    })
}

/// Direct children of `pid` (from /proc/<pid>/task/*/children).
fn children_of(pid: u32) -> Vec<u32> {
    let mut children = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = task.unwrap().path().join("children");
        let text = std::fs::read_to_string(path).unwrap_or_default();
        children.extend(text.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
    }
    children
}

fn wait_exit(child: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "pulsecheck lab up did not exit within {DEADLINE:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_gone(pids: &[u32], why: &str) {
    let deadline = Instant::now() + DEADLINE;
    while pids.iter().any(|&pid| process_exists(pid) && !is_zombie_of_init(pid)) {
        assert!(Instant::now() < deadline, "{why}: {pids:?} still running");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A zombie whose parent is gone waits for init to reap it; it no longer runs.
fn is_zombie_of_init(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // "pid (comm) S ppid ..." — state is the first field after the closing parenthesis.
    stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
}

#[tokio::test]
async fn lab_up_prints_only_the_ready_line_and_cleans_up_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lab");
    let mut lab = lab_up(&dir);
    let line = first_line(&mut lab);
    let kubeconfig: PathBuf = std::fs::canonicalize(&dir).unwrap().join("kubeconfig");
    assert_eq!(line, format!("ready: {}\n", kubeconfig.display()));

    // The kubeconfig works the moment the line is printed.
    let config = kube::Config::from_custom_kubeconfig(kube::config::Kubeconfig::read_from(&kubeconfig).unwrap(), &Default::default()).await.unwrap();
    let namespaces = Api::<Namespace>::all(kube::Client::try_from(config).unwrap());
    let listed = names(&namespaces.list(&ListParams::default()).await.unwrap());
    assert!(listed.contains(&"kube-node-lease".to_owned()), "{listed:?}");

    let children = children_of(lab.child.id());
    let mut child_names: Vec<String> = children.iter().map(|&pid| name_of(pid)).collect();
    child_names.sort();
    assert_eq!(child_names, ["etcd", "kube-apiserver"]);

    kill(Pid::from_raw(lab.child.id() as i32), Signal::SIGTERM).unwrap();
    let status = wait_exit(&mut lab.child);
    assert!(status.success(), "lab up exited with {status}");
    let mut rest = String::new();
    lab.stdout.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "", "stdout carries only the ready line");
    for pid in children {
        assert!(!process_exists(pid) || is_zombie_of_init(pid), "pid {pid} survived lab up");
    }
    assert!(dir.exists(), "the folder the user gave stays");
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "lab up left {left:?} in {}", dir.display());
}

#[tokio::test]
async fn lab_up_killed_with_sigkill_takes_etcd_and_apiserver_along() {
    let tmp = tempfile::tempdir().unwrap();
    let mut lab = lab_up(&tmp.path().join("lab"));
    let line = first_line(&mut lab);
    assert!(line.starts_with("ready: "), "{line}");
    let children = children_of(lab.child.id());
    assert_eq!(children.len(), 2, "{children:?}");
    lab.child.kill().unwrap(); // SIGKILL: no cleanup code runs in pulsecheck
    lab.child.wait().unwrap();
    wait_gone(&children, "etcd and kube-apiserver must die with their parent");
}

#[test]
fn lab_help_lists_up_fleet_demo_fault_image_and_import() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pulsecheck-lab")).arg("--help").output().expect("pulsecheck-lab runs");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let listed: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        // A subcommand's line, not a wrapped line of its description.
        .filter(|l| !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|s| *s != "help")
        .collect();
    assert_eq!(listed, ["up", "fleet", "demo", "fault", "image", "import"], "{text}");
}
