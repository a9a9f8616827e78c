"""CRUD over real HTTP: create/get/list/update/patch/delete, selectors, paging, metadata."""

from __future__ import annotations

from .kube import Api, pod, service


def test_create_sets_metadata_and_get_returns_typed_object(api: Api, ns: str) -> None:
    created = api.ok(api.post(f"/api/v1/namespaces/{ns}/pods", pod("a", {"app": "x"})), 201)
    md = created["metadata"]
    assert md["uid"] and md["creationTimestamp"].endswith("Z")
    assert int(md["resourceVersion"]) > 0 and md["generation"] == 1
    got = api.ok(api.get(f"/api/v1/namespaces/{ns}/pods/a"))
    assert got["kind"] == "Pod" and got["apiVersion"] == "v1"
    assert got["metadata"]["uid"] == md["uid"]
    assert got["status"]["phase"] == "Pending"


def test_list_is_typed_list_with_items_without_type_meta(api: Api, ns: str) -> None:
    api.ok(api.post(f"/api/v1/namespaces/{ns}/pods", pod("a")))
    lst = api.ok(api.get(f"/api/v1/namespaces/{ns}/pods"))
    assert lst["kind"] == "PodList" and lst["apiVersion"] == "v1"
    assert int(lst["metadata"]["resourceVersion"]) >= 1
    assert [i["metadata"]["name"] for i in lst["items"]] == ["a"]
    assert "kind" not in lst["items"][0]


def test_resource_versions_are_monotonic(api: Api, ns: str) -> None:
    a = api.ok(api.post(f"/api/v1/namespaces/{ns}/pods", pod("a")))
    b = api.ok(api.post(f"/api/v1/namespaces/{ns}/pods", pod("b")))
    c = api.ok(api.patch(f"/api/v1/namespaces/{ns}/pods/a", {"metadata": {"labels": {"k": "v"}}}))
    rvs = [int(x["metadata"]["resourceVersion"]) for x in (a, b, c)]
    assert rvs == sorted(rvs) and len(set(rvs)) == 3


def test_put_with_stale_resource_version_is_409(api: Api, ns: str) -> None:
    svc = api.ok(api.post(f"/api/v1/namespaces/{ns}/services", service("web", {"app": "web"})))
    svc["metadata"]["labels"] = {"v": "1"}
    updated = api.ok(api.put(f"/api/v1/namespaces/{ns}/services/web", svc))
    assert updated["metadata"]["labels"] == {"v": "1"}
    svc["metadata"]["labels"] = {"v": "2"}  # still carries the old resourceVersion
    r = api.put(f"/api/v1/namespaces/{ns}/services/web", svc)
    assert r.status == 409 and r.reason == "Conflict"
    assert r.body["kind"] == "Status" and r.body["details"]["name"] == "web"
    assert api.ok(api.get(f"/api/v1/namespaces/{ns}/services/web"))["metadata"]["labels"] == {
        "v": "1"
    }


def test_put_keeps_allocated_cluster_ip_and_status(api: Api, ns: str) -> None:
    svc = api.ok(api.post(f"/api/v1/namespaces/{ns}/services", service("web", {"app": "web"})))
    ip = svc["spec"]["clusterIP"]
    body = service("web", {"app": "other"})
    body["metadata"]["resourceVersion"] = svc["metadata"]["resourceVersion"]
    body["status"] = {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}
    out = api.ok(api.put(f"/api/v1/namespaces/{ns}/services/web", body))
    assert out["spec"]["clusterIP"] == ip
    assert out["spec"]["selector"] == {"app": "other"}
    assert out["status"] == {"loadBalancer": {}}  # status only via /status
    assert out["metadata"]["generation"] == 2


def test_update_that_changes_nothing_keeps_resource_version(api: Api, ns: str) -> None:
    svc = api.ok(api.post(f"/api/v1/namespaces/{ns}/services", service("web", {"app": "web"})))
    again = api.ok(api.put(f"/api/v1/namespaces/{ns}/services/web", svc))
    assert again["metadata"]["resourceVersion"] == svc["metadata"]["resourceVersion"]


