"""ipam.resolvConf: a resolv.conf parsed into the result's DNS, as host-local's dns.go does."""

from __future__ import annotations

import errno
import os
import stat

from ..cni.result import DNS


def parse(text: str) -> DNS:
    nameservers: list[str] = []
    domain = ""
    search: list[str] = []
    options: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        fields = line.split()
        if len(fields) < 2:
            continue
        key = fields[0]
        if key == "nameserver":
            nameservers.append(fields[1])
        elif key == "domain":
            domain = fields[1]
        elif key == "search":
            search.extend(fields[1:])
        elif key == "options":
            options.extend(fields[1:])
    return DNS(nameservers=nameservers, domain=domain, search=search, options=options)


MAX_BYTES = 64 * 1024  # a resolv.conf is a few lines; never read /dev/zero into memory


def load(path: str) -> DNS:
    """Parse a regular file of at most MAX_BYTES; OSError(EINVAL) for anything else."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        data = os.read(fd, MAX_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_BYTES:
        raise OSError(errno.EFBIG, f"larger than {MAX_BYTES} bytes", path)
    return parse(data.decode("utf-8", errors="replace"))
