//! Real nodes: the upstream kubelet and its own containerd, each node in namespaces of its own,
//! with a root disk that can be made to die and a network that can be cut.
//!
//! The simulated fleet ([`crate::fleet`]) plays kubelets as their authors believe they behave;
//! this module runs the real one, so that what pulsecheck is tested against is what a kubelet
//! does, not what we think it does. Each real node is:
//!
//! - a **holder**: `unshare --mount --net --pid --fork --kill-child --mount-proc`, whose first
//!   child is the init of the node's PID namespace. containerd, the kubelet, the shims and every
//!   container live in that PID namespace, so when the holder dies (stop, drop, or the lab
//!   killed with SIGKILL, through `PR_SET_PDEATHSIG`) the kernel kills all of them, and the
//!   node's mount and network namespaces, its FUSE mount and its veth go with them;
//! - a **root disk**: the kubelet's root dir, containerd's root and the node's
//!   `/etc/os-release` live on a [`FaultDisk`] mounted only inside the node's mount namespace;
//! - a **network**: a veth pair, `10.213.S.1` on the host and `10.213.S.2` (`eth0`) in the node,
//!   where S is the node's slot, unique on the machine. The node reaches the apiserver (on the
//!   host's loopback) through a forwarder the lab runs on `10.213.S.1:6443`; pulsecheck, on the
//!   host, reaches the kubelet at `10.213.S.2:10250`. Faults on the network are nftables rules
//!   inside the node's namespace, so packets are dropped, not refused, as on a real cut;
//! - **Pods**: a CNI bridge (`10.214.S.0/24`) inside the node's namespace, and a sandbox image
//!   built here from `tools/pause` ([`crate::image`]), as no registry can be reached;
//! - a **janitor**: a shell waiting on a pipe from the lab. When the pipe closes (the lab ended,
//!   however), it waits for the node's init to be gone and removes the cgroups the node's
//!   containers had (`/sys/fs/cgroup/*/pulsecheck-lab/S-PID`), the one thing the kernel does not
//!   take away with the namespaces;
//! - **private host paths**: what containerd, runc, CNI and the kubelet write outside their
//!   configured folders (`/run`, `/var/lib`, `/var/log`) is a tmpfs of the node's mount
//!   namespace, so nothing of a node lands on the host's disk.
//!
//! The kubelet is configured as a production kubelet is (webhook authentication and
//! authorization, a serving certificate from the cluster CA, client certificate
//! `system:node:NAME` under the Node authorizer, Lease renewal), with its periods settable so
//! tests can compress time, and with only what this kind of machine needs on top (each such
//! setting says why in [`kubelet_config`]).

use std::{
    io,
    net::Ipv4Addr,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::task::AbortOnDropHandle;

use crate::{
    binaries,
    controlplane::ControlPlane,
    faultfs::{DiskFault, FaultDisk},
    image::{self, ImageFile, ImageSpec},
    process::{self, Process, log_tail},
};

/// Label on every Node this module starts.
pub const REAL_NODE_LABEL: &str = "lab.pulsecheck.dev/real-node";
/// The sandbox image every real node's containerd runs Pods with.
pub const PAUSE_IMAGE: &str = "pulsecheck.lab/pause:1";
/// The kubelet's HTTPS port on the node's address.
pub const KUBELET_PORT: u16 = 10250;
/// Port of the apiserver forwarder on the host end of each node's veth.
const APISERVER_PORT: u16 = 6443;
/// How long a node may take to register and report Ready (two cores, several at once).
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long containerd may take to answer on its socket.
const CONTAINERD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopped node's processes may take to be gone.
const GONE_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(100);
/// Slots (the third octet of the node's addresses) tried, in order, for a free veth name.
const SLOTS: std::ops::RangeInclusive<u8> = 1..=250;
/// The node's root disk, as its programs see it (in its own mount namespace).
const DISK: &str = "disk";
/// The paths under the disk, relative to its root.
const KUBELET_ROOT: &str = "kubelet";
/// Where the kubelet's root dir (on the fault disk) appears inside the node: the upstream default
/// `--root-dir`, the same on every node, as a DaemonSet's hostPath (pulsecheck-agent's) needs.
pub const KUBELET_ROOT_DIR: &str = "/var/lib/kubelet";
const CONTAINERD_ROOT: &str = "containerd";
const OS_RELEASE: &str = "etc/os-release";
/// Host paths that are a tmpfs of each node's own (in its mount namespace): containerd 1.6
/// keeps shim sockets and runc state under `/run/containerd` and CNI network namespaces under
/// `/run/netns` whatever its config says, libcni caches results in `/var/lib/cni`, and the
/// kubelet writes Pod logs to `/var/log/pods` and `/var/log/containers`. A node's folder may
/// not be under them.
const NODE_PRIVATE: [&str; 3] = ["/run", "/var/lib", "/var/log"];
/// Which of [`NODE_PRIVATE`] `path` is under, resolving links through its nearest existing
/// ancestor (`/var/run` is `/run`).
fn under_node_private(path: &Path) -> Option<&'static str> {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let resolved =
        absolute.ancestors().find_map(|a| std::fs::canonicalize(a).ok().map(|c| c.join(absolute.strip_prefix(a).unwrap_or(Path::new(""))))).unwrap_or(absolute);
    NODE_PRIVATE.into_iter().find(|p| resolved.starts_with(p))
}

/// What the node's `/etc/os-release` says while its disk is healthy (`osImage`).
pub const OS_IMAGE: &str = "pulsecheck lab node (Debian GNU/Linux)";
/// The Debian packages real nodes need, for the errors that say how to get them.
pub const DEBIAN_PACKAGES: &str = "containerd runc containernetworking-plugins nftables iproute2 util-linux";

