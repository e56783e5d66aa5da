//! The simulated fleet against a real kube-apiserver: what an operator (or pulsecheck) sees of
//! its Nodes, Leases and kubelet endpoints, healthy and under each fault.
//!
//! Every test starts its own control plane and compresses kubelet's periods to about a second.
//! Waits are polls with deadlines, never sleeps.

use std::{
    future::Future,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use k8s_openapi::{
    api::{coordination::v1::Lease, core::v1::Node},
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api, Client,
    api::PostParams,
    runtime::{WatchStreamExt, watcher},
};
use pulsecheck::names::NODE_LEASE_NAMESPACE;
use pulsecheck_lab::{
    FLEET_LABEL,
    controlplane::{ControlPlane, ControlPlaneOptions},
    fleet::{Fault, Fleet, FleetOptions},
};
use rustls::pki_types::ServerName;

/// Upper bound of every wait (generous: the machine is shared and has two cores).
const DEADLINE: Duration = Duration::from_secs(45);
const POLL: Duration = Duration::from_millis(200);

async fn control_plane() -> ControlPlane {
    ControlPlane::start(ControlPlaneOptions { dir: None, ..Default::default() }).await.expect("control plane starts")
}

/// Kubelet's periods compressed: Lease renewed every second, status computed and reported
/// every second.
fn fast(nodes: usize) -> FleetOptions {
    FleetOptions {
        nodes,
        lease_duration: Duration::from_secs(4),
        status_update_frequency: Duration::from_secs(1),
        status_report_frequency: Duration::from_secs(1),
        ..FleetOptions::default()
    }
}

/// Polls `check` until it yields a value; panics naming `what` after [`DEADLINE`].
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(POLL).await;
    }
}

async fn renew_time(client: &Client, node: &str) -> Option<Timestamp> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), NODE_LEASE_NAMESPACE);
    leases.get_opt(node).await.ok().flatten()?.spec?.renew_time.map(|t| t.0)
}

async fn node(client: &Client, name: &str) -> Node {
    Api::<Node>::all(client.clone()).get(name).await.expect("node exists")
}

fn ready_heartbeat(node: &Node) -> Option<Timestamp> {
    let conditions = node.status.as_ref()?.conditions.as_ref()?;
    conditions.iter().find(|c| c.type_ == "Ready")?.last_heartbeat_time.as_ref().map(|t| t.0)
}

fn os_image(node: &Node) -> String {
    node.status.as_ref().and_then(|s| s.node_info.as_ref()).map(|i| i.os_image.clone()).unwrap_or_default()
}

/// Where pulsecheck would probe the node: InternalIP and `daemonEndpoints.kubeletEndpoint.Port`.
fn kubelet_addr(node: &Node) -> SocketAddr {
    let status = node.status.as_ref().expect("status");
    let ip: IpAddr = status.addresses.as_ref().and_then(|a| a.iter().find(|a| a.type_ == "InternalIP")).expect("InternalIP").address.parse().expect("an IP");
    let port = status.daemon_endpoints.as_ref().and_then(|d| d.kubelet_endpoint.as_ref()).expect("kubelet port").port;
    SocketAddr::new(ip, u16::try_from(port).expect("a port"))
}

/// Waits until `node`'s Lease is renewed with a renewTime after `after`; returns it.
async fn renewed_after(client: &Client, node: &str, after: Timestamp) -> Timestamp {
    eventually(&format!("{node}'s lease is renewed after {after}"), || async { renew_time(client, node).await.filter(|t| *t > after) }).await
}

