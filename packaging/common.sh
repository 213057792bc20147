# Shell functions shared by install.sh and uninstall.sh (sourced; POSIX sh, Linux /proc).
# sh has no local variables: a function's own are named _fn_*.

# True while process $1 runs (a zombie has exited: its parent has not reaped it yet).
alive() {
  [ -d "/proc/$1" ] || return 1
  ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

# True when process $1 is a helper by its command line: argv[0] named cnmd, or cnmctl with
# `daemon` among its arguments (a plugin exec runs the same executable under another name).
is_helper() {
  tr '\0' '\n' < "/proc/$1/cmdline" 2>/dev/null | awk '
    NR == 1 { name = $0; sub(/.*\//, "", name); if (name == "cnmd") found = 1; ctl = (name == "cnmctl") }
    NR > 1 && ctl && $0 == "daemon" { found = 1 }
    END { exit !found }'
}

# The pids of the helpers whose executable lies under one of the directories given.
helper_pids() {
  for _hp_proc in /proc/[0-9]*; do
    _hp_exe=$(readlink "$_hp_proc/exe" 2>/dev/null) || continue
    for _hp_dir in "$@"; do
      case "$_hp_exe" in
        "$_hp_dir"/*) if is_helper "${_hp_proc#/proc/}"; then echo "${_hp_proc#/proc/}"; fi; break ;;
      esac
    done
  done
}

# The unix socket paths process $1 listens on (to clean up after one that had to be killed).
listening_paths() {
  for _lp_fd in /proc/"$1"/fd/*; do
    _lp_link=$(readlink "$_lp_fd" 2>/dev/null) || continue
    case "$_lp_link" in
      "socket:["*"]") _lp_inode=${_lp_link#socket:\[}; _lp_inode=${_lp_inode%\]}
                      awk -v i="$_lp_inode" '$7 == i && $8 != "" { print $8 }' /proc/net/unix ;;
    esac
  done
}

# SIGTERM to helper $1: it stops accepting, finishes the requests in flight and exits,
# removing its socket. Waits up to $2 seconds; then, with $3 = kill, SIGKILL and remove the
# sockets it listened on. Returns 1 if it still runs.
stop_helper() {
  _sh_ticks=0
  _sh_paths=$(listening_paths "$1")
  kill -TERM "$1" 2>/dev/null || return 0
  while alive "$1"; do
    if [ "$_sh_ticks" -ge $(($2 * 10)) ]; then
      [ "${3:-}" = kill ] || return 1
      kill -KILL "$1" 2>/dev/null || true
      sleep 1
      for _sh_path in $_sh_paths; do if [ -S "$_sh_path" ]; then rm -f "$_sh_path"; fi; done
      ! alive "$1"
      return
    fi
    sleep 0.1; _sh_ticks=$((_sh_ticks + 1))
  done
}

# True when some process maps a file under directory $1 (runs from it, or loaded from it).
in_use() {
  grep -qsF "$1/" /proc/[0-9]*/maps 2>/dev/null
}

# True when $1 and $2 name the same file ($1 may be a /proc/*/fd/* link to an unlinked one).
same_file() {
  _sf_a=$(stat -L -c %d:%i "$1" 2>/dev/null) || return 1
  [ "$_sf_a" = "$(stat -c %d:%i "$2" 2>/dev/null)" ]
}
