"""``python -m apiserver_stub.bench``: load the stub the way the lab and kube-proxy do.

Creates N Services (default 10,000), each with a pod that is then reported Running and
Ready (so the controllers build Endpoints and EndpointSlices), while two watchers measure
delivery latency from the moment a write is sent to the moment the watcher reads the event:
services (the write itself) and endpoints (write -> controller -> watcher). Then times full
lists. Runs against ``--memory`` and against SQLite (``--data-dir``) in the same run, so
the durable figures come with their in-memory baseline. Prints a table, writes JSON.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import tempfile
import time
from contextlib import ExitStack
from typing import Any

import aiohttp
import click

from .testing import run_apiserver

NS = "bench"


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


async def _watch(
    session: aiohttp.ClientSession,
    url: str,
    seen: dict[str, float],
    key: Any,
    ready: asyncio.Event,
    stop: asyncio.Event,
) -> None:
    async with session.get(
        url,
        params={"watch": "true", "resourceVersion": "0", "allowWatchBookmarks": "true"},
        timeout=aiohttp.ClientTimeout(total=None),
    ) as resp:
        ready.set()
        buf = b""
        async for chunk in resp.content.iter_any():
            now = time.monotonic()
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if not line:
                    continue
                ev = json.loads(line)
                k = key(ev)
                if k is not None and k not in seen:
                    seen[k] = now
            if stop.is_set():
                return


async def _run(base: str, n: int, concurrency: int) -> dict[str, Any]:
    conn = aiohttp.TCPConnector(limit=concurrency + 4)
    async with aiohttp.ClientSession(base, connector=conn) as s:
        r = await s.post("/api/v1/namespaces", json={"metadata": {"name": NS}})
        assert r.status == 201, await r.text()
        svc_seen: dict[str, float] = {}
        ep_seen: dict[str, float] = {}
        stop = asyncio.Event()
        r1, r2 = asyncio.Event(), asyncio.Event()

        def svc_key(ev: dict[str, Any]) -> str | None:
            return ev["object"]["metadata"]["name"] if ev["type"] == "ADDED" else None

        def ep_key(ev: dict[str, Any]) -> str | None:
            if ev["type"] == "BOOKMARK":
                return None
            for sub in ev["object"].get("subsets") or []:
                if sub.get("addresses"):
                    return ev["object"]["metadata"]["name"]
            return None

        w1 = asyncio.create_task(
            _watch(s, f"/api/v1/namespaces/{NS}/services", svc_seen, svc_key, r1, stop)
        )
        w2 = asyncio.create_task(
            _watch(s, f"/api/v1/namespaces/{NS}/endpoints", ep_seen, ep_key, r2, stop)
        )
        await r1.wait()
        await r2.wait()
        sem = asyncio.Semaphore(concurrency)
        sent: dict[str, float] = {}
        ready_sent: dict[str, float] = {}
        errors = 0

        async def call(
            method: str,
            path: str,
            body: Any,
            ctype: str = "application/json",
            mark: dict[str, float] | None = None,
            key: str = "",
        ) -> None:
            nonlocal errors
            async with sem:
                if mark is not None:
                    mark[key] = time.monotonic()
                async with s.request(
                    method, path, data=json.dumps(body), headers={"Content-Type": ctype}
                ) as resp:
                    await resp.read()
                    if resp.status >= 300:
                        errors += 1

        async def phase(coros: list[Any]) -> float:
            t0 = time.monotonic()
            await asyncio.gather(*coros)
            return time.monotonic() - t0

        names = [f"svc-{i:05d}" for i in range(n)]
        t_svc = await phase(
            [
                call(
                    "POST",
                    f"/api/v1/namespaces/{NS}/services",
                    {
                        "metadata": {"name": nm},
                        "spec": {
                            "selector": {"app": nm},
                            "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
                        },
                    },
                    mark=sent,
                    key=nm,
                )
                for nm in names
            ]
        )
        t_pod = await phase(
            [
                call(
                    "POST",
                    f"/api/v1/namespaces/{NS}/pods",
                    {
                        "metadata": {"name": f"{nm}-pod", "labels": {"app": nm}},
                        "spec": {
                            "nodeName": "node-1",
                            "containers": [
                                {"name": "c", "image": "pause", "ports": [{"containerPort": 8080}]}
                            ],
                        },
                    },
                )
                for nm in names
            ]
        )
        t_status = await phase(
            [
                call(
                    "PATCH",
                    f"/api/v1/namespaces/{NS}/pods/{nm}-pod/status",
                    {
                        "status": {
                            "phase": "Running",
                            "podIP": f"10.{244 + i // 65536}.{(i // 256) % 256}.{i % 256}",
                            "conditions": [{"type": "Ready", "status": "True"}],
                        }
                    },
                    "application/strategic-merge-patch+json",
                    mark=ready_sent,
                    key=nm,
                )
                for i, nm in enumerate(names)
            ]
        )
        deadline = time.monotonic() + 120
        while (len(svc_seen) < n or len(ep_seen) < n) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        # unloaded latency: one write at a time (labels on existing services -> MODIFIED)
        quiet_sent: dict[str, float] = {}
        quiet_seen: dict[str, float] = {}
        w3_ready = asyncio.Event()

        def mod_key(ev: dict[str, Any]) -> str | None:
            if ev["type"] != "MODIFIED":
                return None
            return (ev["object"]["metadata"].get("labels") or {}).get("probe")

        w3 = asyncio.create_task(
            _watch(s, f"/api/v1/namespaces/{NS}/services", quiet_seen, mod_key, w3_ready, stop)
        )
        await w3_ready.wait()
        for i in range(min(n, 300)):
            probe = f"p{i}"
            quiet_sent[probe] = time.monotonic()
            await call(
                "PATCH",
                f"/api/v1/namespaces/{NS}/services/{names[i]}",
                {"metadata": {"labels": {"probe": probe}}},
                "application/merge-patch+json",
            )
            while probe not in quiet_seen and time.monotonic() - quiet_sent[probe] < 5:
                await asyncio.sleep(0.0005)
        stop.set()
        w1.cancel()
        w2.cancel()
        w3.cancel()
        quiet_lat = [(quiet_seen[k] - quiet_sent[k]) * 1000 for k in quiet_sent if k in quiet_seen]
        svc_lat = [(svc_seen[k] - sent[k]) * 1000 for k in sent if k in svc_seen]
        ep_lat = [(ep_seen[k] - ready_sent[k]) * 1000 for k in ready_sent if k in ep_seen]
        lists: dict[str, list[float]] = {
            "services": [],
            "endpoints": [],
            "endpointslices": [],
            "pods_table": [],
        }
        paths = {
            "services": ("/api/v1/services", {}),
            "endpoints": (f"/api/v1/namespaces/{NS}/endpoints", {}),
            "endpointslices": ("/apis/discovery.k8s.io/v1/endpointslices", {}),
            "pods_table": (
                f"/api/v1/namespaces/{NS}/pods",
                {"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
            ),
        }
        counts = {}
        for _ in range(5):
            for k, (path, hdrs) in paths.items():
                t0 = time.monotonic()
                async with s.get(path, headers=hdrs) as resp:
                    body = await resp.read()
                lists[k].append((time.monotonic() - t0) * 1000)
                counts[k] = len(json.loads(body).get("items" if k != "pods_table" else "rows", []))
        healthz = []
        for _ in range(50):
            t0 = time.monotonic()
            async with s.get("/healthz") as resp:
                await resp.read()
            healthz.append((time.monotonic() - t0) * 1000)
        return {
            "count": n,
            "concurrency": concurrency,
            "errors": errors,
            "service_creates_per_s": n / t_svc,
            "pod_creates_per_s": n / t_pod,
            "status_patches_per_s": n / t_status,
            "services_seen_by_watcher": len(svc_seen),
            "endpoints_ready_seen_by_watcher": len(ep_seen),
            "watch_service_latency_ms": {
                "p50": _pct(svc_lat, 50),
                "p99": _pct(svc_lat, 99),
                "max": max(svc_lat, default=float("nan")),
            },
            "watch_unloaded_latency_ms": {
                "p50": _pct(quiet_lat, 50),
                "p99": _pct(quiet_lat, 99),
                "max": max(quiet_lat, default=float("nan")),
            },
            "watch_endpoints_latency_ms": {
                "p50": _pct(ep_lat, 50),
                "p99": _pct(ep_lat, 99),
                "max": max(ep_lat, default=float("nan")),
            },
            "list_ms_median": {k: statistics.median(v) for k, v in lists.items()},
            "list_items": counts,
            "healthz_ms_median": statistics.median(healthz),
        }


@click.command()
@click.option("--count", default=10000, show_default=True, help="Services (and pods) to create.")
@click.option("--concurrency", default=32, show_default=True, help="Requests in flight.")
@click.option(
    "--mode", type=click.Choice(["both", "memory", "sqlite"]), default="both", show_default=True
)
@click.option(
    "--output",
    default="bench-results/apiserver_bench.json",
    show_default=True,
    help="JSON results file.",
)
def main(count: int, concurrency: int, mode: str, output: str) -> None:
    """Benchmark apiserver_stub: creates/s, list latency, watch delivery p50/p99."""
    results: dict[str, Any] = {}
    modes = ["memory", "sqlite"] if mode == "both" else [mode]
    for m in modes:
        with ExitStack() as stack:
            if m == "sqlite":
                d = stack.enter_context(tempfile.TemporaryDirectory(prefix="apiserver-bench-"))
                url = stack.enter_context(
                    run_apiserver(
                        data_dir=os.path.join(d, "data"), extra_args=["--log-level", "WARNING"]
                    )
                )
            else:
                url = stack.enter_context(run_apiserver(extra_args=["--log-level", "WARNING"]))
            click.echo(
                f"[{m}] creating {count} services + {count} pods against {url} ...", err=True
            )
            results[m] = asyncio.run(_run(url, count, concurrency))

    rows = [
        ("service creates/s", "service_creates_per_s", "{:.0f}"),
        ("pod creates/s", "pod_creates_per_s", "{:.0f}"),
        ("pod status patches/s", "status_patches_per_s", "{:.0f}"),
    ]
    click.echo(
        f"{'figure':42}"
        + "".join(f"{m:>14}" for m in modes)
        + ("   sqlite/memory" if len(modes) == 2 else "")
    )

    def line(label: str, vals: list[float], fmt: str) -> None:
        ratio = f"   {vals[1] / vals[0]:.2f}x" if len(vals) == 2 and vals[0] else ""
        click.echo(f"{label:42}" + "".join(f"{fmt.format(v):>14}" for v in vals) + ratio)

    for label, key, fmt in rows:
        line(label, [results[m][key] for m in modes], fmt)
    for k in ("services", "endpoints", "endpointslices", "pods_table"):
        line(
            f"list {k} ({results[modes[0]]['list_items'][k]} items) ms",
            [results[m]["list_ms_median"][k] for m in modes],
            "{:.1f}",
        )
    for k, label in (
        ("watch_service_latency_ms", "watch write->watcher (32 in flight)"),
        ("watch_unloaded_latency_ms", "watch write->watcher (1 at a time)"),
        ("watch_endpoints_latency_ms", "pod ready->endpoints watcher"),
    ):
        for p in ("p50", "p99"):
            line(f"{label} {p} ms", [results[m][k][p] for m in modes], "{:.1f}")
    line(
        "healthz round trip ms (HTTP floor)",
        [results[m]["healthz_ms_median"] for m in modes],
        "{:.2f}",
    )
    line("errors", [results[m]["errors"] for m in modes], "{:.0f}")
    os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
    with open(output, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    click.echo(f"wrote {output}", err=True)


if __name__ == "__main__":
    main()
