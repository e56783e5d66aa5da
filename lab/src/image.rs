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
    /// The binary for the image needs a dynamic loader (and a libc) the image does not have.
    #[error("{} is not a statically linked ELF executable ({why}); the image has no libc: build it for the musl target (make image)", .path.display())]
    NotStatic {
        /// The binary.
        path: PathBuf,
        /// What was found.
        why: &'static str,
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
    /// pulsecheck's image: its static binary as `/pulsecheck`, nothing else (no shell, no libc,
    /// no CA bundle — in a Pod it trusts the ServiceAccount's CA, and any other CA is a file
    /// the operator mounts), run as 65532:65532 (distroless' `nonroot`), `run` by default.
    pub fn pulsecheck(binary: &Path, reference: &str) -> Result<ImageSpec, Error> {
        let labels = [
            ("org.opencontainers.image.title", "pulsecheck"),
            ("org.opencontainers.image.description", "Finds Kubernetes nodes that claim Ready but are dead, and taints or cordons them safely"),
            ("org.opencontainers.image.source", "https://github.com/pulsecheck/pulsecheck"),
            ("org.opencontainers.image.licenses", "Apache-2.0"),
            ("org.opencontainers.image.version", env!("CARGO_PKG_VERSION")),
        ];
        let file = ImageFile::executable("pulsecheck", binary, reference)?;
        if let Err(why) = static_elf(&file.contents) {
            return Err(Error::NotStatic { path: binary.to_path_buf(), why });
        }
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
        let layer = Blob::new("application/vnd.oci.image.layer.v1.tar", self.layer().map_err(write_err)?);
        let mut config = json!({
            "architecture": oci_architecture(),
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
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config.descriptor(),
            "layers": [layer.descriptor()],
        });
        let manifest = Blob::new("application/vnd.oci.image.manifest.v1+json", manifest.to_string().into_bytes());
        let mut entry = manifest.descriptor();
        entry["annotations"] = json!({
            "io.containerd.image.name": self.reference,
            "org.opencontainers.image.ref.name": self.reference.rsplit_once(':').map_or("latest", |(_, tag)| tag),
        });
        let index = json!({ "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [entry] });

        let file = std::fs::File::create(archive).map_err(write_err)?;
        let mut tar = tar::Builder::new(io::BufWriter::new(file));
        append(&mut tar, "oci-layout", 0o644, br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(write_err)?;
        append(&mut tar, "index.json", 0o644, index.to_string().as_bytes()).map_err(write_err)?;
        for blob in [&layer, &config, &manifest] {
            let hex = blob.digest.trim_start_matches("sha256:");
            append(&mut tar, &format!("blobs/sha256/{hex}"), 0o644, &blob.bytes).map_err(write_err)?;
        }
        tar.into_inner().and_then(|mut w| io::Write::flush(&mut w)).map_err(write_err)?;
        Ok(manifest.digest)
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
        let mut archive = tar::Archive::new(std::fs::File::open(&path).unwrap());
        let mut files = std::collections::BTreeMap::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            let mut bytes = Vec::new();
            io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
            files.insert(name, bytes);
        }
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

    #[test]
    fn the_same_files_give_the_same_digest() {
        let tmp = tempfile::tempdir().unwrap();
        let a = spec().write_archive(&tmp.path().join("a.tar")).unwrap();
        let b = spec().write_archive(&tmp.path().join("b.tar")).unwrap();
        assert_eq!(a, b);
    }
}
