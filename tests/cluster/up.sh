#!/usr/bin/env bash
# Starts a real single-node Kubernetes cluster on this machine, isolated in a network namespace
# with no uplink, and prints how to reach it:
#   etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy (iptables),
#   containerd + runc + the CNI bridge, CoreDNS; every image built locally and imported into
#   containerd (tests/cluster/images.sh), so nothing is ever pulled.
# Binaries come from tests/testenv.sh (cached). A cluster left by a killed run is removed first.
# Needs root, containerd, runc, the CNI plugins, conntrack, iptables, buildah, busybox-static
# (Debian packages; tests/cluster/run.sh installs them). Stop it with tests/cluster/down.sh.
set -euo pipefail
# shellcheck source=tests/cluster/lib.sh
source "$(dirname "$0")/lib.sh"
[ "$(id -u)" = 0 ] || cdie "needs root (it runs kubelet and containerd)"
t0=$(now_ms)
mark() { clog "$1 at $(( $(now_ms) - t0 ))ms"; echo "$1 $(( $(now_ms) - t0 ))" >>"$CLUSTER_STATE/timings"; }

bash "$CLUSTER_DIR/down.sh"
rm -rf "$CLUSTER_STATE.logs"
TESTENV=$(testenv_dir)
BIN="$TESTENV/bin"
for b in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy coredns; do
  [ -x "$BIN/$b" ] || cdie "$BIN/$b missing (tests/testenv.sh cluster builds it)"
done
for c in containerd runc ctr conntrack iptables-restore nsenter openssl; do
  command -v "$c" >/dev/null || cdie "$c not installed"
done
[ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] && [ -x /usr/lib/cni/loopback ] ||
  cdie "CNI plugins missing in /usr/lib/cni (apt-get install containernetworking-plugins)"

S=$CLUSTER_STATE
mkdir -p "$S"/{pids,logs,certs,etcd,containerd,cni,cni-ipam,kubelet,pod-logs}

# --- the network namespace, and the proof that nothing in it can leave the machine ----------
[ -d /run/netns ] && mountpoint -q /run/netns || touch "$S/netns-dir-mounted"
ip netns add "$CLUSTER_NETNS"
in_ns ip link set lo up
in_ns ip addr add "$NODE_IP/32" dev lo
in_ns sysctl -q -w net.ipv4.ip_forward=1 net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 >/dev/null
[ -d /proc/sys/net/bridge ] || modprobe br_netfilter 2>/dev/null || true
in_ns sysctl -q -w net.bridge.bridge-nf-call-iptables=1 >/dev/null 2>&1 ||
  cdie "net.bridge.bridge-nf-call-iptables is not available (modprobe br_netfilter)"
check_isolation() {
  local resolver addr out
  resolver=$(awk '$1 == "nameserver" {print $2; exit}' /etc/resolv.conf 2>/dev/null || true)
  for addr in 1.1.1.1 8.8.8.8 ${resolver:+"$resolver"}; do
    if out=$(in_ns ip route get "$addr" 2>&1); then
      cdie "the cluster's namespace has a route to $addr ($out): refusing to start"
    fi
    case "$out" in *"Network is unreachable"*) ;; *) cdie "ip route get $addr in the namespace: $out" ;; esac
  done
  [ -z "$(in_ns ip -6 route show 2>/dev/null)" ] || cdie "the cluster's namespace has IPv6 routes"
  local links
  links=$(in_ns ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | grep -vE '^(lo|cni0|veth[0-9a-f]+)$' || true)
  [ -z "$links" ] || cdie "the cluster's namespace has links other than lo, cni0 and veths: $links"
}
check_isolation
echo "$NETNS_PATH" >"$S/netns"
mark "namespace isolated (no route out)"

# --- host-wide kernel settings the kubelet changes: saved for teardown ------------------------
for key in $HOST_SYSCTLS; do
  v=$(sysctl -n "$key" 2>/dev/null) && echo "$key $v" >>"$S/host-sysctls"
done

