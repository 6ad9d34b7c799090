#!/usr/bin/env bash
# Builds the real components the tests run against, once, into a cache outside the checkout:
#   etcd, kube-apiserver, Flux kustomize-controller, helm-controller and notification-controller,
#   the flux CLI, the helm CLI (for the chart's install test), and the CRDs those need (Flux's,
#   prometheus-operator's for the monitoring objects); for the single-node cluster of
#   tests/cluster, kubelet, kube-proxy, kube-scheduler and kube-controller-manager (built with
#   kube-apiserver) and CoreDNS.
#   tests/testenv.sh [all|flux|cluster|base]   (all: everything; base: etcd and Kubernetes only)
# Go is used here only to build these third-party binaries; the product contains no Go.
# Prints the cache directory on its last line. Re-runs are no-ops once everything is built.
set -euo pipefail

K8S_VERSION=1.34.4
ETCD_VERSION=3.6.16
KUSTOMIZE_CONTROLLER_VERSION=1.9.4
SOURCE_CONTROLLER_VERSION=1.9.1
HELM_CONTROLLER_VERSION=1.6.0
# The flux CLI (`flux get`, `flux trace`, `flux events` on our objects): the Flux 2.9 release
# whose controller APIs match the controllers above; of flux2's releases the module proxy serves
# v2.6.4 and v2.9.5, and v2.9.5 builds with Go 1.26.
FLUX_CLI_VERSION=2.9.5
# The receiver of our Flux events (controller.events_addr) in the alerting end-to-end test.
NOTIFICATION_CONTROLLER_VERSION=1.9.0
# The Helm v4 SDK helm-controller is built with (what fluxcd/pkg/chartutil v1.27.1 requires);
# the helm CLI is built from it too.
HELM_VERSION=4.2.2
# Only its CRD files are used (ServiceMonitor, PrometheusRule); nothing is built.
PROMETHEUS_OPERATOR_VERSION=0.85.0
# The cluster DNS of the single-node cluster (tests/cluster), built with only the plugins it uses.
COREDNS_VERSION=1.15.0

CACHE="${EXTERNALSOURCE_CACHE:-$HOME/.cache/externalsource}/testenv/k8s-${K8S_VERSION}-etcd-${ETCD_VERSION}-kc-${KUSTOMIZE_CONTROLLER_VERSION}"
BIN="$CACHE/bin"
CRDS="$CACHE/crds"
# Names the versions the Flux binaries in $BIN were built at (older caches hold other ones).
FLUX_MARKER="$BIN/.flux-kc${KUSTOMIZE_CONTROLLER_VERSION}-hc${HELM_CONTROLLER_VERSION}-helm${HELM_VERSION}-cli${FLUX_CLI_VERSION}"
NOTIFICATION_MARKER="$BIN/.flux-nc${NOTIFICATION_CONTROLLER_VERSION}"
# The Kubernetes binaries built together by build_kubernetes (one `go build`).
K8S_COMMANDS="kube-apiserver kubelet kube-proxy kube-scheduler kube-controller-manager"
COREDNS_MARKER="$BIN/.coredns${COREDNS_VERSION}"
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

