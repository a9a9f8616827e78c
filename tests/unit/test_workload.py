"""The default workload over loopback: who-am-I text, /json with the client address, echoes."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

from lab import workload


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
async def server(monkeypatch):
    monkeypatch.setenv("POD_NAME", "web-1")
    monkeypatch.setenv("POD_NAMESPACE", "shop")
    monkeypatch.setenv("POD_IP", "10.244.1.7")
    http, echo = free_port(), free_port()
    ready = asyncio.Event()
    task = asyncio.create_task(workload.serve(http, echo, host="127.0.0.1", ready=ready))
    await asyncio.wait_for(ready.wait(), 5)
    yield http, echo
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def http_exchange(port: int, raw: bytes) -> bytes:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(raw)
    await w.drain()
    data = await asyncio.wait_for(r.read(), 5)  # server closes after Connection: close
    w.close()
    return data


async def test_any_get_answers_pod_identity(server):
    http, _ = server
    data = await http_exchange(
        http, b"GET /anything HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert body == b"pod=web-1 namespace=shop ip=10.244.1.7\n"


async def test_json_reports_client_address(server):
    http, _ = server
    r, w = await asyncio.open_connection("127.0.0.1", http)
    local_port = w.get_extra_info("sockname")[1]
    w.write(b"GET /json HTTP/1.0\r\n\r\n")
    data = await asyncio.wait_for(r.read(), 5)
    w.close()
    doc = json.loads(data.partition(b"\r\n\r\n")[2])
    assert doc["pod"] == "web-1" and doc["namespace"] == "shop" and doc["ip"] == "10.244.1.7"
    assert doc["client_ip"] == "127.0.0.1" and doc["client_port"] == local_port


async def test_keep_alive_and_pipelining(server):
    http, _ = server
    r, w = await asyncio.open_connection("127.0.0.1", http)
    # two pipelined requests (one with a body to skip), then a second round on the same socket
    w.write(b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nxyzGET /b HTTP/1.1\r\n\r\n")
    got = b""
    while got.count(b"pod=web-1") < 2:
        got += await asyncio.wait_for(r.read(4096), 5)
    w.write(b"HEAD / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nConnection: close\r\n\r\n")
    rest = await asyncio.wait_for(r.read(), 5)
    w.close()
    assert got.count(b"HTTP/1.1 200 OK") == 2
    assert rest.count(b"HTTP/1.1 200 OK") == 2 and rest.count(b"pod=web-1") == 1


async def test_malformed_request_gets_400(server):
    http, _ = server
    data = await http_exchange(http, b"garbage\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 400")


async def test_tcp_echo_copies_bytes(server):
    _, echo = server
    r, w = await asyncio.open_connection("127.0.0.1", echo)
    w.write(b"hello\x00world")
    assert await asyncio.wait_for(r.readexactly(11), 5) == b"hello\x00world"
    w.close()


async def test_udp_echo_names_pod_and_client(server):
    _, echo = server
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        await loop.sock_sendto(s, b"ping", ("127.0.0.1", echo))
        data = await asyncio.wait_for(loop.sock_recv(s, 2048), 5)
    assert data == f"web-1 127.0.0.1:{port} ping".encode()
