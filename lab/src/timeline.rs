//! What a real node shows under a fault, from both sides: the cluster (its Lease, its Ready
//! condition and heartbeat, osImage, the other conditions, kube-controller-manager's taints)
//! and the controller's position (the kubelet's read-only endpoints over HTTPS).
//!
//! Operators asking "would we have seen it?" need the measured answer, not the documented one:
//! [`Recorder::sample`] takes one snapshot, [`Timeline`] keeps the snapshots in which something
//! other than an age changed, and renders them as the Markdown table `docs/kubelet-faults.md`
//! publishes.

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{coordination::v1::Lease, core::v1::Node},
    jiff::Timestamp,
};
use kube::Api;

/// The kubelet endpoints sampled, each read-only.
pub const ENDPOINTS: [&str; 5] = ["/healthz", "/healthz/syncloop", "/pods", "/configz", "/stats/summary"];
/// How long one endpoint read may take before it counts as hanging.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// One snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Seconds since the fault.
    pub at: f64,
    /// Seconds since the Lease's renewTime.
    pub lease_age: Option<f64>,
    /// The Ready condition's status.
    pub ready: String,
    /// Seconds since Ready's lastHeartbeatTime (the last status report).
    pub heartbeat_age: Option<f64>,
    /// `status.nodeInfo.osImage`.
    pub os_image: String,
    /// Conditions other than Ready that are not in their healthy state (`DiskPressure=True`).
    pub problems: Vec<String>,
    /// Each of [`ENDPOINTS`]: `200`, `500`, `timeout`, `refused`, ….
    pub endpoints: Vec<String>,
    /// kube-controller-manager's taints (`unreachable:NoSchedule`).
    pub kcm_taints: Vec<String>,
}

impl Sample {
    /// Whether `other` says the same, ages aside.
    fn same_state(&self, other: &Sample) -> bool {
        let fresh = |age: Option<f64>, limit: f64| age.map(|a| a < limit);
        self.ready == other.ready
            && self.os_image == other.os_image
            && self.problems == other.problems
            && self.endpoints == other.endpoints
            && self.kcm_taints == other.kcm_taints
            && fresh(self.lease_age, 10.0) == fresh(other.lease_age, 10.0)
            && fresh(self.heartbeat_age, 20.0) == fresh(other.heartbeat_age, 20.0)
    }
}

/// Reads one node's state from the cluster and its kubelet.
pub struct Recorder {
    client: kube::Client,
    node: String,
    address: Ipv4Addr,
    token: String,
    tls: tokio_rustls::TlsConnector,
}

impl Recorder {
    /// A recorder for `node` at `address`, reading the kubelet with `token` over TLS verified
    /// against `ca_pem`.
    pub fn new(client: kube::Client, node: &str, address: Ipv4Addr, ca_pem: &str, token: &str) -> Result<Recorder, String> {
        let config = crate::certs::client_config_trusting(ca_pem)?;
        Ok(Recorder { client, node: node.to_owned(), address, token: token.to_owned(), tls: tokio_rustls::TlsConnector::from(Arc::new(config)) })
    }

    /// One snapshot, `since` being when the fault began.
    pub async fn sample(&self, since: Instant) -> Sample {
        let at = since.elapsed().as_secs_f64();
        let nodes: Api<Node> = Api::all(self.client.clone());
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), "kube-node-lease");
        let (node, lease, endpoints) = tokio::join!(nodes.get(&self.node), leases.get(&self.node), futures::future::join_all(ENDPOINTS.map(|p| self.read(p))));
        let now = Timestamp::now();
        let age = |t: Timestamp| (now - t).total(k8s_openapi::jiff::Unit::Second).unwrap_or(f64::NAN).max(0.0);
        let lease_age = lease.ok().and_then(|l| l.spec?.renew_time).map(|t| age(t.0));
        let mut sample =
            Sample { at, lease_age, ready: "?".into(), heartbeat_age: None, os_image: String::new(), problems: Vec::new(), endpoints, kcm_taints: Vec::new() };
        if let Ok(node) = node {
            if let Some(status) = &node.status {
                sample.os_image = status.node_info.as_ref().map(|i| i.os_image.clone()).unwrap_or_default();
                for c in status.conditions.iter().flatten() {
                    if c.type_ == "Ready" {
                        sample.ready = c.status.clone();
                        sample.heartbeat_age = c.last_heartbeat_time.as_ref().map(|t| age(t.0));
                    } else if c.status != "False" && c.type_ != pulsecheck::names::CONDITION_TYPE {
                        sample.problems.push(format!("{}={}", c.type_, c.status));
                    }
                }
            }
            sample.kcm_taints = node
                .spec
                .and_then(|s| s.taints)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|t| t.key.strip_prefix("node.kubernetes.io/").map(|k| format!("{k}:{}", t.effect)))
                .collect();
        }
        sample
    }

    /// `GET path` on the kubelet: the status code, or what went wrong.
    async fn read(&self, path: &str) -> String {
        let exchange = async {
            let tcp = tokio::net::TcpStream::connect((self.address, crate::realnode::KUBELET_PORT)).await.map_err(|e| match e.kind() {
                std::io::ErrorKind::ConnectionRefused => "refused".to_owned(),
                _ => format!("{}", e.kind()),
            })?;
            let name = rustls::pki_types::ServerName::IpAddress(IpAddr::V4(self.address).into());
            let tls = self.tls.connect(name, tcp).await.map_err(|e| format!("TLS: {e}"))?;
            let (mut sender, connection) = hyper::client::conn::http1::handshake::<_, http_body_util::Empty<bytes::Bytes>>(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
            // Ended with the exchange, also when the read times out.
            let _connection = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
                let _ = connection.await;
            }));
            let request = http::Request::get(path)
                .header(http::header::HOST, format!("{}:{}", self.address, crate::realnode::KUBELET_PORT))
                .header(http::header::AUTHORIZATION, format!("Bearer {}", self.token))
                .body(http_body_util::Empty::new())
                .map_err(|e| e.to_string())?;
            let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            // Read the body too: a handler can answer its headers and hang in the middle.
            http_body_util::BodyExt::collect(response.into_body()).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(status.to_string())
        };
        match tokio::time::timeout(READ_TIMEOUT, exchange).await {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => e,
            Err(_) => "timeout".to_owned(),
        }
    }
}

