"""The data path of userspace mode: listening sockets, endpoint choice with connect
failover, a zero-copy TCP relay and UDP sessions. Runs on the process's asyncio loop
(uvloop when the process uses it) through readiness callbacks only: no thread and no task
per connection, so thousands of connections cost a few objects and file descriptors each.

TCP: the listener accepts in batches; for each client we connect (non-blocking) to an
endpoint from the load balancer, trying up to 4 endpoints with kube-proxy's dial timeouts
(250 ms, 500 ms, 1 s, 2 s); if none answers the client is closed. Then each direction moves
bytes socket -> pipe -> socket with os.splice (the payload never enters Python), reading
only while the pipe is empty, so a slow reader back-pressures its writer. A FIN is passed on
as shutdown(SHUT_WR) once the pipe is drained; an error aborts both sides with RST.

UDP: one connected backend socket per client address; replies are sent back from the
service socket (so conntrack maps them back to the ClusterIP). A session is closed after
``udp_timeout`` without traffic in either direction.
"""

from __future__ import annotations

import _socket
import asyncio
import errno
import fcntl
import logging
import os
import random
import resource
import select
import socket
import struct
from collections.abc import Callable, Hashable

from .loadbalancer import Addr, LoadBalancer

log = logging.getLogger("kubeproxy")

