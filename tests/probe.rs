//! Kubelet probes against real local HTTPS endpoints and a real kube-apiserver.
//!
//! The kubelets are the lab's fake kubelet endpoints (`pulsecheck_lab::kubelet`): HTTPS on
//! their own loopback address with a certificate for that IP, answering `/healthz` like a
//! kubelet with anonymous auth off, and recording every request with its Authorization header.
//! So the tests check what a kubelet would actually receive — above all, that pulsecheck's
//! token never leaves over a connection it did not verify unless the operator asked for that.
//! `apiserver-proxy` is checked against the lab's real kube-apiserver (RBAC) and, for the
//! answers a lab kubelet cannot give through it, against a small fake apiserver.

mod common;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, service::service_fn};
use hyper_util::rt::TokioIo;
use k8s_openapi::{
    api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject},
    jiff::Timestamp,
};
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use pulsecheck::cadence::KubeletCadence;
use pulsecheck::probe::KubeletCredential;
use pulsecheck::{
    facts::{KubeletEndpoint, NodeFacts, ProbeOutcome, Scope, SlimNode},
    metrics::Metrics,
    probe::{ProbeMode, ProbeReport, ProbeSettings, ProbeTarget, Prober, run_scheduler},
};
use pulsecheck_lab::{
    FLEET_LABEL,
    certs::CertificateAuthority,
    controlplane::{ControlPlane, ControlPlaneOptions},
    fleet::{Fault, Fleet, FleetOptions},
    kubelet::{self, EndpointFaults},
};
use rustls::pki_types::{CertificateDer, pem::PemObject};
use tokio::{
    net::TcpListener,
    sync::{mpsc, watch},
    task::JoinHandle,
    time::Instant,
};
use tokio_util::sync::CancellationToken;

/// Upper bound of every wait (the machine is shared and has two cores).
const DEADLINE: Duration = Duration::from_secs(45);

/// Polls `ready` every 20 ms until it holds; fails naming `what` after [`DEADLINE`].
async fn poll(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Kubelets and the prober

/// A distinct loopback address per test, so no two tests share an endpoint (the lab fleet
/// starts at 127.0.1.1; these stay in 127.0.200.0/24).
fn loopback(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 200, n))
}

/// A lab kubelet on `ip` with a serving certificate from `ca` for `cert_ip`.
async fn kubelet_with_cert_for(ca: &CertificateAuthority, ip: IpAddr, cert_ip: IpAddr) -> kubelet::KubeletEndpoint {
    let serving = ca.issue_server("kubelet", &[cert_ip], &[]).unwrap();
    kubelet::KubeletEndpoint::start(ip, &serving, &kubelet::KubeletConfig::default()).await.unwrap()
}

/// A healthy lab kubelet on `ip` whose certificate for that IP comes from `ca`.
async fn kubelet(ca: &CertificateAuthority, ip: IpAddr) -> kubelet::KubeletEndpoint {
    kubelet_with_cert_for(ca, ip, ip).await
}

fn faulty(fault: fn(&mut EndpointFaults)) -> EndpointFaults {
    let mut faults = EndpointFaults::default();
    fault(&mut faults);
    faults
}

/// What the controller would hand the prober for a node whose kubelet is `endpoint`.
fn target(endpoint: SocketAddr, node: &str) -> ProbeTarget {
    ProbeTarget {
        node: node.into(),
        endpoint: KubeletEndpoint {
            addresses: vec![("Hostname".into(), node.into()), ("InternalIP".into(), endpoint.ip().to_string())],
            port: Some(endpoint.port()),
        },
        recheck_cadence: false,
    }
}

fn authorizations(k: &kubelet::KubeletEndpoint) -> Vec<Option<String>> {
    k.requests().into_iter().map(|r| r.authorization).collect()
}

/// A temporary directory with a token file and, on demand, CA bundles.
struct Setup {
    dir: tempfile::TempDir,
    token_file: PathBuf,
}

impl Setup {
    fn new(token: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, format!("{token}\n")).unwrap();
        Setup { dir, token_file }
    }

    fn ca_file(&self, pem: &str) -> PathBuf {
        let path = self.dir.path().join(format!("ca-{}.pem", rand_suffix()));
        std::fs::write(&path, pem).unwrap();
        path
    }

    fn settings(&self, mode: ProbeMode, ca: Option<PathBuf>, insecure_tls: bool) -> ProbeSettings {
        ProbeSettings {
            mode,
            timeout: Duration::from_secs(5),
            interval: Duration::from_secs(30),
            concurrency: 8,
            preferred_address_types: vec!["InternalIP".into(), "ExternalIP".into(), "Hostname".into()],
            ca,
            insecure_tls,
            token_file: self.token_file.clone(),
            configz: true,
            kubeconfig_credential: Err("no kubeconfig in this test".into()),
        }
    }

    /// `kubelet-healthz` verifying kubelets against `ca`.
    fn verifying(&self, ca: &CertificateAuthority) -> Prober {
        self.prober(self.settings(ProbeMode::KubeletHealthz, Some(self.ca_file(&ca.cert_pem())), false))
    }

    fn prober(&self, settings: ProbeSettings) -> Prober {
        Prober::new(settings, offline_client()).unwrap()
    }
}

fn rand_suffix() -> String {
    pulsecheck_lab::certs::random_token().chars().take(8).collect()
}

/// A client for modes that never reach the apiserver.
fn offline_client() -> kube::Client {
    kube::Client::try_from(kube::Config::new("https://127.0.0.1:9".parse().unwrap())).unwrap()
}

// ---------------------------------------------------------------------------------------------
// kubelet-healthz

