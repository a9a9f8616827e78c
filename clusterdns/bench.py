"""``python -m clusterdns.bench``: queries/s and latency of clusterdns under dnsperf.

What it does, all on loopback: start apiserver_stub with ``--services`` Services (10,000
by default), a fake upstream (``clusterdns.fakeupstream``) and clusterdns (``--workers``
processes); run dnsperf (Debian package) for ``--duration`` seconds on three query
files — internal names (every Service's A record), NXDOMAIN names (inside the zone) and
forwarded names (outside the zone, answered by the fake upstream, then the cache) —
then a short ``dnsperf -v`` run per file for latency percentiles (p50/p99 from the
per-query latencies dnsperf prints). The same internal-name run goes against a
baseline measured in the same run: a bare Python ``recvfrom``/``sendto`` loop answering
from a dict of ready responses (one process, and ``--workers`` SO_REUSEPORT processes),
and the table shows the ratios. Also reported: the server's memory (RSS of the
supervisor and its workers). Prints a rich table and writes JSON (``--json``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import click
from rich.console import Console
from rich.table import Table

from apiserver_stub.testing import free_port, run_apiserver
from kubecommon.client import ApiClient, ClusterConfig, SyncApiClient

NS = "bench"


async def _create_services(url: str, n: int, concurrency: int = 32) -> None:
    client = ApiClient(ClusterConfig(server=url))
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            await client.create(
                "services",
                {
                    "metadata": {"name": f"svc{i}", "namespace": NS},
                    "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
                },
                NS,
            )

    try:
        await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        await client.close()


def _proc_tree_rss_kb(pid: int) -> int:
    pids = {pid}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        pids.add(int(d))
            except (OSError, ValueError, IndexError):
                pass
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def _dnsperf(
    port: int, qfile: str, seconds: float, clients: int, outstanding: int, verbose: bool = False
) -> dict:
    argv = [
        "dnsperf",
        "-s",
        "127.0.0.1",
        "-p",
        str(port),
        "-d",
        qfile,
        "-l",
        str(seconds),
        "-c",
        str(clients),
        "-q",
        str(outstanding),
        "-t",
        "2",
    ]
    if verbose:
        argv.append("-v")
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60).stdout
    res: dict = {}
    m = re.search(r"Queries per second:\s+([\d.]+)", out)
    res["qps"] = float(m.group(1)) if m else 0.0
    m = re.search(r"Queries lost:\s+(\d+)", out)
    res["lost"] = int(m.group(1)) if m else -1
    m = re.search(r"Queries completed:\s+(\d+)", out)
    res["completed"] = int(m.group(1)) if m else 0
    m = re.search(r"Average Latency \(s\):\s+([\d.]+)", out)
    res["avg_latency_ms"] = float(m.group(1)) * 1000 if m else 0.0
    m = re.search(r"Response codes:\s+(.*)", out)
    res["rcodes"] = m.group(1).strip() if m else ""
    if verbose:
        lats = [float(x) for x in re.findall(r"^> \S+ \S+ \S+ ([\d.]+)$", out, re.M)]
        if lats:
            q = statistics.quantiles(lats, n=100)
            res["p50_ms"] = q[49] * 1000
            res["p99_ms"] = q[98] * 1000
            res["samples"] = len(lats)
    return res


def _measure(port: int, qfile: str, seconds: float, clients: int, outstanding: int) -> dict:
    _dnsperf(port, qfile, 1, clients, outstanding)  # warm-up (caches, page-ins)
    res = _dnsperf(port, qfile, seconds, clients, outstanding)
    lat = _dnsperf(port, qfile, min(3.0, seconds), clients, outstanding, verbose=True)
    res["p50_ms"] = lat.get("p50_ms", 0.0)
    res["p99_ms"] = lat.get("p99_ms", 0.0)
    return res


# ---- the baseline: a bare recvfrom/sendto loop answering from a dict -------------------


def _baseline_table(names: list[str]) -> dict[bytes, tuple[bytes, bytes]]:
    import dnslib

    table = {}
    for i, name in enumerate(names):
        q = dnslib.DNSRecord.question(name, "A")
        r = q.reply()
        r.add_answer(
            dnslib.RR(
                q.q.qname, 1, rdata=dnslib.A(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"), ttl=5
            )
        )
        w = bytes(r.pack())
        end = w.index(b"\x00", 12) + 5
        table[w[12:end].lower()] = (w[2:12], w[end:])
    return table


def baseline_serve(port: int, names_file: str, procs: int) -> None:
    with open(names_file) as f:
        names = [line.split()[0] for line in f if line.strip()]
    table = _baseline_table(names)

    def loop() -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", port))
        recv, send, get = s.recvfrom, s.sendto, table.get
        while True:
            data, addr = recv(4096)
            i = data.find(b"\x00", 12)
            k = data[12 : i + 5]
            v = get(k.lower())
            if v is not None:
                send(data[:2] + v[0] + k + v[1], addr)

    for _ in range(procs - 1):
        if os.fork() == 0:
            loop()
    loop()


@contextlib.contextmanager
def _spawn(argv: list[str]):
    p = subprocess.Popen(
        argv, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        yield p
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def _wait_answering(port: int, name: str, timeout: float = 60) -> None:
    import dnslib

    q = bytes(dnslib.DNSRecord.question(name, "A").pack())
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.5)
        while time.monotonic() < deadline:
            s.sendto(q, ("127.0.0.1", port))
            try:
                s.recv(4096)
                return
            except OSError:
                time.sleep(0.2)
    raise RuntimeError(f"baseline server on port {port} never answered")


def _wait_ready(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout}s")


@click.command()
@click.option("--services", default=10000, show_default=True)
@click.option("--duration", default=10.0, show_default=True, help="dnsperf -l seconds per run")
@click.option("--workers", default=os.cpu_count() or 1, show_default=True)
@click.option("--clients", default=8, show_default=True, help="dnsperf -c")
@click.option("--outstanding", default=200, show_default=True, help="dnsperf -q")
@click.option("--json", "json_out", default="bench-clusterdns.json", show_default=True)
@click.option("--baseline-serve", type=int, hidden=True)
@click.option("--names-file", hidden=True)
@click.option("--procs", default=1, hidden=True)
def main(
    services, duration, workers, clients, outstanding, json_out, baseline_serve, names_file, procs
) -> None:
    """Benchmark clusterdns with dnsperf on a zone of --services Services."""
    if baseline_serve:
        baseline_serve_fn = globals()["baseline_serve"]
        baseline_serve_fn(baseline_serve, names_file, procs)
        return
    console = Console()
    tmp = tempfile.mkdtemp(prefix="clusterdns-bench-")
    internal = [f"svc{i}.{NS}.svc.cluster.local" for i in range(services)]
    random.Random(1).shuffle(internal)
    files = {
        "internal": internal,
        "nxdomain": [f"missing{i}.{NS}.svc.cluster.local" for i in range(services)],
        "forwarded": [f"host{i}.example.test" for i in range(1000)],
    }
    paths = {}
    for k, names in files.items():
        paths[k] = os.path.join(tmp, f"{k}.txt")
        with open(paths[k], "w") as f:
            f.writelines(f"{n} A\n" for n in names)
    results: dict = {
        "services": services,
        "workers": workers,
        "duration_s": duration,
        "clients": clients,
        "outstanding": outstanding,
        "cpus": os.cpu_count(),
    }
    py = sys.executable
    with run_apiserver(timeout=60) as url:
        api = SyncApiClient(url)
        api.create("namespaces", {"metadata": {"name": NS}})
        t0 = time.monotonic()
        console.print(f"creating {services} services ...")
        asyncio.run(_create_services(url, services))
        results["create_services_s"] = round(time.monotonic() - t0, 1)
        up_port, dns_port, ready_port = free_port(), free_port(), free_port()
        with (
            _spawn([py, "-m", "clusterdns.fakeupstream", "--port", str(up_port)]),
            _spawn(
                [
                    py,
                    "-m",
                    "clusterdns",
                    "--master",
                    url,
                    "--listen",
                    "127.0.0.1",
                    "--port",
                    str(dns_port),
                    "--workers",
                    str(workers),
                    "--upstream",
                    f"127.0.0.1:{up_port}",
                    "--health-port",
                    "0",
                    "--metrics-port",
                    "0",
                    "--ready-port",
                    str(ready_port),
                    "--log-level",
                    "WARNING",
                ]
            ) as srv,
        ):
            t0 = time.monotonic()
            _wait_ready(f"http://127.0.0.1:{ready_port}/ready", 120)
            results["sync_s"] = round(time.monotonic() - t0, 2)
            for kind in ("internal", "nxdomain", "forwarded"):
                console.print(f"dnsperf: {kind} names ...")
                results[kind] = _measure(dns_port, paths[kind], duration, clients, outstanding)
            results["server_rss_mb"] = round(_proc_tree_rss_kb(srv.pid) / 1024, 1)
    for label, n in (("baseline_1proc", 1), (f"baseline_{workers}proc", workers)):
        port = free_port()
        with _spawn(
            [
                py,
                "-m",
                "clusterdns.bench",
                "--baseline-serve",
                str(port),
                "--names-file",
                paths["internal"],
                "--procs",
                str(n),
            ]
        ):
            _wait_answering(port, internal[0])
            console.print(f"dnsperf: {label} ...")
            results[label] = _measure(port, paths["internal"], duration, clients, outstanding)
        if n == 1 and workers == 1:
            break
    base = results["baseline_1proc"]["qps"] or 1.0
    table = Table(
        title=f"clusterdns, {services} services, {workers} worker(s), dnsperf "
        f"-c {clients} -q {outstanding} -l {duration:g} on {os.cpu_count()} CPUs"
    )
    for col in ("run", "queries/s", "x bare loop", "p50 ms", "p99 ms", "avg ms", "lost", "rcodes"):
        table.add_column(col, justify="left" if col in ("run", "rcodes") else "right")
    for k in dict.fromkeys(
        ("internal", "nxdomain", "forwarded", "baseline_1proc", f"baseline_{workers}proc")
    ):
        r = results.get(k)
        if not r:
            continue
        table.add_row(
            k,
            f"{r['qps']:,.0f}",
            f"{r['qps'] / base:.2f}",
            f"{r['p50_ms']:.3f}",
            f"{r['p99_ms']:.3f}",
            f"{r['avg_latency_ms']:.3f}",
            str(r["lost"]),
            r["rcodes"][:40],
        )
    console.print(table)
    console.print(
        f"server RSS (supervisor + workers): {results['server_rss_mb']} MB; "
        f"sync of {services} services: {results['sync_s']} s"
    )
    results["ratio_internal_vs_bare_loop"] = round(results["internal"]["qps"] / base, 3)
    with open(json_out, "w") as f:
        json.dump(results, f, indent=2)
    console.print(f"wrote {json_out}")


if __name__ == "__main__":
    main()
