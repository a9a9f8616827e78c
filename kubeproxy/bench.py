"""``python -m kubeproxy.bench``: what the iptables mode costs, measured in one run.

(1) Data path, in namespaces "kpb-*" (a node with a cni0 bridge, a client pod and a server
    pod): HTTP requests/s and latency p50/p99 with wrk, TCP throughput with iperf3, to the
    pod directly and through its ClusterIP, alternating, reported as ratios.
(2) Rule programming in namespace "kpb-rules", at 1,000 / 5,000 / 10,000 services with 2
    endpoints each, for the backends legacy (the direct x_tables writer), legacy-restore
    (iptables-legacy-restore), nft (the direct nf_tables writer) and nft-restore
    (iptables-nft-restore): a full sync from an empty node with nothing
    memoised ("cold"), a periodic full resync ("warm"), and the time from one
    EndpointSlice change written to the API server stub to the end of the write that
    makes it live (runner + proxier in this process, --min-sync-period 0); each split into
    render / encode / read (save or GET_ENTRIES) / write. Also python-iptables (libiptc) vs
    iptables-restore vs the direct writer for a full sync of 1,000 services.
Prints rich tables and writes JSON (--json). Needs root; removes its namespaces.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from kubecommon.model import Endpoint, ServicePortInfo, ServicePortName

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
P = "kpb"
console = Console()


def sh(*argv: str, ns: str | None = None, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    full = (["ip", "netns", "exec", ns] if ns else []) + list(argv)
    return subprocess.run(full, capture_output=True, text=True, check=check, timeout=timeout)


def stats(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)} if xs else {}


# -- (1) data path -------------------------------------------------------------------------

VIP = "10.96.0.100"
NODE, CLIENT, SERVER = f"{P}-node", f"{P}-client", f"{P}-server"
IPS = {CLIENT: "10.244.1.10", SERVER: "10.244.1.11"}


def dp_teardown() -> None:
    for ns in (NODE, CLIENT, SERVER):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def dp_build() -> None:
    dp_teardown()
    sh("ip", "netns", "add", NODE)
    for cmd in (["ip", "link", "set", "lo", "up"], ["ip", "link", "add", "cni0", "type", "bridge"],
                ["ip", "addr", "add", "10.244.1.1/24", "dev", "cni0"], ["ip", "link", "set", "cni0", "up"],
                ["sysctl", "-qw", "net.ipv4.ip_forward=1"], ["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"]):
        sh(*cmd, ns=NODE)
    for pod, ip in IPS.items():
        sh("ip", "netns", "add", pod)
        veth = "v" + pod[-6:]
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", pod, ns=NODE)
        sh("ip", "link", "set", veth, "master", "cni0", "up", ns=NODE)
        sh("ip", "link", "set", "lo", "up", ns=pod)
        sh("ip", "addr", "add", f"{ip}/24", "dev", "eth0", ns=pod)
        sh("ip", "link", "set", "eth0", "up", ns=pod)
        sh("ip", "route", "add", "default", "via", "10.244.1.1", ns=pod)


def dp_program(backend: str) -> None:
    """Program the node with our proxier: VIP:80 -> server:8080, VIP:5201 -> server:5201."""
    services, endpoints = {}, {}
    for name, port, tport in (("http", 80, 8080), ("iperf", 5201, 5201)):
        spn = ServicePortName("bench", "server", name, "TCP")
        services[spn] = ServicePortInfo(spn, VIP, port, "TCP", tport)
        endpoints[spn] = (Endpoint(IPS[SERVER], tport, node_name="node"),)
    code = (
        "import asyncio,pickle,sys\n"
        "from kubeproxy.config import ProxyConfig\nfrom kubeproxy.iptables.proxier import IptablesProxier\n"
        "s,e=pickle.loads(sys.stdin.buffer.read())\n"
        "p=IptablesProxier(ProxyConfig(hostname_override='node',cluster_cidr='10.244.0.0/16',\n"
        f"  iptables_backend={backend!r}))\n"
        "asyncio.run(p.sync(s,e))\n"
    )
    import pickle

    subprocess.run(["ip", "netns", "exec", NODE, PY, "-c", code], input=pickle.dumps((services, endpoints)),
                   check=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=ROOT)


def dp_unprogram() -> None:
    """Remove the node's KUBE- rules (both x_tables and nf_tables) before the next backend."""
    sh("ip", "netns", "exec", NODE, PY, "-m", "kubeproxy", "--cleanup", check=False)