#[tokio::test]
async fn healthy_kubelet_is_a_success_and_gets_the_token_over_verified_tls() {
    let ca = CertificateAuthority::new("kubelet-ca").unwrap();
    let kubelet = kubelet(&ca, loopback(1)).await;
    let s = Setup::new("token-one");
    let prober = s.verifying(&ca);
    assert_eq!(prober.effective_mode(), ProbeMode::KubeletHealthz);
    assert!(prober.verifies_kubelet_certificates());
    assert_eq!(prober.fallback_reason(), None);

    assert_eq!(prober.probe(&target(kubelet.addr(), "node-1")).await, ProbeOutcome::Success);
    let seen = kubelet.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/healthz");
    assert_eq!(seen[0].authorization.as_deref(), Some("Bearer token-one"));
}

#[tokio::test]
async fn the_kubelet_cadence_is_read_from_configz_only_where_the_token_may_go() {
    let ca = CertificateAuthority::new("kubelet-ca").unwrap();
    let serving = ca.issue_server("kubelet", &[loopback(60)], &[]).unwrap();
    let config = kubelet::KubeletConfig {
        status_update_frequency: Duration::from_secs(4),
        status_report_frequency: Duration::from_secs(1200),
        lease_duration: Duration::from_secs(40),
    };
    let kubelet = kubelet::KubeletEndpoint::start(loopback(60), &serving, &config).await.unwrap();
    let s = Setup::new("token-configz");
    let node = target(kubelet.addr(), "node-configz");

    // Verified TLS: the token goes, and the kubelet's own cadence comes back.
    let read = s.verifying(&ca).kubelet_cadence(&node).await;
    assert_eq!(read, Some(Ok(KubeletCadence { report: Duration::from_secs(1200), update: Duration::from_secs(4) })));
    let seen = kubelet.requests();
    assert_eq!((seen[0].path.as_str(), seen[0].authorization.as_deref()), ("/configz", Some("Bearer token-configz")));

    // A kubelet that refuses the token: an error naming the permission, not a cadence.
    kubelet.set_faults(faulty(|f| f.unauthorized = true));
    let refused = s.verifying(&ca).kubelet_cadence(&node).await.expect("kubelet-healthz reads /configz").unwrap_err();
    assert!(refused.contains("nodes/configz"), "{refused}");
    kubelet.set_faults(EndpointFaults::default());

    // No way to trust the kubelet (tcp fallback), or --kubelet-configz=false: nothing is asked.
    let before = kubelet.requests().len();
    let untrusted = s.prober(s.settings(ProbeMode::KubeletHealthz, None, false));
    assert_eq!(untrusted.kubelet_cadence(&node).await, None);
    let off = s.prober(ProbeSettings { configz: false, ..s.settings(ProbeMode::KubeletHealthz, Some(s.ca_file(&ca.cert_pem())), false) });
    assert!(!off.reads_configz());
    assert_eq!(off.kubelet_cadence(&node).await, None);
    assert_eq!(kubelet.requests().len(), before, "no request reaches the kubelet");
}

#[tokio::test]
async fn outside_a_pod_the_kubeconfig_token_is_sent_and_without_any_token_nothing_is() {
    let ca = CertificateAuthority::new("kubelet-ca").unwrap();
    let kubelet = kubelet(&ca, loopback(1)).await;
    let s = Setup::new("unused");
    let ca_file = s.ca_file(&ca.cert_pem());
    let no_token_file =
        || ProbeSettings { token_file: s.dir.path().join("no-such-token"), ..s.settings(ProbeMode::KubeletHealthz, Some(ca_file.clone()), false) };
    // No ServiceAccount token to read, a kubeconfig whose user has a bearer token: that one.
    let with_kubeconfig = ProbeSettings { kubeconfig_credential: Ok(KubeletCredential::Token("kubeconfig-token".into())), ..no_token_file() };
    assert_eq!(s.prober(with_kubeconfig).probe(&target(kubelet.addr(), "node-1")).await, ProbeOutcome::Success);
    assert_eq!(authorizations(&kubelet), vec![Some("Bearer kubeconfig-token".to_string())]);
    // Neither: not probed, both reasons named, and the kubelet never even gets a connection.
    let neither = ProbeSettings { kubeconfig_credential: Err("the kubeconfig's user authenticates with a client certificate".into()), ..no_token_file() };
    let ProbeOutcome::NotProbed(why) = s.prober(neither).probe(&target(kubelet.addr(), "node-1")).await else { panic!("probed without a token") };
    assert!(why.contains("--token-file") && why.contains("client certificate"), "{why}");
    assert_eq!(kubelet.requests().len(), 1);
}

#[tokio::test]
async fn kubelet_with_a_stuck_sync_loop_is_a_failure_naming_the_failed_check() {
    let ca = CertificateAuthority::new("kubelet-ca").unwrap();
    let kubelet = kubelet(&ca, loopback(2)).await;
    kubelet.set_faults(faulty(|f| f.fail = true));
    let s = Setup::new("t");
    let outcome = s.verifying(&ca).probe(&target(kubelet.addr(), "node-1")).await;
    let ProbeOutcome::Failure(why) = &outcome else { panic!("expected a failure, got {outcome:?}") };
    assert!(why.contains("500") && why.contains("syncloop failed"), "{why}");
}

#[tokio::test]
async fn kubelet_refusing_the_token_is_unauthorized_and_names_the_permission() {
    let ca = CertificateAuthority::new("kubelet-ca").unwrap();
    let kubelet = kubelet(&ca, loopback(3)).await;
    kubelet.set_faults(faulty(|f| f.unauthorized = true));
    let s = Setup::new("t");
    let outcome = s.verifying(&ca).probe(&target(kubelet.addr(), "node-1")).await;
    let ProbeOutcome::Unauthorized(why) = &outcome else { panic!("expected unauthorized, got {outcome:?}") };
    assert!(why.contains("401") && why.contains("`get` on `nodes/healthz`"), "{why}");
}

