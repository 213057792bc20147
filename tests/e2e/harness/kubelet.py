"""Pods on a Node through containerd's CRI, as the kubelet asks for them.

What an operator does on a real node (README "Kubernetes") is the Node: its bin dir (our plugins,
`loopback` served by cnm-none, Go `bandwidth` and `host-local`) and one .conflist in its conf dir
(containerd uses the first by name). The Kubelet adds a private containerd with its CRI plugin on,
the busybox sandbox image, and the pod calls; it tells its pods' libcni cache entries (in the
machine's /var/lib/cni, which containerd 1.6 cannot move) apart by their Kubernetes namespace.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass

from .containerd import Containerd
from .cri_client import PodSpec
from .host import LIBCNI_DIR
from .node import Node

LOOPBACK_NETWORK = "cni-loopback"  # the name containerd gives its own loopback network


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


class Kubelet:
    def __init__(self, node: Node, sandbox_image: str, image_archive: str):
        self.node = node
        self.network = node.networks[0]
        self.log_dir = os.path.join(node.work, "pod-logs")
        self.image_archive = image_archive
        self.containerd = Containerd(os.path.join(node.work, "containerd"), node=node, sandbox_image=sandbox_image)
        self.client = None
        self.seen_ids: set[str] = set()
        self.k8s_namespace = "cnm-e2e-" + node.netns_name.lower()  # pods of this node, also in the libcni cache
        self.cgroup_parent = "/" + self.k8s_namespace  # pod cgroups under one parent we remove at the end

    def start(self) -> "Kubelet":
        self.client = self.containerd.start().client
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
            self.node.cleanup()
            shutil.rmtree(self.node.work, ignore_errors=True)
            remove_cgroup(self.cgroup_parent)
        return leftovers

    # -- pods --------------------------------------------------------------------------------

    def spec(self, name: str, **kw) -> PodSpec:
        return PodSpec(name=name, namespace=self.k8s_namespace, uid=f"{self.node.netns_name}-{name}",
                       cgroup_parent=self.cgroup_parent, **kw)

    def run_pod(self, spec) -> Pod:
        sid = self.client.run_pod_sandbox(spec, self.log_dir)
        self.seen_ids.add(sid)
        return self.pod(sid, spec.name)

    def pod(self, sid: str, name: str = "") -> Pod:
        st = self.client.pod_sandbox_status(sid)
        host_veth = ""
        for ifname, iface in ((st.info.get("cniResult") or {}).get("Interfaces") or {}).items():
            if not iface.get("Sandbox") and ifname != self.network.bridge:
                host_veth = ifname
        return Pod(id=sid, name=name, ip=st.ip, netns=st.netns_path, host_veth=host_veth, info=st.info)

    def remove_pod(self, sid: str) -> None:
        self.client.stop_pod_sandbox(sid)
        self.client.remove_pod_sandbox(sid)

    # -- what only the CRI side knows --------------------------------------------------------

    def netns_mounts(self) -> list[str]:
        """Mount points of pod network namespaces: containerd's bind mounts and our sandbox pins."""
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4] for line in f]
        roots = (os.path.join(self.containerd.work, "state"), self.node.run_dir)
        return [p for p in points if p.startswith(roots) and "netns" in p]

    def cache_files(self) -> list[str]:
        """libcni cache entries (results/<network>-<id>-<ifname>) of this node's pods, also of pods
        whose RunPodSandbox failed (no id known): matched on the K8S_POD_NAMESPACE they were sent."""
        found = []
        results = os.path.join(LIBCNI_DIR, "results")
        names = os.listdir(results) if os.path.isdir(results) else []
        for name in names:
            if not name.startswith((f"{self.network.name}-", f"{LOOPBACK_NETWORK}-")):
                continue
            path = os.path.join(results, name)
            try:
                with open(path) as f:
                    entry = json.load(f)
            except (OSError, ValueError):
                continue
            args = dict(tuple(pair) for pair in entry.get("cniArgs") or [] if len(pair) == 2)
            if args.get("K8S_POD_NAMESPACE") == self.k8s_namespace or entry.get("containerId") in self.seen_ids:
                found.append(path)
        return sorted(found)
