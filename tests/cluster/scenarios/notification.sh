#!/usr/bin/env bash
# notification-controller in the cluster receives our Flux events: deploy/default posts them to
# notification-controller's Service (controller.events_addr), an Alert on ExternalArtifact and a
# generic Provider forward them to a webhook receiver in the cluster; the receiver gets the new
# revision (info, NewArtifact) and a failure (error, FetchFailed) of our source.
source "$(dirname "$0")/lib.sh"
NS=flux-system

ensure_flux
ensure_upstream
cleanup kc delete -f "$CLUSTER_DIR/manifests/receiver.yaml" --ignore-not-found --wait=false
kc apply -f "$CLUSTER_DIR/manifests/receiver.yaml" >/dev/null
kc -n fixtures wait --for=condition=Available deploy/receiver --timeout=60s >/dev/null || fail "receiver not Available"
install_overlay kustomize
cleanup kc -n $NS delete alert external-sources --ignore-not-found
cleanup kc -n $NS delete provider receiver --ignore-not-found
kc apply -f - >/dev/null <<YAML
apiVersion: notification.toolkit.fluxcd.io/v1beta3
kind: Provider
metadata: {name: receiver, namespace: $NS}
spec:
  type: generic
  address: http://receiver.fixtures.svc.cluster.local:8080/cgi-bin/record
---
apiVersion: notification.toolkit.fluxcd.io/v1beta3
kind: Alert
metadata: {name: external-sources, namespace: $NS}
spec:
  providerRef: {name: receiver}
  eventSeverity: info
  eventSources:
    - {kind: ExternalArtifact, name: "*"}
YAML
kc -n $NS wait --for=condition=Ready alert/external-sources provider/receiver --timeout=60s >/dev/null 2>&1 || true
cleanup kc -n $NS delete externalsource notify-src notify-broken --ignore-not-found --wait=true --timeout=60s
kc apply -f - >/dev/null <<YAML
apiVersion: source.flux.oddkin.co/v1alpha1
kind: ExternalSource
metadata: {name: notify-src, namespace: $NS}
spec:
  interval: 1m
  destinationPath: app.yaml
  generator:
    type: http
    http: {url: "http://upstream.fixtures.svc.cluster.local:8080/files/app.yaml"}
---
apiVersion: source.flux.oddkin.co/v1alpha1
kind: ExternalSource
metadata: {name: notify-broken, namespace: $NS}
spec:
  interval: 1m
  destinationPath: app.yaml
  generator:
    type: http
    http: {url: "http://upstream.fixtures.svc.cluster.local:8080/files/missing.yaml"}
YAML
artifact_url $NS notify-src 90 >/dev/null || fail "no ExternalArtifact for notify-src"
events() { kc -n fixtures exec deploy/receiver -- cat /data/events 2>/dev/null || true; }
got_info() { events | jq -e -s 'map(select(.involvedObject.kind == "ExternalArtifact" and .involvedObject.name == "notify-src" and .severity == "info" and .reason == "NewArtifact")) | length > 0' >/dev/null; }
got_error() { events | jq -e -s 'map(select(.involvedObject.name == "notify-broken" and .severity == "error")) | length > 0' >/dev/null; }
wait_until 90 "the NewArtifact event at the receiver" got_info ||
  fail "receiver got no NewArtifact event for notify-src: $(events | head -c 600)"
wait_until 90 "the failure event at the receiver" got_error ||
  fail "receiver got no error event for notify-broken: $(events | head -c 600)"
reason=$(events | jq -r -s 'map(select(.involvedObject.name == "notify-broken" and .severity == "error"))[0].reason')
revision=$(events | jq -r -s 'map(select(.involvedObject.name == "notify-src" and .reason == "NewArtifact"))[0].metadata.revision // ""')
assert_no_forbidden $NS

echo "the receiver got NewArtifact (info, revision ${revision:-?}) and $reason (error) through an Alert on ExternalArtifact"
