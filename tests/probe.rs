//! Kubelet probes against real local HTTPS endpoints.
//!
//! Each test starts its own fake kubelets (rustls + hyper on loopback, certificates minted with
//! rcgen) that record every request and whether it carried an Authorization header, so the
//! tests can check what a kubelet would actually receive: above all, that pulsecheck's token
//! never leaves over a connection it did not verify unless the operator asked for that.
//! `apiserver-proxy` is exercised against a fake apiserver built the same way (the lab's real
//! control plane is not available to this branch yet).

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, service::service_fn};
use hyper_util::rt::TokioIo;
use pulsecheck::{
    cli::ProbeMode,
    facts::{KubeletEndpoint, ProbeOutcome},
    metrics::Metrics,
    probe::{ProbeReport, ProbeSettings, ProbeTarget, Prober, run_scheduler},
};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::{
    net::TcpListener,
    sync::{mpsc, watch},
    task::JoinHandle,
    time::Instant,
};
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------------------------
// Certificates

/// A throw-away CA and what it signs.
struct Authority {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A serving certificate and its key, DER.
struct Serving {
    chain: Vec<CertificateDer<'static>>,
    key_der: Vec<u8>,
}

impl Authority {
    fn new(name: &str) -> Authority {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Authority { cert_pem: cert.pem(), issuer: Issuer::new(params, key) }
    }

    /// A kubelet-style serving certificate: the node's IP as a SAN.
    fn serving(&self, ip: IpAddr) -> Serving {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, format!("kubelet@{ip}"));
        params.subject_alt_names = vec![SanType::IpAddress(ip)];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Serving { chain: vec![cert.der().clone()], key_der: key.serialize_der() }
    }

    fn write_pem(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubelet-ca.pem");
        std::fs::write(&path, &self.cert_pem).unwrap();
        path
    }
}

// ---------------------------------------------------------------------------------------------
// Fake kubelet

/// How a fake endpoint answers every request.
#[derive(Debug, Clone, Copy)]
enum Answer {
    Status(u16, &'static str),
    /// Accept the request and never answer.
    Hang,
}

/// A request as the endpoint received it.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    authorization: Option<String>,
}

#[derive(Default)]
struct Record {
    requests: Mutex<Vec<Seen>>,
    handshakes: AtomicUsize,
    handshake_failures: AtomicUsize,
    /// Connections the endpoint is done with (after a failed handshake or when the client left).
    finished: AtomicUsize,
}

/// An HTTPS endpoint on a loopback address that answers like a kubelet and records everything.
struct FakeKubelet {
    addr: SocketAddr,
    answer: Arc<Mutex<Answer>>,
    record: Arc<Record>,
    server: JoinHandle<()>,
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeKubelet {
    async fn start(ip: IpAddr, serving: Serving, answer: Answer) -> FakeKubelet {
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(serving.chain, PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(serving.key_der)))
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answer = Arc::new(Mutex::new(answer));
        let record = Arc::new(Record::default());
        let (a, r) = (answer.clone(), record.clone());
        let server = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let (acceptor, answer, record) = (acceptor.clone(), a.clone(), r.clone());
                tokio::spawn(async move {
                    let tls = match acceptor.accept(tcp).await {
                        Ok(tls) => tls,
                        Err(_) => {
                            record.handshake_failures.fetch_add(1, Ordering::SeqCst);
                            record.finished.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    };
                    record.handshakes.fetch_add(1, Ordering::SeqCst);
                    let rec = record.clone();
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (answer, record) = (answer.clone(), rec.clone());
                        async move {
                            let authorization = req.headers().get(http::header::AUTHORIZATION).map(|v| v.to_str().unwrap_or("<binary>").to_string());
                            record.requests.lock().unwrap().push(Seen { path: req.uri().path().to_string(), authorization });
                            let answer = *answer.lock().unwrap();
                            match answer {
                                Answer::Status(code, body) => Ok::<_, std::convert::Infallible>(
                                    Response::builder().status(code).body(Full::new(Bytes::from_static(body.as_bytes()))).unwrap(),
                                ),
                                Answer::Hang => std::future::pending().await,
                            }
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).await;
                    record.finished.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        FakeKubelet { addr, answer, record, server }
    }

    /// A healthy kubelet with a certificate from `ca` for its IP.
    async fn healthy(ca: &Authority, ip: IpAddr) -> FakeKubelet {
        FakeKubelet::start(ip, ca.serving(ip), Answer::Status(200, "ok")).await
    }

    fn target(&self, node: &str) -> ProbeTarget {
        ProbeTarget {
            node: node.into(),
            endpoint: KubeletEndpoint {
                addresses: vec![("Hostname".into(), node.into()), ("InternalIP".into(), self.addr.ip().to_string())],
                port: Some(self.addr.port()),
            },
        }
    }

    fn set_answer(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    fn requests(&self) -> Vec<Seen> {
        self.record.requests.lock().unwrap().clone()
    }

    /// Waits until the endpoint has finished with `n` connections.
    async fn connections_finished(&self, n: usize) {
        poll("the endpoint to finish its connections", || self.record.finished.load(Ordering::SeqCst) >= n).await;
    }
}

/// Polls `ready` every 10 ms until it holds; fails after 10 s.
async fn poll(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Prober set-up

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A distinct loopback address per test, so tests never share an endpoint.
fn loopback(a: u8, b: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, a, b))
}

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
        }
    }

