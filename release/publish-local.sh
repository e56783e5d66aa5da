#!/usr/bin/env bash
# Tries release/publish.sh here: a registry on loopback (crane registry serve, in memory), the
# image and the chart pushed to it as the release workflow pushes them to ghcr.io, then read
# back: the image index lists linux/amd64 and linux/arm64 and each platform's config says its
# architecture, and its layer holds that platform's /pulsecheck and /pulsecheck-agent byte for
# byte; the chart pulled by digest is the packaged file. No signing, no GitHub release
# (those need the workflow's OIDC identity and token).
#
#   bash release/publish-local.sh VERSION DIR       (make release-publish-local VERSION=X.Y.Z)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
version=${1:?usage: release/publish-local.sh VERSION DIR}
version=${version#v}
dir=$(cd "${2:?usage: release/publish-local.sh VERSION DIR}" && pwd)
bin=$(bash "$root/tools/build.sh" --print)
bash "$root/tools/build.sh" crane >/dev/null
crane=$bin/crane helm=$bin/helm
die() { echo "publish-local: $*" >&2; exit 1; }

tmp=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$crane" registry serve --address "127.0.0.1:$port" >"$tmp/registry.log" 2>&1 &
registry_pid=$!
trap 'kill "$registry_pid" 2>/dev/null || true; rm -rf "$tmp"' EXIT
for _ in $(seq 50); do
  python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null && break
  sleep 0.1
done
registry=127.0.0.1:$port/pulsecheck
echo "publish-local: registry on $registry (crane registry serve, in memory)"

REGISTRY=$registry PUBLISH_SIGN=0 PUBLISH_GITHUB_RELEASE=0 PUBLISH_PLAIN_HTTP=1 GITHUB_TOKEN='' \
  bash "$root/release/publish.sh" "$version" "$dir"

# Read back what a node and a user would pull.
digest=$(cat "$dir/pulsecheck-image.digest")
for platform in linux/amd64 linux/arm64; do
  arch=$("$crane" config --insecure --platform "$platform" "$registry/pulsecheck:$version" | python3 -c 'import json,sys; c=json.load(sys.stdin); print(c["os"]+"/"+c["architecture"], c["config"]["User"], " ".join(c["config"]["Entrypoint"]))')
  [ "${arch%% *}" = "$platform" ] || die "$platform resolves to an image for ${arch%% *}"
  # The layer pulled back holds the binary built for that platform, byte for byte.
  layer=$("$crane" manifest --insecure --platform "$platform" "$registry/pulsecheck:$version" | python3 -c 'import json,sys; print(json.load(sys.stdin)["layers"][0]["digest"])')
  "$crane" blob --insecure "$registry/pulsecheck@$layer" >"$tmp/layer.tar"
  [ "sha256:$(sha256sum <"$tmp/layer.tar" | cut -d' ' -f1)" = "$layer" ] || die "$platform: the layer pulled back does not match its digest"
  for binary in pulsecheck pulsecheck-agent; do
    tar -xOf "$tmp/layer.tar" "$binary" | cmp -s - "$dir/$binary-linux-${platform#linux/}" || die "$platform: the image's /$binary is not $dir/$binary-linux-${platform#linux/}"
  done
  echo "publish-local: $registry/pulsecheck:$version for $platform: $arch, /pulsecheck = pulsecheck-linux-${platform#linux/}, /pulsecheck-agent = pulsecheck-agent-linux-${platform#linux/}"
done
[ "$("$crane" digest --insecure "$registry/pulsecheck:$version")" = "$digest" ] || die "the tag does not resolve to the index built ($digest)"
# --fast: crane's full layer check assumes gzip layers; the image's are uncompressed tar (above).
"$crane" validate --insecure --fast --remote "$registry/pulsecheck@$digest" >/dev/null || die "crane validate: the pushed image index is not consistent"
echo "publish-local: crane validate --fast: the index and its manifests are consistent"
"$helm" pull --plain-http "oci://$registry/charts/pulsecheck" --version "$version" --destination "$tmp" >/dev/null
cmp -s "$tmp/pulsecheck-$version.tgz" "$dir/pulsecheck-$version.tgz" || die "the chart pulled back differs from the package"
echo "publish-local: helm pull oci://$registry/charts/pulsecheck --version $version: the packaged chart"
