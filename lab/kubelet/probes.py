"""Readiness: the pod's readinessProbe (httpGet / tcpSocket / exec), or a sensible default.

``Probe`` is the parsed probe (pure); :func:`run_once` performs one check from the node
namespace (HTTP and TCP go to the pod IP over ``cni0``; exec runs ``ip netns exec``).
:class:`ReadinessLoop` keeps a pod's readiness up to date and calls back on every change.

Without a probe a pod is Ready once its first TCP container port accepts a connection, or as
soon as its process runs when it declares no port. Until the first success the loop checks
every ``min(periodSeconds, 0.2 s)`` instead of every period, so a pod whose server starts
quickly is Ready within a fraction of a second (a lab shortcut; afterwards the probe keeps its
period and failureThreshold as in Kubernetes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

log = logging.getLogger("kubelet")

FAST_INTERVAL = 0.2
DEFAULT_PORT_INTERVAL = 0.05


@dataclass(frozen=True, slots=True)
class Probe:
    kind: str  # "http" | "tcp" | "exec" | "port" (default: first port) | "running" (no port)
    port: int = 0
    path: str = "/"
    host: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    command: tuple[str, ...] = ()
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    failure_threshold: int = 3
    success_threshold: int = 1


def _port(value: object, named: Callable[[str], int | None]) -> int:
    if isinstance(value, int):
        return value
    s = str(value)
    if s.isdigit():
        return int(s)
    p = named(s)
    if p is None:
        raise ValueError(f"probe names port {s!r} but the container has no port by that name")
    return p


def parse_probe(
    probe: Mapping | None, first_port: int | None, named: Callable[[str], int | None]
) -> Probe:
    """A Kubernetes probe dict -> :class:`Probe`; the default when there is none."""
    if not probe:
        if first_port:
            return Probe(kind="port", port=first_port, period=1.0, timeout=1.0)
        return Probe(kind="running")
    common = dict(
        initial_delay=float(probe.get("initialDelaySeconds") or 0),
        period=float(probe.get("periodSeconds") or 10),
        timeout=float(probe.get("timeoutSeconds") or 1),
        failure_threshold=int(probe.get("failureThreshold") or 3),
        success_threshold=int(probe.get("successThreshold") or 1),
    )
    if "httpGet" in probe:
        h = probe["httpGet"] or {}
        return Probe(
            kind="http",
            port=_port(h.get("port", 80), named),
            path=h.get("path") or "/",
            host=h.get("host") or "",
            headers=tuple((x["name"], x.get("value", "")) for x in h.get("httpHeaders") or []),
            **common,
        )
    if "tcpSocket" in probe:
        t = probe["tcpSocket"] or {}
        return Probe(
            kind="tcp", port=_port(t.get("port"), named), host=t.get("host") or "", **common
        )
    if "exec" in probe:
        return Probe(
            kind="exec", command=tuple((probe["exec"] or {}).get("command") or ()), **common
        )
    raise ValueError(f"unsupported probe {sorted(probe)}; use httpGet, tcpSocket or exec")


async def _tcp(host: str, port: int, timeout: float) -> bool:
    try:
        _, w = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return False
    w.close()
    with contextlib.suppress(Exception):
        await w.wait_closed()
    return True


async def _http(probe: Probe, ip: str) -> bool:
    host = probe.host or ip
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection(host, probe.port), probe.timeout)
    except (OSError, TimeoutError):
        return False
    try:
        hdrs = "".join(f"{k}: {v}\r\n" for k, v in probe.headers)
        if not any(k.lower() == "host" for k, _ in probe.headers):
            hdrs = f"Host: {host}:{probe.port}\r\n" + hdrs
        w.write(
            f"GET {probe.path} HTTP/1.1\r\n{hdrs}User-Agent: kube-probe/knl\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        line = await asyncio.wait_for(r.readline(), probe.timeout)
        parts = line.split()
        return len(parts) >= 2 and parts[1].isdigit() and 200 <= int(parts[1]) < 400
    except (OSError, TimeoutError, ValueError):
        return False
    finally:
        w.close()


async def _exec(probe: Probe, netns: str) -> bool:
    try:
        proc = await asyncio.create_subprocess_exec(
            "ip",
            "netns",
            "exec",
            netns,
            *probe.command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
    except OSError:
        return False
    try:
        return await asyncio.wait_for(proc.wait(), probe.timeout) == 0
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return False


async def run_once(probe: Probe, ip: str, netns: str, running: bool) -> bool:
    if not running:
        return False
    if probe.kind == "running":
        return True
    if probe.kind in ("tcp", "port"):
        return await _tcp(probe.host or ip, probe.port, probe.timeout)
    if probe.kind == "http":
        return await _http(probe, ip)
    if probe.kind == "exec":
        return await _exec(probe, netns)
    return False


class ReadinessLoop:
    """Probe one pod until cancelled; ``ready`` flips per thresholds, ``on_change`` is told."""

    def __init__(
        self,
        probe: Probe,
        ip: str,
        netns: str,
        is_running: Callable[[], bool],
        generation: Callable[[], int],
        on_change: Callable[[], None],
        initially_ready: bool = False,
    ):
        self.probe = probe
        self.ip = ip
        self.netns = netns
        self.is_running = is_running
        self.generation = generation
        self.on_change = on_change
        self.ready = initially_ready  # an adopted pod keeps its Ready until a probe says otherwise
        self.poke = asyncio.Event()

    def _set(self, ready: bool) -> None:
        if ready != self.ready:
            self.ready = ready
            log.debug("pod %s ready=%s", self.netns, ready)
            self.on_change()

    async def run(self) -> None:
        p = self.probe
        loop = asyncio.get_running_loop()
        gen = -1
        while True:
            if gen != self.generation():  # (re)started process: start over, not ready
                adopted = gen == -1 and self.ready
                gen = self.generation()
                if not adopted:
                    self._set(False)
                ok_run = fail_run = 0
                ever_ok = adopted
                if p.initial_delay and self.is_running():
                    await asyncio.sleep(p.initial_delay)
            if not self.is_running():
                self._set(False)
                await self._pause(0.2)
                continue
            started = loop.time()
            ok = await run_once(p, self.ip, self.netns, True)
            if gen != self.generation():
                continue
            if ok:
                ok_run, fail_run = ok_run + 1, 0
                ever_ok = True
                if ok_run >= p.success_threshold:
                    self._set(True)
            else:
                fail_run, ok_run = fail_run + 1, 0
                if fail_run >= p.failure_threshold:
                    self._set(False)
            if not ever_ok:
                interval = (
                    DEFAULT_PORT_INTERVAL if p.kind == "port" else min(p.period, FAST_INTERVAL)
                )
            else:
                interval = p.period
            await self._pause(max(0.0, interval - (loop.time() - started)))

    async def _pause(self, seconds: float) -> None:
        self.poke.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.poke.wait(), seconds)
