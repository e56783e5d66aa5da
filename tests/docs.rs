//! The generated references in docs/ and the chart stay in step with the code: every flag of
//! `pulsecheck run` (with its environment variable and default) is in docs/configuration.md and
//! is a value of the chart with the same default, and every metric family is in docs/metrics.md.
//! The flags are read from the command line itself (clap), wherever the module that owns a
//! flag group defines it.

use clap::CommandFactory;
use pulsecheck::cli::Cli;

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn configuration_doc_lists_every_run_flag_with_env_and_default() {
    let doc = read("docs/configuration.md");
    let cli = Cli::command();
    let run = cli.find_subcommand("run").expect("run subcommand");
    let mut missing = Vec::new();
    for arg in run.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if matches!(long, "help" | "version") {
            continue;
        }
        let env = arg.get_env().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default();
        let defaults: Vec<String> = arg.get_default_values().iter().map(|d| d.to_string_lossy().into_owned()).collect();
        let default = if defaults.is_empty() {
            "—".to_string()
        } else if defaults == [""] {
            "\"\"".to_string()
        } else {
            defaults.join(",")
        };
        let row = format!("| `--{long}` | `{env}` | `{default}` |");
        if !doc.contains(&row) {
            missing.push(row);
        }
    }
    assert!(missing.is_empty(), "docs/configuration.md lacks or misstates these flags:\n{}", missing.join("\n"));
}

#[test]
fn every_flag_has_an_environment_variable() {
    fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            if let Some(long) = arg.get_long()
                && !matches!(long, "help" | "version")
                && arg.get_env().is_none()
            {
                missing.push(format!("{path} --{long}"));
            }
        }
        for sub in cmd.get_subcommands() {
            walk(sub, &format!("{path} {}", sub.get_name()), missing);
        }
    }
    let mut missing = Vec::new();
    walk(&Cli::command(), "pulsecheck", &mut missing);
    assert!(missing.is_empty(), "flags without an environment variable: {missing:?}");
}

#[test]
fn metrics_doc_lists_every_metric_family() {
    let doc = read("docs/metrics.md");
    let missing: Vec<&&str> = pulsecheck::metrics::METRIC_NAMES.iter().filter(|m| !doc.contains(&format!("| {m} |"))).collect();
    assert!(missing.is_empty(), "docs/metrics.md lacks {missing:?}");
}

