//! How `check` prints its report: an aligned table for a person, JSON or YAML for a script.
//!
//! It exists apart from the judging so that every format shows the same report: the table, JSON
//! and YAML are three views of one [`Report`], and none of them decides or computes anything a
//! verdict depends on. The table marks what a person could misread — an age that is only a lower
//! bound (`>=`), a timestamp in the future (a negative age) — and JSON/YAML carry ages in seconds.

use clap::ValueEnum;

use super::report::{Report, compact};

/// How `check` prints its report (`--output`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns, worst node first.
    Table,
    /// One JSON document.
    Json,
    /// One YAML document.
    Yaml,
}

/// A report that cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The report could not be serialized.
    #[error("cannot write the {format} report: {detail}")]
    Output {
        /// "json" or "yaml".
        format: &'static str,
        /// Why.
        detail: String,
    },
}

/// The report in the requested format.
pub fn render(report: &Report, format: OutputFormat) -> Result<String, Error> {
    match format {
        OutputFormat::Table => Ok(render_table(report)),
        OutputFormat::Json => serde_json::to_string_pretty(report).map(|s| s + "\n").map_err(|e| Error::Output { format: "json", detail: e.to_string() }),
        OutputFormat::Yaml => serde_yaml_ng::to_string(report).map_err(|e| Error::Output { format: "yaml", detail: e.to_string() }),
    }
}

/// The table: NODE, READY, LEASE (age), STATUS (age), STALE-AFTER (the node's status threshold
/// and its source), OS-IMAGE, PROBE, VERDICT, WHY.
pub fn render_table(report: &Report) -> String {
    if report.nodes.is_empty() {
        return "No nodes.\n".to_string();
    }
    let header = ["NODE", "READY", "LEASE", "STATUS", "STALE-AFTER", "OS-IMAGE", "PROBE", "VERDICT", "WHY"].map(String::from);
    let rows: Vec<[String; 9]> = report
        .nodes
        .iter()
        .map(|n| {
            [
                n.name.clone(),
                n.ready.clone(),
                n.lease_age_seconds.map_or("-".to_string(), |s| age_cell(s, n.lease_age_is_lower_bound)),
                age_cell(n.status_age_seconds, n.status_age_is_lower_bound),
                format!("{} ({})", compact(i64::try_from(n.status_threshold_seconds).unwrap_or(i64::MAX)), n.status_threshold_source.as_str()),
                if n.os_image.is_empty() { "-".to_string() } else { n.os_image.clone() },
                n.probe.as_ref().map_or("-".to_string(), |p| p.result.to_string()),
                n.verdict.to_string(),
                n.why.clone(),
            ]
        })
        .collect();
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(widths[i] - cell.chars().count() + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// An age cell: `4s`, `11m2s`, `≥1m` for a lower bound, `-59m58s` for a timestamp in the future.
fn age_cell(seconds: i64, lower_bound: bool) -> String {
    if lower_bound { format!(">={}", compact(seconds)) } else { compact(seconds) }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        check::report::{Clock, build_report, facts_from_snapshot},
        facts::{FleetFacts, Scope, fixtures::*},
        names,
        verdict::Thresholds,
    };

    fn scope() -> Scope {
        Scope { taint_key: names::TAINT_KEY.into(), ..Default::default() }
    }

    #[test]
    fn table_is_aligned_worst_first_with_marked_lower_bounds() {
        let mut facts = FleetFacts::default();
        facts.apply_node(&node("b-ok").ready_at(t(0)).build(), &scope(), t(0));
        facts.apply_node(&node("b-ok").ready_at(t(55)).build(), &scope(), t(55));
        facts.apply_lease(&lease("b-ok", t(49)), t(50));
        facts.apply_lease(&lease("b-ok", t(59)), t(59));
        facts.apply_node(&node("a-zombie").ready_at(t(0)).taint(names::TAINT_KEY).build(), &scope(), t(0));
        facts.apply_lease(&lease("a-zombie", t(49)), t(50));
        facts.apply_lease(&lease("a-zombie", t(59)), t(59));
        let th = Thresholds { status_stale_after: Duration::from_secs(30), lease_grace: Duration::from_secs(5), ..Thresholds::default() };
        let report = build_report(t(60), &facts, &th, Clock::Observed, Some(t(1)));
        let table = render_table(&report);
        let lines: Vec<&str> = table.lines().collect();
        // Watched for a minute: the flag (30 s) is still doubled, two intervals not yet seen; b-ok's
        // one interval of 55 s, doubled, is longer still.
        assert_eq!(lines[0], "NODE      READY  LEASE  STATUS  STALE-AFTER          OS-IMAGE            PROBE  VERDICT  WHY");
        assert_eq!(lines[1], "a-zombie  True   1s     >=1m0s  1m0s (flag-doubled)  Ubuntu 24.04.1 LTS  -      zombie   NodeStatus not refreshed for 1m");
        assert_eq!(lines[2], "b-ok      True   1s     5s      1m50s (observed)     Ubuntu 24.04.1 LTS  -      healthy");
        assert!(report.nodes[0].tainted);
        assert_eq!(render_table(&build_report(t(0), &FleetFacts::default(), &th, Clock::Observed, None)), "No nodes.\n");
    }

    #[test]
    fn json_and_yaml_carry_verdicts_evidence_and_ages() {
        let nodes = vec![node("z").ready_at(t(0)).os_image("Unknown").build()];
        let leases = vec![lease("z", t(999))];
        let report = build_report(t(1000), &facts_from_snapshot(&nodes, &leases, &scope(), t(1000)), &Thresholds::default(), Clock::NodeTimestamps, None);
        let json: serde_json::Value = serde_json::from_str(&render(&report, OutputFormat::Json).unwrap()).unwrap();
        assert_eq!(json["clock"], "node-timestamps");
        assert_eq!(json["summary"]["zombie"], 1);
        let z = &json["nodes"][0];
        assert_eq!((z["name"].as_str(), z["verdict"].as_str(), z["status_age_seconds"].as_i64()), (Some("z"), Some("zombie"), Some(1000)));
        assert_eq!(z["evidence"][0]["kind"], "status_stale");
        assert_eq!(z["evidence"][1], serde_json::json!({"kind": "os_image_unknown", "for_seconds": 1000, "turned": false}));
        let yaml: serde_json::Value = serde_yaml_ng::from_str(&render(&report, OutputFormat::Yaml).unwrap()).unwrap();
        assert_eq!(yaml["nodes"][0]["verdict"], "zombie");
    }
}