    fn prober(&self, settings: ProbeSettings) -> Prober {
        Prober::new(settings, offline_client()).unwrap()
    }
}

/// A client for modes that never reach the apiserver.
fn offline_client() -> kube::Client {
    kube::Client::try_from(kube::Config::new("https://127.0.0.1:9".parse().unwrap())).unwrap()
}

fn authorizations(k: &FakeKubelet) -> Vec<Option<String>> {
    k.requests().into_iter().map(|s| s.authorization).collect()
}

// ---------------------------------------------------------------------------------------------
// kubelet-healthz

#[tokio::test]
async fn healthy_kubelet_is_a_success_and_gets_the_token_over_verified_tls() {
    let ca = Authority::new("kubelet-ca");
    let kubelet = FakeKubelet::healthy(&ca, loopback(1, 1)).await;
    let s = Setup::new("token-one");
    let prober = s.prober(s.settings(ProbeMode::KubeletHealthz, Some(ca.write_pem(s.dir.path())), false));
    assert_eq!(prober.effective_mode(), ProbeMode::KubeletHealthz);
    assert!(prober.verifies_kubelet_certificates());
    assert_eq!(prober.fallback_reason(), None);

    assert_eq!(prober.probe(&kubelet.target("node-1")).await, ProbeOutcome::Success);
    let seen = kubelet.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/healthz");
    assert_eq!(seen[0].authorization.as_deref(), Some("Bearer token-one"));
}

#[tokio::test]
async fn kubelet_answering_500_is_a_failure_with_the_failed_check() {
    let ca = Authority::new("kubelet-ca");
    let kubelet = FakeKubelet::start(
        loopback(1, 2),
        ca.serving(loopback(1, 2)),
        Answer::Status(500, "[+]ping ok\n[+]log ok\n[-]syncloop failed: reason withheld\nhealthz check failed\n"),
    )
    .await;
    let s = Setup::new("t");
    let prober = s.prober(s.settings(ProbeMode::KubeletHealthz, Some(ca.write_pem(s.dir.path())), false));
    let outcome = prober.probe(&kubelet.target("node-1")).await;
    let ProbeOutcome::Failure(why) = &outcome else { panic!("expected a failure, got {outcome:?}") };
    assert!(why.contains("500") && why.contains("syncloop failed"), "{why}");
}

#[tokio::test]
async fn kubelet_answering_401_or_403_is_unauthorized_and_names_the_permission() {
    let ca = Authority::new("kubelet-ca");
    let kubelet = FakeKubelet::start(loopback(1, 3), ca.serving(loopback(1, 3)), Answer::Status(401, "Unauthorized")).await;
    let s = Setup::new("t");
    let prober = s.prober(s.settings(ProbeMode::KubeletHealthz, Some(ca.write_pem(s.dir.path())), false));
    for code in [401, 403] {
        kubelet.set_answer(Answer::Status(code, "Forbidden"));
        let outcome = prober.probe(&kubelet.target("node-1")).await;
        let ProbeOutcome::Unauthorized(why) = &outcome else { panic!("expected unauthorized for {code}, got {outcome:?}") };
        assert!(why.contains(&code.to_string()) && why.contains("`get` on `nodes/healthz`"), "{why}");
    }
}

