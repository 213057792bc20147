"""A Kubernetes-like node for the CRI end-to-end test: its own network namespace, a CNI bin
dir and conf dir as an operator installs them, and a private containerd serving the CRI.

What an operator does on a real node (README "Kubernetes"), done here in a temp dir:
  bin dir   cnm-bridge, cnm-ipam, cnm-none -> our multi-call bin/cnm; `loopback` -> cnm
            (containerd always runs `loopback` for the pod's lo); Go `bandwidth` for the
            bandwidth capability.
  conf dir  one .conflist (containerd uses the first by name).
The node's inspection helpers read the kernel and the files each part owns, so a test can
assert that a removed pod left no veth, lease, nftables entry, netns, store record or
libcni cache entry behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass

from .client import PodSpec
from .containerd import Containerd

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
OUR_BIN = os.path.join(ROOT, "bin")
GO_PLUGINS = "/usr/lib/cni"
LIBCNI_CACHE = "/var/lib/cni/results"  # go-cni/libcni's cache, not configurable in containerd 1.6
LOOPBACK_NETWORK = "cni-loopback"  # the name containerd gives its own loopback network


def install_bin_dir(path: str, go_plugins: tuple[str, ...] = ("bandwidth", "host-local")) -> None:
    """A node's CNI bin dir: our plugins as links to bin/cnm, `loopback` served by cnm-none."""
    os.makedirs(path, exist_ok=True)
    for name in ("cnm-bridge", "cnm-ipam", "cnm-none", "cnm-host", "cnm-container"):
        os.symlink(os.path.join(OUR_BIN, "cnm"), os.path.join(path, name))
    os.symlink(os.path.join(OUR_BIN, "cnm"), os.path.join(path, "loopback"))
    for name in go_plugins:
        os.symlink(os.path.join(GO_PLUGINS, name), os.path.join(path, name))


def nsexec(netns_path: str, *argv: str, timeout: float = 30, check: bool = False) -> subprocess.CompletedProcess:
    """Run a host tool inside a network namespace (by path), as `ip netns exec` does for named ones."""
    return subprocess.run(["nsenter", f"--net={netns_path}", *argv], capture_output=True, text=True,
                          timeout=timeout, check=check)


def remove_cgroup(path: str) -> None:
    """rmdir an (empty) cgroup and its empty children in every mounted hierarchy (v1 and v2)."""
    roots = ["/sys/fs/cgroup"] + [os.path.join("/sys/fs/cgroup", d) for d in os.listdir("/sys/fs/cgroup")]
    for root in roots:
        top = os.path.join(root, path.strip("/"))
        if not os.path.isdir(top) or not path.strip("/"):
            continue
        for dirpath, _, _ in sorted(os.walk(top), key=lambda w: len(w[0]), reverse=True):
            try:
                os.rmdir(dirpath)
            except OSError:
                pass


@dataclass
class Pod:
    id: str
    name: str
    ip: str
    netns: str
    host_veth: str
    info: dict


