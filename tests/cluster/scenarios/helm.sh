#!/usr/bin/env bash
# Helm install of deploy/chart with the same choices as the kustomize scenario (memory backend,
# the local image): Available, probes passing, sources published under the Service's DNS name and
# applied by kustomize-controller; `helm upgrade` to a new image tag keeps every source Ready (no
# observation of Ready != True while the pod is replaced) and the artifacts downloadable again;
# `helm uninstall`, after the sources are deleted as deploy/README.md says, leaves no object of
# the release (CRD included) and leaves flux-system and Flux running.
source "$(dirname "$0")/lib.sh"
NS=flux-system RELEASE=externalsource-controller
HELM="$TESTENV/bin/helm"
[ -x "$HELM" ] || fail "$HELM missing (tests/testenv.sh cluster builds it)"
helm() { in_ns "$HELM" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }
CHART="$REPO_DIR/deploy/chart/externalsource-controller"
SOURCES="helm-a helm-b helm-c"

ensure_flux
ensure_upstream
step "helm install"
cleanup helm uninstall $RELEASE -n $NS --wait --timeout 2m
helm install $RELEASE "$CHART" -n $NS --set image.repository=localhost/externalsource-controller \
  --set image.tag=cluster --wait --timeout 3m >/dev/null 2>"$CLUSTER_STATE/logs/helm-install.err" ||
  fail "helm install: $(tail -3 "$CLUSTER_STATE/logs/helm-install.err")"
kc -n $NS wait --for=condition=Available deploy/$RELEASE --timeout=60s >/dev/null || fail "Deployment not Available"
pod=$(kc -n $NS get pods -l $CONTROLLER_LABEL -o jsonpath='{.items[0].metadata.name}')
[ "$(kc -n $NS get pod "$pod" -o jsonpath='{.status.containerStatuses[0].restartCount}')" = 0 ] || fail "the pod restarted"

cleanup kc -n $NS delete externalsource $SOURCES --ignore-not-found --wait=true --timeout=60s
cleanup kc -n $NS delete kustomization helm-a --ignore-not-found --wait=true --timeout=60s
for s in $SOURCES; do
  kc apply -f - >/dev/null <<YAML
apiVersion: source.flux.oddkin.co/v1alpha1
kind: ExternalSource
metadata: {name: $s, namespace: $NS}
spec:
  interval: 1m
  destinationPath: manifests/app.yaml
  generator:
    type: http
    http: {url: "http://upstream.fixtures.svc.cluster.local:8080/files/app.yaml"}
YAML
done
kc apply -f - >/dev/null <<YAML
apiVersion: kustomize.toolkit.fluxcd.io/v1
kind: Kustomization
metadata: {name: helm-a, namespace: $NS}
spec:
  interval: 1m
  retryInterval: 5s
  sourceRef: {kind: ExternalArtifact, name: helm-a}
  path: ./manifests
  prune: true
  targetNamespace: default
YAML
for s in $SOURCES; do
  url=$(artifact_url $NS $s 90) || fail "no ExternalArtifact for $s"
  case "$url" in "http://flux-$RELEASE-artifacts.$NS.svc.cluster.local:8080/artifacts/$NS/$s/"*) ;;
    *) fail "artifact URL $url does not name the Service flux-$RELEASE-artifacts.$NS.svc" ;; esac
  kc -n $NS wait --for=condition=Ready externalsource/$s --timeout=60s >/dev/null || fail "$s not Ready"
done
kc -n $NS wait --for=condition=Ready kustomization/helm-a --timeout=120s >/dev/null || fail "Kustomization helm-a not Ready"
kc -n default get configmap from-upstream >/dev/null || fail "ConfigMap default/from-upstream not applied"

step "helm upgrade to a new image tag, watching every source's Ready"
watch_log="$CLUSTER_STATE/logs/helm-ready-watch"
: >"$watch_log"
(
  while :; do
    kc -n $NS get externalsources -o jsonpath='{range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="Ready")].status} {end}{"\n"}' >>"$watch_log" 2>&1 || true
    sleep 0.5
  done
) &
watcher=$!
cleanup kill $watcher
helm upgrade $RELEASE "$CHART" -n $NS --reuse-values --set image.tag=cluster-next --wait --timeout 3m >/dev/null \
  2>"$CLUSTER_STATE/logs/helm-upgrade.err" || fail "helm upgrade: $(tail -3 "$CLUSTER_STATE/logs/helm-upgrade.err")"
newpod=$(kc -n $NS get pods -l $CONTROLLER_LABEL --field-selector status.phase=Running -o jsonpath='{.items[0].metadata.name}')
image=$(kc -n $NS get pod "$newpod" -o jsonpath='{.spec.containers[0].image}')
[ "$image" = localhost/externalsource-controller:cluster-next ] || fail "after the upgrade the pod runs $image"
[ "$newpod" != "$pod" ] || fail "the upgrade did not replace the pod"
# The memory store starts empty: the new pod rebuilds each artifact on its first reconcile.
url=$(artifact_url $NS helm-b 5)
digest=$(kc -n $NS get externalartifacts.source.toolkit.fluxcd.io helm-b -o jsonpath='{.status.artifact.digest}')
deadline=$((SECONDS + 90)) got=""
while [ "sha256:${got%% *}" != "$digest" ]; do
  [ $SECONDS -lt $deadline ] || fail "after the upgrade $url never served $digest (last: $got)"
  got=$(in_pod fixtures fetch-after-upgrade "wget -q -O - '$url' | sha256sum" 2>/dev/null || true)
  sleep 1
done
sleep 2
kill $watcher 2>/dev/null || true
observations=$(wc -l <"$watch_log")
notready=$(tr ' ' '\n' <"$watch_log" | grep -v '=True$' | grep -c . || true)
[ "$observations" -gt 5 ] || fail "only $observations observations of the sources during the upgrade"
[ "$notready" = 0 ] || fail "a source was not Ready during the upgrade: $(tr ' ' '\n' <"$watch_log" | grep -v '=True$' | grep . | sort | uniq -c | head -3 | xargs)"
for s in $SOURCES; do [ "$(grep -c "$s=True" "$watch_log")" -ge "$observations" ] || fail "$s missing from some observations"; done
assert_no_forbidden $NS

step "helm uninstall, as documented (sources first)"
kc -n $NS delete kustomization helm-a --wait=true --timeout=60s >/dev/null
for s in $SOURCES; do kc -n $NS delete externalsource $s --wait=true --timeout=60s >/dev/null; done
left=$(kc -n $NS get externalartifacts.source.toolkit.fluxcd.io -o name 2>/dev/null | grep -E 'helm-[abc]$' || true)
[ -z "$left" ] || fail "ExternalArtifacts left after their sources were deleted: $left"
helm uninstall $RELEASE -n $NS --wait --timeout 2m >/dev/null || fail "helm uninstall failed"
sel=app.kubernetes.io/instance=$RELEASE
left=$(kc get all,configmaps,serviceaccounts,roles,rolebindings,clusterroles,clusterrolebindings,pdb -A -l $sel -o name 2>/dev/null || true)
[ -z "$left" ] || fail "objects of the release left: $(echo $left)"
kc get crd externalsources.source.flux.oddkin.co >/dev/null 2>&1 && fail "the CRD is left after helm uninstall"
kc get namespace $NS >/dev/null || fail "helm uninstall removed $NS"
kc -n $NS wait --for=condition=Available deploy/kustomize-controller --timeout=10s >/dev/null || fail "Flux is gone"
echo "installed, ${observations} observations of 3 sources all Ready through the upgrade to cluster-next (artifacts served again), uninstall left nothing but flux-system"
