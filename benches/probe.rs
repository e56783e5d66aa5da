//! What kubelet probing costs at fleet scale: the real scheduler and prober against local
//! HTTPS endpoints at the rate of 5,000 nodes every 30 s (~170 probes/s).
//!
//! The endpoints (the lab's fake kubelets) run in a child process (this binary re-executed with
//! `serve`), so the CPU time and peak RSS measured here are the prober's alone. Each endpoint
//! listens on its own loopback address (127.0.X.Y) with its own certificate for that IP, signed
//! by one CA that the
//! prober verifies against (`kubelet-healthz` with `--kubelet-certificate-authority`): every
//! probe is a TCP connect, a verified TLS handshake and an HTTP/1.1 GET /healthz with a token.
//!
//! `cargo bench --bench probe` runs the full measurement (60 s); without `--bench` (as under
//! `cargo test --all-targets`) it runs a 2-second smoke version. Environment overrides:
//! `PROBE_BENCH_NODES`, `PROBE_BENCH_ENDPOINTS`, `PROBE_BENCH_SECONDS`, `PROBE_BENCH_INTERVAL_SECS`,
//! `PROBE_BENCH_CONCURRENCY`, `PROBE_BENCH_MODE` (`kubelet-healthz` or `tcp`).

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use pulsecheck::{
    facts::{KubeletEndpoint, ProbeOutcome},
    metrics::Metrics,
    probe::{ProbeMode, ProbeSettings, ProbeTarget, Prober, run_scheduler},
};
use pulsecheck_lab::{certs::CertificateAuthority, kubelet};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

struct Plan {
    nodes: usize,
    endpoints: usize,
    seconds: u64,
    interval: Duration,
    concurrency: usize,
    mode: ProbeMode,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("serve") {
        let dir = PathBuf::from(&args[2]);
        let endpoints: usize = args[3].parse().expect("endpoint count");
        serve(&dir, endpoints);
        return;
    }
    let full = args.iter().any(|a| a == "--bench");
    let mode = match std::env::var("PROBE_BENCH_MODE").as_deref() {
        Ok("tcp") => ProbeMode::Tcp,
        _ => ProbeMode::KubeletHealthz,
    };
    let plan = if full {
        Plan {
            nodes: env_or("PROBE_BENCH_NODES", 5000),
            endpoints: env_or("PROBE_BENCH_ENDPOINTS", 200),
            seconds: env_or("PROBE_BENCH_SECONDS", 60),
            interval: Duration::from_secs(env_or("PROBE_BENCH_INTERVAL_SECS", 30)),
            concurrency: env_or("PROBE_BENCH_CONCURRENCY", 32),
            mode,
        }
    } else {
        Plan { nodes: 50, endpoints: 5, seconds: 2, interval: Duration::from_secs(1), concurrency: 8, mode }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(measure(plan));
}

/// The address of endpoint `i`: 127.0.X.Y with X from 1, Y in 1..=250.
fn endpoint_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 1 + (i / 250) as u8, 1 + (i % 250) as u8))
}

