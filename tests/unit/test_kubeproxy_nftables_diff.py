"""kube-proxy nftables mode, the transaction text: a partial sync carries only what changed."""

from __future__ import annotations

import pytest

from kubecommon.model import Endpoint, ServicePortInfo, ServicePortName
from kubeproxy.nftables import diff
from kubeproxy.nftables.render import NodeContext, Renderer

CTX = NodeContext(node_name="n1", cluster_cidr="10.244.0.0/16", endpoint_choice="rules")
MAPS = NodeContext(node_name="n1", cluster_cidr="10.244.0.0/16")


def cluster(n: int):
    services, endpoints = {}, {}
    for i in range(n):
        spn = ServicePortName(f"ns{i % 3}", f"svc{i}", "http", "TCP")
        services[spn] = ServicePortInfo(spn, f"10.96.{i // 250}.{i % 250 + 1}", 80, "TCP", 8080)
        endpoints[spn] = (
            Endpoint(f"10.244.{i // 100}.{2 * (i % 100) + 1}", 8080, node_name="n1"),
            Endpoint(f"10.244.{i // 100}.{2 * (i % 100) + 2}", 8080, node_name="n2"),
        )
    return services, endpoints


def test_nothing_changed_is_empty():
    r = Renderer()
    s, e = cluster(50)
    a = r.render(s, e, CTX)
    b = r.render(s, dict(e), CTX)
    assert b.changed == frozenset()
    assert diff.partial(a, b) == ""


def test_one_endpoint_change_touches_only_that_service():
    r = Renderer()
    s, e = cluster(1000)
    a = r.render(s, e, CTX)
    spn = sorted(s)[500]
    e2 = dict(e)
    old_ep, kept = e[spn][1], e[spn][0]
    e2[spn] = (kept, Endpoint("10.250.0.9", 8080, node_name="n1"))
    b = r.render(s, e2, CTX)
    assert b.changed == {spn}
    text = diff.partial(a, b)
    lines = text.splitlines()
    assert all(f"{spn.namespace}/{spn.name}/" in line for line in lines), text
    assert "add chain ip kube-proxy endpoint-" in text and "__10.250.0.9/8080" in text
    assert (
        "flush chain ip kube-proxy endpoint-" in text
        and "delete chain ip kube-proxy endpoint-" in text
    )
    assert f"__{old_ep.ip}/8080" in [ln for ln in lines if ln.startswith("delete chain")][0]
    # the service chain is rewritten; the kept endpoint's chain and the map element are not
    assert not any(
        f"__{kept.ip}/" in ln
        for ln in lines
        if not ln.startswith("add rule ip kube-proxy service-")
    )
    assert "element" not in text
    # order: declarations, flushes, rules, ..., deletions last
    first_rule = next(i for i, ln in enumerate(lines) if ln.startswith("add rule"))
    assert all(ln.startswith(("add chain", "flush chain")) for ln in lines[:first_rule])
    assert lines[-1].startswith("delete chain")
    assert len(lines) < 15


def test_service_added_and_removed():
    r = Renderer()
    s, e = cluster(10)
    a = r.render(s, e, CTX)
    gone = sorted(s)[3]
    s2 = {k: v for k, v in s.items() if k != gone}
    new = ServicePortName("ns9", "fresh", "", "UDP")
    s2[new] = ServicePortInfo(new, "10.96.9.9", 53, "UDP", 53)
    b = r.render(s2, e, CTX)
    text = diff.partial(a, b)
    assert b.changed == {gone, new}
    ip = s[gone].cluster_ip
    assert f"delete element ip kube-proxy service-ips {{ {ip} . tcp . 80 }}\n" in text
    assert (
        'add element ip kube-proxy no-endpoint-services { 10.96.9.9 . udp . 53 comment "ns9/fresh" : goto reject-chain }\n'
        in text
    )
    assert text.count("delete chain") == 3  # service chain + 2 endpoint chains of the gone one
    assert "fresh" not in text.replace("ns9/fresh", "")  # no chains for a service without endpoints


