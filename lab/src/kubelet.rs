//! A fake kubelet HTTPS endpoint, one per simulated node.
//!
//! pulsecheck's prober calls `https://<InternalIP>:<kubeletEndpoint.Port>/healthz` with its
//! ServiceAccount token, exactly as metrics-server calls kubelets. To test that prober against
//! something that behaves like a kubelet — and to prove it never leaks its token to an endpoint
//! whose certificate it did not verify — every simulated node gets its own endpoint:
//!
//! - bound to the node's own loopback IP (127.0.X.Y; Linux routes all of 127/8 to `lo`) on an
//!   ephemeral port, serving a certificate for that IP issued by the fleet's CA;
//! - answering `/healthz`, `/healthz/ping` and `/healthz/syncloop` like a kubelet with anonymous
//!   auth disabled: 200 `ok` only with a non-empty `Authorization: Bearer …`, else 401;
//! - recording every request it receives (path, raw Authorization header, time), so a test can
//!   prove a token was or was not sent;
//! - failing on demand ([`EndpointFaults`]): hang after the TLS handshake, answer 500 like a
//!   kubelet whose sync loop is stuck, refuse a valid token, or stop listening altogether.
//!
//! The endpoint never checks the token's value: a real kubelet delegates that to the apiserver
//! (TokenReview + SubjectAccessReview), which is the apiserver's business, not the prober's.
//! It must never be used outside the lab: it accepts any bearer token.

use std::{
    collections::VecDeque,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use k8s_openapi::jiff::Timestamp;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::{net::TcpListener, runtime::Handle, task::JoinHandle};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::certs::IssuedCert;

/// Body of a kubelet `/healthz` whose sync loop has stopped (as kubelet words it, reason withheld).
pub const SYNCLOOP_FAILED_BODY: &str = "[-]syncloop failed: reason withheld\nhealthz check failed";
/// Body of a kubelet 401.
pub const UNAUTHORIZED_BODY: &str = "Unauthorized";
/// How many requests an endpoint remembers (the oldest are dropped first).
pub const REQUEST_LOG_CAPACITY: usize = 1_000;
/// A TLS handshake that has not finished after this long is abandoned.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A hung request is dropped (never answered) after this long, so a long-running fleet does not
/// collect connections from a prober that keeps trying.
const HANG_LIMIT: Duration = Duration::from_secs(600);
/// An idle keep-alive connection (or a client that never sends headers) is closed after this long.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of the fake kubelet endpoint.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The serving certificate or key PEM could not be read.
    #[error("kubelet serving certificate: {0}")]
    Pem(String),
    /// rustls rejected the certificate/key pair or the protocol set.
    #[error("kubelet TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The listener could not be bound (or re-bound after the endpoint was dead).
    #[error("kubelet endpoint cannot listen on {addr}: {source}")]
    Bind {
        /// The address we tried.
        addr: SocketAddr,
        /// Why the OS refused.
        source: std::io::Error,
    },
}

/// `Result` of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One request the endpoint received, in arrival order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeletRequest {
    /// The request path (without the query string), e.g. `/healthz`.
    pub path: String,
    /// The raw `Authorization` header exactly as sent (`Bearer …`), `None` when absent.
    pub authorization: Option<String>,
    /// When the endpoint received it (wall clock of this process).
    pub at: Timestamp,
}

/// How the endpoint misbehaves; all off means a healthy kubelet. A closed listener
/// ([`KubeletEndpoint::close`]) is separate because it is a property of the socket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndpointFaults {
    /// Accept the connection and the TLS handshake, then never answer.
    pub hang: bool,
    /// Answer `/healthz` and `/healthz/syncloop` with 500 [`SYNCLOOP_FAILED_BODY`].
    pub fail: bool,
    /// Answer 401 even with a token (the prober's permission problem).
    pub unauthorized: bool,
}

/// A running fake kubelet endpoint. Dropping it closes the listener and every open connection.
pub struct KubeletEndpoint {
    addr: SocketAddr,
    state: Arc<EndpointState>,
    listener: Mutex<Option<ListenerTask>>,
    runtime: Handle,
}

/// What the accept loop and every connection share.
struct EndpointState {
    tls: TlsAcceptor,
    /// What `/configz` reports.
    config: Mutex<KubeletConfig>,
    faults: Mutex<EndpointFaults>,
    requests: Mutex<VecDeque<KubeletRequest>>,
}

/// One generation of the listener: closing cancels it and every connection it accepted.
struct ListenerTask {
    stop: CancellationToken,
    accept_loop: JoinHandle<()>,
}