/// The kubelet version `node` reports (`kubelet v1.36.3`), for the tables' heading.
pub async fn kubelet_version(client: &kube::Client, node: &str) -> String {
    let node = Api::<Node>::all(client.clone()).get(node).await.ok();
    let version = node.and_then(|n| n.status?.node_info).map(|i| i.kubelet_version);
    format!("kubelet {}", version.as_deref().unwrap_or("unknown"))
}

/// The snapshots in which something changed (and the last one).
#[derive(Debug, Default, Clone)]
pub struct Timeline {
    /// What was done at the start (the fault).
    pub title: String,
    /// Kept snapshots.
    pub samples: Vec<Sample>,
    last: Option<Sample>,
}

impl Timeline {
    /// An empty timeline for `title`.
    pub fn new(title: &str) -> Timeline {
        Timeline { title: title.to_owned(), ..Default::default() }
    }

    /// Keeps `sample` if its state differs from the last kept one.
    pub fn push(&mut self, sample: Sample) {
        if self.samples.last().is_none_or(|kept| !kept.same_state(&sample)) {
            self.samples.push(sample.clone());
        }
        self.last = Some(sample);
    }

    /// The latest snapshot, kept or not.
    pub fn last(&self) -> Option<&Sample> {
        self.last.as_ref()
    }

    /// The first snapshot, kept or the latest, in which `check` holds.
    pub fn first(&self, check: impl Fn(&Sample) -> bool) -> Option<&Sample> {
        self.samples.iter().chain(self.last.iter()).find(|s| check(s))
    }

    /// The Markdown table: one row per change, ages in seconds.
    pub fn table(&self) -> String {
        let mut rows = self.samples.clone();
        if let Some(last) = &self.last
            && rows.last() != Some(last)
        {
            rows.push(last.clone());
        }
        let age = |a: Option<f64>| a.map_or("-".to_owned(), |a| format!("{a:.0}s ago"));
        let mut out = format!("#### {}\n\n| t | Lease renewed | Ready | status reported | osImage | other conditions |", self.title);
        for path in ENDPOINTS {
            out.push_str(&format!(" `{path}` |"));
        }
        out.push_str(" kcm taints |\n|");
        out.push_str(&"---|".repeat(7 + ENDPOINTS.len()));
        out.push('\n');
        for s in rows {
            out.push_str(&format!(
                "| {:.0}s | {} | {} | {} | {} | {} |",
                s.at,
                age(s.lease_age),
                s.ready,
                age(s.heartbeat_age),
                s.os_image,
                if s.problems.is_empty() { "-".to_owned() } else { s.problems.join(", ") }
            ));
            for e in &s.endpoints {
                out.push_str(&format!(" {e} |"));
            }
            out.push_str(&format!(" {} |\n", if s.kcm_taints.is_empty() { "-".to_owned() } else { s.kcm_taints.join(", ") }));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: f64, lease_age: f64, ready: &str, healthz: &str) -> Sample {
        Sample {
            at,
            lease_age: Some(lease_age),
            ready: ready.into(),
            heartbeat_age: Some(1.0),
            os_image: "Debian".into(),
            problems: vec![],
            endpoints: vec![healthz.into(), "200".into(), "200".into(), "200".into(), "200".into()],
            kcm_taints: vec![],
        }
    }

    #[test]
    fn only_changes_are_kept_and_the_last_sample_closes_the_table() {
        let mut t = Timeline::new("disk-hang");
        t.push(sample(0.0, 1.0, "True", "200"));
        t.push(sample(2.0, 3.0, "True", "200"));
        t.push(sample(4.0, 12.0, "True", "200"));
        t.push(sample(6.0, 14.0, "Unknown", "timeout"));
        t.push(sample(8.0, 16.0, "Unknown", "timeout"));
        assert_eq!(t.samples.iter().map(|s| s.at).collect::<Vec<_>>(), [0.0, 4.0, 6.0]);
        let table = t.table();
        assert_eq!(table.lines().filter(|l| l.starts_with("| ") && l.ends_with('|') && !l.contains("Lease renewed")).count(), 4, "{table}");
        assert!(table.contains("| 8s | 16s ago | Unknown |"), "{table}");
        assert_eq!(t.first(|s| s.ready == "Unknown").map(|s| s.at), Some(6.0));
    }
}
