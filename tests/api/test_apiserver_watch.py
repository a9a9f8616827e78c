"""Watch over real HTTP: events, selectors, bookmarks, timeouts, resume, 410, restart."""

from __future__ import annotations

import time

from apiserver_stub.testing import run_apiserver

from .kube import Api, pod, service


def _rv(obj: dict) -> int:
    return int(obj["metadata"]["resourceVersion"])


def test_watch_streams_added_modified_deleted(api: Api, ns: str) -> None:
    rv = api.ok(api.get(f"/api/v1/namespaces/{ns}/pods"))["metadata"]["resourceVersion"]
    with api.watch(f"/api/v1/namespaces/{ns}/pods", {"resourceVersion": rv}) as w:
        assert w.status == 200 and w.resp.getheader("Transfer-Encoding") == "chunked"
        api.ok(api.post(f"/api/v1/namespaces/{ns}/pods", pod("a")))
        api.ok(api.patch(f"/api/v1/namespaces/{ns}/pods/a", {"metadata": {"labels": {"x": "1"}}}))
        api.ok(api.delete(f"/api/v1/namespaces/{ns}/pods/a"))
        evs = w.take(3)
    assert [t for t, _ in evs] == ["ADDED", "MODIFIED", "DELETED"]
    assert all(o["kind"] == "Pod" and o["apiVersion"] == "v1" for _, o in evs)
    rvs = [_rv(o) for _, o in evs]
    assert rvs == sorted(rvs) and rvs[0] > int(rv)


def test_watch_without_resource_version_starts_with_current_state(api: Api, ns: str) -> None:
    api.ok(api.post(f"/api/v1/namespaces/{ns}/pods", pod("a")))
    api.ok(api.post(f"/api/v1/namespaces/{ns}/pods", pod("b")))
    for rv in ("", "0"):
        params = {"resourceVersion": rv} if rv else {}
        with api.watch(f"/api/v1/namespaces/{ns}/pods", params) as w:
            evs = w.take(2)
        assert [(t, o["metadata"]["name"]) for t, o in evs] == [("ADDED", "a"), ("ADDED", "b")]


def test_watch_resumes_from_resource_version_replaying_history(api: Api, ns: str) -> None:
    first = api.ok(api.post(f"/api/v1/namespaces/{ns}/pods", pod("a")))
    api.ok(api.post(f"/api/v1/namespaces/{ns}/pods", pod("b")))
    api.ok(api.delete(f"/api/v1/namespaces/{ns}/pods/a"))
    with api.watch(
        f"/api/v1/namespaces/{ns}/pods", {"resourceVersion": first["metadata"]["resourceVersion"]}
    ) as w:
        evs = w.take(2)
    assert [(t, o["metadata"]["name"]) for t, o in evs] == [("ADDED", "b"), ("DELETED", "a")]


def test_label_selector_watch_turns_matching_changes_into_added_and_deleted(
    api: Api, ns: str
) -> None:
    rv = api.ok(api.post(f"/api/v1/namespaces/{ns}/pods", pod("a", {"app": "x"})))["metadata"][
        "resourceVersion"
    ]
    with api.watch(
        f"/api/v1/namespaces/{ns}/pods", {"resourceVersion": rv, "labelSelector": "app=y"}
    ) as w:
        api.ok(api.patch(f"/api/v1/namespaces/{ns}/pods/a", {"metadata": {"labels": {"app": "y"}}}))
        api.ok(
            api.patch(
                f"/api/v1/namespaces/{ns}/pods/a",
                {"metadata": {"labels": {"app": "y", "more": "1"}}},
            )
        )
        api.ok(api.patch(f"/api/v1/namespaces/{ns}/pods/a", {"metadata": {"labels": {"app": "z"}}}))
        evs = w.take(3)
    assert [t for t, _ in evs] == ["ADDED", "MODIFIED", "DELETED"]


def test_field_selector_watch_of_one_object(api: Api, ns: str) -> None:
    rv = api.ok(api.get(f"/api/v1/namespaces/{ns}/services"))["metadata"]["resourceVersion"]
    with api.watch(
        f"/api/v1/namespaces/{ns}/services",
        {"resourceVersion": rv, "fieldSelector": "metadata.name=b"},
    ) as w:
        api.ok(api.post(f"/api/v1/namespaces/{ns}/services", service("a", {"x": "y"})))
        api.ok(api.post(f"/api/v1/namespaces/{ns}/services", service("b", {"x": "y"})))
        t, o = w.take(1)[0]
    assert (t, o["metadata"]["name"]) == ("ADDED", "b")


def test_timeout_seconds_ends_the_stream(api: Api, ns: str) -> None:
    t0 = time.monotonic()
    with api.watch(
        f"/api/v1/namespaces/{ns}/pods", {"resourceVersion": "1", "timeoutSeconds": "1"}
    ) as w:
        assert list(w) == []
    assert time.monotonic() - t0 < 5


