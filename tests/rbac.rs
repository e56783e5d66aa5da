//! The shipped RBAC (manifests/) is enough for pulsecheck's whole job and no more: the
//! controller runs under a token of the chart's ServiceAccount (TokenRequest) through a zombie →
//! taint → release cycle with leader election and kubelet probes, and the same identity is
//! refused what it must never do.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use kube::{
    Api,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};
use pulsecheck::lab::fleet::Fault;

fn apply_manifests(kubeconfig: &std::path::Path) {
    let kubectl = tool("kubectl");
    let repo = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["apply", "-f"])
        .arg(repo.join("manifests/namespace.yaml"))
        .arg("-f")
        .arg(repo.join("manifests/serviceaccount.yaml"))
        .arg("-f")
        .arg(repo.join("manifests/rbac.yaml"))
        .output()
        .expect("kubectl runs");
    assert!(out.status.success(), "kubectl apply failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn is_forbidden<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> bool {
    matches!(r, Err(kube::Error::Api(s)) if s.code == 403)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_under_its_own_service_account_does_a_whole_cycle_and_nothing_more() {
    let mut opts = fast_fleet(4, "rbac-");
    opts.kubelet_endpoints = true;
    let lab = Lab::start(opts).await;
    apply_manifests(lab.cp.kubeconfig_path());
    let token = lab.cp.service_account_token("pulsecheck", "pulsecheck").await.unwrap();
    let sa = lab.cp.client_with_token(&token).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("kubelet-ca.pem");
    std::fs::write(&ca, lab.fleet.kubelet_ca_pem()).unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &token).unwrap();
    let ca_flag = format!("--kubelet-certificate-authority={}", ca.display());
    let token_flag = format!("--token-file={}", token_file.display());
    let running = controller(
        sa.clone(),
        &[
            "--leader-elect=true",
            "--leader-election-namespace=pulsecheck",
            "--leader-election-lease-duration=4s",
            "--identity=rbac-test",
            "--probe=kubelet-healthz",
            "--probe-interval=1s",
            "--probe-timeout=500ms",
            "--probe-zombie-after=6s",
            &ca_flag,
            &token_flag,
        ],
    )
    .await;
    eventually("leader", Duration::from_secs(30), || {
        let leader = metric(&running.metrics.render(), "pulsecheck_leader") == Some(1.0);
        async move { leader.then_some(()) }
    })
    .await;
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
    let (status, _, _) = our_condition(&get_node(&admin, "rbac-0001").await).expect("condition written through nodes/status");
    assert_eq!(status, "False");
    lab.fleet.set_fault("rbac-0001", Fault::Recover).unwrap();
    eventually("released", Duration::from_secs(40), || {
        let admin = admin.clone();
        async move { (!has_our_taint(&get_node(&admin, "rbac-0001").await)).then_some(()) }
    })
    .await;
    let text = running.metrics.render();
    assert_eq!(metric(&text, r#"pulsecheck_remediations_total{action="taint",result="error"}"#), None, "{text}");
    assert_eq!(metric(&text, "pulsecheck_probe_misconfigured"), Some(0.0));
    running.stop().await;

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
