//! pulsecheck installed as an operator installs it: the image `make image` built
//! (`target/image/pulsecheck.tar`), loaded into a real node's containerd with `pulsecheck-lab
//! import`, on a cluster that runs Pods as a real one does: kube-scheduler,
//! kube-controller-manager with its default controllers, kube-proxy and the `kubernetes` Service.
//!
//! The chart: docs/install.md walked as written — every `sh` block of the page run by bash in
//! page order, nothing overridden (the archive holds the chart's default image) — install in dry
//! run (Ready on the real node under its ServiceAccount, a zombie judged, not touched), the
//! page's checks (their output, and only the two expected "no" failing), dry run off (the zombie
//! tainted, the Event naming the Pod as reporting instance), an upgrade with a values file (the
//! Lease passed once from the old Pod to the new), a rollback, and the documented uninstall
//! (cleanup waits for the leader to stop; nothing left on any Node); then the opt-in post-delete
//! cleanup hook, with `helm uninstall` alone. The kustomize base (`kubectl apply -k manifests/`,
//! unchanged): the Pod, a zombie tainted, and the page's in-cluster cleanup under pulsecheck's
//! ServiceAccount.

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
        let cp = ControlPlane::start(ControlPlaneOptions { dir: None, service_accounts: true, ..Default::default() }).await.unwrap_or_else(|e| panic!("{e}"));
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
        run_tool(tool("kubectl"), self.cp.kubeconfig_path(), "--kubeconfig", args)
    }

    fn helm(&self, args: &[&str]) -> String {
        run_tool(tool("helm"), self.cp.kubeconfig_path(), "--kubeconfig", args)
    }

    async fn stop(self) {
        self.fleet.stop().await;
        self.real.stop().await;
        self.cp.stop().await.unwrap();
    }
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

/// One `sh` block of docs/install.md and the `## ` heading it is under.
#[derive(Debug)]
struct Block {
    heading: String,
    script: String,
}

/// The blocks of docs/install.md the walk runs, in page order: every block fenced as `sh`; those
/// fenced `sh not walked: WHY` are alternatives to the walked path and say why on the fence.
fn walked_blocks() -> Vec<Block> {
    let page = std::fs::read_to_string(repo().join("docs/install.md")).unwrap();
    let mut blocks = Vec::new();
    let mut heading = String::new();
    let mut lines = page.lines();
    while let Some(line) = lines.next() {
        if let Some(h) = line.strip_prefix("## ") {
            heading = h.trim().to_owned();
        } else if let Some(info) = line.strip_prefix("```") {
            let body: Vec<&str> = lines.by_ref().take_while(|l| !l.starts_with("```")).collect();
            let info = info.trim();
            if info == "sh" {
                blocks.push(Block { heading: heading.clone(), script: body.join("\n") });
            } else if info.starts_with("sh") {
                assert!(
                    info.starts_with("sh not walked: "),
                    "docs/install.md under {heading:?}: a block fenced {info:?} is neither walked (sh) nor says why not (sh not walked: WHY)"
                );
            }
        }
    }
    blocks
}

/// What a walked block did: everything it printed, and the commands that exited non-zero.
struct Walked {
    output: String,
    failed: Vec<String>,
}

/// Runs `block` as a person pasting it into bash would: from `dir` (which holds `charts/` and
/// `manifests/`), with the lab's kubeconfig, helm, kubectl and pulsecheck on the PATH, not
/// stopping at a failing command (each one is reported by an ERR trap), in a process group of
/// its own that is killed afterwards (a port-forward left behind), within `timeout`.
async fn walk(lab: &InstallLab, dir: &std::path::Path, block: &Block, timeout: Duration) -> Walked {
    let bins: Vec<PathBuf> = vec![
        tool("helm").parent().unwrap().to_path_buf(),
        tool("kubectl").parent().unwrap().to_path_buf(),
        PathBuf::from(env!("CARGO_BIN_EXE_pulsecheck")).parent().unwrap().to_path_buf(),
    ];
    let path = std::env::join_paths(bins.into_iter().chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()))).unwrap();
    let script = format!("trap 'echo \"walk: exit $? from: $BASH_COMMAND\" >&2' ERR\n{}\n", block.script);
    let child = tokio::process::Command::new("bash")
        .args(["--noprofile", "--norc", "-c", &script])
        .current_dir(dir)
        .env("PATH", path)
        .env("KUBECONFIG", lab.cp.kubeconfig_path())
        .env_remove("PULSECHECK_DRY_RUN")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .expect("bash runs");
    let group = child.id().expect("the block runs");
    let out = tokio::time::timeout(timeout, child.wait_with_output()).await;
    let _ = std::process::Command::new("kill").args(["-KILL", "--", &format!("-{group}")]).stderr(std::process::Stdio::null()).status();
    let out = out
        .unwrap_or_else(|_| panic!("docs/install.md {:?}: the block did not finish within {timeout:?}:\n{}", block.heading, block.script))
        .expect("bash ends");
    let output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let failed = output.lines().filter_map(|l| l.strip_prefix("walk: exit ")).map(|l| l.split_once(" from: ").map_or(l, |(_, c)| c).to_owned()).collect();
    Walked { output, failed }
}

