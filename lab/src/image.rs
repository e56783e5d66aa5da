//! Container images built on this machine, as OCI image archives.
//!
//! The lab's machines reach no container registry, so every image a real node runs is made
//! here from files the project builds itself (today the sandbox image around `tools/pause`) and
//! imported into the node's containerd with `ctr images import`. An image is one uncompressed
//! layer: the files, owned by root, with fixed timestamps, so the same inputs give the same
//! digest on every machine.
//!
//! The archive is an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`) in a tar,
//! the format `ctr images import` and every other OCI tool read; the index carries the image's
//! name in `io.containerd.image.name`, so containerd stores it under that reference.
//!
//! pulsecheck's image holds two static binaries: `/pulsecheck` (the controller and CLI, the
//! entrypoint) and `/pulsecheck-agent` (the opt-in node agent, which the chart's DaemonSet runs
//! as its command), each checked to need no dynamic loader and, per architecture, to be built for
//! it.
//!
//! The release builds one image for several architectures from binaries cross-compiled on one
//! machine (no emulation): [`write_index_archive`] puts each architecture's manifest into an OCI
//! image index, and the layout's `index.json` names that index, which `crane push` or
//! `skopeo copy --all` publish as one multi-arch reference (docs/release.md).

use std::{
    io,
    path::{Path, PathBuf},
};

use serde_json::json;
use sha2::{Digest as _, Sha256};

/// An image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file to put into the image could not be read.
    #[error("cannot read {} for image {image}: {source}", .path.display())]
    Read {
        /// The image's reference.
        image: String,
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: io::Error,
    },
    /// A binary for the image could not be read.
    #[error("{} {}: cannot read it for image {image}: {source}", .binary.flag(), .path.display())]
    ReadBinary {
        /// Which binary.
        binary: Binary,
        /// The image's reference.
        image: String,
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: io::Error,
    },
    /// The binary for the image needs a dynamic loader (and a libc) the image does not have.
    #[error("{} {}: not a statically linked ELF executable ({why}); the image has no libc: build it for the musl target (make image)", .binary.flag(), .path.display())]
    NotStatic {
        /// Which binary.
        binary: Binary,
        /// The file.
        path: PathBuf,
        /// What was found.
        why: &'static str,
    },
    /// The binary given for an architecture is built for another one.
    #[error("{} {expected}={}: built for {found}, not for {expected} as given", .binary.flag(), .path.display())]
    WrongArchitecture {
        /// Which binary.
        binary: Binary,
        /// The file.
        path: PathBuf,
        /// The architecture it was given for.
        expected: Architecture,
        /// What its ELF header says (`unknown (ELF machine 0x..)` when not one of ours).
        found: String,
    },
    /// A multi-architecture image was asked for with no image, or with one architecture twice.
    #[error("image {image}: {why}")]
    Platforms {
        /// The image's reference.
        image: String,
        /// What is wrong with the list.
        why: String,
    },
    /// The archive could not be written.
    #[error("cannot write the archive of image {image} to {}: {source}", .path.display())]
    Write {
        /// The image's reference.
        image: String,
        /// The archive.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: io::Error,
    },
}

/// An archive whose image could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the image archive {}: {source}", .path.display())]
pub struct ArchiveError {
    /// The archive.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: io::Error,
}

/// A CPU architecture pulsecheck's image is built for, named as OCI image configs and
/// platforms name it (`amd64`, `arm64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Architecture {
    /// x86-64 (`x86_64-unknown-linux-musl`).
    Amd64,
    /// 64-bit ARM (`aarch64-unknown-linux-musl`).
    Arm64,
}

impl Architecture {
    /// The OCI name (`amd64`, `arm64`).
    pub fn oci_name(self) -> &'static str {
        match self {
            Architecture::Amd64 => "amd64",
            Architecture::Arm64 => "arm64",
        }
    }

    /// The architecture an ELF file is built for (its header's `e_machine`), if one of ours.
    pub fn of_elf(bytes: &[u8]) -> Result<Architecture, String> {
        const EM_X86_64: u16 = 62;
        const EM_AARCH64: u16 = 183;
        match bytes.get(0x12..0x14).map(|b| u16::from_le_bytes([b[0], b[1]])) {
            _ if bytes.get(..4) != Some(b"\x7fELF") => Err("not an ELF file".into()),
            Some(EM_X86_64) => Ok(Architecture::Amd64),
            Some(EM_AARCH64) => Ok(Architecture::Arm64),
            Some(other) => Err(format!("unknown (ELF machine {other:#x})")),
            None => Err("a truncated ELF header".into()),
        }
    }
}

