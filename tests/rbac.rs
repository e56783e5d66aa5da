//! The chart's RBAC is enough for pulsecheck's whole job and no more: `helm template` renders the
//! chart's ServiceAccount and RBAC with default values, they are applied to the real apiserver, and
//! the built `pulsecheck run` binary runs with a kubeconfig holding a token of that ServiceAccount
//! (TokenRequest) through a zombie → taint → release cycle with leader election and kubelet probes.
//! The same identity lists and watches the node agents' Leases in its namespace, and is then
//! refused what it must never do.

mod common;

use std::{path::PathBuf, process::Stdio, time::Duration};

use common::*;
use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{Node, Pod, Secret},
};
use kube::{
    Api,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};
use pulsecheck_lab::fleet::Fault;

fn is_forbidden<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> bool {
    matches!(r, Err(kube::Error::Api(s)) if s.code == 403)
}

/// The `pulsecheck run` process; its log goes to a file that is printed if the test fails.
struct Controller {
    child: tokio::process::Child,
    log: PathBuf,
    admin: std::net::SocketAddr,
}

impl Controller {
    async fn metrics(&self) -> String {
        match tokio::net::TcpStream::connect(self.admin).await {
            Ok(_) => http_get(self.admin, "/metrics").await.1,
            Err(_) => String::new(),
        }
    }

    async fn wait_metric(&self, what: &str, series: &str, value: f64, timeout: Duration) {
        eventually(what, timeout, || async move { (metric(&self.metrics().await, series) == Some(value)).then_some(()) }).await;
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if std::thread::panicking() {
            println!("--- pulsecheck run log ---\n{}", std::fs::read_to_string(&self.log).unwrap_or_default());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_under_its_own_service_account_does_a_whole_cycle_and_nothing_more() {
    let mut opts = fast_fleet(4, "rbac-");
    opts.kubelet_endpoints = true;
    let lab = Lab::start(opts).await;
    apply_chart_rbac(lab.cp.kubeconfig_path());
    let token = lab.cp.service_account_token("pulsecheck", "pulsecheck").await.unwrap();
    let sa = lab.cp.client_with_token(&token).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    lab.cp.write_kubeconfig_for_token(&token, &kubeconfig).unwrap();
    let ca = dir.path().join("kubelet-ca.pem");
    std::fs::write(&ca, lab.fleet.kubelet_ca_pem()).unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &token).unwrap();
    let log = dir.path().join("pulsecheck.log");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let admin_addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let flags = [
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--admin-addr={admin_addr}"),
        "--leader-elect=true".into(),
        "--leader-election-namespace=pulsecheck".into(),
        "--leader-election-lease-duration=4s".into(),
        "--identity=rbac-test".into(),
        "--probe=kubelet-healthz".into(),
        "--probe-interval=1s".into(),
        "--probe-timeout=500ms".into(),
        "--probe-zombie-after=6s".into(),
        format!("--kubelet-certificate-authority={}", ca.display()),
        format!("--token-file={}", token_file.display()),
    ];
    let fast = FAST.iter().filter(|f| !["--admin-addr", "--probe=", "--leader-elect="].iter().any(|p| f.starts_with(p))).map(|f| f.to_string());
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pulsecheck"))
        .arg("run")
        .args(fast.chain(flags))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("pulsecheck run starts");
    let mut running = Controller { child, log, admin: admin_addr };
    running.wait_metric("leader", "pulsecheck_leader", 1.0, Duration::from_secs(30)).await;
    // The kubelet probes ran under the ServiceAccount's token, over verified TLS.
    let expected = format!("Bearer {token}");
    eventually("a probe carried the ServiceAccount token", Duration::from_secs(20), || {
        let seen = lab.fleet.kubelet_requests("rbac-0000").iter().any(|r| r.authorization.as_deref() == Some(expected.as_str()));
        async move { seen.then_some(()) }
    })
    .await;

    let admin = lab.client();
    lab.fleet.set_fault("rbac-0001", Fault::Zombie).unwrap();
    eventually("zombie tainted by the ServiceAccount", STALE_AFTER + Duration::from_secs(20), || {
        let admin = admin.clone();
        async move { has_our_taint(&get_node(&admin, "rbac-0001").await).then_some(()) }
    })
    .await;
    eventually("Events published", Duration::from_secs(10), || {
        let admin = admin.clone();
        async move { events_for(&admin, "rbac-0001").await.iter().any(|(r, _)| r == "Tainted").then_some(()) }
    })
    .await;
    eventually("condition False, written through nodes/status", Duration::from_secs(10), || {
        let admin = admin.clone();
        async move { our_condition(&get_node(&admin, "rbac-0001").await).is_some_and(|(s, _, _)| s == "False").then_some(()) }
    })
    .await;
    lab.fleet.set_fault("rbac-0001", Fault::Recover).unwrap();
    eventually("released", Duration::from_secs(40), || {
        let admin = admin.clone();
        async move { (!has_our_taint(&get_node(&admin, "rbac-0001").await)).then_some(()) }
    })
    .await;
    let text = running.metrics().await;
    for action in ["taint", "untaint"] {
        let errors = format!(r#"pulsecheck_remediations_total{{action="{action}",result="error"}}"#);
        assert_eq!(metric(&text, &errors), None, "{text}");
    }
    assert_eq!(metric(&text, r#"pulsecheck_remediations_total{action="taint",result="success"}"#), Some(1.0), "{text}");
    assert_eq!(metric(&text, "pulsecheck_probe_misconfigured"), Some(0.0), "{text}");
    // SIGTERM: a clean exit (leadership handed back through the Role it was given).
    let pid = nix::unistd::Pid::from_raw(running.child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), running.child.wait()).await.expect("exits within 10 s").unwrap();
    assert_eq!(status.code(), Some(0));
    let log = std::fs::read_to_string(&running.log).unwrap();
    assert!(!log.to_lowercase().contains("forbidden"), "a call was refused:\n{log}");
    assert!(!log.contains('\u{1b}'), "terminal escape codes in a log written to a file:\n{log}");

    // The node agents' Leases in its own namespace: listed and watched (the opt-in agent's), never deleted.
    let own_leases: Api<Lease> = Api::namespaced(sa.clone(), "pulsecheck");
    let agents = ListParams::default().labels("app.kubernetes.io/component=agent");
    own_leases.list(&agents).await.expect("the agents' Leases can be listed");
    let watch = own_leases.watch(&kube::api::WatchParams::default().labels("app.kubernetes.io/component=agent").timeout(1), "0").await;
    drop(watch.expect("and watched"));
    assert!(is_forbidden(own_leases.delete("pulsecheck", &DeleteParams::default()).await), "deleting a Lease was not refused");

    // What the role must refuse.
    let nodes: Api<Node> = Api::all(sa.clone());
    assert!(is_forbidden(nodes.delete("rbac-0002", &DeleteParams::default()).await), "deleting a node was not refused");
    let secrets: Api<Secret> = Api::all(sa.clone());
    assert!(is_forbidden(secrets.list(&ListParams::default()).await), "listing secrets was not refused");
    let pods: Api<Pod> = Api::namespaced(sa.clone(), "default");
    let patch = serde_json::json!({"metadata": {"labels": {"x": "y"}}});
    assert!(is_forbidden(pods.patch("anything", &PatchParams::default(), &Patch::Merge(&patch)).await), "patching pods was not refused");
    let proxy = sa.request_text(http::Request::get("/api/v1/nodes/rbac-0002/proxy/healthz").body(Vec::new()).unwrap()).await;
    assert!(is_forbidden(proxy), "nodes/proxy was not refused");
    lab.stop().await;
}
