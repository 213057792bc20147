#!/bin/bash
# Prepare a fresh Debian machine (as root) to run cnm-cni from this checkout:
# apt packages for the kernel tools and the reference plugins, and .venv with
# Debian's python3 (the interpreter bin/ runs under).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# containerd, runc, busybox-static: the CRI end-to-end test (tests/e2e/test_cri.py) runs a private containerd.
# libpython3.11: PyInstaller bundles it (packaging/build.sh); systemd-socket-activate (systemd): the
# bundle test's socket activation; time (GNU time): bench/ measures a plugin exec's peak RSS with it.
# etcd-server: the overlay's tests run throwaway etcd clusters (tests/etcd_support.py); openssl: their TLS certs.
# golang-github-containernetworking-plugin-dnsname (with dnsmasq) and aardvark-dns: the name servers
# bench/names.py measures ours against.
APT_PACKAGES=(python3 python3-venv iproute2 nftables conntrack iputils-ping containernetworking-plugins kmod containerd runc busybox-static libpython3.11 systemd time etcd-server openssl golang-github-containernetworking-plugin-dnsname aardvark-dns)

. "$ROOT/scripts/apt-install.sh"
apt_install "${APT_PACKAGES[@]}"

if [ ! -x "$ROOT/.venv/bin/python" ]; then
  /usr/bin/python3 -m venv "$ROOT/.venv"
fi
"$ROOT/.venv/bin/pip" install -q --disable-pip-version-check -e "$ROOT[test,build]"
modprobe br_netfilter 2>/dev/null || true
