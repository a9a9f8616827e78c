"""kube-proxy's nftables mode: render -> diff -> one ``nft -f`` transaction -> conntrack.

A *full* sync (the first one, after any failure, when the node context changed, and every
--sync-period) rewrites the whole table ``ip kube-proxy`` in one transaction and deletes
leftovers found in the kernel, so rules someone deleted or edited by hand come back. Every
other sync sends only what changed since the state last applied (kept in memory): at
10,000 services one endpoint change is a transaction of a few lines.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

from kubecommon.model import Endpoint, NodeInfo, ServicePortInfo, ServicePortName

from .. import conntrack, host
from ..config import ProxyConfig
from . import diff
from .apply import NftApplier
from .cleanup import cleanup as cleanup_table
from .render import CHOICES, NodeContext, Renderer, TableState

log = logging.getLogger("kubeproxy")

# "maps" (default) | "rules" | "vmap": see render.CHOICES
CHOICE_ENV = "KUBEPROXY_NFT_ENDPOINT_CHOICE"


@dataclass
class SyncStats:
    full: bool = False
    render_s: float = 0.0
    apply_s: float = 0.0
    bytes: int = 0
    lines: int = 0
    services: int = 0
    endpoints: int = 0
    changed_services: int = 0


def _only(d: dict, keys: list) -> dict:
    return {k: d[k] for k in keys if k in d}


class NftablesProxier(host.NodeAwareProxier):
    def __init__(
        self,
        config: ProxyConfig,
        node_ip: str = "",
        applier: NftApplier | None = None,
        endpoint_choice: str | None = None,
    ):
        self.config = config
        choice = endpoint_choice or os.environ.get(CHOICE_ENV) or CHOICES[0]
        if choice not in CHOICES:
            raise ValueError(f"{CHOICE_ENV}={choice!r}: choose one of {', '.join(CHOICES)}")
        self.endpoint_choice = choice
        self.node_ip = node_ip
        self.applier = applier or NftApplier()
        self.renderer = Renderer()
        self.node: NodeInfo | None = None
        self._need_full = True
        self._last_full = 0.0
        self._applied: TableState | None = None
        self._services: dict[ServicePortName, ServicePortInfo] = {}
        self._endpoints: dict[ServicePortName, tuple[Endpoint, ...]] = {}
        self._liberal = False
        self.last = SyncStats()
        self.last_text = ""  # the last transaction sent (for debugging and tests)

    # -- Proxier protocol -------------------------------------------------------------

    def on_node(self, node: NodeInfo) -> None:
        super().on_node(node)
        if node.internal_ip:
            self.node_ip = node.internal_ip

    def context(self) -> NodeContext:
        return NodeContext(**self.node_context_fields(), endpoint_choice=self.endpoint_choice)

    async def sync(
        self,
        services: dict[ServicePortName, ServicePortInfo],
        endpoints: dict[ServicePortName, tuple[Endpoint, ...]],
    ) -> None:
        t0 = time.perf_counter()
        state = self.renderer.render(services, endpoints, self.context())
        applied = self._applied
        full = (
            self._need_full
            or applied is None
            or applied.base != state.base
            or time.monotonic() - self._last_full >= self.config.sync_period
        )
        if full:
            chains, sets = await self.applier.existing()
            text = diff.full(state, chains, sets)
        else:
            text = diff.partial(applied, state)
        t1 = time.perf_counter()
        try:
            await self.applier.apply(text)
        except Exception:
            self._need_full = True  # our idea of the kernel's state is no longer reliable
            raise
        t2 = time.perf_counter()
        self._applied = state
        if full:
            self._need_full = False
            self._last_full = time.monotonic()
        old_s, old_e = self._services, self._endpoints
        self._services, self._endpoints = services, endpoints
        new_s, new_e = services, endpoints
        if not full and applied is not None and state.since == applied.generation:
            # Only ports whose inputs changed since the last (applied) render can have
            # stale UDP flows: look at those, not at 10,000 ports.
            keys = [k for k in state.inputs_changed if k.protocol == "UDP"]
            old_s, old_e, new_s, new_e = (_only(d, keys) for d in (old_s, old_e, new_s, new_e))
        await conntrack.delete(conntrack.stale_entries(old_s, old_e, new_s, new_e))
        self.last_text = text
        self.last = SyncStats(
            full=full,
            render_s=t1 - t0,
            apply_s=t2 - t1,
            bytes=len(text),
            lines=text.count("\n"),
            services=len(services),
            endpoints=sum(len(v) for v in endpoints.values()),
            changed_services=len(state.changed),
        )
        log.debug(
            "synced %s: %d service ports (%d changed), %d lines, render %.1f ms, nft %.1f ms",
            "full" if full else "partial",
            len(services),
            len(state.changed),
            self.last.lines,
            1000 * (t1 - t0),
            1000 * (t2 - t1),
        )

    async def cleanup(self) -> None:
        await cleanup_table(self.applier)
