//! Command-line arguments of `pulsecheck lab …` and their entry point.
//!
//! `pulsecheck lab up` gives a person (or a script, or CI) the same real control plane the
//! tests use, for as long as they want it: it prints one machine-readable line on stdout once
//! the kubeconfig works (`ready: <path>`), logs everything else to stderr, and on SIGINT or
//! SIGTERM stops the processes and removes what it created. Scripts can wait for that line
//! instead of sleeping.
//!
//! This module only parses and wires; starting and stopping live in [`super::controlplane`]
//! (and, for simulated nodes, in [`super::fleet`]).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use tokio::signal::unix::{SignalKind, signal};

use super::controlplane::{ControlPlane, ControlPlaneOptions};

/// `pulsecheck lab` subcommands.
#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Start a local kube-apiserver + etcd (and optionally a simulated fleet) until SIGINT/SIGTERM.
    ///
    /// Prints `ready: DIR/kubeconfig` on stdout once that kubeconfig works; logs go to stderr.
    Up(LabUpArgs),
    // Extension point: `Fleet(FleetArgs)` (`pulsecheck lab fleet`) is added by src/lab/fleet.rs.
}

/// Arguments of `pulsecheck lab up`.
#[derive(Debug, Clone, Args)]
pub struct LabUpArgs {
    /// Folder for the kubeconfig, certificates, etcd data and logs (created if missing; kept,
    /// emptied of what lab up created, on exit). Default: a temporary folder.
    #[arg(long, env = "PULSECHECK_LAB_DIR", value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Simulated nodes to start next to the control plane (0 = control plane only).
    #[arg(long, env = "PULSECHECK_LAB_NODES", value_name = "N", default_value_t = 0)]
    pub nodes: usize,
}

impl LabUpArgs {
    /// Starts what these arguments ask for and returns the running control plane.
    pub async fn start_control_plane(&self) -> anyhow::Result<ControlPlane> {
        let control_plane = ControlPlane::start(ControlPlaneOptions { dir: self.dir.clone() })
            .await
            .context("cannot start the lab control plane")?;
        Ok(control_plane)
    }
}

/// Runs a `pulsecheck lab` subcommand to completion.
pub async fn run(command: LabCommand) -> anyhow::Result<()> {
    init_stderr_logging();
    match command {
        LabCommand::Up(args) => up(args).await,
    }
}

/// `pulsecheck lab up`: start, print the ready line, wait for SIGINT/SIGTERM, clean up.
async fn up(args: LabUpArgs) -> anyhow::Result<()> {
    // Listen before starting, so a signal during start-up also ends in a clean exit.
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;

    if args.nodes > 0 {
        // Extension point: the fleet engineer starts `Fleet::start(control_plane.client(), ..)`
        // here, after the control plane, and stops it before the control plane below.
        anyhow::bail!("--nodes needs the simulated fleet, which this build does not have yet");
    }

    let mut control_plane = tokio::select! {
        started = args.start_control_plane() => started?,
        // Dropping the start future kills whatever it had started and removes its files.
        _ = terminate.recv() => return Ok(()),
        _ = interrupt.recv() => return Ok(()),
    };

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
            }
        }
    };
    tracing::info!("stopping the lab");
    control_plane.stop().await.context("cannot clean up the lab control plane")?;
    match died {
        None => Ok(()),
        Some(what) => anyhow::bail!("the lab control plane died: {what}"),
    }
}

/// Logs to stderr (stdout is reserved for the ready line), filtered by `RUST_LOG`, default info.
fn init_stderr_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Someone (main, a test) may have installed a subscriber already; theirs wins.
    let _ = tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter).try_init();
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        lab: LabCommand,
    }

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    fn up_args(argv: &[&str]) -> LabUpArgs {
        match Cli::try_parse_from(argv).unwrap().lab {
            LabCommand::Up(args) => args,
            #[allow(unreachable_patterns)] // once `lab fleet` exists
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn up_defaults_to_a_temporary_folder_and_no_nodes() {
        let args = up_args(&["lab", "up"]);
        assert_eq!(args.dir, None);
        assert_eq!(args.nodes, 0);
        let args = up_args(&["lab", "up", "--dir", "/tmp/x", "--nodes", "3"]);
        assert_eq!(args.dir, Some(PathBuf::from("/tmp/x")));
        assert_eq!(args.nodes, 3);
    }
}
