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

/// A validating admission webhook that holds every `nodes/status` write of pulsecheck's field
/// manager for `delay` before allowing it — a slow policy engine in front of the writes that
/// downstream tools rely on — and lets every other write through at once (the simulated fleet
/// posts its statuses through the same apiserver). Counts the writes it held.
struct SlowWebhook {
    held: Arc<Mutex<usize>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for SlowWebhook {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl SlowWebhook {
    async fn register(lab: &Lab, delay: Duration) -> SlowWebhook {
        use http_body_util::{BodyExt, Full};
        use k8s_openapi::{
            ByteString,
            api::admissionregistration::v1::{RuleWithOperations, ValidatingWebhook, ValidatingWebhookConfiguration, WebhookClientConfig},
        };

        let ip: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let ca = pulsecheck_lab::certs::CertificateAuthority::new("slow-webhook-ca").unwrap();
        let acceptor = tls_acceptor(&ca, "slow-webhook", ip);
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let held = Arc::new(Mutex::new(0usize));
        let counter = held.clone();
        let server = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, counter) = (acceptor.clone(), counter.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let counter = counter.clone();
                        async move {
                            let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let review: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                            let request = &review["request"];
                            if request["options"]["fieldManager"] == "pulsecheck" {
                                *counter.lock().unwrap() += 1;
                                tokio::time::sleep(delay).await;
                            }
                            let answer = serde_json::json!({
                                "apiVersion": "admission.k8s.io/v1",
                                "kind": "AdmissionReview",
                                "response": {"uid": request["uid"], "allowed": true},
                            });
                            hyper::Response::builder().header("content-type", "application/json").body(Full::new(bytes::Bytes::from(answer.to_string())))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(tls), service).await;
                });
            }
        });
        let webhook = ValidatingWebhookConfiguration {
            metadata: kube::api::ObjectMeta { name: Some("slow-node-status".into()), ..Default::default() },
            webhooks: Some(vec![ValidatingWebhook {
                name: "slow-node-status.lab.pulsecheck.dev".into(),
                client_config: WebhookClientConfig {
                    url: Some(format!("https://{addr}/validate")),
                    ca_bundle: Some(ByteString(ca.cert_pem().into_bytes())),
                    ..Default::default()
                },
                rules: Some(vec![RuleWithOperations {
                    api_groups: Some(vec![String::new()]),
                    api_versions: Some(vec!["v1".into()]),
                    operations: Some(vec!["UPDATE".into()]),
                    resources: Some(vec!["nodes/status".into()]),
                    scope: Some("Cluster".into()),
                }]),
                failure_policy: Some("Ignore".into()),
                side_effects: "None".into(),
                admission_review_versions: vec!["v1".into()],
                timeout_seconds: Some(10),
                ..Default::default()
            }]),
        };
        Api::<ValidatingWebhookConfiguration>::all(lab.client()).create(&PostParams::default(), &webhook).await.expect("create the webhook");
        SlowWebhook { held, server }
    }

    fn held(&self) -> usize {
        *self.held.lock().unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn condition_writes_a_slow_webhook_holds_never_hold_back_a_taint_and_are_cut_off_at_the_tick_s_budget() {
    // Each condition write of pulsecheck's takes 3 s (a slow admission webhook); a tick has
    // 500 ms for its writes (--evaluation-interval). Two zombies among ten nodes at once (the
    // guard's budget; a third would open its circuit): both are tainted first, and both need
    // their condition, each write taking six ticks.
    let lab = Lab::start(fast_fleet(10, "slow-")).await;
    let webhook = SlowWebhook::register(&lab, Duration::from_secs(3)).await;
    let running = controller(lab.client(), |_| {}).await;
    wait_evaluations(&running, 3, Duration::from_secs(30)).await;
    let zombies = ["slow-0001", "slow-0007"];
    for zombie in zombies {
        lab.fleet.set_fault(zombie, Fault::Zombie).unwrap();
    }
    let admin = lab.client();
    // Remediations go first in every tick: the first taint lands as soon as the evidence allows,
    // however long the condition writes behind it take.
    eventually("a zombie tainted", STALE_AFTER + Duration::from_secs(15), || {
        let admin = admin.clone();
        async move {
            for zombie in zombies {
                if has_our_taint(&get_node(&admin, zombie).await) {
                    return Some(());
                }
            }
            None
        }
    })
    .await;
    // Every zombie's condition is written in the end, a few ticks apart, each tick giving up its
    // writes once its budget is spent (counted as `deadline`) rather than running them all.
    eventually("every zombie's condition written", Duration::from_secs(60), || {
        let admin = admin.clone();
        async move {
            for zombie in zombies {
                our_condition(&get_node(&admin, zombie).await)?;
            }
            Some(())
        }
    })
    .await;
    assert!(webhook.held() >= zombies.len(), "the webhook held {} writes", webhook.held());
    let text = running.metrics.render();
    assert!(metric(&text, r#"pulsecheck_writes_total{kind="condition",result="deadline"}"#).is_some_and(|n| n >= 1.0), "{text}");
    assert!(metric(&text, r#"pulsecheck_writes_total{kind="remediation",result="success"}"#).is_some_and(|n| n >= 1.0), "{text}");
    let tainted = {
        let mut n = 0;
        for zombie in zombies {
            n += usize::from(has_our_taint(&get_node(&admin, zombie).await));
        }
        n
    };
    assert_eq!(tainted, zombies.len(), "both zombies tainted: the guard allows two of ten");
    running.stop().await;
    Api::<k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration>::all(lab.client())
        .delete("slow-node-status", &Default::default())
        .await
        .expect("delete the webhook");
    lab.stop().await;
}
