"""kube-proxy nftables mode, the pure renderer: names, layout, endpoint choice, policies.

Most tests pin kube-proxy's per-service layout (``endpoint_choice="rules"``, still used for
services with session affinity); the ``maps`` tests pin the default layout (shared chains,
endpoint maps, hairpin set)."""

from __future__ import annotations

import re

from kubecommon.model import Endpoint, ServicePortInfo, ServicePortName
from kubeproxy.nftables import diff
from kubeproxy.nftables.render import (
    NodeContext,
    chain_base,
    endpoint_base,
    render,
    render_service,
)

CTX = NodeContext(node_name="n1", cluster_cidr="10.244.0.0/16", endpoint_choice="rules")
MAPS = NodeContext(node_name="n1", cluster_cidr="10.244.0.0/16")
SPN = ServicePortName("ns1", "svc1", "p80", "TCP")


def svc(**kw) -> ServicePortInfo:
    args = dict(name=SPN, cluster_ip="172.30.0.41", port=80, protocol="TCP", target_port=80)
    args.update(kw)
    return ServicePortInfo(**args)


def eps(*ips: str, node: str = "n1", **kw) -> tuple[Endpoint, ...]:
    return tuple(Endpoint(ip=ip, port=80, node_name=node, **kw) for ip in ips)


def chains(frag) -> dict[str, tuple[str, ...]]:
    return dict(frag.chains)


def test_names_match_kube_proxy_examples():
    # the examples in kube-proxy's nftables proxier.go
    assert chain_base(SPN) == "ULMVA6XW-ns1/svc1/tcp/p80"
    assert endpoint_base(SPN, "10.180.0.1", 80) == "5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"


def test_long_names_are_truncated_and_stay_unique():
    a = ServicePortName("n" * 90, "s" * 90, "p" * 90, "SCTP")  # longer than Kubernetes allows
    base = endpoint_base(a, "10.0.0.1", 65535)
    assert len("endpoint-" + base) <= 256 and base.endswith("...")
    assert base != endpoint_base(a, "10.0.0.2", 65535)


GOLDEN_CLUSTER_IP = """\
add chain ip kube-proxy endpoint-P2GVATDV-ns1/svc1/tcp/p80__10.244.1.2/80
add chain ip kube-proxy endpoint-YHMG6KGD-ns1/svc1/tcp/p80__10.244.2.3/80
add chain ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80
add rule ip kube-proxy endpoint-P2GVATDV-ns1/svc1/tcp/p80__10.244.1.2/80 ip saddr 10.244.1.2 jump mark-for-masquerade
add rule ip kube-proxy endpoint-P2GVATDV-ns1/svc1/tcp/p80__10.244.1.2/80 meta l4proto tcp dnat to 10.244.1.2:80
add rule ip kube-proxy endpoint-YHMG6KGD-ns1/svc1/tcp/p80__10.244.2.3/80 ip saddr 10.244.2.3 jump mark-for-masquerade
add rule ip kube-proxy endpoint-YHMG6KGD-ns1/svc1/tcp/p80__10.244.2.3/80 meta l4proto tcp dnat to 10.244.2.3:80
add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 ip daddr 172.30.0.41 tcp dport 80 ip saddr != 10.244.0.0/16 jump mark-for-masquerade
add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 numgen random mod 2 == 0 goto endpoint-P2GVATDV-ns1/svc1/tcp/p80__10.244.1.2/80
add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 goto endpoint-YHMG6KGD-ns1/svc1/tcp/p80__10.244.2.3/80
add element ip kube-proxy service-ips { 172.30.0.41 . tcp . 80 : goto service-ULMVA6XW-ns1/svc1/tcp/p80 }
"""


def _service_part(text: str) -> str:
    return "".join(line for line in text.splitlines(True) if "-ns1/" in line)


def test_golden_cluster_ip_service():
    text = diff.full(render({SPN: svc()}, {SPN: eps("10.244.2.3", "10.244.1.2")}, CTX))
    assert _service_part(text) == GOLDEN_CLUSTER_IP


