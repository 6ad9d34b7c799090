#!/usr/bin/env bash
# kustomize install: deploy/default with only the image set (overlays/kustomize) becomes
# Available; its pod runs as 65532 with a read-only root filesystem and no capabilities (read from
# the container's process on the node, as runc set it up) and its probes pass; an ExternalSource
# fetching the in-cluster upstream gets an ExternalArtifact whose URL names the artifact Service's
# DNS name, downloadable from another namespace with the advertised digest; Flux's
# kustomize-controller applies it; the controller's log holds no 403.
source "$(dirname "$0")/lib.sh"
NS=flux-system

step "Flux and the upstream"
ensure_flux
ensure_upstream

install_overlay kustomize

step "the pod as runc runs it ($pod)"
pid=$(container_pid $NS "$pod" manager)
[ -n "$pid" ] || fail "no task for the manager container of $pod"
uid=$(awk '/^Uid:/ {print $2 "/" $3}' "/proc/$pid/status")
[ "$uid" = 65532/65532 ] || fail "manager runs as uid $uid, want 65532"
gid=$(awk '/^Gid:/ {print $2}' "/proc/$pid/status")
[ "$gid" = 65532 ] || fail "manager runs as gid $gid, want 65532"
root_opts=$(awk '$5 == "/" {print $6}' "/proc/$pid/mountinfo" | tail -1)
case "$root_opts" in ro,* | ro) ;; *) fail "manager's root filesystem is mounted $root_opts, want ro" ;; esac
capeff=$(awk '/^CapEff:/ {print $2}' "/proc/$pid/status")
[ "$capeff" = 0000000000000000 ] || fail "manager has capabilities $capeff"
nnp=$(awk '/^NoNewPrivs:/ {print $2}' "/proc/$pid/status")
[ "$nnp" = 1 ] || fail "manager may gain privileges (NoNewPrivs $nnp)"

step "probes"
ready=$(kc -n $NS get pod "$pod" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')
started=$(kc -n $NS get pod "$pod" -o jsonpath='{.status.containerStatuses[0].started}')
restarts=$(kc -n $NS get pod "$pod" -o jsonpath='{.status.containerStatuses[0].restartCount}')
[ "$ready/$started/$restarts" = True/true/0 ] || fail "pod Ready=$ready started=$started restarts=$restarts"
unhealthy=$(kc -n $NS get events --field-selector "involvedObject.name=$pod,reason=Unhealthy" --no-headers 2>/dev/null || true)
[ -z "$unhealthy" ] || fail "probe failures: $unhealthy"

step "an ExternalSource fetching the in-cluster upstream"
cleanup kc -n $NS delete externalsource cluster-app --ignore-not-found --wait=true --timeout=60s
cleanup kc -n $NS delete kustomization cluster-app --ignore-not-found --wait=true --timeout=60s
kc apply -f - >/dev/null <<YAML
apiVersion: source.flux.oddkin.co/v1alpha1
kind: ExternalSource
metadata: {name: cluster-app, namespace: $NS}
spec:
  interval: 1m
  destinationPath: manifests/app.yaml
  generator:
    type: http
    http: {url: "http://upstream.fixtures.svc.cluster.local:8080/files/app.yaml"}
---
apiVersion: kustomize.toolkit.fluxcd.io/v1
kind: Kustomization
metadata: {name: cluster-app, namespace: $NS}
spec:
  interval: 1m
  retryInterval: 5s
  sourceRef: {kind: ExternalArtifact, name: cluster-app}
  path: ./manifests
  prune: true
  targetNamespace: default
YAML
url=$(artifact_url $NS cluster-app 90) ||
  fail "no ExternalArtifact URL: $(kc -n $NS get externalsource cluster-app -o jsonpath='{.status.conditions}' 2>&1)"
want="http://$ARTIFACT_SERVICE.$NS.svc.cluster.local:8080/artifacts/$NS/cluster-app/"
case "$url" in "$want"*.tar.gz) ;; *) fail "artifact URL $url does not start with $want" ;; esac
digest=$(kc -n $NS get externalartifacts.source.toolkit.fluxcd.io cluster-app -o jsonpath='{.status.artifact.digest}')

step "download through the Service from another namespace"
got=$(in_pod fixtures fetch "wget -q -O - '$url' | sha256sum") || fail "download of $url failed from a pod"
[ "sha256:${got%% *}" = "$digest" ] || fail "downloaded digest sha256:${got%% *}, advertised $digest"

step "Flux's kustomize-controller applies it"
kc -n $NS wait --for=condition=Ready kustomization/cluster-app --timeout=120s >/dev/null ||
  fail "Kustomization not Ready: $(kc -n $NS get kustomization cluster-app -o jsonpath='{.status.conditions}')"
served=$(kc -n default get configmap from-upstream -o jsonpath='{.data.served-by}' 2>/dev/null || true)
[ "$served" = upstream.fixtures ] || fail "ConfigMap default/from-upstream not applied (served-by '$served')"

assert_no_forbidden $NS

echo "Available as 65532 with a read-only root and no capabilities, probes passing; $url served sha256 ${digest#sha256:} to another namespace; kustomize-controller applied it"