impl std::fmt::Display for Architecture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.oci_name())
    }
}

impl std::str::FromStr for Architecture {
    type Err = String;

    /// The OCI name or Rust's (`amd64`/`x86_64`, `arm64`/`aarch64`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "amd64" | "x86_64" => Ok(Architecture::Amd64),
            "arm64" | "aarch64" => Ok(Architecture::Arm64),
            other => Err(format!("unknown architecture {other:?} (want amd64/x86_64 or arm64/aarch64)")),
        }
    }
}

/// One of the binaries of pulsecheck's image, named in errors by the `pulsecheck-lab image` flag
/// that gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binary {
    /// `/pulsecheck`: the controller and CLI, the image's entrypoint (`--binary`).
    Pulsecheck,
    /// `/pulsecheck-agent`: the node agent, the command of the chart's DaemonSet (`--agent-binary`).
    Agent,
}

impl Binary {
    /// Its path in the image, relative (`pulsecheck`, `pulsecheck-agent`).
    pub fn path_in_image(self) -> &'static str {
        match self {
            Binary::Pulsecheck => "pulsecheck",
            Binary::Agent => "pulsecheck-agent",
        }
    }

    /// The `pulsecheck-lab image` flag that gives it.
    pub fn flag(self) -> &'static str {
        match self {
            Binary::Pulsecheck => "--binary",
            Binary::Agent => "--agent-binary",
        }
    }

    /// The file at `source` as this binary of image `image`: readable, a static ELF executable
    /// and, if `architecture` is given, built for it.
    fn file(self, source: &Path, image: &str, architecture: Option<Architecture>) -> Result<ImageFile, Error> {
        let contents = std::fs::read(source).map_err(|e| Error::ReadBinary { binary: self, image: image.to_owned(), path: source.to_path_buf(), source: e })?;
        if let Err(why) = static_elf(&contents) {
            return Err(Error::NotStatic { binary: self, path: source.to_path_buf(), why });
        }
        if let Some(expected) = architecture {
            match Architecture::of_elf(&contents) {
                Ok(found) if found == expected => {}
                Ok(found) => return Err(Error::WrongArchitecture { binary: self, path: source.to_path_buf(), expected, found: found.to_string() }),
                Err(found) => return Err(Error::WrongArchitecture { binary: self, path: source.to_path_buf(), expected, found }),
            }
        }
        Ok(ImageFile { path: self.path_in_image().to_owned(), mode: 0o755, contents })
    }
}

/// One file of an image.
#[derive(Debug, Clone)]
pub struct ImageFile {
    /// Its path inside the image, relative (`pause`, `etc/passwd`).
    pub path: String,
    /// Its permission bits.
    pub mode: u32,
    /// What it holds.
    pub contents: Vec<u8>,
}

impl ImageFile {
    /// An executable (mode 0755) read from `source`.
    pub fn executable(path: &str, source: &Path, image: &str) -> Result<ImageFile, Error> {
        let contents = std::fs::read(source).map_err(|e| Error::Read { image: image.to_owned(), path: source.to_path_buf(), source: e })?;
        Ok(ImageFile { path: path.to_owned(), mode: 0o755, contents })
    }
}

/// What to build.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// The reference containerd stores it under, e.g. `pulsecheck.lab/pause:1`.
    pub reference: String,
    /// Its files (one layer).
    pub files: Vec<ImageFile>,
    /// What runs: the image config's `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// The user it runs as (`65535:65535`), if not root.
    pub user: Option<String>,
    /// The default arguments: the image config's `Cmd`.
    pub cmd: Vec<String>,
    /// The image config's `Labels` (`org.opencontainers.image.*`).
    pub labels: std::collections::BTreeMap<String, String>,
    /// The image config's `ExposedPorts` (`8080/tcp`).
    pub exposed_ports: Vec<String>,
}

/// The reference `make image` gives pulsecheck's image: the release's, so the chart and the
/// kustomize base find it under their defaults.
pub fn pulsecheck_reference() -> String {
    format!("ghcr.io/pulsecheck/pulsecheck:{}", env!("CARGO_PKG_VERSION"))
}

