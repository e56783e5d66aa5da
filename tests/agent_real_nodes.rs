//! The seed failure caught in under a minute, on real nodes: the chart with `agent.enabled=true`
//! (the image `make image` built, imported into two real nodes' containerd), kubelets at their
//! upstream default periods (status reported every 5 minutes, Lease of 40 s), so nothing
//! cluster-side could see a wedged status loop before ten minutes. The agent's DaemonSet Pods
//! are deleted and rolled without a remediation; then one node's whole disk hangs, and the other
//! node's `/etc/os-release` read fails: each is tainted within 60 s, the evidence naming the path,
//! while Kubernetes still says Ready.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{Node, Pod},
};
use kube::{Api, api::ListParams};
use pulsecheck::agent::{self, DiskHealth, Report};
use pulsecheck_lab::{
    controlplane::{ControlPlane, ControlPlaneOptions},
    fleet::{Fleet, FleetOptions},
    image,
    realnode::{self, KubeletTiming, NodeFault, RealFleet, RealFleetOptions},
};

/// A Pod started from an imported image on a busy two-core machine.
const POD_READY: Duration = Duration::from_secs(180);
/// The promise: tainted within a minute of the fault (docs/performance.md has the
/// measured times).
const CAUGHT: Duration = Duration::from_secs(60);

struct AgentLab {
    fleet: Fleet,
    real: RealFleet,
    cp: ControlPlane,
}

impl AgentLab {
    fn kubectl(&self, args: &[&str]) -> String {
        run_tool(tool("kubectl"), self.cp.kubeconfig_path(), "--kubeconfig", args)
    }
}

/// Each agent Pod by node, once every node in `nodes` has a Ready one.
async fn agent_pods(client: &kube::Client, nodes: &[&str]) -> Vec<(String, String)> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "pulsecheck");
    eventually("a Ready agent Pod on every real node", POD_READY, || {
        let pods = pods.clone();
        async move {
            let list = pods.list(&ListParams::default().labels("app.kubernetes.io/name=pulsecheck-agent")).await.ok()?;
            let ready: Vec<(String, String)> = list
                .items
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter(|p| p.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True")))
                .filter_map(|p| Some((p.spec?.node_name?, p.metadata.name?)))
                .collect();
            (nodes.iter().all(|n| ready.iter().filter(|(on, _)| on == n).count() == 1) && ready.len() == nodes.len()).then_some(ready)
        }
    })
    .await
}

/// The report in node `node`'s agent Lease and its holder, if the Lease exists.
async fn agent_report(client: &kube::Client, node: &str) -> Option<(Report, String)> {
    let lease = Api::<Lease>::namespaced(client.clone(), "pulsecheck").get_opt(&agent::lease_name(node)?).await.ok()??;
    let report = Report::from_annotation(lease.metadata.annotations.as_ref()?.get(agent::REPORT_ANNOTATION)?).ok()?;
    Some((report, lease.spec?.holder_identity?))
}

/// Waits until every agent Pod in `pods` holds its node's Lease and reports its disk ok.
async fn agents_report_ok(client: &kube::Client, pods: &[(String, String)]) {
    for (node, pod) in pods {
        eventually(&format!("{pod} reports {node}'s disk ok"), Duration::from_secs(60), || async move {
            agent_report(client, node).await.filter(|(r, holder)| r.disk == DiskHealth::Ok && !r.terminating && holder == pod).map(|_| ())
        })
        .await;
    }
}

/// Nodes carrying pulsecheck's taint, and real nodes pulsecheck called zombies in an Event.
async fn condemned(client: &kube::Client, real: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for n in Api::<Node>::all(client.clone()).list(&ListParams::default()).await.expect("Nodes list").items {
        if has_our_taint(&n) {
            found.push(format!("{} tainted", n.metadata.name.unwrap_or_default()));
        }
    }
    for node in real {
        if events_for(client, node).await.iter().any(|(reason, _)| reason == "ZombieDetected") {
            found.push(format!("{node} judged a zombie"));
        }
    }
    found
}

fn ready(node: &Node) -> Option<String> {
    node.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready").map(|c| c.status.clone())
}

