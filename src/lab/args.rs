//! Command-line arguments of `pulsecheck lab …` and their entry point (owned by the lab modules).

use std::{collections::HashSet, path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::{ArgAction, Args, Subcommand};
use k8s_openapi::jiff::SignedDuration;

use crate::{
    cli::{ClientArgs, positive_duration},
    lab::fleet::{self, Fault, Fleet, FleetOptions},
};

/// `pulsecheck lab` subcommands.
#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Start a local kube-apiserver + etcd (and optionally a simulated fleet) until SIGINT/SIGTERM.
    Up,
    /// Simulate kubelets (Nodes, Leases, kubelet endpoints) against a cluster until SIGINT/SIGTERM.
    Fleet(Box<FleetArgs>),
}

/// Runs a `pulsecheck lab` subcommand to completion.
pub async fn run(command: LabCommand) -> anyhow::Result<()> {
    match command {
        LabCommand::Up => anyhow::bail!("not implemented yet"),
        LabCommand::Fleet(args) => run_fleet(*args).await,
    }
}

/// `pulsecheck lab fleet`.
#[derive(Debug, Clone, Args)]
pub struct FleetArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// How many simulated nodes.
    #[arg(long, env = "PULSECHECK_FLEET_NODES", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=fleet::MAX_NODES as i64))]
    pub nodes: u32,
    #[command(flatten)]
    pub shape: FleetShapeArgs,
    #[command(flatten)]
    pub faults: FleetFaultArgs,
    /// Start even when the cluster already has Nodes the fleet did not create.
    #[arg(long, env = "PULSECHECK_FLEET_FORCE", value_name = "BOOL", default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub force: bool,
    /// Write the CA that signs every kubelet endpoint's certificate to this file (for pulsecheck's --kubelet-certificate-authority).
    #[arg(long, env = "PULSECHECK_FLEET_KUBELET_CA_OUT", value_name = "PATH")]
    pub kubelet_ca_out: Option<PathBuf>,
}

/// How the simulated nodes look and how fast they beat (shared by `lab fleet` and `lab up`).
#[derive(Debug, Clone, Args)]
pub struct FleetShapeArgs {
    /// Node names are PREFIX0000, PREFIX0001, …
    #[arg(long, env = "PULSECHECK_FLEET_NAME_PREFIX", value_name = "PREFIX", default_value = "sim-")]
    pub name_prefix: String,
    /// Spread the nodes over this many zones (zone-a, zone-b, …).
    #[arg(long, env = "PULSECHECK_FLEET_ZONES", value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub zones: u32,
    /// leaseDurationSeconds of each node's Lease; it is renewed every quarter of it (kubelet's default 40s).
    #[arg(long, env = "PULSECHECK_FLEET_LEASE_DURATION", value_name = "DURATION", default_value = "40s", value_parser = whole_seconds)]
    pub lease_duration: Duration,
    /// How often each node recomputes its status (kubelet's nodeStatusUpdateFrequency).
    #[arg(long, env = "PULSECHECK_FLEET_STATUS_UPDATE_FREQUENCY", value_name = "DURATION", default_value = "10s", value_parser = positive_duration)]
    pub status_update_frequency: Duration,
    /// How often an unchanged status is still posted, ±50% after a change (kubelet's nodeStatusReportFrequency).
    #[arg(long, env = "PULSECHECK_FLEET_STATUS_REPORT_FREQUENCY", value_name = "DURATION", default_value = "5m", value_parser = positive_duration)]
    pub status_report_frequency: Duration,
    /// Serve a fake kubelet HTTPS endpoint per node on its loopback IP.
    #[arg(long, env = "PULSECHECK_FLEET_KUBELET_ENDPOINTS", value_name = "BOOL", default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub kubelet_endpoints: bool,
}

