"""The x_tables blob codec: kernel table bytes <-> chains, and our rule lines -> entries.

Pure (no I/O): the socket side is ``xtables.py``. A table as the kernel hands it over
(IPT_SO_GET_ENTRIES) is a run of ``struct ipt_entry`` records, each followed by its
matches and its target; user chains open with an ERROR-target entry naming them and close
with an unconditional RETURN, built-in chains start at ``hook_entry[hook]`` and close with
their policy at ``underflow[hook]``; the table ends with an ERROR entry named "ERROR".
Jumps are absolute byte offsets, so ``parse_table`` turns each standard-target verdict
into the name of the chain it lands on (or "fall through"), and ``compile_table`` lays the
chains out again and writes the offsets back. Entries that are not ours stay raw bytes:
we never need to understand a foreign match.

``Encoder`` turns the renderer's rule lines (only the option grammar ``render.py`` emits:
``-s/-d [!]``, ``-p``, ``-m comment/tcp/udp/sctp/statistic/recent/addrtype/conntrack/mark``,
``-j DNAT/MARK/MASQUERADE/REJECT/ACCEPT/DROP/RETURN/<chain>``) into the same bytes
iptables 1.8.9 writes (same match revisions, same zero padding), memoised per text
fragment and per match/target. Anything else raises ``EncodeError`` (the caller falls
back to iptables-restore).

Layouts follow the kernel UAPI headers (linux/netfilter_ipv4/ip_tables.h, x_tables.h,
xt_*.h, nf_nat.h); x86-64/arm64 alignment (XT_ALIGN = 8).
"""

from __future__ import annotations

import gc
import math
import re
import socket
import struct
from bisect import bisect_left, insort
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import chain as concat
from itertools import compress, islice, repeat
from operator import is_not, itemgetter
from typing import NamedTuple

import numpy as np

from .xtables_template import Templates

# -- structs ------------------------------------------------------------------------------

TABLE_NAME_LEN = 32
HOOKS = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")  # NF_INET_* order

# struct ipt_entry: struct ipt_ip (src, dst, smsk, dmsk, iniface[16], outiface[16],
# iniface_mask[16], outiface_mask[16], u16 proto, u8 flags, u8 invflags), u32 nfcache,
# u16 target_offset, u16 next_offset, u32 comefrom, struct xt_counters (u64 pcnt, bcnt).
ENTRY = struct.Struct("<4s4s4s4s64sHBBIHHIQQ")
ENTRY_SIZE = ENTRY.size  # 112
assert ENTRY_SIZE == 112
OFF_TARGET_OFFSET = 88
OFF_NEXT_OFFSET = 90
OFF_COMEFROM = 92
OFF_COUNTERS = 96
# struct xt_entry_match / xt_entry_target header: u16 size, char name[29], u8 revision.
XT_HEADER = struct.Struct("<H29sB")
# Match data layouts the nf_tables codec reads back too (nft_codec.py).
# struct xt_tcp: spts, dpts, option, flg_mask, flg_cmp, invflags
XT_TCP = struct.Struct("<HHHHBBBB")
XT_UDP = struct.Struct("<HHHHB")  # struct xt_udp: spts, dpts, invflags
XT_MARK_MTINFO1 = struct.Struct("<IIB")  # struct xt_mark_mtinfo1: mark, mask, invert
XT_HEADER_SIZE = 32
STANDARD_TARGET_SIZE = 40  # header + int verdict, aligned
ERROR_TARGET_SIZE = 64  # header + char errorname[32]

IPT_INV_SRCIP = 0x08
IPT_INV_DSTIP = 0x10
IPT_INV_PROTO = 0x40
IPT_F_GOTO = 0x02

# Standard verdicts: -NF_<verdict> - 1.
VERDICTS = {"ACCEPT": -2, "DROP": -1, "RETURN": -5}
VERDICT_NAMES = {v: k for k, v in VERDICTS.items()}
FALLTHROUGH = "\0fallthrough"  # label of a standard target that continues with the next entry

PROTOS = {"tcp": 6, "udp": 17, "sctp": 132, "icmp": 1, "all": 0}


def xt_align(n: int) -> int:
    return (n + 7) & ~7


