"""The nf_tables codec without a kernel: entries -> expressions -> netlink bytes, and back.

What iptables-nft 1.8.9 writes is pinned against the kernel by
tests/netns/test_kubeproxy_nft_writer.py (expression dumps of our batches == of
iptables-nft-restore's); here: the expression shapes of representative rules, the
netlink framing, what the codec refuses, and the error mapping.
"""

from __future__ import annotations

import struct

import pytest

from kubeproxy.iptables import nft_codec as nc
from kubeproxy.iptables.apply import RestoreWriter
from kubeproxy.iptables.nft_writer import ERESTART, GenerationMoved, NftWriter, _rule_text
from kubeproxy.iptables.xtables_codec import Encoder


def shape(line: str) -> list[tuple]:
    """(expression name, a few telling attributes) of one rule line."""
    e = Encoder().line(line)
    r = nc.rule_exprs(e.entry, e.label)
    out = []
    for name, *rest in nc.canon(nc.exprs_payload(r.exprs + r.compat)):
        d = dict(rest[0]) if rest and rest[0] else {}
        if name == "meta":
            out.append(("meta", struct.unpack(">I", d[2])[0]))
        elif name == "payload":
            out.append(("payload", *(struct.unpack(">I", d[k])[0] for k in (2, 3, 4))))
        elif name == "cmp":
            out.append(("cmp", struct.unpack(">I", d[2])[0], dict(d[3])[1]))
        elif name == "bitwise":
            out.append(("bitwise", dict(d[4])[1]))
        elif name in ("match", "target"):
            out.append((name, d[1].rstrip(b"\0").decode(), struct.unpack(">I", d[2])[0]))
        elif name == "immediate":
            v = dict(dict(d[2])[2])
            code = struct.unpack(">i", v[1])[0]
            out.append(("verdict", code, v[2].rstrip(b"\0").decode() if 2 in v else None))
        else:
            out.append((name,))
    return out


L4, EQ, NEQ = nc.NFT_META_L4PROTO, nc.NFT_CMP_EQ, nc.NFT_CMP_NEQ
NET, TRANSPORT = nc.NFT_PAYLOAD_NETWORK_HEADER, nc.NFT_PAYLOAD_TRANSPORT_HEADER

