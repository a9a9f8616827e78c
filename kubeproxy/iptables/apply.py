"""The only place kube-proxy's iptables mode touches the kernel's tables.

One ``iptables-restore --noflush`` per sync writes both tables (filter, then nat), each
table an atomic commit: our chains are declared (which flushes them), rewritten, and our
stale chains deleted; chains and rules of anybody else are never named, so they survive.
The jump rules from the built-in chains (PREROUTING, OUTPUT, POSTROUTING, INPUT, FORWARD)
are ensured like kube-proxy's EnsureRule: looked up in the saved table, ``-C`` checked,
``-I`` inserted at the top when missing.

Backends: ``legacy`` (the kernel's x_tables written directly by ``xtables.XtablesWriter``,
which falls back to this module's restore for a sync it cannot encode), ``legacy-restore``
(iptables-legacy-*, x_tables via libiptc), ``nft`` (nf_tables written directly by
``nft_writer.NftWriter`` in iptables-nft's encoding, falling back to iptables-nft-restore
the same way) and ``nft-restore`` (iptables-nft-*, the same rules translated to nf_tables
by iptables itself). ``RestoreWriter`` is the writer of ``legacy-restore`` and
``nft-restore`` (and the fallback of the direct writers): one restore per sync as
described above. ``DirectWriter`` is what the two direct writers share.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Collection
from dataclasses import dataclass, field

from kubecommon.model import ServicePortName

from ..tools import run
from .render import JUMP_RULES, JumpRule, Ruleset, is_service_chain
from .xtables_codec import EncodeError, Encoder, gc_paused

log = logging.getLogger("kubeproxy")

BACKENDS = ("legacy", "legacy-restore", "nft", "nft-restore")
# backend -> iptables-<x>-* (the direct writers' fallback, save and -C/-I tools)
_TOOLS = {"legacy": "legacy", "legacy-restore": "legacy", "nft": "nft", "nft-restore": "nft"}
_CHAIN_LINE = re.compile(r"^:(\S+) ")
_LINE_ERR = re.compile(r"line:? (\d+)", re.I)


class IptablesError(RuntimeError):
    pass


def binaries(backend: str) -> tuple[str, str, str]:
    if backend not in BACKENDS:
        raise ValueError(f"unknown iptables backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    t = _TOOLS[backend]
    return f"iptables-{t}", f"iptables-{t}-save", f"iptables-{t}-restore"




def chains_in(saved: str, table: str) -> set[str]:
    """Chain names of one table in iptables-save output."""
    out: set[str] = set()
    current = None
    for line in saved.splitlines():
        if line.startswith("*"):
            current = line[1:].strip()
        elif current == table and line.startswith(":"):
            m = _CHAIN_LINE.match(line)
            if m:
                out.add(m.group(1))
    return out


def table_text(saved: str, table: str) -> str:
    """The lines of one table in iptables-save output."""
    out, current = [], None
    for line in saved.splitlines():
        if line.startswith("*"):
            current = line[1:].strip()
        elif current == table:
            out.append(line)
    return "\n".join(out)


class Applier:
    """Runs iptables-save / iptables-restore / iptables for one backend."""

    def __init__(self, backend: str = "legacy"):
        self.backend = backend
        self.iptables, self.save_cmd, self.restore_cmd = binaries(backend)

    async def save(self, table: str | None = None) -> str:
        argv = [self.save_cmd] + (["-t", table] if table else [])
        rc, out, err = await run(argv)
        if rc != 0:
            raise IptablesError(f"{' '.join(argv)} failed ({rc}): {err.strip()}")
        return out

    async def restore(self, text: str) -> None:
        """Apply restore input with --noflush (only the chains it names change)."""
        argv = [self.restore_cmd, "-w", "5", "--noflush"]
        rc, _, err = await run(argv, text)
        if rc != 0:
            msg = err.strip()
            m = _LINE_ERR.search(msg)
            if m:  # show the offending line and its neighbours, as kube-proxy does
                n = int(m.group(1))
                lines = text.splitlines()
                ctx = "\n".join(f"{i + 1}: {lines[i]}" for i in range(max(0, n - 3), min(len(lines), n + 2)))
                msg = f"{msg}\n{ctx}"
            raise IptablesError(f"{self.restore_cmd} failed ({rc}): {msg}")

    async def iptables_cmd(self, *args: str) -> tuple[int, str]:
        rc, out, err = await run([self.iptables, "-w", "5", *args])
        return rc, (err or out).strip()

    async def ensure_jumps(self, saved: str, jumps: tuple[JumpRule, ...] = JUMP_RULES) -> int:
        """Make sure every jump rule exists (insert at position 1 when missing)."""
        inserted = 0
        by_table = {t: set(table_text(saved, t).splitlines()) for t in {j.table for j in jumps}}
        for j in jumps:
            if j.save_line() in by_table[j.table]:
                continue
            rc, _ = await self.iptables_cmd("-t", j.table, "-C", j.src, *j.args())
            if rc == 0:
                continue
            rc, msg = await self.iptables_cmd("-t", j.table, "-I", j.src, "1", *j.args())
            if rc != 0:
                raise IptablesError(f"cannot add jump {j.table}/{j.src} -> {j.dst}: {msg}")
            inserted += 1
        if inserted:
            log.info("inserted %d jump rule(s) into built-in chains (%s)", inserted, self.backend)
        return inserted


# -- one sync's write -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SyncPlan:
    """What the proxier decided to write (see proxier.py): a full or a partial sync."""

    full: bool
    wanted: set[str]  # every nat service chain the ruleset has
    only: Collection[ServicePortName] | None = None  # partial: service ports to write
    stale: set[str] = field(default_factory=set)  # partial: our chains to delete
    skip_top: Collection[tuple[str, str]] = ()  # partial: (table, chain) known unchanged


@dataclass
class WriteResult:
    via: str  # "restore", "xtables" or "nft"
    stale: int = 0
    bytes: int = 0  # restore input, or x_tables blob bytes written
    encode_s: float = 0.0  # x_tables: rule text -> entries
    read_s: float = 0.0  # iptables-save, or GET_INFO/GET_ENTRIES + split
    kernel_s: float = 0.0  # restore process, or compile + SET_REPLACE + ADD_COUNTERS
    fallback: str = ""  # why the direct writer handed this sync to iptables-restore
    tables_read: dict[str, bool] = field(default_factory=dict)  # x_tables: table -> read from the kernel
    tables_written: dict[str, bool] = field(default_factory=dict)  # x_tables: table -> replaced


class RestoreWriter:
    """Writes a sync with one ``iptables-restore --noflush`` (legacy-restore and nft-restore)."""

    def __init__(self, applier: Applier):
        self.applier = applier

    async def write(self, ruleset: Ruleset, plan: SyncPlan) -> WriteResult:
        t0 = time.perf_counter()
        saved = ""
        if plan.full:
            saved = await self.applier.save()
            stale = {c for c in chains_in(saved, "nat") if is_service_chain(c)} - plan.wanted
            text = ruleset.restore_input(stale_chains=stale)
        else:
            stale = plan.stale
            text = ruleset.restore_input(only=plan.only, stale_chains=stale, skip_top=plan.skip_top)
        t1 = time.perf_counter()
        await self.applier.restore(text)
        if plan.full:
            await self.applier.ensure_jumps(saved)
        return WriteResult("restore", len(stale), len(text), read_s=t1 - t0, kernel_s=time.perf_counter() - t1)


class DirectWriter:
    """What the two direct writers (``xtables.XtablesWriter``, ``nft_writer.NftWriter``)
    share: one write at a time, the encode step with the encoder's per-fragment memo (a
    full sync keeps only what it used, a partial sync keeps the rest too), and a sync the
    encoder refuses handed to iptables-*-restore. A subclass gives ``build`` (the ruleset
    -> what it writes, encoded; may raise EncodeError), ``write_built`` (the kernel side)
    and ``forget`` (drop what it knows of the kernel)."""

    kind = ""  # "x_tables" or "nf_tables", for the log

    def __init__(self, fallback: RestoreWriter):
        self.encoder = Encoder()
        self.fallback = fallback
        self._busy = asyncio.Lock()  # one write at a time, even if a caller overlaps syncs

    def build(self, rs: Ruleset, plan: SyncPlan):
        raise NotImplementedError

    async def write_built(
        self, rs: Ruleset, plan: SyncPlan, built, encode_s: float
    ) -> WriteResult:
        raise NotImplementedError

    def forget(self) -> None:
        raise NotImplementedError

    async def write(self, rs: Ruleset, plan: SyncPlan) -> WriteResult:
        async with self._busy:
            t0 = time.perf_counter()
            self.encoder.begin()
            try:
                with gc_paused():
                    built = self.build(rs, plan)
            except EncodeError as e:
                self.encoder.begin()  # keep the previous memo intact
                return await self.fall_back(rs, plan, e)
            if plan.full:
                self.encoder.end()
            else:  # a partial sync touches few fragments: keep the rest of the memo
                self.encoder.merge()
            return await self.write_built(rs, plan, built, time.perf_counter() - t0)

    async def fall_back(self, rs: Ruleset, plan: SyncPlan, e: Exception) -> WriteResult:
        self.forget()
        log.warning(
            "direct %s writer cannot encode this sync (%s); using %s for it",
            self.kind, e, self.fallback.applier.restore_cmd,
        )  # fmt: skip
        res = await self.fallback.write(rs, plan)
        res.fallback = str(e)
        return res
