"""Userspace proxy Poller: relay sockets' readiness from our own epoll set (loopback TCP,
no root): the peer's FIN is flagged with the data, removed and closed sockets go quiet."""

import asyncio
import select
import socket

import pytest

from kubeproxy.userspace.proxy import Poller


@pytest.fixture
def pair():
    srv = socket.create_server(("127.0.0.1", 0))
    a = socket.create_connection(srv.getsockname())
    b, _ = srv.accept()
    srv.close()
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def looped():
    """A fresh event loop and a Poller on it, both closed afterwards."""
    loop = asyncio.new_event_loop()
    poller = Poller(loop)
    yield loop, poller
    poller.close()
    loop.close()


def run_once(loop: asyncio.AbstractEventLoop, seconds: float = 0.2) -> None:
    loop.call_later(seconds, loop.stop)
    loop.run_forever()


def test_data_and_fin_arrive_in_one_event_flagged_rdhup(pair, looped):
    a, b = pair
    loop, poller = looped
    seen: list[int] = []

    def on_ready(events: int) -> None:
        seen.append(events)
        poller.remove(b.fileno())
        loop.stop()

    poller.add(b.fileno(), on_ready)
    a.sendall(b"response")
    a.shutdown(socket.SHUT_WR)
    run_once(loop, 2.0)
    assert len(seen) == 1
    assert seen[0] & select.EPOLLIN and seen[0] & select.EPOLLRDHUP
    assert b.recv(100) == b"response" and b.recv(100) == b""


def test_data_without_fin_is_not_flagged_rdhup(pair, looped):
    a, b = pair
    loop, poller = looped
    seen: list[int] = []

    def on_ready(events: int) -> None:
        seen.append(events)
        b.recv(100)
        loop.stop()

    poller.add(b.fileno(), on_ready)
    a.sendall(b"request")
    run_once(loop, 2.0)
    assert seen and not seen[0] & select.EPOLLRDHUP


def test_forgotten_and_closed_socket_is_never_dispatched(pair, looped):
    a, b = pair
    loop, poller = looped
    seen: list[int] = []
    poller.add(b.fileno(), seen.append)
    poller.forget(b.fileno())
    b.close()  # closing drops it from the epoll set; forget dropped the callback
    a.sendall(b"late")
    run_once(loop)
    assert seen == [] and poller.handlers == {}
