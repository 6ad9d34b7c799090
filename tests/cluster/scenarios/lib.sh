# Helpers the scenarios share. Sourced. A scenario prints progress on stderr and, as its last line
# on stdout, the detail of its PASS or FAIL line (run.sh prints it).
# shellcheck source=tests/cluster/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
set -euo pipefail

TESTENV=$(testenv_dir)
CONTROLLER_LABEL=app.kubernetes.io/component=controller
ARTIFACT_SERVICE=flux-externalsource-controller-artifacts

fail() { echo "$*"; echo "FAIL: $*" >&2; exit 1; }

# cleanup COMMAND: run at exit, pass or fail, the last registered first (so the sources a
# scenario created go before the controller that holds their finalizers), leaving the cluster
# as the next scenario expects it.
CLEANUP=()
cleanup() { CLEANUP+=("$*"); }
run_cleanup() {
  local i
  for ((i = ${#CLEANUP[@]} - 1; i >= 0; i--)); do eval "${CLEANUP[i]}" >/dev/null 2>&1 || true; done
}
trap run_cleanup EXIT
step() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }

# Flux's CRDs and controllers (kustomize-, helm-, notification-controller), Ready.
ensure_flux() {
  local f
  for f in "$TESTENV"/crds/*toolkit.fluxcd.io_*.yaml; do
    kc apply --server-side --force-conflicts -f "$f" >/dev/null
  done
  kc apply -k "$CLUSTER_DIR/manifests/flux" >/dev/null
  kc -n flux-system wait --for=condition=Available deploy/kustomize-controller deploy/helm-controller \
    deploy/notification-controller --timeout=180s >/dev/null ||
    fail "Flux controllers not Available: $(kc -n flux-system get pods --no-headers 2>&1 | tr '\n' ';')"
}

# An upstream HTTP server in the cluster: busybox httpd serving the ConfigMap `upstream-files`
# at http://upstream.fixtures.svc.cluster.local:8080/files/<key>.
ensure_upstream() {
  kc apply -f "$CLUSTER_DIR/manifests/upstream.yaml" >/dev/null
  kc -n fixtures wait --for=condition=Available deploy/upstream --timeout=120s >/dev/null ||
    fail "upstream fixture not Available"
}

# The controller's pods' logs (every container, previous instances included) on stdout.
install_overlay() { # NAME: kubectl apply -k overlays/NAME, removed when the scenario ends; waits
  # for the Deployment to be Available and sets `pod` to the controller's pod.
  local overlay=$CLUSTER_DIR/overlays/$1
  step "kubectl apply -k overlays/$1"
  cleanup kc delete -k "$overlay" --ignore-not-found --wait=true --timeout=120s
  kc apply -k "$overlay" >/dev/null
  kc -n $NS wait --for=condition=Available deploy/externalsource-controller --timeout=120s >/dev/null ||
    fail "Deployment not Available: $(kc -n $NS get pods -l $CONTROLLER_LABEL --no-headers 2>&1)"
  pod=$(kc -n $NS get pods -l $CONTROLLER_LABEL -o jsonpath='{.items[0].metadata.name}')
}

controller_logs() { # NAMESPACE
  local p
  for p in $(kc -n "$1" get pods -l "$CONTROLLER_LABEL" -o name); do
    kc -n "$1" logs "$p" --all-containers 2>/dev/null || true
    kc -n "$1" logs "$p" --all-containers --previous 2>/dev/null || true
  done
}

# Fails when the controller's log shows the API server refusing it (HTTP 403), i.e. when the
# RBAC we ship lacks a rule.
assert_no_forbidden() { # NAMESPACE
  local hits
  hits=$(controller_logs "$1" | grep -iE '\b403\b|forbidden' | head -5 || true)
  [ -z "$hits" ] || fail "the controller was refused by the API server: $hits"
}

# Waits for ExternalArtifact NAMESPACE/NAME to carry an artifact URL, prints it.
artifact_url() { # NAMESPACE NAME TIMEOUT
  local deadline=$((SECONDS + $3)) url=""
  while [ -z "$url" ]; do
    url=$(kc -n "$1" get externalartifacts.source.toolkit.fluxcd.io "$2" -o jsonpath='{.status.artifact.url}' 2>/dev/null || true)
    [ -n "$url" ] && break
    [ $SECONDS -lt $deadline ] || return 1
    sleep 1
  done
  echo "$url"
}

# The host pid of a pod's container (from containerd), to read what runc really enforced.
container_pid() { # NAMESPACE POD CONTAINER
  local id
  id=$(kc -n "$1" get pod "$2" -o jsonpath="{.status.containerStatuses[?(@.name==\"$3\")].containerID}")
  id=${id#containerd://}
  ctr -a "$CLUSTER_STATE/containerd.sock" -n k8s.io tasks ls | awk -v id="$id" '$1 == id {print $2}'
}

# Runs a shell command in a throwaway busybox pod in NAMESPACE, prints its output.
in_pod() { # NAMESPACE NAME COMMAND
  kc -n "$1" delete pod "$2" --ignore-not-found --wait >/dev/null
  kc -n "$1" run "$2" --image localhost/busybox:cluster --image-pull-policy Never --restart Never \
    --command -- sh -c "$3" >/dev/null
  kc -n "$1" wait --for=jsonpath='{.status.phase}'=Succeeded "pod/$2" --timeout=90s >/dev/null || {
    kc -n "$1" logs "$2" >&2 || true
    return 1
  }
  kc -n "$1" logs "$2"
  kc -n "$1" delete pod "$2" --wait=false >/dev/null
}
