#!/usr/bin/env bash
# Builds the cluster's images with buildah FROM scratch out of local binaries and imports them
# into the cluster's containerd (no manifest ever needs a pull):
#   localhost/pause:3.10                      a static C pause (gcc -static)
#   localhost/coredns:<version>               CoreDNS from tests/testenv.sh
#   localhost/busybox:cluster                 Debian's busybox-static: the upstream fixture (httpd),
#                                             the consumer loops and the checks run inside pods
#   localhost/{kustomize,helm,notification}-controller:<version>   Flux's controllers
#   localhost/seaweedfs:<version>             SeaweedFS' static `weed`
#   localhost/externalsource-controller:cluster   ours, by deploy/image/build.sh --binary
#   localhost/externalsource-hook-executor:cluster  the hook executor as deploy/README.md "Hooks"
#                                             describes it: our binary and the whitelisted jq, no shell
# Third-party images are cached as archives under the cache directory, keyed by their binaries'
# digests; ours is rebuilt on every start from $EXTERNALSOURCE_CONTROLLER_BIN (default
# target/debug/externalsource-controller, built with every backend).
# Usage: images.sh TESTENV_DIR   (called by up.sh with the cluster's containerd running)
set -euo pipefail
# shellcheck source=tests/cluster/lib.sh
source "$(dirname "$0")/lib.sh"
TESTENV=$1
BIN="$TESTENV/bin"
CACHE="${EXTERNALSOURCE_CACHE:-$HOME/.cache/externalsource}/cluster-images"
mkdir -p "$CACHE"
# A private buildah store: no other buildah user on the machine sees or locks these images.
export BUILDAH_FLAGS="--storage-driver vfs --root $CACHE/storage --runroot $CLUSTER_STATE/buildah-run"
read -r -a bflags <<<"$BUILDAH_FLAGS"
bh() { buildah "${bflags[@]}" "$@"; }
sock="$CLUSTER_STATE/containerd.sock"
import() { ctr -a "$sock" -n k8s.io images import "$1" >/dev/null; }

# scratch_image NAME ARCHIVE ROOTDIR ENTRYPOINT_JSON [USER]: ROOTDIR's files as one layer.
scratch_image() {
  local name=$1 archive=$2 root=$3 entry=$4 user=${5:-65532:65532} ctr
  mkdir -p "$root/tmp" "$root/etc" && chmod 1777 "$root/tmp"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
  ctr=$(bh from scratch)
  bh copy "$ctr" "$root/" / >/dev/null
  bh config --entrypoint "$entry" --user "$user" "$ctr"
  bh commit --quiet --rm "$ctr" "$name" >/dev/null
  rm -f "$archive.tmp"
  bh push --quiet "$name" "docker-archive:$archive.tmp:$name"
  bh rmi "$name" >/dev/null 2>&1 || true
  mv "$archive.tmp" "$archive"
}

digest() { cat "$@" | sha256sum | cut -c1-16; }

# cached NAME KEY BUILDER...: builds the archive once per KEY, imports it.
cached() {
  local name=$1 key=$2; shift 2
  local stem
  stem=$(echo "$name" | tr '/:' '__')
  local archive="$CACHE/$stem-$key.tar"
  if [ ! -s "$archive" ]; then
    # Archives of older builds of this image go.
    rm -f "$CACHE/$stem"-*.tar
    local root
    root=$(mktemp -d)
    "$@" "$root" "$archive"
    rm -rf "$root"
  fi
  import "$archive"
}

build_pause() { # ROOT ARCHIVE
  local src
  src=$(mktemp -d)
  cat >"$src/pause.c" <<'C'
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
static void quit(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, 0, WNOHANG) > 0) {} }
int main(void) {
  signal(SIGINT, quit);
  signal(SIGTERM, quit);
  signal(SIGCHLD, reap);
  for (;;) pause();
}
C
  gcc -static -O2 -o "$1/pause" "$src/pause.c"
  rm -rf "$src"
  scratch_image localhost/pause:3.10 "$2" "$1" '["/pause"]'
}

