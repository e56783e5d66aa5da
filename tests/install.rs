//! pulsecheck installed as an operator installs it: the image `make image` built
//! (`target/image/pulsecheck.tar`), loaded into a real node's containerd with `pulsecheck-lab
//! import`, then the chart (`helm install`, only the image coordinates and pull policy set) and
//! the kustomize base (`kubectl apply -k manifests/`, unchanged) on a cluster that runs Pods as a
//! real one does: kube-scheduler, kube-controller-manager with its default controllers, kube-proxy
//! and the `kubernetes` Service. Proves that the Pod becomes Ready on the real node under its
//! own ServiceAccount; that it taints a zombie (simulated nodes beside it, untainted by Pods),
//! the Event naming the Pod as reporting instance; that `helm upgrade` with a changed value rolls
//! it with one leader at a time; and that the documented uninstall (scale to zero, the in-cluster
//! `pulsecheck cleanup`, uninstall) leaves no taint, annotation or condition on any Node.

mod common;

use std::{path::PathBuf, time::Duration};

use common::*;
use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{Node, Pod},
    events::v1::Event,
};
use kube::{
    Api,
    api::{ListParams, Patch, PatchParams},
};
use pulsecheck::names;
use pulsecheck_lab::{
    controlplane::{ControlPlane, ControlPlaneOptions},
    fleet::{Fault, Fleet, FleetOptions},
    image, realnode,
    realnode::{RealFleet, RealFleetOptions},
};

/// A Pod that starts from an imported image on a busy two-core machine.
const POD_READY: Duration = Duration::from_secs(120);
/// From the zombie's evidence to its taint, at the chart's defaults (two supporting kinds of
/// evidence make a Zombie at once; the guard and the confirming read follow).
const TAINTED: Duration = Duration::from_secs(90);

/// The lab of these tests: one real node for Pods, four simulated ones beside it.
struct InstallLab {
    fleet: Fleet,
    real: RealFleet,
    cp: ControlPlane,
    reference: String,
}

impl InstallLab {
    async fn start() -> InstallLab {
        init();
        let archive = repo().join("target/image/pulsecheck.tar");
        assert!(archive.is_file(), "{} is missing: `make image` builds it (make test does first)", archive.display());
        let reference = image::archive_reference(&archive).unwrap_or_else(|e| panic!("{e}"));
        let cp = ControlPlane::start(ControlPlaneOptions { dir: None, service_accounts: true }).await.unwrap_or_else(|e| panic!("{e}"));
        let options = RealFleetOptions { nodes: 1, timing: real::TIMING, kcm_grace: Duration::from_secs(50) };
        let real = RealFleet::start(&cp, &options).await.unwrap_or_else(|e| panic!("{e}"));
        let imported = realnode::import_into_lab(cp.dir(), &archive).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(imported, ["real-1"]);
        let fleet = Fleet::start(
            cp.client(),
            FleetOptions { nodes: 4, name_prefix: "sim-".into(), kubelet_endpoints: false, force: true, no_pods: true, ..Default::default() },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        InstallLab { fleet, real, cp, reference }
    }

    fn kubectl(&self, args: &[&str]) -> String {
        run(tool("kubectl"), self.cp.kubeconfig_path(), "--kubeconfig", args)
    }

    fn helm(&self, args: &[&str]) -> String {
        run(tool("helm"), self.cp.kubeconfig_path(), "--kubeconfig", args)
    }

    /// The image coordinates of the archive, and `imagePullPolicy: Never` (nothing is pulled).
    fn image_values(&self) -> Vec<String> {
        let (repository, tag) = self.reference.rsplit_once(':').expect("the reference has a tag");
        vec![
            "--set".into(),
            format!("image.repository={repository}"),
            "--set".into(),
            format!("image.tag={tag}"),
            "--set".into(),
            "image.pullPolicy=Never".into(),
        ]
    }

    async fn stop(self) {
        self.fleet.stop().await;
        self.real.stop().await;
        self.cp.stop().await.unwrap();
    }
}

fn run(program: PathBuf, kubeconfig: &std::path::Path, flag: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(&program).arg(flag).arg(kubeconfig).args(args).output().expect("the tool runs");
    assert!(out.status.success(), "{} {args:?} failed: {}\n{}", program.display(), String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The one Ready pulsecheck Pod in namespace `pulsecheck`, other than `not`.
async fn ready_pod(client: &kube::Client, not: Option<&str>) -> Pod {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "pulsecheck");
    eventually("a Ready pulsecheck Pod", POD_READY, || {
        let pods = pods.clone();
        async move {
            let list = pods.list(&ListParams::default().labels("app.kubernetes.io/name=pulsecheck")).await.ok()?;
            list.items.into_iter().find(|p| {
                let ready = p.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                ready && p.metadata.deletion_timestamp.is_none() && p.metadata.name.as_deref() != not
            })
        }
    })
    .await
}

/// What node-problem-detector and a wedged cadvisor say of `node`: osImage "Unknown" and
/// `ReadonlyFilesystem=True`, two supporting kinds of evidence, a Zombie at once.
async fn make_zombie(lab: &InstallLab, node: &str) {
    lab.fleet.set_fault(node, Fault::OsImageUnknown).unwrap();
    let condition = serde_json::json!({"status": {"conditions": [{
        "type": "ReadonlyFilesystem", "status": "True", "reason": "FilesystemIsReadOnly",
        "message": "/ remounted read-only", "lastHeartbeatTime": k8s_openapi::jiff::Timestamp::now().to_string(),
        "lastTransitionTime": k8s_openapi::jiff::Timestamp::now().to_string(),
    }]}});
    Api::<Node>::all(lab.cp.client())
        .patch_status(node, &PatchParams { field_manager: Some("node-problem-detector".into()), ..Default::default() }, &Patch::Strategic(&condition))
        .await
        .expect("the problem condition is set");
}

/// The Events pulsecheck wrote about `node`, as (reason, reporting instance).
async fn events_about(client: &kube::Client, node: &str) -> Vec<(String, String)> {
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let list = events.list(&ListParams::default()).await.expect("Events list");
    list.items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(node))
        .filter(|e| e.reporting_controller.as_deref().is_some_and(|c| c.contains("pulsecheck")))
        .map(|e| (e.reason.unwrap_or_default(), e.reporting_instance.unwrap_or_default()))
        .collect()
}

/// Nothing of pulsecheck's on any Node: no taint, no record annotation, no condition.
async fn nothing_left(client: &kube::Client) -> Vec<String> {
    let nodes = Api::<Node>::all(client.clone()).list(&ListParams::default()).await.expect("Nodes list");
    let mut left = Vec::new();
    for n in nodes.items {
        let name = n.metadata.name.clone().unwrap_or_default();
        if has_our_taint(&n) {
            left.push(format!("{name}: taint"));
        }
        if n.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(names::REMEDIATION_ANNOTATION)) {
            left.push(format!("{name}: annotation"));
        }
        if our_condition(&n).is_some() {
            left.push(format!("{name}: condition"));
        }
    }
    left
}

