"""Benchmark: direct pod IP vs userspace mode (vs iptables mode, vs a C relay) on one node.

    python -m kubeproxy.userspace.bench [--reps 3] [--duration 5] [--connections 50]
                  [--json out.json] [--modes direct,userspace,iptables,nginx-stream]

"nginx-stream" is the reference for what a userspace relay can reach on the machine at all:
nginx's stream proxy (C, one worker), reached through a REDIRECT of its ClusterIP exactly
as userspace mode reaches its proxy. It pays the same extra TCP hops and context switches
with no Python in them.

Topology (prefix "ust-b", 172.30.6.128/25): client pod, server pod (Debian nginx with one
worker, iperf3 -s), both behind the node's bridge; the proxy runs in the node namespace
(kubeproxy.userspace.harness). Every mode is measured in every repetition, interleaved, and
the order of the modes alternates from one repetition to the next, and the table shows
medians and ratios to direct from the same run:
- iperf3 bulk TCP throughput (one stream)
- wrk keep-alive requests/s and latency p50/p99
- wrk one-connection-per-request (``Connection: close``) requests/s and p50/p99
- keep-alive latency with one connection (no queueing: what the path itself adds)
Ratios: of the medians, "(paired)" the median of each repetition's ratio, and the range
of those per-repetition ratios (the run-to-run spread on a shared machine).
"""

from __future__ import annotations

import json
import os
import re
import statistics
import sys
import tempfile
import time

import click
from rich.console import Console
from rich.table import Table

from .topo import VENV_PY, Node, wait_file, wait_port

CIDR = "172.30.6.128/25"
SERVICE_IPS = {"userspace": "10.96.6.200", "iptables": "10.96.6.201", "nginx-stream": "10.96.6.202"}
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"

# The reference relay: nginx's stream proxy (C, epoll, one worker) in the node namespace,
# reached the way userspace mode reaches its proxy (a REDIRECT of the ClusterIP in
# PREROUTING). What it gets is about what any userspace relay can get on this machine.
STREAM_CONF = """load_module {module};
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 8192; }}
stream {{
  server {{ listen {node_ip}:{http_port} backlog=4096; proxy_pass {pod_ip}:80; }}
  server {{ listen {node_ip}:{iperf_port}; proxy_pass {pod_ip}:5201; }}
}}
"""

NGINX_CONF = """worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};
  uwsgi_temp_path {d}; scgi_temp_path {d};
  keepalive_requests 1000000;
  server {{ listen {ip}:80 backlog=4096 reuseport; location / {{ return 200 "pod=server\\n"; }} }}
}}
"""


def _num(v: float) -> str:
    return f"{v:.2f}" if abs(v) >= 1 else f"{v:.3f}"


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    if not m:
        return float("nan")
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]


def parse_wrk(out: str) -> dict:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    errors = re.search(r"Socket errors: (.*)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": float(rps.group(1)) if rps else 0.0,
        "p50_ms": _ms(p50.group(1)) if p50 else float("nan"),
        "p99_ms": _ms(p99.group(1)) if p99 else float("nan"),
        "errors": (errors.group(1) if errors else "")
        + (f" non2xx={non2xx.group(1)}" if non2xx else ""),
    }