impl ImageSpec {
    /// pulsecheck's image: its static binary as `/pulsecheck` (and the agent's, added with
    /// [`ImageSpec::with_agent`]), nothing else (no shell, no libc, no CA bundle — in a Pod it
    /// trusts the ServiceAccount's CA, and any other CA is a file the operator mounts), run as
    /// 65532:65532 (distroless' `nonroot`), `run` by default.
    pub fn pulsecheck(binary: &Path, reference: &str) -> Result<ImageSpec, Error> {
        ImageSpec::pulsecheck_checked(binary, reference, None)
    }

    /// The image with the node agent's static binary as `/pulsecheck-agent` too (the chart's
    /// DaemonSet runs it as its command, as uid 0 without capabilities; the image's user and
    /// entrypoint stay the controller's).
    pub fn with_agent(self, agent: &Path) -> Result<ImageSpec, Error> {
        self.with_agent_checked(agent, None)
    }

    fn with_agent_checked(mut self, agent: &Path, architecture: Option<Architecture>) -> Result<ImageSpec, Error> {
        let file = Binary::Agent.file(agent, &self.reference, architecture)?;
        self.files.retain(|f| f.path != file.path);
        self.files.push(file);
        Ok(self)
    }

    fn pulsecheck_checked(binary: &Path, reference: &str, architecture: Option<Architecture>) -> Result<ImageSpec, Error> {
        let labels = [
            ("org.opencontainers.image.title", "pulsecheck"),
            ("org.opencontainers.image.description", "Finds Kubernetes nodes that claim Ready but are dead, and taints or cordons them safely"),
            ("org.opencontainers.image.source", "https://github.com/pulsecheck/pulsecheck"),
            ("org.opencontainers.image.licenses", "Apache-2.0"),
            ("org.opencontainers.image.version", env!("CARGO_PKG_VERSION")),
        ];
        let file = Binary::Pulsecheck.file(binary, reference, architecture)?;
        Ok(ImageSpec {
            reference: reference.to_owned(),
            files: vec![file],
            entrypoint: vec!["/pulsecheck".into()],
            user: Some("65532:65532".into()),
            cmd: vec!["run".into()],
            labels: labels.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect(),
            exposed_ports: vec!["8080/tcp".into()],
        })
    }
}

impl ImageSpec {
    /// pulsecheck's image for `architecture`: as [`ImageSpec::pulsecheck`], and the binary must be
    /// built for that architecture (a cross-compiled one put under the wrong name is refused).
    pub fn pulsecheck_for(binary: &Path, reference: &str, architecture: Architecture) -> Result<ImageSpec, Error> {
        ImageSpec::pulsecheck_checked(binary, reference, Some(architecture))
    }

    /// As [`ImageSpec::with_agent`], and the agent's binary must be built for `architecture`.
    pub fn with_agent_for(self, agent: &Path, architecture: Architecture) -> Result<ImageSpec, Error> {
        self.with_agent_checked(agent, Some(architecture))
    }
}

/// Whether `bytes` are a 64-bit little-endian ELF executable that asks for no program
/// interpreter (`PT_INTERP`, the dynamic loader): one that runs in an image without a libc.
fn static_elf(bytes: &[u8]) -> Result<(), &'static str> {
    const PT_INTERP: u32 = 3;
    let u16_at = |at: usize| bytes.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |at: usize| bytes.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let u64_at = |at: usize| bytes.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
    if bytes.get(..6) != Some(b"\x7fELF\x02\x01") {
        return Err("not a 64-bit little-endian ELF file");
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return Err("truncated ELF header");
    };
    for i in 0..usize::from(phnum) {
        let at = usize::try_from(phoff).map_err(|_| "program headers out of range")? + i * usize::from(phentsize);
        match u32_at(at) {
            Some(PT_INTERP) => return Err("it names a dynamic loader (PT_INTERP)"),
            Some(_) => {}
            None => return Err("truncated program headers"),
        }
    }
    Ok(())
}

/// The image reference an archive written by [`ImageSpec::write_archive`] (or any OCI layout
/// archive naming its image the containerd way) holds.
pub fn archive_reference(archive: &Path) -> Result<String, ArchiveError> {
    let read_err = |source| ArchiveError { path: archive.to_path_buf(), source };
    let mut tar = tar::Archive::new(std::fs::File::open(archive).map_err(read_err)?);
    for entry in tar.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        if entry.path().map_err(read_err)?.as_os_str() != "index.json" {
            continue;
        }
        let mut bytes = Vec::new();
        io::Read::read_to_end(&mut entry, &mut bytes).map_err(read_err)?;
        let index: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| read_err(io::Error::other(e)))?;
        return index["manifests"][0]["annotations"]["io.containerd.image.name"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| read_err(io::Error::other("index.json names no image (annotation io.containerd.image.name)")));
    }
    Err(read_err(io::Error::other("not an OCI image layout archive: no index.json")))
}

