//! The fleet the decision-core benchmarks judge (`benches/evaluate.rs`, `benches/tick.rs`).

use k8s_openapi::jiff::Timestamp;
use pulsecheck::{
    facts::{FleetFacts, Scope, SlimNode},
    verdict::Thresholds,
};

/// The bench's clock: `secs` after a fixed instant.
pub fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).expect("valid")
}

/// The instant the benchmarks judge the fleet at.
pub const NOW: i64 = 1500;

/// The name of node `i` of the bench fleet.
pub fn name(i: usize) -> String {
    format!("node-{i:06}")
}

/// Node `i` of the bench fleet as the apiserver serves it, its Ready heartbeat at `heartbeat`.
fn node_text(i: usize, heartbeat: &str) -> String {
    let name = name(i);
    let os = if i % 100 == 7 { "Unknown" } else { "Ubuntu 24.04.1 LTS" };
    let problem = if i % 250 == 3 { r#",{"type":"ReadonlyFilesystem","status":"True","reason":"FilesystemIsReadOnly"}"# } else { "" };
    format!(
        r#"{{"metadata":{{"name":"{name}","uid":"u{i}","labels":{{"topology.kubernetes.io/zone":"zone-{}"}}}},
           "spec":{{}},
           "status":{{"conditions":[{{"type":"Ready","status":"True","reason":"KubeletReady","lastHeartbeatTime":"{heartbeat}"}}{problem}],
                      "nodeInfo":{{"osImage":"{os}","kubeletVersion":"v1.36.3"}},
                      "addresses":[{{"type":"InternalIP","address":"10.0.{}.{}"}}],
                      "daemonEndpoints":{{"kubeletEndpoint":{{"Port":10250}}}}}}}}"#,
        i % 3,
        i / 250 % 250,
        i % 250
    )
}

/// Zombies' and dead nodes' status stopped at 0; everyone else's was refreshed since (and goes
/// on being refreshed).
pub fn refreshed(i: usize) -> bool {
    i % 100 != 13 && i % 200 != 17
}

/// Node `i` as the bench fleet last saw it (what a write to it starts from).
pub fn latest_node(i: usize) -> serde_json::Value {
    let heartbeat = if refreshed(i) { at(NOW - 100).to_string() } else { "2027-01-15T08:00:00Z".to_string() };
    serde_json::from_str(&node_text(i, &heartbeat)).expect("valid node json")
}

/// A fleet of `n` nodes observed for a while: most healthy, 1 % zombies, 1 % with osImage
/// "Unknown", 0.5 % dead, a few with problem conditions and probe records.
pub fn fleet(n: usize) -> FleetFacts {
    let scope = scope();
    let mut facts = FleetFacts::default();
    for i in 0..n {
        let name = name(i);
        let node: SlimNode = serde_json::from_str(&node_text(i, "2027-01-15T08:00:00Z")).expect("valid node json");
        facts.apply_node(&node, &scope, at(0));
        // Zombies' and dead nodes' status stopped at 0, longer ago than the status threshold of a
        // node seen reporting once (twice --status-stale-after); everyone else's was refreshed since.
        if refreshed(i) {
            let refreshed: SlimNode = serde_json::from_value(latest_node(i)).expect("valid node json");
            facts.apply_node(&refreshed, &scope, at(NOW - 100));
        }
        // Dead nodes stopped renewing at 0; everyone else was seen renewing, last 10 s before NOW.
        if i % 200 == 17 {
            facts.apply_lease_renewal(&name, Some(at(0)), at(0));
        } else {
            facts.apply_lease_renewal(&name, Some(at(NOW - 20)), at(NOW - 20));
            facts.apply_lease_renewal(&name, Some(at(NOW - 10)), at(NOW - 10));
        }
        if i % 10 == 0 {
            facts.record_probe(&name, pulsecheck::facts::ProbeOutcome::Success, at(NOW - 20), Thresholds::default().probe_result_ttl);
        }
    }
    facts
}

/// The scope the bench fleet is seen with.
pub fn scope() -> Scope {
    Scope { taint_key: "pulsecheck.dev/zombie".into(), problem_conditions: vec!["ReadonlyFilesystem".into()], ..Default::default() }
}
