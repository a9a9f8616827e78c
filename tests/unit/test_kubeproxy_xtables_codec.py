"""The x_tables codec without a kernel: our rule lines -> entries -> blob -> chains and back.

The byte layouts themselves are pinned against the kernel by
tests/netns/test_kubeproxy_xtables.py (iptables-legacy-save of what we wrote == of what
iptables-legacy-restore wrote); here: the fast path gives the general parser's bytes, a
compiled table splits back into the same chains with jumps relocated, and the few
layout facts the netns test found the hard way.
"""

from __future__ import annotations

import struct
from dataclasses import replace

import numpy as np
import pytest

from kubecommon.model import Endpoint, ServicePortInfo, ServicePortName
from kubeproxy.iptables.render import (
    FILTER_CHAINS,
    JUMP_RULES,
    KUBE_SERVICES,
    NAT_CHAINS,
    NodeContext,
    Renderer,
    endpoint_chain,
    render_service,
)
from kubeproxy.iptables.xtables_codec import (
    ENTRY_SIZE,
    FALLTHROUGH,
    RETURN_ENTRY,
    Chain,
    EncodeError,
    Encoder,
    Table,
    compile_table,
    describe,
    masked,
    parse_table,
    reindex,
)


def spn(ns="ns1", name="svc1", port="p80", proto="TCP") -> ServicePortName:
    return ServicePortName(ns, name, port, proto)


def scenario() -> tuple[dict, dict]:
    """Every kind of service the renderer distinguishes (shared with the netns oracle)."""
    services: dict = {}
    endpoints: dict = {}

    def add(s: ServicePortInfo, *eps: Endpoint) -> None:
        services[s.name] = s
        endpoints[s.name] = eps

    ep = Endpoint
    add(
        ServicePortInfo(spn(), "172.30.0.41", 80, "TCP", 80),
        ep("10.180.0.1", 80, node_name="node1"),
        ep("10.180.0.2", 80, node_name="node2"),
    )
    add(
        ServicePortInfo(
            spn(name="np"), "172.30.0.42", 80, "TCP", 80, node_port=30080, type="NodePort"
        ),
        ep("10.180.0.3", 8080, node_name="node1"),
    )
    add(
        ServicePortInfo(
            spn(name="loc"), "172.30.0.43", 80, "TCP", 80, node_port=30081, type="LoadBalancer", external_local=True,
            health_check_node_port=30000, external_ips=("192.0.2.1",), load_balancer_ips=("192.0.2.2",),
        ),
        ep("10.180.0.4", 80, node_name="node1"), ep("10.180.0.5", 80, node_name="node2"),
    )  # fmt: skip
    add(
        ServicePortInfo(spn(name="aff"), "172.30.0.44", 80, "TCP", 80, session_affinity_timeout=10800),
        ep("10.180.0.6", 80), ep("10.180.0.7", 80), ep("10.180.0.8", 80),
    )  # fmt: skip
    add(
        ServicePortInfo(
            spn(name="none"),
            "172.30.0.45",
            80,
            "TCP",
            80,
            node_port=30082,
            type="NodePort",
            external_ips=("192.0.2.3",),
        )
    )
    add(
        ServicePortInfo(spn(name="udp", port="dns", proto="UDP"), "172.30.0.46", 53, "UDP", 5353),
        ep("10.180.0.9", 5353),
    )
    add(
        ServicePortInfo(spn(name="sctp", port="s", proto="SCTP"), "172.30.0.46", 9, "SCTP", 9),
        ep("10.180.0.9", 9),
    )
    add(
        ServicePortInfo(
            spn(name="itl", port="a"), "172.30.0.47", 80, "TCP", 80, internal_local=True
        ),
        ep("10.180.0.10", 80, node_name="node2"),
    )
    add(
        ServicePortInfo(
            spn(name="itl", port="b"), "172.30.0.47", 81, "TCP", 81, internal_local=True
        ),
        ep("10.180.0.11", 81, node_name="node1"),
    )
    add(
        ServicePortInfo(spn(name="elnone"), "172.30.0.49", 80, "TCP", 80, node_port=30083, type="NodePort", external_local=True, load_balancer_ips=("192.0.2.4",)),
        ep("10.180.0.12", 80, node_name="node2"),
    )  # fmt: skip
    return services, endpoints