class Bench:
    def __init__(self, duration: int, connections: int, modes: list[str], tmp: str):
        self.node = Node("ust-b", CIDR)
        self.duration = duration
        self.connections = connections
        self.modes = modes
        self.tmp = tmp

    def up(self) -> None:
        n = self.node
        n.up(2)
        n.exec(n.ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        # ~45,000 connections per new-connection run against the default 28,000 ephemeral
        # ports: a mode measured twice in a row (the order alternates) once ran at 160
        # requests/s instead of 8,000, as if meeting its own TIME_WAITs; not since the
        # range was widened
        for ns in (n.ns, n.pod_ns(0)):
            n.exec(ns, "sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535")
        server = n.pod_ns(1)
        d = os.path.join(self.tmp, "nginx")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "nginx.conf"), "w") as f:
            f.write(NGINX_CONF.format(d=d, ip=n.pod_ip(1)))
        n.spawn(server, "nginx", "-c", os.path.join(d, "nginx.conf"), "-p", d)
        n.spawn(server, "iperf3", "-s", "-p", "5201")
        wait_port(n, server, n.pod_ip(1), 80)
        wait_port(n, server, n.pod_ip(1), 5201)
        for mode in self.modes:
            if mode == "direct":
                continue
            if mode == "nginx-stream":
                self.up_stream_reference()
                continue
            ip = SERVICE_IPS[mode]
            spec = os.path.join(self.tmp, f"{mode}.json")
            ready = os.path.join(self.tmp, f"{mode}.ready")
            with open(spec, "w") as f:
                json.dump(
                    {
                        "services": [
                            {
                                "name": f"bench-{mode}",
                                "port_name": "http",
                                "protocol": "TCP",
                                "cluster_ip": ip,
                                "port": 80,
                                "endpoints": [[n.pod_ip(1), 80]],
                            },
                            {
                                "name": f"bench-{mode}",
                                "port_name": "iperf",
                                "protocol": "TCP",
                                "cluster_ip": ip,
                                "port": 5201,
                                "endpoints": [[n.pod_ip(1), 5201]],
                            },
                        ]
                    },
                    f,
                )
            n.spawn(
                n.ns,
                VENV_PY,
                "-m",
                "kubeproxy.userspace.harness",
                "--mode",
                mode,
                "--spec",
                spec,
                "--node-ip",
                n.node_ip,
                "--ready-file",
                ready,
                log=os.path.join(self.tmp, f"{mode}.log"),
            )
            wait_file(ready, 30)
            wait_port(n, n.pod_ns(0), ip, 80)

    def up_stream_reference(self) -> None:
        n, ip = self.node, SERVICE_IPS["nginx-stream"]
        d = os.path.join(self.tmp, "nginx-stream")
        os.makedirs(d, exist_ok=True)
        ports = {80: 30080, 5201: 30201}
        with open(os.path.join(d, "nginx.conf"), "w") as f:
            f.write(STREAM_CONF.format(module=STREAM_MODULE, d=d, node_ip=n.node_ip, pod_ip=n.pod_ip(1),
                                       http_port=ports[80], iperf_port=ports[5201]))
        n.spawn(n.ns, "nginx", "-c", os.path.join(d, "nginx.conf"), "-p", d)
        for port, to in ports.items():
            n.exec(n.ns, "iptables-legacy", "-t", "nat", "-A", "PREROUTING", "-d", ip, "-p", "tcp",
                   "--dport", str(port), "-j", "REDIRECT", "--to-ports", str(to))
        wait_port(n, n.pod_ns(0), ip, 80)

    def target(self, mode: str) -> str:
        return self.node.pod_ip(1) if mode == "direct" else SERVICE_IPS[mode]

    def iperf(self, mode: str) -> float:
        argv = ["iperf3", "-c", self.target(mode), "-p", "5201", "-t", str(self.duration), "-J"]
        for attempt in range(3):  # the server refuses a test while the last one winds down
            r = self.node.exec(self.node.pod_ns(0), *argv, timeout=self.duration + 30, check=False)
            try:
                return json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9
            except (ValueError, KeyError):
                err = json.loads(r.stdout or "{}").get("error") if r.stdout else r.stderr
                if attempt == 2:
                    raise RuntimeError(f"iperf3 to {mode} failed: {err}") from None
                time.sleep(1)
        raise AssertionError("unreachable")

    def wrk(self, mode: str, close: bool, connections: int = 0) -> dict:
        argv = ["wrk", "-t1", f"-c{connections or self.connections}", f"-d{self.duration}s", "--latency"]
        if close:
            argv += ["-H", "Connection: close"]
        argv.append(f"http://{self.target(mode)}/")
        r = self.node.exec(self.node.pod_ns(0), *argv, timeout=self.duration + 30)
        return parse_wrk(r.stdout)

    def down(self) -> None:
        self.node.down()


METRICS = [
    ("throughput_gbps", "iperf3 Gbit/s", True),
    ("ka_rps", "keep-alive req/s", True),
    ("ka_p50_ms", "keep-alive p50 ms", False),
    ("ka_p99_ms", "keep-alive p99 ms", False),
    ("nc_rps", "new-conn req/s", True),
    ("nc_p50_ms", "new-conn p50 ms", False),
    ("nc_p99_ms", "new-conn p99 ms", False),
    # one connection: the latency a request pays for the path itself, without the queueing
    # that a saturating load adds (there p99 is about connections / requests-per-second)
    ("ka1_p50_ms", "1 conn keep-alive p50 ms", False),
    ("ka1_p99_ms", "1 conn keep-alive p99 ms", False),
]


