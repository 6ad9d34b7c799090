# Shared by up.sh, down.sh, run.sh and the scenarios: where the cluster lives and how to reach it.
# Sourced, not run.
#
# The whole cluster lives in one network namespace with no uplink: only `lo` (holding the node
# address) and the CNI bridge with the pods' veths. Every cluster process and every
# kubectl/helm call enters that namespace with `nsenter --net=` (and nothing else, so kubelet,
# containerd and runc share the host's mounts); nothing it does can reach another machine.

CLUSTER_NETNS=${EXTERNALSOURCE_CLUSTER_NETNS:-externalsource-cluster}
CLUSTER_STATE=${EXTERNALSOURCE_CLUSTER_STATE:-/var/lib/externalsource-cluster}
# The cgroup (in every v1 hierarchy) holding the daemons, the shims and the pods (kubelet's
# cgroupRoot): teardown kills what is left in it and removes it.
CLUSTER_CGROUP=externalsource-cluster
NODE_NAME=esc-node
NODE_IP=10.200.0.1
POD_CIDR=10.244.0.0/24
SERVICE_CIDR=10.96.0.0/24
KUBERNETES_SERVICE_IP=10.96.0.1
DNS_SERVICE_IP=10.96.0.10
API_URL="https://${NODE_IP}:6443"
KUBECONFIG_ADMIN="$CLUSTER_STATE/admin.kubeconfig"
NETNS_PATH="/run/netns/$CLUSTER_NETNS"
# Host-wide kernel settings the kubelet changes (no namespace holds them): saved before it starts,
# restored at teardown.
HOST_SYSCTLS="vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes"

CLUSTER_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$CLUSTER_DIR/../.." && pwd)

clog() { printf 'cluster: %s\n' "$*" >&2; }
cdie() { printf 'cluster: error: %s\n' "$*" >&2; exit 1; }

# Runs a command inside the cluster's network namespace (network only).
in_ns() { nsenter --net="$NETNS_PATH" -- "$@"; }

kc() { in_ns kubectl --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }

# The testenv cache (binaries and CRDs): tests/testenv.sh prints it on its last line.
testenv_dir() {
  if [ -n "${EXTERNALSOURCE_TESTENV:-}" ] && [ -x "$EXTERNALSOURCE_TESTENV/bin/kubelet" ]; then
    echo "$EXTERNALSOURCE_TESTENV"
  else
    bash "$REPO_DIR/tests/testenv.sh" cluster | tail -1
  fi
}

# wait_until SECONDS DESCRIPTION COMMAND...: polls every 0.5 s.
wait_until() {
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { clog "timed out waiting for $what"; return 1; }
    sleep 0.5
  done
}

# Milliseconds since the epoch, for timings.
now_ms() { date +%s%3N; }