CONTEXTS = {
    "cluster-cidr": NodeContext("node1", "10.0.0.0/24"),
    "masquerade-all+nodeport-ips": NodeContext(
        "node1", "", masquerade_all=True, nodeport_ips=("172.18.0.3", "127.0.0.1")
    ),
    "localhost-nodeports+liberal": NodeContext(
        "node1", "10.0.0.0/24", localhost_nodeports=True, conntrack_tcp_liberal=True
    ),
}


def rule_lines(ctx: NodeContext) -> list[str]:
    s, e = scenario()
    text = Renderer().render(s, e, ctx).restore_input()
    return [ln for ln in text.splitlines() if ln.startswith("-A ")] + [
        j.save_line() for j in JUMP_RULES
    ]


@pytest.mark.parametrize("ctx", CONTEXTS.values(), ids=CONTEXTS.keys())
def test_fast_path_gives_the_general_parsers_bytes(ctx):
    enc = Encoder()
    fast = 0
    for ln in rule_lines(ctx):
        general = enc.parse_line(ln)
        quick = enc._fast(ln)
        if quick is not None:
            fast += 1
            assert quick == general, ln
        assert enc.line(ln) == general
    assert fast > 20  # the shapes of KUBE-SVC/SEP/SERVICES lines do take the fast path


def test_entry_layout_facts():
    enc = Encoder()
    e = enc.line(
        "-A KUBE-SVC-X -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-Y"
    )
    d = describe(e.entry)
    assert e.label == "KUBE-SEP-Y" and d["target"][0] == ""  # a jump is a standard target
    (name, rev, data) = d["matches"][0]
    assert (name, rev) == ("statistic", 0)
    # probability as lround(2^31 * p), and libxt_statistic's u.nth.count alias of it
    assert struct.unpack_from("<HHIII", data) == (0, 0, 0x40000000, 0, 0x40000000)
    e = enc.line("-A KUBE-SEP-Y -m tcp -p tcp -j DNAT --to-destination 10.1.2.3:8080")
    name, rev, data = describe(e.entry)["target"]
    assert (name, rev, len(data)) == ("DNAT", 2, 48)  # struct nf_nat_range2
    assert (
        data[:8] == struct.pack("<I4s", 3, bytes([10, 1, 2, 3]))
        and data[36:40] == (8080).to_bytes(2, "big") * 2
    )
    e = enc.line(
        '-A KUBE-SERVICES -m comment --comment "a b" -m tcp -p tcp -d 10.96.0.1 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ'
    )
    d = describe(e.entry)
    assert d["dst"] == "10.96.0.1/255.255.255.255" and d["src"] == "10.0.0.0/255.0.0.0"
    assert d["invflags"] == 0x08 and d["proto"] == 6
    assert [m[0] for m in d["matches"]] == ["comment", "tcp"]
    assert d["matches"][0][2].rstrip(b"\0") == b"a b" and len(d["matches"][0][2]) == 256


@pytest.mark.parametrize(
    "line",
    [
        "-A X -m limit --limit 5/s -j ACCEPT",  # unknown match
        "-A X -j LOG --log-prefix x",  # unknown target
        "-A X -m tcp -p tcp --dport 80 --syn -j ACCEPT",  # unknown option
        "-A X -i eth0 -j ACCEPT",  # interfaces are not rendered
        "-A X -s 2001:db8::1 -j ACCEPT",  # IPv6
        '-A X -m comment --comment "unbalanced -j ACCEPT',
        "-I X 1 -j ACCEPT",
    ],
)
def test_unknown_grammar_raises_encode_error(line):
    with pytest.raises(EncodeError):
        Encoder().line(line)


