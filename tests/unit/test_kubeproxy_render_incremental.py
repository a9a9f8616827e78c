"""The iptables renderer told what changed (``render(..., changed=)``) renders what a fresh
renderer renders.

Random sequences of adds, removes, endpoint swaps, same-count swaps, reorders, service
edits, equal-but-distinct entries, endpoints without a service, node-context changes and
endpoint totals that cross the large-cluster threshold; after every step the incremental
render must equal a fresh renderer's (every fragment, in order, every top-level text, the
chains, the restore text) and a memoised renderer's that compares every entry (``changed``
and ``previous``), and keep the previous top-level strings when their text is unchanged.
"""

from __future__ import annotations

import dataclasses
import random

import pytest

from kubecommon.model import Endpoint, ServicePortInfo, ServicePortName
from kubeproxy.iptables import render as render_mod
from kubeproxy.iptables.render import FILTER_CHAINS, NAT_CHAINS, NodeContext, Renderer, Ruleset

CONTEXTS = (
    NodeContext(node_name="n1", cluster_cidr="10.244.0.0/16"),
    NodeContext(node_name="n2", cluster_cidr="10.244.0.0/16"),
    NodeContext(node_name="n1", masquerade_all=True, nodeport_ips=("192.168.0.1", "127.0.0.1")),
    NodeContext(node_name="n1", localhost_nodeports=True, conntrack_tcp_liberal=True),
)
LARGE = 24  # the large-cluster threshold in these tests (crossed both ways at random)


@pytest.fixture(autouse=True)
def small_large_cluster_threshold(monkeypatch):
    monkeypatch.setattr(render_mod, "LARGE_CLUSTER_ENDPOINTS", LARGE)


def _spn(i: int) -> ServicePortName:
    # namespaces and names that sort otherwise than they are numbered; TCP, UDP, unnamed
    return ServicePortName(f"ns{i % 3}", f"s{(i * 7) % 23}", "" if i % 5 == 0 else f"p{i % 2}",
                           "UDP" if i % 4 == 0 else "TCP")  # fmt: skip


def _info(rng: random.Random, spn: ServicePortName, i: int) -> ServicePortInfo:
    kind = rng.choice(["plain", "plain", "plain", "nodeport", "etp-local", "itp-local",
                       "affinity", "external", "lb-hc"])  # fmt: skip
    kw: dict = {}
    if kind in ("nodeport", "etp-local", "lb-hc"):
        kw.update(type="NodePort", node_port=30000 + i)
    if kind == "etp-local":
        kw["external_local"] = True
    if kind == "itp-local":
        kw["internal_local"] = True
    if kind == "affinity":
        kw["session_affinity_timeout"] = 10800
    if kind == "external":
        kw["external_ips"] = ("192.168.9.9",)
    if kind == "lb-hc":
        kw.update(load_balancer_ips=("203.0.113.7",), external_local=True,
                  health_check_node_port=32000 + i)  # fmt: skip
    port = 53 if spn.protocol == "UDP" else 80
    return ServicePortInfo(spn, f"172.30.{i // 200}.{i % 200 + 1}", port, spn.protocol, 8080, **kw)


def _eps(rng: random.Random, n: int | None = None) -> tuple[Endpoint, ...]:
    n = rng.choice([0, 1, 2, 2, 3, 4]) if n is None else n
    ips = sorted({f"10.244.{rng.randrange(3)}.{rng.randrange(2, 9)}" for _ in range(n)})
    out = []
    for ip in ips:
        state = rng.random()
        ready = state > 0.25
        terminating = not ready and state > 0.1
        out.append(Endpoint(ip, 8080, ready=ready, serving=ready or terminating,
                            terminating=terminating, node_name=rng.choice(["n1", "n2"])))  # fmt: skip
    return tuple(out)


def _large(services: dict, endpoints: dict) -> bool:
    return sum(len(endpoints.get(k, ())) for k in services) > LARGE


def _same(rs: Ruleset, want: Ruleset) -> None:
    assert list(rs.services) == list(want.services)  # the sorted order
    for k, r in want.services.items():
        assert rs.services[k] == r, k
    assert list(rs.filter_top.items()) == list(want.filter_top.items())
    assert list(rs.nat_top.items()) == list(want.nat_top.items())
    assert rs.nat_service_chains() == want.nat_service_chains()
    assert rs.restore_input() == want.restore_input()


class Maps:
    """The two maps a caller edits, and the keys it says changed since the last render."""

    def __init__(self) -> None:
        self.services: dict = {}
        self.endpoints: dict = {}
        self.hint: set = set()

    def touch(self, k, svc=None, eps=None) -> None:
        self.hint.add(k)
        for d, v in ((self.services, svc), (self.endpoints, eps)):
            if v is None:
                d.pop(k, None)
            else:
                d[k] = v

    def reorder(self, rng: random.Random) -> None:
        """The same entries in another order (nothing changed: nothing in the hint)."""
        for attr in ("services", "endpoints"):
            items = list(getattr(self, attr).items())
            rng.shuffle(items)
            setattr(self, attr, dict(items))