@click.command()
@click.option("--reps", default=3, show_default=True)
@click.option("--duration", default=5, show_default=True, help="seconds per measurement")
@click.option("--connections", default=50, show_default=True, help="wrk connections")
@click.option(
    "--modes",
    default="",
    help="comma list of direct,userspace,iptables,nginx-stream (default: all available); "
    "nginx-stream is a reference userspace relay in C (nginx's stream proxy)",
)
@click.option("--json", "json_path", default="", help="write results here")
def main(reps: int, duration: int, connections: int, modes: str, json_path: str) -> None:
    if os.geteuid() != 0:
        sys.exit("bench: run as root (it builds network namespaces)")
    console = Console(stderr=True)
    wanted = [m for m in (modes or "direct,userspace,iptables,nginx-stream").split(",") if m]
    unknown = [m for m in wanted if m != "direct" and m not in SERVICE_IPS]
    if unknown:
        sys.exit(f"bench: unknown mode(s) {', '.join(unknown)}; choose from direct,{','.join(SERVICE_IPS)}")
    if "nginx-stream" in wanted and not os.path.exists(STREAM_MODULE):
        console.print(f"[yellow]{STREAM_MODULE} missing (Debian package libnginx-mod-stream); skipping nginx-stream")
        wanted.remove("nginx-stream")
    if "iptables" in wanted:
        try:
            import kubeproxy.iptables.proxier  # noqa: F401
        except ImportError:
            console.print("[yellow]kubeproxy.iptables not available; skipping iptables mode")
            wanted.remove("iptables")
    tmp = tempfile.mkdtemp(prefix="ust-bench-")
    b = Bench(duration, connections, wanted, tmp)
    runs: dict[str, list[dict]] = {m: [] for m in wanted}
    try:
        b.up()
        for rep in range(reps):
            # alternate the order: whatever one measurement leaves behind (TIME_WAIT
            # sockets, a warm cache, another tenant's burst) does not always favour one mode
            for mode in wanted if rep % 2 == 0 else wanted[::-1]:
                gbps = b.iperf(mode)
                ka = b.wrk(mode, close=False)
                nc = b.wrk(mode, close=True)
                ka1 = b.wrk(mode, close=False, connections=1)
                row = {
                    "throughput_gbps": gbps,
                    "ka_rps": ka["rps"],
                    "ka_p50_ms": ka["p50_ms"],
                    "ka_p99_ms": ka["p99_ms"],
                    "nc_rps": nc["rps"],
                    "nc_p50_ms": nc["p50_ms"],
                    "nc_p99_ms": nc["p99_ms"],
                    "ka1_p50_ms": ka1["p50_ms"],
                    "ka1_p99_ms": ka1["p99_ms"],
                    "errors": " ".join(x["errors"] for x in (ka, nc, ka1) if x["errors"]),
                }
                runs[mode].append(row)
                console.print(
                    f"rep {rep + 1}/{reps} {mode:9s} "
                    + " ".join(f"{k}={_num(row[k])}" for k, _, _ in METRICS)
                    + (f" errors: {row['errors']}" if row["errors"] else "")
                )
    finally:
        b.down()
    med = {
        m: {k: statistics.median(r[k] for r in rs) for k, _, _ in METRICS}
        for m, rs in runs.items()
        if rs
    }
    ratios = {
        m: {
            k: (v / med["direct"][k] if med.get("direct") and med["direct"][k] else float("nan"))
            for k, v in vals.items()
        }
        for m, vals in med.items()
    }
    # each repetition measures every mode back to back: the median of the per-repetition
    # ratios cancels most of a shared machine's drifting load
    per_rep = {
        m: {
            k: [
                r[k] / d[k] if d[k] else float("nan")
                for r, d in zip(rs, runs["direct"], strict=False)
            ]
            for k, _, _ in METRICS
        }
        for m, rs in runs.items()
        if rs and m != "direct" and runs.get("direct")
    }
    paired = {m: {k: statistics.median(v) for k, v in ks.items()} for m, ks in per_rep.items()}
    table = Table(
        title=f"kube-proxy userspace vs direct (medians of {reps}, {duration}s each, wrk -c{connections})"
    )
    table.add_column("metric")
    for m in med:
        table.add_column(m, justify="right")
        if m != "direct":
            table.add_column(f"{m}/direct", justify="right")
            table.add_column("(paired)", justify="right")
            table.add_column("(paired min-max)", justify="right")
    for k, label, _ in METRICS:
        cells = []
        for m in med:
            cells.append(_num(med[m][k]))
            if m != "direct":
                cells.append(f"{ratios[m][k]:.2f}")
                cells.append(f"{paired[m][k]:.2f}" if m in paired else "")
                cells.append(
                    f"{min(per_rep[m][k]):.2f}-{max(per_rep[m][k]):.2f}" if m in per_rep else ""
                )
        table.add_row(label, *cells)
    Console(width=max(Console().width, 120)).print(table)
    result = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "reps": reps,
        "duration": duration,
        "connections": connections,
        "runs": runs,
        "median": med,
        "ratio_to_direct": ratios,
        "paired_ratio_to_direct": paired,
        "per_repetition_ratio_to_direct": per_rep,
    }
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=2)
        console.print(f"wrote {json_path}")


if __name__ == "__main__":
    main()
