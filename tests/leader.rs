//! Leader election under a real network fault: toxiproxy (built from the Go module proxy by
//! tools/build.sh) sits between one instance and the real apiserver and stalls its traffic — a
//! half-open connection, the case where a leader keeps believing it leads. At no moment may two
//! instances lead.

mod common;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use common::*;
use pulsecheck::leader::{LeaderSettings, Leadership};
use pulsecheck_lab::{controlplane::ControlPlane, process::Process};
use tokio::time::Instant;

/// The Lease duration of both instances: renew deadline 4 s, retry about 0.86 s.
const LEASE: Duration = Duration::from_secs(6);

/// A toxiproxy server and its HTTP API.
struct Toxiproxy {
    api: SocketAddr,
    _process: Process,
    _dir: tempfile::TempDir,
}

impl Toxiproxy {
    async fn start() -> Toxiproxy {
        let program = tool("toxiproxy-server");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let args = ["-host".to_string(), "127.0.0.1".to_string(), "-port".to_string(), port.to_string()];
        let process = Process::spawn("toxiproxy-server", &program, &args, &dir.path().join("toxiproxy.log")).expect("toxiproxy starts");
        let api = SocketAddr::from(([127, 0, 0, 1], port));
        eventually("toxiproxy answers", Duration::from_secs(20), || async move { tokio::net::TcpStream::connect(api).await.ok().map(drop) }).await;
        Toxiproxy { api, _process: process, _dir: dir }
    }

    async fn call(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(self.api).await.expect("toxiproxy API reachable");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.api,
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        let text = String::from_utf8_lossy(&raw).into_owned();
        let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        (code, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
    }

    /// A proxy to `upstream`; returns where it listens.
    async fn proxy(&self, upstream: &str) -> SocketAddr {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let listen = SocketAddr::from(([127, 0, 0, 1], port));
        let body = format!(r#"{{"name":"apiserver","listen":"{listen}","upstream":"{upstream}","enabled":true}}"#);
        let (code, answer) = self.call("POST", "/proxies", &body).await;
        assert!(code == 201 || code == 200, "creating the proxy: {code} {answer}");
        listen
    }

    /// Every byte in both directions is held back, the connections stay open: a half-open link.
    async fn stall(&self) {
        for stream in ["upstream", "downstream"] {
            let body = format!(r#"{{"name":"stall-{stream}","type":"timeout","stream":"{stream}","toxicity":1.0,"attributes":{{"timeout":0}}}}"#);
            let (code, answer) = self.call("POST", "/proxies/apiserver/toxics", &body).await;
            assert!(code == 200 || code == 201, "adding the toxic: {code} {answer}");
        }
    }

    async fn heal(&self) {
        for stream in ["upstream", "downstream"] {
            let (code, answer) = self.call("DELETE", &format!("/proxies/apiserver/toxics/stall-{stream}"), "").await;
            assert!(code == 204 || code == 200, "removing the toxic: {code} {answer}");
        }
    }
}

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
    let upstream = cp.server_url().trim_start_matches("https://").to_string();
    let listen = toxiproxy.proxy(&upstream).await;
    // Instance A reaches the apiserver only through the proxy; B directly.
    let kubeconfig = kube::config::Kubeconfig::read_from(cp.kubeconfig_path()).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.unwrap();
    config.cluster_url = format!("https://{listen}").parse().unwrap();
    let through_proxy = kube::Client::try_from(config).unwrap();

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
