#!/usr/bin/env bash
# The krew plugin of `kubectl pulsecheck`: its archives and its manifest.
#
#   release/krew.sh archive BINARY VERSION OS/ARCH OUT_DIR
#       writes OUT_DIR/kubectl-pulsecheck_vVERSION_OS_ARCH.tar.gz (BINARY as kubectl-pulsecheck,
#       and LICENSE; reproducible: sorted, owner 0, mtime 0, gzip without a name or time);
#       prints its path
#   release/krew.sh manifest VERSION BASE_URL ARCHIVE...
#       prints the manifest for those archives (release/krew/pulsecheck.yaml.tmpl, each platform's
#       uri BASE_URL/ARCHIVE_NAME and sha256)
#   release/krew.sh check
#       CI (.ci/check-deploy.sh): builds dummy archives, generates the manifest for the release's
#       URLs and for a local HTTP server, and runs krew's validate-krew-manifest on both — the
#       second also installs every platform with `kubectl krew install --manifest` from that
#       server (sha256, extraction, the LICENSE file), as krew-index's CI does
#
# pulsecheck's binary is the plugin: invoked as kubectl-pulsecheck it behaves as `pulsecheck
# check` (src/main.rs).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
die() { echo "release/krew.sh: $*" >&2; exit 1; }

archive() {
  local binary=$1 version=$2 platform=$3 out=$4
  local os=${platform%/*} arch=${platform#*/}
  local name=kubectl-pulsecheck_v${version}_${os}_${arch}.tar.gz stage
  [ -f "$binary" ] || die "no binary $binary"
  stage=$(mktemp -d)
  install -m 0755 "$binary" "$stage/kubectl-pulsecheck"
  install -m 0644 "$root/LICENSE" "$stage/LICENSE"
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 --format=gnu -C "$stage" -cf - LICENSE kubectl-pulsecheck \
    | gzip -n -9 >"$out/$name"
  rm -rf "$stage"
  echo "$out/$name"
}

manifest() {
  local version=$1 base_url=$2; shift 2
  [ "$#" -gt 0 ] || die "manifest: no archive given"
  local platforms="" file name rest os arch sha
  for file in "$@"; do
    name=$(basename "$file")
    rest=${name#kubectl-pulsecheck_v"$version"_}
    [ "$rest" != "$name" ] || die "$name is not an archive of version $version (kubectl-pulsecheck_v${version}_OS_ARCH.tar.gz)"
    rest=${rest%.tar.gz}
    os=${rest%_*} arch=${rest#*_}
    sha=$(sha256sum "$file" | cut -d' ' -f1)
    platforms+="  - selector:
      matchLabels:
        os: $os
        arch: $arch
    uri: $base_url/$name
    sha256: $sha
    bin: kubectl-pulsecheck
    files:
      - from: kubectl-pulsecheck
        to: .
      - from: LICENSE
        to: .
"
  done
  local template
  template=$(<"$root/release/krew/pulsecheck.yaml.tmpl")
  template=${template//@VERSION@/$version}
  printf '%s' "${template//@PLATFORMS@/${platforms%$'\n'}}"
  echo
}

check() {
  local bin tmp port server version=0.0.0-ci
  bin=$(bash "$root/tools/build.sh" --print)
  bash "$root/tools/build.sh" krew >/dev/null
  [ -x "$bin/kubectl" ] || bash "$root/tools/build.sh" kubectl >/dev/null
  tmp=$(mktemp -d)
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'; [ -z \"\${server:-}\" ] || kill \"\$server\" 2>/dev/null || true" RETURN
  mkdir -p "$tmp/archives" "$tmp/release" "$tmp/local" "$tmp/path"
  # A stand-in for the binary (krew installs it, never runs it).
  printf '#!/bin/sh\necho kubectl-pulsecheck\n' >"$tmp/kubectl-pulsecheck"
  local archives=()
  for platform in linux/amd64 linux/arm64; do
    archives+=("$(archive "$tmp/kubectl-pulsecheck" "$version" "$platform" "$tmp/archives")")
  done
  # The same inputs give the same archive (the release's sha256 can be reproduced).
  local again
  again=$(archive "$tmp/kubectl-pulsecheck" "$version" linux/amd64 "$tmp")
  cmp -s "$again" "${archives[0]}" || die "two krew archives of the same inputs differ"

  manifest "$version" "https://github.com/pulsecheck/pulsecheck/releases/download/v$version" "${archives[@]}" >"$tmp/release/pulsecheck.yaml"
  "$bin/validate-krew-manifest" -manifest "$tmp/release/pulsecheck.yaml" -skip-install 2>&1 | sed 's/^/  /'
  [ "${PIPESTATUS[0]}" = 0 ] || die "validate-krew-manifest refused the release manifest ($tmp/release/pulsecheck.yaml)"
  echo "krew manifest for the release's URLs: valid"

  # Install every platform from a local server, as krew-index's CI installs from the release.
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  python3 -m http.server --bind 127.0.0.1 --directory "$tmp/archives" "$port" >"$tmp/http.log" 2>&1 &
  server=$!
  for _ in $(seq 50); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null && break
    sleep 0.1
  done
  manifest "$version" "http://127.0.0.1:$port" "${archives[@]}" >"$tmp/local/pulsecheck.yaml"
  ln -s "$bin/kubectl" "$tmp/path/kubectl"
  ln -s "$bin/krew" "$tmp/path/kubectl-krew"
  if ! PATH="$tmp/path:$PATH" "$bin/validate-krew-manifest" -manifest "$tmp/local/pulsecheck.yaml" >"$tmp/validate.log" 2>&1; then
    sed 's/^/  /' "$tmp/validate.log" >&2
    die "validate-krew-manifest could not install the plugin from its archives"
  fi
  grep -E 'spec.platforms installed fine' "$tmp/validate.log" | sed 's/^.*\] //; s/^[0-9/]* [0-9:]* //'
  echo "krew manifest: every platform installs with kubectl krew install --manifest (krew of tools/krew)"
}

case "${1:-}" in
  archive) shift; [ "$#" = 4 ] || die "usage: release/krew.sh archive BINARY VERSION OS/ARCH OUT_DIR"; archive "$@" ;;
  manifest) shift; [ "$#" -ge 3 ] || die "usage: release/krew.sh manifest VERSION BASE_URL ARCHIVE..."; manifest "$@" ;;
  check) check ;;
  *) die "usage: release/krew.sh archive|manifest|check (see the header)" ;;
esac
