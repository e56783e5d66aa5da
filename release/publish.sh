#!/usr/bin/env bash
# Publishes what release/artifacts.sh built: the publishing half of .github/workflows/release.yml.
#
#   bash release/publish.sh VERSION DIR
#
#   1. the multi-arch image: DIR/pulsecheck-image.tar (an OCI layout naming one image index)
#      pushed with crane as $REGISTRY/pulsecheck:VERSION; the digest the registry returns must be
#      the one the archive was built with (DIR/pulsecheck-image.digest)
#   2. the chart: helm push DIR/pulsecheck-VERSION.tgz oci://$REGISTRY/charts
#   3. signing (PUBLISH_SIGN=1): cosign sign of the image index and of the chart by digest,
#      keyless (in GitHub Actions: the workflow's OIDC identity, a Fulcio certificate, the Rekor
#      log); cosign attest of the CycloneDX SBOMs (pulsecheck's and the agent's, both binaries of
#      the image) to the image; cosign sign-blob of SHA256SUMS into SHA256SUMS.sigstore.json
#   4. the GitHub release vVERSION (PUBLISH_GITHUB_RELEASE=1, gh): the binaries (pulsecheck and
#      pulsecheck-agent), krew archives and manifest, chart, SBOMs, SHA256SUMS and its bundle;
#      notes from CHANGELOG.md
#
# Environment: REGISTRY (default ghcr.io/pulsecheck), PUBLISH_SIGN and PUBLISH_GITHUB_RELEASE
# (default 1), PUBLISH_PLAIN_HTTP=1 for a registry without TLS (release/publish-local.sh),
# GITHUB_TOKEN/GITHUB_ACTOR to log in to ghcr.io. Signing and the GitHub release cannot run
# outside GitHub Actions; release/publish-local.sh runs steps 1 and 2 against a local registry.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
version=${1:?usage: release/publish.sh VERSION DIR}
version=${version#v}
dir=$(cd "${2:?usage: release/publish.sh VERSION DIR}" && pwd)
registry=${REGISTRY:-ghcr.io/pulsecheck}
sign=${PUBLISH_SIGN:-1} github_release=${PUBLISH_GITHUB_RELEASE:-1} plain_http=${PUBLISH_PLAIN_HTTP:-0}
log() { printf 'publish: %s\n' "$*" >&2; }
die() { echo "publish: $*" >&2; exit 1; }

for file in pulsecheck-image.tar pulsecheck-image.digest "pulsecheck-$version.tgz" pulsecheck.yaml pulsecheck.cdx.json pulsecheck-agent.cdx.json SHA256SUMS; do
  [ -f "$dir/$file" ] || die "$dir/$file is missing: run make release-artifacts VERSION=$version first"
done
compgen -G "$dir/pulsecheck-agent-linux-*" >/dev/null || die "$dir has no pulsecheck-agent-linux-* binary: run make release-artifacts VERSION=$version first"
(cd "$dir" && sha256sum --quiet -c SHA256SUMS) || die "$dir does not match its SHA256SUMS"

bin=$(bash "$root/tools/build.sh" --print)
bash "$root/tools/build.sh" crane >/dev/null
bash "$root/tools/build.sh" helm >/dev/null
crane=$bin/crane helm=$bin/helm
crane_flags=() helm_flags=()
if [ "$plain_http" = 1 ]; then crane_flags=(--insecure); helm_flags=(--plain-http); fi

if [ -n "${GITHUB_TOKEN:-}" ] && [[ $registry == ghcr.io/* ]]; then
  printf '%s' "$GITHUB_TOKEN" | "$crane" auth login ghcr.io -u "${GITHUB_ACTOR:?}" --password-stdin
  printf '%s' "$GITHUB_TOKEN" | "$helm" registry login ghcr.io -u "${GITHUB_ACTOR:?}" --password-stdin
fi

# ---- 1. the image ---------------------------------------------------------------------------------
image=$registry/pulsecheck
want=$(cat "$dir/pulsecheck-image.digest")
layout=$(mktemp -d)
trap 'rm -rf "$layout"' EXIT
tar -xf "$dir/pulsecheck-image.tar" -C "$layout"
# The layout's index.json names one entry, the image index: crane pushes that index and the
# manifests and blobs it lists.
pushed=$("$crane" push "${crane_flags[@]}" "$layout" "$image:$version")
[ "${pushed##*@}" = "$want" ] || die "the registry stored $image:$version as $pushed, not the digest built ($want)"
log "image: $image:$version@$want"
platforms=$("$crane" manifest "${crane_flags[@]}" "$image@$want" | python3 -c 'import json,sys; print(" ".join(sorted(m["platform"]["os"]+"/"+m["platform"]["architecture"] for m in json.load(sys.stdin)["manifests"])))')
log "image platforms: $platforms"

# ---- 2. the chart ---------------------------------------------------------------------------------
chart_out=$("$helm" push "${helm_flags[@]}" "$dir/pulsecheck-$version.tgz" "oci://$registry/charts" 2>&1) || { echo "$chart_out" >&2; die "helm push failed"; }
chart_digest=$(sed -n 's/^Digest: \(sha256:[0-9a-f]*\)$/\1/p' <<<"$chart_out")
[ -n "$chart_digest" ] || { echo "$chart_out" >&2; die "helm push printed no digest"; }
log "chart: oci://$registry/charts/pulsecheck:$version@$chart_digest"
printf '%s\n' "$chart_digest" >"$dir/pulsecheck-chart.digest"

# ---- 3. signatures ---------------------------------------------------------------------------------
if [ "$sign" = 1 ]; then
  command -v cosign >/dev/null || die "cosign is not installed (the workflow's sigstore/cosign-installer step)"
  cosign sign --yes "$image@$want"
  cosign attest --yes --type cyclonedx --predicate "$dir/pulsecheck.cdx.json" "$image@$want"
  cosign attest --yes --type cyclonedx --predicate "$dir/pulsecheck-agent.cdx.json" "$image@$want"
  cosign sign --yes "$registry/charts/pulsecheck@$chart_digest"
  cosign sign-blob --yes --bundle "$dir/SHA256SUMS.sigstore.json" "$dir/SHA256SUMS" >/dev/null
  log "signed: the image, its SBOM attestations, the chart, SHA256SUMS"
else
  log "signing skipped (PUBLISH_SIGN=$sign)"
fi

# ---- 4. the GitHub release --------------------------------------------------------------------------
if [ "$github_release" = 1 ]; then
  notes=$dir/notes.md
  {
    awk -v v="$version" '$0 ~ "^## \\[" v "\\]" {on=1; next} on && /^## \[/ {exit} on' "$root/CHANGELOG.md"
    echo
    echo "Image: \`$image:$version@$want\` (linux/amd64, linux/arm64)"
    echo "Chart: \`helm install pulsecheck oci://$registry/charts/pulsecheck --version $version --namespace pulsecheck\` into a namespace of its own labelled for the restricted Pod Security level (docs/install.md) ($chart_digest)"
    echo "Verify: see docs/release.md (cosign verify with the certificate identity of this workflow)."
  } >"$notes"
  prerelease=()
  [[ $version != *-* ]] || prerelease=(--prerelease)
  files=("$dir"/pulsecheck-linux-* "$dir"/pulsecheck-agent-linux-* "$dir"/kubectl-pulsecheck_* "$dir/pulsecheck.yaml" "$dir/pulsecheck-$version.tgz"
    "$dir/pulsecheck.cdx.json" "$dir/pulsecheck-agent.cdx.json" "$dir/SHA256SUMS")
  [ ! -f "$dir/SHA256SUMS.sigstore.json" ] || files+=("$dir/SHA256SUMS.sigstore.json")
  gh release create "v$version" --verify-tag --title "pulsecheck $version" --notes-file "$notes" "${prerelease[@]}" "${files[@]}"
  log "GitHub release v$version created"
else
  log "GitHub release skipped (PUBLISH_GITHUB_RELEASE=$github_release)"
fi
