//! `pulsecheck check` as a person runs it: the built binary against a real kube-apiserver with a
//! simulated fleet (thresholds compressed with check's own flags), reading its stdout, stderr
//! and exit code. Each test has its own control plane.

mod common;

use std::{path::Path, process::Output, time::Duration};

use common::*;
use k8s_openapi::{
    api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject},
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api,
    api::{ObjectMeta, PostParams},
};
use pulsecheck_lab::fleet::{Fault, FleetOptions};

/// Compressed thresholds for the snapshot mode: the fast fleet reports status at least every
/// ~4 s, so 6 s of silence is stale.
const FAST_CHECK: &[&str] = &["--status-stale-after=6s", "--lease-grace=3s", "--os-image-unknown-after=3s"];

/// `pulsecheck check --kubeconfig K` plus `extra`.
async fn check(kubeconfig: &Path, extra: &[&str]) -> Output {
    run_subcommand("check", kubeconfig, extra).await
}

/// The table's row for `node`, split on runs of two or more spaces.
fn row(table: &str, node: &str) -> Vec<String> {
    let line = table.lines().find(|l| l.starts_with(&format!("{node} "))).unwrap_or_else(|| panic!("no row for {node} in:\n{table}"));
    line.split("  ").map(str::trim).filter(|c| !c.is_empty()).map(str::to_string).collect()
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", describe(out)))
}

