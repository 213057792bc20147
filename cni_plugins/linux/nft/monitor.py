"""Changes to our nftables tables, as the kernel announces them: a netfilter netlink socket
in the nftables multicast group (NFNLGRP_NFTABLES, what `nft monitor` listens to).

For the resident helper's firewall watch (cli/nftwatch.py). It asks only whether a change
touched the *structure* of our tables (`cnm`, families inet and bridge): a table, chain or
set deleted, rules added or deleted -- what `nft flush ruleset`, a firewall reload,
`nft delete table` or `nft flush chain` do. Element changes, which every ADD and DEL
makes, are skipped unread: each transaction still wakes the watcher, but costs it a few
header reads.

pyroute2's message classes decode what is read (its Marshal, as linux/rtnl.py does); the
subscription is the socket's bind to the group. pyroute2's NFTSocket would subscribe too,
but it is an asyncio loop per socket, one per watched namespace.
"""

from __future__ import annotations

import errno
import socket

from pyroute2.netlink.marshal import Marshal
from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_NFTABLES, NFNLGRP_NFTABLES, nfgen_msg

NETLINK_NETFILTER = 12
NFT_MSG_NEWRULE, NFT_MSG_DELRULE = 6, 8  # include/uapi/linux/netfilter/nf_tables.h
NFT_MSG_DELTABLE, NFT_MSG_DELCHAIN, NFT_MSG_DELSET = 2, 5, 11
NFPROTO_INET, NFPROTO_BRIDGE = 1, 7
TABLE = "cnm"
RECV_SIZE = 1 << 16
RCVBUF = 1 << 20  # a flush of a large ruleset announces every rule; an overflow is a change too


class _table_msg(nfgen_msg):
    nla_map = (("NFTA_TABLE_UNSPEC", "none"), ("NFTA_TABLE_NAME", "asciiz"))


class _chain_msg(nfgen_msg):
    nla_map = (("NFTA_CHAIN_UNSPEC", "none"), ("NFTA_CHAIN_TABLE", "asciiz"))


class _rule_msg(nfgen_msg):
    nla_map = (("NFTA_RULE_UNSPEC", "none"), ("NFTA_RULE_TABLE", "asciiz"))


class _set_msg(nfgen_msg):
    nla_map = (("NFTA_SET_UNSPEC", "none"), ("NFTA_SET_TABLE", "asciiz"))


# message type -> (class, the attribute naming the table); the first attribute of each is
# the table, so the classes decode nothing else (a rule's expressions are left unread)
_WATCHED = {
    NFT_MSG_DELTABLE: (_table_msg, "NFTA_TABLE_NAME"),
    NFT_MSG_DELCHAIN: (_chain_msg, "NFTA_CHAIN_TABLE"),
    NFT_MSG_NEWRULE: (_rule_msg, "NFTA_RULE_TABLE"),
    NFT_MSG_DELRULE: (_rule_msg, "NFTA_RULE_TABLE"),
    NFT_MSG_DELSET: (_set_msg, "NFTA_SET_TABLE"),
}


def _skip(data, offset, length):
    return None  # Marshal.parse: a message not decoded at all


class _Marshal(Marshal):
    msg_map = {(NFNL_SUBSYS_NFTABLES << 8) | kind: cls for kind, (cls, _) in _WATCHED.items()}

    def get_parser(self, key, flags, sequence_number):
        if key not in self.msg_map:
            return _skip
        return super().get_parser(key, flags, sequence_number)


class Monitor:
    """The nftables announcements of the network namespace of the thread that makes it (the
    socket stays in that namespace). Non-blocking: poll its fileno(), then touched()."""

    def __init__(self):
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK,
                             NETLINK_NETFILTER)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            sock.bind((0, 1 << (NFNLGRP_NFTABLES - 1)))
        except OSError:
            sock.close()
            raise
        self.sock = sock
        self._marshal = _Marshal()

    def fileno(self) -> int:
        return self.sock.fileno()

    def touched(self) -> bool:
        """Read everything queued; True when a change touched the structure of our tables,
        or when announcements were lost (ENOBUFS: the queue overflowed)."""
        hit = False
        while True:
            try:
                data = self.sock.recv(RECV_SIZE)
            except BlockingIOError:
                return hit
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    hit = True
                    continue
                raise
            if not data:
                return hit
            hit = hit or any(_ours(msg) for msg in self._marshal.parse(data))

    def close(self) -> None:
        self.sock.close()


def _ours(msg) -> bool:
    if msg["nfgen_family"] not in (NFPROTO_INET, NFPROTO_BRIDGE):
        return False
    _, attr = _WATCHED[msg["header"]["type"] & 0xFF]
    return msg.get_attr(attr) == TABLE
