#!/usr/bin/env bash
# HA over a shared store: deploy/s3-proxy (2 controller replicas, 2 serve-only replicas, a
# PodDisruptionBudget) over an in-cluster SeaweedFS. A consumer pod downloads the current
# artifact through the artifact Service in a loop, checking its digest and retrying a failed
# download as Flux does (up to 4 more tries, 1 s apart). Through `kubectl rollout restart` and
# then the deletion of the leader pod with grace period 0, then SIGKILL of the new leader's
# process on the node (a crash: the Lease is not released): no download fails after its retries
# (the ones that needed a retry are counted apart: bodies cut by the killed pod), and a new
# upstream revision published after each kill is published within the lease duration (15 s)
# plus 30 s, after the deletion by another pod than the deleted one.
source "$(dirname "$0")/lib.sh"
NS=flux-system LEASE=externalsource-controller-leader
LEASE_DURATION=15 BOUND=30

ensure_flux
ensure_upstream
step "SeaweedFS and the s3-proxy overlay"
cleanup kc delete -f "$CLUSTER_DIR/manifests/seaweedfs.yaml" --ignore-not-found --wait=false
kc apply -f "$CLUSTER_DIR/manifests/seaweedfs.yaml" >/dev/null
kc -n fixtures wait --for=condition=Available deploy/seaweedfs --timeout=120s >/dev/null || fail "SeaweedFS not Available"
cleanup kc -n $NS delete secret externalsource-s3-credentials --ignore-not-found
kc -n $NS create secret generic externalsource-s3-credentials --from-literal=access-key-id=CLUSTERKEY \
  --from-literal=secret-access-key=CLUSTERSECRET123 --dry-run=client -o yaml | kc apply -f - >/dev/null
kc -n fixtures exec deploy/upstream -- sh -c 'echo revision-1 >/data/current'
cleanup kc delete -k "$CLUSTER_DIR/overlays/ha" --ignore-not-found --wait=true --timeout=120s
kc apply -k "$CLUSTER_DIR/overlays/ha" >/dev/null
for d in externalsource-controller externalsource-artifact-server; do
  kc -n $NS rollout status deploy/$d --timeout=180s >/dev/null ||
    fail "$d not rolled out: $(kc -n $NS get pods --no-headers 2>&1 | tr '\n' ';')"
done
kc -n $NS get pdb -o name | grep -q . || fail "no PodDisruptionBudget installed"

cleanup kc -n $NS delete externalsource ha-src --ignore-not-found --wait=true --timeout=60s
kc apply -f - >/dev/null <<YAML
apiVersion: source.flux.oddkin.co/v1alpha1
kind: ExternalSource
metadata: {name: ha-src, namespace: $NS}
spec:
  interval: 1m
  destinationPath: current.txt
  generator:
    type: http
    http: {url: "http://upstream.fixtures.svc.cluster.local:8080/cgi-bin/current"}
YAML
url=$(artifact_url $NS ha-src 120) ||
  fail "no ExternalArtifact: $(kc -n $NS get externalsource ha-src -o jsonpath='{.status.conditions}')"
digest=$(kc -n $NS get externalartifacts.source.toolkit.fluxcd.io ha-src -o jsonpath='{.status.artifact.digest}')
revision1=$(kc -n $NS get externalartifacts.source.toolkit.fluxcd.io ha-src -o jsonpath='{.status.artifact.revision}')

