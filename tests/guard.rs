//! The fleet guard against a real apiserver: it bounds every unavailable node, not only the
//! ones pulsecheck took out, and never takes the last schedulable node.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::Node;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use pulsecheck_lab::fleet::Fault;

/// Slack over a threshold for the tick and the watch to catch up.
const SLACK: Duration = Duration::from_secs(20);

/// Waits until `node` has a RemediationBlocked Event whose note contains `why`.
async fn wait_blocked(client: &kube::Client, node: &str, why: &str) -> String {
    eventually(&format!("{node} held: {why}"), STALE_AFTER + SLACK, || {
        let client = client.clone();
        async move { events_for(&client, node).await.into_iter().find(|(r, n)| r == "RemediationBlocked" && n.contains(why)).map(|(_, n)| n) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_outage_took_nodes_out_a_zombie_is_held_not_tainted() {
    let lab = Lab::start(fast_fleet(5, "out-")).await;
    let client = lab.client();
    // 40 % of 5: at most 2 nodes may be unavailable.
    let running = controller(client.clone(), |s| s.guard.max_unhealthy_percent = 40.0).await;
    for dead in ["out-0000", "out-0001"] {
        wait_verdict(&running, dead, "healthy", Duration::from_secs(30)).await;
        lab.fleet.set_fault(dead, Fault::Dead).unwrap();
    }
    for dead in ["out-0000", "out-0001"] {
        wait_verdict(&running, dead, "dead", STALE_AFTER + SLACK).await;
    }
    lab.fleet.set_fault("out-0002", Fault::Zombie).unwrap();
    wait_verdict(&running, "out-0002", "zombie", STALE_AFTER + SLACK).await;
    let note = wait_blocked(&client, "out-0002", "circuit is open").await;
    wait_evaluations(&running, 6, Duration::from_secs(30)).await;
    assert!(!has_our_taint(&get_node(&client, "out-0002").await), "tainted a zombie while 2 of 5 nodes were already dead: {note}");
    assert_eq!(metric(&running.metrics.render(), "pulsecheck_circuit_open"), Some(1.0));
    running.stop().await;
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_schedulable_node_is_never_tainted() {
    let lab = Lab::start(fast_fleet(2, "lst-")).await;
    let client = lab.client();
    // A person cordoned one of the two nodes: the other is all the capacity left.
    let cordon = serde_json::json!({"spec": {"unschedulable": true}});
    Api::<Node>::all(client.clone()).patch("lst-0000", &PatchParams::default(), &Patch::Merge(&cordon)).await.unwrap();
    let running = controller(client.clone(), |s| s.guard.max_unhealthy_percent = 100.0).await;
    wait_verdict(&running, "lst-0001", "healthy", Duration::from_secs(30)).await;
    lab.fleet.set_fault("lst-0001", Fault::Zombie).unwrap();
    wait_verdict(&running, "lst-0001", "zombie", STALE_AFTER + SLACK).await;
    wait_blocked(&client, "lst-0001", "--min-available-nodes").await;
    wait_evaluations(&running, 6, Duration::from_secs(30)).await;
    assert!(!has_our_taint(&get_node(&client, "lst-0001").await), "tainted the last schedulable node");
    running.stop().await;
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_condition_never_says_false_on_a_node_the_guard_held_back() {
    // Tools keyed on HeartbeatConsistent=False (NodeHealthCheck, draino) must never act beyond
    // pulsecheck's guard: with 5 zombies among 10 nodes and room for 2, only what pulsecheck
    // itself remediated may carry False.
    let lab = Lab::start(fast_fleet(10, "cnd-")).await;
    let client = lab.client();
    let running = controller(client.clone(), |s| s.guard.max_unhealthy_percent = 40.0).await;
    wait_evaluations(&running, 2, Duration::from_secs(30)).await;
    let zombies: Vec<String> = lab.fleet.node_names().into_iter().take(5).collect();
    for z in &zombies {
        lab.fleet.set_fault(z, Fault::Zombie).unwrap();
    }
    for z in &zombies {
        wait_verdict(&running, z, "zombie", STALE_AFTER + SLACK).await;
    }
    wait_blocked(&client, &zombies[4], "").await;
    wait_evaluations(&running, 6, Duration::from_secs(30)).await;
    let mut held = 0;
    for z in &zombies {
        let node = get_node(&client, z).await;
        let condition = our_condition(&node);
        if has_our_taint(&node) {
            continue;
        }
        held += 1;
        let (status, reason, message) = condition.expect("a held zombie says so in the condition");
        assert_ne!(status, "False", "{z} is held by the guard but its condition says False ({reason}: {message})");
        assert!(message.contains("not remediated"), "{z}: the condition says why it is held: {reason}: {message}");
    }
    assert!(held >= 3, "only {held} held");
    running.stop().await;
    lab.stop().await;
}