def test_skeleton_hooks_maps_and_masquerade():
    text = diff.full(render({}, {}, CTX))
    for line in (
        "add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }",
        "add chain ip kube-proxy nat-output { type nat hook output priority -100 ; }",
        "add chain ip kube-proxy nat-postrouting { type nat hook postrouting priority 100 ; }",
        "add chain ip kube-proxy filter-forward { type filter hook forward priority -110 ; }",
        "add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips",
        "add rule ip kube-proxy services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports",
        "add rule ip kube-proxy endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services",
        "add rule ip kube-proxy mark-for-masquerade mark set mark or 0x4000",
        "add rule ip kube-proxy masquerading mark and 0x4000 == 0 return",
        "add rule ip kube-proxy masquerading masquerade fully-random",
        "add rule ip kube-proxy forward ct state invalid drop",
        "add rule ip kube-proxy filter-input ct state new jump endpoints-check",
        'add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }',
        "flush map ip kube-proxy no-endpoint-nodeports",
    ):
        assert line + "\n" in text, line
    assert text.startswith(
        'add table ip kube-proxy { comment "rules for kube-proxy" ; }\nflush table ip kube-proxy\n'
    )
    # every statement names our table and no other
    assert all(" ip kube-proxy" in line for line in text.splitlines())
    liberal = diff.full(render({}, {}, NodeContext(conntrack_tcp_liberal=True)))
    assert "ct state invalid drop" not in liberal


def _numgen(rules: tuple[str, ...]) -> list[str]:
    return [r for r in rules if "numgen" in r or r.startswith("goto endpoint-")]


def test_endpoint_choice_rules_are_uniform():
    for n in (1, 2, 3, 5):
        ips = [f"10.244.0.{i + 10}" for i in range(n)]
        f = render_service(svc(), eps(*ips), CTX)
        rules = _numgen(chains(f)["service-ULMVA6XW-ns1/svc1/tcp/p80"])
        assert len(rules) == n
        mods = [int(m) for r in rules for m in re.findall(r"mod (\d+) == 0", r)]
        assert mods == list(range(n, 1, -1))  # 1/n, 1/(n-1), ... 1/2, then the last one
        p_left, shares = 1.0, []
        for m in mods:
            shares.append(p_left / m)
            p_left -= p_left / m
        shares.append(p_left)
        assert all(abs(s - 1 / n) < 1e-9 for s in shares)


def test_endpoint_choice_vmap_size():
    ctx = NodeContext(node_name="n1", cluster_cidr="10.244.0.0/16", endpoint_choice="vmap")
    for n in (1, 2, 4):
        f = render_service(svc(), eps(*[f"10.244.0.{i + 10}" for i in range(n)]), ctx)
        (rule,) = _numgen(chains(f)["service-ULMVA6XW-ns1/svc1/tcp/p80"])
        assert rule.startswith(f"numgen random mod {n} vmap {{ 0 : goto endpoint-")
        assert rule.count(": goto endpoint-") == n
        assert f"{n - 1} : goto" in rule


def test_no_endpoints_rejects_at_once():
    f = render_service(svc(node_port=30080, type="NodePort"), (), CTX)
    assert f.chains == ()
    els = {(e.map, e.key): e.value for e in f.elements}
    assert els == {
        ("no-endpoint-services", "172.30.0.41 . tcp . 80"): "goto reject-chain",
        ("no-endpoint-nodeports", "tcp . 30080"): "goto reject-chain",
    }


def test_terminating_endpoints_only_when_no_ready_ones():
    term = Endpoint("10.244.0.9", 80, ready=False, serving=True, terminating=True, node_name="n1")
    ready = Endpoint("10.244.0.8", 80, node_name="n2")
    f = render_service(svc(), (term, ready), CTX)
    text = " ".join(r for _, rs in f.chains for r in rs)
    assert "10.244.0.8" in text and "10.244.0.9" not in text
    f = render_service(svc(), (term,), CTX)
    assert "dnat to 10.244.0.9:80" in " ".join(r for _, rs in f.chains for r in rs)