/// Faults applied once the fleet is up (shared by `lab fleet` and `lab up`).
#[derive(Debug, Clone, Args, Default)]
pub struct FleetFaultArgs {
    /// Nodes whose Lease keeps renewing while their status stops.
    #[arg(long, env = "PULSECHECK_FLEET_ZOMBIE", value_name = "NAMES", value_delimiter = ',')]
    pub zombie: Vec<String>,
    /// Nodes that stop everything (Lease, status, kubelet endpoint).
    #[arg(long, env = "PULSECHECK_FLEET_DEAD", value_name = "NAMES", value_delimiter = ',')]
    pub dead: Vec<String>,
    /// Nodes whose osImage turns "Unknown".
    #[arg(long, env = "PULSECHECK_FLEET_OS_IMAGE_UNKNOWN", value_name = "NAMES", value_delimiter = ',')]
    pub os_image_unknown: Vec<String>,
    /// Nodes whose kubelet endpoint accepts connections and never answers.
    #[arg(long, env = "PULSECHECK_FLEET_PROBE_HANG", value_name = "NAMES", value_delimiter = ',')]
    pub probe_hang: Vec<String>,
    /// Nodes whose kubelet /healthz answers 500.
    #[arg(long, env = "PULSECHECK_FLEET_PROBE_FAIL", value_name = "NAMES", value_delimiter = ',')]
    pub probe_fail: Vec<String>,
    /// Nodes whose kubelet answers 401 even to a token.
    #[arg(long, env = "PULSECHECK_FLEET_UNAUTHORIZED", value_name = "NAMES", value_delimiter = ',')]
    pub unauthorized: Vec<String>,
    /// Nodes that alternate between zombie and healthy.
    #[arg(long, env = "PULSECHECK_FLEET_FLAPPING", value_name = "NAMES", value_delimiter = ',')]
    pub flapping: Vec<String>,
    /// Nodes whose written timestamps are off, as NAME=OFFSET (e.g. sim-0003=+1h,sim-0004=-5m).
    #[arg(long, env = "PULSECHECK_FLEET_CLOCK_SKEW", value_name = "NAME=OFFSET", value_delimiter = ',', value_parser = clock_skew)]
    pub clock_skew: Vec<(String, SignedDuration)>,
    /// Nodes whose Lease is deleted and no longer renewed.
    #[arg(long, env = "PULSECHECK_FLEET_NO_LEASE", value_name = "NAMES", value_delimiter = ',')]
    pub no_lease: Vec<String>,
}

impl FleetFaultArgs {
    /// Every (node, fault) pair, in flag order.
    pub fn faults(&self) -> Vec<(String, Fault)> {
        let lists: [(&Vec<String>, Fault); 8] = [
            (&self.zombie, Fault::Zombie),
            (&self.dead, Fault::Dead),
            (&self.os_image_unknown, Fault::OsImageUnknown),
            (&self.probe_hang, Fault::ProbeHang),
            (&self.probe_fail, Fault::ProbeFail),
            (&self.unauthorized, Fault::Unauthorized),
            (&self.flapping, Fault::Flapping),
            (&self.no_lease, Fault::NoLease),
        ];
        let mut faults: Vec<(String, Fault)> = lists
            .into_iter()
            .flat_map(|(names, fault)| names.iter().filter(|n| !n.trim().is_empty()).map(move |n| (n.trim().to_string(), fault)))
            .collect();
        faults.extend(self.clock_skew.iter().map(|(name, offset)| (name.clone(), Fault::ClockSkew(*offset))));
        faults
    }
}

impl FleetShapeArgs {
    /// The fleet options for `nodes` nodes.
    pub fn options(&self, nodes: usize, force: bool) -> FleetOptions {
        FleetOptions {
            nodes,
            name_prefix: self.name_prefix.clone(),
            zones: self.zones as usize,
            lease_duration: self.lease_duration,
            status_update_frequency: self.status_update_frequency,
            status_report_frequency: self.status_report_frequency,
            kubelet_endpoints: self.kubelet_endpoints,
            force,
        }
    }
}

/// Parses `NAME=OFFSET` for --clock-skew.
fn clock_skew(s: &str) -> Result<(String, SignedDuration), String> {
    let (name, offset) = s.split_once('=').ok_or_else(|| format!("'{s}' is not NAME=OFFSET (e.g. sim-0003=+1h)"))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(format!("'{s}' has no node name before '='"));
    }
    Ok((name.to_string(), fleet::parse_skew(offset)?))
}

/// A positive duration in whole seconds (a Lease counts whole seconds).
fn whole_seconds(s: &str) -> Result<Duration, String> {
    let d = positive_duration(s)?;
    if d.subsec_nanos() != 0 {
        return Err("must be a whole number of seconds".into());
    }
    Ok(d)
}

/// Checks that every faulted node is one the fleet will have, before anything is created.
pub fn check_fault_targets(faults: &[(String, Fault)], options: &FleetOptions) -> Result<(), String> {
    let names: HashSet<String> = (0..options.nodes).map(|i| fleet::node_name(&options.name_prefix, i, options.nodes)).collect();
    let unknown: Vec<&str> = faults.iter().map(|(n, _)| n.as_str()).filter(|n| !names.contains(*n)).collect();
    if unknown.is_empty() {
        return Ok(());
    }
    Err(format!(
        "no simulated node named {} (the fleet has {} … {})",
        unknown.join(", "),
        fleet::node_name(&options.name_prefix, 0, options.nodes),
        fleet::node_name(&options.name_prefix, options.nodes - 1, options.nodes),
    ))
}

/// Builds an admin client from --kubeconfig/--context (else the usual inference).
async fn client(args: &ClientArgs) -> anyhow::Result<kube::Client> {
    let options = kube::config::KubeConfigOptions { context: args.context.clone(), ..Default::default() };
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &options).await?
        }
        None if args.context.is_some() => kube::Config::from_kubeconfig(&options).await?,
        None => kube::Config::infer().await?,
    };
    Ok(kube::Client::try_from(config)?)
}

