"""kube-proxy runner and config: durations, change tracking into the two maps (no network)."""

from __future__ import annotations

import pytest

from kubeproxy.config import ProxyConfig, parse_duration, parse_hostport
from kubeproxy.runner import Runner


def test_durations_and_addresses():
    assert parse_duration("0s") == 0.0
    assert parse_duration("100ms") == pytest.approx(0.1)
    assert (
        parse_duration("30s") == 30.0
        and parse_duration("5m") == 300.0
        and parse_duration("2") == 2.0
    )
    with pytest.raises(ValueError):
        parse_duration("fast")
    assert parse_hostport("127.0.0.1:10249") == ("127.0.0.1", 10249)
    assert parse_hostport(":10256") == ("0.0.0.0", 10256)


class FakeProxier:
    def __init__(self):
        self.calls = []

    async def start(self):
        pass

    async def sync(self, services, endpoints):
        self.calls.append((services, endpoints))

    async def cleanup(self):
        pass


def service(name, ports, ns="default"):
    return {
        "metadata": {"name": name, "namespace": ns, "resourceVersion": "1"},
        "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.10", "ports": ports},
    }


def eslice(name, svc, ips, port=8080, ns="default"):
    return {
        "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": True}} for ip in ips],
    }


async def test_events_fold_into_maps_and_untouched_entries_keep_identity():
    p = FakeProxier()
    r = Runner(ProxyConfig(hostname_override="n1"), client=None, proxier=p)
    r.on_service("ADDED", service("a", [{"name": "http", "port": 80, "targetPort": 8080}]), None)
    r.on_service("ADDED", service("b", [{"name": "http", "port": 80, "targetPort": 8080}]), None)
    r.on_slice("ADDED", eslice("a-1", "a", ["10.244.1.2"]), None)
    r.on_slice("ADDED", eslice("a-2", "a", ["10.244.2.2"]), None)
    r.on_slice("ADDED", eslice("b-1", "b", ["10.244.1.3"]), None)
    res = await r.sync_once()
    assert res.ok and res.service_ports == 2 and res.endpoints == 3
    services, endpoints = p.calls[-1]
    (a,) = [s for s in services if s.name == "a"]
    (b,) = [s for s in services if s.name == "b"]
    assert [e.ip for e in endpoints[a]] == ["10.244.1.2", "10.244.2.2"]
    b_eps = endpoints[b]
    r.on_slice("DELETED", None, eslice("a-2", "a", ["10.244.2.2"]))
    await r.sync_once()
    services, endpoints = p.calls[-1]
    assert [e.ip for e in endpoints[a]] == ["10.244.1.2"]
    assert endpoints[b] is b_eps  # untouched service: same object (renderer cache hit)
    r.on_service("DELETED", None, service("a", []))
    await r.sync_once()
    services, endpoints = p.calls[-1]
    assert a not in services and b in services  # (a's slice outlives it until GC; unused)
