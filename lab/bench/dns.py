"""DNS: clusterdns under dnsperf for internal, NXDOMAIN and forwarded names.

Composed from clusterdns.bench's own pieces (service creation, the dnsperf runner with its
warm-up and latency pass, the bare recvfrom/sendto baseline server and the process helpers),
on loopback exactly as that bench does, with the figures repeated ``reps`` times. Baseline:
the bare loop answering internal names from a dict, measured in the same run.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import clusterdns.bench as cdb
from apiserver_stub.testing import free_port, run_apiserver
from kubecommon.client import SyncApiClient

from .stats import Figure, figure

KINDS = ("internal", "nxdomain", "forwarded")


def measure(port: int, qfile: str, seconds: float, clients: int, outstanding: int, quick: bool):
    """clusterdns.bench's measurement (warm-up, run, latency pass); quick: one ``-v`` run
    giving queries/s and the latency percentiles at once."""
    if not quick:
        return cdb._measure(port, qfile, seconds, clients, outstanding)
    return cdb._dnsperf(port, qfile, seconds, clients, outstanding, verbose=True)


def run(
    services: int,
    seconds: float,
    reps: int,
    step: Callable[[str], None],
    workers: int = 1,
    clients: int = 4,
    outstanding: int = 100,
    quick: bool = False,
) -> tuple[dict[str, Figure], dict[str, Any]]:
    tmp = tempfile.mkdtemp(prefix="knlb-dns-")
    internal = [f"svc{i}.{cdb.NS}.svc.cluster.local" for i in range(services)]
    random.Random(1).shuffle(internal)
    files = {
        "internal": internal,
        "nxdomain": [f"missing{i}.{cdb.NS}.svc.cluster.local" for i in range(services)],
        "forwarded": [f"host{i}.example.test" for i in range(min(services, 1000))],
    }
    paths: dict[str, str] = {}
    for k, names in files.items():
        paths[k] = os.path.join(tmp, f"{k}.txt")
        with open(paths[k], "w") as f:
            f.writelines(f"{n} A\n" for n in names)
    runs: dict[str, list[dict]] = {}
    py = sys.executable
    with run_apiserver(timeout=60) as url:
        SyncApiClient(url).create("namespaces", {"metadata": {"name": cdb.NS}})
        step(f"dns: creating {services} services")
        asyncio.run(cdb._create_services(url, services))
        up_port, dns_port, ready_port = free_port(), free_port(), free_port()
        server = [py, "-m", "clusterdns", "--master", url, "--listen", "127.0.0.1",
                  "--port", str(dns_port), "--workers", str(workers),
                  "--upstream", f"127.0.0.1:{up_port}", "--health-port", "0",
                  "--metrics-port", "0", "--ready-port", str(ready_port),
                  "--log-level", "WARNING"]  # fmt: skip
        with (
            cdb._spawn([py, "-m", "clusterdns.fakeupstream", "--port", str(up_port)]),
            cdb._spawn(server),
        ):
            cdb._wait_ready(f"http://127.0.0.1:{ready_port}/ready", 120)
            for rep in range(reps):
                for kind in KINDS:
                    step(f"dns: dnsperf {kind} names ({rep + 1}/{reps})")
                    runs.setdefault(kind, []).append(
                        measure(dns_port, paths[kind], seconds, clients, outstanding, quick)
                    )
    port = free_port()
    baseline = [py, "-m", "clusterdns.bench", "--baseline-serve", str(port),
                "--names-file", paths["internal"], "--procs", "1"]  # fmt: skip
    with cdb._spawn(baseline):
        cdb._wait_answering(port, internal[0])
        for rep in range(reps):
            step(f"dns: dnsperf bare-loop baseline ({rep + 1}/{reps})")
            runs.setdefault("bare_loop", []).append(
                measure(port, paths["internal"], seconds, clients, outstanding, quick)
            )
    figs: dict[str, Figure] = {}
    for kind, rs in runs.items():
        base = None if kind == "bare_loop" else "bare_loop"
        for key, unit, better in (("qps", "q/s", "higher"), ("p50_ms", "ms", "lower"),
                                  ("p99_ms", "ms", "lower")):  # fmt: skip
            figs[f"dns.{kind}.{key}"] = figure(
                [r.get(key) for r in rs], unit, better, base and f"dns.{base}.{key}"
            )
    raw = {"services": services, "seconds": seconds, "workers": workers, "clients": clients,
           "outstanding": outstanding, "runs": runs}  # fmt: skip
    return figs, raw