/// Why real nodes could not run or do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The machine lacks something real nodes need.
    #[error("real nodes cannot run on this machine: {missing}; {how}")]
    Unsupported {
        /// What is missing.
        missing: String,
        /// How to get it.
        how: String,
    },
    /// A file or system call failed.
    #[error("real node {node}: cannot {action}: {source}")]
    Io {
        /// The node.
        node: String,
        /// What was being done.
        action: String,
        /// The operating system's reason.
        #[source]
        source: io::Error,
    },
    /// A helper command (ip, nft, nsenter, ctr, mount) failed.
    #[error("real node {node}: `{command}` failed: {output}")]
    Command {
        /// The node.
        node: String,
        /// The command line.
        command: String,
        /// Its status and standard error.
        output: String,
    },
    /// containerd or the kubelet failed.
    #[error("real node {node}: {program} {what}; its log {}:\n{tail}", .log.display())]
    Program {
        /// The node.
        node: String,
        /// containerd or kubelet.
        program: &'static str,
        /// What went wrong.
        what: String,
        /// Its log.
        log: PathBuf,
        /// The log's last lines.
        tail: String,
    },
    /// The node's folder is where the node gets a private tmpfs.
    #[error("real node {node}: its folder {} is under {under}, which each node gets a private tmpfs for; choose a folder elsewhere (e.g. under /tmp)", .dir.display())]
    Folder {
        /// The node.
        node: String,
        /// Its folder.
        dir: PathBuf,
        /// The private path it is under.
        under: &'static str,
    },
    /// No slot was free for the node's network.
    #[error("real node {node}: every slot 10.213.1-250.0/24 is taken (veth pcl1..pcl250 exist)")]
    NoSlot {
        /// The node.
        node: String,
    },
    /// A certificate could not be made.
    #[error("real node {node}: {source}")]
    Certificate {
        /// The node.
        node: String,
        /// Why.
        #[source]
        source: crate::controlplane::Error,
    },
    /// The sandbox image could not be built.
    #[error(transparent)]
    Image(#[from] image::Error),
    /// A program could not be started.
    #[error(transparent)]
    Spawn(#[from] process::Error),
    /// The kubelet or kube-scheduler binary is missing.
    #[error(transparent)]
    Binaries(#[from] binaries::Error),
}

/// Result of this module's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The programs and files of this machine that real nodes use, found by [`HostTools::check`].
#[derive(Debug, Clone)]
pub struct HostTools {
    /// The kubelet (`tools/build.sh nodes`).
    pub kubelet: PathBuf,
    /// kube-proxy (`tools/build.sh nodes`): Services' ClusterIPs on the node, in nftables mode.
    pub kube_proxy: PathBuf,
    /// The sandbox's program (`tools/build.sh nodes`).
    pub pause: PathBuf,
    /// containerd (Debian package `containerd`).
    pub containerd: PathBuf,
    /// containerd's command-line client.
    pub ctr: PathBuf,
    /// Where the CNI plugins are (Debian package `containernetworking-plugins`).
    pub cni_bin: PathBuf,
}

/// Where Debian's containernetworking-plugins put the CNI plugins.
const CNI_BIN: &str = "/usr/lib/cni";

impl HostTools {
    /// Checks that this machine can run real nodes, and says exactly what is missing and how to
    /// get it when it cannot: root, `/dev/fuse`, cgroups, containerd, runc, the CNI plugins,
    /// nft, ip, nsenter, unshare, mount, and the kubelet and pause the project builds.
    pub fn check() -> Result<HostTools> {
        let unsupported = |missing: String, how: &str| Error::Unsupported { missing, how: how.to_owned() };
        if !nix::unistd::geteuid().is_root() {
            return Err(unsupported(
                format!("not root (uid {})", nix::unistd::geteuid()),
                "real nodes need namespaces, mounts and cgroups; run as root, or use the simulated fleet (--nodes N)",
            ));
        }
        if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/fuse") {
            return Err(unsupported(format!("/dev/fuse cannot be opened ({e})"), "load the fuse module (`modprobe fuse`), or give the container /dev/fuse"));
        }
        let cgroups = Path::new("/sys/fs/cgroup");
        if cgroups.join("cgroup.controllers").is_file() {
            // The node's cgroups (cgroupRoot, the janitor, the leak checks) are laid out per v1
            // hierarchy; a unified hierarchy would need its controllers delegated too.
            return Err(unsupported(
                "this host's cgroups are pure v2 (a unified hierarchy at /sys/fs/cgroup); the lab's real nodes support cgroup v1 and hybrid hosts".into(),
                "boot with systemd.unified_cgroup_hierarchy=0, or use the simulated fleet (--nodes N)",
            ));
        }
        if !cgroups.join("memory").is_dir() {
            return Err(unsupported(
                "no cgroup v1 hierarchy at /sys/fs/cgroup (no memory controller)".into(),
                "mount the cgroup v1 hierarchies at /sys/fs/cgroup",
            ));
        }
        let apt = format!("install them with `apt-get install {DEBIAN_PACKAGES}`");
        let missing: Vec<&str> = ["containerd", "containerd-shim-runc-v2", "runc", "ctr", "nft", "ip", "nsenter", "unshare", "mount"]
            .into_iter()
            .filter(|program| which(program).is_none())
            .collect();
        if !missing.is_empty() {
            return Err(unsupported(format!("{} not on PATH", missing.join(", ")), &apt));
        }
        let cni_missing: Vec<&str> = ["bridge", "host-local", "loopback"].into_iter().filter(|p| !Path::new(CNI_BIN).join(p).is_file()).collect();
        if !cni_missing.is_empty() {
            return Err(unsupported(format!("CNI plugins {} not in {CNI_BIN}", cni_missing.join(", ")), &apt));
        }
        let found = binaries::Binaries::locate()?;
        let kubelet = found.require_node_program(binaries::KUBELET)?;
        let kube_proxy = found.require_node_program(binaries::KUBE_PROXY)?;
        let pause = found.require_node_program(binaries::PAUSE)?;
        let tools = HostTools {
            kubelet,
            kube_proxy,
            pause,
            containerd: which("containerd").unwrap_or_default(),
            ctr: which("ctr").unwrap_or_default(),
            cni_bin: PathBuf::from(CNI_BIN),
        };
        // The programs run inside the node's mount namespace, where these paths are a tmpfs.
        for program in [&tools.kubelet, &tools.kube_proxy, &tools.pause, &tools.containerd, &tools.cni_bin] {
            if let Some(under) = under_node_private(program) {
                return Err(unsupported(
                    format!("{} is under {under}, which each real node gets a private tmpfs for, so the node could not run it", program.display()),
                    "build the tools elsewhere (PULSECHECK_CACHE=/some/other/dir bash tools/build.sh nodes)",
                ));
            }
        }
        Ok(tools)
    }
}

/// `program`'s path on `PATH`.
fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|p| p.is_file())
}

/// The kubelet's periods; `None` is the kubelet's own default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KubeletTiming {
    /// `nodeStatusUpdateFrequency` (default 10 s): how often the status loop runs.
    pub status_update_frequency: Option<Duration>,
    /// `nodeStatusReportFrequency` (default 5 min): how often an unchanged status is still written.
    pub status_report_frequency: Option<Duration>,
    /// `nodeLeaseDurationSeconds` (default 40 s); the Lease is renewed every quarter of it.
    pub lease_duration: Option<Duration>,
}

/// A fault a real node can be put into at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NodeFault {
    /// Every read and write on the node's disk blocks.
    DiskHang,
    /// Every read and write on the node's disk fails with EIO.
    DiskError,
    /// Only `/etc/os-release` fails (EIO), as in the seed: osImage turns "Unknown".
    OsReleaseError,
    /// The kubelet is stopped (SIGSTOP).
    KubeletStop,
    /// The node cannot reach the apiserver (its packets are dropped).
    NetCut,
    /// The kubelet's port cannot be reached from outside the node (pulsecheck's probes, and the
    /// apiserver's logs/exec), while the node still reaches the apiserver.
    ProbeCut,
    /// Every fault above undone.
    Recover,
}

impl std::fmt::Display for NodeFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use clap::ValueEnum as _;
        f.write_str(self.to_possible_value().map(|v| v.get_name().to_owned()).unwrap_or_default().as_str())
    }
}

/// How to start one real node.
#[derive(Debug, Clone)]
pub struct RealNodeOptions {
    /// The Node's name.
    pub name: String,
    /// Folder for the node's files (its disk's backing, logs, certificates); created.
    pub dir: PathBuf,
    /// The kubelet's periods.
    pub timing: KubeletTiming,
}

/// The network faults in force, as nftables rules in the node's namespace.
#[derive(Debug, Clone, Copy, Default)]
struct NetworkFaults {
    net_cut: bool,
    probe_cut: bool,
}

/// One running real node. [`RealNode::stop`] ends it and waits until nothing of it is left;
/// dropping it kills it too.
pub struct RealNode {
    name: String,
    slot: u8,
    dir: PathBuf,
    /// The holder dies first: with it, the kernel kills everything in the node's PID namespace.
    holder: Process,
    kubelet: Process,
    containerd: Process,
    kube_proxy: Process,
    init_pid: u32,
    disk: FaultDisk,
    /// Aborted when dropped: on every path out of start(), and with the node.
    forwarder: AbortOnDropHandle<()>,
    janitor: Option<std::process::Child>,
    network: NetworkFaults,
    kubelet_stopped: bool,
    /// The node's cgroups, `S-PID` (slot and init): a later node on the same slot never shares
    /// them, so a late janitor cannot remove what another node uses.
    cgroup_id: String,
    /// The holder has been killed (its init PID is never signalled twice: it may be reused).
    ended: bool,
}

