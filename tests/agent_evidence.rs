//! The node agent's reports as evidence, against a real kube-apiserver: agent Leases written
//! exactly as `pulsecheck-agent` writes them (the contract in `pulsecheck::agent`), read by the
//! controller's own watch. The agent binary itself, and the chart's DaemonSet on real nodes, are
//! proven by `agent/tests/agent.rs` and `tests/agent_real_nodes.rs`.

mod common;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use common::*;
use k8s_openapi::{
    api::{
        coordination::v1::{Lease, LeaseSpec},
        core::v1::Namespace,
    },
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{Api, api::PostParams};
use pulsecheck::agent::{self, DiskHealth, Report};
use tokio_util::sync::CancellationToken;

/// What a simulated agent says at each renewal.
#[derive(Clone, Copy)]
enum Say {
    Ok,
    /// A read of /etc/os-release that has not returned since then.
    HungSince(tokio::time::Instant),
    /// The agent is gone (its Pod OOM-killed, evicted): it stops renewing, its Lease stays.
    Gone,
}

impl Say {
    fn report(self) -> Option<Report> {
        let disk = match self {
            Say::Ok => DiskHealth::Ok,
            Say::HungSince(at) => DiskHealth::Hung { path: "/etc/os-release".into(), operation: "read".into(), for_seconds: at.elapsed().as_secs() },
            Say::Gone => return None,
        };
        Some(Report { disk, terminating: false })
    }
}

type Reports = Arc<Mutex<HashMap<String, Say>>>;

/// Agents for `nodes` in namespace `pulsecheck` renewing every 500 ms (Lease duration 2 s), each
/// saying what `reports` holds for it.
fn run_agents(client: kube::Client, nodes: Vec<String>, reports: Reports, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let leases: Api<Lease> = Api::namespaced(client, "pulsecheck");
        loop {
            for node in &nodes {
                let Some(report) = reports.lock().unwrap().get(node).and_then(|say| say.report()) else { continue };
                let name = agent::lease_name(node).unwrap();
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        labels: Some([(agent::COMPONENT_LABEL.to_string(), agent::COMPONENT.to_string())].into()),
                        annotations: Some([(agent::REPORT_ANNOTATION.to_string(), report.to_annotation())].into()),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(format!("pulsecheck-agent-{node}-pod")),
                        lease_duration_seconds: Some(2),
                        renew_time: Some(MicroTime(Timestamp::now())),
                        ..Default::default()
                    }),
                };
                match leases.get_opt(&name).await.expect("get agent Lease") {
                    Some(current) => {
                        let mut next = lease;
                        next.metadata.resource_version = current.metadata.resource_version;
                        leases.replace(&name, &PostParams::default(), &next).await.expect("renew agent Lease");
                    }
                    None => {
                        leases.create(&PostParams::default(), &lease).await.expect("create agent Lease");
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_agent_reports_its_disk_hung_is_tainted_with_the_path_while_a_silent_agent_condemns_nobody() {
    let lab = Lab::start(fast_fleet(4, "agt-")).await;
    let client = lab.client();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &Namespace { metadata: ObjectMeta { name: Some("pulsecheck".into()), ..Default::default() }, ..Default::default() })
        .await
        .expect("namespace pulsecheck");
    let nodes = lab.fleet.node_names();
    let reports: Reports = Arc::new(Mutex::new(nodes.iter().map(|n| (n.clone(), Say::Ok)).collect()));
    let stop = CancellationToken::new();
    let agents = run_agents(client.clone(), nodes.clone(), reports.clone(), stop.clone());
    // Status threshold a minute: whatever is tainted here is tainted by the agent's report.
    let running = controller(client.clone(), |s| {
        s.thresholds.status_stale_after = Duration::from_secs(60);
        s.thresholds.agent_disk_after = Duration::from_secs(3);
        s.agent_namespace = Some("pulsecheck".into());
    })
    .await;
    eventually("every agent counted ok", Duration::from_secs(20), || {
        let ok = metric(&running.metrics.render(), r#"pulsecheck_agents{report="ok"}"#) == Some(4.0);
        async move { ok.then_some(()) }
    })
    .await;
    for n in &nodes {
        wait_verdict(&running, n, "healthy", Duration::from_secs(10)).await;
    }

    let (hung, silent) = (nodes[1].clone(), nodes[2].clone());
    let started = tokio::time::Instant::now();
    reports.lock().unwrap().insert(hung.clone(), Say::HungSince(started));
    reports.lock().unwrap().insert(silent.clone(), Say::Gone);
    wait_tainted(&client, &hung, "the node whose agent reports a hung read", Duration::from_secs(3) + Duration::from_secs(10)).await;
    let took = started.elapsed();
    let events = eventually("ZombieDetected naming the path", Duration::from_secs(10), || {
        let client = client.clone();
        let hung = hung.clone();
        async move {
            let ev = events_for(&client, &hung).await;
            ev.iter().any(|(r, n)| r == "ZombieDetected" && n.contains("pulsecheck-agent: read of /etc/os-release hung")).then_some(ev)
        }
    })
    .await;
    assert!(events.iter().any(|(r, _)| r == "Tainted"), "{events:?}");
    // The kubelet keeps reporting: nothing but the agent condemned it.
    assert_eq!(metric(&running.metrics.render(), &format!(r#"pulsecheck_node_evidence{{evidence="status_stale",node="{hung}"}}"#)), None);

    // The silent agent makes its node Suspect (supporting evidence alone), never a taint.
    wait_verdict(&running, &silent, "suspect", Duration::from_secs(10)).await;
    let text = running.metrics.render();
    assert_eq!(metric(&text, &format!(r#"pulsecheck_node_evidence{{evidence="agent_silent",node="{silent}"}}"#)), Some(1.0), "{text}");
    assert_eq!(metric(&text, r#"pulsecheck_agents{report="hung"}"#), Some(1.0), "{text}");
    assert_eq!(metric(&text, r#"pulsecheck_agents{report="silent"}"#), Some(1.0), "{text}");
    wait_evaluations(&running, 6, Duration::from_secs(10)).await;
    for other in nodes.iter().filter(|n| **n != hung) {
        assert!(!has_our_taint(&get_node(&client, other).await), "{other} tainted");
    }

    // Without --agent-evidence (agent_namespace None) the same Leases are not read at all: where
    // no admission policy guards them, a forged report must not condemn a node.
    let blind = controller(client.clone(), |s| {
        s.dry_run = true;
        s.thresholds.status_stale_after = Duration::from_secs(60);
        s.thresholds.agent_disk_after = Duration::from_secs(3);
    })
    .await;
    wait_verdict(&blind, &silent, "healthy", Duration::from_secs(20)).await;
    wait_evaluations(&blind, 8, Duration::from_secs(10)).await;
    let text = blind.metrics.render();
    assert_eq!(metric(&text, &verdict_series(&hung, "healthy")), Some(1.0), "the hung report counted without --agent-evidence: {text}");
    for report in ["ok", "hung", "silent"] {
        assert_eq!(metric(&text, &format!(r#"pulsecheck_agents{{report="{report}"}}"#)), Some(0.0), "agents counted without --agent-evidence: {text}");
    }
    blind.stop().await;

    // The disk comes back: the agent says ok, and the node is released after --recover-after
    // (once its status changed under pulsecheck's eyes, as every release needs).
    reports.lock().unwrap().insert(hung.clone(), Say::Ok);
    wait_node(&client, &hung, "released once the agent says ok", Duration::from_secs(20), |n| !has_our_taint(n)).await;
    eprintln!("agent-reported hang tainted after {took:?}");

    stop.cancel();
    let _ = agents.await;
    running.stop().await;
    lab.stop().await;
}
