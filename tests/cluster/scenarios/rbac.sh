#!/usr/bin/env bash
# RBAC as the API server enforces it: the controller, with exactly the rules deploy/default
# ships, reconciles a source in a namespace of its own and nothing in its log is refused (403);
# a user bound to the built-in `edit` role creates an ExternalSource (the aggregated
# externalsource-editor), one bound to `view` can read it but not create one, nor write its
# status.
source "$(dirname "$0")/lib.sh"
NS=flux-system TEAM=team-rbac
as_user() { local u=$1; shift; in_ns kubectl --kubeconfig "$CLUSTER_STATE/$u.kubeconfig" "$@"; }

ensure_flux
ensure_upstream
install_overlay kustomize

step "users bound to edit and view in $TEAM"
cleanup kc delete namespace $TEAM --ignore-not-found --wait=true --timeout=60s
kc create namespace $TEAM --dry-run=client -o yaml | kc apply -f - >/dev/null
kc -n $TEAM create rolebinding edit-user --clusterrole edit --user edit-user --dry-run=client -o yaml | kc apply -f - >/dev/null
kc -n $TEAM create rolebinding view-user --clusterrole view --user view-user --dry-run=client -o yaml | kc apply -f - >/dev/null
source_yaml() {
  cat <<YAML
apiVersion: source.flux.oddkin.co/v1alpha1
kind: ExternalSource
metadata: {name: $1, namespace: $TEAM}
spec:
  interval: 1m
  destinationPath: app.yaml
  generator:
    type: http
    http: {url: "http://upstream.fixtures.svc.cluster.local:8080/files/app.yaml"}
YAML
}
# The aggregation controller fills the built-in roles shortly after the ClusterRoles appear.
wait_until 30 "edit aggregated" sh -c "nsenter --net=$NETNS_PATH -- kubectl --kubeconfig $CLUSTER_STATE/edit-user.kubeconfig auth can-i create externalsources.source.flux.oddkin.co -n $TEAM | grep -qx yes" ||
  fail "edit-user may not create ExternalSources in $TEAM"
source_yaml by-editor | as_user edit-user create -f - >/dev/null 2>"$CLUSTER_STATE/logs/rbac-edit.err" ||
  fail "edit-user could not create an ExternalSource: $(cat "$CLUSTER_STATE/logs/rbac-edit.err")"
if source_yaml by-viewer | as_user view-user create -f - >/dev/null 2>"$CLUSTER_STATE/logs/rbac-view.err"; then
  fail "view-user created an ExternalSource"
fi
grep -q Forbidden "$CLUSTER_STATE/logs/rbac-view.err" || fail "view-user's create failed otherwise: $(cat "$CLUSTER_STATE/logs/rbac-view.err")"
as_user view-user -n $TEAM get externalsource by-editor >/dev/null 2>&1 || fail "view-user cannot read ExternalSources"
[ "$(as_user view-user auth can-i update externalsources.source.flux.oddkin.co/status -n $TEAM 2>/dev/null)" = no ] ||
  fail "view-user may write ExternalSource status"
[ "$(as_user edit-user auth can-i create externalartifacts.source.toolkit.fluxcd.io -n $TEAM 2>/dev/null)" = no ] ||
  fail "edit-user may create ExternalArtifacts (only the controller should)"

step "the controller reconciles it with the shipped rules"
url=$(artifact_url $TEAM by-editor 90) ||
  fail "no ExternalArtifact for team-rbac/by-editor: $(kc -n $TEAM get externalsource by-editor -o jsonpath='{.status.conditions}')"
kc -n $TEAM wait --for=condition=Ready externalsource/by-editor --timeout=60s >/dev/null || fail "source not Ready"
as_user edit-user -n $TEAM delete externalsource by-editor --wait=true --timeout=60s >/dev/null ||
  fail "edit-user could not delete the source"
wait_until 30 "the ExternalArtifact removed by the finalizer" sh -c \
  "! nsenter --net=$NETNS_PATH -- kubectl --kubeconfig $KUBECONFIG_ADMIN -n $TEAM get externalartifacts.source.toolkit.fluxcd.io by-editor" ||
  fail "ExternalArtifact left after the source was deleted"
assert_no_forbidden $NS

echo "edit-user created and deleted a source (Ready, artifact $url), view-user read it and was Forbidden to create; no 403 in the controller's log"