impl std::fmt::Debug for RealNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealNode").field("name", &self.name).field("address", &self.address()).field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl RealNode {
    /// Starts the node and returns once its Node is Ready in `control_plane`.
    pub async fn start(control_plane: &ControlPlane, tools: &HostTools, options: RealNodeOptions) -> Result<RealNode> {
        let started = Instant::now();
        let name = options.name.clone();
        let dir = options.dir.clone();
        let io_err = |action: &str| {
            let node = name.clone();
            let action = action.to_owned();
            move |source| Error::Io { node, action, source }
        };
        // Refused before anything is touched: the node's programs would not see a folder under
        // the paths it gets a private tmpfs for.
        if let Some(under) = under_node_private(&dir) {
            return Err(Error::Folder { node: name.clone(), dir, under });
        }
        // A folder left by a lab killed earlier holds stale state (IPAM allocations, containerd's
        // and the kubelet's metadata): every node starts from nothing.
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io_err("remove what an earlier node left in its folder"))?;
        }
        std::fs::create_dir_all(&dir).map_err(io_err("create the node's folder"))?;
        let backing = dir.join("backing");
        for sub in [KUBELET_ROOT, CONTAINERD_ROOT, "etc"] {
            std::fs::create_dir_all(backing.join(sub)).map_err(io_err("create the disk's folders"))?;
        }
        for sub in [DISK, "pki", "run", "cni", "cni-ipam", "images"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(io_err("create the node's folders"))?;
        }
        std::fs::write(backing.join(OS_RELEASE), os_release()).map_err(io_err("write its /etc/os-release"))?;

        let holder = Process::spawn(
            "node namespaces",
            Path::new("unshare"),
            // pause as the namespace's init: it reaps the orphans a PID 1 inherits.
            &["--mount", "--net", "--pid", "--fork", "--kill-child", "--mount-proc", "--propagation", "private", "--"]
                .map(String::from)
                .into_iter()
                .chain([tools.pause.display().to_string()])
                .collect::<Vec<_>>(),
            &dir.join("holder.log"),
        )?;
        let init_pid = wait_for_child(holder.pid(), GONE_TIMEOUT).await.ok_or_else(|| Error::Program {
            node: name.clone(),
            program: "unshare",
            what: "started no namespace init".into(),
            log: holder.log().to_path_buf(),
            tail: holder.log_tail(),
        })?;
        let slot = claim_slot(&name, init_pid)?;
        let cgroup_id = format!("{slot}-{init_pid}");
        let janitor = spawn_janitor(&name, &dir, init_pid, &cgroup_id)?;
        let node = NodeShell { name: name.clone(), init_pid };
        let (host_ip, node_ip) = addresses(slot);
        let host_link = veth_name(slot);
        node.host(&["ip", "addr", "add", &format!("{host_ip}/24"), "dev", &host_link])?;
        node.host(&["ip", "link", "set", &host_link, "up"])?;
        node.inside_net(&["ip", "link", "set", "lo", "up"])?;
        node.inside_net(&["ip", "addr", "add", &format!("{node_ip}/24"), "dev", "eth0"])?;
        node.inside_net(&["ip", "link", "set", "eth0", "up"])?;
        node.inside_net(&["ip", "route", "add", "default", "via", &host_ip.to_string()])?;
        // What the node sends from its Pods leaves with the node's address, as on a cloud
        // network that routes node addresses only: the host has no route to 10.214.S.0/24.
        node.run_with_input(&["nft", "-f", "-"], Some(&["--net"]), Some(&pod_masquerade(slot)))?;
        let forwarder =
            AbortOnDropHandle::new(forward_apiserver(host_ip, control_plane.port()).await.map_err(io_err("listen for the node's apiserver traffic"))?);

        let disk_path = dir.join(DISK);
        let disk = FaultDisk::mount_in_namespace_of(init_pid, &backing, &disk_path).map_err(io_err("mount its fault disk"))?;
        node.inside_mnt(&["mount", "--bind", &disk_path.join(OS_RELEASE).display().to_string(), "/etc/os-release"])?;
        for private in NODE_PRIVATE {
            // Bounded: Pod logs live here, in memory.
            node.inside_mnt(&["mount", "-t", "tmpfs", "-o", "mode=0755,size=256m", "pulsecheck-lab-node", private])?;
        }
        // The kubelet's root dir lives on the fault disk, at the usual path inside the node.
        node.inside_mnt(&["mkdir", "-p", KUBELET_ROOT_DIR])?;
        node.inside_mnt(&["mount", "--bind", &disk_path.join(KUBELET_ROOT).display().to_string(), KUBELET_ROOT_DIR])?;
        write_cgroup_parents(&cgroup_id).map_err(io_err("create its cgroups"))?;

        let pki = dir.join("pki");
        let client = control_plane
            .issue_client_certificate(&format!("system:node:{name}"), &["system:nodes"])
            .map_err(|source| Error::Certificate { node: name.clone(), source })?;
        let serving = control_plane
            .issue_serving_certificate(&name, &[std::net::IpAddr::V4(node_ip)], &[&name])
            .map_err(|source| Error::Certificate { node: name.clone(), source })?;
        let write = |file: &str, text: &str, mode: u32| {
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(mode)
                .open(pki.join(file))
                .map_err(io_err("write its certificates"))?;
            io::Write::write_all(&mut f, text.as_bytes()).map_err(io_err("write its certificates"))
        };
        write("ca.crt", control_plane.ca_pem(), 0o644)?;
        write("kubelet-client.crt", &client.cert_pem, 0o644)?;
        // The node's credentials: its owner's only.
        write("kubelet-client.key", &client.key_pem, 0o600)?;
        write("kubelet.crt", &serving.cert_pem, 0o644)?;
        write("kubelet.key", &serving.key_pem, 0o600)?;
        let kubeconfig = dir.join("kubelet.kubeconfig");
        std::fs::write(&kubeconfig, node_kubeconfig(host_ip, &pki, "kubelet")).map_err(io_err("write the kubelet's kubeconfig"))?;
        // kube-proxy as kubeadm runs it: user system:kube-proxy, bound to system:node-proxier by
        // the apiserver's bootstrap policy.
        let proxy = control_plane.issue_client_certificate("system:kube-proxy", &[]).map_err(|source| Error::Certificate { node: name.clone(), source })?;
        write("kube-proxy-client.crt", &proxy.cert_pem, 0o644)?;
        write("kube-proxy-client.key", &proxy.key_pem, 0o600)?;
        let proxy_kubeconfig = dir.join("kube-proxy.kubeconfig");
        std::fs::write(&proxy_kubeconfig, node_kubeconfig(host_ip, &pki, "kube-proxy")).map_err(io_err("write kube-proxy's kubeconfig"))?;

        let socket = dir.join("run").join("containerd.sock");
        let containerd_config = dir.join("containerd.toml");
        std::fs::write(&containerd_config, containerd_config_toml(&dir, &disk_path, &socket, &tools.cni_bin)).map_err(io_err("write containerd's config"))?;
        std::fs::write(dir.join("cni").join("10-lab.conflist"), cni_conflist(slot, &dir)).map_err(io_err("write the CNI config"))?;
        let containerd = node.spawn("containerd", &tools.containerd, &[format!("--config={}", containerd_config.display())], &dir.join("containerd.log"))?;
        let mut containerd = containerd;
        wait_containerd(&node, tools, &socket, &mut containerd).await?;
        let archive = dir.join("images").join("pause.tar");
        ImageSpec {
            reference: PAUSE_IMAGE.into(),
            files: vec![ImageFile::executable("pause", &tools.pause, PAUSE_IMAGE)?],
            entrypoint: vec!["/pause".into()],
            user: Some("65535:65535".into()),
            cmd: vec![],
            labels: Default::default(),
            exposed_ports: vec![],
        }
        .write_archive(&archive)?;
        node.host(&[
            &tools.ctr.display().to_string(),
            "--address",
            &socket.display().to_string(),
            "--namespace",
            "k8s.io",
            "images",
            "import",
            "--snapshotter",
            "native",
            &archive.display().to_string(),
        ])?;

        let config = dir.join("kubelet.yaml");
        // The host's resolver configuration as it is now (it may be a link into the host's /run,
        // which the node does not see).
        let resolv = dir.join("resolv.conf");
        std::fs::write(&resolv, std::fs::read("/etc/resolv.conf").unwrap_or_default()).map_err(io_err("write its resolv.conf"))?;
        let paths = KubeletPaths { pki: &pki, socket: &socket, root: Path::new(KUBELET_ROOT_DIR), resolv: &resolv };
        std::fs::write(&config, kubelet_config(&paths, &cgroup_id, options.timing)).map_err(io_err("write the kubelet's config"))?;
        let kubelet_args = vec![
            format!("--config={}", config.display()),
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--root-dir={KUBELET_ROOT_DIR}"),
            format!("--cert-dir={}", pki.display()),
            format!("--hostname-override={name}"),
            format!("--node-ip={node_ip}"),
            format!("--node-labels={REAL_NODE_LABEL}=true"),
            "--v=2".into(),
        ];
        let kubelet = node.spawn("kubelet", &tools.kubelet, &kubelet_args, &dir.join("kubelet.log"))?;
        let proxy_args = vec![
            format!("--kubeconfig={}", proxy_kubeconfig.display()),
            format!("--hostname-override={name}"),
            "--proxy-mode=nftables".into(),
            format!("--cluster-cidr={POD_CIDR}"),
            // The node's conntrack table is the host kernel's: leave its sizes and timeouts alone.
            "--conntrack-max-per-core=0".into(),
            "--conntrack-tcp-timeout-established=0".into(),
            "--conntrack-tcp-timeout-close-wait=0".into(),
            "--v=1".into(),
        ];
        let kube_proxy = node.spawn("kube-proxy", &tools.kube_proxy, &proxy_args, &dir.join("kube-proxy.log"))?;
        let mut real = RealNode {
            name: name.clone(),
            slot,
            dir,
            holder,
            kubelet,
            containerd,
            kube_proxy,
            init_pid,
            disk,
            forwarder,
            janitor: Some(janitor),
            network: NetworkFaults::default(),
            kubelet_stopped: false,
            cgroup_id,
            ended: false,
        };
        real.wait_ready(&control_plane.client(), started).await?;
        tracing::info!(node = %real.name, address = %node_ip, elapsed = ?started.elapsed(), "real node Ready");
        Ok(real)
    }

    /// The Node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's address (its InternalIP, where its kubelet listens).
    pub fn address(&self) -> Ipv4Addr {
        addresses(self.slot).1
    }

    /// Where this node reaches the apiserver: the lab's relay on the host end of its veth. Every
    /// node reaches it (it is the host's own address, not routed through another node).
    pub fn apiserver_address(&self) -> std::net::SocketAddrV4 {
        std::net::SocketAddrV4::new(addresses(self.slot).0, APISERVER_PORT)
    }

    /// The node's folder (logs: `kubelet.log`, `containerd.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The kubelet's log file.
    pub fn kubelet_log(&self) -> &Path {
        self.kubelet.log()
    }

    /// The process id of the node's PID namespace init: while it lives, so does the node.
    pub fn init_pid(&self) -> u32 {
        self.init_pid
    }

    /// The name of the node's veth on the host.
    pub fn host_link(&self) -> String {
        veth_name(self.slot)
    }

    /// The cgroup folders the node's containers live in, one per hierarchy.
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        cgroup_dirs(&self.cgroup_id)
    }

    /// Puts the node into `fault`, or takes every fault away ([`NodeFault::Recover`]).
    pub fn inject(&mut self, fault: NodeFault) -> Result<()> {
        let shell = NodeShell { name: self.name.clone(), init_pid: self.init_pid };
        match fault {
            NodeFault::DiskHang => self.disk.switch().set(DiskFault::Hang),
            NodeFault::DiskError => self.disk.switch().set(DiskFault::Error),
            NodeFault::OsReleaseError => self.disk.switch().fail_file(OS_RELEASE, true),
            NodeFault::KubeletStop => {
                self.signal_kubelet(Signal::SIGSTOP)?;
                self.kubelet_stopped = true;
            }
            NodeFault::NetCut => {
                self.network.net_cut = true;
                shell.apply_network(self.network)?;
            }
            NodeFault::ProbeCut => {
                self.network.probe_cut = true;
                shell.apply_network(self.network)?;
            }
            NodeFault::Recover => {
                // Every step, whatever fails: then the first error.
                self.disk.switch().fail_file(OS_RELEASE, false);
                self.disk.switch().set(DiskFault::Healthy);
                self.network = NetworkFaults::default();
                let network = shell.apply_network(self.network);
                let mut kubelet = Ok(());
                if self.kubelet_stopped {
                    kubelet = self.signal_kubelet(Signal::SIGCONT);
                    // nsenter, the kubelet's parent, stopped itself along with its child.
                    let _ = kill(Pid::from_raw(self.kubelet.pid() as i32), Signal::SIGCONT);
                    self.kubelet_stopped = kubelet.is_err();
                }
                network.and(kubelet)?;
            }
        }
        tracing::info!(node = %self.name, %fault, "fault injected");
        Ok(())
    }

    /// Operations blocked on the node's disk right now (a hang is in force when this grows).
    pub fn blocked_disk_operations(&self) -> usize {
        self.disk.switch().blocked()
    }

    /// If containerd or the kubelet has exited, which and how.
    pub fn exited(&mut self) -> Option<String> {
        [&mut self.kubelet, &mut self.containerd, &mut self.kube_proxy]
            .into_iter()
            .find_map(|p| p.exit_status().map(|status| format!("{} exited ({status})", p.program())))
    }

    fn signal_kubelet(&self, signal: Signal) -> Result<()> {
        let pid = child_of(self.kubelet.pid()).ok_or_else(|| Error::Program {
            node: self.name.clone(),
            program: "kubelet",
            what: "is not running".into(),
            log: self.kubelet.log().to_path_buf(),
            tail: self.kubelet.log_tail(),
        })?;
        kill(Pid::from_raw(pid as i32), signal).map_err(|e| Error::Io {
            node: self.name.clone(),
            action: format!("send {signal} to the kubelet"),
            source: e.into(),
        })
    }

    async fn wait_ready(&mut self, client: &kube::Client, started: Instant) -> Result<()> {
        let nodes: Api<Node> = Api::all(client.clone());
        let mut last = String::from("not registered");
        loop {
            if let Some(what) = self.exited() {
                let program = if what.starts_with("kubelet") { &self.kubelet } else { &self.containerd };
                return Err(Error::Program {
                    node: self.name.clone(),
                    program: program.program(),
                    what,
                    log: program.log().to_path_buf(),
                    tail: program.log_tail(),
                });
            }
            match nodes.get_opt(&self.name).await {
                Ok(Some(node)) => {
                    let ready = node.status.as_ref().and_then(|s| s.conditions.as_ref()).and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
                    match ready {
                        Some(ready) if ready.status == "True" => return Ok(()),
                        Some(ready) => last = format!("Ready={} ({})", ready.status, ready.message.clone().unwrap_or_default()),
                        None => last = "registered, no Ready condition yet".into(),
                    }
                }
                Ok(None) => {}
                Err(e) => last = format!("cannot read the Node: {e}"),
            }
            if started.elapsed() > READY_TIMEOUT {
                return Err(Error::Program {
                    node: self.name.clone(),
                    program: "kubelet",
                    what: format!("did not report Ready within {READY_TIMEOUT:?} (last: {last})"),
                    log: self.kubelet.log().to_path_buf(),
                    tail: self.kubelet.log_tail(),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Ends the node: every process in its namespaces is killed, and this returns once they are
    /// all gone, its mount, veth and cgroups with them.
    pub async fn stop(mut self) {
        let init = self.init_pid;
        self.end_holder();
        let deadline = Instant::now() + GONE_TIMEOUT;
        while alive(init) && Instant::now() < deadline {
            tokio::time::sleep(POLL).await;
        }
        // Waiting for the janitor blocks: off the runtime's workers.
        let mut janitor = self.janitor.take();
        let name = self.name.clone();
        let _ = tokio::task::spawn_blocking(move || finish_janitor(&name, janitor.as_mut())).await;
    }

    fn end_holder(&mut self) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        // A process blocked on the hung disk cannot die until its request is answered: release
        // the disk for good first, so the kill below is not held up by the fault itself.
        self.disk.switch().close();
        // SIGKILL to unshare: --kill-child passes it on to the namespace's init, whose death
        // makes the kernel kill every other process in the namespace.
        let _ = kill(Pid::from_raw(self.holder.pid() as i32), Signal::SIGKILL);
        let _ = kill(Pid::from_raw(self.init_pid as i32), Signal::SIGKILL);
        self.forwarder.abort();
    }
}

/// Closes the janitor's pipe and waits for it to have removed the node's cgroups.
fn finish_janitor(node: &str, janitor: Option<&mut std::process::Child>) {
    if let Some(janitor) = janitor {
        drop(janitor.stdin.take());
        let deadline = Instant::now() + GONE_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = janitor.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        tracing::warn!(node, "the janitor did not finish within {GONE_TIMEOUT:?}");
    }
}

impl Drop for RealNode {
    fn drop(&mut self) {
        // After stop() the janitor is gone and the init reaped (its PID may be another's now).
        let Some(mut janitor) = self.janitor.take() else { return };
        self.end_holder();
        let deadline = Instant::now() + GONE_TIMEOUT;
        while alive(self.init_pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        finish_janitor(&self.name, Some(&mut janitor));
    }
}

/// Whether process `pid` exists (and is not a zombie).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// The first child of `pid`, if it has one.
fn child_of(pid: u32) -> Option<u32> {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    children.split_whitespace().next()?.parse().ok()
}

async fn wait_for_child(pid: u32, timeout: Duration) -> Option<u32> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(child) = child_of(pid) {
            return Some(child);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The host's and the node's address for `slot`.
fn addresses(slot: u8) -> (Ipv4Addr, Ipv4Addr) {
    (Ipv4Addr::new(10, 213, slot, 1), Ipv4Addr::new(10, 213, slot, 2))
}

fn veth_name(slot: u8) -> String {
    format!("pcl{slot}")
}

/// The cgroup parent of the node's containers, as the kubelet's `cgroupRoot`.
fn cgroup_root(cgroup_id: &str) -> String {
    format!("/pulsecheck-lab/{cgroup_id}")
}

fn cgroup_dirs(cgroup_id: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") else { return Vec::new() };
    let mut dirs: Vec<PathBuf> = entries.flatten().map(|e| e.path().join("pulsecheck-lab").join(cgroup_id)).filter(|p| p.is_dir()).collect();
    dirs.sort();
    dirs
}

/// Creates the node's cgroup parent in every hierarchy (the kubelet wants its cgroupRoot to exist).
fn write_cgroup_parents(cgroup_id: &str) -> io::Result<()> {
    for entry in std::fs::read_dir("/sys/fs/cgroup")?.flatten() {
        let hierarchy = entry.path();
        if hierarchy.join("cgroup.procs").is_file() {
            // Another node's janitor may remove the shared parent in between (ENOENT): again.
            let dir = hierarchy.join("pulsecheck-lab").join(cgroup_id);
            let mut attempt = 0;
            while let Err(e) = std::fs::create_dir_all(&dir) {
                attempt += 1;
                if e.kind() != io::ErrorKind::NotFound || attempt >= 5 {
                    return Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display())));
                }
            }
        }
    }
    Ok(())
}

/// The janitor: once its standard input closes (the lab ended, however), it waits for the node's
/// init to be gone and removes the node's cgroups, deepest first (its last argument, the node's
/// folder, is only there to say whose janitor it is). It runs in a process group of
/// its own, without `PR_SET_PDEATHSIG`, so neither a Ctrl-C to the lab nor the lab's death takes
/// it along; the pipe's other end is close-on-exec, so only the lab holds it.
fn spawn_janitor(node: &str, dir: &Path, init_pid: u32, cgroup_id: &str) -> Result<std::process::Child> {
    let script = r#"
while read -r _; do :; done
i=0
# Gone, or a zombie nobody reaps (state Z after the command name).
while [ -e "/proc/$1" ] && ! sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | grep -q '^Z' && [ "$i" -lt 200 ]; do sleep 0.05; i=$((i+1)); done
for d in /sys/fs/cgroup/*/pulsecheck-lab/"$2"; do
  [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
done
rmdir /sys/fs/cgroup/*/pulsecheck-lab 2>/dev/null
exit 0
"#;
    std::process::Command::new("sh")
        .args(["-c", script, "pulsecheck-lab-janitor", &init_pid.to_string(), cgroup_id, &dir.display().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|source| Error::Io { node: node.to_owned(), action: "start its janitor (sh)".into(), source })
}

/// Claims the first free slot by creating its veth pair (the host end's name is the claim),
/// with the node's end moved into the node's network namespace as `eth0`.
fn claim_slot(node: &str, init_pid: u32) -> Result<u8> {
    for slot in SLOTS {
        let output = std::process::Command::new("ip")
            .args(["link", "add", &veth_name(slot), "type", "veth", "peer", "name", "eth0", "netns", &init_pid.to_string()])
            .stdin(Stdio::null())
            .output()
            .map_err(|source| Error::Io { node: node.to_owned(), action: "run ip link add".into(), source })?;
        if output.status.success() {
            return Ok(slot);
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !stderr.contains("File exists") {
            return Err(Error::Command {
                node: node.to_owned(),
                command: format!("ip link add {} type veth …", veth_name(slot)),
                output: stderr.trim().to_owned(),
            });
        }
    }
    Err(Error::NoSlot { node: node.to_owned() })
}

/// Runs commands on the host or inside one node's namespaces.
struct NodeShell {
    name: String,
    init_pid: u32,
}

impl NodeShell {
    fn host(&self, argv: &[&str]) -> Result<()> {
        self.run(argv, None)
    }

    fn inside_net(&self, argv: &[&str]) -> Result<()> {
        self.run(argv, Some(&["--net"]))
    }

    fn inside_mnt(&self, argv: &[&str]) -> Result<()> {
        self.run(argv, Some(&["--mount"]))
    }

    fn run(&self, argv: &[&str], namespaces: Option<&[&str]>) -> Result<()> {
        self.run_with_input(argv, namespaces, None)
    }

    fn run_with_input(&self, argv: &[&str], namespaces: Option<&[&str]>, input: Option<&str>) -> Result<()> {
        let mut full: Vec<String> = Vec::new();
        if let Some(namespaces) = namespaces {
            full.push("nsenter".into());
            full.push(format!("--target={}", self.init_pid));
            full.extend(namespaces.iter().map(|s| (*s).to_owned()));
            full.push("--".into());
        }
        full.extend(argv.iter().map(|s| (*s).to_owned()));
        let command_line = full.join(" ");
        let mut command = std::process::Command::new(&full[0]);
        command.args(&full[1..]).stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() }).stdout(Stdio::piped()).stderr(Stdio::piped());
        let io_err = |source| Error::Io { node: self.name.clone(), action: format!("run {command_line}"), source };
        let mut child = command.spawn().map_err(io_err)?;
        if let Some(input) = input
            && let Some(mut stdin) = child.stdin.take()
        {
            io::Write::write_all(&mut stdin, input.as_bytes()).map_err(io_err)?;
        }
        let output = child.wait_with_output().map_err(io_err)?;
        if output.status.success() {
            Ok(())
        } else {
            Err(Error::Command {
                node: self.name.clone(),
                command: command_line,
                output: format!("{}: {}", output.status, String::from_utf8_lossy(&output.stderr).trim()),
            })
        }
    }

    /// Starts `program` inside all of the node's namespaces (mount, network, PID).
    fn spawn(&self, name: &'static str, program: &Path, args: &[String], log: &Path) -> Result<Process> {
        let mut argv =
            vec![format!("--target={}", self.init_pid), "--mount".into(), "--net".into(), "--pid".into(), "--".into(), program.display().to_string()];
        argv.extend(args.iter().cloned());
        Ok(Process::spawn(name, Path::new("nsenter"), &argv, log)?)
    }

    /// Replaces the node's fault rules with `faults` (none: the table is removed).
    fn apply_network(&self, faults: NetworkFaults) -> Result<()> {
        self.run_with_input(&["nft", "-f", "-"], Some(&["--net"]), Some(&network_rules(faults)))
    }
}

/// The nftables script that puts the node's network into `faults` (run in its namespace).
fn network_rules(faults: NetworkFaults) -> String {
    let mut rules = String::from("table inet pulsecheck_lab {}\ndelete table inet pulsecheck_lab\n");
    if faults.net_cut || faults.probe_cut {
        rules.push_str("table inet pulsecheck_lab {\n");
        rules.push_str("  chain output { type filter hook output priority 0; policy accept;\n");
        if faults.net_cut {
            // net-cut: nothing the node sends reaches the apiserver: not its own forwarder, nor
            // the one kube-proxy sends the node's `kubernetes` Service traffic to (any node's).
            rules.push_str(&format!("    tcp dport {APISERVER_PORT} drop\n"));
        }
        rules.push_str("  }\n  chain forward { type filter hook forward priority 0; policy accept;\n");
        if faults.net_cut {
            // …nor what its Pods send (the `kubernetes` Service leads to a forwarder too).
            rules.push_str(&format!("    oifname \"eth0\" tcp dport {APISERVER_PORT} drop\n"));
        }
        rules.push_str("  }\n  chain input { type filter hook input priority 0; policy accept;\n");
        if faults.probe_cut {
            // probe-cut: nothing but the node itself (loopback) reaches the kubelet's port: not the
            // host, not other nodes, not Pods — pulsecheck's own Pod on this node included.
            rules.push_str(&format!("    iifname != \"lo\" tcp dport {KUBELET_PORT} drop\n"));
        }
        rules.push_str("  }\n}\n");
    }
    rules
}

/// Relays the node's connections to `10.213.S.1:6443` to the apiserver on the host's loopback.
async fn forward_apiserver(host_ip: Ipv4Addr, apiserver_port: u16) -> io::Result<JoinHandle<()>> {
    let listener = TcpListener::bind((host_ip, APISERVER_PORT)).await?;
    Ok(tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((mut inbound, _)) = accepted else { continue };
                    connections.spawn(async move {
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, apiserver_port)).await {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    }))
}

async fn wait_containerd(node: &NodeShell, tools: &HostTools, socket: &Path, containerd: &mut Process) -> Result<()> {
    let deadline = Instant::now() + CONTAINERD_TIMEOUT;
    loop {
        if let Some(status) = containerd.exit_status() {
            return Err(Error::Program {
                node: node.name.clone(),
                program: "containerd",
                what: format!("exited ({status})"),
                log: containerd.log().to_path_buf(),
                tail: containerd.log_tail(),
            });
        }
        if socket.exists() && node.host(&[&tools.ctr.display().to_string(), "--address", &socket.display().to_string(), "version"]).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::Program {
                node: node.name.clone(),
                program: "containerd",
                what: format!("did not answer on {} within {CONTAINERD_TIMEOUT:?}", socket.display()),
                log: containerd.log().to_path_buf(),
                tail: log_tail(containerd.log()),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

fn os_release() -> String {
    format!("PRETTY_NAME=\"{OS_IMAGE}\"\nNAME=\"pulsecheck lab node\"\nID=debian\n")
}

/// A kubeconfig for one of the node's programs (`kubelet`, `kube-proxy`), with the client
/// certificate `PROGRAM-client.crt` in `pki`.
fn node_kubeconfig(host_ip: Ipv4Addr, pki: &Path, program: &str) -> String {
    // The apiserver's certificate names localhost, not the forwarder's address.
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: https://{host_ip}:{APISERVER_PORT}\n    tls-server-name: localhost\n    certificate-authority: {ca}\n\
         users:\n- name: {program}\n  user:\n    client-certificate: {crt}\n    client-key: {key}\ncontexts:\n- name: lab\n  context:\n    cluster: lab\n    user: {program}\ncurrent-context: lab\n",
        ca = pki.join("ca.crt").display(),
        crt = pki.join(format!("{program}-client.crt")).display(),
        key = pki.join(format!("{program}-client.key")).display(),
    )
}

/// Every real node's Pods are in `10.214.S.0/24` (S: the node's slot).
const POD_CIDR: &str = "10.214.0.0/16";

/// The nftables script that makes the node's Pods' traffic leave its `eth0` with the node's
/// address (a table of its own, apart from the fault rules).
fn pod_masquerade(slot: u8) -> String {
    format!(
        "table ip pulsecheck_lab_pods {{\n  chain postrouting {{ type nat hook postrouting priority srcnat; policy accept;\n    ip saddr 10.214.{slot}.0/24 oifname \"eth0\" masquerade\n  }}\n}}\n"
    )
}

fn seconds(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// Where the kubelet's files are.
struct KubeletPaths<'a> {
    /// Certificates (`ca.crt`, `kubelet.crt`, `kubelet.key`).
    pki: &'a Path,
    /// containerd's socket.
    socket: &'a Path,
    /// The kubelet's root dir, on the node's disk.
    root: &'a Path,
    /// The resolver configuration Pods get.
    resolv: &'a Path,
}

/// The kubelet's configuration: a production kubelet's, plus what this kind of machine needs.
fn kubelet_config(paths: &KubeletPaths<'_>, cgroup_id: &str, timing: KubeletTiming) -> String {
    let mut yaml = format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# As in production: callers (the apiserver, pulsecheck) authenticate with a client certificate
# from the cluster CA or a token the kubelet reviews with the apiserver, and are authorized by
# SubjectAccessReview, with the kubelet's default cache periods (token reviews 2 min, allowed
# decisions 5 min, denied 30 s); nothing is served anonymously or on the read-only port.
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
  x509: {{clientCAFile: {ca}}}
authorization:
  mode: Webhook
readOnlyPort: 0
port: {KUBELET_PORT}
# A serving certificate from the cluster CA for the node's address, so callers verify it.
tlsCertFile: {pki}/kubelet.crt
tlsPrivateKeyFile: {pki}/kubelet.key
healthzBindAddress: 127.0.0.1
containerRuntimeEndpoint: unix://{socket}
imageServiceEndpoint: unix://{socket}
# This machine: its cgroups are v1 (hybrid), which kubelet 1.35+ refuses unless told.
failCgroupV1: false
# No systemd here to delegate cgroups to.
cgroupDriver: cgroupfs
# No kubepods hierarchy and no node-allocatable enforcement: the node's containers go into one
# cgroup of the lab's own (cgroupRoot), which the lab removes when the node ends.
cgroupsPerQOS: false
enforceNodeAllocatable: []
cgroupRoot: {cgroup_root}
# This machine may have swap.
failSwapOn: false
# The node's disk is a folder on the host's: the host's free space is not the node's business,
# and nothing can be pulled back after an eviction or an image garbage collection.
evictionHard: {{}}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# cadvisor measures only the filesystem types it knows (ext4, xfs, overlay, ...), not a FUSE
# disk: with local storage isolation on, the kubelet refuses to start ("failed to get rootfs
# info"). Pods then have no ephemeral-storage accounting on real nodes.
localStorageCapacityIsolation: false
# Flex volume plugins: on the node's disk, not in the host's /usr/libexec/kubernetes.
volumePluginDir: {plugins}
# The host's resolver configuration, copied (the node's /run is its own).
resolvConf: {resolv}
"#,
        ca = paths.pki.join("ca.crt").display(),
        pki = paths.pki.display(),
        socket = paths.socket.display(),
        cgroup_root = cgroup_root(cgroup_id),
        plugins = paths.root.join("volume-plugins").display(),
        resolv = paths.resolv.display(),
    );
    if let Some(d) = timing.status_update_frequency {
        yaml.push_str(&format!("nodeStatusUpdateFrequency: {}\n", seconds(d)));
    }
    if let Some(d) = timing.status_report_frequency {
        yaml.push_str(&format!("nodeStatusReportFrequency: {}\n", seconds(d)));
    }
    if let Some(d) = timing.lease_duration {
        yaml.push_str(&format!("nodeLeaseDurationSeconds: {}\n", d.as_secs().max(1)));
    }
    yaml
}

fn containerd_config_toml(dir: &Path, disk: &Path, socket: &Path, cni_bin: &Path) -> String {
    format!(
        r#"version = 2
# The node's images and containers live on its fault disk; its runtime state does not (as /run).
root = "{root}"
state = "{state}"
[grpc]
  address = "{socket}"
[plugins."io.containerd.grpc.v1.cri"]
  # Built here from tools/pause: no registry can be reached.
  sandbox_image = "{PAUSE_IMAGE}"
  # This VM's root lacks CAP_SYS_RESOURCE: a negative oom_score_adj is refused.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    # overlayfs cannot sit on a FUSE disk; native copies.
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{cni_conf}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"#,
        root = disk.join(CONTAINERD_ROOT).display(),
        state = dir.join("run").join("state").display(),
        socket = socket.display(),
        cni_bin = cni_bin.display(),
        cni_conf = dir.join("cni").display(),
        opt = dir.join("run").join("opt").display(),
    )
}

fn cni_conflist(slot: u8, dir: &Path) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "pulsecheck-lab",
        "plugins": [{
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": format!("10.214.{slot}.0/24") }]],
                // A Pod's default route through the bridge (its gateway): to Services, the
                // apiserver and other nodes' kubelets.
                "routes": [{ "dst": "0.0.0.0/0" }],
                "dataDir": dir.join("cni-ipam").display().to_string(),
            },
        }],
    })
    .to_string()
}

