#!/bin/sh
# Remove exactly what install.sh installed, as recorded in PREFIX/.cnm-cni.manifest:
#   uninstall.sh [--prefix DIR]   (default: the prefix this script is installed under,
#                                  else /opt/cni/bin)
# A link no longer pointing at our bundle, or a file changed since install, is left in
# place (with a warning); directories install.sh created are removed when empty.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
PREFIX=""
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX=$2; shift 2 ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "uninstall.sh: unknown argument $1" >&2; exit 1 ;;
  esac
done
if [ -z "$PREFIX" ]; then
  if [ -f "$HERE/../.cnm-cni.manifest" ]; then PREFIX=$(dirname "$HERE"); else PREFIX=/opt/cni/bin; fi
fi
MANIFEST="$PREFIX/.cnm-cni.manifest"
[ -f "$MANIFEST" ] || { echo "uninstall.sh: nothing installed in $PREFIX (no $MANIFEST)" >&2; exit 1; }

# Newest first: undo in reverse order of installation; created directories last.
undo() {
  tac "$MANIFEST" | while read -r kind path extra; do
    case "$1:$kind" in
      files:unit)
        if command -v systemctl >/dev/null 2>&1; then
          systemctl disable --now "$path" >/dev/null 2>&1 || true
          systemctl stop cnmd.service >/dev/null 2>&1 || true
        fi ;;
      files:link)
        if [ -L "$path" ] && [ "$(readlink "$path")" = "$extra" ]; then rm -f "$path"
        elif [ -e "$path" ] || [ -L "$path" ]; then echo "uninstall.sh: keeping $path (changed since install)" >&2; fi ;;
      files:file)
        if [ -f "$path" ] && [ "$(sha256sum "$path" | cut -d' ' -f1)" = "$extra" ]; then rm -f "$path"
        elif [ -e "$path" ]; then echo "uninstall.sh: keeping $path (changed since install)" >&2; fi ;;
      files:tree) rm -rf "$path" ;;
      dirs:mkdir) rmdir "$path" 2>/dev/null || true ;;
      files:mkdir|dirs:*) ;;
      *) echo "uninstall.sh: unknown manifest entry '$kind $path'" >&2 ;;
    esac
  done
}
undo files
if grep -q '^file .*/systemd/' "$MANIFEST" && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  systemctl daemon-reload || true
fi
KEEP=$(mktemp)
cp "$MANIFEST" "$KEEP"
rm -f "$MANIFEST"
MANIFEST=$KEEP
undo dirs
rm -f "$KEEP"
echo "uninstalled cnm-cni from $PREFIX"
