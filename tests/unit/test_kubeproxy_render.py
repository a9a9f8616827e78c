"""kube-proxy iptables renderer: golden rule text, kube-proxy's chain hashes, probabilities,
traffic policies, no-endpoint REJECTs, partial restores, and a small packet tracer that
follows the rendered nat rules ("from 10.0.0.2 to 172.30.0.41:80 -> these endpoints")."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import shlex
import textwrap

from kubecommon.model import Endpoint, ServicePortInfo, ServicePortName
from kubeproxy.conntrack import Deletion, stale_entries
from kubeproxy.iptables.cleanup import cleanup_input
from kubeproxy.iptables.render import (
    NodeContext,
    Renderer,
    endpoint_chain,
    external_chain,
    local_chain,
    probability,
    render,
    service_chain,
)

CTX = NodeContext(node_name="node1", cluster_cidr="10.0.0.0/24")


def spn(ns="ns1", name="svc1", port="p80", proto="TCP") -> ServicePortName:
    return ServicePortName(ns, name, port, proto)


def svc(name=None, ip="172.30.0.41", port=80, proto="TCP", **kw) -> ServicePortInfo:
    n = name or spn(proto=proto)
    return ServicePortInfo(name=n, cluster_ip=ip, port=port, protocol=proto, target_port=port, **kw)


def ep(ip, port=80, node="node1", ready=True, serving=None, terminating=False) -> Endpoint:
    return Endpoint(
        ip=ip,
        port=port,
        ready=ready,
        serving=ready if serving is None else serving,
        terminating=terminating,
        node_name=node,
    )


def nat(text: str) -> list[str]:
    return text.split("*nat\n", 1)[1].splitlines()


def filt(text: str) -> list[str]:
    return text.split("*filter\n", 1)[1].split("COMMIT", 1)[0].splitlines()


# -- chain names -------------------------------------------------------------------------


def by_hand(text: str) -> str:
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


def test_chain_names_are_kube_proxys_hashes():
    s = spn()
    assert service_chain(s) == "KUBE-SVC-" + by_hand("ns1/svc1:p80tcp")
    assert endpoint_chain(s, "10.180.0.1:80") == "KUBE-SEP-" + by_hand(
        "ns1/svc1:p80tcp10.180.0.1:80"
    )
    # the names kube-proxy's own tests use for these service ports
    assert service_chain(s) == "KUBE-SVC-XPGD46QRK7WJZT7O"
    assert endpoint_chain(s, "10.180.0.1:80") == "KUBE-SEP-SXIVWICOYRO3J4NJ"
    s2 = spn("ns2", "svc2")
    assert service_chain(s2) == "KUBE-SVC-GNZBNJ2PO5MGZ6GT"
    assert local_chain(s2) == "KUBE-SVL-GNZBNJ2PO5MGZ6GT"
    assert external_chain(s2) == "KUBE-EXT-GNZBNJ2PO5MGZ6GT"
    # unnamed port: "ns/name" only; the protocol is part of the hash
    assert service_chain(spn(port="")) == "KUBE-SVC-" + by_hand("ns1/svc1tcp")
    assert service_chain(spn(proto="UDP")) == "KUBE-SVC-" + by_hand("ns1/svc1:p80udp")


def test_probabilities_are_formatted_like_kube_proxy():
    assert probability(2) == "0.5000000000"
    assert probability(3) == "0.3333333333"
    text = render(
        {spn(): svc()}, {spn(): (ep("10.180.0.3"), ep("10.180.0.1"), ep("10.180.0.2"))}, CTX
    )
    lines = [
        ln
        for ln in nat(text)
        if ln.startswith('-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 ->')
    ]
    assert [("probability" in ln and ln.split("--probability ")[1].split()[0]) for ln in lines] == [
        "0.3333333333",
        "0.5000000000",
        False,
    ]
    # endpoints ordered by "ip:port" string, as kube-proxy orders them
    assert [ln.split("-> ")[1].split('"')[0] for ln in lines] == [
        "10.180.0.1:80",
        "10.180.0.2:80",
        "10.180.0.3:80",
    ]


# -- golden text -------------------------------------------------------------------------


def test_golden_cluster_ip_service():
    text = render({spn(): svc()}, {spn(): (ep("10.180.0.1", node="node2"),)}, CTX)
    assert text == textwrap.dedent("""\
        *filter
        :KUBE-SERVICES - [0:0]
        :KUBE-EXTERNAL-SERVICES - [0:0]
        :KUBE-FORWARD - [0:0]
        :KUBE-NODEPORTS - [0:0]
        -A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
        -A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
        -A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
        COMMIT
        *nat
        :KUBE-SERVICES - [0:0]
        :KUBE-NODEPORTS - [0:0]
        :KUBE-POSTROUTING - [0:0]
        :KUBE-MARK-MASQ - [0:0]
        :KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]
        :KUBE-SEP-SXIVWICOYRO3J4NJ - [0:0]
        -A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O
        -A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j KUBE-NODEPORTS
        -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
        -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
        -A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
        -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
        -A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.0.0.0/24 -j KUBE-MARK-MASQ
        -A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -j KUBE-SEP-SXIVWICOYRO3J4NJ
        -A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -s 10.180.0.1 -j KUBE-MARK-MASQ
        -A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80
        COMMIT
        """)


def test_masquerade_all_and_session_affinity():
    s = svc(session_affinity_timeout=10800)
    lines = nat(
        render(
            {spn(): s},
            {spn(): (ep("10.180.0.1"), ep("10.180.0.2"))},
            NodeContext("node1", "10.0.0.0/24", masquerade_all=True),
        )
    )
    sep1 = endpoint_chain(spn(), "10.180.0.1:80")
    assert (
        '-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp '
        "-d 172.30.0.41 --dport 80 -j KUBE-MARK-MASQ"
    ) in lines
    assert (
        f'-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -m recent '
        f"--name {sep1} --rcheck --seconds 10800 --reap -j {sep1}"
    ) in lines
    assert (
        f"-A {sep1} -m comment --comment ns1/svc1:p80 -m recent --name {sep1} --set -m tcp -p tcp "
        "-j DNAT --to-destination 10.180.0.1:80"
    ) in lines
    # affinity checks come before the random choice
    first_rcheck = next(i for i, ln in enumerate(lines) if "--rcheck" in ln)
    first_random = next(i for i, ln in enumerate(lines) if "statistic" in ln)
    assert first_rcheck < first_random


def test_no_endpoints_rejects_in_filter_and_writes_no_nat_chains():
    s = svc(node_port=30080, type="NodePort")
    text = render({spn(): s}, {}, CTX)
    assert filt(text)[4:6] == [
        '-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 has no endpoints" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j REJECT',
        '-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns1/svc1:p80 has no endpoints" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 30080 -j REJECT',
    ]
    assert "KUBE-SVC-" not in text and "KUBE-EXT-" not in text


def test_terminating_endpoints_only_when_no_ready_ones():
    eps = (ep("10.180.0.1"), ep("10.180.0.2", ready=False, serving=True, terminating=True))
    assert "10.180.0.2:80" not in render({spn(): svc()}, {spn(): eps}, CTX)
    eps = (
        ep("10.180.0.1", ready=False, serving=False, terminating=True),
        ep("10.180.0.2", ready=False, serving=True, terminating=True),
    )
    text = render({spn(): svc()}, {spn(): eps}, CTX)
    assert "--to-destination 10.180.0.2:80" in text and "10.180.0.1:80" not in text


def test_external_traffic_policy_local():
    s2 = spn("ns2", "svc2")
    s = svc(s2, node_port=30080, type="NodePort", external_local=True, health_check_node_port=30000)
    eps = (ep("10.180.0.1", node="node1"), ep("10.180.0.2", node="node2"))
    text = render({s2: s}, {s2: eps}, CTX)
    lines = nat(text)
    ext, svl, svcc = (
        "KUBE-EXT-GNZBNJ2PO5MGZ6GT",
        "KUBE-SVL-GNZBNJ2PO5MGZ6GT",
        "KUBE-SVC-GNZBNJ2PO5MGZ6GT",
    )
    assert [ln for ln in lines if ln.startswith(f"-A {ext}")] == [
        f'-A {ext} -m comment --comment "pod traffic for ns2/svc2:p80 external destinations" -s 10.0.0.0/24 -j {svcc}',
        f'-A {ext} -m comment --comment "masquerade LOCAL traffic for ns2/svc2:p80 external destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ',
        f'-A {ext} -m comment --comment "route LOCAL traffic for ns2/svc2:p80 external destinations" -m addrtype --src-type LOCAL -j {svcc}',
        f"-A {ext} -j {svl}",
    ]
    svl_targets = [ln for ln in lines if ln.startswith(f"-A {svl}")]
    assert len(svl_targets) == 1 and "10.180.0.1:80" in svl_targets[0]
    assert (
        '-A KUBE-NODEPORTS -m comment --comment "ns2/svc2:p80 health check node port" -m tcp -p tcp --dport 30000 -j ACCEPT'
        in filt(text)
    )
    # no local endpoint: external traffic dropped (not rejected), pods still short-circuited
    text = render({s2: s}, {s2: eps[1:]}, CTX)
    assert '"ns2/svc2:p80 has no local endpoints"' in text and "-j DROP" in filt(text)[4]
    assert f"-A {ext} -j {svl}" not in text


def test_internal_traffic_policy_local_without_local_endpoints_drops():
    s = svc(internal_local=True)
    text = render({spn(): s}, {spn(): (ep("10.180.0.2", node="node2"),)}, CTX)
    assert (
        '-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 has no local endpoints" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j DROP'
        in text
    )
    text = render({spn(): s}, {spn(): (ep("10.180.0.1"), ep("10.180.0.2", node="node2"))}, CTX)
    assert "-j KUBE-SVL-XPGD46QRK7WJZT7O" in text and "10.180.0.2:80" not in text


def test_udp_sctp_and_several_ports():
    a, b, c = spn(port="http"), spn(port="dns", proto="UDP"), spn(port="sctp", proto="SCTP")
    services = {
        a: svc(a, port=80),
        b: svc(b, port=53, proto="UDP"),
        c: svc(c, port=9, proto="SCTP"),
    }
    eps = {a: (ep("10.180.0.1", 8080),), b: (ep("10.180.0.1", 5353),), c: (ep("10.180.0.1", 9),)}
    text = render(services, eps, CTX)
    assert (
        "-m udp -p udp -d 172.30.0.41 --dport 53" in text
        and "--to-destination 10.180.0.1:5353" in text
    )
    assert "-m sctp -p sctp -d 172.30.0.41 --dport 9" in text
    assert "-m tcp -p tcp -j DNAT --to-destination 10.180.0.1:8080" in text


def test_partial_restore_writes_only_the_changed_service():
    r = Renderer()
    a, b = spn(name="a"), spn(name="b")
    services = {a: svc(a, ip="172.30.0.1"), b: svc(b, ip="172.30.0.2")}
    eps = {a: (ep("10.180.0.1"),), b: (ep("10.180.0.2"),)}
    r.render(services, eps, CTX)
    eps2 = {**eps, b: (ep("10.180.0.2"), ep("10.180.0.3"))}
    rs = r.render(services, eps2, CTX)
    assert rs.changed == {b}
    text = rs.restore_input(only=rs.changed)
    assert service_chain(b) in text and f":{service_chain(a)}" not in text
    assert rs.restore_input() == render(services, eps2, CTX)  # memoised == from scratch


def test_a_memoised_renderer_follows_services_added_removed_and_reordered():
    # the renderer keeps its sorted order between renders: every change of the key set
    # (same count included) must give the same text as a fresh render
    r = Renderer()
    names = [spn(name=n) for n in ("a", "c", "e")]
    services = {s: svc(s, ip=f"172.30.0.{i + 1}") for i, s in enumerate(names)}
    eps = {spn(name=n): (ep(f"10.180.0.{i + 1}"),) for i, n in enumerate("abcde")}
    steps = [
        dict(services),
        {**services, spn(name="b"): svc(spn(name="b"), ip="172.30.0.9")},  # added in the middle
        {k: v for k, v in services.items() if k != names[1]},  # removed
        {  # one out, one in: the same count
            **{k: v for k, v in services.items() if k != names[0]},
            spn(name="d"): svc(spn(name="d"), ip="172.30.0.8"),
        },
        dict(reversed(list(services.items()))),  # same keys, another insertion order
    ]
    for step in steps:
        rs = r.render(step, eps, CTX)
        assert rs.restore_input() == render(step, eps, CTX)
        order = [
            line.split()[-1]
            for line in nat(rs.restore_input())
            if line.startswith("-A KUBE-SERVICES ") and "-j KUBE-SVC-" in line
        ]
        assert order == [service_chain(s) for s in sorted(step, key=lambda s: s.name)]


def test_large_clusters_drop_per_endpoint_comments():
    services, eps = {}, {}
    for i in range(600):
        s = spn(name=f"s{i}")
        services[s] = svc(s, ip=f"172.30.{i // 250}.{i % 250}")
        eps[s] = (ep(f"10.1.{i // 250}.{i % 250}"), ep(f"10.2.{i // 250}.{i % 250}"))
    text = render(services, eps, CTX)
    assert " -> " not in text and "-A KUBE-SEP-" in text and "cluster IP" in text


def test_conntrack_deletions_for_udp():
    u = spn(port="dns", proto="UDP")
    s = svc(u, port=53, proto="UDP", node_port=30053, type="NodePort")
    old = {u: (ep("10.180.0.1"), ep("10.180.0.2"))}
    new = {u: (ep("10.180.0.2"),)}
    assert stale_entries({u: s}, old, {u: s}, new) == sorted(
        [
            Deletion("UDP", dst="172.30.0.41", nat="10.180.0.1"),
            Deletion("UDP", dport=30053, nat="10.180.0.1"),
        ]
    )
    assert stale_entries({u: s}, {}, {u: s}, new) == sorted(
        [Deletion("UDP", dst="172.30.0.41"), Deletion("UDP", dport=30053)]
    )
    t = spn()
    assert stale_entries({t: svc()}, {t: (ep("10.180.0.1"),)}, {t: svc()}, {}) == []
    assert Deletion("UDP", dst="1.2.3.4", nat="10.0.0.1").argv() == [
        "conntrack",
        "-D",
        "-p",
        "udp",
        "--orig-dst",
        "1.2.3.4",
        "--dst-nat",
        "10.0.0.1",
    ]


def test_cleanup_removes_jumps_and_kube_chains_only():
    saved = textwrap.dedent("""\
        *nat
        :PREROUTING ACCEPT [0:0]
        :POSTROUTING ACCEPT [0:0]
        :KUBE-SERVICES - [0:0]
        :KUBE-SVC-X - [0:0]
        :FLANNEL-POSTRTG - [0:0]
        -A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
        -A POSTROUTING -j FLANNEL-POSTRTG
        -A KUBE-SERVICES -j KUBE-SVC-X
        COMMIT
        """)
    assert cleanup_input(saved, "nat") == textwrap.dedent("""\
        *nat
        :KUBE-SERVICES - [0:0]
        :KUBE-SVC-X - [0:0]
        -D PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
        -X KUBE-SERVICES
        -X KUBE-SVC-X
        COMMIT
        """)


# -- a small packet tracer over the rendered nat rules ----------------------------------


def trace(
    text: str,
    src: str,
    dst: str,
    dport: int,
    proto: str = "tcp",
    local_dst: bool = False,
    local_src: bool = False,
) -> set[tuple[str, bool]]:
    """Every (DNAT destination, masqueraded) a packet can end in, following all random branches."""
    chains: dict[str, list[list[str]]] = {}
    for ln in nat(text):
        if ln.startswith("-A "):
            w = shlex.split(ln)
            chains.setdefault(w[1], []).append(w[2:])

    def match(w: list[str]) -> tuple[bool, bool]:  # (matches, is random branch)
        i, ok, rnd = 0, True, False
        while i < len(w) and w[i] != "-j":
            neg = w[i] == "!"
            if neg:
                i += 1
            k, v = w[i], w[i + 1] if i + 1 < len(w) else ""
            res = True
            if k == "-d":
                res = ipaddress.ip_address(dst) in ipaddress.ip_network(v, strict=False)
            elif k == "-s":
                res = ipaddress.ip_address(src) in ipaddress.ip_network(v, strict=False)
            elif k == "--dport":
                res = int(v) == dport
            elif k == "-p":
                res = v == proto
            elif k == "--dst-type":
                res = local_dst
            elif k == "--src-type":
                res = local_src
            elif k == "--probability":
                rnd = True
            elif k == "--rcheck":
                res = False  # no affinity entry yet
            ok = ok and (res != neg)
            i += (
                2
                if k
                in (
                    "-d",
                    "-s",
                    "--dport",
                    "-p",
                    "--dst-type",
                    "--src-type",
                    "--probability",
                    "-m",
                    "--comment",
                    "--mode",
                    "--name",
                    "--seconds",
                )
                else 1
            )
        return ok, rnd

    out: set[tuple[str, bool]] = set()

    def walk(chain: str, masq: bool) -> bool:  # True when the packet left the chain (DNAT)
        for w in chains.get(chain, []):
            ok, rnd = match(w)
            if not ok:
                continue
            j = w[w.index("-j") + 1]
            if j == "KUBE-MARK-MASQ":
                masq = True
            elif j == "DNAT":
                out.add((w[w.index("--to-destination") + 1], masq))
                return True
            elif j in chains:
                done = walk(j, masq)
                if done and not rnd:
                    return True
        return False

    walk("KUBE-SERVICES", False)
    return out


def test_trace_cluster_ip_nodeport_and_hairpin():
    s2 = spn("ns2", "svc2")
    services = {
        spn(): svc(),
        s2: svc(s2, ip="172.30.0.42", node_port=30080, type="NodePort", external_local=True),
    }
    eps = {
        spn(): (ep("10.0.0.5"), ep("10.180.0.2", node="node2")),
        s2: (ep("10.0.0.6"), ep("10.180.0.3", node="node2")),
    }
    text = render(services, eps, CTX)
    # from a pod: both endpoints, no masquerade (except hairpin to itself)
    assert trace(text, "10.0.0.2", "172.30.0.41", 80) == {
        ("10.0.0.5:80", False),
        ("10.180.0.2:80", False),
    }
    assert ("10.0.0.5:80", True) in trace(text, "10.0.0.5", "172.30.0.41", 80)  # hairpin
    # from outside the cluster CIDR: masqueraded
    assert trace(text, "192.168.1.1", "172.30.0.41", 80) == {
        ("10.0.0.5:80", True),
        ("10.180.0.2:80", True),
    }
    # NodePort with externalTrafficPolicy Local from outside: local endpoint only, client IP kept
    assert trace(text, "192.168.1.1", "172.30.5.11", 30080, local_dst=True) == {
        ("10.0.0.6:80", False)
    }
    # ... from a pod: short-circuited to the cluster chain (any endpoint)
    assert {d for d, _ in trace(text, "10.0.0.9", "172.30.5.11", 30080, local_dst=True)} == {
        "10.0.0.6:80",
        "10.180.0.3:80",
    }
    # wrong port: nothing
    assert trace(text, "10.0.0.2", "172.30.0.41", 81) == set()


def test_plain_cluster_ip_fast_path_renders_what_the_general_path_renders():
    from kubeproxy.iptables import render as r

    contexts = [
        CTX,
        NodeContext(node_name="node1", cluster_cidr="10.0.0.0/24", masquerade_all=True),
        NodeContext(node_name="node1"),  # no cluster CIDR: no masquerade rule
        NodeContext(node_name="node1", cluster_cidr="10%0/24"),  # '%' in a literal of the format
    ]
    ports = [
        (svc(), [ep("10.0.0.2")]),
        (svc(name=spn(name="udp", proto="UDP"), proto="UDP", port=53), [ep("10.0.0.3", 53)]),
        (svc(name=spn(name="sctp", proto="SCTP"), proto="SCTP"), [ep("10.0.0.4"), ep("10.0.0.5")]),
        # several endpoints, given unsorted, on other nodes
        (
            svc(name=spn(name="many", port=""), port=8080),
            [ep(f"10.0.{i % 3}.{20 - i}", 8000 + i, node=f"n{i}") for i in range(7)],
        ),
    ]
    fast = 0
    for ctx in contexts:
        for large in (False, True):
            for s, eps in ports:
                want = r._render_general(s, eps, ctx, large)
                got = r.render_service(s, eps, ctx, large)
                assert got == want, (s, ctx, large)
                assert r._render_plain(s, r._sorted_eps(eps), ctx, large) == want
                fast += 1
    assert fast == 32
    # ports the fast path leaves to the general one
    others = [
        (svc(node_port=30080), [ep("10.0.0.2")]),
        (svc(session_affinity_timeout=10800), [ep("10.0.0.2")]),
        (svc(internal_local=True), [ep("10.0.0.2")]),
        (svc(external_ips=("192.0.2.1",)), [ep("10.0.0.2")]),
        (svc(), [ep("10.0.0.2", ready=False, serving=True, terminating=True)]),
        (svc(), []),
    ]
    for s, eps in others:
        assert r.render_service(s, eps, CTX) == r._render_general(s, eps, CTX)