def test_external_traffic_policy_local():
    s = svc(node_port=30080, type="NodePort", external_local=True)
    f = render_service(s, eps("10.244.1.2") + eps("10.244.2.3", node="n2"), CTX)
    c = chains(f)
    local = c["local-ULMVA6XW-ns1/svc1/tcp/p80"]
    assert any("10.244.1.2" in r for r in local) and not any("10.244.2.3" in r for r in local)
    ext = c["external-ULMVA6XW-ns1/svc1/tcp/p80"]
    assert ext == (
        'ip saddr 10.244.0.0/16 goto service-ULMVA6XW-ns1/svc1/tcp/p80 comment "short-circuit pod traffic"',
        'fib saddr type local jump mark-for-masquerade comment "masquerade local traffic"',
        'fib saddr type local goto service-ULMVA6XW-ns1/svc1/tcp/p80 comment "short-circuit local traffic"',
        "goto local-ULMVA6XW-ns1/svc1/tcp/p80",
    )
    assert not any("mark-for-masquerade" in r for r in local)  # client IP preserved
    els = {(e.map, e.key): e.value for e in f.elements}
    assert els[("service-nodeports", "tcp . 30080")] == "goto external-ULMVA6XW-ns1/svc1/tcp/p80"
    # no local endpoints: external traffic is dropped, pod traffic still short-circuited
    f = render_service(s, eps("10.244.2.3", node="n2"), CTX)
    els = {(e.map, e.key): e.value for e in f.elements}
    assert els[("no-endpoint-nodeports", "tcp . 30080")] == "drop"
    assert "local-ULMVA6XW-ns1/svc1/tcp/p80" not in chains(f)


def test_internal_traffic_policy_local():
    s = svc(internal_local=True)
    f = render_service(s, eps("10.244.1.2") + eps("10.244.2.3", node="n2"), CTX)
    els = {(e.map, e.key): e.value for e in f.elements}
    assert els == {
        ("service-ips", "172.30.0.41 . tcp . 80"): "goto local-ULMVA6XW-ns1/svc1/tcp/p80"
    }
    assert "service-ULMVA6XW-ns1/svc1/tcp/p80" not in chains(f)
    f = render_service(s, eps("10.244.2.3", node="n2"), CTX)
    assert {(e.map, e.value) for e in f.elements} == {("no-endpoint-services", "drop")}


def test_session_affinity_timed_sets():
    f = render_service(svc(session_affinity_timeout=300), eps("10.244.1.2", "10.244.2.3"), CTX)
    assert [t for _, t in f.sets] == [300, 300]
    a = f.sets[0][0]
    assert a.startswith("affinity-")
    c = chains(f)
    svc_rules = c["service-ULMVA6XW-ns1/svc1/tcp/p80"]
    assert f"ip saddr @{a} goto endpoint-{a[len('affinity-') :]}" in svc_rules
    assert f"update @{a} {{ ip saddr }}" in c["endpoint-" + a[len("affinity-") :]]
    text = diff.full(
        render({SPN: svc(session_affinity_timeout=300)}, {SPN: eps("10.244.1.2")}, CTX)
    )
    assert (
        f"add set ip kube-proxy {a} {{ type ipv4_addr ; flags dynamic,timeout ; timeout 300s ; }}\n"
        in text
    )


def test_masquerade_all_and_external_ips():
    ctx = NodeContext(node_name="n1", masquerade_all=True, endpoint_choice="rules")
    f = render_service(svc(external_ips=("192.0.2.7",)), eps("10.244.1.2"), ctx)
    c = chains(f)
    assert (
        c["service-ULMVA6XW-ns1/svc1/tcp/p80"][0]
        == "ip daddr 172.30.0.41 tcp dport 80 jump mark-for-masquerade"
    )
    els = {(e.map, e.key): e.value for e in f.elements}
    assert els[("service-ips", "192.0.2.7 . tcp . 80")] == "goto external-ULMVA6XW-ns1/svc1/tcp/p80"
    assert c["external-ULMVA6XW-ns1/svc1/tcp/p80"][0] == "jump mark-for-masquerade"