#[tokio::test]
async fn hanging_kubelet_times_out_within_the_probe_timeout() {
    let ca = Authority::new("kubelet-ca");
    let kubelet = FakeKubelet::start(loopback(1, 4), ca.serving(loopback(1, 4)), Answer::Hang).await;
    let s = Setup::new("t");
    let mut settings = s.settings(ProbeMode::KubeletHealthz, Some(ca.write_pem(s.dir.path())), false);
    settings.timeout = Duration::from_secs(1);
    let prober = s.prober(settings);
    let started = Instant::now();
    let outcome = prober.probe(&kubelet.target("node-1")).await;
    let took = started.elapsed();
    assert_eq!(outcome, ProbeOutcome::Timeout);
    assert!(took < Duration::from_secs(1) + Duration::from_secs(2), "a 1s probe took {took:?}");
    // It really reached the kubelet and waited for the answer.
    assert_eq!(kubelet.requests().len(), 1);
}

#[tokio::test]
async fn without_ca_or_insecure_flag_no_token_is_sent_and_the_probe_is_a_tls_handshake() {
    let ca = Authority::new("kubelet-ca");
    let kubelet = FakeKubelet::healthy(&ca, loopback(1, 5)).await;
    let s = Setup::new("secret-token");
    let prober = s.prober(s.settings(ProbeMode::KubeletHealthz, None, false));
    assert_eq!(prober.effective_mode(), ProbeMode::Tcp);
    let why = prober.fallback_reason().expect("the fallback is explained");
    assert!(why.contains("--kubelet-certificate-authority") && why.contains("--kubelet-insecure-tls"), "{why}");

    assert_eq!(prober.probe(&kubelet.target("node-1")).await, ProbeOutcome::Success);
    kubelet.connections_finished(1).await;
    assert_eq!(kubelet.record.handshakes.load(Ordering::SeqCst), 1, "the probe completed a TLS handshake");
    assert!(kubelet.requests().is_empty(), "nothing may be sent without a trusted certificate: {:?}", kubelet.requests());
}

#[tokio::test]
async fn insecure_flag_sends_the_token_to_an_unverified_kubelet() {
    // The kubelet's certificate comes from a CA pulsecheck was never given.
    let unknown_ca = Authority::new("self-signed-kubelet");
    let kubelet = FakeKubelet::healthy(&unknown_ca, loopback(1, 6)).await;
    let s = Setup::new("token-insecure");
    let prober = s.prober(s.settings(ProbeMode::KubeletHealthz, None, true));
    assert_eq!(prober.effective_mode(), ProbeMode::KubeletHealthz);
    assert!(!prober.verifies_kubelet_certificates());
    assert_eq!(prober.probe(&kubelet.target("node-1")).await, ProbeOutcome::Success);
    assert_eq!(authorizations(&kubelet), vec![Some("Bearer token-insecure".to_string())]);
}

#[tokio::test]
async fn kubelet_certificate_from_another_ca_fails_tls_and_gets_no_token() {
    let kubelet_ca = Authority::new("kubelet-ca");
    let other_ca = Authority::new("some-other-ca");
    let kubelet = FakeKubelet::healthy(&kubelet_ca, loopback(1, 7)).await;
    let s = Setup::new("secret-token");
    let prober = s.prober(s.settings(ProbeMode::KubeletHealthz, Some(other_ca.write_pem(s.dir.path())), false));
    let outcome = prober.probe(&kubelet.target("node-1")).await;
    let ProbeOutcome::Failure(why) = &outcome else { panic!("expected a TLS failure, got {outcome:?}") };
    assert!(why.contains("TLS handshake") && why.contains("certificate"), "{why}");
    kubelet.connections_finished(1).await;
    assert_eq!(kubelet.record.handshake_failures.load(Ordering::SeqCst), 1);
    assert!(kubelet.requests().is_empty(), "{:?}", kubelet.requests());
}

