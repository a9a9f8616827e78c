"""``python -m kubeproxy.nftables.bench``: the nftables mode at scale, beside iptables (legacy).

In namespaces of its own ("nfb-node", a node; "nfb-pod", one pod namespace holding every
real endpoint address, a tiny server answering each TCP connection with the address it was
reached on) this process enters the node namespace and drives the proxiers directly:

* full sync time (render + transaction applied) at 100 / 1,000 / 10,000 services with 2
  endpoints each, starting from an empty node;
* at the largest size, the time for one endpoint change to be live: the probe service's
  endpoints are replaced by one new address; "applied" = sync() returned (the
  transaction is in the kernel), "live" = a new TCP connection to the ClusterIP reaches
  the new endpoint (polled back to back);
* first-packet latency: connect() time of a new TCP connection to the probe service's
  ClusterIP (median of many), against connect() straight to the pod IP, interleaved, at
  every size, and against connect() to the pod on the node before any rule is loaded (the
  ratio's baseline: in iptables mode even the direct connect walks KUBE-SERVICES). The
  probe service sorts last (namespace "zz-probe"), i.e. it is the
  last rule of KUBE-SERVICES in iptables mode: the worst case of its linear walk.

Modes: nftables always; iptables (legacy backend) when kubeproxy.iptables is importable.
Prints a rich table and writes JSON (--json). Needs root; removes its namespaces.
"""

from __future__ import annotations

import asyncio
import ctypes
import ipaddress
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from kubecommon.model import Endpoint, ServicePortInfo, ServicePortName

from ..config import ProxyConfig

P = "nfb"
NODE_NS, POD_NS = f"{P}-node", f"{P}-pod"
NODE_IP, POD_NET = "10.244.0.1", "10.244.0.0/24"
EP_A, EP_B = "10.244.0.2", "10.244.0.3"
NEW_EPS = [f"10.244.0.{i}" for i in range(10, 30)]  # targets of the endpoint changes
FAKE_NET = ipaddress.ip_network("10.245.0.0/16")  # other services' endpoints, never contacted
SERVICE_NET = ipaddress.ip_network("10.96.0.0/16")
PORT, TARGET = 80, 8080
PROBE = ServicePortName("zz-probe", "probe", "http", "TCP")
CLONE_NEWNET = 0x40000000
console = Console(width=170)

SERVER = r"""
import asyncio, socket
async def handle(r, w):
    w.write(w.get_extra_info("sockname")[0].encode()); await w.drain(); w.close()
async def main():
    s = await asyncio.start_server(handle, "0.0.0.0", TARGET_PORT, backlog=4096, reuse_address=True)
    print("ready", flush=True)
    await s.serve_forever()
asyncio.run(main())
""".replace("TARGET_PORT", str(TARGET))