impl KubeletEndpoint {
    /// Starts an endpoint on `ip` (an ephemeral port) serving `serving` (certificate chain + key
    /// PEM) and answering `/configz` with `cadence` as a kubelet configured so would. Must be
    /// called within a tokio runtime; the endpoint serves on that runtime.
    pub async fn start(ip: IpAddr, serving: &IssuedCert, cadence: &KubeletConfig) -> Result<KubeletEndpoint> {
        let tls = server_config(serving)?;
        let requested = SocketAddr::new(ip, 0);
        let listener = TcpListener::bind(requested).await.map_err(|source| Error::Bind { addr: requested, source })?;
        let addr = listener.local_addr().map_err(|source| Error::Bind { addr: requested, source })?;
        let state = Arc::new(EndpointState {
            tls: TlsAcceptor::from(Arc::new(tls)),
            config: Mutex::new(*cadence),
            faults: Mutex::new(EndpointFaults::default()),
            requests: Mutex::new(VecDeque::new()),
        });
        let runtime = Handle::current();
        let task = spawn_listener(&runtime, listener, state.clone());
        Ok(KubeletEndpoint { addr, state, listener: Mutex::new(Some(task)), runtime })
    }

    /// The address it listens on (also while closed: [`reopen`](Self::reopen) binds it again).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers `/configz` as a kubelet configured so would from the next request on (a kubelet
    /// restarted with another configuration).
    pub fn set_config(&self, config: &KubeletConfig) {
        *lock(&self.state.config) = *config;
    }

    /// What `/configz` reports now.
    pub fn config(&self) -> KubeletConfig {
        *lock(&self.state.config)
    }

    /// Replaces the current faults; takes effect for the next request.
    pub fn set_faults(&self, faults: EndpointFaults) {
        *lock(&self.state.faults) = faults;
    }

    /// The current faults.
    pub fn faults(&self) -> EndpointFaults {
        *lock(&self.state.faults)
    }

    /// Every request received so far (at most [`REQUEST_LOG_CAPACITY`], oldest first).
    pub fn requests(&self) -> Vec<KubeletRequest> {
        lock(&self.state.requests).iter().cloned().collect()
    }

    /// True while the endpoint listens.
    pub fn is_open(&self) -> bool {
        lock(&self.listener).is_some()
    }

    /// Stops listening and drops every open connection: new connections are refused (a dead
    /// node). The socket is released as soon as the runtime runs the accept loop's cancellation,
    /// which is immediate on a multi-threaded runtime and at the caller's next `.await` otherwise.
    pub fn close(&self) {
        if let Some(task) = lock(&self.listener).take() {
            task.stop.cancel();
            task.accept_loop.abort();
        }
    }

    /// Listens again on the same address after [`close`](Self::close); a no-op while open.
    pub fn reopen(&self) -> Result<()> {
        let mut listener = lock(&self.listener);
        if listener.is_some() {
            return Ok(());
        }
        let bind_error = |source| Error::Bind { addr: self.addr, source };
        let std_listener = std::net::TcpListener::bind(self.addr).map_err(bind_error)?;
        std_listener.set_nonblocking(true).map_err(bind_error)?;
        let _entered = self.runtime.enter();
        let tokio_listener = TcpListener::from_std(std_listener).map_err(bind_error)?;
        *listener = Some(spawn_listener(&self.runtime, tokio_listener, self.state.clone()));
        Ok(())
    }
}

impl Drop for KubeletEndpoint {
    fn drop(&mut self) {
        self.close();
    }
}

impl std::fmt::Debug for KubeletEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeletEndpoint").field("addr", &self.addr).field("open", &self.is_open()).field("faults", &self.faults()).finish()
    }
}

