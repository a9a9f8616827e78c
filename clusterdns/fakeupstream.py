"""A fake upstream DNS server for tests, the benchmark and the lab (never a real resolver).

``python -m clusterdns.fakeupstream --listen 127.0.0.1 --port 5353`` answers every A query
with ``--answer`` (default 192.0.2.10, TEST-NET-1) and every AAAA with 2001:db8::10, TTL
``--ttl``; names under ``nx.`` get NXDOMAIN. UDP and TCP. It counts queries per name so a
test can see what reached it (``/stats`` is not needed: the log line per query is enough
at DEBUG; ``FakeUpstream.seen`` in-process).
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import Counter

import click
import dnslib

log = logging.getLogger("fakeupstream")


class FakeUpstream(asyncio.DatagramProtocol):
    def __init__(self, answer: str = "192.0.2.10", ttl: int = 300):
        self.answer = answer
        self.ttl = ttl
        self.seen: Counter[str] = Counter()
        self.transport: asyncio.DatagramTransport | None = None

    def respond(self, data: bytes) -> bytes | None:
        try:
            q = dnslib.DNSRecord.parse(data)
        except Exception:
            return None
        name = str(q.q.qname).rstrip(".").lower()
        self.seen[name] += 1
        r = q.reply()
        r.header.ra = 1
        r.header.aa = 0
        if name.startswith("nx.") or ".nx." in name:
            r.header.rcode = dnslib.RCODE.NXDOMAIN
            r.add_auth(
                dnslib.RR(
                    "test",
                    dnslib.QTYPE.SOA,
                    ttl=60,
                    rdata=dnslib.SOA("ns.test", "hostmaster.test", (1, 3600, 600, 86400, 60)),
                )
            )
        elif q.q.qtype == dnslib.QTYPE.A:
            r.add_answer(
                dnslib.RR(q.q.qname, dnslib.QTYPE.A, ttl=self.ttl, rdata=dnslib.A(self.answer))
            )
        elif q.q.qtype == dnslib.QTYPE.AAAA:
            r.add_answer(
                dnslib.RR(
                    q.q.qname, dnslib.QTYPE.AAAA, ttl=self.ttl, rdata=dnslib.AAAA("2001:db8::10")
                )
            )
        elif q.q.qtype == dnslib.QTYPE.PTR:
            r.add_answer(
                dnslib.RR(
                    q.q.qname, dnslib.QTYPE.PTR, ttl=self.ttl, rdata=dnslib.PTR("upstream.test")
                )
            )
        return bytes(r.pack())

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        out = self.respond(data)
        if out is not None and self.transport is not None:
            self.transport.sendto(out, addr)

    async def tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                n = struct.unpack("!H", await reader.readexactly(2))[0]
                out = self.respond(await reader.readexactly(n))
                if out is None:
                    break
                writer.write(struct.pack("!H", len(out)) + out)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def serve(listen: str, port: int, answer: str, ttl: int) -> FakeUpstream:
    loop = asyncio.get_running_loop()
    proto = FakeUpstream(answer, ttl)
    await loop.create_datagram_endpoint(lambda: proto, local_addr=(listen, port))
    await asyncio.start_server(proto.tcp, listen, port)
    return proto


@click.command()
@click.option("--listen", default="127.0.0.1", show_default=True)
@click.option("--port", default=5353, show_default=True, type=int)
@click.option("--answer", default="192.0.2.10", show_default=True)
@click.option("--ttl", default=300, show_default=True, type=int)
def main(listen: str, port: int, answer: str, ttl: int) -> None:
    """Answer every A query with a fixed address (tests and benchmarks only)."""
    logging.basicConfig(level=logging.INFO)

    async def run() -> None:
        await serve(listen, port, answer, ttl)
        log.info("fake upstream on %s:%d answering %s", listen, port, answer)
        await asyncio.Event().wait()

    asyncio.run(run())


if __name__ == "__main__":
    main()