def test_all_namespaces_watch_and_cluster_scoped_watch(api: Api, ns: str) -> None:
    rv = api.ok(api.get("/api/v1/pods"))["metadata"]["resourceVersion"]
    with api.watch("/api/v1/pods", {"resourceVersion": rv}) as w:
        api.ok(api.post(f"/api/v1/namespaces/{ns}/pods", pod("a")))
        t, o = w.take(1)[0]
    assert o["metadata"]["namespace"] == ns
    with api.watch("/api/v1/namespaces", {"resourceVersion": rv}) as w:
        api.ok(api.post("/api/v1/namespaces", {"metadata": {"name": f"{ns}-x"}}))
        t, o = w.take(1)[0]
    assert (t, o["metadata"]["name"]) == ("ADDED", f"{ns}-x")


def test_bookmarks_and_initial_events_end(api: Api, ns: str) -> None:
    api.ok(api.post(f"/api/v1/namespaces/{ns}/pods", pod("a")))
    params = {
        "sendInitialEvents": "true",
        "resourceVersionMatch": "NotOlderThan",
        "allowWatchBookmarks": "true",
    }
    with api.watch(f"/api/v1/namespaces/{ns}/pods", params) as w:
        evs = w.take(2)
    assert evs[0][0] == "ADDED"
    assert evs[1][0] == "BOOKMARK"
    assert evs[1][1]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    assert evs[1][1]["kind"] == "Pod"


def test_periodic_bookmark_and_too_old_resource_version_gets_410() -> None:
    with run_apiserver(extra_args=["--watch-history", "10", "--bookmark-interval", "0.3"]) as url:
        api = Api(url)
        rv = api.ok(api.get("/api/v1/pods"))["metadata"]["resourceVersion"]
        with api.watch("/api/v1/pods", {"resourceVersion": rv, "allowWatchBookmarks": "true"}) as w:
            t, o = w.take(1)[0]
        assert t == "BOOKMARK" and int(o["metadata"]["resourceVersion"]) >= int(rv)
        for i in range(15):
            api.ok(api.post("/api/v1/namespaces/default/pods", pod(f"p{i}")))
        with api.watch("/api/v1/pods", {"resourceVersion": rv}) as w:
            t, st = w.take(1)[0]
            assert w.next() is None
        assert t == "ERROR"
        assert st["kind"] == "Status" and st["code"] == 410 and st["reason"] == "Expired"


def test_restart_with_data_dir_keeps_objects_and_resumes_watch(tmp_path) -> None:
    data = str(tmp_path / "data")
    with run_apiserver(data_dir=data) as url:
        api = Api(url)
        ns = "persist"
        api.ok(api.post("/api/v1/namespaces", {"metadata": {"name": ns}}))
        s = api.ok(
            api.post(
                f"/api/v1/namespaces/{ns}/services", service("web", {"app": "web"}, type="NodePort")
            )
        )
        mark = api.ok(api.post(f"/api/v1/namespaces/{ns}/pods", pod("a", {"app": "web"})))
        api.ok(api.post(f"/api/v1/namespaces/{ns}/pods", pod("b", {"app": "web"})))
        api.ok(api.delete(f"/api/v1/namespaces/{ns}/pods/a"))
        before = api.ok(api.get(f"/api/v1/namespaces/{ns}/pods"))["metadata"]["resourceVersion"]
    with run_apiserver(data_dir=data) as url:
        api = Api(url)
        again = api.ok(api.get(f"/api/v1/namespaces/{ns}/services/web"))
        assert again["spec"]["clusterIP"] == s["spec"]["clusterIP"]
        assert again["metadata"]["uid"] == s["metadata"]["uid"]
        assert again["metadata"]["resourceVersion"] == s["metadata"]["resourceVersion"]
        assert [
            p["metadata"]["name"] for p in api.ok(api.get(f"/api/v1/namespaces/{ns}/pods"))["items"]
        ] == ["b"]
        # a watcher that had seen up to "mark" gets what happened after it, across the restart
        with api.watch(
            f"/api/v1/namespaces/{ns}/pods",
            {"resourceVersion": mark["metadata"]["resourceVersion"]},
        ) as w:
            evs = w.take(2)
            assert [(t, o["metadata"]["name"]) for t, o in evs] == [
                ("ADDED", "b"),
                ("DELETED", "a"),
            ]
            api.ok(api.post(f"/api/v1/namespaces/{ns}/pods", pod("c")))
            t, o = w.take(1)[0]
        assert (t, o["metadata"]["name"]) == ("ADDED", "c")
        assert int(o["metadata"]["resourceVersion"]) > int(before)
        # allocations survived too: the same clusterIP / nodePort cannot be taken again
        r = api.post(
            f"/api/v1/namespaces/{ns}/services",
            service("clash", {"a": "b"}, clusterIP=s["spec"]["clusterIP"]),
        )
        assert r.status == 422