/// The leader Lease's holder, if any, and its count of transitions.
async fn leader(client: &kube::Client) -> (Option<String>, i32) {
    let lease = Api::<Lease>::namespaced(client.clone(), "pulsecheck").get_opt("pulsecheck").await.ok().flatten();
    let spec = lease.and_then(|l| l.spec).unwrap_or_default();
    (spec.holder_identity.filter(|h| !h.is_empty()), spec.lease_transitions.unwrap_or(0))
}

/// The uninstall of docs/install.md, step by step: scale to zero, the in-cluster cleanup under
/// pulsecheck's ServiceAccount, then `delete` (helm uninstall or kubectl delete -k).
async fn documented_uninstall(lab: &InstallLab, delete: &[&str]) {
    let client = lab.cp.client();
    lab.kubectl(&["-n", "pulsecheck", "scale", "deploy/pulsecheck", "--replicas=0"]);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "pulsecheck");
    eventually("no pulsecheck Pod left", POD_READY, || {
        let pods = pods.clone();
        async move { pods.list(&ListParams::default().labels("app.kubernetes.io/name=pulsecheck")).await.ok()?.items.is_empty().then_some(()) }
    })
    .await;
    let overrides = docs_cleanup_overrides(&lab.reference);
    let out = lab.kubectl(&[
        "-n",
        "pulsecheck",
        "run",
        "pulsecheck-cleanup",
        "--rm",
        "--attach",
        "--restart=Never",
        &format!("--image={}", lab.reference),
        &format!("--overrides={overrides}"),
    ]);
    assert!(!out.is_empty(), "the cleanup printed nothing");
    assert_eq!(nothing_left(&client).await, Vec::<String>::new(), "after the cleanup: {out}");
    match delete {
        ["helm", rest @ ..] => {
            lab.helm(rest);
        }
        kubectl => {
            lab.kubectl(kubectl);
        }
    }
    assert_eq!(nothing_left(&client).await, Vec::<String>::new());
}

