"""A minimal node for tests and the benchmark: one node namespace with a bridge and pod
namespaces behind it, built with ``ip`` and removed completely by ``down`` (also after a
crash: ``down`` deletes by name).

    node ns  P-node   cni0 = GW/prefix (the node IP), lo
    pod ns   P-podN   eth0 = pod IP, default route via GW; veth peer vethN on cni0
"""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field

VENV_PY = sys.executable


def sh(*argv: str, check: bool = True, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        list(argv), check=check, timeout=timeout, capture_output=True, text=True, **kw
    )


@dataclass
class Node:
    prefix: str
    cidr: str  # e.g. 172.30.6.0/25: .1 node, .10+ pods
    pods: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def ns(self) -> str:
        return f"{self.prefix}-node"

    @property
    def node_ip(self) -> str:
        return str(ipaddress.ip_network(self.cidr)[1])

    def pod_ns(self, i: int) -> str:
        return f"{self.prefix}-pod{i}"

    def pod_ip(self, i: int) -> str:
        return str(ipaddress.ip_network(self.cidr)[10 + i])

    def up(self, n_pods: int) -> None:
        self.down()
        plen = ipaddress.ip_network(self.cidr).prefixlen
        sh("ip", "netns", "add", self.ns)
        n = ["ip", "-n", self.ns]
        sh(*n, "link", "set", "lo", "up")
        sh(*n, "link", "add", "cni0", "type", "bridge")
        sh(*n, "addr", "add", f"{self.node_ip}/{plen}", "dev", "cni0")
        sh(*n, "link", "set", "cni0", "up")
        # a node has a default route; without one the node's own connections to a ClusterIP
        # fail before the OUTPUT nat rules can redirect them
        sh(*n, "route", "add", "default", "dev", "cni0")
        for i in range(n_pods):
            pns = self.pod_ns(i)
            sh("ip", "netns", "add", pns)
            sh(
                "ip",
                "link",
                "add",
                f"veth{i}",
                "netns",
                self.ns,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                pns,
            )
            sh(*n, "link", "set", f"veth{i}", "master", "cni0", "up")
            p = ["ip", "-n", pns]
            sh(*p, "link", "set", "lo", "up")
            sh(*p, "addr", "add", f"{self.pod_ip(i)}/{plen}", "dev", "eth0")
            sh(*p, "link", "set", "eth0", "up")
            sh(*p, "route", "add", "default", "via", self.node_ip)
            self.pods.append(pns)

    def exec(
        self, ns: str, *argv: str, timeout: float = 30, check: bool = True, **kw
    ) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", ns, *argv, timeout=timeout, check=check, **kw)

    def spawn(
        self, ns: str, *argv: str, env: dict | None = None, log: str | None = None
    ) -> subprocess.Popen:
        out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
        p = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv],
            env={**os.environ, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(p)
        return p

    def stop_procs(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + 5
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()

    def down(self) -> None:
        self.stop_procs()
        listed = sh("ip", "netns", "list", check=False).stdout.split()
        mine = re.compile(rf"{re.escape(self.prefix)}-(node|pod\d+)")
        for name in listed:
            # exactly ours: prefix "ust" must not take "ust-b-*" of a benchmark running beside
            if mine.fullmatch(name):
                # processes still inside (from a crashed run) would keep it alive
                pids = sh("ip", "netns", "pids", name, check=False).stdout.split()
                for pid in pids:
                    try:
                        os.kill(int(pid), 9)
                    except (ProcessLookupError, ValueError):
                        pass
                sh("ip", "netns", "del", name, check=False)
        self.pods.clear()


def wait_file(path: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout}s")
        time.sleep(0.05)


def wait_port(node: Node, ns: str, ip: str, port: int, timeout: float = 10.0) -> None:
    """Wait until a TCP port answers inside ``ns``."""
    code = (
        "import socket,sys,time\n"
        f"d=time.time()+{timeout}\n"
        "while time.time()<d:\n"
        f"  try: socket.create_connection(('{ip}',{port}),0.5).close(); sys.exit(0)\n"
        "  except OSError: time.sleep(0.05)\n"
        "sys.exit(1)\n"
    )
    node.exec(ns, VENV_PY, "-c", code, timeout=timeout + 5)