def test_udp_and_sctp_ports():
    for proto in ("UDP", "SCTP"):
        spn = ServicePortName("ns1", "dns", "dns", proto)
        s = ServicePortInfo(spn, "10.96.0.10", 53, proto, 53)
        f = render_service(s, (Endpoint("10.244.0.5", 53),), CTX)
        p = proto.lower()
        assert any(f"meta l4proto {p} dnat to 10.244.0.5:53" in r for _, rs in f.chains for r in rs)
        assert f.elements[0].key == f"10.96.0.10 . {p} . 53"


def test_nodeport_addresses_set():
    ctx = NodeContext(nodeport_ips=("172.18.0.3", "127.0.0.1"))
    text = diff.full(render({}, {}, ctx))
    assert "add element ip kube-proxy nodeport-ips { 172.18.0.3 }\n" in text
    assert "ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports" in text


# --- the default "maps" layout: shared chains per endpoint count, endpoint maps ---------

GOLDEN_MAPS_CLUSTER_IP = """\
add rule ip kube-proxy clusterip-tcp-2 ip saddr != 10.244.0.0/16 jump mark-for-masquerade
add rule ip kube-proxy clusterip-tcp-2 dnat ip to ip daddr . tcp dport . numgen random mod 2 map @service-endpoints-tcp
add element ip kube-proxy service-endpoints-tcp { 172.30.0.41 . 80 . 0 : 10.244.1.2 . 80, 172.30.0.41 . 80 . 1 : 10.244.2.3 . 80 }
add element ip kube-proxy service-ips { 172.30.0.41 . tcp . 80 : goto clusterip-tcp-2 }
add element ip kube-proxy hairpin-endpoints { 10.244.1.2 . 10.244.1.2, 10.244.2.3 . 10.244.2.3 }
"""


def test_maps_golden_cluster_ip_service():
    text = diff.full(render({SPN: svc()}, {SPN: eps("10.244.2.3", "10.244.1.2")}, MAPS))
    part = "".join(
        ln for ln in text.splitlines(True) if "clusterip-tcp-2" in ln or "10.244." in ln
    ).replace("add chain ip kube-proxy clusterip-tcp-2\n", "")
    assert part == GOLDEN_MAPS_CLUSTER_IP
    assert "add chain ip kube-proxy clusterip-tcp-2\n" in text
    assert "/" not in "".join(
        ln for ln in text.splitlines() if "chain" in ln
    )  # no per-service chain
    for line in (
        'add map ip kube-proxy service-endpoints-udp { typeof ip daddr . udp dport . numgen random mod 1 : ip daddr . udp dport ; comment "endpoints of ClusterIP, ExternalIP and LoadBalancer IP (udp)" ; }',
        "add rule ip kube-proxy masquerading ct status dnat ip saddr . ip daddr @hairpin-endpoints mark set mark or 0x4000",
        "flush set ip kube-proxy hairpin-endpoints",
    ):
        assert line + "\n" in text, line


def test_maps_every_index_has_an_endpoint():
    for n in (1, 2, 3, 7):
        f = render_service(svc(), eps(*[f"10.244.0.{i + 10}" for i in range(n)]), MAPS)
        idx = sorted(
            int(e.key.rsplit(" . ", 1)[1]) for e in f.elements if e.map == "service-endpoints-tcp"
        )
        assert idx == list(range(n))
        assert dict(f.shared)[f"clusterip-tcp-{n}"][-1].endswith(
            f"numgen random mod {n} map @service-endpoints-tcp"
        )


