"""Pod status rendering and Node registration bodies (pure)."""

from __future__ import annotations

import pytest

from lab.kubelet.node import missing_taints, node_object, parse_taints, status_patch
from lab.kubelet.runtime import ContainerState
from lab.kubelet.status import render, view_of


def view(state: ContainerState, ready: bool = False, policy: str = "Always"):
    return view_of(
        state,
        pod_ip="10.244.1.5",
        host_ip="172.18.0.3",
        start_time="T0",
        container_name="main",
        image="img",
        restart_policy=policy,
        ready=ready,
    )


def test_running_and_ready_pod():
    st = ContainerState(running=True, pid=42, started_at="T1", waiting_reason="")
    status, trans = render(view(st, ready=True), {}, "T2")
    assert status["phase"] == "Running" and status["podIP"] == "10.244.1.5"
    assert status["podIPs"] == [{"ip": "10.244.1.5"}] and status["hostIP"] == "172.18.0.3"
    conds = {c["type"]: c["status"] for c in status["conditions"]}
    assert conds == {
        "PodScheduled": "True",
        "Initialized": "True",
        "ContainersReady": "True",
        "Ready": "True",
    }
    cs = status["containerStatuses"][0]
    assert cs["ready"] and cs["started"] and cs["state"] == {"running": {"startedAt": "T1"}}
    # an unchanged condition keeps its transition time; a changed one gets the new time
    status2, _ = render(view(st, ready=False), trans, "T3")
    times = {c["type"]: c["lastTransitionTime"] for c in status2["conditions"]}
    assert times["PodScheduled"] == "T2" and times["Ready"] == "T3"


def test_pending_before_start_and_failed_after_exit_with_never():
    status, _ = render(view(ContainerState()), {}, "T")
    assert status["phase"] == "Pending"
    assert status["containerStatuses"][0]["state"] == {"waiting": {"reason": "ContainerCreating"}}
    done = ContainerState(
        started_at="T1", exit_code=3, finished_at="T2", terminated_reason="Error", done=True
    )
    status, _ = render(view(done, policy="Never"), {}, "T")
    assert status["phase"] == "Failed"
    assert status["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3


def test_taints_and_node_object():
    taints = parse_taints("node-role.kubernetes.io/control-plane:NoSchedule,dedicated=db:NoExecute")
    obj = node_object("control-plane", taints)
    assert obj["spec"]["taints"][0] == {
        "key": "node-role.kubernetes.io/control-plane",
        "effect": "NoSchedule",
    }
    assert obj["spec"]["taints"][1] == {"key": "dedicated", "value": "db", "effect": "NoExecute"}
    assert "node-role.kubernetes.io/control-plane" in obj["metadata"]["labels"]
    assert missing_taints([{"key": "dedicated", "effect": "NoExecute"}], taints) == [
        obj["spec"]["taints"][0]
    ]
    with pytest.raises(ValueError):
        parse_taints("foo:Sometimes")


def test_heartbeat_reports_internal_ip_and_ready_but_never_network_unavailable():
    st = status_patch("172.18.0.3", "worker1", True, "H", "S")["status"]
    assert {"type": "InternalIP", "address": "172.18.0.3"} in st["addresses"]
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Ready"]["status"] == "True" and conds["Ready"]["lastHeartbeatTime"] == "H"
    assert "NetworkUnavailable" not in conds