def sh(*argv: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    full = (["ip", "netns", "exec", ns] if ns else []) + list(argv)
    return subprocess.run(full, capture_output=True, text=True, check=check, timeout=60)


def _setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {path}")
    finally:
        os.close(fd)


def teardown() -> None:
    for ns in (NODE_NS, POD_NS):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def build() -> subprocess.Popen:
    teardown()
    sh("ip", "netns", "add", NODE_NS)
    sh("ip", "netns", "add", POD_NS)
    sh(
        "ip",
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        "vpod",
        "netns",
        NODE_NS,
        ns=POD_NS,
    )
    for cmd in (
        ["ip", "link", "set", "lo", "up"],
        ["ip", "addr", "add", f"{NODE_IP}/24", "dev", "vpod"],
        ["ip", "link", "set", "vpod", "up"],
        ["ip", "route", "add", "default", "via", EP_A],  # service IPs must be routable
        ["sysctl", "-qw", "net.ipv4.ip_forward=1"],
    ):
        sh(*cmd, ns=NODE_NS)
    for ip in (EP_A, EP_B, *NEW_EPS):
        sh("ip", "addr", "add", f"{ip}/24", "dev", "eth0", ns=POD_NS)
    for cmd in (
        ["ip", "link", "set", "lo", "up"],
        ["ip", "link", "set", "eth0", "up"],
        ["ip", "route", "add", "default", "via", NODE_IP],
    ):
        sh(*cmd, ns=POD_NS)
    server = subprocess.Popen(
        ["ip", "netns", "exec", POD_NS, sys.executable, "-c", SERVER],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    if server.stdout.readline().strip() != "ready":
        raise RuntimeError("probe server did not start")
    return server


def cluster(n: int) -> tuple[dict, dict]:
    """n service ports (the probe one included, sorting last) with 2 endpoints each."""
    services: dict[ServicePortName, ServicePortInfo] = {}
    endpoints: dict[ServicePortName, tuple[Endpoint, ...]] = {}
    for i in range(n - 1):
        spn = ServicePortName(f"ns{i % 20}", f"svc{i}", "http", "TCP")
        services[spn] = ServicePortInfo(spn, str(SERVICE_NET[i + 10]), PORT, "TCP", TARGET)
        endpoints[spn] = (
            Endpoint(str(FAKE_NET[2 * i + 2]), TARGET, node_name="node"),
            Endpoint(str(FAKE_NET[2 * i + 3]), TARGET, node_name="other"),
        )
    services[PROBE] = ServicePortInfo(PROBE, probe_ip(), PORT, "TCP", TARGET)
    endpoints[PROBE] = (
        Endpoint(EP_A, TARGET, node_name="node"),
        Endpoint(EP_B, TARGET, node_name="node"),
    )
    return services, endpoints


def probe_ip() -> str:
    return str(SERVICE_NET[5])


def connect(ip: str, port: int) -> tuple[float, str]:
    """(seconds for connect(), address the server saw us reach)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        t = time.perf_counter()
        s.connect((ip, port))
        dt = time.perf_counter() - t
        return dt, s.recv(64).decode()
    finally:
        s.close()


def stats(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def make_proxier(mode: str):
    cfg = ProxyConfig(
        hostname_override="node",
        proxy_mode=mode,
        cluster_cidr="10.244.0.0/15",
        min_sync_period=0,
        sync_period=1e9,
        iptables_backend="legacy",
    )
    if mode == "nftables":
        from .proxier import NftablesProxier

        return NftablesProxier(cfg)
    from ..iptables.proxier import IptablesProxier

    return IptablesProxier(cfg)


async def bench_mode(
    mode: str, sizes: list[int], probes: int, changes: int, baseline: dict
) -> dict:
    out: dict = {"sizes": {}}
    for n in sizes:
        services, endpoints = cluster(n)
        proxier = make_proxier(mode)
        await proxier.cleanup()
        await proxier.start()
        t = time.perf_counter()
        await proxier.sync(services, endpoints)
        full_s = time.perf_counter() - t
        row: dict = {"full_sync_s": full_s}
        if hasattr(proxier.last, "render_s"):
            row["full_render_s"] = proxier.last.render_s
        # first-packet latency, service and direct interleaved
        svc_lat, direct_lat = [], []
        for _ in range(probes):
            svc_lat.append(connect(probe_ip(), PORT)[0])
            direct_lat.append(connect(EP_A, TARGET)[0])
        row["first_packet_service"] = stats(svc_lat)
        row["first_packet_direct"] = stats(direct_lat)
        row["first_packet_ratio"] = row["first_packet_service"]["median"] / baseline["median"]
        if n == max(sizes) and changes:
            applied, live = [], []
            for k in range(changes):
                target = NEW_EPS[k % len(NEW_EPS)]
                eps = dict(endpoints)
                eps[PROBE] = (Endpoint(target, TARGET, node_name="node"),)
                t0 = time.perf_counter()
                await proxier.sync(services, eps)
                t1 = time.perf_counter()
                while connect(probe_ip(), PORT)[1] != target:
                    if time.perf_counter() - t0 > 30:
                        raise RuntimeError(f"{mode}: endpoint change never became live")
                t2 = time.perf_counter()
                applied.append(t1 - t0)
                live.append(t2 - t0)
                endpoints = eps
            row["change_applied_s"] = stats(applied)
            row["change_live_s"] = stats(live)
            if mode == "nftables":
                row["change_transaction_lines"] = proxier.last.lines
        await proxier.cleanup()
        out["sizes"][n] = row
        console.log(
            f"{mode} {n}: full {full_s:.2f}s, first packet x{row['first_packet_ratio']:.2f} of direct"
        )
    return out


def iptables_available() -> bool:
    try:
        import kubeproxy.iptables.proxier  # noqa: F401
    except ImportError:
        return False
    return subprocess.run(["iptables-legacy", "-V"], capture_output=True).returncode == 0


def report(results: dict) -> None:
    t = Table(title=f"kube-proxy modes at scale ({results['load']})")
    for c in (
        "mode",
        "services",
        "full sync",
        "1 change applied",
        "1 change live",
        "connect() via ClusterIP",
        "connect() direct (same rules)",
        "ratio to no-rules direct",
    ):
        t.add_column(c, justify="right")
    ms = lambda s: f"{1000 * s['median']:.1f} ms [{1000 * s['min']:.1f}-{1000 * s['max']:.1f}]"  # noqa: E731
    us = lambda s: f"{1e6 * s['median']:.0f} µs [{1e6 * s['min']:.0f}-{1e6 * s['max']:.0f}]"  # noqa: E731
    for mode, r in results["modes"].items():
        for n, row in r["sizes"].items():
            t.add_row(
                mode,
                f"{n:,}",
                f"{row['full_sync_s']:.2f} s",
                ms(row["change_applied_s"]) if "change_applied_s" in row else "",
                ms(row["change_live_s"]) if "change_live_s" in row else "",
                us(row["first_packet_service"]),
                us(row["first_packet_direct"]),
                f"{row['first_packet_ratio']:.2f}",
            )
    console.print(t)
    console.print(f"connect() direct on a node without rules: {us(results['baseline'])}")


@click.command()
@click.option("--sizes", default="100,1000,10000", show_default=True, help="numbers of services")
@click.option("--probes", default=300, show_default=True, help="connects per latency figure")
@click.option(
    "--changes", default=7, show_default=True, help="endpoint changes timed at the largest size"
)
@click.option("--modes", default="nftables,iptables", show_default=True)
@click.option(
    "--json", "json_path", default="bench-results/kubeproxy-nftables.json", show_default=True
)
def main(sizes: str, probes: int, changes: int, modes: str, json_path: str) -> None:
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    size_list = sorted(int(s) for s in sizes.split(","))
    wanted = [
        m for m in modes.split(",") if m == "nftables" or (m == "iptables" and iptables_available())
    ]
    results: dict = {
        "load": "load avg " + " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "modes": {},
    }
    try:
        server = build()
    except BaseException:
        teardown()
        raise
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        _setns(f"/run/netns/{NODE_NS}")
        # connect() to the pod on a node without any proxy rule: the floor for every figure
        results["baseline"] = stats([connect(EP_A, TARGET)[0] for _ in range(probes)])
        for mode in wanted:
            results["modes"][mode] = asyncio.run(
                bench_mode(mode, size_list, probes, changes, results["baseline"])
            )
    finally:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.setns(home, CLONE_NEWNET)
        os.close(home)
        os.killpg(server.pid, 15)
        server.wait()
        teardown()
    results["load_after"] = "load avg " + " ".join(f"{x:.1f}" for x in os.getloadavg())
    report(results)
    Path(json_path).parent.mkdir(parents=True, exist_ok=True)
    Path(json_path).write_text(json.dumps(results, indent=2))
    console.log(f"wrote {json_path}")


if __name__ == "__main__":
    main()
