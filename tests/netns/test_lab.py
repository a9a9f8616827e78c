"""The lab as a user sees it: nodes register, pods get IPs and go Ready on every worker and
reach each other, services and DNS answer from pods, a second `up` reuses or refuses, and
`down` leaves nothing behind, also after `up` was killed half-way."""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import time

import pytest

from lab import Lab, LabError, cleanup
from lab import agents as ag
from lab import topology as topo

REPO = ag.REPO


def pod(name: str, node: str, labels: dict[str, str] | None = None) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {"app": "t"}},
        "spec": {
            "nodeName": node,
            # the port makes the kubelet's default readiness wait until the server listens
            "containers": [
                {"name": "c", "image": "kube-netlab/echo", "ports": [{"containerPort": 8080}]}
            ],
        },
    }


def with_ns(obj: dict, ns: str) -> dict:
    obj["metadata"]["namespace"] = ns
    return obj


def host_iptables() -> str:
    return subprocess.run(["iptables-legacy-save"], capture_output=True, text=True).stdout


def strip_counters(dump: str) -> list[str]:
    return [line for line in dump.splitlines() if not line.startswith("#")]


# ------------------------------------------------------------------------- the shared lab


def test_nodes_register_ready_and_kubectl_works_from_the_host(lab: Lab) -> None:
    out = subprocess.run(
        ["kubectl", "--kubeconfig", lab.kubeconfig, "get", "nodes", "-o", "name"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.split()) == sorted(f"node/{n}" for n in lab.node_names)
    nodes = {n["metadata"]["name"]: n for n in lab.api.list("nodes")["items"]}
    for name in lab.node_names:
        addrs = {a["type"]: a["address"] for a in nodes[name]["status"]["addresses"]}
        assert addrs["InternalIP"] == lab.node_ip(name)
    taints = nodes[topo.CONTROL_PLANE]["spec"].get("taints") or []
    assert any(t["key"] == "node-role.kubernetes.io/control-plane" for t in taints)


def test_node_namespaces_are_configured_like_nodes(lab: Lab) -> None:
    node = lab.worker_names[0]
    out = lab.node_exec(
        node,
        ["sysctl", "-n", "net.ipv4.ip_forward", "net.bridge.bridge-nf-call-iptables",
         "net.ipv4.conf.all.rp_filter"],
    )  # fmt: skip
    assert out.stdout.split() == ["1", "1", "2"]
    cidr = lab.api.get("nodes", node)["spec"]["podCIDR"]
    gw = str(next(ipaddress.ip_network(cidr).hosts()))
    addr = lab.node_exec(node, ["ip", "-4", "-o", "addr", "show", "dev", "cni0"]).stdout
    assert f"{gw}/" in addr


def test_pods_on_both_workers_get_ips_go_ready_and_reach_each_other(
    lab: Lab, api_namespace: str
) -> None:
    w1, w2 = lab.worker_names[:2]
    lab.apply_objects(
        [
            with_ns(pod("a1", w1), api_namespace),
            with_ns(pod("a2", w1), api_namespace),
            with_ns(pod("b1", w2), api_namespace),
        ]
    )
    pods = {p["metadata"]["name"]: p for p in lab.wait_ready(api_namespace, "app=t", 3, timeout=60)}
    for name, node in (("a1", w1), ("a2", w1), ("b1", w2)):
        cidr = ipaddress.ip_network(lab.api.get("nodes", node)["spec"]["podCIDR"])
        assert ipaddress.ip_address(pods[name]["status"]["podIP"]) in cidr
        assert pods[name]["spec"]["nodeName"] == node
    # same node: a1 -> a2 over cni0
    r = lab.pod_exec(
        api_namespace,
        "a1",
        ["curl", "-sS", "--max-time", "5", f"http://{pods['a2']['status']['podIP']}:8080/"],
    )
    assert r.returncode == 0, r.stderr
    assert f"pod=a2 namespace={api_namespace}" in r.stdout
    # across nodes: a1 -> b1 over the overlay (when one runs)
    if (lab.state().agents or {}).get("overlay"):
        r = lab.pod_exec(
            api_namespace,
            "a1",
            ["curl", "-sS", "--max-time", "5", f"http://{pods['b1']['status']['podIP']}:8080/"],
        )
        assert r.returncode == 0, r.stderr
        assert "pod=b1" in r.stdout
    # the pod's resolv.conf points at the cluster DNS with the Kubernetes search path
    r = lab.pod_exec(api_namespace, "b1", ["cat", "/etc/resolv.conf"])
    assert "nameserver 10.96.0.10" in r.stdout
    assert f"search {api_namespace}.svc.cluster.local svc.cluster.local cluster.local" in r.stdout


def test_service_clusterip_and_name_answer_from_a_pod(lab: Lab, api_namespace: str) -> None:
    runnable = lab.state().agents or {}
    if not runnable.get("kubeproxy"):
        pytest.skip("kube-proxy is not available yet")
    w1, w2 = lab.worker_names[:2]
    lab.apply_objects(
        [
            with_ns(pod("srv", w2, {"app": "srv"}), api_namespace),
            with_ns(pod("cli", w1, {"app": "cli"}), api_namespace),
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "srv", "namespace": api_namespace},
                "spec": {"selector": {"app": "srv"}, "ports": [{"port": 80, "targetPort": 8080}]},
            },
        ]
    )
    lab.wait_ready(api_namespace, "app=srv", 1, timeout=60)
    lab.wait_ready(api_namespace, "app=cli", 1, timeout=60)
    cip = lab.api.get("services", "srv", api_namespace)["spec"]["clusterIP"]
    deadline = time.monotonic() + 20
    while True:
        r = lab.pod_exec(api_namespace, "cli", ["curl", "-sS", "--max-time", "2", f"http://{cip}/"])
        if "pod=srv" in r.stdout or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert "pod=srv" in r.stdout, r.stderr
    if runnable.get("clusterdns"):
        r = lab.pod_exec(
            api_namespace,
            "cli",
            ["dig", "+search", "+short", "+time=2", "+tries=2", "-q", "srv"],
            timeout=20,
        )
        assert r.stdout.split() == [cip], r.stdout + r.stderr


