//! What a real kubelet shows when its disk dies — measured, not assumed (issue "Real nodes").
//!
//! Three real nodes at a time, one per fault, side by side in one cluster with
//! kube-controller-manager, each sampled every 2 s from the cluster (Lease, Ready and its
//! heartbeat, osImage, conditions, kube-controller-manager's taints) and from the controller's
//! position (the kubelet's read-only endpoints over verified TLS, with a token allowed only
//! those). The assertions are what the timelines showed on the first runs, so a kubelet that
//! starts behaving otherwise fails here first; the tables are written to
//! `$CARGO_TARGET_TMPDIR/kubelet-faults-*.md` (published in `docs/kubelet-faults.md`).
//!
//! Periods are compressed: status computed every 2 s and reported at least every 10 s, Lease of
//! 8 s renewed every 2 s, kube-controller-manager grace 12 s (monitor period 1 s).

use std::time::{Duration, Instant};

use pulsecheck_lab::{
    binaries::Binaries,
    controllers::Controller,
    controlplane::{ControlPlane, ControlPlaneOptions},
    realnode::{self, HostTools, KubeletTiming, NodeFault, RealNode, RealNodeOptions},
    timeline::{Recorder, Sample, Timeline},
};

/// How long each fault is watched, then how long the recovery.
const FAULT_FOR: Duration = Duration::from_secs(40);
const RECOVER_FOR: Duration = Duration::from_secs(24);
const EVERY: Duration = Duration::from_secs(2);
const TIMING: KubeletTiming = KubeletTiming {
    status_update_frequency: Some(Duration::from_secs(2)),
    status_report_frequency: Some(Duration::from_secs(10)),
    lease_duration: Some(Duration::from_secs(8)),
};

/// Two labs of three real nodes never run at once: two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn healthz(s: &Sample) -> &str {
    &s.endpoints[0]
}

fn lease_fresh(s: &Sample) -> bool {
    s.lease_age.is_some_and(|a| a < 8.0)
}

fn status_fresh(s: &Sample) -> bool {
    s.heartbeat_age.is_some_and(|a| a < 20.0)
}

fn unreachable(s: &Sample) -> bool {
    s.kcm_taints.iter().any(|t| t.starts_with("unreachable:"))
}

/// What one fault showed: the whole timeline, and the last sample before `recover`.
struct Measured {
    fault: NodeFault,
    timeline: Timeline,
    at_fault_end: Sample,
    /// From the recorder's first read of the kubelets to the end of the fault: the kubelet caches
    /// a reviewed token for 2 minutes.
    token_age_at_fault_end: Duration,
}

fn version_of(program: &str) -> String {
    let out = std::process::Command::new(program).arg("--version").output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    out.lines().next().unwrap_or("unknown").trim().to_owned()
}

/// Starts one real node per fault, lets them settle, injects the faults at once, samples for
/// [`FAULT_FOR`], recovers them all and samples for [`RECOVER_FOR`]; writes the tables to
/// `$CARGO_TARGET_TMPDIR/kubelet-faults-{part}.md`.
async fn measure(part: &str, faults: &[NodeFault]) -> Vec<Measured> {
    let _one = ONE_AT_A_TIME.lock().await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tools = HostTools::check().unwrap_or_else(|e| panic!("{e}"));
    let cp = ControlPlane::start(ControlPlaneOptions::default()).await.unwrap_or_else(|e| panic!("{e}"));
    let kcm_program = Binaries::locate().unwrap().require_kube_controller_manager().unwrap_or_else(|e| panic!("{e}")).to_path_buf();
    let kcm = Controller::kube_controller_manager(&kcm_program, cp.kubeconfig_path(), Duration::from_secs(12), &cp.dir().join("kcm.log")).unwrap();
    // The kubelets' read-only endpoints, read as a least-privilege caller would.
    let token = cp.kubelet_reader_token("kubelet-timeline", &["healthz", "pods", "configz", "stats"]).await.unwrap();
    let mut nodes = Vec::new();
    for fault in faults {
        let name = fault.to_string();
        let options = RealNodeOptions { name: name.clone(), dir: cp.dir().join("nodes").join(&name), timing: TIMING };
        let node = RealNode::start(&cp, &tools, options).await.unwrap_or_else(|e| panic!("{e}"));
        let recorder = Recorder::new(cp.client(), &name, node.address(), cp.ca_pem(), &token).unwrap();
        nodes.push((*fault, node, recorder, Timeline::new(&format!("{fault}, then recover at {}s", FAULT_FOR.as_secs()))));
    }
    // Every kubelet settled: Ready, renewing, reporting, its /healthz answering.
    let reads_began = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let samples = futures::future::join_all(nodes.iter().map(|(_, _, recorder, _)| recorder.sample(Instant::now()))).await;
        if samples.iter().all(|s| s.ready == "True" && lease_fresh(s) && status_fresh(s) && healthz(s) == "200") {
            break;
        }
        assert!(Instant::now() < deadline, "the real nodes did not settle: {samples:#?}");
        tokio::time::sleep(EVERY).await;
    }
    let kubelet = pulsecheck_lab::timeline::kubelet_version(&cp.client(), &nodes[0].0.to_string()).await;

    let started = Instant::now();
    for (fault, node, _, _) in &mut nodes {
        node.inject(*fault).unwrap();
    }
    let mut at_fault_end: Vec<Sample> = Vec::new();
    let mut token_age_at_fault_end = Duration::ZERO;
    while started.elapsed() < FAULT_FOR + RECOVER_FOR {
        let tick = Instant::now();
        let samples = futures::future::join_all(nodes.iter().map(|(_, _, recorder, _)| recorder.sample(started))).await;
        for ((_, _, _, timeline), sample) in nodes.iter_mut().zip(samples) {
            timeline.push(sample);
        }
        if at_fault_end.is_empty() && started.elapsed() >= FAULT_FOR {
            at_fault_end = nodes.iter().map(|(_, _, _, t)| t.last().unwrap().clone()).collect();
            token_age_at_fault_end = reads_began.elapsed();
            for (_, node, _, _) in &mut nodes {
                node.inject(NodeFault::Recover).unwrap();
            }
        }
        // The sampling period (a measurement's cadence, not a wait for something to happen).
        tokio::time::sleep(EVERY.saturating_sub(tick.elapsed())).await;
    }

    let mut report = format!("{kubelet} · {} · {}\n\n", version_of("containerd"), version_of("runc"));
    for (_, _, _, timeline) in &nodes {
        report.push_str(&timeline.table());
        report.push('\n');
    }
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("kubelet-faults-{part}.md"));
    std::fs::write(&path, &report).unwrap();
    println!("{report}\n(written to {})", path.display());

    let mut measured = Vec::new();
    for ((fault, node, _, timeline), at_fault_end) in nodes.into_iter().zip(at_fault_end) {
        node.stop().await;
        measured.push(Measured { fault, timeline, at_fault_end, token_age_at_fault_end });
    }
    kcm.stop().await;
    cp.stop().await.unwrap();
    measured
}

