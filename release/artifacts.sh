#!/usr/bin/env bash
# Builds everything a pulsecheck release publishes, without publishing anything: the steps of
# .github/workflows/release.yml that need no registry, no signing identity and no GitHub, so
# they run (and are checked) on any machine with the project's toolchain.
#
#   bash release/artifacts.sh VERSION [OUT]      (make release-artifacts VERSION=0.1.0)
#
# Into OUT (default target/release-artifacts/VERSION):
#   pulsecheck-linux-amd64, pulsecheck-linux-arm64   static (musl) binaries, cross-compiled on
#                                      this machine with cargo-zigbuild (zig as C compiler and
#                                      linker for ring), no emulation
#   pulsecheck-agent-linux-amd64, pulsecheck-agent-linux-arm64   the node agent, built the same way
#   pulsecheck-image.tar               one multi-arch OCI image (an image index of linux/amd64 and
#                                      linux/arm64) for ghcr.io/pulsecheck/pulsecheck:VERSION holding
#                                      /pulsecheck and /pulsecheck-agent, an OCI layout archive
#                                      (pulsecheck-lab image --binary ARCH=FILE --agent-binary ARCH=FILE)
#   pulsecheck-image.digest            the index's digest: what is pushed and signed
#   pulsecheck-VERSION.tgz             the chart (helm package), pushed as an OCI artifact
#   kubectl-pulsecheck_vVERSION_linux_{amd64,arm64}.tar.gz   krew archives (the binary as
#                                      kubectl-pulsecheck, LICENSE), reproducible
#   pulsecheck.yaml                    the krew plugin manifest for those archives (release/krew.sh)
#   pulsecheck.cdx.json                CycloneDX SBOM of the pulsecheck crate (cargo-cyclonedx)
#   pulsecheck-agent.cdx.json          CycloneDX SBOM of the pulsecheck-agent crate
#   SHA256SUMS
#
# Tools, cached by version under the pulsecheck cache like tools/build.sh's: ziglang and
# cargo-zigbuild from PyPI in a virtualenv, cargo-cyclonedx from crates.io, helm from
# tools/build.sh. The Rust target aarch64-unknown-linux-musl must be installed (rustup target
# add; the script does it when rustup can).
#
# Environment: RELEASE_TARGETS (default "x86_64 aarch64"), RELEASE_BASE_URL (where the krew
# archives will be downloaded from; default the GitHub release of vVERSION), CARGO_BUILD_JOBS.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

