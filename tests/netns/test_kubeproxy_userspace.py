"""kube-proxy userspace mode on a real (namespace) node: what a client sees.

Own topology (prefix "ust", 172.30.6.0/25): a node namespace with a bridge, four pod
namespaces (pod0 is the client, pods 1-3 run lab.workload: HTTP 8080, TCP/UDP echo 9000),
and the proxier driven by kubeproxy.userspace.harness inside the node namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from kubeproxy.userspace.topo import VENV_PY, Node, wait_file, wait_port

pytestmark = [pytest.mark.netns]
if os.geteuid() != 0:
    pytest.skip("needs root (network namespaces)", allow_module_level=True)

CIP = "10.96.6.10"
DEAD_IP = "172.30.6.100"  # in the pod subnet, no one answers ARP: connect times out


class Cluster:
    def __init__(self, node: Node, tmp: str):
        self.node = node
        self.spec_path = os.path.join(tmp, "spec.json")
        self.ready = os.path.join(tmp, "ready")
        self.generation = 0
        self.proc: subprocess.Popen | None = None

    def pod(self, i: int) -> tuple[str, int]:
        return self.node.pod_ip(i), 0

    def services(self, extra: list[dict] | None = None, web_eps: list | None = None) -> list[dict]:
        n = self.node
        pods = [n.pod_ip(i) for i in (1, 2, 3)]
        web = web_eps if web_eps is not None else [[ip, 8080] for ip in pods]
        base = [
            {
                "name": "web",
                "protocol": "TCP",
                "cluster_ip": CIP,
                "port": 80,
                "node_port": 30080,
                "endpoints": web,
            },
            {
                "name": "echo",
                "protocol": "TCP",
                "cluster_ip": CIP,
                "port": 9000,
                "endpoints": [[ip, 9000] for ip in pods],
            },
            {
                "name": "dns",
                "protocol": "UDP",
                "cluster_ip": CIP,
                "port": 53,
                "node_port": 30053,
                "endpoints": [[ip, 9000] for ip in pods],
            },
            {
                "name": "sticky",
                "protocol": "TCP",
                "cluster_ip": "10.96.6.11",
                "port": 80,
                "affinity_timeout": 60,
                "endpoints": [[ip, 8080] for ip in pods],
            },
            {
                "name": "flaky",
                "protocol": "TCP",
                "cluster_ip": "10.96.6.12",
                "port": 80,
                "endpoints": [[DEAD_IP, 8080], [pods[0], 8999], [pods[1], 8080]],
            },
        ]
        return base + (extra or [])

    def apply(self, services: list[dict]) -> None:
        with open(self.spec_path, "w") as f:
            json.dump({"services": services}, f)
        self.generation += 1
        if self.proc is None:
            self.proc = self.node.spawn(
                self.node.ns,
                VENV_PY,
                "-m",
                "kubeproxy.userspace.harness",
                "--spec",
                self.spec_path,
                "--node-ip",
                self.node.node_ip,
                "--ready-file",
                self.ready,
                log=os.path.join(os.path.dirname(self.spec_path), "proxy.log"),
            )
        else:
            self.proc.send_signal(signal.SIGHUP)
        wait_file(self.ready)
        for _ in range(400):
            if int(open(self.ready).read() or 0) >= self.generation:
                return
            time.sleep(0.05)
        raise TimeoutError(f"proxy did not sync generation {self.generation}")

    def curl(self, ns: str, url: str) -> str:
        return self.node.exec(ns, "curl", "-sS", "-m", "5", url).stdout.strip()

    def udp(self, ns: str, ip: str, port: int, payload: str = "ping") -> str:
        code = (
            "import socket,sys\n"
            "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.settimeout(3)\n"
            f"s.sendto(b'{payload}',('{ip}',{port})); d,a=s.recvfrom(2048)\n"
            f"assert a==('{ip}',{port}), a\n"
            "print(d.decode())\n"
        )
        return self.node.exec(ns, VENV_PY, "-c", code).stdout.strip()


@pytest.fixture(scope="module")
def cluster():
    node = Node("ust", "172.30.6.0/25")
    tmp = tempfile.mkdtemp(prefix="ust-")
    try:
        node.up(4)
        for i in (1, 2, 3):
            node.spawn(
                node.pod_ns(i),
                VENV_PY,
                "-m",
                "lab.workload",
                env={"POD_NAME": f"pod{i}", "POD_IP": node.pod_ip(i)},
            )
        c = Cluster(node, tmp)
        c.apply(c.services())
        for i in (1, 2, 3):
            wait_port(node, node.pod_ns(i), node.pod_ip(i), 8080)
            wait_port(node, node.pod_ns(i), node.pod_ip(i), 9000)
        yield c
        node.stop_procs()
        left = node.exec(node.ns, "iptables-legacy-save").stdout
        assert "KUBE-PORTALS" not in left and "KUBE-NODEPORT" not in left, left
    finally:
        node.down()
        shutil.rmtree(tmp, ignore_errors=True)


def pod_of(answer: str) -> str:
    return answer.split()[0].removeprefix("pod=")


def test_clusterip_and_nodeport_tcp_from_pod_and_node(cluster):
    n = cluster.node
    for ns in (n.pod_ns(0), n.ns):
        assert pod_of(cluster.curl(ns, f"http://{CIP}/")).startswith("pod")
        assert pod_of(cluster.curl(ns, f"http://{n.node_ip}:30080/")).startswith("pod")


def test_clusterip_and_nodeport_udp_from_pod_and_node(cluster):
    n = cluster.node
    for ns in (n.pod_ns(0), n.ns):
        assert cluster.udp(ns, CIP, 53, "hello").startswith("pod")
        assert cluster.udp(ns, n.node_ip, 30053, "hello").startswith("pod")


def test_round_robin_reaches_every_endpoint(cluster):
    seen = [pod_of(cluster.curl(cluster.node.pod_ns(0), f"http://{CIP}/")) for _ in range(6)]
    assert set(seen) == {"pod1", "pod2", "pod3"}
    assert seen[:3] == seen[3:]  # strict rotation


def test_session_affinity_holds(cluster):
    seen = {pod_of(cluster.curl(cluster.node.pod_ns(0), "http://10.96.6.11/")) for _ in range(6)}
    assert len(seen) == 1


def test_dead_and_refusing_endpoints_are_skipped(cluster):
    # endpoints: an address that never answers, a port that refuses, one live server
    for _ in range(3):
        assert pod_of(cluster.curl(cluster.node.pod_ns(0), "http://10.96.6.12/")) == "pod2"


CONCURRENT = r"""
import asyncio, sys
N = int(sys.argv[1])
async def one(i):
    r, w = await asyncio.open_connection(sys.argv[2], 9000)
    return r, w