DIAL_TIMEOUTS = (0.25, 0.5, 1.0, 2.0)  # kube-proxy's EndpointDialTimeouts
PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = 1031
SPLICE = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
ACCEPT_BATCH = 128
READ_ROUNDS = 4  # socket -> pipe -> socket rounds per callback once the peer's FIN is in
_EOF_EVENTS = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
POLL_BATCH = 1024  # ready relay sockets handled per loop iteration
UDP_BATCH = 64
UDP_BUF = 65535
LINGER_RST = struct.pack("ii", 1, 0)
_SOL_TCP, _NODELAY = socket.IPPROTO_TCP, socket.TCP_NODELAY
_STREAM_NB = socket.SOCK_STREAM | socket.SOCK_NONBLOCK
_AF_INET, _STREAM = socket.AF_INET, socket.SOCK_STREAM
_TCP_INFO, _TCP_ESTABLISHED = socket.TCP_INFO, 1
# The C socket type: no Python-level wrapper (io refs, makefile) on the per-connection path
_Socket = _socket.socket
_EMFILE = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def raise_nofile_limit() -> int:
    """Lift the soft file-descriptor limit to the hard one (each TCP relay holds 6 fds)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def somaxconn() -> int:
    try:
        with open("/proc/sys/net/core/somaxconn") as f:
            return max(int(f.read()), 128)
    except (OSError, ValueError):
        return 4096


class PortAllocator:
    """Ports for listeners: from ``--proxy-port-range`` ("FROM-TO", "FROM+N") or ephemeral."""

    def __init__(self, spec: str = "") -> None:
        self.lo = self.hi = 0
        spec = spec.strip()
        if spec:
            if "+" in spec:
                a, n = spec.split("+", 1)
                self.lo, self.hi = int(a), int(a) + int(n)
            else:
                a, _, b = spec.partition("-")
                self.lo, self.hi = int(a), int(b or a)
            if not (0 < self.lo <= self.hi < 65536):
                raise ValueError(
                    f"invalid --proxy-port-range {spec!r} (use FROM-TO, e.g. 30000-30999)"
                )
        self.used: set[tuple[str, int]] = set()

    def bind(self, proto: str, listen_ip: str) -> socket.socket:
        """A bound socket on a free port of the range (or an ephemeral one)."""
        kind = socket.SOCK_STREAM if proto == "TCP" else socket.SOCK_DGRAM
        if not self.lo:
            return _bound(kind, listen_ip, 0)
        n = self.hi - self.lo + 1
        start = random.randrange(n)
        for i in range(n):
            port = self.lo + (start + i) % n
            if (proto, port) in self.used:
                continue
            try:
                s = _bound(kind, listen_ip, port)
            except OSError:
                continue
            self.used.add((proto, port))
            return s
        raise OSError(
            errno.EADDRINUSE, f"no free {proto} port in --proxy-port-range {self.lo}-{self.hi}"
        )

    def release(self, proto: str, port: int) -> None:
        self.used.discard((proto, port))


def _bound(kind: int, ip: str, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, kind)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((ip, port))
    except OSError:
        s.close()
        raise
    return s


class PipePool:
    """Reusable empty pipes, so a new connection costs no pipe2/fcntl syscalls."""

    def __init__(self, keep: int = 1024) -> None:
        self.keep = keep
        self.free: list[tuple[int, int]] = []

    def get(self) -> tuple[int, int]:
        if self.free:
            return self.free.pop()
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.fcntl(w, F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass
        return r, w

    def put(self, r: int, w: int, empty: bool) -> None:
        if empty and len(self.free) < self.keep:
            self.free.append((r, w))
        else:
            os.close(r)
            os.close(w)

    def close(self) -> None:
        for r, w in self.free:
            os.close(r)
            os.close(w)
        self.free.clear()


class Poller:
    """Read readiness of the relay sockets, from one epoll set of our own that the loop
    watches as a single file descriptor.

    uvloop's add_reader/remove_reader cost 15 syscalls per relayed connection (libuv's
    per-fd poll handle: a trial epoll_ctl ADD/DEL, an ioctl(FIONBIO), the real ADD, and
    three DELs on removal); here a connection costs one epoll_ctl ADD per socket, one DEL
    per half-close, and nothing at close (the kernel drops a closed fd from the set).
    Writability (back-pressure, connects in progress) stays with the loop: it is rare.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.ep = select.epoll()
        self.handlers: dict[int, Callable[[int], None]] = {}
        loop.add_reader(self.ep.fileno(), self._dispatch)

    def add(self, fd: int, callback: Callable[[int], None]) -> None:
        """Call ``callback(events)`` while ``fd`` is readable; EPOLLRDHUP in ``events`` says
        the peer's FIN has arrived (behind any data still queued)."""
        self.handlers[fd] = callback
        self.ep.register(fd, select.EPOLLIN | select.EPOLLRDHUP)

    def remove(self, fd: int) -> None:
        if self.handlers.pop(fd, None) is not None:
            try:
                self.ep.unregister(fd)
            except OSError:
                pass

    def forget(self, fd: int) -> None:
        """For a socket about to be closed: closing it takes it out of the epoll set."""
        self.handlers.pop(fd, None)

    def _dispatch(self) -> None:
        get = self.handlers.get
        for fd, events in self.ep.poll(0, POLL_BATCH):
            callback = get(fd)  # None: closed by an earlier callback of this batch
            if callback is not None:
                callback(events)

    def close(self) -> None:
        if not self.ep.closed:
            self.loop.remove_reader(self.ep.fileno())
            self.ep.close()
        self.handlers.clear()


