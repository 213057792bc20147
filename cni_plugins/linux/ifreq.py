"""The SIOCGIF* ioctls that name a link (struct ifreq): answered by any socket of a netns, no
netlink message to build or parse. Below links.py and rtnl.py, which both use them."""

from __future__ import annotations

import fcntl
import struct

SIOCGIFINDEX = 0x8933


def ifreq(name: str) -> bytes:
    """A struct ifreq naming link `name`, for the SIOCGIF* ioctls (name, then a 24-byte union)."""
    return struct.pack("16s24x", name.encode())


def ioctl_index(sock, name: str) -> int:
    """The ifindex of link `name` in the netns of socket `sock` (any socket: the kernel answers
    SIOCGIFINDEX for every family). OSError (ENODEV) when there is none."""
    return struct.unpack_from("i", fcntl.ioctl(sock.fileno(), SIOCGIFINDEX, ifreq(name)), 16)[0]
