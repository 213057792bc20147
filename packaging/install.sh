#!/bin/sh
# Install the cnm-cni bundle this script ships with, or upgrade an install in place (as root):
#   install.sh [--prefix DIR] [--conflist FILE]... [--netconf-dir DIR] [--loopback]
#              [--cnmctl-link DIR] [--systemd] [--systemd-dir DIR] [--no-enable] [--force]
#   --prefix DIR       CNI bin dir (default /opt/cni/bin): the plugin links cnm-bridge cnm-host
#                      cnm-none cnm-container cnm-ipam, DIR/cnm-cni (the bundle) and DIR/.cnm-cni/
#   --conflist FILE    also copy FILE into --netconf-dir (default /etc/cni/net.d)
#   --loopback         also link DIR/loopback (containerd's loopback slot -> cnm-none)
#   --cnmctl-link DIR  also link DIR/cnmctl (e.g. /usr/local/sbin)
#   --systemd          install cnmd.socket/.service into --systemd-dir (default
#                      /etc/systemd/system) and enable the socket when systemd runs
#   --no-enable        with --systemd: install the units, do not enable or start them
#   --force            replace a conflist or unit edited since it was installed
# Every bundle lives in DIR/.cnm-cni/<build>.<time>.<pid>/; DIR/.cnm-cni/current names the one
# in use, and everything points through it: the plugin links, DIR/cnm-cni, the cnmctl link, the
# unit. An upgrade stages the new bundle and every file it writes beside the old ones, then
# switches with rename(2)s, `current` first, so an exec runs the old files or the new ones,
# never a mix. Every check (targets, writable directories) runs before anything changes, and a
# step that fails after the switch switches back: an install that fails leaves the previous
# one as it was. Installs and uninstalls of one DIR take turns (flock DIR/.cnm-cni/lock).
# Over a previous install, what it set up stays (its conflists, links and units; options add to
# it); a conflist or unit edited since it was installed is kept, and said so, unless --force.
# The previous bundle's helper is restarted (systemd) or told to drain and exit (started by
# hand); a previous bundle is removed at a later install once nothing runs from it.
# Every path created is recorded in DIR/.cnm-cni/manifest (read from DIR/.cnm-cni.manifest,
# where installs before it kept it, and moved: an install.sh from before versioned bundles then
# refuses this install instead of uninstalling it); DIR/cnm-cni/uninstall.sh (or uninstall.sh
# --prefix DIR) removes exactly those. A file that is not ours is never touched.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/common.sh"
PREFIX=/opt/cni/bin
NETCONF=/etc/cni/net.d
SYSTEMD_DIR=/etc/systemd/system
SYSTEMD_DIR_GIVEN=0
CONFLISTS=""
LOOPBACK=0
CNMCTL_DIRS=""
SYSTEMD=0
SYSTEMD_GIVEN=0
ENABLE=1
FORCE=0
PLUGINS="cnm-bridge cnm-host cnm-none cnm-container cnm-macvlan cnm-overlay cnm-ipam"
DRAIN_TIMEOUT=340  # as cnmd.service's TimeoutStopSec: the longest command a helper may finish

die() { echo "install.sh: $*" >&2; exit 1; }
say() { echo "install.sh: $*"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX=$2; shift 2 ;;
    --conflist) [ -f "$2" ] || die "no such conflist: $2"; CONFLISTS="$CONFLISTS $(cd "$(dirname "$2")" && pwd)/$(basename "$2")"; shift 2 ;;
    --netconf-dir) NETCONF=$2; shift 2 ;;
    --loopback) LOOPBACK=1; shift ;;
    --cnmctl-link) CNMCTL_DIRS="$CNMCTL_DIRS $2"; shift 2 ;;
    --systemd) SYSTEMD=1; SYSTEMD_GIVEN=1; shift ;;
    --no-enable) ENABLE=0; shift ;;
    --systemd-dir) SYSTEMD_DIR=$2; SYSTEMD_DIR_GIVEN=1; shift 2 ;;
    --force) FORCE=1; shift ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

# ---- the bundle: checked before the node is looked at ----------------------------------------
[ -x "$HERE/cnm-cni/cnm" ] || die "no bundle next to this script ($HERE/cnm-cni/cnm)"
BUILD=$(cat "$HERE/cnm-cni/_internal/cnm-build-id" 2>/dev/null) || die "no build id in $HERE/cnm-cni"
for p in "$PREFIX" "$NETCONF" "$SYSTEMD_DIR" $CNMCTL_DIRS $CONFLISTS; do
  case "$p" in *" "*|*"	"*) die "paths with blanks are not supported: '$p'" ;; esac
