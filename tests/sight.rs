//! Blindness against real faults: an apiserver that stops answering (SIGSTOP) and a connection
//! that stalls (toxiproxy), each for longer than the status threshold. Time pulsecheck could not
//! see must never count as a node's silence, however the blind spell ends: no verdict changes,
//! no condition, no taint, no Event — on a fleet that was healthy throughout.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use common::{
    toxiproxy::{Toxiproxy, client_through},
    *,
};
use pulsecheck::controller::Running;

/// The verdicts a healthy fleet must never be given, as `pulsecheck_verdict_changes_total` labels.
const WRONG: [&str; 3] = ["suspect", "zombie", "dead"];

/// Samples the controller's metrics every 50 ms until stopped: whether any node was ever judged
/// anything but healthy (the gauge) or any such verdict change was reported (the counter).
fn watch_for_wrong_verdicts(running: &Running, nodes: Vec<String>) -> (Arc<AtomicBool>, Arc<std::sync::Mutex<Vec<String>>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let metrics = running.metrics.clone();
    let (stop2, seen2) = (stop.clone(), seen.clone());
    tokio::spawn(async move {
        while !stop2.load(Ordering::Relaxed) {
            let text = metrics.render();
            for verdict in WRONG {
                if metric(&text, &format!(r#"pulsecheck_verdict_changes_total{{verdict="{verdict}"}}"#)).is_some_and(|n| n > 0.0) {
                    seen2.lock().unwrap().push(format!("a {verdict} verdict was reported"));
                }
                for node in &nodes {
                    if metric(&text, &verdict_series(node, verdict)) == Some(1.0) {
                        seen2.lock().unwrap().push(format!("{node} judged {verdict}"));
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    (stop, seen)
}

/// Waits until the controller says it is blind (`blind`) or sees again.
async fn wait_blind(running: &Running, blind: bool, within: Duration) {
    eventually(if blind { "the controller reports itself blind" } else { "the controller sees again" }, within, || {
        let hit = metric(&running.metrics.render(), "pulsecheck_blind") == Some(f64::from(u8::from(blind)));
        async move { hit.then_some(()) }
    })
    .await
}

/// Evaluation passes that span `d` at the fast settings' 500 ms interval.
fn passes(d: Duration) -> u64 {
    (d.as_millis() / 500) as u64
}

/// Nothing on any node of the fleet says pulsecheck judged it: no condition, taint or Event.
async fn assert_untouched(lab: &Lab) {
    let client = lab.client();
    for name in lab.fleet.node_names() {
        let node = get_node(&client, &name).await;
        assert!(!has_our_taint(&node), "{name} was tainted");
        assert_eq!(our_condition(&node), None, "{name} got a condition");
        assert_eq!(events_for(&client, &name).await, vec![], "{name} got Events");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apiserver_stopped_longer_than_the_status_threshold_changes_no_verdict_and_writes_nothing() {
    let lab = Lab::start(fast_fleet(4, "stp-")).await;
    let running = controller(lab.client(), |_| {}).await;
    for node in lab.fleet.node_names() {
        wait_verdict(&running, &node, "healthy", Duration::from_secs(30)).await;
    }
    let (stop, wrong) = watch_for_wrong_verdicts(&running, lab.fleet.node_names());

    let paused = lab.cp.pause_apiserver().expect("kube-apiserver pauses");
    wait_blind(&running, true, Duration::from_secs(10)).await;
    // Stopped for longer than the status threshold, as the controller's own ticks count time.
    wait_evaluations(&running, passes(STALE_AFTER + Duration::from_secs(4)), Duration::from_secs(60)).await;
    paused.resume();
    wait_blind(&running, false, Duration::from_secs(60)).await;
    // Two status thresholds of sight again: long enough for any wrong verdict to show.
    wait_evaluations(&running, passes(2 * STALE_AFTER), Duration::from_secs(60)).await;

    stop.store(true, Ordering::Relaxed);
    assert_eq!(*wrong.lock().unwrap(), Vec::<String>::new(), "a healthy fleet was judged during or after the stop");
    assert_untouched(&lab).await;
    running.stop().await;
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_to_the_apiserver_stalled_longer_than_the_status_threshold_changes_no_verdict_and_writes_nothing() {
    let lab = Lab::start(fast_fleet(4, "stl-")).await;
    let toxiproxy = Toxiproxy::start().await;
    // Only the controller's traffic goes through the proxy; the fleet keeps reaching the apiserver.
    let running = controller(client_through(&toxiproxy, &lab.cp).await, |_| {}).await;
    for node in lab.fleet.node_names() {
        wait_verdict(&running, &node, "healthy", Duration::from_secs(30)).await;
    }
    let (stop, wrong) = watch_for_wrong_verdicts(&running, lab.fleet.node_names());

    toxiproxy.stall().await;
    wait_blind(&running, true, Duration::from_secs(10)).await;
    wait_evaluations(&running, passes(STALE_AFTER + Duration::from_secs(4)), Duration::from_secs(60)).await;
    toxiproxy.heal().await;
    wait_blind(&running, false, Duration::from_secs(90)).await;
    wait_evaluations(&running, passes(2 * STALE_AFTER), Duration::from_secs(60)).await;

    stop.store(true, Ordering::Relaxed);
    assert_eq!(*wrong.lock().unwrap(), Vec::<String>::new(), "a healthy fleet was judged during or after the stall");
    assert_untouched(&lab).await;
    running.stop().await;
    lab.stop().await;
}