build_binary_image() { # NAME BINARY ENTRY USER ROOT ARCHIVE
  install -D -m 0755 "$2" "$5/$(basename "$2")"
  scratch_image "$1" "$6" "$5" "$3" "$4"
}

busybox_root() { # ROOT
  install -D -m 0755 /usr/bin/busybox "$1/bin/busybox"
  local a
  for a in $(/usr/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$1/bin/$a"; done
  mkdir -p "$1/www"
}
build_busybox() { busybox_root "$1"; scratch_image localhost/busybox:cluster "$2" "$1" '["/bin/sh"]'; }

# install_with_libs BINARY ROOT DEST: the binary and the shared libraries (and loader) it links.
install_with_libs() {
  install -D -m 0755 "$1" "$2$3"
  ldd "$1" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | while read -r lib; do
    install -D -m 0755 "$(readlink -f "$lib")" "$2$lib"
  done
}

start=$(now_ms)
cached localhost/pause:3.10 "$(gcc --version | head -1 | sha256sum | cut -c1-8)" build_pause
cached "localhost/coredns:cluster" "$(digest "$BIN/coredns")" \
  build_binary_image localhost/coredns:cluster "$BIN/coredns" '["/coredns"]' 0:0
cached localhost/busybox:cluster "$(digest /usr/bin/busybox)" build_busybox
for c in kustomize-controller helm-controller notification-controller; do
  if [ -x "$BIN/$c" ]; then
    cached "localhost/$c:cluster" "$(digest "$BIN/$c")" \
      build_binary_image "localhost/$c:cluster" "$BIN/$c" "[\"/$c\"]" 65534:65534
  fi
done
WEED_BIN=${WEED_BIN:-$(bash "$REPO_DIR/tests/s3/seaweedfs.sh")}
if [ -x "$WEED_BIN" ]; then
  cached localhost/seaweedfs:cluster "$(digest "$WEED_BIN")" \
    build_binary_image localhost/seaweedfs:cluster "$WEED_BIN" '["/weed"]' 65532:65532
fi

# Ours: exactly the script users run, from the given binary (every backend linked).
# EXTERNALSOURCE_CONTROLLER_BIN=none starts a cluster without it.
binary=${EXTERNALSOURCE_CONTROLLER_BIN:-$REPO_DIR/target/debug/externalsource-controller}
if [ "$binary" = none ]; then
  clog "images built and imported in $(( $(now_ms) - start ))ms (without ours)"
  exit 0
fi
[ -x "$binary" ] || cdie "$binary missing (cargo build -p externalsource-controller --all-features)"
backends=$("$binary" --list-backends | awk 'NF && $1 != "backend" {print $1}' | xargs)
archive="$CLUSTER_STATE/externalsource-controller.tar"
read -r image _ < <(bash "$REPO_DIR/deploy/image/build.sh" --binary "$binary" --backends "$backends" --tag cluster)
bh push --quiet "$image" "docker-archive:$archive:$image"
bh rmi "$image" >/dev/null 2>&1 || true
import "$archive"
rm -f "$archive"
# The hook executor: our binary and Debian's jq (with their libraries), nothing else.
hroot=$(mktemp -d)
chmod 0755 "$hroot"
install_with_libs "$binary" "$hroot" /usr/local/bin/externalsource-controller
install_with_libs /usr/bin/jq "$hroot" /usr/bin/jq
scratch_image localhost/externalsource-hook-executor:cluster "$CLUSTER_STATE/hook-executor.tar" "$hroot" \
  '["/usr/local/bin/externalsource-controller"]'
rm -rf "$hroot"
import "$CLUSTER_STATE/hook-executor.tar"
rm -f "$CLUSTER_STATE/hook-executor.tar"
# A second tag of the same image, for the upgrade scenarios (a new tag, as a release would be).
ctr -a "$sock" -n k8s.io images tag "$image" "${image%:*}:cluster-next" >/dev/null
clog "images built and imported in $(( $(now_ms) - start ))ms"