done
case "$PREFIX" in /*) ;; *) PREFIX=$(pwd)/$PREFIX ;; esac
# The bundle must run on this node (architecture, C library) before it replaces anything.
said=$("$HERE/cnm-cni/cnmd" --print-build-id 2>&1) || die "the bundle does not run on this node: $said"
case "$said" in */"$BUILD") ;; *) die "the bundle says it is build '$said', its id file '$BUILD'" ;; esac
command -v flock >/dev/null 2>&1 || die "flock (util-linux) is needed: installs of one prefix take turns"

VERSIONS="$PREFIX/.cnm-cni"
CURRENT="$VERSIONS/current"
MANIFEST="$VERSIONS/manifest"
LEGACY_MANIFEST="$PREFIX/.cnm-cni.manifest"  # where installs before this one kept it
OLD=$(mktemp)
NEW=$(mktemp)
RENDERED=$(mktemp -d)
JOURNAL="$RENDERED/journal"  # what changed after the switch, to switch back: "kind path before"
: > "$JOURNAL"
MADE=""      # directories this install created, newest first: removed again if it fails
FRESH=0      # 1: DIR/.cnm-cni held no install when this one took its turn: removed if it fails
STAGED=""    # temporary files and directories to remove if the install stops
PENDING=""   # a temporary name to remove if the install stops before renaming it
SWITCHED=0   # 1 once `current` may name the new bundle: a failure switches back
DONE=0
UNITS_CHANGED=0
SYSTEMD_UP=0
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then SYSTEMD_UP=1; fi
NAME=""
PREVIOUS=""
PREV_BUILD=""
cleanup() {
  if [ "$DONE" != 1 ]; then
    if [ -n "$PENDING" ]; then rm -f "$PENDING"; fi
    if [ "$SWITCHED" = 1 ]; then roll_back; fi
    for _c_path in $STAGED; do  # (a bundle an exec started in after the switch: the next install)
      if [ -d "$_c_path" ] && in_use "$_c_path"; then continue; fi
      rm -rf "$_c_path"
    done
    if [ "$FRESH" = 1 ]; then rm -rf "$VERSIONS"; fi
    for _c_path in $MADE; do rmdir "$_c_path" 2>/dev/null || true; done
  fi
  rm -rf "$OLD" "$NEW" "$NEW.lines" "$RENDERED"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

# (sh has no local variables: a function's own are named _fn_*)
new_dir() {  # mkdir -p, recording each directory created
  _nd_dir=$1; _nd_missing=""
  while [ ! -d "$_nd_dir" ]; do _nd_missing="$_nd_dir $_nd_missing"; _nd_dir=$(dirname "$_nd_dir"); done
  for _nd_m in $_nd_missing; do
    if mkdir -m 0755 "$_nd_m" 2>/dev/null; then echo "mkdir $_nd_m" >> "$NEW"; MADE="$_nd_m $MADE"
    elif [ ! -d "$_nd_m" ]; then mkdir -m 0755 "$_nd_m"; fi  # (another install made it meanwhile)
  done
}

# A directory this install writes into (or the one it is created in) takes a new file: tried,
# not inferred from permissions (root passes those; a read-only mount does not).
check_writable() {
  _cw_dir=$1
  while [ ! -d "$_cw_dir" ]; do _cw_dir=$(dirname "$_cw_dir"); done
  _cw_probe=$(mktemp "$_cw_dir/.cnm-cni-probe.XXXXXX" 2>&1) || die "cannot write in $_cw_dir (for $1): ${_cw_probe##*: }"
  rm -f "$_cw_probe"
}

# ---- take our turn: one install or uninstall of a prefix at a time ---------------------------
check_writable "$PREFIX"
if [ -L "$VERSIONS" ] || { [ -e "$VERSIONS" ] && [ ! -d "$VERSIONS" ]; }; then
  die "$VERSIONS exists and is not from this install; remove it or choose another place"
fi
while :; do
  if [ ! -d "$VERSIONS" ]; then
    new_dir "$PREFIX"
    mkdir -m 0755 "$VERSIONS" 2>/dev/null || [ -d "$VERSIONS" ] || mkdir -m 0755 "$VERSIONS"
  fi
  command exec 9>>"$VERSIONS/lock" || die "cannot open $VERSIONS/lock"
  flock 9
  if same_file /proc/self/fd/9 "$VERSIONS/lock"; then break; fi
  exec 9>&-  # an uninstall (or a failed first install) removed it while we waited: look again
done
if [ -f "$MANIFEST" ]; then cp "$MANIFEST" "$OLD"
elif [ -f "$LEGACY_MANIFEST" ]; then cp "$LEGACY_MANIFEST" "$OLD"; fi

recorded() { awk -v p="$1" '$2 == p { found = 1 } END { exit !found }' "$OLD"; }
recorded_line() { awk -v p="$1" '$2 == p { print; exit }' "$OLD"; }
file_sum() { sha256sum "$1" | cut -d' ' -f1; }

# DIR/.cnm-cni is ours when recorded, or when it holds nothing but what an install that stopped
# before recording it leaves (the lock, a staged bundle); then an install that fails removes it.
if ! recorded "$VERSIONS"; then
  for _entry in "$VERSIONS"/* "$VERSIONS"/.[!.]*; do
    case "$(basename "$_entry")" in
      lock|.staging.*|"*"|".[!.]*") ;;
      *) die "$VERSIONS exists and is not from this install; remove it or choose another place" ;;
    esac
  done
  FRESH=1
fi

# ---- checks: nothing else changes before all of them pass ----------------------------------
# What the previous install set up stays set up.
while read -r kind path extra; do
  case "$kind:$path" in
    "link:$PREFIX/loopback") LOOPBACK=1 ;;
    link:*/cnmctl) CNMCTL_DIRS="$CNMCTL_DIRS $(dirname "$path")" ;;
    file:*/cnmd.service)
      units=$(dirname "$path")
      if [ "$SYSTEMD" = 1 ] && [ "$SYSTEMD_DIR_GIVEN" = 1 ] && [ "$SYSTEMD_DIR" != "$units" ]; then
        die "the units are installed in $units, not $SYSTEMD_DIR: uninstall first to move them"
      fi
      SYSTEMD=1; SYSTEMD_DIR=$units ;;
  esac
