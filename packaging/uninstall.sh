#!/bin/sh
# Remove exactly what install.sh installed, as recorded in PREFIX/.cnm-cni/manifest (or
# PREFIX/.cnm-cni.manifest, where installs before versioned bundles kept it):
#   uninstall.sh [--prefix DIR]   (default: the prefix this script is installed under,
#                                  else /opt/cni/bin)
# First the helpers it started are stopped: the systemd units it enabled, and every helper
# (cnmd, cnmctl daemon) running from its bundles, however started: each finishes the requests
# in flight and exits, removing its socket (one still running after 340 s is killed and its
# socket removed). A link no longer pointing where it was installed, or a file changed since
# install, is left in place (with a warning); directories install.sh created are removed when
# empty. It takes its turn with the installs of PREFIX (flock PREFIX/.cnm-cni/lock).
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/common.sh"
PREFIX=""
DRAIN_TIMEOUT=340  # as cnmd.service's TimeoutStopSec
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX=$2; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "uninstall.sh: unknown argument $1" >&2; exit 1 ;;
  esac
done
if [ -z "$PREFIX" ]; then
  # Run as PREFIX/cnm-cni/uninstall.sh (HERE is PREFIX/cnm-cni), or from the bundle directory
  # itself (PREFIX/.cnm-cni/<bundle>, or PREFIX/cnm-cni before versioned bundles).
  PHYSICAL=$(cd "$HERE" && pwd -P)
  UP=$(dirname "$HERE")
  if [ -f "$UP/.cnm-cni/manifest" ] || [ -f "$UP/.cnm-cni.manifest" ]; then PREFIX=$UP
  elif [ -f "$PHYSICAL/../manifest" ] || [ -f "$PHYSICAL/../../.cnm-cni.manifest" ]; then
    PREFIX=$(dirname "$(dirname "$PHYSICAL")")
  else PREFIX=/opt/cni/bin; fi
fi
case "$PREFIX" in /*) ;; *) PREFIX=$(pwd)/$PREFIX ;; esac
VERSIONS="$PREFIX/.cnm-cni"
while [ -d "$VERSIONS" ] && [ ! -L "$VERSIONS" ]; do  # our turn (an install in progress finishes first)
  command exec 9>>"$VERSIONS/lock" || { echo "uninstall.sh: cannot open $VERSIONS/lock" >&2; exit 1; }
  flock 9
  if same_file /proc/self/fd/9 "$VERSIONS/lock"; then break; fi
  exec 9>&-  # removed while we waited (another uninstall): look again
done
MANIFEST="$VERSIONS/manifest"
if [ ! -f "$MANIFEST" ]; then MANIFEST="$PREFIX/.cnm-cni.manifest"; fi
[ -f "$MANIFEST" ] || { echo "uninstall.sh: nothing installed in $PREFIX (no $VERSIONS/manifest)" >&2; exit 1; }
KEEP=$(mktemp)  # the manifest is removed with what it lists: read from a copy
trap 'rm -f "$KEEP"' EXIT
cp "$MANIFEST" "$KEEP"
SYSTEMD_UP=0
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then SYSTEMD_UP=1; fi

# The helpers: systemd's first (so that it does not start another), then any other running
# from a bundle of this install.
if grep -q '^unit ' "$KEEP" && command -v systemctl >/dev/null 2>&1; then
  systemctl disable --now cnmd.socket >/dev/null 2>&1 || true
  systemctl stop cnmd.service >/dev/null 2>&1 || true
fi
REAL_PREFIX=$(cd "$PREFIX" && pwd -P)
for pid in $(helper_pids "$REAL_PREFIX/.cnm-cni" "$REAL_PREFIX/cnm-cni"); do
  if stop_helper "$pid" "$DRAIN_TIMEOUT" kill; then
    echo "uninstall.sh: stopped the helper pid $pid"
  else
    echo "uninstall.sh: the helper pid $pid does not stop" >&2
  fi
done

# Newest first: undo in reverse order of installation; created directories last.
undo() {
  tac "$KEEP" | while read -r kind path extra; do
    case "$1:$kind" in
      files:link)
        if [ -L "$path" ] && [ "$(readlink "$path")" = "$extra" ]; then rm -f "$path"
        elif [ -e "$path" ] || [ -L "$path" ]; then echo "uninstall.sh: keeping $path (changed since install)" >&2; fi ;;
      files:file)
        if [ -f "$path" ] && [ "$(sha256sum "$path" | cut -d' ' -f1)" = "$extra" ]; then rm -f "$path"
        elif [ -e "$path" ]; then echo "uninstall.sh: keeping $path (changed since install)" >&2; fi ;;
      files:tree) rm -rf "$path" ;;
      files:mkdir|files:unit) ;;
      *) echo "uninstall.sh: unknown manifest entry '$kind $path'" >&2 ;;
    esac
  done
}
undo files
if grep -q '^file .*/systemd/' "$KEEP" && [ "$SYSTEMD_UP" = 1 ]; then
  systemctl daemon-reload || true
fi
rm -f "$MANIFEST" "$PREFIX/.cnm-cni.manifest"
# Created directories, children before parents whatever their order in the manifest (two
# installs racing into a fresh prefix each record the part of the path they made).
awk '$1 == "mkdir" { print $2 }' "$KEEP" | sort -r | while read -r path; do rmdir "$path" 2>/dev/null || true; done
echo "uninstalled cnm-cni from $PREFIX"