/// A content-addressed blob of the layout.
struct Blob {
    media_type: &'static str,
    digest: String,
    bytes: Vec<u8>,
}

impl Blob {
    fn new(media_type: &'static str, bytes: Vec<u8>) -> Blob {
        let digest = format!("sha256:{}", hex(&Sha256::digest(&bytes)));
        Blob { media_type, digest, bytes }
    }

    fn descriptor(&self) -> serde_json::Value {
        json!({ "mediaType": self.media_type, "digest": self.digest, "size": self.bytes.len() })
    }
}

/// Lower-case hexadecimal, as digests are written.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The OCI name of this machine's architecture, as image configs spell it.
fn oci_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

impl ImageSpec {
    /// Writes the image as an OCI image layout archive at `archive`; returns the manifest's
    /// digest.
    pub fn write_archive(&self, archive: &Path) -> Result<String, Error> {
        let write_err = |source| Error::Write { image: self.reference.clone(), path: archive.to_path_buf(), source };
        let (blobs, manifest) = self.blobs(oci_architecture()).map_err(write_err)?;
        let mut entry = manifest.descriptor();
        entry["annotations"] = name_annotations(&self.reference);
        let index = json!({ "schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": [entry] });
        write_layout(archive, &index, blobs.iter().chain([&manifest])).map_err(write_err)?;
        Ok(manifest.digest)
    }

    /// The image's layer, config and (last, returned apart) manifest for `architecture`.
    fn blobs(&self, architecture: &str) -> io::Result<(Vec<Blob>, Blob)> {
        let layer = Blob::new("application/vnd.oci.image.layer.v1.tar", self.layer()?);
        let mut config = json!({
            "architecture": architecture,
            "os": "linux",
            "config": { "Entrypoint": self.entrypoint },
            "rootfs": { "type": "layers", "diff_ids": [layer.digest] },
        });
        if let Some(user) = &self.user {
            config["config"]["User"] = json!(user);
        }
        if !self.cmd.is_empty() {
            config["config"]["Cmd"] = json!(self.cmd);
        }
        if !self.labels.is_empty() {
            config["config"]["Labels"] = json!(self.labels);
        }
        if !self.exposed_ports.is_empty() {
            config["config"]["ExposedPorts"] = self.exposed_ports.iter().map(|p| (p.clone(), json!({}))).collect::<serde_json::Map<_, _>>().into();
        }
        let config = Blob::new("application/vnd.oci.image.config.v1+json", config.to_string().into_bytes());
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": config.descriptor(),
            "layers": [layer.descriptor()],
        });
        Ok((vec![layer, config], Blob::new(MANIFEST_MEDIA_TYPE, manifest.to_string().into_bytes())))
    }

    /// The one layer: every file, owned by root, timestamp 0.
    fn layer(&self) -> io::Result<Vec<u8>> {
        let mut tar = tar::Builder::new(Vec::new());
        for file in &self.files {
            append(&mut tar, &file.path, file.mode, &file.contents)?;
        }
        tar.into_inner()
    }
}

const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";

/// The annotations by which containerd (`io.containerd.image.name`) and OCI tools
/// (`org.opencontainers.image.ref.name`, the tag) find an image in a layout.
fn name_annotations(reference: &str) -> serde_json::Value {
    json!({
        "io.containerd.image.name": reference,
        "org.opencontainers.image.ref.name": reference.rsplit_once(':').map_or("latest", |(_, tag)| tag),
    })
}