/// Starts the fleet, applies the command line's faults and logs what it did.
pub async fn start_fleet(
    client: kube::Client,
    options: FleetOptions,
    faults: &[(String, Fault)],
) -> Result<Fleet, fleet::Error> {
    let fleet = Fleet::start(client, options).await?;
    for (node, fault) in faults {
        fleet.set_fault(node, *fault)?;
    }
    Ok(fleet)
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        ctrl_c = tokio::signal::ctrl_c() => ctrl_c?,
        _ = term.recv() => {}
    }
    Ok(())
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PULSECHECK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// Prints a usage error and exits 2 (what clap does for bad flags).
fn exit_usage(message: impl std::fmt::Display) -> ! {
    eprintln!("error: {message}");
    std::process::exit(2)
}

async fn run_fleet(args: FleetArgs) -> anyhow::Result<()> {
    init_logging();
    let options = args.shape.options(args.nodes as usize, args.force);
    if let Err(e) = options.validate() {
        exit_usage(e);
    }
    let faults = args.faults.faults();
    if let Err(e) = check_fault_targets(&faults, &options) {
        exit_usage(e);
    }
    let client = client(&args.client).await?;
    let fleet = match start_fleet(client, options, &faults).await {
        Ok(fleet) => fleet,
        Err(e @ fleet::Error::ForeignNodes { .. }) => exit_usage(e),
        Err(e) => return Err(e).context("starting the simulated fleet"),
    };
    if let Some(path) = &args.kubelet_ca_out {
        std::fs::write(path, fleet.kubelet_ca_pem()).with_context(|| format!("writing {}", path.display()))?;
    }
    let names = fleet.node_names();
    println!(
        "simulated fleet up: {} nodes ({} … {}); Ctrl-C to stop",
        names.len(),
        names.first().map_or("", String::as_str),
        names.last().map_or("", String::as_str)
    );
    shutdown_signal().await?;
    tracing::info!("stopping the simulated fleet (its Nodes and Leases stay)");
    fleet.stop().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<FleetArgs, clap::Error> {
        let cli = Cli::try_parse_from([&["pulsecheck", "lab", "fleet"], args].concat())?;
        match cli.command {
            Command::Lab(LabCommand::Fleet(args)) => Ok(*args),
            other => panic!("not lab fleet: {other:?}"),
        }
    }

    #[test]
    fn fleet_flags_become_options_and_faults() {
        let args = parse(&[
            "--nodes", "10", "--zombie", "sim-0001,sim-0002", "--clock-skew", "sim-0003=+1h,sim-0004=-5m",
            "--lease-duration", "4s", "--status-report-frequency", "2s", "--zones", "2",
        ])
        .unwrap();
        let options = args.shape.options(args.nodes as usize, args.force);
        assert_eq!(options.nodes, 10);
        assert_eq!(options.lease_duration, Duration::from_secs(4));
        assert_eq!(options.status_report_frequency, Duration::from_secs(2));
        assert_eq!(options.status_update_frequency, Duration::from_secs(10));
        assert!(!options.force);
        let faults = args.faults.faults();
        assert_eq!(
            faults,
            vec![
                ("sim-0001".to_string(), Fault::Zombie),
                ("sim-0002".to_string(), Fault::Zombie),
                ("sim-0003".to_string(), Fault::ClockSkew(SignedDuration::from_hours(1))),
                ("sim-0004".to_string(), Fault::ClockSkew(SignedDuration::from_mins(-5))),
            ]
        );
        assert!(check_fault_targets(&faults, &options).is_ok());
    }

    #[test]
    fn faults_on_nodes_the_fleet_will_not_have_are_named() {
        let args = parse(&["--nodes", "3", "--dead", "sim-0007"]).unwrap();
        let err = check_fault_targets(&args.faults.faults(), &args.shape.options(3, false)).unwrap_err();
        assert!(err.contains("sim-0007") && err.contains("sim-0000 … sim-0002"), "{err}");
    }

    #[test]
    fn bad_fleet_flags_exit_2_naming_the_flag() {
        for (flag, value) in [("--clock-skew", "sim-0001"), ("--clock-skew", "sim-0001=soon"), ("--lease-duration", "1500ms"), ("--nodes", "0")] {
            let extra = if flag == "--nodes" { vec![flag, value] } else { vec!["--nodes", "3", flag, value] };
            let err = parse(&extra).unwrap_err();
            assert_eq!(err.exit_code(), 2);
            assert!(err.to_string().contains(flag), "{err}");
        }
        assert_eq!(parse(&[]).unwrap_err().exit_code(), 2, "--nodes is required");
    }
}
