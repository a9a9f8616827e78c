"""Drives a proxy mode from the API: watch, track changes, batch, sync, report.

Informers watch Services, EndpointSlices and this Node. Every event is parsed once
(``kubecommon.model``) into per-object caches and marks its service dirty; the sync loop
folds dirty services into the two maps (``ServicePortName`` -> ``ServicePortInfo`` and ->
sorted endpoints; untouched entries keep their identity, so the renderer's cache hits) and
hands them to ``Proxier.sync`` (copies, which a mode may keep). A service port's key is
one object in both maps and stays the same object while its service lives, so a lookup in
either map with a key of the other is an identity hit (equal but distinct keys cost a
field-by-field ``__eq__`` each: ~20 ms per sync at 10,000 services). A mode whose ``sync``
takes ``changed=`` (``accepts_changed``) gets the live maps instead of copies (valid during
the call only: copying 2 x 10,000 entries of a warm process costs 3-8 ms) and ``changed``,
each service port that may differ from the maps of the previous call with the entries it
had there (None: absent), so a one-change sync need not look at all of them. Syncs run at
most once per --min-sync-period (0 = at once), and at least every --sync-period (a full
resync that repairs hand-made damage).
A failed sync is retried after min(--sync-period, 1 s doubling up to 30 s).

Metrics (prometheus_client, kube-proxy's names): kubeproxy_sync_proxy_rules_duration_seconds,
kubeproxy_sync_proxy_rules_last_timestamp_seconds, kubeproxy_network_programming_duration_seconds,
kubeproxy_sync_proxy_rules_service_ports / _endpoints, _failures_total. /healthz answers
200 unless a change has been waiting longer than 2 x --sync-period (kube-proxy's rule).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from kubecommon.client import ApiClient
from kubecommon.informer import Informer, object_key
from kubecommon.model import (
    SERVICE_NAME_LABEL,
    Endpoint,
    ServicePortInfo,
    ServicePortName,
    endpoints_from_slice,
    node_from_obj,
    service_port_map,
)

from .config import ProxyConfig, parse_hostport
from .proxier import Proxier

log = logging.getLogger("kubeproxy")

SvcKey = tuple[str, str]  # (namespace, name)
# service port -> its entries in the maps of the previous sync (None: absent)
Changed = dict[ServicePortName, tuple[ServicePortInfo | None, tuple[Endpoint, ...] | None]]


@dataclass(frozen=True, slots=True)
class SyncResult:
    ok: bool
    started: float  # time.time() at sync start
    duration: float
    service_ports: int
    endpoints: int
    oldest_change: float | None  # time.time() of the oldest change this sync applied
    error: str = ""


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        buckets = (0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096, 8.192, 16.384)
        self.duration = Histogram(
            "sync_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds",
            namespace="kubeproxy", buckets=buckets, registry=r,
        )
        self.last_ts = Gauge(
            "sync_proxy_rules_last_timestamp_seconds", "The last time proxy rules were successfully synced",
            namespace="kubeproxy", registry=r,
        )
        self.last_queued = Gauge(
            "sync_proxy_rules_last_queued_timestamp_seconds", "The last time a sync of proxy rules was queued",
            namespace="kubeproxy", registry=r,
        )
        self.programming = Histogram(
            "network_programming_duration_seconds", "From an API change seen to the rules live",
            namespace="kubeproxy", buckets=buckets, registry=r,
        )
        self.service_ports = Gauge(
            "sync_proxy_rules_service_ports", "Service ports in the last sync", namespace="kubeproxy", registry=r
        )
        self.endpoints = Gauge(
            "sync_proxy_rules_endpoints", "Endpoints in the last sync", namespace="kubeproxy", registry=r
        )
        self.failures = Counter(
            "sync_proxy_rules_failures", "Failed syncs", namespace="kubeproxy", registry=r
        )


class Runner:
    def __init__(self, config: ProxyConfig, client: ApiClient, proxier: Proxier):
        self.config = config
        self.client = client
        self.proxier = proxier
        self.metrics = Metrics()
        self.services: dict[ServicePortName, ServicePortInfo] = {}
        self.endpoints: dict[ServicePortName, tuple[Endpoint, ...]] = {}
        self._svc_ports: dict[SvcKey, dict[ServicePortName, ServicePortInfo]] = {}
        self._slice_eps: dict[str, tuple[SvcKey, dict[ServicePortName, list[Endpoint]]]] = {}
        self._slices_of: dict[SvcKey, set[str]] = {}
        self._known_ports: dict[SvcKey, set[ServicePortName]] = {}  # map keys per service
        self._eps_count: dict[SvcKey, int] = {}  # endpoints of a service's ports in both maps
        self._n_eps = 0  # their sum: the endpoints a sync hands over (for metrics)
        self._dirty: set[SvcKey] = set()
        self._oldest_change: float | None = None
        self._wake = asyncio.Event()
        self._force = False
        self.last_success: float = 0.0  # time.time()
        self.on_synced: list[Callable[[SyncResult], None]] = []
        self.ready = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._runners: list[web.AppRunner] = []

    # -- events -------------------------------------------------------------------------

    def _changed(self, key: SvcKey) -> None:
        self._dirty.add(key)
        if self._oldest_change is None:
            self._oldest_change = time.time()
            self.metrics.last_queued.set(self._oldest_change)
        self._wake.set()

    def on_service(self, etype: str, new: dict | None, old: dict | None) -> None:
        obj = new if new is not None else old
        if obj is None:
            return
        md = obj.get("metadata", {})
        key = (md.get("namespace", "default"), md["name"])
        if etype == "DELETED" or new is None:
            self._svc_ports.pop(key, None)
        else:
            self._svc_ports[key] = service_port_map([new])
        self._changed(key)

    def on_slice(self, etype: str, new: dict | None, old: dict | None) -> None:
        obj = new if new is not None else old
        if obj is None:
            return
        skey = object_key(obj)
        prev = self._slice_eps.pop(skey, None)
        if prev is not None:
            self._slices_of.get(prev[0], set()).discard(skey)
            self._changed(prev[0])
        if etype == "DELETED" or new is None:
            return
        md = new.get("metadata", {})
        svc = (md.get("labels") or {}).get(SERVICE_NAME_LABEL)
        if not svc:
            return
        key = (md.get("namespace", "default"), svc)
        self._slice_eps[skey] = (key, endpoints_from_slice(new))
        self._slices_of.setdefault(key, set()).add(skey)
        self._changed(key)

    def on_node(self, etype: str, new: dict | None, old: dict | None) -> None:
        if new is None or etype == "DELETED":
            return
        hook = getattr(self.proxier, "on_node", None)
        if hook is not None:
            hook(node_from_obj(new))

    def request_sync(self, full: bool = False) -> None:
        if full:
            req = getattr(self.proxier, "request_full_sync", None)
            if req is not None:
                req()
        self._force = True
        self._wake.set()

    # -- maps ---------------------------------------------------------------------------

    def _fold_dirty(self) -> Changed:
        """Fold the dirty services into the maps; returns the keys whose entries may differ,
        each with the (service, endpoints) it had before (None: absent)."""
        changed: Changed = {}
        services, endpoints = self.services, self.endpoints
        for key in self._dirty:
            known = self._known_ports.pop(key, ())
            for spn in known:
                changed[spn] = (services.pop(spn, None), endpoints.pop(spn, None))
            self._n_eps -= self._eps_count.pop(key, 0)
            # the key objects already in the maps stay the keys (see the module docstring)
            canon = {spn: spn for spn in known}
            now: set[ServicePortName] = set()
            for spn, info in self._svc_ports.get(key, {}).items():
                spn = canon.setdefault(spn, spn)
                services[spn] = info
                now.add(spn)
            acc: dict[ServicePortName, set[Endpoint]] = {}
            for skey in self._slices_of.get(key, ()):
                for spn, eps in self._slice_eps[skey][1].items():
                    acc.setdefault(spn, set()).update(eps)
            n = 0
            for spn, eps in acc.items():
                spn = canon.setdefault(spn, spn)
                t = endpoints[spn] = tuple(sorted(eps))
                now.add(spn)
                if spn in services:
                    n += len(t)
            if n:
                self._eps_count[key] = n
                self._n_eps += n
            if now:
                self._known_ports[key] = now
                for spn in now:
                    changed.setdefault(spn, (None, None))
        self._dirty.clear()
        return changed

    # -- loop ---------------------------------------------------------------------------

    async def sync_once(self) -> SyncResult:
        started = time.time()
        t0 = time.perf_counter()
        oldest = self._oldest_change
        self._oldest_change = None
        changed = self._fold_dirty()
        n_eps = self._n_eps
        try:
            if getattr(self.proxier, "accepts_changed", False):
                services, endpoints = self.services, self.endpoints  # not changed during the call
                await self.proxier.sync(services, endpoints, changed=changed)
            else:
                services, endpoints = dict(self.services), dict(self.endpoints)
                await self.proxier.sync(services, endpoints)
        except Exception as e:  # keep running; the next attempt does a full sync
            self.metrics.failures.inc()
            log.error("sync failed: %s", e)
            if oldest is not None and self._oldest_change is None:
                self._oldest_change = oldest
            res = SyncResult(False, started, time.perf_counter() - t0, len(services), n_eps, oldest, str(e))
        else:
            dur = time.perf_counter() - t0
            now = time.time()
            self.last_success = now
            self.metrics.duration.observe(dur)
            self.metrics.last_ts.set(now)
            self.metrics.service_ports.set(len(services))
            self.metrics.endpoints.set(n_eps)
            if oldest is not None:
                self.metrics.programming.observe(now - oldest)
            res = SyncResult(True, started, dur, len(services), n_eps, oldest)
        for cb in self.on_synced:
            try:
                cb(res)
            except Exception:
                log.exception("on_synced callback failed")
        return res

    async def run(self) -> None:
        """Watch, then sync forever (cancel to stop)."""
        cfg = self.config
        svc_inf = Informer(self.client, "services")
        sl_inf = Informer(self.client, "endpointslices")
        svc_inf.add_handler(self.on_service)
        sl_inf.add_handler(self.on_slice)
        infs = [svc_inf, sl_inf]
        if cfg.hostname_override:
            node_inf = Informer(self.client, "nodes", field_selector=f"metadata.name={cfg.hostname_override}")
            node_inf.add_handler(self.on_node)
            infs.append(node_inf)
        self._tasks = [asyncio.create_task(i.run(), name=f"informer-{i.plural}") for i in infs]
        await self.proxier.start()
        await svc_inf.synced.wait()
        await sl_inf.synced.wait()
        log.info("services and endpointslices synced; starting %s proxier", cfg.proxy_mode)
        last_start = 0.0
        backoff = 1.0
        self._force = True
        while True:
            timeout = cfg.sync_period
            if not (self._dirty or self._force):
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout)
                except TimeoutError:
                    self._force = True  # periodic resync
            self._wake.clear()
            wait = last_start + cfg.min_sync_period - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            last_start = time.monotonic()
            self._force = False
            res = await self.sync_once()
            if res.ok:
                backoff = 1.0
                self.ready.set()
            else:
                await asyncio.sleep(min(backoff, cfg.sync_period))
                backoff = min(backoff * 2, 30.0)
                self._force = True

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for r in self._runners:
            await r.cleanup()

    # -- HTTP: /metrics and /healthz ------------------------------------------------------

    def healthy(self) -> tuple[bool, dict]:
        now = time.time()
        pending = self._oldest_change
        ok = self.last_success > 0 and (pending is None or now - pending < 2 * self.config.sync_period)
        body = {
            "lastUpdated": _rfc3339(self.last_success) if self.last_success else "",
            "currentTime": _rfc3339(now),
            "nodeEligible": True,
        }
        return ok, body

    async def _healthz(self, _req: web.Request) -> web.Response:
        ok, body = self.healthy()
        return web.Response(
            status=200 if ok else 503, text=json.dumps(body), content_type="application/json"
        )

    async def _metrics(self, _req: web.Request) -> web.Response:
        resp = web.Response(body=generate_latest(self.metrics.registry))
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    async def serve_http(self) -> None:
        cfg = self.config
        apps: dict[tuple[str, int], web.Application] = {}
        for addr, routes in (
            (cfg.metrics_bind_address, [("/metrics", self._metrics), ("/healthz", self._healthz)]),
            (cfg.healthz_bind_address, [("/healthz", self._healthz), ("/livez", self._healthz)]),
        ):
            if not addr:
                continue
            hp = parse_hostport(addr)
            app = apps.setdefault(hp, web.Application())
            for path, fn in routes:
                if not any(r.resource and r.resource.canonical == path for r in app.router.routes()):
                    app.router.add_get(path, fn)
        for (host, port), app in apps.items():
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, host, port, reuse_address=True).start()
            self._runners.append(runner)
            log.info("serving %s on %s:%d", ", ".join(sorted({r.resource.canonical for r in app.router.routes()})), host, port)


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