def build_table(ctx: NodeContext) -> Table:
    """A nat table as the kernel would hold it after our first sync, plus foreign bits."""
    enc = Encoder()
    t = Table("nat", 0b11011, {})
    for h, name in ((0, "PREROUTING"), (1, "INPUT"), (3, "OUTPUT"), (4, "POSTROUTING")):
        policy = enc.line(f"-A {name} -j ACCEPT").entry
        t.chains[name] = Chain(name, hook=h, tail=policy)
    s, e = scenario()
    rs = Renderer().render(s, e, ctx)
    text = rs.restore_input()
    nat = text[text.index("*nat") :]
    for ln in nat.splitlines():
        if ln.startswith(":"):
            t.chains.setdefault(ln[1:].split()[0], Chain(ln[1:].split()[0]))
        elif ln.startswith("-A "):
            x = enc.line(ln)
            c = t.chains[x.chain]
            c.entries.append(x.entry)
            c.labels.append(x.label)
    for j in JUMP_RULES:
        if j.table == "nat":
            x = enc.line(j.save_line())
            t.chains[j.src].entries.insert(0, x.entry)
            t.chains[j.src].labels.insert(0, x.label)
    t.chains["FOREIGN"] = Chain("FOREIGN")
    x = enc.line("-A FOREIGN -s 192.0.2.9")  # no target: falls through
    t.chains["FOREIGN"].entries += [x.entry]
    t.chains["FOREIGN"].labels += [x.label]
    x = enc.line("-A POSTROUTING -j FOREIGN")
    t.chains["POSTROUTING"].entries.append(x.entry)
    t.chains["POSTROUTING"].labels.append(x.label)
    t.chains["EMPTY"] = Chain("EMPTY")
    for c in t.chains.values():
        c.kidx = [-1] * len(c.entries)
    return t


@pytest.mark.parametrize("ctx", CONTEXTS.values(), ids=CONTEXTS.keys())
def test_compiled_table_splits_back_into_the_same_chains(ctx):
    t = build_table(ctx)
    c = compile_table(t)
    back = parse_table("nat", t.valid_hooks, c.hook_entry, c.underflow, bytes(c.blob))
    assert list(back.chains)[:4] == ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"]
    assert set(back.chains) == set(t.chains)
    for name, ch in t.chains.items():
        b = back.chains[name]
        assert b.labels == ch.labels, name
        assert len(b.entries) == len(ch.entries)
        for x, y in zip(b.entries, ch.entries, strict=True):
            assert x[:ENTRY_SIZE] == y[:ENTRY_SIZE]
            assert x[ENTRY_SIZE:-8] == y[ENTRY_SIZE:-8]  # all but a jump's verdict
    assert back.chains["FOREIGN"].labels == [FALLTHROUGH]
    assert (
        c.num_entries
        == sum(len(ch.entries) + (1 if ch.hook is not None else 2) for ch in t.chains.values()) + 1
    )
    # user chains in name order (as libiptc lays them out), the built-ins first
    offsets = []
    pos = 0
    while pos < len(c.blob):
        offsets.append(pos)
        pos += struct.unpack_from("<H", c.blob, pos + 90)[0]
    assert pos == len(c.blob) and len(offsets) == c.num_entries


def test_jumps_land_on_the_first_rule_of_their_chain_and_reindex_counts_entries():
    t = build_table(CONTEXTS["cluster-cidr"])
    c = compile_table(t)
    back = parse_table("nat", t.valid_hooks, c.hook_entry, c.underflow, bytes(c.blob))
    # the jump from PREROUTING lands right after KUBE-SERVICES' ERROR head
    blob = bytes(c.blob)
    at = c.hook_entry[0]
    noff = struct.unpack_from("<H", blob, at + 90)[0]
    verdict = struct.unpack_from("<i", blob, at + noff - 8)[0]
    # parsed entries are the encoder's bytes again (verdict, counters, comefrom zeroed)
    assert back.chains["PREROUTING"].entries[0] == t.chains["PREROUTING"].entries[0]
    assert back.chains["KUBE-MARK-MASQ"].entries == t.chains["KUBE-MARK-MASQ"].entries
    head = bytes(c.blob).index(b"KUBE-SERVICES\0".ljust(32, b"\0"))
    assert verdict == head + 32  # errorname ends the head entry
    assert bytes(c.blob)[verdict - 64 + 2 : verdict - 64 + 7] == b"ERROR"  # the head's target name
    reindex(back)
    assert (
        back.chains["POSTROUTING"].tail_kidx
        == sum(
            len(back.chains[n].entries) + 1
            for n in ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")
        )
        - 1
    )


