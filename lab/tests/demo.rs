//! `pulsecheck-lab demo` end to end: the built binary starts its own kube-apiserver, etcd,
//! kube-controller-manager, simulated fleet and controller, plays its timeline, and its printed
//! summary says what an operator would check.

use std::time::Duration;

#[tokio::test]
async fn demo_shows_the_seed_on_a_real_kubelet_the_zombie_tainted_and_released_and_agrees_with_kubernetes_on_the_dead_node() {
    let dir = tempfile::tempdir().unwrap();
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_pulsecheck-lab"))
        .args(["demo", "--no-tty", "--duration=100s"])
        .arg(format!("--dir={}", dir.path().display()))
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(300), run).await.expect("the demo ends within 300s").expect("the demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let context = format!("exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status.code());
    assert_eq!(out.status.code(), Some(0), "{context}");
    println!("{stdout}");
    let line = |start: &str| stdout.lines().find(|l| l.starts_with(start)).unwrap_or_else(|| panic!("no line starting {start:?}:\n{context}"));
    // The seed failure on a real kubelet where this machine can run one, and it says which.
    match pulsecheck_lab::realnode::HostTools::check() {
        Ok(_) => {
            line("this machine can run a real kubelet: act 1 shows the seed failure");
            let tainted = line("[ok]   seed-1: Kubernetes kept it Ready=True, its Lease renewing, while pulsecheck tainted it");
            assert!(tainted.contains("s after the disk hung)"), "{tainted}");
            line("[ok]   seed-1: pulsecheck released it after it recovered");
            line("[ok]   seed-2: never tainted");
            assert!(stdout.lines().any(|l| l.contains("seed-1: Kubernetes: Ready=True") && l.contains("pulsecheck: zombie, tainted")), "{context}");
        }
        Err(why) => {
            line("this machine cannot run a real kubelet, so the seed failure is shown on the simulated fleet only");
            assert!(stdout.contains(&why.to_string()), "{context}");
        }
    }
    let tainted = line("[ok]   zombie sim-0003: Kubernetes kept it Ready=True with no taint while pulsecheck tainted it");
    assert!(tainted.contains("NodeStatus not refreshed for"), "{tainted}");
    line("[ok]   zombie sim-0003: pulsecheck released it after it recovered");
    line("[ok]   osImage \"Unknown\" sim-0007: Kubernetes kept it Ready=True while pulsecheck tainted it");
    let dead = line("[ok]   dead sim-0011: both agree");
    assert!(dead.contains("Kubernetes: Ready=Unknown, taints unreachable:") && dead.contains("pulsecheck: dead"), "{dead}");
    line("[ok]   the other 17 nodes: never tainted by pulsecheck");
    assert!(!stdout.contains("[FAIL]"), "{context}");
    // Plain timestamped lines, no screen redraws, without a terminal.
    assert!(!stdout.contains("\x1b[2J"), "{context}");
    assert!(stdout.lines().any(|l| l.contains(" t+5s ") && l.contains("fault: sim-0003 becomes a zombie")), "{context}");
    // kube-controller-manager's log stays in the chosen folder; the control plane's files do not.
    let kcm_log = std::fs::read_to_string(dir.path().join("kube-controller-manager.log")).expect("kcm log kept");
    assert!(kcm_log.contains("node_lifecycle_controller"), "kcm ran the node lifecycle controller");
    assert!(!dir.path().join("kubeconfig").exists(), "the control plane removed its files");
}