/// `--some-flag` as the chart spells its value: `someFlag`.
fn camel(flag: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in flag.chars() {
        if c == '-' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// A chart value as the flag would be written (`[a, b]` → `a,b`, `20.0` → `20`).
fn flag_text(v: &serde_yaml_ng::Value) -> Option<String> {
    use serde_yaml_ng::Value;
    match v {
        Value::Null => None,
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.as_f64().filter(|f| f.fract() == 0.0).map_or_else(|| n.to_string(), |f| format!("{}", f as i64))),
        Value::String(s) => Some(s.clone()),
        Value::Sequence(items) => Some(items.iter().filter_map(flag_text).collect::<Vec<_>>().join(",")),
        other => Some(format!("{other:?}")),
    }
}

#[test]
fn chart_values_are_the_flags_of_run_with_the_same_defaults() {
    let cli = Cli::command();
    let run = cli.find_subcommand("run").expect("run subcommand");
    let flags: Vec<(String, Option<String>)> = run
        .get_arguments()
        .filter_map(|a| a.get_long().filter(|l| !matches!(*l, "help" | "version")).map(|l| (a, l.to_string())))
        .map(|(a, long)| {
            let defaults: Vec<String> = a.get_default_values().iter().map(|d| d.to_string_lossy().into_owned()).collect();
            (long, (!defaults.is_empty()).then(|| defaults.join(",")))
        })
        .collect();
    let values: serde_yaml_ng::Value = serde_yaml_ng::from_str(&read("charts/pulsecheck/values.yaml")).expect("values.yaml parses");
    let config = values.get("config").and_then(|c| c.as_mapping()).expect("values.yaml has a config map");
    let mut problems = Vec::new();
    for (flag, default) in &flags {
        let key = camel(flag);
        match config.get(key.as_str()) {
            None => problems.push(format!("config.{key} missing (flag --{flag})")),
            Some(v) => {
                let chart = flag_text(v).filter(|s| !s.is_empty() || default.is_some());
                if chart != *default {
                    problems.push(format!("config.{key}: chart default {chart:?} but --{flag} defaults to {default:?}"));
                }
            }
        }
    }
    // The chart passes only what differs from pulsecheck's defaults, which it reads from this file.
    let defaults: serde_yaml_ng::Value = serde_yaml_ng::from_str(&read("charts/pulsecheck/files/run-defaults.yaml")).expect("run-defaults.yaml parses");
    let defaults = defaults.as_mapping().expect("run-defaults.yaml is a map");
    for (flag, default) in &flags {
        let key = camel(flag);
        let listed = defaults.get(key.as_str()).and_then(|v| v.as_str()).map(str::to_owned);
        if listed != *default {
            problems.push(format!("files/run-defaults.yaml: {key} is {listed:?} but --{flag} defaults to {default:?}"));
        }
    }
    for key in defaults.keys().filter_map(|k| k.as_str()) {
        if !flags.iter().any(|(f, _)| camel(f) == key) {
            problems.push(format!("files/run-defaults.yaml: {key} is not a flag of `pulsecheck run`"));
        }
    }
    let keys: Vec<String> = flags.iter().map(|(f, _)| camel(f)).collect();
    for key in config.keys().filter_map(|k| k.as_str()) {
        if !keys.iter().any(|k| k == key) {
            problems.push(format!("config.{key} is not a flag of `pulsecheck run`"));
        }
    }
    let helpers = read("charts/pulsecheck/templates/_helpers.tpl");
    let listed: Vec<String> = helpers
        .split("define \"pulsecheck.flags\" -}}\n")
        .nth(1)
        .and_then(|rest| rest.split("\n{{- end").next())
        .map(|body| body.lines().map(str::to_string).collect())
        .unwrap_or_default();
    let expected: Vec<String> = flags.iter().map(|(f, _)| format!("{f}={}", camel(f))).collect();
    let mut sorted_listed = listed.clone();
    sorted_listed.sort();
    let mut sorted_expected = expected.clone();
    sorted_expected.sort();
    if sorted_listed != sorted_expected {
        problems.push(format!("_helpers.tpl pulsecheck.flags differs from `pulsecheck run`: listed {listed:?}, flags {expected:?}"));
    }
    assert!(problems.is_empty(), "charts/pulsecheck disagrees with `pulsecheck run`:\n{}", problems.join("\n"));
}

/// The product's modules (`src/*.rs`, `src/*/mod.rs`) and the modules each one imports through
/// `crate::…` outside comments and unit tests.
fn module_imports() -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    use std::collections::{BTreeMap, BTreeSet};
    let mut files = Vec::new();
    for entry in std::fs::read_dir("src").expect("src/") {
        let path = entry.expect("src entry").path();
        if path.is_dir() {
            for inner in std::fs::read_dir(&path).expect("module folder") {
                files.push((path.file_name().unwrap().to_string_lossy().into_owned(), inner.expect("entry").path()));
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push((path.file_stem().unwrap().to_string_lossy().into_owned(), path));
        }
    }
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, path) in files {
        if matches!(module.as_str(), "lib" | "main") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        let code: String =
            code.lines().filter(|l| !l.trim_start().starts_with("//")).map(|l| l.split("//").next().unwrap_or_default()).collect::<Vec<_>>().join("\n");
        let deps = graph.entry(module.clone()).or_default();
        // `crate::name` anywhere, and the first segment of each item in `use crate::{…}`.
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            if let Some(block) = rest.strip_prefix('{') {
                let mut depth = 0;
                let mut item = String::new();
                for c in block.chars() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            deps.insert(item.trim().split(|c: char| !c.is_alphanumeric() && c != '_').next().unwrap_or_default().to_string());
                            item.clear();
                            continue;
                        }
                        _ => {}
                    }
                    item.push(c);
                }
                deps.insert(item.trim().split(|c: char| !c.is_alphanumeric() && c != '_').next().unwrap_or_default().to_string());
            } else {
                deps.insert(rest.split(|c: char| !c.is_alphanumeric() && c != '_').next().unwrap_or_default().to_string());
            }
        }
        deps.remove(&module);
    }
    let known: BTreeSet<String> = graph.keys().cloned().collect();
    for deps in graph.values_mut() {
        deps.retain(|d| known.contains(d));
    }
    graph
}

#[test]
fn module_imports_have_no_cycle_and_the_core_imports_no_edge() {
    let graph = module_imports();
    assert!(graph.len() > 10, "modules not found: {graph:?}");
    // Depth-first search for a back edge.
    fn visit<'a>(
        n: &'a str,
        graph: &'a std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
        state: &mut std::collections::BTreeMap<&'a str, bool>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        state.insert(n, false);
        path.push(n);
        for d in &graph[n] {
            match state.get(d.as_str()) {
                Some(false) => return Some(path.iter().map(|s| s.to_string()).chain([d.clone()]).collect()),
                Some(true) => {}
                None => {
                    if let Some(cycle) = visit(d, graph, state, path) {
                        return Some(cycle);
                    }
                }
            }
        }
        path.pop();
        state.insert(n, true);
        None
    }
    let mut state = std::collections::BTreeMap::new();
    for n in graph.keys() {
        if !state.contains_key(n.as_str())
            && let Some(cycle) = visit(n, &graph, &mut state, &mut Vec::new())
        {
            panic!("import cycle: {}", cycle.join(" -> "));
        }
    }
    // The pure core and the leaves import nothing above them.
    for (module, allowed) in [
        ("parse", &[][..]),
        ("cadence", &[]),
        ("agent", &[]),
        ("facts", &["agent", "cadence"]),
        ("verdict", &["agent", "cadence", "facts", "parse"]),
        ("guard", &["cadence", "facts", "parse", "verdict"]),
    ] {
        let extra: Vec<&String> = graph[module].iter().filter(|d| !allowed.contains(&d.as_str())).collect();
        assert!(extra.is_empty(), "{module} imports {extra:?}, above it");
    }
    assert!(graph["cli"].iter().all(|d| ["check", "cleanup", "config"].contains(&d.as_str())), "cli only assembles: {:?}", graph["cli"]);
}
