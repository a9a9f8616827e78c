"""Talking to nf_tables directly: the ``nft`` backend without iptables-nft-restore.

iptables-nft-restore spends most of a sync in userspace: it reads the whole ruleset back
(every rule of 30,000 chains) before it writes one, so a one-endpoint change at 10,000
services costs it ~0.25 s and a cold load a minute, while the kernel's share is a few
milliseconds and ~1 s. This module speaks nf_tables' netlink protocol itself, on a
NETLINK_NETFILTER socket, and leaves the bytes to the pure codec (``nft_codec.py``):

* every sync is ONE batch (NFNL_MSG_BATCH_BEGIN ... END) covering ``ip filter`` and
  ``ip nat``, so it is atomic; the batch carries the generation id we read
  (NFNL_BATCH_GENID), so the kernel refuses it if anybody committed in between;
* our chains are created when missing, flushed (DELRULE without a handle) and refilled
  (NEWRULE appends), our stale chains flushed and deleted at the end of the batch, after
  the rules that jumped to them are gone; the jump rules from the built-in chains are
  inserted at the top when a dump (GETRULE) does not show them, creating the table and
  the base chain as iptables-nft would; nothing else is ever named;
* after a commit we know the generation it made (GETGEN before + 1). A full sync that
  finds it unmoved knows the kernel still holds what we wrote and sends only the chains
  whose rules changed (often nothing at all); a moved generation means somebody else
  committed: chains are listed again (GETCHAIN) and everything of ours is rewritten, so a
  rule deleted by hand comes back;
* errors are only acked when they happen: the kernel's NLMSG_ERROR names the sequence
  number of the message it refused, which we map back to the table, chain and rule text.

``NftWriter`` is the backend's writer (same ``write(ruleset, plan)`` as the others); a
sync it cannot encode goes through iptables-nft-restore (``WriteResult.fallback`` says
why). The blocking netlink calls run in a worker thread, on a socket opened in the
caller's thread (so in the caller's network namespace). The socket is kept from one sync
to the next while the caller stays in that namespace (and dropped after any failure):
closing a NETLINK_NETFILTER socket makes nf_tables take its commit mutex and wait for the
previous transaction's deferred release (an RCU grace period), 4-14 ms of every one-change
sync at 10,000 services when each sync opened and closed its own.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import time
from dataclasses import dataclass, field

from . import nft_codec as nc
from .apply import DirectWriter, RestoreWriter, SyncPlan, WriteResult
from .render import (
    FILTER_CHAINS,
    JUMP_RULES,
    NAT_CHAINS,
    Ruleset,
    is_service_chain,
)
from .xtables_codec import gc_paused

log = logging.getLogger("kubeproxy")

SOL_SOCKET = 1
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
ERESTART = 85  # the batch's generation id is not the kernel's any more
_RECV = 1 << 20

Content = tuple[list[bytes], list[str | None]]  # a chain's entries and jump labels


class NftError(RuntimeError):
    pass


class GenerationMoved(NftError):
    """Somebody committed between our GETGEN and our batch."""


class Netlink:
    """A NETLINK_NETFILTER socket (in the network namespace of the thread that opens it)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, nc.NETLINK_NETFILTER)
        self.sock.bind((0, 0))
        self._sndbuf = 0
        self._seq = int(time.time()) & 0x3FFFFFFF
        try:
            self.sock.setsockopt(SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def seqs(self, n: int) -> int:
        """Reserve n sequence numbers; returns the first."""
        s = self._seq
        self._seq = (self._seq + n) & 0xFFFFFFFF
        return s

    def _request(self, msg: bytes, seq: int, on_msg) -> None:
        """Send one request, feed each reply to on_msg until the answer is complete."""
        self.sock.send(msg)
        while True:
            buf = self.sock.recv(_RECV)
            for m in nc.split(buf):
                if m.seq != seq:
                    continue
                if m.type == nc.NLMSG_DONE:
                    return
                if m.type == nc.NLMSG_ERROR:
                    err, _ = nc.error_of(m)
                    if err == 0:
                        return
                    raise OSError(err, os.strerror(err))
                on_msg(m)
                if not m.flags & nc.NLM_F_MULTI:
                    return

    def gen(self) -> int:
        """NFT_MSG_GETGEN: the ruleset's generation id (bumped by every commit)."""
        out: list[int] = []
        seq = self.seqs(1)
        self._request(nc.get_gen(seq), seq, lambda m: out.append(nc.gen_id(m)))
        return out[0]

    def chains(self) -> dict[str, dict[str, bool]]:
        """Every chain of family ip: table -> chain -> is a base chain."""
        out: dict[str, dict[str, bool]] = {}
        seq = self.seqs(1)

        def add(m: nc.Msg) -> None:
            c = nc.chain_info(m)
            out.setdefault(c.table, {})[c.name] = c.base

        self._request(nc.dump_chains(seq), seq, add)
        return out

    def rules(self, table: str, chain: str) -> list[nc.RuleInfo]:
        out: list[nc.RuleInfo] = []
        seq = self.seqs(1)
        try:
            self._request(
                nc.dump_rules(seq, table, chain), seq, lambda m: out.append(nc.rule_info(m))
            )
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise
        return out

    def batch(
        self, msgs: list[bytes], begin_seq: int, end_seq: int, genid: int | None
    ) -> list[tuple[int, int]]:
        """Send one batch; returns the (errno, seq) of every message the kernel refused."""
        data = b"".join([nc.batch_begin(begin_seq, genid), *msgs, nc.batch_end(end_seq)])
        need = len(data) + (1 << 16)
        if need > self._sndbuf:  # the whole batch is one skb: the send buffer must hold it
            self.sock.setsockopt(SOL_SOCKET, SO_SNDBUFFORCE, need)
            self._sndbuf = need
        self.sock.send(data)
        # the kernel processed the batch inside send(): its error replies are queued already
        errs = []
        while True:
            try:
                buf = self.sock.recv(_RECV, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return errs
            for m in nc.split(buf):
                if m.type == nc.NLMSG_ERROR:
                    err, seq = nc.error_of(m)
                    if err:
                        errs.append((err, seq))


# -- the backend's writer ----------------------------------------------------------------


TABLES = ("filter", "nat")


@dataclass
class Desired:
    """What one sync writes, encoded (chains in the order iptables-restore declares them)."""

    chains: dict[str, dict[str, Content]] = field(default_factory=lambda: {t: {} for t in TABLES})
    wanted: set[str] | None = None  # full sync: every nat service chain (others are stale)
    delete: set[str] = field(default_factory=set)  # partial: our nat chains to delete
    jumps: list[tuple[str, str, bytes, str]] = field(
        default_factory=list
    )  # full: (table, src, entry, dst)
    text: dict[tuple[str, str], str] = field(
        default_factory=dict
    )  # (table, chain) -> its rule text (errors)


@dataclass
class _Kernel:
    """What we know of the kernel's nf_tables ruleset after our last commit."""

    gen: int | None = None  # the generation the rest describes (None: nothing known)
    chains: dict[str, dict[str, bool]] = field(default_factory=dict)  # table -> chain -> base
    clean: bool = False  # our chains hold exactly ``content`` and the jump rules are in place
    content: dict[tuple[str, str], Content] = field(default_factory=dict)


@dataclass
class _Stats:
    read_s: float = 0.0
    build_s: float = 0.0
    kernel_s: float = 0.0
    bytes: int = 0
    stale: int = 0
    jumps: int = 0
    read: dict[str, bool] = field(default_factory=dict)
    written: dict[str, bool] = field(default_factory=dict)


def _next_gen(g: int) -> int:
    g = (g + 1) & 0xFFFFFFFF
    return g or 1


class NftWriter(DirectWriter):
    """Ruleset -> encoded chains (memoised per fragment) -> one nf_tables batch per sync."""

    kind = "nf_tables"

    def __init__(self, fallback: RestoreWriter):
        super().__init__(fallback)
        self.translator = nc.Translator()
        self.kernel = _Kernel()
        self._jumps: list[tuple[str, str, bytes, str]] | None = None
        self._nl: Netlink | None = None
        self._nl_ns: tuple[int, int] | None = None  # (st_dev, st_ino) of its network namespace
        self._kernel_ns: tuple[int, int] | None = None  # the namespace ``kernel`` describes

    def forget(self) -> None:
        self.kernel = _Kernel()
        self.close()

    def close(self) -> None:
        """Close the kept netlink socket (the next sync opens one)."""
        nl, self._nl, self._nl_ns = self._nl, None, None
        if nl is not None:
            nl.close()

    def _netlink(self) -> Netlink:
        """The kept socket if it lives in the calling thread's network namespace, else a
        new one opened here (so in that namespace)."""
        st = os.stat("/proc/thread-self/ns/net")
        ns = (st.st_dev, st.st_ino)
        if self._nl is None or self._nl_ns != ns:
            self.close()
            if self._kernel_ns != ns:  # what we know is another namespace's ruleset
                self.kernel = _Kernel()
            self._nl, self._nl_ns = Netlink(), ns
            self._kernel_ns = ns
        return self._nl

    # -- encoding (pure) --

    def jumps(self) -> list[tuple[str, str, bytes, str]]:
        if self._jumps is None:
            self._jumps = [
                (j.table, j.src, self.encoder.line(j.save_line()).entry, j.dst) for j in JUMP_RULES
            ]
        return self._jumps

    def _top_chain(self, rs: Ruleset, table: str, chain: str) -> Content:
        return self.encoder.top_chain(table, chain, rs.top_pieces(table, chain))

    def build(self, rs: Ruleset, plan: SyncPlan) -> Desired:
        """Encode what this sync writes (raises EncodeError for text we cannot encode)."""
        skip = set(plan.skip_top) if not plan.full else set()
        d = Desired()
        for table, names in (("filter", FILTER_CHAINS), ("nat", NAT_CHAINS)):
            for c in names:
                if (table, c) not in skip:
                    d.chains[table][c] = self._top_chain(rs, table, c)
        if plan.full:
            picked = rs.services.values()
            d.wanted = set(plan.wanted)
            d.jumps = self.jumps()
        else:
            picked = [
                rs.services[s] for s in sorted(plan.only or (), key=_spn_key) if s in rs.services
            ]
            d.delete = set(plan.stale)
        nat, enc = d.chains["nat"], self.encoder.port_chains
        for r in picked:
            nat.update(enc(r.chains, r.chain_rules, r.chain_rules_shape))
            for c in r.chains:
                d.text[("nat", c)] = r.chain_rules
        for c in d.chains["filter"]:
            d.text[("filter", c)] = rs.filter_top[c]
        for c in NAT_CHAINS:
            d.text[("nat", c)] = rs.nat_top[c]
        d.delete -= nat.keys()
        return d

    # -- the sync --

    async def write_built(
        self, rs: Ruleset, plan: SyncPlan, d: Desired, encode_s: float
    ) -> WriteResult:
        for attempt in (1, 2):
            # opened in this thread: its network namespace is ours, whichever thread uses it
            nl = self._netlink()
            try:
                st = await asyncio.to_thread(self._sync_in_thread, nl, d, plan.full)
                break
            except nc.Unsupported as e:
                return await self.fall_back(rs, plan, e)
            except GenerationMoved:
                self.forget()
                if attempt == 2:
                    raise
                log.info("nf_tables changed while we wrote it; syncing again from a fresh read")
            except BaseException:  # the socket may hold unread replies: never reuse it
                self.forget()
                raise
        res = WriteResult(
            "nft",
            st.stale,
            st.bytes,
            encode_s=encode_s + st.build_s,
            read_s=st.read_s,
            kernel_s=st.kernel_s,
        )
        res.tables_read, res.tables_written = st.read, st.written
        if st.jumps:
            log.info("inserted %d jump rule(s) into built-in chains (nft, direct)", st.jumps)
        return res

    def _sync_in_thread(self, nl: Netlink, d: Desired, full: bool) -> _Stats:
        with gc_paused():
            try:
                return self._sync(nl, d, full)
            except BaseException:
                # _sync edits what we know in place: a failure anywhere (even after the
                # caller stopped waiting) leaves nothing known
                self.kernel = _Kernel()
                raise

    def _sync(self, nl: Netlink, d: Desired, full: bool) -> _Stats:
        st = _Stats()
        k = self.kernel
        t0 = time.perf_counter()
        g = nl.gen()
        known = k.gen == g
        if known:
            chains = k.chains  # edited in place (no copy of 30,000 names): see _sync_in_thread
        else:
            chains = nl.chains()
            st.read = {t: True for t in TABLES}
        clean = known and k.clean
        st.read_s = time.perf_counter() - t0
        t1 = time.perf_counter()

        tr = self.translator
        begin = nl.seqs(1)
        msgs: list[bytes] = []
        what: list[tuple] = []  # per message: (kind, table, chain, rule index)

        def add(msg_fn, kind: str, table: str, chain: str, *args) -> None:
            msgs.append(msg_fn(nl.seqs(1), table, chain, *args))
            what.append((kind, table, chain, -1))

        written: dict[tuple[str, str], Content] = {}
        deleted: list[tuple[str, str]] = []
        for table in TABLES:
            want = d.chains[table]
            if not want and not (full and any(j[0] == table for j in d.jumps)):
                continue
            tc = chains.get(table)
            if tc is None:
                msgs.append(nc.new_table(nl.seqs(1), table))
                what.append(("table", table, "", -1))
                tc = chains[table] = {}
            created = set()
            for c in want:
                if c not in tc:
                    add(nc.new_chain, "chain", table, c)
                    tc[c] = False
                    created.add(c)
                elif tc[c]:
                    raise NftError(f"table {table}: {c} is a base chain, not one of ours")
            for c, content in want.items():
                if c not in created:
                    if clean and k.content.get((table, c)) == content:
                        continue
                    add(nc.flush_chain, "flush", table, c)
                entries, labels = content
                written[(table, c)] = content
                if entries:
                    bodies = list(map(tr.body, entries, labels))
                    first = nl.seqs(len(bodies))
                    msgs += nc.new_rules(first, nc.rule_prefix(table, c), bodies)
                    what += [("rule", table, c, i) for i in range(len(bodies))]
            if table == "nat":
                if d.wanted is not None:
                    stale = (
                        {c for c, base in tc.items() if not base and is_service_chain(c)}
                        - d.wanted
                        - want.keys()
                    )
                else:
                    stale = {c for c in d.delete if c in tc and not tc[c]}
                stale = sorted(stale)
                for c in stale:  # all flushed first: stale chains jump to each other
                    add(nc.flush_chain, "flush", table, c)
                for c in stale:
                    add(nc.del_chain, "delete", table, c)
                    del tc[c]
                    deleted.append((table, c))
                st.stale = len(stale)
        if full and not clean:
            st.jumps = self._jumps_msgs(nl, d, chains, msgs, what)
        st.build_s = time.perf_counter() - t1
        for _kind, table, *_ in what:
            st.written[table] = True
        t2 = time.perf_counter()
        if msgs:
            end = nl.seqs(1)
            errs = nl.batch(msgs, begin, end, g)
            st.bytes = sum(map(len, msgs))
            if errs:
                raise self._error(errs, begin, what, d)
        st.kernel_s = time.perf_counter() - t2
        tr.end(keep_all=not full)
        # the batch went through: the kernel holds what we know, at the next generation
        k.gen = _next_gen(g) if msgs else g
        k.chains = chains
        if full:
            k.content = {(t, c): v for t in TABLES for c, v in d.chains[t].items()}
            k.clean = True
        else:
            k.content.update(written)
            for key in deleted:
                k.content.pop(key, None)
            k.clean = clean
        return st

    def _jumps_msgs(
        self, nl: Netlink, d: Desired, chains: dict[str, dict[str, bool]], msgs: list, what: list
    ) -> int:
        """Insert the jump rules the built-in chains lack (creating table/base chain as needed)."""
        present: dict[tuple[str, str], set[tuple]] = {}
        inserted = 0
        for table, src, entry, dst in d.jumps:
            tc = chains.get(table)
            if tc is None:
                msgs.append(nc.new_table(nl.seqs(1), table))
                what.append(("table", table, "", -1))
                tc = chains[table] = {}
            have = present.get((table, src))
            if have is None:
                if src in tc:
                    have = {nc.canon(r.exprs) for r in nl.rules(table, src)}
                else:
                    msgs.append(nc.new_base_chain(nl.seqs(1), table, src))
                    what.append(("base chain", table, src, -1))
                    tc[src] = True
                    have = set()
                present[(table, src)] = have
            body = self.translator.body(entry, dst)
            key = nc.canon(nc.exprs_payload(body))
            if key in have:
                continue
            msgs.append(nc.new_rule(nl.seqs(1), nc.rule_prefix(table, src), body, append=False))
            what.append(("jump", table, src, -1, dst))
            have.add(key)
            inserted += 1
        return inserted

    def _error(
        self, errs: list[tuple[int, int]], begin: int, what: list[tuple], d: Desired
    ) -> NftError:
        if any(e == ERESTART for e, _ in errs):
            return GenerationMoved("the ruleset generation moved during the sync")
        lines = []
        for err, seq in errs[:5]:
            i = (seq - begin - 1) & 0xFFFFFFFF
            desc = what[i] if i < len(what) else ("batch", "", "", -1)
            kind, table, chain, idx = desc[:4]
            msg = f"{os.strerror(err)} (errno {err}) on {kind} {table}/{chain}".rstrip("/")
            if kind == "rule":
                msg += f" rule {idx + 1}: {_rule_text(d.text.get((table, chain), ''), chain, idx)}"
            elif kind == "jump":
                msg += f" -> {desc[4]}"
            lines.append(msg)
        more = f" (and {len(errs) - 5} more)" if len(errs) > 5 else ""
        return NftError(
            "nf_tables refused the batch: " + "; ".join(lines) + more
            + "; nothing was changed. Run with --iptables-backend nft-restore for iptables' own diagnosis"
        )  # fmt: skip


def _rule_text(text: str, chain: str, idx: int) -> str:
    head = f"-A {chain} "
    n = -1
    for ln in text.splitlines():
        if ln.startswith(head):
            n += 1
            if n == idx:
                return ln
    return "?"


def _spn_key(s) -> tuple[str, str, str, str]:
    return (s.namespace, s.name, s.port, s.protocol)


__all__ = ["Netlink", "NftError", "NftWriter", "GenerationMoved"]
