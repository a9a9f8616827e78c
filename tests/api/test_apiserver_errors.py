"""Bad input gets the right Kubernetes Status (code, reason, causes) and changes nothing."""

from __future__ import annotations

import json

import pytest

from apiserver_stub.testing import run_apiserver

from .kube import Api, pod, service


def _snapshot(api: Api, ns: str) -> tuple:
    pods = api.ok(api.get(f"/api/v1/namespaces/{ns}/pods"))
    svcs = api.ok(api.get(f"/api/v1/namespaces/{ns}/services"))
    return (
        [(p["metadata"]["name"], p["metadata"]["resourceVersion"]) for p in pods["items"]],
        [
            (s["metadata"]["name"], s["metadata"]["resourceVersion"], s["spec"].get("clusterIP"))
            for s in svcs["items"]
        ],
    )


def _status(r, code: int, reason: str) -> dict:
    assert r.status == code, (r.status, r.body)
    assert r.body["kind"] == "Status" and r.body["apiVersion"] == "v1"
    assert (
        r.body["status"] == "Failure" and r.body["code"] == code and r.body["reason"] == reason
    ), r.body
    return r.body


def test_malformed_json_and_yaml_are_400(api: Api, ns: str) -> None:
    before = _snapshot(api, ns)
    _status(
        api.request(
            "POST", f"/api/v1/namespaces/{ns}/pods", raw=b'{"metadata": {', ctype="application/json"
        ),
        400,
        "BadRequest",
    )
    _status(
        api.request(
            "POST",
            f"/api/v1/namespaces/{ns}/pods",
            raw=b"metadata: [unclosed",
            ctype="application/yaml",
        ),
        400,
        "BadRequest",
    )
    _status(
        api.request(
            "POST", f"/api/v1/namespaces/{ns}/pods", raw=b"[1,2]", ctype="application/json"
        ),
        400,
        "BadRequest",
    )
    _status(
        api.request(
            "PATCH",
            "/api/v1/namespaces/default/services/kubernetes",
            raw=b"{nope",
            ctype="application/merge-patch+json",
        ),
        400,
        "BadRequest",
    )
    assert _snapshot(api, ns) == before


def test_unknown_kind_or_resource_is_404_and_wrong_kind_is_400(api: Api, ns: str) -> None:
    _status(
        api.post(f"/api/v1/namespaces/{ns}/widgets", {"metadata": {"name": "w"}}), 404, "NotFound"
    )
    _status(api.get("/apis/apps/v1/deployments"), 404, "NotFound")
    body = service("s", {"a": "b"})
    body["kind"] = "Widget"
    _status(api.post(f"/api/v1/namespaces/{ns}/services", body), 400, "BadRequest")


def test_invalid_names_are_422_with_causes(api: Api, ns: str) -> None:
    before = _snapshot(api, ns)
    b = _status(
        api.post(f"/api/v1/namespaces/{ns}/services", service("Bad_Name", {"a": "b"})),
        422,
        "Invalid",
    )
    assert b["details"]["causes"][0]["field"] == "metadata.name"
    assert b["details"]["kind"] == "Service" and b["details"]["name"] == "Bad_Name"
    assert b["message"].startswith(
        'Service "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name"'
    )
    _status(
        api.post(f"/api/v1/namespaces/{ns}/services", service("1abc", {"a": "b"})), 422, "Invalid"
    )  # DNS-1035
    _status(api.post(f"/api/v1/namespaces/{ns}/pods", pod("a..b")), 422, "Invalid")
    _status(api.post("/api/v1/namespaces", {"metadata": {"name": "has.dot"}}), 422, "Invalid")
    _status(
        api.post(
            f"/api/v1/namespaces/{ns}/pods", {"spec": {"containers": [{"name": "c", "image": "i"}]}}
        ),
        422,
        "Invalid",
    )
    assert _snapshot(api, ns) == before


