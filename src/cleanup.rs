//! `pulsecheck cleanup`: removes every taint, annotation and condition pulsecheck ever put on
//! any Node, so that uninstalling leaves nothing behind.
//!
//! It uses the same patches as the controller's release (fresh read, resourceVersion
//! precondition, only pulsecheck's own taint key, a cordon undone only when pulsecheck's record
//! says it set it), so nothing another actor owns is lost.

use kube::{Api, api::ListParams};

use crate::{
    Outcome,
    actuate::{self, Actions, Actuator, release_patch},
    connect::ClientArgs,
    facts::SlimNode,
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
    let remediation = release_patch(node, taint_key).is_some();
    let condition = node.condition(names::CONDITION_TYPE).is_some();
    (remediation || condition).then(|| Leftovers { node: node.metadata.name.clone().unwrap_or_default(), remediation, condition })
}

/// Runs `pulsecheck cleanup`; prints one line per node it cleans (or would clean).
pub async fn run(args: CleanupArgs) -> Result<Outcome, Error> {
    let client = crate::connect::client(&args.client).await?;
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

async fn clean(actuator: &Actuator, found: &Leftovers) -> Result<(), actuate::Error> {
    if found.remediation {
        actuator.release(&found.node).await?;
    }
    if found.condition {
        actuator.remove_condition(&found.node).await?;
    }
    Ok(())
}