/// Locks a mutex, ignoring poisoning: every critical section here is a plain read or write that
/// cannot leave the data half-updated.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A rustls server configuration with the ring provider chosen explicitly (never a process-wide
/// default), HTTP/1.1 by ALPN like kubelet's fallback.
fn server_config(serving: &IssuedCert) -> Result<rustls::ServerConfig> {
    let chain =
        CertificateDer::pem_slice_iter(serving.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().map_err(|e| Error::Pem(format!("certificate: {e}")))?;
    if chain.is_empty() {
        return Err(Error::Pem("no certificate in the PEM".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(serving.key_pem.as_bytes()).map_err(|e| Error::Pem(format!("private key: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn spawn_listener(runtime: &Handle, listener: TcpListener, state: Arc<EndpointState>) -> ListenerTask {
    let stop = CancellationToken::new();
    let accept_loop = runtime.spawn(accept_loop(listener, state, stop.clone()));
    ListenerTask { stop, accept_loop }
}

async fn accept_loop(listener: TcpListener, state: Arc<EndpointState>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let tcp = match accepted {
            Ok((tcp, _peer)) => tcp,
            Err(error) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::debug!(%error, "fake kubelet accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = serve_connection(tcp, state) => {}
            }
        });
    }
}

async fn serve_connection(tcp: tokio::net::TcpStream, state: Arc<EndpointState>) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, state.tls.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            tracing::debug!(%error, "fake kubelet TLS handshake failed");
            return;
        }
        Err(_) => return,
    };
    let service = service_fn(move |request: Request<Incoming>| {
        let state = state.clone();
        async move { answer(&state, &request).await }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(tls), service)
        .await;
    if let Err(error) = served {
        tracing::debug!(%error, "fake kubelet connection ended");
    }
}

/// Why a request is never answered.
#[derive(Debug, thiserror::Error)]
#[error("the fake kubelet hangs (fault probe-hang)")]
struct Hung;

async fn answer(state: &EndpointState, request: &Request<Incoming>) -> Result<Response<Full<Bytes>>, Hung> {
    let authorization = request.headers().get(header::AUTHORIZATION).map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
    let path = request.uri().path();
    let reply = {
        let faults = *lock(&state.faults);
        let mut log = lock(&state.requests);
        if log.len() >= REQUEST_LOG_CAPACITY {
            log.pop_front();
        }
        let reply = Reply::decide(faults, request.method(), path, authorization.as_deref());
        log.push_back(KubeletRequest { path: path.to_string(), authorization, at: Timestamp::now() });
        reply
    };
    match reply {
        Reply::Hang => {
            tokio::time::sleep(HANG_LIMIT).await;
            Err(Hung)
        }
        Reply::Configz => {
            let body = lock(&state.config).configz();
            Ok(Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body.clone())))
                .unwrap_or_else(|_| Response::new(Full::new(Bytes::from(body)))))
        }
        Reply::Answer(status, body) => Ok(Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .header("X-Content-Type-Options", "nosniff")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::from_static(body.as_bytes()))))),
    }
}

/// What the endpoint does with one request: the pure part of the fake kubelet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    /// Never answer.
    Hang,
    /// Answer with this status and body.
    Answer(StatusCode, &'static str),
    /// Answer 200 with the endpoint's `/configz` body.
    Configz,
}

impl Reply {
    fn decide(faults: EndpointFaults, method: &http::Method, path: &str, authorization: Option<&str>) -> Reply {
        if faults.hang {
            return Reply::Hang;
        }
        // Kubelet authenticates before anything else; with anonymous auth off, no token is a 401.
        if faults.unauthorized || !authorization.is_some_and(has_bearer_token) {
            return Reply::Answer(StatusCode::UNAUTHORIZED, UNAUTHORIZED_BODY);
        }
        if !matches!(*method, http::Method::GET | http::Method::HEAD) {
            return Reply::Answer(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
        }
        match path {
            "/healthz" | "/healthz/syncloop" if faults.fail => Reply::Answer(StatusCode::INTERNAL_SERVER_ERROR, SYNCLOOP_FAILED_BODY),
            "/healthz" | "/healthz/ping" | "/healthz/syncloop" => Reply::Answer(StatusCode::OK, "ok"),
            "/configz" => Reply::Configz,
            _ => Reply::Answer(StatusCode::NOT_FOUND, "404 page not found"),
        }
    }
}

/// The part of a kubelet's configuration the fake endpoint reports on `/configz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KubeletConfig {
    /// `nodeStatusUpdateFrequency`.
    pub status_update_frequency: Duration,
    /// `nodeStatusReportFrequency`.
    pub status_report_frequency: Duration,
    /// `nodeLeaseDurationSeconds`.
    pub lease_duration: Duration,
}

impl Default for KubeletConfig {
    /// Kubelet's own defaults.
    fn default() -> Self {
        KubeletConfig {
            status_update_frequency: Duration::from_secs(10),
            status_report_frequency: Duration::from_secs(300),
            lease_duration: Duration::from_secs(40),
        }
    }
}

impl KubeletConfig {
    /// The `/configz` body a kubelet so configured answers: `{"kubeletconfig": {...}}`, durations
    /// in Go's notation (`"5m0s"`), as kubelet serialises its v1beta1 KubeletConfiguration.
    pub fn configz(&self) -> String {
        serde_json::json!({
            "kubeletconfig": {
                "kind": "KubeletConfiguration",
                "apiVersion": "kubelet.config.k8s.io/v1beta1",
                "nodeStatusUpdateFrequency": go_duration(self.status_update_frequency),
                "nodeStatusReportFrequency": go_duration(self.status_report_frequency),
                "nodeLeaseDurationSeconds": self.lease_duration.as_secs(),
            }
        })
        .to_string()
    }
}