def test_endpoints_appear_map_element_moves():
    r = Renderer()
    spn = ServicePortName("ns", "web", "", "TCP")
    s = {spn: ServicePortInfo(spn, "10.96.0.20", 80, "TCP", 80)}
    a = r.render(s, {}, CTX)
    b = r.render(s, {spn: (Endpoint("10.244.0.7", 80),)}, CTX)
    text = diff.partial(a, b)
    i_del = text.index(
        "delete element ip kube-proxy no-endpoint-services { 10.96.0.20 . tcp . 80 }"
    )
    i_add = text.index(
        "add element ip kube-proxy service-ips { 10.96.0.20 . tcp . 80 : goto service-"
    )
    i_chain = text.index("add chain ip kube-proxy service-")
    assert i_chain < i_del < i_add


def test_affinity_timeout_change_recreates_set_after_flushing_its_users():
    r = Renderer()
    spn = ServicePortName("ns", "sticky", "", "TCP")
    ep = {spn: (Endpoint("10.244.0.7", 80),)}
    a = r.render(
        {spn: ServicePortInfo(spn, "10.96.0.21", 80, "TCP", 80, session_affinity_timeout=60)},
        ep,
        CTX,
    )
    b = r.render(
        {spn: ServicePortInfo(spn, "10.96.0.21", 80, "TCP", 80, session_affinity_timeout=90)},
        ep,
        CTX,
    )
    lines = diff.partial(a, b).splitlines()
    i_del = next(i for i, ln in enumerate(lines) if ln.startswith("delete set"))
    flushes = [i for i, ln in enumerate(lines) if ln.startswith("flush chain")]
    assert len(flushes) == 2 and max(flushes) < i_del
    assert "timeout 90s" in lines[i_del + 1]


def test_full_deletes_leftovers_but_keeps_affinity_contents():
    r = Renderer()
    s, e = cluster(3)
    st = r.render(s, e, CTX)
    text = diff.full(
        st, existing_chains={"service-OLD-x/y/tcp/", "services"}, existing_sets={"affinity-OLD"}
    )
    assert "delete chain ip kube-proxy service-OLD-x/y/tcp/\n" in text
    assert "delete set ip kube-proxy affinity-OLD\n" in text
    assert "delete chain ip kube-proxy services" not in text
    assert "flush set ip kube-proxy affinity" not in text


def test_changed_skeleton_needs_full():
    r = Renderer()
    a = r.render({}, {}, CTX)
    b = r.render(
        {}, {}, NodeContext(node_name="n1", masquerade_all=True, conntrack_tcp_liberal=True)
    )
    with pytest.raises(ValueError):
        diff.partial(a, b)


# --- the default "maps" layout -------------------------------------------------------


def test_maps_one_endpoint_change_is_elements_only():
    r = Renderer()
    s, e = cluster(1000)
    a = r.render(s, e, MAPS)
    spn = sorted(s)[500]
    e2 = dict(e)
    e2[spn] = (e[spn][0], Endpoint("10.250.0.9", 8080, node_name="n1"))
    b = r.render(s, e2, MAPS)
    text = diff.partial(a, b)
    cip = s[spn].cluster_ip
    assert text == (
        f"delete element ip kube-proxy service-endpoints-tcp {{ {cip} . 80 . 1 }}\n"
        f"add element ip kube-proxy service-endpoints-tcp {{ {cip} . 80 . 1 : 10.250.0.9 . 8080 }}\n"
        f"delete element ip kube-proxy hairpin-endpoints {{ {e[spn][1].ip} . {e[spn][1].ip} }}\n"
        "add element ip kube-proxy hairpin-endpoints { 10.250.0.9 . 10.250.0.9 }\n"
    )


