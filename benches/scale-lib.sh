# shellcheck shell=bash
# Shared by benches/fleet_scale.sh and benches/controller_scale.sh (sourced, not run): a work
# folder removed on exit with every process started into `pids` stopped first, and CPU ticks of
# a process from /proc (utime + stime, in clock ticks).
work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
export hz
hz=$(getconf CLK_TCK)
# start_fleet BIN KUBECONFIG NODES [ARGS…]: `pulsecheck-lab fleet` in the background until it
# says every node is up; sets fleet_pid (first in pids, so it stops before the control plane).
start_fleet() {
  local bin=$1 kubeconfig=$2 nodes=$3
  shift 3
  "$bin" fleet --kubeconfig "$kubeconfig" --nodes "$nodes" "$@" > "$work/fleet.out" 2> "$work/fleet.err" &
  fleet_pid=$!
  pids=("$fleet_pid" "${pids[@]}")
  until grep -q "^fleet up: " "$work/fleet.out"; do
    kill -0 "$fleet_pid" 2>/dev/null || { echo "lab fleet exited:" >&2; cat "$work/fleet.err" >&2; exit 1; }
    sleep 0.2
  done
}