version=${1:?usage: release/artifacts.sh VERSION [OUT]}
version=${version#v}
out=${2:-target/release-artifacts/$version}
cache=${PULSECHECK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pulsecheck}
target_dir=${CARGO_TARGET_DIR:-$root/target}
targets=${RELEASE_TARGETS:-x86_64 aarch64}
base_url=${RELEASE_BASE_URL:-https://github.com/pulsecheck/pulsecheck/releases/download/v$version}
zigbuild_version=0.24.0 ziglang_version=0.17.0 cyclonedx_version=0.5.9

log() { printf '[%(%H:%M:%S)T] release: %s\n' -1 "$*" >&2; }
die() { echo "release: $*" >&2; exit 1; }
timed() { # timed WHAT CMD...: runs CMD, logs how long it took
  local what=$1 started=$SECONDS; shift
  "$@"
  log "$what: $((SECONDS - started))s"
}

# ---- the version is the same everywhere --------------------------------------------------------
[[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$ ]] || die "VERSION '$version' is not SemVer (want 1.2.3 or 1.2.3-rc.1; the tag is v1.2.3)"
crate_version=$(cargo metadata --locked --no-deps --format-version 1 | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"]=="pulsecheck"))')
chart_version=$(awk '$1=="version:"{print $2}' charts/pulsecheck/Chart.yaml)
chart_app_version=$(awk '$1=="appVersion:"{gsub(/"/,"",$2); print $2}' charts/pulsecheck/Chart.yaml)
for pair in "Cargo.toml (workspace.package.version):$crate_version" "charts/pulsecheck/Chart.yaml version:$chart_version" "charts/pulsecheck/Chart.yaml appVersion:$chart_app_version"; do
  [ "${pair##*:}" = "$version" ] || die "$version is the release, but ${pair%:*} says ${pair##*:}: bump it first (the image label, the chart and the binary's --version come from there)"
done
mkdir -p "$out"
out=$(cd "$out" && pwd)
# What release/publish.sh adds to the folder belongs to an earlier publication.
rm -f "$out/pulsecheck-chart.digest" "$out/SHA256SUMS.sigstore.json" "$out/notes.md"
log "version $version into $out"

# ---- tools ----------------------------------------------------------------------------------------
venv=$cache/venv-release-zig$ziglang_version-zigbuild$zigbuild_version
if [ ! -x "$venv/bin/cargo-zigbuild" ]; then
  log "installing ziglang $ziglang_version and cargo-zigbuild $zigbuild_version from PyPI into $venv (first time only)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "ziglang==$ziglang_version" "cargo-zigbuild==$zigbuild_version"
fi
# cargo-zigbuild finds zig as `python3 -m ziglang` of the python3 first on PATH: the venv's.
export PATH=$venv/bin:$PATH
cyclonedx_root=$cache/cargo-tools/cargo-cyclonedx-$cyclonedx_version
if [ ! -x "$cyclonedx_root/bin/cargo-cyclonedx" ]; then
  log "building cargo-cyclonedx $cyclonedx_version from crates.io into $cyclonedx_root (first time only)"
  timed "cargo install cargo-cyclonedx" cargo install --quiet --locked --root "$cyclonedx_root" "cargo-cyclonedx@$cyclonedx_version"
fi
bin=$(bash tools/build.sh --print)
bash tools/build.sh helm >/dev/null
helm=$bin/helm

# ---- binaries -------------------------------------------------------------------------------------
declare -A oci_arch=([x86_64]=amd64 [aarch64]=arm64)
image_args=()
for arch in $targets; do
  [ -n "${oci_arch[$arch]:-}" ] || die "RELEASE_TARGETS: unknown architecture '$arch' (want x86_64, aarch64)"
  triple=$arch-unknown-linux-musl
  if ! rustup target list --installed 2>/dev/null | grep -qx "$triple"; then
    rustup target add "$triple" || die "the Rust target $triple is not installed and rustup could not add it"
  fi
  timed "cargo zigbuild $triple" cargo zigbuild --locked --release --target "$triple" --bin pulsecheck --bin pulsecheck-agent
  for binary in pulsecheck pulsecheck-agent; do
    cp "$target_dir/$triple/release/$binary" "$out/$binary-linux-${oci_arch[$arch]}"
  done
  image_args+=(--binary "${oci_arch[$arch]}=$out/pulsecheck-linux-${oci_arch[$arch]}"
    --agent-binary "${oci_arch[$arch]}=$out/pulsecheck-agent-linux-${oci_arch[$arch]}")
done

# ---- the multi-arch image ---------------------------------------------------------------------------
reference=ghcr.io/pulsecheck/pulsecheck:$version
image_started=$SECONDS
cargo run --locked --quiet --bin pulsecheck-lab -- image "${image_args[@]}" \
  --reference "$reference" --out "$out/pulsecheck-image.tar" >/dev/null 2>"$out/image.log" || { cat "$out/image.log" >&2; exit 1; }
log "pulsecheck-lab image: $((SECONDS - image_started))s"
sed -n 's/^wrote .* (\(sha256:[0-9a-f]*\))$/\1/p' "$out/image.log" >"$out/pulsecheck-image.digest"
rm "$out/image.log"
[ -s "$out/pulsecheck-image.digest" ] || die "pulsecheck-lab image printed no digest"
log "image $reference@$(cat "$out/pulsecheck-image.digest")"

# ---- the chart ------------------------------------------------------------------------------------------
timed "helm package" "$helm" package charts/pulsecheck --version "$version" --app-version "$version" --destination "$out" >/dev/null

# ---- krew -----------------------------------------------------------------------------------------------
krew_archives=()
for arch in $targets; do
  krew_archives+=("$(bash release/krew.sh archive "$out/pulsecheck-linux-${oci_arch[$arch]}" "$version" "linux/${oci_arch[$arch]}" "$out")")
done
bash release/krew.sh manifest "$version" "$base_url" "${krew_archives[@]}" >"$out/pulsecheck.yaml"
# krew's own validator on the manifest as released (CI also installs from a generated one:
# release/krew.sh check).
bash tools/build.sh krew >/dev/null
"$bin/validate-krew-manifest" -manifest "$out/pulsecheck.yaml" -skip-install 2>"$out/krew.log" || { cat "$out/krew.log" >&2; die "validate-krew-manifest refused $out/pulsecheck.yaml"; }
rm "$out/krew.log"
log "krew manifest: valid (validate-krew-manifest)"

# ---- SBOM -----------------------------------------------------------------------------------------------
# The normal dependencies of the pulsecheck and pulsecheck-agent crates (what the image's two
# binaries are built from), for the musl targets: cargo-cyclonedx writes one file per workspace
# member, next to its Cargo.toml.
timed "cargo cyclonedx" "$cyclonedx_root/bin/cargo-cyclonedx" cyclonedx --manifest-path Cargo.toml --format json \
  --spec-version 1.5 --no-build-deps --target x86_64-unknown-linux-musl --override-filename pulsecheck.cdx -q
for sbom in pulsecheck.cdx.json agent/pulsecheck.cdx.json; do
  [ -f "$sbom" ] || die "cargo cyclonedx wrote no $sbom"
done
mv pulsecheck.cdx.json "$out/pulsecheck.cdx.json"
mv agent/pulsecheck.cdx.json "$out/pulsecheck-agent.cdx.json"
rm -f lab/pulsecheck.cdx.json # the lab's (every workspace member gets one; it is never shipped)

(cd "$out" && sha256sum -- pulsecheck-linux-* pulsecheck-agent-linux-* pulsecheck-image.tar pulsecheck-"$version".tgz kubectl-pulsecheck_* pulsecheck.yaml pulsecheck.cdx.json pulsecheck-agent.cdx.json >SHA256SUMS)
log "done:"
(cd "$out" && stat -c '  %10s  %n' -- *) >&2