/// The names `pulsecheck-lab up --real-nodes N` gives its nodes.
pub fn real_node_name(i: usize) -> String {
    format!("real-{}", i + 1)
}

/// The socket in the lab folder through which `pulsecheck-lab fault` reaches a running
/// `pulsecheck-lab up`.
pub const FAULT_SOCKET: &str = "lab.sock";

/// How to start a [`RealFleet`].
#[derive(Debug, Clone)]
pub struct RealFleetOptions {
    /// How many nodes (`real-1` … `real-N`).
    pub nodes: usize,
    /// The kubelets' periods.
    pub timing: KubeletTiming,
    /// kube-controller-manager's `--node-monitor-grace-period`.
    pub kcm_grace: Duration,
}

/// Real nodes next to a control plane, with the controllers a cluster has (kube-controller-manager's
/// node lifecycle controller, kube-scheduler), and a socket that takes faults from
/// `pulsecheck-lab fault`.
pub struct RealFleet {
    nodes: std::sync::Arc<tokio::sync::Mutex<Vec<RealNode>>>,
    names: Vec<String>,
    controllers: Vec<crate::controllers::Controller>,
    socket: PathBuf,
    server: JoinHandle<()>,
}

impl RealFleet {
    /// Checks the machine, starts the controllers and the nodes (each Ready), and listens on
    /// `DIR/lab.sock` (DIR: the control plane's folder).
    pub async fn start(control_plane: &ControlPlane, options: &RealFleetOptions) -> Result<RealFleet, FleetError> {
        let (tools, kcm, scheduler) = Self::check_machine()?;
        let dir = control_plane.dir().to_path_buf();
        let kubeconfig = control_plane.kubeconfig_path();
        let controllers = vec![
            crate::controllers::Controller::kube_controller_manager_with_defaults(
                &kcm,
                kubeconfig,
                options.kcm_grace,
                &dir.join("kube-controller-manager.log"),
            )?,
            crate::controllers::Controller::kube_scheduler(&scheduler, kubeconfig, &dir.join("kube-scheduler.log"))?,
        ];
        let mut nodes = Vec::new();
        for i in 0..options.nodes {
            let name = real_node_name(i);
            let node_options = RealNodeOptions { name: name.clone(), dir: dir.join("nodes").join(&name), timing: options.timing };
            nodes.push(RealNode::start(control_plane, &tools, node_options).await?);
        }
        if let Some(first) = nodes.first() {
            publish_kubernetes_endpoint(&control_plane.client(), first.apiserver_address()).await?;
        }
        let names = nodes.iter().map(|n| n.name().to_owned()).collect();
        let socket = dir.join(FAULT_SOCKET);
        let _ = std::fs::remove_file(&socket);
        let listener = tokio::net::UnixListener::bind(&socket).map_err(|source| FleetError::Socket { path: socket.clone(), source })?;
        let nodes = std::sync::Arc::new(tokio::sync::Mutex::new(nodes));
        let server = tokio::spawn(serve_faults(listener, nodes.clone()));
        Ok(RealFleet { nodes, names, controllers, socket, server })
    }

