//! The binary as an operator meets it: help, bad input (exit 2, the flag named), and a clean
//! SIGTERM shutdown of `pulsecheck run` against a real apiserver.

mod common;

use std::{process::Command, time::Duration};

use common::*;

fn pulsecheck(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pulsecheck")).args(args).output().expect("pulsecheck runs")
}

/// The subcommands `--help` lists under "Commands:".
fn listed_subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|s| s != "help")
        .collect()
}

#[test]
fn help_lists_the_product_subcommands_only() {
    let out = pulsecheck(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    // The lab and the demo are `pulsecheck-lab`'s: the shipped binary cannot fake a fleet.
    assert_eq!(listed_subcommands(&text), ["run", "check", "cleanup"], "{text}");
}

#[test]
fn unknown_flag_or_subcommand_exits_2_and_says_which() {
    let out = pulsecheck(&["run", "--frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--frobnicate"));
    let out = pulsecheck(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("frobnicate"));
}

#[test]
fn contradictory_thresholds_exit_2_naming_both_flags() {
    let out = pulsecheck(&["run", "--lease-grace=20m", "--status-stale-after=10m"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--lease-grace") && err.contains("--status-stale-after"), "{err}");
}

#[test]
fn bad_values_exit_2_naming_the_flag() {
    for (flag, value) in [("--max-unhealthy", "150"), ("--recover-after", "0s"), ("--taint-effect", "Sometimes"), ("--probe-interval", "soon")] {
        let arg = format!("{flag}={value}");
        let out = pulsecheck(&["run", &arg]);
        assert_eq!(out.status.code(), Some(2), "{arg}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(flag), "{arg}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn unreadable_kubeconfig_exits_2_naming_the_file() {
    let out = pulsecheck(&["run", "--kubeconfig=/nonexistent/kubeconfig", "--admin-addr=127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/kubeconfig"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_shuts_down_cleanly_on_sigterm() {
    let lab = Lab::start(fast_fleet(2, "sig-")).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let admin = format!("--admin-addr=127.0.0.1:{port}");
    let kubeconfig = format!("--kubeconfig={}", lab.cp.kubeconfig_path().display());
    let mut args: Vec<&str> = vec!["run", &kubeconfig, &admin];
    args.extend(FAST.iter().filter(|f| !f.starts_with("--admin-addr")));
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pulsecheck")).args(&args).kill_on_drop(true).spawn().unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    eventually("ready", Duration::from_secs(30), || async move {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(_) => (http_get(addr, "/readyz").await.0 == 200).then_some(()),
            Err(_) => None,
        }
    })
    .await;
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.expect("exits within 10 s").unwrap();
    assert_eq!(status.code(), Some(0));
    lab.stop().await;
}

#[test]
fn the_fast_flags_and_the_fast_settings_are_the_same_controller() {
    use clap::Parser;
    let argv = ["pulsecheck", "run"].into_iter().chain(FAST.iter().copied());
    let pulsecheck::cli::Command::Run(args) = pulsecheck::cli::Cli::try_parse_from(argv).expect("FAST parses").command else { panic!("not run") };
    let parsed = pulsecheck::config::Settings::from_args(&args).expect("FAST is valid");
    let written = fast_settings();
    assert_eq!(parsed.thresholds, written.thresholds);
    assert_eq!(parsed.guard, written.guard);
    assert_eq!(parsed.actions, written.actions);
    assert_eq!(
        (parsed.evaluation_interval, parsed.settle_after_blindness, parsed.request_timeout),
        (written.evaluation_interval, written.settle_after_blindness, written.request_timeout)
    );
    assert_eq!((parsed.probe.mode, parsed.leader.enabled, parsed.admin_addr), (written.probe.mode, written.leader.enabled, written.admin_addr));
    assert_eq!(parsed.per_node_metrics, written.per_node_metrics);
}