done < "$OLD"
CNMCTL_DIRS=$(for d in $CNMCTL_DIRS; do echo "$d"; done | awk '!seen[$0]++')
LINKS=""
for t in $PLUGINS; do LINKS="$LINKS $PREFIX/$t"; done
if [ "$LOOPBACK" = 1 ]; then LINKS="$LINKS $PREFIX/loopback"; fi

# Each target is absent, or ours (recorded in the manifest); anything else is refused.
check_ours() {
  if { [ -e "$1" ] || [ -L "$1" ]; } && ! recorded "$1"; then
    die "$1 exists and is not from this install; remove it or choose another place"
  fi
}
for t in "$PREFIX/cnm-cni" $LINKS; do check_ours "$t"; done
for d in $CNMCTL_DIRS; do check_ours "$d/cnmctl"; done
for c in $CONFLISTS; do check_ours "$NETCONF/$(basename "$c")"; done
if [ "$SYSTEMD" = 1 ]; then
  for u in cnmd.socket cnmd.service; do check_ours "$SYSTEMD_DIR/$u"; done
fi

# A file of ours is replaced when it is as installed; edited since, it is kept unless --force.
# Prints: new, same, replace or keep.
file_plan() {  # $1 the installed path, $2 the new content
  if [ ! -e "$1" ]; then echo new; return; fi
  _fp_now=$(file_sum "$1")
  if [ "$_fp_now" = "$(file_sum "$2")" ]; then echo same; return; fi
  if [ "$_fp_now" = "$(recorded_line "$1" | cut -d' ' -f3)" ] || [ "$FORCE" = 1 ]; then echo replace; else echo keep; fi
}
if [ "$SYSTEMD" = 1 ]; then
  for u in cnmd.socket cnmd.service; do sed "s|@PREFIX@|$PREFIX|g" "$HERE/conf/systemd/$u" > "$RENDERED/$u"; done