def wrk(url: str, seconds: int) -> dict:
    r = sh("wrk", "-t1", "-c32", f"-d{seconds}s", "--latency", url, ns=CLIENT, timeout=seconds + 30)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", r.stdout).group(1))
    lat = {}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)", r.stdout, re.M)
        lat[pct] = float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
    return {"rps": rps, "p50_ms": lat["50"], "p99_ms": lat["99"]}


def iperf(host: str, port: int, seconds: int) -> float:
    r = sh("iperf3", "-c", host, "-p", str(port), "-t", str(seconds), "-J", ns=CLIENT, timeout=seconds + 30)
    return json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9


def dataplane(seconds: int, rounds: int, backends: list[str]) -> dict:
    """Direct vs ClusterIP rounds for each backend in turn; ratios against the direct runs
    of the same backend's rounds (the same minutes)."""
    dp_build()
    procs = []
    try:
        env = dict(os.environ, PYTHONPATH=str(ROOT), POD_NAME="server", POD_NAMESPACE="bench", POD_IP=IPS[SERVER])
        procs.append(subprocess.Popen(["ip", "netns", "exec", SERVER, PY, "-m", "lab.workload"], env=env, cwd=ROOT,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        procs.append(subprocess.Popen(["ip", "netns", "exec", SERVER, "iperf3", "-s", "-p", "5201"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        out = {}
        for backend in backends:
            dp_program(backend)
            try:
                out[backend] = _dp_rounds(seconds, rounds)
            finally:
                dp_unprogram()
        return out
    finally:
        for p in procs:
            p.terminate()
            p.wait()
        dp_teardown()


def _dp_rounds(seconds: int, rounds: int) -> dict:
    deadline = time.monotonic() + 10
    while sh("curl", "-s", "-m", "1", f"http://{VIP}/", ns=CLIENT, check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise RuntimeError("the server pod is not reachable through its ClusterIP")
        time.sleep(0.1)
    res: dict[str, list] = {"direct": [], "clusterip": []}
    tput: dict[str, list] = {"direct": [], "clusterip": []}
    for _ in range(rounds):
        for kind, url, host, port in (("direct", f"http://{IPS[SERVER]}:8080/", IPS[SERVER], 5201),
                                      ("clusterip", f"http://{VIP}:80/", VIP, 5201)):
            res[kind].append(wrk(url, seconds))
            tput[kind].append(iperf(host, port, seconds))
    out = {}
    for kind in res:
        out[kind] = {
            "rps": statistics.median(r["rps"] for r in res[kind]),
            "p50_ms": statistics.median(r["p50_ms"] for r in res[kind]),
            "p99_ms": statistics.median(r["p99_ms"] for r in res[kind]),
            "tcp_gbps": statistics.median(tput[kind]),
        }
    d, c = out["direct"], out["clusterip"]
    out["ratio"] = {"rps": c["rps"] / d["rps"], "p50": c["p50_ms"] / d["p50_ms"], "p99": c["p99_ms"] / d["p99_ms"],
                    "tcp": c["tcp_gbps"] / d["tcp_gbps"]}
    return out


# -- (2) rule programming ------------------------------------------------------------------

RULES_NS = f"{P}-rules"
_CHANGE = itertools.count()


def svc_obj(i: int) -> dict:
    return {"metadata": {"name": f"s{i}", "namespace": "bench"},
            "spec": {"type": "ClusterIP", "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}}


def slice_obj(i: int, second: str | None = None) -> dict:
    ips = [f"10.244.{(i // 250) % 250}.{i % 250 + 2}", second or f"10.245.{(i // 250) % 250}.{i % 250 + 2}"]
    return {"metadata": {"name": f"s{i}-bench", "namespace": "bench", "labels": {"kubernetes.io/service-name": f"s{i}"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True}, "nodeName": f"n{k}"} for k, ip in enumerate(ips)]}


async def populate(client, start: int, stop: int) -> None:
    sem = asyncio.Semaphore(32)

    async def one(i: int) -> None:
        async with sem:
            await client.create("services", svc_obj(i), "bench")
            await client.create("endpointslices", slice_obj(i), "bench")

    await asyncio.gather(*(one(i) for i in range(start, stop)))


def split(last) -> dict:
    """One sync's time: render, then the writer's share (encode / read / write)."""
    w = last.write
    return {"total_s": last.render_s + last.restore_s, "render_s": last.render_s, "encode_s": w.encode_s,
            "read_s": w.read_s, "write_s": w.kernel_s, "via": w.via}


def split_stats(samples: list[dict]) -> dict:
    out = {k: stats([x[k] for x in samples]) for k in ("total_s", "render_s", "encode_s", "read_s", "write_s")}
    out["via"] = sorted({x["via"] for x in samples})
    return out


async def rules_for_backend(client, backend: str, n: int, reps: int, changes: int) -> dict:
    """Cold full syncs (empty node, fresh proxier), warm full syncs (periodic resync), one change."""
    from .config import ProxyConfig
    from .iptables.proxier import IptablesProxier, _writer
    from .iptables.render import Renderer
    from .runner import Runner

    cfg = ProxyConfig(hostname_override="n0", cluster_cidr="10.244.0.0/15", min_sync_period=0.0,
                      sync_period=3600.0, iptables_backend=backend, metrics_bind_address="", healthz_bind_address="")
    proxier = IptablesProxier(cfg)
    runner = Runner(cfg, client, proxier)
    results: list = []
    waiter: dict = {}

    def synced(res) -> None:
        results.append(res)
        fut = waiter.get("f")
        if fut is not None and not fut.done() and res.ok and res.oldest_change is not None:
            fut.set_result(time.time())

    async def resync() -> None:
        proxier.request_full_sync()
        before = len(results)
        runner.request_sync()
        while len(results) == before:
            await asyncio.sleep(0.01)
        if not results[-1].ok or not proxier.last.full:
            raise RuntimeError(f"{backend}: full sync failed")

    runner.on_synced.append(synced)
    task = asyncio.create_task(runner.run())
    try:
        await asyncio.wait_for(runner.ready.wait(), 1800)
        while runner.services.__len__() < n:  # initial list may race with populate: wait
            await asyncio.sleep(0.1)
        cold = [split(proxier.last)]  # the first sync: empty node, nothing memoised
        for _ in range(reps - 1):
            sh(PY, "-m", "kubeproxy", "--cleanup", check=False)  # empty node again
            proxier.renderer = Renderer()
            await proxier.stop()  # the nft writer's netlink socket goes with its writer
            proxier.writer = _writer(backend, proxier.applier)
            await resync()
            cold.append(split(proxier.last))
        warm = []
        for _ in range(reps):  # a periodic resync: everything in place, renderer/encoder warm
            await resync()
            warm.append(split(proxier.last))
        lat, partial = [], []
        for k in range(changes):
            i = (k * 7919) % n
            c = next(_CHANGE)  # never the same address twice: a no-op write sends no event
            new_ip = f"10.{246 + c // 62500}.{(c // 250) % 250}.{c % 250 + 2}"
            cur = await client.get("endpointslices", f"s{i}-bench", "bench")
            body = slice_obj(i, second=new_ip)
            body["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"]
            waiter["f"] = asyncio.get_running_loop().create_future()
            t0 = time.time()
            await client.replace("endpointslices", body)
            t1 = await asyncio.wait_for(waiter["f"], 600)
            lat.append(t1 - t0)
            partial.append(split(proxier.last))
        check = sh(proxier.applier.save_cmd, "-t", "nat").stdout
        live = f"--to-destination {new_ip}:8080" in check
        return {"full_sync_cold": split_stats(cold), "full_sync_warm": split_stats(warm),
                "one_change_s": stats(lat), "one_change_sync": split_stats(partial),
                "change_verified_in_kernel": live, "rules_nat": check.count("\n-A ")}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await runner.stop()


def libiptc_vs_restore(n: int) -> dict:
    """Full sync of n services (2 endpoints) with python-iptables (libiptc) vs iptables-restore."""
    import iptc  # python-iptables: legacy backend

    from .iptables.render import NodeContext, render

    services, endpoints = {}, {}
    for i in range(n):
        spn = ServicePortName("bench", f"s{i}", "http", "TCP")
        services[spn] = ServicePortInfo(spn, f"10.96.{i // 250}.{i % 250 + 1}", 80, "TCP", 8080)
        endpoints[spn] = (Endpoint(f"10.244.{i // 250}.{i % 250 + 2}", 8080), Endpoint(f"10.245.{i // 250}.{i % 250 + 2}", 8080))
    ctx = NodeContext("n0", "10.244.0.0/15")
    t0 = time.perf_counter()
    text = render(services, endpoints, ctx)
    subprocess.run(["iptables-legacy-restore", "--noflush"], input=text.encode(), check=True)
    t_restore = time.perf_counter() - t0
    subprocess.run([PY, "-m", "kubeproxy", "--cleanup"], capture_output=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))

    from .iptables.apply import Applier, RestoreWriter, SyncPlan
    from .iptables.render import Renderer
    from .iptables.xtables import XtablesWriter

    t0 = time.perf_counter()
    rs = Renderer().render(services, endpoints, ctx)
    res = asyncio.run(XtablesWriter(RestoreWriter(Applier("legacy"))).write(rs, SyncPlan(True, rs.nat_service_chains())))
    t_direct = time.perf_counter() - t0
    if res.via != "xtables":
        raise RuntimeError(f"direct writer fell back to iptables-restore: {res.fallback}")
    subprocess.run([PY, "-m", "kubeproxy", "--cleanup"], capture_output=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))

    t0 = time.perf_counter()
    table = iptc.Table(iptc.Table.NAT)
    table.autocommit = False
    from .iptables.render import endpoint_chain, service_chain

    top = table.create_chain("KUBE-SERVICES") if not table.is_chain("KUBE-SERVICES") else iptc.Chain(table, "KUBE-SERVICES")
    masq = table.create_chain("KUBE-MARK-MASQ")
    r = iptc.Rule()
    t = r.create_target("MARK")
    t.or_mark = "0x4000"
    masq.append_rule(r)
    for spn, s in services.items():
        sc = table.create_chain(service_chain(spn))
        r = iptc.Rule()
        r.protocol = "tcp"
        r.dst = s.cluster_ip
        m = r.create_match("comment")
        m.comment = f"{spn} cluster IP"
        m = r.create_match("tcp")
        m.dport = "80"
        r.create_target(sc.name)
        top.append_rule(r)
        eps = endpoints[spn]
        for k, e in enumerate(eps):
            sep = table.create_chain(endpoint_chain(spn, e.addr))
            r = iptc.Rule()
            if k < len(eps) - 1:
                m = r.create_match("statistic")
                m.mode = "random"
                m.probability = "0.5000000000"
            r.create_target(sep.name)
            sc.append_rule(r)
            r = iptc.Rule()
            r.src = e.ip
            r.create_target("KUBE-MARK-MASQ")
            sep.append_rule(r)
            r = iptc.Rule()
            r.protocol = "tcp"
            r.create_match("tcp")
            t = r.create_target("DNAT")
            t.to_destination = e.addr
            sep.append_rule(r)
    table.commit()
    t_libiptc = time.perf_counter() - t0
    table.autocommit = True
    subprocess.run([PY, "-m", "kubeproxy", "--cleanup"], capture_output=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    return {"services": n, "iptables_restore_s": t_restore, "python_iptables_s": t_libiptc, "direct_s": t_direct,
            "ratio": t_libiptc / t_restore, "restore_over_direct": t_restore / t_direct}


async def rule_programming(sizes: list[int], backends: list[str], reps: int, nft_reps: int, changes: int) -> dict:
    from apiserver_stub.testing import free_port
    from kubecommon.client import ApiClient, ClusterConfig

    port = free_port()
    api = subprocess.Popen([PY, "-m", "apiserver_stub", "--memory", "--bind", "127.0.0.1", "--port", str(port),
                            "--service-cluster-ip-range", "10.96.0.0/12"], cwd=ROOT,
                           env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = ApiClient(ClusterConfig(server=f"http://127.0.0.1:{port}"))
    out: dict = {}
    try:
        for _ in range(200):
            try:
                await client.list("namespaces")
                break
            except Exception:
                await asyncio.sleep(0.1)
        await client.create("namespaces", {"metadata": {"name": "bench"}})
        have = 0
        for n in sorted(sizes):
            t0 = time.perf_counter()
            await populate(client, have, n)
            have = n
            console.log(f"API holds {n} services + slices (+{time.perf_counter() - t0:.1f}s)")
            for backend in backends:
                r = reps if backend != "nft-restore" or n < 5000 else nft_reps
                res = await rules_for_backend(client, backend, n, r, changes)
                out.setdefault(str(n), {})[backend] = res
                console.log(f"{n} services, {backend}: full cold {res['full_sync_cold']['total_s']['median']:.3f}s, "
                            f"warm {res['full_sync_warm']['total_s']['median']:.3f}s, "
                            f"one change {res['one_change_s']['median'] * 1000:.1f} ms")
                sh(PY, "-m", "kubeproxy", "--cleanup", check=False)
    finally:
        await client.close()
        api.terminate()
        api.wait()
    return out


@click.command()
@click.option("--sizes", default="1000,5000,10000", show_default=True)
@click.option("--backends", default="legacy,legacy-restore,nft,nft-restore", show_default=True,
              help="legacy = direct x_tables writer, legacy-restore = iptables-legacy-restore, "
                   "nft = direct nf_tables writer, nft-restore = iptables-nft-restore")
@click.option("--reps", default=3, show_default=True, help="cold and warm full-sync repetitions (nft-restore: below 5,000)")
@click.option("--nft-reps", default=1, show_default=True, help="full-sync repetitions for nft-restore at 5,000+")
@click.option("--changes", default=5, show_default=True, help="one-endpoint changes timed per size/backend")
@click.option("--seconds", default=5, show_default=True, help="duration of each wrk/iperf3 run")
@click.option("--rounds", default=2, show_default=True, help="alternating direct/ClusterIP rounds")
@click.option("--dataplane-backends", default="legacy,nft", show_default=True,
              help="backends the data path is measured through, one after the other")
@click.option("--skip-dataplane", is_flag=True)
@click.option("--skip-rules", is_flag=True)
@click.option("--libiptc-size", default=1000, show_default=True, help="services for the python-iptables comparison (0 skips)")
@click.option("--json", "json_path", default="kubeproxy-bench.json", show_default=True)
def main(sizes, backends, reps, nft_reps, changes, seconds, rounds, dataplane_backends, skip_dataplane, skip_rules,
         libiptc_size, json_path):
    """Benchmark kube-netlab's kube-proxy iptables mode (root; uses namespaces kpb-*)."""
    if os.geteuid() != 0:
        raise click.UsageError("needs root (network namespaces)")
    report: dict = {"machine": {"cpus": os.cpu_count(), "kernel": os.uname().release}}
    if not skip_dataplane:
        dp_backends = dataplane_backends.split(",")
        for b in dp_backends:
            if b not in ("legacy", "legacy-restore", "nft", "nft-restore"):
                raise click.BadParameter(f"unknown backend {b!r}", param_hint="--dataplane-backends")
        console.log(f"data path: wrk + iperf3, direct vs ClusterIP, through {', '.join(dp_backends)}")
        report["dataplane"] = dp = dataplane(seconds, rounds, dp_backends)
        t = Table(title="Data path: pod -> pod directly vs through its ClusterIP (iptables mode)")
        for c in ("backend", "", "requests/s", "p50 ms", "p99 ms", "TCP Gbit/s"):
            t.add_column(c, justify="right")
        for b, per in dp.items():
            for k in ("direct", "clusterip"):
                d = per[k]
                t.add_row(b, k, f"{d['rps']:.0f}", f"{d['p50_ms']:.3f}", f"{d['p99_ms']:.3f}", f"{d['tcp_gbps']:.2f}")
            r = per["ratio"]
            t.add_row(b, "ClusterIP / direct", f"{r['rps']:.3f}", f"{r['p50']:.3f}", f"{r['p99']:.3f}", f"{r['tcp']:.3f}",
                      end_section=True)
        console.print(t)
    if not skip_rules:
        from pyroute2 import netns

        subprocess.run(["ip", "netns", "del", RULES_NS], capture_output=True)
        sh("ip", "netns", "add", RULES_NS)
        home = os.open("/proc/self/ns/net", os.O_RDONLY)
        try:
            netns.setns(RULES_NS)  # this process (and everything it spawns) now lives there
            sh("ip", "link", "set", "lo", "up")
            if libiptc_size:
                console.log(f"python-iptables vs iptables-restore, {libiptc_size} services")
                report["libiptc_vs_restore"] = li = libiptc_vs_restore(libiptc_size)
                console.log(f"restore {li['iptables_restore_s']:.3f}s, python-iptables {li['python_iptables_s']:.3f}s, "
                            f"direct {li['direct_s']:.3f}s")
            report["rules"] = rules = asyncio.run(rule_programming(
                [int(s) for s in sizes.split(",")], backends.split(","), reps, nft_reps, changes))
        finally:
            netns.setns(f"/proc/self/fd/{home}")
            os.close(home)
            subprocess.run(["ip", "netns", "del", RULES_NS], capture_output=True)
        t = Table(title="Rule programming (services x 2 endpoints; medians; warm = periodic resync)")
        for c in ("services", "backend", "full cold s", "full warm s", "warm: render / encode / read / write s",
                  "one change ms (med/min/max)", "change: encode / read / write ms", "nat rules"):
            t.add_column(c, justify="right")
        for n, per in rules.items():
            for b, r in per.items():
                cold, warm, c, p = r["full_sync_cold"], r["full_sync_warm"], r["one_change_s"], r["one_change_sync"]
                m = lambda d, k, f=1.0: f"{d[k]['median'] * f:.3f}" if d[k] else "-"  # noqa: E731
                t.add_row(n, b, m(cold, "total_s"), m(warm, "total_s"),
                          " / ".join(m(warm, k) for k in ("render_s", "encode_s", "read_s", "write_s")),
                          f"{c['median'] * 1000:.1f} / {c['min'] * 1000:.1f} / {c['max'] * 1000:.1f}",
                          " / ".join(f"{p[k]['median'] * 1000:.1f}" for k in ("encode_s", "read_s", "write_s")),
                          str(r["rules_nat"]))
        console.print(t, width=max(console.width, 160))
    Path(json_path).write_text(json.dumps(report, indent=2))
    console.log(f"wrote {json_path}")


if __name__ == "__main__":
    main()
