//! Where the lab finds the Kubernetes programs it runs: kube-apiserver and etcd (always), and
//! kubectl and kube-controller-manager (for the callers that need them).
//!
//! The lab runs the real Go programs rather than a fake API, because what pulsecheck must get
//! right (RBAC, admission, resourceVersion conflicts, watch semantics) only a real apiserver
//! shows. Nobody can download release binaries on the project's machines, so `tools/build.sh`
//! builds them from the Go module proxy into a cache folder; people who already have
//! controller-runtime's envtest binaries can point `KUBEBUILDER_ASSETS` at them instead.
//!
//! This module only looks; it never builds, downloads or runs anything. When a program is
//! missing, the error says which one, every folder it looked in, and the one command that fixes
//! it, because that error is the first thing a new contributor sees.

use std::path::{Path, PathBuf};

/// Command that builds kube-apiserver and etcd into the cache folder.
pub const BUILD_CONTROL_COMMAND: &str = "bash tools/build.sh control";
/// Command that builds every tool, kubectl and kube-controller-manager included.
pub const BUILD_ALL_COMMAND: &str = "bash tools/build.sh all";

const KUBE_APISERVER: &str = "kube-apiserver";
const ETCD: &str = "etcd";
const KUBECTL: &str = "kubectl";
const KUBE_CONTROLLER_MANAGER: &str = "kube-controller-manager";
/// The real-node lab's kubelet.
pub const KUBELET: &str = "kubelet";
/// The real-node lab's scheduler.
pub const KUBE_SCHEDULER: &str = "kube-scheduler";
/// kube-proxy's file name.
pub const KUBE_PROXY: &str = "kube-proxy";
/// The real nodes' sandbox program (`tools/pause`).
pub const PAUSE: &str = "pause";
/// Command that builds what real nodes need.
pub const BUILD_NODES_COMMAND: &str = "bash tools/build.sh nodes";

/// What can go wrong while looking for the programs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Some programs are in none of the folders searched.
    #[error(
        "missing {missing}: looked in {looked_in}; build them with `{command}` (run from the repository root)",
        missing = .missing.join(" and "),
        looked_in = display_paths(.looked_in),
    )]
    Missing {
        /// Names of the programs not found, e.g. `["kube-apiserver", "etcd"]`.
        missing: Vec<&'static str>,
        /// Every folder searched, in search order.
        looked_in: Vec<PathBuf>,
        /// The command that builds them.
        command: &'static str,
    },
    /// No cache folder can be derived because none of the variables it comes from is set.
    #[error(
        "cannot find the pulsecheck cache folder: none of PULSECHECK_CACHE, XDG_CACHE_HOME or HOME is set \
         (and KUBEBUILDER_ASSETS does not hold kube-apiserver and etcd); set PULSECHECK_CACHE and run `{BUILD_CONTROL_COMMAND}`"
    )]
    NoCacheFolder,
}

/// Result of this module's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Paths of the Kubernetes programs the lab runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binaries {
    /// The kube-apiserver executable.
    pub kube_apiserver: PathBuf,
    /// The etcd executable.
    pub etcd: PathBuf,
    /// The kube-controller-manager executable, if one was found.
    pub kube_controller_manager: Option<PathBuf>,
    /// The kubectl executable, if one was found.
    pub kubectl: Option<PathBuf>,
    /// Every folder searched, in order (named in the errors of the `require_*` methods).
    pub searched: Vec<PathBuf>,
}

impl Binaries {
    /// Finds the programs: in `$KUBEBUILDER_ASSETS` when that folder holds both kube-apiserver
    /// and etcd, else in `${PULSECHECK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pulsecheck}/bin/current`
    /// (what `tools/build.sh` fills). kubectl and kube-controller-manager are looked up in the
    /// same folders and are optional here.
    pub fn locate() -> Result<Binaries> {
        let var = |name| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        let assets = var("KUBEBUILDER_ASSETS");
        let cache = cache_folder(var("PULSECHECK_CACHE"), var("XDG_CACHE_HOME"), var("HOME"));
        match cache {
            Some(cache) => Self::locate_in(assets.as_deref(), &cache),
            None => match assets.as_deref().and_then(|assets| Self::complete_in(&[assets])) {
                Some(found) => Ok(found),
                None => Err(Error::NoCacheFolder),
            },
        }
    }