#[tokio::test]
async fn hanging_kubelet_times_out_within_the_probe_timeout() {
    let ca = CertificateAuthority::new("kubelet-ca").unwrap();
    let kubelet = kubelet(&ca, loopback(4)).await;
    kubelet.set_faults(faulty(|f| f.hang = true));
    let s = Setup::new("t");
    let mut settings = s.settings(ProbeMode::KubeletHealthz, Some(s.ca_file(&ca.cert_pem())), false);
    settings.timeout = Duration::from_secs(1);
    let prober = s.prober(settings);
    let started = Instant::now();
    let outcome = prober.probe(&target(kubelet.addr(), "node-1")).await;
    let took = started.elapsed();
    assert_eq!(outcome, ProbeOutcome::Timeout);
    assert!(took < Duration::from_secs(1) + Duration::from_secs(2), "a 1s probe took {took:?}");
    // It reached the kubelet and waited for the answer.
    assert_eq!(kubelet.requests().len(), 1);
}

#[tokio::test]
async fn without_ca_or_insecure_flag_no_token_is_sent_and_the_probe_is_a_tls_handshake() {
    let ca = CertificateAuthority::new("kubelet-ca").unwrap();
    let kubelet = kubelet(&ca, loopback(5)).await;
    let s = Setup::new("secret-token");
    let prober = s.prober(s.settings(ProbeMode::KubeletHealthz, None, false));
    assert_eq!(prober.effective_mode(), ProbeMode::Tcp);
    let why = prober.fallback_reason().expect("the fallback is explained");
    assert!(why.contains("--kubelet-certificate-authority") && why.contains("--kubelet-insecure-tls"), "{why}");

    assert_eq!(prober.probe(&target(kubelet.addr(), "node-1")).await, ProbeOutcome::Success);
    assert!(kubelet.requests().is_empty(), "nothing may be sent without a trusted certificate: {:?}", kubelet.requests());
    // A closed kubelet port is what the fallback still notices (refused, or reset when the
    // listener goes away under a pending connection).
    kubelet.close();
    let outcome = prober.probe(&target(kubelet.addr(), "node-1")).await;
    assert!(matches!(&outcome, ProbeOutcome::Unreachable(why) if why.contains("kubelet")), "{outcome:?}");
}

#[tokio::test]
async fn insecure_flag_sends_the_token_to_an_unverified_kubelet() {
    // The kubelet's certificate comes from a CA pulsecheck was never given (like kubelet's
    // default self-signed certificates).
    let unknown_ca = CertificateAuthority::new("self-signed-kubelet").unwrap();
    let kubelet = kubelet(&unknown_ca, loopback(6)).await;
    let s = Setup::new("token-insecure");
    let prober = s.prober(s.settings(ProbeMode::KubeletHealthz, None, true));
    assert_eq!(prober.effective_mode(), ProbeMode::KubeletHealthz);
    assert!(!prober.verifies_kubelet_certificates());
    assert_eq!(prober.probe(&target(kubelet.addr(), "node-1")).await, ProbeOutcome::Success);
    assert_eq!(authorizations(&kubelet), vec![Some("Bearer token-insecure".to_string())]);
}

#[tokio::test]
async fn kubelet_certificate_from_another_ca_is_untrusted_not_a_failure_and_gets_no_token() {
    let kubelet_ca = CertificateAuthority::new("kubelet-ca").unwrap();
    let other_ca = CertificateAuthority::new("some-other-ca").unwrap();
    let kubelet = kubelet(&kubelet_ca, loopback(7)).await;
    let s = Setup::new("secret-token");
    let outcome = s.verifying(&other_ca).probe(&target(kubelet.addr(), "node-1")).await;
    // pulsecheck's trust configuration (or a pending serving certificate), never evidence.
    let ProbeOutcome::Untrusted(why) = &outcome else { panic!("expected an untrusted certificate, got {outcome:?}") };
    assert!(why.contains("certificate") && why.contains("--kubelet-certificate-authority"), "{why}");
    assert!(kubelet.requests().is_empty(), "{:?}", kubelet.requests());
}

#[tokio::test]
async fn certificate_for_another_address_is_untrusted_and_gets_no_token() {
    // Signed by the right CA, but for a different node's address.
    let ca = CertificateAuthority::new("kubelet-ca").unwrap();
    let kubelet = kubelet_with_cert_for(&ca, loopback(8), loopback(99)).await;
    let s = Setup::new("secret-token");
    let outcome = s.verifying(&ca).probe(&target(kubelet.addr(), "node-1")).await;
    assert!(matches!(&outcome, ProbeOutcome::Untrusted(why) if why.contains("certificate")), "{outcome:?}");
    assert!(kubelet.requests().is_empty(), "{:?}", kubelet.requests());
}

#[tokio::test]
async fn rotated_token_file_is_picked_up_by_the_next_probe() {
    let ca = CertificateAuthority::new("kubelet-ca").unwrap();
    let kubelet = kubelet(&ca, loopback(9)).await;
    let s = Setup::new("token-before");
    let prober = s.verifying(&ca);
    let node = target(kubelet.addr(), "node-1");
    assert_eq!(prober.probe(&node).await, ProbeOutcome::Success);
    // Projected ServiceAccount tokens are replaced atomically by the kubelet...
    let fresh = s.dir.path().join("token.new");
    std::fs::write(&fresh, "token-after").unwrap();
    std::fs::rename(&fresh, &s.token_file).unwrap();
    assert_eq!(prober.probe(&node).await, ProbeOutcome::Success);
    // ...and a file rewritten in place, even with the same length, is read again too.
    std::fs::write(&s.token_file, "token-again").unwrap();
    assert_eq!(prober.probe(&node).await, ProbeOutcome::Success);
    assert_eq!(authorizations(&kubelet), ["Bearer token-before", "Bearer token-after", "Bearer token-again"].map(|t| Some(t.to_string())).to_vec());
}