step "a consumer downloading $url in a loop"
kc -n fixtures delete pod consumer --ignore-not-found --wait >/dev/null
cleanup kc -n fixtures delete pod consumer --ignore-not-found --wait=false
kc -n fixtures run consumer --image localhost/busybox:cluster --image-pull-policy Never --restart Never --command -- sh -c "
  ok=0 retried=0 failed=0
  echo '$url $digest' >/tmp/target
  get() { timeout 10 wget -q -O /tmp/a \"\$1\" && [ \"sha256:\$(sha256sum /tmp/a | cut -c1-64)\" = \"\$2\" ]; }
  while [ ! -f /tmp/stop ]; do
    read -r u d </tmp/target
    set -- \$u \$d
    if get \"\$1\" \"\$2\"; then ok=\$((ok + 1)); else
      n=0 done=no
      while [ \$n -lt 4 ]; do n=\$((n + 1)); sleep 1; if get \"\$1\" \"\$2\"; then done=yes; break; fi; done
      if [ \$done = yes ]; then retried=\$((retried + 1)); else failed=\$((failed + 1)); echo \"failed at \$(date +%T)\"; fi
    fi
    echo \"\$ok \$retried \$failed\" >/tmp/count.new && mv /tmp/count.new /tmp/count
    sleep 0.2
  done
  sleep 3600" >/dev/null
kc -n fixtures wait --for=condition=Ready pod/consumer --timeout=60s >/dev/null || fail "consumer not running"
counts() { kc -n fixtures exec consumer -- cat /tmp/count 2>/dev/null || echo "0 0 0"; }
sleep 3
read -r ok0 _ _ < <(counts)
[ "$ok0" -gt 0 ] || fail "the consumer downloaded nothing before the restart"

step "kubectl rollout restart"
kc -n $NS rollout restart deploy/externalsource-controller >/dev/null
kc -n $NS rollout status deploy/externalsource-controller --timeout=240s >/dev/null || fail "rollout restart did not finish"
read -r ok1 retried1 failed1 < <(counts)

step "delete the leader with grace period 0"
holder() { kc -n $NS get lease $LEASE -o jsonpath='{.spec.holderIdentity}'; }
# The old leader released the Lease when it stopped; one of the new pods takes it.
held_by_new_pod() {
  local h
  h=$(holder)
  [ -n "$h" ] && [ -z "$(kc -n $NS get pod "$h" -o jsonpath='{.metadata.deletionTimestamp}')" ]
}
wait_until $((LEASE_DURATION + 15)) "a new pod holding the Lease" held_by_new_pod ||
  fail "after the rollout restart no running pod holds the Lease (holder '$(holder)')"
leader=$(holder)
kc -n $NS delete pod "$leader" --grace-period=0 --force >/dev/null 2>&1
killed=$(now_ms)
kc -n fixtures exec deploy/upstream -- sh -c 'echo revision-2 >/data/current'
# Like Flux, the consumer follows the ExternalArtifact: the scenario hands it each new URL
# (older revisions beyond `retention` are deleted).
follow() {
  local u d
  u=$(kc -n $NS get externalartifacts.source.toolkit.fluxcd.io ha-src -o jsonpath='{.status.artifact.url}')
  d=$(kc -n $NS get externalartifacts.source.toolkit.fluxcd.io ha-src -o jsonpath='{.status.artifact.digest}')
  kc -n fixtures exec consumer -- sh -c "echo '$u $d' >/tmp/target.new && mv /tmp/target.new /tmp/target"
}
new_revision() {
  local r
  r=$(kc -n $NS get externalartifacts.source.toolkit.fluxcd.io ha-src -o jsonpath='{.status.artifact.revision}')
  [ -n "$r" ] && [ "$r" != "$revision1" ]
}
wait_until $((LEASE_DURATION + BOUND)) "a new revision from the new leader" new_revision ||
  fail "no new revision within ${LEASE_DURATION}s + ${BOUND}s of killing the leader $leader (holder now $(holder))"
published_ms=$(( $(now_ms) - killed ))
follow
newleader=$(holder)
[ -n "$newleader" ] && [ "$newleader" != "$leader" ] || fail "lease still held by the killed pod $leader"

# kubectl's deletion with grace period 0 still lets the kubelet send SIGTERM first, and the
# leader releases the Lease on SIGTERM: the standby takes it at once. A crash cannot release it:
# SIGKILL the new leader's process on the node, so the Lease must expire (lease_duration).
step "SIGKILL the new leader's process on the node"
crash_pid=$(container_pid $NS "$newleader" manager)
[ -n "$crash_pid" ] || fail "no process for the manager of $newleader"
revision1=$(kc -n $NS get externalartifacts.source.toolkit.fluxcd.io ha-src -o jsonpath='{.status.artifact.revision}')
kill -KILL "$crash_pid"
crashed=$(now_ms)
kc -n fixtures exec deploy/upstream -- sh -c 'echo revision-3 >/data/current'
wait_until $((LEASE_DURATION + BOUND)) "a new revision after the crash" new_revision ||
  fail "no new revision within ${LEASE_DURATION}s + ${BOUND}s of SIGKILL of $newleader (holder now $(holder))"
crash_published_ms=$(( $(now_ms) - crashed ))
crash_holder=$(holder)
follow
sleep 3
crash_restarts=$(kc -n $NS get pod "$newleader" -o jsonpath='{.status.containerStatuses[?(@.name=="manager")].restartCount}' 2>/dev/null || true)
[ "${crash_restarts:-0}" -ge 1 ] || fail "the SIGKILLed manager of $newleader did not restart (restarts ${crash_restarts:-?})"
sleep 5
kc -n fixtures exec consumer -- touch /tmp/stop
sleep 2
read -r ok retried failed < <(counts)
kc -n fixtures logs consumer 2>/dev/null | head -5 >&2 || true
[ "$failed" = 0 ] || fail "$failed downloads failed after retries ($ok ok, $retried retried)"
[ "$ok" -gt "$ok1" ] || fail "the consumer made no progress after the kill"
assert_no_forbidden $NS

echo "$ok downloads ok, $retried retried (cut by a stopped or killed pod), 0 failed through rollout restart and leader kill; new leader $newleader published the new revision ${published_ms}ms after the deletion; after SIGKILL of its process the next revision came ${crash_published_ms}ms later from $crash_holder (its manager restarted ${crash_restarts} time(s) and, as the same pod, holds the Lease again) (bound ${LEASE_DURATION}s + ${BOUND}s)"
