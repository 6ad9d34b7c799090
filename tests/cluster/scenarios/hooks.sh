#!/usr/bin/env bash
# The hooks component on a real node: the hook-executor sidecar has no ServiceAccount token (read
# in its own mount namespace on the node: nothing mounted at the token path, no token file), the
# manager has one and works with it, and a jq postRequest hook run by the sidecar over the socket
# in the shared emptyDir shapes an artifact end to end (downloaded and unpacked in a pod).
source "$(dirname "$0")/lib.sh"
NS=flux-system TOKEN_DIR=/var/run/secrets/kubernetes.io/serviceaccount

ensure_flux
ensure_upstream
install_overlay hooks

step "credentials in each container ($pod)"
exec_pid=$(container_pid $NS "$pod" hook-executor)
mgr_pid=$(container_pid $NS "$pod" manager)
[ -n "$exec_pid" ] && [ -n "$mgr_pid" ] || fail "containers of $pod not running"
if grep -q " $TOKEN_DIR " "/proc/$exec_pid/mountinfo" || [ -e "/proc/$exec_pid/root$TOKEN_DIR/token" ]; then
  fail "the hook-executor has a ServiceAccount token at $TOKEN_DIR"
fi
[ -s "/proc/$mgr_pid/root$TOKEN_DIR/token" ] || fail "the manager has no token at $TOKEN_DIR"
exec_uid=$(awk '/^Uid:/ {print $2}' "/proc/$exec_pid/status")
[ "$exec_uid" = 65532 ] || fail "hook-executor runs as uid $exec_uid"

step "a jq hook shapes an artifact"
cleanup kc -n $NS delete externalsource hooked --ignore-not-found --wait=true --timeout=60s
kc apply -f - >/dev/null <<YAML
apiVersion: source.flux.oddkin.co/v1alpha1
kind: ExternalSource
metadata: {name: hooked, namespace: $NS}
spec:
  interval: 1m
  destinationPath: release/latest.json
  generator:
    type: http
    http: {url: "http://upstream.fixtures.svc.cluster.local:8080/files/release.json"}
  hooks:
    postRequest:
      - name: pick
        command: /usr/bin/jq
        args: ["-c", "{tag: .tag_name, assets: (.assets | length)}"]
        timeout: 10s
YAML
url=$(artifact_url $NS hooked 90) ||
  fail "no ExternalArtifact: $(kc -n $NS get externalsource hooked -o jsonpath='{.status.conditions}')"
content=$(in_pod fixtures unpack "wget -q -O - '$url' | tar -xzO release/latest.json") || fail "could not unpack $url"
[ "$content" = '{"tag":"v1.2.3","assets":1}' ] || fail "artifact holds '$content', want the jq output"
assert_no_forbidden $NS

echo "hook-executor has no token (manager has), jq hook output $content served in the artifact"