/// An HTTPS GET that trusts only `ca_pem` and checks the certificate is for the IP it called.
async fn https_get(addr: SocketAddr, ca_pem: &str, path: &str, token: Option<&str>) -> Result<(u16, String), String> {
    let config = pulsecheck_lab::certs::client_config_trusting(ca_pem)?;
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    let tls =
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(ServerName::IpAddress(addr.ip().into()), tcp).await.map_err(|e| format!("TLS: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let mut request = http::Request::get(path).header(http::header::HOST, addr.to_string());
    if let Some(token) = token {
        request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
    let response = sender.send_request(request).await.map_err(|e| format!("request: {e}"))?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[tokio::test]
async fn fleet_nodes_are_ready_and_their_leases_keep_renewing() {
    let lab = control_plane().await;
    let client = lab.client();
    let fleet = Fleet::start(client.clone(), fast(3)).await.expect("fleet starts");
    assert_eq!(fleet.node_names(), ["sim-0000", "sim-0001", "sim-0002"]);

    let nodes = Api::<Node>::all(client.clone());
    let listed = nodes.list(&kube::api::ListParams::default().labels(&format!("{FLEET_LABEL}=true"))).await.unwrap();
    assert_eq!(listed.items.len(), 3);
    for n in &listed.items {
        let labels = n.metadata.labels.as_ref().unwrap();
        assert!(labels["topology.kubernetes.io/zone"].starts_with("zone-"));
        assert_eq!(labels["kubernetes.io/hostname"], n.metadata.name.clone().unwrap());
        assert!(ready_heartbeat(n).is_some(), "Ready condition with a heartbeat");
        assert_eq!(os_image(n), "Ubuntu 24.04.1 LTS");
        let addr = kubelet_addr(n);
        assert!(addr.ip().is_loopback() && addr.ip() != IpAddr::from([127, 0, 0, 1]));
        let taints = n.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
        assert!(taints.is_empty(), "a Ready node carries no not-ready taint: {taints:?}");
    }

    let leases: Api<Lease> = Api::namespaced(client.clone(), NODE_LEASE_NAMESPACE);
    let lease = leases.get("sim-0001").await.unwrap();
    let spec = lease.spec.clone().unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("sim-0001"));
    assert_eq!(spec.lease_duration_seconds, Some(4));
    let owner = &lease.metadata.owner_references.unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("Node", "sim-0001"));

    // A watcher (what pulsecheck runs) sees renewTime advance again and again.
    let config = watcher::Config::default().fields("metadata.name=sim-0001");
    let mut renewals = watcher(leases, config).applied_objects().boxed();
    let mut seen: Vec<Timestamp> = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        while seen.len() < 4 {
            let lease = renewals.next().await.expect("watch goes on").expect("watch event");
            let renew = lease.spec.and_then(|s| s.renew_time).map(|t| t.0).expect("renewTime");
            if seen.last().is_none_or(|last| renew > *last) {
                seen.push(renew);
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("renewTime advanced only {} times: {seen:?}", seen.len()));
    fleet.stop().await;
}

#[tokio::test]
async fn zombie_keeps_renewing_its_lease_while_its_status_heartbeat_stops() {
    let lab = control_plane().await;
    let client = lab.client();
    let fleet = Fleet::start(client.clone(), fast(2)).await.expect("fleet starts");
    let set_at = Timestamp::now();
    fleet.set_fault("sim-0001", Fault::Zombie).unwrap();

    // Once the Lease has been renewed twice more, any status patch in flight at set_fault has landed.
    let renewed = renewed_after(&client, "sim-0001", set_at + SignedDuration::from_secs(2)).await;
    let frozen = ready_heartbeat(&node(&client, "sim-0001").await).expect("heartbeat");

    // Meanwhile the healthy node keeps reporting and the zombie keeps renewing.
    let healthy_after = frozen + SignedDuration::from_secs(3);
    eventually("the healthy node reports a heartbeat 3 s after the zombie's last", || async {
        ready_heartbeat(&node(&client, "sim-0000").await).filter(|t| *t >= healthy_after)
    })
    .await;
    renewed_after(&client, "sim-0001", renewed + SignedDuration::from_secs(2)).await;

    let zombie = node(&client, "sim-0001").await;
    assert_eq!(ready_heartbeat(&zombie), Some(frozen), "the zombie's status heartbeat stopped");
    let ready = zombie.status.unwrap().conditions.unwrap().into_iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(ready.status, "True", "a zombie still claims Ready");
    fleet.stop().await;
}

#[tokio::test]
async fn dead_node_stops_its_lease_and_refuses_connections_until_it_recovers() {
    let lab = control_plane().await;
    let client = lab.client();
    let fleet = Fleet::start(client.clone(), fast(2)).await.expect("fleet starts");
    let addr = kubelet_addr(&node(&client, "sim-0001").await);
    let ca = fleet.kubelet_ca_pem();
    assert_eq!(https_get(addr, &ca, "/healthz", Some("t")).await, Ok((200, "ok".into())));

    let set_at = Timestamp::now();
    fleet.set_fault("sim-0001", Fault::Dead).unwrap();
    eventually("the dead node's kubelet port refuses connections", || async {
        match tokio::net::TcpStream::connect(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Some(()),
            _ => None,
        }
    })
    .await;

    // Two renewal periods of the healthy node later, the dead node's Lease is frozen …
    let healthy = renewed_after(&client, "sim-0000", set_at + SignedDuration::from_secs(2)).await;
    let frozen = renew_time(&client, "sim-0001").await.expect("lease still exists");
    // … and stays frozen while the healthy node renews three more times.
    renewed_after(&client, "sim-0000", healthy + SignedDuration::from_secs(3)).await;
    assert_eq!(renew_time(&client, "sim-0001").await, Some(frozen), "a dead node's lease stops");

    fleet.set_fault("sim-0001", Fault::Recover).unwrap();
    renewed_after(&client, "sim-0001", frozen).await;
    assert_eq!(https_get(addr, &ca, "/healthz", Some("t")).await, Ok((200, "ok".into())), "same port after recovery");
    fleet.stop().await;
}

#[tokio::test]
async fn os_image_turns_unknown_at_once_and_back_on_recover() {
    let lab = control_plane().await;
    let client = lab.client();
    // A report period of an hour: only change detection can post the new osImage quickly.
    let opts = FleetOptions { status_report_frequency: Duration::from_secs(3600), ..fast(2) };
    let fleet = Fleet::start(client.clone(), opts).await.expect("fleet starts");
    let set_at = Timestamp::now();
    fleet.set_fault("sim-0000", Fault::OsImageUnknown).unwrap();
    eventually("sim-0000 reports osImage Unknown", || async { (os_image(&node(&client, "sim-0000").await) == "Unknown").then_some(()) }).await;
    let n = node(&client, "sim-0000").await;
    let ready = n.status.unwrap().conditions.unwrap().into_iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(ready.status, "True", "osImage Unknown comes with Ready=True");
    renewed_after(&client, "sim-0000", set_at + SignedDuration::from_secs(1)).await;
    assert_eq!(os_image(&node(&client, "sim-0001").await), "Ubuntu 24.04.1 LTS", "other nodes unaffected");

    fleet.set_fault("sim-0000", Fault::Recover).unwrap();
    eventually("sim-0000 reports its real osImage again", || async { (os_image(&node(&client, "sim-0000").await) == "Ubuntu 24.04.1 LTS").then_some(()) })
        .await;
    fleet.stop().await;
}

#[tokio::test]
async fn kubelet_endpoint_refuses_a_request_without_token_answers_one_with_it_and_records_both() {
    let lab = control_plane().await;
    let client = lab.client();
    let fleet = Fleet::start(client.clone(), fast(1)).await.expect("fleet starts");
    let addr = kubelet_addr(&node(&client, "sim-0000").await);
    assert_eq!(fleet.kubelet_endpoint("sim-0000"), Some(addr));
    let ca = fleet.kubelet_ca_pem();

    assert_eq!(https_get(addr, &ca, "/healthz", None).await, Ok((401, "Unauthorized".into())));
    assert_eq!(https_get(addr, &ca, "/healthz", Some("s3cr3t")).await, Ok((200, "ok".into())));
    assert_eq!(https_get(addr, &ca, "/healthz/syncloop", Some("s3cr3t")).await, Ok((200, "ok".into())));

    let requests = fleet.kubelet_requests("sim-0000");
    let seen: Vec<_> = requests.iter().map(|r| (r.path.as_str(), r.authorization.as_deref())).collect();
    assert_eq!(seen, [("/healthz", None), ("/healthz", Some("Bearer s3cr3t")), ("/healthz/syncloop", Some("Bearer s3cr3t"))]);
    assert!(requests.windows(2).all(|w| w[0].at <= w[1].at));

    // The certificate is for the node's IP only: a client checking another name fails.
    let other_ca = pulsecheck_lab::certs::CertificateAuthority::new("someone else").unwrap().cert_pem();
    let err = https_get(addr, &other_ca, "/healthz", Some("s3cr3t")).await.unwrap_err();
    assert!(err.starts_with("TLS"), "{err}");
    assert_eq!(fleet.kubelet_requests("sim-0000").len(), 3, "no request reached it over unverified TLS");
    fleet.stop().await;
}

#[tokio::test]
async fn probe_faults_answer_like_a_broken_kubelet() {
    let lab = control_plane().await;
    let client = lab.client();
    let fleet = Fleet::start(client.clone(), fast(3)).await.expect("fleet starts");
    let ca = fleet.kubelet_ca_pem();
    let addr = |name: &'static str| {
        let client = client.clone();
        async move { kubelet_addr(&node(&client, name).await) }
    };

    fleet.set_fault("sim-0000", Fault::ProbeFail).unwrap();
    let (status, body) = https_get(addr("sim-0000").await, &ca, "/healthz", Some("t")).await.unwrap();
    assert_eq!(status, 500);
    assert!(body.contains("[-]syncloop failed"), "{body}");
    assert_eq!(https_get(addr("sim-0000").await, &ca, "/healthz/ping", Some("t")).await, Ok((200, "ok".into())));

    fleet.set_fault("sim-0001", Fault::Unauthorized).unwrap();
    assert_eq!(https_get(addr("sim-0001").await, &ca, "/healthz", Some("t")).await, Ok((401, "Unauthorized".into())));

    fleet.set_fault("sim-0002", Fault::ProbeHang).unwrap();
    let hung = tokio::time::timeout(Duration::from_secs(2), https_get(addr("sim-0002").await, &ca, "/healthz", Some("t")));
    assert!(hung.await.is_err(), "a hung kubelet never answers");
    let requests = fleet.kubelet_requests("sim-0002");
    assert_eq!(requests.len(), 1, "the handshake completed and the request arrived");

    fleet.set_fault("sim-0000", Fault::Recover).unwrap();
    assert_eq!(https_get(addr("sim-0000").await, &ca, "/healthz", Some("t")).await, Ok((200, "ok".into())));
    fleet.stop().await;
}

#[tokio::test]
async fn clock_skewed_node_writes_heartbeats_an_hour_ahead() {
    let lab = control_plane().await;
    let client = lab.client();
    let fleet = Fleet::start(client.clone(), fast(2)).await.expect("fleet starts");
    fleet.set_fault("sim-0001", Fault::ClockSkew(SignedDuration::from_hours(1))).unwrap();

    let ahead = |t: Timestamp| {
        let offset = t.duration_since(Timestamp::now());
        offset > SignedDuration::from_mins(55) && offset < SignedDuration::from_mins(65)
    };
    eventually("sim-0001's renewTime is an hour ahead", || async { renew_time(&client, "sim-0001").await.filter(|t| ahead(*t)) }).await;
    eventually("sim-0001's Ready heartbeat is an hour ahead", || async { ready_heartbeat(&node(&client, "sim-0001").await).filter(|t| ahead(*t)) }).await;
    let healthy = renew_time(&client, "sim-0000").await.unwrap();
    assert!(!ahead(healthy), "only the skewed node is ahead");
    fleet.stop().await;
}

#[tokio::test]
async fn no_lease_node_loses_its_lease_and_recover_recreates_it() {
    let lab = control_plane().await;
    let client = lab.client();
    let fleet = Fleet::start(client.clone(), fast(1)).await.expect("fleet starts");
    fleet.set_fault("sim-0000", Fault::NoLease).unwrap();
    eventually("sim-0000's lease is gone", || async { renew_time(&client, "sim-0000").await.is_none().then_some(()) }).await;
    let heartbeat = ready_heartbeat(&node(&client, "sim-0000").await).unwrap();
    eventually("sim-0000 still reports status without a lease", || async { ready_heartbeat(&node(&client, "sim-0000").await).filter(|t| *t > heartbeat) })
        .await;
    assert!(renew_time(&client, "sim-0000").await.is_none(), "the lease is not recreated while the fault lasts");

    fleet.set_fault("sim-0000", Fault::Recover).unwrap();
    eventually("sim-0000's lease is back", || async { renew_time(&client, "sim-0000").await }).await;
    fleet.stop().await;
}

#[tokio::test]
async fn lab_fleet_refuses_a_cluster_with_foreign_nodes_unless_forced() {
    let lab = control_plane().await;
    let client = lab.client();
    let foreign = Node { metadata: kube::api::ObjectMeta { name: Some("real-node-1".into()), ..Default::default() }, ..Node::default() };
    Api::<Node>::all(client.clone()).create(&PostParams::default(), &foreign).await.unwrap();

    let bin = env!("CARGO_BIN_EXE_pulsecheck-lab");
    let kubeconfig = lab.kubeconfig_path().to_str().unwrap().to_string();
    let args = ["fleet", "--kubeconfig", kubeconfig.as_str(), "--nodes", "2"];
    let refusal = tokio::process::Command::new(bin).args(args).kill_on_drop(true).output();
    let refused = tokio::time::timeout(DEADLINE, refusal).await.expect("lab fleet exits at once").unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("1 node(s)") && stderr.contains("--force"), "{stderr}");
    let simulated = Api::<Node>::all(client.clone()).list(&kube::api::ListParams::default().labels(&format!("{FLEET_LABEL}=true"))).await.unwrap();
    assert!(simulated.items.is_empty(), "nothing was created");

    // With --force it starts (and stops cleanly on SIGTERM).
    let mut forced = tokio::process::Command::new(bin)
        .args(args)
        .args(["--force", "--lease-duration", "4s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = forced.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let up = tokio::time::timeout(DEADLINE, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.starts_with("fleet up: ") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(up, Ok(true), "lab fleet --force starts");
    renew_time(&client, "sim-0001").await.expect("the forced fleet's lease exists");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(forced.id().unwrap()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(DEADLINE, forced.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn lab_up_with_nodes_is_ready_only_once_its_fleet_is() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_pulsecheck-lab");
    let mut up = tokio::process::Command::new(bin)
        .args(["up", "--dir", dir.path().to_str().unwrap(), "--nodes", "3", "--lease-duration", "4s"])
        .args(["--status-update-frequency", "1s", "--status-report-frequency", "1s", "--zombie", "sim-0002"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = up.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let ready = tokio::time::timeout(DEADLINE, lines.next_line()).await.expect("lab up gets ready").unwrap();
    let kubeconfig = ready.as_deref().and_then(|l| l.strip_prefix("ready: ")).expect("the ready line").to_string();

    // Right at the ready line, the fleet's Nodes exist and are Ready.
    let config = kube::Config::from_custom_kubeconfig(kube::config::Kubeconfig::read_from(&kubeconfig).unwrap(), &kube::config::KubeConfigOptions::default())
        .await
        .unwrap();
    let client = Client::try_from(config).unwrap();
    let nodes = Api::<Node>::all(client.clone()).list(&Default::default()).await.unwrap();
    let names: Vec<_> = nodes.items.iter().filter_map(|n| n.metadata.name.clone()).collect();
    assert_eq!(names, ["sim-0000", "sim-0001", "sim-0002"]);
    assert!(nodes.items.iter().all(|n| ready_heartbeat(n).is_some()));
    let ca = std::fs::read_to_string(dir.path().join(pulsecheck_lab::args::KUBELET_CA_FILE)).expect("kubelet CA written");
    let addr = kubelet_addr(&nodes.items[0]);
    assert_eq!(https_get(addr, &ca, "/healthz", Some("t")).await, Ok((200, "ok".into())));

    // The command line's zombie keeps its Lease while its heartbeat stays frozen and the others report.
    let frozen = ready_heartbeat(&node(&client, "sim-0002").await).unwrap();
    let later = frozen + SignedDuration::from_secs(3);
    eventually("sim-0000 reports a heartbeat 3 s after the zombie's last", || async {
        ready_heartbeat(&node(&client, "sim-0000").await).filter(|t| *t >= later)
    })
    .await;
    renewed_after(&client, "sim-0002", later).await;
    assert_eq!(ready_heartbeat(&node(&client, "sim-0002").await), Some(frozen));

    let pid = nix::unistd::Pid::from_raw(i32::try_from(up.id().unwrap()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(DEADLINE, up.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status}");
    assert!(!dir.path().join(pulsecheck_lab::args::KUBELET_CA_FILE).exists(), "lab up removes what it wrote");
}
