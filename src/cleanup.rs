//! `pulsecheck cleanup`: removes every taint, annotation and condition pulsecheck ever put on
//! any Node, so that uninstalling leaves nothing behind.
//!
//! It uses the same patches as the controller's release (fresh read, resourceVersion
//! precondition, only pulsecheck's own taint key, a cordon undone only when pulsecheck's record
//! says it set it), so nothing another actor owns is lost.
//!
//! It cleans only once no pulsecheck instance leads: a leader still running would put its taints
//! back on its next tick, and the person (or the chart's post-delete hook, which runs while the
//! uninstalled Pod may still be terminating) would walk away believing the nodes clean. So it
//! first reads the leader Lease until it is absent, released, or watched unrenewed for its whole
//! duration (by this process's clock, as a follower would before taking over), at most
//! `--leader-wait`, and refuses otherwise. A leader releases the Lease only after its last tick;
//! a released or lapsed Lease must then stay free for its duration, since a second replica not
//! yet stopped takes it over within a retry period. `--node-selector` keeps it to the nodes the
//! instance looks after (`run --node-selector`).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, api::ListParams};
use tokio::time::Instant;

use crate::{
    Outcome,
    actuate::{self, Actions, Actuator, release_patch},
    connect::ClientArgs,
    facts::{Selector, SlimNode},
    leader::{Holder, HolderWatch, lease_duration},
    names,
};

/// `pulsecheck cleanup`.
#[derive(Debug, Clone, clap::Args)]
pub struct CleanupArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Key of the taint to remove (as configured for `run`).
    #[arg(long, env = "PULSECHECK_TAINT_KEY", value_name = "KEY", default_value = crate::names::TAINT_KEY, value_parser = crate::parse::taint_key)]
    pub taint_key: String,
    /// Say what would be removed, remove nothing.
    #[arg(long, env = "PULSECHECK_DRY_RUN", value_name = "BOOL", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub dry_run: bool,
    /// The leader Lease of the pulsecheck instances that must have stopped before cleaning.
    #[arg(long, env = "PULSECHECK_CLEANUP_LEADER_LEASE", value_name = "NAMESPACE/NAME", default_value = "pulsecheck/pulsecheck", value_parser = lease_ref)]
    pub leader_lease: LeaseRef,
    /// How long to wait for the leader to stop (its Lease released or unrenewed for its duration).
    #[arg(long, env = "PULSECHECK_CLEANUP_LEADER_WAIT", value_name = "DURATION", default_value = "1m", value_parser = humantime::parse_duration)]
    pub leader_wait: Duration,
    /// Only nodes matching this label selector (as configured for `run`).
    #[arg(long, env = "PULSECHECK_NODE_SELECTOR", value_name = "SELECTOR", default_value = "", value_parser = node_selector)]
    pub node_selector: Selector,
    /// Clean even while a pulsecheck instance leads (it puts back what it still judges).
    #[arg(long, env = "PULSECHECK_CLEANUP_IGNORE_LEADER", value_name = "BOOL", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub ignore_leader: bool,
}

fn node_selector(s: &str) -> Result<Selector, String> {
    Selector::parse(s).map_err(|e| e.to_string())
}

/// `NAMESPACE/NAME` of a Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl std::fmt::Display for LeaseRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

fn lease_ref(s: &str) -> Result<LeaseRef, String> {
    match s.split_once('/') {
        Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(LeaseRef { namespace: namespace.into(), name: name.into() })
        }
        _ => Err(format!("{s:?} is not NAMESPACE/NAME")),
    }
}

/// Errors of `cleanup`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No client.
    #[error(transparent)]
    Connect(#[from] crate::connect::Error),
    /// Nodes cannot be listed.
    #[error("listing nodes: {0}")]
    List(kube::Error),
    /// A pulsecheck instance still leads.
    #[error(
        "pulsecheck instance {holder} still holds the leader Lease {lease} after {waited:?}; stop it first (scale the Deployment to 0) or pass --ignore-leader"
    )]
    StillLeading {
        /// The Lease.
        lease: LeaseRef,
        /// Its holder.
        holder: String,
        /// How long cleanup waited.
        waited: Duration,
    },
    /// The leader Lease cannot be read.
    #[error("reading the leader Lease {lease} (--leader-lease): {source}; pass --ignore-leader if no pulsecheck instance runs")]
    LeaderLease {
        /// The Lease.
        lease: LeaseRef,
        /// Why.
        source: kube::Error,
    },
    /// Some nodes could not be cleaned.
    #[error("{0} node(s) could not be cleaned; see the lines above")]
    Partial(usize),
}

/// What `cleanup` found on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftovers {
    /// Node name.
    pub node: String,
    /// Our taint, record or cordon.
    pub remediation: bool,
    /// Our condition.
    pub condition: bool,
}