fn node_json<'a>(report: &'a serde_json::Value, node: &str) -> &'a serde_json::Value {
    report["nodes"].as_array().and_then(|ns| ns.iter().find(|n| n["name"] == node)).unwrap_or_else(|| panic!("no {node} in {report}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_exits_0_on_a_healthy_fleet_and_1_naming_a_zombie_and_an_os_image_unknown_node() {
    let lab = Lab::start(fast_fleet(4, "chk-")).await;
    let kubeconfig = lab.cp.kubeconfig_path().to_path_buf();

    let healthy = check(&kubeconfig, FAST_CHECK).await;
    assert_eq!(healthy.status.code(), Some(0), "{}", describe(&healthy));
    assert_eq!(text(&healthy.stdout).lines().next(), Some("NODE      READY  LEASE  STATUS  STALE-AFTER  OS-IMAGE            PROBE  VERDICT  WHY"));
    assert_eq!(text(&healthy.stdout).lines().filter(|l| l.contains("healthy")).count(), 4, "{}", describe(&healthy));
    assert!(text(&healthy.stderr).contains("without --observe these verdicts rest on the nodes' own timestamps"), "{}", describe(&healthy));

    lab.fleet.set_fault("chk-0001", Fault::Zombie).unwrap();
    lab.fleet.set_fault("chk-0002", Fault::OsImageUnknown).unwrap();
    let report = eventually("check -o json reports chk-0001 as a zombie", Duration::from_secs(60), || {
        let kubeconfig = kubeconfig.clone();
        async move {
            let out = check(&kubeconfig, &[FAST_CHECK, &["-o", "json"]].concat()).await;
            let report = json(&out);
            (node_json(&report, "chk-0001")["verdict"] == "zombie").then(|| (out.status.code(), report))
        }
    })
    .await;
    let (code, report) = report;
    assert_eq!(code, Some(1), "a zombie makes check exit 1");
    assert_eq!(report["clock"], "node-timestamps");
    let zombie = node_json(&report, "chk-0001");
    assert_eq!(zombie["ready"], "True");
    assert_eq!(zombie["evidence"][0]["kind"], "status_stale");
    assert!(zombie["status_age_seconds"].as_i64().unwrap() >= 6, "{zombie}");
    assert!(zombie["lease_age_seconds"].as_i64().unwrap() < 3, "the zombie's Lease is fresh: {zombie}");
    let os = node_json(&report, "chk-0002");
    assert_eq!((os["verdict"].as_str(), os["os_image"].as_str()), (Some("suspect"), Some("Unknown")), "{os}");
    assert_eq!(os["evidence"][0]["kind"], "os_image_unknown");
    assert_eq!(report["summary"], serde_json::json!({"zombie": 1, "suspect": 1, "healthy": 2}));

    let out = check(&kubeconfig, FAST_CHECK).await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let table = text(&out.stdout);
    let order: Vec<&str> = table.lines().skip(1).filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(order, ["chk-0001", "chk-0002", "chk-0000", "chk-0003"], "worst first:\n{table}");
    let z = row(&table, "chk-0001");
    assert_eq!(
        (z[1].as_str(), z[4].as_str(), z[5].as_str(), z[6].as_str(), z[7].as_str()),
        ("True", "6s (flag)", "Ubuntu 24.04.1 LTS", "-", "zombie"),
        "{z:?}"
    );
    assert!(z[8].starts_with("NodeStatus not refreshed for"), "{z:?}");
    let o = row(&table, "chk-0002");
    assert_eq!((o[5].as_str(), o[7].as_str()), ("Unknown", "suspect"), "{o:?}");
    assert!(o[8].starts_with("osImage \"Unknown\""), "{o:?}");
    assert_eq!(row(&table, "chk-0003")[7], "healthy");

    // --node: one node, its own exit code; an unknown node is named with exit 2.
    let one = check(&kubeconfig, &[FAST_CHECK, &["--node", "chk-0002", "-o", "yaml"]].concat()).await;
    assert_eq!(one.status.code(), Some(1), "{}", describe(&one));
    let yaml: serde_json::Value = serde_yaml_ng::from_slice(&one.stdout).expect("yaml");
    assert_eq!(yaml["nodes"].as_array().map(Vec::len), Some(1));
    assert_eq!(yaml["nodes"][0]["verdict"], "suspect");
    let fine = check(&kubeconfig, &[FAST_CHECK, &["--node", "chk-0000"]].concat()).await;
    assert_eq!(fine.status.code(), Some(0), "{}", describe(&fine));
    assert_eq!(text(&fine.stdout).lines().count(), 2, "{}", describe(&fine));
    let missing = check(&kubeconfig, &["--node", "chk-9999"]).await;
    assert_eq!(missing.status.code(), Some(2), "{}", describe(&missing));
    assert!(text(&missing.stderr).contains("node \"chk-9999\" not found"), "{}", describe(&missing));
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_catches_a_zombie_whose_skewed_clock_makes_its_stale_status_look_fresh() {
    let lab = Lab::start(fast_fleet(3, "obs-")).await;
    let kubeconfig = lab.cp.kubeconfig_path().to_path_buf();
    let zombie = "obs-0001";
    lab.fleet.set_fault(zombie, Fault::ClockSkew(SignedDuration::from_hours(1))).unwrap();
    let client = lab.client();
    let heartbeat = |client: kube::Client| async move {
        let node = get_node(&client, zombie).await;
        node.status.and_then(|s| s.conditions).and_then(|cs| cs.into_iter().find(|c| c.type_ == "Ready")).and_then(|c| c.last_heartbeat_time).map(|t| t.0)
    };
    // Its status carries a timestamp from the future before it stops.
    eventually("a status report from the skewed clock", Duration::from_secs(20), || {
        let client = client.clone();
        async move { heartbeat(client).await.filter(|t| *t > Timestamp::now() + SignedDuration::from_mins(50)).map(|_| ()) }
    })
    .await;
    lab.fleet.set_fault(zombie, Fault::Zombie).unwrap();
    // Its status is really stale once its heartbeat has not moved for longer than the threshold.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut last = heartbeat(client.clone()).await;
    let mut since = tokio::time::Instant::now();
    while since.elapsed() < Duration::from_secs(8) {
        assert!(tokio::time::Instant::now() < deadline, "the zombie's heartbeat kept moving: {last:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = heartbeat(client.clone()).await;
        if now != last {
            last = now;
            since = tokio::time::Instant::now();
        }
    }

    // One snapshot judges by the node's own timestamps: fooled.
    let snapshot = check(&kubeconfig, &[FAST_CHECK, &["-o", "json"]].concat()).await;
    assert_eq!(snapshot.status.code(), Some(0), "the snapshot is fooled by the skew: {}", describe(&snapshot));
    let fooled = json(&snapshot);
    assert_eq!(node_json(&fooled, zombie)["verdict"], "healthy");
    assert!(node_json(&fooled, zombie)["status_age_seconds"].as_i64().unwrap() < -3000, "its status is from the future");
    assert!(text(&snapshot.stderr).contains(&format!("timestamps ahead of this machine's clock (negative ages): {zombie}")), "{}", describe(&snapshot));

    // --observe judges by check's own clock: caught, once a status never seen refreshed has had
    // twice the flag (6 s) under its eyes.
    let observed = check(&kubeconfig, &[FAST_CHECK, &["--observe=14s"]].concat()).await;
    assert_eq!(observed.status.code(), Some(1), "{}", describe(&observed));
    let table = text(&observed.stdout);
    let z = row(&table, zombie);
    assert_eq!((z[1].as_str(), z[4].as_str(), z[7].as_str()), ("True", "12s (flag-doubled)", "zombie"), "{}", describe(&observed));
    assert!(z[3].starts_with(">="), "never seen refreshed: a lower bound: {z:?}");
    assert!(z[8].starts_with("NodeStatus not refreshed for 1"), "{z:?}");
    for healthy in ["obs-0000", "obs-0002"] {
        assert_eq!(row(&table, healthy)[7], "healthy", "{}", describe(&observed));
    }
    assert!(!text(&observed.stderr).contains("without --observe"), "{}", describe(&observed));
    lab.stop().await;
}

/// Creates `role`, binds it cluster-wide to ServiceAccount `check-test/account` (whose token is
/// `token`), and writes a kubeconfig for that token into `dir`.
async fn grant(cp: &pulsecheck_lab::controlplane::ControlPlane, role: ClusterRole, account: &str, token: &str, dir: &Path) -> std::path::PathBuf {
    let name = role.metadata.name.clone().expect("the role is named");
    Api::<ClusterRole>::all(cp.client()).create(&PostParams::default(), &role).await.expect("create ClusterRole");
    let binding = ClusterRoleBinding {
        metadata: ObjectMeta { name: Some(format!("{account}-{name}")), ..Default::default() },
        role_ref: RoleRef { api_group: "rbac.authorization.k8s.io".into(), kind: "ClusterRole".into(), name },
        subjects: Some(vec![Subject { kind: "ServiceAccount".into(), name: account.into(), namespace: Some("check-test".into()), ..Default::default() }]),
    };
    Api::<ClusterRoleBinding>::all(cp.client()).create(&PostParams::default(), &binding).await.expect("create ClusterRoleBinding");
    let kubeconfig = dir.join(format!("{account}.kubeconfig"));
    cp.write_kubeconfig_for_token(token, &kubeconfig).unwrap();
    kubeconfig
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_without_lease_access_gets_exit_2_naming_the_missing_permission() {
    init();
    let cp = pulsecheck_lab::controlplane::ControlPlane::start(Default::default()).await.expect("control plane starts");
    let token = cp.service_account_token("check-test", "node-reader").await.expect("token");
    let role = ClusterRole {
        metadata: ObjectMeta { name: Some("node-reader".into()), ..Default::default() },
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["nodes".into()]),
            verbs: vec!["get".into(), "list".into()],
            ..Default::default()
        }]),
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = grant(&cp, role, "node-reader", &token, dir.path()).await;

    // RBAC takes a moment to reach the authorizer: until then even nodes are forbidden.
    let out = eventually("check fails on leases, not nodes", Duration::from_secs(30), || {
        let kubeconfig = kubeconfig.clone();
        async move {
            let out = check(&kubeconfig, &[]).await;
            text(&out.stderr).contains("leases").then_some(out)
        }
    })
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("cannot list leases in namespace kube-node-lease: forbidden — the identity needs `list` on `leases` (coordination.k8s.io) there"),
        "{stderr}"
    );
    assert!(stderr.contains("system:serviceaccount:check-test:node-reader"), "the apiserver's message names the identity: {stderr}");
    assert!(out.stdout.is_empty(), "no partial table: {}", describe(&out));
    // --observe checks permissions before watching for a minute.
    let observed = check(&kubeconfig, &["--observe=1m"]).await;
    assert_eq!(observed.status.code(), Some(2), "{}", describe(&observed));
    assert!(text(&observed.stderr).contains("the identity needs `list` on `leases`"), "{}", describe(&observed));
    let _ = cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_given_the_shipped_check_role_can_run_check_and_change_nothing() {
    init();
    let cp = pulsecheck_lab::controlplane::ControlPlane::start(Default::default()).await.expect("control plane starts");
    // The chart's ClusterRole for `pulsecheck check`, as rendered with default values.
    let rendered = std::process::Command::new(tool("helm"))
        .args(["template", "pulsecheck"])
        .arg(repo().join("charts/pulsecheck"))
        .args(["--namespace", "pulsecheck", "--show-only", "templates/check-role.yaml"])
        .output()
        .expect("helm runs");
    assert!(rendered.status.success(), "{}", String::from_utf8_lossy(&rendered.stderr));
    let role: ClusterRole = serde_yaml_ng::from_str(&String::from_utf8_lossy(&rendered.stdout)).expect("a ClusterRole");
    assert_eq!(role.metadata.labels.as_ref().and_then(|l| l.get("rbac.authorization.k8s.io/aggregate-to-view")).map(String::as_str), Some("true"));
    let token = cp.service_account_token("check-test", "operator").await.expect("token");
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = grant(&cp, role, "operator", &token, dir.path()).await;
    // RBAC takes a moment to reach the authorizer.
    let out = eventually("check runs under the check role", Duration::from_secs(30), || {
        let kubeconfig = kubeconfig.clone();
        async move {
            let out = check(&kubeconfig, &[]).await;
            (out.status.code() == Some(0)).then_some(out)
        }
    })
    .await;
    assert!(!text(&out.stderr).contains("forbidden"), "{}", describe(&out));
    let observed = check(&kubeconfig, &["--observe=2s"]).await;
    assert_eq!(observed.status.code(), Some(0), "--observe watches too: {}", describe(&observed));
    // Read-only: it may not change what it reads.
    let as_operator = cp.client_with_token(&token).await.unwrap();
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(as_operator);
    let patch = kube::api::Patch::Merge(serde_json::json!({"metadata": {"labels": {"x": "y"}}}));
    let refused = nodes.patch("any", &kube::api::PatchParams::default(), &patch).await.unwrap_err();
    assert!(matches!(&refused, kube::Error::Api(s) if s.code == 403), "{refused:?}");
    let _ = cp.stop().await;
}

#[tokio::test]
async fn unreachable_cluster_exits_2_saying_it_cannot_reach_the_apiserver() {
    // A port nothing listens on: bind one, note it, release it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let yaml = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: gone\n  cluster:\n    server: https://127.0.0.1:{port}\n    insecure-skip-tls-verify: true\nusers:\n- name: gone\n  user:\n    token: t\ncontexts:\n- name: gone\n  context:\n    cluster: gone\n    user: gone\ncurrent-context: gone\n"
    );
    std::fs::write(&kubeconfig, yaml).unwrap();
    let out = check(&kubeconfig, &["--request-timeout=5s"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("cannot list nodes: cannot reach the apiserver"), "{stderr}");
    assert!(stderr.contains("Connection refused"), "{stderr}");

    // Asking for probes changes nothing about an unreachable cluster: still exit 2, naming it.
    let probe = check(&kubeconfig, &["--probe", "--request-timeout=5s"]).await;
    assert_eq!(probe.status.code(), Some(2), "{}", describe(&probe));
    assert!(text(&probe.stderr).contains("cannot reach the apiserver"), "{}", describe(&probe));

    let missing = check(&dir.path().join("no-such-kubeconfig"), &[]).await;
    assert_eq!(missing.status.code(), Some(2), "{}", describe(&missing));
    assert!(text(&missing.stderr).contains("--kubeconfig"), "{}", describe(&missing));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_probe_reaches_every_kubelet_and_shows_a_dead_one_unreachable() {
    let lab = Lab::start(FleetOptions { kubelet_endpoints: true, ..fast_fleet(3, "prb-") }).await;
    let kubeconfig = lab.cp.kubeconfig_path().to_path_buf();
    lab.fleet.set_fault("prb-0002", Fault::Dead).unwrap();

    // tcp: a handshake with each kubelet endpoint the Node advertises; the dead node refuses.
    let out = eventually("check --probe=tcp sees prb-0002's kubelet unreachable", Duration::from_secs(30), || {
        let kubeconfig = kubeconfig.clone();
        async move {
            let out = check(&kubeconfig, &[FAST_CHECK, &["--probe=tcp", "--probe-timeout=3s", "-o", "json"]].concat()).await;
            let report = json(&out);
            // No connection at all: unreachable, not an unhealthy answer.
            (node_json(&report, "prb-0002")["probe"]["result"] == "unreachable").then_some(report)
        }
    })
    .await;
    for healthy in ["prb-0000", "prb-0001"] {
        assert_eq!(node_json(&out, healthy)["probe"]["result"], "ok", "{out}");
    }

    // kubelet-healthz from a terminal has no token file and no kubelet CA: it says it falls back
    // to tcp rather than sending credentials anywhere, and still probes.
    let fallback = check(&kubeconfig, &[FAST_CHECK, &["--probe=kubelet-healthz", "--probe-timeout=3s"]].concat()).await;
    assert!(text(&fallback.stderr).contains("never sends its token to a kubelet whose certificate it cannot verify"), "{}", describe(&fallback));
    assert_eq!(row(&text(&fallback.stdout), "prb-0000")[6], "ok", "{}", describe(&fallback));
    assert_eq!(row(&text(&fallback.stdout), "prb-0002")[6], "unreachable", "{}", describe(&fallback));
    assert!(lab.fleet.kubelet_requests("prb-0000").iter().all(|r| r.authorization.is_none()), "no token reached a kubelet from check");
}

#[tokio::test]
async fn kubectl_plugin_link_behaves_like_check() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("kubectl-pulsecheck");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_pulsecheck"), &plugin).unwrap();
    let run = tokio::process::Command::new(&plugin).arg("--help").output();
    let out = tokio::time::timeout(Duration::from_secs(30), run).await.unwrap().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let help = text(&out.stdout);
    assert!(help.contains("Usage: kubectl-pulsecheck check [OPTIONS]"), "{help}");
    assert!(help.contains("--observe <DURATION>"), "{help}");
}