#[tokio::test]
async fn certificate_for_another_ip_fails_tls_and_gets_no_token() {
    // Signed by the right CA, but for a different node's address.
    let ca = Authority::new("kubelet-ca");
    let kubelet = FakeKubelet::start(loopback(1, 8), ca.serving(loopback(9, 9)), Answer::Status(200, "ok")).await;
    let s = Setup::new("secret-token");
    let prober = s.prober(s.settings(ProbeMode::KubeletHealthz, Some(ca.write_pem(s.dir.path())), false));
    let outcome = prober.probe(&kubelet.target("node-1")).await;
    assert!(matches!(&outcome, ProbeOutcome::Failure(why) if why.contains("TLS handshake")), "{outcome:?}");
    kubelet.connections_finished(1).await;
    assert!(kubelet.requests().is_empty());
}

#[tokio::test]
async fn rotated_token_file_is_picked_up_by_the_next_probe() {
    let ca = Authority::new("kubelet-ca");
    let kubelet = FakeKubelet::healthy(&ca, loopback(1, 10)).await;
    let s = Setup::new("token-before");
    let prober = s.prober(s.settings(ProbeMode::KubeletHealthz, Some(ca.write_pem(s.dir.path())), false));
    assert_eq!(prober.probe(&kubelet.target("node-1")).await, ProbeOutcome::Success);
    // Projected ServiceAccount tokens are replaced atomically by the kubelet.
    let fresh = s.dir.path().join("token.new");
    std::fs::write(&fresh, "token-after").unwrap();
    std::fs::rename(&fresh, &s.token_file).unwrap();
    assert_eq!(prober.probe(&kubelet.target("node-1")).await, ProbeOutcome::Success);
    // And rewritten in place, with the same length.
    std::fs::write(&s.token_file, "token-again").unwrap();
    assert_eq!(prober.probe(&kubelet.target("node-1")).await, ProbeOutcome::Success);
    assert_eq!(
        authorizations(&kubelet),
        ["Bearer token-before", "Bearer token-after", "Bearer token-again"].map(|t| Some(t.to_string())).to_vec()
    );
}

#[tokio::test]
async fn unreadable_token_file_is_not_probed_and_the_kubelet_is_not_contacted() {
    let ca = Authority::new("kubelet-ca");
    let kubelet = FakeKubelet::healthy(&ca, loopback(1, 11)).await;
    let s = Setup::new("t");
    std::fs::remove_file(&s.token_file).unwrap();
    let prober = s.prober(s.settings(ProbeMode::KubeletHealthz, Some(ca.write_pem(s.dir.path())), false));
    let outcome = prober.probe(&kubelet.target("node-1")).await;
    assert!(matches!(&outcome, ProbeOutcome::NotProbed(why) if why.contains("--token-file")), "{outcome:?}");
    assert_eq!(kubelet.record.handshakes.load(Ordering::SeqCst) + kubelet.record.handshake_failures.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn refused_connection_is_a_failure_and_a_node_without_port_is_not_probed() {
    let closed = std::net::TcpListener::bind((LOCALHOST, 0)).unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let s = Setup::new("t");
    let prober = s.prober(s.settings(ProbeMode::KubeletHealthz, None, true));
    let target = |port| ProbeTarget { node: "node-1".into(), endpoint: KubeletEndpoint { addresses: vec![("InternalIP".into(), "127.0.0.1".into())], port } };
    let outcome = prober.probe(&target(Some(port))).await;
    assert!(matches!(&outcome, ProbeOutcome::Failure(why) if why.contains("refused")), "{outcome:?}");
    let outcome = prober.probe(&target(None)).await;
    assert!(matches!(&outcome, ProbeOutcome::NotProbed(why) if why.contains("kubelet port")), "{outcome:?}");
}

// ---------------------------------------------------------------------------------------------
// tcp

#[tokio::test]
async fn tcp_mode_succeeds_on_a_handshake_and_times_out_on_a_silent_port() {
    let ca = Authority::new("kubelet-ca");
    let kubelet = FakeKubelet::healthy(&ca, loopback(2, 1)).await;
    let s = Setup::new("t");
    let mut settings = s.settings(ProbeMode::Tcp, None, false);
    settings.timeout = Duration::from_secs(1);
    let prober = s.prober(settings);
    assert_eq!(prober.probe(&kubelet.target("node-1")).await, ProbeOutcome::Success);
    kubelet.connections_finished(1).await;
    assert!(kubelet.requests().is_empty());

    // A port that accepts TCP but never speaks TLS (a wedged process holding its socket).
    let silent = TcpListener::bind((loopback(2, 2), 0)).await.unwrap();
    let addr = silent.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = silent.accept().await {
            held.push(tcp);
        }
    });
    let target = ProbeTarget { node: "node-2".into(), endpoint: KubeletEndpoint { addresses: vec![("InternalIP".into(), addr.ip().to_string())], port: Some(addr.port()) } };
    let started = Instant::now();
    assert_eq!(prober.probe(&target).await, ProbeOutcome::Timeout);
    assert!(started.elapsed() < Duration::from_secs(3), "a 1s probe took {:?}", started.elapsed());
    hold.abort();
}

