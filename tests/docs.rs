//! The generated references in docs/ stay in step with the code: every flag of `pulsecheck run`
//! (with its environment variable and default) is in docs/configuration.md, and every metric
//! family is in docs/metrics.md.

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