def _name(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode()


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic GC while we build ~10^5 small containers (a quarter of a cold encode).

    On the way out the survivors are frozen (``gc.freeze``): re-enabled plainly, the next
    allocation would start a young-generation pass over all of them (0.1-0.3 s of a cold
    full sync at 10,000 services, for objects that live until the next sync). They are
    unfrozen on the way into the next paused section, so cyclic garbage among them is
    still collected by a later full collection, only not walked on every young one.
    """
    was = gc.isenabled()
    gc.disable()
    if was:
        gc.unfreeze()
    try:
        yield
    finally:
        if was:
            gc.freeze()
            gc.enable()


class EncodeError(ValueError):
    """A rule line uses an option the encoder does not know (fall back to iptables-restore)."""


class BlobError(ValueError):
    """The kernel's table does not have the shape x_tables gives it."""


# -- table model ----------------------------------------------------------------------------


@dataclass(slots=True)
class Chain:
    """One chain: its rule entries (bytes) and their jump labels.

    Counters are carried by index: a built-in chain keeps each entry's index in the
    kernel's table (``kidx``, -1 for a new one); a user chain whose rules are still those
    of the kernel's table is the run of entries after its head (``Table.kfirst``).
    Replace a user chain's rules only with ``set_rules``, then ``Table.touch`` it (the
    compiled segment is cached, the kernel's index forgotten).
    """

    name: str
    hook: int | None = None  # built-in chain: NF_INET_* hook number
    entries: list[bytes] = field(default_factory=list)
    labels: list[str | None] = field(default_factory=list)  # jump target / FALLTHROUGH / None
    kidx: list[int] = field(default_factory=list)  # built-in chains
    tail: bytes = b""  # built-in: the policy entry (raw); user chains: generated RETURN
    tail_kidx: int = -1
    _seg: Segment | None = field(default=None, repr=False, compare=False)

    def set_rules(self, entries: list[bytes], labels: list[str | None]) -> None:
        """Replace the rules (new entries: no counters to keep)."""
        self.entries = entries
        self.labels = labels
        self.kidx = [-1] * len(entries) if self.hook is not None else []
        self._seg = None

    def segment(self) -> Segment:
        """A user chain as laid out in the blob: head, rules, RETURN, joined (cached)."""
        if self._seg is None:
            parts = (_head_entry(self.name), *self.entries, RETURN_ENTRY)
            labels = self.labels
            jumps = tuple(i for i, lab in enumerate(labels, 1) if lab is not None)
            self._seg = Segment(
                b"".join(parts),
                tuple(map(len, parts)),
                jumps,
                [labels[i - 1] for i in jumps],
            )
        return self._seg


class Segment(NamedTuple):
    """A user chain's bytes in the blob (jump verdicts still 0) and where its jumps are."""

    blob: bytes
    lengths: tuple[int, ...]  # every entry's length, head and RETURN included
    jumps: tuple[int, ...]  # indices (in this segment) of the entries that jump
    labels: list[str]  # ... and where to (chain name or FALLTHROUGH)


@dataclass
class Table:
    name: str
    valid_hooks: int
    chains: dict[str, Chain]  # built-ins (hook order) and user chains
    offsets: np.ndarray | None = None  # as parsed: every entry's offset in the kernel's blob
    # User chain -> index of its first rule in the kernel's table, while its rules are the
    # kernel's (counters to keep); touch/add/drop forget a chain. May hold built-in names.
    kfirst: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    _names: list[str] | None = field(default=None, repr=False, compare=False)
    # After a compile: its layout, and the user chains changed since (None: lay out anew).
    layout: Layout | None = field(default=None, repr=False, compare=False)
    dirty: set[str] | None = field(default=None, repr=False, compare=False)

    def touch(self, name: str | None) -> None:
        """``name``'s rules changed (None: a built-in chain did: the next compile is full)."""
        if name is not None:
            self.kfirst.pop(name, None)
        if name is None:
            self.dirty = None
        elif self.dirty is not None:
            self.dirty.add(name)

    def user_chains(self) -> list[str]:
        """User chain names, sorted (cached: change ``chains`` through add/drop after this)."""
        if self._names is None:
            self._names = sorted(c for c, ch in self.chains.items() if ch.hook is None)
        return self._names

    def add(self, c: Chain) -> Chain:
        self.chains[c.name] = c
        self.kfirst.pop(c.name, None)
        if self._names is not None and c.hook is None:
            insort(self._names, c.name)
        self.touch(c.name if c.hook is None else None)
        return c

    def add_user_chains(self, new: list[Chain]) -> None:
        """``add`` for many new user chains (names not in the table yet) at once."""
        chains = self.chains
        for c in new:
            chains[c.name] = c  # not in kfirst: it names chains of the table only
        if self._names is not None:
            if len(new) > 64:
                self._names = None  # sorted again when next asked for
            else:
                for c in new:
                    insort(self._names, c.name)
        if self.dirty is not None:
            self.dirty.update(c.name for c in new)

    def drop(self, name: str) -> None:
        c = self.chains.pop(name)
        self.kfirst.pop(name, None)
        self.touch(name if c.hook is None else None)
        if self._names is not None:
            i = bisect_left(self._names, name)
            if i < len(self._names) and self._names[i] == name:
                del self._names[i]


def _entry_fields(blob: bytes | memoryview, off: int) -> tuple[int, int]:
    return struct.unpack_from("<HH", blob, off + OFF_TARGET_OFFSET)


def parse_table(
    name: str, valid_hooks: int, hook_entry: Iterable[int], underflow: Iterable[int], blob: bytes
) -> Table:
    """Split the kernel's blob into chains; entries stay raw, jumps become chain names."""
    hook_entry, underflow = list(hook_entry), list(underflow)
    hooks_at = {hook_entry[h]: h for h in range(5) if valid_hooks & (1 << h)}
    underflows = {underflow[h] for h in range(5) if valid_hooks & (1 << h)}
    size = len(blob)
    unpack = struct.unpack_from
    # Pass 1: entry offsets, error heads, standard verdicts.
    offs: list[int] = []
    nexts: list[int] = []
    kinds: list[int] = []  # 0 other target, 1 standard, 2 error
    verdicts: list[int] = []
    flags: list[int] = []
    jumps_at: list[int] = []  # byte offsets of jump verdicts
    off = 0
    while off < size:
        toff, noff = unpack("<HH", blob, off + OFF_TARGET_OFFSET)
        if noff < ENTRY_SIZE or toff > noff or off + noff > size:
            raise BlobError(f"{name}: bad entry at offset {off} (target {toff}, next {noff})")
        t = off + toff
        tname = blob[t + 2 : t + 31]
        offs.append(off)
        nexts.append(off + noff)
        flags.append(blob[off + 83])
        if tname[0] == 0:
            kinds.append(1)
            v = unpack("<i", blob, t + XT_HEADER_SIZE)[0]
            verdicts.append(v)
            if v >= 0:
                jumps_at.append(t + XT_HEADER_SIZE)
        elif tname.startswith(b"ERROR\0"):
            kinds.append(2)
            verdicts.append(0)
        else:
            kinds.append(0)
            verdicts.append(0)
        off += noff
    if off != size or not offs or kinds[-1] != 2:
        raise BlobError(f"{name}: table does not end with an ERROR entry")
    # Entries are kept as bytes comparable with our encoder's: counters, comefrom and jump
    # verdicts zeroed (counters are carried by index, jumps by label).
    offsets = np.asarray(offs, dtype=np.int64)
    words = masked(blob, offsets)
    if jumps_at:
        words[np.asarray(jumps_at, dtype=np.int64) // 4] = 0
    blob = words.tobytes()
    # Chain starts: built-in hook entries; user chains: the entry after their head.
    starts: dict[int, str] = {}
    for i, o in enumerate(offs[:-1]):
        if kinds[i] == 2:
            t = o + unpack("<H", blob, o + OFF_TARGET_OFFSET)[0]
            starts[nexts[i]] = _name(blob[t + XT_HEADER_SIZE : t + XT_HEADER_SIZE + 32])
    for o, h in hooks_at.items():
        starts[o] = HOOKS[h]
    # Pass 2: chains.
    chains: dict[str, Chain] = {}
    for h in range(5):
        if valid_hooks & (1 << h):
            chains[HOOKS[h]] = Chain(HOOKS[h], hook=h)
    cur: Chain | None = None
    kfirst: dict[str, int] = {}
    last = len(offs) - 1
    for i in range(last):
        o = offs[i]
        if kinds[i] == 2:
            if cur is not None and cur.hook is None:
                _close_user_chain(cur, blob)
            cname = starts[nexts[i]]
            cur = chains[cname] = Chain(cname)
            kfirst[cname] = i + 1
            continue
        if o in hooks_at:
            if cur is not None and cur.hook is None:
                _close_user_chain(cur, blob)
            cur = chains[HOOKS[hooks_at[o]]]
        if cur is None:
            raise BlobError(f"{name}: entry at offset {o} belongs to no chain")
        raw = blob[o : nexts[i]]
        if cur.hook is not None and o in underflows:
            cur.tail, cur.tail_kidx = raw, i
            cur = None
            continue
        label = None
        if kinds[i] == 1 and verdicts[i] >= 0:
            v = verdicts[i]
            if v == nexts[i] and not flags[i] & IPT_F_GOTO:
                label = FALLTHROUGH
            else:
                label = starts.get(v)
                if label is None:
                    raise BlobError(f"{name}: jump at offset {o} to {v}, which starts no chain")
        cur.entries.append(raw)
        cur.labels.append(label)
        cur.kidx.append(i)
    if cur is not None and cur.hook is None:
        _close_user_chain(cur, blob)
    return Table(name, valid_hooks, chains, offsets, kfirst)


def _close_user_chain(c: Chain, blob: bytes) -> None:
    if not c.entries or c.labels[-1] is not None:
        raise BlobError(f"chain {c.name} has no RETURN tail")
    c.entries.pop()
    c.labels.pop()
    c.tail_kidx = c.kidx.pop()


def _head_entries(names: list[str]) -> list[bytes]:
    """``_head_entry`` of each name, in one pass."""
    raw = [n.encode() for n in names]
    if raw and max(map(len, raw)) >= 32:
        _head_entry(next(n for n, r in zip(names, raw, strict=True) if len(r) >= 32))  # raises
    p = _HEAD_PREFIX
    return [p + r.ljust(32, b"\0") for r in raw]


def _head_entry(name: str) -> bytes:
    """A user chain's head: an ERROR-target entry carrying its name."""
    nb = name.encode()
    if len(nb) >= 32:
        raise EncodeError(f"chain name {name!r} is longer than 31 characters")
    return _HEAD_PREFIX + nb.ljust(32, b"\0")


def _entry_header(
    addrs: bytes, proto: int, invflags: int, flags: int, toff: int, noff: int
) -> bytes:
    return ENTRY.pack(
        addrs[0:4],
        addrs[4:8],
        addrs[8:12],
        addrs[12:16],
        b"",
        proto,
        flags,
        invflags,
        0,
        toff,
        noff,
        0,
        0,
        0,
    )


def _standard(verdict: int) -> bytes:
    return XT_HEADER.pack(STANDARD_TARGET_SIZE, b"", 0) + struct.pack("<ii", verdict, 0)


_ZERO_ADDRS = b"\0" * 16
_HEAD_PREFIX = _entry_header(
    _ZERO_ADDRS, 0, 0, 0, ENTRY_SIZE, ENTRY_SIZE + ERROR_TARGET_SIZE
) + XT_HEADER.pack(ERROR_TARGET_SIZE, b"ERROR", 0)
RETURN_ENTRY = _entry_header(
    _ZERO_ADDRS, 0, 0, 0, ENTRY_SIZE, ENTRY_SIZE + STANDARD_TARGET_SIZE
) + _standard(VERDICTS["RETURN"])
_FINAL_ERROR = (
    _entry_header(_ZERO_ADDRS, 0, 0, 0, ENTRY_SIZE, ENTRY_SIZE + ERROR_TARGET_SIZE)
    + XT_HEADER.pack(ERROR_TARGET_SIZE, b"ERROR", 0)
    + b"ERROR".ljust(32, b"\0")
)


@dataclass
class Compiled:
    buf: bytearray  # HEADROOM bytes for the caller's header (ipt_replace), then the blob
    hook_entry: list[int]
    underflow: list[int]
    num_entries: int
    old_index: np.ndarray  # per new entry: index in the kernel's current table, or -1
    offsets: np.ndarray  # byte offset of every entry in the blob

    @property
    def blob(self) -> memoryview:
        return memoryview(self.buf)[HEADROOM:]


HEADROOM = 96  # sizeof(struct ipt_replace): the blob is built right behind it, no copy


def masked(blob: bytes | bytearray | memoryview, offsets: np.ndarray) -> np.ndarray:
    """The blob as u32 words with every entry's comefrom and counters zeroed (for comparing
    what the kernel holds with what we wrote: the kernel keeps everything else as given)."""
    return mask_words(np.frombuffer(blob, dtype="<u4").copy(), offsets)


def mask_words(words: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``masked`` in place, on a writable u32 view of a blob (returned)."""
    words[(offsets[:, None] // 4 + np.arange(OFF_COMEFROM // 4, ENTRY_SIZE // 4)).ravel()] = 0
    return words


SPLICE_MAX = 256  # more changed chains than this: lay the whole table out again


@dataclass
class Layout:
    """A compiled table, kept to patch it for the next compile (``_splice``)."""

    names: list[str]  # user chains, sorted, as laid out
    first: dict[str, int]  # chain -> index of its first rule (user chains: head + 1)
    compiled: Compiled
    lengths: np.ndarray  # every entry's length
    jumps: np.ndarray  # indices of the entries that jump
    dests: np.ndarray  # ... index of the entry each lands on (-1: falls through)


def compile_table(t: Table) -> Compiled:
    """Lay the chains out (built-ins in hook order, user chains by name), relocate jumps.

    User chains come as cached segments (``Chain.segment``): joining them and relocating
    their jumps is vectorised; only the built-in chains go entry by entry. When only a few
    user chains changed since the last compile of this table (and no built-in), the last
    layout is patched instead: unchanged runs are copied, the rest shifted (``_splice``).
    """
    if t.layout is not None and t.dirty is not None and len(t.dirty) <= SPLICE_MAX:
        c = _splice(t, t.layout, sorted(t.dirty))
    else:
        c = _compile_all(t)
    t.dirty = set()
    return c


def _compile_all(t: Table) -> Compiled:
    parts: list[bytes] = [bytes(HEADROOM)]
    labels: list[str | None] = []
    kidx: list[int] = []
    first: dict[str, int] = {}  # chain -> index of the entry a jump lands on
    builtin_first: dict[int, int] = {}
    builtin_tail: dict[int, int] = {}
    builtins = sorted((c for c in t.chains.values() if c.hook is not None), key=lambda c: c.hook)
    for c in builtins:
        if not c.tail:
            raise BlobError(f"{t.name}: built-in chain {c.name} has no policy")
        builtin_first[c.hook] = len(labels)
        first[c.name] = len(labels)
        parts += c.entries
        labels += c.labels
        kidx += c.kidx
        builtin_tail[c.hook] = len(labels)
        parts.append(c.tail)
        labels.append(None)
        kidx.append(c.tail_kidx)
    nb = len(labels)
    names = t.user_chains()
    users = [t.chains[n] for n in names]
    # User chains as one flat run of entries (head, rules, RETURN each): building a
    # segment per chain was most of a cold compile (30,000 chains at 10,000 services);
    # segments are made only for the chains a later patched layout drops in.
    ret = RETURN_ENTRY
    flat = parts  # HEADROOM, the built-ins, then the user chains, the final ERROR entry
    labs: list[list[str | None]] = []
    counts: list[int] = []
    kf = t.kfirst
    kept = np.fromiter(map(kf.get, names, repeat(0)), dtype=np.int64, count=len(names)) - 1
    for head, c in zip(_head_entries(names), users, strict=True):
        e = c.entries
        flat.append(head)
        flat += e
        flat.append(ret)
        labs.append(c.labels)
        counts.append(len(e))
    flat.append(_FINAL_ERROR)
    cnt = np.asarray(counts, dtype=np.int64)
    seglen = cnt + 2
    segstart = np.cumsum(seglen) - seglen + nb  # index of each user chain's head
    first.update(zip(names, (segstart + 1).tolist(), strict=True))
    # Old indices: built-ins entry by entry; a kept user chain is a run from its head.
    run = np.repeat(kept, seglen)
    within = np.arange(int(seglen.sum()), dtype=np.int64) - np.repeat(segstart - nb, seglen)
    old_index = np.concatenate(
        [
            np.asarray(kidx, dtype=np.int64),
            np.where(run >= 0, run + within, -1),
            np.array([-1], dtype=np.int64),
        ]
    )

    n = len(flat) - 1
    lengths = np.fromiter(map(len, islice(flat, 1, None)), dtype=np.int64, count=n)
    ends = np.cumsum(lengths)
    offs = ends - lengths
    blob = bytearray().join(flat)
    # Jumps: every entry with a label, built-ins' (their own index) and user chains' rules
    # (rule k of chain j is entry nb + 2j + 1 + k).
    labels += concat.from_iterable(labs)
    jumping = list(map(is_not, labels, repeat(None)))
    jl = np.flatnonzero(np.fromiter(jumping, dtype=bool, count=len(labels)))
    rule_chain = np.repeat(np.arange(len(cnt), dtype=np.int64), cnt)[jl[jl >= nb] - nb]
    ji = jl.copy()
    ji[jl >= nb] += 2 * rule_chain + 1
    if len(ji):
        first[FALLTHROUGH] = -1  # for the lookup only (no chain has that name)
        try:
            dest = np.fromiter(
                map(first.__getitem__, compress(labels, jumping)), dtype=np.int64, count=len(ji)
            )
        except KeyError as e:
            raise BlobError(
                f"{t.name}: a rule jumps to chain {e.args[0]}, which does not exist"
            ) from None
        finally:
            del first[FALLTHROUGH]
        dests = dest
        _relocate(blob, ji, dests, offs, ends)
    else:
        dests = ji
    hook_entry = [0] * 5
    underflow = [0] * 5
    for h, i in builtin_first.items():
        hook_entry[h] = int(offs[i])
        underflow[h] = int(offs[builtin_tail[h]])
    c = Compiled(blob, hook_entry, underflow, n, old_index, offs)
    t.layout = Layout(list(names), first, c, lengths, ji, dests)
    return c


def _relocate(
    blob: bytearray, ji: np.ndarray, dests: np.ndarray, offs: np.ndarray, ends: np.ndarray
) -> None:
    """Write each jump's verdict: the byte offset of the entry it lands on."""
    dv = np.where(dests >= 0, offs[np.maximum(dests, 0)], ends[ji])  # fall through: the next
    view = np.frombuffer(blob, dtype="<i4")
    view[(HEADROOM + ends[ji] - 8) // 4] = dv.astype("<i4")


def _splice(t: Table, lay: Layout, dirty: list[str]) -> Compiled:
    """The last layout with the dirty user chains replaced, removed or inserted.

    Entries outside the dirty chains keep their bytes and order; an old entry ``i`` moves
    to ``i + shift[i]``, where ``shift`` sums the size changes of the dirty chains before
    it. Every jump is rewritten (vectorised): kept ones to their target's new place, the
    dirty chains' from their labels.
    """
    old = lay.names
    prev = lay.compiled
    n_old = prev.num_entries
    final = n_old - 1  # the closing ERROR entry
    first = lay.first
    # Regions of the old layout to replace: (start, end, new segment or None), in order.
    regions: list[tuple[int, int, Segment | None, str]] = []
    delta = np.zeros(n_old + 1, dtype=np.int64)
    for name in dirty:
        p = bisect_left(old, name)
        existed = p < len(old) and old[p] == name
        c = t.chains.get(name)
        seg = c.segment() if c is not None and c.hook is None else None
        if existed:
            a = first[name] - 1
            b = first[old[p + 1]] - 1 if p + 1 < len(old) else final
        else:
            if seg is None:
                continue
            a = b = first[old[p]] - 1 if p < len(old) else final
        regions.append((a, b, seg, name))
        delta[b] += (len(seg.lengths) if seg else 0) - (b - a)
    shift = np.cumsum(delta)[:n_old]
    # The new entries: kept runs and new segments.
    mv = memoryview(prev.buf)
    po = prev.offsets
    size_old = len(prev.buf)
    pieces: list = []
    lens: list[np.ndarray] = []
    olds: list[np.ndarray] = []
    seg_first: dict[str, int] = {}
    new_jumps: list[np.ndarray] = []
    new_labels: list[str] = []
    pos = 0  # old entry index up to which everything is taken
    out_n = 0  # entries laid out so far
    for a, b, seg, name in regions:
        pieces.append(mv[HEADROOM + int(po[pos]) if pos else 0 : HEADROOM + int(po[a])])
        lens.append(lay.lengths[pos:a])
        olds.append(np.arange(pos, a, dtype=np.int64))
        out_n += a - pos
        if seg is not None:
            pieces.append(seg.blob)
            sl = np.asarray(seg.lengths, dtype=np.int64)
            lens.append(sl)
            olds.append(np.full(len(sl), -1, dtype=np.int64))
            seg_first[name] = out_n + 1
            new_jumps.append(np.asarray(seg.jumps, dtype=np.int64) + out_n)
            new_labels += seg.labels
            out_n += len(sl)
        pos = b
    pieces.append(mv[HEADROOM + int(po[pos]) if pos else 0 : size_old])
    lens.append(lay.lengths[pos:])
    olds.append(np.arange(pos, n_old, dtype=np.int64))
    lengths = np.concatenate(lens)
    old_index = np.concatenate(olds)
    n = len(lengths)
    ends = np.cumsum(lengths)
    offs = ends - lengths
    blob = bytearray().join(pieces)
    # Where each chain starts now.
    names = t.user_chains()
    gone = {d for d in dirty if d not in seg_first}
    keys = [k for k in first if k not in gone and k not in seg_first]
    vals = np.fromiter((first[k] for k in keys), dtype=np.int64, count=len(keys))
    new_first = dict(zip(keys, (vals + shift[vals]).tolist(), strict=True))
    new_first.update(seg_first)
    # Jumps: kept ones (not inside a dirty chain) move with their entry; their targets too,
    # unless the target chain was rewritten (then: its new first rule).
    kj = lay.jumps
    kept = old_index >= 0
    alive = np.zeros(n_old, dtype=bool)
    alive[old_index[kept]] = True
    kj = kj[alive[kj]]
    kd = lay.dests[np.searchsorted(lay.jumps, kj)]
    moved = np.where(kd >= 0, kd + shift[np.maximum(kd, 0)], -1)
    lost = (kd >= 0) & ~alive[np.maximum(kd, 0)]
    if lost.any():  # jumps into rewritten chains: by name
        heads = {first[k] - 1: k for k in first if k in seg_first or k in gone}
        for i in np.flatnonzero(lost).tolist():
            target = heads.get(int(kd[i]) - 1)
            if target not in seg_first:
                raise BlobError(f"{t.name}: a rule jumps to chain {target}, which does not exist")
            moved[i] = seg_first[target]
    try:
        nd = [-1 if lab is FALLTHROUGH else new_first[lab] for lab in new_labels]
    except KeyError as e:
        raise BlobError(
            f"{t.name}: a rule jumps to chain {e.args[0]}, which does not exist"
        ) from None
    ji = np.concatenate([kj + shift[kj], *new_jumps])
    dests = np.concatenate([moved, np.asarray(nd, dtype=np.int64)])
    order = np.argsort(ji, kind="stable")
    ji, dests = ji[order], dests[order]
    if len(ji):
        _relocate(blob, ji, dests, offs, ends)
    c = Compiled(blob, prev.hook_entry, prev.underflow, n, old_index, offs)
    t.layout = Layout(list(names), new_first, c, lengths, ji, dests)
    return c


def reindex(t: Table) -> None:
    """After a successful replace: every entry's kernel index is its place in the new blob
    (built-ins entry by entry; user chains by where their first rule is, ``kfirst``)."""
    i = 0
    builtins = sorted((c for c in t.chains.values() if c.hook is not None), key=lambda c: c.hook)
    for c in builtins:
        c.kidx = list(range(i, i + len(c.entries)))
        i += len(c.entries)
        c.tail_kidx = i
        i += 1
    lay = t.layout
    if lay is not None and lay.names == t.user_chains() and t.dirty == set():
        t.kfirst = dict(lay.first)  # the layout just written (a copy: touch forgets)
        return
    kfirst = {}
    for name in t.user_chains():
        kfirst[name] = i + 1
        i += len(t.chains[name].entries) + 2
    t.kfirst = kfirst


def same_rule(a: bytes, la: str | None, b: bytes, lb: str | None) -> bool:
    """Two entries are the same rule (ignoring counters, comefrom and jump offsets)."""
    if la != lb or len(a) != len(b) or a[:OFF_COMEFROM] != b[:OFF_COMEFROM]:
        return False
    if la is None:
        return a[ENTRY_SIZE:] == b[ENTRY_SIZE:]
    return a[ENTRY_SIZE:-8] == b[ENTRY_SIZE:-8]


def describe(blob_entry: bytes) -> dict:
    """Decode an entry's header and the names/revisions of its matches and target (tests, debugging)."""
    (src, dst, smsk, dmsk, _ifaces, proto, flags, inv, nfcache, toff, noff, _cf, pc, bc) = (
        ENTRY.unpack_from(blob_entry)
    )
    matches = []
    o = ENTRY_SIZE
    while o < toff:
        size, mname, rev = XT_HEADER.unpack_from(blob_entry, o)
        matches.append((_name(mname), rev, blob_entry[o + XT_HEADER_SIZE : o + size]))
        o += size
    tsize, tname, trev = XT_HEADER.unpack_from(blob_entry, toff)
    return {
        "src": socket.inet_ntoa(src) + "/" + socket.inet_ntoa(smsk),
        "dst": socket.inet_ntoa(dst) + "/" + socket.inet_ntoa(dmsk),
        "proto": proto,
        "flags": flags,
        "invflags": inv,
        "nfcache": nfcache,
        "matches": matches,
        "target": (_name(tname), trev, blob_entry[toff + XT_HEADER_SIZE : toff + tsize]),
        "counters": (pc, bc),
        "next_offset": noff,
    }


# -- the encoder -----------------------------------------------------------------------------


def _xt(name: str, revision: int, data: bytes) -> bytes:
    size = XT_HEADER_SIZE + xt_align(len(data))
    return XT_HEADER.pack(size, name.encode(), revision) + data.ljust(size - XT_HEADER_SIZE, b"\0")


def _cidr(text: str) -> tuple[bytes, bytes]:
    addr, _, plen = text.partition("/")
    try:
        a = socket.inet_aton(addr) if addr.count(".") == 3 else None
    except OSError:
        a = None
    if a is None:
        raise EncodeError(f"not an IPv4 address: {text!r}")
    bits = int(plen) if plen else 32
    if not 0 <= bits <= 32:
        raise EncodeError(f"bad prefix length in {text!r}")
    m = (0xFFFFFFFF << (32 - bits)) & 0xFFFFFFFF
    mask = m.to_bytes(4, "big")
    return (int.from_bytes(a, "big") & m).to_bytes(4, "big"), mask


def _port_range(text: str) -> tuple[int, int]:
    lo, sep, hi = text.partition(":")
    try:
        a = int(lo) if lo else 0
        b = int(hi) if sep and hi else (65535 if sep else a)
    except ValueError:
        raise EncodeError(f"bad port {text!r}") from None
    if not (0 <= a <= 65535 and 0 <= b <= 65535):
        raise EncodeError(f"bad port {text!r}")
    return a, b


# Options and their number of values (0 = a flag). Anything else is unknown.
_ARITY = {
    "--comment": 1,
    "--dport": 1,
    "--sport": 1,
    "--mode": 1,
    "--probability": 1,
    "--name": 1,
    "--rcheck": 0,
    "--set": 0,
    "--update": 0,
    "--remove": 0,
    "--seconds": 1,
    "--reap": 0,
    "--rsource": 0,
    "--rdest": 0,
    "--hitcount": 1,
    "--dst-type": 1,
    "--src-type": 1,
    "--ctstate": 1,
    "--mark": 1,
    "--to-destination": 1,
    "--random": 0,
    "--persistent": 0,
    "--random-fully": 0,
    "--or-mark": 1,
    "--xor-mark": 1,
    "--set-xmark": 1,
    "--reject-with": 1,
}

Opts = tuple[tuple[bool, str, str], ...]  # (negated, option, value or "")


def _opts_dict(
    mod: str, opts: Opts, allowed: set[str], negatable: set[str] = frozenset()
) -> dict[str, tuple[bool, str]]:
    out: dict[str, tuple[bool, str]] = {}
    for neg, opt, val in opts:
        if opt not in allowed:
            raise EncodeError(f"-m/-j {mod}: option {opt} is not supported by the direct writer")
        if neg and opt not in negatable:
            raise EncodeError(f"{mod}: '! {opt}' is not supported by the direct writer")
        if opt in out:
            raise EncodeError(f"{mod}: {opt} given twice")
        out[opt] = (neg, val)
    return out


def _m_comment(opts: Opts) -> bytes:
    d = _opts_dict("comment", opts, {"--comment"})
    text = d["--comment"][1].encode()
    if len(text) > 255:
        raise EncodeError("comment longer than 255 bytes")
    return _xt("comment", 0, text.ljust(256, b"\0"))


def _m_ports(proto: str):
    def enc(opts: Opts) -> bytes:
        d = _opts_dict(proto, opts, {"--dport", "--sport"}, {"--dport", "--sport"})
        s = _port_range(d["--sport"][1]) if "--sport" in d else (0, 65535)
        dp = _port_range(d["--dport"][1]) if "--dport" in d else (0, 65535)
        sinv = d.get("--sport", (False, ""))[0]
        dinv = d.get("--dport", (False, ""))[0]
        if proto == "tcp":  # struct xt_tcp: spts, dpts, option, flg_mask, flg_cmp, invflags
            inv = (0x01 if sinv else 0) | (0x02 if dinv else 0)
            return _xt("tcp", 0, XT_TCP.pack(*s, *dp, 0, 0, 0, inv))
        if proto == "udp":  # struct xt_udp: spts, dpts, invflags
            inv = (0x01 if sinv else 0) | (0x02 if dinv else 0)
            return _xt("udp", 0, XT_UDP.pack(*s, *dp, inv))
        # struct xt_sctp_info: dpts, spts, chunkmap[64], chunk_match_type, flag_info[4]
        # (chunktype -1 when unused, as libxt_sctp), flag_count, flags, invflags.
        # libxt_sctp leaves a port range it was not given at 0-0 (the flags say which apply).
        s = s if "--sport" in d else (0, 0)
        dp = dp if "--dport" in d else (0, 0)
        fl = (0x02 if "--dport" in d else 0) | (0x01 if "--sport" in d else 0)
        inv = (0x02 if dinv else 0) | (0x01 if sinv else 0)
        return _xt(
            "sctp",
            0,
            struct.pack("<HHHH", *dp, *s)
            + b"\0" * 256
            + struct.pack("<I12siII", 0, b"\xff\0\0" * 4, 0, fl, inv),
        )

    return enc


def _m_statistic(opts: Opts) -> bytes:
    d = _opts_dict("statistic", opts, {"--mode", "--probability"}, {"--probability"})
    if (
        d.get("--mode", (False, ""))[1] != "random"
        or "--probability" in d
        and d["--probability"][0]
    ):
        raise EncodeError("statistic: only --mode random --probability P is supported")
    try:
        p = float(d["--probability"][1])
    except (KeyError, ValueError):
        raise EncodeError("statistic: --probability needs a number") from None
    if not 0.0 <= p <= 1.0:
        raise EncodeError("statistic: probability out of range")
    prob = math.floor(0x80000000 * p + 0.5)  # lround, as libxt_statistic
    # libxt_statistic's final check also sets u.nth.count = every - packet, which in
    # random mode aliases the probability: the kernel keeps it, so we write it too.
    return _xt("statistic", 0, struct.pack("<HHIIIQ", 0, 0, prob, 0, prob, 0))


_RECENT_ACTIONS = {"--rcheck": 1, "--set": 2, "--update": 4, "--remove": 8}


def _m_recent(opts: Opts) -> bytes:
    allowed = {
        "--name",
        "--seconds",
        "--reap",
        "--rsource",
        "--rdest",
        "--hitcount",
        *_RECENT_ACTIONS,
    }
    d = _opts_dict("recent", opts, allowed)
    actions = [a for a in _RECENT_ACTIONS if a in d]
    if len(actions) != 1:
        raise EncodeError("recent: exactly one of --set/--rcheck/--update/--remove")
    check_set = _RECENT_ACTIONS[actions[0]] | (0x20 if "--reap" in d else 0)
    name = d.get("--name", (False, "DEFAULT"))[1].encode()
    if len(name) >= 200:
        raise EncodeError("recent: name too long")
    try:
        seconds = int(d["--seconds"][1]) if "--seconds" in d else 0
        hits = int(d["--hitcount"][1]) if "--hitcount" in d else 0
    except ValueError:
        raise EncodeError("recent: --seconds/--hitcount need numbers") from None
    side = 1 if "--rdest" in d else 0
    # struct xt_recent_mtinfo_v1: seconds, hit_count, check_set, invert, name[200], side, pad, mask
    return _xt(
        "recent",
        1,
        struct.pack("<IIBB200sBx16s", seconds, hits, check_set, 0, name, side, b"\xff" * 16),
    )


_ADDRTYPES = {
    "UNSPEC": 1 << 0, "UNICAST": 1 << 1, "LOCAL": 1 << 2, "BROADCAST": 1 << 3, "ANYCAST": 1 << 4,
    "MULTICAST": 1 << 5, "BLACKHOLE": 1 << 6, "UNREACHABLE": 1 << 7, "PROHIBIT": 1 << 8,
    "THROW": 1 << 9, "NAT": 1 << 10, "XRESOLVE": 1 << 11,
}  # fmt: skip


def _addrtype_mask(text: str) -> int:
    m = 0
    for t in text.split(","):
        if t not in _ADDRTYPES:
            raise EncodeError(f"addrtype: unknown type {t!r}")
        m |= _ADDRTYPES[t]
    return m


def _m_addrtype(opts: Opts) -> bytes:
    d = _opts_dict("addrtype", opts, {"--src-type", "--dst-type"}, {"--src-type", "--dst-type"})
    src = _addrtype_mask(d["--src-type"][1]) if "--src-type" in d else 0
    dst = _addrtype_mask(d["--dst-type"][1]) if "--dst-type" in d else 0
    flags = (1 if d.get("--src-type", (False,))[0] else 0) | (
        2 if d.get("--dst-type", (False,))[0] else 0
    )
    return _xt("addrtype", 1, struct.pack("<HHI", src, dst, flags))  # struct xt_addrtype_info_v1


_CTSTATES = {"INVALID": 1 << 0, "ESTABLISHED": 1 << 1, "RELATED": 1 << 2, "NEW": 1 << 3, "UNTRACKED": 1 << 6, "SNAT": 1 << 7, "DNAT": 1 << 8}  # fmt: skip


def _m_conntrack(opts: Opts) -> bytes:
    d = _opts_dict("conntrack", opts, {"--ctstate"}, {"--ctstate"})
    mask = 0
    for s in d["--ctstate"][1].split(","):
        if s not in _CTSTATES:
            raise EncodeError(f"conntrack: unknown state {s!r}")
        mask |= _CTSTATES[s]
    inv = 1 if d["--ctstate"][0] else 0
    # struct xt_conntrack_mtinfo3: 8 addresses, expires_min/max, l4proto, 4 ports,
    # match_flags, invert_flags, state_mask, status_mask, 4 port_high.
    return _xt(
        "conntrack",
        3,
        b"\0" * 136 + struct.pack("<HHHHHHHHH8s", 0, 0, 0, 0, 0, 1, inv, mask, 0, b""),
    )


def _int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise EncodeError(f"not a number: {text!r}") from None


def _value_mask(text: str) -> tuple[int, int]:
    v, sep, m = text.partition("/")
    return _int(v), (_int(m) if sep else 0xFFFFFFFF)


def _m_mark(opts: Opts) -> bytes:
    d = _opts_dict("mark", opts, {"--mark"}, {"--mark"})
    neg, val = d["--mark"]
    mark, mask = _value_mask(val)
    return _xt("mark", 1, XT_MARK_MTINFO1.pack(mark, mask, 1 if neg else 0))


_MATCHES = {
    "comment": _m_comment,
    "tcp": _m_ports("tcp"),
    "udp": _m_ports("udp"),
    "sctp": _m_ports("sctp"),
    "statistic": _m_statistic,
    "recent": _m_recent,
    "addrtype": _m_addrtype,
    "conntrack": _m_conntrack,
    "mark": _m_mark,
}


def _t_dnat(opts: Opts) -> bytes:
    d = _opts_dict("DNAT", opts, {"--to-destination", "--random", "--persistent"})
    if "--to-destination" not in d:
        raise EncodeError("DNAT needs --to-destination")
    dest = d["--to-destination"][1]
    ip, sep, port = dest.partition(":")
    lo_ip, _, hi_ip = ip.partition("-")
    flags = 0
    ips = (b"\0" * 4, b"\0" * 4)
    if ip:
        a, _ = _cidr(lo_ip)
        b = _cidr(hi_ip)[0] if hi_ip else a
        ips = (a, b)
        flags |= 0x01  # NF_NAT_RANGE_MAP_IPS
    pmin = pmax = 0
    if sep:
        pmin, pmax = _port_range(port.replace("-", ":"))
        flags |= 0x02  # NF_NAT_RANGE_PROTO_SPECIFIED
    if "--random" in d:
        flags |= 0x04
    if "--persistent" in d:
        flags |= 0x08
    # Revision 2, struct nf_nat_range2: flags, min_addr, max_addr (union nf_inet_addr),
    # min_proto, max_proto, base_proto (big-endian ports).
    return _xt(
        "DNAT",
        2,
        struct.pack("<I16s16s", flags, ips[0], ips[1]) + struct.pack(">HHH", pmin, pmax, 0),
    )


def _t_masquerade(opts: Opts) -> bytes:
    d = _opts_dict("MASQUERADE", opts, {"--random", "--random-fully"})
    flags = (0x04 if "--random" in d else 0) | (0x10 if "--random-fully" in d else 0)
    return _xt("MASQUERADE", 0, struct.pack("<II4s4sHH", 1, flags, b"", b"", 0, 0))


def _t_mark(opts: Opts) -> bytes:
    d = _opts_dict("MARK", opts, {"--or-mark", "--xor-mark", "--set-xmark"})
    if len(d) != 1:
        raise EncodeError("MARK: exactly one of --set-xmark/--or-mark/--xor-mark")
    (opt, (_, val)), = d.items()  # fmt: skip
    # struct xt_mark_tginfo2 {mark, mask}: new mark = (old & ~mask) ^ mark (as libxt_MARK).
    if opt == "--or-mark":
        mark = mask = _int(val)
    elif opt == "--xor-mark":
        mark, mask = _int(val), 0
    else:
        mark, mask = _value_mask(val)
    return _xt("MARK", 2, struct.pack("<II", mark, mask))


_REJECT_WITH = {
    "icmp-net-unreachable": 0, "icmp-host-unreachable": 1, "icmp-proto-unreachable": 2,
    "icmp-port-unreachable": 3, "icmp-net-prohibited": 5, "icmp-host-prohibited": 6,
    "tcp-reset": 7, "icmp-admin-prohibited": 8,
}  # fmt: skip


def _t_reject(opts: Opts) -> bytes:
    d = _opts_dict("REJECT", opts, {"--reject-with"})
    w = d.get("--reject-with", (False, "icmp-port-unreachable"))[1]
    if w not in _REJECT_WITH:
        raise EncodeError(f"REJECT: unknown --reject-with {w!r}")
    return _xt("REJECT", 0, struct.pack("<I", _REJECT_WITH[w]))  # struct ipt_reject_info


_TARGETS = {"DNAT": _t_dnat, "MASQUERADE": _t_masquerade, "MARK": _t_mark, "REJECT": _t_reject}


_C = r'(?:-m comment --comment ("[^"]*"|[^\s"]+) )?'
_FAST_JUMP = re.compile(
    r"-A (\S+) " + _C + r"(?:-m statistic --mode random --probability ([0-9.]+) )?-j (\S+)"
)
_FAST_SRC = re.compile(r"-A (\S+) " + _C + r"(! )?-s ([0-9./]+) -j (\S+)")
_FAST_DNAT = re.compile(
    r"-A (\S+) "
    + _C
    + r"(?:-m recent --name (\S+) --set )?-m (tcp|udp|sctp) -p \4 -j DNAT --to-destination ([0-9.:]+)"
)
_FAST_SERVICE = re.compile(
    r'-A (\S+) -m comment --comment ("[^"]*"|[^\s"]+) -m (tcp|udp|sctp) -p \3 -d ([0-9./]+) --dport (\d+)(?: (! )?-s ([0-9./]+))? -j (\S+)'
)


_COMMENT_HEAD = XT_HEADER.pack(XT_HEADER_SIZE + 256, b"comment", 0)
_DNAT_HEAD = XT_HEADER.pack(XT_HEADER_SIZE + 48, b"DNAT", 2)
_DNAT_RANGE = struct.Struct("<I4s12x4s12x2s2s8x")  # struct nf_nat_range2, IPv4 address, one port


_Z4 = b"\0\0\0\0"
_PACK_ENTRY = ENTRY.pack


def _entry(
    chain: str,
    src: bytes,
    dst: bytes,
    smsk: bytes,
    dmsk: bytes,
    proto: int,
    inv: int,
    body: bytes,
    target: bytes,
    label: str | None,
) -> Encoded:
    toff = ENTRY_SIZE + len(body)
    head = _PACK_ENTRY(
        src, dst, smsk, dmsk, b"", proto, 0, inv, 0, toff, toff + len(target), 0, 0, 0
    )
    return Encoded(chain, head + body + target, label)


_first = itemgetter(0)


class Encoded(NamedTuple):
    """One rule: entry bytes (verdict of a jump still 0) and its jump label."""

    chain: str
    entry: bytes
    label: str | None


class Encoder:
    """Rule lines -> entries, memoised per line fragment and per match/target option set."""

    def __init__(self) -> None:
        self._frags: dict[str, list[Encoded]] = {}
        self._used: dict[str, list[Encoded]] = {}
        self._grouped: dict[str, dict[str, tuple[list[bytes], list[str | None]]]] = {}
        self._gused: dict[str, dict[str, tuple[list[bytes], list[str | None]]]] = {}
        self._pieces: dict[tuple, bytes] = {}
        self._std: dict[int, bytes] = {}
        self._comments: dict[str, bytes] = {}
        self._addrs: dict[str, tuple[bytes, bytes]] = {}
        self.templates = Templates(self._general)
        self.encoded_lines = 0  # lines encoded (not from the memo), for stats

    def begin(self) -> None:
        """Start a sync: fragments not used in this sync are forgotten at ``end``."""
        self._used = {}
        self._gused = {}

    def merge(self) -> None:
        """End a partial sync: add what it encoded to the memo, forget nothing."""
        self._frags.update(self._used)
        self._grouped.update(self._gused)
        self._used, self._gused = {}, {}

    def end(self) -> None:
        self._frags, self._grouped = self._used, self._gused
        self._used, self._gused = {}, {}
        if len(self._pieces) + len(self._comments) + len(self._addrs) > 400_000:
            self._pieces.clear()
            self._comments.clear()
            self._addrs.clear()
            self.templates.clear()

    def fragment(self, text: str) -> list[Encoded]:
        """Encode a run of ``-A CHAIN ...`` lines (memoised by the text itself)."""
        if not text:
            return []
        hit = self._used.get(text)
        if hit is None:
            hit = self._frags.get(text)
            if hit is None:
                hit = [self.line(ln) for ln in text.splitlines() if ln]
            self._used[text] = hit
        return hit

    def chains(
        self, text: str, shape: tuple[str, tuple[str, ...]] | None = None
    ) -> dict[str, tuple[list[bytes], list[str | None]]]:
        """A fragment's entries grouped by chain, in order (memoised; do not mutate).

        ``shape``: the renderer's ``(format, fields)`` of ``text`` (``render.Shape``), a
        hint that saves splitting the text; the result is the same with or without it.
        """
        hit = self._gused.get(text)
        if hit is None:
            hit = self._grouped.get(text)
            if hit is None:
                hit = self.templates.chains(text, shape)
                if hit is None:
                    hit = self._general_chains(text)
                self.encoded_lines += sum(map(len, map(_first, hit.values())))
            self._gused[text] = hit
        return hit

    def top_chain(
        self,
        table: str,
        chain: str,
        pieces: Iterable[tuple[str, tuple[str, tuple[str, ...]] | None]],
    ) -> tuple[list[bytes], list[str | None]]:
        """A top-level chain's entries and jump labels from the renderer's pieces of it
        (``Ruleset.top_pieces``); ``EncodeError`` if a piece has rules of another chain."""
        entries: list[bytes] = []
        labels: list[str | None] = []
        for text, shape in pieces:
            if text:
                g = self.chains(text, shape)
                if len(g) != 1 or chain not in g:
                    raise EncodeError(f"{table}/{chain}: a fragment has rules of other chains")
                e, lab = g[chain]
                entries += e
                labels += lab
        return entries, labels

    def port_chains(
        self, chains: tuple[str, ...], text: str, shape: tuple[str, tuple[str, ...]] | None = None
    ) -> dict[str, tuple[list[bytes], list[str | None]]]:
        """A service port's nat fragment as its declared ``chains``, in that order, each
        with its entries and jump labels (a declared chain without rules gets none);
        ``EncodeError`` if the text has rules of a chain the port did not declare."""
        g = self.chains(text, shape)
        if tuple(g) == chains:  # the usual case: every chain has rules, in this order
            return g
        if not g.keys() <= set(chains):
            raise EncodeError(f"rules of undeclared chains in {sorted(set(g) - set(chains))}")
        empty: tuple[list[bytes], list[str | None]] = ([], [])
        return {c: g.get(c, empty) for c in chains}

    def _general_chains(self, text: str) -> dict[str, tuple[list[bytes], list[str | None]]]:
        """A fragment line by line (the regex fast path, else the general parser)."""
        hit: dict[str, tuple[list[bytes], list[str | None]]] = {}
        fast, parse = self._fast, self.parse_line
        for ln in text.splitlines():
            if not ln:
                continue
            chain, entry, label = fast(ln) or parse(ln)
            g = hit.get(chain)
            if g is None:
                g = hit[chain] = ([], [])
            g[0].append(entry)
            g[1].append(label)
        return hit

    def _general(self, line: str) -> tuple[str, bytes, str | None]:
        return self.parse_line(line)

    def line(self, line: str) -> Encoded:
        """One rule line: the renderer's common shapes take a regex fast path."""
        self.encoded_lines += 1
        return self._fast(line) or self.parse_line(line)

    def _piece(self, key: tuple, enc) -> bytes:
        b = self._pieces.get(key)
        if b is None:
            b = self._pieces[key] = enc(key[2:])
        return b

    def _comment(self, text: str | None) -> bytes:
        if text is None:
            return b""
        b = self._comments.get(text)
        if b is None:
            raw = (text[1:-1] if text[0] == '"' else text).encode()
            if len(raw) > 255:
                raise EncodeError("comment longer than 255 bytes")
            b = self._comments[text] = _COMMENT_HEAD + raw.ljust(256, b"\0")
        return b

    def _addr(self, text: str) -> tuple[bytes, bytes]:
        a = self._addrs.get(text)
        if a is None:
            a = self._addrs[text] = _cidr(text)
        return a

    def _dnat(self, dest: str) -> bytes:
        ip, _, port = dest.rpartition(":")
        if not ip:
            return self._piece(("j", "DNAT", (False, "--to-destination", dest)), _t_dnat)
        p = int(port)
        if p > 65535:
            raise EncodeError(f"bad port in {dest!r}")
        a = self._addr(ip)[0]
        pb = p.to_bytes(2, "big")
        return _DNAT_HEAD + _DNAT_RANGE.pack(3, a, a, pb, pb)

    def _target(self, name: str) -> tuple[bytes, str | None] | None:
        v = VERDICTS.get(name)
        if v is not None:
            return self._standard(v), None
        if name in _TARGETS or name.startswith("-"):
            return None
        return self._standard(0), name

    def _fast(self, line: str) -> Encoded | None:
        """The renderer's high-volume line shapes (same bytes as ``parse_line``)."""
        if " -j DNAT " in line:
            m = _FAST_DNAT.fullmatch(line)
            if m is None:
                return None
            chain, comment, recent, proto, dest = m.groups()
            body = self._comment(comment)
            if recent is not None:
                body += self._piece(
                    ("m", "recent", (False, "--name", recent), (False, "--set", "")), _m_recent
                )
            body += self._piece(("m", proto), _MATCHES[proto])
            return _entry(chain, _Z4, _Z4, _Z4, _Z4, PROTOS[proto], 0, body, self._dnat(dest), None)
        if " --dport " in line:
            m = _FAST_SERVICE.fullmatch(line)
            if m is None:
                return None
            chain, comment, proto, dst, port, neg, src, tname = m.groups()
            t = self._target(tname)
            if t is None:
                return None
            d, dmsk = self._addr(dst)
            s = smsk = _Z4
            inv = 0
            if src is not None:
                s, smsk = self._addr(src)
                inv = IPT_INV_SRCIP if neg else 0
            body = self._comment(comment) + self._piece(
                ("m", proto, (False, "--dport", port)), _MATCHES[proto]
            )
            return _entry(
                chain,
                s,
                d,
                smsk,
                dmsk,
                PROTOS[proto],
                inv,
                body,
                *t,
            )
        if " -s " in line:
            m = _FAST_SRC.fullmatch(line)
            if m is None:
                return None
            chain, comment, neg, src, tname = m.groups()
            t = self._target(tname)
            if t is None:
                return None
            a, msk = self._addr(src)
            inv = IPT_INV_SRCIP if neg else 0
            return _entry(
                chain,
                a,
                _Z4,
                msk,
                _Z4,
                0,
                inv,
                self._comment(comment),
                *t,
            )
        m = _FAST_JUMP.fullmatch(line)
        if m is None:
            return None
        chain, comment, prob, tname = m.groups()
        t = self._target(tname)
        if t is None:
            return None
        body = self._comment(comment)
        if prob is not None:
            body += self._piece(
                ("m", "statistic", (False, "--mode", "random"), (False, "--probability", prob)),
                _m_statistic,
            )
        return _entry(chain, _Z4, _Z4, _Z4, _Z4, 0, 0, body, *t)

    def parse_line(self, line: str) -> Encoded:
        """The general parser (every option ``render.py`` can emit)."""
        if '"' in line:
            parts = line.split('"')
            if len(parts) % 2 == 0:
                raise EncodeError(f"unbalanced quotes in {line!r}")
            toks: list[str] = []
            for k, p in enumerate(parts):
                if k & 1:
                    toks.append(p)
                else:
                    toks.extend(p.split())
        else:
            toks = line.split()
        if len(toks) < 2 or toks[0] != "-A":
            raise EncodeError(f"not an append rule: {line!r}")
        chain = toks[1]
        src = smsk = dst = dmsk = b"\0\0\0\0"
        proto = 0
        inv = 0
        matches: list[bytes] = []
        target: bytes | None = None
        label: str | None = None
        neg = False
        cur: list | None = None  # [kind, name, opts list]
        pieces = self._pieces
        i, n = 2, len(toks)

        def close(cur: list | None) -> None:
            nonlocal target, label
            if cur is None:
                return
            kind, name, opts = cur
            key = (kind, name, *opts)
            b = pieces.get(key)
            if b is None:
                if kind == "m":
                    enc = _MATCHES.get(name)
                    if enc is None:
                        raise EncodeError(f"match -m {name} is not supported by the direct writer")
                else:
                    enc = _TARGETS.get(name)
                b = pieces[key] = enc(tuple(opts))
            if kind == "m":
                matches.append(b)
            else:
                target = b

        while i < n:
            t = toks[i]
            if t == "!":
                neg = True
                i += 1
                continue
            if t.startswith("--"):
                if cur is None:
                    raise EncodeError(f"option {t} outside a match or target in {line!r}")
                a = _ARITY.get(t)
                if a is None:
                    raise EncodeError(f"option {t} is not supported by the direct writer")
                if i + a >= n + (0 if a else 1) and a:
                    raise EncodeError(f"option {t} needs a value in {line!r}")
                cur[2].append((neg, t, toks[i + 1] if a else ""))
                neg = False
                i += 1 + a
                continue
            if neg and t not in ("-s", "-d", "-p"):
                raise EncodeError(f"'!' before {t} in {line!r}")
            if i + 1 >= n:
                raise EncodeError(f"{t} needs a value in {line!r}")
            v = toks[i + 1]
            if t == "-m":
                close(cur)
                cur = ["m", v, []]
            elif t == "-j":
                close(cur)
                cur = None
                if v in VERDICTS:
                    target = self._standard(VERDICTS[v])
                elif v in _TARGETS:
                    cur = ["j", v, []]
                elif v.startswith("-") or not v:
                    raise EncodeError(f"bad target {v!r}")
                else:
                    target = self._standard(0)
                    label = v
            elif t == "-s":
                src, smsk = _cidr(v)
                if neg:
                    inv |= IPT_INV_SRCIP
            elif t == "-d":
                dst, dmsk = _cidr(v)
                if neg:
                    inv |= IPT_INV_DSTIP
            elif t == "-p":
                p = PROTOS.get(v)
                if p is None:
                    raise EncodeError(f"protocol {v!r} is not supported by the direct writer")
                proto = p
                if neg:
                    inv |= IPT_INV_PROTO
            else:
                raise EncodeError(f"option {t} is not supported by the direct writer ({line!r})")
            neg = False
            i += 2
        close(cur)
        if target is None:
            target = self._standard(0)
            label = FALLTHROUGH
        body = b"".join(matches)
        toff = ENTRY_SIZE + len(body)
        head = ENTRY.pack(
            src, dst, smsk, dmsk, b"", proto, 0, inv, 0, toff, toff + len(target), 0, 0, 0
        )
        return Encoded(chain, head + body + target, label)

    def _standard(self, verdict: int) -> bytes:
        b = self._std.get(verdict)
        if b is None:
            b = self._std[verdict] = _standard(verdict)
        return b
