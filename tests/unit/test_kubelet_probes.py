"""Readiness probes: parsing, the no-probe default, and real checks against loopback servers."""

from __future__ import annotations

import asyncio

import pytest

from lab.kubelet.probes import Probe, ReadinessLoop, parse_probe, run_once


def test_parse_probes_and_defaults():
    named = {"http": 8080}.get
    assert parse_probe(None, 8080, named) == Probe(kind="port", port=8080, period=1.0)
    assert parse_probe(None, None, named).kind == "running"
    p = parse_probe(
        {
            "httpGet": {"path": "/ready", "port": "http"},
            "periodSeconds": 2,
            "initialDelaySeconds": 1,
            "failureThreshold": 5,
        },
        8080,
        named,
    )
    assert (p.kind, p.port, p.path, p.period, p.initial_delay, p.failure_threshold) == (
        "http",
        8080,
        "/ready",
        2,
        1,
        5,
    )
    assert parse_probe({"tcpSocket": {"port": 9000}}, None, named).port == 9000
    assert parse_probe({"exec": {"command": ["true"]}}, None, named).command == ("true",)
    with pytest.raises(ValueError):
        parse_probe({"httpGet": {"port": "nope"}}, None, named)


async def http_server(status: bytes):
    async def handle(r, w):
        await r.readuntil(b"\r\n\r\n")
        w.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\n\r\n")
        await w.drain()
        w.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    return srv, srv.sockets[0].getsockname()[1]


async def test_http_and_tcp_checks():
    ok, ok_port = await http_server(b"200 OK")
    bad, bad_port = await http_server(b"503 Service Unavailable")
    try:
        assert await run_once(Probe(kind="http", port=ok_port), "127.0.0.1", "", True)
        assert not await run_once(Probe(kind="http", port=bad_port), "127.0.0.1", "", True)
        assert await run_once(Probe(kind="tcp", port=ok_port), "127.0.0.1", "", True)
        assert not await run_once(
            Probe(kind="tcp", port=ok_port), "127.0.0.1", "", False
        )  # not running
    finally:
        ok.close()
        bad.close()


async def test_loop_turns_ready_fast_then_unready_after_threshold():
    srv, port = await http_server(b"200 OK")
    changes: list[bool] = []
    loop_ = ReadinessLoop(
        Probe(kind="tcp", port=port, period=0.05, failure_threshold=2),
        "127.0.0.1",
        "",
        lambda: True,
        lambda: 1,
        lambda: changes.append(loop_.ready),
    )
    task = asyncio.create_task(loop_.run())
    try:
        for _ in range(100):
            if loop_.ready:
                break
            await asyncio.sleep(0.01)
        assert loop_.ready
        srv.close()
        await srv.wait_closed()
        for _ in range(200):
            if not loop_.ready:
                break
            await asyncio.sleep(0.01)
        assert not loop_.ready and changes == [True, False]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