def test_invalid_ports_duplicate_names_and_bad_values(api: Api, ns: str) -> None:
    before = _snapshot(api, ns)
    b = _status(
        api.post(f"/api/v1/namespaces/{ns}/services", service("s", {"a": "b"}, [{"port": 0}])),
        422,
        "Invalid",
    )
    assert {
        "reason": "FieldValueInvalid",
        "message": "Invalid value: 0: must be between 1 and 65535, inclusive",
        "field": "spec.ports[0].port",
    } in b["details"]["causes"]
    _status(
        api.post(f"/api/v1/namespaces/{ns}/services", service("s", {"a": "b"}, [{"port": 70000}])),
        422,
        "Invalid",
    )
    b = _status(
        api.post(
            f"/api/v1/namespaces/{ns}/services",
            service("s", {"a": "b"}, [{"name": "x", "port": 80}, {"name": "x", "port": 81}]),
        ),
        422,
        "Invalid",
    )
    assert b["details"]["causes"][0] == {
        "reason": "FieldValueDuplicate",
        "message": 'Duplicate value: "x"',
        "field": "spec.ports[1].name",
    }
    b = _status(
        api.post(
            f"/api/v1/namespaces/{ns}/services",
            service("s", {"a": "b"}, [{"port": 80}, {"port": 81}]),
        ),
        422,
        "Invalid",
    )
    assert b["details"]["causes"][0]["reason"] == "FieldValueRequired"
    _status(
        api.post(
            f"/api/v1/namespaces/{ns}/services",
            service("s", {"a": "b"}, [{"port": 80, "protocol": "ICMP"}]),
        ),
        422,
        "Invalid",
    )
    _status(
        api.post(f"/api/v1/namespaces/{ns}/services", service("s", {"a": "b"}, type="Weird")),
        422,
        "Invalid",
    )
    _status(
        api.post(f"/api/v1/namespaces/{ns}/services", service("s", {"a": "b"}, [])), 422, "Invalid"
    )
    _status(
        api.post(f"/api/v1/namespaces/{ns}/pods", pod("p", ports=[{"containerPort": 0}])),
        422,
        "Invalid",
    )
    _status(
        api.post(
            f"/api/v1/namespaces/{ns}/services",
            service("s", {"a": "b"}, [{"port": 80, "targetPort": "Not_A_Name"}]),
        ),
        422,
        "Invalid",
    )
    assert _snapshot(api, ns) == before


def test_node_port_and_cluster_ip_conflicts_change_nothing(api: Api, ns: str) -> None:
    api.ok(
        api.post(
            f"/api/v1/namespaces/{ns}/services",
            service(
                "held",
                {"a": "b"},
                [{"port": 80, "nodePort": 32000}],
                type="NodePort",
                clusterIP="10.96.200.1",
            ),
        )
    )
    before = _snapshot(api, ns)
    # a service asking for a free port AND a taken IP must not keep the free port
    _status(
        api.post(
            f"/api/v1/namespaces/{ns}/services",
            service(
                "x",
                {"a": "b"},
                [{"port": 80, "nodePort": 32001}],
                type="NodePort",
                clusterIP="10.96.200.1",
            ),
        ),
        422,
        "Invalid",
    )
    _status(
        api.post(
            f"/api/v1/namespaces/{ns}/services",
            service("y", {"a": "b"}, [{"port": 80, "nodePort": 32000}], type="NodePort"),
        ),
        422,
        "Invalid",
    )
    _status(
        api.post(
            f"/api/v1/namespaces/{ns}/services",
            service("z", {"a": "b"}, [{"port": 80, "nodePort": 29999}], type="NodePort"),
        ),
        422,
        "Invalid",
    )
    # changing the clusterIP of an existing service is refused
    _status(
        api.patch(
            f"/api/v1/namespaces/{ns}/services/held",
            {"spec": {"clusterIP": "10.96.200.2", "clusterIPs": ["10.96.200.2"]}},
        ),
        422,
        "Invalid",
    )
    assert _snapshot(api, ns) == before
    api.ok(
        api.post(
            f"/api/v1/namespaces/{ns}/services",
            service("w", {"a": "b"}, [{"port": 80, "nodePort": 32001}], type="NodePort"),
        )
    )