def test_maps_external_traffic_policy_local():
    s = svc(node_port=30080, type="NodePort", external_local=True, external_ips=("192.0.2.7",))
    f = render_service(s, eps("10.244.1.2") + eps("10.244.2.3", node="n2"), MAPS)
    els = {(e.map, e.key): e.value for e in f.elements}
    assert els[("service-nodeports", "tcp . 30080")] == "goto external-local-nodeport-tcp-2-1"
    assert els[("service-ips", "192.0.2.7 . tcp . 80")] == "goto external-local-tcp-2-1"
    assert els[("local-nodeport-endpoints-tcp", "30080 . 0")] == "10.244.1.2 . 80"
    assert ("local-nodeport-endpoints-tcp", "30080 . 1") not in els  # only local endpoints
    assert els[("nodeport-endpoints-tcp", "30080 . 1")] == "10.244.2.3 . 80"  # short-circuit
    assert els[("local-endpoints-tcp", "192.0.2.7 . 80 . 0")] == "10.244.1.2 . 80"
    shared = dict(f.shared)
    assert shared["external-local-nodeport-tcp-2-1"] == (
        'ip saddr 10.244.0.0/16 goto pick-nodeport-tcp-2 comment "short-circuit pod traffic"',
        'fib saddr type local jump mark-for-masquerade comment "masquerade local traffic"',
        'fib saddr type local goto pick-nodeport-tcp-2 comment "short-circuit local traffic"',
        "dnat ip to tcp dport . numgen random mod 1 map @local-nodeport-endpoints-tcp",
    )
    assert not any(
        "mark-for-masquerade" in r for r in shared["pick-nodeport-tcp-2"]
    )  # client IP kept
    # no local endpoints: external traffic dropped, pod traffic still short-circuited
    f = render_service(s, eps("10.244.2.3", node="n2"), MAPS)
    els = {(e.map, e.key): e.value for e in f.elements}
    assert els[("no-endpoint-nodeports", "tcp . 30080")] == "drop"
    assert els[("service-nodeports", "tcp . 30080")] == "goto external-local-nodeport-tcp-1-0"
    assert dict(f.shared)["external-local-nodeport-tcp-1-0"][-1].startswith(
        "fib saddr type local goto"
    )


def test_maps_cluster_policy_nodeport_masquerades():
    f = render_service(svc(node_port=30080, type="NodePort"), eps("10.244.1.2"), MAPS)
    shared = dict(f.shared)
    assert shared["external-nodeport-tcp-1"] == (
        "jump mark-for-masquerade",
        "dnat ip to tcp dport . numgen random mod 1 map @nodeport-endpoints-tcp",
    )
    assert {e.map for e in f.elements} == {
        "service-ips",
        "service-nodeports",
        "service-endpoints-tcp",
        "nodeport-endpoints-tcp",
    }


def test_maps_internal_traffic_policy_local():
    f = render_service(
        svc(internal_local=True), eps("10.244.1.2") + eps("10.244.2.3", node="n2"), MAPS
    )
    els = {(e.map, e.key): e.value for e in f.elements}
    assert els == {
        ("service-ips", "172.30.0.41 . tcp . 80"): "goto clusterip-tcp-1",
        ("service-endpoints-tcp", "172.30.0.41 . 80 . 0"): "10.244.1.2 . 80",
    }


def test_maps_session_affinity_keeps_per_service_chains():
    f = render_service(svc(session_affinity_timeout=300), eps("10.244.1.2"), MAPS)
    assert f.shared == () and f.hairpin == ()
    assert "service-ULMVA6XW-ns1/svc1/tcp/p80" in chains(f) and len(f.sets) == 1


def test_maps_plain_cluster_ip_fast_path_equals_general_path():
    from kubeproxy.nftables.render import _render_plain_cluster_ip, _render_service

    term = Endpoint("10.244.0.9", 80, ready=False, serving=True, terminating=True, node_name="n1")
    gone = Endpoint("10.244.0.8", 80, ready=False, serving=False, node_name="n2")
    cases = [
        (),
        eps("10.244.1.2"),
        eps("10.244.2.3", "10.244.1.2", "10.244.1.10"),
        eps("10.244.1.2") + eps("10.244.1.2", node="n2"),  # same IP twice
        (term,),
        (term, gone),
        (gone,),
        (term,) + eps("10.244.3.3", node="n2"),
    ]
    for ctx in (MAPS, NodeContext(node_name="n1", masquerade_all=True), NodeContext()):
        for proto in ("TCP", "UDP", "SCTP"):
            s = svc(protocol=proto)
            for e in cases:
                assert _render_plain_cluster_ip(s, e, ctx) == _render_service(s, e, ctx), (e, ctx)
