#!/usr/bin/env bash
# Flux's helm-controller in the cluster installs a HelmRelease from a chart an ExternalSource
# publishes (`format: archive`): the chart is packaged with helm, served by the in-cluster
# upstream, repackaged by the controller and installed into `default`, where its ConfigMap
# carries the HelmRelease's value.
source "$(dirname "$0")/lib.sh"
NS=flux-system
HELM="$TESTENV/bin/helm"

ensure_flux
ensure_upstream
step "a chart served by the upstream"
work=$(mktemp -d)
cleanup rm -rf "$work"
mkdir -p "$work/cluster-chart/templates"
cat >"$work/cluster-chart/Chart.yaml" <<YAML
apiVersion: v2
name: cluster-chart
version: 0.1.0
YAML
echo 'greeting: hello' >"$work/cluster-chart/values.yaml"
cat >"$work/cluster-chart/templates/configmap.yaml" <<'YAML'
apiVersion: v1
kind: ConfigMap
metadata:
  name: chart-made
data:
  greeting: {{ .Values.greeting | quote }}
YAML
"$HELM" package "$work/cluster-chart" -d "$work" >/dev/null
cleanup kc -n fixtures delete configmap upstream-charts --ignore-not-found
kc -n fixtures create configmap upstream-charts --from-file=cluster-chart.tgz="$work/cluster-chart-0.1.0.tgz" \
  --dry-run=client -o yaml | kc apply -f - >/dev/null
kc -n fixtures rollout restart deploy/upstream >/dev/null
kc -n fixtures rollout status deploy/upstream --timeout=60s >/dev/null || fail "upstream did not restart"

install_overlay kustomize
cleanup kc -n $NS delete externalsource cluster-chart --ignore-not-found --wait=true --timeout=60s
cleanup kc -n $NS delete helmrelease cluster-chart --ignore-not-found --wait=true --timeout=90s
kc apply -f - >/dev/null <<YAML
apiVersion: source.flux.oddkin.co/v1alpha1
kind: ExternalSource
metadata: {name: cluster-chart, namespace: $NS}
spec:
  interval: 1m
  format: archive
  generator:
    type: http
    http: {url: "http://upstream.fixtures.svc.cluster.local:8080/charts/cluster-chart.tgz"}
---
apiVersion: helm.toolkit.fluxcd.io/v2
kind: HelmRelease
metadata: {name: cluster-chart, namespace: $NS}
spec:
  interval: 1m
  chartRef: {kind: ExternalArtifact, name: cluster-chart}
  targetNamespace: default
  values: {greeting: from-helmrelease}
YAML
url=$(artifact_url $NS cluster-chart 90) ||
  fail "no ExternalArtifact: $(kc -n $NS get externalsource cluster-chart -o jsonpath='{.status.conditions}')"
kc -n $NS wait --for=condition=Ready helmrelease/cluster-chart --timeout=180s >/dev/null ||
  fail "HelmRelease not Ready: $(kc -n $NS get helmrelease cluster-chart -o jsonpath='{.status.conditions}')"
greeting=$(kc -n default get configmap chart-made -o jsonpath='{.data.greeting}' 2>/dev/null || true)
[ "$greeting" = from-helmrelease ] || fail "ConfigMap default/chart-made has greeting '$greeting'"
assert_no_forbidden $NS

echo "HelmRelease from $url installed chart-made (greeting $greeting)"
