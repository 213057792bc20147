#!/bin/bash
# The main job, end to end on this machine (as root): real network namespaces
# networked by the plugins in bin/, exactly as a container runtime calls them.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
"$ROOT/scripts/setup.sh"
export CNI_PATH="$ROOT/bin"
TAG=demo$$
NS_NONE=cnm-$TAG-none
cleanup() {
  call cnm-none DEL "$TAG-none" "/run/netns/$NS_NONE" lo "$(conf none cnm-none)" >/dev/null 2>&1 || true
  call cnm-host DEL "$TAG-host" /proc/self/ns/net eth0 "$(conf host cnm-host)" >/dev/null 2>&1 || true
  ip netns del "$NS_NONE" 2>/dev/null || true
}
conf() { printf '{"cniVersion":"1.1.0","name":"%s","type":"%s"}' "$1" "$2"; }
call() {  # plugin command container netns ifname config
  echo "$6" | CNI_COMMAND=$2 CNI_CONTAINERID=$3 CNI_NETNS=$4 CNI_IFNAME=$5 "$ROOT/bin/$1"
}
trap cleanup EXIT

echo "== none: a sandbox with loopback only (docker run --net=none)"
ip netns add "$NS_NONE"
call cnm-none ADD "$TAG-none" "/run/netns/$NS_NONE" lo "$(conf none cnm-none)"
echo "-- inside the sandbox:"; ip netns exec "$NS_NONE" ip -br addr
call cnm-none CHECK "$TAG-none" "/run/netns/$NS_NONE" lo "$(conf none cnm-none)" && echo "-- CHECK ok"
call cnm-none DEL "$TAG-none" "/run/netns/$NS_NONE" lo "$(conf none cnm-none)" && echo "-- DEL ok"

echo; echo "== host: the host's own stack (docker run --net=host)"
call cnm-host ADD "$TAG-host" /proc/self/ns/net eth0 "$(conf host cnm-host)"
call cnm-host DEL "$TAG-host" /proc/self/ns/net eth0 "$(conf host cnm-host)" && echo "-- DEL ok (host untouched)"
