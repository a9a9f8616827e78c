"""Data path on one lab: the same pods measured directly and through each proxy mode.

One lab, pods pinned on the two workers (API namespace "bench"):

    worker1: web (Debian nginx, :80), iperf (iperf3 -s :5201), echo (lab.workload: UDP echo
             :9000, HTTP :8080), cli-same (the client on the servers' node)
    worker2: cli-other (the client across the overlay; also the second endpoint of "flip")

Services web:80, iperf:5201, echo:9000/UDP select them; "flip":80 selects echo or cli-other
by label and is used to time an endpoint change. For every proxy mode in turn, every node's
kube-proxy is stopped, ``python -m kubeproxy --cleanup`` removes whatever any mode left, and
it is started again with ``--proxy-mode MODE`` (Lab.restart_agent). Then, repeated and
interleaved with the same measurement straight to the pod IP (the baseline), from each
client: wrk keep-alive requests/s and p50/p90/p99, wrk ``Connection: close`` requests/s
(connection setup rate), iperf3 bulk TCP, and a UDP request/response loop. The wrk parsing is
kubeproxy.userspace.bench's. Traffic only goes to addresses inside the lab.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from kubeproxy.userspace.bench import _ms, parse_wrk
from lab import agents as ag
from lab import cleanup as lab_cleanup
from lab.cluster import Lab, LabError

from .stats import Figure, figure

log = logging.getLogger("lab.bench")

NS = "bench"
PLACEMENTS = ("same_node", "other_node")
CLIENT = {"same_node": "cli-same", "other_node": "cli-other"}
IPERF_PORT, ECHO_PORT, WEB_PORT = 5201, 9000, 80

# metric -> (unit, better)
METRICS: dict[str, tuple[str, str]] = {
    "http_rps": ("req/s", "higher"),
    "http_p50_ms": ("ms", "lower"),
    "http_p90_ms": ("ms", "lower"),
    "http_p99_ms": ("ms", "lower"),
    "conn_rps": ("conn/s", "higher"),
    "tcp_gbps": ("Gbit/s", "higher"),
    "udp_rr_per_s": ("req/s", "higher"),
}

UDP_RR = r"""
import socket, sys, time
ip, port, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.5)
s.connect((ip, port))
msg = b"x" * 32
deadline = time.monotonic() + 5
while True:  # first answer (a proxy may open its session) before the clock starts
    s.send(msg)
    try:
        s.recv(2048)
        break
    except OSError:
        if time.monotonic() > deadline:
            print("0 0"); sys.exit(1)
n = lost = 0
t0 = time.monotonic()
end = t0 + secs
while time.monotonic() < end:
    s.send(msg)
    try:
        s.recv(2048)
        n += 1
    except OSError:
        lost += 1
print(n / (time.monotonic() - t0), lost)
"""

FLIP_POLL = r"""
import socket, sys, time
ip, want = sys.argv[1], ("pod=" + sys.argv[2] + " ").encode()
req = b"GET / HTTP/1.1\r\nHost: flip\r\nConnection: close\r\n\r\n"
def get():
    s = socket.socket()
    s.settimeout(0.2)
    try:
        s.connect((ip, 80))
        s.sendall(req)
        data = b""
        while True:
            c = s.recv(4096)
            if not c:
                return data
            data += c
    except OSError:
        return b""
    finally:
        s.close()
print("ready", flush=True)
while want not in get():
    time.sleep(0.001)