CASES = {
    "cluster IP jump": (
        '-A KUBE-SERVICES -m comment --comment "ns/s:p cluster IP" -m tcp -p tcp -d 10.96.0.1 --dport 80 -j KUBE-SVC-X',
        [("meta", L4), ("cmp", EQ, b"\x06"), ("payload", NET, 16, 4), ("cmp", EQ, bytes([10, 96, 0, 1])),
         ("match", "comment", 0), ("payload", TRANSPORT, 2, 2), ("cmp", EQ, b"\x00\x50"), ("counter",),
         ("verdict", nc.NFT_JUMP, "KUBE-SVC-X")],
    ),
    "masquerade unless from the pod CIDR (/24: three bytes)": (
        "-A KUBE-SVC-X -m tcp -p tcp -d 10.96.0.1 --dport 80 ! -s 10.244.0.0/24 -j KUBE-MARK-MASQ",
        [("meta", L4), ("cmp", EQ, b"\x06"), ("payload", NET, 12, 3), ("cmp", NEQ, bytes([10, 244, 0])),
         ("payload", NET, 16, 4), ("cmp", EQ, bytes([10, 96, 0, 1])), ("payload", TRANSPORT, 2, 2),
         ("cmp", EQ, b"\x00\x50"), ("counter",), ("verdict", nc.NFT_JUMP, "KUBE-MARK-MASQ")],
    ),
    "a /20 is four bytes and a mask": (
        "-A KUBE-EXT-X -s 10.0.16.0/20 -j KUBE-SVC-X",
        [("payload", NET, 12, 4), ("bitwise", b"\xff\xff\xf0\x00"), ("cmp", EQ, bytes([10, 0, 16, 0])),
         ("counter",), ("verdict", nc.NFT_JUMP, "KUBE-SVC-X")],
    ),
    "statistic stays an xt match": (
        "-A KUBE-SVC-X -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-Y",
        [("match", "statistic", 0), ("counter",), ("verdict", nc.NFT_JUMP, "KUBE-SEP-Y")],
    ),
    "DNAT: tcp without ports stays an xt match": (
        "-A KUBE-SEP-Y -m tcp -p tcp -j DNAT --to-destination 10.244.1.5:8080",
        [("meta", L4), ("cmp", EQ, b"\x06"), ("match", "tcp", 0), ("counter",), ("target", "DNAT", 2)],
    ),
    "mark with a mask, negated": (
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
        [("meta", nc.NFT_META_MARK), ("bitwise", struct.pack("<I", 0x4000)), ("cmp", NEQ, struct.pack("<I", 0x4000)),
         ("counter",), ("verdict", nc.NFT_RETURN, None)],
    ),
    "MASQUERADE --random-fully": (
        '-A KUBE-POSTROUTING -m comment --comment "snat" -j MASQUERADE --random-fully',
        [("match", "comment", 0), ("counter",), ("target", "MASQUERADE", 0)],
    ),
    "nodeports tail: ! -d 127.0.0.0/8 is one byte": (
        '-A KUBE-SERVICES -m comment --comment "np" -m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j KUBE-NODEPORTS',
        [("payload", NET, 16, 1), ("cmp", NEQ, b"\x7f"), ("match", "comment", 0), ("match", "addrtype", 1),
         ("counter",), ("verdict", nc.NFT_JUMP, "KUBE-NODEPORTS")],
    ),
    "udp health check accept": (
        "-A KUBE-NODEPORTS -m udp -p udp --dport 53 -j ACCEPT",
        [("meta", L4), ("cmp", EQ, b"\x11"), ("payload", TRANSPORT, 2, 2), ("cmp", EQ, b"\x00\x35"), ("counter",),
         ("verdict", nc.NF_ACCEPT, None)],
    ),
    "conntrack + DROP": (
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
        [("match", "conntrack", 3), ("counter",), ("verdict", nc.NF_DROP, None)],
    ),
}  # fmt: skip


@pytest.mark.parametrize("line,want", CASES.values(), ids=CASES.keys())
def test_rule_expressions_are_iptables_nfts(line, want):
    assert shape(line) == want


def test_compat_carries_the_protocol_only_when_there_is_one():
    e = Encoder().line("-A C -m udp -p udp --dport 53 -j ACCEPT")
    r = nc.rule_exprs(e.entry, e.label)
    assert dict(nc.iter_attrs(r.compat))[nc.NFTA_RULE_COMPAT] is not None
    a = nc.attrs(nc.attrs(r.compat)[nc.NFTA_RULE_COMPAT])
    assert struct.unpack(">I", a[nc.NFTA_RULE_COMPAT_PROTO])[0] == 17
    e = Encoder().line("-A C -s 10.0.0.1 -j ACCEPT")
    assert nc.rule_exprs(e.entry, e.label).compat == b""


@pytest.mark.parametrize(
    "line,why",
    [
        ("-A C -m tcp -p tcp --dport 80:90 -j ACCEPT", "port ranges"),
        ("-A C -m tcp -p tcp --sport 1 --dport 2 -j ACCEPT", "both"),
    ],
)
def test_what_iptables_nft_would_write_differently_is_refused(line, why):
    e = Encoder().line(line)
    with pytest.raises(nc.Unsupported, match=why):
        nc.rule_exprs(e.entry, e.label)


def test_attributes_are_padded_and_nests_flagged():
    assert nc.strz(1, "nat") == b"\x08\x00\x01\x00nat\x00"
    assert nc.strz(3, "ab") == b"\x07\x00\x03\x00ab\x00\x00"
    n = nc.nest(4, nc.u32(1, 2))
    assert (
        n[:4] == struct.pack("=HH", 12, 4 | nc.NLA_F_NESTED)
        and n[4:] == b"\x08\x00\x01\x00\x00\x00\x00\x02"
    )