def test_merge_patch_and_strategic_merge_patch(api: Api, ns: str) -> None:
    p = pod("a", {"app": "x"}, ports=[{"name": "http", "containerPort": 80}])
    p["spec"]["containers"].append({"name": "side", "image": "busybox"})
    api.ok(api.post(f"/api/v1/namespaces/{ns}/pods", p))
    # merge patch: null deletes a label, maps merge
    out = api.ok(
        api.patch(
            f"/api/v1/namespaces/{ns}/pods/a", {"metadata": {"labels": {"app": None, "new": "1"}}}
        )
    )
    assert out["metadata"]["labels"] == {"new": "1"}
    # strategic: containers merge by name (image may change on a pod)
    out = api.ok(
        api.patch(
            f"/api/v1/namespaces/{ns}/pods/a",
            {"spec": {"containers": [{"name": "side", "image": "busybox:2"}]}},
            "strategic",
        )
    )
    assert [(c["name"], c["image"]) for c in out["spec"]["containers"]] == [
        ("app", "busybox:1.36"),
        ("side", "busybox:2"),
    ]
    # strategic on a service: ports merge by port, $patch: delete removes one
    svc = service("web", {"app": "web"}, [{"name": "a", "port": 80}, {"name": "b", "port": 81}])
    api.ok(api.post(f"/api/v1/namespaces/{ns}/services", svc))
    out = api.ok(
        api.patch(
            f"/api/v1/namespaces/{ns}/services/web",
            {
                "spec": {
                    "ports": [{"port": 81, "$patch": "delete"}, {"port": 80, "targetPort": 8080}]
                }
            },
            "strategic",
        )
    )
    assert [(p["name"], p["port"], p["targetPort"]) for p in out["spec"]["ports"]] == [
        ("a", 80, 8080)
    ]
    # JSON patch
    out = api.ok(
        api.patch(
            f"/api/v1/namespaces/{ns}/services/web",
            [{"op": "add", "path": "/metadata/annotations", "value": {"x": "y"}}],
            "json",
        )
    )
    assert out["metadata"]["annotations"] == {"x": "y"}


def test_patch_status_subresource_changes_only_status(api: Api, ns: str) -> None:
    api.ok(api.post(f"/api/v1/namespaces/{ns}/pods", pod("a", {"app": "x"})))
    out = api.ok(
        api.patch(
            f"/api/v1/namespaces/{ns}/pods/a/status",
            {
                "metadata": {"labels": {"sneaky": "1"}},
                "status": {"phase": "Running", "podIP": "10.244.0.9"},
            },
        )
    )
    assert out["status"]["podIP"] == "10.244.0.9"
    assert out["metadata"]["labels"] == {"app": "x"}
    # and a main-resource patch cannot change status
    out = api.ok(api.patch(f"/api/v1/namespaces/{ns}/pods/a", {"status": {"podIP": "10.0.0.1"}}))
    assert out["status"]["podIP"] == "10.244.0.9"


def test_label_and_field_selectors(api: Api, ns: str) -> None:
    for name, labels, node in [
        ("a", {"app": "web", "tier": "fe"}, "n1"),
        ("b", {"app": "web", "tier": "be"}, "n2"),
        ("c", {"app": "db"}, "n1"),
    ]:
        api.ok(api.post(f"/api/v1/namespaces/{ns}/pods", pod(name, labels, nodeName=node)))

    def names(q: str) -> list[str]:
        return [
            i["metadata"]["name"]
            for i in api.ok(api.get(f"/api/v1/namespaces/{ns}/pods?{q}"))["items"]
        ]

    assert names("labelSelector=app%3Dweb") == ["a", "b"]
    assert names("labelSelector=app%3D%3Dweb,tier!%3Dfe") == ["b"]
    assert names("labelSelector=tier+in+(fe,be)") == ["a", "b"]
    assert names("labelSelector=tier+notin+(fe)") == ["b", "c"]
    assert names("labelSelector=!tier") == ["c"]
    assert names("labelSelector=tier") == ["a", "b"]
    assert names("fieldSelector=spec.nodeName%3Dn1") == ["a", "c"]
    assert names("fieldSelector=metadata.name%3Db") == ["b"]
    assert names("fieldSelector=status.phase%3DPending,metadata.name!%3Da") == ["b", "c"]
    all_ns = api.ok(api.get(f"/api/v1/pods?fieldSelector=metadata.namespace%3D{ns}"))["items"]
    assert len(all_ns) == 3
    bad = api.get(f"/api/v1/namespaces/{ns}/pods?fieldSelector=spec.bogus%3D1")
    assert bad.status == 400 and bad.reason == "BadRequest"
    bad = api.get(f"/api/v1/namespaces/{ns}/pods?labelSelector=a+in+b")
    assert bad.status == 400


