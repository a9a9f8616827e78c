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


class ChangedProxier(FakeProxier):
    accepts_changed = True

    async def sync(self, services, endpoints, changed):
        # the live maps: only valid during the call, so the test keeps copies
        self.calls.append((dict(services), dict(endpoints), dict(changed)))


@pytest.mark.parametrize("seed", range(5))
async def test_incremental_maps_and_changed_equal_a_from_scratch_fold(seed):
    import random

    from kubecommon.model import endpoints_map, service_port_map

    rng = random.Random(seed)
    p = ChangedProxier()
    r = Runner(ProxyConfig(hostname_override="n1"), client=None, proxier=p)
    svcs: dict[str, dict] = {}
    slices: dict[str, dict] = {}
    prev_s: dict = {}
    prev_e: dict = {}
    for _ in range(40):
        for _ in range(rng.randrange(1, 6)):
            name = f"s{rng.randrange(6)}"
            op = rng.random()
            if op < 0.3:
                ports = [
                    {"name": n, "port": 80 + k, "targetPort": 8080}
                    for k, n in enumerate(["http", "dns"][: rng.randrange(1, 3)])
                ]
                old = svcs.get(name)
                svcs[name] = service(name, ports)
                r.on_service("MODIFIED" if old else "ADDED", svcs[name], old)
            elif op < 0.4 and name in svcs:
                r.on_service("DELETED", None, svcs.pop(name))
            elif op < 0.85:
                sname = f"{name}-{rng.randrange(2)}"
                ips = [
                    f"10.244.{rng.randrange(3)}.{rng.randrange(2, 5)}"
                    for _ in range(rng.randrange(0, 3))
                ]
                old = slices.get(sname)
                slices[sname] = eslice(sname, name, ips)
                r.on_slice("MODIFIED" if old else "ADDED", slices[sname], old)
            else:
                sname = f"{name}-{rng.randrange(2)}"
                if sname in slices:
                    r.on_slice("DELETED", None, slices.pop(sname))
        res = await r.sync_once()
        services, endpoints, changed = p.calls[-1]
        assert services == service_port_map(svcs.values())
        assert endpoints == endpoints_map(slices.values())
        assert res.endpoints == sum(len(endpoints.get(s, ())) for s in services)
        keys = {k: k for k in services}
        assert all(keys.get(k, k) is k for k in endpoints)  # one key object per port
        for d, prev, i in ((services, prev_s, 0), (endpoints, prev_e, 1)):
            for k in set(d) | set(prev):
                if d.get(k) is not prev.get(k):
                    assert k in changed, k
                if k in changed:
                    assert changed[k][i] is prev.get(k)
        prev_s, prev_e = services, endpoints