    /// Checks that this machine can run a real fleet (see [`HostTools::check`]; and
    /// kube-controller-manager and kube-scheduler are built), before anything starts.
    pub fn check_machine() -> Result<(HostTools, PathBuf, PathBuf), Error> {
        let tools = HostTools::check()?;
        let found = binaries::Binaries::locate()?;
        let kcm = found.require_kube_controller_manager()?.to_path_buf();
        let scheduler = found.require_node_program(binaries::KUBE_SCHEDULER)?;
        Ok((tools, kcm, scheduler))
    }

    /// The nodes' names.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Where `pulsecheck-lab fault` reaches this fleet.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Puts `node` into `fault`.
    pub async fn inject(&self, node: &str, fault: NodeFault) -> Result<(), FleetError> {
        inject_named(&self.nodes, node, fault).await
    }

    /// If a controller, a kubelet or a containerd has exited, which and how.
    pub async fn exited(&mut self) -> Option<String> {
        for controller in &mut self.controllers {
            if let Err(e) = controller.check_alive() {
                return Some(e.to_string());
            }
        }
        let mut nodes = self.nodes.lock().await;
        nodes.iter_mut().find_map(|n| n.exited().map(|what| format!("real node {}: {what}", n.name())))
    }

    /// Stops the nodes (nothing of them is left when this returns), then the controllers.
    pub async fn stop(mut self) {
        self.server.abort();
        let nodes = std::mem::take(&mut *self.nodes.lock().await);
        for node in nodes {
            node.stop().await;
        }
        for controller in std::mem::take(&mut self.controllers) {
            controller.stop().await;
        }
    }
}