/// After `recover`, every node is itself again.
fn assert_recovered(measured: &[Measured]) {
    for m in measured {
        let last = m.timeline.last().unwrap();
        assert!(
            lease_fresh(last) && status_fresh(last) && last.ready == "True" && last.os_image == realnode::OS_IMAGE && healthz(last) == "200",
            "{} did not recover: {last:?}",
            m.fault
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dying_disk_shows_this_timeline_from_the_cluster_and_from_the_controllers_position() {
    let measured = measure("disk", &[NodeFault::DiskHang, NodeFault::DiskError, NodeFault::OsReleaseError]).await;
    let [hang, error, osr] = [0, 1, 2].map(|i| &measured[i]);

    // The seed: the Lease renews, the status stops, Kubernetes and /healthz say all is well.
    let end = &hang.at_fault_end;
    assert!(lease_fresh(end) && !status_fresh(end) && end.ready == "True" && end.kcm_taints.is_empty() && healthz(end) == "200", "disk-hang: {end:?}");
    // /healthz/syncloop, /pods and /configz answer through the hang too.
    assert!(end.endpoints[1..4].iter().all(|e| e == "200"), "disk-hang: {end:?}");
    // EIO on every file of the disk: from outside it looks like the seed's first symptom only —
    // osImage "Unknown", reports going on, Ready, /healthz 200 (the kubelet's loops do not stop
    // on an error, only on a hang).
    let end = &error.at_fault_end;
    assert!(end.os_image == "Unknown" && status_fresh(end) && lease_fresh(end) && end.ready == "True" && healthz(end) == "200", "disk-error: {end:?}");
    // Only /etc/os-release fails: osImage turns "Unknown" within a status period, reports go on.
    let end = &osr.at_fault_end;
    assert!(end.os_image == "Unknown" && status_fresh(end) && lease_fresh(end) && end.ready == "True", "os-release-error: {end:?}");
    let unknown = osr.timeline.first(|s| s.os_image == "Unknown").unwrap();
    assert!(unknown.at <= 12.0, "osImage turned Unknown {:.0}s after the fault", unknown.at);
    assert_recovered(&measured);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_kubelet_and_a_cut_network_show_this_timeline_from_the_cluster_and_from_the_controllers_position() {
    let measured = measure("stop-and-network", &[NodeFault::KubeletStop, NodeFault::NetCut, NodeFault::ProbeCut]).await;
    let [stop, cut, probe] = [0, 1, 2].map(|i| &measured[i]);

    // A stopped kubelet: everything stops, and Kubernetes calls it unreachable.
    let end = &stop.at_fault_end;
    assert!(!lease_fresh(end) && end.ready == "Unknown" && unreachable(end) && healthz(end) == "timeout", "kubelet-stop: {end:?}");
    // Cut off from the apiserver: Kubernetes calls it unreachable; its kubelet still answers
    // (a token it reviewed within the last 2 min is cached; after that it cannot review it).
    let end = &cut.at_fault_end;
    assert!(!lease_fresh(end) && end.ready == "Unknown" && unreachable(end), "net-cut: {end:?}");
    if cut.token_age_at_fault_end < Duration::from_secs(110) {
        assert_eq!(healthz(end), "200", "net-cut, token reviewed {:?} before: {end:?}", cut.token_age_at_fault_end);
    } else {
        assert!(["200", "401"].contains(&healthz(end)), "net-cut: {end:?}");
    }
    // Its kubelet port cut from outside: the cluster sees nothing wrong.
    let end = &probe.at_fault_end;
    assert!(lease_fresh(end) && status_fresh(end) && end.ready == "True" && end.kcm_taints.is_empty() && healthz(end) == "timeout", "probe-cut: {end:?}");
    assert_recovered(&measured);
}
