//! Probe evidence inside the controller, end to end: `pulsecheck run` in-process against a real
//! kube-apiserver, probing the simulated fleet's kubelet endpoints over verified TLS. Failing
//! probes make a node Suspect and, when they keep failing, a Zombie long before its NodeStatus can
//! be called stale; a kubelet that refuses pulsecheck's token is a configuration problem, never
//! evidence; and when most probes fail pulsecheck blames its own network and taints nothing.

mod common;

use std::time::Duration;

use common::*;
use pulsecheck::{config::Settings, probe::ProbeMode};
use pulsecheck_lab::fleet::{Fault, FleetOptions};

/// Probes every 500 ms, each bounded by 400 ms, three failures in a row as evidence.
fn probe_fast(s: &mut Settings) {
    s.probe_every(Duration::from_millis(500));
    s.probe.timeout = Duration::from_millis(400);
    s.thresholds.probe_failure_threshold = 3;
}

/// Far beyond anything these tests wait for: no verdict here may rest on a stale NodeStatus.
const STATUS_STALE_AFTER: Duration = Duration::from_secs(120);

/// A lab whose nodes serve kubelet endpoints, and the files `--probe=kubelet-healthz` needs.
struct ProbedLab {
    lab: Lab,
    files: KubeletProbeFiles,
}

impl ProbedLab {
    async fn start(nodes: usize, prefix: &str) -> ProbedLab {
        let lab = Lab::start(FleetOptions { kubelet_endpoints: true, ..fast_fleet(nodes, prefix) }).await;
        let files = KubeletProbeFiles::write(&lab.fleet, "probe-evidence-token");
        ProbedLab { lab, files }
    }

    /// The controller probing every 500 ms with verified TLS; `tweak` changes the rest.
    async fn controller(&self, tweak: impl FnOnce(&mut Settings)) -> pulsecheck::controller::Running {
        controller(self.lab.client(), |s| {
            self.files.verified(s);
            probe_fast(s);
            s.thresholds.status_stale_after = STATUS_STALE_AFTER;
            // The fleet's kubelets report every 2 s, which /configz would tell: these tests are
            // about probe evidence, so the status threshold stays the flag's.
            s.probe.configz = false;
            tweak(s);
        })
        .await
    }

    /// Waits until `node`'s kubelet endpoint has answered `n` more probes.
    async fn wait_probes(&self, node: &str, n: usize) {
        let target = self.lab.fleet.kubelet_requests(node).len() + n;
        eventually(&format!("{n} more probes of {node}"), Duration::from_secs(30), || {
            let done = self.lab.fleet.kubelet_requests(node).len() >= target;
            async move { done.then_some(()) }
        })
        .await;
    }
}