/// The `--overrides` of the in-cluster cleanup in docs/install.md, taken from the page.
fn docs_cleanup_overrides(reference: &str) -> String {
    let page = std::fs::read_to_string(repo().join("docs/install.md")).unwrap();
    let start = page.find("--overrides='").expect("docs/install.md has the in-cluster cleanup") + "--overrides='".len();
    let end = start + page[start..].find('\'').unwrap();
    let overrides = &page[start..end];
    assert!(overrides.contains("serviceAccountName"), "{overrides}");
    overrides.replace(&image::pulsecheck_reference(), reference)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_runs_the_image_built_here_on_a_real_node_taints_a_zombie_rolls_on_upgrade_and_uninstalls_clean() {
    let _one = real::ONE_AT_A_TIME.lock().await;
    let lab = InstallLab::start().await;
    let client = lab.cp.client();
    let chart = repo().join("charts/pulsecheck");
    let chart = chart.to_str().unwrap();
    // The namespace as the docs ask for it: labelled for the restricted Pod Security level, which
    // the chart's Pod and the documented cleanup Pod must pass.
    lab.kubectl(&["apply", "-f", repo().join("manifests/namespace.yaml").to_str().unwrap()]);
    let mut install = vec!["install", "pulsecheck", chart, "--namespace", "pulsecheck"];
    let values = lab.image_values();
    install.extend(values.iter().map(String::as_str));
    lab.helm(&install);
    let pod = ready_pod(&client, None).await;
    let pod_name = pod.metadata.name.clone().unwrap();
    let spec = pod.spec.clone().unwrap();
    assert_eq!(spec.node_name.as_deref(), Some("real-1"), "the Pod runs on the real node");
    assert_eq!(spec.service_account_name.as_deref(), Some("pulsecheck"));

    make_zombie(&lab, "sim-0002").await;
    wait_node(&client, "sim-0002", "the zombie tainted by the Pod", TAINTED, has_our_taint).await;
    let events = events_about(&client, "sim-0002").await;
    assert!(events.iter().any(|(reason, instance)| reason == "Tainted" && instance.starts_with(&pod_name)), "{events:?}");
    for healthy in ["sim-0000", "sim-0001", "sim-0003", "real-1"] {
        assert!(!has_our_taint(&get_node(&client, healthy).await), "{healthy} tainted");
    }

    // An upgrade that changes a value rolls the Pod; the Lease passes from the old Pod to the new
    // one exactly once (every acquisition by another holder counts a transition: a Lease that
    // went back, or to and fro, would count more).
    let (first_leader, transitions_before) = leader(&client).await;
    let first_leader = first_leader.expect("a leader");
    assert!(first_leader.starts_with(&pod_name), "{first_leader}");
    let mut upgrade = vec!["upgrade", "pulsecheck", chart, "--namespace", "pulsecheck", "--set", "config.recoverAfter=3m"];
    upgrade.extend(values.iter().map(String::as_str));
    lab.helm(&upgrade);
    let new_pod = ready_pod(&client, Some(&pod_name)).await;
    let new_name = new_pod.metadata.name.clone().unwrap();
    let args = new_pod.spec.unwrap().containers[0].args.clone().unwrap_or_default();
    assert!(args.iter().any(|a| a == "--recover-after=3m"), "{args:?}");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "pulsecheck");
    eventually("the old Pod gone", POD_READY, || {
        let pods = pods.clone();
        let old = pod_name.clone();
        async move { pods.get_opt(&old).await.ok()?.is_none().then_some(()) }
    })
    .await;
    let new_leader = eventually("the new Pod leading", POD_READY, || {
        let client = client.clone();
        let new_name = new_name.clone();
        async move {
            let (holder, transitions) = leader(&client).await;
            holder.filter(|h| h.starts_with(&new_name)).map(|_| transitions)
        }
    })
    .await;
    assert_eq!(new_leader, transitions_before + 1, "the Lease changed hands more than once");

    documented_uninstall(&lab, &["helm", "uninstall", "pulsecheck", "--namespace", "pulsecheck"]).await;
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kustomize_base_runs_the_image_built_here_unchanged_taints_a_zombie_and_uninstalls_clean() {
    let _one = real::ONE_AT_A_TIME.lock().await;
    let lab = InstallLab::start().await;
    let client = lab.cp.client();
    let base = repo().join("manifests");
    lab.kubectl(&["apply", "-k", base.to_str().unwrap()]);
    let pod = ready_pod(&client, None).await;
    let pod_name = pod.metadata.name.clone().unwrap();
    assert_eq!(pod.spec.as_ref().unwrap().node_name.as_deref(), Some("real-1"));
    make_zombie(&lab, "sim-0003").await;
    wait_node(&client, "sim-0003", "the zombie tainted by the Pod", TAINTED, has_our_taint).await;
    let events = events_about(&client, "sim-0003").await;
    assert!(events.iter().any(|(reason, instance)| reason == "Tainted" && instance.starts_with(&pod_name)), "{events:?}");
    documented_uninstall(&lab, &["delete", "-k", base.to_str().unwrap()]).await;
    lab.stop().await;
}