#[tokio::test]
async fn unreadable_token_file_is_not_probed_and_the_kubelet_hears_nothing() {
    let ca = CertificateAuthority::new("kubelet-ca").unwrap();
    let kubelet = kubelet(&ca, loopback(10)).await;
    let s = Setup::new("t");
    std::fs::remove_file(&s.token_file).unwrap();
    let outcome = s.verifying(&ca).probe(&target(kubelet.addr(), "node-1")).await;
    assert!(matches!(&outcome, ProbeOutcome::NotProbed(why) if why.contains("--token-file")), "{outcome:?}");
    assert!(kubelet.requests().is_empty());
}

#[tokio::test]
async fn closed_kubelet_port_is_unreachable_and_a_node_without_port_is_not_probed() {
    let ca = CertificateAuthority::new("kubelet-ca").unwrap();
    let kubelet = kubelet(&ca, loopback(11)).await;
    kubelet.close();
    let s = Setup::new("t");
    let prober = s.verifying(&ca);
    let outcome = prober.probe(&target(kubelet.addr(), "node-1")).await;
    assert!(matches!(&outcome, ProbeOutcome::Unreachable(why) if why.contains("cannot connect to the kubelet")), "{outcome:?}");
    let mut portless = target(kubelet.addr(), "node-1");
    portless.endpoint.port = None;
    let outcome = prober.probe(&portless).await;
    assert!(matches!(&outcome, ProbeOutcome::NotProbed(why) if why.contains("kubelet port")), "{outcome:?}");
}

#[tokio::test]
async fn a_dual_stack_node_is_reached_on_its_second_address_when_the_first_is_unreachable() {
    // The node lists an InternalIP of each family; the first one (the other family, or a
    // blocked address) does not answer, the second does.
    let ca = CertificateAuthority::new("kubelet-ca").unwrap();
    let serving = ca.issue_server("kubelet", &[loopback(12), loopback(13)], &[]).unwrap();
    let kubelet = kubelet::KubeletEndpoint::start(loopback(12), &serving, &kubelet::KubeletConfig::default()).await.unwrap();
    let s = Setup::new("t");
    let node = ProbeTarget {
        node: "node-1".into(),
        endpoint: KubeletEndpoint {
            addresses: vec![("InternalIP".into(), loopback(13).to_string()), ("InternalIP".into(), loopback(12).to_string())],
            port: Some(kubelet.addr().port()),
        },
        recheck_cadence: false,
    };
    assert_eq!(s.verifying(&ca).probe(&node).await, ProbeOutcome::Success);
    assert_eq!(authorizations(&kubelet), vec![Some("Bearer t".to_string())]);
}

// ---------------------------------------------------------------------------------------------
// tcp

/// A port that takes TCP connections and never says a word: what a path that drops large
/// packets (a path-MTU black hole) looks like from pulsecheck — the TCP handshake passes, the
/// kubelet's certificate never arrives. The listener lives as long as the returned task.
async fn silent_port(ip: IpAddr) -> (SocketAddr, JoinHandle<()>) {
    let silent = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = silent.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = silent.accept().await {
            held.push(tcp);
        }
    });
    (addr, hold)
}

#[tokio::test]
async fn a_kubelet_port_whose_tls_handshake_never_completes_is_no_handshake_not_a_hanging_kubelet() {
    // Before the probe tracked how far it got this was a Timeout — "the kubelet accepted and
    // hangs", conclusive after --probe-zombie-after — and a healthy node behind an MTU black
    // hole was tainted.
    let ca = CertificateAuthority::new("kubelet-ca").unwrap();
    let (addr, hold) = silent_port(loopback(22)).await;
    let s = Setup::new("t");
    let mut settings = s.settings(ProbeMode::KubeletHealthz, Some(s.ca_file(&ca.cert_pem())), false);
    settings.timeout = Duration::from_secs(1);
    let prober = s.prober(settings);
    let started = Instant::now();
    let outcome = prober.probe(&target(addr, "node-1")).await;
    assert!(
        matches!(&outcome, ProbeOutcome::NoHandshake(why) if why.contains(&format!("TLS handshake with kubelet at {addr} did not complete"))),
        "{outcome:?}"
    );
    assert!(!outcome.got_through());
    assert!(started.elapsed() < Duration::from_secs(3), "a 1s probe took {:?}", started.elapsed());
    hold.abort();
}

/// A TLS server on `ip` with a certificate from `ca` that reads each request and then does
/// `reply` with the connection instead of answering over HTTP; counts the requests it read.
async fn tls_server_that_does_not_answer_http(ca: &CertificateAuthority, ip: IpAddr, reply: &'static [u8]) -> (SocketAddr, Arc<Mutex<usize>>, JoinHandle<()>) {
    let acceptor = common::tls_acceptor(ca, "kubelet", ip);
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(Mutex::new(0usize));
    let seen = requests.clone();
    let server = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let Ok(mut tls) = acceptor.accept(tcp).await else { continue };
            let mut buf = [0u8; 4096];
            if tokio::io::AsyncReadExt::read(&mut tls, &mut buf).await.is_ok_and(|n| n > 0) {
                *seen.lock().unwrap() += 1;
            }
            let _ = tokio::io::AsyncWriteExt::write_all(&mut tls, reply).await;
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
        }
    });
    (addr, requests, server)
}