class _Direction:
    """One way of a TCP relay: src socket -> pipe -> dst socket."""

    __slots__ = ("relay", "loop", "poller", "src", "dst", "dst_sock", "r", "w", "pending", "done")

    def __init__(
        self, relay: Relay, src: int, dst: int, dst_sock: _socket.socket, pipe: tuple[int, int]
    ):
        self.relay: Relay | None = relay  # None once closed
        self.loop = relay.loop
        self.poller = relay.owner.poller
        self.src = src
        self.dst = dst
        self.dst_sock = dst_sock
        self.r, self.w = pipe
        self.pending = 0
        self.done = False

    def on_readable(self, events: int = 0) -> None:
        src, r, w, dst = self.src, self.r, self.w, self.dst
        # One round (one splice in, the splices out) per callback, except when the peer's FIN
        # has already arrived behind the data (an HTTP server answering and closing): then
        # read on to the EOF and pass the FIN on right behind the data, not one loop
        # iteration later, when the client would already have closed first and be left
        # holding the TIME_WAIT. A blind extra read instead costs every keep-alive message
        # one more (EAGAIN) splice.
        for _ in range(READ_ROUNDS if events & _EOF_EVENTS else 1):
            try:
                n = os.splice(src, w, PIPE_SIZE, flags=SPLICE)
            except BlockingIOError:
                return
            except OSError:
                self.relay.abort()
                return
            if n == 0:
                self.finish()
                return
            try:
                while n:
                    n -= os.splice(r, dst, n, flags=SPLICE)
            except BlockingIOError:
                self.pending = n
                self.poller.remove(src)
                self.loop.add_writer(dst, self.on_writable)
                return
            except OSError:
                self.pending = n  # bytes left in the pipe: it must not go back to the pool
                self.relay.abort()
                return

    def on_writable(self) -> None:
        n, r, dst = self.pending, self.r, self.dst
        try:
            while n:
                n -= os.splice(r, dst, n, flags=SPLICE)
        except BlockingIOError:
            self.pending = n
            return
        except OSError:
            self.pending = n
            self.relay.abort()
            return
        self.pending = 0
        self.loop.remove_writer(dst)
        self.poller.add(self.src, self.on_readable)

    def finish(self) -> None:
        """EOF from src with the pipe empty: pass the FIN on."""
        self.done = True
        relay = self.relay
        if relay.up.done and relay.down.done:
            # both ways are read to EOF: close() sends the FIN (nothing is left unread, so
            # no RST), one syscall less per connection than shutdown() then close()
            relay.close()
            return
        self.poller.remove(self.src)  # else level-triggered EOF would be reported forever
        try:
            self.dst_sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class Relay:
    """An established client <-> endpoint TCP connection."""

    __slots__ = ("loop", "client", "backend", "up", "down", "owner", "endpoint", "closed")

    def __init__(
        self, owner: TCPProxy, client: _socket.socket, backend: _socket.socket, endpoint: Addr
    ):
        self.loop = owner.loop
        self.owner = owner
        self.client = client
        self.backend = backend
        self.endpoint = endpoint
        self.closed = False
        cfd, bfd = client.fileno(), backend.fileno()
        pool = owner.pipes
        self.up = _Direction(self, cfd, bfd, backend, pool.get())
        self.down = _Direction(self, bfd, cfd, client, pool.get())
        owner.relays.add(self)
        poller = owner.poller
        poller.add(cfd, self.up.on_readable)
        poller.add(bfd, self.down.on_readable)
        # the client has usually sent its request by the time we accepted and connected:
        # move it now instead of one loop iteration later
        self.up.on_readable()

    def abort(self) -> None:
        for s in (self.client, self.backend):
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
            except OSError:
                pass
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        loop, pool, poller = self.loop, self.owner.pipes, self.owner.poller
        for d in (self.up, self.down):
            poller.forget(d.src)
            if d.pending:
                loop.remove_writer(d.dst)
        self.client.close()
        self.backend.close()
        for d in (self.up, self.down):
            pool.put(d.r, d.w, d.pending == 0)
            d.relay = None  # break the relay <-> direction cycle: freed by refcount, not the GC
        self.owner.relays.discard(self)