def test_maps_shared_chain_created_with_first_user_deleted_after_last():
    r = Renderer()
    s, e = cluster(3)
    a = r.render(s, e, MAPS)
    spn = sorted(s)[1]
    e2 = dict(e)
    e2[spn] = e[spn][:1]
    b = r.render(s, e2, MAPS)
    lines = diff.partial(a, b).splitlines()
    assert lines[0] == "add chain ip kube-proxy clusterip-tcp-1"
    assert lines[1].startswith("add rule ip kube-proxy clusterip-tcp-1 ")
    assert (
        "add element ip kube-proxy service-ips { 10.96.0.2 . tcp . 80 : goto clusterip-tcp-1 }"
        in lines
    )
    assert b.shared.keys() == {"clusterip-tcp-1", "clusterip-tcp-2"}
    c = r.render(s, {}, MAPS)  # no endpoints anywhere: both shared chains go, last
    lines = diff.partial(b, c).splitlines()
    assert lines[-4:] == [
        "flush chain ip kube-proxy clusterip-tcp-1",
        "flush chain ip kube-proxy clusterip-tcp-2",
        "delete chain ip kube-proxy clusterip-tcp-1",
        "delete chain ip kube-proxy clusterip-tcp-2",
    ]
    assert c.shared == {} and c.hairpin == {}


def test_maps_hairpin_pair_stays_while_any_service_uses_the_endpoint():
    r = Renderer()
    s, _ = cluster(2)
    k1, k2 = sorted(s)
    ep = (Endpoint("10.244.0.7", 8080),)
    a = r.render(s, {k1: ep, k2: ep}, MAPS)
    assert a.hairpin == {"10.244.0.7": 2}
    b = r.render(s, {k1: ep}, MAPS)
    assert "hairpin" not in diff.partial(a, b)
    c = r.render(s, {}, MAPS)
    assert (
        "delete element ip kube-proxy hairpin-endpoints { 10.244.0.7 . 10.244.0.7 }\n"
        in diff.partial(b, c)
    )
    full = diff.full(a)
    assert "add element ip kube-proxy hairpin-endpoints { 10.244.0.7 . 10.244.0.7 }\n" in full


def test_renderer_equal_new_key_objects_change_nothing():
    r = Renderer()
    s, e = cluster(20)
    a = r.render(s, e, MAPS)
    # the same service ports as new (equal, not identical) objects, as after a re-list
    clone = {ServicePortName(k.namespace, k.name, k.port, k.protocol): v for k, v in s.items()}
    eclone = {ServicePortName(k.namespace, k.name, k.port, k.protocol): v for k, v in e.items()}
    b = r.render(clone, eclone, MAPS)
    assert b.changed == frozenset() and diff.partial(a, b) == ""
    assert b.inputs_changed == set(s)  # they were looked up by value
    c = r.render(clone, eclone, MAPS)
    assert c.inputs_changed == frozenset() and c.since == b.generation


def test_renderer_removed_and_headless_ports():
    r = Renderer()
    s, e = cluster(5)
    a = r.render(s, e, MAPS)
    gone, headless = sorted(s)[:2]
    s2 = {k: v for k, v in s.items() if k != gone}
    s2[headless] = ServicePortInfo(headless, "", 80, "TCP", 8080)
    b = r.render(s2, e, MAPS)
    assert b.changed == {gone, headless} and b.inputs_changed == {gone, headless}
    assert gone not in b.services and headless not in b.services
    text = diff.partial(a, b)
    prefix = "delete element ip kube-proxy service-ips"
    (line,) = [ln for ln in text.splitlines() if ln.startswith(prefix)]
    for k in (gone, headless):
        assert f"{s[k].cluster_ip} . tcp . 80" in line
    # the scan by identity and the renderer's own list of changes agree
    assert diff.partial(a, b) == diff.partial(a, b.__class__(**{**_fields(b), "since": 0}))


def _fields(state) -> dict:
    return {f: getattr(state, f) for f in state.__dataclass_fields__}