# --- cgroups: the daemons (and the shims they spawn) and the pods (kubelet's cgroupRoot) ----------
for h in /sys/fs/cgroup/*/; do
  [ -f "${h}cgroup.procs" ] || continue
  mkdir -p "$h$CLUSTER_CGROUP/daemons"
  if [ -f "${h}cpuset.cpus" ]; then
    for g in "$h$CLUSTER_CGROUP" "$h$CLUSTER_CGROUP/daemons"; do
      cat "${h}cpuset.cpus" >"$g/cpuset.cpus"; cat "${h}cpuset.mems" >"$g/cpuset.mems"
    done
  fi
done

# start NAME COMMAND...: runs a daemon in the cluster's namespace and cgroup, logging to logs/NAME.log.
start() {
  local name=$1; shift
  (
    for h in /sys/fs/cgroup/*/; do
      [ -d "$h$CLUSTER_CGROUP/daemons" ] && echo "$BASHPID" >"$h$CLUSTER_CGROUP/daemons/cgroup.procs"
    done
    exec setsid nsenter --net="$NETNS_PATH" -- "$@"
  ) >"$S/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$S/pids/$name"
}

# --- certificates and credentials ------------------------------------------------------------
C=$S/certs
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=externalsource-cluster-ca \
  -keyout "$C/ca.key" -out "$C/ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver -keyout "$C/apiserver.key" \
  -out "$C/apiserver.csr" 2>/dev/null
printf 'subjectAltName=IP:%s,IP:%s,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n' \
  "$NODE_IP" "$KUBERNETES_SERVICE_IP" >"$C/apiserver.ext"
openssl x509 -req -in "$C/apiserver.csr" -CA "$C/ca.crt" -CAkey "$C/ca.key" -CAcreateserial -days 2 \
  -extfile "$C/apiserver.ext" -out "$C/apiserver.crt" 2>/dev/null
