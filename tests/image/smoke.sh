#!/usr/bin/env bash
# Builds slim images with deploy/image/build.sh (buildah, FROM scratch) from single-backend
# binaries and runs them with podman:
#   - the default (memory) image lists only its backend, and `run` against the test API server
#     turns Ready (its /readyz answers 200 from inside the container);
#   - the filesystem image lists only its backend and `serve`s an artifact from a mounted store:
#     the download has the artifact's digest.
# Usage: tests/image/smoke.sh MEMORY_BIN FILESYSTEM_BIN KUBECONFIG
set -euo pipefail
cd "$(dirname "$0")/../.."
memory_bin=$1 filesystem_bin=$2 kubeconfig=$3

work=$(mktemp -d)
printf '[containers]\ndefault_ulimits = []\n' >"$work/containers.conf"
export CONTAINERS_CONF=$work/containers.conf
podman() { command podman --storage-driver vfs --runtime runc "$@"; }
names=() images=()
cleanup() {
  for n in "${names[@]}"; do podman rm -f "$n" >/dev/null 2>&1 || true; done
  for i in "${images[@]}"; do podman rmi -f "$i" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "image smoke: FAIL: $*" >&2; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_ok() { # url name
  for _ in $(seq 1 150); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$1")" = 200 ] && return 0
    sleep 0.2
  done
  podman logs "$2" 2>&1 | tail -20 >&2
  fail "$1 never answered 200"
}

read -r memory_image memory_size < <(bash deploy/image/build.sh --binary "$memory_bin" --backends memory --tag smoke-memory)
read -r fs_image fs_size < <(bash deploy/image/build.sh --binary "$filesystem_bin" --backends filesystem --tag smoke-filesystem)
images+=("$memory_image" "$fs_image")
echo "image smoke: built $memory_image ($memory_size bytes), $fs_image ($fs_size bytes)"

for pair in "$memory_image memory" "$fs_image filesystem"; do
  set -- $pair
  listed=$(podman run --rm --network host "$1" --list-backends | awk 'NF {print $1}' | xargs)
  [ "$listed" = "$2" ] || fail "$1 --list-backends lists [$listed], want [$2]"
  user=$(podman image inspect "$1" --format '{{.Config.User}}')
  [ "$user" = 65532:65532 ] || fail "$1 runs as $user, want 65532:65532"
  echo "image smoke: $1 lists only $2 and runs as $user"
done

# The default image runs the controller against the test API server.
ops=$(free_port) artifacts=$(free_port)
cp "$kubeconfig" "$work/kubeconfig" && chmod 0644 "$work/kubeconfig"
names+=(esc-smoke-run)
podman run -d --name esc-smoke-run --network host --read-only \
  -v "$work/kubeconfig:/kubeconfig:ro" -e KUBECONFIG=/kubeconfig -e POD_NAMESPACE=default \
  -e POD_NAME=esc-smoke-run -e OPS_PORT="$ops" -e ARTIFACT_SERVER_PORT="$artifacts" \
  -e ARTIFACT_SERVER_ADVERTISE_URL="http://127.0.0.1:$artifacts" "$memory_image" run >/dev/null
wait_ok "http://127.0.0.1:$ops/readyz" esc-smoke-run
echo "image smoke: $memory_image runs the controller and is Ready"

# The filesystem image serves a mounted store.
store=$work/store
payload=$work/payload.tar.gz
printf 'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: smoke}\n' | gzip -n >"$payload"
hex=$(sha256sum "$payload" | cut -d' ' -f1)
install -D -m 0644 "$payload" "$store/artifacts/smoke/source/$hex.tar.gz"
chown -R 65532:65532 "$store"
printf '[storage]\nbackend = "filesystem"\n[storage.filesystem]\nroot = "/data"\nshared = true\n' >"$work/config.toml"
chmod 0644 "$work/config.toml"
port=$(free_port) ops=$(free_port)
names+=(esc-smoke-serve)
podman run -d --name esc-smoke-serve --network host --read-only \
  -v "$store:/data" -v "$work/config.toml:/etc/externalsource/config.toml:ro" \
  -e ARTIFACT_SERVER_PORT="$port" -e OPS_PORT="$ops" "$fs_image" serve >/dev/null
wait_ok "http://127.0.0.1:$ops/readyz" esc-smoke-serve
got=$(curl -sf "http://127.0.0.1:$port/artifacts/smoke/source/$hex.tar.gz" | sha256sum | cut -d' ' -f1)
[ "$got" = "$hex" ] || fail "download from $fs_image has digest $got, want $hex"
echo "image smoke: $fs_image serves the mounted store (sha256:$hex)"
