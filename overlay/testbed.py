"""A small overlay testbed for tests and the benchmark: fabric, nodes, pods, API, agents.

Mininet-style objects built from network namespaces (every name starts with a prefix):

    tb = Testbed("ovt", "172.30.4.0/24")
    tb.up()                         # fabric ns with bridge br0, host veth, API stub on it
    n1 = tb.add_node("node1")       # ns ovt-node1, eth0 on the fabric, Node registered
    tb.start_agent("node1", backend="vxlan")
    tb.add_pod("node1")             # cni0 + ns ovt-pod-node1 with an IP from the podCIDR
    tb.pod_exec("node1", [...])
    tb.down()                       # kills what it started, deletes every namespace

The API stub runs in the host namespace bound to the host end of the fabric (.254), so the
agents in the node namespaces reach it over the underlay exactly as the lab's do. Only test
infrastructure shells out to ``ip``; the agent itself uses netlink.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from kubecommon.client import ApiError, SyncApiClient

from . import subnetfile

ECHO_PORT = 9000
HTTP_PORT = 8080


def sh(argv: list[str], check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class TbNode:
    name: str
    ns: str
    ip: IPv4Address
    index: int
    subnet: IPv4Network | None = None
    pod_ns: str = ""
    pod_ip: IPv4Address | None = None
    agent: subprocess.Popen | None = None
    procs: list[subprocess.Popen] = field(default_factory=list)


class Testbed:
    __test__ = False  # not a pytest class

    def __init__(
        self,
        prefix: str = "ovt",
        underlay: str = "172.30.4.0/24",
        cluster_cidr: str = "10.244.0.0/16",
    ):
        self.prefix = prefix
        self.underlay = IPv4Network(underlay)
        self.cluster_cidr = IPv4Network(cluster_cidr)
        self.fabric = f"{prefix}-fabric"
        self.host_link = f"{prefix}-host"
        self.host_ip = self.underlay.network_address + 254
        self.nodes: dict[str, TbNode] = {}
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self.state = tempfile.mkdtemp(prefix=f"knl-{prefix}-")
        self.api_url = ""
        self.api: SyncApiClient | None = None
        self._api_proc: subprocess.Popen | None = None
        self._next = 10

    # ------------------------------------------------------------------ namespaces

    def _netns(self, name: str) -> None:
        if name in sh(["ip", "netns", "list"]).stdout.split():
            raise RuntimeError(f"network namespace {name} already exists; run down() or delete it")
        sh(["ip", "netns", "add", name])
        self.namespaces.append(name)
        sh(["ip", "-n", name, "link", "set", "lo", "up"])

    def nsexec(self, ns: str, argv: list[str], check: bool = True, timeout: float = 30):
        return sh(["ip", "netns", "exec", ns, *argv], check=check, timeout=timeout)

    def up(self, api: bool = True) -> Testbed:
        self._netns(self.fabric)
        sh(["ip", "-n", self.fabric, "link", "add", "br0", "type", "bridge"])
        sh(["ip", "-n", self.fabric, "link", "set", "br0", "up"])
        sh(["ip", "link", "add", self.host_link, "type", "veth", "peer", "name", "host",
            "netns", self.fabric])  # fmt: skip
        sh(["ip", "-n", self.fabric, "link", "set", "host", "master", "br0", "up"])
        sh(["ip", "addr", "add", f"{self.host_ip}/{self.underlay.prefixlen}", "dev",
            self.host_link])  # fmt: skip
        sh(["ip", "link", "set", self.host_link, "up"])
        if api:
            self.start_api()
        return self

    def _spawn_api(self, port: int) -> None:
        log = open(os.path.join(self.state, "apiserver.log"), "a")
        data = os.path.join(self.state, "apiserver-data")
        self._api_proc = subprocess.Popen(
            [sys.executable, "-m", "apiserver_stub", "--bind", str(self.host_ip), "--port",
             str(port), "--data-dir", data, "--cluster-cidr", str(self.cluster_cidr)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.procs.append(self._api_proc)
        self.api_url = f"http://{self.host_ip}:{port}"
        self.api = SyncApiClient(self.api_url)
        deadline = time.monotonic() + 20
        while True:
            try:
                self.api.list("nodes")
                return
            except ApiError:
                if self._api_proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"API stub did not start; see {log.name}") from None
                time.sleep(0.1)

    def start_api(self) -> None:
        """The API stub (SQLite in the state dir, so a restart keeps every object)."""
        self._spawn_api(free_port(str(self.host_ip)))

    def stop_api(self) -> None:
        if self._api_proc is not None:
            self._stop(self._api_proc)

    def restart_api(self, pause: float = 0.0) -> None:
        """Stop the stub, wait ``pause`` seconds, start it again on the same URL."""
        self.stop_api()
        time.sleep(pause)
        self._spawn_api(int(self.api_url.rsplit(":", 1)[1]))

    def add_node(self, name: str, register: bool = True, pod_cidr: str | None = None) -> TbNode:
        ns = f"{self.prefix}-{name}"
        idx = self._next
        self._next += 1
        ip = self.underlay.network_address + idx
        self._netns(ns)
        port = f"n{idx}"
        sh(["ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", port,
            "netns", self.fabric])  # fmt: skip
        sh(["ip", "-n", self.fabric, "link", "set", port, "master", "br0", "up"])
        sh(["ip", "-n", ns, "addr", "add", f"{ip}/{self.underlay.prefixlen}", "dev", "eth0"])
        sh(["ip", "-n", ns, "link", "set", "eth0", "up"])
        for key, val in (
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.conf.all.rp_filter", "2"),
            ("net.ipv4.conf.default.rp_filter", "2"),
        ):
            self.nsexec(ns, ["sysctl", "-qw", f"{key}={val}"])
        node = TbNode(name=name, ns=ns, ip=ip, index=idx)
        self.nodes[name] = node
        if register:
            self.register_node(name, pod_cidr)
        return node

    def node_object(self, name: str, pod_cidr: str | None = None, ip: str | None = None) -> dict:
        ip = ip or str(self.nodes[name].ip)
        obj: dict = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": {},
            "status": {
                "addresses": [
                    {"type": "InternalIP", "address": ip},
                    {"type": "Hostname", "address": name},
                ],
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
            },
        }
        if pod_cidr:
            obj["spec"] = {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]}
        return obj

    def register_node(self, name: str, pod_cidr: str | None = None) -> dict:
        assert self.api is not None
        created = self.api.create("nodes", self.node_object(name, pod_cidr))
        return created

    def wait_subnet(self, name: str, timeout: float = 10) -> IPv4Network:
        assert self.api is not None
        deadline = time.monotonic() + timeout
        while True:
            obj = self.api.get("nodes", name)
            cidr = (obj.get("spec") or {}).get("podCIDR")
            if cidr:
                self.nodes[name].subnet = IPv4Network(cidr)
                return self.nodes[name].subnet
            if time.monotonic() > deadline:
                raise TimeoutError(f"Node {name} got no podCIDR")
            time.sleep(0.05)

    # ------------------------------------------------------------------ processes

    def spawn(self, ns: str, argv: list[str], log_name: str, env: dict | None = None):
        log = open(os.path.join(self.state, log_name), "a")
        p = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
        self.procs.append(p)
        return p

    def subnet_file(self, name: str) -> str:
        return os.path.join(self.state, name, "subnet.env")

    def agent_argv(self, name: str, backend: str = "vxlan", extra: list[str] | None = None):
        return [
            sys.executable, "-m", "overlay", "--master", self.api_url, "--node-name", name,
            "--iface", "eth0", "--backend", backend, "--subnet-file", self.subnet_file(name),
            "--cluster-cidr", str(self.cluster_cidr), *(extra or []),
        ]  # fmt: skip

    def start_agent(self, name: str, backend: str = "vxlan", extra: list[str] | None = None):
        node = self.nodes[name]
        node.agent = self.spawn(
            node.ns, self.agent_argv(name, backend, extra), f"overlay-{name}.log"
        )
        return node.agent

    def stop_agent(self, name: str) -> None:
        node = self.nodes[name]
        if node.agent is not None:
            self._stop(node.agent)
            node.agent = None

    def cleanup_agent(self, name: str, backend: str = "vxlan") -> subprocess.CompletedProcess:
        node = self.nodes[name]
        argv = [*self.agent_argv(name, backend), "--cleanup"]
        return self.nsexec(node.ns, argv)

    def agent_log(self, name: str) -> str:
        try:
            with open(os.path.join(self.state, f"overlay-{name}.log")) as f:
                return f.read()
        except OSError:
            return ""

    def wait_subnet_file(self, name: str, timeout: float = 10) -> dict[str, str]:
        path = self.subnet_file(name)
        deadline = time.monotonic() + timeout
        while not os.path.exists(path):
            agent = self.nodes[name].agent
            if agent is not None and agent.poll() is not None:
                raise RuntimeError(f"overlay agent on {name} exited:\n{self.agent_log(name)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path} not written:\n{self.agent_log(name)}")
            time.sleep(0.05)
        with open(path) as f:
            return subnetfile.parse(f.read())

    def add_pod(self, name: str, mtu: int | None = None, workload: bool = True) -> TbNode:
        """cni0 (podCIDR .1) on the node and one pod netns (.2) behind it, running the workload."""
        node = self.nodes[name]
        subnet = node.subnet or self.wait_subnet(name)
        if mtu is None:
            mtu = int(self.wait_subnet_file(name).get("FLANNEL_MTU", "1500"))
        gw = IPv4Interface(f"{subnet.network_address + 1}/{subnet.prefixlen}")
        pod_ip = subnet.network_address + 2
        pod_ns = f"{self.prefix}-pod-{name}"
        self._netns(pod_ns)
        sh(["ip", "-n", node.ns, "link", "add", "cni0", "type", "bridge"])
        sh(["ip", "-n", node.ns, "addr", "add", str(gw), "dev", "cni0"])
        sh(["ip", "-n", node.ns, "link", "set", "cni0", "mtu", str(mtu), "up"])
        sh(["ip", "-n", node.ns, "link", "add", "vethpod", "mtu", str(mtu), "type", "veth",
            "peer", "name", "eth0", "netns", pod_ns])  # fmt: skip
        sh(["ip", "-n", node.ns, "link", "set", "vethpod", "master", "cni0", "up"])
        sh(["ip", "-n", pod_ns, "link", "set", "eth0", "mtu", str(mtu)])
        sh(["ip", "-n", pod_ns, "addr", "add", f"{pod_ip}/{subnet.prefixlen}", "dev", "eth0"])
        sh(["ip", "-n", pod_ns, "link", "set", "eth0", "up"])
        sh(["ip", "-n", pod_ns, "route", "add", "default", "via", str(gw.ip)])
        node.pod_ns, node.pod_ip = pod_ns, pod_ip
        if workload:
            env = {"POD_NAME": f"pod-{name}", "POD_NAMESPACE": "default", "POD_IP": str(pod_ip),
                   "NODE_NAME": name, "HTTP_PORT": str(HTTP_PORT), "ECHO_PORT": str(ECHO_PORT)}  # fmt: skip
            node.procs.append(
                self.spawn(pod_ns, [sys.executable, "-m", "lab.workload"], f"pod-{name}.log", env)
            )
            self.wait_listening(pod_ns, HTTP_PORT)
        return node

    def wait_listening(self, ns: str, port: int, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.nsexec(ns, ["ss", "-Hltn", f"sport = :{port}"], check=False).stdout
            if out.strip():
                return
            time.sleep(0.05)
        raise TimeoutError(f"nothing listening on {port} in {ns}")

    def pod_exec(self, name: str, argv: list[str], timeout: float = 10, check: bool = False):
        return self.nsexec(self.nodes[name].pod_ns, argv, check=check, timeout=timeout)

    # ------------------------------------------------------------------ probes

    def tcp_json(self, src: str, dst: str, timeout: float = 3) -> dict | None:
        """GET /json on dst's pod from src's pod; the server's view of the client included."""
        ip = self.nodes[dst].pod_ip
        code = (
            "import socket,sys\n"
            f"s=socket.create_connection(('{ip}',{HTTP_PORT}),timeout={timeout})\n"
            "s.sendall(b'GET /json HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n')\n"
            "b=b''\n"
            "while True:\n"
            "    d=s.recv(65536)\n"
            "    if not d: break\n"
            "    b+=d\n"
            "sys.stdout.write(b.split(b'\\r\\n\\r\\n',1)[1].decode())\n"
        )
        r = self.pod_exec(src, [sys.executable, "-c", code], timeout=timeout + 5)
        if r.returncode != 0:
            return None
        return json.loads(r.stdout)

    def tcp_echo(self, src: str, dst: str, payload: str = "hello", timeout: float = 3) -> str:
        ip = self.nodes[dst].pod_ip
        code = (
            "import socket,sys\n"
            f"s=socket.create_connection(('{ip}',{ECHO_PORT}),timeout={timeout})\n"
            f"s.sendall({payload!r}.encode()); s.shutdown(socket.SHUT_WR)\n"
            "b=b''\n"
            "while True:\n"
            "    d=s.recv(65536)\n"
            "    if not d: break\n"
            "    b+=d\n"
            "sys.stdout.write(b.decode())\n"
        )
        r = self.pod_exec(src, [sys.executable, "-c", code], timeout=timeout + 5)
        return r.stdout if r.returncode == 0 else ""

    def udp_echo(self, src: str, dst: str, payload: str = "ping", timeout: float = 2) -> str:
        ip = self.nodes[dst].pod_ip
        code = (
            "import socket,sys\n"
            "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            f"s.settimeout({timeout})\n"
            f"s.sendto({payload!r}.encode(),('{ip}',{ECHO_PORT}))\n"
            "sys.stdout.write(s.recv(65536).decode())\n"
        )
        r = self.pod_exec(src, [sys.executable, "-c", code], timeout=timeout + 5)
        return r.stdout if r.returncode == 0 else ""

    def wait_reachable(self, src: str, dst: str, timeout: float = 10) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            got = self.tcp_json(src, dst, timeout=1)
            if got is not None:
                return got
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"pod on {dst} not reachable from pod on {src}\n"
                    + "\n".join(f"--- {n}\n{self.agent_log(n)[-3000:]}" for n in self.nodes)
                )
            time.sleep(0.1)

    # ------------------------------------------------------------------ teardown

    @staticmethod
    def _stop(p: subprocess.Popen, timeout: float = 5) -> None:
        if p.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            p.wait(5)

    def down(self) -> None:
        errors = []
        for p in reversed(self.procs):
            try:
                self._stop(p)
            except Exception as e:  # keep tearing down
                errors.append(str(e))
        self.procs.clear()
        for ns in reversed(self.namespaces):
            r = sh(["ip", "netns", "del", ns], check=False)
            if r.returncode != 0 and "No such file" not in r.stderr:
                errors.append(r.stderr.strip())
        self.namespaces.clear()
        sh(["ip", "link", "del", self.host_link], check=False)
        shutil.rmtree(self.state, ignore_errors=True)
        if errors:
            raise RuntimeError("testbed teardown: " + "; ".join(errors))

    def __enter__(self) -> Testbed:
        try:
            return self.up()
        except BaseException:
            self.down()
            raise

    def __exit__(self, *exc: object) -> None:
        self.down()


def leftovers(prefix: str) -> list[str]:
    """Namespaces and host links with ``prefix`` (to assert that nothing leaked)."""
    ns = [n.split()[0] for n in sh(["ip", "netns", "list"]).stdout.splitlines() if n.strip()]
    links = [
        line.split(":")[1].strip().split("@")[0]
        for line in sh(["ip", "-o", "link"]).stdout.splitlines()
        if line.count(":") >= 2
    ]
    return [x for x in ns + links if x.startswith(prefix + "-")]


def ip_in(ip: str, net: str) -> bool:
    return ipaddress.IPv4Address(ip) in ipaddress.IPv4Network(net)
