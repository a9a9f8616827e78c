"""Listeners and processes: SO_REUSEPORT workers, each a whole server, and their supervisor.

Division of labour: the supervisor (the process you start) binds one UDP and one TCP
socket per worker on the same address with SO_REUSEPORT (so the kernel spreads
clients over the workers and ``--port 0`` still gives every worker the same port),
forks the workers, serves /health, /ready and /metrics (``health``), and restarts a
worker that dies. A worker is shared-nothing: its own informers, index, forward cache
and uvloop event loop, with the UDP socket drained by ``handler.make_udp_reader`` and
TCP connections (2-byte length prefix, any number of queries per connection) answered
by the same ``fast``/``slow`` pair. Workers publish their counters and readiness into
the shared-memory slots of ``metrics.SharedStats``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import os
import signal
import socket
from dataclasses import dataclass

from .metrics import SharedStats, Stats

log = logging.getLogger("clusterdns")

TCP_IDLE_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class Config:
    master: str | None
    kubeconfig: str | None
    token_file: str | None
    listen: str = "0.0.0.0"
    port: int = 53
    zones: tuple[str, ...] = ("cluster.local",)
    upstreams: tuple[tuple[str, int], ...] = ()
    pods: str = "insecure"
    ttl: int = 5
    workers: int = 1
    health_port: int = 8080
    ready_port: int = 8181
    metrics_port: int = 9153
    dns_service: str = "kube-system/kube-dns"
    log_level: str = "INFO"


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def bind_pair(host: str, port: int) -> tuple[socket.socket, socket.socket]:
    """A UDP and a listening TCP socket on the same port (SO_REUSEPORT on both)."""
    for _ in range(20):
        u = socket.socket(_family(host), socket.SOCK_DGRAM)
        u.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        u.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        u.bind((host, port))
        real = u.getsockname()[1]
        t = socket.socket(_family(host), socket.SOCK_STREAM)
        t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            t.bind((host, real))
        except OSError:
            u.close()
            t.close()
            if port:
                raise
            continue
        t.listen(1024)
        u.setblocking(False)
        t.setblocking(False)
        return u, t
    raise OSError(f"could not find a port free for both UDP and TCP on {host}")


# ---------------------------------------------------------------------------------------
# worker


async def _tcp_conn(handler, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
    fast, stats = handler.fast, handler.stats

    def send(out: bytes) -> None:
        if not writer.is_closing():
            writer.write(len(out).to_bytes(2, "big") + out)

    try:
        while True:
            hdr = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE_TIMEOUT)
            n = (hdr[0] << 8) | hdr[1]
            if n < 12:
                stats.malformed += 1
                break
            data = await asyncio.wait_for(reader.readexactly(n), TCP_IDLE_TIMEOUT)
            try:
                out = fast(data, 16)
            except Exception:
                out = None
            if out is not None:
                send(out)
            else:
                handler.slow(data, send, 16)
            await writer.drain()
    except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
        pass
    except Exception:
        log.exception("tcp connection failed")
    finally:
        await asyncio.sleep(0)
        writer.close()


async def worker_async(
    cfg: Config, slot: int, shared: SharedStats, udp: socket.socket, tcp: socket.socket
) -> None:
    from kubecommon.cli import client_from

    from .controller import Controller
    from .forward import Forwarder
    from .handler import Handler, make_udp_reader
    from .index import Index

    loop = asyncio.get_running_loop()
    stats = Stats()
    index = Index(cfg.zones, cfg.ttl, cfg.pods)
    if cfg.listen not in ("0.0.0.0", "::"):
        index.set_ns_ips((cfg.listen,))
    fwd = Forwarder(list(cfg.upstreams), stats)
    await fwd.start()
    handler = Handler(index, fwd, stats)
    loop.add_reader(udp.fileno(), make_udp_reader(udp, handler.fast, handler.slow_udp(udp), stats))
    server = await asyncio.start_server(lambda r, w: _tcp_conn(handler, r, w), sock=tcp)
    client = client_from(cfg.master, cfg.kubeconfig, cfg.token_file, "clusterdns")
    ctl = Controller(client, index, dns_service=cfg.dns_service)
    sync_task = loop.create_task(ctl.run())

    def after_sync(_t: asyncio.Task) -> None:
        # the informer caches and the index are long-lived: keep the cyclic GC off them,
        # so collections triggered by per-query garbage stay cheap
        gc.collect()
        gc.freeze()

    sync_task.add_done_callback(after_sync)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    pid = os.getpid()
    log.info("worker %d (pid %d) serving", slot, pid)
    try:
        while not stop.is_set():
            shared.flush(slot, stats, index.synced, len(index.table), pid)
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except TimeoutError:
                pass
    finally:
        loop.remove_reader(udp.fileno())
        server.close()
        sync_task.cancel()
        await ctl.stop()
        await fwd.stop()
        udp.close()


def worker_main(
    cfg: Config, slot: int, shared: SharedStats, udp: socket.socket, tcp: socket.socket
) -> None:
    """Entry point of a forked worker: fresh signal state and a fresh uvloop loop."""
    from kubecommon.log import setup

    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.events._set_running_loop(None)
    setup("clusterdns", cfg.log_level)
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(worker_async(cfg, slot, shared, udp, tcp))
    finally:
        loop.close()


# ---------------------------------------------------------------------------------------
# supervisor


class Supervisor:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.shared = SharedStats(cfg.workers)
        self.procs: list[multiprocessing.Process | None] = [None] * cfg.workers
        self.port = cfg.port
        self.stopping = False
        self._ctx = multiprocessing.get_context("fork")

    def start_worker(self, slot: int) -> None:
        udp, tcp = bind_pair(self.cfg.listen, self.port)
        self.port = udp.getsockname()[1]
        self.shared.reset(slot)
        p = self._ctx.Process(
            target=worker_main,
            args=(self.cfg, slot, self.shared, udp, tcp),
            name=f"clusterdns-worker-{slot}",
            daemon=True,
        )
        p.start()
        udp.close()  # the worker owns them now; a dead worker's sockets leave the group
        tcp.close()
        self.procs[slot] = p

    def start_all(self) -> None:
        for i in range(self.cfg.workers):
            self.start_worker(i)
        log.info(
            "clusterdns: %d worker(s) on %s port %d (udp+tcp), zones %s, upstreams %s",
            self.cfg.workers,
            self.cfg.listen,
            self.port,
            ",".join(self.cfg.zones),
            ",".join(f"{h}:{p}" for h, p in self.cfg.upstreams) or "none",
        )

    async def monitor(self) -> None:
        while not self.stopping:
            for i, p in enumerate(self.procs):
                if p is not None and not p.is_alive() and not self.stopping:
                    log.warning(
                        "worker %d (pid %s) exited with %s; restarting", i, p.pid, p.exitcode
                    )
                    self.start_worker(i)
            await asyncio.sleep(0.5)

    def stop_all(self, timeout: float = 5.0) -> None:
        self.stopping = True
        for p in self.procs:
            if p is not None and p.is_alive():
                p.terminate()
        for p in self.procs:
            if p is not None:
                p.join(timeout)
                if p.is_alive():
                    p.kill()
                    p.join(1)


async def supervise(cfg: Config) -> None:
    from .health import start_http

    sup = Supervisor(cfg)
    sup.start_all()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runners = await start_http(cfg, sup.shared)
    mon = loop.create_task(sup.monitor())
    try:
        await stop.wait()
    finally:
        sup.stopping = True
        mon.cancel()
        for r in runners:
            await r.cleanup()
        sup.stop_all()