def test_user_chain_tail_and_jump_to_missing_chain():
    t = build_table(CONTEXTS["cluster-cidr"])
    x = Encoder().line("-A FOREIGN -j NOWHERE")
    t.chains["FOREIGN"].entries.append(x.entry)
    t.chains["FOREIGN"].labels.append(x.label)
    t.chains["FOREIGN"].kidx.append(-1)
    with pytest.raises(ValueError, match="NOWHERE"):
        compile_table(t)
    assert describe(RETURN_ENTRY)["target"][0] == "" and len(RETURN_ENTRY) == ENTRY_SIZE + 40


def shifted(s: dict, e: dict) -> tuple[dict, dict]:
    """The same services under other names, addresses and ports (same line shapes)."""

    def ip(a: str) -> str:
        x = a.split(".")
        return f"{x[0]}.{int(x[1]) + 1}.{int(x[2]) + 7}.{int(x[3]) + 100}"

    s2, e2 = {}, {}
    for k, v in s.items():
        k2 = ServicePortName("other-ns", k.name + "-two", k.port, k.protocol)
        s2[k2] = replace(
            v, name=k2, cluster_ip=ip(v.cluster_ip), port=v.port + 1000,
            node_port=v.node_port and v.node_port + 1, external_ips=tuple(map(ip, v.external_ips)),
            load_balancer_ips=tuple(map(ip, v.load_balancer_ips)),
            health_check_node_port=v.health_check_node_port and v.health_check_node_port + 1,
        )  # fmt: skip
        e2[k2] = tuple(replace(x, ip=ip(x.ip), port=x.port + 2) for x in e[k])
    return s2, e2


def fragments(s: dict, e: dict, ctx: NodeContext, large: bool) -> list[str]:
    out = []
    for k in s:
        r = render_service(s[k], e[k], ctx, large)
        out += [r.chain_rules, r.nat_services, r.nat_nodeports, r.filter_services]
        out += [r.filter_external, r.filter_nodeports]
    return [f for f in out if f]


@pytest.mark.parametrize("large", [False, True], ids=["comments", "large-cluster"])
@pytest.mark.parametrize("ctx", CONTEXTS.values(), ids=CONTEXTS.keys())
def test_templates_give_the_general_parsers_bytes_for_every_rendered_shape(ctx, large):
    s, e = scenario()
    enc = Encoder()
    for f in fragments(s, e, ctx, large):  # learn the shapes from one set of services
        assert enc.templates.chains(f) == enc._general_chains(f), f
    s2, e2 = shifted(s, e)
    templated = 0
    for f in fragments(s2, e2, ctx, large):  # ... and apply them to others
        got = enc.templates.chains(f)
        if got is not None:
            templated += f.count("\n")
            assert got == enc._general_chains(f), f
        assert enc.chains(f) == enc._general_chains(f), f
    total = sum(f.count("\n") for f in fragments(s2, e2, ctx, large))
    assert templated >= 0.9 * total  # nearly every line of the second set is a template hit


def test_template_falls_back_for_values_it_cannot_take():
    enc = Encoder()
    short = '-A KUBE-SERVICES -m comment --comment "a" -m tcp -p tcp -d 172.30.0.1 --dport 80 -j KUBE-SVC-AAAAAAAAAAAAAAAA\n'
    assert enc.templates.chains(short) == enc._general_chains(short)
    for bad in (short.replace('"a"', '"' + "c" * 300 + '"'), short.replace("80", "70000")):
        assert enc.templates.chains(bad) is None  # same shape, value out of the template's reach
        with pytest.raises(EncodeError):
            enc.chains(bad)
    longer = short.replace('"a"', '"' + "b" * 200 + '"').replace("172.30.0.1", "10.1.2.3")
    assert enc.templates.chains(longer) == enc._general_chains(longer)