fn series(name: &str, node: &str) -> String {
    format!(r#"{name}{{node="{node}"}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zombie_with_failing_probes_is_suspect_then_tainted_before_the_status_stale_threshold() {
    let lab = ProbedLab::start(5, "pev-").await;
    let running = lab.controller(|s| s.thresholds.probe_zombie_after = Duration::from_secs(6)).await;
    let client = lab.lab.client();
    wait_verdict(&running, "pev-0001", "healthy", Duration::from_secs(30)).await;
    eventually("pev-0001 probed successfully", Duration::from_secs(20), || {
        let ok = metric(&running.metrics.render(), &series("pulsecheck_node_probe_success", "pev-0001")) == Some(1.0);
        async move { ok.then_some(()) }
    })
    .await;
    assert_eq!(metric(&running.metrics.render(), r#"pulsecheck_probe_mode{mode="kubelet-healthz"}"#), Some(1.0));

    // The disk dies: status reports stop and the kubelet's health check fails; the Lease renews.
    let fault_at = tokio::time::Instant::now();
    lab.lab.fleet.set_fault("pev-0001", Fault::Zombie).unwrap();
    lab.lab.fleet.set_fault("pev-0001", Fault::ProbeFail).unwrap();

    // Three failures in a row are evidence, not yet proof.
    wait_verdict(&running, "pev-0001", "suspect", Duration::from_secs(20)).await;
    assert!(!has_our_taint(&get_node(&client, "pev-0001").await), "a suspect is not remediated");
    assert_eq!(metric(&running.metrics.render(), &series("pulsecheck_node_probe_success", "pev-0001")), Some(0.0));

    // Failing for --probe-zombie-after makes it a zombie, and it is tainted.
    eventually("pev-0001 tainted", Duration::from_secs(30), || {
        let client = client.clone();
        async move { has_our_taint(&get_node(&client, "pev-0001").await).then_some(()) }
    })
    .await;
    let took = fault_at.elapsed();
    eventually("pev-0001's condition False once it is tainted", Duration::from_secs(10), || {
        let client = client.clone();
        async move { our_condition(&get_node(&client, "pev-0001").await).is_some_and(|(s, _, _)| s == "False").then_some(()) }
    })
    .await;
    assert!(took < STATUS_STALE_AFTER, "tainted after {took:?}: probe evidence must beat --status-stale-after");
    let (status, _, message) = our_condition(&get_node(&client, "pev-0001").await).expect("our condition is written");
    assert_eq!(status, "False");
    assert!(message.contains("kubelet probe failed"), "the condition names the probe evidence: {message}");
    assert!(!message.contains("NodeStatus not refreshed"), "status staleness cannot be the reason yet: {message}");

    // Its neighbours are probed fine and left alone.
    let text = running.metrics.render();
    assert_eq!(metric(&text, &verdict_series("pev-0002", "healthy")), Some(1.0), "{text}");
    assert_eq!(metric(&text, "pulsecheck_probe_partition"), Some(0.0), "{text}");
    assert!(!has_our_taint(&get_node(&client, "pev-0002").await));

    // The kubelet heals: probes succeed and status reports resume; the taint is released.
    lab.lab.fleet.set_fault("pev-0001", Fault::Recover).unwrap();
    eventually("pev-0001 released", Duration::from_secs(40), || {
        let client = client.clone();
        async move { (!has_our_taint(&get_node(&client, "pev-0001").await)).then_some(()) }
    })
    .await;
    running.stop().await;
    lab.lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_refusing_the_token_is_a_missing_permission_not_a_dead_node() {
    let lab = ProbedLab::start(4, "pdn-").await;
    let running = lab.controller(|s| s.thresholds.probe_zombie_after = Duration::from_secs(2)).await;
    let client = lab.lab.client();
    wait_verdict(&running, "pdn-0001", "healthy", Duration::from_secs(30)).await;

    lab.lab.fleet.set_fault("pdn-0001", Fault::Unauthorized).unwrap();
    eventually("pulsecheck_probe_misconfigured is 1", Duration::from_secs(20), || {
        let set = metric(&running.metrics.render(), "pulsecheck_probe_misconfigured") == Some(1.0);
        async move { set.then_some(()) }
    })
    .await;
    // Well past the failure threshold and --probe-zombie-after, had 401s counted as failures.
    lab.wait_probes("pdn-0001", 10).await;
    wait_evaluations(&running, 2, Duration::from_secs(10)).await;
    let text = running.metrics.render();
    assert_eq!(metric(&text, &verdict_series("pdn-0001", "healthy")), Some(1.0), "{text}");
    assert_eq!(metric(&text, "pulsecheck_probe_misconfigured"), Some(1.0), "{text}");
    assert!(!has_our_taint(&get_node(&client, "pdn-0001").await));
    assert!(
        lab.lab.fleet.kubelet_requests("pdn-0001").iter().all(|r| r.authorization.as_deref() == Some("Bearer probe-evidence-token")),
        "every probe carried the token from --token-file"
    );

    // Permission restored: the configuration problem clears.
    lab.lab.fleet.set_fault("pdn-0001", Fault::Recover).unwrap();
    eventually("pulsecheck_probe_misconfigured back to 0", Duration::from_secs(20), || {
        let clear = metric(&running.metrics.render(), "pulsecheck_probe_misconfigured") == Some(0.0);
        async move { clear.then_some(()) }
    })
    .await;
    running.stop().await;
    lab.lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_failing_on_most_nodes_taint_nothing_and_report_a_partition() {
    let lab = ProbedLab::start(4, "ppt-").await;
    let running = lab
        .controller(|s| {
            s.thresholds.probe_zombie_after = Duration::from_secs(2);
            s.probe_partition_threshold = 50.0;
        })
        .await;
    let client = lab.lab.client();
    wait_verdict(&running, "ppt-0000", "healthy", Duration::from_secs(30)).await;

    // Three of four kubelets fail their probes at once: more likely pulsecheck's network than
    // three nodes dying together.
    for node in ["ppt-0001", "ppt-0002", "ppt-0003"] {
        lab.lab.fleet.set_fault(node, Fault::ProbeFail).unwrap();
    }
    eventually("pulsecheck_probe_partition is 1", Duration::from_secs(20), || {
        let set = metric(&running.metrics.render(), "pulsecheck_probe_partition") == Some(1.0);
        async move { set.then_some(()) }
    })
    .await;
    // Long enough for each of them to be a zombie on probe evidence alone, had it counted.
    for node in ["ppt-0001", "ppt-0002", "ppt-0003"] {
        lab.wait_probes(node, 10).await;
    }
    wait_evaluations(&running, 2, Duration::from_secs(10)).await;
    let text = running.metrics.render();
    assert_eq!(metric(&text, "pulsecheck_probe_partition"), Some(1.0), "{text}");
    for node in ["ppt-0000", "ppt-0001", "ppt-0002", "ppt-0003"] {
        assert_eq!(metric(&text, &verdict_series(node, "healthy")), Some(1.0), "{node}: {text}");
        assert!(!has_our_taint(&get_node(&client, node).await), "{node} tainted during a probe partition");
    }
    assert_eq!(metric(&text, r#"pulsecheck_remediations_total{action="taint",result="success"}"#), None, "{text}");

    // Two recover: one failing node of four is no partition, so its evidence counts again.
    lab.lab.fleet.set_fault("ppt-0001", Fault::Recover).unwrap();
    lab.lab.fleet.set_fault("ppt-0002", Fault::Recover).unwrap();
    eventually("ppt-0003 tainted once probes are trusted again", Duration::from_secs(30), || {
        let client = client.clone();
        async move { has_our_taint(&get_node(&client, "ppt-0003").await).then_some(()) }
    })
    .await;
    assert_eq!(metric(&running.metrics.render(), "pulsecheck_probe_partition"), Some(0.0));
    running.stop().await;
    lab.lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_healthz_without_a_way_to_trust_kubelets_probes_by_handshake_and_sends_no_token() {
    let lab = ProbedLab::start(3, "pfb-").await;
    // Neither --kubelet-certificate-authority nor --kubelet-insecure-tls.
    let running = controller(lab.lab.client(), |s| {
        s.probe.mode = ProbeMode::KubeletHealthz;
        s.probe.token_file = lab.files.token.clone();
        probe_fast(s);
    })
    .await;
    let text = running.metrics.render();
    assert_eq!(metric(&text, r#"pulsecheck_probe_mode{mode="tcp"}"#), Some(1.0), "{text}");
    assert_eq!(metric(&text, r#"pulsecheck_probe_mode{mode="kubelet-healthz"}"#), Some(0.0), "{text}");
    eventually("handshake probes succeed on every node", Duration::from_secs(30), || {
        let text = running.metrics.render();
        let all = ["pfb-0000", "pfb-0001", "pfb-0002"].iter().all(|n| metric(&text, &series("pulsecheck_node_probe_success", n)) == Some(1.0));
        async move { all.then_some(()) }
    })
    .await;
    for node in ["pfb-0000", "pfb-0001", "pfb-0002"] {
        assert_eq!(lab.lab.fleet.kubelet_requests(node), vec![], "{node}'s kubelet received an HTTP request (and so possibly the token)");
    }
    running.stop().await;
    lab.lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubelet_port_blocked_from_the_start_is_pulsecheck_s_misconfiguration_not_a_zombie() {
    let lab = ProbedLab::start(5, "pbk-").await;
    // A NetworkPolicy or security group blocks port 10250 of one node from pulsecheck, from the
    // start: pulsecheck never reached that kubelet, so failing to reach it says nothing about it.
    lab.lab.fleet.set_fault("pbk-0001", Fault::ProbeRefuse).unwrap();
    let running = lab.controller(|s| s.thresholds.probe_zombie_after = Duration::from_secs(2)).await;
    let client = lab.lab.client();
    wait_verdict(&running, "pbk-0001", "healthy", Duration::from_secs(30)).await;
    // Probes fail every 500 ms, far past --probe-zombie-after (2 s) and the failure threshold.
    wait_evaluations(&running, 16, Duration::from_secs(30)).await;
    let text = running.metrics.render();
    assert_eq!(metric(&text, &verdict_series("pbk-0001", "healthy")), Some(1.0), "{text}");
    assert_eq!(metric(&text, "pulsecheck_probe_partition"), Some(0.0), "one node of five is no partition: {text}");
    assert_eq!(metric(&text, "pulsecheck_probe_misconfigured"), Some(1.0), "reported as pulsecheck's own problem: {text}");
    let node = get_node(&client, "pbk-0001").await;
    assert!(!has_our_taint(&node), "tainted a healthy node whose kubelet port pulsecheck cannot reach");
    assert!(our_condition(&node).is_none_or(|(status, _, _)| status == "True"), "{:?}", our_condition(&node));
    // The Event names the node and the cause, once.
    let events = events_for(&client, "pbk-0001").await;
    let told: Vec<&(String, String)> = events.iter().filter(|(reason, _)| reason == "ProbeMisconfigured").collect();
    assert_eq!(told.len(), 1, "{events:?}");
    assert!(told[0].1.contains("no evidence against it"), "{events:?}");
    running.stop().await;
    lab.lab.stop().await;
}
