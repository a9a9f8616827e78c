"""The kubelet in a hand-made node namespace: pods get namespaces, addresses, go Ready, talk.

Fixture: netns ``kbt-node`` joined to the host by a veth on 172.30.9.0/24, the apiserver stub
listening on the host end (172.30.9.1), and ``python -m lab.kubelet`` running inside the node
namespace exactly as the lab starts it (``ip netns exec``). Pod namespaces are ``kbt-pod-*``.
Everything is removed on teardown, also after failures.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from apiserver_stub.testing import free_port
from kubecommon.client import ApiError, SyncApiClient
from lab.topology import remove_netns_etc

NODE_NS = "kbt-node"
HOST_IF = "kbt-h"
HOST_IP = "172.30.9.1"
NODE_IP = "172.30.9.2"
NODE = "kbt-n1"
NS = "kbt"


def sh(*argv: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=timeout)


def netns_list() -> set[str]:
    return {
        line.split()[0] for line in sh("ip", "netns", "list").stdout.splitlines() if line.strip()
    }


def wait_for(fn, timeout: float = 20, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out; last value {last!r}")


def start_kubelet(url: str, state: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            NODE_NS,
            sys.executable,
            "-m",
            "lab.kubelet",
            "--master",
            url,
            "--node-name",
            NODE,
            "--node-ip",
            NODE_IP,
            "--prefix",
            "kbt",
            "--state-dir",
            str(state),
            "--heartbeat-interval",
            "2",
            "--log-level",
            "DEBUG",
        ],
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
    )


def stop(proc: subprocess.Popen, wait: float = 10) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def cluster():
    tmp = Path(tempfile.mkdtemp(prefix="kbt-"))
    procs: list[subprocess.Popen] = []
    try:
        sh("ip", "netns", "add", NODE_NS)
        sh("ip", "link", "add", HOST_IF, "type", "veth", "peer", "name", "eth0", "netns", NODE_NS)
        sh("ip", "addr", "add", f"{HOST_IP}/24", "dev", HOST_IF)
        sh("ip", "link", "set", HOST_IF, "up")
        for cmd in (
            ["ip", "addr", "add", f"{NODE_IP}/24", "dev", "eth0"],
            ["ip", "link", "set", "eth0", "up"],
            ["ip", "link", "set", "lo", "up"],
            ["sysctl", "-qw", "net.ipv4.ip_forward=1"],
        ):
            sh("ip", "netns", "exec", NODE_NS, *cmd)
        port = free_port()
        api_proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "apiserver_stub",
                "--bind",
                HOST_IP,
                "--port",
                str(port),
                "--memory",
                "--pod-termination-seconds",
                "5",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(tmp / "apiserver.log", "ab"),
        )
        procs.append(api_proc)
        url = f"http://{HOST_IP}:{port}"
        api = SyncApiClient(url)

        def up():
            try:
                api.list("namespaces")
                return True
            except ApiError:
                return False

        wait_for(up)
        api.create(
            "namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}
        )
        kubelet = start_kubelet(url, tmp / "state", tmp / "kubelet.log")
        procs.append(kubelet)
        yield {"api": api, "url": url, "tmp": tmp, "procs": procs}
    finally:
        for p in reversed(procs[1:]):
            stop(p)
        with contextlib.suppress(Exception):
            sh(
                "ip",
                "netns",
                "exec",
                NODE_NS,
                sys.executable,
                "-m",
                "lab.kubelet",
                "--node-name",
                NODE,
                "--node-ip",
                NODE_IP,
                "--prefix",
                "kbt",
                "--state-dir",
                str(tmp / "state"),
                "--cleanup",
                check=False,
                timeout=60,
            )
        if procs:
            stop(procs[0], wait=3)
        for ns in netns_list():
            if ns.startswith("kbt-"):
                for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
                sh("ip", "netns", "del", ns, check=False)
        sh("ip", "link", "del", HOST_IF, check=False)
        for d in Path("/etc/netns").glob("kbt-*"):
            remove_netns_etc(d.name)
        if os.environ.get("KBT_KEEP_LOGS"):
            print(f"logs in {tmp}")
        else:
            with contextlib.suppress(OSError):
                sys.stderr.write((tmp / "kubelet.log").read_text()[-4000:])
            shutil.rmtree(tmp, ignore_errors=True)


def get_or_none(api: SyncApiClient, plural: str, name: str, ns: str | None = None) -> dict | None:
    try:
        return api.get(plural, name, ns)
    except ApiError as e:
        if e.code == 404:
            return None
        raise


def make_pod(api: SyncApiClient, name: str, **spec_extra) -> dict:
    container = {
        "name": "main",
        "image": spec_extra.pop("image", "kube-netlab/workload"),
        "ports": [{"containerPort": 8080}],
    }
    container.update(spec_extra.pop("container", {}))
    spec = {"nodeName": NODE, "containers": [container], "terminationGracePeriodSeconds": 2}
    spec.update(spec_extra)
    return api.create(
        "pods",
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": NS},
            "spec": spec,
        },
    )


def ready_pod(api: SyncApiClient, name: str, timeout: float = 20) -> dict:
    def check():
        p = api.get("pods", name, NS)
        conds = {c["type"]: c["status"] for c in (p.get("status") or {}).get("conditions") or []}
        return p if conds.get("Ready") == "True" and p["status"].get("podIP") else None

    return wait_for(check, timeout)


def in_ns(ns: str, *argv: str, timeout: float = 10) -> subprocess.CompletedProcess:
    return sh("ip", "netns", "exec", ns, *argv, check=False, timeout=timeout)


def test_pods_get_addresses_go_ready_and_talk(cluster):
    api = cluster["api"]
    node = wait_for(lambda: get_or_none(api, "nodes", NODE))
    assert {"type": "InternalIP", "address": NODE_IP} in (node.get("status") or {}).get(
        "addresses", []
    ), node
    for n in ("web-a", "web-b"):
        make_pod(api, n)
    a, b = ready_pod(api, "web-a"), ready_pod(api, "web-b")
    assert a["status"]["phase"] == "Running" and a["status"]["hostIP"] == NODE_IP
    assert a["status"]["podIP"] != b["status"]["podIP"]
    assert a["status"]["containerStatuses"][0]["ready"] is True
    # from the node namespace
    out = in_ns(NODE_NS, "curl", "-s", "--max-time", "3", f"http://{a['status']['podIP']}:8080/")
    assert out.stdout == f"pod=web-a namespace={NS} ip={a['status']['podIP']}\n"
    # pod to pod on the same node, and the server sees the client's own pod IP
    out = in_ns(
        "kbt-pod-kbt.web-a",
        "curl",
        "-s",
        "--max-time",
        "3",
        f"http://{b['status']['podIP']}:8080/json",
    )
    if os.environ.get("KBT_DEBUG"):
        print(
            out,
            in_ns("kbt-pod-kbt.web-a", "ip", "a").stdout,
            in_ns("kbt-pod-kbt.web-a", "ip", "r").stdout,
            in_ns(NODE_NS, "ip", "-d", "link").stdout,
            in_ns(NODE_NS, "bridge", "link").stdout,
            in_ns("kbt-pod-kbt.web-a", "ping", "-c1", "-W1", b["status"]["podIP"]).stdout,
        )
    doc = json.loads(out.stdout)
    assert doc["pod"] == "web-b" and doc["client_ip"] == a["status"]["podIP"]
    # resolv.conf as the issue says
    resolv = in_ns("kbt-pod-kbt.web-a", "cat", "/etc/resolv.conf").stdout
    assert resolv == (
        "nameserver 10.96.0.10\nsearch kbt.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
    )


def test_deleting_a_pod_removes_its_namespace(cluster):
    api = cluster["api"]
    make_pod(api, "gone")
    ready_pod(api, "gone")
    assert "kbt-pod-kbt.gone" in netns_list()
    api.delete("pods", "gone", NS)  # the stub keeps it Terminating until the kubelet finalizes
    wait_for(lambda: "kbt-pod-kbt.gone" not in netns_list(), 15)
    assert not Path("/etc/netns/kbt-pod-kbt.gone").exists()

    def api_gone():
        try:
            api.get("pods", "gone", NS)
            return False
        except ApiError as e:
            return e.code == 404

    wait_for(api_gone, 4)  # well before the stub's own 5 s fallback


def test_command_pods_probes_and_restart_policy(cluster):
    api = cluster["api"]
    make_pod(api, "nginx", image="nginx:1.25", container={"ports": [{"containerPort": 80}]})
    make_pod(
        api,
        "probed",
        container={
            "command": ["python", "-m", "http.server", "$(HTTP_PORT)"],
            "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
        },
    )
    make_pod(
        api,
        "once",
        restartPolicy="Never",
        container={"command": ["sh", "-c", "exit 3"], "ports": []},
    )
    ng = ready_pod(api, "nginx")
    out = in_ns(NODE_NS, "curl", "-s", "--max-time", "3", f"http://{ng['status']['podIP']}/")
    assert out.stdout == f"pod=nginx namespace={NS} ip={ng['status']['podIP']}\n"
    ready_pod(api, "probed")
    failed = wait_for(
        lambda: (p := api.get("pods", "once", NS))["status"].get("phase") == "Failed" and p
    )
    term = failed["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 3


def test_kubelet_restart_keeps_pods_and_cleans_leftovers(cluster):
    api, procs = cluster["api"], cluster["procs"]
    make_pod(api, "keep")
    make_pod(api, "orphan")
    keep, orphan = ready_pod(api, "keep"), ready_pod(api, "orphan")
    stop(procs[1])
    api.delete("pods", "orphan", NS)  # deleted while the kubelet is down
    procs[1] = start_kubelet(
        cluster["url"], cluster["tmp"] / "state", cluster["tmp"] / "kubelet.log"
    )
    wait_for(lambda: "kbt-pod-kbt.orphan" not in netns_list(), 15)
    again = ready_pod(api, "keep")
    assert again["status"]["podIP"] == keep["status"]["podIP"]
    assert again["status"]["containerStatuses"][0]["restartCount"] == 0
    out = in_ns(NODE_NS, "curl", "-s", "--max-time", "3", f"http://{keep['status']['podIP']}:8080/")
    assert out.stdout.startswith("pod=keep ")
    assert orphan["status"]["podIP"]
