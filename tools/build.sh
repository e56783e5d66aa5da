#!/usr/bin/env bash
# Builds the Go programs pulsecheck's tests, demo and CI run (kube-apiserver,
# kube-controller-manager, kube-scheduler, kubelet, kube-proxy, kubectl, etcd, helm, promtool, toxiproxy) from the pinned Go
# modules under tools/, into a cache folder keyed on each tool's version.
# A tool that is already in the cache is not built again.
#
#   tools/build.sh            build everything, print the bin folder
#   tools/build.sh control    only kube-apiserver and etcd
#   tools/build.sh nodes      only kubelet, kube-proxy, kube-scheduler, kube-controller-manager and the sandbox image's pause (the real-node lab)
#   tools/build.sh actionlint the GitHub workflows' linter (.ci/check-deploy.sh); krew: krew's
#   tools/build.sh krew       validate-krew-manifest (the krew plugin manifest); crane: the
#   tools/build.sh crane      release's image pusher (module in release/crane); none is in `all`
#   tools/build.sh --print    print the bin folder, build nothing
#   tools/build.sh crds       download the prometheus-operator module pinned in tools/crds
#                             and print the folder holding its CRD YAML files
#
# Cache: ${PULSECHECK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pulsecheck}/bin/<tool>-<version>/
# When KUBEBUILDER_ASSETS names a folder with kube-apiserver and etcd, the lab uses
# those instead (see lab/src/binaries.rs); this script still builds the other tools.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${PULSECHECK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pulsecheck}
out=$cache/bin
mkdir -p "$out"

modver() { # modver DIR MODULE: the version DIR/go.mod requires of MODULE
  [ -f "$here/$1/go.mod" ] || return 0
  awk -v m="$2" '($1==m) {print $2} ($1=="require" && $2==m) {print $3}' "$here/$1/go.mod" | head -n 1
}
kube_version=$(modver kube k8s.io/kubernetes)
etcd_version=$(modver etcd go.etcd.io/etcd/server/v3)
helm_version=$(modver helm helm.sh/helm/v3)
prom_version=$(modver promtool github.com/prometheus/prometheus)
toxiproxy_version=$(modver toxiproxy github.com/Shopify/toxiproxy/v2)
actionlint_version=$(modver actionlint github.com/rhysd/actionlint)
krew_version=$(modver krew sigs.k8s.io/krew)
crane_version=$(modver ../release/crane github.com/google/go-containerregistry)

export CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOTOOLCHAIN=local

# build_one NAME VERSION MODULE_DIR PACKAGE [extra go build args...]
build_one() {
  local name=$1 version=$2 dir=$3 pkg=$4; shift 4
  local dest=$out/$name-$version/$name
  if [ -x "$dest" ]; then return 0; fi
  echo "building $name $version (first time only; cached in $out)" >&2
  mkdir -p "$out/$name-$version"
  (cd "$here/$dir" && go build -trimpath "$@" -o "$dest.tmp" "$pkg")
  mv "$dest.tmp" "$dest"
}

kube_ldflags() {
  local minor
  minor=$(echo "$kube_version" | cut -d. -f2)
  echo "-s -w -X k8s.io/component-base/version.gitVersion=$kube_version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/client-go/pkg/version.gitVersion=$kube_version"
}

link() { # link NAME VERSION: a stable path bin/current/NAME for scripts
  mkdir -p "$out/current"
  ln -sf "../$1-$2/$1" "$out/current/$1"
}

what=${1:-all}
case "$what" in
  --print) echo "$out/current"; exit 0 ;;
  crds)
    # The CRDs (ServiceMonitor, PrometheusRule, ...) ship in the module's source tree;
    # `go mod download` verifies them against tools/crds/go.sum.
    (cd "$here/crds" && go mod download github.com/prometheus-operator/prometheus-operator >&2 \
      && echo "$(go list -m -f '{{.Dir}}' github.com/prometheus-operator/prometheus-operator)/example/prometheus-operator-crd")
    exit 0 ;;
  control|nodes|all|kubectl|helm|promtool|toxiproxy|actionlint|krew|crane) ;;
  *) echo "tools/build.sh: unknown target '$what' (want all, control, nodes, kubectl, helm, promtool, toxiproxy, actionlint, krew, crane, crds, --print)" >&2; exit 2 ;;
esac

if [ "$what" = control ] || [ "$what" = all ]; then
  build_one etcd "$etcd_version" etcd go.etcd.io/etcd/server/v3 -ldflags "-s -w"
  link etcd "$etcd_version"
  build_one kube-apiserver "$kube_version" kube k8s.io/kubernetes/cmd/kube-apiserver -tags=selinux,notest,grpcnotrace -ldflags "$(kube_ldflags)"
  link kube-apiserver "$kube_version"
