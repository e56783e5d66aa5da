//! Each node is judged against its own status cadence (issue "Safety", item 4), end to end:
//! `pulsecheck run` in-process against a real kube-apiserver, with the simulated fleet's kubelet
//! endpoints answering `/configz` as kubelets configured so would, and with no probes at all.
//!
//! Time is compressed as everywhere in the lab: `--status-stale-after` stands for the default 10
//! minutes, and the fleets report every 1 s (a kubelet at `nodeStatusReportFrequency: 4s`), every
//! 20 s (one at `20m`), or every 6 s (one whose cadence can only be learned by watching it).

mod common;

use std::time::Duration;

use common::*;
use pulsecheck::{config::Settings, controller::Running};
use pulsecheck_lab::fleet::{Fault, FleetOptions};

/// A lab whose nodes serve kubelet endpoints, and the files `--probe=kubelet-healthz` needs.
struct ProbedLab {
    lab: Lab,
    files: KubeletProbeFiles,
}

impl ProbedLab {
    async fn start(opts: FleetOptions) -> ProbedLab {
        let lab = Lab::start(FleetOptions { kubelet_endpoints: true, ..opts }).await;
        let files = KubeletProbeFiles::write(&lab.fleet, "cadence-token");
        ProbedLab { lab, files }
    }

    /// The controller probing every 500 ms over verified TLS (and so reading `/configz`).
    async fn controller(&self, tweak: impl FnOnce(&mut Settings)) -> Running {
        controller(self.lab.client(), |s| {
            self.files.verified(s);
            s.probe_every(Duration::from_millis(500));
            s.probe.timeout = Duration::from_millis(400);
            tweak(s);
        })
        .await
    }
}

