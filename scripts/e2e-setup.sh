#!/bin/bash
# Prepare this machine (as root, Debian 12) for the real-runtime e2e tests (tests/e2e):
# containerd 1.6 + ctr, podman 4.3, busybox-static for the container rootfs, and cnitool
# built from Debian's own packages into $ROOT/.tools/bin (a cache: built once).
# Idempotent and quick when everything is there; the e2e tests call it themselves.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
APT_PACKAGES=(containerd runc podman golang-go golang-github-appc-cni-dev busybox-static util-linux iproute2 nftables wget)

. "$ROOT/scripts/apt-install.sh"
apt_install "${APT_PACKAGES[@]}"

# cnitool: shared/ sits beside the clone (../shared), read-only in CI.
TOOLS=${CNM_TOOLS_DIR:-$ROOT/.tools/bin}
if [ ! -x "$TOOLS/cnitool" ]; then
  BUILD=${CNITOOL_BUILD:-$ROOT/../shared/tools/build-cnitool.sh}
  [ -x "$BUILD" ] || BUILD=/work/shared/tools/build-cnitool.sh
  "$BUILD" "$TOOLS" >&2
fi
