"""Service semantics and the in-stub controllers: ClusterIP/NodePort allocation, defaults,
Endpoints and EndpointSlices from pods, node IPAM."""

from __future__ import annotations

import ipaddress

import pytest

from apiserver_stub.testing import run_apiserver

from .kube import Api, make_running, pod, service


def test_service_defaults(api: Api, ns: str) -> None:
    s = api.ok(
        api.post(
            f"/api/v1/namespaces/{ns}/services", service("web", {"app": "web"}, [{"port": 80}])
        )
    )
    spec = s["spec"]
    assert ipaddress.ip_address(spec["clusterIP"]) in ipaddress.ip_network("10.96.0.0/12")
    assert spec["clusterIPs"] == [spec["clusterIP"]]
    assert spec["ports"] == [{"port": 80, "protocol": "TCP", "targetPort": 80}]
    assert spec["type"] == "ClusterIP" and spec["sessionAffinity"] == "None"
    assert spec["internalTrafficPolicy"] == "Cluster"
    assert spec["ipFamilies"] == ["IPv4"] and spec["ipFamilyPolicy"] == "SingleStack"
    a = api.ok(
        api.post(
            f"/api/v1/namespaces/{ns}/services",
            service("aff", {"app": "web"}, sessionAffinity="ClientIP", type="NodePort"),
        )
    )
    assert a["spec"]["sessionAffinityConfig"] == {"clientIP": {"timeoutSeconds": 10800}}
    assert a["spec"]["externalTrafficPolicy"] == "Cluster"


def test_requested_cluster_ip_honoured_then_refused_when_taken_or_out_of_range(
    api: Api, ns: str
) -> None:
    s = api.ok(
        api.post(
            f"/api/v1/namespaces/{ns}/services", service("a", {"x": "y"}, clusterIP="10.96.100.100")
        )
    )
    assert s["spec"]["clusterIP"] == "10.96.100.100"
    r = api.post(
        f"/api/v1/namespaces/{ns}/services", service("b", {"x": "y"}, clusterIP="10.96.100.100")
    )
    assert r.status == 422 and r.reason == "Invalid"
    assert "already allocated" in r.body["message"]
    assert r.body["details"]["causes"][0]["field"] == "spec.clusterIPs"
    r = api.post(
        f"/api/v1/namespaces/{ns}/services", service("c", {"x": "y"}, clusterIP="192.168.1.1")
    )
    assert r.status == 422 and "not in the valid range" in r.body["message"]
    assert api.get(f"/api/v1/namespaces/{ns}/services/b").status == 404
    # released on delete: the address can be taken again
    api.ok(api.delete(f"/api/v1/namespaces/{ns}/services/a"))
    api.ok(
        api.post(
            f"/api/v1/namespaces/{ns}/services", service("d", {"x": "y"}, clusterIP="10.96.100.100")
        )
    )


def test_headless_and_external_name(api: Api, ns: str) -> None:
    h = api.ok(
        api.post(f"/api/v1/namespaces/{ns}/services", service("h", {"app": "h"}, clusterIP="None"))
    )
    assert h["spec"]["clusterIP"] == "None"
    e = api.ok(
        api.post(
            f"/api/v1/namespaces/{ns}/services",
            service("e", None, [], type="ExternalName", externalName="db.example.org"),
        )
    )
    assert "clusterIP" not in e["spec"] and e["spec"]["externalName"] == "db.example.org"


def test_node_ports_allocated_requested_refused_and_released(api: Api, ns: str) -> None:
    s = api.ok(
        api.post(
            f"/api/v1/namespaces/{ns}/services",
            service(
                "np",
                {"a": "b"},
                [{"port": 80, "name": "a"}, {"port": 81, "name": "b", "nodePort": 31234}],
                type="NodePort",
            ),
        )
    )
    ports = [p["nodePort"] for p in s["spec"]["ports"]]
    assert 30000 <= ports[0] <= 32767 and ports[1] == 31234
    lb = api.ok(
        api.post(
            f"/api/v1/namespaces/{ns}/services", service("lb", {"a": "b"}, type="LoadBalancer")
        )
    )
    assert 30000 <= lb["spec"]["ports"][0]["nodePort"] <= 32767
    r = api.post(
        f"/api/v1/namespaces/{ns}/services",
        service("dup", {"a": "b"}, [{"port": 80, "nodePort": 31234}], type="NodePort"),
    )
    assert r.status == 422 and r.body["details"]["causes"][0]["field"] == "spec.ports[0].nodePort"
    assert "already allocated" in r.body["message"]
    r = api.post(
        f"/api/v1/namespaces/{ns}/services",
        service("out", {"a": "b"}, [{"port": 80, "nodePort": 80}], type="NodePort"),
    )
    assert r.status == 422 and "30000-32767" in r.body["message"]
    r = api.post(
        f"/api/v1/namespaces/{ns}/services",
        service("cip", {"a": "b"}, [{"port": 80, "nodePort": 31000}]),
    )
    assert r.status == 422 and "Forbidden" in r.body["message"]
    api.ok(api.delete(f"/api/v1/namespaces/{ns}/services/np"))
    api.ok(
        api.post(
            f"/api/v1/namespaces/{ns}/services",
            service("again", {"a": "b"}, [{"port": 80, "nodePort": 31234}], type="NodePort"),
        )
    )


