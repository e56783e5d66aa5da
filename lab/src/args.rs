//! The `pulsecheck-lab` command line and its entry point.
//!
//! `pulsecheck-lab up` gives a person (or a script, or CI) the same real control plane the
//! tests use, for as long as they want it: it prints one machine-readable line on stdout once
//! the kubeconfig works (`ready: <path>`), logs everything else to stderr, and on SIGINT or
//! SIGTERM stops the processes and removes what it created. Scripts can wait for that line
//! instead of sleeping.
//!
//! `pulsecheck-lab fleet` plays N kubelets against any cluster it is pointed at (refusing one
//! that already has real Nodes unless forced); `up --nodes N` does the same next to its own
//! control plane. Faults given on the command line are applied once the fleet is up.
//!
//! `pulsecheck-lab demo` is [`crate::demo`].
//!
//! Exit codes, as for `pulsecheck`: 0 success, 1 findings (a demo expectation that did not
//! hold), 2 errors (bad flags, or the lab could not do its job).
//!
//! This module only parses and wires; starting and stopping live in [`crate::controlplane`]
//! (and, for simulated nodes, in [`crate::fleet`]).

use std::{collections::HashSet, path::PathBuf, time::Duration};

use anyhow::Context as _;
use std::process::ExitCode;

use clap::{ArgAction, Args, Parser, Subcommand};
use k8s_openapi::jiff::SignedDuration;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    controlplane::{ControlPlane, ControlPlaneOptions},
    demo::DemoArgs,
    fleet::{self, Fault, Fleet, FleetOptions},
    realnode::{self, KubeletTiming, NodeFault, RealFleet, RealFleetOptions},
};
use pulsecheck::{connect::ClientArgs, parse::positive_duration};

/// pulsecheck's lab: a real local control plane, a simulated kubelet fleet, and the demo.
#[derive(Debug, Parser)]
#[command(name = "pulsecheck-lab", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: LabCommand,
}

/// `pulsecheck-lab` subcommands.
#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Start a local kube-apiserver + etcd (and optionally a simulated fleet) until SIGINT/SIGTERM.
    ///
    /// Prints `ready: DIR/kubeconfig` on stdout once that kubeconfig works; logs go to stderr.
    Up(LabUpArgs),
    /// Simulate kubelets (Nodes, Leases, kubelet endpoints) against a cluster until SIGINT/SIGTERM.
    ///
    /// Prints `fleet up: N nodes …` on stdout once every node is Ready; logs go to stderr.
    Fleet(Box<FleetArgs>),
    /// A one-minute tour: a local control plane, a simulated fleet and pulsecheck at work.
    Demo(Box<DemoArgs>),
    /// Break or mend a real node of a running `pulsecheck-lab up --real-nodes N`.
    ///
    /// disk-hang, disk-error and os-release-error act on the node's root disk; kubelet-stop
    /// freezes its kubelet; net-cut drops its packets to the apiserver; probe-cut drops
    /// connections to its kubelet port from outside the node; recover undoes them all.
    Fault(FaultArgs),
    /// Build pulsecheck's container image from its static binaries, as an OCI image archive.
    ///
    /// Prints the image reference the archive holds (`make image` runs this).
    Image(ImageArgs),
    /// Load an OCI image archive into every real node of a running `pulsecheck-lab up --real-nodes N`.
    ///
    /// The nodes reach no registry: Pods run what was imported (`imagePullPolicy: Never` or
    /// `IfNotPresent`). Prints the image reference and the nodes.
    Import(ImportArgs),
}

/// Arguments of `pulsecheck-lab image`.
#[derive(Debug, Clone, Args)]
pub struct ImageArgs {
    /// The statically linked pulsecheck binary to put into the image (`make image` builds it for the musl target).
    ///
    /// `--binary FILE`: one image for this machine's architecture. `--binary ARCH=FILE`, once per
    /// architecture (amd64/x86_64, arm64/aarch64): one multi-arch image, an OCI image index of
    /// one manifest per architecture, each binary checked to be built for its ARCH (the release,
    /// docs/release.md).
    #[arg(long, value_name = "[ARCH=]FILE", required = true)]
    pub binary: Vec<String>,
    /// The statically linked pulsecheck-agent binary, put into the image as /pulsecheck-agent (the
    /// chart's agent DaemonSet runs it; `make image` builds it with pulsecheck).
    ///
    /// As --binary: `--agent-binary FILE` with `--binary FILE`, or `--agent-binary ARCH=FILE` once
    /// for each ARCH of --binary, each checked to be static and built for its ARCH. Without it
    /// the image holds /pulsecheck alone, and the chart's agent.enabled=true cannot run.
    #[arg(long, value_name = "[ARCH=]FILE")]
    pub agent_binary: Vec<String>,
    /// Where to write the OCI image archive.
    #[arg(long, value_name = "FILE", default_value = "target/image/pulsecheck.tar")]
    pub out: PathBuf,
    /// The image reference stored in the archive (default: the release's, ghcr.io/pulsecheck/pulsecheck:VERSION).
    #[arg(long, value_name = "REF")]
    pub reference: Option<String>,
}

