"""The benchmark's two clients, the same for Go and cnm plugins.

Chain, a tiny libcni-style runner: one posix_spawn per plugin exec (env + config on stdin,
stdout read back), timed around spawn..wait4, with the child's peak RSS from wait4's rusage.
A conflist runs as libcni runs it: ADD in order with the previous result as prevResult, CHECK
in order and DEL in reverse order with the cached final result, runtimeConfig only for
declared capabilities.

CniTool: cnitool (libcni itself), one exec per ADD/CHECK/DEL of the whole list, timed the same
way; libcni execs the plugins, caches the ADD result and hands it to CHECK and DEL.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from dataclasses import dataclass

_ports = itertools.count(20000)


@dataclass
class Exec:
    rc: int
    stdout: bytes
    elapsed: float  # seconds, spawn to reaped
    maxrss_kb: int


def exec_plugin(path: str, env: dict, stdin: bytes, rss_probe: str | None = None, args: tuple = (),
                stderr: str = "/dev/null") -> Exec:
    """One exec of `path args...`, stderr to the file `stderr`. With `rss_probe` (a file path)
    the plugin runs under GNU time, which writes its peak RSS there: spawned from this (big)
    process, a child's own ru_maxrss would start at our RSS (the vfork'ed address space counts
    until exec), so only a small spawner measures the plugin itself."""
    argv = [path, *args] if rss_probe is None else ["/usr/bin/time", "-f", "%M", "-o", rss_probe, path, *args]
    r_in, w_in = os.pipe()
    r_out, w_out = os.pipe()
    t0 = time.perf_counter()
    try:
        pid = os.posix_spawn(argv[0], argv, env, file_actions=[
            (os.POSIX_SPAWN_DUP2, r_in, 0),
            (os.POSIX_SPAWN_DUP2, w_out, 1),
            (os.POSIX_SPAWN_OPEN, 2, stderr, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
        ])
    finally:
        os.close(r_in)
        os.close(w_out)
    try:
        os.write(w_in, stdin)  # configs are far below the pipe's 64 KiB
    except BrokenPipeError:
        pass  # the plugin did not read stdin (Go's VERSION may exit first)
    finally:
        os.close(w_in)
    chunks = []
    while True:
        chunk = os.read(r_out, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(r_out)
    _, status, usage = os.wait4(pid, 0)
    elapsed = time.perf_counter() - t0
    maxrss = usage.ru_maxrss
    if rss_probe is not None:
        with open(rss_probe) as f:
            maxrss = int(f.read().split()[-1])
    return Exec(os.waitstatus_to_exitcode(status), b"".join(chunks), elapsed, maxrss)


class PluginFailed(Exception):
    pass


def _mapping(mappings: dict, cid: str) -> list:
    """One hostPort per pod, the same on ADD, CHECK and DEL (as a runtime passes it)."""
    if cid not in mappings:
        mappings[cid] = [{"hostPort": next(_ports), "containerPort": 80, "protocol": "tcp"}]
    return mappings[cid]


class Chain:
    """A conflist against one plugin directory (our bin/ or bundle, or /usr/lib/cni)."""

    def __init__(self, plugin_dir: str, conflist: dict, env: dict, ports: bool = False, ifname: str = "eth0",
                 rss_probe: str | None = None):
        self.rss_probe = rss_probe  # measure peak RSS (slower: under GNU time), see exec_plugin
        self.dir = plugin_dir
        self.conf = conflist
        self.env = env
        self.ports = ports
        self.ifname = ifname
        self.mappings: dict[str, list] = {}

    def _stdin(self, plugin: dict, cid: str, prev) -> bytes:
        conf = dict(plugin, name=self.conf["name"], cniVersion=self.conf["cniVersion"])
        caps = plugin.get("capabilities") or {}
        if caps.get("portMappings") and self.ports:
            conf["runtimeConfig"] = {"portMappings": _mapping(self.mappings, cid)}
        conf.pop("capabilities", None)
        if prev is not None:
            conf["prevResult"] = prev
        return json.dumps(conf).encode()

    def _run(self, command: str, plugin: dict, cid: str, netns: str, prev) -> Exec:
        env = dict(self.env, CNI_COMMAND=command, CNI_CONTAINERID=cid, CNI_NETNS=netns, CNI_IFNAME=self.ifname)
        r = exec_plugin(os.path.join(self.dir, plugin["type"]), env, self._stdin(plugin, cid, prev), self.rss_probe)
        if r.rc != 0:
            raise PluginFailed(f"{plugin['type']} {command} failed ({r.rc}): {r.stdout.decode(errors='replace')}")
        return r

    def add(self, cid: str, netns: str) -> tuple[float, dict, int]:
        """(seconds, final result, peak RSS kB of the largest exec)."""
        total, prev, rss = 0.0, None, 0
        for plugin in self.conf["plugins"]:
            r = self._run("ADD", plugin, cid, netns, prev)
            total += r.elapsed
            rss = max(rss, r.maxrss_kb)
            prev = json.loads(r.stdout)
        return total, prev, rss

    def check(self, cid: str, netns: str, result: dict) -> float:
        return sum(self._run("CHECK", p, cid, netns, result).elapsed for p in self.conf["plugins"])

    def delete(self, cid: str, netns: str, result: dict | None) -> float:
        total = sum(self._run("DEL", p, cid, netns, result).elapsed for p in reversed(self.conf["plugins"]))
        self.mappings.pop(cid, None)
        return total


class CniTool:
    """The same conflist through cnitool: `cnitool add|check|del NAME NETNS`, the list in its own
    NETCONFPATH dir, plugins from env's CNI_PATH, the hostPort as CAP_ARGS. cnitool derives the
    container id from the netns path (`cid` only keys the port mapping) and caches results under
    /var/lib/cni/results/NAME-*: Debian's cnitool (libcni 1.1.2) has no cache-dir setting, so the
    caller gives the network a unique name and removes what a failed run leaves there."""

    def __init__(self, tool: str, conflist: dict, conf_dir: str, env: dict, ports: bool = False,
                 ifname: str = "eth0"):
        self.tool = tool
        self.name = conflist["name"]
        os.makedirs(conf_dir, exist_ok=True)
        with open(os.path.join(conf_dir, f"{self.name}.conflist"), "w") as f:
            json.dump(conflist, f)
        self.env = dict(env, NETCONFPATH=conf_dir, CNI_IFNAME=ifname)
        self.stderr = os.path.join(conf_dir, "stderr")
        self.ports = ports
        self.mappings: dict[str, list] = {}

    def _run(self, command: str, cid: str, netns: str) -> Exec:
        env = self.env
        if self.ports:
            env = dict(env, CAP_ARGS=json.dumps({"portMappings": _mapping(self.mappings, cid)}))
        stderr = f"{self.stderr}.{cid}"  # per pod: the parallel rows run several at once
        r = exec_plugin(self.tool, env, b"", args=(command, self.name, netns), stderr=stderr)
        if r.rc != 0:
            with open(stderr, errors="replace") as f:
                raise PluginFailed(f"cnitool {command} {self.name} {netns} failed ({r.rc}): {f.read()}")
        os.unlink(stderr)
        return r

    def add(self, cid: str, netns: str) -> tuple[float, dict, int]:
        r = self._run("add", cid, netns)
        return r.elapsed, json.loads(r.stdout), r.maxrss_kb

    def check(self, cid: str, netns: str, result: dict) -> float:
        return self._run("check", cid, netns).elapsed

    def delete(self, cid: str, netns: str, result: dict | None) -> float:
        elapsed = self._run("del", cid, netns).elapsed
        self.mappings.pop(cid, None)
        return elapsed
