"""Kubelet runtime pure parts: what runs for a pod, with which environment."""

from __future__ import annotations

from pathlib import Path

from lab.kubelet.runtime import build_argv, container_spec, expand, nginx_config, process_env


def pod(container: dict, **spec) -> dict:
    return {
        "metadata": {"name": "web-1", "namespace": "shop", "uid": "u", "labels": {"app": "web"}},
        "spec": {"nodeName": "worker1", "containers": [container], **spec},
    }


def test_default_workload_gets_pod_identity_and_http_port():
    s = container_spec(
        pod({"name": "c", "ports": [{"containerPort": 8081}]}),
        "10.244.1.5",
        "worker1",
        "172.18.0.3",
    )
    env = dict(s.env)
    assert env["POD_NAME"] == "web-1" and env["POD_NAMESPACE"] == "shop"
    assert (
        env["POD_IP"] == "10.244.1.5"
        and env["NODE_NAME"] == "worker1"
        and env["HTTP_PORT"] == "8081"
    )
    assert build_argv(s, "knl-pod-shop.web-1") == [
        "ip",
        "netns",
        "exec",
        "knl-pod-shop.web-1",
        "python",
        "-m",
        "lab.workload",
    ]
    assert s.restart_policy == "Always" and s.grace_seconds == 30


def test_command_args_env_and_var_expansion():
    c = {
        "name": "c",
        "command": ["sh", "-c"],
        "args": ["echo $(GREETING) $(POD_IP) $(UNKNOWN) $$(KEEP)"],
        "env": [
            {"name": "GREETING", "value": "hi-$(POD_NAME)"},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
        ],
    }
    s = container_spec(
        pod(c, restartPolicy="Never", terminationGracePeriodSeconds=3),
        "10.1.1.1",
        "n",
        "172.18.0.3",
    )
    env = dict(s.env)
    assert env["GREETING"] == "hi-web-1" and env["APP"] == "web" and env["HOST"] == "172.18.0.3"
    assert build_argv(s, "ns")[4:] == ["sh", "-c", "echo hi-web-1 10.1.1.1 $(UNKNOWN) $(KEEP)"]
    assert s.restart_policy == "Never" and s.grace_seconds == 3
    assert expand("$(A)$$", {"A": "x"}) == "x$"


def test_path_puts_the_venv_first():
    s = container_spec(pod({"name": "c"}), "10.1.1.1", "n", "h")
    path = process_env(s)["PATH"].split(":")
    assert Path(path[0], "python").exists()


def test_nginx_image_runs_nginx_with_one_worker_on_the_container_port(tmp_path):
    s = container_spec(
        pod({"name": "c", "image": "nginx:1.25", "ports": [{"containerPort": 80}]}),
        "10.1.1.1",
        "n",
        "h",
    )
    assert s.is_nginx
    argv = build_argv(s, "ns", tmp_path / "nginx.conf")
    assert argv[4:] == ["nginx", "-c", str(tmp_path / "nginx.conf"), "-e", "stderr"]
    conf = nginx_config(s, tmp_path, "pod=web-1 namespace=shop ip=10.1.1.1\n")
    assert "worker_processes 1;" in conf and "listen 80 reuseport;" in conf
    assert 'return 200 "pod=web-1 namespace=shop ip=10.1.1.1\\n";' in conf
    # a command wins over the image name
    s2 = container_spec(
        pod({"name": "c", "image": "nginx", "command": ["sleep", "1"]}), "ip", "n", "h"
    )
    assert not s2.is_nginx and build_argv(s2, "ns")[4:] == ["sleep", "1"]
