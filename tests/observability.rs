//! What an operator sees of pulsecheck: `/metrics` (checked by `promtool check metrics`),
//! `/readyz` tracking whether the watches can see, and the leader gauge.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use kube::{Api, api::PostParams};
use pulsecheck_lab::fleet::Fault;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_the_zombie_its_remediation_and_the_leader_and_pass_promtool() {
    let lab = Lab::start(fast_fleet(4, "obs-")).await;
    let running = controller(lab.client(), |_| {}).await;
    wait_evaluations(&running, 2, Duration::from_secs(30)).await;
    lab.fleet.set_fault("obs-0001", Fault::Zombie).unwrap();
    let body = eventually("zombie remediated in /metrics", STALE_AFTER + Duration::from_secs(20), || async {
        let (code, body) = http_get(running.admin_addr, "/metrics").await;
        (code == 200 && metric(&body, r#"pulsecheck_remediations_total{action="taint",result="success"}"#) == Some(1.0)).then_some(body)
    })
    .await;
    assert_eq!(metric(&body, &verdict_series("obs-0001", "zombie")), Some(1.0), "{body}");
    assert_eq!(metric(&body, &verdict_series("obs-0001", "healthy")), Some(0.0));
    assert_eq!(metric(&body, r#"pulsecheck_node_evidence{evidence="status_stale",node="obs-0001"}"#), Some(1.0));
    assert_eq!(metric(&body, "pulsecheck_leader"), Some(1.0));
    assert_eq!(metric(&body, r#"pulsecheck_nodes{verdict="zombie"}"#), Some(1.0));
    assert!(body.contains("pulsecheck_build_info{version="), "{body}");

    let promtool = tool("promtool");
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs");
    use std::io::Write;
    child.stdin.take().expect("stdin").write_all(body.as_bytes()).expect("feed promtool");
    let out = child.wait_with_output().expect("promtool finishes");
    assert!(out.status.success(), "promtool check metrics failed:\n{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));

    // A deleted node leaves no series behind.
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(lab.client());
    lab.fleet.set_fault("obs-0003", Fault::Dead).unwrap();
    nodes.delete("obs-0003", &Default::default()).await.unwrap();
    eventually("deleted node's series gone", Duration::from_secs(20), || async {
        let (_, body) = http_get(running.admin_addr, "/metrics").await;
        (!body.contains(r#"node="obs-0003""#)).then_some(())
    })
    .await;
    running.stop().await;
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_only_a_node_in_trouble_has_series_and_they_go_when_it_is_healthy_again() {
    let lab = Lab::start(fast_fleet(3, "pnm-")).await;
    // `pulsecheck run`'s default, --per-node-metrics=unhealthy (the harness otherwise runs `all`).
    let running = controller(lab.client(), |s| s.per_node_metrics = pulsecheck::config::Settings::default().per_node_metrics).await;
    assert_eq!(running_default(), pulsecheck::metrics::PerNodeMetrics::Unhealthy);
    // Nodes not Ready yet are named (verdict unknown); once all are healthy, none is.
    let body = eventually("the fleet healthy", Duration::from_secs(30), || async {
        let body = running.metrics.render();
        (metric(&body, r#"pulsecheck_nodes{verdict="healthy"}"#) == Some(3.0)).then_some(body)
    })
    .await;
    assert!(!body.contains("node=\""), "a healthy fleet exports no per-node series: {body}");

    lab.fleet.set_fault("pnm-0001", Fault::Zombie).unwrap();
    let body = eventually("the zombie named in /metrics", STALE_AFTER + Duration::from_secs(20), || async {
        let body = running.metrics.render();
        (metric(&body, r#"pulsecheck_node_remediated{node="pnm-0001"}"#) == Some(1.0)).then_some(body)
    })
    .await;
    assert_eq!(metric(&body, &verdict_series("pnm-0001", "zombie")), Some(1.0), "{body}");
    assert_eq!(metric(&body, r#"pulsecheck_node_evidence{evidence="status_stale",node="pnm-0001"}"#), Some(1.0), "{body}");
    assert!(!body.contains(r#"node="pnm-0000""#) && !body.contains(r#"node="pnm-0002""#), "healthy nodes named: {body}");

    // Healthy again: released, and its series go (Prometheus marks them stale).
    lab.fleet.set_fault("pnm-0001", Fault::Recover).unwrap();
    eventually("the recovered node's series gone", STALE_AFTER + Duration::from_secs(30), || async {
        let body = running.metrics.render();
        (metric(&body, r#"pulsecheck_nodes{verdict="healthy"}"#) == Some(3.0) && !body.contains("node=\"")).then_some(())
    })
    .await;
    running.stop().await;
    lab.stop().await;
}

fn running_default() -> pulsecheck::metrics::PerNodeMetrics {
    use clap::Parser;
    let pulsecheck::cli::Command::Run(args) = pulsecheck::cli::Cli::try_parse_from(["pulsecheck", "run"]).expect("parses").command else { panic!("not run") };
    args.metrics.per_node_metrics
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_watches_sync_at_once_not_at_the_next_evaluation() {
    // A minute between evaluations: the first one runs at start, before the watches have
    // listed anything. Ready must not wait for the next one.
    let lab = Lab::start(fast_fleet(2, "rdz-")).await;
    let running = controller(lab.client(), |s| s.evaluation_interval = Duration::from_secs(60)).await;
    eventually("/readyz 200 well before the second evaluation", Duration::from_secs(15), || async {
        (http_get(running.admin_addr, "/readyz").await.0 == 200).then_some(())
    })
    .await;
    running.stop().await;
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_until_the_watches_sync_and_200_after() {
    let lab = Lab::start(fast_fleet(2, "rdy-")).await;
    // An identity that may not list anything yet: the watches cannot sync.
    let token = lab.cp.service_account_token("pulsecheck", "pulsecheck").await.unwrap();
    let restricted = lab.cp.client_with_token(&token).await.unwrap();
    let running = controller(restricted, |_| {}).await;
    assert_eq!(http_get(running.admin_addr, "/livez").await.0, 200);
    wait_evaluations(&running, 3, Duration::from_secs(30)).await;
    let (code, body) = http_get(running.admin_addr, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(metric(&running.metrics.render(), "pulsecheck_blind"), Some(1.0));

    // Grant read access: the watches retry, sync, and pulsecheck becomes ready.
    let admin = lab.client();
    let role = ClusterRole {
        metadata: kube::api::ObjectMeta { name: Some("readyz-test".into()), ..Default::default() },
        rules: Some(vec![
            PolicyRule {
                api_groups: Some(vec!["".into()]),
                resources: Some(vec!["nodes".into()]),
                verbs: vec!["list".into(), "watch".into()],
                ..Default::default()
            },
            PolicyRule {
                api_groups: Some(vec!["coordination.k8s.io".into()]),
                resources: Some(vec!["leases".into()]),
                verbs: vec!["list".into(), "watch".into()],
                ..Default::default()
            },
        ]),
        ..Default::default()
    };
    Api::<ClusterRole>::all(admin.clone()).create(&PostParams::default(), &role).await.unwrap();
    let binding = ClusterRoleBinding {
        metadata: kube::api::ObjectMeta { name: Some("readyz-test".into()), ..Default::default() },
        role_ref: RoleRef { api_group: "rbac.authorization.k8s.io".into(), kind: "ClusterRole".into(), name: "readyz-test".into() },
        subjects: Some(vec![Subject { kind: "ServiceAccount".into(), name: "pulsecheck".into(), namespace: Some("pulsecheck".into()), ..Default::default() }]),
    };
    Api::<ClusterRoleBinding>::all(admin).create(&PostParams::default(), &binding).await.unwrap();
    eventually("/readyz 200", Duration::from_secs(60), || async { (http_get(running.admin_addr, "/readyz").await.0 == 200).then_some(()) }).await;
    running.stop().await;
    lab.stop().await;
}
