#!/bin/bash
# The main job, end to end on this machine (as root): real network namespaces
# networked by the plugins in bin/, called exactly as a runtime calls them
# (through cnmctl, a libcni-compatible runner). Leaves nothing behind.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
"$ROOT/scripts/setup.sh"
export CNI_PATH="$ROOT/bin" NETCONFPATH="$ROOT/conf"
CNMCTL="$ROOT/bin/cnmctl"
T=demo$$
BRIDGE_EXISTED=$(ip link show cnm0 >/dev/null 2>&1 && echo yes || echo no)
TABLES_EXISTED=$(nft list table inet cnm >/dev/null 2>&1 && echo yes || echo no)
SERVER_PID=

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
  for name in "$T-proxy" "$T-web" "$T-client" "$T-none"; do
    "$CNMCTL" rm "$name" >/dev/null 2>&1 || true
  done
  "$CNMCTL" del host /proc/self/ns/net >/dev/null 2>&1 || true
  # The demo made the bridge and our nftables tables: leave the machine as it was.
  if [ "$BRIDGE_EXISTED" = no ]; then ip link del cnm0 2>/dev/null || true; fi
  if [ "$TABLES_EXISTED" = no ]; then
    nft delete table inet cnm 2>/dev/null || true
    nft delete table bridge cnm 2>/dev/null || true
  fi
}
trap cleanup EXIT

step "none (docker run --net=none): a sandbox with loopback only"
"$CNMCTL" run -n none "$T-none"
ip netns exec "$T-none" ip -br addr

step "host (docker run --net=host): the host's own stack, nothing changed"
"$CNMCTL" add host /proc/self/ns/net | head -c 400; echo " ..."
"$CNMCTL" del host /proc/self/ns/net && echo "DEL ok"

step "bridge (docker run): two sandboxes on network cnm-demo (conf/bridge.conflist)"
"$CNMCTL" run -n cnm-demo "$T-web"
"$CNMCTL" run -n cnm-demo "$T-client"
WEB_IP=$(ip netns exec "$T-web" ip -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1)
echo "web has $WEB_IP"
ip netns exec "$T-client" ping -c 2 -W 2 "$WEB_IP"
ip netns exec "$T-client" ping -c 1 -W 2 10.88.0.1 >/dev/null && echo "client reaches the gateway 10.88.0.1"

step "container (docker run --net=container:web): a proxy sharing web's stack"
ip netns exec "$T-web" python3 -c '
import socket; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 8080)); s.listen(); s.settimeout(30)
c, _ = s.accept(); c.sendall(b"hello from web on 127.0.0.1:8080\n"); c.close()' &
SERVER_PID=$!
sleep 0.5
"$CNMCTL" run --join "$T-web" "$T-proxy" | head -c 300; echo " ..."
ip netns exec "$T-proxy" python3 -c '
import socket; s = socket.create_connection(("127.0.0.1", 8080), timeout=5); print("proxy got:", s.recv(100).decode().strip())'

step "CNM state (cnmctl network ls / endpoint ls)"
"$CNMCTL" network ls || true
"$CNMCTL" endpoint ls || true

step "teardown"
"$CNMCTL" rm "$T-proxy"; "$CNMCTL" rm "$T-web"; "$CNMCTL" rm "$T-client"; "$CNMCTL" rm "$T-none"
echo "all sandboxes removed"