    /// [`Binaries::locate`] with the environment spelled out: `assets` is the value of
    /// `KUBEBUILDER_ASSETS`, `cache` the pulsecheck cache folder (whose `bin/current` is searched).
    pub fn locate_in(assets: Option<&Path>, cache: &Path) -> Result<Binaries> {
        let current = cache.join("bin").join("current");
        let folders: Vec<&Path> = assets.into_iter().chain([current.as_path()]).collect();
        if let Some(assets) = assets
            && let Some(found) = Self::complete_in(&[assets, &current])
        {
            return Ok(found);
        }
        match Self::complete_in(&[&current]) {
            Some(mut found) => {
                found.searched = folders.iter().map(|f| f.to_path_buf()).collect();
                Ok(found)
            }
            None => {
                // Name only what no folder has: a half-filled KUBEBUILDER_ASSETS plus a half-built
                // cache is still "missing etcd" if nobody has etcd.
                let missing = [KUBE_APISERVER, ETCD].into_iter().filter(|name| find_in(&folders, name).is_none()).collect::<Vec<_>>();
                let missing = if missing.is_empty() { vec![KUBE_APISERVER, ETCD] } else { missing };
                Err(Error::Missing { missing, looked_in: folders.iter().map(|f| f.to_path_buf()).collect(), command: BUILD_CONTROL_COMMAND })
            }
        }
    }

    /// The kubectl executable, or an error naming where it was looked for and how to build it.
    pub fn require_kubectl(&self) -> Result<&Path> {
        self.require(self.kubectl.as_deref(), KUBECTL)
    }

    /// The kube-controller-manager executable, or an error naming where it was looked for and
    /// how to build it.
    pub fn require_kube_controller_manager(&self) -> Result<&Path> {
        self.require(self.kube_controller_manager.as_deref(), KUBE_CONTROLLER_MANAGER)
    }

    /// A program of the real-node lab ([`KUBELET`], [`KUBE_SCHEDULER`], [`PAUSE`]), from the
    /// folders searched, or an error naming them and how to build it.
    pub fn require_node_program(&self, name: &'static str) -> Result<PathBuf> {
        let folders: Vec<&Path> = self.searched.iter().map(PathBuf::as_path).collect();
        find_in(&folders, name).ok_or_else(|| Error::Missing { missing: vec![name], looked_in: self.searched.clone(), command: BUILD_NODES_COMMAND })
    }

    fn require<'a>(&self, path: Option<&'a Path>, name: &'static str) -> Result<&'a Path> {
        path.ok_or_else(|| Error::Missing { missing: vec![name], looked_in: self.searched.clone(), command: BUILD_ALL_COMMAND })
    }

    /// The programs when the FIRST folder holds both kube-apiserver and etcd; the optional ones
    /// are taken from the first folder that has them.
    fn complete_in(folders: &[&Path]) -> Option<Binaries> {
        let first = folders.first()?;
        Some(Binaries {
            kube_apiserver: executable(&first.join(KUBE_APISERVER))?,
            etcd: executable(&first.join(ETCD))?,
            kube_controller_manager: find_in(folders, KUBE_CONTROLLER_MANAGER),
            kubectl: find_in(folders, KUBECTL),
            searched: folders.iter().map(|f| f.to_path_buf()).collect(),
        })
    }
}

/// The pulsecheck cache folder from the values of `PULSECHECK_CACHE`, `XDG_CACHE_HOME` and
/// `HOME` (same rule as `tools/build.sh`); `None` when none is set.
pub fn cache_folder(pulsecheck_cache: Option<PathBuf>, xdg_cache_home: Option<PathBuf>, home: Option<PathBuf>) -> Option<PathBuf> {
    pulsecheck_cache.or_else(|| xdg_cache_home.map(|xdg| xdg.join("pulsecheck"))).or_else(|| home.map(|home| home.join(".cache").join("pulsecheck")))
}

fn find_in(folders: &[&Path], name: &str) -> Option<PathBuf> {
    folders.iter().find_map(|folder| executable(&folder.join(name)))
}

/// `path` if it is (or links to) a regular file someone may execute.
fn executable(path: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).ok()?;
    (meta.is_file() && meta.permissions().mode() & 0o111 != 0).then(|| path.to_path_buf())
}

