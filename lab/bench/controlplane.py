"""Control plane at scale: full-sync time and first-packet latency per mode, by service count.

Reuses kubeproxy.nftables.bench as is: its ``build``/``teardown`` (a node namespace and a pod
namespace holding every real endpoint address) and its ``bench_mode`` (for each size: a full
sync from an empty node with 2 endpoints per service, then ``connect()`` latency to the probe
service's ClusterIP, the last service in sort order, interleaved with ``connect()`` straight to
the pod; at the largest size the time for one endpoint change to be live). Two things are set
from here without touching that module's code: its namespace names (ours carry the bench
prefix, so a concurrent ``kubeproxy.nftables.bench`` does not collide) and its proxier factory,
wrapped so that the userspace mode can be measured by the same function.

Repeated ``reps`` times per mode; each figure is the median with min and max. Ratios: sync
time against the iptables mode at the same size, first-packet latency against the direct
connect() to the pod on the node before any rule is loaded, measured in the same repetition
(the floor nfb's own report uses; in iptables mode even a direct connect walks the rules,
so the connect() to the pod IP with the rules loaded is kept as a figure too).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import io
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console

import kubeproxy.nftables.bench as nfb

from .stats import Figure, figure

CLONE_NEWNET = 0x40000000


def _make_proxier(mode: str, _orig: Callable[[str], Any] = nfb.make_proxier) -> Any:
    if mode != "userspace":
        return _orig(mode)
    from kubeproxy.config import ProxyConfig
    from kubeproxy.userspace.proxier import UserspaceProxier

    cfg = ProxyConfig(
        hostname_override="node",
        proxy_mode="userspace",
        cluster_cidr="10.244.0.0/15",
        min_sync_period=0,
        sync_period=1e9,
        iptables_backend="legacy",
    )
    return _ThreadedProxier(UserspaceProxier(cfg, node_ip=nfb.NODE_IP))


class _ThreadedProxier:
    """A proxier serving from an event loop in a thread of its own.

    nfb.bench_mode times blocking connect() calls from its event loop; the userspace proxy
    accepts and relays those connections on an event loop, so it cannot share that one.
    """

    running: list[_ThreadedProxier] = []

    def __init__(self, inner: Any):
        self.inner = inner
        self.last = None  # nfb reads proxier.last.render_s when a mode has it
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        _ThreadedProxier.running.append(self)

    async def _call(self, coro: Any) -> Any:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    async def start(self) -> None:
        await self._call(self.inner.start())

    async def sync(self, services: dict, endpoints: dict) -> None:
        await self._call(self.inner.sync(services, endpoints))

    async def cleanup(self) -> None:
        await self._call(self.inner.cleanup())

    @classmethod
    def stop_all(cls) -> None:
        for p in cls.running:
            p.loop.call_soon_threadsafe(p.loop.stop)
            p.thread.join(10)
            p.loop.close()
        cls.running.clear()


@contextlib.contextmanager
def node_namespace(prefix: str) -> Iterator[None]:
    """nfb's topology under our names; this process lives in its node namespace meanwhile."""
    saved = (nfb.NODE_NS, nfb.POD_NS, nfb.make_proxier, nfb.console)
    nfb.NODE_NS, nfb.POD_NS = f"{prefix}-cpnode", f"{prefix}-cppod"
    nfb.make_proxier = _make_proxier
    nfb.console = Console(file=io.StringIO())  # its per-size log lines: our progress instead
    server = None
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        server = nfb.build()
        nfb._setns(f"/run/netns/{nfb.NODE_NS}")
        yield
    finally:
        _ThreadedProxier.stop_all()
        ctypes.CDLL(None, use_errno=True).setns(home, CLONE_NEWNET)
        os.close(home)
        if server is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, 15)
            server.wait()
        nfb.teardown()
        nfb.NODE_NS, nfb.POD_NS, nfb.make_proxier, nfb.console = saved


def run(
    prefix: str,
    modes: list[str],
    sizes: list[int],
    reps: int,
    probes: int,
    changes: int,
    step: Callable[[str], None],
) -> tuple[dict[str, Figure], dict[str, Any]]:
    raw: dict[str, Any] = {"sizes": sizes, "probes": probes, "changes": changes, "runs": {}}
    sync: dict[tuple[str, int], list[float]] = {}
    fp: dict[tuple[str, int], list[float]] = {}
    fp_direct: dict[tuple[str, int], list[float]] = {}
    live: dict[str, list[float]] = {}
    no_rules: list[float] = []
    with node_namespace(prefix):
        for rep in range(reps):
            # connect() to the pod on the node before any rule: the floor (as nfb.main does)
            base = nfb.stats([nfb.connect(nfb.EP_A, nfb.TARGET)[0] for _ in range(probes)])
            no_rules.append(base["median"] * 1e6)
            raw.setdefault("no_rules", []).append(base)
            for mode in modes:
                step(f"{mode}: full sync and first packet at {'/'.join(map(str, sizes))} services "
                     f"({rep + 1}/{reps})")  # fmt: skip
                res = asyncio.run(nfb.bench_mode(mode, sizes, probes, changes, base))
                raw["runs"].setdefault(mode, []).append(res)
                for n, row in res["sizes"].items():
                    sync.setdefault((mode, n), []).append(row["full_sync_s"])
                    fp.setdefault((mode, n), []).append(row["first_packet_service"]["median"] * 1e6)
                    fp_direct.setdefault((mode, n), []).append(
                        row["first_packet_direct"]["median"] * 1e6
                    )
                    if "change_live_s" in row:  # nfb keeps median/min/max of its changes
                        live.setdefault(mode, []).append(row["change_live_s"]["median"])
    figs: dict[str, Figure] = {}
    base_mode = "iptables" if "iptables" in modes else modes[0]
    for (mode, n), xs in sync.items():
        base = None if mode == base_mode else f"controlplane.full_sync.{base_mode}.{n}"
        figs[f"controlplane.full_sync.{mode}.{n}"] = figure(xs, "s", "lower", base)
    # baseline: connect() to the pod on a node without rules, once per repetition
    floor = "controlplane.first_packet_no_rules"
    figs[floor] = figure(no_rules, "µs", "lower")
    for (mode, n), xs in fp.items():
        figs[f"controlplane.first_packet.{mode}.{n}"] = figure(xs, "µs", "lower", floor)
    # connect() straight to the pod while the mode's rules are loaded (iptables walks them too)
    for (mode, n), xs in fp_direct.items():
        figs[f"controlplane.first_packet_pod_ip.{mode}.{n}"] = figure(xs, "µs", "lower", floor)
    for mode, xs in live.items():
        base = None if mode == base_mode else f"controlplane.change_live_at_max.{base_mode}"
        figs[f"controlplane.change_live_at_max.{mode}"] = figure(xs, "s", "lower", base)
    return figs, raw
