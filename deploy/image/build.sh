#!/usr/bin/env bash
# Builds a slim externalsource-controller OCI image without a registry or a base image: buildah
# assembles it FROM scratch out of the binary, the shared libraries it links (glibc), the CA
# bundle and a nonroot passwd entry; the same layout as the Dockerfile's distroless image
# (binary at /externalsource-controller, user 65532, entrypoint the binary, command `run`).
#
#   deploy/image/build.sh                                   # memory only: localhost/externalsource-controller:latest
#   deploy/image/build.sh --backends filesystem             # ...:latest-filesystem
#   deploy/image/build.sh --backends "memory filesystem s3" --tag full
#   deploy/image/build.sh --binary target/debug/externalsource-controller --backends memory
#   deploy/image/build.sh --backends s3 --archive /tmp/esc-s3.tar   # also an OCI archive to load
#
# Needs buildah (Debian: apt-get install buildah). Without --binary it builds the release binary
# with exactly those cargo features (`--no-default-features --features "<backends>"`).
# Prints the image name and its size. BUILDAH_FLAGS (default `--storage-driver vfs`, which works
# in unprivileged sandboxes) is passed to every buildah call; use the same storage for podman.
set -euo pipefail
cd "$(dirname "$0")/../.."

backends=memory
binary=""
tag=""
archive=""
while [ $# -gt 0 ]; do
  case "$1" in
    --backends) backends=$2; shift 2 ;;
    --binary) binary=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    --archive) archive=$2; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
features=$(echo "$backends" | tr ',' ' ' | xargs)
if [ -z "$tag" ]; then
  case "$features" in
    memory) tag=latest ;;
    *" "*) tag=full ;;
    *) tag="latest-$features" ;;
  esac
fi
image="localhost/externalsource-controller:$tag"
read -r -a bflags <<<"${BUILDAH_FLAGS:---storage-driver vfs}"

if [ -z "$binary" ]; then
  cargo build --release --locked -p externalsource-controller --no-default-features --features "$features" >&2
  binary=target/release/externalsource-controller
fi
[ -x "$binary" ] || { echo "build.sh: $binary is not an executable" >&2; exit 2; }
# The binary must link exactly the asked backends: an image tagged s3 that holds memory is a lie.
linked=$("$binary" --list-backends | awk 'NF && $1 != "backend" {print $1}' | sort | xargs)
wanted=$(echo "$features" | tr ' ' '\n' | sort | xargs)
if [ "$linked" != "$wanted" ]; then
  echo "build.sh: $binary links backends [$linked], not [$wanted]" >&2
  exit 2
fi

root=$(mktemp -d)
chmod 0755 "$root"
ctr=""
# The working container is removed by `commit --rm`; this removes it only after a failure.
cleanup() { [ -z "$ctr" ] || buildah "${bflags[@]}" rm "$ctr" >/dev/null 2>&1 || true; rm -rf "$root"; }
trap cleanup EXIT
install -D -m 0755 "$binary" "$root/externalsource-controller"
# The shared libraries and the loader, at the paths the binary asks for.
ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | while read -r lib; do
  install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
done
ca=/etc/ssl/certs/ca-certificates.crt
[ -s "$ca" ] || { echo "build.sh: $ca missing (apt-get install ca-certificates)" >&2; exit 2; }
install -D -m 0644 "$ca" "$root$ca"
mkdir -p "$root/etc" "$root/tmp" "$root/home/nonroot"
chmod 1777 "$root/tmp"
chown 65532:65532 "$root/home/nonroot"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"

ctr=$(buildah "${bflags[@]}" from scratch)
buildah "${bflags[@]}" copy "$ctr" "$root/" / >/dev/null
buildah "${bflags[@]}" config \
  --entrypoint '["/externalsource-controller"]' --cmd run --user 65532:65532 \
  --port 8080 --port 8081 --env SSL_CERT_FILE="$ca" \
  --label org.opencontainers.image.title=externalsource-controller \
  --label "org.opencontainers.image.description=Turns HTTP resources into Flux ExternalArtifacts (backends: $features)" \
  --label org.opencontainers.image.licenses=Apache-2.0 \
  "$ctr"
buildah "${bflags[@]}" commit --quiet --rm "$ctr" "$image" >/dev/null
ctr=""
if [ -n "$archive" ]; then
  rm -f "$archive"
  buildah "${bflags[@]}" push --quiet "$image" "oci-archive:$archive:$image"
fi
# The image is one layer of exactly these files.
echo "$image $(du -sb "$root" | cut -f1)"