def test_limit_and_continue_page_through_everything(api: Api, ns: str) -> None:
    for i in range(7):
        api.ok(api.post(f"/api/v1/namespaces/{ns}/pods", pod(f"p{i}")))
    seen: list[str] = []
    cont = ""
    pages = 0
    while True:
        lst = api.ok(
            api.get(f"/api/v1/namespaces/{ns}/pods?limit=3" + (f"&continue={cont}" if cont else ""))
        )
        seen += [i["metadata"]["name"] for i in lst["items"]]
        pages += 1
        cont = lst["metadata"].get("continue", "")
        if not cont:
            break
        assert lst["metadata"]["remainingItemCount"] == 7 - len(seen)
    assert pages == 3 and seen == [f"p{i}" for i in range(7)]


def test_delete_returns_object_and_then_404(api: Api, ns: str) -> None:
    api.ok(api.post(f"/api/v1/namespaces/{ns}/pods", pod("a")))
    gone = api.ok(api.delete(f"/api/v1/namespaces/{ns}/pods/a"))
    assert gone["metadata"]["name"] == "a"
    r = api.get(f"/api/v1/namespaces/{ns}/pods/a")
    assert r.status == 404 and r.reason == "NotFound"
    assert r.body["message"] == 'pods "a" not found'


def test_deletecollection_with_label_selector(api: Api, ns: str) -> None:
    for name, app in (("a", "x"), ("b", "x"), ("c", "y")):
        api.ok(api.post(f"/api/v1/namespaces/{ns}/pods", pod(name, {"app": app})))
    api.ok(api.delete(f"/api/v1/namespaces/{ns}/pods?labelSelector=app%3Dx"))
    left = api.ok(api.get(f"/api/v1/namespaces/{ns}/pods"))["items"]
    assert [i["metadata"]["name"] for i in left] == ["c"]


def test_generate_name(api: Api, ns: str) -> None:
    body = pod("")
    body["metadata"] = {"generateName": "web-"}
    out = api.ok(api.post(f"/api/v1/namespaces/{ns}/pods", body))
    assert out["metadata"]["name"].startswith("web-") and len(out["metadata"]["name"]) == 9


def test_deleting_a_namespace_deletes_its_objects(api: Api) -> None:
    api.ok(api.post("/api/v1/namespaces", {"metadata": {"name": "doomed"}}))
    api.ok(api.post("/api/v1/namespaces/doomed/pods", pod("a", {"app": "a"})))
    api.ok(api.post("/api/v1/namespaces/doomed/services", service("s", {"app": "a"})))
    out = api.ok(api.delete("/api/v1/namespaces/doomed"))
    assert out["status"]["phase"] == "Terminating"
    api.wait_for(lambda: api.get("/api/v1/namespaces/doomed").status == 404)
    assert api.ok(api.get("/api/v1/namespaces/doomed/pods"))["items"] == []
    assert api.ok(api.get("/api/v1/namespaces/doomed/services"))["items"] == []
    r = api.post("/api/v1/namespaces/doomed/pods", pod("b"))
    assert r.status == 404 and r.body["message"] == 'namespaces "doomed" not found'


def test_system_namespaces_and_kubernetes_service_exist(api: Api) -> None:
    names = {i["metadata"]["name"] for i in api.ok(api.get("/api/v1/namespaces"))["items"]}
    assert {"default", "kube-system", "kube-public", "kube-node-lease"} <= names
    k = api.ok(api.get("/api/v1/namespaces/default/services/kubernetes"))
    assert k["spec"]["clusterIP"] == "10.96.0.1"
    r = api.delete("/api/v1/namespaces/kube-system")
    assert r.status == 403 and r.reason == "Forbidden"


def test_pod_binding_sets_node_once(api: Api, ns: str) -> None:
    api.ok(api.post(f"/api/v1/namespaces/{ns}/pods", pod("a")))
    binding = {
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": "a"},
        "target": {"kind": "Node", "name": "n1"},
    }
    r = api.post(f"/api/v1/namespaces/{ns}/pods/a/binding", binding)
    assert r.status == 201, r.body
    got = api.ok(api.get(f"/api/v1/namespaces/{ns}/pods/a"))
    assert got["spec"]["nodeName"] == "n1"
    assert any(
        c["type"] == "PodScheduled" and c["status"] == "True" for c in got["status"]["conditions"]
    )
    r = api.post(f"/api/v1/namespaces/{ns}/pods/a/binding", binding)
    assert r.status == 409


