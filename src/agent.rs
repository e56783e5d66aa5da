//! The node agent's report: the one contract between `pulsecheck-agent` (the opt-in DaemonSet,
//! crate `agent/`) and the controller.
//!
//! Cluster-side, a kubelet whose status loop hangs on its disk can be seen only after its report
//! period (5 minutes by default); its Lease keeps renewing and `/healthz` keeps answering. The
//! agent runs on the node and does what the wedged kubelet gets stuck on — read the host's
//! `/etc/os-release`, stat, write, fsync and read back a file on the kubelet's filesystem — in a
//! loop of its own, and renews a Lease of its own from a second loop that never touches the
//! disk. The Lease carries what the disk loop found, so pulsecheck learns of a hung disk in
//! seconds, through the same watch machinery it uses for kubelet Leases.
//!
//! The Lease is `pulsecheck-agent-<node>` in pulsecheck's own namespace, labelled
//! [`COMPONENT_LABEL`]=[`COMPONENT`]; its `spec.renewTime` is renewed every few seconds and its
//! annotation [`REPORT_ANNOTATION`] holds a JSON [`Report`]. Durations in it are measured by the
//! agent's monotonic clock, and pulsecheck judges freshness by when it saw the renewals, so
//! neither side's wall clock enters the verdict. A ValidatingAdmissionPolicy shipped with the
//! chart lets an agent write only the Lease of the node its ServiceAccount token is bound to.

use serde::{Deserialize, Serialize};

/// Prefix of every agent Lease name; the rest is the node's name.
pub const LEASE_PREFIX: &str = "pulsecheck-agent-";

/// Label every agent Lease carries (and the controller's watch selects on).
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";

/// Value of [`COMPONENT_LABEL`] on agent Leases.
pub const COMPONENT: &str = "agent";

/// Annotation holding the JSON [`Report`].
pub const REPORT_ANNOTATION: &str = "pulsecheck.dev/agent-report";

/// Longest name an object (a Lease) may have: a DNS subdomain.
const MAX_NAME: usize = 253;

/// The agent Lease's name for node `node`, or `None` when the node's name is too long for one
/// (longer than 236 characters).
pub fn lease_name(node: &str) -> Option<String> {
    (!node.is_empty() && LEASE_PREFIX.len() + node.len() <= MAX_NAME).then(|| format!("{LEASE_PREFIX}{node}"))
}

/// The node an agent Lease named `lease` reports on, if it is an agent Lease.
pub fn node_of(lease: &str) -> Option<&str> {
    lease.strip_prefix(LEASE_PREFIX).filter(|n| !n.is_empty())
}

/// What an agent says in its Lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// What the disk loop found most recently.
    pub disk: DiskHealth,
    /// The agent received SIGTERM and is going away (a rollout, an eviction, a drain): its
    /// silence from now on says nothing about the node.
    #[serde(default)]
    pub terminating: bool,
}

/// The disk loop's state, as of the Lease's latest renewal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "camelCase")]
pub enum DiskHealth {
    /// The agent has not finished its first round of disk checks yet.
    Starting,
    /// The latest round of disk checks completed within its deadline.
    Ok,
    /// A disk operation has not returned for `for_seconds` (longer than the agent's deadline).
    #[serde(rename_all = "camelCase")]
    Hung {
        /// The file operated on, as seen on the node (host path).
        path: String,
        /// What was done to it: `read`, `stat`, `mkdir`, `write`, `fsync`.
        operation: String,
        /// How long it has not returned.
        for_seconds: u64,
    },
    /// Every round since the start of the first failed one, `for_seconds` ago, failed; the
    /// latest failure was `error`.
    #[serde(rename_all = "camelCase")]
    Failing {
        /// The file operated on, as seen on the node (host path).
        path: String,
        /// What was done to it.
        operation: String,
        /// The error, as the OS put it (`Input/output error (os error 5)`), or the agent's own
        /// for an operation that returned only after its deadline.
        error: String,
        /// Since when (seconds) every round failed.
        for_seconds: u64,
    },
}

impl std::fmt::Display for DiskHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DiskHealth::Starting => f.write_str("starting"),
            DiskHealth::Ok => f.write_str("ok"),
            DiskHealth::Hung { path, operation, for_seconds } => write!(f, "{operation} of {path} hung for {for_seconds}s"),
            DiskHealth::Failing { path, operation, error, for_seconds } => write!(f, "{operation} of {path} failing for {for_seconds}s: {error}"),
        }
    }
}

/// Whether a disk operation failing with `error` (as the agent reports it) can condemn a node:
/// the errors of a disk that is broken — EIO, a filesystem remounted read-only (EROFS). Others say
/// something about the node's configuration or load, not a dead disk: a full disk (ENOSPC,
/// EDQUOT), a denial (EACCES, EPERM: an SELinux policy would deny every node at once), an
/// operation that succeeded only after the agent's deadline (a slow disk). Those stay supporting.
pub fn failure_condemns(error: &str) -> bool {
    error.contains("(os error 5)") || error.contains("(os error 30)")
}

impl DiskHealth {
    /// Trouble the controller can condemn a node on, given time: a hang, or a failure with an
    /// error of a broken disk ([`failure_condemns`]). An agent asked to stop while its disk is
    /// in such trouble stays and goes on reporting it.
    pub fn condemning(&self) -> bool {
        match self {
            DiskHealth::Starting | DiskHealth::Ok => false,
            DiskHealth::Hung { .. } => true,
            DiskHealth::Failing { error, .. } => failure_condemns(error),
        }
    }
}

impl Report {
    /// The report as the annotation's value.
    pub fn to_annotation(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The report in an annotation's value; an error names what is wrong with it (data from
    /// the cluster: never a panic).
    pub fn from_annotation(value: &str) -> Result<Report, serde_json::Error> {
        serde_json::from_str(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_s_lease_name_round_trips_and_a_name_too_long_for_a_lease_has_none() {
        let name = lease_name("ip-10-0-0-1.ec2.internal").unwrap();
        assert_eq!(name, "pulsecheck-agent-ip-10-0-0-1.ec2.internal");
        assert_eq!(node_of(&name), Some("ip-10-0-0-1.ec2.internal"));
        assert_eq!(node_of("pulsecheck"), None);
        assert_eq!(node_of(LEASE_PREFIX), None);
        assert!(lease_name(&"n".repeat(236)).is_some());
        assert!(lease_name(&"n".repeat(237)).is_none());
        assert!(lease_name("").is_none());
    }

    #[test]
    fn reports_read_back_what_was_written_and_bad_ones_are_errors() {
        for disk in [
            DiskHealth::Starting,
            DiskHealth::Ok,
            DiskHealth::Hung { path: "/etc/os-release".into(), operation: "read".into(), for_seconds: 31 },
            DiskHealth::Failing { path: "/var/lib/kubelet/pulsecheck-agent/probe".into(), operation: "fsync".into(), error: "EIO".into(), for_seconds: 7 },
        ] {
            let report = Report { disk, terminating: false };
            assert_eq!(Report::from_annotation(&report.to_annotation()).unwrap(), report);
        }
        let wire = r#"{"disk":{"state":"hung","path":"/etc/os-release","operation":"read","forSeconds":12}}"#;
        assert_eq!(Report::from_annotation(wire).unwrap().disk, DiskHealth::Hung { path: "/etc/os-release".into(), operation: "read".into(), for_seconds: 12 });
        assert!(Report::from_annotation(r#"{"disk":{"state":"melted"}}"#).is_err());
        assert!(Report::from_annotation("not json").is_err());
    }
}