print(time.monotonic(), flush=True)
"""


def _pod(name: str, node: str, labels: dict[str, str], **container: Any) -> dict:
    c = {"name": name, "image": container.pop("image", "kube-netlab/workload"), **container}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"bench": "dp", **labels}},
        "spec": {"nodeName": node, "containers": [c]},
    }


def _svc(name: str, selector: dict[str, str], port: int, target: int, proto: str = "TCP") -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "selector": selector,
            "ports": [{"name": "p", "port": port, "targetPort": target, "protocol": proto}],
        },
    }


def manifests(w1: str, w2: str) -> list[dict]:
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
        _pod("web", w1, {"app": "web"}, image="nginx", ports=[{"containerPort": 80}]),
        _pod("iperf", w1, {"app": "iperf"}, command=["iperf3", "-s", "-p", str(IPERF_PORT)]),
        _pod("echo", w1, {"app": "echo", "flip": "a"}),
        _pod("cli-same", w1, {"app": "client"}),
        _pod("cli-other", w2, {"app": "client", "flip": "b"}),
        _svc("web", {"app": "web"}, WEB_PORT, 80),
        _svc("iperf", {"app": "iperf"}, IPERF_PORT, IPERF_PORT),
        _svc("echo", {"app": "echo"}, ECHO_PORT, ECHO_PORT, "UDP"),
        _svc("flip", {"flip": "a"}, 80, 8080),
    ]


class DataPath:
    """Deploys the benchmark pods on a lab and measures them (see the module docstring)."""

    def __init__(self, lab: Lab, seconds: float, reps: int, connections: int = 32):
        self.lab = lab
        self.seconds = seconds
        self.reps = reps
        self.connections = connections
        self.pod_ip: dict[str, str] = {}
        self.svc_ip: dict[str, str] = {}
        self.flip_at = "echo"
        self.mode = lab.config.proxy_mode  # what the lab's kube-proxies run now
        self.problems: list[dict[str, str]] = []  # failed mode switches (retried once)

    # -------------------------------------------------------------------------- setup

    def deploy(self, timeout: float = 60) -> None:
        w = self.lab.worker_names
        if len(w) < 2:
            raise LabError("the data-path bench needs a lab with two workers")
        self.lab.apply_objects(manifests(w[0], w[1]))
        pods = self.lab.wait_ready(NS, "bench=dp", 5, timeout=timeout)
        self.pod_ip = {p["metadata"]["name"]: p["status"]["podIP"] for p in pods}
        for s in ("web", "iperf", "echo", "flip"):
            self.svc_ip[s] = self.lab.api.get("services", s, NS)["spec"]["clusterIP"]

    def switch_mode(self, mode: str) -> dict[str, Any]:
        """Every node: stop kube-proxy, --cleanup, start it in ``mode``; what the kernel holds.

        Nothing to do for the mode the lab was built with, before any switch."""
        lab = self.lab
        kernel: dict[str, Any] = {}
        for node in lab.node_names if mode != self.mode else ():
            ag.stop(ag.make_agent(lab.config, node, "kubeproxy", python=lab.python))
            r = lab.node_exec(node, [lab.python, "-m", "kubeproxy", "--cleanup"], timeout=120)
            if r.returncode != 0:
                raise LabError(f"kubeproxy --cleanup on {node} failed: {r.stderr[-500:]}")
            for attempt in (1, 2):  # one retry; what went wrong stays in the JSON
                try:
                    lab.restart_agent(node, "kubeproxy", ["--proxy-mode", mode], timeout=45)
                    break
                except LabError as e:
                    path = ag.log_path(lab.prefix, node, "kubeproxy")
                    msg = f"{e}\n--- {path}:\n{ag.log_tail(path, 40)}"
                    self.problems.append({"node": node, "mode": mode, "error": msg})
                    log.warning("switching %s to %s, attempt %d: %s", node, mode, attempt, msg)
                    if attempt == 2:
                        raise LabError(msg) from None
                    ag.stop(ag.make_agent(lab.config, node, "kubeproxy", python=lab.python))
                    lab.node_exec(node, [lab.python, "-m", "kubeproxy", "--cleanup"], timeout=120)
        self.mode = mode
        for node in lab.worker_names:
            nat = lab.node_exec(node, ["iptables-legacy-save", "-t", "nat"]).stdout
            nft = lab.node_exec(node, ["nft", "list", "tables"]).stdout
            kernel[node] = {
                "iptables_kube_svc_chains": len(re.findall(r"^:KUBE-SVC-", nat, re.M)),
                "iptables_portal_rules": len(re.findall(r"^-A KUBE-PORTALS", nat, re.M)),
                "nft_tables": sorted(set(nft.split()) - {"table", "ip", "inet", "ip6"}),
            }
        self.wait_services()
        return kernel

    def wait_services(self, timeout: float = 60) -> None:
        """Every client reaches web, iperf (TCP connect) and echo (UDP) through the ClusterIP."""
        deadline = time.monotonic() + timeout
        checks = [
            ["curl", "-sf", "-m", "2", f"http://{self.svc_ip['web']}/"],
            ["curl", "-sf", "-m", "2", f"http://{self.svc_ip['flip']}/"],
            [self.lab.python, "-c", UDP_RR, self.svc_ip["echo"], str(ECHO_PORT), "0.01"],
        ]
        for pl in PLACEMENTS:
            for argv in checks:
                while True:
                    r = self.lab.pod_exec(NS, CLIENT[pl], argv, timeout=10)
                    if r.returncode == 0:
                        break
                    if time.monotonic() > deadline:
                        raise LabError(
                            f"{CLIENT[pl]} cannot reach a service ({' '.join(argv[:4])}): "
                            f"{r.stdout[-200:]} {r.stderr[-300:]}"
                        )
                    time.sleep(0.3)

    # --------------------------------------------------------------------- measuring

    def _exec(self, pod: str, argv: list[str], what: str) -> str:
        r = self.lab.pod_exec(NS, pod, argv, timeout=self.seconds + 30)
        if r.returncode != 0:
            raise LabError(f"{what} from {pod} failed ({r.returncode}): {r.stderr[-400:]}")
        return r.stdout

    def wrk(self, pod: str, host: str, close: bool) -> dict[str, float]:
        argv = ["wrk", "-t1", f"-c{self.connections}", f"-d{self.seconds:g}s", "--latency"]
        if close:
            argv += ["-H", "Connection: close"]
        out = self._exec(pod, [*argv, f"http://{host}:{WEB_PORT}/"], "wrk")
        res = parse_wrk(out)
        p90 = re.search(r"^\s+90%\s+(\S+)", out, re.M)
        res["p90_ms"] = _ms(p90.group(1)) if p90 else float("nan")
        if res["rps"] <= 0:
            raise LabError(f"wrk from {pod} to {host} measured nothing:\n{out[-400:]}")
        return res

    def iperf(self, pod: str, host: str) -> float:
        argv = ["iperf3", "-c", host, "-p", str(IPERF_PORT), "-t", f"{self.seconds:g}", "-J"]
        out = self._exec(pod, argv, "iperf3")
        return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9

    def udp_rr(self, pod: str, host: str) -> float:
        argv = [self.lab.python, "-c", UDP_RR, host, str(ECHO_PORT), f"{self.seconds:g}"]
        return float(self._exec(pod, argv, "udp ping-pong").split()[0])

    def measure(self, pod: str, target: str) -> dict[str, float]:
        """All metrics from ``pod`` to ``target`` ("direct" = pod IPs, else the ClusterIPs)."""
        web, ipf, echo = (
            (self.pod_ip["web"], self.pod_ip["iperf"], self.pod_ip["echo"])
            if target == "direct"
            else (self.svc_ip["web"], self.svc_ip["iperf"], self.svc_ip["echo"])
        )
        ka = self.wrk(pod, web, close=False)
        nc = self.wrk(pod, web, close=True)
        return {
            "http_rps": ka["rps"],
            "http_p50_ms": ka["p50_ms"],
            "http_p90_ms": ka["p90_ms"],
            "http_p99_ms": ka["p99_ms"],
            "conn_rps": nc["rps"],
            "tcp_gbps": self.iperf(pod, ipf),
            "udp_rr_per_s": self.udp_rr(pod, echo),
        }

    def endpoint_change(self) -> float:
        """Seconds from patching flip's selector in the API to a request reaching the new pod."""
        want = "cli-other" if self.flip_at == "echo" else "echo"
        label = "b" if want == "cli-other" else "a"
        env = ag.agent_env(self.lab.prefix, self.lab.python)
        env.pop(lab_cleanup.MARKER_ENV, None)
        argv = ["ip", "netns", "exec", self.lab.pod_ns(NS, CLIENT["same_node"])]
        p = subprocess.Popen(
            [*argv, self.lab.python, "-c", FLIP_POLL, self.svc_ip["flip"], want],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            assert p.stdout is not None
            if p.stdout.readline().strip() != "ready":
                raise LabError("endpoint-change poller did not start")
            t0 = time.monotonic()
            self.lab.api.patch("services", "flip", {"spec": {"selector": {"flip": label}}}, NS)
            out, _ = p.communicate(timeout=30)
            self.flip_at = want
            return float(out.strip().splitlines()[-1]) - t0
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()


def run(
    lab: Lab,
    modes: list[str],
    reps: int,
    seconds: float,
    changes: int,
    step: Callable[[str], None],
    direct_every_phase: bool = True,
) -> tuple[dict[str, Figure], dict[str, Any]]:
    """Measure every mode; returns (figures, raw). ``step`` is called before each measurement.

    ``direct_every_phase`` False (quick runs): the direct baseline only in the first phase.
    """
    dp = DataPath(lab, seconds, reps)
    step("deploying benchmark pods")
    dp.deploy()
    samples: dict[tuple[str, str, str], list[float]] = {}
    changes_s: dict[str, list[float]] = {}
    raw: dict[str, Any] = {"pods": dp.pod_ip, "services": dp.svc_ip, "kernel": {}, "runs": []}
    # the direct baseline is spread over the phases (drift hits it as it hits the modes):
    # enough repetitions per phase that it has ``reps`` samples in all (quick: phase 1 only)
    direct_per_phase = -(-reps // len(modes)) if direct_every_phase else 0
    raw["switch_s"] = {}
    for i, mode in enumerate(modes):
        step(f"switching every node to {mode}")
        t0 = time.monotonic()
        raw["kernel"][mode] = dp.switch_mode(mode)
        raw["switch_s"][mode] = round(time.monotonic() - t0, 2)
        n_direct = direct_per_phase if direct_every_phase else (reps if i == 0 else 0)
        for rep in range(reps):
            for pl in PLACEMENTS:
                targets = ("direct", mode) if rep < n_direct else (mode,)
                for target in targets:
                    step(f"{mode}: {target} from {pl.replace('_', ' ')} ({rep + 1}/{reps})")
                    m = dp.measure(CLIENT[pl], target)
                    raw["runs"].append({"phase": mode, "rep": rep, "placement": pl,
                                        "target": target, **m})  # fmt: skip
                    for k, v in m.items():
                        samples.setdefault((pl, target, k), []).append(v)
        for i in range(changes):
            step(f"{mode}: endpoint change to traffic ({i + 1}/{changes})")
            changes_s.setdefault(mode, []).append(dp.endpoint_change())
            time.sleep(0.2)
    figs: dict[str, Figure] = {}
    for (pl, target, k), xs in sorted(samples.items()):
        unit, better = METRICS[k]
        base = None if target == "direct" else f"datapath.{pl}.direct.{k}"
        figs[f"datapath.{pl}.{target}.{k}"] = figure(xs, unit, better, base)
    raw["switch_problems"] = dp.problems
    base_mode = "iptables" if "iptables" in changes_s else next(iter(changes_s), None)
    for mode, xs in changes_s.items():
        base = None if mode == base_mode else f"controlplane.change_to_traffic.{base_mode}"
        figs[f"controlplane.change_to_traffic.{mode}"] = figure(xs, "s", "lower", base)
    return figs, raw


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: python -m lab.bench")