def test_body_over_3_mib_is_413(api: Api, ns: str) -> None:
    before = _snapshot(api, ns)
    big = pod("big")
    big["metadata"]["annotations"] = {"blob": "x" * (3 * 1024 * 1024 + 10)}
    r = api.request("POST", f"/api/v1/namespaces/{ns}/pods", raw=json.dumps(big).encode())
    _status(r, 413, "RequestEntityTooLarge")
    assert _snapshot(api, ns) == before


def test_namespace_mismatch_and_name_mismatch_are_400(api: Api, ns: str) -> None:
    body = pod("a")
    body["metadata"]["namespace"] = "elsewhere"
    b = _status(api.post(f"/api/v1/namespaces/{ns}/pods", body), 400, "BadRequest")
    assert "namespace" in b["message"]
    api.ok(api.post(f"/api/v1/namespaces/{ns}/pods", pod("a")))
    _status(api.put(f"/api/v1/namespaces/{ns}/pods/a", pod("b")), 400, "BadRequest")
    _status(api.post(f"/api/v1/namespaces/{ns}/pods", pod("a")), 409, "AlreadyExists")
    _status(api.post("/api/v1/namespaces/nosuchns/pods", pod("a")), 404, "NotFound")


def test_strict_field_validation_rejects_unknown_fields_and_warn_drops_them(
    api: Api, ns: str
) -> None:
    body = service("s", {"a": "b"})
    body["spec"]["bogus"] = 1
    b = _status(
        api.post(f"/api/v1/namespaces/{ns}/services?fieldValidation=Strict", body),
        400,
        "BadRequest",
    )
    assert 'unknown field "spec.bogus"' in b["message"]
    r = api.post(f"/api/v1/namespaces/{ns}/services", body)
    assert r.status == 201 and "bogus" not in r.body["spec"]
    assert "unknown field" in r.headers["Warning"]


def test_pod_spec_is_mostly_immutable(api: Api, ns: str) -> None:
    api.ok(api.post(f"/api/v1/namespaces/{ns}/pods", pod("a", ports=[{"containerPort": 80}])))
    b = _status(
        api.patch(f"/api/v1/namespaces/{ns}/pods/a", {"spec": {"restartPolicy": "Never"}}),
        422,
        "Invalid",
    )
    assert "Forbidden" in b["message"]
    api.ok(
        api.patch(
            f"/api/v1/namespaces/{ns}/pods/a",
            {"spec": {"containers": [{"name": "app", "image": "busybox:2"}]}},
            "strategic",
        )
    )


def test_unsupported_patch_type_and_method(api: Api) -> None:
    r = api.request(
        "PATCH", "/api/v1/namespaces/default/services/kubernetes", raw=b"{}", ctype="text/plain"
    )
    _status(r, 415, "UnsupportedMediaType")
    _status(
        api.request("POST", "/api/v1/namespaces/default/services/kubernetes", raw=b"{}"),
        405,
        "MethodNotAllowed",
    )


@pytest.fixture(scope="module")
def secured(tmp_path_factory) -> Api:
    f = tmp_path_factory.mktemp("tok") / "tokens.csv"
    f.write_text("s3cret,admin,1,system:masters\n")
    with run_apiserver(extra_args=["--token-file", str(f)]) as url:
        yield url


def test_token_file_requires_bearer_token(secured: str) -> None:
    anon = Api(secured)
    b = _status(anon.get("/api/v1/namespaces"), 401, "Unauthorized")
    assert b["message"] == "Unauthorized"
    _status(Api(secured, token="wrong").get("/api/v1/pods"), 401, "Unauthorized")
    assert anon.get("/readyz").status == 200
    assert (
        Api(secured, token="s3cret").ok(Api(secured, token="s3cret").get("/api/v1/namespaces"))[
            "kind"
        ]
        == "NamespaceList"
    )
