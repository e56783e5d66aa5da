//! `pulsecheck cleanup` as a person runs it before uninstalling: the built binary against a real
//! kube-apiserver with a simulated fleet, after the in-process controller has tainted, cordoned,
//! annotated and conditioned zombie nodes. Proves that `--dry-run` reports and changes nothing;
//! that a real run removes pulsecheck's taint, record annotation and condition from every node,
//! undoes only the cordon pulsecheck set (a person's cordon stays), and keeps every foreign
//! taint, label, annotation and condition; that a second run finds nothing; that it refuses to
//! clean while a pulsecheck instance still leads (it would put its taints back) and waits for a
//! crashed leader's Lease to lapse; and that an unreadable kubeconfig is a usage error (exit 2)
//! naming `--kubeconfig`.

mod common;

use std::{collections::BTreeMap, path::Path, process::Output, time::Duration};

use common::*;
use k8s_openapi::{
    api::core::v1::{Node, Taint},
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use pulsecheck::names;
use pulsecheck_lab::fleet::Fault;

const TICK_SLACK: Duration = Duration::from_secs(15);

/// Field manager of the "person" and "other controller" writes: not pulsecheck.
const SOMEONE_ELSE: &str = "someone-else";
const FOREIGN_TAINT: &str = "example.com/maintenance";
const FOREIGN_LABEL: &str = "example.com/rack";
const FOREIGN_ANNOTATION: &str = "example.com/owner";
const FOREIGN_CONDITION: &str = "RaidDegraded";

/// `pulsecheck cleanup --kubeconfig K` plus `extra`.
async fn cleanup(kubeconfig: &Path, extra: &[&str]) -> Output {
    run_subcommand("cleanup", kubeconfig, extra).await
}

/// What pulsecheck or anyone else may have put on a Node, without the timestamps the kubelet
/// moves on every report.
#[derive(Debug, Clone, PartialEq)]
struct Marks {
    taints: Vec<Taint>,
    unschedulable: bool,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    /// `(type, status, reason, message)` of every condition.
    conditions: Vec<(String, String, String, String)>,
}

fn marks(node: &Node) -> Marks {
    let spec = node.spec.clone().unwrap_or_default();
    let conditions = node.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
    Marks {
        taints: spec.taints.unwrap_or_default(),
        unschedulable: spec.unschedulable.unwrap_or(false),
        labels: node.metadata.labels.clone().unwrap_or_default(),
        annotations: node.metadata.annotations.clone().unwrap_or_default(),
        conditions: conditions.into_iter().map(|c| (c.type_, c.status, c.reason.unwrap_or_default(), c.message.unwrap_or_default())).collect(),
    }
}

fn record(node: &Node) -> Option<String> {
    node.metadata.annotations.as_ref()?.get(names::REMEDIATION_ANNOTATION).cloned()
}

/// Every node's marks and resourceVersion, by name.
async fn snapshot(client: &kube::Client, names: &[String]) -> BTreeMap<String, (Marks, Option<String>)> {
    let mut all = BTreeMap::new();
    for name in names {
        let node = get_node(client, name).await;
        all.insert(name.clone(), (marks(&node), node.metadata.resource_version.clone()));
    }
    all
}

fn foreign_taint() -> Taint {
    Taint { key: FOREIGN_TAINT.into(), value: Some("disk".into()), effect: "NoSchedule".into(), time_added: None }
}

/// A person cordons `name`, and another tool adds its taint, label, annotation and condition —
/// all with a field manager that is not pulsecheck's. The taint edit starts from a fresh read
/// with its resourceVersion, as `spec.taints` is an atomic list.
async fn mark_as_someone_else(client: &kube::Client, name: &str) {
    let nodes: Api<Node> = Api::all(client.clone());
    let params = PatchParams { field_manager: Some(SOMEONE_ELSE.into()), ..Default::default() };
    let mut done = false;
    for _ in 0..20 {
        let n = nodes.get(name).await.unwrap();
        let mut taints = n.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
        taints.push(foreign_taint());
        let patch = serde_json::json!({
            "metadata": {
                "resourceVersion": n.metadata.resource_version,
                "labels": { FOREIGN_LABEL: "r7" },
                "annotations": { FOREIGN_ANNOTATION: "team-a" },
            },
            "spec": { "unschedulable": true, "taints": taints },
        });
        match nodes.patch(name, &params, &Patch::Merge(&patch)).await {
            Ok(_) => {
                done = true;
                break;
            }
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => panic!("marking {name}: {e}"),
        }
    }
    assert!(done, "could not mark {name}: conflicts");
    let now = Time(Timestamp::now());
    let condition = serde_json::json!({ "status": { "conditions": [{
        "type": FOREIGN_CONDITION,
        "status": "True",
        "reason": "DiskFailed",
        "message": "sdb failed",
        "lastHeartbeatTime": now,
        "lastTransitionTime": now,
    }] } });
    nodes.patch_status(name, &params, &Patch::Strategic(&condition)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_removes_only_what_pulsecheck_put_on_nodes_and_dry_run_changes_nothing() {
    let lab = Lab::start(fast_fleet(4, "cln-")).await;
    let client = lab.client();
    let kubeconfig = lab.cp.kubeconfig_path().to_path_buf();
    let all = lab.fleet.node_names();
    // `zombie` is cordoned by pulsecheck; `person` was cordoned by a person and carries foreign
    // marks, then turns zombie too, so cleanup has to edit it and keep what is not its own.
    let (zombie, person) = ("cln-0001", "cln-0002");
    mark_as_someone_else(&client, person).await;
    let foreign = marks(&get_node(&client, person).await);
    assert!(foreign.unschedulable && foreign.taints.contains(&foreign_taint()), "{foreign:?}");
    assert!(foreign.conditions.iter().any(|c| c.0 == FOREIGN_CONDITION), "{foreign:?}");

    // 1. The controller taints, cordons, records and conditions both zombies (2 of 4 nodes, so
    //    the limit is raised), then stops.
    let running = controller(client.clone(), |s| {
        s.actions.cordon = true;
        s.guard.max_unhealthy_percent = 50.0;
    })
    .await;
    wait_evaluations(&running, 2, Duration::from_secs(30)).await;
    lab.fleet.set_fault(zombie, Fault::Zombie).unwrap();
    lab.fleet.set_fault(person, Fault::Zombie).unwrap();
    for name in [zombie, person] {
        eventually(&format!("{name} tainted, recorded and conditioned"), STALE_AFTER + Duration::from_secs(3) + TICK_SLACK, || {
            let client = client.clone();
            async move {
                let n = get_node(&client, name).await;
                (has_our_taint(&n) && record(&n).is_some() && our_condition(&n).is_some_and(|(s, _, _)| s == "False")).then_some(())
            }
        })
        .await;
    }
    running.stop().await;
    let z = get_node(&client, zombie).await;
    assert_eq!(z.spec.as_ref().and_then(|s| s.unschedulable), Some(true), "pulsecheck cordoned the zombie");
    assert!(record(&z).is_some_and(|r| r.contains("\"cordoned\":true")), "{:?}", record(&z));
    assert_eq!(our_condition(&z).map(|c| (c.0, c.1)), Some(("False".into(), "ZombieDetected".into())));
    let p = get_node(&client, person).await;
    assert!(record(&p).is_some_and(|r| r.contains("\"cordoned\":false")), "a person's cordon recorded as ours: {:?}", record(&p));
    let others: Vec<&String> = all.iter().filter(|n| *n != zombie && *n != person).collect();
    for name in &others {
        let n = get_node(&client, name).await;
        assert!(!has_our_taint(&n) && record(&n).is_none() && our_condition(&n).is_none(), "{name} was touched by the controller");
    }
    let before = snapshot(&client, &all).await;

    // 2. A dry run names both zombies and changes nothing anywhere.
    let dry = cleanup(&kubeconfig, &["--dry-run"]).await;
    assert_eq!(dry.status.code(), Some(0), "{}", describe(&dry));
    let stdout = text(&dry.stdout);
    for name in [zombie, person] {
        assert!(stdout.lines().any(|l| l == format!("would clean node {name}: taint/cordon/record, condition")), "{name} not named:\n{}", describe(&dry));
    }
    for name in &others {
        assert!(!stdout.contains(name.as_str()), "{name} named:\n{}", describe(&dry));
    }
    assert_eq!(stdout.lines().last(), Some("2 node(s) would be cleaned (dry run)"), "{}", describe(&dry));
    let after_dry = snapshot(&client, &all).await;
    for (name, (old, rv)) in &before {
        let (now, now_rv) = &after_dry[name];
        assert_eq!(now, old, "{name} changed by a dry run");
        if [zombie, person].contains(&name.as_str()) {
            // Nothing else writes a zombie's Node: any write at all would move its resourceVersion.
            assert_eq!(now_rv, rv, "{name} written by a dry run");
        }
    }

    // 3. Another instance may look after other nodes (with the same taint key): with
    //    --node-selector only the matching nodes are cleaned.
    let selected = cleanup(&kubeconfig, &["--node-selector", &format!("kubernetes.io/hostname={person}")]).await;
    assert_eq!(selected.status.code(), Some(0), "{}", describe(&selected));
    let stdout = text(&selected.stdout);
    assert!(stdout.lines().any(|l| l == format!("cleaned node {person}: taint/cordon/record, condition")), "{}", describe(&selected));
    assert_eq!(stdout.lines().last(), Some("1 node(s) cleaned"), "{}", describe(&selected));
    assert!(has_our_taint(&get_node(&client, zombie).await), "a node outside the selector was cleaned");
    let bad = cleanup(&kubeconfig, &["--node-selector", "a in (b)"]).await;
    assert_eq!(bad.status.code(), Some(2), "{}", describe(&bad));
    assert!(text(&bad.stderr).contains("--node-selector"), "{}", describe(&bad));

    // 4. The real run removes what pulsecheck put there (the rest), and only that.
    let real = cleanup(&kubeconfig, &[]).await;
    assert_eq!(real.status.code(), Some(0), "{}", describe(&real));
    let stdout = text(&real.stdout);
    assert!(stdout.lines().any(|l| l == format!("cleaned node {zombie}: taint/cordon/record, condition")), "{zombie} not named:\n{}", describe(&real));
    assert_eq!(stdout.lines().last(), Some("1 node(s) cleaned"), "{}", describe(&real));
    for name in &all {
        let n = get_node(&client, name).await;
        assert!(!has_our_taint(&n), "{name} still has our taint: {:?}", taint_keys(&n));
        assert_eq!(record(&n), None, "{name} still has our annotation");
        assert_eq!(our_condition(&n), None, "{name} still has our condition");
    }
    let z = marks(&get_node(&client, zombie).await);
    assert!(!z.unschedulable, "the cordon pulsecheck set was not undone");
    assert_eq!(z.taints, before[zombie].0.taints.iter().filter(|t| t.key != names::TAINT_KEY).cloned().collect::<Vec<_>>());
    let p = marks(&get_node(&client, person).await);
    assert!(p.unschedulable, "the person's cordon was undone");
    assert_eq!(p.taints, vec![foreign_taint()], "foreign taint lost or ours left");
    assert_eq!(p.labels.get(FOREIGN_LABEL).map(String::as_str), Some("r7"), "foreign label lost");
    assert_eq!(p.annotations.get(FOREIGN_ANNOTATION).map(String::as_str), Some("team-a"), "foreign annotation lost");
    let raid = foreign.conditions.iter().find(|c| c.0 == FOREIGN_CONDITION).unwrap();
    assert!(p.conditions.contains(raid), "foreign condition lost: {:?}", p.conditions);
    // Apart from what was ours, both nodes are as before: the kubelet's conditions included.
    for (name, now) in [(zombie, &z), (person, &p)] {
        let old = &before[name].0;
        let ours = |c: &&(String, String, String, String)| c.0 != names::CONDITION_TYPE;
        assert_eq!(now.conditions.iter().collect::<Vec<_>>(), old.conditions.iter().filter(ours).collect::<Vec<_>>(), "{name} conditions");
        let mut annotations = old.annotations.clone();
        annotations.remove(names::REMEDIATION_ANNOTATION);
        assert_eq!(now.annotations, annotations, "{name} annotations");
        assert_eq!(now.labels, old.labels, "{name} labels");
    }
    // The nodes pulsecheck never touched are not touched by cleanup either.
    for name in &others {
        assert_eq!(marks(&get_node(&client, name).await), before[name.as_str()].0, "{name} changed by cleanup");
    }

    // A second run has nothing left to do.
    let again = cleanup(&kubeconfig, &[]).await;
    assert_eq!(again.status.code(), Some(0), "{}", describe(&again));
    assert_eq!(text(&again.stdout), "0 node(s) cleaned\n", "{}", describe(&again));
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_refuses_while_an_instance_leads_and_waits_for_a_crashed_leader_s_lease_to_lapse() {
    use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use kube::api::PostParams;

    let lab = Lab::start(fast_fleet(3, "cll-")).await;
    let client = lab.client();
    let kubeconfig = lab.cp.kubeconfig_path().to_path_buf();
    let zombie = "cll-0001";
    let running = controller(client.clone(), |s| {
        s.leader = elect("cll-a");
        s.guard.max_unhealthy_percent = 50.0;
    })
    .await;
    lab.fleet.set_fault(zombie, Fault::Zombie).unwrap();
    wait_tainted(&client, zombie, "the zombie tainted by the leader", STALE_AFTER + Duration::from_secs(4) + TICK_SLACK).await;

    // 1. While the leader runs, cleanup refuses (exit 2, naming the Lease and the holder) and
    //    touches nothing: the leader would taint the zombie again on its next tick.
    let lease_flag = ["--leader-lease", "default/pulsecheck"];
    let refused = cleanup(&kubeconfig, &[&lease_flag[..], &["--leader-wait", "3s"]].concat()).await;
    assert_eq!(refused.status.code(), Some(2), "{}", describe(&refused));
    let stderr = text(&refused.stderr);
    assert!(stderr.contains("still holds the leader Lease default/pulsecheck") && stderr.contains("cll-a"), "{}", describe(&refused));
    assert!(has_our_taint(&get_node(&client, zombie).await), "cleanup removed the taint while the leader ran");

    // 2. The leader stops and releases its Lease.
    running.stop().await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    let mut lease = leases.get("pulsecheck").await.unwrap();
    assert_eq!(lease.spec.as_ref().and_then(|s| s.holder_identity.clone()), None, "the stopped leader released its Lease");
    // A released Lease must stay free for its duration (4 s) before cleanup trusts it: a follower
    // not yet stopped would take it over within a retry period and act again.
    let started = std::time::Instant::now();
    let dry = cleanup(&kubeconfig, &[&lease_flag[..], &["--leader-wait", "30s", "--dry-run"]].concat()).await;
    assert_eq!(dry.status.code(), Some(0), "{}", describe(&dry));
    assert!(started.elapsed() >= Duration::from_secs(4), "trusted a released Lease at once: {:?}", started.elapsed());
    assert!(text(&dry.stdout).contains(&format!("would clean node {zombie}")), "{}", describe(&dry));

    // 3. A leader that crashed leaves its Lease held: cleanup watches it go unrenewed for its
    //    whole duration (by its own clock; the renewTime is an hour off, as with a skewed
    //    clock), then cleans.
    lease.spec = Some(LeaseSpec {
        holder_identity: Some("cll-crashed".into()),
        lease_duration_seconds: Some(3),
        renew_time: Some(MicroTime(Timestamp::now() + std::time::Duration::from_secs(3600))),
        ..lease.spec.clone().unwrap_or_default()
    });
    leases.replace("pulsecheck", &PostParams::default(), &lease).await.unwrap();
    let started = std::time::Instant::now();
    let cleaned = cleanup(&kubeconfig, &[&lease_flag[..], &["--leader-wait", "30s"]].concat()).await;
    assert_eq!(cleaned.status.code(), Some(0), "{}", describe(&cleaned));
    assert!(text(&cleaned.stderr).contains("waiting up to 30s for pulsecheck instance cll-crashed"), "{}", describe(&cleaned));
    assert!(started.elapsed() >= Duration::from_secs(3), "cleaned before the crashed leader's Lease lapsed: {:?}", started.elapsed());
    assert!(text(&cleaned.stdout).contains(&format!("cleaned node {zombie}")), "{}", describe(&cleaned));
    let z = get_node(&client, zombie).await;
    assert!(!has_our_taint(&z) && record(&z).is_none() && our_condition(&z).is_none(), "{zombie} not clean");
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_with_an_unreadable_kubeconfig_exits_2_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-kubeconfig");
    for extra in [&[][..], &["--dry-run"][..]] {
        let out = cleanup(&missing, extra).await;
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {}", describe(&out));
        let stderr = text(&out.stderr);
        assert!(stderr.contains("--kubeconfig") && stderr.contains(&missing.display().to_string()), "{extra:?}: {}", describe(&out));
        assert!(out.stdout.is_empty(), "{extra:?}: {}", describe(&out));
    }
}
