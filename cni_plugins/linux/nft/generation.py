"""The nftables generation of this thread's network namespace (NFT_MSG_GETGEN).

The kernel counts committed nftables transactions per netns: while the number stays the
same, no table, chain, rule, set or element of that netns has changed (a flush, a deleted
table and `nft -f` of a firewall reload are all transactions). One request on a plain
netfilter socket with pyroute2's message class, as linux/rtnl.py does for rtnetlink: the
pyroute2 nftables socket would pull its asyncio layer into the plugin.
"""

from __future__ import annotations

import socket

from pyroute2.netlink import NLM_F_REQUEST, NLMSG_ERROR
from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_NFTABLES, nfgen_msg

NFT_MSG_GETGEN = 16  # include/uapi/linux/netfilter/nf_tables.h
NETLINK_NETFILTER = 12


class _gen_msg(nfgen_msg):
    nla_map = (("NFTA_GEN_UNSPEC", "none"), ("NFTA_GEN_ID", "be32"), ("NFTA_GEN_PROC_PID", "be32"),
               ("NFTA_GEN_PROC_NAME", "asciiz"))


def generation() -> int | None:
    """The current generation, or None when it cannot be read (no nftables in the kernel)."""
    request = _gen_msg()
    request["header"]["type"] = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN
    request["header"]["flags"] = NLM_F_REQUEST
    request["header"]["sequence_number"] = 1
    request["nfgen_family"] = socket.AF_UNSPEC
    request.encode()
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER) as sock:
            sock.bind((0, 0))
            sock.settimeout(5)
            sock.send(request.data)
            data = sock.recv(65536)
    except OSError:
        return None
    reply = _gen_msg(data)
    reply.decode()
    if reply["header"]["type"] == NLMSG_ERROR:
        return None
    return reply.get_attr("NFTA_GEN_ID")
