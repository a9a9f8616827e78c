"""/health, /ready and /metrics over HTTP, served by the supervisor (CoreDNS's ports).

Division of labour: ``health`` answers 200 "OK" while the supervisor runs (CoreDNS's
``health`` plugin, :8080/health); ``ready`` answers 200 once every worker has finished
its first sync with the API and 503 before (CoreDNS's ``ready`` plugin, :8181/ready);
``metrics`` renders ``metrics.Collector`` in the Prometheus text format (:9153/metrics).
A port of 0 disables that endpoint; endpoints sharing a port share one listener.
"""

from __future__ import annotations

import logging

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .metrics import Collector, SharedStats

log = logging.getLogger("clusterdns")


async def start_http(cfg, shared: SharedStats) -> list[web.AppRunner]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector(shared, f"dns://{cfg.listen}:{cfg.port}", list(cfg.zones)))

    async def health(_req: web.Request) -> web.Response:
        return web.Response(text="OK")

    async def ready(_req: web.Request) -> web.Response:
        if shared.ready():
            return web.Response(text="OK")
        return web.Response(status=503, text="not synced with the API yet")

    async def metrics(_req: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    routes: dict[int, list[tuple[str, object]]] = {}
    for port, path, fn in (
        (cfg.health_port, "/health", health),
        (cfg.ready_port, "/ready", ready),
        (cfg.metrics_port, "/metrics", metrics),
    ):
        if port:
            routes.setdefault(port, []).append((path, fn))
    host = cfg.listen if cfg.listen not in ("0.0.0.0", "::") else None
    runners = []
    for port, items in routes.items():
        app = web.Application()
        for path, fn in items:
            app.router.add_get(path, fn)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as e:
            log.error("cannot serve %s on port %d: %s", ",".join(p for p, _ in items), port, e)
            await runner.cleanup()
            continue
        runners.append(runner)
    return runners
