"""/etc/netns/<NAME>/resolv.conf for `cnmctl run NAME`: `ip netns exec NAME` bind-mounts it over
/etc/resolv.conf, so a command run in the sandbox resolves through the network's name server
(the ADD result's `dns`). Written only when the result names nameservers and no file of the
operator's is there; removed by `cnmctl rm` only when it is the file we wrote (its first line
says so)."""

from __future__ import annotations

import errno
import os

ETC_NETNS = "/etc/netns"
MARK = "# written by cnmctl run: the network's DNS (removed by cnmctl rm)"


def path_of(name: str, root: str = ETC_NETNS) -> str:
    return os.path.join(root, name, "resolv.conf")


def render(dns: dict) -> str:
    lines = [MARK]
    lines += [f"nameserver {ns}" for ns in dns.get("nameservers") or []]
    if dns.get("domain"):
        lines.append(f"domain {dns['domain']}")
    if dns.get("search"):
        lines.append("search " + " ".join(dns["search"]))
    if dns.get("options"):
        lines.append("options " + " ".join(dns["options"]))
    return "\n".join(lines) + "\n"


def write(name: str, result: dict, root: str = ETC_NETNS) -> str | None:
    """The sandbox's resolv.conf from the result's DNS; None when it names no nameserver.
    FileExistsError when the operator has one there (kept)."""
    dns = result.get("dns") or {}
    if not dns.get("nameservers"):
        return None
    path = path_of(name, root)
    if os.path.lexists(path) and not ours(path):
        raise FileExistsError(errno.EEXIST, "a resolv.conf not written by cnmctl is there (kept)")
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(render(dns))
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


def remove(name: str, root: str = ETC_NETNS) -> None:
    """Our resolv.conf goes, and the directory with it when nothing else is in it."""
    path = path_of(name, root)
    if not ours(path):
        return
    os.unlink(path)
    try:
        os.rmdir(os.path.dirname(path))
    except OSError:
        pass  # the operator's own files are in it


def ours(path: str) -> bool:
    try:
        with open(path) as f:
            return f.readline().rstrip("\n") == MARK
    except (OSError, UnicodeDecodeError):
        return False
