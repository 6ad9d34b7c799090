#!/usr/bin/env bash
# Removes the single-node cluster of tests/cluster/up.sh, whether it stopped cleanly or its
# harness was killed: stops the Kubernetes processes in reverse order (SIGKILL after a
# deadline), kills every process left in the cluster's cgroup (pods, shims), unmounts what
# kubelet and containerd mounted under the state directory, deletes the pods' network
# namespaces and the cluster's own (its iptables rules go with it), removes the cgroups,
# restores the host-wide kernel settings the kubelet changed, and deletes the state directory.
# Safe to run when nothing is there. Only processes this harness started are signalled: those
# whose pid file it wrote (and whose command line still names the state directory) and those in
# its own cgroup.
set -uo pipefail
# shellcheck source=tests/cluster/lib.sh
source "$(dirname "$0")/lib.sh"
started=$(now_ms)

# Is PID still the daemon this harness started (and not a recycled pid)?
ours() { [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -qF -- "$CLUSTER_STATE"; }

stop_daemon() { # NAME DEADLINE_SECONDS
  local file="$CLUSTER_STATE/pids/$1" pid
  [ -f "$file" ] || return 0
  pid=$(cat "$file")
  if ours "$pid"; then
    kill -TERM "$pid" 2>/dev/null
    local deadline=$((SECONDS + $2))
    while ours "$pid" && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    ours "$pid" && kill -KILL "$pid" 2>/dev/null
    while ours "$pid"; do sleep 0.1; done
  fi
  rm -f "$file"
}

hierarchies() {
  local h
  for h in /sys/fs/cgroup/*/; do
    [ -d "$h$CLUSTER_CGROUP" ] && echo "$h$CLUSTER_CGROUP"
  done
}

# SIGKILL every process in the cluster's cgroup subtree DIR (in the pids hierarchy) until none is left.
kill_cgroup() { # SUBPATH
  local root="/sys/fs/cgroup/pids/$CLUSTER_CGROUP${1:+/$1}" deadline=$((SECONDS + 20)) pids
  [ -d "$root" ] || return 0
  while :; do
    pids=$(find "$root" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u)
    [ -n "$pids" ] || return 0
    [ $SECONDS -lt $deadline ] || { clog "processes left in $root: $(echo $pids)"; return 1; }
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null
    sleep 0.2
  done
}

if [ -d "$CLUSTER_STATE" ] || [ -e "$NETNS_PATH" ] || [ -n "$(hierarchies)" ]; then
  clog "tearing down"
  for d in kube-proxy kubelet kube-scheduler kube-controller-manager; do stop_daemon "$d" 10; done

  # The pods' network namespaces: the peers of the veths on the cluster's bridge.
  if [ -e "$NETNS_PATH" ]; then
    mkdir -p "$CLUSTER_STATE"
    in_ns ip -o -d link show type veth 2>/dev/null |
      grep -oE 'link-netns [^ ]+' | awk '{print $2}' >>"$CLUSTER_STATE/pod-netns"
  fi
  kill_cgroup kubepods
  stop_daemon containerd 10
  stop_daemon kube-apiserver 10
  stop_daemon etcd 10
  kill_cgroup ""

  # Mounts under the state directory (pod volumes, container root filesystems, sandbox /dev/shm),
  # deepest first.
  findmnt -rn -o TARGET | grep -F "$CLUSTER_STATE" | awk '{print length, $0}' | sort -rn | cut -d' ' -f2- |
    while read -r m; do umount "$m" 2>/dev/null || umount -l "$m"; done
  # The pods' network namespaces (containerd keeps them under /run/netns as cni-<uuid>).
  if [ -f "$CLUSTER_STATE/pod-netns" ]; then
    sort -u "$CLUSTER_STATE/pod-netns" | grep -E '^cni-[0-9a-f-]+$' | while read -r ns; do
      [ -e "/run/netns/$ns" ] && { umount "/run/netns/$ns" 2>/dev/null; rm -f "/run/netns/$ns"; }
    done
  fi
  if [ -e "$NETNS_PATH" ]; then
    ip netns delete "$CLUSTER_NETNS" 2>/dev/null || { umount "$NETNS_PATH" 2>/dev/null; rm -f "$NETNS_PATH"; }
  fi
  # /run/netns was made a mount point by `ip netns add` if it was not one: undo when we did it
  # and nothing else lives there now.
  if [ -f "$CLUSTER_STATE/netns-dir-mounted" ] && [ -d /run/netns ] && [ -z "$(ls -A /run/netns)" ]; then
    umount /run/netns 2>/dev/null && rmdir /run/netns 2>/dev/null
  fi

  # The cgroups (kubelet's kubepods tree and the daemons'), deepest first, in every hierarchy.
  for h in $(hierarchies); do
    find "$h" -depth -type d -exec rmdir {} + 2>/dev/null
    [ -d "$h" ] && clog "cgroup left: $h"
  done

  # The kubelet's links to the pods' logs.
  for l in /var/log/containers/*; do
    [ -L "$l" ] && readlink "$l" | grep -qF "$CLUSTER_STATE" && rm -f "$l"
  done

  # Host-wide kernel settings, as they were before the kubelet started.
  if [ -f "$CLUSTER_STATE/host-sysctls" ]; then
    while read -r key value; do
      [ -n "$key" ] && sysctl -q -w "$key=$value" >/dev/null
    done <"$CLUSTER_STATE/host-sysctls"
  fi

  # Logs survive the teardown for a look after a failure (the next up.sh removes them).
  if [ -d "$CLUSTER_STATE/logs" ]; then
    rm -rf "$CLUSTER_STATE.logs" && mv "$CLUSTER_STATE/logs" "$CLUSTER_STATE.logs"
  fi
  rm -rf "$CLUSTER_STATE"
  [ -d "$CLUSTER_STATE" ] && clog "state directory left: $CLUSTER_STATE"
  clog "down in $(( ($(now_ms) - started) ))ms"
fi
exit 0
