"""The iptables proxier's incremental bookkeeping equals a from-scratch computation.

A partial sync keeps the wanted nat chains up to date from the renderer's ``changed`` and
``previous`` and looks at the runner's ``changed`` service ports only for the render, the
stale-conntrack diff and the endpoint count, on maps it must not keep (the caller edits
them after the call). Random adds, removes, endpoint swaps, UDP ports, failed writes and a
new renderer: every ruleset must be a fresh renderer's, and every plan, deletion list and
count what the old O(services) code computed from copies of the whole maps (the reference
below is that code, written out).
"""

from __future__ import annotations

import random

import pytest

from kubecommon.model import Endpoint, ServicePortInfo, ServicePortName
from kubeproxy import conntrack
from kubeproxy.config import ProxyConfig
from kubeproxy.iptables.apply import WriteResult
from kubeproxy.iptables.proxier import IptablesProxier
from kubeproxy.iptables.render import Renderer


class FakeWriter:
    """Records (ruleset, plan) per write; fails when told to."""

    def __init__(self) -> None:
        self.writes: list = []
        self.fail_next = False

    async def write(self, rs, plan):
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("kernel said no")
        self.writes.append((rs, plan))
        return WriteResult("fake", len(plan.stale))


class Reference:
    """What the proxier computed before it was incremental, from the whole maps."""

    def __init__(self) -> None:
        self.applied_chains: set[str] = set()
        self.services: dict = {}
        self.endpoints: dict = {}

    def check(self, rs, plan, services, endpoints, deletions, stats, ctx) -> None:
        services, endpoints = dict(services), dict(endpoints)  # the caller edits its own
        # the renderer, told what changed, renders what a fresh one renders
        assert rs.restore_input() == Renderer().render(services, endpoints, ctx).restore_input()
        wanted = rs.nat_service_chains()
        assert set(plan.wanted) == wanted
        if not plan.full:
            assert set(plan.stale) == self.applied_chains - wanted
        assert deletions == conntrack.stale_entries(
            self.services, self.endpoints, services, endpoints
        )
        assert stats.endpoints == sum(len(v) for v in endpoints.values())
        self.applied_chains = wanted
        self.services, self.endpoints = services, endpoints


def _spn(i: int) -> ServicePortName:
    return ServicePortName("ns", f"s{i}", "p", "UDP" if i % 3 == 0 else "TCP")


def _info(spn: ServicePortName, i: int, node_port: int = 0) -> ServicePortInfo:
    return ServicePortInfo(
        spn, f"10.96.{i // 250}.{i % 250 + 1}", 53 if spn.protocol == "UDP" else 80,
        spn.protocol, 8080, node_port=node_port, type="NodePort" if node_port else "ClusterIP",
    )  # fmt: skip


def _eps(rng: random.Random) -> tuple[Endpoint, ...]:
    n = rng.choice([0, 1, 2, 3])
    ips = sorted({f"10.244.{rng.randrange(4)}.{rng.randrange(2, 6)}" for _ in range(n)})
    return tuple(Endpoint(ip, 8080, ready=rng.random() > 0.1, node_name="n1") for ip in ips)


@pytest.fixture
def deletions(monkeypatch):
    seen: list = []

    async def record(entries):
        seen.append(list(entries))

    monkeypatch.setattr(conntrack, "delete", record)
    return seen


@pytest.mark.parametrize("seed", range(6))
async def test_incremental_plans_and_conntrack_equal_a_from_scratch_computation(seed, deletions):
    rng = random.Random(seed)
    p = IptablesProxier(ProxyConfig(hostname_override="n1", cluster_cidr="10.244.0.0/16"))
    p.writer = w = FakeWriter()
    ref = Reference()
    services: dict = {}
    endpoints: dict = {}
    for i in range(40):
        s = _spn(i)
        services[s] = _info(s, i)
        endpoints[s] = _eps(rng)
    changed = {k: (None, None) for k in services}
    partial_syncs = 0

    def edit(k, service=None, eps=None) -> None:
        # the live maps change; changed keeps each key's entries as the last call saw them
        changed.setdefault(k, (services.get(k), endpoints.get(k)))
        for d, v in ((services, service), (endpoints, eps)):
            if v is None:
                d.pop(k, None)
            else:
                d[k] = v

    for step in range(60):
        if step and rng.random() < 0.08:  # the write fails: the next sync is a full one
            w.fail_next = True
            with pytest.raises(RuntimeError):
                await p.sync(services, endpoints, changed=changed)
            assert p._need_full
            failed, changed = changed, {}
            for k in failed:  # edited again: what counts is the entry the last success saw
                edit(k, services.get(k), _eps(rng))
        if step == 30:  # a fresh renderer between two partial syncs: rebuilt, not followed
            p.renderer = Renderer()
        before = len(deletions)
        await p.sync(services, endpoints, changed=changed)
        rs, plan = w.writes[-1]
        partial_syncs += not plan.full
        found = deletions[before] if len(deletions) > before else []
        ref.check(rs, plan, services, endpoints, found, p.last, p.context())
        # next state: a handful of adds, removes, endpoint swaps and service edits
        changed = {}
        for _ in range(rng.randrange(1, 5)):
            i = rng.randrange(60)
            s = _spn(i)
            op = rng.random()
            if op < 0.2:
                edit(s)
            elif op < 0.35:
                edit(s, _info(s, i, node_port=30000 + i), endpoints.get(s))
            elif op < 0.45:  # endpoints without a service (a slice that outlived it)
                edit(s, None, _eps(rng))
            else:
                edit(s, services.get(s) or _info(s, i), _eps(rng))
    assert partial_syncs > 30


async def test_without_changed_the_proxier_keeps_the_maps_and_compares_every_entry(deletions):
    u = _spn(0)
    p = IptablesProxier(ProxyConfig(hostname_override="n1"))
    p.writer = FakeWriter()
    a, b = Endpoint("10.244.0.2", 8080), Endpoint("10.244.0.3", 8080)
    await p.sync({u: _info(u, 0)}, {u: (a, b)})
    await p.sync({u: _info(u, 0)}, {u: (b,)})
    assert deletions[-1] == [conntrack.Deletion("UDP", dst="10.96.0.1", nat="10.244.0.2")]
    assert p.last.endpoints == 1
    # a caller that starts saying what changed: the kept maps are the truth for the
    # entries before; after a failed write the next call's changed adds to what is pending
    p.writer.fail_next = True
    with pytest.raises(RuntimeError):
        await p.sync({u: _info(u, 0)}, {u: (a,)}, changed={u: (None, None)})
    await p.sync({u: _info(u, 0)}, {u: (a,)}, changed={})
    assert deletions[-1] == [conntrack.Deletion("UDP", dst="10.96.0.1", nat="10.244.0.3")]
    assert p.last.endpoints == 1