fi
# Every directory written to takes a new file (a read-only mount fails here, not half-way).
check_writable "$VERSIONS"
for d in $CNMCTL_DIRS; do check_writable "$d"; done
if [ -n "$CONFLISTS" ]; then check_writable "$NETCONF"; fi
if [ "$SYSTEMD" = 1 ]; then check_writable "$SYSTEMD_DIR"; fi

# The manifest: the previous install's lines that $1 (this install's) does not redeclare, then
# $1's; directories first, then trees, links, files, units (uninstall undoes them in reverse).
write_manifest() {
  { awk '$1 == "mkdir"' "$OLD"
    awk 'NR == FNR { mine[$2] = 1; next } $1 != "mkdir" && !($2 in mine)' "$1" "$OLD"
    cat "$1"
  } | awk '{ print index("mkdir tree link file unit", $1) "\t" NR "\t" $0 }' |
    sort -t "$(printf '\t')" -k1,1n -k2,2n | cut -f3- > "$MANIFEST.cnm-new.$$"
  PENDING="$MANIFEST.cnm-new.$$"
  chmod 0644 "$PENDING"
  mv -T "$PENDING" "$MANIFEST"
  PENDING=""
}

# ---- stage the new bundle and the new files beside the old ones ------------------------------
if ! recorded "$VERSIONS"; then  # from here on, uninstall knows the new bundle too
  { cat "$NEW"; echo "tree $VERSIONS"; } > "$NEW.lines"
  write_manifest "$NEW.lines"
fi
NAME=$(printf '%s' "$BUILD" | tr -c 'A-Za-z0-9._-' '_').$(date -u +%Y%m%dT%H%M%SZ).$$
STAGED="$STAGED $VERSIONS/.staging.$NAME $VERSIONS/$NAME"
cp -a "$HERE/cnm-cni" "$VERSIONS/.staging.$NAME"
mv -T "$VERSIONS/.staging.$NAME" "$VERSIONS/$NAME"
# The copy in place runs as a runtime will run it (the prefix may be mounted noexec, the copy
# short of space): every plugin answers VERSION, the helper its build, before `current` names it.
for p in cnm-bridge cnm-host cnm-none cnm-container cnm-macvlan cnm-overlay cnm-ipam loopback; do
  said=$(printf '{"cniVersion":"1.0.0"}' | env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin CNI_COMMAND=VERSION \
         "$VERSIONS/$NAME/$p" 2>&1) || die "the bundle copied to $VERSIONS/$NAME does not run there ($p VERSION: $said); nothing changed"
  case "$said" in *supportedVersions*) ;; *) die "$VERSIONS/$NAME/$p VERSION answered: $said; nothing changed" ;; esac
done
said=$("$VERSIONS/$NAME/cnmd" --print-build-id 2>&1) || die "the bundle copied to $VERSIONS/$NAME does not run there (cnmd: $said); nothing changed"
case "$said" in */"$BUILD") ;; *) die "$VERSIONS/$NAME/cnmd says it is build '$said', not $BUILD; nothing changed" ;; esac
PREVIOUS=$(readlink "$CURRENT" 2>/dev/null || true)
if [ -n "$PREVIOUS" ]; then
  PREV_BUILD=$(cat "$VERSIONS/$PREVIOUS/_internal/cnm-build-id" 2>/dev/null || echo "?")
elif [ -d "$PREFIX/cnm-cni" ] && [ ! -L "$PREFIX/cnm-cni" ]; then
  PREV_BUILD=$(cat "$PREFIX/cnm-cni/_internal/cnm-build-id" 2>/dev/null || echo "?")
fi

staged_name() { echo "$(dirname "$1")/.$(basename "$1").cnm-new.$$"; }
stage_file() {  # $1 new content, $2 path: written beside it now, renamed over it by commit_file
  _sf_tmp=$(staged_name "$2")
  STAGED="$STAGED $_sf_tmp"
  install -m 0644 "$1" "$_sf_tmp"
}
FILES=""     # "path:sum" of the files this install owns now
COMMIT=""    # the staged files to rename into place
for c in $CONFLISTS; do
  dst="$NETCONF/$(basename "$c")"
  case "$(file_plan "$dst" "$c")" in
    new|replace) new_dir "$NETCONF"; stage_file "$c" "$dst"; COMMIT="$COMMIT $dst"; FILES="$FILES $dst:$(file_sum "$c")" ;;
    same) FILES="$FILES $dst:$(file_sum "$dst")" ;;
    keep) say "keeping $dst: edited since it was installed (--force replaces it with $c)" ;;
  esac
