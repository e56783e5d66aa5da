//! `pulsecheck-agent`: pulsecheck's opt-in node agent (a DaemonSet). See `docs/agent.md`, and
//! `src/agent.rs` of the pulsecheck crate for the Lease it writes.
//!
//! Two loops, like the kubelet's own, so the agent can say what a wedged kubelet cannot: the
//! disk loop ([`disk`], OS threads) does what the kubelet gets stuck on, under deadlines; the
//! network loop ([`lease`], tokio) renews the agent's Lease with what the disk loop found and
//! never touches the disk — its program runs from memory ([`pin`]) and its logs go through a
//! lossy queue ([`log`]). This file only wires them.

mod cli;
mod disk;
mod lease;
mod log;
mod pin;

use std::{process::ExitCode, sync::Arc};

use anyhow::Context as _;
use clap::Parser as _;

use crate::{
    cli::Cli,
    disk::{DiskLoop, DiskStatus, HostDisk, SystemClock, Targets},
    lease::{LeaseSettings, Renewer},
};

fn main() -> ExitCode {
    // Bad flags exit 2 with clap's message, naming the flag.
    let cli = Cli::parse();
    // Checks across flags before anything else happens.
    let (settings, filter) = match checked(&cli) {
        Ok(checked) => checked,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    // Before any thread exists: on success this does not return, the copy starts over.
    let pinned = pin::run_from_memory();
    let _log = log::init(cli.log.log_format, filter);
    match pinned {
        Ok(pin::Pinned::InMemory(exe)) => match pin::mapped_files() {
            Ok(files) if files.is_empty() => tracing::debug!(exe = %exe.display(), "running from memory"),
            Ok(files) => {
                tracing::warn!(exe = %exe.display(), ?files, "running from memory, but these files are mapped from a disk (a dynamically linked build; the image's is static)")
            }
            Err(error) => tracing::debug!(exe = %exe.display(), %error, "running from memory; cannot read /proc/self/maps"),
        },
        Err(error) => tracing::warn!(%error, "running from the program's file: a hung disk may stall the agent when it pages code in"),
    }
    match run(cli, settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // Straight to stderr, not through the lossy queue: this line must not be dropped.
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// What clap cannot check on one flag alone: the Lease settings together, the log filter.
fn checked(cli: &Cli) -> anyhow::Result<(LeaseSettings, tracing_subscriber::EnvFilter)> {
    Ok((LeaseSettings::from_args(&cli.lease)?, log::filter(&cli.log)?))
}

fn run(cli: Cli, settings: LeaseSettings) -> anyhow::Result<()> {
    let targets = Targets::from_args(&cli.disk);
    tracing::info!(
        node = %settings.node,
        lease = %format!("{}/{}", settings.namespace, settings.name),
        host_root = %cli.disk.host_root.display(),
        os_release = %targets.os_release,
        heartbeat = %targets.heartbeat,
        scratch_mount = ?cli.disk.scratch_mount,
        "pulsecheck-agent starting"
    );
    let status = Arc::new(DiskStatus::new(cli.disk.disk_deadline));
    let disk = HostDisk::new(&cli.disk.host_root, cli.disk.scratch_mount.as_deref(), &targets);
    if let Some(at) = disk.read_only_scratch() {
        anyhow::bail!(
            "--scratch-dir {} is on a read-only filesystem ({} in the container; --host-root {}, --scratch-mount {}): every disk round would fail with EROFS, which pulsecheck reads as a dead disk. Mount a writable directory there (the chart mounts an emptyDir and passes --scratch-dir and --scratch-mount)",
            targets.scratch_dir,
            at.display(),
            cli.disk.host_root.display(),
            cli.disk.scratch_mount.as_ref().map_or_else(|| "unset".into(), |m| m.display().to_string()),
        );
    }
    let _disk_loop = DiskLoop::spawn(Box::new(disk), targets, status.clone(), cli.disk.disk_interval, Arc::new(SystemClock))
        .context("cannot start the disk loop's thread")?;
    // One thread is plenty for one request every few seconds.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the network loop's runtime")?;
    runtime.block_on(async {
        let signals = lease::stop_signals().context("cannot handle SIGTERM")?;
        // kube's TLS; installed once for the process.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = lease::client(settings.request_timeout).await?;
        lease::run(Renewer::new(client, settings), status, signals).await;
        Ok(())
    })
    // The disk loop's thread is not waited for: it may be blocked on the disk for good.
}
