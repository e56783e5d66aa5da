#!/usr/bin/env bash
# Measures what a simulated fleet costs: CPU and RSS of `pulsecheck-lab fleet` and of the
# kube-apiserver (and etcd) it talks to, over a steady-state window after start-up.
#
#   bash benches/fleet_scale.sh [--nodes 1000] [--window 300] [--warmup 160] [--kubeconfig K] [--bin PATH]
#
# The defaults make the window one whole status report period (5 min) that starts after every
# node's first jittered report could be due (0.5 × 5 min): Lease renewals AND status reports are
# both in it at their steady rates (kubelet defaults: 1000 / 10 s and 1000 / 5 min).
# Without --kubeconfig it starts its own control plane with `pulsecheck-lab up --dir <tmp>`.
# Build first (the numbers in docs/performance.md come from a release build):
#   cargo build --release --bin pulsecheck-lab
# CPU is utime+stime from /proc/<pid>/stat over the window, as a percentage of one core.
set -euo pipefail

nodes=1000 window=300 warmup=160 kubeconfig="" bin="${CARGO_TARGET_DIR:-target}/release/pulsecheck-lab"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --nodes) nodes="$2"; shift 2 ;;
    --window) window="$2"; shift 2 ;;
    --warmup) warmup="$2"; shift 2 ;;
    --kubeconfig) kubeconfig="$2"; shift 2 ;;
    --bin) bin="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ -x "$bin" ]] || { echo "no pulsecheck-lab binary at $bin; build it: cargo build --release --bin pulsecheck-lab" >&2; exit 2; }

# shellcheck source=benches/scale-lib.sh
source "$(dirname "$0")/scale-lib.sh"

if [[ -z "$kubeconfig" ]]; then
  "$bin" up --dir "$work/lab" > "$work/up.out" 2> "$work/up.log" &
  pids+=("$!")
  for _ in $(seq 600); do grep -q '^ready: ' "$work/up.out" && break; sleep 0.2; done
  kubeconfig="$(sed -n 's/^ready: //p' "$work/up.out")"
  [[ -s "$kubeconfig" ]] || { echo "lab up did not get ready:" >&2; cat "$work/up.log" >&2; exit 1; }
fi

server="$(awk '/server:/ {print $2; exit}' "$kubeconfig" | tr -d '"')"
port="${server##*:}"
apiserver_pid="$(pgrep -f -- "kube-apiserver.*--secure-port=${port}" | head -1 || true)"
etcd_client_port="$(tr '\0' ' ' < "/proc/${apiserver_pid}/cmdline" 2>/dev/null | grep -o -- '--etcd-servers=[^ ]*' | grep -o '[0-9]*$' || true)"
etcd_pid=""
[[ -n "$etcd_client_port" ]] && etcd_pid="$(pgrep -f -- "etcd.*--listen-client-urls=http://127.0.0.1:${etcd_client_port}" | head -1 || true)"

started=$(date +%s.%N)
start_fleet "$bin" "$kubeconfig" "$nodes"
up=$(date +%s.%N)

# Requests the fleet makes, from the apiserver's own counters (needs kubectl; skipped without it).
kubectl="$(command -v kubectl || true)"
[[ -z "$kubectl" && -x "$(bash tools/build.sh --print 2>/dev/null)/kubectl" ]] && kubectl="$(bash tools/build.sh --print)/kubectl"
patches() { # $1 = resource, $2 = subresource ("" for none)
  [[ -n "$kubectl" ]] || { echo 0; return; }
  "$kubectl" --kubeconfig "$kubeconfig" get --raw /metrics 2>/dev/null \
    | awk -v r="resource=\"$1\"" -v sr="subresource=\"$2\"" \
        '/^apiserver_request_total\{/ && /verb="PATCH"/ && index($0, r) && index($0, sr) {n += $NF} END {printf "%d", n}'
}

rss_mib() { awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }

sleep "$warmup"
declare -A before
for pid in "$fleet_pid" $apiserver_pid $etcd_pid; do before[$pid]=$(ticks "$pid"); done
leases0=$(patches leases "") status0=$(patches nodes status)
t0=$(date +%s.%N)
sleep "$window"
t1=$(date +%s.%N)
leases1=$(patches leases "") status1=$(patches nodes status)

printf 'nodes=%s start-up=%.1fs window=%.0fs (after %ss warm-up) cores=%s\n' \
  "$nodes" "$(echo "$up - $started" | bc)" "$(echo "$t1 - $t0" | bc)" "$warmup" "$(nproc)"
printf '| process | CPU (%% of one core) | RSS (MiB) |\n|---|---|---|\n'
report() {
  local name=$1 pid=$2
  [[ -n "$pid" ]] || return 0
  local cpu
  cpu=$(echo "scale=1; 100 * ($(ticks "$pid") - ${before[$pid]}) / $hz / ($t1 - $t0)" | bc)
  printf '| %s | %s | %s |\n' "$name" "$cpu" "$(rss_mib "$pid")"
}
report "pulsecheck-lab fleet" "$fleet_pid"
report "kube-apiserver" "$apiserver_pid"
report "etcd" "$etcd_pid"
if [[ -n "$kubectl" ]]; then
  printf '\nLease PATCH/s: %.1f   nodes/status PATCH/s: %.2f\n' \
    "$(echo "($leases1 - $leases0) / ($t1 - $t0)" | bc -l)" "$(echo "($status1 - $status0) / ($t1 - $t0)" | bc -l)"
fi
