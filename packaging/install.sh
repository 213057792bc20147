#!/bin/sh
# Install the cnm-cni bundle this script ships with (run as root):
#   install.sh [--prefix DIR] [--conflist FILE]... [--netconf-dir DIR] [--loopback]
#              [--cnmctl-link DIR] [--systemd] [--systemd-dir DIR]
#   --prefix DIR       CNI bin dir (default /opt/cni/bin): DIR/cnm-cni/ plus links
#                      cnm-bridge cnm-host cnm-none cnm-container cnm-ipam in DIR
#   --conflist FILE    also copy FILE into --netconf-dir (default /etc/cni/net.d)
#   --loopback         also link DIR/loopback (containerd's loopback slot -> cnm-none)
#   --cnmctl-link DIR  also link DIR/cnmctl (e.g. /usr/local/sbin)
#   --systemd          install cnmd.socket/.service into --systemd-dir (default
#                      /etc/systemd/system) and enable the socket when systemd runs
#   --no-enable        with --systemd: install the units, do not enable or start them
# Every path created is recorded in DIR/.cnm-cni.manifest; DIR/cnm-cni/uninstall.sh (or
# uninstall.sh --prefix DIR) removes exactly those. Installing over an existing install
# uninstalls it first; a file that is not ours is never overwritten.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
PREFIX=/opt/cni/bin
NETCONF=/etc/cni/net.d
SYSTEMD_DIR=/etc/systemd/system
CONFLISTS=""
LOOPBACK=0
CNMCTL_LINK=""
SYSTEMD=0
ENABLE=1
PLUGINS="cnm-bridge cnm-host cnm-none cnm-container cnm-ipam"

die() { echo "install.sh: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX=$2; shift 2 ;;
    --conflist) [ -f "$2" ] || die "no such conflist: $2"; CONFLISTS="$CONFLISTS $(cd "$(dirname "$2")" && pwd)/$(basename "$2")"; shift 2 ;;
    --netconf-dir) NETCONF=$2; shift 2 ;;
    --loopback) LOOPBACK=1; shift ;;
    --cnmctl-link) CNMCTL_LINK=$2; shift 2 ;;
    --systemd) SYSTEMD=1; shift ;;
    --no-enable) ENABLE=0; shift ;;
    --systemd-dir) SYSTEMD_DIR=$2; shift 2 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
[ -x "$HERE/cnm-cni/cnm" ] || die "no bundle next to this script ($HERE/cnm-cni/cnm)"
for p in "$PREFIX" "$NETCONF" "$SYSTEMD_DIR" "$CNMCTL_LINK" $CONFLISTS; do
  case "$p" in *" "*|*"	"*) die "paths with blanks are not supported: '$p'" ;; esac
done
case "$PREFIX" in /*) ;; *) PREFIX=$(pwd)/$PREFIX ;; esac
MANIFEST="$PREFIX/.cnm-cni.manifest"
if [ -f "$MANIFEST" ]; then
  echo "install.sh: replacing the cnm-cni installed in $PREFIX"
  sh "$HERE/uninstall.sh" --prefix "$PREFIX"
fi

# Refuse before changing anything when a target exists that is not ours.
targets="$PREFIX/cnm-cni"
for t in $PLUGINS; do targets="$targets $PREFIX/$t"; done
[ "$LOOPBACK" = 1 ] && targets="$targets $PREFIX/loopback"
[ -n "$CNMCTL_LINK" ] && targets="$targets $CNMCTL_LINK/cnmctl"
for c in $CONFLISTS; do targets="$targets $NETCONF/$(basename "$c")"; done
[ "$SYSTEMD" = 1 ] && targets="$targets $SYSTEMD_DIR/cnmd.socket $SYSTEMD_DIR/cnmd.service"
for t in $targets; do
  if [ -e "$t" ] || [ -L "$t" ]; then die "$t exists and is not from this install; remove it or choose another place"; fi
done

new_dir() {  # mkdir -p, recording each directory created
  d=$1; missing=""
  while [ ! -d "$d" ]; do missing="$d $missing"; d=$(dirname "$d"); done
  for m in $missing; do mkdir -m 0755 "$m"; echo "mkdir $m" >> "$MTMP"; done
}
file_sum() { sha256sum "$1" | cut -d' ' -f1; }

MTMP=$(mktemp)
trap 'rm -f "$MTMP"' EXIT
new_dir "$PREFIX"
cp -a "$HERE/cnm-cni" "$PREFIX/cnm-cni"
echo "tree $PREFIX/cnm-cni" >> "$MTMP"
plugins="$PLUGINS"
[ "$LOOPBACK" = 1 ] && plugins="$plugins loopback"
for t in $plugins; do
  ln -s cnm-cni/cnm "$PREFIX/$t"
  echo "link $PREFIX/$t cnm-cni/cnm" >> "$MTMP"
done
if [ -n "$CNMCTL_LINK" ]; then
  new_dir "$CNMCTL_LINK"
  ln -s "$PREFIX/cnm-cni/cnmctl" "$CNMCTL_LINK/cnmctl"
  echo "link $CNMCTL_LINK/cnmctl $PREFIX/cnm-cni/cnmctl" >> "$MTMP"
fi
for c in $CONFLISTS; do
  new_dir "$NETCONF"
  install -m 0644 "$c" "$NETCONF/$(basename "$c")"
  echo "file $NETCONF/$(basename "$c") $(file_sum "$NETCONF/$(basename "$c")")" >> "$MTMP"
done
if [ "$SYSTEMD" = 1 ]; then
  new_dir "$SYSTEMD_DIR"
  for u in cnmd.socket cnmd.service; do
    sed "s|@PREFIX@|$PREFIX|g" "$HERE/conf/systemd/$u" > "$SYSTEMD_DIR/$u"
    chmod 0644 "$SYSTEMD_DIR/$u"
    echo "file $SYSTEMD_DIR/$u $(file_sum "$SYSTEMD_DIR/$u")" >> "$MTMP"
  done
  if [ "$ENABLE" = 1 ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    systemctl daemon-reload
    systemctl enable --now cnmd.socket
    echo "unit cnmd.socket" >> "$MTMP"
  fi
fi
install -m 0644 "$MTMP" "$MANIFEST"
echo "installed cnm-cni into $PREFIX ($(wc -l < "$MANIFEST") entries in $MANIFEST)"
