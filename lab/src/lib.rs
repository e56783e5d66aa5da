//! pulsecheck's lab: a real kube-apiserver + etcd on loopback, a simulated kubelet fleet, fake
//! kubelet endpoints and the demo.
//!
//! Everything pulsecheck does against Kubernetes is tested here, through the same client code
//! the controller uses; the demo and the scale benchmarks run on it too. It is its own crate so
//! that the product never ships it: the `pulsecheck` image cannot register simulated Nodes in a
//! cluster, and certificate generation, temporary folders and `anyhow` are not product
//! dependencies. The lab depends on the product (it runs the controller in the demo), never the
//! other way round; the product's integration tests use it as a dev-dependency.

pub mod args;
pub mod binaries;
pub mod certs;
pub mod controllers;
pub mod controlplane;
pub mod demo;
pub mod faultfs;
pub mod fleet;
pub mod image;
pub mod kubelet;
pub mod process;
pub mod realdemo;
pub mod realnode;
pub mod timeline;

/// Label set on every Node the simulated fleet creates.
pub const FLEET_LABEL: &str = "lab.pulsecheck.dev/simulated";

/// The repository's root folder (where `tools/build.sh` lives), known at compile time.
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(std::path::Path::to_path_buf).unwrap_or_default()
}