#[tokio::test]
async fn a_kubelet_that_hangs_up_after_the_request_gave_no_answer_rather_than_an_unhealthy_one() {
    // TLS completes with a certificate pulsecheck trusts, the request is read, the connection is
    // closed without a response. Before, this was a Failure: "the kubelet answered unhealthy".
    let ca = CertificateAuthority::new("kubelet-ca").unwrap();
    let (addr, requests, server) = tls_server_that_does_not_answer_http(&ca, loopback(23), b"").await;
    let s = Setup::new("t");
    let outcome = s.verifying(&ca).probe(&target(addr, "node-1")).await;
    assert!(matches!(&outcome, ProbeOutcome::NoAnswer(why) if why.contains("without an answer")), "{outcome:?}");
    assert!(outcome.got_through(), "the request got to the kubelet");
    assert_eq!(*requests.lock().unwrap(), 1);
    server.abort();
}

#[tokio::test]
async fn something_on_the_kubelet_port_that_does_not_speak_http_is_inconclusive() {
    // Another service on port 10250 behind a certificate pulsecheck trusts: what it says is no
    // kubelet's health. Before, any error after the handshake was a Failure.
    let ca = CertificateAuthority::new("kubelet-ca").unwrap();
    let (addr, _, server) = tls_server_that_does_not_answer_http(&ca, loopback(24), b"SSH-2.0-OpenSSH_9.2\r\n").await;
    let s = Setup::new("t");
    let outcome = s.verifying(&ca).probe(&target(addr, "node-1")).await;
    assert!(matches!(&outcome, ProbeOutcome::Inconclusive(why) if why.contains("does not speak HTTP")), "{outcome:?}");
    assert!(!outcome.is_failure());
    server.abort();
}

