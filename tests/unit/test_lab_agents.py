"""Agents' command lines (the docs/contracts.md contract), file layout, and argument quoting:
names reach processes as single argv elements, never through a shell."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from lab import agents as ag
from lab import cluster
from lab import topology as topo
from lab.config import LabConfig

CFG = LabConfig(prefix="knl", workers=2, node_cidr="172.18.0.0/16")


def test_kubelet_command_line() -> None:
    argv = ag.agent_argv(CFG, "worker1", "kubelet", python="/v/bin/python")
    assert argv == [
        "/v/bin/python", "-m", "lab.kubelet", "--master", "http://172.18.0.2:6443",
        "--node-name", "worker1", "--node-ip", "172.18.0.3", "--prefix", "knl",
        "--cluster-dns", "10.96.0.10",
        "--subnet-file", "/run/kube-netlab/knl/nodes/worker1/subnet.env",
    ]  # fmt: skip


def test_control_plane_kubelet_registers_with_the_noschedule_taint() -> None:
    argv = ag.agent_argv(CFG, "control-plane", "kubelet", python="py")
    i = argv.index("--register-with-taints")
    assert argv[i + 1] == "node-role.kubernetes.io/control-plane:NoSchedule"


def test_overlay_and_kubeproxy_command_lines() -> None:
    cfg = LabConfig(prefix="knl", workers=1, proxy_mode="userspace", overlay="host-gw")
    ov = ag.agent_argv(cfg, "worker1", "overlay", python="py")
    assert ov[ov.index("--backend") + 1] == "host-gw"
    assert ov[ov.index("--iface") + 1] == "eth0"
    assert ov[-1] == "--ip-masq"
    kp = ag.agent_argv(cfg, "worker1", "kubeproxy", python="py")
    assert kp[:3] == ["py", "-m", "kubeproxy"]
    assert kp[kp.index("--proxy-mode") + 1] == "userspace"
    assert kp[kp.index("--hostname-override") + 1] == "worker1"
    assert kp[kp.index("--healthz-bind-address") + 1] == "0.0.0.0:10256"


def test_apiserver_keeps_its_data_under_the_lab_state_dir() -> None:
    argv = ag.agent_argv(CFG, "control-plane", "apiserver", python="py")
    assert argv[argv.index("--data-dir") + 1] == "/run/kube-netlab/knl/apiserver"
    assert argv[argv.index("--bind") + 1] == "0.0.0.0"


def test_agents_enter_only_the_network_namespace() -> None:
    assert ag.ns_argv("knl-worker1", ["py", "-m", "x"]) == [
        "nsenter", "--net=/run/netns/knl-worker1", "--", "py", "-m", "x",
    ]  # fmt: skip


def test_logs_and_pidfiles_layout() -> None:
    a = ag.make_agent(CFG, "worker2", "kubeproxy", extra_args=["--v", "2"], python="py")
    assert a.log_path == "/run/kube-netlab/knl/nodes/worker2/logs/kubeproxy.log"
    assert a.pid_path == "/run/kube-netlab/knl/nodes/worker2/pids/kubeproxy.pid"
    assert a.netns == "knl-worker2"
    assert a.argv[-2:] == ("--v", "2")


def test_agent_env_marks_processes_and_puts_the_venv_first() -> None:
    env = ag.agent_env("knl", python="/venv/bin/python")
    assert env["KNL_LAB"] == "knl"
    assert env["PATH"].split(":")[0] == "/venv/bin"
    assert ag.REPO in env["PYTHONPATH"].split(":")


def test_clusterdns_pod_command_and_service() -> None:
    svc, pod = cluster.cluster_dns_objects(CFG)
    assert svc["spec"]["clusterIP"] == "10.96.0.10"
    assert {(p["name"], p["protocol"]) for p in svc["spec"]["ports"]} == {
        ("dns", "UDP"),
        ("dns-tcp", "TCP"),
    }
    assert pod["spec"]["nodeName"] == "control-plane"
    cmd = pod["spec"]["containers"][0]["command"]
    assert cmd[:3] == ["python", "-m", "clusterdns"]
    assert cmd[cmd.index("--zone") + 1] == "cluster.local"


def test_kubeconfig_points_at_the_control_plane() -> None:
    doc = yaml.safe_load(cluster.kubeconfig_text("knl", "http://172.18.0.2:6443"))
    assert doc["clusters"][0]["cluster"]["server"] == "http://172.18.0.2:6443"
    assert doc["current-context"] == "kube-netlab-knl"


@pytest.mark.parametrize(
    "selector, labels, match",
    [
        ("app=web", {"app": "web"}, True),
        ("app=web", {"app": "db"}, False),
        ("app==web,tier!=x", {"app": "web", "tier": "y"}, True),
        ("app", {"app": "x"}, True),
        ("!app", {"app": "x"}, False),
        ("", {}, True),
    ],
)
def test_selector_matching(selector: str, labels: dict, match: bool) -> None:
    assert cluster.selector_matches(selector, labels) is match


def test_manifest_puts_namespaces_then_services_first_and_refuses_unknown_kinds() -> None:
    objs = cluster.load_manifest(
        "kind: Pod\nmetadata: {name: a}\n---\nkind: Service\nmetadata: {name: s}\n"
        "---\nkind: Namespace\nmetadata: {name: n}\n"
    )
    assert [o["kind"] for o in objs] == ["Namespace", "Service", "Pod"]
    with pytest.raises(cluster.LabError, match="Deployment"):
        cluster.load_manifest("kind: Deployment\nmetadata: {name: d}\n")


def test_example_web_yaml_matches_the_demo() -> None:
    objs = cluster.load_manifest(f"{ag.REPO}/examples/web.yaml")
    pods = [o for o in objs if o["kind"] == "Pod"]
    assert len(pods) == 3 and all(p["metadata"]["labels"] == {"app": "web"} for p in pods)
    svcs = {o["metadata"]["name"]: o["spec"] for o in objs if o["kind"] == "Service"}
    web = {p["name"]: p for p in svcs["web"]["ports"]}
    assert web["http"]["port"] == 80 and web["http"]["targetPort"] == 8080
    assert web["echo-udp"]["protocol"] == "UDP" and web["echo-udp"]["port"] == 9000
    assert svcs["web-nodeport"]["type"] == "NodePort"


def test_pod_exec_passes_names_as_single_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def fake_run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        assert "shell" not in kw
        seen.append(argv)
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setattr(topo, "netns_exists", lambda name: True)
    lab = cluster.Lab(prefix="knl", nodes=1)
    evil = "x; rm -rf / $(reboot) `id`"
    lab.pod_exec("demo", "web-1", ["echo", evil])
    assert seen[-1] == ["ip", "netns", "exec", "knl-pod-demo.web-1", "echo", evil]
    lab.node_exec("worker1", ["sh", "-c", "true"])
    assert seen[-1][:4] == ["ip", "netns", "exec", "knl-worker1"]