done
if [ "$SYSTEMD" = 1 ]; then
  for u in cnmd.socket cnmd.service; do
    dst="$SYSTEMD_DIR/$u"
    case "$(file_plan "$dst" "$RENDERED/$u")" in
      new|replace) new_dir "$SYSTEMD_DIR"; stage_file "$RENDERED/$u" "$dst"; COMMIT="$COMMIT $dst"; UNITS_CHANGED=1
                   FILES="$FILES $dst:$(file_sum "$RENDERED/$u")" ;;
      same) FILES="$FILES $dst:$(file_sum "$dst")" ;;
      keep) say "keeping $dst: edited since it was installed (--force replaces it)" ;;
    esac
  done
fi
for d in $CNMCTL_DIRS; do new_dir "$d"; done

# ---- switch: one rename(2) each, journaled ---------------------------------------------------
swap_link() {  # $1 target, $2 link: replace (or create) the link atomically
  if [ "$(readlink "$2" 2>/dev/null || true)" = "$1" ]; then return 0; fi
  PENDING="$2.cnm-new.$$"
  ln -s "$1" "$PENDING"
  mv -T "$PENDING" "$2"
  PENDING=""
}
change_link() {  # swap_link, after noting what $2 was
  _cl_before=$(readlink "$2" 2>/dev/null || echo -)
  if [ "$_cl_before" = "$1" ]; then return 0; fi
  echo "link $2 $_cl_before" >> "$JOURNAL"
  swap_link "$1" "$2"
}
commit_file() {  # $1's staged file takes its place, after keeping a copy of what was there
  if [ -e "$1" ]; then _cf_copy="$RENDERED/before.$(printf '%s' "$1" | tr / _)"; cp -p "$1" "$_cf_copy"; else _cf_copy=-; fi
  echo "file $1 $_cf_copy" >> "$JOURNAL"
  mv -T "$(staged_name "$1")" "$1"
}
roll_back() {  # undo the journal, newest first (only root-owned names of ours are involved)
  tac "$JOURNAL" | while read -r kind path before; do
    case "$kind:$before" in
      link:-|file:-) rm -f "$path" ;;
      link:*) swap_link "$before" "$path" ;;
      file:*) if ! cmp -s "$before" "$path"; then
                cp -p "$before" "$path.cnm-undo.$$" && mv -T "$path.cnm-undo.$$" "$path" || rm -f "$path.cnm-undo.$$"
              fi ;;
      move:*) mv -T "$path" "$before" ;;
    esac || echo "install.sh: could not restore $path" >&2
  done
  if [ "$UNITS_CHANGED" = 1 ] && [ "$SYSTEMD_UP" = 1 ]; then systemctl daemon-reload || true; fi
  if [ -n "$PREV_BUILD" ]; then
    echo "install.sh: a step after the switch failed; switched back: $PREFIX runs build $PREV_BUILD again" >&2
  else
    echo "install.sh: a step after the switch failed; switched back: nothing of this install is left" >&2
  fi
}

SWITCHED=1
change_link "$NAME" "$CURRENT"
say "switched $PREFIX to build $BUILD${PREV_BUILD:+ (was $PREV_BUILD)}"
for l in $LINKS; do change_link ".cnm-cni/current/cnm" "$l"; done
for d in $CNMCTL_DIRS; do change_link "$CURRENT/cnmctl" "$d/cnmctl"; done
for f in $COMMIT; do commit_file "$f"; done

# ---- the helper of the previous bundle -----------------------------------------------------
ENABLED=0
if grep -q '^unit cnmd.socket$' "$OLD"; then ENABLED=1; fi
if [ "$SYSTEMD" = 1 ] && [ "$SYSTEMD_UP" = 1 ]; then
  if [ "$UNITS_CHANGED" = 1 ]; then systemctl daemon-reload; fi
  if [ "$SYSTEMD_GIVEN" = 1 ] && [ "$ENABLE" = 1 ] && [ "$ENABLED" = 0 ]; then
    systemctl enable --now cnmd.socket; ENABLED=1
  fi
  # cnmd.service drains on SIGTERM (KillMode=mixed); the socket stays and starts the new one.
  systemctl try-restart cnmd.service || say "warning: systemctl try-restart cnmd.service failed (see its journal)"
