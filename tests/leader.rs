//! Leader election under a real network fault: toxiproxy (built from the Go module proxy by
//! tools/build.sh) sits between one instance and the real apiserver and stalls its traffic — a
//! half-open connection, the case where a leader keeps believing it leads. At no moment may two
//! instances lead.

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
use pulsecheck::leader::{LeaderSettings, Leadership};
use pulsecheck_lab::controlplane::ControlPlane;
use tokio::time::Instant;

/// The Lease duration of both instances: renew deadline 4 s, retry about 0.86 s.
const LEASE: Duration = Duration::from_secs(6);

fn settings(identity: &str) -> LeaderSettings {
    LeaderSettings { enabled: true, namespace: "default".into(), name: "pulsecheck".into(), identity: identity.into(), duration: LEASE }
}

async fn wait_until(what: &str, within: Duration, check: impl Fn() -> bool) -> Duration {
    let started = Instant::now();
    eventually(what, within, || {
        let hit = check();
        async move { hit.then_some(()) }
    })
    .await;
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_connection_stalls_stops_acting_before_another_takes_over_and_hands_over_on_shutdown() {
    init();
    let cp = ControlPlane::start(Default::default()).await.expect("control plane starts");
    let toxiproxy = Toxiproxy::start().await;
    // Instance A reaches the apiserver only through the proxy; B directly.
    let through_proxy = client_through(&toxiproxy, &cp).await;

    let a = Arc::new(Leadership::start(through_proxy, &settings("replica-a")).await.expect("A campaigns"));
    wait_until("A leads", Duration::from_secs(20), || a.is_leader()).await;
    let b = Arc::new(Leadership::start(cp.client(), &settings("replica-b")).await.expect("B campaigns"));

    // Watch both, every 10 ms, for the whole test: never two leaders.
    let both = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (a, b, both, done) = (a.clone(), b.clone(), both.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                if a.is_leader() && b.is_leader() {
                    both.store(true, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    // While A renews, B stays a follower for more than a Lease duration.
    let mut seen_b_lead = false;
    let watched = Instant::now();
    while watched.elapsed() < LEASE + Duration::from_secs(2) {
        seen_b_lead |= b.is_leader();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!seen_b_lead && a.is_leader(), "B took over from a leader that renews");

    // A's connection stalls: its renewals hang. It must stop acting on its own, within the renew
    // deadline (4 s) of its last renewal, and B may take over only after the whole Lease.
    toxiproxy.stall().await;
    let a_stopped = wait_until("A stops leading", Duration::from_secs(15), || !a.is_leader()).await;
    let b_started = wait_until("B leads", Duration::from_secs(30), || b.is_leader()).await + a_stopped;
    assert!(a_stopped <= LEASE * 2 / 3 + Duration::from_secs(1), "A kept leading {a_stopped:?} after its link stalled");
    assert!(b_started > a_stopped, "B led before A stopped");
    assert!(!both.load(Ordering::Relaxed), "two leaders at once");

    // The link heals: A sees B's Lease and stays a follower.
    toxiproxy.heal().await;
    let healed = Instant::now();
    while healed.elapsed() < Duration::from_secs(3) {
        assert!(!a.is_leader() || !b.is_leader(), "two leaders after the link healed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // B shuts down: it gives the Lease up, and A takes over at once instead of a Lease later.
    done.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    assert!(!both.load(Ordering::Relaxed), "two leaders at once");
    let b = Arc::try_unwrap(b).ok().expect("only the test holds B");
    let resigned = Instant::now();
    b.resign(Duration::from_secs(5)).await;
    wait_until("A leads again", Duration::from_secs(20), || a.is_leader()).await;
    assert!(resigned.elapsed() < LEASE, "A waited {:?} for a Lease B should have released", resigned.elapsed());
    let a = Arc::try_unwrap(a).ok().expect("only the test holds A");
    a.resign(Duration::from_secs(5)).await;
    cp.stop().await.unwrap();
}

/// The verbs of the requests `user` made on the leader Lease so far, from the apiserver's audit log.
fn lease_requests(cp: &ControlPlane, user: &str) -> Vec<String> {
    let log = std::fs::read_to_string(cp.dir().join(pulsecheck_lab::controlplane::AUDIT_LOG)).unwrap_or_default();
    log.lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("an audit event"))
        .filter(|e| e["stage"] == "ResponseComplete" && e["user"]["username"] == user && e["objectRef"]["name"] == "pulsecheck")
        .map(|e| e["verb"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_renews_with_one_update_a_round_and_yields_to_a_write_it_did_not_make() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("audit-policy.yaml");
    std::fs::write(
        &policy,
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n  - level: Metadata\n    resources: [{group: coordination.k8s.io, resources: [leases]}]\n    namespaces: [default]\n  - level: None\n",
    )
    .unwrap();
    let cp = ControlPlane::start(pulsecheck_lab::controlplane::ControlPlaneOptions { audit_policy: Some(policy), ..Default::default() })
        .await
        .expect("control plane starts");
    let a = Leadership::start(cp.client(), &settings("replica-a")).await.expect("A campaigns");
    wait_until("A leads", Duration::from_secs(20), || a.is_leader()).await;

    // A leader renews from what its last write returned: one update a round, no read — at
    // 10,000 nodes as at one, the leader Lease costs one request per retry period.
    let led = lease_requests(&cp, "admin").len();
    eventually("five renewals", Duration::from_secs(20), || {
        let n = lease_requests(&cp, "admin").len();
        async move { (n >= led + 5).then_some(()) }
    })
    .await;
    let renewals = &lease_requests(&cp, "admin")[led..];
    assert!(renewals.iter().all(|v| v == "update"), "renewals: {renewals:?}");

    // Someone else writes the Lease (another instance that took it over): A's next update fails
    // with 409, it reads, sees the other holder renewing, and stops leading — never both.
    let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> = kube::Api::namespaced(cp.client(), "default");
    let mut lease = leases.get("pulsecheck").await.unwrap();
    let spec = lease.spec.as_mut().unwrap();
    spec.holder_identity = Some("replica-z".into());
    spec.renew_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(k8s_openapi::jiff::Timestamp::now()));
    leases.replace("pulsecheck", &Default::default(), &lease).await.unwrap();
    let stepped_down = wait_until("A stops leading", Duration::from_secs(10), || !a.is_leader()).await;
    assert!(stepped_down < LEASE * 2 / 3, "A led {stepped_down:?} on a Lease someone else held");
    // replica-z never renews: A takes the Lease over once it has watched it unrenewed for a
    // whole duration, by its own clock.
    let took_over = wait_until("A leads again", Duration::from_secs(30), || a.is_leader()).await;
    assert!(took_over + stepped_down >= LEASE, "A took over after {:?}, before the Lease ran out", took_over + stepped_down);
    a.resign(Duration::from_secs(5)).await;
    cp.stop().await.unwrap();
}
