"""ClusterIP, NodePort and podCIDR allocation (apiserver_stub.allocators)."""

from __future__ import annotations

import ipaddress

import pytest

from apiserver_stub.allocators import (
    IPAllocator,
    PortAllocator,
    ServiceAllocations,
    SubnetAllocator,
)
from apiserver_stub.status import ApiError


def svc(name: str = "s", **spec) -> dict:
    return {"metadata": {"name": name}, "spec": {"ports": [{"port": 80}], **spec}}


def test_ip_allocator_skips_reserved_first_and_network_addresses() -> None:
    a = IPAllocator.parse("10.0.0.0/29")  # usable .1-.6, .1 reserved for the kubernetes service
    a.take(a.first_ip())
    got = [a.next_free() for _ in range(5)]
    for ip in got:
        a.take(ip)
    assert got == ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
    assert a.next_free() is None
    assert not a.contains("10.0.0.0") and not a.contains("10.0.0.7") and not a.contains("10.0.1.1")


def test_service_gets_ip_and_requested_ip_is_honoured_or_refused() -> None:
    s = ServiceAllocations("10.96.0.0/12")
    a = svc(clusterIP="10.96.5.5")
    s.allocate(a, None, False)
    assert a["spec"]["clusterIPs"] == ["10.96.5.5"]
    b = svc()
    s.allocate(b, None, False)
    assert ipaddress.ip_address(b["spec"]["clusterIP"]) in ipaddress.ip_network("10.96.0.0/12")
    with pytest.raises(ApiError) as e:
        s.allocate(svc(clusterIP="10.96.5.5"), None, False)
    assert e.value.code == 422 and "already allocated" in e.value.message
    with pytest.raises(ApiError) as e:
        s.allocate(svc(clusterIP="10.0.0.1"), None, False)
    assert "not in the valid range" in e.value.message
    s.release(a)
    s.allocate(svc(clusterIP="10.96.5.5"), None, False)


def test_node_ports_for_nodeport_and_loadbalancer_only() -> None:
    s = ServiceAllocations("10.96.0.0/12")
    c = svc(type="ClusterIP")
    s.allocate(c, None, False)
    assert "nodePort" not in c["spec"]["ports"][0]
    n = svc(type="NodePort")
    s.allocate(n, None, False)
    assert 30000 <= n["spec"]["ports"][0]["nodePort"] <= 32767
    lb = svc(type="LoadBalancer")
    s.allocate(lb, None, False)
    assert lb["spec"]["ports"][0]["nodePort"] != n["spec"]["ports"][0]["nodePort"]


def test_rejected_service_takes_nothing() -> None:
    s = ServiceAllocations("10.96.0.0/12")
    s.allocate(svc(clusterIP="10.96.0.50"), None, False)
    bad = {
        "metadata": {"name": "b"},
        "spec": {
            "type": "NodePort",
            "clusterIP": "10.96.0.50",
            "ports": [{"port": 80, "nodePort": 30500}],
        },
    }
    with pytest.raises(ApiError):
        s.allocate(bad, None, False)
    assert 30500 not in s.ports.taken
    ok = {
        "metadata": {"name": "c"},
        "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30500}]},
    }
    s.allocate(ok, None, False)


def test_node_port_range_and_dry_run() -> None:
    s = ServiceAllocations("10.96.0.0/12", (30000, 30001))
    with pytest.raises(ApiError):
        s.allocate(
            {
                "metadata": {"name": "x"},
                "spec": {"type": "NodePort", "ports": [{"port": 1, "nodePort": 30002}]},
            },
            None,
            False,
        )
    d = svc(type="NodePort")
    s.allocate(d, None, True)
    assert d["spec"]["ports"][0]["nodePort"] and not s.ports.taken and not s.ips.taken
    s.allocate(svc(type="NodePort"), None, False)
    s.allocate(svc(type="NodePort"), None, False)
    with pytest.raises(ApiError) as e:
        s.allocate(svc(type="NodePort"), None, False)
    assert e.value.code == 500  # range full


def test_port_allocator_wraps_around() -> None:
    p = PortAllocator(1, 3)
    assert [p.next_free(set()) for _ in range(3)] == [1, 2, 3]
    p.taken = {1, 3}
    assert p.next_free(set()) == 2


def test_subnet_allocator_gives_distinct_24s_and_reuses_released() -> None:
    a = SubnetAllocator(ipaddress.ip_network("10.244.0.0/16"), 24)
    first, second = a.allocate(), a.allocate()
    assert (first, second) == ("10.244.0.0/24", "10.244.1.0/24")
    assert a.take("10.244.5.0/24") and not a.take("10.244.5.0/24")
    assert not a.take("10.0.0.0/24")
    a.release(first)
    assert a.allocate() == "10.244.0.0/24"
    tiny = SubnetAllocator(ipaddress.ip_network("10.0.0.0/23"), 24)
    assert tiny.allocate() and tiny.allocate() and tiny.allocate() is None
