"""kube-proxy's iptables mode: render -> restore -> conntrack cleanup, full or partial.

A *full* sync (the first one, after a failure, and every --sync-period) reads the tables,
writes every chain we own, deletes our stale chains and ensures the jump rules; so rules
someone deleted by hand come back. A *partial* sync (every other change) writes only the
chains of the service ports whose rules changed plus the top-level chains whose text
changed, and deletes the chains we installed that are no longer wanted; that keeps a
one-endpoint change small even with 10,000 services.

The proxier decides *what* to write (a ``SyncPlan``); a writer decides *how*: the legacy
backend's ``XtablesWriter`` (x_tables sockopts, no iptables-restore; falls back to a
restore for a sync it cannot encode), the nft backend's ``NftWriter`` (nf_tables netlink
batches in iptables-nft's encoding; falls back the same way) or ``RestoreWriter``
(``iptables-{legacy,nft}-restore`` for the ``legacy-restore`` and ``nft-restore`` backends).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from kubecommon.model import Endpoint, NodeInfo, ServicePortInfo, ServicePortName

from .. import conntrack, host
from ..config import ProxyConfig
from .apply import Applier, RestoreWriter, SyncPlan, WriteResult
from .cleanup import cleanup as cleanup_tables
from .render import FILTER_CHAINS, NAT_CHAINS, NodeContext, Renderer, Ruleset
from .xtables_codec import gc_paused

log = logging.getLogger("kubeproxy")


@dataclass
class SyncStats:
    full: bool = False
    render_s: float = 0.0
    restore_s: float = 0.0  # everything after rendering: encode/read/write (or save/restore)
    write: WriteResult | None = None  # the writer's split of restore_s
    bytes: int = 0
    services: int = 0
    endpoints: int = 0
    written_services: int = 0
    stale_chains: int = 0


@dataclass
class _Applied:
    chains: set[str] = field(default_factory=set)
    top: dict[tuple[str, str], str] = field(default_factory=dict)


class IptablesProxier(host.NodeAwareProxier):
    def __init__(self, config: ProxyConfig, applier: Applier | None = None):
        self.config = config
        self.applier = applier or Applier(config.iptables_backend)
        self.writer = _writer(config.iptables_backend, self.applier)
        self.renderer = Renderer()
        self.node: NodeInfo | None = None
        self._need_full = True
        self._last_full = 0.0
        self._applied = _Applied()
        self._services: dict[ServicePortName, ServicePortInfo] = {}
        self._endpoints: dict[ServicePortName, tuple[Endpoint, ...]] = {}
        self._liberal = False
        self.last: SyncStats = SyncStats()

    # -- Proxier protocol -------------------------------------------------------------

    def context(self) -> NodeContext:
        return NodeContext(**self.node_context_fields())

    async def sync(
        self,
        services: dict[ServicePortName, ServicePortInfo],
        endpoints: dict[ServicePortName, tuple[Endpoint, ...]],
    ) -> None:
        t0 = time.perf_counter()
        full = self._need_full or (time.monotonic() - self._last_full >= self.config.sync_period)
        with gc_paused():  # thousands of small objects per service port: no GC passes meanwhile
            ruleset = self.renderer.render(services, endpoints, self.context())
        wanted = ruleset.nat_service_chains()
        top = _top_texts(ruleset)
        t_render = time.perf_counter()
        if full:
            plan = SyncPlan(True, wanted)
        else:
            skip = {k for k, v in top.items() if self._applied.top.get(k) == v}
            plan = SyncPlan(False, wanted, ruleset.changed, self._applied.chains - wanted, skip)
        try:
            res = await self.writer.write(ruleset, plan)
        except Exception:
            self._need_full = True  # our idea of the kernel's state is no longer reliable
            raise
        t2 = time.perf_counter()
        self._applied = _Applied(wanted, top)
        if full:
            self._need_full = False
            self._last_full = time.monotonic()
        old_s, old_e = self._services, self._endpoints
        self._services, self._endpoints = services, endpoints
        await conntrack.delete(conntrack.stale_entries(old_s, old_e, services, endpoints))
        self.last = SyncStats(
            full=full,
            render_s=t_render - t0,
            restore_s=t2 - t_render,
            write=res,
            bytes=res.bytes,
            services=len(services),
            endpoints=sum(len(v) for v in endpoints.values()),
            written_services=len(services) if full else len(ruleset.changed),
            stale_chains=res.stale,
        )
        log.debug(
            "synced %s via %s: %d service ports (%d written), %d stale chains, %d bytes, render %.1f ms, write %.1f ms",
            "full" if full else "partial",
            res.via,
            len(services),
            self.last.written_services,
            res.stale,
            res.bytes,
            1000 * (t_render - t0),
            1000 * (t2 - t_render),
        )

    async def cleanup(self) -> None:
        await cleanup_tables((self.config.iptables_backend,))


def _writer(backend: str, applier: Applier):
    restore = RestoreWriter(applier)
    if backend == "legacy":
        from .xtables import XtablesWriter

        return XtablesWriter(restore)
    if backend == "nft":
        from .nft_writer import NftWriter

        return NftWriter(restore)
    return restore


def _top_texts(rs: Ruleset) -> dict[tuple[str, str], str]:
    out = {("filter", c): rs.filter_top[c] for c in FILTER_CHAINS}
    out.update({("nat", c): rs.nat_top[c] for c in NAT_CHAINS})
    return out