// ---------------------------------------------------------------------------------------------
// apiserver-proxy

/// A kube::Client for a fake apiserver served by `endpoint` with a certificate from `ca`;
/// `default_retry` as the prober's documentation asks (off) or as kube sets it (on).
fn client_for(endpoint: &FakeKubelet, ca: &Authority, default_retry: bool) -> kube::Client {
    let mut config = kube::Config::new(format!("https://{}", endpoint.addr).parse().unwrap());
    let ca_der = rustls_pemfile::certs(&mut ca.cert_pem.as_bytes()).next().unwrap().unwrap();
    config.root_cert = Some(vec![ca_der.to_vec()]);
    config.default_retry = default_retry;
    kube::Client::try_from(config).unwrap()
}

#[tokio::test]
async fn apiserver_proxy_asks_the_nodes_proxy_healthz_path_and_names_nodes_proxy_when_forbidden() {
    let ca = Authority::new("apiserver-ca");
    let apiserver = FakeKubelet::start(loopback(3, 1), ca.serving(loopback(3, 1)), Answer::Status(200, "ok")).await;
    let s = Setup::new("t");
    let prober = Prober::new(s.settings(ProbeMode::ApiserverProxy, None, false), client_for(&apiserver, &ca, false)).unwrap();
    assert_eq!(prober.effective_mode(), ProbeMode::ApiserverProxy);
    let target = ProbeTarget { node: "node-1".into(), endpoint: KubeletEndpoint::default() };
    assert_eq!(prober.probe(&target).await, ProbeOutcome::Success);
    assert_eq!(apiserver.requests()[0].path, "/api/v1/nodes/node-1/proxy/healthz");

    apiserver.set_answer(Answer::Status(
        403,
        r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"nodes \"node-1\" is forbidden: User \"system:serviceaccount:pulsecheck:pulsecheck\" cannot get resource \"nodes/proxy\" in API group \"\" at the cluster scope","reason":"Forbidden","code":403}"#,
    ));
    let outcome = prober.probe(&target).await;
    let ProbeOutcome::Unauthorized(why) = &outcome else { panic!("expected unauthorized, got {outcome:?}") };
    assert!(why.contains("`get` on `nodes/proxy`") && why.contains("cannot get resource"), "{why}");

    apiserver.set_answer(Answer::Status(503, r#"{"kind":"Status","message":"error trying to reach service: dial tcp 10.0.0.7:10250: i/o timeout","code":503}"#));
    let outcome = prober.probe(&target).await;
    assert!(matches!(&outcome, ProbeOutcome::Failure(why) if why.contains("503") && why.contains("i/o timeout")), "{outcome:?}");
}

#[tokio::test]
async fn apiserver_proxy_probe_stays_bounded_when_the_client_retries_503() {
    // kube's default client retries 503 (the apiserver's answer when it cannot reach a kubelet)
    // for a long time; the probe timeout still bounds the probe.
    let ca = Authority::new("apiserver-ca");
    let apiserver = FakeKubelet::start(loopback(3, 2), ca.serving(loopback(3, 2)), Answer::Status(503, "unreachable")).await;
    let s = Setup::new("t");
    let mut settings = s.settings(ProbeMode::ApiserverProxy, None, false);
    settings.timeout = Duration::from_secs(1);
    let prober = Prober::new(settings, client_for(&apiserver, &ca, true)).unwrap();
    let target = ProbeTarget { node: "node-1".into(), endpoint: KubeletEndpoint::default() };
    let started = Instant::now();
    let outcome = prober.probe(&target).await;
    assert!(matches!(outcome, ProbeOutcome::Timeout | ProbeOutcome::Failure(_)), "{outcome:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "a 1s probe took {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// The scheduler

#[tokio::test]
async fn hanging_kubelet_does_not_delay_probes_of_other_nodes() {
    let ca = Authority::new("kubelet-ca");
    let hanging = FakeKubelet::start(loopback(4, 1), ca.serving(loopback(4, 1)), Answer::Hang).await;
    let mut healthy = Vec::new();
    for i in 2..5 {
        healthy.push(FakeKubelet::healthy(&ca, loopback(4, i)).await);
    }
    let s = Setup::new("t");
    let mut settings = s.settings(ProbeMode::KubeletHealthz, Some(ca.write_pem(s.dir.path())), false);
    // A probe timeout far longer than the whole test: the hanging probe stays pending throughout.
    settings.timeout = Duration::from_secs(600);
    let prober = s.prober(settings);
    let mut targets = vec![hanging.target("hanging")];
    targets.extend(healthy.iter().enumerate().map(|(i, k)| k.target(&format!("healthy-{i}"))));
    let (_targets_tx, targets_rx) = watch::channel(targets);
    let (results_tx, mut results_rx) = mpsc::channel::<ProbeReport>(64);
    let metrics = Metrics::new(true);
    let shutdown = CancellationToken::new();
    // Two probes in flight at most: the hanging one holds a slot, the three healthy nodes share the other.
    let scheduler = tokio::spawn(run_scheduler(prober, Duration::from_millis(200), 2, targets_rx, results_tx, metrics.clone(), shutdown.clone()));

    let deadline = Instant::now() + Duration::from_secs(30);
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
    assert!(metrics.render().contains(r#"pulsecheck_node_probe_success{node="healthy-0"} 1"#));

    shutdown.cancel();
    tokio::time::timeout_at(deadline, scheduler).await.expect("the scheduler stops on shutdown").unwrap();
}

#[tokio::test]
async fn scheduler_reports_timeouts_of_a_hanging_kubelet_as_timeouts() {
    let ca = Authority::new("kubelet-ca");
    let hanging = FakeKubelet::start(loopback(4, 10), ca.serving(loopback(4, 10)), Answer::Hang).await;
    let s = Setup::new("t");
    let mut settings = s.settings(ProbeMode::KubeletHealthz, Some(ca.write_pem(s.dir.path())), false);
    settings.timeout = Duration::from_millis(300);
    let prober = s.prober(settings);
    let (_targets_tx, targets_rx) = watch::channel(vec![hanging.target("hanging")]);
    let (results_tx, mut results_rx) = mpsc::channel(8);
    let metrics = Metrics::new(true);
    let shutdown = CancellationToken::new();
    let scheduler = tokio::spawn(run_scheduler(prober, Duration::from_millis(500), 4, targets_rx, results_tx, metrics.clone(), shutdown.clone()));
    let report = tokio::time::timeout(Duration::from_secs(10), results_rx.recv()).await.expect("a report").unwrap();
    assert_eq!((report.node.as_str(), report.outcome), ("hanging", ProbeOutcome::Timeout));
    let text = metrics.render();
    let timeouts = text.lines().find_map(|l| l.strip_prefix(r#"pulsecheck_probes_total{result="timeout"} "#)).and_then(|n| n.parse::<u64>().ok());
    assert!(timeouts.is_some_and(|n| n >= 1), "{text}");
    assert!(text.contains(r#"pulsecheck_node_probe_success{node="hanging"} 0"#), "{text}");
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), scheduler).await.expect("the scheduler stops on shutdown").unwrap();
}