def test_a_second_up_reuses_the_same_lab_and_refuses_another(lab: Lab) -> None:
    again = Lab(
        prefix=lab.prefix,
        nodes=2,
        proxy_mode="iptables",
        overlay="vxlan",
        node_cidr=lab.config.node_cidr,
    )
    again.up()
    assert again.reused
    other = Lab(prefix=lab.prefix, nodes=3, node_cidr=lab.config.node_cidr)
    with pytest.raises(LabError, match="another configuration"):
        other.up()
    assert ag.apiserver_healthy(lab.apiserver_url)  # untouched


def test_cli_status_shows_nodes_and_agents(lab: Lab) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "lab", "status", "--prefix", lab.prefix],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        env=dict(os.environ, COLUMNS="200"),
    )
    assert r.returncode == 0, r.stderr
    for name in lab.node_names:
        assert name in r.stdout
    assert "apiserver" in r.stdout and "Agents" in r.stdout


# ------------------------------------------------------------------- labs a test destroys


def assert_nothing_left(prefix: str, iptables_before: str) -> None:
    assert [n for n in topo.list_netns() if topo.is_lab_netns(prefix, n)] == []
    assert not topo.host_link_exists(topo.host_link(prefix))
    assert cleanup.lab_pids(prefix) == set()
    assert not os.path.exists(topo.state_dir(prefix))
    etc = os.listdir(topo.ETC_NETNS_DIR) if os.path.isdir(topo.ETC_NETNS_DIR) else []
    assert [e for e in etc if topo.is_lab_netns(prefix, e)] == []
    ps = subprocess.run(["ps", "-eo", "args="], capture_output=True, text=True).stdout
    assert f"--prefix {prefix} " not in ps
    assert strip_counters(host_iptables()) == strip_counters(iptables_before)


def test_down_leaves_no_namespace_link_process_or_rule(scratch_lab_config) -> None:
    prefix, cidr = scratch_lab_config("d")
    cleanup.down(prefix)
    before = host_iptables()
    lab = Lab(prefix=prefix, nodes=1, node_cidr=cidr)
    try:
        lab.up()
        if (lab.state().agents or {}).get("kubelet"):
            lab.apply_objects([with_ns(pod("p", lab.worker_names[0]), "default")])
            lab.wait_ready("default", "app=t", 1, timeout=60)
            assert topo.netns_exists(lab.pod_ns("default", "p"))
    finally:
        lab.down()
    assert_nothing_left(prefix, before)
    # idempotent: a second down finds nothing and does not fail
    assert lab.down().nothing_found


@pytest.mark.parametrize("kill_when", ["node-created", "agents-started"])
def test_a_lab_killed_mid_up_is_fully_removed_by_down(kill_when: str, scratch_lab_config) -> None:
    prefix, cidr = scratch_lab_config("k")
    cleanup.down(prefix)
    before = host_iptables()
    marker = (
        f"/run/netns/{topo.node_netns(prefix, topo.CONTROL_PLANE)}"
        if kill_when == "node-created"
        else ag.pid_path(prefix, "worker1", "kubelet")
    )
    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lab",
            "up",
            "--prefix",
            prefix,
            "--nodes",
            "1",
            "--node-cidr",
            cidr,
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(marker) and up.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        up.send_signal(signal.SIGKILL)
        up.wait()
        assert os.path.exists(marker), "up finished or failed before the kill point"
        # the refusal while half-built is clear
        with pytest.raises(LabError, match="half-built|remains"):
            Lab(prefix=prefix, nodes=1, node_cidr=cidr).up()
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        r = subprocess.run(
            [sys.executable, "-m", "lab", "down", "--prefix", prefix],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert r.returncode == 0, r.stdout + r.stderr
    assert_nothing_left(prefix, before)


def test_restart_agent_replaces_the_process_and_waits_until_healthy(lab: Lab) -> None:
    runnable = lab.state().agents or {}
    component = "kubeproxy" if runnable.get("kubeproxy") else "overlay"
    if not runnable.get(component):
        pytest.skip("no restartable agent available yet")
    node = lab.worker_names[-1]
    agent = ag.make_agent(lab.config, node, component)
    before = ag.running_pid(agent)
    lab.restart_agent(node, component)
    after = ag.running_pid(agent)
    assert after is not None and after != before
    assert not cleanup.proc_alive(before)
    assert ag.health(lab.config, agent).healthy is not False