fi
if [ "$what" = all ] || [ "$what" = nodes ]; then
  # Also next to real nodes (their Kubernetes verdict: Ready=Unknown, unreachable taints).
  build_one kube-controller-manager "$kube_version" kube k8s.io/kubernetes/cmd/kube-controller-manager -tags=selinux,notest,grpcnotrace -ldflags "$(kube_ldflags)"
  link kube-controller-manager "$kube_version"
fi
if [ "$what" = all ] || [ "$what" = nodes ]; then
  # The real-node lab: a real kubelet per node, and the scheduler that places Pods on them.
  build_one kubelet "$kube_version" kube k8s.io/kubernetes/cmd/kubelet -tags=selinux,notest,grpcnotrace -ldflags "$(kube_ldflags)"
  link kubelet "$kube_version"
  build_one kube-scheduler "$kube_version" kube k8s.io/kubernetes/cmd/kube-scheduler -tags=selinux,notest,grpcnotrace -ldflags "$(kube_ldflags)"
  link kube-scheduler "$kube_version"
  # What makes a Service's ClusterIP work on a real node (the `kubernetes` Service, for Pods that
  # talk to the apiserver: pulsecheck installed by its chart).
  build_one kube-proxy "$kube_version" kube k8s.io/kubernetes/cmd/kube-proxy -tags=selinux,notest,grpcnotrace -ldflags "$(kube_ldflags)"
  link kube-proxy "$kube_version"
  # The sandbox image's one program (tools/pause), keyed on its source so an edit rebuilds it.
  pause_version=$(cat "$here/pause/go.mod" "$here/pause/main.go" | sha256sum | cut -c1-12)
  build_one pause "$pause_version" pause . -ldflags "-s -w"
  link pause "$pause_version"
fi
if [ "$what" = all ] || [ "$what" = kubectl ]; then
  build_one kubectl "$kube_version" kube k8s.io/kubernetes/cmd/kubectl -tags=selinux,notest,grpcnotrace -ldflags "$(kube_ldflags)"
  link kubectl "$kube_version"
fi
if { [ "$what" = all ] || [ "$what" = helm ]; } && [ -n "$helm_version" ]; then
  # Like helm's Makefile: the default Kubernetes version of `helm template`/`lint` follows client-go.
  helm_k8s_minor=$(modver helm k8s.io/client-go | cut -d. -f2)
  helm_ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version"
  for pkg in pkg/lint/rules pkg/chartutil; do
    helm_ldflags="$helm_ldflags -X helm.sh/helm/v3/$pkg.k8sVersionMajor=1 -X helm.sh/helm/v3/$pkg.k8sVersionMinor=$helm_k8s_minor"
  done
  build_one helm "$helm_version" helm helm.sh/helm/v3/cmd/helm -ldflags "$helm_ldflags"
  link helm "$helm_version"
fi
if { [ "$what" = all ] || [ "$what" = promtool ]; } && [ -n "$prom_version" ]; then
  build_one promtool "$prom_version" promtool github.com/prometheus/prometheus/cmd/promtool -ldflags "-s -w -X github.com/prometheus/common/version.Version=$prom_version"
  link promtool "$prom_version"
fi
if { [ "$what" = all ] || [ "$what" = toxiproxy ]; } && [ -n "$toxiproxy_version" ]; then
  # A TCP proxy whose traffic tests can stall or cut (leader election under a half-open connection).
  build_one toxiproxy-server "$toxiproxy_version" toxiproxy github.com/Shopify/toxiproxy/v2/cmd/server -ldflags "-s -w"
  link toxiproxy-server "$toxiproxy_version"
fi
# Release engineering, built only when asked for (.ci/check-deploy.sh does): the workflows' linter
# krew's own manifest validator, and the release's image pusher.
if [ "$what" = actionlint ] && [ -n "$actionlint_version" ]; then
  build_one actionlint "$actionlint_version" actionlint github.com/rhysd/actionlint/cmd/actionlint -ldflags "-s -w -X github.com/rhysd/actionlint.version=$actionlint_version"
  link actionlint "$actionlint_version"
fi
if [ "$what" = krew ] && [ -n "$krew_version" ]; then
  build_one validate-krew-manifest "$krew_version" krew sigs.k8s.io/krew/cmd/validate-krew-manifest -ldflags "-s -w"
  link validate-krew-manifest "$krew_version"
  # The validator installs each platform with `kubectl krew install --manifest`: krew itself (no
  # version stamped in: a development build never asks GitHub for a newer krew).
  build_one krew "$krew_version" krew sigs.k8s.io/krew/cmd/krew -ldflags "-s -w"
  link krew "$krew_version"
fi
if [ "$what" = crane ] && [ -n "$crane_version" ]; then
  build_one crane "$crane_version" ../release/crane github.com/google/go-containerregistry/cmd/crane -ldflags "-s -w -X github.com/google/go-containerregistry/cmd/crane/cmd.Version=$crane_version"
  link crane "$crane_version"
fi
echo "$out/current"