/// What pulsecheck left on `node`.
pub fn leftovers(node: &SlimNode, taint_key: &str) -> Option<Leftovers> {
    let remediation = release_patch(node, taint_key, true).is_some();
    let condition = node.condition(names::CONDITION_TYPE).is_some();
    (remediation || condition).then(|| Leftovers { node: node.metadata.name.clone().unwrap_or_default(), remediation, condition })
}

/// Runs `pulsecheck cleanup`; prints one line per node it cleans (or would clean).
pub async fn run(args: CleanupArgs) -> Result<Outcome, Error> {
    let client = crate::connect::client(&args.client).await?;
    if !args.ignore_leader {
        wait_for_no_leader(&client, &args.leader_lease, args.leader_wait, args.client.request_timeout).await?;
    }
    let nodes: Api<SlimNode> = Api::all(client.clone());
    let list = tokio::time::timeout(args.client.request_timeout * 6, nodes.list(&ListParams::default()))
        .await
        .map_err(|_| Error::List(kube::Error::Service("listing nodes timed out".into())))?
        .map_err(Error::List)?;
    let actions = Actions { taint_key: args.taint_key.clone(), ..Actions::default() };
    let actuator = Actuator::new(client, actions, args.client.request_timeout, None);
    let mut failed = 0;
    let mut cleaned = 0;
    for node in &list.items {
        if !args.node_selector.matches(node.metadata.labels.as_ref().unwrap_or(&Default::default())) {
            continue;
        }
        let Some(found) = leftovers(node, &args.taint_key) else { continue };
        let verb = if args.dry_run { "would clean" } else { "cleaned" };
        if !args.dry_run
            && let Err(e) = clean(&actuator, &found).await
        {
            eprintln!("node {}: {e}", found.node);
            failed += 1;
            continue;
        }
        cleaned += 1;
        let mut what = Vec::new();
        if found.remediation {
            what.push("taint/cordon/record");
        }
        if found.condition {
            what.push("condition");
        }
        println!("{verb} node {}: {}", found.node, what.join(", "));
    }
    println!("{} node(s) {}", cleaned, if args.dry_run { "would be cleaned (dry run)" } else { "cleaned" });
    if failed > 0 { Err(Error::Partial(failed)) } else { Ok(Outcome::Clean) }
}

/// Returns once no pulsecheck instance leads through `lease`; errs when one still does after
/// `wait`, or the Lease cannot be read.
async fn wait_for_no_leader(client: &kube::Client, lease: &LeaseRef, wait: Duration, request_timeout: Duration) -> Result<(), Error> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), &lease.namespace);
    let started = Instant::now();
    let mut watch = HolderWatch::default();
    let mut told = false;
    // A released Lease must stay free for its duration: a follower (the second replica, not yet
    // stopped) acquires it within a retry period and would act again.
    let mut free_since: Option<Instant> = None;
    loop {
        let read = tokio::time::timeout(request_timeout, leases.get_opt(&lease.name))
            .await
            .map_err(|_| kube::Error::Service("reading the Lease timed out".into()))
            .and_then(|r| r)
            .map_err(|source| Error::LeaderLease { lease: lease.clone(), source })?;
        let Some(read) = read else { return Ok(()) };
        let spec = read.spec.unwrap_or_default();
        let duration = lease_duration(&spec);
        match watch.observe(&spec, Instant::now()) {
            Holder::Nobody | Holder::Lapsed(_) => {
                let since = *free_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= duration {
                    return Ok(());
                }
                if started.elapsed() >= wait + duration {
                    return Err(Error::StillLeading { lease: lease.clone(), holder: "(a follower taking over)".into(), waited: started.elapsed() });
                }
            }
            Holder::Held(holder) if started.elapsed() >= wait => {
                return Err(Error::StillLeading { lease: lease.clone(), holder, waited: started.elapsed() });
            }
            Holder::Held(holder) => {
                free_since = None;
                if !told {
                    eprintln!("waiting up to {wait:?} for pulsecheck instance {holder} to stop leading (Lease {lease})");
                    told = true;
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn clean(actuator: &Actuator, found: &Leftovers) -> Result<(), actuate::Error> {
    if found.remediation {
        actuator.release(&found.node, true).await?;
    }
    if found.condition {
        actuator.remove_condition(&found.node).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leader_lease_is_namespace_slash_name() {
        assert_eq!(lease_ref("pulsecheck/pulsecheck"), Ok(LeaseRef { namespace: "pulsecheck".into(), name: "pulsecheck".into() }));
        for bad in ["pulsecheck", "/x", "x/", "a/b/c", ""] {
            assert!(lease_ref(bad).is_err_and(|e| e.contains("NAMESPACE/NAME")), "{bad:?}");
        }
    }
}
