"""Forwarding names outside our zones to the upstream servers, with a TTL-honouring cache.

Division of labour: the handler calls ``forward`` only for names that are not in any
cluster zone (cluster names are never sent upstream). UDP clients are forwarded over
one unconnected UDP socket per worker (fresh random query ids, matched back by id, the
upstream's address and the question); TCP clients over a TCP connection per query. An
upstream that does not answer within ``timeout`` is retried on the next one, then the
client gets SERVFAIL. Answers (NOERROR and NXDOMAIN, not truncated) are cached until the
smallest TTL in them runs out (capped); a hit is served without parsing: the id, the RD
bit and the question (the client's letter case) are patched in and every TTL is aged by
the time spent in the cache. ``resolve`` is the same machinery for ExternalName targets.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import struct
import time
from collections.abc import Callable

import dnslib

from .metrics import Stats
from .wire import AAAA, CNAME, NXDOMAIN, RR, SERVFAIL, A, Question, min_ttl, ttl_offsets

log = logging.getLogger("clusterdns")

Reply = Callable[[bytes], None]


def parse_upstream(spec: str) -> tuple[str, int]:
    """``IP``, ``IP:PORT`` or ``[v6]:PORT`` -> (ip, port)."""
    spec = spec.strip()
    if spec.startswith("["):
        host, _, port = spec[1:].partition("]:")
        return host, int(port or 53)
    if spec.count(":") == 1:
        host, port = spec.split(":")
        return host, int(port)
    return spec, 53


class Forwarder:
    def __init__(
        self,
        upstreams: list[tuple[str, int]],
        stats: Stats,
        timeout: float = 2.0,
        max_entries: int = 10000,
        max_ttl: int = 3600,
        max_neg_ttl: int = 1800,
    ):
        self.upstreams = upstreams
        self.enabled = bool(upstreams)
        self.stats = stats
        self.timeout = timeout
        self.max_entries = max_entries
        self.max_ttl = max_ttl
        self.max_neg_ttl = max_neg_ttl
        self.cache: dict[bytes, tuple[float, float, bytes, list[int]]] = {}
        self._pending: dict[int, list] = {}
        self._socks: dict[int, socket.socket] = {}
        self._tasks: set[asyncio.Task] = set()
        self._timer: asyncio.Task | None = None

    async def start(self) -> None:
        if not self.enabled:
            return
        loop = asyncio.get_running_loop()
        for fam in {socket.AF_INET6 if ":" in h else socket.AF_INET for h, _ in self.upstreams}:
            s = socket.socket(fam, socket.SOCK_DGRAM)
            s.setblocking(False)
            s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", 0))
            loop.add_reader(s.fileno(), self._on_upstream, s)
            self._socks[fam] = s
        self._timer = loop.create_task(self._expire_loop())

    async def stop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._timer:
            self._timer.cancel()
        for s in self._socks.values():
            loop.remove_reader(s.fileno())
            s.close()

    # -- cache ---------------------------------------------------------------------------
    @staticmethod
    def cache_key(q: Question, data: bytes) -> bytes:
        tail = b"E" if q.edns else b""
        if q.do:
            tail += b"D"
        return data[12 : q.end].lower() + tail if not q.compressed else b""

    def cached(self, key: bytes, data: bytes, q: Question) -> bytes | None:
        ent = self.cache.get(key)
        if ent is None:
            return None
        expires, stored, resp, offsets = ent
        now = time.monotonic()
        if now >= expires:
            del self.cache[key]
            return None
        out = bytearray(resp)
        out[0:2] = data[0:2]
        out[2] = (out[2] & 0xFE) | (data[2] & 1)
        out[12 : q.end] = data[12 : q.end]
        age = int(now - stored)
        if age:
            for off in offsets:
                (ttl,) = struct.unpack_from("!I", out, off)
                struct.pack_into("!I", out, off, max(0, ttl - age))
        return bytes(out)

    def store(self, key: bytes, resp: bytes) -> None:
        if not key or len(resp) < 12 or resp[2] & 0x02:  # no key, or truncated
            return
        rcode = resp[3] & 0xF
        if rcode not in (0, NXDOMAIN):
            return
        offsets = ttl_offsets(resp)
        if offsets is None:
            return
        an = struct.unpack_from("!H", resp, 6)[0]
        ttl = min_ttl(resp, offsets) if offsets else 5
        ttl = min(ttl, self.max_ttl if (rcode == 0 and an) else self.max_neg_ttl)
        if ttl <= 0:
            return
        if len(self.cache) >= self.max_entries:
            for k in list(self.cache)[: max(1, self.max_entries // 10)]:
                del self.cache[k]
        now = time.monotonic()
        self.cache[key] = (now + ttl, now, resp, offsets)

    # -- forwarding ----------------------------------------------------------------------
    def forward(self, q: Question, data: bytes, tcp: int, reply: Reply) -> None:
        key = self.cache_key(q, data)
        hit = self.cached(key, data, q) if key else None
        if hit is not None:
            self.stats.cache_hit += 1
            reply(hit)
            return
        self.stats.cache_miss += 1
        if tcp:
            t = asyncio.get_running_loop().create_task(self._tcp(q, data, key, reply))
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)
            return
        self._send(data, q, key, reply, 0)

    def _new_id(self) -> int:
        while True:
            i = random.getrandbits(16)
            if i not in self._pending:
                return i

    def _send(self, data: bytes, q: Question, key: bytes, reply: Reply, attempt: int) -> None:
        up = self.upstreams[attempt % len(self.upstreams)]
        uid = self._new_id()
        qid = data[0:2]
        msg = struct.pack("!H", uid) + data[2:]
        sock = self._socks[socket.AF_INET6 if ":" in up[0] else socket.AF_INET]
        self._pending[uid] = [
            reply,
            q,
            data,
            key,
            time.monotonic() + self.timeout,
            attempt,
            up,
            qid,
        ]
        self.stats.fwd_req += 1
        try:
            sock.sendto(msg, up)
        except OSError as e:
            log.debug("send to upstream %s failed: %s", up, e)

    def _on_upstream(self, sock: socket.socket) -> None:
        for _ in range(256):
            try:
                resp, addr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if len(resp) < 12:
                continue
            uid = (resp[0] << 8) | resp[1]
            p = self._pending.get(uid)
            if p is None:
                continue
            reply, q, data, key, _, _, up, qid = p
            if (addr[0], addr[1]) != up or resp[12 : q.end].lower() != data[12 : q.end].lower():
                continue  # not from whom we asked, or not our question: ignore (spoofing)
            del self._pending[uid]
            self.stats.fwd_resp[resp[3] & 0xF] += 1
            self.store(key, resp)
            out = bytearray(resp)
            out[0:2] = qid
            out[12 : q.end] = data[12 : q.end]
            try:
                reply(bytes(out))
            except Exception:
                log.exception("reply failed")

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            now = time.monotonic()
            for uid, p in list(self._pending.items()):
                if p[4] > now:
                    continue
                del self._pending[uid]
                reply, q, data, key, _, attempt, _, _ = p
                self.stats.fwd_timeout += 1
                if attempt + 1 < max(2, len(self.upstreams)):
                    self._send(data, q, key, reply, attempt + 1)
                else:
                    reply(servfail_for(data, q))

    async def _tcp(self, q: Question, data: bytes, key: bytes, reply: Reply) -> None:
        for attempt in range(max(1, len(self.upstreams))):
            host, port = self.upstreams[attempt % len(self.upstreams)]
            self.stats.fwd_req += 1
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection(host, port), self.timeout)
                try:
                    w.write(struct.pack("!H", len(data)) + data)
                    n = struct.unpack("!H", await asyncio.wait_for(r.readexactly(2), self.timeout))[
                        0
                    ]
                    resp = await asyncio.wait_for(r.readexactly(n), self.timeout)
                finally:
                    w.close()
                if len(resp) >= 12 and resp[0:2] == data[0:2]:
                    self.stats.fwd_resp[resp[3] & 0xF] += 1
                    self.store(key, resp)
                    reply(resp)
                    return
            except (TimeoutError, OSError, asyncio.IncompleteReadError) as e:
                self.stats.fwd_timeout += 1
                log.debug("tcp upstream %s:%d failed: %s", host, port, e)
        reply(servfail_for(data, q))

    # -- resolving a name for ourselves (ExternalName targets) ---------------------------
    async def resolve(self, name: str, qtype: int) -> list[RR]:
        """A/AAAA (and CNAME) records for ``name`` from the upstream; [] on failure."""
        rec = dnslib.DNSRecord.question(name, dnslib.QTYPE[qtype])
        data = bytes(rec.pack())
        from .wire import parse_query

        q = parse_query(data)
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        def done(resp: bytes) -> None:
            if not fut.done():
                fut.set_result(resp)

        self.forward(q, data, 0, done)
        try:
            resp = await asyncio.wait_for(fut, self.timeout * 3)
        except TimeoutError:
            return []
        try:
            msg = dnslib.DNSRecord.parse(resp)
        except Exception:
            return []
        out: list[RR] = []
        for rr in msg.rr:
            owner = str(rr.rname).rstrip(".").lower()
            if rr.rtype in (A, AAAA):
                out.append(RR(owner, rr.rtype, rr.ttl, _rdata_bytes(rr)))
            elif rr.rtype == CNAME:
                out.append(RR(owner, CNAME, rr.ttl, str(rr.rdata.label).rstrip(".").lower()))
        return out


def _rdata_bytes(rr: dnslib.RR) -> bytes:
    import ipaddress

    return ipaddress.ip_address(str(rr.rdata)).packed


def servfail_for(data: bytes, q: Question) -> bytes:
    """SERVFAIL echoing the question (and an OPT if the query had one)."""
    flags = 0x8000 | 0x0080 | (data[2] & 1) << 8 | SERVFAIL
    opt = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00" if q.edns else b""
    return (
        data[0:2] + struct.pack("!HHHHH", flags, 1, 0, 0, 1 if opt else 0) + data[12 : q.end] + opt
    )