def _edit(rng: random.Random, m: Maps) -> None:
    """A handful of random edits."""
    for _ in range(rng.randrange(1, 4)):
        i = rng.randrange(40)
        s = _spn(i)
        services, endpoints = m.services, m.endpoints
        op = rng.random()
        if op < 0.12:  # removed (its endpoints too, or not)
            m.touch(s, None, endpoints.get(s) if rng.random() < 0.3 else None)
        elif op < 0.26:  # added, or edited
            m.touch(s, _info(rng, s, i), _eps(rng))
        elif op < 0.32:  # the same count: one out, one in
            m.touch(rng.choice(list(services)) if services else s)
            m.touch(s, _info(rng, s, i), _eps(rng))
        elif op < 0.38:  # endpoints without a service
            m.touch(s, None, _eps(rng))
        elif op < 0.44 and s in services:  # equal entries, other objects: no change
            m.touch(s, dataclasses.replace(services[s]), tuple(endpoints.get(s, ())))
        elif op < 0.52 and s in services:  # as many endpoints, other ones
            m.touch(s, services[s], _eps(rng, len(endpoints.get(s, ()))))
        elif op < 0.58:
            m.reorder(rng)
        elif s in services:  # an endpoint swap (the count may change)
            m.touch(s, services[s], _eps(rng))
    if rng.random() < 0.1:  # a hint may name more than what changed
        m.hint.update(rng.sample(list(m.services), min(3, len(m.services))))


@pytest.mark.parametrize("seed", range(16))
def test_an_incremental_render_equals_a_fresh_one_after_every_step(seed):
    rng = random.Random(seed)
    inc, memo = Renderer(), Renderer()
    m = Maps()
    for i in range(rng.randrange(4, 14)):
        m.touch(_spn(i), _info(rng, _spn(i), i), _eps(rng))
    ctx = CONTEXTS[0]
    hint: set | None = None  # the first render: everything
    prev: Ruleset | None = None
    prev_text = ""
    prev_ctx, prev_large = None, None
    crossings = incremental = 0
    for _ in range(100):
        services, endpoints = m.services, m.endpoints
        rs = inc.render(services, endpoints, ctx, changed=hint)
        _same(rs, Renderer().render(services, endpoints, ctx))
        walked = memo.render(services, endpoints, ctx)
        assert rs.changed == walked.changed
        assert rs.previous == walked.previous
        assert rs.restore_input(only=rs.changed) == walked.restore_input(only=walked.changed)
        large = _large(services, endpoints)
        if prev is not None:
            assert prev.restore_input() == prev_text  # a Ruleset is a snapshot
            crossings += large != prev_large
            if ctx == prev_ctx and large == prev_large:
                incremental += 1
                for c in FILTER_CHAINS:
                    if rs.filter_top[c] == prev.filter_top[c]:  # the same string: compared
                        assert rs.filter_top[c] is prev.filter_top[c], c  # by identity
                for c in NAT_CHAINS:
                    if rs.nat_top[c] == prev.nat_top[c]:
                        assert rs.nat_top[c] is prev.nat_top[c], c
        prev, prev_text, prev_ctx, prev_large = rs, rs.restore_input(), ctx, large
        m.hint = set()
        _edit(rng, m)
        hint = m.hint
        if rng.random() < 0.05:  # another node context
            ctx = rng.choice(CONTEXTS)
    assert incremental > 50
    assert seed > 8 or crossings > 0, "no step crossed the large-cluster threshold"


def _big(n: int) -> tuple[dict, dict]:
    services, endpoints = {}, {}
    for i in range(n):
        s = ServicePortName("bench", f"s{i:05d}", "http", "TCP")
        services[s] = ServicePortInfo(s, f"10.96.{i // 250}.{i % 250 + 1}", 80, "TCP", 8080)
        endpoints[s] = (Endpoint(f"10.244.{i // 250}.{i % 250 + 2}", 8080),)
    return services, endpoints


def test_one_change_renders_one_service_port_and_keeps_the_top_level_strings(monkeypatch):
    services, endpoints = _big(300)
    r = Renderer()
    ctx = CONTEXTS[0]
    first = r.render(services, endpoints, ctx)
    calls = []
    real = render_mod.render_service

    def counted(*a, **kw):
        calls.append(a[0].name)
        return real(*a, **kw)

    monkeypatch.setattr(render_mod, "render_service", counted)
    s = next(iter(services))
    endpoints[s] = (Endpoint("10.250.0.9", 8080),)
    rs = r.render(services, endpoints, ctx, changed={s})
    assert calls == [s] and rs.changed == {s} and rs.previous == {s: first.services[s]}
    for c in NAT_CHAINS:
        assert rs.nat_top[c] is first.nat_top[c]
    # a service port added in the middle, one removed: still sorted, KUBE-SERVICES re-joined
    new = ServicePortName("bench", "s00150a", "http", "TCP")
    services[new] = ServicePortInfo(new, "10.96.99.1", 80, "TCP", 8080)
    endpoints[new] = (Endpoint("10.250.0.10", 8080),)
    gone = ServicePortName("bench", "s00007", "http", "TCP")
    del services[gone]
    rs = r.render(services, endpoints, ctx, changed={new, gone})
    assert calls[1:] == [new]
    _same(rs, Renderer().render(services, endpoints, ctx))
    assert rs.changed == {new, gone} and set(rs.previous) == {gone}


def test_a_render_that_fails_half_way_leaves_the_next_one_from_scratch(monkeypatch):
    services, endpoints = _big(50)
    r = Renderer()
    ctx = CONTEXTS[0]
    r.render(services, endpoints, ctx)
    a, b = list(services)[10], list(services)[20]
    endpoints[a] = (Endpoint("10.250.0.1", 8080),)
    del services[b]
    real = render_mod.render_service

    def fails(svc, *rest):
        if svc.name == a:
            raise RuntimeError("boom")
        return real(svc, *rest)

    monkeypatch.setattr(render_mod, "render_service", fails)
    with pytest.raises(RuntimeError):
        r.render(services, endpoints, ctx, changed={a, b})
    monkeypatch.setattr(render_mod, "render_service", real)
    rs = r.render(services, endpoints, ctx, changed=set())  # after a failure: walks everything
    _same(rs, Renderer().render(services, endpoints, ctx))