def test_batch_framing():
    b = nc.batch_begin(7, genid=42)
    n, t, f, seq, pid = struct.unpack_from("=IHHII", b)
    assert (n, t, f, seq, pid) == (len(b), nc.NFNL_MSG_BATCH_BEGIN, nc.NLM_F_REQUEST, 7, 0)
    assert b[16:20] == bytes([0, 0, 0, nc.NFNL_SUBSYS_NFTABLES])  # AF_UNSPEC, v0, res_id BE
    assert nc.attrs(b, 20)[nc.NFNL_BATCH_GENID].tobytes() == struct.pack(">I", 42)
    e = nc.batch_end(9)
    assert struct.unpack_from("=IHHII", e)[:4] == (20, nc.NFNL_MSG_BATCH_END, nc.NLM_F_REQUEST, 9)
    msgs = nc.new_rules(100, nc.rule_prefix("nat", "C"), [b"AAAA", b"BBBBBBBB"])
    heads = [struct.unpack_from("=IHHII", m) for m in msgs]
    assert [h[3] for h in heads] == [100, 101]
    assert all(h[1] == (nc.NFNL_SUBSYS_NFTABLES << 8 | nc.NFT_MSG_NEWRULE) for h in heads)
    assert all(h[2] == nc.NLM_F_REQUEST | nc.NLM_F_CREATE | nc.NLM_F_APPEND for h in heads)
    assert [h[0] for h in heads] == list(map(len, msgs))
    top = nc.new_rule(5, nc.rule_prefix("nat", "C"), b"AAAA", append=False)
    assert not struct.unpack_from("=IHHII", top)[2] & nc.NLM_F_APPEND  # inserted at the top
    # replies: an error names the message it refused by sequence number
    err = (
        struct.pack("=IHHII", 36, nc.NLMSG_ERROR, 0, 101, 0) + struct.pack("=i", -2) + msgs[1][:16]
    )
    (m,) = nc.split(err)
    assert nc.error_of(m) == (2, 101)


def test_canon_ignores_counters_and_unflagged_nests():
    e = Encoder().line("-A C -m comment --comment x -j KUBE-SVC-X")
    body = nc.Translator().body(e.entry, e.label)
    ours = nc.canon(nc.exprs_payload(body))
    # the kernel's dump: counter values, the verdict nest without NLA_F_NESTED
    dumped = (
        nc.xt("match", "comment", 0, e.entry[112 + 32 : 112 + 32 + 256])
        + nc.expr("counter", nc.u64(1, 5), nc.u64(2, 77))
        + nc.expr(
            "immediate",
            nc.u32(1, 0),
            nc.attr(2, nc.attr(2, nc.u32(1, nc.NFT_JUMP & 0xFFFFFFFF) + nc.strz(2, "KUBE-SVC-X"))),
        )
    )
    assert nc.canon(dumped) == ours


def test_a_refused_batch_maps_to_the_rule_text():
    w = NftWriter(RestoreWriter.__new__(RestoreWriter))
    from kubeproxy.iptables.nft_writer import Desired

    d = Desired()
    d.text[("nat", "KUBE-SEP-A")] = (
        "-A KUBE-SEP-A -s 10.0.0.1 -j KUBE-MARK-MASQ\n-A KUBE-SEP-A -m tcp -p tcp -j DNAT --to-destination 10.0.0.1:80\n"
    )
    what = [
        ("chain", "nat", "KUBE-SEP-A", -1),
        ("rule", "nat", "KUBE-SEP-A", 0),
        ("rule", "nat", "KUBE-SEP-A", 1),
    ]
    e = w._error([(2, 13)], 10, what, d)
    assert "errno 2" in str(e) and "rule 2: -A KUBE-SEP-A -m tcp -p tcp -j DNAT" in str(e)
    assert isinstance(w._error([(ERESTART, 11)], 10, what, d), GenerationMoved)
    assert _rule_text(d.text[("nat", "KUBE-SEP-A")], "KUBE-SEP-A", 5) == "?"
