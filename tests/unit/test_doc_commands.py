"""The shell commands the README and docs/operators.md show run as written on a fresh Debian
12 machine as root (issue 12 item 15): no `sudo` (not installed there: `sudo: command not
found`), and every program they start from the checkout exists and is executable."""

from __future__ import annotations

import os
import re
import shlex

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCS = ["README.md", "docs/operators.md"]
# What a command may start from a fresh Debian 12 as root once scripts/setup.sh ran (its
# packages), besides the checkout's own programs; made by a documented step: dist/ and
# /opt/cni/bin (packaging/build.sh, install.sh), /usr/local/sbin/cnmctl (--cnmctl-link).
SYSTEM = {"ip", "nft", "cnmctl", "systemctl", "iptables", "kubectl", "export", "cd", "grep", "podman", "ping",
          "modprobe", "sysctl", "echo", "cat", "ls", "curl", "journalctl", "crictl", "ctr", "cnitool"}
BUILT = ("dist/", "/opt/cni/bin/", "/usr/local/sbin/")


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"```(?:sh|bash|shell)\n(.*?)```", text, flags=re.S)


def commands(block: str) -> list[list[str]]:
    """Each command of a block (continuation lines joined, comments and prompts dropped),
    split at pipes and `&&`, as argv lists."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        line = line.split(" #", 1)[0].strip().removeprefix("$ ")
        if not line or line.startswith("#"):
            continue
        for part in re.split(r"\s*(?:&&|\|\||\||;)\s*", line):
            if part:
                out.append(shlex.split(part))
    return out


def every_command():
    for doc in DOCS:
        with open(os.path.join(ROOT, doc)) as f:
            for block in shell_blocks(f.read()):
                for argv in commands(block):
                    yield doc, argv


def test_the_docs_show_commands():
    found = list(every_command())
    readme = [argv for doc, argv in found if doc == "README.md"]
    assert readme[:2] == [["scripts/demo.sh"], ["scripts/test.sh"]], readme[:2]
    assert len(found) > 10


@pytest.mark.parametrize("doc, argv", list(every_command()), ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_runs_as_written_as_root(doc, argv):
    """Issue 12 item 15: the README's first two commands began with `sudo`."""
    words = [w for w in argv if "=" not in w.split("/")[0]] or argv  # `A=b cmd`: the command
    program = words[0]
    assert program != "sudo", f"{doc}: {' '.join(argv)}"
    if program.startswith(BUILT) or program in SYSTEM:
        return
    path = os.path.join(ROOT, program)
    assert "/" in program and os.path.isfile(path) and os.access(path, os.X_OK), f"{doc}: {' '.join(argv)}"
