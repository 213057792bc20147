"""ipam.resolvConf: a resolv.conf parsed into the result's DNS, as host-local's dns.go does."""

from __future__ import annotations

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


def load(path: str) -> DNS:
    with open(path, encoding="utf-8", errors="replace") as f:
        return parse(f.read())
