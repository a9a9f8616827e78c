"""The hot path: answer a query from the precomputed index with a handful of byte operations.

Division of labour: ``make_fast`` returns ``fast(data, tcp) -> bytes | None``. It reads the
header and the question by hand (bounds-checked; the question must be the single,
uncompressed one of an ordinary query with at most an OPT record), looks the lowercased
question up in ``index.table`` and glues ``id + header + the query's question + body``.
Misses inside a zone become NXDOMAIN or NODATA (with the SOA) right there. Anything
else (truncation, forwarding, ExternalName chasing, pods insecure, odd opcodes or
classes, EDNS versions, garbage) returns None and goes to ``Handler.slow``, which parses
strictly, answers with the same rules, forwards, or counts and drops the packet.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Callable

from . import reverse
from .external import chase
from .forward import Forwarder
from .index import OPT_BYTES, Index
from .metrics import BUCKETS, Stats
from .parse import POD, InvalidName, parse_request
from .records import addr_rr, pod_ip_from_label
from .wire import (
    AAAA,
    CLASS_IN,
    MAX_UDP_PLAIN,
    NOERROR,
    NOTIMP,
    NXDOMAIN,
    PTR,
    REFUSED,
    RR,
    SERVFAIL,
    TC,
    A,
    Message,
    Question,
    WireError,
    encode_name,
    flags_counts,
    opt_rr,
    parse_query,
)

log = logging.getLogger("clusterdns")

Reply = Callable[[bytes], None]

_PLAIN = b"\x00\x01\x00\x00\x00\x00\x00\x00"
_EDNS = b"\x00\x01\x00\x00\x00\x00\x00\x01"
_PTRS = [bytes([0xC0 | (o >> 8), o & 0xFF]) for o in range(0, 600)]


def _neg_headers(rcode: int) -> list[bytes]:
    """flags+counts for a negative answer indexed by rd + 2*edns (one SOA in Authority)."""
    return [flags_counts(rcode, rd, 0, 1, edns) for edns in (0, 1) for rd in (False, True)]


def make_fast(index: Index, stats: Stats) -> Callable[[bytes, int], bytes | None]:
    table_get = index.table.get
    nodata_get = index.nodata.get
    dynamic = index.dynamic
    soa_tails = index.soa_tails
    zone_wires = index.zone_wires
    pod_wires = [b"\x03pod" + zw for zw in zone_wires]
    insecure = index.pods == "insecure"
    resp = stats.resp
    neg = (_neg_headers(NOERROR), None, None, _neg_headers(NXDOMAIN))
    ptrs = _PTRS
    opt = OPT_BYTES

    def fast(data: bytes, tcp: int) -> bytes | None:
        """tcp: 0 for UDP, 16 for TCP (also the offset of the TCP rcode counters)."""
        if len(data) < 17:
            return None
        c = data[4:12]
        if c == _PLAIN:
            edns = 0
        elif c == _EDNS:
            edns = 1
        else:
            return None
        if data[2] & 0xF8:  # QR set or opcode != QUERY
            return None
        i = data.find(0, 12)
        if i < 0:
            return None
        e = i + 5
        q = data[12:e]
        if edns:
            n = len(data)
            if (
                n < e + 11
                or data[e] != 0
                or data[e + 1] != 0
                or data[e + 2] != 41
                or data[e + 6] != 0
                or n != e + 11 + ((data[e + 9] << 8) | data[e + 10])
            ):
                return None
            size = (data[e + 3] << 8) | data[e + 4]
        elif len(data) != e:
            return None
        key = q.lower()
        v = table_get(key)
        rd = data[2] & 1
        if v is not None:
            if edns:
                if not tcp and v[7] > size and v[7] > 512:
                    return None
                resp[tcp + v[8]] += 1
                return data[:2] + v[2 + rd] + q + v[5]
            if not tcp and v[6] > 512:
                return None
            resp[tcp + v[8]] += 1
            return data[:2] + v[rd] + q + v[4]
        # not in the table: NODATA / NXDOMAIN for names in our zones
        if q[-2:] != b"\x00\x01":  # class IN only
            return None
        name = key[:-4]
        if name in dynamic:
            return None
        zid = nodata_get(name)
        if zid is not None:
            rcode = 0
            off = len(name) - len(zone_wires[zid])
        else:
            if not index.synced:
                return None
            ln = len(name)
            zid = -1
            for z, zw in enumerate(zone_wires):
                if name.endswith(zw):
                    zid = z
                    break
            if zid < 0:
                return None
            off = ln - len(zone_wires[zid])
            p = 0
            boundary = off == 0
            last = ln - 1
            while p < last:
                lab = name[p]
                if lab > 63:
                    return None
                p += lab + 1
                if p == off:
                    boundary = True
            if p != last or not boundary:
                return None
            if insecure and name.endswith(pod_wires[zid]):
                return None
            rcode = 3
        resp[tcp + rcode] += 1
        if edns:
            return data[:2] + neg[rcode][2 + rd] + q + ptrs[12 + off] + soa_tails[zid] + opt
        return data[:2] + neg[rcode][rd] + q + ptrs[12 + off] + soa_tails[zid]

    return fast


def make_udp_reader(sock, fast, slow, stats: Stats) -> Callable[[], None]:
    """The loop's reader callback for one UDP socket: drain it, answer, send."""
    recvfrom = sock.recvfrom
    sendto = sock.sendto
    perf = time.perf_counter
    hist = stats.hist
    first = BUCKETS[0]
    observe = stats.observe

    def on_readable() -> None:
        for _ in range(256):  # then let the loop run informer events
            try:
                data, addr = recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            t0 = perf()
            try:
                out = fast(data, 0)
            except Exception:  # never let one packet kill the worker
                out = None
            if out is None:
                slow(data, addr, 0)
                continue
            try:
                sendto(out, addr)
            except OSError:
                pass
            d = perf() - t0
            if d <= first:
                hist[0] += 1
                stats.dur_sum += d
            else:
                observe(d)

    return on_readable