def test_changing_type_to_nodeport_allocates_and_back_releases(api: Api, ns: str) -> None:
    api.ok(api.post(f"/api/v1/namespaces/{ns}/services", service("t", {"a": "b"})))
    s = api.ok(api.patch(f"/api/v1/namespaces/{ns}/services/t", {"spec": {"type": "NodePort"}}))
    np = s["spec"]["ports"][0]["nodePort"]
    assert np
    s = api.ok(
        api.patch(
            f"/api/v1/namespaces/{ns}/services/t",
            {"spec": {"type": "ClusterIP", "externalTrafficPolicy": None}},
        )
    )
    assert "nodePort" not in s["spec"]["ports"][0]
    api.ok(
        api.post(
            f"/api/v1/namespaces/{ns}/services",
            service("u", {"a": "b"}, [{"port": 80, "nodePort": np}], type="NodePort"),
        )
    )


def _endpoints(api: Api, ns: str, name: str) -> dict:
    return api.ok(api.get(f"/api/v1/namespaces/{ns}/endpoints/{name}"))


def _slices(api: Api, ns: str, svc: str) -> list[dict]:
    return api.ok(
        api.get(
            f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices?labelSelector=kubernetes.io/service-name%3D{svc}"
        )
    )["items"]


def test_endpoints_follow_pod_readiness_and_named_ports(api: Api, ns: str) -> None:
    api.ok(
        api.post(
            f"/api/v1/namespaces/{ns}/services",
            service("web", {"app": "web"}, [{"name": "http", "port": 80, "targetPort": "http"}]),
        )
    )
    for i, port in enumerate((8080, 9090)):
        api.ok(
            api.post(
                f"/api/v1/namespaces/{ns}/pods",
                pod(
                    f"web-{i}",
                    {"app": "web"},
                    [{"name": "http", "containerPort": port}],
                    nodeName="n1",
                ),
            )
        )
    api.ok(api.post(f"/api/v1/namespaces/{ns}/pods", pod("other", {"app": "other"}, nodeName="n1")))
    make_running(api, ns, "web-0", "10.244.0.10")
    make_running(api, ns, "web-1", "10.244.0.11", ready=False)
    make_running(api, ns, "other", "10.244.0.12")

    def settled() -> dict | None:
        ep = _endpoints(api, ns, "web")
        subsets = ep.get("subsets") or []
        return ep if len(subsets) == 2 else None

    ep = api.wait_for(settled)
    by_port = {s["ports"][0]["port"]: s for s in ep["subsets"]}
    assert by_port[8080]["addresses"][0]["ip"] == "10.244.0.10"
    assert by_port[8080]["addresses"][0]["targetRef"]["name"] == "web-0"
    assert by_port[8080]["addresses"][0]["nodeName"] == "n1"
    assert by_port[9090]["notReadyAddresses"][0]["ip"] == "10.244.0.11"
    slices = api.wait_for(
        lambda: (
            [s for s in _slices(api, ns, "web") if s.get("endpoints")]
            if len([s for s in _slices(api, ns, "web") if s.get("endpoints")]) == 2
            else None
        )
    )
    for s in slices:
        assert (
            s["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"]
            == "endpointslice-controller.k8s.io"
        )
        assert s["metadata"]["ownerReferences"][0]["kind"] == "Service"
        assert s["addressType"] == "IPv4"
    conds = {s["endpoints"][0]["addresses"][0]: s["endpoints"][0]["conditions"] for s in slices}
    assert conds["10.244.0.10"] == {"ready": True, "serving": True, "terminating": False}
    assert conds["10.244.0.11"] == {"ready": False, "serving": False, "terminating": False}
    # pod becomes ready -> moves to addresses; pod deleted -> gone
    make_running(api, ns, "web-1", "10.244.0.11", ready=True)
    api.wait_for(
        lambda: all(
            "addresses" in s and "notReadyAddresses" not in s
            for s in _endpoints(api, ns, "web").get("subsets", [])
        )
    )
    api.ok(api.delete(f"/api/v1/namespaces/{ns}/pods/web-0"))
    api.wait_for(
        lambda: (
            [
                a["ip"]
                for s in _endpoints(api, ns, "web").get("subsets", [])
                for a in s.get("addresses", [])
            ]
            == ["10.244.0.11"]
        )
    )
    api.wait_for(
        lambda: (
            sorted(
                e["addresses"][0] for s in _slices(api, ns, "web") for e in s.get("endpoints") or []
            )
            == ["10.244.0.11"]
        )
    )
    # service deleted -> its endpoints and slices go too
    api.ok(api.delete(f"/api/v1/namespaces/{ns}/services/web"))
    api.wait_for(lambda: api.get(f"/api/v1/namespaces/{ns}/endpoints/web").status == 404)
    api.wait_for(lambda: _slices(api, ns, "web") == [])