def shaped(s: dict, e: dict, ctx: NodeContext, large: bool) -> list[tuple[str, tuple]]:
    """The fragments the renderer gives as (format, fields) too, with their shapes."""
    out = []
    for k in s:
        r = render_service(s[k], e[k], ctx, large)
        out += [
            (r.chain_rules, r.chain_rules_shape),
            (r.nat_services, r.nat_services_shape),
            (r.nat_nodeports, r.nat_nodeports_shape),
        ]
    return [(f, sh) for f, sh in out if f]


@pytest.mark.parametrize("large", [False, True], ids=["comments", "large-cluster"])
@pytest.mark.parametrize("ctx", CONTEXTS.values(), ids=CONTEXTS.keys())
def test_renderer_shapes_give_the_general_parsers_bytes(ctx, large):
    s, e = scenario()
    enc = Encoder()
    for f, (fmt, fields) in shaped(s, e, ctx, large):
        assert fmt % fields == f  # the shape is exactly the text
        assert enc.templates.chains(f, (fmt, fields)) == enc._general_chains(f), f
    s2, e2 = shifted(s, e)
    templated = total = 0
    for f, shape in shaped(s2, e2, ctx, large):  # learnt shapes, other values
        total += f.count("\n")
        got = enc.templates.chains(f, shape)
        if got is not None:
            templated += f.count("\n")
            assert got == enc._general_chains(f), f
        assert Encoder().chains(f, shape) == enc._general_chains(f), f
    assert templated >= 0.9 * total


def test_a_shape_that_is_not_the_text_is_not_used():
    s, e = scenario()
    ctx = CONTEXTS["cluster-cidr"]
    (f, (fmt, fields)), (g, other) = shaped(s, e, ctx, False)[:2]
    enc = Encoder()
    assert enc.chains(f, (fmt, fields)) == enc._general_chains(f)  # learnt
    # a stale shape (the text was changed after rendering): the text wins
    changed = f.replace("-j KUBE-MARK-MASQ", "-j KUBE-MARK-DROP", 1)
    assert changed != f
    assert Encoder().chains(changed, (fmt, fields)) == enc._general_chains(changed)
    assert enc.templates.chains(changed, (fmt, fields)) == enc._general_chains(changed)
    # another fragment's shape, a shape with too few fields, a format that is no shape
    assert enc.chains(g, (fmt, fields)) == enc._general_chains(g)
    assert enc.templates.chains(f, (fmt, fields[:-1])) == enc._general_chains(f)
    assert Encoder().templates.chains(f, (fmt.replace("%s", "%d", 1), fields)) == (
        enc._general_chains(f)
    )


@pytest.mark.parametrize(
    "field, value",
    [
        ("ip", "10.0.0.9 -j DROP"),  # inet_aton stops at the blank: the bytes of 10.0.0.9
        ("ip", "10.9"),  # inet_aton's short form, not an address to the general parser
        ("comment", '"a" -j DROP "b"'),  # quotes inside a quoted comment
        ("name", "KUBE-SVC-AAAAAAA AAAAAAAA"),  # right length, not one token
    ],
)
def test_a_shape_field_that_is_not_one_token_of_its_kind_takes_the_general_path(field, value):
    line = "-A KUBE-SERVICES -m comment --comment %s -m tcp -p tcp -d %s --dport %s -j %s\n"
    good = ('"ns/a:p cluster IP"', "172.30.0.1", "80", "KUBE-SVC-AAAAAAAAAAAAAAAA")
    enc = Encoder()
    assert enc.chains(line % good, (line, good)) == enc._general_chains(line % good)
    k = {"comment": 0, "ip": 1, "name": 3}[field]
    bad = (*good[:k], value, *good[k + 1 :])
    text = line % bad
    assert enc.templates.chains(text, (line, bad)) is None  # not through the template
    try:
        want = enc._general_chains(text)
    except EncodeError:
        with pytest.raises(EncodeError):
            enc.chains(text, (line, bad))
    else:
        assert enc.chains(text, (line, bad)) == want