/// Injects `fault` into `victim` and waits for pulsecheck's taint; how long it took, and the
/// node's condition message.
async fn caught(lab: &AgentLab, victim: &str, fault: NodeFault) -> (Duration, String) {
    let client = lab.cp.client();
    let started = tokio::time::Instant::now();
    lab.real.inject(victim, fault).await.unwrap_or_else(|e| panic!("{e}"));
    let node = wait_node(&client, victim, &format!("{victim} tainted within {CAUGHT:?} of {fault:?}"), CAUGHT, has_our_taint).await;
    let took = started.elapsed();
    assert_eq!(ready(&node).as_deref(), Some("True"), "Kubernetes still calls {victim} Ready: {:?}", node.status);
    let message = wait_node(&client, victim, "the condition explaining the taint", Duration::from_secs(30), |n| {
        our_condition(n).is_some_and(|(status, _, _)| status == "False")
    })
    .await;
    (took, our_condition(&message).map(|(_, _, m)| m).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_catches_a_real_node_whose_disk_hangs_within_a_minute_while_kubernetes_says_ready_and_its_rollouts_condemn_nobody() {
    init();
    let archive = repo().join("target/image/pulsecheck.tar");
    assert!(archive.is_file(), "{} is missing: `make image` builds it (make test does first)", archive.display());
    image::archive_reference(&archive).unwrap_or_else(|e| panic!("{e}"));
    let cp = ControlPlane::start(ControlPlaneOptions { dir: None, service_accounts: true }).await.unwrap_or_else(|e| panic!("{e}"));
    // Upstream kubelet defaults: status every 10 s, reported at least every 5 min, Lease 40 s.
    let options = RealFleetOptions { nodes: 2, timing: KubeletTiming::default(), kcm_grace: Duration::from_secs(50) };
    let real = RealFleet::start(&cp, &options).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(realnode::import_into_lab(cp.dir(), &archive).unwrap_or_else(|e| panic!("{e}")), ["real-1", "real-2"]);
    let fleet = Fleet::start(
        cp.client(),
        FleetOptions { nodes: 3, name_prefix: "sim-".into(), kubelet_endpoints: false, force: true, no_pods: true, ..Default::default() },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let lab = AgentLab { fleet, real, cp };
    let client = lab.cp.client();
    let real_nodes = ["real-1", "real-2"];

    // The agent's hostPaths need the privileged Pod Security level (docs/install.md).
    lab.kubectl(&["create", "namespace", "pulsecheck"]);
    lab.kubectl(&["label", "namespace", "pulsecheck", "pod-security.kubernetes.io/enforce=privileged", "pod-security.kubernetes.io/warn=restricted"]);
    let chart = repo().join("charts/pulsecheck");
    // Two faults one after the other on a fleet of five: the guard's default 20 % would hold the
    // second behind the first.
    // The agents run where Pods run: not on the simulated nodes (no kubelet runs their Pods).
    let on_real_nodes = format!("agent.nodeSelector.{}=true", realnode::REAL_NODE_LABEL.replace('.', "\\."));
    run_tool(
        tool("helm"),
        lab.cp.kubeconfig_path(),
        "--kubeconfig",
        &[
            "install",
            "pulsecheck",
            chart.to_str().unwrap(),
            "--namespace",
            "pulsecheck",
            "--set",
            "agent.enabled=true",
            "--set-string",
            &on_real_nodes,
            "--set",
            "config.maxUnhealthy=50",
        ],
    );
    let pods = agent_pods(&client, &real_nodes).await;
    agents_report_ok(&client, &pods).await;
    let controller_pod = Api::<Pod>::namespaced(client.clone(), "pulsecheck")
        .list(&ListParams::default().labels("app.kubernetes.io/name=pulsecheck"))
        .await
        .expect("Pods list")
        .items
        .into_iter()
        .find_map(|p| p.spec?.node_name)
        .expect("the controller's Pod is scheduled");

    // A healthy fleet whose agents come and go: an agent Pod deleted, the DaemonSet rolled.
    let (node, pod) = pods.iter().find(|(n, _)| *n != controller_pod).unwrap().clone();
    lab.kubectl(&["-n", "pulsecheck", "delete", "pod", &pod, "--wait=true"]);
    let pods = agent_pods(&client, &real_nodes).await;
    assert!(pods.iter().all(|(_, p)| *p != pod), "{pod} replaced: {pods:?}");
    agents_report_ok(&client, &pods).await;
    lab.kubectl(&["-n", "pulsecheck", "rollout", "restart", "daemonset/pulsecheck-agent"]);
    lab.kubectl(&["-n", "pulsecheck", "rollout", "status", "daemonset/pulsecheck-agent", "--timeout=300s"]);
    let pods = agent_pods(&client, &real_nodes).await;
    agents_report_ok(&client, &pods).await;
    assert_eq!(condemned(&client, &real_nodes).await, Vec::<String>::new(), "agents deleted and rolled condemned a healthy node");

    // The whole disk of the node without pulsecheck's own Pod hangs.
    let (took, message) = caught(&lab, &node, NodeFault::DiskHang).await;
    assert!(message.contains("pulsecheck-agent:") && message.contains("hung"), "{message}");
    assert!(message.contains("/etc/os-release") || message.contains("/var/lib/kubelet/pulsecheck-agent"), "the evidence names the path: {message}");
    eprintln!("disk-hang on {node} tainted after {took:?}: {message}");

    // The other node cannot read /etc/os-release (EIO), as in the seed.
    let (took, message) = caught(&lab, &controller_pod, NodeFault::OsReleaseError).await;
    assert!(message.contains("read of /etc/os-release failing") && message.contains("os error 5"), "{message}");
    eprintln!("os-release-error on {controller_pod} tainted after {took:?}: {message}");

    for n in real_nodes {
        lab.real.inject(n, NodeFault::Recover).await.unwrap_or_else(|e| panic!("{e}"));
    }
    lab.fleet.stop().await;
    lab.real.stop().await;
    lab.cp.stop().await.unwrap();
}