#[tokio::test]
async fn tcp_mode_succeeds_on_a_handshake_and_a_port_that_never_completes_it_is_no_handshake() {
    let ca = CertificateAuthority::new("kubelet-ca").unwrap();
    let kubelet = kubelet(&ca, loopback(20)).await;
    let s = Setup::new("t");
    let mut settings = s.settings(ProbeMode::Tcp, None, false);
    settings.timeout = Duration::from_secs(1);
    let prober = s.prober(settings);
    assert_eq!(prober.probe(&target(kubelet.addr(), "node-1")).await, ProbeOutcome::Success);
    assert!(kubelet.requests().is_empty());

    // A port that accepts TCP but never speaks TLS: pulsecheck did not get through.
    let (addr, hold) = silent_port(loopback(21)).await;
    let started = Instant::now();
    let outcome = prober.probe(&target(addr, "node-2")).await;
    assert!(matches!(&outcome, ProbeOutcome::NoHandshake(why) if why.contains("did not complete")), "{outcome:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "a 1s probe took {:?}", started.elapsed());
    hold.abort();
}

// ---------------------------------------------------------------------------------------------
// A simulated fleet behind a real apiserver

async fn control_plane() -> ControlPlane {
    ControlPlane::start(ControlPlaneOptions { dir: None, ..Default::default() }).await.expect("control plane starts")
}

#[tokio::test]
async fn simulated_nodes_are_probed_at_the_address_and_port_their_status_advertises() {
    let cp = control_plane().await;
    let fleet = Fleet::start(cp.client(), FleetOptions { nodes: 4, ..FleetOptions::default() }).await.expect("fleet starts");
    let names = fleet.node_names();
    fleet.set_fault(&names[1], Fault::ProbeFail).unwrap();
    fleet.set_fault(&names[2], Fault::ProbeHang).unwrap();
    fleet.set_fault(&names[3], Fault::Unauthorized).unwrap();

    // Targets exactly as the controller builds them: from the Nodes the apiserver serves.
    let nodes: Api<SlimNode> = Api::all(cp.client());
    let listed = nodes.list(&ListParams::default().labels(&format!("{FLEET_LABEL}=true"))).await.unwrap();
    let now = Timestamp::now();
    let targets: Vec<ProbeTarget> = listed
        .items
        .iter()
        .map(|n| ProbeTarget {
            node: n.metadata.name.clone().unwrap(),
            endpoint: NodeFacts::observe(n, None, &Scope::default(), now).kubelet,
            recheck_cadence: false,
        })
        .collect();
    assert_eq!(targets.len(), 4);

    let s = Setup::new("fleet-token");
    let mut settings = s.settings(ProbeMode::KubeletHealthz, Some(s.ca_file(&fleet.kubelet_ca_pem())), false);
    settings.timeout = Duration::from_secs(2);
    let prober = s.prober(settings);
    let mut outcomes = std::collections::HashMap::new();
    for t in &targets {
        outcomes.insert(t.node.clone(), prober.probe(t).await);
    }
    assert_eq!(outcomes[&names[0]], ProbeOutcome::Success);
    assert!(matches!(&outcomes[&names[1]], ProbeOutcome::Failure(why) if why.contains("syncloop")), "{outcomes:?}");
    assert_eq!(outcomes[&names[2]], ProbeOutcome::Timeout);
    assert!(matches!(&outcomes[&names[3]], ProbeOutcome::Unauthorized(why) if why.contains("nodes/healthz")), "{outcomes:?}");
    for name in &names {
        let seen = fleet.kubelet_requests(name);
        assert_eq!(seen.len(), 1, "{name}: {seen:?}");
        assert_eq!((seen[0].path.as_str(), seen[0].authorization.as_deref()), ("/healthz", Some("Bearer fleet-token")));
    }
    fleet.stop().await;
    cp.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// apiserver-proxy

#[tokio::test]
async fn apiserver_proxy_needs_get_on_nodes_proxy_and_says_so() {
    let cp = control_plane().await;
    let token = cp.service_account_token("pulsecheck", "pulsecheck").await.unwrap();
    let mut config = cp.config_with_token(&token);
    config.default_retry = false;
    let s = Setup::new("unused");
    let prober = Prober::new(s.settings(ProbeMode::ApiserverProxy, None, false), kube::Client::try_from(config).unwrap()).unwrap();
    let node = ProbeTarget { node: "node-1".into(), endpoint: KubeletEndpoint::default(), recheck_cadence: false };

    let outcome = prober.probe(&node).await;
    let ProbeOutcome::Unauthorized(why) = &outcome else { panic!("expected unauthorized, got {outcome:?}") };
    assert!(why.contains("403") && why.contains("`get` on `nodes/proxy`"), "{why}");
    assert!(why.contains("nodes/proxy") && why.contains("system:serviceaccount:pulsecheck:pulsecheck"), "the apiserver's message is kept: {why}");

    // Granted exactly `get` on `nodes/proxy`, the apiserver lets the request through (this node
    // does not exist, so the answer is a 404: no permission problem, and nothing about health).
    let roles: Api<ClusterRole> = Api::all(cp.client());
    let role = ClusterRole {
        metadata: ObjectMeta { name: Some("pulsecheck-apiserver-proxy".into()), ..Default::default() },
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["nodes/proxy".into()]),
            verbs: vec!["get".into()],
            ..Default::default()
        }]),
        ..Default::default()
    };
    roles.create(&PostParams::default(), &role).await.unwrap();
    let bindings: Api<ClusterRoleBinding> = Api::all(cp.client());
    let binding = ClusterRoleBinding {
        metadata: ObjectMeta { name: Some("pulsecheck-apiserver-proxy".into()), ..Default::default() },
        role_ref: RoleRef { api_group: "rbac.authorization.k8s.io".into(), kind: "ClusterRole".into(), name: "pulsecheck-apiserver-proxy".into() },
        subjects: Some(vec![Subject { kind: "ServiceAccount".into(), name: "pulsecheck".into(), namespace: Some("pulsecheck".into()), ..Default::default() }]),
    };
    bindings.create(&PostParams::default(), &binding).await.unwrap();
    let deadline = Instant::now() + DEADLINE;
    let outcome = loop {
        let outcome = prober.probe(&node).await;
        if !matches!(outcome, ProbeOutcome::Unauthorized(_)) || Instant::now() > deadline {
            break outcome;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(matches!(&outcome, ProbeOutcome::Inconclusive(why) if why.contains("404")), "{outcome:?}");
    cp.stop().await.unwrap();
}

/// How the fake apiserver answers.
type Answer = (u16, &'static str);

/// An HTTPS server standing in for the apiserver where the lab cannot produce an answer: the
/// real apiserver refuses to proxy to loopback addresses, where lab kubelets live.
/// The status a [`FakeApiserver`] never answers with: it holds the request open instead (a
/// kubelet that hangs behind the proxy, or a dial the apiserver is still waiting for).
const HANG: u16 = 0;

struct FakeApiserver {
    addr: SocketAddr,
    answer: Arc<Mutex<Answer>>,
    paths: Arc<Mutex<Vec<String>>>,
    server: JoinHandle<()>,
    ca_pem: String,
}

impl Drop for FakeApiserver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeApiserver {
    async fn start(ip: IpAddr, answer: Answer) -> FakeApiserver {
        let ca = CertificateAuthority::new("apiserver-ca").unwrap();
        let acceptor = common::tls_acceptor(&ca, "apiserver", ip);
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answer = Arc::new(Mutex::new(answer));
        let paths = Arc::new(Mutex::new(Vec::new()));
        let (a, p) = (answer.clone(), paths.clone());
        let server = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, answer, paths) = (acceptor.clone(), a.clone(), p.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        paths.lock().unwrap().push(req.uri().path().to_string());
                        let (code, body) = *answer.lock().unwrap();
                        async move {
                            if code == HANG {
                                std::future::pending::<()>().await;
                            }
                            Response::builder().status(code).body(Full::new(Bytes::from_static(body.as_bytes())))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).await;
                });
            }
        });
        FakeApiserver { addr, answer, paths, server, ca_pem: ca.cert_pem() }
    }

    /// A client for it; `default_retry` off as the prober's documentation asks, or on as kube sets it.
    fn client(&self, default_retry: bool) -> kube::Client {
        let mut config = kube::Config::new(format!("https://{}", self.addr).parse().unwrap());
        let ca = CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()).next().unwrap().unwrap();
        config.root_cert = Some(vec![ca.to_vec()]);
        config.default_retry = default_retry;
        kube::Client::try_from(config).unwrap()
    }

    fn set_answer(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }
}

