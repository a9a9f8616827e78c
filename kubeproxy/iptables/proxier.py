"""kube-proxy's iptables mode: render -> restore -> conntrack cleanup, full or partial.

A *full* sync (the first one, after a failure, and every --sync-period) reads the tables,
writes every chain we own, deletes our stale chains and ensures the jump rules; so rules
someone deleted by hand come back. A *partial* sync (every other change) writes only the
chains of the service ports whose rules changed plus the top-level chains whose text
changed, and deletes the chains we installed that are no longer wanted; that keeps a
one-endpoint change small even with 10,000 services.

A partial sync also keeps its own bookkeeping off the O(services) path: the set of wanted
nat chains is kept up to date from the renderer's ``changed`` and ``previous``
(``_Chains``; recomputed on full syncs), and the render, the stale-UDP-conntrack diff and
the endpoint count look only at the service ports the runner says changed (``sync(...,
changed=)``, with their previous entries; then the maps are the runner's own, used during
the call and never kept). Without ``changed`` the maps are kept and the next sync compares
every entry with them; a full sync always renders from every entry.
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

# service port -> its entries in the maps of the previous sync (None: absent); see sync
Changed = dict[ServicePortName, tuple[ServicePortInfo | None, tuple[Endpoint, ...] | None]]


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
    top: dict[tuple[str, str], str] = field(default_factory=dict)


class _Chains:
    """The nat service chains of the last render (``Ruleset.nat_service_chains()``), kept
    up to date from one render to the next by the renderer's ``changed`` and ``previous``.
    A chain belongs to one service port (its name hashes the service port's name, and the
    endpoint's for a KUBE-SEP), so a changed port's old chains that its new rules lack are
    no longer wanted."""

    def __init__(self) -> None:
        self.wanted: set[str] = set()
        self._renderer: Renderer | None = None

    def rebuild(self, renderer: Renderer, rs: Ruleset) -> set[str]:
        """Start from this render; returns the last render's chains it no longer wants."""
        old, self.wanted = self.wanted, rs.nat_service_chains()
        self._renderer = renderer
        return old - self.wanted

    def follow(self, renderer: Renderer, rs: Ruleset) -> set[str] | None:
        """Apply the render that came after the last one; returns the chains no longer
        wanted (None: not the same renderer's next render, call ``rebuild``)."""
        if renderer is not self._renderer:
            return None
        old_rules, new_rules = rs.previous, rs.services
        dropped: set[str] = set()
        added: set[str] = set()
        for spn in rs.changed:
            old, new = old_rules.get(spn), new_rules.get(spn)
            if old is not None:
                dropped.update(old.chains)
            if new is not None:
                added.update(new.chains)
        dropped -= added
        self.wanted -= dropped
        self.wanted |= added
        return dropped


class IptablesProxier(host.NodeAwareProxier):
    accepts_changed = True  # the runner passes sync(..., changed=) (see sync)

    def __init__(self, config: ProxyConfig, applier: Applier | None = None):
        self.config = config
        self.applier = applier or Applier(config.iptables_backend)
        self.writer = _writer(config.iptables_backend, self.applier)
        self.renderer = Renderer()
        self.node: NodeInfo | None = None
        self._need_full = True
        self._last_full = 0.0
        self._applied = _Applied()
        self._chains = _Chains()
        # the maps of the last successful sync, when the caller let us keep them (None: it
        # did not, but told us what changed, see sync); empty before the first sync
        self._services: dict[ServicePortName, ServicePortInfo] | None = {}
        self._endpoints: dict[ServicePortName, tuple[Endpoint, ...]] | None = {}
        self._before: Changed = {}  # changed since the last successful sync: entries there
        self._n_endpoints = 0  # endpoints after the last successful sync
        self._liberal = False
        self.last: SyncStats = SyncStats()

    # -- Proxier protocol -------------------------------------------------------------

    def context(self) -> NodeContext:
        return NodeContext(**self.node_context_fields())

    async def sync(
        self,
        services: dict[ServicePortName, ServicePortInfo],
        endpoints: dict[ServicePortName, tuple[Endpoint, ...]],
        changed: Changed | None = None,
    ) -> None:
        """Make the tables match the maps.

        ``changed``: every service port whose entries may differ from the maps of the
        previous call, with its entries there (None: absent); every other key maps to the
        very same objects. The maps are then the caller's live ones: read during this call,
        never kept. Without it the maps are kept, and the next call compares every entry
        with them (a caller passes ``changed`` on every call or on none; a call without it
        after one with it finds nothing kept and compares with empty maps, as after a
        restart)."""
        if changed is not None:
            before = self._before
            if self._services is not None:  # the last success kept its maps: take theirs
                old_s, old_e = self._services, self._endpoints or {}
                for k in changed:
                    if k not in before:
                        before[k] = (old_s.get(k), old_e.get(k))
            else:
                for k, v in changed.items():
                    before.setdefault(k, v)  # the entries as the last successful sync saw them
        try:
            await self._sync(services, endpoints, None if changed is None else self._before)
        except Exception:
            self._need_full = True  # our idea of the kernel's state is no longer reliable
            raise

    async def _sync(
        self,
        services: dict[ServicePortName, ServicePortInfo],
        endpoints: dict[ServicePortName, tuple[Endpoint, ...]],
        before: Changed | None,
    ) -> None:
        t0 = time.perf_counter()
        hinted = before is not None
        full = self._need_full or (time.monotonic() - self._last_full >= self.config.sync_period)
        # A partial sync follows a successful one, whose render was this renderer's last
        # (or the renderer is new and renders everything): what changed since then is in
        # ``before``. A full sync renders from every entry (and so repairs any drift).
        hint = None if full else before
        with gc_paused():  # thousands of small objects per service port: no GC passes meanwhile
            ruleset = self.renderer.render(services, endpoints, self.context(), changed=hint)
        dropped = None if full else self._chains.follow(self.renderer, ruleset)
        if dropped is None:
            dropped = self._chains.rebuild(self.renderer, ruleset)
        wanted = self._chains.wanted
        top = _top_texts(ruleset)
        t_render = time.perf_counter()
        if full:
            plan = SyncPlan(True, set(wanted))
        else:
            # a partial sync follows a successful sync of the previous render (any failure
            # makes the next sync full), so the chains to delete are the ones it dropped;
            # ``wanted`` is the live set (no writer reads it in a partial sync)
            skip = {k for k, v in top.items() if self._applied.top.get(k) == v}
            plan = SyncPlan(False, wanted, ruleset.changed, dropped, skip)
        res = await self.writer.write(ruleset, plan)
        t2 = time.perf_counter()
        self._applied = _Applied(top)
        if full:
            self._need_full = False
            self._last_full = time.monotonic()
        if hinted:
            # only these keys can differ: the same diff and count, without 10,000 lookups
            before, self._before = self._before, {}
            self._services = self._endpoints = None
            n = self._n_endpoints
            for k, (_, eps) in before.items():
                n += len(endpoints.get(k, ())) - len(eps or ())
            self._n_endpoints = n
            udp = [k for k in before if k.protocol == "UDP"]
            old_s = {k: s for k in udp if (s := before[k][0]) is not None}
            old_e = {k: e for k in udp if (e := before[k][1]) is not None}
            new_s, new_e = _only(services, udp), _only(endpoints, udp)
        else:
            old_s, old_e = self._services or {}, self._endpoints or {}
            new_s, new_e = services, endpoints
            self._services, self._endpoints, self._before = services, endpoints, {}
            self._n_endpoints = sum(map(len, endpoints.values()))
        await conntrack.delete(conntrack.stale_entries(old_s, old_e, new_s, new_e))
        self.last = SyncStats(
            full=full,
            render_s=t_render - t0,
            restore_s=t2 - t_render,
            write=res,
            bytes=res.bytes,
            services=len(services),
            endpoints=self._n_endpoints,
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

    async def stop(self) -> None:
        close = getattr(self.writer, "close", None)  # the nft writer keeps a netlink socket
        if close is not None:
            close()

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


def _only(d: dict, keys: list) -> dict:
    return {k: d[k] for k in keys if k in d}


def _top_texts(rs: Ruleset) -> dict[tuple[str, str], str]:
    out = {("filter", c): rs.filter_top[c] for c in FILTER_CHAINS}
    out.update({("nat", c): rs.nat_top[c] for c in NAT_CHAINS})
    return out