/// Walks `block`, which must run without a failing command.
async fn walk_clean(lab: &InstallLab, dir: &std::path::Path, block: &Block) -> String {
    let walked = walk(lab, dir, block, Duration::from_secs(300)).await;
    assert_eq!(walked.failed, Vec::<String>::new(), "docs/install.md {:?}: commands failed:\n{}", block.heading, walked.output);
    walked.output
}

/// The container args of a Pod.
fn args_of(pod: &Pod) -> Vec<String> {
    pod.spec.as_ref().unwrap().containers[0].args.clone().unwrap_or_default()
}

/// Waits for the Pod `old` to be gone and another to be Ready, leading; returns it.
async fn rolled_from(client: &kube::Client, old: &str) -> Pod {
    let new_pod = ready_pod(client, Some(old)).await;
    let new_name = new_pod.metadata.name.clone().unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "pulsecheck");
    eventually("the old Pod gone", POD_READY, || {
        let pods = pods.clone();
        async move { pods.get_opt(old).await.ok()?.is_none().then_some(()) }
    })
    .await;
    eventually("the new Pod leading", POD_READY, || {
        let client = client.clone();
        let new_name = new_name.clone();
        async move { leader(&client).await.0.filter(|h| h.starts_with(&new_name)) }
    })
    .await;
    new_pod
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_install_page_walked_as_written_runs_the_chart_on_a_real_node_taints_a_zombie_rolls_back_and_uninstalls_clean() {
    let _one = real::ONE_AT_A_TIME.lock().await;
    let blocks = walked_blocks();
    let headings: Vec<&str> = blocks.iter().map(|b| b.heading.as_str()).collect();
    // A block added to the page, or one that moved, must be walked here too.
    assert_eq!(
        headings,
        ["Install with Helm", "What to check after install", "Let it act", "Upgrade", "Rollback", "Uninstall"],
        "the walked blocks of docs/install.md"
    );
    let lab = InstallLab::start().await;
    let client = lab.cp.client();
    // The page installs the chart's default image; the archive holds exactly that reference, so
    // no value is overridden (IfNotPresent finds it in the node's containerd).
    assert_eq!(lab.reference, image::pulsecheck_reference());
    let dir = tempfile::tempdir().unwrap();
    for folder in ["charts", "manifests"] {
        std::os::unix::fs::symlink(repo().join(folder), dir.path().join(folder)).unwrap();
    }
    let [install, checks, act, upgrade, rollback, uninstall] = &blocks[..] else { unreachable!() };

    // 1. Install, in dry run: Ready on the real node under its ServiceAccount; a zombie is
    //    judged but not touched.
    walk_clean(&lab, dir.path(), install).await;
    let pod = ready_pod(&client, None).await;
    let pod_name = pod.metadata.name.clone().unwrap();
    let spec = pod.spec.clone().unwrap();
    assert_eq!(spec.node_name.as_deref(), Some("real-1"), "the Pod runs on the real node");
    assert_eq!(spec.service_account_name.as_deref(), Some("pulsecheck"));
    assert!(args_of(&pod).iter().any(|a| a == "--dry-run=true"), "{:?}", args_of(&pod));
    make_zombie(&lab, "sim-0002").await;
    eventually("the zombie judged (dry run)", TAINTED, || {
        let client = client.clone();
        async move { events_about(&client, "sim-0002").await.into_iter().any(|(reason, _)| reason == "ZombieDetected").then_some(()) }
    })
    .await;
    assert!(!has_our_taint(&get_node(&client, "sim-0002").await), "tainted in dry run");

    // 2. The checks: the Pod, one leader, verdicts, /readyz and metrics through a port-forward,
    //    and RBAC — the two "no" answers are the only commands that fail.
    let walked = walk(&lab, dir.path(), checks, Duration::from_secs(120)).await;
    let out = &walked.output;
    assert_eq!(
        walked.failed,
        ["kubectl auth can-i get nodes --subresource=proxy --as=$SA", "kubectl auth can-i delete nodes --as=$SA"],
        "what to check after install:\n{out}"
    );
    assert!(out.lines().any(|l| l.starts_with(&pod_name) && l.contains("1/1") && l.contains("Running")), "{out}");
    assert!(out.lines().any(|l| l.starts_with(&pod_name) && !l.contains(' ')), "the leader is the Pod:\n{out}");
    assert!(out.contains("verdict") && out.contains("sim-0002"), "{out}");
    assert!(out.lines().any(|l| l.trim() == "ok"), "/readyz:\n{out}");
    assert!(out.contains("pulsecheck_nodes{") && out.contains("pulsecheck_probe_mode{"), "metrics:\n{out}");
    assert_eq!(out.lines().filter(|l| l.trim() == "yes").count(), 4, "{out}");
    assert_eq!(out.lines().filter(|l| l.trim() == "no").count(), 2, "{out}");

    // 3. Dry run off: the rolled Pod taints the zombie, reported by that Pod; nothing else.
    walk_clean(&lab, dir.path(), act).await;
    let acting = rolled_from(&client, &pod_name).await;
    let acting_name = acting.metadata.name.clone().unwrap();
    assert!(!args_of(&acting).iter().any(|a| a.starts_with("--dry-run")), "{:?}", args_of(&acting));
    wait_node(&client, "sim-0002", "the zombie tainted by the Pod", TAINTED, has_our_taint).await;
    let events = events_about(&client, "sim-0002").await;
    assert!(events.iter().any(|(reason, instance)| reason == "Tainted" && instance.starts_with(&acting_name)), "{events:?}");
    for healthy in ["sim-0000", "sim-0001", "sim-0003", "real-1"] {
        assert!(!has_our_taint(&get_node(&client, healthy).await), "{healthy} tainted");
    }

    // 4. An upgrade with the operator's values file rolls the Pod; the Lease passes from the old
    //    Pod to the new one exactly once (a Lease that went back, or to and fro, counts more).
    std::fs::write(dir.path().join("your-values.yaml"), "config:\n  recoverAfter: 3m\n").unwrap();
    let (_, transitions_before) = leader(&client).await;
    walk_clean(&lab, dir.path(), upgrade).await;
    let upgraded = rolled_from(&client, &acting_name).await;
    assert!(args_of(&upgraded).iter().any(|a| a == "--recover-after=3m"), "{:?}", args_of(&upgraded));
    assert_eq!(leader(&client).await.1, transitions_before + 1, "the Lease changed hands more than once");
    assert!(has_our_taint(&get_node(&client, "sim-0002").await), "the taint survives the upgrade");

    // 5. Rollback to the revision before: the values of step 3 again.
    let out = walk_clean(&lab, dir.path(), rollback).await;
    assert!(out.contains("Rollback was a success"), "{out}");
    let rolled_back = rolled_from(&client, upgraded.metadata.name.as_deref().unwrap()).await;
    assert!(!args_of(&rolled_back).iter().any(|a| a.starts_with("--recover-after")), "{:?}", args_of(&rolled_back));

    // 6. The uninstall: cleanup waits for the scaled-down Pod to stop leading, names the zombie
    //    (dry run, then for real), and nothing of pulsecheck's is left on any Node.
    let out = walk_clean(&lab, dir.path(), uninstall).await;
    assert!(out.contains("would clean node sim-0002: taint/cordon/record, condition"), "{out}");
    assert!(out.contains("cleaned node sim-0002: taint/cordon/record, condition"), "{out}");
    assert_eq!(nothing_left(&client).await, Vec::<String>::new(), "{out}");
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    assert!(namespaces.get_opt("pulsecheck").await.unwrap().is_none(), "the namespace is deleted (kubectl waits for it)");

    // 7. The opt-in cleanup hook instead: install acting with it, the zombie tainted again, then
    //    `helm uninstall` alone leaves nothing on any Node, and none of the hook's objects.
    lab.kubectl(&["apply", "-f", repo().join("manifests/namespace.yaml").to_str().unwrap()]);
    let chart = repo().join("charts/pulsecheck");
    lab.helm(&["install", "pulsecheck", chart.to_str().unwrap(), "--namespace", "pulsecheck", "--set", "cleanupOnUninstall.enabled=true"]);
    ready_pod(&client, None).await;
    wait_node(&client, "sim-0002", "the zombie tainted again", TAINTED, has_our_taint).await;
    let out = lab.helm(&["uninstall", "pulsecheck", "--namespace", "pulsecheck"]);
    assert_eq!(nothing_left(&client).await, Vec::<String>::new(), "after helm uninstall with the hook: {out}");
    let left = lab.kubectl(&["-n", "pulsecheck", "get", "jobs,serviceaccounts,roles,rolebindings", "-o", "name"]);
    assert!(!left.contains("pulsecheck-cleanup"), "the hook's objects are deleted once it succeeded: {left}");
    assert!(!lab.kubectl(&["get", "clusterroles,clusterrolebindings", "-o", "name"]).contains("pulsecheck-cleanup"));
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
