"""Store: resourceVersions, watch history and its floor (410), SQLite reload (apiserver_stub.store)."""

from __future__ import annotations

import asyncio

from apiserver_stub.resources import PODS, SERVICES
from apiserver_stub.store import Store
from apiserver_stub.tables import human_duration


def obj(name: str, ns: str = "default") -> dict:
    return {"kind": "Pod", "apiVersion": "v1", "metadata": {"name": name, "namespace": ns}}


def test_writes_take_increasing_resource_versions_and_lists_are_sorted() -> None:
    s = Store()
    s.put(PODS, obj("b"))
    s.put(PODS, obj("a", "other"))
    s.put(PODS, obj("a"))
    assert [e.rv for e in s.list(PODS)] == [3, 1, 2]
    assert [(e.namespace, e.name) for e in s.list(PODS)] == [
        ("default", "a"),
        ("default", "b"),
        ("other", "a"),
    ]
    assert [e.name for e in s.list(PODS, "default")] == ["a", "b"]
    gone = s.remove(PODS, "default", "a")
    assert gone is not None and gone.rv == 4 and s.get(PODS, "default", "a") is None


def test_history_replays_after_rv_and_reports_too_old() -> None:
    s = Store(history=3)
    for i in range(5):
        s.put(PODS, obj(f"p{i}"))
    s.put(
        SERVICES,
        {"kind": "Service", "apiVersion": "v1", "metadata": {"name": "s", "namespace": "default"}},
    )
    assert s.since(PODS, 1) is None  # events 2.. were evicted for pods
    assert [e.rv for e in s.since(PODS, 3)] == [4, 5]
    assert [e.rv for e in s.since(SERVICES, 0)] == [6]
    line = s.since(PODS, 4)[0].line()
    assert line.startswith(b'{"type":"ADDED","object":{"kind":"Pod","apiVersion":"v1",')


def test_sqlite_round_trip(tmp_path) -> None:
    async def write() -> None:
        s = Store(str(tmp_path))
        s.put(PODS, obj("a"))
        s.put(PODS, obj("b"))
        s.remove(PODS, "default", "a")
        await s.sync()
        s.close()

    asyncio.run(write())
    s = Store(str(tmp_path))
    assert s.rv == 3
    assert [e.name for e in s.list(PODS)] == ["b"]
    assert [(e.type, e.entry.name) for e in s.since(PODS, 1)] == [("ADDED", "b"), ("DELETED", "a")]
    s.close()


def test_human_duration_matches_kubectl() -> None:
    assert [
        human_duration(x)
        for x in (
            5,
            119,
            120,
            599,
            600,
            3600 * 2 + 60,
            3600 * 4 + 60,
            3600 * 30,
            86400 * 3 + 3600,
            86400 * 400,
        )
    ] == [
        "5s",
        "119s",
        "2m",
        "9m59s",
        "10m",
        "121m",
        "4h1m",
        "30h",
        "3d1h",
        "400d",
    ]
