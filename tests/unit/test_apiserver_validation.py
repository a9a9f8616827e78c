"""Validation and defaulting (apiserver_stub.validation, apiserver_stub.defaults)."""

from __future__ import annotations

import pytest

from apiserver_stub import defaults
from apiserver_stub.resources import ENDPOINTS, ENDPOINTSLICES, NAMESPACES, PODS, SERVICES
from apiserver_stub.validation import is_dns1035, is_label, is_port_name, is_subdomain, validate


def fields(res, obj, old=None) -> list[str]:
    defaults.apply(res, obj)
    return [c.field for c in validate(res, obj, old)]


def svc(name="web", **spec) -> dict:
    return {
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {"ports": [{"port": 80}], **spec},
    }


@pytest.mark.parametrize(
    ("name", "label", "sub", "dns1035"),
    [
        ("web", True, True, True),
        ("1abc", True, True, False),
        ("a.b", False, True, False),
        ("A", False, False, False),
        ("-a", False, False, False),
        ("a" * 63, True, True, True),
        ("a" * 64, False, True, False),
    ],
)
def test_dns_names(name: str, label: bool, sub: bool, dns1035: bool) -> None:
    assert (is_label(name), is_subdomain(name), is_dns1035(name)) == (label, sub, dns1035)


def test_port_names() -> None:
    assert is_port_name("http") and is_port_name("h2c") and not is_port_name("80")
    assert not is_port_name("a--b") and not is_port_name("x" * 16) and not is_port_name("Http")


def test_valid_service_has_no_causes_and_gets_defaults() -> None:
    s = svc(selector={"app": "web"})
    assert fields(SERVICES, s) == []
    assert s["spec"]["ports"][0] == {"port": 80, "protocol": "TCP", "targetPort": 80}
    assert (
        s["spec"]["sessionAffinity"] == "None" and s["spec"]["internalTrafficPolicy"] == "Cluster"
    )
    assert "externalTrafficPolicy" not in s["spec"]
    np = svc(type="NodePort")
    defaults.apply(SERVICES, np)
    assert np["spec"]["externalTrafficPolicy"] == "Cluster"


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"ports": [{"port": 0}]}, "spec.ports[0].port"),
        ({"ports": [{"port": 65536}]}, "spec.ports[0].port"),
        ({"ports": [{"port": 80, "protocol": "HTTP"}]}, "spec.ports[0].protocol"),
        ({"ports": [{"port": 80, "name": "a"}, {"port": 81, "name": "a"}]}, "spec.ports[1].name"),
        ({"ports": [{"port": 80}, {"port": 81}]}, "spec.ports[0].name"),
        ({"ports": [{"port": 80, "name": "a"}, {"port": 80, "name": "b"}]}, "spec.ports[1]"),
        ({"ports": [{"port": 80, "targetPort": -1}]}, "spec.ports[0].targetPort"),
        ({"ports": [{"port": 80, "targetPort": "no_way"}]}, "spec.ports[0].targetPort"),
        ({"ports": []}, "spec.ports"),
        ({"type": "Bogus"}, "spec.type"),
        ({"clusterIP": "300.1.1.1"}, "spec.clusterIP"),
        ({"type": "ExternalName", "ports": []}, "spec.externalName"),
        ({"selector": {"app": "bad value!"}}, "spec.selector"),
        ({"sessionAffinity": "Sticky"}, "spec.sessionAffinity"),
        ({"externalTrafficPolicy": "Local"}, "spec.externalTrafficPolicy"),
        ({"ipFamilies": ["IPv6"]}, "spec.ipFamilies[0]"),
    ],
)
def test_invalid_services(spec: dict, field: str) -> None:
    s = {"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}], **spec}}
    assert field in fields(SERVICES, s)


def test_headless_service_may_omit_ports_and_names_are_dns1035() -> None:
    assert fields(SERVICES, svc(clusterIP="None", ports=[])) == []
    assert fields(SERVICES, svc(name="9lives")) == ["metadata.name"]
    assert fields(NAMESPACES, {"metadata": {"name": "a.b"}}) == ["metadata.name"]
    assert (
        fields(
            PODS,
            {"metadata": {"name": "a.b"}, "spec": {"containers": [{"name": "c", "image": "i"}]}},
        )
        == []
    )


def test_pod_validation() -> None:
    ok = {
        "metadata": {"name": "p"},
        "spec": {
            "containers": [
                {"name": "c", "image": "i", "ports": [{"containerPort": 80, "name": "http"}]}
            ]
        },
    }
    assert fields(PODS, ok) == []
    assert (
        ok["spec"]["restartPolicy"] == "Always"
        and ok["spec"]["containers"][0]["ports"][0]["protocol"] == "TCP"
    )
    bad = {
        "metadata": {"name": "p"},
        "spec": {
            "containers": [
                {"name": "c", "ports": [{"containerPort": 0}]},
                {
                    "name": "c",
                    "image": "i",
                    "ports": [{"containerPort": 1, "name": "x"}, {"containerPort": 2, "name": "x"}],
                },
            ]
        },
    }
    got = fields(PODS, bad)
    assert {
        "spec.containers[0].image",
        "spec.containers[0].ports[0].containerPort",
        "spec.containers[1].name",
        "spec.containers[1].ports[1].name",
    } <= set(got)
    assert fields(PODS, {"metadata": {"name": "p"}, "spec": {}}) == ["spec.containers"]


def test_pod_update_may_change_image_only() -> None:
    old = {
        "metadata": {"name": "p"},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i:1"}]},
    }
    defaults.apply(PODS, old)
    new = {
        "metadata": {"name": "p"},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i:2"}]},
    }
    assert fields(PODS, new, old) == []
    moved = {
        "metadata": {"name": "p"},
        "spec": {"nodeName": "n2", "containers": [{"name": "c", "image": "i:1"}]},
    }
    assert fields(PODS, moved, old) == ["spec.nodeName"]


def test_endpoints_and_slices() -> None:
    ep = {
        "metadata": {"name": "e"},
        "subsets": [{"addresses": [{"ip": "nope"}], "ports": [{"port": 0}]}],
    }
    assert fields(ENDPOINTS, ep) == ["subsets[0].addresses[0].ip", "subsets[0].ports[0].port"]
    sl = {
        "metadata": {"name": "s"},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["fd00::1"]}],
        "ports": [{"port": 80}],
    }
    assert fields(ENDPOINTSLICES, sl) == ["endpoints[0].addresses[0]"]
    assert fields(ENDPOINTSLICES, {"metadata": {"name": "s"}, "endpoints": []}) == ["addressType"]
