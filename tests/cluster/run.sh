#!/usr/bin/env bash
# Starts the single-node cluster (up.sh), runs the scenarios (all by default, in this order),
# prints one `PASS name: detail` or `FAIL name: detail` line per scenario, tears the cluster down
# (also when killed: a later up.sh cleans up too) and exits 0 only when every scenario passed.
#
#   bash tests/cluster/run.sh                  # every scenario
#   bash tests/cluster/run.sh kustomize rbac   # some of them
#
# Installs the Debian packages the cluster needs, builds the binaries (tests/testenv.sh cluster,
# cached) and, unless EXTERNALSOURCE_CONTROLLER_BIN names one, the controller with every backend
# (target/debug). Scenario logs: $EXTERNALSOURCE_CLUSTER_STATE.logs/scenario-NAME.log.
set -euo pipefail
# shellcheck source=tests/cluster/lib.sh
source "$(dirname "$0")/lib.sh"
ALL_SCENARIOS="kustomize rbac helm helm-controller hooks notification ha"
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || read -r -a scenarios <<<"$ALL_SCENARIOS"
for s in "${scenarios[@]}"; do
  [ -f "$CLUSTER_DIR/scenarios/$s.sh" ] || cdie "no scenario $s (have: $ALL_SCENARIOS)"
done

need=()
command -v containerd >/dev/null || need+=(containerd)
command -v runc >/dev/null || need+=(runc)
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
command -v conntrack >/dev/null || need+=(conntrack)
command -v iptables-restore >/dev/null || need+=(iptables)
command -v buildah >/dev/null || need+=(buildah)
[ -x /usr/bin/busybox ] && /usr/bin/busybox --list | grep -qx httpd || need+=(busybox-static)
command -v jq >/dev/null || need+=(jq)
# gcc -static builds the pause binary: it needs the static C library too.
command -v gcc >/dev/null && dpkg -s libc6-dev >/dev/null 2>&1 || need+=(gcc libc6-dev)
command -v openssl >/dev/null || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
  clog "installing ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# The Debian package enables a containerd service of its own; the cluster runs its own containerd.

EXTERNALSOURCE_TESTENV=$(testenv_dir)
export EXTERNALSOURCE_TESTENV
WEED_BIN=${WEED_BIN:-$(bash "$REPO_DIR/tests/s3/seaweedfs.sh")}
export WEED_BIN
if [ -z "${EXTERNALSOURCE_CONTROLLER_BIN:-}" ]; then
  (cd "$REPO_DIR" && cargo build -q -p externalsource-controller --all-features)
  export EXTERNALSOURCE_CONTROLLER_BIN="$REPO_DIR/target/debug/externalsource-controller"
fi

trap 'bash "$CLUSTER_DIR/down.sh"' EXIT
trap 'exit 130' INT TERM
t=$(now_ms)
if ! bash "$CLUSTER_DIR/up.sh" >&2; then
  echo "FAIL cluster: did not start (logs: $CLUSTER_STATE.logs)"
  exit 1
fi
up_ms=$(( $(now_ms) - t ))
echo "cluster: up in ${up_ms}ms" >&2

passed=0 failed=0 timings="up ${up_ms}ms"
for s in "${scenarios[@]}"; do
  log="$CLUSTER_STATE/logs/scenario-$s.log"
  t=$(now_ms)
  if timeout 600 bash "$CLUSTER_DIR/scenarios/$s.sh" >"$log.out" 2>"$log"; then
    result=PASS; passed=$((passed + 1))
  else
    result=FAIL; failed=$((failed + 1))
  fi
  ms=$(( $(now_ms) - t ))
  detail=$(tail -1 "$log.out" 2>/dev/null)
  [ -n "$detail" ] || detail=$(tail -1 "$log")
  echo "$result $s: ${detail:-no detail} (${ms}ms)"
  [ $result = PASS ] || tail -30 "$log" | sed 's/^/    /' >&2
  timings="$timings, $s ${ms}ms"
done

t=$(now_ms)
trap - EXIT
bash "$CLUSTER_DIR/down.sh"
timings="$timings, down $(( $(now_ms) - t ))ms"
echo "cluster timings: $timings"
echo "cluster: $passed passed, $failed failed"
[ "$failed" = 0 ]