def test_endpointslices_crud_in_discovery_group(api: Api, ns: str) -> None:
    body = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "manual", "labels": {"kubernetes.io/service-name": "manual"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.1.2.3"], "conditions": {"ready": True}}],
        "ports": [{"name": "http", "port": 80}],
    }
    out = api.ok(api.post(f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices", body))
    assert out["ports"][0]["protocol"] == "TCP"
    lst = api.ok(
        api.get(
            "/apis/discovery.k8s.io/v1/endpointslices?labelSelector=kubernetes.io/service-name%3Dmanual"
        )
    )
    assert lst["kind"] == "EndpointSliceList" and len(lst["items"]) == 1


def test_discovery_and_health(api: Api) -> None:
    assert (
        api.get("/healthz").body == "ok"
        and api.get("/readyz").status == 200
        and api.get("/livez").status == 200
    )
    assert api.ok(api.get("/api"))["versions"] == ["v1"]
    v1 = api.ok(api.get("/api/v1"))
    names = {r["name"] for r in v1["resources"]}
    assert {
        "pods",
        "pods/status",
        "pods/binding",
        "services",
        "endpoints",
        "nodes",
        "nodes/status",
        "namespaces",
    } <= names
    groups = api.ok(api.get("/apis"))["groups"]
    assert any(g["name"] == "discovery.k8s.io" for g in groups)
    d = api.ok(api.get("/apis/discovery.k8s.io/v1"))
    assert d["resources"][0]["name"] == "endpointslices"
    assert api.ok(api.get("/version"))["major"] == "1"
    agg = api.get(
        "/api",
        headers={"Accept": "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"},
    )
    assert agg.body["kind"] == "APIGroupDiscoveryList"
    assert "as=APIGroupDiscoveryList" in agg.headers["Content-Type"]
    idx = api.ok(api.get("/openapi/v3"))
    assert "api/v1" in idx["paths"] and "apis/discovery.k8s.io/v1" in idx["paths"]
    doc = api.ok(api.get(idx["paths"]["api/v1"]["serverRelativeURL"]))
    assert "io.k8s.api.core.v1.Service" in doc["components"]["schemas"]
    assert api.ok(api.get("/openapi/v2"))["swagger"] == "2.0"


def test_table_output_for_kubectl(api: Api, ns: str) -> None:
    api.ok(
        api.post(
            f"/api/v1/namespaces/{ns}/services",
            service(
                "web",
                {"app": "web"},
                [{"port": 80, "name": "h"}, {"port": 53, "protocol": "UDP", "name": "d"}],
            ),
        )
    )
    t = api.ok(
        api.get(
            f"/api/v1/namespaces/{ns}/services",
            headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"},
        )
    )
    assert t["kind"] == "Table"
    assert [c["name"] for c in t["columnDefinitions"]][:6] == [
        "Name",
        "Type",
        "Cluster-IP",
        "External-IP",
        "Port(s)",
        "Age",
    ]
    cells = t["rows"][0]["cells"]
    assert cells[0] == "web" and cells[1] == "ClusterIP" and cells[4] == "80/TCP,53/UDP"
    assert t["rows"][0]["object"]["kind"] == "PartialObjectMetadata"


def test_protobuf_preferring_client_gets_json_and_protobuf_only_gets_406(api: Api) -> None:
    r = api.get(
        "/api/v1/namespaces",
        headers={"Accept": "application/vnd.kubernetes.protobuf,application/json"},
    )
    assert r.status == 200 and r.body["kind"] == "NamespaceList"
    assert r.headers["Content-Type"].startswith("application/json")
    r = api.get("/api/v1/namespaces", headers={"Accept": "application/vnd.kubernetes.protobuf"})
    assert r.status == 406 and r.reason == "NotAcceptable"


def test_yaml_body_accepted(api: Api, ns: str) -> None:
    doc = b"apiVersion: v1\nkind: Service\nmetadata:\n  name: y\nspec:\n  ports:\n  - port: 8080\n"
    out = api.ok(
        api.request("POST", f"/api/v1/namespaces/{ns}/services", raw=doc, ctype="application/yaml")
    )
    assert out["spec"]["ports"][0]["targetPort"] == 8080


def test_metadata_only_clients_get_partial_object_metadata(api: Api, ns: str) -> None:
    api.ok(api.post(f"/api/v1/namespaces/{ns}/pods", pod("a", {"app": "x"})))
    accept = {"Accept": "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"}
    lst = api.ok(api.get(f"/api/v1/namespaces/{ns}/pods", headers=accept))
    assert lst["kind"] == "PartialObjectMetadataList"
    assert lst["items"][0]["kind"] == "PartialObjectMetadata"
    assert lst["items"][0]["metadata"]["labels"] == {"app": "x"} and "spec" not in lst["items"][0]
    one = api.ok(
        api.get(
            f"/api/v1/namespaces/{ns}/pods/a",
            headers={"Accept": "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"},
        )
    )
    assert one["kind"] == "PartialObjectMetadata" and one["metadata"]["name"] == "a"