/// Writes an OCI image layout archive: `oci-layout`, `index.json` and every blob once.
fn write_layout<'a>(archive: &Path, index: &serde_json::Value, blobs: impl Iterator<Item = &'a Blob>) -> io::Result<()> {
    let file = std::fs::File::create(archive)?;
    let mut tar = tar::Builder::new(io::BufWriter::new(file));
    append(&mut tar, "oci-layout", 0o644, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    append(&mut tar, "index.json", 0o644, index.to_string().as_bytes())?;
    let mut written = std::collections::BTreeSet::new();
    for blob in blobs {
        if written.insert(blob.digest.clone()) {
            let hex = blob.digest.trim_start_matches("sha256:");
            append(&mut tar, &format!("blobs/sha256/{hex}"), 0o644, &blob.bytes)?;
        }
    }
    tar.into_inner().and_then(|mut w| io::Write::flush(&mut w))
}

/// Writes one image for several architectures as an OCI image layout archive at `archive`: each
/// architecture's manifest (its config naming the architecture) listed with its `platform` in an
/// OCI image index, which the layout's `index.json` names `reference`. Returns the index's
/// digest, the one a registry stores the multi-arch reference under and cosign signs.
pub fn write_index_archive(reference: &str, images: &[(Architecture, ImageSpec)], archive: &Path) -> Result<String, Error> {
    let platforms_err = |why: String| Error::Platforms { image: reference.to_owned(), why };
    if images.is_empty() {
        return Err(platforms_err("no architecture given".into()));
    }
    let mut seen = std::collections::BTreeSet::new();
    if let Some((twice, _)) = images.iter().find(|(arch, _)| !seen.insert(*arch)) {
        return Err(platforms_err(format!("{twice} given twice")));
    }
    let write_err = |source| Error::Write { image: reference.to_owned(), path: archive.to_path_buf(), source };
    let mut blobs = Vec::new();
    let mut manifests = Vec::new();
    for (arch, spec) in images {
        let (mut image_blobs, manifest) = spec.blobs(arch.oci_name()).map_err(write_err)?;
        let mut entry = manifest.descriptor();
        entry["platform"] = json!({ "architecture": arch.oci_name(), "os": "linux" });
        manifests.push(entry);
        blobs.append(&mut image_blobs);
        blobs.push(manifest);
    }
    let index = json!({ "schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": manifests });
    let index = Blob::new(INDEX_MEDIA_TYPE, index.to_string().into_bytes());
    let mut entry = index.descriptor();
    entry["annotations"] = name_annotations(reference);
    let layout_index = json!({ "schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": [entry] });
    write_layout(archive, &layout_index, blobs.iter().chain([&index])).map_err(write_err)?;
    Ok(index.digest)
}

fn append<W: io::Write>(tar: &mut tar::Builder<W>, path: &str, mode: u32, contents: &[u8]) -> io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(contents.len() as u64);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, path, contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ImageSpec {
        ImageSpec {
            reference: "pulsecheck.lab/pause:1".into(),
            files: vec![ImageFile { path: "pause".into(), mode: 0o755, contents: b"#!/bin/true\n".to_vec() }],
            entrypoint: vec!["/pause".into()],
            user: Some("65535:65535".into()),
            cmd: vec![],
            labels: Default::default(),
            exposed_ports: vec![],
        }
    }

    #[test]
    fn the_archive_is_an_oci_layout_whose_digests_match_their_blobs() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("pause.tar");
        let digest = spec().write_archive(&path).unwrap();
        let files = archive_files(&path);
        for (name, bytes) in &files {
            if let Some(hex) = name.strip_prefix("blobs/sha256/") {
                assert_eq!(super::hex(&Sha256::digest(bytes)), hex, "{name}");
            }
        }
        let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
        assert_eq!(index["manifests"][0]["digest"], digest);
        assert_eq!(index["manifests"][0]["annotations"]["io.containerd.image.name"], "pulsecheck.lab/pause:1");
        let manifest: serde_json::Value = serde_json::from_slice(&files[&format!("blobs/sha256/{}", &digest[7..])]).unwrap();
        let config_hex = manifest["config"]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_owned();
        let config: serde_json::Value = serde_json::from_slice(&files[&format!("blobs/sha256/{config_hex}")]).unwrap();
        assert_eq!(config["config"]["Entrypoint"][0], "/pause");
        assert_eq!(config["config"]["User"], "65535:65535");
        assert_eq!(config["rootfs"]["diff_ids"][0], manifest["layers"][0]["digest"]);
        assert_eq!(archive_reference(&path).unwrap(), "pulsecheck.lab/pause:1");
    }

    #[test]
    fn pulsecheck_s_image_runs_its_binary_as_nonroot_with_run_by_default() {
        let tmp = tempfile::tempdir().unwrap();
        let binary = tmp.path().join("pulsecheck");
        // An ELF64 header with no program headers: nothing asks for a loader.
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        std::fs::write(&binary, &elf).unwrap();
        let spec = ImageSpec::pulsecheck(&binary, &pulsecheck_reference()).unwrap();
        let path = tmp.path().join("pulsecheck.tar");
        spec.write_archive(&path).unwrap();
        assert_eq!(archive_reference(&path).unwrap(), format!("ghcr.io/pulsecheck/pulsecheck:{}", env!("CARGO_PKG_VERSION")));
        assert_eq!((spec.entrypoint, spec.cmd, spec.user.as_deref()), (vec!["/pulsecheck".to_owned()], vec!["run".to_owned()], Some("65532:65532")));
        let missing = ImageSpec::pulsecheck(&tmp.path().join("nope"), "x:1").unwrap_err().to_string();
        assert!(missing.contains("nope"), "{missing}");
        let not_an_archive = archive_reference(&binary).unwrap_err().to_string();
        assert!(not_an_archive.contains("pulsecheck"), "{not_an_archive}");
        // This test program is linked dynamically: refused, naming the file and the fix.
        let test_binary = std::env::current_exe().unwrap();
        let dynamic = ImageSpec::pulsecheck(&test_binary, "x:1").unwrap_err().to_string();
        assert!(dynamic.contains("PT_INTERP") && dynamic.contains("musl") && dynamic.contains(&*test_binary.to_string_lossy()), "{dynamic}");
        let script = tmp.path().join("script");
        std::fs::write(&script, b"#!/bin/sh\n").unwrap();
        assert!(ImageSpec::pulsecheck(&script, "x:1").unwrap_err().to_string().contains("not a 64-bit"));
    }

    /// A static ELF64 header (no program headers) for `machine` (62 x86-64, 183 aarch64).
    fn elf(machine: u16) -> Vec<u8> {
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x12..0x14].copy_from_slice(&machine.to_le_bytes());
        elf
    }

    /// Every file of an archive, by name.
    fn archive_files(path: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
        let mut archive = tar::Archive::new(std::fs::File::open(path).unwrap());
        let mut files = std::collections::BTreeMap::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            let mut bytes = Vec::new();
            io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
            assert!(files.insert(name.clone(), bytes).is_none(), "{name} twice in the archive");
        }
        files
    }

    #[test]
    fn a_multi_arch_archive_names_an_index_of_one_manifest_per_architecture() {
        let tmp = tempfile::tempdir().unwrap();
        let (amd64, arm64) = (tmp.path().join("pulsecheck-amd64"), tmp.path().join("pulsecheck-arm64"));
        std::fs::write(&amd64, elf(62)).unwrap();
        std::fs::write(&arm64, elf(183)).unwrap();
        let reference = "ghcr.io/pulsecheck/pulsecheck:9.9.9";
        let images = vec![
            (Architecture::Amd64, ImageSpec::pulsecheck_for(&amd64, reference, Architecture::Amd64).unwrap()),
            (Architecture::Arm64, ImageSpec::pulsecheck_for(&arm64, reference, Architecture::Arm64).unwrap()),
        ];
        let path = tmp.path().join("pulsecheck.tar");
        let digest = write_index_archive(reference, &images, &path).unwrap();
        assert_eq!(digest, write_index_archive(reference, &images, &tmp.path().join("again.tar")).unwrap(), "same inputs, same digest");

        let files = archive_files(&path);
        for (name, bytes) in &files {
            if let Some(hex) = name.strip_prefix("blobs/sha256/") {
                assert_eq!(super::hex(&Sha256::digest(bytes)), hex, "{name}");
            }
        }
        let blob = |digest: &serde_json::Value| -> serde_json::Value {
            let hex = digest.as_str().unwrap().trim_start_matches("sha256:");
            serde_json::from_slice(&files[&format!("blobs/sha256/{hex}")]).unwrap()
        };
        // The layout names one entry, the index, under the reference (containerd, crane, skopeo).
        let layout: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
        assert_eq!(layout["manifests"].as_array().unwrap().len(), 1);
        assert_eq!(layout["manifests"][0]["mediaType"], "application/vnd.oci.image.index.v1+json");
        assert_eq!(layout["manifests"][0]["digest"], digest);
        assert_eq!(archive_reference(&path).unwrap(), reference);
        let index = blob(&layout["manifests"][0]["digest"]);
        assert_eq!(index["mediaType"], "application/vnd.oci.image.index.v1+json");
        let platforms: Vec<_> =
            index["manifests"].as_array().unwrap().iter().map(|m| (m["platform"]["os"].clone(), m["platform"]["architecture"].clone())).collect();
        assert_eq!(platforms, [(json!("linux"), json!("amd64")), (json!("linux"), json!("arm64"))]);
        for (entry, machine) in index["manifests"].as_array().unwrap().iter().zip([62u16, 183]) {
            assert_eq!(entry["mediaType"], "application/vnd.oci.image.manifest.v1+json");
            let manifest = blob(&entry["digest"]);
            let config = blob(&manifest["config"]["digest"]);
            assert_eq!(config["architecture"], entry["platform"]["architecture"], "each config says its own architecture");
            assert_eq!((&config["config"]["Entrypoint"][0], &config["config"]["User"]), (&json!("/pulsecheck"), &json!("65532:65532")));
            // The layer holds that architecture's binary.
            let layer_hex = manifest["layers"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_owned();
            let mut layer = tar::Archive::new(&files[&format!("blobs/sha256/{layer_hex}")][..]);
            let mut binary = Vec::new();
            io::Read::read_to_end(&mut layer.entries().unwrap().next().unwrap().unwrap(), &mut binary).unwrap();
            assert_eq!(binary, elf(machine));
        }
    }

    #[test]
    fn a_binary_for_another_architecture_or_a_platform_twice_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let arm64 = tmp.path().join("pulsecheck-arm64");
        std::fs::write(&arm64, elf(183)).unwrap();
        let wrong = ImageSpec::pulsecheck_for(&arm64, "x:1", Architecture::Amd64).unwrap_err().to_string();
        assert!(wrong.contains("built for arm64, not for amd64") && wrong.contains("pulsecheck-arm64"), "{wrong}");
        let riscv = tmp.path().join("pulsecheck-riscv");
        std::fs::write(&riscv, elf(243)).unwrap();
        let unknown = ImageSpec::pulsecheck_for(&riscv, "x:1", Architecture::Arm64).unwrap_err().to_string();
        assert!(unknown.contains("ELF machine 0xf3"), "{unknown}");
        let spec = ImageSpec::pulsecheck_for(&arm64, "x:1", Architecture::Arm64).unwrap();
        let twice = write_index_archive("x:1", &[(Architecture::Arm64, spec.clone()), (Architecture::Arm64, spec)], &tmp.path().join("x.tar")).unwrap_err();
        assert!(twice.to_string().contains("arm64 given twice"), "{twice}");
        assert!(write_index_archive("x:1", &[], &tmp.path().join("x.tar")).is_err());
        assert_eq!(("aarch64".parse(), "amd64".parse()), (Ok(Architecture::Arm64), Ok(Architecture::Amd64)));
        assert!("ppc64le".parse::<Architecture>().unwrap_err().contains("ppc64le"));
    }

    /// The files of an image's one layer, by path.
    fn layer_files(files: &std::collections::BTreeMap<String, Vec<u8>>, manifest_digest: &str) -> Vec<(String, u32, Vec<u8>)> {
        let blob = |digest: &str| files[&format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))].clone();
        let manifest: serde_json::Value = serde_json::from_slice(&blob(manifest_digest)).unwrap();
        let layer = blob(manifest["layers"][0]["digest"].as_str().unwrap());
        let mut tar = tar::Archive::new(&layer[..]);
        tar.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let path = e.path().unwrap().to_string_lossy().into_owned();
                let mode = e.header().mode().unwrap();
                let mut bytes = Vec::new();
                io::Read::read_to_end(&mut e, &mut bytes).unwrap();
                (path, mode, bytes)
            })
            .collect()
    }

    #[test]
    fn pulsecheck_s_image_holds_the_agent_beside_it_and_still_runs_pulsecheck() {
        let tmp = tempfile::tempdir().unwrap();
        let (binary, agent) = (tmp.path().join("pulsecheck"), tmp.path().join("pulsecheck-agent"));
        std::fs::write(&binary, elf(62)).unwrap();
        let mut agent_elf = elf(62);
        agent_elf.push(1); // not the same bytes as pulsecheck's
        std::fs::write(&agent, &agent_elf).unwrap();
        let spec = ImageSpec::pulsecheck(&binary, "x:1").unwrap().with_agent(&agent).unwrap();
        assert_eq!(
            (spec.entrypoint.clone(), spec.cmd.clone(), spec.user.clone()),
            (vec!["/pulsecheck".to_owned()], vec!["run".to_owned()], Some("65532:65532".to_owned()))
        );
        let path = tmp.path().join("image.tar");
        let digest = spec.write_archive(&path).unwrap();
        let layer = layer_files(&archive_files(&path), &digest);
        assert_eq!(layer, [("pulsecheck".to_owned(), 0o755, elf(62)), ("pulsecheck-agent".to_owned(), 0o755, agent_elf.clone())]);
        // Given twice, the agent is there once.
        let again = spec.clone().with_agent(&agent).unwrap();
        assert_eq!(again.files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(), ["pulsecheck", "pulsecheck-agent"]);

        // The agent is checked as pulsecheck is, and the errors name its flag and file.
        let base = || ImageSpec::pulsecheck(&binary, "x:1").unwrap();
        let missing = base().with_agent(&tmp.path().join("nope")).unwrap_err().to_string();
        assert!(missing.starts_with("--agent-binary ") && missing.contains("nope"), "{missing}");
        let test_binary = std::env::current_exe().unwrap();
        let dynamic = base().with_agent(&test_binary).unwrap_err().to_string();
        assert!(dynamic.starts_with("--agent-binary ") && dynamic.contains("PT_INTERP") && dynamic.contains(&*test_binary.to_string_lossy()), "{dynamic}");
        let script = tmp.path().join("script");
        std::fs::write(&script, b"#!/bin/sh\n").unwrap();
        let not_elf = base().with_agent(&script).unwrap_err().to_string();
        assert!(not_elf.starts_with("--agent-binary ") && not_elf.contains("not a 64-bit"), "{not_elf}");
        // pulsecheck's own errors name --binary.
        let dynamic = ImageSpec::pulsecheck(&test_binary, "x:1").unwrap_err().to_string();
        assert!(dynamic.starts_with("--binary "), "{dynamic}");
    }

    #[test]
    fn a_multi_arch_image_holds_each_architecture_s_agent_and_refuses_one_built_for_another() {
        let tmp = tempfile::tempdir().unwrap();
        let file = |name: &str, bytes: Vec<u8>| {
            let path = tmp.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            path
        };
        let mut agent_amd64 = elf(62);
        agent_amd64.push(1);
        let mut agent_arm64 = elf(183);
        agent_arm64.push(2);
        let (amd64, arm64) = (file("pulsecheck-amd64", elf(62)), file("pulsecheck-arm64", elf(183)));
        let (agent_amd64_path, agent_arm64_path) = (file("pulsecheck-agent-amd64", agent_amd64.clone()), file("pulsecheck-agent-arm64", agent_arm64.clone()));
        let reference = "ghcr.io/pulsecheck/pulsecheck:9.9.9";
        let images = vec![
            (
                Architecture::Amd64,
                ImageSpec::pulsecheck_for(&amd64, reference, Architecture::Amd64).unwrap().with_agent_for(&agent_amd64_path, Architecture::Amd64).unwrap(),
            ),
            (
                Architecture::Arm64,
                ImageSpec::pulsecheck_for(&arm64, reference, Architecture::Arm64).unwrap().with_agent_for(&agent_arm64_path, Architecture::Arm64).unwrap(),
            ),
        ];
        let path = tmp.path().join("image.tar");
        let digest = write_index_archive(reference, &images, &path).unwrap();
        let files = archive_files(&path);
        let index: serde_json::Value = serde_json::from_slice(&files[&format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))]).unwrap();
        for (entry, (machine, agent)) in index["manifests"].as_array().unwrap().iter().zip([(62u16, &agent_amd64), (183, &agent_arm64)]) {
            let layer = layer_files(&files, entry["digest"].as_str().unwrap());
            assert_eq!(layer, [("pulsecheck".to_owned(), 0o755, elf(machine)), ("pulsecheck-agent".to_owned(), 0o755, agent.clone())], "{}", entry["platform"]);
        }
        let base = ImageSpec::pulsecheck_for(&amd64, reference, Architecture::Amd64).unwrap();
        let wrong = base.with_agent_for(&agent_arm64_path, Architecture::Amd64).unwrap_err().to_string();
        assert!(
            wrong.starts_with("--agent-binary amd64=") && wrong.contains("pulsecheck-agent-arm64") && wrong.contains("built for arm64, not for amd64"),
            "{wrong}"
        );
    }

    #[test]
    fn the_same_files_give_the_same_digest() {
        let tmp = tempfile::tempdir().unwrap();
        let a = spec().write_archive(&tmp.path().join("a.tar")).unwrap();
        let b = spec().write_archive(&tmp.path().join("b.tar")).unwrap();
        assert_eq!(a, b);
    }
}