fn threshold_series(node: &str) -> String {
    format!(r#"pulsecheck_node_status_threshold_seconds{{node="{node}"}}"#)
}

/// Waits until the metrics say `node`'s status threshold is `seconds`.
async fn wait_threshold(running: &Running, node: &str, seconds: f64) {
    eventually(&format!("{node}'s status threshold {seconds}s"), Duration::from_secs(30), || {
        let text = running.metrics.render();
        let got = metric(&text, &threshold_series(node));
        async move { (got == Some(seconds)).then_some(()) }
    })
    .await;
}

/// Fails if any verdict other than healthy (or unknown, before a first renewal) was reported.
fn assert_nothing_but_health(running: &Running) {
    let text = running.metrics.render();
    for verdict in ["suspect", "dead", "zombie"] {
        assert_eq!(metric(&text, &format!(r#"pulsecheck_verdict_changes_total{{verdict="{verdict}"}}"#)), None, "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubelet_that_reports_every_second_is_caught_by_its_own_cadence_long_before_the_flag() {
    // The flag stands at a minute; the kubelets say (/configz) they report every second.
    const FLAG: Duration = Duration::from_secs(60);
    let lab = ProbedLab::start(FleetOptions { status_report_frequency: Duration::from_secs(1), ..fast_fleet(3, "cfast-") }).await;
    let running = lab.controller(|s| s.thresholds.status_stale_after = FLAG).await;
    let client = lab.lab.client();
    // max(2·(1 s + 1 s), Lease grace + 1.5·1 s + 1 s) = 7.5 s, the grace being 5 s (the 4 s
    // Lease plus a quarter): a powered-off node's Lease goes stale before its status does.
    for node in lab.lab.fleet.node_names() {
        wait_threshold(&running, &node, 7.5).await;
    }
    assert_eq!(metric(&running.metrics.render(), r#"pulsecheck_status_threshold_nodes{source="kubelet"}"#), Some(3.0));
    assert_eq!(metric(&running.metrics.render(), r#"pulsecheck_kubelet_configz_reads_total{result="ok"}"#).map(|n| n >= 3.0), Some(true));
    wait_verdict(&running, "cfast-0001", "healthy", Duration::from_secs(30)).await;

    // The disk hangs: status reports stop, the Lease renews, /healthz still answers ok.
    let wedged_at = tokio::time::Instant::now();
    lab.lab.fleet.set_fault("cfast-0001", Fault::Zombie).unwrap();
    // The taint and the condition are two writes, the condition a moment after the taint.
    let condemned = eventually("cfast-0001 tainted by its own cadence, and its condition False", FLAG / 2, || {
        let client = client.clone();
        async move {
            let n = get_node(&client, "cfast-0001").await;
            let condition = our_condition(&n).filter(|(status, _, _)| status == "False");
            condition.filter(|_| has_our_taint(&n))
        }
    })
    .await;
    let took = wedged_at.elapsed();
    assert!(took < FLAG / 2, "caught after {took:?}; the flag alone would take {FLAG:?}");
    let (_, _, message) = condemned;
    assert!(message.contains("NodeStatus not refreshed"), "{message}");
    // Its neighbours, on the same cadence, stay healthy.
    assert!(!has_our_taint(&get_node(&client, "cfast-0002").await));
    assert_eq!(metric(&running.metrics.render(), &verdict_series("cfast-0002", "healthy")), Some(1.0));
    running.stop().await;
    lab.lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubelet_that_reports_rarely_is_never_judged_stale_between_its_reports() {
    // Reports every 20 s (and up to 31 s after its start's jitter) against an 8 s flag: a 20m
    // reporter against the default 10m. Its /configz says so: 2·(20 s + 1 s) = 42 s.
    let report = Duration::from_secs(20);
    let lab = ProbedLab::start(FleetOptions { status_report_frequency: report, ..fast_fleet(3, "cslow-") }).await;
    let running = lab.controller(|_| {}).await;
    for node in lab.lab.fleet.node_names() {
        wait_threshold(&running, &node, 42.0).await;
    }
    // Two and a half report periods under the controller's eyes: every node reports at least twice.
    let start = tokio::time::Instant::now();
    while start.elapsed() < report * 5 / 2 {
        wait_evaluations(&running, 4, Duration::from_secs(30)).await;
        assert_nothing_but_health(&running);
    }
    let text = running.metrics.render();
    assert_eq!(metric(&text, r#"pulsecheck_nodes{verdict="healthy"}"#), Some(3.0), "{text}");
    let client = lab.lab.client();
    for node in lab.lab.fleet.node_names() {
        assert!(!has_our_taint(&get_node(&client, &node).await), "{node} tainted");
        assert!(events_for(&client, &node).await.is_empty(), "{node} got Events");
    }
    running.stop().await;
    lab.lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_configz_the_intervals_seen_lengthen_the_threshold_of_a_slow_reporter() {
    // No probes, so no /configz: kubelets reporting every 6 s (7 s with the update period),
    // close to the 8 s flag, and up to 3 s later after their start. pulsecheck learns the
    // intervals on the kubelets' own clocks and doubles the longest.
    let lab = Lab::start(FleetOptions { status_report_frequency: Duration::from_secs(6), ..fast_fleet(3, "cseen-") }).await;
    let running = controller(lab.client(), |_| {}).await;
    eventually("every node's threshold learned from what was seen", Duration::from_secs(60), || {
        let text = running.metrics.render();
        let learned = metric(&text, r#"pulsecheck_status_threshold_nodes{source="observed"}"#) == Some(3.0);
        async move { learned.then_some(()) }
    })
    .await;
    let text = running.metrics.render();
    for node in lab.fleet.node_names() {
        let threshold = metric(&text, &threshold_series(&node)).expect("a threshold per node");
        assert!(threshold >= 12.0, "{node}: twice an interval of at least 6 s, got {threshold}");
    }
    assert_nothing_but_health(&running);
    running.stop().await;
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_that_makes_kubelets_report_less_often_condemns_none_of_them() {
    // The pool reports every second (/configz: 7.5 s threshold against a 60 s flag); a rollout
    // restarts every kubelet with nodeStatusReportFrequency 20 s (a 1m → 20m rollout). Each
    // reports at its restart and then not for 10 … 30 s. Before pulsecheck read /configz again
    // after a report, the configuration it held (1 s) condemned every node 7.5 s after its
    // restart.
    const FLAG: Duration = Duration::from_secs(60);
    let lab = ProbedLab::start(FleetOptions { status_report_frequency: Duration::from_secs(1), ..fast_fleet(3, "croll-") }).await;
    let running = lab.controller(|s| s.thresholds.status_stale_after = FLAG).await;
    for node in lab.lab.fleet.node_names() {
        wait_threshold(&running, &node, 7.5).await;
    }
    wait_evaluations(&running, 4, Duration::from_secs(30)).await;
    assert_nothing_but_health(&running);
    let report = Duration::from_secs(20);
    for node in lab.lab.fleet.node_names() {
        lab.lab.fleet.restart_kubelet(&node, report).unwrap();
    }
    // Through the longest quiet spell after a restart (1.5 × 20 s) nothing but health ...
    let restarted = tokio::time::Instant::now();
    while restarted.elapsed() < report * 3 / 2 + Duration::from_secs(2) {
        wait_evaluations(&running, 4, Duration::from_secs(30)).await;
        assert_nothing_but_health(&running);
    }
    // ... and every node has learned its new configuration: 2·(20 s + 1 s) = 42 s.
    for node in lab.lab.fleet.node_names() {
        wait_threshold(&running, &node, 42.0).await;
    }
    let client = lab.lab.client();
    for node in lab.lab.fleet.node_names() {
        assert!(!has_our_taint(&get_node(&client, &node).await), "{node} tainted");
    }
    running.stop().await;
    lab.lab.stop().await;
}
