"""One query in, one answer out: what a network's server says, from its Records (dnspython
parses and builds every message; nothing here touches a socket).

Names of the network: `<name>` and `<name>.<domain>` (A, AAAA; every endpoint that bears the
name, in random order), PTR of an endpoint's address (its first name). Other names under the
domain: NXDOMAIN, authoritatively. Everything else is for the upstreams (`Forward`).
"""

from __future__ import annotations

import ipaddress
import random

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.reversename
import dns.rrset

TTL = 0  # a name is gone the moment its DEL returns: no resolver may keep it
UDP_DEFAULT = 512
# The largest UDP answer, whatever EDNS size a client claims: a spoofed query cannot turn into
# a large answer toward someone else (the size DNS flag day 2020 settled on).
UDP_MAX = 1232
REVERSE_ZONES = (dns.name.from_text("in-addr.arpa."), dns.name.from_text("ip6.arpa."))


class AnswerCache:
    """The UDP answers to the queries seen since the records last changed, by the query's bytes
    but its id: a repeated query is answered with the same bytes (its id put back) and no
    parsing. Only answers that are the same every time are kept (no name with several
    addresses: those are shuffled per answer). Used by one thread (the network's UDP loop)."""

    MAX = 4096

    def __init__(self):
        self._records = None
        self._answers: dict[bytes, bytes] = {}

    def get(self, records, wire: bytes) -> bytes | None:
        if records is not self._records or len(wire) < 12:
            return None
        body = self._answers.get(wire[2:])
        return wire[:2] + body if body is not None else None

    def put(self, records, wire: bytes, reply) -> None:
        if not isinstance(reply, bytes) or len(wire) < 12 or not _cacheable(records, reply):
            return
        if records is not self._records:
            self._records, self._answers = records, {}
        if len(self._answers) >= self.MAX:
            self._answers.clear()
        self._answers[wire[2:]] = reply[2:]


def _cacheable(records, reply: bytes) -> bool:
    """An answer with no name of several addresses (what dnspython built is read back once)."""
    try:
        message = dns.message.from_wire(reply)
    except Exception:  # noqa: BLE001 -- FORMERR and the like: never cached
        return False
    return message.rcode() != dns.rcode.FORMERR and all(len(rrset) == 1 for rrset in message.answer)


class Forward:
    """The query is for the upstreams."""

    __slots__ = ("query",)

    def __init__(self, query: dns.message.Message):
        self.query = query


def udp_limit(query: dns.message.Message) -> int:
    return max(UDP_DEFAULT, min(query.payload, UDP_MAX)) if query.edns >= 0 else UDP_DEFAULT


def to_wire(response: dns.message.Message, limit: int) -> bytes:
    """The response, or its truncated form (TC: the client asks again over TCP)."""
    try:
        return response.to_wire(max_size=limit)
    except dns.exception.TooBig:
        response.answer.clear()
        response.authority.clear()
        response.additional.clear()
        response.flags |= dns.flags.TC
        return response.to_wire(max_size=limit)


def _error(wire: bytes, rcode: int) -> bytes | None:
    """FORMERR for a message dnspython cannot read; only its id is taken from it."""
    if len(wire) < 12:
        return None
    reply = dns.message.Message(id=int.from_bytes(wire[:2], "big"))
    reply.flags = dns.flags.QR
    reply.set_rcode(rcode)
    return reply.to_wire()


def respond(records, wire: bytes, limit: int | None = None) -> bytes | Forward | None:
    """The answer's wire (None: say nothing), or Forward. `limit`: the UDP size the answer
    must fit (None: TCP)."""
    try:
        query = dns.message.from_wire(wire)
    except dns.message.ShortHeader:
        return None
    except Exception:  # noqa: BLE001 -- anything a hostile packet makes the parser raise
        return _error(wire, dns.rcode.FORMERR)
    if query.flags & dns.flags.QR:
        return None  # a response: never answered (no loops between servers)
    if limit is not None:
        limit = udp_limit(query)
    else:
        limit = 65535
    if query.opcode() != dns.opcode.QUERY or len(query.question) != 1:
        response = dns.message.make_response(query)
        response.set_rcode(dns.rcode.NOTIMP if query.opcode() != dns.opcode.QUERY else dns.rcode.FORMERR)
        return to_wire(response, limit)
    question = query.question[0]
    if question.rdclass != dns.rdataclass.IN:
        return Forward(query)
    found = _local(records, question.name, question.rdtype)
    if found is None:
        return Forward(query)
    rcode, rrsets = found
    response = dns.message.make_response(query)
    response.flags |= dns.flags.AA
    response.flags |= dns.flags.RA
    response.set_rcode(rcode)
    response.answer.extend(rrsets)
    return to_wire(response, limit)


def _local(records, qname: dns.name.Name, rdtype: int):
    """(rcode, answer rrsets) when the question is the network's; None to forward it."""
    domain = dns.name.from_text(records.domain) if records.domain else None
    label = None
    if domain is not None and qname.is_subdomain(domain):
        relative = qname.relativize(domain)
        if len(relative.labels) != 1 or relative == dns.name.empty:
            return dns.rcode.NOERROR if qname == domain else dns.rcode.NXDOMAIN, []
        label = relative.labels[0].decode("ascii", "replace").lower()
        if label not in records.names:
            return dns.rcode.NXDOMAIN, []
    elif len(qname.labels) == 2:  # a bare name (`web.`): the network's if it knows it
        label = qname.labels[0].decode("ascii", "replace").lower()
        if label not in records.names:
            return None
    elif rdtype == dns.rdatatype.PTR and any(qname.is_subdomain(z) for z in REVERSE_ZONES):
        try:
            address = dns.reversename.to_address(qname)
        except (dns.exception.SyntaxError, ValueError):
            return None
        name = records.reverse.get(_canonical(address))
        if name is None:
            return None
        target = dns.name.from_text(f"{name}.{records.domain}.")
        return dns.rcode.NOERROR, [dns.rrset.from_text_list(qname, TTL, dns.rdataclass.IN, dns.rdatatype.PTR,
                                                            [target.to_text()])]
    else:
        return None
    return dns.rcode.NOERROR, _addresses(qname, records.names[label], rdtype)


def _addresses(qname, addresses, rdtype) -> list:
    v4 = [a for a in addresses if ":" not in a]
    v6 = [a for a in addresses if ":" in a]
    random.shuffle(v4)  # round robin between the endpoints that bear the name
    random.shuffle(v6)
    wanted = []
    if rdtype in (dns.rdatatype.A, dns.rdatatype.ANY) and v4:
        wanted.append(dns.rrset.from_text_list(qname, TTL, dns.rdataclass.IN, dns.rdatatype.A, v4))
    if rdtype in (dns.rdatatype.AAAA, dns.rdatatype.ANY) and v6:
        wanted.append(dns.rrset.from_text_list(qname, TTL, dns.rdataclass.IN, dns.rdatatype.AAAA, v6))
    return wanted


def _canonical(address: str) -> str:
    return str(ipaddress.ip_address(address))


def servfail(wire: bytes) -> bytes | None:
    return _error(wire, dns.rcode.SERVFAIL)


def servfail_of(query: dns.message.Message) -> bytes:
    response = dns.message.make_response(query)
    response.set_rcode(dns.rcode.SERVFAIL)
    return to_wire(response, 65535)