async fn measure(plan: Plan) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(std::env::current_exe().expect("own path"))
        .args(["serve", &dir.path().display().to_string(), &plan.endpoints.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the endpoint process");
    let mut ready = String::new();
    BufReader::new(child.stdout.take().expect("child stdout")).read_line(&mut ready).expect("child says ready");
    assert_eq!(ready.trim(), "ready", "endpoint process did not start");
    let addresses: Vec<SocketAddr> =
        std::fs::read_to_string(dir.path().join("endpoints.txt")).expect("endpoints.txt").lines().map(|l| l.parse().expect("socket address")).collect();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "x".repeat(900)).expect("token file");

    let settings = ProbeSettings {
        mode: plan.mode,
        timeout: Duration::from_secs(5),
        interval: plan.interval,
        concurrency: plan.concurrency,
        preferred_address_types: vec!["InternalIP".into()],
        ca: Some(dir.path().join("ca.pem")).filter(|_| plan.mode == ProbeMode::KubeletHealthz),
        insecure_tls: false,
        token_file,
        configz: false,
        kubeconfig_credential: Err("the bench reads its token file".into()),
    };
    let client = kube::Client::try_from(kube::Config::new("https://127.0.0.1:9".parse().expect("url"))).expect("client");
    let prober = Prober::new(settings, client).expect("prober");
    let targets: Vec<ProbeTarget> = (0..plan.nodes)
        .map(|i| {
            let addr = addresses[i % addresses.len()];
            ProbeTarget {
                node: format!("bench-node-{i:05}"),
                endpoint: KubeletEndpoint { addresses: vec![("InternalIP".into(), addr.ip().to_string())], port: Some(addr.port()) },
                recheck_cadence: false,
            }
        })
        .collect();
    let (_targets_tx, targets_rx) = watch::channel(targets);
    let (results_tx, mut results_rx) = mpsc::channel(1024);
    let metrics = Metrics::new(pulsecheck::metrics::PerNodeMetrics::All);
    let shutdown = CancellationToken::new();

    let rss_before = status_kib("VmRSS");
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let scheduler = tokio::spawn(run_scheduler(prober, plan.interval, plan.concurrency, targets_rx, results_tx, metrics.clone(), shutdown.clone()));
    let mut outcomes: HashMap<&'static str, u64> = HashMap::new();
    let mut failures: HashMap<String, u64> = HashMap::new();
    let end = tokio::time::Instant::now() + Duration::from_secs(plan.seconds);
    while let Ok(Some(report)) = tokio::time::timeout_at(end, results_rx.recv()).await {
        let kind = match &report.outcome {
            ProbeOutcome::Success => "success",
            ProbeOutcome::Failure(why)
            | ProbeOutcome::NoAnswer(why)
            | ProbeOutcome::Unreachable(why)
            | ProbeOutcome::NoHandshake(why)
            | ProbeOutcome::Inconclusive(why)
            | ProbeOutcome::Untrusted(why) => {
                *failures.entry(why.clone()).or_default() += 1;
                "failure"
            }
            ProbeOutcome::Timeout => "timeout",
            ProbeOutcome::Unauthorized(_) => "unauthorized",
            ProbeOutcome::NotProbed(_) => "not_probed",
        };
        *outcomes.entry(kind).or_default() += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    shutdown.cancel();
    let _ = scheduler.await;
    let _ = child.kill();
    let _ = child.wait();

    let probes: u64 = outcomes.values().sum();
    let text = metrics.render();
    let metric = |name: &str| text.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse::<f64>().ok()).unwrap_or(0.0);
    let mean_ms = 1000.0 * metric("pulsecheck_probe_duration_seconds_sum ") / metric("pulsecheck_probe_duration_seconds_count ").max(1.0);
    println!("kubelet prober benchmark ({})", if plan.seconds >= 30 { "full" } else { "smoke" });
    println!("  mode                 {:?}, verified TLS: {}", plan.mode, plan.mode == ProbeMode::KubeletHealthz);
    println!("  nodes / endpoints    {} / {} (distinct 127.0.x.y addresses)", plan.nodes, addresses.len());
    println!("  interval / conc.     {:?} / {}", plan.interval, plan.concurrency);
    println!("  target rate          {:.1} probes/s", plan.nodes as f64 / plan.interval.as_secs_f64());
    println!("  measured for         {elapsed:.1} s");
    println!("  probes               {probes} ({:.1}/s) {outcomes:?}", probes as f64 / elapsed);
    println!("  mean probe latency   {mean_ms:.2} ms");
    println!("  CPU (prober process) {cpu:.2} s = {:.1} % of one core, {:.0} µs per probe", 100.0 * cpu / elapsed, 1e6 * cpu / probes.max(1) as f64);
    println!("  RSS before / peak    {:.1} MiB / {:.1} MiB (VmHWM)", rss_before as f64 / 1024.0, status_kib("VmHWM") as f64 / 1024.0);
    for (why, n) in failures.iter().take(5) {
        println!("  failure x{n}: {why}");
    }
    assert_eq!(outcomes.get("success").copied().unwrap_or(0), probes, "every probe of a healthy endpoint succeeds");
    assert!(probes > 0, "probes ran");
}

/// User + system CPU seconds of this process, from /proc/self/stat (all threads).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: f64 = fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    ticks / clock_ticks_per_second()
}

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf").arg("CLK_TCK").output().ok().and_then(|o| String::from_utf8(o.stdout).ok()).and_then(|s| s.trim().parse().ok()).unwrap_or(100.0)
}

/// A `Vm*` line of /proc/self/status, in KiB.
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .expect("/proc/self/status")
        .lines()
        .find_map(|l| l.strip_prefix(field).and_then(|v| v.trim_start_matches(':').trim().trim_end_matches("kB").trim().parse().ok()))
        .unwrap_or(0)
}

// -------------------------------------------------------------------------------------------
// The endpoint process

/// Serves `endpoints` healthy lab kubelets (`pulsecheck_lab::kubelet`); writes `ca.pem` and
/// `endpoints.txt` into `dir`, prints `ready`, and serves until its parent goes away.
fn serve(dir: &Path, endpoints: usize) {
    // The parent holds our stdin open; when it goes away (even by a panic), so do we.
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(async {
        let ca = CertificateAuthority::new("bench-kubelet-ca").expect("CA");
        std::fs::write(dir.join("ca.pem"), ca.cert_pem()).expect("ca.pem");
        let mut running = Vec::new();
        for i in 0..endpoints {
            let ip = endpoint_ip(i);
            let serving = ca.issue_server(&format!("kubelet@{ip}"), &[ip], &[]).expect("serving certificate");
            running.push(kubelet::KubeletEndpoint::start(ip, &serving, &kubelet::KubeletConfig::default()).await.expect("bind a loopback address"));
        }
        let lines: Vec<String> = running.iter().map(|e| e.addr().to_string()).collect();
        std::fs::write(dir.join("endpoints.txt"), lines.join("\n")).expect("endpoints.txt");
        println!("ready");
        std::future::pending::<()>().await;
    });
}
