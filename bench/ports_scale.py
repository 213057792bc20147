#!/usr/bin/env python3
"""Cost of an ADD and a DEL of a cnm-bridge endpoint with published ports, with 10 and with
1,000 published endpoints already on the host (issue 5: within 1.2x).

    .venv/bin/python bench/ports_scale.py [--runs 15] [--present 10 1000] [--out FILE]

Everything runs in two throwaway "host" netns, one with 10 and one with 1,000 (this process
setns()es into them, so the plugin execs and nft run there), measured alternately so load
from anything else on the machine hits both alike. The present endpoints are made cheaply: their nft elements
(published tcp+udp ports, hairpin and masquerade entries) are inserted exactly as an ADD
would, by the same cni_plugins.linux.nft code, in batches. The measured ADDs and DELs are
real plugin execs (bin/cnm-bridge, in-process cnm-ipam, one real container netns each):
each ADD publishes two new ports, checks them against every published port, programs
bridge/veth/addresses and one nft transaction; each DEL removes them by endpoint id with no
netns and no prevResult. Prints medians per state and the ratio of medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cni_plugins.linux import netns as nsmod  # noqa: E402
from cni_plugins.linux import nft  # noqa: E402

PLUGIN = os.path.join(ROOT, "bin", "cnm-bridge")
SUBNET = "10.90.0.0/16"


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def fill(first: int, count: int) -> None:
    """`count` published endpoints' elements (tcp and udp ports, hairpin, masquerade), as ADD
    makes them, 200 endpoints per nft transaction (only the filling is batched)."""
    for start in range(first, first + count, 200):
        cmds = nft.declare("inet")
        for i in range(start, min(start + 200, first + count)):
            address = f"10.91.{i // 250}.{i % 250 + 2}"
            owner = f"{i:024x}"
            elements = (nft.published_port("tcp", None, 20000 + i, address, 80, note=f"bench{i}")
                        + nft.published_port("udp", None, 20000 + i, address, 53, note=f"bench{i}")
                        + nft.hairpin(address, "10.91.0.0/16") + nft.masquerade(address, "10.91.0.0/16"))
            cmds.extend(nft.add_commands(elements, owner))
        nft.run(cmds)


def conf(n: int) -> bytes:
    return json.dumps({
        "cniVersion": "1.0.0", "name": "benchports", "type": "cnm-bridge", "bridge": "cnmbench0",
        "isDefaultGateway": True, "ipMasq": True, "capabilities": {"portMappings": True},
        "ipam": {"type": "cnm-ipam", "ranges": [[{"subnet": SUBNET}]]},
        "runtimeConfig": {"portMappings": [{"hostPort": 8000 + n, "containerPort": 80, "protocol": "tcp"},
                                           {"hostPort": 8000 + n, "containerPort": 53, "protocol": "udp"}]},
    }).encode()


def run(command: str, stdin: bytes, env: dict, cid: str, netns: str) -> float:
    full = dict(env, CNI_COMMAND=command, CNI_CONTAINERID=cid, CNI_NETNS=netns, CNI_IFNAME="eth0", CNI_ARGS="")
    start = time.perf_counter()
    proc = subprocess.run([PLUGIN], input=stdin, env=full, capture_output=True, timeout=120)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{command} failed: {proc.stdout.decode()} {proc.stderr.decode()}")
    return elapsed


def measure_once(env: dict, cid: str, n: int) -> tuple[float, float]:
    name = f"cnmbp{uuid.uuid4().hex[:10]}"
    sh("ip", "netns", "add", name)
    try:
        stdin = conf(n)
        return run("ADD", stdin, env, cid, f"/run/netns/{name}"), run("DEL", stdin, env, cid, "")  # DEL: no netns
    finally:
        sh("ip", "netns", "del", name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--present", type=int, nargs=2, default=(10, 1000), metavar=("FEW", "MANY"))
    parser.add_argument("--out", help="also write the markdown table here")
    args = parser.parse_args()

    few, many = args.present
    # Two bench hosts, one per state, measured alternately: load from anything else on the
    # machine hits both states alike.
    hosts = {k: f"cnmbh{uuid.uuid4().hex[:10]}" for k in (few, many)}
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    tmp = tempfile.TemporaryDirectory(prefix="cnm-ports-bench-")
    rows = []
    try:
        fds, envs = {}, {}
        for k, host in hosts.items():
            sh("ip", "netns", "add", host)
            fds[k] = nsmod.open_netns(f"/run/netns/{host}")
            envs[k] = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                       "CNI_PATH": os.path.join(ROOT, "bin"),
                       "CNM_STATE_DIR": os.path.join(tmp.name, str(k), "state"),
                       "CNM_RUN_DIR": os.path.join(tmp.name, str(k), "run")}
            nsmod.setns(fds[k])  # nft and the plugin execs run in this bench host
            sh("ip", "link", "set", "lo", "up")
            measure_once(envs[k], "warm", 0)  # warm caches (bridge, page cache, pyc)
            fill(0, k)
        results = {few: ([], []), many: ([], [])}
        for n in range(args.runs):
            for k in (few, many):
                nsmod.setns(fds[k])
                add, delete = measure_once(envs[k], f"c{n}", n + 1)
                results[k][0].append(add)
                results[k][1].append(delete)
        nsmod.setns(fds[many])
        count = len(nft.published(4))
        assert count >= 2 * many, count
        med = {k: (statistics.median(a), statistics.median(d)) for k, (a, d) in results.items()}
        rows.append("| published endpoints present | ADD median (ms) | DEL median (ms) |")
        rows.append("|---|---|---|")
        for k in (few, many):
            rows.append(f"| {k} | {med[k][0] * 1000:.1f} | {med[k][1] * 1000:.1f} |")
        ratio_add, ratio_del = med[many][0] / med[few][0], med[many][1] / med[few][1]
        rows.append("")
        rows.append(f"ratio {many}/{few}: ADD {ratio_add:.2f}x, DEL {ratio_del:.2f}x (target <= 1.2x); "
                    f"{args.runs} runs each, alternating; {count} IPv4 published-port entries in the big host")
    finally:
        nsmod.setns(home)
        for host in hosts.values():
            subprocess.run(["ip", "netns", "del", host], capture_output=True)
        tmp.cleanup()
    text = "\n".join(rows)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0 if rows and ratio_add <= 1.2 and ratio_del <= 1.2 else 1


if __name__ == "__main__":
    sys.exit(main())
