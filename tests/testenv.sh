#!/usr/bin/env bash
# Builds the real components the tests run against, once, into a cache outside the checkout:
#   etcd, kube-apiserver, Flux kustomize-controller, and the CRDs those need.
# Go is used here only to build these third-party binaries; the product contains no Go.
# Prints the cache directory on its last line. Re-runs are no-ops once everything is built.
set -euo pipefail

K8S_VERSION=1.34.4
ETCD_VERSION=3.6.16
KUSTOMIZE_CONTROLLER_VERSION=1.9.4
SOURCE_CONTROLLER_VERSION=1.9.1

CACHE="${EXTERNALSOURCE_CACHE:-$HOME/.cache/externalsource}/testenv/k8s-${K8S_VERSION}-etcd-${ETCD_VERSION}-kc-${KUSTOMIZE_CONTROLLER_VERSION}"
BIN="$CACHE/bin"
CRDS="$CACHE/crds"
mkdir -p "$BIN" "$CRDS"

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod

log() { printf 'testenv: %s\n' "$*" >&2; }

timed() {
  local name=$1; shift
  local start=$SECONDS
  "$@"
  log "$name built in $((SECONDS - start))s"
}

build_etcd() {
  local dir="$CACHE/build/etcd"
  rm -rf "$dir" && mkdir -p "$dir" && cd "$dir"
  go mod init example.invalid/etcd-build >/dev/null 2>&1
  go get "go.etcd.io/etcd/server/v3@v${ETCD_VERSION}" >&2
  go build -trimpath -ldflags "-s -w" -o "$BIN/etcd.tmp" go.etcd.io/etcd/server/v3
  mv "$BIN/etcd.tmp" "$BIN/etcd"
}

build_kube_apiserver() {
  local dir="$CACHE/build/kube-apiserver"
  rm -rf "$dir" && mkdir -p "$dir" && cd "$dir"
  local gomod
  gomod=$(go mod download -json "k8s.io/kubernetes@v${K8S_VERSION}" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  {
    echo "module example.invalid/kube-apiserver-build"
    echo
    echo "go 1.24.0"
    echo
    echo "require k8s.io/kubernetes v${K8S_VERSION}"
    echo
    echo "replace ("
    grep -oE '^\s*k8s\.io/[a-z0-9-]+ => \./staging' "$gomod" | awk '{print $1}' | sort -u |
      while read -r m; do echo "	$m => $m v0.${K8S_VERSION#1.}"; done
    echo ")"
  } > go.mod
  cat > tools.go <<'GO'
//go:build tools

package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
GO
  go mod tidy >&2
  local minor=${K8S_VERSION#1.}; minor=${minor%%.*}
  go build -trimpath -ldflags "-s -w \
    -X k8s.io/component-base/version.gitVersion=v${K8S_VERSION} \
    -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${minor}" \
    -o "$BIN/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver
  mv "$BIN/kube-apiserver.tmp" "$BIN/kube-apiserver"
}

build_kustomize_controller() {
  local dir="$CACHE/build/kustomize-controller"
  rm -rf "$dir" && mkdir -p "$dir" && cd "$dir"
  cat > go.mod <<GOMOD
module example.invalid/flux-build

go 1.26.0

require github.com/fluxcd/kustomize-controller v${KUSTOMIZE_CONTROLLER_VERSION}

replace (
	github.com/opencontainers/go-digest => github.com/opencontainers/go-digest v1.0.1-0.20220411205349-bde1400a84be
	sigs.k8s.io/kustomize/api => sigs.k8s.io/kustomize/api v0.21.1
	sigs.k8s.io/kustomize/kyaml => sigs.k8s.io/kustomize/kyaml v0.21.1
	gopkg.in/yaml.v3 => gopkg.in/yaml.v3 v3.0.1
)
GOMOD
  cat > tools.go <<'GO'
//go:build tools

package tools

import _ "github.com/fluxcd/kustomize-controller"
GO
  go mod tidy >&2
  go build -trimpath -ldflags "-s -w" -o "$BIN/kustomize-controller.tmp" github.com/fluxcd/kustomize-controller
  mv "$BIN/kustomize-controller.tmp" "$BIN/kustomize-controller"
}

fetch_crds() {
  local sc kc
  sc=$(cd "$CACHE" && go mod download -json "github.com/fluxcd/source-controller@v${SOURCE_CONTROLLER_VERSION}" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  kc=$(cd "$CACHE" && go mod download -json "github.com/fluxcd/kustomize-controller@v${KUSTOMIZE_CONTROLLER_VERSION}" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  for f in externalartifacts gitrepositories ocirepositories buckets helmrepositories helmcharts; do
    cp "$sc/config/crd/bases/source.toolkit.fluxcd.io_${f}.yaml" "$CRDS/" 2>/dev/null || true
  done
  cp "$kc/config/crd/bases/kustomize.toolkit.fluxcd.io_kustomizations.yaml" "$CRDS/"
  test -s "$CRDS/source.toolkit.fluxcd.io_externalartifacts.yaml"
  chmod 0644 "$CRDS"/*.yaml
  touch "$CRDS/.done"
}

want="${1:-all}"
[ -f "$CRDS/.done" ] || timed crds fetch_crds
[ -x "$BIN/etcd" ] || timed etcd build_etcd
[ -x "$BIN/kube-apiserver" ] || timed kube-apiserver build_kube_apiserver
if [ "$want" = all ] || [ "$want" = flux ]; then
  [ -x "$BIN/kustomize-controller" ] || timed kustomize-controller build_kustomize_controller
fi
rm -rf "$CACHE/build"
echo "$CACHE"