impl Drop for RealFleet {
    /// A fleet dropped without [`RealFleet::stop`] still ends its nodes: the server task holds
    /// them too, and aborting it lets them drop (each kills itself).
    fn drop(&mut self) {
        self.server.abort();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Why a [`RealFleet`] could not start or act.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// A node could not start.
    #[error(transparent)]
    Node(#[from] Error),
    /// A controller could not start.
    #[error(transparent)]
    Controller(#[from] crate::controllers::Error),
    /// The fault socket could not be made.
    #[error("cannot listen on {}: {source}", .path.display())]
    Socket {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A request to the apiserver failed.
    #[error("cannot {action}: {source}")]
    Kubernetes {
        /// What was being done.
        action: &'static str,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// No node has that name.
    #[error("no real node named {node} (the lab has {known})")]
    UnknownNode {
        /// The name asked for.
        node: String,
        /// The names it has.
        known: String,
    },
}

async fn inject_named(nodes: &tokio::sync::Mutex<Vec<RealNode>>, node: &str, fault: NodeFault) -> Result<(), FleetError> {
    let mut nodes = nodes.lock().await;
    let known = nodes.iter().map(|n| n.name().to_owned()).collect::<Vec<_>>().join(", ");
    match nodes.iter_mut().find(|n| n.name() == node) {
        Some(found) => Ok(found.inject(fault)?),
        None => Err(FleetError::UnknownNode { node: node.to_owned(), known }),
    }
}

/// How long a `pulsecheck-lab fault` client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// One request per connection: `NODE FAULT\n`, answered `ok\n` or `error: …\n`. Each
/// connection is served on its own, so a client that never sends its line holds up no other.
async fn serve_faults(listener: tokio::net::UnixListener, nodes: std::sync::Arc<tokio::sync::Mutex<Vec<RealNode>>>) {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted { Ok((stream, _)) => stream, Err(_) => continue },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let nodes = nodes.clone();
        connections.spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let answer = match tokio::time::timeout(REQUEST_TIMEOUT, tokio::io::BufReader::new(read).read_line(&mut line)).await {
                Ok(Ok(_)) => match parse_request(&line) {
                    Ok((node, fault)) => match inject_named(&nodes, &node, fault).await {
                        Ok(()) => "ok\n".to_owned(),
                        Err(e) => format!("error: {e}\n"),
                    },
                    Err(e) => format!("error: {e}\n"),
                },
                Ok(Err(e)) => format!("error: cannot read the request: {e}\n"),
                Err(_) => format!("error: no request within {REQUEST_TIMEOUT:?}\n"),
            };
            let _ = write.write_all(answer.as_bytes()).await;
        });
    }
}

fn parse_request(line: &str) -> Result<(String, NodeFault), String> {
    use clap::ValueEnum as _;
    let mut words = line.split_whitespace();
    let (Some(node), Some(kind), None) = (words.next(), words.next(), words.next()) else {
        return Err(format!("want 'NODE FAULT', got {:?}", line.trim()));
    };
    let fault = NodeFault::from_str(kind, false).map_err(|_| format!("unknown fault {kind:?}"))?;
    Ok((node.to_owned(), fault))
}

/// Asks the `pulsecheck-lab up` whose folder is `dir` to put `node` into `fault`.
pub async fn request_fault(dir: &Path, node: &str, fault: NodeFault) -> Result<(), String> {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
    let socket = dir.join(FAULT_SOCKET);
    let stream = tokio::net::UnixStream::connect(&socket)
        .await
        .map_err(|e| format!("cannot reach a running `pulsecheck-lab up --real-nodes` through {}: {e}", socket.display()))?;
    let (read, mut write) = stream.into_split();
    write.write_all(format!("{node} {fault}\n").as_bytes()).await.map_err(|e| format!("cannot send to {}: {e}", socket.display()))?;
    let mut answer = String::new();
    tokio::io::BufReader::new(read).read_line(&mut answer).await.map_err(|e| format!("no answer from {}: {e}", socket.display()))?;
    match answer.trim() {
        "ok" => Ok(()),
        other => Err(other.strip_prefix("error: ").unwrap_or(other).to_owned()),
    }
}

/// Points the `kubernetes` Service at `address`, as the apiserver's endpoint reconciler does
/// for its advertised address in a cluster: the lab's apiserver listens on loopback only, which
/// no Pod can reach (and which an EndpointSlice may not hold), so the Service leads to the
/// apiserver relay that every real node reaches. kube-proxy on each node then takes Pods'
/// connections to `10.0.0.1:443` there, as a Pod's in-cluster client expects.
async fn publish_kubernetes_endpoint(client: &kube::Client, address: std::net::SocketAddrV4) -> Result<(), FleetError> {
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};
    let slice = EndpointSlice {
        metadata: kube::api::ObjectMeta {
            name: Some("kubernetes".into()),
            namespace: Some("default".into()),
            labels: Some(
                [("kubernetes.io/service-name", "kubernetes"), ("endpointslice.kubernetes.io/managed-by", "lab.pulsecheck.dev")]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
            ),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: vec![Endpoint { addresses: vec![address.ip().to_string()], ..Default::default() }],
        ports: Some(vec![EndpointPort {
            name: Some("https".into()),
            port: Some(i32::from(address.port())),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
    };
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    slices
        .patch("kubernetes", &kube::api::PatchParams::apply("pulsecheck-lab").force(), &kube::api::Patch::Apply(&slice))
        .await
        .map(|_| ())
        .map_err(|source| FleetError::Kubernetes { action: "publish the kubernetes Service's endpoint", source })
}

/// Loads an OCI image archive into one containerd (the `k8s.io` namespace, where the kubelet
/// looks, on the native snapshotter the lab's nodes use).
fn import_archive(ctr: &Path, socket: &Path, archive: &Path) -> io::Result<()> {
    let output = std::process::Command::new(ctr)
        .args(["--address"])
        .arg(socket)
        .args(["--namespace", "k8s.io", "images", "import", "--snapshotter", "native"])
        .arg(archive)
        .output()?;
    if output.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("ctr images import exited ({}): {}", output.status, String::from_utf8_lossy(&output.stderr).trim())))
    }
}

impl RealNode {
    /// Loads the OCI image archive `archive` into this node's containerd, so its Pods can run
    /// the image with `imagePullPolicy: Never` or `IfNotPresent` (no registry is reachable).
    pub fn import_image(&self, archive: &Path) -> Result<()> {
        let ctr = which("ctr").ok_or_else(|| Error::Io { node: self.name.clone(), action: "find ctr".into(), source: io::ErrorKind::NotFound.into() })?;
        import_archive(&ctr, &self.dir.join("run").join("containerd.sock"), archive).map_err(|source| Error::Io {
            node: self.name.clone(),
            action: format!("import the image archive {}", archive.display()),
            source,
        })
    }
}

/// `pulsecheck-lab import --dir DIR FILE`: loads the image archive into the containerd of every
/// real node of the `pulsecheck-lab up --real-nodes N` running in DIR; returns the nodes.
pub fn import_into_lab(dir: &Path, archive: &Path) -> Result<Vec<String>, String> {
    if !archive.is_file() {
        return Err(format!("the image archive {} does not exist (make image writes target/image/pulsecheck.tar)", archive.display()));
    }
    let ctr = which("ctr").ok_or("ctr (Debian package containerd) is not on PATH")?;
    let nodes_dir = dir.join("nodes");
    let entries = std::fs::read_dir(&nodes_dir)
        .map_err(|e| format!("no real nodes in {} ({e}): is `pulsecheck-lab up --real-nodes N --dir {}` running?", nodes_dir.display(), dir.display()))?;
    let mut nodes: Vec<(String, PathBuf)> = entries
        .filter_map(Result::ok)
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path().join("run").join("containerd.sock")))
        .filter(|(_, socket)| socket.exists())
        .collect();
    nodes.sort();
    if nodes.is_empty() {
        return Err(format!("no running real node in {}: is `pulsecheck-lab up --real-nodes N --dir {}` running?", nodes_dir.display(), dir.display()));
    }
    for (node, socket) in &nodes {
        import_archive(&ctr, socket, archive).map_err(|e| format!("real node {node}: cannot import {}: {e}", archive.display()))?;
    }
    Ok(nodes.into_iter().map(|(node, _)| node).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_says_which_folder_has_no_lab_and_which_archive_is_missing() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = import_into_lab(tmp.path(), &tmp.path().join("pulsecheck.tar")).unwrap_err();
        assert!(missing.contains("pulsecheck.tar") && missing.contains("make image"), "{missing}");
        let archive = tmp.path().join("image.tar");
        std::fs::write(&archive, b"").unwrap();
        let no_lab = import_into_lab(&tmp.path().join("lab"), &archive).unwrap_err();
        assert!(no_lab.contains("lab/nodes") || no_lab.contains("ctr"), "{no_lab}");
    }

