#!/usr/bin/env bash
# pulsecheck beside a bare watcher, on one simulated fleet against the lab's real apiserver
# (issue 14's scale run). Both follow the same Nodes and node Leases from the start; pulsecheck
# runs as `pulsecheck run --probe none --dry-run`, under the shipped ServiceAccount and RBAC
# (manifests/), with leader election; the baseline, pulsecheck-bare-watcher, only runs
# kube_runtime::watcher with the typed k8s-openapi structs and keeps nothing.
#
#   bash benches/controller_scale.sh --nodes N [--window 180] [--warmup 70] [--lease-duration 40s]
#                                    [--status-report 1m] [--per-node-metrics unhealthy|all|none] [--bin-dir DIR]
#
# Fleet cadence: Lease renewed every quarter of --lease-duration (kubelet: 40s → every 10 s),
# status posted every --status-report ±50 % after a change, and then every --status-report
# (1m: what the issue measured at, every 60–66 s). For large fleets slow the Leases down
# (--lease-duration 200s) so this machine's apiserver keeps up: the size, not the rate, is measured.
#
# Prints a table, the apiserver requests pulsecheck made in the window (from the apiserver's
# audit log, by verb and resource), the /metrics size and scrape time, and ends with exactly one line:
#   controller_scale nodes=N cpu_ratio=R rss_mib=M tick_ms=T ready_s=S
# cpu_ratio: pulsecheck CPU / bare watcher CPU over the window (utime+stime from /proc);
# rss_mib: pulsecheck's RSS at the end; tick_ms: mean pulsecheck_evaluation_duration_seconds in
# the window; ready_s: seconds from pulsecheck's watches synced (its "watch synced" log lines) to
# /readyz answering 200.
#
# Build first (the numbers in docs/performance.md come from release builds):
#   cargo build --release --bin pulsecheck --bin pulsecheck-lab --bin pulsecheck-bare-watcher
set -euo pipefail
cd "$(dirname "$0")/.."

nodes="" window=180 warmup=70 lease_duration=40s status_report=1m per_node=unhealthy
bin_dir="${CARGO_TARGET_DIR:-target}/release"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --nodes) nodes="$2"; shift 2 ;;
    --window) window="$2"; shift 2 ;;
    --warmup) warmup="$2"; shift 2 ;;
    --lease-duration) lease_duration="$2"; shift 2 ;;
    --status-report) status_report="$2"; shift 2 ;;
    --per-node-metrics) per_node="$2"; shift 2 ;;
    --bin-dir) bin_dir="$2"; shift 2 ;;
    *) echo "controller_scale.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ "$nodes" =~ ^[0-9]+$ ]] || { echo "controller_scale.sh: --nodes N is required (a number)" >&2; exit 2; }
for b in pulsecheck pulsecheck-lab pulsecheck-bare-watcher; do
  [[ -x "$bin_dir/$b" ]] || { echo "controller_scale.sh: no $b in --bin-dir $bin_dir; build it: cargo build --release --bin $b" >&2; exit 2; }
done
kubectl="$(bash tools/build.sh --print)/kubectl"
[[ -x "$kubectl" ]] || bash tools/build.sh kubectl >/dev/null

# shellcheck source=benches/scale-lib.sh
source benches/scale-lib.sh
now() { date +%s.%N; }
status_kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }

# The audit policy: every request of pulsecheck's ServiceAccount, nothing else.
sa_user=system:serviceaccount:pulsecheck:pulsecheck
cat > "$work/audit-policy.yaml" <<EOF
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    users: ["$sa_user"]
  - level: None
EOF
"$bin_dir/pulsecheck-lab" up --dir "$work/lab" --audit-policy "$work/audit-policy.yaml" > "$work/up.out" 2> "$work/up.log" &
pids+=("$!")
for _ in $(seq 600); do grep -q '^ready: ' "$work/up.out" && break; sleep 0.2; done
admin="$(sed -n 's/^ready: //p' "$work/up.out")"
[[ -s "$admin" ]] || { echo "lab up did not get ready:" >&2; cat "$work/up.log" >&2; exit 1; }
k() { "$kubectl" --kubeconfig "$admin" "$@"; }

# pulsecheck's ServiceAccount and RBAC as shipped, and a kubeconfig with its token.
k apply -f manifests/namespace.yaml -f manifests/serviceaccount.yaml -f manifests/rbac.yaml > /dev/null
token="$(k -n pulsecheck create token pulsecheck --duration=12h)"
sed "s|^\(\s*token:\).*|\1 $token|" "$admin" > "$work/pulsecheck.kubeconfig"

started=$(now)
start_fleet "$bin_dir/pulsecheck-lab" "$admin" "$nodes" --kubelet-endpoints=false \
  --lease-duration "$lease_duration" --status-report-frequency "$status_report"
fleet_up=$(now)

port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$bin_dir/pulsecheck-bare-watcher" --kubeconfig "$admin" > "$work/bare.out" 2> "$work/bare.err" &
bare_pid=$!
pids=("$bare_pid" "${pids[@]}")
POD_NAMESPACE=pulsecheck "$bin_dir/pulsecheck" run --kubeconfig "$work/pulsecheck.kubeconfig" --probe none --dry-run \
  --identity scale-run --per-node-metrics "$per_node" --admin-addr "127.0.0.1:$port" --log-format json \
  > "$work/pulsecheck.log" 2>&1 &
pc_pid=$!
pids=("$pc_pid" "${pids[@]}")
pc_started=$(now)

