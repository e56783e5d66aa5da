//! pulsecheck against real kubelets (issue "Real nodes"): a real kube-apiserver, the real
//! kube-controller-manager, upstream kubelets with their own containerd in namespaces of their
//! own, and pulsecheck in-process under the chart's ServiceAccount, probing the kubelets over
//! verified TLS. Each fault is the lab's ([`pulsecheck_lab::realnode::NodeFault`]): the node's
//! FUSE root disk hangs or fails, or its packets to the apiserver are dropped.
//!
//! The kubelets' periods are compressed (status reported every 10 s, Lease of 8 s renewed every
//! 2 s; see `common::real::TIMING`); pulsecheck learns them from each kubelet's /configz.

mod common;

use std::time::{Duration, Instant};

use common::{real::*, *};
use k8s_openapi::api::{coordination::v1::Lease, core::v1::Node};
use kube::Api;
use pulsecheck::controller::Running;
use pulsecheck_lab::realnode::NodeFault;

/// Upper bound of each wait: the node's status threshold from its /configz is
/// max(2·(10 s + 1 s), Lease grace 11 s + 1.5·10 s + 1 s) = 27 s; the rest is room for two cores.
const BOUND: Duration = Duration::from_secs(75);

fn ready(node: &Node) -> Option<String> {
    node.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready").map(|c| c.status.clone())
}

fn os_image(node: &Node) -> String {
    node.status.as_ref().and_then(|s| s.node_info.as_ref()).map(|i| i.os_image.clone()).unwrap_or_default()
}

fn kcm_taints(node: &Node) -> Vec<String> {
    taint_keys(node).into_iter().filter(|k| k.starts_with("node.kubernetes.io/")).collect()
}

async fn renew_time(client: &kube::Client, node: &str) -> Option<k8s_openapi::jiff::Timestamp> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    leases.get(node).await.ok()?.spec?.renew_time.map(|t| t.0)
}

