"""DNS wire format by hand: the few pieces the precomputed index and the hot path need.

Division of labour: this module encodes names and resource records into bytes (with
RFC 1035 name compression inside one message), lays out response headers, walks a
query's question section with strict bounds checks, and reads an EDNS0 OPT record.
It never allocates a dnslib object: dnslib is for the slow path (``handler.slow``),
this is for the table of ready-made answers that ``index`` builds whenever the API
changes. All names here are ``str`` in presentation form without the trailing dot
(``web.demo.svc.cluster.local``); the root is ``""``.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import struct
from dataclasses import dataclass

# RR types and classes we produce or look at
A, NS, CNAME, SOA, PTR, TXT, AAAA, SRV, OPT, ANY = 1, 2, 5, 6, 12, 16, 28, 33, 41, 255
CLASS_IN = 1
TYPE_NAMES = {
    A: "A",
    NS: "NS",
    CNAME: "CNAME",
    SOA: "SOA",
    PTR: "PTR",
    TXT: "TXT",
    AAAA: "AAAA",
    SRV: "SRV",
    OPT: "OPT",
    ANY: "ANY",
}

# rcodes
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5

# header flag bits (16-bit flags word)
QR, AA, TC, RD, RA = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080

QUESTION_OFFSET = 12
EDNS_UDP_SIZE = 1232  # what we advertise (DNS flag day 2020)
MAX_UDP_PLAIN = 512


class WireError(ValueError):
    """A packet that is not a well-formed DNS message (counted and dropped by the caller)."""


@functools.lru_cache(maxsize=1 << 17)
def encode_name(name: str) -> bytes:
    """Uncompressed wire form of ``name`` (lowercased by the caller if wanted)."""
    if not name or name == ".":
        return b"\x00"
    out = bytearray()
    for label in name.rstrip(".").split("."):
        raw = label.encode("ascii")
        if not 0 < len(raw) < 64:
            raise ValueError(f"bad label {label!r} in {name!r}")
        out.append(len(raw))
        out += raw
    out.append(0)
    if len(out) > 255:
        raise ValueError(f"name too long: {name!r}")
    return bytes(out)


def rdata_for(rtype: int, value: object) -> bytes | tuple:
    """Rdata that has no names in it as bytes; rdata with names as a tuple for ``Message``."""
    if rtype == A:
        return socket.inet_pton(socket.AF_INET, value)  # type: ignore[arg-type]
    if rtype == AAAA:
        return ipaddress.IPv6Address(value).packed  # type: ignore[arg-type]
    if rtype == TXT:
        raw = str(value).encode()
        return bytes([len(raw)]) + raw
    raise ValueError(f"rdata_for: type {rtype}")


@dataclass(frozen=True, slots=True, order=True)
class RR:
    """One resource record in a form the message builder understands.

    ``rdata`` is bytes for A/AAAA/TXT, a name for PTR/CNAME/NS, ``(prio, weight, port, target)``
    for SRV and ``(mname, rname, serial, refresh, retry, expire, minimum)`` for SOA.
    ``name`` ``None`` means "the question name" (encoded as a pointer to offset 12, which
    keeps the client's letter case).
    """

    name: str | None
    rtype: int
    ttl: int
    rdata: object


class Message:
    """Builds the sections after the question, compressing names against the question."""

    def __init__(self, qname: str, qname_len: int):
        # names already written -> offset; the question name starts at 12
        self._offsets: dict[str, int] = {}
        self._base = QUESTION_OFFSET + qname_len + 4  # first byte after the question
        self.buf = bytearray()
        labels = qname.split(".") if qname else []
        off = QUESTION_OFFSET
        for i in range(len(labels)):
            self._offsets.setdefault(".".join(labels[i:]).lower(), off)
            off += len(labels[i].encode()) + 1

    @staticmethod
    def encode_any(name: str) -> bytes:
        """Like ``encode_name`` but for any label bytes (names read from the wire)."""
        out = bytearray()
        for label in name.split(".") if name else []:
            raw = label.encode("latin-1")
            out.append(len(raw))
            out += raw
        out.append(0)
        return bytes(out)

    def _name(self, name: str) -> None:
        name = name.rstrip(".")
        labels = name.split(".") if name else []
        for i in range(len(labels)):
            suffix = ".".join(labels[i:]).lower()
            off = self._offsets.get(suffix)
            if off is not None and off < 0x3FFF:
                self.buf += struct.pack("!H", 0xC000 | off)
                return
            here = self._base + len(self.buf)
            if here < 0x3FFF:
                self._offsets[suffix] = here
            raw = labels[i].encode("latin-1")
            if not 0 < len(raw) < 64:
                raise ValueError(f"bad label in {name!r}")
            self.buf.append(len(raw))
            self.buf += raw
        self.buf.append(0)

    def add(self, rr: RR) -> None:
        if rr.name is None:
            self.buf += b"\xc0\x0c"
        else:
            self._name(rr.name)
        self.buf += struct.pack("!HHI", rr.rtype, CLASS_IN, rr.ttl)
        len_at = len(self.buf)
        self.buf += b"\x00\x00"
        if rr.rtype in (PTR, CNAME, NS):
            self._name(str(rr.rdata))
        elif rr.rtype == SRV:
            prio, weight, port, target = rr.rdata  # type: ignore[misc]
            self.buf += struct.pack("!HHH", prio, weight, port)
            self._name(target)
        elif rr.rtype == SOA:
            mname, rname, *nums = rr.rdata  # type: ignore[misc]
            self._name(mname)
            self._name(rname)
            self.buf += struct.pack("!IIIII", *nums)
        else:
            self.buf += rr.rdata  # type: ignore[operator]
        struct.pack_into("!H", self.buf, len_at, len(self.buf) - len_at - 2)


def opt_rr(udp_size: int = EDNS_UDP_SIZE, ext_rcode: int = 0, do: bool = False) -> bytes:
    """An OPT pseudo-RR (root name, no options)."""
    return struct.pack("!BHHBBHH", 0, OPT, udp_size, ext_rcode, 0, 0x8000 if do else 0, 0)


def flags_counts(rcode: int, rd: bool, an: int, ns: int, ar: int, aa: bool = True) -> bytes:
    """Bytes 2..11 of a response header (flags + the four counts, qdcount 1)."""
    flags = QR | RA | (AA if aa else 0) | (RD if rd else 0) | (rcode & 0xF)
    return struct.pack("!HHHHH", flags, 1, an, ns, ar)


@dataclass(frozen=True, slots=True)
class Question:
    """A query's question plus what the response must echo (from ``parse_query``)."""

    qid: int
    flags: int
    qname_wire: bytes  # as sent (client's case)
    name: str  # lowercased presentation form, no trailing dot
    qtype: int
    qclass: int
    end: int  # offset just after the question
    compressed: bool  # the question name used a pointer (re-encode it when answering)
    edns: bool
    udp_size: int  # client's EDNS buffer size (512 without EDNS)
    edns_version: int
    do: bool


def read_name(data: bytes, off: int, max_ptrs: int = 20) -> tuple[str, int]:
    """Decode a possibly compressed name; returns (name, offset after it). Bounds-checked,
    rejects pointer loops (too many jumps or forward-pointing chains)."""
    labels: list[str] = []
    end = -1
    jumps = 0
    n = len(data)
    total = 0
    while True:
        if off >= n:
            raise WireError("name runs past the packet")
        ln = data[off]
        if ln == 0:
            off += 1
            break
        if ln & 0xC0 == 0xC0:
            if off + 1 >= n:
                raise WireError("truncated pointer")
            ptr = ((ln & 0x3F) << 8) | data[off + 1]
            if end < 0:
                end = off + 2
            jumps += 1
            if jumps > max_ptrs or ptr >= off:
                raise WireError("compression loop")
            off = ptr
            continue
        if ln & 0xC0:
            raise WireError("bad label type")
        if off + 1 + ln > n:
            raise WireError("label runs past the packet")
        total += ln + 1
        if total > 255:
            raise WireError("name too long")
        label = data[off + 1 : off + 1 + ln]
        if b"." in label:
            raise WireError("dot inside a label")
        labels.append(label.decode("latin-1"))
        off += 1 + ln
    return ".".join(labels), (end if end >= 0 else off)


def parse_query(data: bytes) -> Question:
    """Strictly parse a query header, its single question and an optional OPT record."""
    if len(data) < 12:
        raise WireError("short header")
    qid, flags, qd, an, ns, ar = struct.unpack_from("!HHHHHH", data)
    if flags & QR:
        raise WireError("not a query")
    if qd != 1:
        raise WireError(f"qdcount {qd}")
    if an > 0 or ns > 64 or ar > 64:
        raise WireError("implausible counts")
    name_start = QUESTION_OFFSET
    name, off = read_name(data, name_start)
    if off + 4 > len(data):
        raise WireError("truncated question")
    qtype, qclass = struct.unpack_from("!HH", data, off)
    end = off + 4
    qname_wire = data[name_start:off]
    edns, udp_size, version, do = False, MAX_UDP_PLAIN, 0, False
    pos = end
    for _ in range(ns + ar):
        _, pos = read_name(data, pos)
        if pos + 10 > len(data):
            raise WireError("truncated RR")
        rtype, rclass, ttl, rdlen = struct.unpack_from("!HHIH", data, pos)
        if rtype == OPT:
            edns = True
            udp_size = max(MAX_UDP_PLAIN, rclass)
            version = (ttl >> 16) & 0xFF
            do = bool(ttl & 0x8000)
        pos += 10 + rdlen
        if pos > len(data):
            raise WireError("RR runs past the packet")
    compressed = len(qname_wire) != len(Message.encode_any(name))
    return Question(
        qid,
        flags,
        qname_wire,
        name.lower(),
        qtype,
        qclass,
        end,
        compressed,
        edns,
        udp_size,
        version,
        do,
    )


def ttl_offsets(data: bytes) -> list[int] | None:
    """Offsets of the TTL field of every answer/authority/additional RR except OPT, or None
    if the message does not parse (used by the forward cache to age answers in place)."""
    try:
        if len(data) < 12:
            return None
        qd, an, ns, ar = struct.unpack_from("!HHHH", data, 4)
        pos = 12
        for _ in range(qd):
            _, pos = read_name(data, pos)
            pos += 4
        out = []
        for _ in range(an + ns + ar):
            _, pos = read_name(data, pos)
            if pos + 10 > len(data):
                return None
            rtype, _, _, rdlen = struct.unpack_from("!HHIH", data, pos)
            if rtype != OPT:
                out.append(pos + 4)
            pos += 10 + rdlen
        if pos > len(data):
            return None
        return out
    except WireError:
        return None


def min_ttl(data: bytes, offsets: list[int]) -> int:
    """Smallest TTL at the given offsets (0 if there are none)."""
    return min((struct.unpack_from("!I", data, o)[0] for o in offsets), default=0)
