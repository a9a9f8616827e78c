"""kube-proxy with real packets (iptables mode on the legacy and nft backends, nftables mode): what a Service user sees.

A small topology of its own (prefix "kpt", underlay 172.30.5.0/24): a fabric namespace
with a bridge, the host joined to it by a veth (172.30.5.1, where the API server stub
listens), two node namespaces (172.30.5.11/.12) each with a cni0 bridge (10.244.N.0/24)
and pods (namespaces running ``python -m lab.workload``), a route between the nodes' pod
CIDRs, and ``python -m kubeproxy`` running in each node against the API. Services and
EndpointSlices are created through the API. Everything is removed at the end, even on
failure, and ``--cleanup`` must leave no KUBE- rule.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from apiserver_stub.testing import free_port
from kubecommon.client import SyncApiClient

pytestmark = [pytest.mark.netns]
if os.geteuid() != 0:
    pytest.skip("needs root (network namespaces)", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
P = "kpt"
HOST_IP = "172.30.5.1"
NODES = {"n1": ("172.30.5.11", "10.244.1"), "n2": ("172.30.5.12", "10.244.2")}
PODS = {"p1a": ("n1", 10), "p1b": ("n1", 11), "p2a": ("n2", 10), "p2b": ("n2", 11)}
NS = "kpt"  # API namespace


def sh(*argv: str, ns: str | None = None, check: bool = True, timeout: float = 20, **kw) -> subprocess.CompletedProcess:
    full = (["ip", "netns", "exec", ns] if ns else []) + list(argv)
    return subprocess.run(full, capture_output=True, text=True, check=check, timeout=timeout, **kw)


def pod_ip(pod: str) -> str:
    node, host = PODS[pod]
    return f"{NODES[node][1]}.{host}"


def teardown() -> None:
    for n in ["fab", *NODES, *PODS]:
        subprocess.run(["ip", "netns", "del", f"{P}-{n}"], capture_output=True)
    subprocess.run(["ip", "link", "del", f"{P}-host"], capture_output=True)


def build() -> None:
    teardown()
    fab = f"{P}-fab"
    sh("ip", "netns", "add", fab)
    sh("ip", "link", "add", "br0", "type", "bridge", ns=fab)
    sh("ip", "link", "set", "br0", "up", ns=fab)
    sh("ip", "link", "set", "lo", "up", ns=fab)
    sh("ip", "link", "add", f"{P}-host", "type", "veth", "peer", "name", "h0", "netns", fab)
    sh("ip", "addr", "add", f"{HOST_IP}/24", "dev", f"{P}-host")
    sh("ip", "link", "set", f"{P}-host", "up")
    sh("ip", "link", "set", "h0", "master", "br0", "up", ns=fab)
    for node, (nip, pnet) in NODES.items():
        ns = f"{P}-{node}"
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", f"v-{node}", "type", "veth", "peer", "name", "eth0", "netns", ns, ns=fab)
        sh("ip", "link", "set", f"v-{node}", "master", "br0", "up", ns=fab)
        for cmd in (
            ["ip", "link", "set", "lo", "up"],
            ["ip", "addr", "add", f"{nip}/24", "dev", "eth0"],
            ["ip", "link", "set", "eth0", "up"],
            ["ip", "link", "add", "cni0", "type", "bridge"],
            ["ip", "addr", "add", f"{pnet}.1/24", "dev", "cni0"],
            ["ip", "link", "set", "cni0", "up"],
            ["sysctl", "-qw", "net.ipv4.ip_forward=1"],
            ["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"],
            ["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=2"],
        ):
            sh(*cmd, ns=ns)
        for other, (oip, onet) in NODES.items():
            if other != node:
                sh("ip", "route", "add", f"{onet}.0/24", "via", oip, ns=ns)
    for pod, (node, _host) in PODS.items():
        ns, nns = f"{P}-{pod}", f"{P}-{node}"
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", f"v-{pod}", "type", "veth", "peer", "name", "eth0", "netns", ns, ns=nns)
        sh("ip", "link", "set", f"v-{pod}", "master", "cni0", "up", ns=nns)
        sh("ip", "link", "set", "dev", f"v-{pod}", "type", "bridge_slave", "hairpin", "on", ns=nns)
        sh("ip", "link", "set", "lo", "up", ns=ns)
        sh("ip", "addr", "add", f"{pod_ip(pod)}/24", "dev", "eth0", ns=ns)
        sh("ip", "link", "set", "eth0", "up", ns=ns)
        sh("ip", "route", "add", "default", "via", f"{NODES[node][1]}.1", ns=ns)


def spawn(argv: list[str], ns: str | None, env: dict | None = None, log: Path | None = None) -> subprocess.Popen:
    full = (["ip", "netns", "exec", ns] if ns else []) + argv
    e = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - closed with the process
    return subprocess.Popen(full, env=e, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


class Cluster:
    def __init__(self, tmp: Path, mode: str = "iptables"):
        self.tmp = tmp
        # the module runs once per mode: --proxy-mode iptables (default backend: legacy,
        # x_tables written directly), nftables, and "iptables-nft": --proxy-mode iptables
        # with --iptables-backend nft (nf_tables written directly in iptables-nft's encoding)
        self.mode, _, backend = mode.partition("-")
        self.backend_args = ["--iptables-backend", backend] if backend else []
        self.iptables = "iptables-nft" if backend == "nft" else "iptables-legacy"  # to edit rules by hand
        self.procs: dict[str, subprocess.Popen] = {}
        self.port = free_port()
        self.url = f"http://{HOST_IP}:{self.port}"

    def start(self) -> None:
        self.procs["api"] = spawn(
            [PY, "-m", "apiserver_stub", "--memory", "--bind", HOST_IP, "--port", str(self.port),
             "--service-cluster-ip-range", "10.96.0.0/16", "--cluster-cidr", "10.244.0.0/16"],
            None, log=self.tmp / "api.log",
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection((HOST_IP, self.port), 0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.procs["api"].poll() is not None:
                    raise RuntimeError((self.tmp / "api.log").read_text()[-2000:]) from None
                time.sleep(0.1)
        self.api = SyncApiClient(self.url)
        self.api.create("namespaces", {"metadata": {"name": NS}})
        for pod, (node, _) in PODS.items():
            env = {"POD_NAME": pod, "POD_NAMESPACE": NS, "POD_IP": pod_ip(pod), "NODE_NAME": node}
            self.procs[pod] = spawn([PY, "-m", "lab.workload"], f"{P}-{pod}", env, self.tmp / f"{pod}.log")
        for node in NODES:
            self.start_proxy(node)
        for pod in PODS:
            wait_for(lambda pod=pod: sh("curl", "-s", "-m", "1", f"http://{pod_ip(pod)}:8080/", ns=f"{P}-{pod}", check=False).returncode == 0, 10, f"workload in {pod}")

    def start_proxy(self, node: str, extra: list[str] = ()) -> None:
        nip = NODES[node][0]
        self.procs[f"kp-{node}"] = spawn(
            [PY, "-m", "kubeproxy", "--master", self.url, "--hostname-override", node,
             "--proxy-mode", self.mode, "--cluster-cidr", "10.244.0.0/16", "--min-sync-period", "0s",
             "--sync-period", "2s", "--metrics-bind-address", f"{nip}:10249",
             "--healthz-bind-address", f"{nip}:10256", "--log-level", "DEBUG", *self.backend_args, *extra],
            f"{P}-{node}", log=self.tmp / f"kubeproxy-{node}.log",
        )

    def stop(self) -> None:
        for p in self.procs.values():
            stop(p)

    # -- API helpers ------------------------------------------------------------------

    def service(self, name: str, ports: list[dict], type_: str = "ClusterIP", **spec) -> dict:
        body = {"metadata": {"name": name, "namespace": NS}, "spec": {"type": type_, "ports": ports, **spec}}
        return self.api.create("services", body, NS)

    def endpoints(self, svc: str, pods: list[str], ports: list[dict], ready: dict[str, bool] | None = None) -> None:
        eps = [
            {"addresses": [pod_ip(p)], "nodeName": PODS[p][0], "conditions": {"ready": (ready or {}).get(p, True)}}
            for p in pods
        ]
        body = {
            "metadata": {"name": f"{svc}-kpt", "namespace": NS, "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4", "endpoints": eps, "ports": ports,
        }
        try:
            cur = self.api.get("endpointslices", f"{svc}-kpt", NS)
        except Exception:
            self.api.create("endpointslices", body, NS)
        else:
            body["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"]
            self.api.replace("endpointslices", body)


def wait_for(fn, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def curl(frm: str, url: str, timeout: float = 2, host: bool = False) -> subprocess.CompletedProcess:
    return sh("curl", "-s", "-m", str(timeout), url, ns=None if host else f"{P}-{frm}", check=False, timeout=timeout + 5)


def who(frm: str, url: str, **kw) -> str:
    r = curl(frm, url, **kw)
    return r.stdout.split()[0].removeprefix("pod=") if r.returncode == 0 and r.stdout else ""


@pytest.fixture(scope="module", params=["iptables", "nftables", "iptables-nft"])
def cluster(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kpt")
    build()
    c = Cluster(tmp, request.param)
    try:
        c.start()
        yield c
    finally:
        c.stop()
        for node in NODES:  # leave nothing behind even if a test failed mid-way
            sh(PY, "-m", "kubeproxy", "--cleanup", ns=f"{P}-{node}", check=False, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        teardown()


HTTP = [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]
HTTP_EP = [{"name": "http", "port": 8080, "protocol": "TCP"}]


def test_clusterip_reaches_every_endpoint_from_both_nodes(cluster):
    svc = cluster.service("web", HTTP)
    cluster.endpoints("web", ["p1a", "p2a"], HTTP_EP)
    url = f"http://{svc['spec']['clusterIP']}:80/"
    wait_for(lambda: who("p1b", url), 10, "ClusterIP from a pod on the same node")
    seen = Counter(who("p1b", url) for _ in range(60))
    assert set(seen) == {"p1a", "p2a"}, seen
    seen = Counter(who("p2b", url) for _ in range(30))  # from the other node
    assert set(seen) == {"p1a", "p2a"}, seen


def test_nodeport_from_other_node_and_host(cluster):
    svc = cluster.service("np", HTTP, "NodePort")
    np_ = svc["spec"]["ports"][0]["nodePort"]
    cluster.endpoints("np", ["p1a", "p2a"], HTTP_EP)
    url = f"http://{NODES['n1'][0]}:{np_}/"
    wait_for(lambda: who("", url, host=True), 10, "NodePort from the host")
    assert {who("", url, host=True) for _ in range(30)} == {"p1a", "p2a"}
    r = sh("curl", "-s", "-m", "2", url, ns=f"{P}-n2", check=False)  # from the other node
    assert r.returncode == 0 and r.stdout.startswith("pod=")


def test_hairpin_pod_reaches_itself_through_its_service(cluster):
    svc = cluster.service("self", HTTP)
    cluster.endpoints("self", ["p1a"], HTTP_EP)
    url = f"http://{svc['spec']['clusterIP']}:80/json"
    r = wait_for(lambda: curl("p1a", url).stdout, 10, "hairpin")
    body = json.loads(r)
    assert body["pod"] == "p1a"


def test_session_affinity_keeps_a_client_on_one_pod(cluster):
    svc = cluster.service("sticky", HTTP, sessionAffinity="ClientIP")
    cluster.endpoints("sticky", ["p1a", "p2a"], HTTP_EP)
    url = f"http://{svc['spec']['clusterIP']}:80/"
    wait_for(lambda: who("p1b", url), 10, "sticky service")
    assert len({who("p1b", url) for _ in range(20)}) == 1


def test_no_endpoints_is_refused_at_once(cluster):
    svc = cluster.service("empty", HTTP)
    cluster.endpoints("empty", [], HTTP_EP)
    url = f"http://{svc['spec']['clusterIP']}:80/"

    def refused():
        t = time.monotonic()
        r = curl("p1b", url, timeout=3)
        return r.returncode == 7 and time.monotonic() - t < 1.0  # 7 = connection refused

    wait_for(refused, 20, "REJECT for a service without endpoints", interval=0.2)


def test_external_traffic_policy_local_keeps_client_ip_and_uses_local_endpoints(cluster):
    svc = cluster.service("local", HTTP, "NodePort", externalTrafficPolicy="Local")
    np_ = svc["spec"]["ports"][0]["nodePort"]
    cluster.endpoints("local", ["p1a", "p2a"], HTTP_EP)
    url = f"http://{NODES['n1'][0]}:{np_}/json"
    wait_for(lambda: curl("", url, host=True).returncode == 0, 10, "ETP Local NodePort")
    for _ in range(20):
        body = json.loads(curl("", url, host=True).stdout)
        assert body["pod"] == "p1a"
        assert body["client"].rsplit(":", 1)[0] == HOST_IP, body


def _udp_pods(sock: socket.socket, n: int) -> list[str]:
    got = []
    for i in range(n):
        sock.send(b"x%d" % i)
        try:
            got.append(sock.recv(2048).decode().split()[0])
        except TimeoutError:
            got.append("")
    return got


def test_udp_flow_moves_within_a_second_after_endpoint_removal(cluster):
    ports = [{"name": "echo", "port": 9000, "targetPort": 9000, "protocol": "UDP"}]
    eports = [{"name": "echo", "port": 9000, "protocol": "UDP"}]
    svc = cluster.service("udp", ports)
    cluster.endpoints("udp", ["p1a", "p2a"], eports)
    cip = svc["spec"]["clusterIP"]
    # one client socket (fixed source port) inside pod p1b, driven through a tiny script
    script = (
        "import socket,sys,time\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(0.1);s.connect((sys.argv[1],9000))\n"
        "for i in range(int(sys.argv[2])):\n"
        " t=time.monotonic()\n"
        " try:\n  s.send(b'x');r=s.recv(2048).decode().split()[0]\n"
        " except OSError: r='-'\n"
        " print(r,flush=True);time.sleep(max(0,0.05-(time.monotonic()-t)))\n"
    )
    wait_for(lambda: sh(PY, "-c", script, cip, "1", ns=f"{P}-p1b").stdout.strip() not in ("", "-"), 10, "UDP service")
    proc = subprocess.Popen(["ip", "netns", "exec", f"{P}-p1b", PY, "-c", script, cip, "80"],
                            stdout=subprocess.PIPE, text=True)
    first = proc.stdout.readline().strip()
    for _ in range(5):
        proc.stdout.readline()
    assert first in ("p1a", "p2a")
    remaining = "p2a" if first == "p1a" else "p1a"
    t_remove = time.monotonic()
    cluster.endpoints("udp", [remaining], eports)
    moved_at = None
    for line in proc.stdout:
        if line.strip() == remaining:
            moved_at = time.monotonic()
            break
    proc.kill()
    proc.wait()
    assert moved_at is not None, "UDP flow never moved to the remaining endpoint"
    assert moved_at - t_remove < 1.0, f"moved after {moved_at - t_remove:.2f}s"


def test_rules_removed_by_hand_come_back(cluster):
    svc = cluster.service("repair", HTTP)
    cluster.endpoints("repair", ["p1a"], HTTP_EP)
    url = f"http://{svc['spec']['clusterIP']}:80/"
    wait_for(lambda: who("p1b", url), 10, "service")
    if cluster.mode == "nftables":
        sh("nft", "flush", "chain", "ip", "kube-proxy", "services", ns=f"{P}-n1")
        sh("nft", "flush", "chain", "ip", "kube-proxy", "nat-prerouting", ns=f"{P}-n1")
    else:
        sh(cluster.iptables, "-t", "nat", "-F", "KUBE-SERVICES", ns=f"{P}-n1")
        sh(cluster.iptables, "-t", "nat", "-D", "PREROUTING", "-m", "comment", "--comment",
           "kubernetes service portals", "-j", "KUBE-SERVICES", ns=f"{P}-n1")
    assert who("p1b", url, timeout=0.5) == ""
    wait_for(lambda: who("p1b", url, timeout=0.5) == "p1a", 10, "the periodic resync to repair the rules", interval=0.3)


def test_metrics_and_healthz(cluster):
    nip = NODES["n1"][0]
    r = sh("curl", "-s", "-m", "2", f"http://{nip}:10249/metrics", ns=f"{P}-n1")
    assert "kubeproxy_sync_proxy_rules_duration_seconds_count" in r.stdout
    assert "kubeproxy_sync_proxy_rules_last_timestamp_seconds" in r.stdout
    r = sh("curl", "-s", "-m", "2", "-w", "%{http_code}", f"http://{nip}:10256/healthz", ns=f"{P}-n1")
    assert r.stdout.endswith("200") and "lastUpdated" in r.stdout


def test_nodeport_addresses_limit_where_a_nodeport_answers(cluster):
    """--nodeport-addresses: the NodePort answers on the node IP in the CIDR, not on cni0's."""
    svc = cluster.service("npaddr", HTTP, "NodePort")
    np_ = svc["spec"]["ports"][0]["nodePort"]
    cluster.endpoints("npaddr", ["p2a"], HTTP_EP)
    node_url = f"http://{NODES['n2'][0]}:{np_}/"
    bridge_url = f"http://{NODES['n2'][1]}.1:{np_}/"  # n2's cni0 address, seen from its pod
    wait_for(lambda: who("p2b", bridge_url, timeout=0.5) == "p2a", 10, "NodePort on every local address")
    stop(cluster.procs.pop("kp-n2"))
    try:
        cluster.start_proxy("n2", [f"--nodeport-addresses={NODES['n2'][0]}/32"])
        wait_for(lambda: who("p2b", bridge_url, timeout=0.5) == "", 10, "NodePort gone from cni0's address")
        assert who("", node_url, host=True) == "p2a"
        assert who("p2b", node_url) == "p2a"
        log = (cluster.tmp / "kubeproxy-n2.log").read_text()
        assert "Traceback" not in log, log[-3000:]
    finally:
        stop(cluster.procs.pop("kp-n2"))
        cluster.start_proxy("n2")
    wait_for(lambda: who("p2b", bridge_url, timeout=0.5) == "p2a", 10, "NodePort back on every address")


def test_restart_with_same_state_changes_nothing_and_cleanup_removes_all(cluster):
    ns = f"{P}-n2"
    dump = ["nft", "list", "table", "ip", "kube-proxy"] if cluster.mode == "nftables" else [f"{cluster.iptables}-save"]
    before = sh(*dump, ns=ns).stdout
    stop(cluster.procs.pop("kp-n2"))
    cluster.start_proxy("n2")
    time.sleep(3)
    after = sh(*dump, ns=ns).stdout
    assert _norm(before) == _norm(after)
    stop(cluster.procs.pop("kp-n2"))
    sh(PY, "-m", "kubeproxy", "--cleanup", ns=ns, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    for tool in ("iptables-legacy-save", "iptables-nft-save"):
        out = sh(tool, ns=ns, check=False).stdout
        assert "KUBE-" not in out, out
    assert "kube-proxy" not in sh("nft", "list", "tables", ns=ns).stdout


def _norm(saved: str) -> str:
    """iptables-save output without comments and counters."""
    lines = [ln for ln in saved.splitlines() if not ln.startswith("#")]
    text = re.sub(r" expires [0-9hms]+", "", "\n".join(lines))  # nft: affinity entries' timers
    return re.sub(r"\[\d+:\d+\]", "", text)