@pytest.mark.parametrize("large", [False, True], ids=["comments", "large-cluster"])
@pytest.mark.parametrize("ctx", CONTEXTS.values(), ids=CONTEXTS.keys())
def test_fused_fragment_templates_give_the_line_templates_bytes(ctx, large):
    s, e = scenario()
    enc = Encoder()
    for f, shape in shaped(s, e, ctx, large):
        enc.chains(f, shape)
    fused = [t for t in enc.templates._formats.values() if t is not None and t[0].fused]
    assert len(fused) >= len(enc.templates._formats) // 2
    s2, e2 = shifted(s, e)
    for f, (fmt, fields) in shaped(s2, e2, ctx, large):
        t = enc.templates._formats.get(fmt)
        if t is not None and t[0].fused is not None:
            assert t[0].fused(fields) == t[0].make_lines(fields) == enc._general_chains(f)


def test_a_fused_template_refuses_chains_grouped_otherwise():
    s, e = scenario()
    k = next(k for k in s if len(e[k]) >= 2)
    r = render_service(s[k], e[k], CONTEXTS["cluster-cidr"])
    fmt, fields = r.chain_rules_shape
    enc = Encoder()
    enc.chains(r.chain_rules, (fmt, fields))
    t = enc.templates._formats[fmt][0]
    seps = [v for v in fields if v.startswith("KUBE-SEP-")]
    a = seps[0]
    b = next(v for v in seps if v != a)
    merged = tuple(a if v == b else v for v in fields)  # two endpoint chains become one
    assert t.fused(merged) is None
    assert t.make(merged) == t.make_lines(merged) == enc._general_chains(fmt % merged)


@pytest.mark.parametrize("n", [3, 100], ids=["few", "many"])
def test_chains_added_in_a_batch_are_laid_out_like_chains_added_one_by_one(n):
    enc = Encoder()
    one, batch = build_table(CONTEXTS["cluster-cidr"]), build_table(CONTEXTS["cluster-cidr"])
    for t in (one, batch):  # a compiled table: sorted names cached, dirty chains tracked
        compile_table(t)
        reindex(t)
        t.user_chains()
    new = []
    for i in range(n):
        x = enc.line(f"-A {endpoint_chain(spn(), f'10.1.{i}.1:80')} -j KUBE-MARK-MASQ")
        new.append((x.chain, [x.entry], [x.label]))
    for name, entries, labels in new:
        one.add(Chain(name, entries=entries, labels=labels))
    batch.add_user_chains([Chain(name, entries=e, labels=lab) for name, e, lab in new])
    assert batch.user_chains() == one.user_chains() == sorted(one.user_chains())
    assert batch.dirty == one.dirty and len(one.dirty) == n
    assert bytes(compile_table(batch).blob) == bytes(compile_table(one).blob)


def test_a_chain_name_of_32_bytes_is_refused_when_laid_out():
    t = build_table(CONTEXTS["cluster-cidr"])
    t.add(Chain("X" * 32))
    with pytest.raises(EncodeError, match="longer than 31"):
        compile_table(t)


def _fresh_copy(t: Table) -> Table:
    out = Table(t.name, t.valid_hooks, {})
    for name, c in t.chains.items():
        out.chains[name] = Chain(
            name, hook=c.hook, entries=list(c.entries), labels=list(c.labels),
            kidx=[-1] * len(c.entries) if c.hook is not None else [], tail=c.tail,
        )  # fmt: skip
    return out


