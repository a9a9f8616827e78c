"""The nf_tables codec of the ``nft`` backend: x_tables entries -> nf_tables netlink bytes.

Pure (no I/O): the socket side is ``nft_writer.py``. Input is what ``xtables_codec.Encoder``
makes of our rule lines (``Encoded``: a kernel ``struct ipt_entry`` with its matches and
target, and for a jump the chain's name). ``rule_exprs`` translates one entry into the
nf_tables expressions iptables-nft 1.8.9 writes for the same rule, so iptables-nft-save,
``iptables-nft -L``, ``nft list ruleset`` and an admin's later iptables-nft edits see
ordinary iptables-nft rules:

* the ipt_ip header becomes native expressions, in iptables-nft's order: ``-i``/``-o``
  (``meta iifname``/``oifname``), ``-p`` (``meta l4proto``), ``-s``, ``-d`` (a payload
  load of the prefix's whole bytes, or 4 bytes and a ``bitwise`` mask), each ``cmp eq``
  or ``cmp neq`` for ``!``;
* ``-m mark`` and ``-m tcp``/``-m udp`` with one port (``--dport``/``--sport``, ``!``
  allowed) are native (``meta mark``, a transport-header payload); every other match we
  emit (comment, statistic, recent, addrtype, conntrack, sctp, tcp/udp without ports)
  stays an xt ``match`` expression carrying the entry's own match data;
* a ``counter`` before the verdict (as iptables-nft always adds one);
* verdicts (ACCEPT, DROP, RETURN, jump, goto) are ``immediate`` verdicts; targets
  (DNAT, MARK, MASQUERADE, REJECT) are xt ``target`` expressions;
* ``NFTA_RULE_COMPAT`` carries the ``-p`` protocol (the kernel checks xt matches against it).

Anything else (port ranges, fragments, an unknown target) raises ``Unsupported``, an
``EncodeError``: the writer hands that sync to iptables-nft-restore. Translations are
memoised per entry, expressions are built from precomputed attribute bytes.

Also here: netlink message and batch framing, the table/chain/rule messages a sync sends,
parsing of the replies it reads (GETGEN, GETCHAIN and GETRULE dumps, errors), and
``canon`` (a rule's expressions with counters left out, to find a rule in a dump).
Layouts: linux/netfilter/nf_tables.h, nfnetlink.h, netlink.h.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import NamedTuple

from .xtables_codec import (
    ENTRY,
    ENTRY_SIZE,
    XT_HEADER,
    XT_HEADER_SIZE,
    XT_MARK_MTINFO1,
    XT_TCP,
    XT_UDP,
    EncodeError,
)

# -- constants --------------------------------------------------------------------------

NETLINK_NETFILTER = 12
NFPROTO_UNSPEC = 0
NFPROTO_IPV4 = 2
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN = 16  # NLMSG_MIN_TYPE
NFNL_MSG_BATCH_END = 17
NFNL_BATCH_GENID = 1

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_APPEND = 0x800
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF

NFT_MSG_NEWTABLE = 0
NFT_MSG_GETTABLE = 1
NFT_MSG_NEWCHAIN = 3
NFT_MSG_GETCHAIN = 4
NFT_MSG_DELCHAIN = 5
NFT_MSG_NEWRULE = 6
NFT_MSG_GETRULE = 7
NFT_MSG_DELRULE = 8
NFT_MSG_NEWGEN = 15
NFT_MSG_GETGEN = 16
MSG_NAMES = {
    NFT_MSG_NEWTABLE: "NEWTABLE", NFT_MSG_NEWCHAIN: "NEWCHAIN", NFT_MSG_DELCHAIN: "DELCHAIN",
    NFT_MSG_NEWRULE: "NEWRULE", NFT_MSG_DELRULE: "DELRULE",
}  # fmt: skip

NFTA_TABLE_NAME = 1
NFTA_CHAIN_TABLE = 1
NFTA_CHAIN_HANDLE = 2
NFTA_CHAIN_NAME = 3
NFTA_CHAIN_HOOK = 4
NFTA_CHAIN_POLICY = 5
NFTA_CHAIN_TYPE = 7
NFTA_HOOK_HOOKNUM = 1
NFTA_HOOK_PRIORITY = 2
NFTA_RULE_TABLE = 1
NFTA_RULE_CHAIN = 2
NFTA_RULE_HANDLE = 3
NFTA_RULE_EXPRESSIONS = 4
NFTA_RULE_COMPAT = 5
NFTA_RULE_USERDATA = 7
NFTA_RULE_COMPAT_PROTO = 1
NFTA_RULE_COMPAT_FLAGS = 2
NFT_RULE_COMPAT_F_INV = 1
NFTA_GEN_ID = 1

NFTA_LIST_ELEM = 1
NFTA_EXPR_NAME = 1
NFTA_EXPR_DATA = 2
NFTA_DATA_VALUE = 1
NFTA_DATA_VERDICT = 2
NFTA_VERDICT_CODE = 1
NFTA_VERDICT_CHAIN = 2

NFT_REG_VERDICT = 0
NFT_REG_1 = 1
NFT_META_MARK = 3
NFT_META_IIFNAME = 6
NFT_META_OIFNAME = 7
NFT_META_L4PROTO = 16
NFT_PAYLOAD_NETWORK_HEADER = 1
NFT_PAYLOAD_TRANSPORT_HEADER = 2
NFT_CMP_EQ = 0
NFT_CMP_NEQ = 1
NF_DROP = 0
NF_ACCEPT = 1
NFT_JUMP = -3
NFT_GOTO = -4
NFT_RETURN = -5

# ipt_ip flags/invflags (linux/netfilter_ipv4/ip_tables.h)
IPT_F_FRAG = 0x01
IPT_F_GOTO = 0x02
IPT_INV_VIA_IN = 0x01
IPT_INV_VIA_OUT = 0x02
IPT_INV_SRCIP = 0x08
IPT_INV_DSTIP = 0x10
IPT_INV_FRAG = 0x20
IPT_INV_PROTO = 0x40

# x_tables standard verdicts (-NF_<verdict> - 1) -> nf_tables verdict codes
_VERDICTS = {-1: NF_DROP, -2: NF_ACCEPT, -5: NFT_RETURN}

# Built-in chains as iptables-nft 1.8.9 creates them (on demand): hook, priority, type.
NF_INET_HOOKS = {"PREROUTING": 0, "INPUT": 1, "FORWARD": 2, "OUTPUT": 3, "POSTROUTING": 4}
BASE_CHAINS: dict[str, dict[str, tuple[int, int, str]]] = {
    "filter": {"INPUT": (1, 0, "filter"), "FORWARD": (2, 0, "filter"), "OUTPUT": (3, 0, "filter")},
    "nat": {
        "PREROUTING": (0, -100, "nat"), "INPUT": (1, 100, "nat"),
        "OUTPUT": (3, -100, "nat"), "POSTROUTING": (4, 100, "nat"),
    },
}  # fmt: skip


class Unsupported(EncodeError):
    """An entry uses something this codec does not translate (the sync falls back)."""


# -- attributes ---------------------------------------------------------------------------

_NLA = struct.Struct("=HH")
_NLH = struct.Struct("=IHHII")  # struct nlmsghdr
NLH_SIZE = 16
_BE32 = struct.Struct(">I")
_BE32S = struct.Struct(">i")


def attr(t: int, data: bytes) -> bytes:
    n = 4 + len(data)
    return _NLA.pack(n, t) + data + b"\0" * (-n % 4)


def nest(t: int, *parts: bytes) -> bytes:
    return attr(t | NLA_F_NESTED, b"".join(parts))


def u32(t: int, v: int) -> bytes:
    return attr(t, _BE32.pack(v & 0xFFFFFFFF))


def u64(t: int, v: int) -> bytes:
    return attr(t, struct.pack(">Q", v))


def strz(t: int, s: str) -> bytes:
    return attr(t, s.encode() + b"\0")


def iter_attrs(
    buf: bytes | memoryview, off: int = 0, end: int | None = None
) -> Iterator[tuple[int, memoryview]]:
    """(type without flags, payload) of each attribute in buf[off:end]."""
    mv = memoryview(buf)
    end = len(mv) if end is None else end
    while off + 4 <= end:
        n, t = _NLA.unpack_from(mv, off)
        if n < 4:
            break
        yield t & NLA_TYPE_MASK, mv[off + 4 : off + n]
        off += (n + 3) & ~3


def attrs(buf: bytes | memoryview, off: int = 0) -> dict[int, memoryview]:
    return dict(iter_attrs(buf, off))


def _str(v: memoryview) -> str:
    return bytes(v).split(b"\0", 1)[0].decode()


# -- expressions ----------------------------------------------------------------------------


def expr(name: str, *data: bytes) -> bytes:
    return nest(NFTA_LIST_ELEM, strz(NFTA_EXPR_NAME, name), nest(NFTA_EXPR_DATA, *data))


def meta_load(key: int) -> bytes:
    return expr("meta", u32(2, key), u32(1, NFT_REG_1))  # NFTA_META_KEY, NFTA_META_DREG


def payload(base: int, offset: int, length: int) -> bytes:
    # NFTA_PAYLOAD_DREG, BASE, OFFSET, LEN
    return expr("payload", u32(1, NFT_REG_1), u32(2, base), u32(3, offset), u32(4, length))


def cmp(op: int, data: bytes) -> bytes:
    # NFTA_CMP_SREG, OP, DATA { NFTA_DATA_VALUE }
    return expr("cmp", u32(1, NFT_REG_1), u32(2, op), nest(3, attr(NFTA_DATA_VALUE, data)))


def bitwise(mask: bytes) -> bytes:
    # NFTA_BITWISE_SREG, DREG, LEN, MASK, XOR (xor 0: a plain mask, as iptables-nft)
    n = len(mask)
    return expr(
        "bitwise", u32(1, NFT_REG_1), u32(2, NFT_REG_1), u32(3, n),
        nest(4, attr(NFTA_DATA_VALUE, mask)), nest(5, attr(NFTA_DATA_VALUE, b"\0" * n)),
    )  # fmt: skip


def xt(kind: str, name: str, rev: int, info: bytes) -> bytes:
    """An xt ``match`` or ``target`` expression (NFTA_MATCH_NAME/REV/INFO = TARGET's)."""
    return expr(kind, strz(1, name), u32(2, rev), attr(3, info))


def verdict(code: int, chain: str | None = None) -> bytes:
    body = attr(NFTA_VERDICT_CODE, _BE32S.pack(code)) + (
        strz(NFTA_VERDICT_CHAIN, chain) if chain else b""
    )
    # NFTA_IMMEDIATE_DREG, NFTA_IMMEDIATE_DATA { NFTA_DATA_VERDICT { code, chain } }
    return expr("immediate", u32(1, NFT_REG_VERDICT), nest(2, nest(NFTA_DATA_VERDICT, body)))


COUNTER = expr("counter", u64(1, 0), u64(2, 0))  # NFTA_COUNTER_BYTES, PACKETS
_L4PROTO = meta_load(NFT_META_L4PROTO)
_MARK = meta_load(NFT_META_MARK)
_ACCEPT, _DROP, _RETURN = verdict(NF_ACCEPT), verdict(NF_DROP), verdict(NFT_RETURN)
_STD = {NF_ACCEPT: _ACCEPT, NF_DROP: _DROP, NFT_RETURN: _RETURN}


def _iface(key: int, name: bytes, mask: bytes, inv: bool) -> bytes:
    n = next((i for i, b in enumerate(mask) if b != 0xFF), len(mask))
    if n == 0:
        return b""
    return meta_load(key) + cmp(NFT_CMP_NEQ if inv else NFT_CMP_EQ, name[:n])


def _addr(offset: int, addr: bytes, mask: bytes, inv: bool) -> bytes:
    op = NFT_CMP_NEQ if inv else NFT_CMP_EQ
    m = int.from_bytes(mask, "big")
    plen = 32 - (((~m) & 0xFFFFFFFF).bit_length())
    if m == ((0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF) and plen % 8 == 0 and plen:
        n = plen // 8  # a whole-byte prefix: load just those bytes
        return payload(NFT_PAYLOAD_NETWORK_HEADER, offset, n) + cmp(op, addr[:n])
    return payload(NFT_PAYLOAD_NETWORK_HEADER, offset, 4) + bitwise(mask) + cmp(op, addr)


def _ports(name: str, data: bytes) -> bytes | None:
    """tcp/udp ports natively (None: keep the xt match, as iptables-nft does without ports)."""
    if name == "tcp":
        s0, s1, d0, d1, option, flg_mask, flg_cmp, inv = XT_TCP.unpack_from(data)
        if option or flg_mask or flg_cmp or inv & ~0x03:
            raise Unsupported("tcp match with flags/options")
    else:
        s0, s1, d0, d1, inv = XT_UDP.unpack_from(data)
        if inv & ~0x03:
            raise Unsupported("udp match with unknown inversion flags")
    sany = (s0, s1) == (0, 0xFFFF) and not inv & 0x01
    dany = (d0, d1) == (0, 0xFFFF) and not inv & 0x02
    if sany and dany:
        return None
    if not sany and not dany:
        raise Unsupported(f"{name}: both --sport and --dport")
    lo, hi, off, neg = (d0, d1, 2, inv & 0x02) if sany else (s0, s1, 0, inv & 0x01)
    if lo != hi:
        raise Unsupported(f"{name}: port ranges")
    return payload(NFT_PAYLOAD_TRANSPORT_HEADER, off, 2) + cmp(
        NFT_CMP_NEQ if neg else NFT_CMP_EQ, lo.to_bytes(2, "big")
    )


def _mark(data: bytes) -> bytes:
    mark, mask, inv = XT_MARK_MTINFO1.unpack_from(data)
    out = _MARK
    if mask != 0xFFFFFFFF:
        out += bitwise(mask.to_bytes(4, "little"))
    return out + cmp(NFT_CMP_NEQ if inv else NFT_CMP_EQ, mark.to_bytes(4, "little"))


_XT_MATCHES = frozenset(
    {"comment", "statistic", "recent", "addrtype", "conntrack", "sctp", "tcp", "udp", "mark"}
)
_XT_TARGETS = frozenset({"DNAT", "MARK", "MASQUERADE", "REJECT", "SNAT"})


class RuleExprs(NamedTuple):
    """One rule's NFTA_RULE_EXPRESSIONS and NFTA_RULE_COMPAT attributes (whole, encoded)."""

    exprs: bytes
    compat: bytes


def rule_exprs(entry: bytes, label: str | None) -> RuleExprs:
    """Translate one ``struct ipt_entry`` (+ jump label) as iptables-nft 1.8.9 would."""
    src, dst, smsk, dmsk, ifaces, proto, flags, inv, _nfc, toff, noff, _cf, _pc, _bc = (
        ENTRY.unpack_from(entry)
    )
    if flags & IPT_F_FRAG or inv & IPT_INV_FRAG:
        raise Unsupported("-f (fragments)")
    if flags & ~(IPT_F_FRAG | IPT_F_GOTO):
        raise Unsupported(f"ipt_ip flags {flags:#x}")
    out = []
    if ifaces[0]:
        out.append(
            _iface(NFT_META_IIFNAME, ifaces[0:16], ifaces[32:48], bool(inv & IPT_INV_VIA_IN))
        )
    if ifaces[16]:
        out.append(
            _iface(NFT_META_OIFNAME, ifaces[16:32], ifaces[48:64], bool(inv & IPT_INV_VIA_OUT))
        )
    if proto:
        out.append(
            _L4PROTO + cmp(NFT_CMP_NEQ if inv & IPT_INV_PROTO else NFT_CMP_EQ, bytes((proto,)))
        )
    if src != b"\0\0\0\0" or smsk != b"\0\0\0\0" or inv & IPT_INV_SRCIP:
        if smsk == b"\0\0\0\0":
            raise Unsupported("! -s 0.0.0.0/0")
        out.append(_addr(12, src, smsk, bool(inv & IPT_INV_SRCIP)))
    if dst != b"\0\0\0\0" or dmsk != b"\0\0\0\0" or inv & IPT_INV_DSTIP:
        if dmsk == b"\0\0\0\0":
            raise Unsupported("! -d 0.0.0.0/0")
        out.append(_addr(16, dst, dmsk, bool(inv & IPT_INV_DSTIP)))
    o = ENTRY_SIZE
    while o < toff:
        size, raw, rev = XT_HEADER.unpack_from(entry, o)
        name = raw.split(b"\0", 1)[0].decode()
        data = entry[o + XT_HEADER_SIZE : o + size]
        if name not in _XT_MATCHES:
            raise Unsupported(f"match {name!r}")
        native = None
        if name in ("tcp", "udp") and rev == 0:
            native = _ports(name, data)
        elif name == "mark" and rev == 1:
            native = _mark(data)
        out.append(native if native is not None else xt("match", name, rev, data))
        o += size
    out.append(COUNTER)
    tsize, raw, trev = XT_HEADER.unpack_from(entry, toff)
    tname = raw.split(b"\0", 1)[0].decode()
    if tname == "":
        (v,) = struct.unpack_from("<i", entry, toff + XT_HEADER_SIZE)
        if label is not None:
            if label.startswith("\0"):
                raise Unsupported("a fall-through standard target")
            out.append(verdict(NFT_GOTO if flags & IPT_F_GOTO else NFT_JUMP, label))
        elif v in _VERDICTS:
            out.append(_STD[_VERDICTS[v]])
        else:
            raise Unsupported(f"standard verdict {v}")
    elif tname in _XT_TARGETS:
        out.append(xt("target", tname, trev, entry[toff + XT_HEADER_SIZE : toff + tsize]))
    else:
        raise Unsupported(f"target {tname!r}")
    compat = b""
    if proto:
        compat = nest(
            NFTA_RULE_COMPAT,
            u32(NFTA_RULE_COMPAT_PROTO, proto),
            u32(NFTA_RULE_COMPAT_FLAGS, NFT_RULE_COMPAT_F_INV if inv & IPT_INV_PROTO else 0),
        )
    return RuleExprs(nest(NFTA_RULE_EXPRESSIONS, *out), compat)


class Translator:
    """``rule_exprs`` memoised per (entry, label); ``forget`` what a sync did not use."""

    def __init__(self) -> None:
        self._memo: dict[tuple[bytes, str | None], bytes] = {}
        self._used: dict[tuple[bytes, str | None], bytes] = {}

    def body(self, entry: bytes, label: str | None) -> bytes:
        key = (entry, label)
        b = self._used.get(key)
        if b is None:
            b = self._memo.get(key)
            if b is None:
                r = rule_exprs(entry, label)
                b = r.exprs + r.compat
            self._used[key] = b
        return b

    def end(self, keep_all: bool) -> None:
        if keep_all:
            self._memo.update(self._used)
        else:
            self._memo = self._used
        self._used = {}


# -- messages --------------------------------------------------------------------------------


def nfgen(family: int = NFPROTO_IPV4, res_id: int = 0) -> bytes:
    return struct.pack("=BBH", family, 0, (res_id >> 8 | (res_id & 0xFF) << 8))  # res_id BE


_NFGEN4 = nfgen()


def message(msg: int, flags: int, seq: int, body: bytes, head: bytes = _NFGEN4) -> bytes:
    n = NLH_SIZE + len(head) + len(body)
    return _NLH.pack(n, NFNL_SUBSYS_NFTABLES << 8 | msg, flags, seq, 0) + head + body


def batch_begin(seq: int, genid: int | None = None) -> bytes:
    body = u32(NFNL_BATCH_GENID, genid) if genid is not None else b""
    head = nfgen(NFPROTO_UNSPEC, NFNL_SUBSYS_NFTABLES)
    n = NLH_SIZE + 4 + len(body)
    return _NLH.pack(n, NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, 0) + head + body


def batch_end(seq: int) -> bytes:
    head = nfgen(NFPROTO_UNSPEC, NFNL_SUBSYS_NFTABLES)
    return _NLH.pack(NLH_SIZE + 4, NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq, 0) + head


def new_table(seq: int, table: str) -> bytes:
    return message(
        NFT_MSG_NEWTABLE, NLM_F_REQUEST | NLM_F_CREATE, seq, strz(NFTA_TABLE_NAME, table)
    )


def new_chain(seq: int, table: str, chain: str) -> bytes:
    body = strz(NFTA_CHAIN_TABLE, table) + strz(NFTA_CHAIN_NAME, chain)
    return message(NFT_MSG_NEWCHAIN, NLM_F_REQUEST | NLM_F_CREATE, seq, body)


def new_base_chain(seq: int, table: str, chain: str) -> bytes:
    hook, prio, kind = BASE_CHAINS[table][chain]
    body = (
        strz(NFTA_CHAIN_TABLE, table) + strz(NFTA_CHAIN_NAME, chain)
        + nest(NFTA_CHAIN_HOOK, u32(NFTA_HOOK_HOOKNUM, hook), u32(NFTA_HOOK_PRIORITY, prio))
        + u32(NFTA_CHAIN_POLICY, NF_ACCEPT) + strz(NFTA_CHAIN_TYPE, kind)
    )  # fmt: skip
    return message(NFT_MSG_NEWCHAIN, NLM_F_REQUEST | NLM_F_CREATE, seq, body)


def flush_chain(seq: int, table: str, chain: str) -> bytes:
    """DELRULE without a handle: every rule of the chain."""
    body = strz(NFTA_RULE_TABLE, table) + strz(NFTA_RULE_CHAIN, chain)
    return message(NFT_MSG_DELRULE, NLM_F_REQUEST, seq, body)


def del_chain(seq: int, table: str, chain: str) -> bytes:
    body = strz(NFTA_CHAIN_TABLE, table) + strz(NFTA_CHAIN_NAME, chain)
    return message(NFT_MSG_DELCHAIN, NLM_F_REQUEST, seq, body)


def rule_prefix(table: str, chain: str) -> bytes:
    """The NEWRULE attributes naming the chain (precomputed once per chain)."""
    return _NFGEN4 + strz(NFTA_RULE_TABLE, table) + strz(NFTA_RULE_CHAIN, chain)


_APPEND = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_APPEND
_INSERT = NLM_F_REQUEST | NLM_F_CREATE
_NEWRULE_TYPE = NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWRULE
_PACK_NLH = _NLH.pack


def new_rule(seq: int, prefix: bytes, body: bytes, append: bool = True) -> bytes:
    """NEWRULE: appended (``-A``), or inserted at the top (``-I CHAIN 1``)."""
    return (
        _PACK_NLH(
            NLH_SIZE + len(prefix) + len(body),
            _NEWRULE_TYPE,
            _APPEND if append else _INSERT,
            seq,
            0,
        )
        + prefix
        + body
    )


def new_rules(seq: int, prefix: bytes, bodies: list[bytes]) -> list[bytes]:
    """Appends for a run of rule bodies, sequence numbers seq, seq+1, ..."""
    pack, t, f, base = _PACK_NLH, _NEWRULE_TYPE, _APPEND, NLH_SIZE + len(prefix)
    return [pack(base + len(b), t, f, seq + i, 0) + prefix + b for i, b in enumerate(bodies)]


def get_gen(seq: int) -> bytes:
    return message(NFT_MSG_GETGEN, NLM_F_REQUEST, seq, b"", nfgen(NFPROTO_UNSPEC))


def dump_chains(seq: int) -> bytes:
    return message(NFT_MSG_GETCHAIN, NLM_F_REQUEST | NLM_F_DUMP, seq, b"")


def dump_rules(seq: int, table: str, chain: str) -> bytes:
    body = strz(NFTA_RULE_TABLE, table) + strz(NFTA_RULE_CHAIN, chain)
    return message(NFT_MSG_GETRULE, NLM_F_REQUEST | NLM_F_DUMP, seq, body)


# -- replies ---------------------------------------------------------------------------------


class Msg(NamedTuple):
    type: int
    flags: int
    seq: int
    data: memoryview  # after the nlmsghdr


def split(buf: bytes | memoryview) -> Iterator[Msg]:
    mv = memoryview(buf)
    off = 0
    while off + NLH_SIZE <= len(mv):
        n, t, f, seq, _pid = _NLH.unpack_from(mv, off)
        if n < NLH_SIZE:
            break
        yield Msg(t, f, seq, mv[off + NLH_SIZE : off + n])
        off += (n + 3) & ~3


def error_of(m: Msg) -> tuple[int, int]:
    """An NLMSG_ERROR's (errno, sequence number of the message it answers); errno 0 = ack."""
    (err,) = struct.unpack_from("=i", m.data)
    seq = _NLH.unpack_from(m.data, 4)[3] if len(m.data) >= 4 + NLH_SIZE else -1
    return -err, seq


def gen_id(m: Msg) -> int:
    return _BE32.unpack(attrs(m.data, 4)[NFTA_GEN_ID])[0]


class ChainInfo(NamedTuple):
    table: str
    name: str
    base: bool  # has a hook


def chain_info(m: Msg) -> ChainInfo:
    a = attrs(m.data, 4)
    return ChainInfo(_str(a[NFTA_CHAIN_TABLE]), _str(a[NFTA_CHAIN_NAME]), NFTA_CHAIN_HOOK in a)


class RuleInfo(NamedTuple):
    table: str
    chain: str
    handle: int
    exprs: bytes  # the NFTA_RULE_EXPRESSIONS payload
    userdata: bytes | None


def rule_info(m: Msg) -> RuleInfo:
    a = attrs(m.data, 4)
    ud = a.get(NFTA_RULE_USERDATA)
    return RuleInfo(
        _str(a[NFTA_RULE_TABLE]), _str(a[NFTA_RULE_CHAIN]),
        struct.unpack(">Q", a[NFTA_RULE_HANDLE])[0], bytes(a.get(NFTA_RULE_EXPRESSIONS, b"")),
        bytes(ud) if ud is not None else None,
    )  # fmt: skip


# Attributes a dump carries that say nothing about what the rule matches: counter values,
# and bitwise's NFTA_BITWISE_OP (the kernel reports the default it filled in).
_IGNORED = {"counter": None, "bitwise": {6}}
# Nested attributes per expression (the kernel does not flag every nest NLA_F_NESTED):
# immediate's DATA, cmp's DATA, bitwise's MASK and XOR, range's FROM/TO: struct nft_data
# attributes, whose NFTA_DATA_VERDICT is a nest again.
_NESTED = {"immediate": {2}, "cmp": {3}, "bitwise": {4, 5}, "range": {4, 5}}
_DATA_NESTED = {NFTA_DATA_VERDICT}


def _canon_attrs(
    buf: memoryview,
    nested: set[int] = frozenset(),
    skip: set[int] | None = None,
    data: bool = False,
) -> tuple:
    out = []
    for t, v in iter_attrs(buf):
        if skip and t in skip:
            continue
        if t in nested:
            out.append((t, _canon_attrs(v, _DATA_NESTED if not data else frozenset(), data=True)))
        else:
            out.append((t, bytes(v)))
    return tuple(sorted(out))


def canon(exprs: bytes | memoryview) -> tuple:
    """A rule's expressions (the NFTA_RULE_EXPRESSIONS payload) in a comparable form:
    attributes sorted, counters' values dropped. Equal for what we send and what the
    kernel dumps back for the same rule."""
    out = []
    for _t, elem in iter_attrs(exprs):
        a = attrs(elem)
        name = _str(a[NFTA_EXPR_NAME])
        if name in _IGNORED and _IGNORED[name] is None:
            out.append((name,))
            continue
        d = a.get(NFTA_EXPR_DATA)
        out.append(
            (
                name,
                _canon_attrs(d, _NESTED.get(name, frozenset()), _IGNORED.get(name))
                if d is not None
                else (),
            )
        )
    return tuple(out)


def exprs_payload(body: bytes) -> memoryview:
    """The NFTA_RULE_EXPRESSIONS payload of a rule body built by ``Translator.body``."""
    n, _t = _NLA.unpack_from(body, 0)
    return memoryview(body)[4:n]
