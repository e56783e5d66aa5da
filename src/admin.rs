//! The admin edge: logs, and the HTTP server for `/metrics`, `/livez` and `/readyz`.
//!
//! `/livez` answers as long as the process serves HTTP: restarting pulsecheck cures nothing a
//! live process cannot. `/readyz` means "I can see": 200 only after both watches produced their
//! first full list and while they keep delivering (kubert's `initialized` idea), so a
//! Deployment rollout waits for a pulsecheck that actually sees the fleet.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

/// Logging and the admin HTTP server.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    /// Address of the admin server (/metrics, /livez, /readyz); the default [::]:8080 serves IPv4 and IPv6, and falls back to 0.0.0.0:8080 where IPv6 is off.
    #[arg(long, env = "PULSECHECK_ADMIN_ADDR", value_name = "ADDR", default_value = "[::]:8080")]
    pub admin_addr: SocketAddr,
    /// Log line format.
    #[arg(long, env = "PULSECHECK_LOG_FORMAT", value_enum, default_value = "plain")]
    pub log_format: LogFormat,
    /// Log filter in tracing's env-filter syntax.
    #[arg(long, env = "PULSECHECK_LOG", value_name = "FILTER", default_value = "info")]
    pub log_filter: String,
}

/// Errors of the admin edge.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The admin address cannot be bound.
    #[error("--admin-addr {addr}: cannot listen: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    /// The log filter does not parse.
    #[error("--log-filter '{filter}': {source}")]
    Filter { filter: String, source: tracing_subscriber::filter::ParseError },
}

/// Sets up tracing: plain or JSON lines on stderr, filtered by `filter` (env-filter syntax).
pub fn init_logging(format: LogFormat, filter: &str) -> Result<(), Error> {
    let env_filter = tracing_subscriber::EnvFilter::builder().parse(filter).map_err(|source| Error::Filter { filter: filter.into(), source })?;
    // Colours only for a person at a terminal: never escape codes in `kubectl logs` or a file.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(env_filter).with_writer(std::io::stderr).with_ansi(ansi);
    // A second initialisation (tests, the demo) keeps the first subscriber.
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Plain => builder.try_init(),
    };
    Ok(())
}

/// Whether pulsecheck can see; set by the controller, read by `/readyz`.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Marks pulsecheck ready or not.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    /// True when ready.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A bound admin server, not yet serving.
pub struct AdminServer {
    listener: TcpListener,
    metrics: Metrics,
    readiness: Readiness,
}

impl AdminServer {
    /// Binds `addr` (port 0 picks a free port; see [`AdminServer::local_addr`]). The IPv6
    /// wildcard `[::]` also accepts IPv4 on Linux (unless `net.ipv6.bindv6only` is set), so one
    /// listener serves both single-stack and dual-stack Pods; where the kernel has no IPv6 at
    /// all it falls back to `0.0.0.0` on the same port.
    pub async fn bind(addr: SocketAddr, metrics: Metrics, readiness: Readiness) -> Result<AdminServer, Error> {
        let listener = match TcpListener::bind(addr).await {
            Ok(listener) => listener,
            Err(e) if addr.ip() == std::net::Ipv6Addr::UNSPECIFIED && is_no_ipv6(&e) => {
                let v4 = SocketAddr::from(([0, 0, 0, 0], addr.port()));
                tracing::info!(%addr, fallback = %v4, error = %e, "no IPv6 on this host; serving on IPv4 only");
                TcpListener::bind(v4).await.map_err(|source| Error::Bind { addr: v4, source })?
            }
            Err(source) => return Err(Error::Bind { addr, source }),
        };
        Ok(AdminServer { listener, metrics, readiness })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until `shutdown`; in-flight requests finish, new connections are refused.
    pub async fn serve(self, shutdown: CancellationToken) {
        let AdminServer { listener, metrics, readiness } = self;
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                a = listener.accept() => a,
            };
            let Ok((stream, _)) = accepted else { continue };
            let metrics = metrics.clone();
            let readiness = readiness.clone();
            connections.spawn(async move {
                let service = service_fn(move |req| {
                    let response = route(&req, &metrics, &readiness);
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
        drop(listener);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async { while connections.join_next().await.is_some() {} }).await;
    }
}

/// True when binding failed because the host has no IPv6 (module off, `ipv6.disable=1`).
fn is_no_ipv6(e: &std::io::Error) -> bool {
    // EAFNOSUPPORT (97 on Linux): the address family is not supported at all.
    e.raw_os_error() == Some(97) || e.kind() == std::io::ErrorKind::AddrNotAvailable
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    r
}

fn route(req: &Request<Incoming>, metrics: &Metrics, readiness: &Readiness) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET\n".into());
    }
    match req.uri().path() {
        "/metrics" => text(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", metrics.render()),
        "/livez" => text(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" if readiness.get() => text(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready: the Node and Lease watches are not synced and delivering\n".into()),
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found; try /metrics, /livez, /readyz\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        admin: AdminArgs,
    }

    #[tokio::test]
    async fn the_default_admin_address_serves_ipv4_and_ipv6_pods() {
        let default = Flags::try_parse_from(["pulsecheck"]).unwrap().admin.admin_addr;
        let server =
            AdminServer::bind(SocketAddr::new(default.ip(), 0), Metrics::new(crate::metrics::PerNodeMetrics::None), Readiness::default()).await.unwrap();
        let port = server.local_addr().unwrap().port();
        // An IPv4-only Pod (or kubelet probe) and an IPv6-only one both reach it.
        tokio::net::TcpStream::connect((std::net::Ipv4Addr::LOCALHOST, port)).await.expect("reachable over IPv4");
        tokio::net::TcpStream::connect((std::net::Ipv6Addr::LOCALHOST, port)).await.expect("reachable over IPv6");
    }
}