async def main():
    conns = await asyncio.gather(*(one(i) for i in range(N)))
    # every connection is open at once; now use each
    for i, (r, w) in enumerate(conns):
        w.write(b"msg-%d\n" % i)
    ok = 0
    for i, (r, w) in enumerate(conns):
        line = await asyncio.wait_for(r.readline(), 20)
        ok += line == b"msg-%d\n" % i
        w.close()
    print(ok)
asyncio.run(main())
"""


def test_thousand_concurrent_connections_complete(cluster):
    out = cluster.node.exec(
        cluster.node.pod_ns(0), VENV_PY, "-c", CONCURRENT, "1000", CIP, timeout=60
    )
    assert out.stdout.strip() == "1000", out.stderr


KEEP = r"""
import socket, sys, os, time
s = socket.create_connection((sys.argv[1], 9000), 3)
s.sendall(b"one\n"); assert s.recv(100) == b"one\n"
os.write(1, b"open\n")
sys.stdin.readline()
s.sendall(b"two\n"); print(s.recv(100).decode().strip())
"""


def test_endpoint_and_service_changes_keep_established_connections(cluster):
    n = cluster.node
    p = subprocess.Popen(
        ["ip", "netns", "exec", n.pod_ns(0), VENV_PY, "-c", KEEP, CIP],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert p.stdout.readline().strip() == "open"
        # drop one web endpoint and the whole sticky service, add a service
        pods = [n.pod_ip(i) for i in (1, 2, 3)]
        svcs = [s for s in cluster.services(web_eps=[[pods[0], 8080]]) if s["name"] != "sticky"]
        svcs.append(
            {
                "name": "new",
                "protocol": "TCP",
                "cluster_ip": "10.96.6.13",
                "port": 80,
                "endpoints": [[pods[2], 8080]],
            }
        )
        cluster.apply(svcs)
        out, _ = p.communicate("go\n", timeout=10)
        assert out.strip() == "two"
        assert {pod_of(cluster.curl(n.pod_ns(0), f"http://{CIP}/")) for _ in range(3)} == {"pod1"}
        assert pod_of(cluster.curl(n.pod_ns(0), "http://10.96.6.13/")) == "pod3"
        gone = n.exec(n.pod_ns(0), "curl", "-sS", "-m", "2", "http://10.96.6.11/", check=False)
        assert gone.returncode != 0
    finally:
        if p.poll() is None:
            p.kill()
        cluster.apply(cluster.services())