class Node:
    def __init__(self, work: str, netns_name: str, conflist: dict, sandbox_image: str, image_archive: str):
        self.work = work
        self.netns_name = netns_name
        self.netns_path = f"/run/netns/{netns_name}"
        self.conflist = conflist
        self.network = conflist["name"]
        self.bin_dir = os.path.join(work, "cni-bin")
        self.conf_dir = os.path.join(work, "cni-conf")
        self.state_dir = os.path.join(work, "cnm-state")
        self.run_dir = os.path.join(work, "cnm-run")
        self.log_dir = os.path.join(work, "pod-logs")
        self.sandbox_image = sandbox_image
        self.image_archive = image_archive
        self.containerd = Containerd(
            os.path.join(work, "containerd"), self.bin_dir, self.conf_dir, sandbox_image, netns_name,
            # plugins inherit containerd's environment: a private CNM store and run dir; always
            # in-process (a resident helper of the machine's netns could not serve this node anyway)
            env={"CNM_STATE_DIR": self.state_dir, "CNM_RUN_DIR": self.run_dir, "CNM_HELPER_SOCKET": "off"},
        )
        self.client = None
        self.seen_ids: set[str] = set()
        self.k8s_namespace = "cnm-e2e-" + netns_name.lower()  # pods of this node, also in the libcni cache
        self.cgroup_parent = "/" + self.k8s_namespace  # pod cgroups under one parent we remove at the end
        self._netns_made = False

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self):
        subprocess.run(["ip", "netns", "add", self.netns_name], check=True, capture_output=True)
        self._netns_made = True
        subprocess.run(["ip", "-n", self.netns_name, "link", "set", "lo", "up"], check=True)
        install_bin_dir(self.bin_dir)
        os.makedirs(self.conf_dir, exist_ok=True)
        with open(os.path.join(self.conf_dir, "10-cnm.conflist"), "w") as f:
            json.dump(self.conflist, f, indent=2)
        self.client = self.containerd.start()
        self.containerd.import_image(self.image_archive)
        return self

    def stop(self) -> list[str]:
        """Tear everything down; returns libcni cache files of this node's pods that were left behind."""
        try:
            self.containerd.stop()
        finally:
            leftovers = self.cache_files()
            for path in leftovers:  # never leave a failed run's cache behind on the machine
                os.unlink(path)
            if self._netns_made:
                subprocess.run(["ip", "netns", "del", self.netns_name], capture_output=True)
            pins = os.path.join(self.run_dir, "netns")
            if os.path.isdir(pins):
                for name in os.listdir(pins):
                    subprocess.run(["umount", "-l", os.path.join(pins, name)], capture_output=True)
            shutil.rmtree(self.work, ignore_errors=True)
            remove_cgroup(self.cgroup_parent)
        return leftovers

    # -- pods --------------------------------------------------------------------------------

    def spec(self, name: str, **kw) -> PodSpec:
        return PodSpec(name=name, namespace=self.k8s_namespace, uid=f"{self.netns_name}-{name}",
                       cgroup_parent=self.cgroup_parent, **kw)

    def run_pod(self, spec) -> Pod:
        sid = self.client.run_pod_sandbox(spec, self.log_dir)
        self.seen_ids.add(sid)
        return self.pod(sid, spec.name)

    def pod(self, sid: str, name: str = "") -> Pod:
        st = self.client.pod_sandbox_status(sid)
        host_veth = ""
        for ifname, iface in ((st.info.get("cniResult") or {}).get("Interfaces") or {}).items():
            if not iface.get("Sandbox") and ifname != self.bridge:
                host_veth = ifname
        return Pod(id=sid, name=name, ip=st.ip, netns=st.netns_path, host_veth=host_veth, info=st.info)

    def remove_pod(self, sid: str) -> None:
        self.client.stop_pod_sandbox(sid)
        self.client.remove_pod_sandbox(sid)

    @property
    def bridge(self) -> str:
        return self.conflist["plugins"][0].get("bridge", "")

    @property
    def ipam_data_dir(self) -> str:
        return self.conflist["plugins"][0]["ipam"]["dataDir"]

    # -- what the node's kernel and files say ------------------------------------------------

    def links(self) -> dict[str, dict]:
        out = subprocess.run(["ip", "-n", self.netns_name, "-j", "-d", "link", "show"], capture_output=True,
                             text=True, check=True).stdout
        return {link["ifname"]: link for link in json.loads(out)}

    def qdiscs(self, dev: str) -> list[dict]:
        out = subprocess.run(["tc", "-n", self.netns_name, "-j", "qdisc", "show", "dev", dev], capture_output=True,
                             text=True, check=True).stdout
        return json.loads(out or "[]")

    def nft_ruleset(self) -> str:
        return nsexec(self.netns_path, "nft", "-j", "list", "ruleset", check=True).stdout

    def leases(self) -> dict[str, str]:
        """IPAM leases on disk (host-local format): address -> 'containerID ifname'."""
        directory = os.path.join(self.ipam_data_dir, self.network)
        found = {}
        if os.path.isdir(directory):
            for name in os.listdir(directory):
                if name == "lock" or name.startswith("last_reserved_ip"):
                    continue
                with open(os.path.join(directory, name)) as f:
                    found[name] = " ".join(f.read().split())
        return found

    def store_records(self) -> tuple[list, list]:
        """(sandboxes, endpoints) in our CNM store."""
        from cni_plugins.cnm.store import Store

        if not os.path.isdir(self.state_dir):
            return [], []
        with Store(self.state_dir).transaction(write=False) as tx:
            return tx.list_sandboxes(), tx.list_endpoints()

    def netns_mounts(self) -> list[str]:
        """Mount points of pod network namespaces: containerd's bind mounts and our sandbox pins."""
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4] for line in f]
        roots = (os.path.join(self.containerd.work, "state"), self.run_dir)
        return [p for p in points if p.startswith(roots) and "netns" in p]

    def cache_files(self) -> list[str]:
        """libcni cache entries (results/<network>-<id>-<ifname>) of this node's pods, also of pods
        whose RunPodSandbox failed (no id known): matched on the K8S_POD_NAMESPACE they were sent."""
        found = []
        names = os.listdir(LIBCNI_CACHE) if os.path.isdir(LIBCNI_CACHE) else []
        for name in names:
            if not name.startswith((f"{self.network}-", f"{LOOPBACK_NETWORK}-")):
                continue
            path = os.path.join(LIBCNI_CACHE, name)
            try:
                with open(path) as f:
                    entry = json.load(f)
            except (OSError, ValueError):
                continue
            args = dict(tuple(pair) for pair in entry.get("cniArgs") or [] if len(pair) == 2)
            if args.get("K8S_POD_NAMESPACE") == self.k8s_namespace or entry.get("containerId") in self.seen_ids:
                found.append(path)
        return sorted(found)