/// A duration as Go's `time.Duration.String` writes it: `10s`, `5m0s`, `1h0m0s`, `1.5s`, `500ms`.
fn go_duration(d: Duration) -> String {
    let millis = d.as_millis();
    if millis < 1000 {
        return format!("{millis}ms");
    }
    let (hours, minutes, seconds, fraction) = (millis / 3_600_000, millis / 60_000 % 60, millis / 1000 % 60, millis % 1000);
    let seconds = if fraction == 0 { format!("{seconds}s") } else { format!("{seconds}.{}s", format!("{fraction:03}").trim_end_matches('0')) };
    match (hours, minutes) {
        (0, 0) => seconds,
        (0, m) => format!("{m}m{seconds}"),
        (h, m) => format!("{h}h{m}m{seconds}"),
    }
}

/// `Bearer <token>` with a non-empty token (the scheme is case-insensitive, as in the apiserver).
fn has_bearer_token(authorization: &str) -> bool {
    let Some((scheme, token)) = authorization.trim().split_once(' ') else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    const OK: Reply = Reply::Answer(StatusCode::OK, "ok");
    const UNAUTHORIZED: Reply = Reply::Answer(StatusCode::UNAUTHORIZED, UNAUTHORIZED_BODY);
    const SYNCLOOP_FAILED: Reply = Reply::Answer(StatusCode::INTERNAL_SERVER_ERROR, SYNCLOOP_FAILED_BODY);

    fn faults(hang: bool, fail: bool, unauthorized: bool) -> EndpointFaults {
        EndpointFaults { hang, fail, unauthorized }
    }

    #[test]
    fn replies_like_a_kubelet() {
        let healthy = EndpointFaults::default();
        let token = Some("Bearer abc");
        let table: &[(EndpointFaults, &str, Option<&str>, Reply)] = &[
            (healthy, "/healthz", token, OK),
            (healthy, "/healthz/ping", token, OK),
            (healthy, "/healthz/syncloop", token, OK),
            (healthy, "/healthz", Some("bearer abc"), OK),
            (healthy, "/healthz", None, UNAUTHORIZED),
            (healthy, "/healthz", Some("Bearer "), UNAUTHORIZED),
            (healthy, "/healthz", Some("Bearer"), UNAUTHORIZED),
            (healthy, "/healthz", Some("Basic YWJj"), UNAUTHORIZED),
            (healthy, "/pods", token, Reply::Answer(StatusCode::NOT_FOUND, "404 page not found")),
            (healthy, "/pods", None, UNAUTHORIZED),
            (healthy, "/configz", token, Reply::Configz),
            (healthy, "/configz", None, UNAUTHORIZED),
            (faults(false, false, true), "/configz", token, UNAUTHORIZED),
            (faults(false, true, false), "/healthz", token, SYNCLOOP_FAILED),
            (faults(false, true, false), "/healthz/syncloop", token, SYNCLOOP_FAILED),
            (faults(false, true, false), "/healthz/ping", token, OK),
            (faults(false, true, false), "/healthz", None, UNAUTHORIZED),
            (faults(false, false, true), "/healthz", token, UNAUTHORIZED),
            (faults(false, true, true), "/healthz", token, UNAUTHORIZED),
            (faults(true, false, false), "/healthz", token, Reply::Hang),
            (faults(true, false, false), "/healthz", None, Reply::Hang),
        ];
        for (faults, path, authorization, want) in table {
            let got = Reply::decide(*faults, &Method::GET, path, *authorization);
            assert_eq!(got, *want, "{faults:?} {path} {authorization:?}");
        }
    }

    #[test]
    fn only_reads_are_answered() {
        let got = Reply::decide(EndpointFaults::default(), &Method::POST, "/healthz", Some("Bearer t"));
        assert_eq!(got, Reply::Answer(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed"));
        assert_eq!(Reply::decide(EndpointFaults::default(), &Method::HEAD, "/healthz", Some("Bearer t")), OK);
    }

    #[test]
    fn configz_is_written_like_kubelet_writes_it() {
        let config = KubeletConfig {
            status_update_frequency: Duration::from_secs(10),
            status_report_frequency: Duration::from_secs(300),
            lease_duration: Duration::from_secs(40),
        };
        let body: serde_json::Value = serde_json::from_str(&config.configz()).unwrap();
        assert_eq!(body["kubeletconfig"]["nodeStatusReportFrequency"], "5m0s");
        assert_eq!(body["kubeletconfig"]["nodeStatusUpdateFrequency"], "10s");
        assert_eq!(body["kubeletconfig"]["nodeLeaseDurationSeconds"], 40);
        let cases = [(500, "500ms"), (1500, "1.5s"), (4000, "4s"), (1_200_000, "20m0s"), (3_661_000, "1h1m1s"), (3_600_000, "1h0m0s")];
        for (millis, want) in cases {
            assert_eq!(go_duration(Duration::from_millis(millis)), want);
        }
    }
}
