//! The lab: a real kube-apiserver + etcd on loopback and a simulated kubelet fleet.
//!
//! Everything pulsecheck does against Kubernetes is tested here, through the same client code
//! the controller uses. The demo and the scale benchmarks run on it too. Nothing in the lab is
//! used by `pulsecheck run` in a real cluster.

pub mod args;
pub mod binaries;
pub mod certs;
pub mod controlplane;
pub mod fleet;
pub mod kubelet;