fi
REAL_PREFIX=$(cd "$PREFIX" && pwd -P)
OLD_DIRS=""
for v in "$REAL_PREFIX"/.cnm-cni/*/ "$REAL_PREFIX"/.cnm-cni/.staging.*/; do
  v=${v%/}
  if [ -d "$v" ] && [ ! -L "$v" ] && [ "$(basename "$v")" != "$NAME" ]; then OLD_DIRS="$OLD_DIRS $v"; fi
done
if [ -d "$PREFIX/cnm-cni" ] && [ ! -L "$PREFIX/cnm-cni" ]; then OLD_DIRS="$OLD_DIRS $REAL_PREFIX/cnm-cni"; fi
if [ -n "$OLD_DIRS" ]; then
  for pid in $(helper_pids $OLD_DIRS); do
    exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || continue
    if [ "$(cat "$(dirname "$exe")/_internal/cnm-build-id" 2>/dev/null)" = "$BUILD" ]; then
      continue  # it serves this build
    fi
    say "telling the helper pid $pid of the previous bundle to drain and exit"
    if stop_helper "$pid" "$DRAIN_TIMEOUT"; then
      say "helper pid $pid stopped; start the new one: $PREFIX/cnm-cni/cnmd (or use --systemd)"
    else
      say "helper pid $pid still runs after ${DRAIN_TIMEOUT}s; plugins run in-process until it exits"
    fi
  done
fi

# ---- DIR/cnm-cni names the current bundle --------------------------------------------------
TREES=""
LEGACY_DIR=""
if [ -d "$PREFIX/cnm-cni" ] && [ ! -L "$PREFIX/cnm-cni" ]; then
  # An install from before versioned bundles: its directory goes once nothing runs from it.
  tries=0
  while in_use "$REAL_PREFIX/cnm-cni" && [ "$tries" -lt 300 ]; do sleep 0.1; tries=$((tries + 1)); done
  if in_use "$REAL_PREFIX/cnm-cni"; then
    say "$PREFIX/cnm-cni (the previous bundle) is still in use: the next install removes it"
    TREES="$PREFIX/cnm-cni"
  else
    LEGACY_DIR="$VERSIONS/.old.$$"
    echo "move $LEGACY_DIR $PREFIX/cnm-cni" >> "$JOURNAL"
    mv -T "$PREFIX/cnm-cni" "$LEGACY_DIR"
  fi
fi
if [ -z "$TREES" ]; then change_link ".cnm-cni/current" "$PREFIX/cnm-cni"; fi

# ---- the manifest: the install is complete ---------------------------------------------------
{
  cat "$NEW"  # directories created now
  echo "tree $VERSIONS"
  for t in $TREES; do echo "tree $t"; done
  if [ -z "$TREES" ]; then echo "link $PREFIX/cnm-cni .cnm-cni/current"; fi
  for l in $LINKS; do echo "link $l .cnm-cni/current/cnm"; done
  for d in $CNMCTL_DIRS; do echo "link $d/cnmctl $CURRENT/cnmctl"; done
  for f in $FILES; do echo "file ${f%%:*} ${f##*:}"; done
  if [ "$ENABLED" = 1 ]; then echo "unit cnmd.socket"; fi
} > "$NEW.lines"
write_manifest "$NEW.lines"
DONE=1
rm -f "$LEGACY_MANIFEST"  # (an install.sh from before versioned bundles refuses now: see the header)

# ---- previous bundles nothing runs from any more -------------------------------------------
if [ -n "$LEGACY_DIR" ]; then rm -rf "$LEGACY_DIR" || say "warning: cannot remove $LEGACY_DIR"; fi
for v in $OLD_DIRS; do
  case "$v" in "$REAL_PREFIX/cnm-cni") continue ;; esac
  # The bundle just replaced stays until the next install: an exec that resolved its link
  # just before the switch may not show in /proc yet. The one `current` names now stays too
  # (whatever happened since this install switched it).
  name=$(basename "$v")
  if [ "$name" = "$PREVIOUS" ] || [ "$name" = "$(readlink "$CURRENT" 2>/dev/null || true)" ] || in_use "$v"; then
    continue
  fi
  rm -rf "$v" || say "warning: cannot remove $v"
done
echo "installed cnm-cni build $BUILD into $PREFIX ($(wc -l < "$MANIFEST") entries in $MANIFEST)"