class Handler:
    """The slow path: strict parse, same rules as the fast path, plus everything else."""

    def __init__(self, index: Index, forwarder: Forwarder | None, stats: Stats):
        self.index = index
        self.forwarder = forwarder
        self.stats = stats
        self.fast = make_fast(index, stats)
        self._tasks: set[asyncio.Task] = set()

    # -- entry points ---------------------------------------------------------------------
    def slow_udp(self, sock) -> Callable[[bytes, tuple, int], None]:
        def slow(data: bytes, addr: tuple, tcp: int) -> None:
            def reply(out: bytes) -> None:
                try:
                    sock.sendto(out, addr)
                except OSError:
                    pass

            self.slow(data, reply, 0)

        return slow

    def slow(self, data: bytes, reply: Reply, tcp: int) -> None:
        t0 = time.perf_counter()
        try:
            q = parse_query(data)
        except (WireError, UnicodeError, IndexError, struct.error):
            self.stats.malformed += 1
            return
        except Exception:  # defensive: a parser bug must not crash the worker
            log.exception("unexpected error parsing a query")
            self.stats.malformed += 1
            return

        def timed_reply(out: bytes) -> None:
            self.stats.resp[tcp + (out[3] & 0xF)] += 1
            reply(out)
            self.stats.observe(time.perf_counter() - t0)

        try:
            self._dispatch(q, data, timed_reply, tcp)
        except Exception:
            log.exception("failed to answer %r type %d", q.name, q.qtype)
            try:
                timed_reply(self.build(q, data, SERVFAIL, tcp=tcp))
            except Exception:
                self.stats.malformed += 1

    # -- the rules ------------------------------------------------------------------------
    def _dispatch(self, q: Question, data: bytes, reply: Reply, tcp: int) -> None:
        idx = self.index
        opcode = (q.flags >> 11) & 0xF
        if opcode != 0:
            reply(self.build(q, data, NOTIMP, tcp=tcp, aa=False))
            return
        if q.edns and q.edns_version != 0:
            reply(self.build(q, data, 16, tcp=tcp, aa=False))  # BADVERS
            return
        if q.qclass != CLASS_IN:
            reply(self.build(q, data, REFUSED, tcp=tcp, aa=False))
            return
        zid = idx.zone_of(q.name)
        if zid is not None:
            if not idx.synced:
                reply(self.build(q, data, SERVFAIL, tcp=tcp, aa=False))
                return
            rrset = idx.rrset_full(q.name, q.qtype)
            if rrset is not None:
                reply(self.build(q, data, NOERROR, rrset[0], (), rrset[1], tcp=tcp))
                return
            if q.qtype in (A, AAAA) and encode_name(q.name) in idx.dynamic:
                self._spawn(self._chase(q, data, reply, tcp))
                return
            if idx.exists(q.name):
                reply(self.negative(q, data, NOERROR, zid, tcp))
                return
            if idx.pods == "insecure":
                ans = self._insecure_pod(q, zid)
                if ans is not None:
                    rcode, rrs = ans
                    if rrs:
                        reply(self.build(q, data, NOERROR, rrs, tcp=tcp))
                    else:
                        reply(self.negative(q, data, rcode, zid, tcp))
                    return
            reply(self.negative(q, data, NXDOMAIN, zid, tcp))
            return
        if q.qtype == PTR and reverse.is_reverse(q.name):
            rrset = idx.rrset_full(q.name, PTR)
            if rrset is not None:
                reply(self.build(q, data, NOERROR, rrset[0], (), rrset[1], tcp=tcp))
                return
        fw = self.forwarder
        if fw is None or not fw.enabled:
            reply(self.build(q, data, REFUSED, tcp=tcp, aa=False))
            return
        fw.forward(q, data, tcp, reply)

    def _insecure_pod(self, q: Question, zid: int) -> tuple[int, tuple[RR, ...]] | None:
        """``pods insecure``: any dashed IP in an existing namespace answers with that IP."""
        zone = self.index.zones[zid]
        try:
            r = parse_request(q.name, zone)
        except InvalidName:
            return None
        if r.pod_or_svc != POD or not r.service or r.endpoint or r.port:
            return None
        if not self.index.exists(f"{r.namespace}.pod.{zone}"):
            return None
        ip = pod_ip_from_label(r.service)
        if ip is None:
            return NXDOMAIN, ()
        rr = addr_rr(None, ip, self.index.ttl)
        if rr.rtype == q.qtype:
            return NOERROR, (rr,)
        return NOERROR, ()

    async def _chase(self, q: Question, data: bytes, reply: Reply, tcp: int) -> None:
        rrs = await chase(self.index, self.forwarder, q.name, q.qtype)
        reply(self.build(q, data, NOERROR, tuple(rrs), tcp=tcp))

    def _spawn(self, coro) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    # -- building responses on the slow path ---------------------------------------------
    @staticmethod
    def question_bytes(q: Question, data: bytes) -> bytes:
        raw = data[12 : q.end]
        if not q.compressed:
            return raw
        return Message.encode_any(q.name) + raw[-4:]

    def build(
        self,
        q: Question,
        data: bytes,
        rcode: int,
        answers: tuple[RR, ...] = (),
        authority: tuple[RR, ...] = (),
        additional: tuple[RR, ...] = (),
        tcp: int = 0,
        aa: bool = True,
    ) -> bytes:
        qb = self.question_bytes(q, data)
        qname_len = len(qb) - 4
        m = Message(q.name, qname_len)
        for rr in answers:
            m.add(rr)
        for rr in authority:
            m.add(rr)
        for rr in additional:
            m.add(rr)
        ext, rc = rcode >> 4, rcode & 0xF
        opt = opt_rr(ext_rcode=ext) if q.edns else b""
        rd = bool(q.flags & 0x0100)
        hdr = flags_counts(rc, rd, len(answers), len(authority), len(additional) + bool(opt), aa)
        out = struct.pack("!H", q.qid) + hdr + qb + bytes(m.buf) + opt
        limit = max(q.udp_size, MAX_UDP_PLAIN) if q.edns else MAX_UDP_PLAIN
        if not tcp and len(out) > limit:
            hdr = flags_counts(rc, rd, 0, 0, bool(opt), aa)
            flags = struct.unpack_from("!H", hdr)[0] | TC
            out = struct.pack("!HH", q.qid, flags) + hdr[2:] + qb + opt
        return out

    def negative(self, q: Question, data: bytes, rcode: int, zid: int, tcp: int) -> bytes:
        from .ns import soa_rr

        idx = self.index
        zone = idx.zones[zid]
        return self.build(q, data, rcode, (), (soa_rr(zone, idx.ttl, idx.serial),), (), tcp=tcp)