class _Dial:
    """Connect to an endpoint for one accepted client, failing over like kube-proxy."""

    __slots__ = ("owner", "client", "client_ip", "attempt", "sock", "timer", "endpoint")

    def __init__(self, owner: TCPProxy, client: _socket.socket, client_ip: str):
        self.owner = owner
        self.client = client
        self.client_ip = client_ip
        self.attempt = 0
        self.sock: _socket.socket | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.endpoint: Addr | None = None

    def next(self) -> None:
        owner = self.owner
        while self.attempt < len(DIAL_TIMEOUTS):
            ep = owner.lb.next_endpoint(owner.key, self.client_ip, self.attempt > 0)
            if ep is None:
                log.debug("%s: no endpoints; closing client %s", owner.key, self.client_ip)
                break
            timeout = DIAL_TIMEOUTS[self.attempt]
            self.attempt += 1
            try:
                s = _Socket(_AF_INET, _STREAM_NB)
            except OSError as e:
                log.warning("%s: cannot open a socket to %s:%d: %s", owner.key, *ep, e)
                break
            s.setsockopt(_SOL_TCP, _NODELAY, 1)
            err = s.connect_ex(ep)
            if err == errno.EINPROGRESS:
                # an endpoint on this machine has usually answered the SYN within connect():
                # then no writability wait, no timer
                if s.getsockopt(_SOL_TCP, _TCP_INFO, 8)[0] == _TCP_ESTABLISHED:
                    Relay(owner, self.client, s, ep)
                    return
                self.sock, self.endpoint = s, ep
                owner.pending.add(self)
                owner.loop.add_writer(s.fileno(), self.on_connected)
                self.timer = owner.loop.call_later(timeout, self.on_timeout)
                return
            if err == 0:
                Relay(owner, self.client, s, ep)
                return
            s.close()
            log.info("%s: endpoint %s:%d failed: %s", owner.key, *ep, os.strerror(err))
        owner.stats_failed += 1
        self.client.close()

    def on_connected(self) -> None:
        s, owner = self.sock, self.owner
        assert s is not None and self.endpoint is not None
        owner.loop.remove_writer(s.fileno())
        if self.timer is not None:
            self.timer.cancel()
        owner.pending.discard(self)
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            s.close()
            log.info("%s: endpoint %s:%d failed: %s", owner.key, *self.endpoint, os.strerror(err))
            self.next()
            return
        Relay(owner, self.client, s, self.endpoint)

    def on_timeout(self) -> None:
        s, owner = self.sock, self.owner
        assert s is not None and self.endpoint is not None
        owner.loop.remove_writer(s.fileno())
        owner.pending.discard(self)
        s.close()
        log.info(
            "%s: endpoint %s:%d did not answer in %.2fs",
            owner.key,
            *self.endpoint,
            DIAL_TIMEOUTS[self.attempt - 1],
        )
        self.next()

    def cancel(self) -> None:
        if self.sock is not None:
            self.owner.loop.remove_writer(self.sock.fileno())
            self.sock.close()
        if self.timer is not None:
            self.timer.cancel()
        self.client.close()