# Start-up: pulsecheck's two watches synced (its log), then /readyz 200; the bare watcher's sync.
pc_synced="" pc_ready="" bare_synced=""
deadline=$(( $(date +%s) + 600 ))
while [[ -z "$pc_ready" || -z "$bare_synced" ]]; do
  (( $(date +%s) < deadline )) || { echo "no readiness within 600 s:" >&2; tail -20 "$work/pulsecheck.log" >&2; exit 1; }
  kill -0 "$pc_pid" 2>/dev/null || { echo "pulsecheck exited:" >&2; tail -20 "$work/pulsecheck.log" >&2; exit 1; }
  t=$(now)
  if [[ -z "$pc_synced" ]] && [[ "$(grep '"watch synced"' "$work/pulsecheck.log" | grep -c -e '"resource":"nodes"' -e '"resource":"leases"')" -ge 2 ]]; then pc_synced=$t; fi
  if [[ -n "$pc_synced" && -z "$pc_ready" ]] && curl -sf -o /dev/null "http://127.0.0.1:$port/readyz"; then pc_ready=$t; fi
  if [[ -z "$bare_synced" ]] && grep -q '^synced ' "$work/bare.out"; then bare_synced=$t; fi
  sleep 0.1
done
pc_hwm_start=$(status_kib "$pc_pid" VmHWM)

metric_sum() { curl -sf "http://127.0.0.1:$port/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
sleep "$warmup"
pc0=$(ticks "$pc_pid") bare0=$(ticks "$bare_pid")
sum0=$(metric_sum pulsecheck_evaluation_duration_seconds_sum) count0=$(metric_sum pulsecheck_evaluation_duration_seconds_count)
t0=$(now)
sleep "$window"
t1=$(now)
pc1=$(ticks "$pc_pid") bare1=$(ticks "$bare_pid")
sum1=$(metric_sum pulsecheck_evaluation_duration_seconds_sum) count1=$(metric_sum pulsecheck_evaluation_duration_seconds_count)
pc_rss=$(( $(status_kib "$pc_pid" VmRSS) / 1024 )) pc_hwm=$(( $(status_kib "$pc_pid" VmHWM) / 1024 ))
bare_rss=$(( $(status_kib "$bare_pid" VmRSS) / 1024 )) bare_hwm=$(( $(status_kib "$bare_pid" VmHWM) / 1024 ))
read -r metrics_bytes metrics_seconds < <(curl -sf -o /dev/null -w '%{size_download} %{time_total}\n' "http://127.0.0.1:$port/metrics")

cpu() { echo "scale=2; 100 * ($2 - $1) / $hz / ($t1 - $t0)" | bc; }
pc_cpu=$(cpu "$pc0" "$pc1") bare_cpu=$(cpu "$bare0" "$bare1")
ratio=$(echo "scale=2; $(cpu "$pc0" "$pc1") / $(cpu "$bare0" "$bare1")" | bc 2>/dev/null || echo inf)
tick_ms=$(echo "scale=2; 1000 * ($sum1 - $sum0) / ($count1 - $count0)" | bc)
ready_s=$(echo "scale=1; ($pc_ready - $pc_synced) / 1" | bc)

printf 'nodes=%s lease-duration=%s status-report=%s window=%.0fs (after %ss warm-up) per-node-metrics=%s cores=%s fleet up in %.1fs\n' \
  "$nodes" "$lease_duration" "$status_report" "$(echo "$t1 - $t0" | bc)" "$warmup" "$per_node" "$(nproc)" "$(echo "$fleet_up - $started" | bc)"
printf '| process | CPU (%% of one core) | RSS (MiB) | peak RSS (MiB) | watches synced after start (s) |\n|---|---|---|---|---|\n'
printf '| pulsecheck | %s | %s | %s | %.1f |\n' "$pc_cpu" "$pc_rss" "$pc_hwm" "$(echo "$pc_synced - $pc_started" | bc)"
printf '| bare watcher | %s | %s | %s | %.1f |\n' "$bare_cpu" "$bare_rss" "$bare_hwm" "$(echo "$bare_synced - $pc_started" | bc)"
printf 'pulsecheck peak RSS by the time it was ready: %s MiB; evaluations in the window: %s\n' "$(( pc_hwm_start / 1024 ))" "$(echo "$count1 - $count0" | bc)"
printf '/metrics: %s bytes, scraped in %.3f s\n' "$metrics_bytes" "$metrics_seconds"
# pulsecheck's requests in the window, from the apiserver's audit log (one event per request at
# ResponseComplete; a watch also at ResponseStarted, counted once).
python3 - "$work/lab/audit.log" "$t0" "$t1" <<'EOF'
import collections, datetime, json, sys
path, t0, t1 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
seen, counts = set(), collections.Counter()
for line in open(path):
    event = json.loads(line)
    if event["auditID"] in seen:
        continue
    at = datetime.datetime.fromisoformat(event["requestReceivedTimestamp"].replace("Z", "+00:00")).timestamp()
    if not t0 <= at <= t1:
        continue
    seen.add(event["auditID"])
    ref = event.get("objectRef", {})
    resource = ref.get("resource", event.get("requestURI", "?")) + ("/" + ref["subresource"] if ref.get("subresource") else "")
    counts[(event["verb"], resource, ref.get("namespace", ""))] += 1
    code = event.get("responseStatus", {}).get("code", 0)
    if code >= 400:
        counts[(f"refused {code}", resource, ref.get("namespace", ""))] += 1
print("pulsecheck's requests in the window (audit log): " + (", ".join(f"{v} {r}{' in ' + n if n else ''}: {c}" for (v, r, n), c in sorted(counts.items())) or "none"))
EOF
echo "controller_scale nodes=$nodes cpu_ratio=$ratio rss_mib=$pc_rss tick_ms=$tick_ms ready_s=$ready_s"
