//! `pulsecheck-bare-watcher`: the baseline of `benches/controller_scale.sh`. It does the least a
//! program can do to follow a fleet the way pulsecheck does — `kube_runtime::watcher` over every
//! Node and every Lease in `kube-node-lease`, with the typed k8s-openapi structs, pages of 500 as
//! pulsecheck lists them — and keeps nothing: each object is decoded, counted and dropped. What
//! pulsecheck costs beyond this is what its own work costs.
//!
//! Prints `synced nodes=N leases=M` on stdout once both initial lists are complete, and
//! `events nodes=N leases=M` when SIGTERM or SIGINT stops it.

use std::{
    path::PathBuf,
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::Context as _;
use clap::Parser;
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::{coordination::v1::Lease, core::v1::Node};
use kube::{
    Api, Client, Resource,
    runtime::{WatchStreamExt as _, watcher},
};
use serde::de::DeserializeOwned;
use tokio::signal::unix::{SignalKind, signal};

/// Follows every Node and node Lease with a bare kube-runtime watcher, keeping nothing.
#[derive(Debug, Parser)]
#[command(name = "pulsecheck-bare-watcher", version, about)]
struct Args {
    /// The kubeconfig to use (default: KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
}

/// Objects each watch delivered, and whether its first list is complete.
#[derive(Default)]
struct Count {
    events: AtomicU64,
    synced: std::sync::atomic::AtomicBool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path).with_context(|| format!("--kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.with_context(|| format!("--kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer().await.context("no kubeconfig")?,
    };
    let client = Client::try_from(config).context("cannot build a client")?;
    let (nodes, leases): (&'static Count, &'static Count) = (Box::leak(Box::default()), Box::leak(Box::default()));
    let announce = move || {
        if nodes.synced.load(Ordering::SeqCst) && leases.synced.load(Ordering::SeqCst) {
            println!("synced nodes={} leases={}", nodes.events.load(Ordering::SeqCst), leases.events.load(Ordering::SeqCst));
        }
    };
    tokio::spawn(follow(Api::<Node>::all(client.clone()), nodes, announce));
    tokio::spawn(follow(Api::<Lease>::namespaced(client, "kube-node-lease"), leases, announce));
    let (mut term, mut int) = (signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?);
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    println!("events nodes={} leases={}", nodes.events.load(Ordering::SeqCst), leases.events.load(Ordering::SeqCst));
    Ok(())
}

/// Counts what a watcher of `api` delivers until the process ends; `announce` at its first sync.
async fn follow<K>(api: Api<K>, count: &'static Count, announce: impl Fn())
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let mut stream = watcher(api, watcher::Config::default().page_size(500)).default_backoff().boxed();
    loop {
        match stream.try_next().await {
            Ok(Some(watcher::Event::Apply(object) | watcher::Event::InitApply(object) | watcher::Event::Delete(object))) => {
                drop(object);
                count.events.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Some(watcher::Event::InitDone)) => {
                if !count.synced.swap(true, Ordering::SeqCst) {
                    announce();
                }
            }
            Ok(Some(watcher::Event::Init)) => {}
            Ok(None) => return,
            Err(error) => eprintln!("watch error: {error}"),
        }
    }
}
