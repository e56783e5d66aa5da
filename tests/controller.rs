//! `pulsecheck run` against a real kube-apiserver with a simulated fleet, thresholds compressed
//! to seconds (see tests/common). Each test has its own control plane.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::{Node, Taint};
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use pulsecheck::names;
use pulsecheck_lab::fleet::{Fault, FleetOptions};

const TICK_SLACK: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zombie_node_gets_tainted_with_an_event_and_a_condition_that_say_why() {
    let lab = Lab::start(fast_fleet(4, "zmb-")).await;
    let running = controller(lab.client(), |_| {}).await;
    let zombie = "zmb-0002";
    wait_evaluations(&running, 3, Duration::from_secs(30)).await;
    lab.fleet.set_fault(zombie, Fault::Zombie).unwrap();
    let client = lab.client();
    // Tainted within the status threshold plus ticks (and the fleet's last report before the fault).
    // The condition says False once pulsecheck has acted (the tick after the taint).
    let node = eventually("zombie tainted and its condition False", STALE_AFTER + Duration::from_secs(3) + TICK_SLACK, || {
        let client = client.clone();
        async move {
            let n = get_node(&client, zombie).await;
            (has_our_taint(&n) && our_condition(&n).is_some_and(|(s, _, _)| s == "False")).then_some(n)
        }
    })
    .await;
    let (status, reason, message) = our_condition(&node).expect("HeartbeatConsistent condition");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "ZombieDetected"));
    assert!(message.contains("NodeStatus not refreshed"), "{message}");
    let annotations = node.metadata.annotations.clone().unwrap_or_default();
    assert!(annotations.get(names::REMEDIATION_ANNOTATION).is_some_and(|a| a.contains("\"tainted\":true")), "{annotations:?}");
    let events = eventually("Tainted event", Duration::from_secs(10), || {
        let client = client.clone();
        async move {
            let ev = events_for(&client, zombie).await;
            ev.iter().any(|(r, _)| r == "Tainted").then_some(ev)
        }
    })
    .await;
    assert!(events.iter().any(|(r, n)| r == "ZombieDetected" && n.contains("NodeStatus not refreshed")), "{events:?}");
    // Everyone else is untouched.
    for other in lab.fleet.node_names().iter().filter(|n| *n != zombie) {
        let n = get_node(&client, other).await;
        assert!(!has_our_taint(&n) && our_condition(&n).is_none(), "{other} was touched");
    }
    let metrics = running.metrics.render();
    assert_eq!(metric(&metrics, r#"pulsecheck_remediations_total{action="taint",result="success"}"#), Some(1.0));
    running.stop().await;
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_fleet_of_50_nodes_gets_no_action_across_several_report_periods() {
    let lab = Lab::start(fast_fleet(50, "hlt-")).await;
    let running = controller(lab.client(), |_| {}).await;
    // Several report periods (2 s each) beyond the status threshold, under the controller's eyes.
    let start = tokio::time::Instant::now();
    while start.elapsed() < STALE_AFTER + Duration::from_secs(8) {
        wait_evaluations(&running, 4, Duration::from_secs(30)).await;
    }
    let text = running.metrics.render();
    assert_eq!(metric(&text, r#"pulsecheck_nodes{verdict="healthy"}"#), Some(50.0), "{text}");
    assert_eq!(metric(&text, "pulsecheck_blind"), Some(0.0));
    let client = lab.client();
    for name in lab.fleet.node_names() {
        let n = get_node(&client, &name).await;
        assert!(!has_our_taint(&n), "{name} tainted");
        assert!(our_condition(&n).is_none(), "{name} got a condition");
        assert!(events_for(&client, &name).await.is_empty(), "{name} got events");
    }
    running.stop().await;
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_node_is_reported_dead_and_left_to_kubernetes() {
    let lab = Lab::start(fast_fleet(4, "ded-")).await;
    let running = controller(lab.client(), |_| {}).await;
    wait_evaluations(&running, 2, Duration::from_secs(30)).await;
    lab.fleet.set_fault("ded-0001", Fault::Dead).unwrap();
    wait_verdict(&running, "ded-0001", "dead", STALE_AFTER + TICK_SLACK).await;
    // Stays dead and untainted for a while longer.
    wait_evaluations(&running, 6, Duration::from_secs(30)).await;
    let n = get_node(&lab.client(), "ded-0001").await;
    assert!(!has_our_taint(&n));
    let (status, reason, message) = our_condition(&n).expect("condition reports it");
    // Not False: pulsecheck did not act on it (tools keyed on False must not either).
    assert_eq!((status.as_str(), reason.as_str()), ("Unknown", "LeaseAndStatusStale"), "{message}");
    assert!(message.contains("kube-controller-manager"), "{message}");
    assert!(events_for(&lab.client(), "ded-0001").await.iter().any(|(r, _)| r == "NodeDead"));
    running.stop().await;
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn os_image_unknown_from_the_start_stays_suspect_and_becomes_zombie_with_stale_status() {
    let lab = Lab::start(fast_fleet(4, "osi-")).await;
    let node = "osi-0003";
    lab.fleet.set_fault(node, Fault::OsImageUnknown).unwrap();
    let client = lab.client();
    eventually("osImage Unknown on the node", Duration::from_secs(10), || {
        let client = client.clone();
        async move {
            let n = get_node(&client, node).await;
            (n.status.and_then(|s| s.node_info).map(|i| i.os_image) == Some("Unknown".into())).then_some(())
        }
    })
    .await;
    let running = controller(lab.client(), |_| {}).await;
    wait_verdict(&running, node, "suspect", Duration::from_secs(20)).await;
    // Longer than --os-image-unknown-after: still only suspect, because it never turned.
    wait_evaluations(&running, 10, Duration::from_secs(30)).await;
    assert!(!has_our_taint(&get_node(&client, node).await));
    wait_verdict(&running, node, "suspect", Duration::from_secs(1)).await;
    // A Suspect node is not declared inconsistent: tools keyed on the condition must not act yet.
    let (status, reason, message) = our_condition(&get_node(&client, node).await).expect("condition reports the signal");
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Suspect"));
    assert!(message.contains("osImage"), "{message}");
    lab.fleet.set_fault(node, Fault::Zombie).unwrap();
    wait_tainted(&client, node, "tainted once the status is stale too", STALE_AFTER + TICK_SLACK).await;
    running.stop().await;
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_nodes_with_clocks_an_hour_off_stay_healthy() {
    let lab = Lab::start(fast_fleet(4, "skw-")).await;
    lab.fleet.set_fault("skw-0001", Fault::ClockSkew(k8s_openapi::jiff::SignedDuration::from_hours(1))).unwrap();
    lab.fleet.set_fault("skw-0002", Fault::ClockSkew(k8s_openapi::jiff::SignedDuration::from_hours(-1))).unwrap();
    let running = controller(lab.client(), |_| {}).await;
    let start = tokio::time::Instant::now();
    while start.elapsed() < STALE_AFTER + Duration::from_secs(6) {
        wait_evaluations(&running, 4, Duration::from_secs(30)).await;
        for n in ["skw-0001", "skw-0002"] {
            assert_eq!(metric(&running.metrics.render(), &verdict_series(n, "healthy")), Some(1.0), "{n} not healthy");
        }
    }
    running.stop().await;
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mass_staleness_taints_nothing_beyond_the_limit_and_opens_the_circuit() {
    let lab = Lab::start(fast_fleet(10, "mas-")).await;
    let running = controller(lab.client(), |s| s.guard.max_unhealthy_percent = 20.0).await;
    wait_evaluations(&running, 2, Duration::from_secs(30)).await;
    let victims: Vec<String> = lab.fleet.node_names().into_iter().take(5).collect();
    for v in &victims {
        lab.fleet.set_fault(v, Fault::Zombie).unwrap();
    }
    eventually("circuit open", STALE_AFTER + TICK_SLACK, || {
        let open = metric(&running.metrics.render(), "pulsecheck_circuit_open") == Some(1.0);
        async move { open.then_some(()) }
    })
    .await;
    wait_evaluations(&running, 6, Duration::from_secs(30)).await;
    let client = lab.client();
    let mut tainted = 0;
    for name in lab.fleet.node_names() {
        if has_our_taint(&get_node(&client, &name).await) {
            tainted += 1;
        }
    }
    assert!(tainted <= 2, "{tainted} nodes tainted; the limit is 2 of 10");
    let mut blocked = 0;
    for v in &victims {
        if events_for(&client, v).await.iter().any(|(r, _)| r == "RemediationBlocked") {
            blocked += 1;
        }
    }
    assert!(blocked >= 3, "only {blocked} RemediationBlocked events");
    assert_eq!(metric(&running.metrics.render(), "pulsecheck_remediation_limit"), Some(2.0));
    running.stop().await;
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_changes_nothing_on_any_node_and_an_excluded_node_is_never_touched() {
    let lab = Lab::start(fast_fleet(5, "dry-")).await;
    let client = lab.client();
    let nodes: Api<Node> = Api::all(client.clone());
    let excluded = "dry-0004";
    let label = serde_json::json!({"metadata": {"labels": {names::EXCLUDE_LABEL: "true"}}});
    nodes.patch(excluded, &PatchParams::default(), &Patch::Merge(&label)).await.unwrap();
    let before: Vec<Node> = futures::future::join_all(lab.fleet.node_names().iter().map(|n| nodes.get(n))).await.into_iter().map(Result::unwrap).collect();

    let dry = controller(client.clone(), |s| s.dry_run = true).await;
    wait_evaluations(&dry, 2, Duration::from_secs(30)).await;
    lab.fleet.set_fault("dry-0001", Fault::Zombie).unwrap();
    lab.fleet.set_fault(excluded, Fault::Zombie).unwrap();
    wait_verdict(&dry, "dry-0001", "zombie", STALE_AFTER + TICK_SLACK).await;
    wait_verdict(&dry, excluded, "excluded", Duration::from_secs(5)).await;
    eventually("WouldRemediate event", Duration::from_secs(10), || {
        let client = client.clone();
        async move { events_for(&client, "dry-0001").await.iter().any(|(r, _)| r == "WouldRemediate").then_some(()) }
    })
    .await;
    assert_eq!(metric(&dry.metrics.render(), r#"pulsecheck_remediations_total{action="taint",result="dry_run"}"#), Some(1.0));
    for old in &before {
        let name = old.metadata.name.clone().unwrap();
        let now = nodes.get(&name).await.unwrap();
        assert_eq!(now.spec, old.spec, "{name}: spec changed in dry run");
        assert_eq!(now.metadata.annotations, old.metadata.annotations, "{name}: annotations changed in dry run");
        assert!(our_condition(&now).is_none(), "{name}: condition written in dry run");
    }
    dry.stop().await;

    // For real now: the zombie is tainted, the excluded zombie never is.
    let real = controller(client.clone(), |_| {}).await;
    eventually("real zombie tainted", STALE_AFTER + TICK_SLACK, || {
        let client = client.clone();
        async move { has_our_taint(&get_node(&client, "dry-0001").await).then_some(()) }
    })
    .await;
    wait_evaluations(&real, 4, Duration::from_secs(30)).await;
    let ex = get_node(&client, excluded).await;
    assert!(!has_our_taint(&ex) && our_condition(&ex).is_none());
    assert!(events_for(&client, excluded).await.is_empty());
    real.stop().await;
    lab.stop().await;
}

/// Adds a foreign taint the way a careful controller does: fresh read, resourceVersion precondition.
async fn add_foreign_taint(nodes: &Api<Node>, name: &str, key: &str) {
    for _ in 0..20 {
        let n = nodes.get(name).await.unwrap();
        let mut taints = n.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
        taints.push(Taint { key: key.into(), value: Some("x".into()), effect: "PreferNoSchedule".into(), time_added: None });
        let patch = serde_json::json!({"metadata": {"resourceVersion": n.metadata.resource_version}, "spec": {"taints": taints}});
        match nodes.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => return,
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => panic!("foreign taint: {e}"),
        }
    }
    panic!("could not add foreign taint {key}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn person_cordoned_node_stays_cordoned_and_foreign_taints_survive_taint_and_release() {
    let lab = Lab::start(fast_fleet(5, "own-")).await;
    let client = lab.client();
    let nodes: Api<Node> = Api::all(client.clone());
    let node = "own-0002";
    // A person cordons the node before anything happens.
    nodes.patch(node, &PatchParams::default(), &Patch::Merge(&serde_json::json!({"spec": {"unschedulable": true}}))).await.unwrap();
    let running = controller(client.clone(), |s| s.actions.cordon = true).await;
    wait_evaluations(&running, 2, Duration::from_secs(30)).await;
    lab.fleet.set_fault(node, Fault::Zombie).unwrap();
    // Another controller keeps adding taints, every 250 ms, all through pulsecheck's taint and
    // release: their writes race on the same Node.
    let stop = tokio_util::sync::CancellationToken::new();
    let adder = {
        let nodes = nodes.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut added = 0;
            let mut pace = tokio::time::interval(Duration::from_millis(250));
            while !stop.is_cancelled() {
                pace.tick().await;
                add_foreign_taint(&nodes, node, &format!("example.com/other-{added}")).await;
                added += 1;
            }
            added
        })
    };
    let foreign_present = |n: &Node, upto: usize| {
        let keys = taint_keys(n);
        (0..upto).filter(|i| !keys.contains(&format!("example.com/other-{i}"))).collect::<Vec<_>>()
    };
    let tainted = eventually("tainted", STALE_AFTER + TICK_SLACK, || {
        let client = client.clone();
        async move {
            let n = get_node(&client, node).await;
            has_our_taint(&n).then_some(n)
        }
    })
    .await;
    let seen = taint_keys(&tainted).iter().filter(|k| k.starts_with("example.com/other-")).count();
    assert!(seen > 0 && foreign_present(&tainted, seen).is_empty(), "foreign taints lost while tainting: {:?}", taint_keys(&tainted));
    let record = tainted.metadata.annotations.as_ref().and_then(|a| a.get(names::REMEDIATION_ANNOTATION)).cloned().unwrap_or_default();
    assert!(record.contains("\"cordoned\":false"), "a person's cordon recorded as ours: {record}");

    lab.fleet.set_fault(node, Fault::Recover).unwrap();
    eventually("released", Duration::from_secs(30), || {
        let client = client.clone();
        async move { (!has_our_taint(&get_node(&client, node).await)).then_some(()) }
    })
    .await;
    stop.cancel();
    let added = adder.await.unwrap();
    let released = get_node(&client, node).await;
    assert!(added > seen, "the foreign writer kept writing through the release ({added} taints, {seen} when tainted)");
    assert_eq!(foreign_present(&released, added), Vec::<usize>::new(), "foreign taints lost: {:?}", taint_keys(&released));
    assert!(!has_our_taint(&released));
    assert_eq!(released.spec.as_ref().and_then(|s| s.unschedulable), Some(true), "the person's cordon was undone");
    assert!(released.metadata.annotations.as_ref().is_none_or(|a| !a.contains_key(names::REMEDIATION_ANNOTATION)));
    // The condition says False exactly while pulsecheck's taint is on: True once released.
    eventually("the condition True after the release", Duration::from_secs(30), || {
        let client = client.clone();
        async move { our_condition(&get_node(&client, node).await).filter(|(status, reason, _)| status == "True" && reason == "HeartbeatsConsistent").map(|_| ()) }
    })
    .await;
    running.stop().await;
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_removes_exactly_what_pulsecheck_added() {
    let lab = Lab::start(fast_fleet(4, "rel-")).await;
    let client = lab.client();
    let node = "rel-0001";
    let running = controller(client.clone(), |s| s.actions.cordon = true).await;
    wait_evaluations(&running, 2, Duration::from_secs(30)).await;
    let before = get_node(&client, node).await;
    lab.fleet.set_fault(node, Fault::Zombie).unwrap();
    let during = eventually("tainted and cordoned", STALE_AFTER + TICK_SLACK, || {
        let client = client.clone();
        async move {
            let n = get_node(&client, node).await;
            has_our_taint(&n).then_some(n)
        }
    })
    .await;
    assert_eq!(during.spec.as_ref().and_then(|s| s.unschedulable), Some(true));
    lab.fleet.set_fault(node, Fault::Recover).unwrap();
    let after = eventually("released", Duration::from_secs(30), || {
        let client = client.clone();
        async move {
            let n = get_node(&client, node).await;
            (!has_our_taint(&n)).then_some(n)
        }
    })
    .await;
    assert_eq!(taint_keys(&after), taint_keys(&before));
    assert!(!after.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false), "still uncordoned");
    assert_eq!(after.metadata.annotations, before.metadata.annotations);
    assert_eq!(after.metadata.labels, before.metadata.labels);
    assert!(events_for(&client, node).await.iter().any(|(r, _)| r == "Released"));
    let metrics = running.metrics.render();
    assert_eq!(metric(&metrics, r#"pulsecheck_remediations_total{action="untaint",result="success"}"#), Some(1.0));
    assert_eq!(metric(&metrics, r#"pulsecheck_remediations_total{action="uncordon",result="success"}"#), Some(1.0));
    running.stop().await;
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_controller_does_not_taint_twice_and_still_releases() {
    let lab = Lab::start(fast_fleet(4, "rst-")).await;
    let client = lab.client();
    let node = "rst-0003";
    let first = controller(client.clone(), |_| {}).await;
    wait_evaluations(&first, 2, Duration::from_secs(30)).await;
    lab.fleet.set_fault(node, Fault::Zombie).unwrap();
    wait_tainted(&client, node, "tainted", STALE_AFTER + TICK_SLACK).await;
    first.stop().await;

    let second = controller(client.clone(), |_| {}).await;
    wait_verdict(&second, node, "zombie", STALE_AFTER + TICK_SLACK).await;
    wait_evaluations(&second, 6, Duration::from_secs(30)).await;
    let n = get_node(&client, node).await;
    assert_eq!(taint_keys(&n).iter().filter(|k| *k == names::TAINT_KEY).count(), 1);
    assert_eq!(metric(&second.metrics.render(), r#"pulsecheck_remediations_total{action="taint",result="success"}"#), None);
    assert_eq!(metric(&second.metrics.render(), r#"pulsecheck_node_remediated{node="rst-0003"}"#), Some(1.0));
    lab.fleet.set_fault(node, Fault::Recover).unwrap();
    eventually("released by the second instance", Duration::from_secs(30), || {
        let client = client.clone();
        async move { (!has_our_taint(&get_node(&client, node).await)).then_some(()) }
    })
    .await;
    second.stop().await;
    lab.stop().await;
}

/// A restarted instance has not watched a remediated node long enough to call it healthy: its
/// status looks fresh to an instance that has just started, frozen or not. Until it sees the
/// status change it must neither rewrite the condition nor release the node, and once the node
/// recovers it waits out the whole `--recover-after` from the recovery it saw, not from its start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_instance_keeps_its_remediation_until_it_has_seen_the_node_recover_for_recover_after() {
    let lab = Lab::start(fast_fleet(4, "rsw-")).await;
    let client = lab.client();
    let node = "rsw-0001";
    let first = controller(client.clone(), |_| {}).await;
    wait_evaluations(&first, 2, Duration::from_secs(30)).await;
    lab.fleet.set_fault(node, Fault::Zombie).unwrap();
    wait_node(&client, node, "zombie tainted and False", STALE_AFTER + TICK_SLACK, |n| {
        has_our_taint(n) && our_condition(n).is_some_and(|(s, _, _)| s == "False")
    })
    .await;
    first.stop().await;

    let recover_after = Duration::from_secs(15);
    let second = controller(client.clone(), |s| s.guard.recover_after = recover_after).await;
    // Its first observation window (shorter than --status-stale-after): the frozen status looks
    // fresh to it, and it must not say otherwise on the node.
    let window_ends = evaluations(&second) + 8;
    while evaluations(&second) < window_ends {
        let n = get_node(&client, node).await;
        assert!(has_our_taint(&n), "the restarted instance released a node it had not seen recover");
        let condition = our_condition(&n).expect("the condition stays");
        assert_eq!(condition.0, "False", "the restarted instance rewrote the condition of a node it had not watched long enough: {condition:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    lab.fleet.set_fault(node, Fault::Recover).unwrap();
    let recovered = tokio::time::Instant::now();
    // While pulsecheck's taint stays on, the condition never says plainly healthy: False until
    // the recovery is seen, then True/Recovering (or Unknown/RecoveryUnconfirmed).
    let deadline = recovered + recover_after + TICK_SLACK;
    loop {
        let n = get_node(&client, node).await;
        let condition = our_condition(&n).expect("the condition stays");
        if !has_our_taint(&n) {
            break;
        }
        assert_ne!(condition.1, "HeartbeatsConsistent", "plainly healthy while pulsecheck's taint is still on: {condition:?}");
        assert!(
            matches!((condition.0.as_str(), condition.1.as_str()), ("False", _) | ("True", "Recovering") | ("Unknown", "RecoveryUnconfirmed")),
            "{condition:?}"
        );
        assert!(tokio::time::Instant::now() < deadline, "not released within --recover-after and a tick of the recovery");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered.elapsed() >= recover_after, "released {:?} after the recovery, before --recover-after ({recover_after:?})", recovered.elapsed());
    wait_node(&client, node, "the condition True once released", Duration::from_secs(30), |n| {
        our_condition(n).is_some_and(|(s, r, _)| s == "True" && r == "HeartbeatsConsistent")
    })
    .await;
    second.stop().await;
    lab.stop().await;
}

/// pulsecheck's record is the only mark of its own cordon (`spec.unschedulable` is a bare flag).
/// Deleted by hand or by a tool, it would leave the cordon orphaned for ever: pulsecheck writes
/// it back while it remembers the cordon as its own, and undoes the cordon on recovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_record_of_a_cordon_only_remediation_is_restored_and_the_cordon_undone_on_recovery() {
    let lab = Lab::start(fast_fleet(4, "rec-")).await;
    let client = lab.client();
    let node = "rec-0002";
    let running = controller(client.clone(), |s| {
        s.actions.taint = false;
        s.actions.cordon = true;
    })
    .await;
    wait_evaluations(&running, 2, Duration::from_secs(30)).await;
    lab.fleet.set_fault(node, Fault::Zombie).unwrap();
    let has_record = |n: &Node| n.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(names::REMEDIATION_ANNOTATION));
    // The record claims the cordon as pulsecheck's (not merely "already cordoned by someone").
    let claims_cordon =
        |n: &Node| n.metadata.annotations.as_ref().and_then(|a| a.get(names::REMEDIATION_ANNOTATION)).is_some_and(|r| r.contains("\"cordoned\":true"));
    let cordoned = |n: &Node| n.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false);
    wait_node(&client, node, "cordoned with a record", STALE_AFTER + TICK_SLACK, |n| cordoned(n) && claims_cordon(n)).await;
    let nodes: Api<Node> = Api::all(client.clone());
    let forget = serde_json::json!({"metadata": {"annotations": {names::REMEDIATION_ANNOTATION: null}}});
    nodes.patch(node, &PatchParams::default(), &Patch::Merge(&forget)).await.expect("delete the record");
    wait_node(&client, node, "the record of pulsecheck's cordon written back", Duration::from_secs(20), |n| cordoned(n) && claims_cordon(n)).await;
    lab.fleet.set_fault(node, Fault::Recover).unwrap();
    wait_node(&client, node, "uncordoned on recovery", Duration::from_secs(30), |n| !cordoned(n) && !has_record(n)).await;
    running.stop().await;
    lab.stop().await;
}

/// Kubelets are configured per node pool: `nodeLeaseDurationSeconds` four times the default
/// means renewals four times apart — longer than `--lease-grace`. Each Lease is judged against
/// its own `leaseDurationSeconds`, so such a fleet is not stale between renewals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelets_with_long_lease_durations_are_not_judged_stale_between_renewals() {
    // Renewals every 4 s against a 3 s --lease-grace (as 200 s Leases renew every 50 s against 50 s).
    let lab = Lab::start(FleetOptions { lease_duration: Duration::from_secs(16), ..fast_fleet(4, "lld-") }).await;
    let running = controller(lab.client(), |_| {}).await;
    for node in lab.fleet.node_names() {
        wait_verdict(&running, &node, "healthy", Duration::from_secs(30)).await;
    }
    // Five renewal periods.
    wait_evaluations(&running, 40, Duration::from_secs(60)).await;
    let text = running.metrics.render();
    for verdict in ["suspect", "dead", "zombie"] {
        assert_eq!(metric(&text, &format!(r#"pulsecheck_verdict_changes_total{{verdict="{verdict}"}}"#)), None, "{text}");
    }
    assert_eq!(metric(&text, "pulsecheck_blind"), Some(0.0), "{text}");
    let client = lab.client();
    for node in lab.fleet.node_names() {
        assert!(events_for(&client, &node).await.is_empty(), "{node} got Events");
    }
    running.stop().await;
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_with_leader_election_only_one_acts() {
    let lab = Lab::start(fast_fleet(4, "ldr-")).await;
    let client = lab.client();
    let a = controller(client.clone(), |s| s.leader = elect("replica-a")).await;
    let b = controller(client.clone(), |s| s.leader = elect("replica-b")).await;
    let leaders = eventually("exactly one leader", Duration::from_secs(30), || {
        let la = metric(&a.metrics.render(), "pulsecheck_leader");
        let lb = metric(&b.metrics.render(), "pulsecheck_leader");
        async move { (la.is_some() && lb.is_some() && la.unwrap_or(0.0) + lb.unwrap_or(0.0) == 1.0).then_some((la, lb)) }
    })
    .await;
    lab.fleet.set_fault("ldr-0002", Fault::Zombie).unwrap();
    eventually("tainted", STALE_AFTER + TICK_SLACK, || {
        let client = client.clone();
        async move { has_our_taint(&get_node(&client, "ldr-0002").await).then_some(()) }
    })
    .await;
    wait_evaluations(&a, 6, Duration::from_secs(30)).await;
    let taints_a = metric(&a.metrics.render(), r#"pulsecheck_remediations_total{action="taint",result="success"}"#).unwrap_or(0.0);
    let taints_b = metric(&b.metrics.render(), r#"pulsecheck_remediations_total{action="taint",result="success"}"#).unwrap_or(0.0);
    assert_eq!(taints_a + taints_b, 1.0, "both acted: a={taints_a} b={taints_b}");
    let expected_actor = if leaders.0 == Some(1.0) { 1.0 } else { 0.0 };
    assert_eq!(taints_a, expected_actor, "the follower acted");
    a.stop().await;
    b.stop().await;
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cordon_only_on_a_node_a_person_cordoned_is_recorded_once_and_does_not_starve_the_next_zombie() {
    let lab = Lab::start(fast_fleet(5, "cdn-")).await;
    let client = lab.client();
    let nodes: Api<Node> = Api::all(client.clone());
    let first = "cdn-0001";
    let second = "cdn-0003";
    nodes.patch(first, &PatchParams::default(), &Patch::Merge(&serde_json::json!({"spec": {"unschedulable": true}}))).await.unwrap();
    // Two remediations a minute: the already-cordoned node may use one, once.
    let running = controller(client.clone(), |s| {
        s.actions.taint = false;
        s.actions.cordon = true;
        s.guard.max_unhealthy_percent = 40.0;
        s.guard.max_per_minute = 2;
    })
    .await;
    wait_evaluations(&running, 2, Duration::from_secs(30)).await;
    lab.fleet.set_fault(first, Fault::Zombie).unwrap();
    eventually("AlreadyCordoned event for the person-cordoned zombie", STALE_AFTER + TICK_SLACK, || {
        let client = client.clone();
        async move { events_for(&client, first).await.iter().any(|(r, _)| r == "AlreadyCordoned").then_some(()) }
    })
    .await;
    let n = get_node(&client, first).await;
    let record = n.metadata.annotations.as_ref().and_then(|a| a.get(names::REMEDIATION_ANNOTATION)).cloned().unwrap_or_default();
    assert!(record.contains("\"cordoned\":false") && record.contains("since"), "record: {record}");
    assert!(!has_our_taint(&n), "--action=cordon never taints");

    // A second zombie is cordoned: the first did not use up the rate limit tick after tick.
    lab.fleet.set_fault(second, Fault::Zombie).unwrap();
    eventually("second zombie cordoned", STALE_AFTER + TICK_SLACK, || {
        let client = client.clone();
        async move { get_node(&client, second).await.spec.and_then(|s| s.unschedulable).unwrap_or(false).then_some(()) }
    })
    .await;
    let text = running.metrics.render();
    assert_eq!(metric(&text, r#"pulsecheck_remediations_total{action="cordon",result="blocked"}"#), None, "nothing was held: {text}");

    // Recovery clears pulsecheck's record and leaves the person's cordon.
    lab.fleet.set_fault(first, Fault::Recover).unwrap();
    let released = eventually("record cleared", Duration::from_secs(40), || {
        let client = client.clone();
        async move {
            let n = get_node(&client, first).await;
            n.metadata.annotations.as_ref().is_none_or(|a| !a.contains_key(names::REMEDIATION_ANNOTATION)).then_some(n)
        }
    })
    .await;
    assert_eq!(released.spec.as_ref().and_then(|s| s.unschedulable), Some(true), "the person's cordon was undone");
    running.stop().await;
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excluding_a_tainted_zombie_releases_it_and_sets_the_condition_back_to_true() {
    let lab = Lab::start(fast_fleet(3, "exc-")).await;
    let running = controller(lab.client(), |_| {}).await;
    let zombie = "exc-0001";
    wait_evaluations(&running, 3, Duration::from_secs(30)).await;
    lab.fleet.set_fault(zombie, Fault::Zombie).unwrap();
    let client = lab.client();
    wait_tainted(&client, zombie, "zombie tainted", STALE_AFTER + Duration::from_secs(3) + TICK_SLACK).await;
    // A person takes the node out of pulsecheck's hands.
    let label = serde_json::json!({"metadata": {"labels": {names::EXCLUDE_LABEL: "true"}}});
    Api::<Node>::all(client.clone()).patch(zombie, &PatchParams::default(), &Patch::Merge(&label)).await.unwrap();
    let node = eventually("released and condition no longer False", Duration::from_secs(20), || {
        let client = client.clone();
        async move {
            let n = get_node(&client, zombie).await;
            let condition = our_condition(&n).map(|(s, r, _)| (s, r));
            (!has_our_taint(&n) && condition == Some(("True".into(), "Excluded".into()))).then_some(n)
        }
    })
    .await;
    let annotations = node.metadata.annotations.unwrap_or_default();
    assert!(!annotations.contains_key(names::REMEDIATION_ANNOTATION), "{annotations:?}");
    assert_eq!(node.metadata.labels.unwrap_or_default().get(names::EXCLUDE_LABEL).map(String::as_str), Some("true"));
    running.stop().await;
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cordon_a_person_makes_after_undoing_ours_survives_the_release() {
    let lab = Lab::start(fast_fleet(4, "rec-")).await;
    let client = lab.client();
    let nodes: Api<Node> = Api::all(client.clone());
    let node = "rec-0001";
    let running = controller(client.clone(), |s| s.actions.cordon = true).await;
    wait_evaluations(&running, 2, Duration::from_secs(30)).await;
    lab.fleet.set_fault(node, Fault::Zombie).unwrap();
    let record_of = |n: &Node| n.metadata.annotations.as_ref().and_then(|a| a.get(names::REMEDIATION_ANNOTATION)).cloned().unwrap_or_default();
    eventually("cordoned by pulsecheck", STALE_AFTER + TICK_SLACK, || {
        let client = client.clone();
        async move {
            let n = get_node(&client, node).await;
            let cordoned = n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true);
            (cordoned && record_of(&n).contains("\"cordoned\":true")).then_some(())
        }
    })
    .await;
    // A person uncordons it; pulsecheck notices the cordon is no longer its own.
    let cordon = |on: bool| serde_json::json!({"spec": {"unschedulable": on}});
    nodes.patch(node, &PatchParams::default(), &Patch::Merge(&cordon(false))).await.unwrap();
    eventually("record disowns the cordon", Duration::from_secs(10), || {
        let client = client.clone();
        async move { record_of(&get_node(&client, node).await).contains("\"cordoned\":false").then_some(()) }
    })
    .await;
    assert!(events_for(&client, node).await.iter().any(|(r, _)| r == "CordonTakenOver"));
    // Later the person cordons it for maintenance of their own; then the node recovers.
    nodes.patch(node, &PatchParams::default(), &Patch::Merge(&cordon(true))).await.unwrap();
    lab.fleet.set_fault(node, Fault::Recover).unwrap();
    let released = eventually("released", Duration::from_secs(30), || {
        let client = client.clone();
        async move {
            let n = get_node(&client, node).await;
            (!has_our_taint(&n) && record_of(&n).is_empty()).then_some(n)
        }
    })
    .await;
    assert_eq!(released.spec.and_then(|s| s.unschedulable), Some(true), "the person's cordon was undone");
    running.stop().await;
    lab.stop().await;
}

/// The same, but the uncordon and the person's cordon after it happen while this instance is a
/// follower, and the node recovers then too: when it takes over, its first tick as leader both
/// disowns the cordon and releases the node — and the release must leave the person's cordon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cordon_a_person_makes_while_pulsecheck_follows_survives_the_release_it_makes_on_taking_over() {
    use k8s_openapi::{api::coordination::v1::Lease, apimachinery::pkg::apis::meta::v1::MicroTime, jiff::Timestamp};
    let lab = Lab::start(fast_fleet(4, "flw-")).await;
    let client = lab.client();
    let nodes: Api<Node> = Api::all(client.clone());
    let node = "flw-0001";
    let running = controller(client.clone(), |s| {
        s.actions.cordon = true;
        s.leader = elect("replica-a");
    })
    .await;
    let leading = |want: f64| {
        let running = &running;
        move || {
            let now = metric(&running.metrics.render(), "pulsecheck_leader");
            async move { (now == Some(want)).then_some(()) }
        }
    };
    eventually("replica-a leads", Duration::from_secs(30), leading(1.0)).await;
    lab.fleet.set_fault(node, Fault::Zombie).unwrap();
    let record_of = |n: &Node| n.metadata.annotations.as_ref().and_then(|a| a.get(names::REMEDIATION_ANNOTATION)).cloned().unwrap_or_default();
    wait_node(&client, node, "tainted and cordoned by pulsecheck", STALE_AFTER + TICK_SLACK, |n| {
        has_our_taint(n) && n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) && record_of(n).contains("\"cordoned\":true")
    })
    .await;

    // Another instance takes the leader Lease over and keeps renewing it: replica-a follows.
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    let usurp = {
        let leases = leases.clone();
        async move {
            let mut lease = leases.get("pulsecheck").await.unwrap();
            let spec = lease.spec.as_mut().unwrap();
            spec.holder_identity = Some("replica-z".into());
            spec.renew_time = Some(MicroTime(Timestamp::now()));
            leases.replace("pulsecheck", &Default::default(), &lease).await.map(|_| ())
        }
    };
    usurp.await.unwrap();
    let renewing = tokio::spawn({
        let leases = leases.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if let Ok(mut lease) = leases.get("pulsecheck").await {
                    lease.spec.as_mut().unwrap().renew_time = Some(MicroTime(Timestamp::now()));
                    let _ = leases.replace("pulsecheck", &Default::default(), &lease).await;
                }
            }
        }
    });
    eventually("replica-a follows", Duration::from_secs(10), leading(0.0)).await;

    // While it follows: a person uncordons the node, cordons it again for their own reasons,
    // and the node recovers.
    let cordon = |on: bool| serde_json::json!({"spec": {"unschedulable": on}});
    nodes.patch(node, &PatchParams::default(), &Patch::Merge(&cordon(false))).await.unwrap();
    nodes.patch(node, &PatchParams::default(), &Patch::Merge(&cordon(true))).await.unwrap();
    lab.fleet.set_fault(node, Fault::Recover).unwrap();
    wait_verdict(&running, node, "healthy", Duration::from_secs(30)).await;
    // The follower has watched it healthy for longer than --recover-after before it leads.
    let recovered = evaluations(&running);
    wait_evaluations(&running, recovered + 10, Duration::from_secs(30)).await;
    let still = get_node(&client, node).await;
    assert!(has_our_taint(&still) && record_of(&still).contains("\"cordoned\":true"), "a follower wrote: {:?}", still.metadata.annotations);

    // replica-z goes away; replica-a takes over and releases the node.
    renewing.abort();
    let released = eventually("released by the new leader", Duration::from_secs(30), || {
        let client = client.clone();
        async move {
            let n = get_node(&client, node).await;
            (!has_our_taint(&n) && record_of(&n).is_empty()).then_some(n)
        }
    })
    .await;
    assert_eq!(released.spec.and_then(|s| s.unschedulable), Some(true), "the person's cordon was undone");
    running.stop().await;
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_reports_the_release_of_an_earlier_real_taint_once_and_keeps_it() {
    let lab = Lab::start(fast_fleet(3, "wrl-")).await;
    let client = lab.client();
    let node = "wrl-0001";
    let real = controller(client.clone(), |_| {}).await;
    wait_evaluations(&real, 2, Duration::from_secs(30)).await;
    lab.fleet.set_fault(node, Fault::Zombie).unwrap();
    wait_tainted(&client, node, "tainted by the real run", STALE_AFTER + TICK_SLACK).await;
    real.stop().await;
    lab.fleet.set_fault(node, Fault::Recover).unwrap();
    // Now a dry run: the node is healthy, the release is planned on every tick, nothing is written.
    let dry = controller(client.clone(), |s| s.dry_run = true).await;
    eventually("WouldRelease reported", Duration::from_secs(30), || {
        let client = client.clone();
        async move { events_for(&client, node).await.iter().any(|(r, _)| r == "WouldRelease").then_some(()) }
    })
    .await;
    wait_evaluations(&dry, 10, Duration::from_secs(30)).await;
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), "default");
    let would_release: Vec<_> = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(node) && e.reason.as_deref() == Some("WouldRelease"))
        .collect();
    assert_eq!(would_release.len(), 1, "{would_release:?}");
    assert!(would_release[0].series.is_none(), "reported again on later ticks: {:?}", would_release[0].series);
    assert!(has_our_taint(&get_node(&client, node).await), "the dry run removed the taint");
    dry.stop().await;
    lab.stop().await;
}
