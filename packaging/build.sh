#!/bin/bash
# Build the self-contained cnm-cni bundle (runs on a machine without Python):
#   packaging/build.sh [OUTDIR]          (default: dist/ in the checkout)
# Produces OUTDIR/cnm-cni-VERSION-ARCH/ and OUTDIR/cnm-cni-VERSION-ARCH.tar.gz holding
#   cnm-cni/cnm            the one multi-call executable (PyInstaller one-dir, _internal/ beside it)
#   cnm-cni/<type>         links to it: cnm-bridge cnm-host cnm-none cnm-container cnm-macvlan cnm-overlay cnm-ipam loopback cnmd cnmctl
#   install.sh uninstall.sh common.sh conf/ (example conflists, systemd units)
# Install with: OUTDIR/cnm-cni-VERSION-ARCH/install.sh [--prefix /opt/cni/bin] [--conflist FILE] [--systemd]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(mkdir -p "${1:-$ROOT/dist}" && cd "${1:-$ROOT/dist}" && pwd)
PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || "$ROOT/scripts/setup.sh"
"$PY" -m PyInstaller --version >/dev/null 2>&1 || "$ROOT/.venv/bin/pip" install -q --disable-pip-version-check -e "$ROOT[build]"

VERSION=$("$PY" -c 'import sys; sys.path.insert(0, sys.argv[1]); import cni_plugins; print(cni_plugins.__version__)' "$ROOT")
ARCH=$(uname -m)
NAME="cnm-cni-$VERSION-$ARCH"
WORK=$(mktemp -d /tmp/cnm-build.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

# The build id: the helper handshake refuses a helper whose id differs (an older install), and
# install.sh names the installed bundle after it. Every build has its own (a random tail: two
# builds within a second), so an install of another build always replaces the helper.
SRC_HASH=$(cd "$ROOT" && find cni_plugins packaging -name '*.py' -o -name '*.spec' | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16)
GIT=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo nogit)
echo "$GIT-$SRC_HASH-$(date -u +%Y%m%dT%H%M%SZ)-$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')" > "$WORK/cnm-build-id"

CNM_BUILD_ID_FILE="$WORK/cnm-build-id" "$PY" -m PyInstaller --noconfirm --clean --log-level WARN \
  --workpath "$WORK/build" --distpath "$WORK/dist" "$ROOT/packaging/cnm-cni.spec"

REL="$OUT/$NAME"
rm -rf "$REL" "$REL.tar.gz"
mkdir -p "$REL/conf"
mv "$WORK/dist/cnm-cni" "$REL/cnm-cni"
for link in cnm-bridge cnm-host cnm-none cnm-container cnm-macvlan cnm-overlay cnm-ipam loopback cnmd cnmctl; do
  ln -s cnm "$REL/cnm-cni/$link"
done
cp "$ROOT/packaging/install.sh" "$ROOT/packaging/uninstall.sh" "$ROOT/packaging/common.sh" "$REL/"
cp "$ROOT/packaging/uninstall.sh" "$ROOT/packaging/common.sh" "$REL/cnm-cni/"  # stay with the installed bundle
cp -r "$ROOT/conf/." "$REL/conf/"
tar -C "$OUT" -czf "$REL.tar.gz" "$NAME"
echo "built $REL ($(cat "$WORK/cnm-build-id"))"
echo "install: $REL/install.sh --prefix /opt/cni/bin [--conflist FILE] [--systemd]"