class TCPProxy:
    """One service port over TCP: a listener; relays outlive it (see ``close``)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        key: Hashable,
        lb: LoadBalancer,
        sock: socket.socket,
        pipes: PipePool,
        poller: Poller,
    ) -> None:
        self.loop = loop
        self.key = key
        self.lb = lb
        self.pipes = pipes
        self.poller = poller
        self.relays: set[Relay] = set()
        self.pending: set[_Dial] = set()
        self.stats_failed = 0
        self.sock = sock
        sock.setsockopt(_SOL_TCP, _NODELAY, 1)  # inherited by accepted sockets
        sock.listen(somaxconn())
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self.fd = sock.fileno()
        loop.add_reader(self.fd, self.on_accept)

    def on_accept(self) -> None:
        accept = self.sock._accept  # (fd, addr): no Python socket wrapper per client
        for _ in range(ACCEPT_BATCH):
            try:
                fd, addr = accept()
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in _EMFILE:
                    log.warning("%s: accept failed (%s); pausing accepts for 100ms", self.key, e)
                    self.loop.remove_reader(self.fd)
                    self.loop.call_later(0.1, self._resume)
                    return
                continue
            client = _Socket(_AF_INET, _STREAM, 0, fd)
            client.setblocking(False)
            _Dial(self, client, addr[0]).next()

    def _resume(self) -> None:
        if self.sock.fileno() >= 0:
            self.loop.add_reader(self.fd, self.on_accept)

    def close(self, drop_connections: bool = False) -> None:
        """Stop listening; established relays go on unless ``drop_connections``."""
        if self.sock.fileno() >= 0:
            self.loop.remove_reader(self.fd)
            self.sock.close()
        for d in list(self.pending):
            d.cancel()
        self.pending.clear()
        if drop_connections:
            for r in list(self.relays):
                r.close()


class _UDPSession:
    __slots__ = ("owner", "client", "sock", "fd", "endpoint", "last", "timer")

    def __init__(
        self, owner: UDPProxy, client: tuple[str, int], sock: socket.socket, endpoint: Addr
    ):
        self.owner = owner
        self.client = client
        self.sock = sock
        self.fd = sock.fileno()
        self.endpoint = endpoint
        self.last = owner.loop.time()
        self.timer = owner.loop.call_later(owner.timeout, self.on_timer)
        owner.loop.add_reader(self.fd, self.on_reply)

    def on_reply(self) -> None:
        recv, sendto, client = self.sock.recv, self.owner.sock.sendto, self.client
        for _ in range(UDP_BATCH):
            try:
                data = recv(UDP_BUF)
            except BlockingIOError:
                break
            except OSError:  # ICMP unreachable from the endpoint, surfaced on recv
                break
            try:
                sendto(data, client)
            except OSError:
                pass
        self.last = self.owner.loop.time()

    def on_timer(self) -> None:
        loop = self.owner.loop
        idle = loop.time() - self.last
        if idle >= self.owner.timeout:
            self.close()
        else:
            self.timer = loop.call_later(self.owner.timeout - idle, self.on_timer)

    def close(self) -> None:
        self.timer.cancel()
        self.owner.loop.remove_reader(self.fd)
        self.sock.close()
        self.owner.sessions.pop(self.client, None)


class UDPProxy:
    """One service port over UDP: the service socket and a session per client address."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        key: Hashable,
        lb: LoadBalancer,
        sock: socket.socket,
        timeout: float,
    ) -> None:
        self.loop = loop
        self.key = key
        self.lb = lb
        self.timeout = max(timeout, 0.001)
        self.sessions: dict[tuple[str, int], _UDPSession] = {}
        self.sock = sock
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, 1 << 20)
            except OSError:
                pass
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self.fd = sock.fileno()
        loop.add_reader(self.fd, self.on_packet)

    def on_packet(self) -> None:
        recvfrom, sessions = self.sock.recvfrom, self.sessions
        for _ in range(UDP_BATCH):
            try:
                data, client = recvfrom(UDP_BUF)
            except BlockingIOError:
                return
            except OSError:
                continue
            sess = sessions.get(client)
            if sess is None:
                sess = self._new_session(client)
                if sess is None:
                    continue
            else:
                sess.last = self.loop.time()
            try:
                sess.sock.send(data)
            except OSError:  # full buffer or a previous ICMP error: UDP may drop
                pass

    def _new_session(self, client: tuple[str, int]) -> _UDPSession | None:
        ep = self.lb.next_endpoint(self.key, client[0])
        if ep is None:
            log.debug("%s: no endpoints; dropping datagram from %s", self.key, client[0])
            return None
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        try:
            s.connect(ep)
        except OSError as e:
            s.close()
            log.info("%s: endpoint %s:%d failed: %s", self.key, *ep, e)
            return None
        sess = self.sessions[client] = _UDPSession(self, client, s, ep)
        return sess

    def prune(self, endpoints: set[Addr]) -> None:
        """Close sessions to endpoints that are gone (their clients get a new one)."""
        for sess in [s for s in self.sessions.values() if s.endpoint not in endpoints]:
            sess.close()

    def close(self, drop_connections: bool = True) -> None:
        if self.sock.fileno() >= 0:
            self.loop.remove_reader(self.fd)
            self.sock.close()
        if drop_connections:
            for sess in list(self.sessions.values()):
                sess.close()