#[tokio::test]
async fn apiserver_proxy_asks_the_node_proxy_healthz_path_and_maps_the_answers() {
    let apiserver = FakeApiserver::start(loopback(30), (200, "ok")).await;
    let s = Setup::new("t");
    let prober = Prober::new(s.settings(ProbeMode::ApiserverProxy, None, false), apiserver.client(false)).unwrap();
    assert_eq!(prober.effective_mode(), ProbeMode::ApiserverProxy);
    let node = ProbeTarget { node: "node-1".into(), endpoint: KubeletEndpoint::default(), recheck_cadence: false };
    assert_eq!(prober.probe(&node).await, ProbeOutcome::Success);
    assert_eq!(apiserver.paths.lock().unwrap().clone(), vec!["/api/v1/nodes/node-1/proxy/healthz".to_string()]);

    // The kubelet's own 500, passed through by the apiserver.
    apiserver.set_answer((500, "[+]ping ok\n[-]syncloop failed: reason withheld\nhealthz check failed"));
    let outcome = prober.probe(&node).await;
    assert!(matches!(&outcome, ProbeOutcome::Failure(why) if why.contains("500") && why.contains("syncloop")), "{outcome:?}");
    // The apiserver cannot reach the kubelet: no answer of the kubelet's own.
    apiserver.set_answer((503, r#"{"kind":"Status","message":"error trying to reach service: dial tcp 10.0.0.7:10250: i/o timeout","code":503}"#));
    let outcome = prober.probe(&node).await;
    assert!(matches!(&outcome, ProbeOutcome::Unreachable(why) if why.contains("503") && why.contains("i/o timeout")), "{outcome:?}");
    // The apiserver's own 500 (a Status object, not a kubelet's healthz text) is no answer of the
    // kubelet's either; before, it counted as the kubelet answering unhealthy.
    apiserver.set_answer((500, r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"error dialing backend: EOF","code":500}"#));
    let outcome = prober.probe(&node).await;
    assert!(matches!(&outcome, ProbeOutcome::Unreachable(why) if why.contains("error dialing backend")), "{outcome:?}");
    // A Node the apiserver does not know, and its throttling: nothing about health.
    apiserver.set_answer((404, r#"{"kind":"Status","message":"nodes \"node-1\" not found","reason":"NotFound","code":404}"#));
    assert!(matches!(prober.probe(&node).await, ProbeOutcome::Inconclusive(_)));
    apiserver.set_answer((429, "Too many requests, please try again later."));
    assert!(matches!(prober.probe(&node).await, ProbeOutcome::Inconclusive(_)));
}

#[tokio::test]
async fn apiserver_proxy_without_an_answer_in_time_is_unreachable_not_a_hanging_kubelet() {
    // Through the proxy pulsecheck cannot tell a kubelet that hangs from an apiserver still
    // dialing a port a firewall drops (its dial timeout is 30 s, the probe's 5 s). Before, this
    // was a Timeout — "got through and hangs", conclusive after --probe-zombie-after.
    let apiserver = FakeApiserver::start(loopback(32), (HANG, "")).await;
    let s = Setup::new("t");
    let mut settings = s.settings(ProbeMode::ApiserverProxy, None, false);
    settings.timeout = Duration::from_secs(1);
    let prober = Prober::new(settings, apiserver.client(false)).unwrap();
    let node = ProbeTarget { node: "node-1".into(), endpoint: KubeletEndpoint::default(), recheck_cadence: false };
    let outcome = prober.probe(&node).await;
    assert!(matches!(&outcome, ProbeOutcome::Unreachable(why) if why.contains("node proxy")), "{outcome:?}");
    assert_eq!(apiserver.paths.lock().unwrap().len(), 1, "the request was sent");
}

#[tokio::test]
async fn apiserver_proxy_probe_stays_bounded_when_the_client_retries_503() {
    // kube's default client retries 503 (the apiserver's answer when it cannot reach a kubelet)
    // for a long time; the probe timeout still bounds the probe.
    let apiserver = FakeApiserver::start(loopback(31), (503, "unreachable")).await;
    let s = Setup::new("t");
    let mut settings = s.settings(ProbeMode::ApiserverProxy, None, false);
    settings.timeout = Duration::from_secs(1);
    let prober = Prober::new(settings, apiserver.client(true)).unwrap();
    let node = ProbeTarget { node: "node-1".into(), endpoint: KubeletEndpoint::default(), recheck_cadence: false };
    let started = Instant::now();
    let outcome = prober.probe(&node).await;
    assert!(matches!(outcome, ProbeOutcome::Unreachable(_)), "{outcome:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "a 1s probe took {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// The scheduler

#[tokio::test]
async fn hanging_kubelet_does_not_delay_probes_of_other_nodes() {
    let ca = CertificateAuthority::new("kubelet-ca").unwrap();
    let hanging = kubelet(&ca, loopback(40)).await;
    hanging.set_faults(faulty(|f| f.hang = true));
    let mut healthy = Vec::new();
    for i in 41..44 {
        healthy.push(kubelet(&ca, loopback(i)).await);
    }
    let s = Setup::new("t");
    let mut settings = s.settings(ProbeMode::KubeletHealthz, Some(s.ca_file(&ca.cert_pem())), false);
    // A probe timeout far longer than the test: the hanging probe stays pending throughout.
    settings.timeout = Duration::from_secs(600);
    let prober = s.prober(settings);
    let mut targets = vec![target(hanging.addr(), "hanging")];
    targets.extend(healthy.iter().enumerate().map(|(i, k)| target(k.addr(), &format!("healthy-{i}"))));
    let (_targets_tx, targets_rx) = watch::channel(targets);
    let (results_tx, mut results_rx) = mpsc::channel::<ProbeReport>(64);
    let metrics = Metrics::new(pulsecheck::metrics::PerNodeMetrics::All);
    let shutdown = CancellationToken::new();
    // Two probes in flight at most: the hanging one holds a slot, the three healthy nodes share the other.
    let scheduler = tokio::spawn(run_scheduler(prober, Duration::from_millis(200), 2, targets_rx, results_tx, metrics.clone(), shutdown.clone()));

    let deadline = Instant::now() + DEADLINE;
    let mut successes = std::collections::HashMap::<String, u32>::new();
    while successes.len() < 3 || successes.values().any(|n| *n < 3) {
        let report = tokio::time::timeout_at(deadline, results_rx.recv())
            .await
            .unwrap_or_else(|_| panic!("healthy nodes were not probed repeatedly in time: {successes:?}"))
            .unwrap();
        assert_ne!(report.node, "hanging", "the hanging probe cannot have finished: {report:?}");
        assert_eq!(report.outcome, ProbeOutcome::Success, "{report:?}");
        *successes.entry(report.node).or_default() += 1;
    }
    // The hanging kubelet was asked once and is still being waited for, not asked again.
    poll("the hanging kubelet to be asked", || !hanging.requests().is_empty()).await;
    assert_eq!(hanging.requests().len(), 1);
    assert!(metrics.render().contains(r#"pulsecheck_probes_total{result="success"}"#));

    shutdown.cancel();
    tokio::time::timeout_at(deadline, scheduler).await.expect("the scheduler stops on shutdown").unwrap();
}

#[tokio::test]
async fn scheduler_reports_a_hanging_kubelet_as_timeouts_in_results_and_metrics() {
    let ca = CertificateAuthority::new("kubelet-ca").unwrap();
    let hanging = kubelet(&ca, loopback(50)).await;
    hanging.set_faults(faulty(|f| f.hang = true));
    let s = Setup::new("t");
    let mut settings = s.settings(ProbeMode::KubeletHealthz, Some(s.ca_file(&ca.cert_pem())), false);
    settings.timeout = Duration::from_millis(300);
    let prober = s.prober(settings);
    let (_targets_tx, targets_rx) = watch::channel(vec![target(hanging.addr(), "hanging")]);
    let (results_tx, mut results_rx) = mpsc::channel(8);
    let metrics = Metrics::new(pulsecheck::metrics::PerNodeMetrics::All);
    let shutdown = CancellationToken::new();
    let scheduler = tokio::spawn(run_scheduler(prober, Duration::from_millis(500), 4, targets_rx, results_tx, metrics.clone(), shutdown.clone()));
    let report = tokio::time::timeout(DEADLINE, results_rx.recv()).await.expect("a report").unwrap();
    assert_eq!((report.node.as_str(), report.outcome), ("hanging", ProbeOutcome::Timeout));
    let text = metrics.render();
    let timeouts = text.lines().find_map(|l| l.strip_prefix(r#"pulsecheck_probes_total{result="timeout"} "#)).and_then(|n| n.parse::<u64>().ok());
    assert!(timeouts.is_some_and(|n| n >= 1), "{text}");
    assert!(!text.contains("pulsecheck_node_probe_success"), "per-node probe series come from the controller's facts, not the scheduler: {text}");
    shutdown.cancel();
    tokio::time::timeout(DEADLINE, scheduler).await.expect("the scheduler stops on shutdown").unwrap();
}

/// Runs `body` on a runtime of its own in a thread that entered a network namespace of its own
/// (loopback up, `nft_rules` loaded there): its sockets, and the commands it starts, see only
/// that namespace, and it vanishes with the thread. Needs root (CI runs as root).
fn in_own_network_namespace<T: Send + 'static>(
    nft_rules: impl Fn(u16) -> String + Send + 'static,
    body: impl AsyncFnOnce(&dyn Fn(u16)) -> T + Send + 'static,
) -> T {
    std::thread::spawn(move || {
        // SAFETY: unshare affects only the calling thread, which owns nothing else yet.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare(CLONE_NEWNET): {} (the test needs root)", std::io::Error::last_os_error());
        let up = std::process::Command::new("ip").args(["link", "set", "lo", "up"]).status().expect("ip runs");
        assert!(up.success(), "ip link set lo up");
        let load = move |port: u16| {
            let mut nft = std::process::Command::new("nft").args(["-f", "-"]).stdin(std::process::Stdio::piped()).spawn().expect("nft runs");
            std::io::Write::write_all(nft.stdin.as_mut().unwrap(), nft_rules(port).as_bytes()).unwrap();
            drop(nft.stdin.take());
            assert!(nft.wait().unwrap().success(), "nft rules load");
        };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(body(&load))
    })
    .join()
    .expect("the namespace thread")
}

#[test]
fn a_request_the_path_drops_after_the_tls_handshake_is_unreachable_not_a_hanging_kubelet() {
    common::init();
    // A one-way path-MTU black hole towards the node: the handshake gets through (the
    // ClientHello is small, the certificate comes the other way), the request — carrying a
    // ServiceAccount token of a real one's size — is dropped on the way to the kubelet.
    let outcome = in_own_network_namespace(
        |port| format!("table inet blackhole {{\n chain in {{\n  type filter hook input priority 0;\n  tcp dport {port} meta length gt 1000 drop\n }}\n}}\n"),
        async |load: &dyn Fn(u16)| {
            let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
            let ca = CertificateAuthority::new("kubelet-ca").unwrap();
            let kubelet = kubelet(&ca, ip).await;
            load(kubelet.addr().port());
            let s = Setup::new(&"x".repeat(1400));
            let mut settings = s.settings(ProbeMode::KubeletHealthz, Some(s.ca_file(&ca.cert_pem())), false);
            settings.timeout = Duration::from_secs(2);
            let outcome = s.prober(settings).probe(&target(kubelet.addr(), "node-1")).await;
            (outcome, kubelet.requests().len())
        },
    );
    assert!(matches!(&outcome.0, ProbeOutcome::Unreachable(why) if why.contains("unacknowledged")), "{outcome:?}");
    assert_eq!(outcome.1, 0, "the kubelet got the request after all");
    // (A kubelet that took the request and hangs is still a Timeout:
    // hanging_kubelet_times_out_within_the_probe_timeout.)
}
