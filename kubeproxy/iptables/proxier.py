"""kube-proxy's iptables mode: render -> restore -> conntrack cleanup, full or partial.

A *full* sync (the first one, after a failure, and every --sync-period) reads the tables,
writes every chain we own, deletes our stale chains and ensures the jump rules; so rules
someone deleted by hand come back. A *partial* sync (every other change) writes only the
chains of the service ports whose rules changed plus the top-level chains whose text
changed, and deletes the chains we installed that are no longer wanted; that keeps a
one-endpoint change small even with 10,000 services.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from kubecommon.model import Endpoint, NodeInfo, ServicePortInfo, ServicePortName

from .. import conntrack, host
from ..config import ProxyConfig
from .apply import Applier, chains_in
from .cleanup import cleanup as cleanup_tables
from .render import FILTER_CHAINS, NAT_CHAINS, NodeContext, Renderer, Ruleset, is_service_chain

log = logging.getLogger("kubeproxy")

@dataclass
class SyncStats:
    full: bool = False
    render_s: float = 0.0
    restore_s: float = 0.0
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
        ruleset = self.renderer.render(services, endpoints, self.context())
        wanted = ruleset.nat_service_chains()
        top = _top_texts(ruleset)
        t_render = time.perf_counter()
        saved = ""
        if full:
            saved = await self.applier.save()
            existing = chains_in(saved, "nat")
            stale = {c for c in existing if is_service_chain(c)} - wanted
            text = ruleset.restore_input(stale_chains=stale)
            written = len(ruleset.services)
        else:
            stale = self._applied.chains - wanted
            skip = {k for k, v in top.items() if self._applied.top.get(k) == v}
            text = ruleset.restore_input(only=ruleset.changed, stale_chains=stale, skip_top=skip)
            written = len(ruleset.changed)
        try:
            await self.applier.restore(text)
            if full:
                await self.applier.ensure_jumps(saved)
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
            bytes=len(text),
            services=len(services),
            endpoints=sum(len(v) for v in endpoints.values()),
            written_services=written,
            stale_chains=len(stale),
        )
        log.debug(
            "synced %s: %d service ports (%d written), %d stale chains, %d bytes, render %.1f ms, restore %.1f ms",
            "full" if full else "partial",
            len(services),
            written,
            len(stale),
            len(text),
            1000 * (t_render - t0),
            1000 * (t2 - t_render),
        )

    async def cleanup(self) -> None:
        await cleanup_tables((self.config.iptables_backend,))


def _top_texts(rs: Ruleset) -> dict[tuple[str, str], str]:
    out = {("filter", c): rs.filter_top[c] for c in FILTER_CHAINS}
    out.update({("nat", c): rs.nat_top[c] for c in NAT_CHAINS})
    return out