openssl genrsa -out "$C/sa.key" 2048 2>/dev/null
openssl rsa -in "$C/sa.key" -pubout -out "$C/sa.pub" 2>/dev/null
tok() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
admin_token=$(tok) node_token=$(tok)
# The scenarios' users: one bound to `edit`, one to `view` (tests/cluster/scenarios/rbac.sh).
{
  echo "$admin_token,admin,admin,system:masters"
  echo "$node_token,system:node:$NODE_NAME,$NODE_NAME,system:nodes"
  echo "$(tok),edit-user,edit-user"
  echo "$(tok),view-user,view-user"
} >"$C/tokens.csv"
chmod 0600 "$C"/*
kubeconfig() { # FILE TOKEN
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: esc
  cluster: {server: "$API_URL", certificate-authority: "$C/ca.crt"}
users:
- name: u
  user: {token: "$2"}
contexts:
- name: esc
  context: {cluster: esc, user: u}
current-context: esc
EOF
}
kubeconfig "$KUBECONFIG_ADMIN" "$admin_token"
kubeconfig "$S/node.kubeconfig" "$node_token"
for u in edit-user view-user; do
  kubeconfig "$S/$u.kubeconfig" "$(awk -F, -v u=$u '$2 == u {print $1}' "$C/tokens.csv")"
done

# --- containerd ------------------------------------------------------------------------------
cat >"$S/cni/10-esc.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "esc",
  "plugins": [{
    "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
    "ipam": {"type": "host-local", "dataDir": "$S/cni-ipam", "ranges": [[{"subnet": "$POD_CIDR"}]],
             "routes": [{"dst": "0.0.0.0/0"}]}
  }]
}
EOF
cat >"$S/containerd.toml" <<EOF
version = 2
root = "$S/containerd/root"
state = "$S/containerd/state"
[grpc]
  address = "$S/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$S/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/pause:3.10"
  # The machine may lack CAP_SYS_RESOURCE: without this, the kubelet's negative oom_score_adj
  # for the sandboxes makes runc fail.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$S/cni"
EOF
start containerd containerd --config "$S/containerd.toml"
wait_until 30 containerd ctr -a "$S/containerd.sock" version
mark "containerd up"

# --- images (built once and cached, ours rebuilt from the given binary) -----------------------
bash "$CLUSTER_DIR/images.sh" "$TESTENV"
mark "images imported"

# --- control plane ---------------------------------------------------------------------------
start etcd "$BIN/etcd" --data-dir "$S/etcd" --listen-client-urls http://127.0.0.1:2379 \
  --advertise-client-urls http://127.0.0.1:2379 --listen-peer-urls http://127.0.0.1:2380 \
  --initial-advertise-peer-urls http://127.0.0.1:2380 --initial-cluster "default=http://127.0.0.1:2380" \
  --unsafe-no-fsync --log-level warn
start kube-apiserver "$BIN/kube-apiserver" --etcd-servers http://127.0.0.1:2379 \
  --bind-address "$NODE_IP" --advertise-address "$NODE_IP" --secure-port 6443 \
  --tls-cert-file "$C/apiserver.crt" --tls-private-key-file "$C/apiserver.key" --client-ca-file "$C/ca.crt" \
  --token-auth-file "$C/tokens.csv" --authorization-mode Node,RBAC \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$C/sa.pub" --service-account-signing-key-file "$C/sa.key" \
  --service-cluster-ip-range "$SERVICE_CIDR" --allow-privileged=true \
  --kubelet-preferred-address-types InternalIP --enable-priority-and-fairness=false \
  --cert-dir "$C/apiserver-generated" --profiling=false --v 0
wait_until 60 "the API server" kc get --raw /readyz
mark "API server ready"

start kube-controller-manager "$BIN/kube-controller-manager" --kubeconfig "$KUBECONFIG_ADMIN" \
  --service-account-private-key-file "$C/sa.key" --root-ca-file "$C/ca.crt" \
  --leader-elect=false --bind-address 127.0.0.1 \
  --cert-dir "$C/kcm" --v 0
start kube-scheduler "$BIN/kube-scheduler" --kubeconfig "$KUBECONFIG_ADMIN" --leader-elect=false \
  --bind-address 127.0.0.1 --cert-dir "$C/scheduler" --v 0

# --- node ------------------------------------------------------------------------------------
echo "nameserver $DNS_SERVICE_IP" >"$S/resolv.conf"
cat >"$S/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://$S/containerd.sock
address: $NODE_IP
healthzBindAddress: 127.0.0.1
readOnlyPort: 0
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
clusterDomain: cluster.local
clusterDNS: [$DNS_SERVICE_IP]
resolvConf: $S/resolv.conf
cgroupDriver: cgroupfs
cgroupRoot: /$CLUSTER_CGROUP
failCgroupV1: false
failSwapOn: false
podLogsDir: $S/pod-logs
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "1Mi", nodefs.available: "1%", imagefs.available: "1%"}
serializeImagePulls: false
registerNode: true
maxPods: 60
EOF
start kubelet "$BIN/kubelet" --config "$S/kubelet.yaml" --kubeconfig "$S/node.kubeconfig" \
  --root-dir "$S/kubelet" --cert-dir "$S/kubelet/pki" --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" --v 0
cat >"$S/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $KUBECONFIG_ADMIN}
hostnameOverride: $NODE_NAME
mode: iptables
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: ["$NODE_IP/32"]
clusterCIDR: $POD_CIDR
# Leaves the host's conntrack sysctls alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
start kube-proxy "$BIN/kube-proxy" --config "$S/kube-proxy.yaml"
node_ready() { [ "$(kc get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]; }
wait_until 90 "node Ready" node_ready
mark "node Ready"

# --- cluster DNS -----------------------------------------------------------------------------
kc apply -f "$CLUSTER_DIR/manifests/coredns.yaml" >/dev/null
wait_until 120 "CoreDNS Available" kc -n kube-system wait --for=condition=Available deploy/coredns --timeout=2s
mark "CoreDNS Available"
check_isolation

cat <<EOF
cluster: up in $(( $(now_ms) - t0 ))ms
  kubeconfig: $KUBECONFIG_ADMIN
  run kubectl/helm inside its network namespace:
    nsenter --net=$NETNS_PATH -- kubectl --kubeconfig $KUBECONFIG_ADMIN get pods -A
  logs: $S/logs    stop: bash tests/cluster/down.sh
EOF
