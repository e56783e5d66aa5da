//! pulsecheck: a heartbeat consistency controller for Kubernetes nodes.
//!
//! A node can renew its Lease (a tiny in-memory write) while its NodeStatus has stopped
//! being refreshed because its root disk, container runtime or cadvisor is wedged. The node
//! lifecycle controller in kube-controller-manager counts the Lease as proof of life, so such
//! a node stays `Ready` while everything on it fails. pulsecheck cross-checks the two
//! heartbeats (and osImage "Unknown", problem conditions set by node-problem-detector and
//! kubelet probes) by its own clock, and taints or cordons the nodes that claim Ready but are
//! dead — behind a fleet guard, and reversibly.
//!
//! Layout: [`facts`] turns API objects into compact observations, [`verdict`] is the pure
//! decision core (`evaluate(now, ..)`), [`guard`] limits how much may be remediated at once,
//! [`observe`] runs the watches, [`actuate`] writes to Nodes, [`probe`] asks kubelets,
//! [`controller`] ties them into the `run` loop. The real local control plane, the simulated
//! kubelet fleet and the demo live in the `pulsecheck-lab` crate, which this crate never uses.

pub mod actuate;
pub mod admin;
pub mod agent;
pub mod cadence;
pub mod check;
pub mod cleanup;
pub mod cli;
pub mod config;
pub mod connect;
pub mod controller;
pub mod docket;
pub mod facts;
pub mod guard;
pub mod leader;
pub mod metrics;
pub mod observe;
pub mod parse;
pub mod probe;
pub mod verdict;

/// How a command ended without an error: the process exits 0 for [`Outcome::Clean`] and 1 for
/// [`Outcome::Findings`]; every error exits 2 (see [`cli`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to report.
    Clean,
    /// The command found something that needs attention (`check`: unhealthy nodes).
    Findings,
}

/// Well-known names pulsecheck puts on (or reads from) Nodes.
pub mod names {
    /// Field manager of every write pulsecheck makes.
    pub const FIELD_MANAGER: &str = "pulsecheck";
    /// Default key of the taint pulsecheck adds to zombie nodes.
    pub const TAINT_KEY: &str = "pulsecheck.dev/zombie";
    /// Label that keeps a node out of pulsecheck's hands (`pulsecheck.dev/exclude=true`).
    pub const EXCLUDE_LABEL: &str = "pulsecheck.dev/exclude";
    /// Annotation recording what pulsecheck did to a node (JSON [`crate::facts::Remediation`]).
    pub const REMEDIATION_ANNOTATION: &str = "pulsecheck.dev/remediation";
    /// Node condition type pulsecheck owns on `nodes/status`.
    pub const CONDITION_TYPE: &str = "HeartbeatConsistent";
    /// Namespace that holds the kubelets' Leases.
    pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";
}