@pytest.mark.parametrize("ctx", CONTEXTS.values(), ids=CONTEXTS.keys())
def test_a_patched_layout_equals_a_full_one_and_maps_kept_entries(ctx):
    enc = Encoder()
    t = build_table(ctx)
    c1 = compile_table(t)
    reindex(t)
    users = t.user_chains()
    sep = next(n for n in users if n.startswith("KUBE-SEP-"))
    svc = next(n for n in users if n.startswith("KUBE-SVC-"))
    # entries leaving the table: the old versions of two chains, and EMPTY (head, RETURN)
    leaving = sum(len(t.chains[n].entries) + 2 for n in (sep, "KUBE-SERVICES", "EMPTY"))
    # one chain's rules change, one chain (nobody jumps to) goes, two new ones come, one of
    # them jumped to from a rewritten top-level chain, one sorting before everything
    x = enc.line(f"-A {sep} -s 10.9.9.9 -j KUBE-MARK-MASQ")
    t.chains[sep].set_rules([x.entry, *t.chains[sep].entries], [x.label, *t.chains[sep].labels])
    t.touch(sep)
    t.drop("EMPTY")
    new = t.add(Chain("KUBE-SEP-AAAAAAAAAAAAAAAA"))
    y = enc.line("-A KUBE-SEP-AAAAAAAAAAAAAAAA -j KUBE-MARK-MASQ")
    new.set_rules([y.entry], [y.label])
    t.add(Chain("A-FIRST"))
    ks = t.chains["KUBE-SERVICES"]
    z = enc.line("-A KUBE-SERVICES -j KUBE-SEP-AAAAAAAAAAAAAAAA")
    ks.set_rules([z.entry, *ks.entries], [z.label, *ks.labels])
    t.touch("KUBE-SERVICES")
    assert t.layout is not None and t.dirty is not None  # the patch path will be taken
    c2 = compile_table(t)
    c3 = compile_table(_fresh_copy(t))  # laid out from scratch
    assert bytes(c2.blob) == bytes(c3.blob)
    assert (c2.offsets == c3.offsets).all() and c2.num_entries == c3.num_entries
    assert (c2.hook_entry, c2.underflow) == (c3.hook_entry, c3.underflow)
    # kept entries point at the same rule in the old table (jump verdicts aside)
    kept = 0
    for i, j in enumerate(c2.old_index.tolist()):
        if j < 0:
            continue
        kept += 1
        a, b = int(c2.offsets[i]), int(c1.offsets[j])
        n = struct.unpack_from("<H", c2.blob, a + 90)[0]
        assert bytes(c2.blob[a : a + n - 8]) == bytes(c1.blob[b : b + n - 8])
    assert kept == c1.num_entries - leaving
    # a patched layout can be patched again
    reindex(t)
    t.touch(svc)
    c4 = compile_table(t)
    assert bytes(c4.blob) == bytes(c3.blob)


def _kernel_first(c) -> dict[str, int]:
    """User chain -> index of its first rule, as the kernel's table (the compiled blob) says."""
    back = parse_table("nat", 0b11011, c.hook_entry, c.underflow, bytes(c.blob))
    return back.kfirst


def test_reindex_from_the_layout_gives_the_kernels_indices_full_and_patched():
    enc = Encoder()
    t = build_table(CONTEXTS["cluster-cidr"])
    c = compile_table(t)
    reindex(t)  # from the layout just compiled
    users = set(t.user_chains())
    assert {k: v for k, v in t.kfirst.items() if k in users} == _kernel_first(c)
    slow = build_table(CONTEXTS["cluster-cidr"])
    slow.dirty = None  # no usable layout: counted chain by chain
    reindex(slow)
    assert slow.kfirst == _kernel_first(c)
    # a patched layout (one chain rewritten, one added) reindexes the same way
    sep = next(n for n in t.user_chains() if n.startswith("KUBE-SEP-"))
    leaving = len(t.chains[sep].entries) + 2
    x = enc.line(f"-A {sep} -s 10.9.9.9 -j KUBE-MARK-MASQ")
    t.chains[sep].set_rules([x.entry, *t.chains[sep].entries], [x.label, *t.chains[sep].labels])
    t.touch(sep)
    assert sep not in t.kfirst  # its counters are not kept
    t.add(Chain("KUBE-SEP-AAAAAAAAAAAAAAAA"))
    c2 = compile_table(t)  # patched
    assert (c2.old_index >= 0).sum() == c.num_entries - leaving
    t.dirty = None
    c3 = compile_table(t)  # laid out anew: the kept runs come from kfirst
    assert bytes(c3.blob) == bytes(c2.blob)
    assert (c3.old_index[:-1] == c2.old_index[:-1]).all()  # the final ERROR entry aside
    reindex(t)
    users = set(t.user_chains())
    assert {k: v for k, v in t.kfirst.items() if k in users} == _kernel_first(c3)


