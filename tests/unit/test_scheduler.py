"""The scheduler: pure node choice (readiness, taints, selectors, spread) and binding via the stub."""

from __future__ import annotations

import asyncio
import time

import pytest

from apiserver_stub.testing import run_apiserver
from kubecommon.client import ApiClient, ClusterConfig, SyncApiClient
from lab.scheduler import Scheduler, choose_node, fits, tolerates

CP_TAINT = {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}


def node(name, ready=True, taints=(), labels=None, unschedulable=False):
    return {
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"taints": list(taints), "unschedulable": unschedulable},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def pod(tolerations=(), selector=None):
    return {
        "metadata": {"name": "p"},
        "spec": {"tolerations": list(tolerations), "nodeSelector": selector or {}},
    }


def test_control_plane_taint_keeps_ordinary_pods_off():
    nodes = [node("control-plane", taints=[CP_TAINT]), node("worker1")]
    assert choose_node(pod(), nodes, {"worker1": 50}) == "worker1"


def test_tolerating_pod_may_land_on_control_plane():
    tol = [
        {
            "key": "node-role.kubernetes.io/control-plane",
            "operator": "Exists",
            "effect": "NoSchedule",
        }
    ]
    assert fits(pod(tol), node("control-plane", taints=[CP_TAINT]))
    assert tolerates([{"operator": "Exists"}], CP_TAINT)
    assert not tolerates([{"key": "other", "operator": "Exists"}], CP_TAINT)


def test_not_ready_unschedulable_and_selector_mismatch_are_skipped():
    nodes = [node("a", ready=False), node("b", unschedulable=True), node("c", labels={"zone": "x"})]
    assert choose_node(pod(), nodes, {}) == "c"
    assert choose_node(pod(selector={"zone": "y"}), nodes, {}) is None


def test_least_loaded_wins_ties_by_name():
    nodes = [node("w2"), node("w1"), node("w3")]
    assert choose_node(pod(), nodes, {"w1": 2, "w2": 1, "w3": 1}) == "w2"


def make_node(api: SyncApiClient, name: str, taints=()):
    api.create(
        "nodes",
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name},
            "spec": {"taints": list(taints)},
        },
    )
    api.patch(
        "nodes",
        name,
        {"status": {"conditions": [{"type": "Ready", "status": "True"}]}},
        subresource="status",
    )


@pytest.fixture(scope="module")
def apiserver():
    with run_apiserver() as url:
        yield url


async def test_burst_of_pods_spreads_evenly_and_avoids_tainted_node(apiserver):
    api = SyncApiClient(apiserver)
    api.create(
        "namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "sched"}}
    )
    make_node(api, "control-plane", [CP_TAINT])
    make_node(api, "worker1")
    make_node(api, "worker2")
    client = ApiClient(ClusterConfig(apiserver))
    task = asyncio.create_task(Scheduler(client).run())
    try:
        for i in range(6):
            api.create(
                "pods",
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": f"p{i}", "namespace": "sched"},
                    "spec": {"containers": [{"name": "c", "image": "x"}]},
                },
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            items = api.list("pods", "sched")["items"]
            placed = [p["spec"].get("nodeName") for p in items]
            if all(placed):
                break
            await asyncio.sleep(0.05)
        assert sorted(placed) == ["worker1"] * 3 + ["worker2"] * 3
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()