/// Arguments of `pulsecheck-lab import`.
#[derive(Debug, Clone, Args)]
pub struct ImportArgs {
    /// The folder of the running `pulsecheck-lab up --real-nodes` (its --dir).
    #[arg(long, env = "PULSECHECK_LAB_DIR", value_name = "DIR")]
    pub dir: PathBuf,
    /// The OCI image archive (`make image` writes target/image/pulsecheck.tar).
    #[arg(value_name = "FILE")]
    pub archive: PathBuf,
}

/// Why a lab command did not succeed.
#[derive(Debug)]
pub enum Error {
    /// Bad input (exit code 2 before anything started).
    Usage(String),
    /// The lab could not do its job.
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for Error {
    fn from(e: anyhow::Error) -> Self {
        Error::Failed(e)
    }
}

/// Arguments of `pulsecheck-lab up`.
#[derive(Debug, Clone, Args)]
pub struct LabUpArgs {
    /// Folder for the kubeconfig, certificates, etcd data and logs (created if missing; kept,
    /// emptied of what lab up created, on exit). Default: a temporary folder.
    #[arg(long, env = "PULSECHECK_LAB_DIR", value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Simulated nodes to start next to the control plane (0 = control plane only).
    #[arg(long, env = "PULSECHECK_LAB_NODES", value_name = "N", default_value_t = 0)]
    pub nodes: usize,
    #[command(flatten)]
    pub fleet: FleetShapeArgs,
    #[command(flatten)]
    pub faults: Box<FleetFaultArgs>,
    #[command(flatten)]
    pub real: RealNodeArgs,
    /// An audit policy file (audit.k8s.io/v1 Policy): the apiserver records the requests it selects in DIR/audit.log, one JSON event per line.
    #[arg(long, env = "PULSECHECK_LAB_AUDIT_POLICY", value_name = "FILE")]
    pub audit_policy: Option<PathBuf>,
}

/// Real nodes of `pulsecheck-lab up`: upstream kubelets with their own containerd, in
/// namespaces of their own, whose disks and networks `pulsecheck-lab fault` can break.
#[derive(Debug, Clone, Args, Default)]
pub struct RealNodeArgs {
    /// Real nodes to start (real-1 … real-N), with kube-controller-manager and kube-scheduler. Needs root, /dev/fuse, cgroups, containerd, runc and the CNI plugins.
    #[arg(long, env = "PULSECHECK_LAB_REAL_NODES", value_name = "N", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=8))]
    pub real_nodes: u8,
    /// Real nodes' nodeStatusUpdateFrequency (default: the kubelet's, 10s).
    #[arg(long, env = "PULSECHECK_LAB_NODE_STATUS_UPDATE_FREQUENCY", value_name = "DURATION", value_parser = positive_duration)]
    pub node_status_update_frequency: Option<Duration>,
    /// Real nodes' nodeStatusReportFrequency (default: the kubelet's: 5m, or the update frequency when only that is given).
    #[arg(long, env = "PULSECHECK_LAB_NODE_STATUS_REPORT_FREQUENCY", value_name = "DURATION", value_parser = positive_duration)]
    pub node_status_report_frequency: Option<Duration>,
    /// Real nodes' nodeLeaseDurationSeconds (default: the kubelet's, 40s; renewed every quarter of it).
    #[arg(long, env = "PULSECHECK_LAB_NODE_LEASE_DURATION", value_name = "DURATION", value_parser = whole_seconds)]
    pub node_lease_duration: Option<Duration>,
    /// kube-controller-manager's --node-monitor-grace-period next to real nodes (its default: 50s).
    #[arg(long, env = "PULSECHECK_LAB_NODE_MONITOR_GRACE_PERIOD", value_name = "DURATION", default_value = "50s", value_parser = whole_seconds)]
    pub node_monitor_grace_period: Duration,
}

impl RealNodeArgs {
    /// The fleet these flags ask for, if any.
    pub fn options(&self) -> Option<RealFleetOptions> {
        (self.real_nodes > 0).then_some(RealFleetOptions {
            nodes: self.real_nodes as usize,
            timing: KubeletTiming {
                status_update_frequency: self.node_status_update_frequency,
                status_report_frequency: self.node_status_report_frequency,
                lease_duration: self.node_lease_duration,
            },
            kcm_grace: self.node_monitor_grace_period,
        })
    }
}

/// Arguments of `pulsecheck-lab fault`.
#[derive(Debug, Clone, Args)]
pub struct FaultArgs {
    /// The folder of the running `pulsecheck-lab up --real-nodes` (its --dir).
    #[arg(long, env = "PULSECHECK_LAB_DIR", value_name = "DIR")]
    pub dir: PathBuf,
    /// The real node (real-1 …).
    pub node: String,
    /// What happens to it.
    #[arg(value_enum)]
    pub kind: NodeFault,
}

impl LabUpArgs {
    /// Starts what these arguments ask for and returns the running control plane.
    pub async fn start_control_plane(&self) -> anyhow::Result<ControlPlane> {
        let control_plane = ControlPlane::start(ControlPlaneOptions {
            dir: self.dir.clone(),
            service_accounts: self.real.real_nodes > 0,
            audit_policy: self.audit_policy.clone(),
        })
        .await
        .context("cannot start the lab control plane")?;
        Ok(control_plane)
    }
}

/// Runs a `pulsecheck-lab` subcommand to completion and says how it ended.
pub async fn run(cli: Cli) -> ExitCode {
    let outcome = match cli.command {
        LabCommand::Demo(args) => match crate::demo::run(*args).await {
            Ok(pulsecheck::Outcome::Clean) => Ok(()),
            Ok(pulsecheck::Outcome::Findings) => return ExitCode::from(1),
            Err(e) => Err(Error::Failed(e.into())),
        },
        LabCommand::Up(args) => {
            init_stderr_logging();
            up(args).await
        }
        LabCommand::Fleet(args) => {
            init_stderr_logging();
            run_fleet(*args).await
        }
        LabCommand::Fault(args) => match realnode::request_fault(&args.dir, &args.node, args.kind).await {
            Ok(()) => {
                println!("{}: {}", args.node, args.kind);
                Ok(())
            }
            Err(e) => Err(Error::Failed(anyhow::anyhow!("{e}"))),
        },
        LabCommand::Image(args) => build_image(&args),
        LabCommand::Import(args) => crate::image::archive_reference(&args.archive).map_err(|e| Error::Failed(e.into())).and_then(|reference| {
            let nodes = realnode::import_into_lab(&args.dir, &args.archive).map_err(|e| Error::Failed(anyhow::anyhow!("{e}")))?;
            println!("{reference}: imported into {}", nodes.join(", "));
            Ok(())
        }),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Error::Usage(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
        Err(Error::Failed(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// What `pulsecheck-lab image` puts into the image: one pulsecheck binary (and agent) for this
/// machine's architecture, or one per architecture.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ImageBinaries {
    /// `--binary FILE [--agent-binary FILE]`.
    Native { pulsecheck: PathBuf, agent: Option<PathBuf> },
    /// `--binary ARCH=FILE … [--agent-binary ARCH=FILE …]`: one image index; the agents, if
    /// any, for exactly the architectures of the binaries.
    PerArchitecture(Vec<(crate::image::Architecture, PathBuf, Option<PathBuf>)>),
}

/// The values of `flag` (`--binary`, `--agent-binary`): one without an architecture (this
/// machine's), or one per architecture.
fn binaries_of(flag: &str, values: &[String]) -> Result<Result<PathBuf, Vec<(crate::image::Architecture, PathBuf)>>, Error> {
    match values {
        [one] if !one.contains('=') => Ok(Ok(PathBuf::from(one))),
        _ => values
            .iter()
            .map(|value| {
                let (arch, file) = value
                    .split_once('=')
                    .ok_or_else(|| Error::Usage(format!("{flag} {value}: with several binaries each is ARCH=FILE (amd64=..., arm64=...)")))?;
                let arch = arch.parse().map_err(|e| Error::Usage(format!("{flag} {value}: {e}")))?;
                Ok((arch, PathBuf::from(file)))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Err),
    }
}

/// The binaries of `pulsecheck-lab image --binary … --agent-binary …`, paired by architecture.
fn image_binaries(binary: &[String], agent_binary: &[String]) -> Result<ImageBinaries, Error> {
    let agents = if agent_binary.is_empty() { None } else { Some(binaries_of("--agent-binary", agent_binary)?) };
    match (binaries_of("--binary", binary)?, agents) {
        (Ok(pulsecheck), None) => Ok(ImageBinaries::Native { pulsecheck, agent: None }),
        (Ok(pulsecheck), Some(Ok(agent))) => Ok(ImageBinaries::Native { pulsecheck, agent: Some(agent) }),
        (Ok(_), Some(Err(_))) => {
            Err(Error::Usage("--agent-binary ARCH=FILE goes with --binary ARCH=FILE: with one --binary FILE, give one --agent-binary FILE".into()))
        }
        (Err(per_arch), agents) => {
            let mut agents = match agents {
                None => Vec::new(),
                Some(Ok(file)) => {
                    return Err(Error::Usage(format!(
                        "--agent-binary {}: with --binary ARCH=FILE, give --agent-binary ARCH=FILE for each of its architectures",
                        file.display()
                    )));
                }
                Some(Err(agents)) => agents,
            };
            let with_agents = !agents.is_empty();
            let mut paired = Vec::new();
            for (arch, file) in per_arch {
                let agent = match agents.iter().position(|(a, _)| *a == arch) {
                    Some(at) => Some(agents.remove(at).1),
                    None if with_agents => {
                        return Err(Error::Usage(format!("--agent-binary: none for {arch}, which --binary has (give --agent-binary {arch}=FILE)")));
                    }
                    None => None,
                };
                paired.push((arch, file, agent));
            }
            if let Some((arch, file)) = agents.first() {
                return Err(Error::Usage(format!("--agent-binary {arch}={}: no --binary for {arch} (or {arch} given twice)", file.display())));
            }
            Ok(ImageBinaries::PerArchitecture(paired))
        }
    }
}

/// `pulsecheck-lab image`: writes the archive, prints its reference.
fn build_image(args: &ImageArgs) -> Result<(), Error> {
    use crate::image::ImageSpec;
    let reference = args.reference.clone().unwrap_or_else(crate::image::pulsecheck_reference);
    let binaries = image_binaries(&args.binary, &args.agent_binary)?;
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {} for --out", parent.display()))?;
    }
    let digest = match binaries {
        ImageBinaries::Native { pulsecheck, agent } => ImageSpec::pulsecheck(&pulsecheck, &reference)
            .and_then(|spec| match agent {
                Some(agent) => spec.with_agent(&agent),
                None => Ok(spec),
            })
            .and_then(|spec| spec.write_archive(&args.out)),
        ImageBinaries::PerArchitecture(per_arch) => per_arch
            .iter()
            .map(|(arch, binary, agent)| {
                let spec = ImageSpec::pulsecheck_for(binary, &reference, *arch)?;
                let spec = match agent {
                    Some(agent) => spec.with_agent_for(agent, *arch)?,
                    None => spec,
                };
                Ok((*arch, spec))
            })
            .collect::<Result<Vec<_>, crate::image::Error>>()
            .and_then(|images| crate::image::write_index_archive(&reference, &images, &args.out)),
    }
    .map_err(|e| Error::Failed(e.into()))?;
    if args.agent_binary.is_empty() {
        eprintln!("note: no --agent-binary: the image has no /pulsecheck-agent (the chart's agent.enabled=true needs it)");
    }
    eprintln!("wrote {} ({digest})", args.out.display());
    println!("{reference}");
    Ok(())
}

/// `pulsecheck-lab up`: start, print the ready line, wait for SIGINT/SIGTERM, clean up.
async fn up(args: LabUpArgs) -> Result<(), Error> {
    // Listen before starting, so a signal during start-up also ends in a clean exit.
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;

    // Check the fleet's flags before starting anything.
    let fleet_plan = if args.nodes > 0 {
        // Next to real nodes, Pods are scheduled: none on a node without a kubelet.
        let options = FleetOptions { no_pods: args.real.real_nodes > 0, ..args.fleet.options(args.nodes, false) };
        let faults = args.faults.faults();
        options.validate().map_err(|e| Error::Usage(e.to_string()))?;
        check_fault_targets(&faults, &options).map_err(Error::Usage)?;
        Some((options, faults))
    } else {
        None
    };

    // A machine that cannot run real nodes says so before anything starts.
    let real_plan = args.real.options();
    if real_plan.is_some() {
        RealFleet::check_machine().map_err(|e| Error::Failed(e.into()))?;
    }

    let mut control_plane = tokio::select! {
        started = args.start_control_plane() => started?,
        // Dropping the start future kills whatever it had started and removes its files.
        _ = terminate.recv() => return Ok(()),
        _ = interrupt.recv() => return Ok(()),
    };

    // The ready line promises a usable lab: with --nodes, the fleet is up and Ready first.
    let mut fleet = None;
    let mut kubelet_ca = None;
    if let Some((options, faults)) = fleet_plan {
        let started = tokio::select! {
            started = start_fleet(control_plane.client(), options, &faults) => started,
            _ = terminate.recv() => return Ok(control_plane.stop().await.context("cannot clean up the lab control plane")?),
            _ = interrupt.recv() => return Ok(control_plane.stop().await.context("cannot clean up the lab control plane")?),
        };
        let started = started.context("cannot start the simulated fleet")?;
        let path = control_plane.dir().join(KUBELET_CA_FILE);
        std::fs::write(&path, started.kubelet_ca_pem()).with_context(|| format!("cannot write {}", path.display()))?;
        tracing::info!(nodes = started.node_names().len(), kubelet_ca = %path.display(), "simulated fleet is up");
        kubelet_ca = Some(path);
        fleet = Some(started);
    }

    let mut real_fleet = None;
    if let Some(options) = real_plan {
        let started = tokio::select! {
            started = RealFleet::start(&control_plane, &options) => started,
            _ = terminate.recv() => return Ok(control_plane.stop().await.context("cannot clean up the lab control plane")?),
            _ = interrupt.recv() => return Ok(control_plane.stop().await.context("cannot clean up the lab control plane")?),
        };
        match started {
            Ok(started) => {
                tracing::info!(nodes = ?started.names(), faults = %started.socket().display(), "real nodes are Ready; break one with `pulsecheck-lab fault --dir DIR NODE KIND`");
                real_fleet = Some(started);
            }
            Err(e) => {
                if let Some(fleet) = fleet {
                    fleet.stop().await;
                }
                control_plane.stop().await.context("cannot clean up the lab control plane")?;
                return Err(anyhow::Error::new(e).context("cannot start the real nodes").into());
            }
        }
    }

    {
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "ready: {}", control_plane.kubeconfig_path().display()).context("cannot write to stdout")?;
        stdout.flush().context("cannot write to stdout")?;
    }
    tracing::info!(server = control_plane.server_url(), "lab is up; SIGINT or SIGTERM stops it");

    let mut health = tokio::time::interval(std::time::Duration::from_secs(1));
    let died = loop {
        tokio::select! {
            _ = terminate.recv() => break None,
            _ = interrupt.recv() => break None,
            _ = health.tick() => {
                if let Some(what) = control_plane.exited() {
                    break Some(what);
                }
                if let Some(real) = real_fleet.as_mut()
                    && let Some(what) = real.exited().await
                {
                    break Some(what);
                }
            }
        }
    };
    tracing::info!("stopping the lab");
    if let Some(real) = real_fleet {
        real.stop().await;
        let _ = std::fs::remove_dir_all(control_plane.dir().join("nodes"));
    }
    if let Some(fleet) = fleet {
        fleet.stop().await;
    }
    if let Some(path) = kubelet_ca {
        let _ = std::fs::remove_file(path);
    }
    control_plane.stop().await.context("cannot clean up the lab control plane")?;
    match died {
        None => Ok(()),
        Some(what) => Err(Error::Failed(anyhow::anyhow!("the lab died: {what}"))),
    }
}

/// Logs to stderr (stdout is reserved for the ready line), filtered by `RUST_LOG`, default info.
fn init_stderr_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Someone (main, a test) may have installed a subscriber already; theirs wins.
    let _ = tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter).try_init();
}

/// The kubelet CA file `lab up --nodes` writes into the lab folder (for pulsecheck's
/// `--kubelet-certificate-authority`).
pub const KUBELET_CA_FILE: &str = "kubelet-ca.crt";

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
        let mut faults: Vec<(String, Fault)> =
            lists.into_iter().flat_map(|(names, fault)| names.iter().filter(|n| !n.trim().is_empty()).map(move |n| (n.trim().to_string(), fault))).collect();
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
            no_pods: false,
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

/// Starts the fleet, applies the command line's faults and logs what it did.
pub async fn start_fleet(client: kube::Client, options: FleetOptions, faults: &[(String, Fault)]) -> Result<Fleet, fleet::Error> {
    let fleet = Fleet::start(client, options).await?;
    for (node, fault) in faults {
        fleet.set_fault(node, *fault)?;
    }
    Ok(fleet)
}

/// `pulsecheck-lab fleet`: start, apply faults, print the `fleet up:` line, wait for SIGINT/SIGTERM.
async fn run_fleet(args: FleetArgs) -> Result<(), Error> {
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let options = args.shape.options(args.nodes as usize, args.force);
    options.validate().map_err(|e| Error::Usage(e.to_string()))?;
    let faults = args.faults.faults();
    check_fault_targets(&faults, &options).map_err(Error::Usage)?;
    let client = pulsecheck::connect::client(&args.client).await.map_err(|e| Error::Usage(e.to_string()))?;
    let started = tokio::select! {
        started = start_fleet(client, options, &faults) => started,
        // Dropping the start future stops whatever it had started; created objects stay.
        _ = terminate.recv() => return Ok(()),
        _ = interrupt.recv() => return Ok(()),
    };
    let fleet = match started {
        Ok(fleet) => fleet,
        Err(e @ fleet::Error::ForeignNodes { .. }) => return Err(Error::Usage(e.to_string())),
        Err(e) => return Err(anyhow::Error::new(e).context("cannot start the simulated fleet").into()),
    };
    if let Some(path) = &args.kubelet_ca_out {
        std::fs::write(path, fleet.kubelet_ca_pem()).with_context(|| format!("cannot write {}", path.display()))?;
    }
    {
        use std::io::Write as _;
        let names = fleet.node_names();
        let mut stdout = std::io::stdout().lock();
        let (first, last) = (names.first().map_or("", String::as_str), names.last().map_or("", String::as_str));
        writeln!(stdout, "fleet up: {} nodes ({first} … {last})", names.len()).context("cannot write to stdout")?;
        stdout.flush().context("cannot write to stdout")?;
    }
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    tracing::info!("stopping the simulated fleet (its Nodes and Leases stay)");
    fleet.stop().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    fn up_args(argv: &[&str]) -> LabUpArgs {
        match Cli::try_parse_from(argv).unwrap().command {
            LabCommand::Up(args) => args,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn up_defaults_to_a_temporary_folder_and_no_nodes() {
        let args = up_args(&["pulsecheck-lab", "up"]);
        assert_eq!(args.dir, None);
        assert_eq!(args.nodes, 0);
        let args = up_args(&["pulsecheck-lab", "up", "--dir", "/tmp/x", "--nodes", "3"]);
        assert_eq!(args.dir, Some(PathBuf::from("/tmp/x")));
        assert_eq!(args.nodes, 3);
    }

    fn parse(args: &[&str]) -> Result<FleetArgs, clap::Error> {
        let cli = Cli::try_parse_from([&["pulsecheck-lab", "fleet"], args].concat())?;
        match cli.command {
            LabCommand::Fleet(args) => Ok(*args),
            other => panic!("not lab fleet: {other:?}"),
        }
    }

    #[test]
    fn fleet_flags_become_options_and_faults() {
        let args = parse(&[
            "--nodes",
            "10",
            "--zombie",
            "sim-0001,sim-0002",
            "--clock-skew",
            "sim-0003=+1h,sim-0004=-5m",
            "--lease-duration",
            "4s",
            "--status-report-frequency",
            "2s",
            "--zones",
            "2",
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
    #[test]
    fn image_takes_one_binary_or_one_per_architecture() {
        use crate::image::Architecture::{Amd64, Arm64};
        let binaries = |argv: &[&str]| match Cli::try_parse_from([&["pulsecheck-lab", "image"][..], argv].concat()).unwrap().command {
            LabCommand::Image(args) => image_binaries(&args.binary, &args.agent_binary),
            other => panic!("parsed as {other:?}"),
        };
        assert_eq!(
            binaries(&["--binary", "target/pulsecheck"]).unwrap(),
            ImageBinaries::Native { pulsecheck: PathBuf::from("target/pulsecheck"), agent: None }
        );
        assert_eq!(
            binaries(&["--binary", "amd64=a/pulsecheck", "--binary", "aarch64=b/pulsecheck"]).unwrap(),
            ImageBinaries::PerArchitecture(vec![(Amd64, PathBuf::from("a/pulsecheck"), None), (Arm64, PathBuf::from("b/pulsecheck"), None)])
        );
        assert_eq!(
            binaries(&["--binary", "arm64=b"]).unwrap(),
            ImageBinaries::PerArchitecture(vec![(Arm64, PathBuf::from("b"), None)]),
            "one ARCH=FILE is an index too"
        );
        let usage = |argv: &[&str]| match binaries(argv) {
            Err(Error::Usage(message)) => message,
            other => panic!("{argv:?}: {:?}", other.map_err(|e| format!("{e:?}"))),
        };
        assert!(usage(&["--binary", "a", "--binary", "arm64=b"]).contains("--binary a: with several binaries each is ARCH=FILE"));
        assert!(usage(&["--binary", "riscv64=b"]).contains("unknown architecture \"riscv64\""));
        assert!(Cli::try_parse_from(["pulsecheck-lab", "image"]).is_err(), "--binary is required");
    }

    #[test]
    fn image_pairs_each_agent_binary_with_the_binary_of_its_architecture() {
        use crate::image::Architecture::{Amd64, Arm64};
        let binaries = |argv: &[&str]| match Cli::try_parse_from([&["pulsecheck-lab", "image"][..], argv].concat()).unwrap().command {
            LabCommand::Image(args) => image_binaries(&args.binary, &args.agent_binary),
            other => panic!("parsed as {other:?}"),
        };
        assert_eq!(
            binaries(&["--binary", "t/pulsecheck", "--agent-binary", "t/pulsecheck-agent"]).unwrap(),
            ImageBinaries::Native { pulsecheck: PathBuf::from("t/pulsecheck"), agent: Some(PathBuf::from("t/pulsecheck-agent")) }
        );
        // In any order, by architecture.
        assert_eq!(
            binaries(&["--binary", "amd64=a/pc", "--binary", "arm64=b/pc", "--agent-binary", "aarch64=b/agent", "--agent-binary", "x86_64=a/agent"]).unwrap(),
            ImageBinaries::PerArchitecture(vec![
                (Amd64, PathBuf::from("a/pc"), Some(PathBuf::from("a/agent"))),
                (Arm64, PathBuf::from("b/pc"), Some(PathBuf::from("b/agent")))
            ])
        );
        let usage = |argv: &[&str]| match binaries(argv) {
            Err(Error::Usage(message)) => message,
            other => panic!("{argv:?}: {:?}", other.map_err(|e| format!("{e:?}"))),
        };
        let missing = usage(&["--binary", "amd64=a", "--binary", "arm64=b", "--agent-binary", "amd64=c"]);
        assert!(missing.contains("--agent-binary: none for arm64"), "{missing}");
        let extra = usage(&["--binary", "amd64=a", "--agent-binary", "amd64=c", "--agent-binary", "arm64=d"]);
        assert!(extra.contains("--agent-binary arm64=d: no --binary for arm64"), "{extra}");
        let twice = usage(&["--binary", "amd64=a", "--agent-binary", "amd64=c", "--agent-binary", "amd64=d"]);
        assert!(twice.contains("--agent-binary amd64=d"), "{twice}");
        assert!(usage(&["--binary", "amd64=a", "--agent-binary", "c"]).contains("--agent-binary c: with --binary ARCH=FILE"));
        assert!(usage(&["--binary", "a", "--agent-binary", "amd64=c"]).contains("with one --binary FILE, give one --agent-binary FILE"));
        assert!(usage(&["--binary", "a", "--agent-binary", "c", "--agent-binary", "d"]).contains("--agent-binary c: with several binaries each is ARCH=FILE"));
        assert!(usage(&["--binary", "a", "--agent-binary", "mips=c"]).contains("--agent-binary mips=c: unknown architecture"));
    }
}
