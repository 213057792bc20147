"""Address ranges and range sets with host-local's defaults and checks.

Pure arithmetic on `ipaddress` objects: no files, no CNI errors. A bad range
raises RangeError(key, message) where `key` is the offending field, so the
config layer can name it in a code-7 error.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterator, Sequence, Union

IP = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
Net = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


class RangeError(ValueError):
    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key
        self.message = message


def parse_ip(text: str) -> IP:
    """An address exactly as Go's net.ParseIP reads it (no surrounding space, no IPv6 zone
    like `%eth0`, which Python's ipaddress takes); an IPv4-mapped IPv6 address is IPv4, as
    host-local makes it (Go's To4). ValueError otherwise."""
    if "%" in text:
        raise ValueError(f"{text!r} has an IPv6 zone")
    addr = ipaddress.ip_address(text)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def parse_cidr(text: str) -> tuple[IP, Net]:
    """(address, network) of `address/prefixlen` exactly as Go's net.ParseCIDR reads it: the
    prefix length in decimal digits (Python also takes a netmask such as /255.255.255.0)
    and the address as parse_ip. The network keeps the address's own family. ValueError
    otherwise."""
    address, slash, prefix = text.partition("/")
    if not slash or not (prefix.isascii() and prefix.isdigit()) or "%" in address:
        raise ValueError(f"invalid CIDR address: {text}")
    return parse_ip(address), ipaddress.ip_network(text, strict=False)


def parse_requested_ip(text: str) -> IP:
    """A requested IP; a `/prefix` suffix is accepted and ignored, as host-local does."""
    if "/" in text:
        return parse_cidr(text)[0]
    return parse_ip(text)


def last_ip(subnet: Net) -> IP:
    """host-local's default rangeEnd: broadcast - 1 for IPv4, the all-ones address for IPv6."""
    if subnet.version == 4:
        return subnet.broadcast_address - 1
    return subnet.broadcast_address


@dataclass(frozen=True)
class Range:
    subnet: Net
    start: IP
    end: IP
    gateway: IP

    def contains(self, addr: IP) -> bool:
        """host-local's Range.Contains: inside the subnet and between start and end."""
        return addr.version == self.subnet.version and addr in self.subnet and self.start <= addr <= self.end

    def overlaps(self, other: "Range") -> bool:
        if self.subnet.version != other.subnet.version:
            return False
        return self.start <= other.end and other.start <= self.end

    def size(self) -> int:
        """How many addresses this range can hand out (its gateway excluded)."""
        total = int(self.end) - int(self.start) + 1
        return total - (1 if self.start <= self.gateway <= self.end else 0)

    def __str__(self) -> str:
        return f"{self.start}-{self.end}"


def make_range(subnet: str, range_start: str | None = None, range_end: str | None = None,
               gateway: str | None = None) -> Range:
    """Canonicalize one range like host-local's Range.Canonicalize. A gateway may lie outside
    the subnet (host-local takes it, and the reference bridge puts it on the bridge with the
    subnet's prefix length), but must be of the subnet's family."""
    try:
        given, net = parse_cidr(subnet)
    except ValueError:
        raise RangeError("subnet", f"invalid CIDR address: {subnet}") from None
    if net.prefixlen > net.max_prefixlen - 2:
        raise RangeError("subnet", f"Network {subnet} too small to allocate from")
    if given != net.network_address:
        raise RangeError(
            "subnet",
            f"Network has host bits set. For a subnet mask of length {net.prefixlen} "
            f"the network address is {net.network_address}",
        )

    def address(key: str, text: str | None) -> IP | None:
        if text is None or text == "":  # Go's ip.IP reads "" as unset
            return None
        try:
            addr = parse_ip(text)
        except ValueError:
            raise RangeError(key, f"invalid IP address: {text}") from None
        if addr.version != net.version:
            raise RangeError(key, f"IP {addr} is not the same protocol as subnet {net}")
        return addr

    gw = address("gateway", gateway)
    if gw is None:
        gw = net.network_address + 1

    start = address("rangeStart", range_start)
    if start is None:
        start = net.network_address + 1
    elif start not in net:
        raise RangeError("rangeStart", f"{start} not in network {net}")

    end = address("rangeEnd", range_end)
    if end is None:
        end = last_ip(net)
    elif end not in net:
        raise RangeError("rangeEnd", f"{end} not in network {net}")
    elif end < start:
        raise RangeError("rangeEnd", f"{end} is in network {net} but before start {start}")
    return Range(net, start, end, gw)


class RangeSet(tuple):
    """One address per ADD comes from each range set; its ranges share one family."""

    def __new__(cls, ranges: Sequence[Range]) -> "RangeSet":
        return super().__new__(cls, tuple(ranges))

    @property
    def version(self) -> int:
        return self[0].subnet.version

    def range_for(self, addr: IP) -> Range | None:
        return next((r for r in self if r.contains(addr)), None)

    def contains(self, addr: IP) -> bool:
        return self.range_for(addr) is not None

    def overlaps(self, other: "RangeSet") -> bool:
        return any(a.overlaps(b) for a in self for b in other)

    def capacity(self) -> int:
        return sum(r.size() for r in self)

    def __str__(self) -> str:
        return ",".join(str(r) for r in self)

    def iterate(self, last_reserved: IP | None) -> Iterator[tuple[IP, Range]]:
        """Candidate addresses in host-local's round-robin order.

        Start after `last_reserved` when it lies in the set, else at the first
        range's start; walk each range to its end, wrap to the next range (and
        from the last range to the first), skip each range's gateway, and stop
        when back at the first address tried.
        """
        index = 0
        cur: IP | None = None
        if last_reserved is not None and self.contains(last_reserved):
            index = next(i for i, r in enumerate(self) if r.contains(last_reserved))
            cur = last_reserved
        first: IP | None = None
        while True:
            rng = self[index]
            if cur is None:
                cur = rng.start
            elif cur == rng.end:
                index = (index + 1) % len(self)
                rng = self[index]
                cur = rng.start
            else:
                cur = cur + 1
            if first is None:
                first = cur
            elif cur == first:
                return
            if cur == rng.gateway:
                continue
            yield cur, rng


def validate_set(ranges: Sequence[Range]) -> RangeSet:
    """A set's ranges: non-empty, one family, no two overlapping.

    Raises RangeError whose key is relative to the set ("[1].subnet").
    """
    if not ranges:
        raise RangeError("", "empty range set")
    family = ranges[0].subnet.version
    for j, rng in enumerate(ranges):
        if rng.subnet.version != family:
            raise RangeError(f"[{j}].subnet", "mixed address families")
    for i, a in enumerate(ranges):
        for j in range(i + 1, len(ranges)):
            if a.overlaps(ranges[j]):
                raise RangeError(f"[{j}]", f"subnets {a} and {ranges[j]} overlap")
    return RangeSet(ranges)
