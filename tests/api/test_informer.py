"""The shared informer against the real stub over HTTP: what every agent's watch relies on."""

from __future__ import annotations

import asyncio

import pytest

from apiserver_stub.testing import free_port, run_apiserver
from kubecommon.client import ApiClient, ClusterConfig, SyncApiClient
from kubecommon.informer import Informer


def cm_svc(name: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"ports": [{"port": 80}], "selector": {"app": name}},
    }


async def wait_for(pred, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def test_list_then_watch_sees_add_modify_delete():
    with run_apiserver() as url:
        sync = SyncApiClient(url)
        sync.create("services", cm_svc("before"))
        client = ApiClient(ClusterConfig(url))
        inf = Informer(client, "services", namespace="default")
        seen: list[tuple[str, str]] = []
        inf.add_handler(lambda t, new, old: seen.append((t, (new or old)["metadata"]["name"])))
        task = asyncio.create_task(inf.run())
        try:
            await asyncio.wait_for(inf.synced.wait(), 5)
            assert "default/before" in inf.store
            await asyncio.to_thread(sync.create, "services", cm_svc("after"))
            await wait_for(lambda: ("ADDED", "after") in seen)
            await asyncio.to_thread(
                sync.patch, "services", "after", {"metadata": {"labels": {"x": "1"}}}, "default"
            )
            await wait_for(lambda: ("MODIFIED", "after") in seen)
            assert inf.store["default/after"]["metadata"]["labels"] == {"x": "1"}
            await asyncio.to_thread(sync.delete, "services", "after", "default")
            await wait_for(lambda: ("DELETED", "after") in seen)
            assert "default/after" not in inf.store
        finally:
            task.cancel()
            await client.close()


async def test_watch_resumes_after_apiserver_restart(tmp_path):
    port = free_port()
    client = ApiClient(ClusterConfig(f"http://127.0.0.1:{port}"))
    inf = Informer(client, "services", namespace="default", max_backoff=0.3)
    names: set[str] = set()
    inf.add_handler(
        lambda t, new, old: names.add((new or old)["metadata"]["name"]) if t != "DELETED" else None
    )
    task = None
    try:
        with run_apiserver(data_dir=str(tmp_path), port=port) as url:
            task = asyncio.create_task(inf.run())
            await asyncio.wait_for(inf.synced.wait(), 5)
            await asyncio.to_thread(SyncApiClient(url).create, "services", cm_svc("one"))
            await wait_for(lambda: "one" in names)
        # server down: the informer keeps its cache and retries
        assert "default/one" in inf.store
        with run_apiserver(data_dir=str(tmp_path), port=port) as url:
            await asyncio.to_thread(SyncApiClient(url).create, "services", cm_svc("two"))
            await wait_for(lambda: "two" in names, timeout=10)
            assert {"default/one", "default/two"} <= set(inf.store)
    finally:
        if task:
            task.cancel()
        await client.close()


async def test_relist_on_410_reports_deletes_missed_while_away():
    with run_apiserver(extra_args=["--watch-history", "10"]) as url:
        sync = SyncApiClient(url)
        sync.create("services", cm_svc("gone-later"))
        client = ApiClient(ClusterConfig(url))
        inf = Informer(client, "services", namespace="default")
        deleted: list[str] = []
        inf.add_handler(
            lambda t, new, old: deleted.append(old["metadata"]["name"]) if t == "DELETED" else None
        )
        await inf._list()  # cache at an rv that will be expired
        for i in range(15):
            sync.create("services", cm_svc(f"churn{i}"))
        sync.delete("services", "gone-later", "default")
        task = asyncio.create_task(inf.run())
        try:
            await wait_for(lambda: "gone-later" in deleted)
            await wait_for(lambda: "default/churn14" in inf.store)
        finally:
            task.cancel()
            await client.close()


@pytest.mark.parametrize("bad", ["http://127.0.0.1:1"])
async def test_unreachable_api_is_retried_not_fatal(bad):
    client = ApiClient(ClusterConfig(bad))
    inf = Informer(client, "services", max_backoff=0.1)
    task = asyncio.create_task(inf.run())
    await asyncio.sleep(0.5)
    assert not task.done() and not inf.synced.is_set()
    task.cancel()
    await client.close()
