//! Writes that keep failing, against the real apiserver: an identity that may taint Nodes but
//! not write their status (`nodes/status` patch missing — a chart edited by hand, an admission
//! webhook refusing it). Every condition write fails; the taint must not wait for them, and the
//! failures must back off instead of repeating on every tick.

mod common;

use std::{
    io::Write,
    sync::{Arc, Mutex},
    time::Duration,
};

use common::*;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use kube::{Api, api::PostParams};
use pulsecheck_lab::fleet::Fault;

/// Everything the controller logs, for counting what it tried.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn count(&self, needle: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap()).matches(needle).count()
    }
}

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    let strings = |s: &[&str]| Some(s.iter().map(|s| s.to_string()).collect());
    PolicyRule { api_groups: strings(groups), resources: strings(resources), verbs: verbs.iter().map(|s| s.to_string()).collect(), ..Default::default() }
}

/// A client of a ServiceAccount that may read and patch Nodes, read Leases and publish Events,
/// but not patch `nodes/status`.
async fn without_status_writes(lab: &Lab) -> kube::Client {
    let admin = lab.client();
    let role = ClusterRole {
        metadata: kube::api::ObjectMeta { name: Some("no-status".into()), ..Default::default() },
        rules: Some(vec![
            rule(&[""], &["nodes"], &["get", "list", "watch", "patch"]),
            rule(&["coordination.k8s.io"], &["leases"], &["get", "list", "watch"]),
            rule(&["events.k8s.io", ""], &["events"], &["create", "patch"]),
        ]),
        ..Default::default()
    };
    Api::<ClusterRole>::all(admin.clone()).create(&PostParams::default(), &role).await.expect("create ClusterRole");
    let binding = ClusterRoleBinding {
        metadata: kube::api::ObjectMeta { name: Some("no-status".into()), ..Default::default() },
        role_ref: RoleRef { api_group: "rbac.authorization.k8s.io".into(), kind: "ClusterRole".into(), name: "no-status".into() },
        subjects: Some(vec![Subject { kind: "ServiceAccount".into(), name: "no-status".into(), namespace: Some("default".into()), ..Default::default() }]),
    };
    Api::<ClusterRoleBinding>::all(admin).create(&PostParams::default(), &binding).await.expect("create ClusterRoleBinding");
    let token = lab.cp.service_account_token("default", "no-status").await.expect("token");
    lab.cp.client_with_token(&token).await.expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn condition_writes_that_keep_failing_back_off_and_never_hold_back_a_taint() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let log = Captured::default();
    let writer = log.clone();
    let _ = tracing_subscriber::fmt().with_env_filter("pulsecheck=info").with_ansi(false).with_writer(move || writer.clone()).try_init();

    let lab = Lab::start(fast_fleet(4, "wr-")).await;
    let client = without_status_writes(&lab).await;
    let running = controller(client, |_| {}).await;
    wait_evaluations(&running, 3, Duration::from_secs(30)).await;
    let zombie = "wr-0002";
    lab.fleet.set_fault(zombie, Fault::Zombie).unwrap();
    let admin = lab.client();
    eventually("zombie tainted although its condition cannot be written", STALE_AFTER + Duration::from_secs(15), || {
        let admin = admin.clone();
        async move { has_our_taint(&get_node(&admin, zombie).await).then_some(()) }
    })
    .await;

    // Twenty ticks (10 s) later: a back-off of 5 s, then 10 s, allows three attempts at most.
    let failures_before = log.count("could not set the HeartbeatConsistent condition");
    wait_evaluations(&running, 20, Duration::from_secs(60)).await;
    let failures = log.count("could not set the HeartbeatConsistent condition") - failures_before;
    assert!(failures <= 3, "{failures} failed condition writes in 20 ticks: they are not backed off");
    let text = running.metrics.render();
    assert!(metric(&text, r#"pulsecheck_writes_total{kind="condition",result="error"}"#).is_some_and(|n| n >= 1.0), "{text}");
    assert!(metric(&text, r#"pulsecheck_writes_total{kind="condition",result="backoff"}"#).is_some_and(|n| n >= 1.0), "{text}");
    assert_eq!(metric(&text, r#"pulsecheck_writes_total{kind="remediation",result="success"}"#), Some(1.0), "{text}");
    running.stop().await;
    lab.stop().await;
}