def test_publish_not_ready_and_hostname_subdomain(api: Api, ns: str) -> None:
    api.ok(
        api.post(
            f"/api/v1/namespaces/{ns}/services",
            service(
                "db",
                {"app": "db"},
                [{"port": 5432}],
                clusterIP="None",
                publishNotReadyAddresses=True,
            ),
        )
    )
    api.ok(
        api.post(
            f"/api/v1/namespaces/{ns}/pods",
            pod("db-0", {"app": "db"}, hostname="db-0", subdomain="db"),
        )
    )
    make_running(api, ns, "db-0", "10.244.1.5", ready=False)
    ep = api.wait_for(lambda: (_endpoints(api, ns, "db").get("subsets") or [None])[0])
    assert ep["addresses"] == [
        {"ip": "10.244.1.5", "hostname": "db-0", "targetRef": ep["addresses"][0]["targetRef"]}
    ]
    s = api.wait_for(lambda: [x for x in _slices(api, ns, "db") if x.get("endpoints")])
    assert s[0]["endpoints"][0]["hostname"] == "db-0"
    assert s[0]["endpoints"][0]["conditions"]["ready"] is True
    assert s[0]["metadata"]["labels"]["service.kubernetes.io/headless"] == ""


def test_service_without_selector_keeps_manual_endpoints(api: Api, ns: str) -> None:
    api.ok(api.post(f"/api/v1/namespaces/{ns}/services", service("ext", None, [{"port": 5432}])))
    body = {
        "metadata": {"name": "ext"},
        "subsets": [{"addresses": [{"ip": "192.0.2.10"}], "ports": [{"port": 5432}]}],
    }
    api.ok(api.post(f"/api/v1/namespaces/{ns}/endpoints", body))
    api.ok(api.patch(f"/api/v1/namespaces/{ns}/services/ext", {"metadata": {"labels": {"x": "y"}}}))
    assert _endpoints(api, ns, "ext")["subsets"][0]["addresses"][0]["ip"] == "192.0.2.10"


def test_node_ipam_assigns_distinct_pod_cidrs_and_releases_them(api: Api) -> None:
    for n in ("ipam-a", "ipam-b"):
        api.ok(api.post("/api/v1/nodes", {"metadata": {"name": n}}))

    def both() -> list[str] | None:
        got = [
            api.ok(api.get(f"/api/v1/nodes/{n}"))["spec"].get("podCIDR")
            for n in ("ipam-a", "ipam-b")
        ]
        return got if all(got) else None

    cidrs = api.wait_for(both)
    nets = [ipaddress.ip_network(c) for c in cidrs]
    assert all(
        n.prefixlen == 24 and n.subnet_of(ipaddress.ip_network("10.244.0.0/16")) for n in nets
    )
    assert nets[0] != nets[1]
    node = api.ok(api.get("/api/v1/nodes/ipam-a"))
    assert node["spec"]["podCIDRs"] == [node["spec"]["podCIDR"]]
    api.ok(api.delete("/api/v1/nodes/ipam-a"))
    api.ok(api.post("/api/v1/nodes", {"metadata": {"name": "ipam-c"}}))
    got = api.wait_for(lambda: api.ok(api.get("/api/v1/nodes/ipam-c"))["spec"].get("podCIDR"))
    assert got == cidrs[0]  # the released range is reused


@pytest.fixture(scope="module")
def graceful() -> Api:
    with run_apiserver(extra_args=["--pod-termination-seconds", "1"]) as url:
        yield Api(url)


def test_terminating_pod_is_serving_but_not_ready_in_slices(graceful: Api) -> None:
    api = graceful
    ns = "default"
    api.ok(api.post(f"/api/v1/namespaces/{ns}/services", service("g", {"app": "g"})))
    api.ok(api.post(f"/api/v1/namespaces/{ns}/pods", pod("g-0", {"app": "g"}, nodeName="n1")))
    make_running(api, ns, "g-0", "10.244.3.3")
    api.wait_for(lambda: any(s.get("endpoints") for s in _slices(api, ns, "g")))
    out = api.ok(api.delete(f"/api/v1/namespaces/{ns}/pods/g-0"))
    assert out["metadata"]["deletionTimestamp"]
    eps = api.wait_for(
        lambda: [
            e
            for s in _slices(api, ns, "g")
            for e in s.get("endpoints") or []
            if e["conditions"]["terminating"]
        ]
    )
    assert eps[0]["conditions"] == {"ready": False, "serving": True, "terminating": True}
    assert not _endpoints(api, ns, "g").get("subsets")  # Endpoints drop terminating pods
    api.wait_for(lambda: api.get(f"/api/v1/namespaces/{ns}/pods/g-0").status == 404, timeout=5)