fn display_paths(paths: &[PathBuf]) -> String {
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn put(folder: &Path, name: &str, mode: u32) -> PathBuf {
        std::fs::create_dir_all(folder).unwrap();
        let path = folder.join(name);
        std::fs::write(&path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    fn current(cache: &Path) -> PathBuf {
        cache.join("bin/current")
    }

    #[test]
    fn assets_folder_wins_when_it_holds_both_programs() {
        let tmp = tempfile::tempdir().unwrap();
        let assets = tmp.path().join("assets");
        let cache = tmp.path().join("cache");
        put(&assets, "kube-apiserver", 0o755);
        put(&assets, "etcd", 0o755);
        put(&current(&cache), "kube-apiserver", 0o755);
        put(&current(&cache), "etcd", 0o755);
        put(&current(&cache), "kubectl", 0o755);
        let found = Binaries::locate_in(Some(&assets), &cache).unwrap();
        assert_eq!(found.kube_apiserver, assets.join("kube-apiserver"));
        assert_eq!(found.etcd, assets.join("etcd"));
        assert_eq!(found.kubectl, Some(current(&cache).join("kubectl")), "optional tools fall back to the cache");
        assert_eq!(found.kube_controller_manager, None);
    }

    #[test]
    fn cache_is_used_when_assets_folder_lacks_a_program() {
        let tmp = tempfile::tempdir().unwrap();
        let assets = tmp.path().join("assets");
        let cache = tmp.path().join("cache");
        put(&assets, "kube-apiserver", 0o755);
        put(&current(&cache), "kube-apiserver", 0o755);
        put(&current(&cache), "etcd", 0o755);
        let found = Binaries::locate_in(Some(&assets), &cache).unwrap();
        assert_eq!(found.kube_apiserver, current(&cache).join("kube-apiserver"));
        assert_eq!(found.etcd, current(&cache).join("etcd"));
        assert_eq!(found.searched, vec![assets, current(&cache)]);
    }

    #[test]
    fn missing_programs_are_named_with_the_folders_and_the_build_command() {
        let tmp = tempfile::tempdir().unwrap();
        let assets = tmp.path().join("empty-assets");
        std::fs::create_dir_all(&assets).unwrap();
        let cache = tmp.path().join("cache");
        let err = Binaries::locate_in(Some(&assets), &cache).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("missing kube-apiserver and etcd"), "{message}");
        assert!(message.contains(&assets.display().to_string()), "{message}");
        assert!(message.contains(&current(&cache).display().to_string()), "{message}");
        assert!(message.contains("`bash tools/build.sh control`"), "{message}");
    }

    #[test]
    fn only_the_program_nobody_has_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("cache");
        put(&current(&cache), "kube-apiserver", 0o755);
        let err = Binaries::locate_in(None, &cache).unwrap_err();
        match err {
            Error::Missing { missing, looked_in, command } => {
                assert_eq!(missing, vec!["etcd"]);
                assert_eq!(looked_in, vec![current(&cache)]);
                assert_eq!(command, BUILD_CONTROL_COMMAND);
            }
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn a_file_without_execute_permission_does_not_count() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("cache");
        put(&current(&cache), "kube-apiserver", 0o644);
        put(&current(&cache), "etcd", 0o755);
        let err = Binaries::locate_in(None, &cache).unwrap_err();
        assert!(err.to_string().contains("missing kube-apiserver:"), "{err}");
    }

    #[test]
    fn a_dangling_symlink_does_not_count() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("cache");
        put(&current(&cache), "etcd", 0o755);
        std::os::unix::fs::symlink(tmp.path().join("gone"), current(&cache).join("kube-apiserver")).unwrap();
        assert!(Binaries::locate_in(None, &cache).is_err());
    }

    #[test]
    fn require_kubectl_names_the_full_build_command() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("cache");
        put(&current(&cache), "kube-apiserver", 0o755);
        put(&current(&cache), "etcd", 0o755);
        let found = Binaries::locate_in(None, &cache).unwrap();
        let err = found.require_kubectl().unwrap_err().to_string();
        assert!(err.contains("missing kubectl"), "{err}");
        assert!(err.contains("`bash tools/build.sh all`"), "{err}");
        assert!(err.contains(&current(&cache).display().to_string()), "{err}");
        put(&current(&cache), "kube-controller-manager", 0o755);
        let found = Binaries::locate_in(None, &cache).unwrap();
        assert_eq!(found.require_kube_controller_manager().unwrap(), current(&cache).join("kube-controller-manager"));
    }

    #[test]
    fn cache_folder_follows_the_build_script_rule() {
        let p = |s: &str| Some(PathBuf::from(s));
        assert_eq!(cache_folder(p("/c"), p("/x"), p("/h")), p("/c"));
        assert_eq!(cache_folder(None, p("/x"), p("/h")), p("/x/pulsecheck"));
        assert_eq!(cache_folder(None, None, p("/h")), p("/h/.cache/pulsecheck"));
        assert_eq!(cache_folder(None, None, None), None);
    }
}
