"""A small CRI (runtime.v1) client over containerd's gRPC socket, as the kubelet talks to it.

The message and service classes are generated at import time from cri_runtime_v1.proto
(grpcio-tools' runtime protoc, no generated files on disk or in git).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field

import grpc

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.append(_HERE)
pb, services = grpc.protos_and_services("cri_runtime_v1.proto")

PROTOCOLS = {"tcp": pb.TCP, "udp": pb.UDP, "sctp": pb.SCTP}


@dataclass
class PodSpec:
    """What the kubelet would put into a PodSandboxConfig for one pod."""

    name: str
    namespace: str = "default"
    uid: str = ""
    # (protocol, container_port, host_port, host_ip)
    ports: list[tuple[str, int, int, str]] = field(default_factory=list)
    dns_servers: list[str] = field(default_factory=list)
    dns_searches: list[str] = field(default_factory=list)
    dns_options: list[str] = field(default_factory=list)
    annotations: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    cgroup_parent: str = ""  # cgroupfs path under which containerd puts the pod's cgroups

    def config(self, log_dir: str):
        dns = None
        if self.dns_servers or self.dns_searches or self.dns_options:
            dns = pb.DNSConfig(servers=self.dns_servers, searches=self.dns_searches, options=self.dns_options)
        return pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=self.name, uid=self.uid or self.name, namespace=self.namespace),
            hostname=self.name,
            log_directory=os.path.join(log_dir, f"{self.namespace}_{self.name}"),
            dns_config=dns,
            port_mappings=[
                pb.PortMapping(protocol=PROTOCOLS[p], container_port=c, host_port=h, host_ip=ip)
                for p, c, h, ip in self.ports
            ],
            labels=self.labels,
            annotations=self.annotations,
            linux=pb.LinuxPodSandboxConfig(
                cgroup_parent=self.cgroup_parent,
                security_context=pb.LinuxSandboxSecurityContext(
                    namespace_options=pb.NamespaceOption(network=pb.POD, pid=pb.CONTAINER, ipc=pb.POD)
                )
            ),
        )


@dataclass
class SandboxStatus:
    id: str
    state: str  # SANDBOX_READY / SANDBOX_NOTREADY
    ip: str
    additional_ips: list[str]
    annotations: dict[str, str]
    info: dict  # containerd's verbose info ("info" key), parsed

    @property
    def netns_path(self) -> str:
        """The pod's network namespace path, from the OCI runtime spec containerd reports."""
        for ns in self.info.get("runtimeSpec", {}).get("linux", {}).get("namespaces", []):
            if ns.get("type") == "network":
                return ns.get("path", "")
        return ""


class CriClient:
    def __init__(self, socket_path: str, timeout: float = 120):
        self.timeout = timeout
        self.channel = grpc.insecure_channel(f"unix://{socket_path}")
        self.runtime = services.RuntimeServiceStub(self.channel)

    def close(self):
        self.channel.close()

    def version(self):
        return self.runtime.Version(pb.VersionRequest(version="v1"), timeout=self.timeout)

    def conditions(self) -> dict[str, tuple[bool, str, str]]:
        """Status(): condition type -> (status, reason, message)."""
        resp = self.runtime.Status(pb.StatusRequest(verbose=False), timeout=self.timeout)
        return {c.type: (c.status, c.reason, c.message) for c in resp.status.conditions}

    def wait_network_ready(self, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            conds = self.conditions()
            if conds.get("NetworkReady", (False,))[0] or time.monotonic() > deadline:
                return conds
            time.sleep(0.2)

    def run_pod_sandbox(self, spec: PodSpec, log_dir: str) -> str:
        req = pb.RunPodSandboxRequest(config=spec.config(log_dir))
        return self.runtime.RunPodSandbox(req, timeout=self.timeout).pod_sandbox_id

    def pod_sandbox_status(self, sandbox_id: str) -> SandboxStatus:
        resp = self.runtime.PodSandboxStatus(
            pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=True), timeout=self.timeout
        )
        st = resp.status
        info = json.loads(resp.info["info"]) if "info" in resp.info else {}
        return SandboxStatus(
            id=st.id,
            state=pb.PodSandboxState.Name(st.state),
            ip=st.network.ip,
            additional_ips=[p.ip for p in st.network.additional_ips],
            annotations=dict(st.annotations),
            info=info,
        )

    def list_pod_sandbox(self, labels: dict[str, str] | None = None) -> list:
        flt = pb.PodSandboxFilter(label_selector=labels or {})
        return list(self.runtime.ListPodSandbox(pb.ListPodSandboxRequest(filter=flt), timeout=self.timeout).items)

    def stop_pod_sandbox(self, sandbox_id: str) -> None:
        self.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=self.timeout)

    def remove_pod_sandbox(self, sandbox_id: str) -> None:
        self.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=self.timeout)