# kube-apiserver (every test against a real API server) and the node's binaries (the
# single-node cluster of tests/cluster: kubelet, kube-proxy, kube-scheduler,
# kube-controller-manager), from one wrapper module and one `go build`: they share almost every
# package, so the node's binaries cost little more than kube-apiserver alone.
build_kubernetes() {
  local dir="$CACHE/build/kubernetes"
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
  local packages="" c
  for c in $K8S_COMMANDS; do packages="$packages k8s.io/kubernetes/cmd/$c"; done
  {
    printf '//go:build tools\n\npackage tools\n\nimport (\n'
    for c in $packages; do printf '\t_ "%s"\n' "$c"; done
    printf ')\n'
  } > tools.go
  go mod tidy >&2
  local minor=${K8S_VERSION#1.}; minor=${minor%%.*}
  mkdir -p out
  # shellcheck disable=SC2086 # the package list is split on purpose
  go build -trimpath -ldflags "-s -w \
    -X k8s.io/component-base/version.gitVersion=v${K8S_VERSION} \
    -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${minor}" \
    -o out/ $packages
  for c in $K8S_COMMANDS; do mv "out/$c" "$BIN/$c"; done
}

# CoreDNS, the cluster DNS of tests/cluster, from a wrapper module of its own (it uses a newer
# client-go than Kubernetes v${K8S_VERSION}): a main package that links only the plugins the
# cluster's Corefile names, in CoreDNS's plugin order, instead of its several dozen.
build_coredns() {
  local dir="$CACHE/build/coredns"
  rm -rf "$dir" && mkdir -p "$dir" && cd "$dir"
  cat > go.mod <<GOMOD
module example.invalid/coredns-build

go 1.26.0

require github.com/coredns/coredns v${COREDNS_VERSION}
GOMOD
  cat > main.go <<'GO'
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

func init() {
	dnsserver.Directives = []string{"ready", "health", "errors", "log", "cache", "kubernetes"}
}

func main() { coremain.Run() }
GO
  go mod tidy >&2
  go build -trimpath -ldflags "-s -w" -o "$BIN/coredns.tmp" .
  mv "$BIN/coredns.tmp" "$BIN/coredns"
  touch "$COREDNS_MARKER"
}

# Flux's kustomize-controller and helm-controller (the consumers in the end-to-end tests), the
# helm CLI (`helm lint`, `helm template` and the install/upgrade/uninstall test of deploy/chart)
# and the flux CLI, from one wrapper module: they share client-go, controller-runtime, kustomize
# and fluxcd/pkg, helm-controller brings the Helm v4 SDK the helm CLI is built from, so one
# `go build` compiles the shared packages once. The flux CLI belongs here rather than in a module
# of its own: flux2 v${FLUX_CLI_VERSION} is built on the same minor lines (k8s.io v0.36,
# controller-runtime v0.24, Helm v4.2, kustomize api v0.21, the same fluxcd/pkg and controller API
# modules), so adding it moves only patch versions (k8s.io v0.36.2 -> v0.36.4, the controllers'
# api modules to the 2.9.5 patch releases) and costs its own packages only; in a module of its
# own those patch versions would differ and client-go, the Kubernetes APIs, Helm and kustomize
# would be compiled twice. Versions are pinned by the go.mod below and the replace lines the
# controllers' own go.mod files carry.
build_flux() {
  local dir="$CACHE/build/flux"
  rm -rf "$dir" && mkdir -p "$dir" && cd "$dir"
  # flux2's cmd/flux embeds manifests/*.yaml (what `flux install` writes), which flux2's release
  # build generates and its module does not ship: a copy of the module with one placeholder file
  # there builds it. `flux install` and `flux bootstrap` are not used here.
  local flux2
  flux2=$(go mod download -json "github.com/fluxcd/flux2/v2@v${FLUX_CLI_VERSION}" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  cp -r "$flux2" flux2 && chmod -R u+w flux2
  mkdir -p flux2/cmd/flux/manifests
  echo "# flux install manifests are not part of this build" > flux2/cmd/flux/manifests/placeholder.yaml
  cat > go.mod <<GOMOD
module example.invalid/flux-build

go 1.26.0

require (
	github.com/fluxcd/kustomize-controller v${KUSTOMIZE_CONTROLLER_VERSION}
	github.com/fluxcd/helm-controller v${HELM_CONTROLLER_VERSION}
	github.com/fluxcd/flux2/v2 v${FLUX_CLI_VERSION}
	helm.sh/helm/v4 v${HELM_VERSION}
	// helm-controller asks for v1.27.0, which the module proxy does not serve; v1.27.1 is its
	// patch release (flux2 v${FLUX_CLI_VERSION} raises it to v1.27.2).
	github.com/fluxcd/pkg/chartutil v1.27.1
)

replace (
	github.com/fluxcd/flux2/v2 => ./flux2
	github.com/opencontainers/go-digest => github.com/opencontainers/go-digest v1.0.1-0.20231025023718-d50d2fec9c98
	sigs.k8s.io/kustomize/api => sigs.k8s.io/kustomize/api v0.21.1
	sigs.k8s.io/kustomize/kyaml => sigs.k8s.io/kustomize/kyaml v0.21.1
	gopkg.in/yaml.v3 => gopkg.in/yaml.v3 v3.0.1
)
GOMOD
  cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "github.com/fluxcd/flux2/v2/cmd/flux"
	_ "github.com/fluxcd/helm-controller"
	_ "github.com/fluxcd/kustomize-controller"
	_ "helm.sh/helm/v4/cmd/helm"
)
GO
  go mod tidy >&2
  mkdir -p out
  go build -trimpath -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=v${HELM_VERSION} \
    -X main.VERSION=${FLUX_CLI_VERSION}" -o out/ \
    github.com/fluxcd/kustomize-controller github.com/fluxcd/helm-controller helm.sh/helm/v4/cmd/helm \
    github.com/fluxcd/flux2/v2/cmd/flux
  mv out/kustomize-controller out/helm-controller out/helm out/flux "$BIN/"
  touch "$FLUX_MARKER"
}

# Flux's notification-controller, from a wrapper module of its own: its dependency graph is mostly
# its alert providers' SDKs, and resolving it together with the consumers above would move the
# versions they are pinned at. Packages both graphs hold at the same version come from the shared
# Go build cache. Its CRDs (Alert, Provider, Receiver) come from the same module.
build_notification() {
  local dir="$CACHE/build/notification"
  rm -rf "$dir" && mkdir -p "$dir" && cd "$dir"
  cat > go.mod <<GOMOD
module example.invalid/notification-build

go 1.26.0

require github.com/fluxcd/notification-controller v${NOTIFICATION_CONTROLLER_VERSION}

replace gopkg.in/yaml.v3 => gopkg.in/yaml.v3 v3.0.1
GOMOD
  cat > tools.go <<'GO'
//go:build tools

package tools

import _ "github.com/fluxcd/notification-controller"
GO
  go mod tidy >&2
  go build -trimpath -ldflags "-s -w" -o "$BIN/notification-controller.tmp" github.com/fluxcd/notification-controller
  mv "$BIN/notification-controller.tmp" "$BIN/notification-controller"
  local nc
  nc=$(go mod download -json "github.com/fluxcd/notification-controller@v${NOTIFICATION_CONTROLLER_VERSION}" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  for f in alerts providers receivers; do
    cp "$nc/config/crd/bases/notification.toolkit.fluxcd.io_${f}.yaml" "$CRDS/"
  done
  chmod 0644 "$CRDS"/*.yaml
  touch "$NOTIFICATION_MARKER"
}

fetch_monitoring_crds() {
  local po
  po=$(cd "$CACHE" && go mod download -json "github.com/prometheus-operator/prometheus-operator@v${PROMETHEUS_OPERATOR_VERSION}" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  for f in servicemonitors prometheusrules; do
    cp "$po/example/prometheus-operator-crd/monitoring.coreos.com_${f}.yaml" "$CRDS/"
  done
  chmod 0644 "$CRDS"/*.yaml
  touch "$CRDS/.monitoring-done"
}

fetch_helmrelease_crd() {
  local hc
  hc=$(cd "$CACHE" && go mod download -json "github.com/fluxcd/helm-controller@v${HELM_CONTROLLER_VERSION}" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  cp "$hc/config/crd/bases/helm.toolkit.fluxcd.io_helmreleases.yaml" "$CRDS/"
  chmod 0644 "$CRDS"/*.yaml
  touch "$CRDS/.helmrelease-done"
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
[ -f "$CRDS/.monitoring-done" ] || timed monitoring-crds fetch_monitoring_crds
[ -f "$CRDS/.helmrelease-done" ] || timed helmrelease-crd fetch_helmrelease_crd
k8s_missing=""
for c in $K8S_COMMANDS; do [ -x "$BIN/$c" ] || k8s_missing=yes; done
[ -z "$k8s_missing" ] || timed "kubernetes ($K8S_COMMANDS)" build_kubernetes
if [ "$want" = all ] || [ "$want" = cluster ]; then
  [ -f "$COREDNS_MARKER" ] || timed coredns build_coredns
fi
if [ "$want" = all ] || [ "$want" = flux ] || [ "$want" = cluster ]; then
  [ -f "$FLUX_MARKER" ] || timed flux-controllers+helm+flux-cli build_flux
  [ -f "$NOTIFICATION_MARKER" ] || timed notification-controller build_notification
fi
rm -rf "$CACHE/build"
echo "$CACHE"
