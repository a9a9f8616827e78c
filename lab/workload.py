"""The default pod workload: who-am-I HTTP plus TCP and UDP echo, fast enough for benchmarks.

``python -m lab.workload`` is what the kubelet runs for a pod without a command. It answers
any HTTP GET on $HTTP_PORT (default 8080) with ``pod=<POD_NAME> namespace=<POD_NAMESPACE>
ip=<POD_IP>`` so load-balancing is visible from curl, and ``/json`` with the same plus the
client address the server saw (tests check source NAT with it). $ECHO_PORT (default 9000)
carries a TCP echo (bytes copied back) and a UDP echo answering ``<POD_NAME> <client
ip:port> <payload>``.

The HTTP side is a minimal HTTP/1.1 responder on asyncio Protocols (keep-alive, pipelining,
HEAD, bodies skipped by Content-Length), not a framework, so one core serves tens of
thousands of requests per second and the server is never the bottleneck of a proxy benchmark.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from dataclasses import dataclass

from kubecommon.aio import run_until_signalled

log = logging.getLogger("workload")

MAX_HEADER = 64 * 1024


@dataclass(frozen=True, slots=True)
class Identity:
    pod: str
    namespace: str
    ip: str
    node: str

    @classmethod
    def from_env(cls) -> Identity:
        return cls(
            pod=os.environ.get("POD_NAME") or socket.gethostname(),
            namespace=os.environ.get("POD_NAMESPACE", "default"),
            ip=os.environ.get("POD_IP", ""),
            node=os.environ.get("NODE_NAME", ""),
        )

    def text(self) -> bytes:
        return f"pod={self.pod} namespace={self.namespace} ip={self.ip}\n".encode()


def response(status: str, body: bytes, content_type: str, keep_alive: bool, head: bool) -> bytes:
    hdr = (
        f"HTTP/1.1 {status}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    ).encode()
    return hdr if head else hdr + body


@dataclass(slots=True)
class Request:
    method: str
    path: str
    keep_alive: bool
    body_len: int
    host: str


def parse_head(head: bytes) -> Request | None:
    """Parse a request line + headers (without the blank line); None when malformed."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return None
    version11 = parts[2] == b"HTTP/1.1"
    conn = b""
    body_len = 0
    host = b""
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        name = name.strip().lower()
        if name == b"connection":
            conn = value.strip().lower()
        elif name == b"content-length":
            try:
                body_len = int(value.strip())
            except ValueError:
                return None
        elif name == b"host":
            host = value.strip()
    keep_alive = (conn != b"close") if version11 else (conn == b"keep-alive")
    return Request(
        method=parts[0].decode("latin-1"),
        path=parts[1].decode("latin-1"),
        keep_alive=keep_alive,
        body_len=body_len,
        host=host.decode("latin-1"),
    )


class HttpProtocol(asyncio.Protocol):
    """One connection: parse whatever requests are buffered, answer them in one write."""

    __slots__ = ("ident", "text", "transport", "buf", "skip", "peer")

    def __init__(self, ident: Identity, text: bytes):
        self.ident = ident
        self.text = text
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.skip = 0
        self.peer: tuple[str, int] = ("", 0)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = (peer[0], peer[1])

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        out: list[bytes] = []
        close = False
        while buf:
            if self.skip:
                n = min(self.skip, len(buf))
                self.skip -= n
                buf = buf[n:]
                continue
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEADER:
                    out.append(
                        response(
                            "431 Request Header Fields Too Large", b"", "text/plain", False, False
                        )
                    )
                    close = True
                    buf = b""
                break
            req = parse_head(buf[:end])
            buf = buf[end + 4 :]
            if req is None:
                out.append(
                    response("400 Bad Request", b"bad request\n", "text/plain", False, False)
                )
                close = True
                break
            self.skip = req.body_len
            out.append(self.answer(req))
            if not req.keep_alive:
                close = True
                break
        self.buf = buf
        if out and self.transport is not None:
            self.transport.write(b"".join(out) if len(out) > 1 else out[0])
        if close and self.transport is not None:
            self.transport.close()

    def answer(self, req: Request) -> bytes:
        head = req.method == "HEAD"
        path = req.path.split("?", 1)[0]
        if path == "/json":
            body = (
                json.dumps(
                    {
                        "pod": self.ident.pod,
                        "namespace": self.ident.namespace,
                        "ip": self.ident.ip,
                        "node": self.ident.node,
                        "client": f"{self.peer[0]}:{self.peer[1]}",
                        "client_ip": self.peer[0],
                        "client_port": self.peer[1],
                        "method": req.method,
                        "path": req.path,
                        "host": req.host,
                    },
                    sort_keys=True,
                ).encode()
                + b"\n"
            )
            return response("200 OK", body, "application/json", req.keep_alive, head)
        return response("200 OK", self.text, "text/plain", req.keep_alive, head)


class TcpEcho(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]


class UdpEcho(asyncio.DatagramProtocol):
    def __init__(self, pod: str):
        self.prefix = pod.encode()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        if self.transport is not None:
            reply = b"%s %s:%d %s" % (self.prefix, addr[0].encode(), addr[1], data)
            self.transport.sendto(reply, addr)


async def serve(
    http_port: int, echo_port: int, host: str = "0.0.0.0", ready: asyncio.Event | None = None
) -> None:
    """Run the three listeners until cancelled (or SIGTERM/SIGINT when run as a program)."""
    loop = asyncio.get_running_loop()
    ident = Identity.from_env()
    text = ident.text()
    servers = [
        await loop.create_server(
            lambda: HttpProtocol(ident, text), host, http_port, reuse_address=True, backlog=1024
        )
    ]
    if echo_port:
        servers.append(await loop.create_server(TcpEcho, host, echo_port, reuse_address=True))
        await loop.create_datagram_endpoint(
            lambda: UdpEcho(ident.pod), local_addr=(host, echo_port)
        )
    log.info("serving http on %s:%d, echo on %d", host, http_port, echo_port)
    if ready is not None:
        ready.set()
    try:
        await asyncio.Event().wait()
    finally:
        for s in servers:
            s.close()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s workload %(levelname)s %(message)s")
    http_port = int(os.environ.get("HTTP_PORT") or 8080)
    echo_port = int(os.environ.get("ECHO_PORT") or 9000)
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = None

    run_until_signalled(lambda: serve(http_port, echo_port), loop_factory=loop_factory)


if __name__ == "__main__":
    main()