@pytest.mark.parametrize("ctx", CONTEXTS.values(), ids=CONTEXTS.keys())
def test_a_compiled_blob_needs_no_masking_full_patched_and_from_a_parsed_table(ctx):
    """The writer compares the kernel's table with the blob it wrote without masking its
    own copy (counters and comefrom are zero as compiled); a full layout, a patched one and
    one from a parsed table (counters and comefrom set, as the kernel hands them over)."""
    t = build_table(ctx)
    c = compile_table(t)
    assert (np.frombuffer(c.blob, dtype="<u4") == masked(c.blob, c.offsets)).all()
    reindex(t)
    sep = next(n for n in t.user_chains() if n.startswith("KUBE-SEP-"))
    t.chains[sep].set_rules(list(t.chains[sep].entries[:1]), list(t.chains[sep].labels[:1]))
    t.touch(sep)
    c2 = compile_table(t)  # patched
    assert (np.frombuffer(c2.blob, dtype="<u4") == masked(c2.blob, c2.offsets)).all()
    kernel = bytearray(c2.blob)  # counters and comefrom as the kernel fills them in
    for o in c2.offsets.tolist():
        struct.pack_into("<IQQ", kernel, o + 92, 0x1F, o + 1, 7 * o + 3)
    back = parse_table("nat", t.valid_hooks, c2.hook_entry, c2.underflow, bytes(kernel))
    c3 = compile_table(back)
    assert (np.frombuffer(c3.blob, dtype="<u4") == masked(c3.blob, c3.offsets)).all()
    assert bytes(c3.blob) == bytes(c2.blob)


def test_port_chains_follow_the_declared_chains_and_refuse_undeclared_ones():
    enc = Encoder()
    text = "-A KUBE-SEP-B -j ACCEPT\n-A KUBE-SVC-A -j KUBE-SEP-B\n"
    got = enc.port_chains(("KUBE-SVC-A", "KUBE-SEP-B", "KUBE-SEP-C"), text)
    assert list(got) == ["KUBE-SVC-A", "KUBE-SEP-B", "KUBE-SEP-C"]  # declared order
    assert got["KUBE-SEP-C"] == ([], [])  # declared, no rules: an empty chain
    assert got["KUBE-SVC-A"][1] == ["KUBE-SEP-B"] and got["KUBE-SEP-B"] == enc.chains(text)["KUBE-SEP-B"]
    with pytest.raises(EncodeError, match="KUBE-SEP-B"):
        enc.port_chains(("KUBE-SVC-A",), text)


@pytest.mark.parametrize("ctx", CONTEXTS.values(), ids=CONTEXTS.keys())
def test_top_pieces_join_to_the_top_level_texts_and_encode_like_them(ctx):
    s, e = scenario()
    rs = Renderer().render(s, e, ctx)
    enc = Encoder()
    for table, names in (("filter", FILTER_CHAINS), ("nat", NAT_CHAINS)):
        top = rs.filter_top if table == "filter" else rs.nat_top
        for c in names:
            pieces = rs.top_pieces(table, c)
            assert "".join(t for t, _ in pieces) == top[c], (table, c)
            entries, labels = enc.top_chain(table, c, pieces)
            whole = enc.chains(top[c]).get(c, ([], []))
            assert (entries, labels) == (whole[0], whole[1]), (table, c)
    assert any(shape for _, shape in rs.top_pieces("nat", KUBE_SERVICES))  # the renderer's hints
    with pytest.raises(EncodeError, match="other chains"):
        enc.top_chain("nat", KUBE_SERVICES, [("-A KUBE-NODEPORTS -j RETURN\n", None)])