fn verdict_changes(running: &Running, verdict: &str) -> f64 {
    metric(&running.metrics.render(), &format!(r#"pulsecheck_verdict_changes_total{{verdict="{verdict}"}}"#)).unwrap_or(0.0)
}

/// Waits until pulsecheck has read both kubelets' /configz and judges both healthy.
async fn wait_settled(running: &Running, names: &[&str]) {
    eventually("both kubelets' cadence read from /configz", BOUND, || {
        let text = running.metrics.render();
        async move { (metric(&text, r#"pulsecheck_status_threshold_nodes{source="kubelet"}"#) == Some(2.0)).then_some(()) }
    })
    .await;
    for name in names {
        wait_verdict(running, name, "healthy", BOUND).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_kubelet_whose_disk_hangs_is_tainted_while_kubernetes_keeps_it_ready_and_released_after_recovery() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut lab = RealLab::start(&["hang-a", "hang-b"]).await;
    let client = lab.cp.client();
    let running = lab.controller(|_| {}).await;
    wait_settled(&running, &["hang-a", "hang-b"]).await;

    // A healthy real fleet over several report periods: nothing but health.
    let calm_until = Instant::now() + Duration::from_secs(25);
    while Instant::now() < calm_until {
        for verdict in ["suspect", "zombie", "dead"] {
            assert_eq!(verdict_changes(&running, verdict), 0.0, "a healthy real fleet judged {verdict}:\n{}", running.metrics.render());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The disk hangs: the status loop stops, the Lease goes on.
    lab.node("hang-a").inject(NodeFault::DiskHang).unwrap();
    let hung_at = Instant::now();
    let renewed_before = renew_time(&client, "hang-a").await.expect("the Lease has a renewTime");
    wait_tainted(&client, "hang-a", "hang-a tainted after its disk hung", BOUND).await;
    let took = hung_at.elapsed();
    let node = get_node(&client, "hang-a").await;
    assert_eq!(ready(&node).as_deref(), Some("True"), "Kubernetes still calls it Ready");
    assert!(kcm_taints(&node).is_empty(), "kube-controller-manager does not act on it: {:?}", taint_keys(&node));
    assert!(renew_time(&client, "hang-a").await.is_some_and(|t| t > renewed_before), "the Lease kept renewing through the hang");
    assert!(lab.node("hang-a").blocked_disk_operations() > 0, "the kubelet is stuck on its disk");
    eprintln!("hang-a tainted {took:?} after its disk hung");
    let healthy = get_node(&client, "hang-b").await;
    assert!(!has_our_taint(&healthy), "the healthy node is left alone");
    wait_verdict(&running, "hang-b", "healthy", Duration::from_secs(1)).await;

    // The disk comes back: the status loop resumes, and after the hysteresis the taint goes.
    lab.node("hang-a").inject(NodeFault::Recover).unwrap();
    wait_node(&client, "hang-a", "hang-a released after recovery", BOUND, |n| !has_our_taint(n)).await;
    wait_verdict(&running, "hang-a", "healthy", BOUND).await;
    running.stop().await;
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_kubelet_that_cannot_read_os_release_turns_os_image_unknown_and_is_judged_suspect_then_zombie() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut lab = RealLab::start(&["osr-a", "osr-b"]).await;
    let client = lab.cp.client();
    let running = lab.controller(|_| {}).await;
    wait_settled(&running, &["osr-a", "osr-b"]).await;
    let original = os_image(&get_node(&client, "osr-a").await);

    lab.node("osr-a").inject(NodeFault::OsReleaseError).unwrap();
    wait_node(&client, "osr-a", "osr-a's osImage Unknown", BOUND, |n| os_image(n) == "Unknown").await;
    // Turned Unknown under pulsecheck's eyes: suspect at once, zombie after --os-image-unknown-after.
    wait_verdict(&running, "osr-a", "suspect", BOUND).await;
    wait_verdict(&running, "osr-a", "zombie", BOUND).await;
    wait_tainted(&client, "osr-a", "osr-a tainted", BOUND).await;
    let node = get_node(&client, "osr-a").await;
    assert_eq!(ready(&node).as_deref(), Some("True"), "the kubelet still reports Ready");

    lab.node("osr-a").inject(NodeFault::Recover).unwrap();
    wait_node(&client, "osr-a", "osr-a's osImage back", BOUND, |n| os_image(n) == original).await;
    wait_node(&client, "osr-a", "osr-a released", BOUND, |n| !has_our_taint(n)).await;
    assert!(!has_our_taint(&get_node(&client, "osr-b").await));
    running.stop().await;
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_node_cut_off_from_the_apiserver_is_left_to_kubernetes_unreachable_taint() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut lab = RealLab::start(&["cut-a", "cut-b"]).await;
    let client = lab.cp.client();
    let running = lab.controller(|_| {}).await;
    wait_settled(&running, &["cut-a", "cut-b"]).await;

    lab.node("cut-a").inject(NodeFault::NetCut).unwrap();
    // Lease and status both stop: Kubernetes sees it, and says so itself.
    let node = wait_node(&client, "cut-a", "kube-controller-manager's unreachable taint on cut-a", BOUND, |n| {
        taint_keys(n).iter().any(|k| k == "node.kubernetes.io/unreachable")
    })
    .await;
    assert_eq!(ready(&node).as_deref(), Some("Unknown"));
    wait_verdict(&running, "cut-a", "dead", BOUND).await;
    // pulsecheck leaves a dead node to Kubernetes (no --act-on-dead): several ticks, no taint.
    wait_evaluations(&running, 6, BOUND).await;
    assert!(!has_our_taint(&get_node(&client, "cut-a").await), "pulsecheck tainted a node Kubernetes already handles");
    assert_eq!(verdict_changes(&running, "zombie"), 0.0, "a cut node is not a zombie");

    lab.node("cut-a").inject(NodeFault::Recover).unwrap();
    wait_node(&client, "cut-a", "cut-a Ready again", BOUND, |n| ready(n).as_deref() == Some("True")).await;
    wait_verdict(&running, "cut-a", "healthy", BOUND).await;
    running.stop().await;
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_kubelet_unreachable_from_pulsecheck_only_while_it_keeps_reporting_is_never_tainted() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut lab = RealLab::start(&["pc-a", "pc-b"]).await;
    let client = lab.cp.client();
    // Probe failures that reach the kubelet would be conclusive after 8 s; the kubelet reports
    // its status every 10 s. Under probe-cut no connection gets through (pulsecheck: Unreachable).
    let running = lab.controller(|s| s.thresholds.probe_zombie_after = Duration::from_secs(8)).await;
    wait_settled(&running, &["pc-a", "pc-b"]).await;

    // A firewall change between pulsecheck and one kubelet: its probes time out, while the
    // kubelet goes on renewing its Lease and reporting its status.
    lab.node("pc-a").inject(NodeFault::ProbeCut).unwrap();
    wait_verdict(&running, "pc-a", "suspect", BOUND).await;
    let heartbeat =
        |n: &Node| n.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready").and_then(|c| c.last_heartbeat_time.clone()).map(|t| t.0);
    let reported_at_suspect = heartbeat(&get_node(&client, "pc-a").await).expect("a heartbeat");
    // Three probe_zombie_after periods, and at least two status reports since the failures began.
    let watch_until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < watch_until {
        let node = get_node(&client, "pc-a").await;
        assert!(!has_our_taint(&node), "pc-a tainted although its kubelet keeps reporting:\n{}", running.metrics.render());
        assert_eq!(verdict_changes(&running, "zombie"), 0.0, "pc-a judged zombie:\n{}", running.metrics.render());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let node = get_node(&client, "pc-a").await;
    assert!(heartbeat(&node).is_some_and(|t| t > reported_at_suspect), "the kubelet kept reporting through the cut");
    assert_eq!(ready(&node).as_deref(), Some("True"));

    lab.node("pc-a").inject(NodeFault::Recover).unwrap();
    wait_verdict(&running, "pc-a", "healthy", BOUND).await;
    running.stop().await;
    lab.stop().await;
}
