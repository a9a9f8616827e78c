"""Merge patch, strategic merge patch and JSON patch (apiserver_stub.patch)."""

from __future__ import annotations

import json

import pytest

from apiserver_stub.patch import MERGE_PATCH, STRATEGIC, apply_patch, json_patch, merge_patch
from apiserver_stub.resources import NODES, PODS, SERVICES
from apiserver_stub.status import ApiError

POD = {
    "metadata": {"name": "p", "labels": {"a": "1", "b": "2"}, "finalizers": ["x"]},
    "spec": {
        "containers": [
            {
                "name": "app",
                "image": "i:1",
                "ports": [{"containerPort": 80, "name": "http"}],
                "env": [{"name": "A", "value": "1"}],
            },
            {"name": "side", "image": "s:1"},
        ],
        "tolerations": [{"key": "t1"}],
    },
    "status": {
        "conditions": [
            {"type": "Ready", "status": "False"},
            {"type": "PodScheduled", "status": "True"},
        ]
    },
}


def smp(res, obj, patch):
    return apply_patch(res, json.loads(json.dumps(obj)), STRATEGIC, json.dumps(patch).encode())


def test_merge_patch_rfc7386() -> None:
    assert merge_patch(
        {"a": {"b": 1, "c": 2}, "l": [1, 2]}, {"a": {"b": None, "d": 3}, "l": [3]}
    ) == {"a": {"c": 2, "d": 3}, "l": [3]}
    assert merge_patch({"a": 1}, {"a": {"x": None}}) == {"a": {}}


def test_strategic_maps_merge_and_null_deletes() -> None:
    out = smp(PODS, POD, {"metadata": {"labels": {"a": None, "c": "3"}}})
    assert out["metadata"]["labels"] == {"b": "2", "c": "3"}


def test_strategic_containers_merge_by_name_and_nested_ports_by_container_port() -> None:
    out = smp(
        PODS,
        POD,
        {
            "spec": {
                "containers": [
                    {
                        "name": "app",
                        "image": "i:2",
                        "ports": [{"containerPort": 443, "name": "https"}],
                    }
                ]
            }
        },
    )
    app = out["spec"]["containers"][0]
    assert app["image"] == "i:2"
    assert [p["containerPort"] for p in app["ports"]] == [80, 443]
    assert app["env"] == [{"name": "A", "value": "1"}]
    assert out["spec"]["containers"][1]["name"] == "side"


def test_strategic_patch_delete_directive_in_list_and_map() -> None:
    out = smp(PODS, POD, {"spec": {"containers": [{"name": "side", "$patch": "delete"}]}})
    assert [c["name"] for c in out["spec"]["containers"]] == ["app"]
    out = smp(PODS, POD, {"status": {"$patch": "delete"}})
    assert "status" not in out


def test_strategic_replace_directive_and_lists_without_key_replace() -> None:
    out = smp(PODS, POD, {"metadata": {"labels": {"$patch": "replace", "only": "x"}}})
    assert out["metadata"]["labels"] == {"only": "x"}
    out = smp(PODS, POD, {"spec": {"tolerations": [{"key": "t2"}]}})
    assert out["spec"]["tolerations"] == [{"key": "t2"}]
    out = smp(
        PODS, POD, {"spec": {"containers": [{"$patch": "replace"}, {"name": "only", "image": "o"}]}}
    )
    assert out["spec"]["containers"] == [{"name": "only", "image": "o"}]


def test_strategic_conditions_merge_by_type_and_primitive_lists_union() -> None:
    out = smp(
        PODS,
        POD,
        {
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
            "metadata": {"finalizers": ["y"]},
        },
    )
    assert {c["type"]: c["status"] for c in out["status"]["conditions"]} == {
        "Ready": "True",
        "PodScheduled": "True",
    }
    assert out["metadata"]["finalizers"] == ["x", "y"]
    out = smp(PODS, POD, {"metadata": {"$deleteFromPrimitiveList/finalizers": ["x"]}})
    assert out["metadata"]["finalizers"] == []


def test_strategic_service_ports_merge_by_port() -> None:
    svc = {
        "spec": {"ports": [{"name": "a", "port": 80, "targetPort": 80}, {"name": "b", "port": 81}]}
    }
    out = smp(
        SERVICES,
        svc,
        {
            "spec": {
                "ports": [{"port": 80, "targetPort": 8080}, {"port": 82, "name": "c"}],
                "$setElementOrder/ports": [{"port": 80}],
            }
        },
    )
    assert [(p["port"], p.get("targetPort")) for p in out["spec"]["ports"]] == [
        (80, 8080),
        (81, None),
        (82, None),
    ]


def test_strategic_node_addresses_by_type() -> None:
    node = {
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": "1.1.1.1"},
                {"type": "Hostname", "address": "n"},
            ]
        }
    }
    out = smp(
        NODES, node, {"status": {"addresses": [{"type": "InternalIP", "address": "2.2.2.2"}]}}
    )
    assert out["status"]["addresses"] == [
        {"type": "InternalIP", "address": "2.2.2.2"},
        {"type": "Hostname", "address": "n"},
    ]


def test_retain_keys() -> None:
    out = smp(PODS, POD, {"spec": {"$retainKeys": ["containers"], "containers": []}})
    assert set(out["spec"]) == {"containers"}


def test_json_patch_operations() -> None:
    doc = {"a": {"b": [1, 2]}, "c": 1}
    out = json_patch(
        doc,
        [
            {"op": "add", "path": "/a/b/-", "value": 3},
            {"op": "replace", "path": "/c", "value": 2},
            {"op": "remove", "path": "/a/b/0"},
            {"op": "copy", "from": "/c", "path": "/d"},
            {"op": "move", "from": "/d", "path": "/e"},
            {"op": "test", "path": "/e", "value": 2},
            {"op": "add", "path": "/x~1y", "value": True},
        ],
    )
    assert out == {"a": {"b": [2, 3]}, "c": 2, "e": 2, "x/y": True}
    assert doc == {"a": {"b": [1, 2]}, "c": 1}
    with pytest.raises(ApiError):
        json_patch(doc, [{"op": "test", "path": "/c", "value": 9}])
    with pytest.raises(ApiError):
        json_patch(doc, [{"op": "remove", "path": "/nope"}])


def test_bad_patch_bodies() -> None:
    with pytest.raises(ApiError) as e:
        apply_patch(PODS, {}, MERGE_PATCH, b"{not json")
    assert e.value.code == 400
    with pytest.raises(ApiError) as e:
        apply_patch(PODS, {}, "application/x-unknown", b"{}")
    assert e.value.code == 415
