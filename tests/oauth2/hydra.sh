#!/usr/bin/env bash
# Builds Ory Hydra (the OAuth2 server the client-credentials tests get tokens from) from the Go
# module proxy once, into a cache outside the checkout, and prints the path of its binary on stdout.
#
#   export OAUTH2_SERVER_BIN="$(tests/oauth2/hydra.sh)" && cargo test -p externalsource-tests --test oauth2
#
# Hydra grants client_credentials (RFC 6749 §4.4) and introspects tokens (RFC 7662); the tests run
# it with its in-memory SQLite store, which needs cgo and the `sqlite` build tag. Dex, the first
# choice, is not served by the module proxy at a version that grants client credentials.
# Hydra is built as the main module from a copy of its source, so its go.mod's replace of
# gobuffalo/pop applies; its replace of its own API client points at a directory the module's
# zip leaves out (a nested module), so that one line is dropped and the published client of the
# version it requires is used.
# Go is used here only to build this third-party binary; the product contains no Go.
set -euo pipefail

VERSION="${HYDRA_VERSION:-2.3.0}"
CACHE="${EXTERNALSOURCE_CACHE:-$HOME/.cache/externalsource}/oauth2/hydra-${VERSION}"
BIN="$CACHE/hydra"

version_of() { "$1" version 2>/dev/null | awk '$1 == "Version:" {print $2}'; }

# An explicit binary of the pinned version wins; then the cached one.
for candidate in "${OAUTH2_SERVER_BIN:-}" "$BIN"; do
    if [[ -n "$candidate" && -x "$candidate" && "$(version_of "$candidate")" == "v${VERSION}" ]]; then
        echo "$candidate"
        exit 0
    fi
done

export GOTOOLCHAIN=local CGO_ENABLED=1 GOFLAGS=-mod=mod
start=$SECONDS
mkdir -p "$CACHE"
src=$(cd "$CACHE" && go mod download -json "github.com/ory/hydra/v2@v${VERSION}" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
dir="$CACHE/build"
rm -rf "$dir" && cp -r "$src" "$dir" && chmod -R u+w "$dir"
sed -i '\|^replace github.com/ory/hydra-client-go/v2 => ./internal/httpclient$|d' "$dir/go.mod"
(cd "$dir" && go build -trimpath -tags sqlite,sqlite_omit_load_extension \
    -ldflags "-s -w -X github.com/ory/hydra/v2/driver/config.Version=v${VERSION}" -o "$BIN.tmp" . >&2)
mv "$BIN.tmp" "$BIN"
rm -rf "$dir"
echo "oauth2: hydra ${VERSION} built in $((SECONDS - start))s" >&2
echo "$BIN"