    #[test]
    fn folders_under_the_nodes_private_paths_are_found_through_links() {
        assert_eq!(under_node_private(Path::new("/var/lib/ci/lab/nodes/real-1")), Some("/var/lib"));
        assert_eq!(under_node_private(Path::new("/var/log")), Some("/var/log"));
        assert_eq!(under_node_private(Path::new("/tmp/lab/nodes/real-1")), None);
        assert_eq!(under_node_private(Path::new("/variable/lib")), None);
        if std::fs::canonicalize("/var/run").is_ok_and(|p| p == Path::new("/run")) {
            assert_eq!(under_node_private(Path::new("/var/run/lab/x")), Some("/run"), "/var/run is a link to /run here");
        }
    }

    #[test]
    fn fault_requests_name_a_node_and_a_fault() {
        assert_eq!(parse_request("real-1 disk-hang\n").unwrap(), ("real-1".to_owned(), NodeFault::DiskHang));
        assert_eq!(parse_request("real-2 recover").unwrap(), ("real-2".to_owned(), NodeFault::Recover));
        assert!(parse_request("real-1").unwrap_err().contains("NODE FAULT"));
        assert!(parse_request("real-1 melt").unwrap_err().contains("melt"));
    }

    #[test]
    fn the_kubelet_config_sets_only_the_periods_asked_for() {
        let paths = KubeletPaths { pki: Path::new("/p"), socket: Path::new("/s.sock"), root: Path::new("/d/kubelet"), resolv: Path::new("/n/resolv.conf") };
        let default = kubelet_config(&paths, "3-77", KubeletTiming::default());
        assert!(!default.contains("nodeStatusReportFrequency") && !default.contains("cacheTTL"), "{default}");
        assert!(default.contains("cgroupRoot: /pulsecheck-lab/3-77\n") && default.contains("volumePluginDir: /d/kubelet/volume-plugins\n"), "{default}");
        let fast = KubeletTiming {
            status_update_frequency: Some(Duration::from_secs(1)),
            status_report_frequency: Some(Duration::from_millis(10_500)),
            lease_duration: Some(Duration::from_secs(8)),
        };
        let yaml = kubelet_config(&paths, "3-77", fast);
        assert!(
            yaml.contains("nodeStatusUpdateFrequency: 1000ms\n")
                && yaml.contains("nodeStatusReportFrequency: 10500ms\n")
                && yaml.contains("nodeLeaseDurationSeconds: 8\n"),
            "{yaml}"
        );
    }

    #[test]
    fn network_faults_are_rules_in_the_nodes_namespace() {
        assert_eq!(addresses(7), (Ipv4Addr::new(10, 213, 7, 1), Ipv4Addr::new(10, 213, 7, 2)));
        assert_eq!(veth_name(250), "pcl250");
        assert!(veth_name(250).len() <= 15, "an interface name has at most 15 characters");
        let none = network_rules(NetworkFaults::default());
        assert_eq!(none, "table inet pulsecheck_lab {}\ndelete table inet pulsecheck_lab\n", "recover removes every rule");
        let cut = network_rules(NetworkFaults { net_cut: true, probe_cut: false });
        assert!(
            cut.contains("chain output { type filter hook output priority 0; policy accept;\n    tcp dport 6443 drop\n") && !cut.contains("10250"),
            "{cut}"
        );
        let probe = network_rules(NetworkFaults { net_cut: false, probe_cut: true });
        assert!(probe.contains("iifname != \"lo\" tcp dport 10250 drop") && !probe.contains("dport 6443"), "{probe}");
    }
}
