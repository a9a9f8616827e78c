"""kube-proxy userspace mode in the shared lab: what pods, nodes and the host see.

A module fixture switches every node's kube-proxy from iptables to userspace mode the way an
operator would (stop, ``python -m kubeproxy --cleanup``, start with ``--proxy-mode
userspace``) and checks that no rule of iptables mode remains; at module end it switches
back to iptables mode and checks that no userspace rule remains, so later tests on the same
lab see the lab as it was.

Workload: two pods (lab.workload: HTTP 8080 answering its pod name, TCP+UDP echo 9000) on
each worker; services ``web`` (NodePort: 80/TCP -> 8080, 9000/UDP -> 9000) and ``sticky``
(ClientIP affinity). Clients: the pods of both workers, every node's namespace, the host.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import yaml

from lab import topology as topo

pytestmark = [pytest.mark.netns]
if os.geteuid() != 0:
    pytest.skip("needs root (network namespaces)", allow_module_level=True)

PY = sys.executable
UDP = (
    "import socket,sys\n"
    "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.settimeout(2)\n"
    "a=(sys.argv[1],int(sys.argv[2]))\n"
    "for _ in range(3):\n"
    "  s.sendto(b'ping',a)\n"
    "  try: d,src=s.recvfrom(2048); break\n"
    "  except TimeoutError: continue\n"
    "else: sys.exit('no answer')\n"
    "assert src==a, src\n"
    "sys.stdout.write(d.decode())\n"
)


def saved_rules(lab, node: str) -> str:
    r = lab.node_exec(node, ["iptables-legacy-save"])
    assert r.returncode == 0, r.stderr
    return r.stdout


def wait_for(fn, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def switch_mode(lab, node: str, mode: str) -> None:
    """Stop kube-proxy, remove every rule it (in any mode) installed, start it in ``mode``."""
    from lab import agents as ag

    ag.stop(ag.make_agent(lab.config, node, "kubeproxy"))
    r = lab.node_exec(node, [PY, "-m", "kubeproxy", "--cleanup"], timeout=30)
    assert r.returncode == 0, f"kubeproxy --cleanup on {node}: {r.stdout}{r.stderr}"
    extra = ["--proxy-mode", mode] if mode != lab.config.proxy_mode else []
    lab.restart_agent(node, "kubeproxy", extra_args=extra)


def userspace_rules_only(text: str) -> bool:
    return (
        "KUBE-SERVICES" not in text
        and "KUBE-SVC-" not in text
        and ":KUBE-PORTALS-CONTAINER" in text
        and ":KUBE-PORTALS-HOST" in text
    )


def no_userspace_rules(text: str) -> bool:
    return "KUBE-PORTALS" not in text and "KUBE-NODEPORT-" not in text


@dataclass
class Env:
    lab: object
    ns: str
    cluster_ip: str
    sticky_ip: str
    node_port: int  # web, TCP 80
    udp_node_port: int  # web, UDP 9000
    pods: dict[str, str]  # pod name -> node
    workers: list[str]

    def client(self, worker: str) -> str:
        return next(p for p, n in sorted(self.pods.items()) if n == worker)

    def pod_http(self, pod: str, url: str) -> str:
        r = self.lab.pod_exec(self.ns, pod, ["curl", "-sS", "-m", "3", url])
        assert r.returncode == 0, f"{pod} -> {url}: {r.stderr}"
        return r.stdout.split()[0].removeprefix("pod=")

    def pod_udp(self, pod: str, ip: str, port: int) -> str:
        r = self.lab.pod_exec(self.ns, pod, [PY, "-c", UDP, ip, str(port)])
        assert r.returncode == 0, f"{pod} -> udp {ip}:{port}: {r.stderr}"
        return r.stdout.split()[0]

    def node_http(self, node: str, url: str) -> str:
        r = self.lab.node_exec(node, ["curl", "-sS", "-m", "3", url])
        assert r.returncode == 0, f"node {node} -> {url}: {r.stderr}"
        return r.stdout.split()[0].removeprefix("pod=")

    def node_udp(self, node: str, ip: str, port: int) -> str:
        r = self.lab.node_exec(node, [PY, "-c", UDP, ip, str(port)])
        assert r.returncode == 0, f"node {node} -> udp {ip}:{port}: {r.stderr}"
        return r.stdout.split()[0]


def _manifest(ns: str, pods: dict[str, str]) -> list[dict]:
    docs: list[dict] = [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": {"app": "usweb"}},
            "spec": {
                "nodeName": node,
                "containers": [
                    {
                        "name": "w",
                        "image": "kube-netlab/workload",
                        "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                    }
                ],
            },
        }
        for name, node in pods.items()
    ]
    docs.append(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": ns},
            "spec": {
                "type": "NodePort",
                "selector": {"app": "usweb"},
                "ports": [
                    {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
                    {"name": "echo", "port": 9000, "targetPort": 9000, "protocol": "UDP"},
                ],
            },
        }
    )
    docs.append(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "sticky", "namespace": ns},
            "spec": {
                "selector": {"app": "usweb"},
                "sessionAffinity": "ClientIP",
                "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
            },
        }
    )
    return docs


def _delete_namespace(lab, ns: str, pods: list[str]) -> None:
    for plural in ("pods", "services"):
        for obj in lab.api.list(plural, ns).get("items") or []:
            try:
                lab.api.delete(plural, obj["metadata"]["name"], ns)
            except Exception:
                pass
    try:
        lab.api.delete("namespaces", ns)
    except Exception:
        pass
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not any(topo.netns_exists(lab.pod_ns(ns, p)) for p in pods):
            return
        time.sleep(0.2)


@pytest.fixture(scope="module")
def us(lab) -> Iterator[Env]:
    nodes = list(lab.node_names)
    workers = list(lab.worker_names)
    ns = f"uslab-{uuid.uuid4().hex[:5]}"
    pods = {f"web-{w[-1]}{i}": w for w in workers for i in (0, 1)}
    switched: list[str] = []
    try:
        for node in nodes:
            switched.append(node)
            switch_mode(lab, node, "userspace")
        for node in nodes:
            wait_for(
                lambda node=node: userspace_rules_only(saved_rules(lab, node)),
                15,
                f"userspace portal rules and no iptables-mode rule on {node}",
            )
        lab.api.create(
            "namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
        )
        lab.apply(yaml.safe_dump_all(_manifest(ns, pods)))
        lab.wait_ready(ns, "app=usweb", len(pods), timeout=45)
        web = lab.api.get("services", "web", ns)
        ports = {p["name"]: p for p in web["spec"]["ports"]}
        env = Env(
            lab=lab,
            ns=ns,
            cluster_ip=web["spec"]["clusterIP"],
            sticky_ip=lab.api.get("services", "sticky", ns)["spec"]["clusterIP"],
            node_port=int(ports["http"]["nodePort"]),
            udp_node_port=int(ports["echo"]["nodePort"]),
            pods=pods,
            workers=workers,
        )
        # every node's proxy knows all four endpoints before the tests look
        for node in nodes:
            wait_for(
                lambda node=node: (
                    {_try(env.node_http, node, f"http://{env.cluster_ip}/") for _ in range(8)}
                    >= set(pods)
                ),
                20,
                f"all endpoints behind the ClusterIP from {node}",
            )
        yield env
    finally:
        try:
            _delete_namespace(lab, ns, list(pods))
        finally:
            failed: list[str] = []
            for node in switched:  # every node, even when one of them fails
                try:
                    switch_mode(lab, node, lab.config.proxy_mode)
                except Exception as e:
                    failed.append(f"{node}: {e}")
            assert not failed, "switching back to iptables mode failed: " + "; ".join(failed)
            for node in switched:
                left = saved_rules(lab, node)
                assert no_userspace_rules(left), f"userspace rules left on {node}:\n{left}"
                wait_for(
                    lambda node=node: "-A KUBE-SERVICES" in saved_rules(lab, node),
                    15,
                    f"iptables mode rules back on {node}",
                )


def _try(fn, *args) -> str:
    try:
        return fn(*args)
    except AssertionError:
        return ""


def test_switching_modes_leaves_no_rule_of_the_other_mode(us):
    for node in us.lab.node_names:
        text = saved_rules(us.lab, node)
        assert userspace_rules_only(text), text
        assert f"--dport {us.node_port}" in text  # KUBE-NODEPORT-* rules for the NodePort


def test_clusterip_and_nodeport_tcp_udp_from_pods_on_both_workers(us):
    node_ips = [us.lab.node_ip(w) for w in us.workers]
    for worker in us.workers:
        pod = us.client(worker)
        assert us.pod_http(pod, f"http://{us.cluster_ip}/") in us.pods
        assert us.pod_udp(pod, us.cluster_ip, 9000) in us.pods
        for ip in node_ips:  # its own node and the other one
            assert us.pod_http(pod, f"http://{ip}:{us.node_port}/") in us.pods
            assert us.pod_udp(pod, ip, us.udp_node_port) in us.pods


def test_clusterip_from_every_node_and_nodeport_from_the_host(us):
    for node in us.lab.node_names:
        assert us.node_http(node, f"http://{us.cluster_ip}/") in us.pods
        assert us.node_udp(node, us.cluster_ip, 9000) in us.pods
    for worker in us.workers:
        ip = us.lab.node_ip(worker)
        r = subprocess.run(
            ["curl", "-sS", "-m", "3", f"http://{ip}:{us.node_port}/"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert r.returncode == 0, f"host -> {ip}:{us.node_port}: {r.stderr}"
        assert r.stdout.split()[0].removeprefix("pod=") in us.pods
        r = subprocess.run(
            [PY, "-c", UDP, ip, str(us.udp_node_port)], capture_output=True, text=True, timeout=10
        )
        assert r.returncode == 0, f"host -> udp {ip}:{us.udp_node_port}: {r.stderr}"
        assert r.stdout.split()[0] in us.pods


def test_round_robin_reaches_every_endpoint(us):
    n = len(us.pods)
    for worker in us.workers:
        pod = us.client(worker)
        seen = [us.pod_http(pod, f"http://{us.cluster_ip}/") for _ in range(2 * n)]
        assert set(seen[:n]) == set(us.pods), seen
        assert seen[:n] == seen[n:], seen  # strict rotation through the node's proxy


def test_session_affinity_holds(us):
    for worker in us.workers:
        pod = us.client(worker)
        seen = {us.pod_http(pod, f"http://{us.sticky_ip}/") for _ in range(6)}
        assert len(seen) == 1, seen
