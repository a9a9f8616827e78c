"""Talking to the kernel's x_tables directly: the legacy backend without libiptc.

``iptables-legacy-restore`` spends most of a sync in userspace (parsing 100,000 lines,
libiptc's per-rule bookkeeping); the kernel part is reading the table
(IPT_SO_GET_ENTRIES), replacing it whole (IPT_SO_SET_REPLACE) and putting the counters
back (IPT_SO_SET_ADD_COUNTERS). This module does exactly those three sockopts on a raw
socket (through libc, since Python's getsockopt cannot pass the table name in), under the
xtables lock (/run/xtables.lock, as every iptables command), and leaves the rest to the
pure codec (``xtables_codec.py``).

``XtablesWriter`` is the legacy backend's writer: it reads a table, replaces our chains
(foreign chains and rules keep their bytes and counters), deletes our stale chains,
ensures the jump rules in the built-in chains (present: untouched, missing: inserted as
rule 1, like ``Applier.ensure_jumps``), and writes the table back in one replace. A
partial sync skips the read when IPT_SO_GET_INFO shows the table we wrote last. Rule
text the encoder does not know makes that sync go through iptables-legacy-restore.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import fcntl
import logging
import os
import socket
import struct
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from .apply import DirectWriter, RestoreWriter, SyncPlan, WriteResult
from .render import (
    FILTER_CHAINS,
    JUMP_RULES,
    NAT_CHAINS,
    Ruleset,
    is_service_chain,
)
from .xtables_codec import (
    HEADROOM,
    HOOKS,
    BlobError,
    Chain,
    Compiled,
    Encoder,
    Table,
    compile_table,
    gc_paused,
    mask_words,
    masked,
    parse_table,
    reindex,
    same_rule,
)

log = logging.getLogger("kubeproxy")

SOL_IP = 0
IPT_SO_SET_REPLACE = 64
IPT_SO_SET_ADD_COUNTERS = 65
IPT_SO_GET_INFO = 64
IPT_SO_GET_ENTRIES = 65
IPT_SO_GET_REVISION_MATCH = 66
IPT_SO_GET_REVISION_TARGET = 67

_GETINFO = struct.Struct("<32sI5I5III")  # struct ipt_getinfo
_GET_ENTRIES_HDR = 40  # struct ipt_get_entries: name[32], size, (pad to 8)
_REPLACE = struct.Struct(
    "<32sIII5I5IIQ"
)  # struct ipt_replace: name, valid_hooks, num_entries, size, hooks, underflows, num_counters, counters
_COUNTERS_HDR = 40  # struct xt_counters_info: name[32], num_counters, (pad to 8)
XT_LOCK = "/run/xtables.lock"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.getsockopt.argtypes = [
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_uint),
]
_libc.setsockopt.argtypes = [
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.c_uint,
]


class XtablesError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class Info:
    """IPT_SO_GET_INFO: enough to tell whether the table is still the one we wrote."""

    valid_hooks: int
    hook_entry: tuple[int, ...]
    underflow: tuple[int, ...]
    num_entries: int
    size: int


def _getsockopt(fd: int, opt: int, buf: ctypes.Array) -> int:
    n = ctypes.c_uint(len(buf))
    if _libc.getsockopt(fd, SOL_IP, opt, buf, ctypes.byref(n)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return n.value


def _setsockopt(fd: int, opt: int, buf: ctypes.Array) -> None:
    if _libc.setsockopt(fd, SOL_IP, opt, buf, len(buf)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def _table_name(table: str) -> bytes:
    return table.encode().ljust(32, b"\0")


def open_socket() -> socket.socket:
    """The raw socket the sockopts go through (needs CAP_NET_RAW; in this thread's netns)."""
    return socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)


def get_info(sock: socket.socket, table: str) -> Info:
    buf = ctypes.create_string_buffer(_table_name(table), _GETINFO.size)
    try:
        _getsockopt(sock.fileno(), IPT_SO_GET_INFO, buf)
    except OSError as e:
        raise XtablesError(
            f"cannot read table {table!r} (IPT_SO_GET_INFO: {e.strerror}); is ip_tables loaded?"
        ) from e
    v = _GETINFO.unpack(buf.raw)
    return Info(v[1], tuple(v[2:7]), tuple(v[7:12]), v[12], v[13])


def get_entries(sock: socket.socket, table: str, size: int) -> bytes:
    buf = _get_entries_buf(sock, table, size)
    return ctypes.string_at(ctypes.addressof(buf) + _GET_ENTRIES_HDR, size)


def get_entry_words(sock: socket.socket, table: str, size: int) -> np.ndarray:
    """``get_entries`` as a writable u32 array over the sockopt's own buffer (no copy)."""
    buf = _get_entries_buf(sock, table, size)
    return np.frombuffer(buf, dtype="<u4", count=size // 4, offset=_GET_ENTRIES_HDR)


def _get_entries_buf(sock: socket.socket, table: str, size: int) -> ctypes.Array:
    buf = ctypes.create_string_buffer(_GET_ENTRIES_HDR + size)
    struct.pack_into("<32sI", buf, 0, _table_name(table), size)
    _getsockopt(sock.fileno(), IPT_SO_GET_ENTRIES, buf)
    return buf


def read_table(sock: socket.socket, table: str) -> tuple[Info, Table]:
    """Read and split one table (retrying if it changes between GET_INFO and GET_ENTRIES)."""
    for _ in range(5):
        info = get_info(sock, table)
        try:
            blob = get_entries(sock, table, info.size)
        except OSError as e:
            if e.errno == errno.EAGAIN:  # somebody replaced it in between
                continue
            raise XtablesError(
                f"cannot read table {table!r} (IPT_SO_GET_ENTRIES: {e.strerror})"
            ) from e
        return info, parse_table(table, info.valid_hooks, info.hook_entry, info.underflow, blob)
    raise XtablesError(f"table {table!r} keeps changing while being read")


def replace(
    sock: socket.socket, table: str, valid_hooks: int, c: Compiled, num_counters: int
) -> np.ndarray:
    """IPT_SO_SET_REPLACE; returns the old table's counters (num_counters x (packets, bytes))."""
    old = np.zeros((max(num_counters, 1), 2), dtype=np.uint64)
    _REPLACE.pack_into(
        c.buf, 0, _table_name(table), valid_hooks, c.num_entries, len(c.buf) - HEADROOM,
        *c.hook_entry, *c.underflow, num_counters, old.ctypes.data,
    )  # fmt: skip
    buf = (ctypes.c_char * len(c.buf)).from_buffer(c.buf)  # the blob sits right behind the header
    _setsockopt(sock.fileno(), IPT_SO_SET_REPLACE, buf)
    return old[:num_counters]


def add_counters(sock: socket.socket, table: str, counters: np.ndarray) -> None:
    data = np.ascontiguousarray(counters, dtype=np.uint64).tobytes()
    head = struct.pack("<32sI4x", _table_name(table), len(counters))
    buf = ctypes.create_string_buffer(head + data, len(head) + len(data))
    _setsockopt(sock.fileno(), IPT_SO_SET_ADD_COUNTERS, buf)


def kernel_revision(sock: socket.socket, name: str, revision: int, target: bool = False) -> bool:
    """Whether the kernel has this match/target revision (IPT_SO_GET_REVISION_*)."""
    buf = ctypes.create_string_buffer(struct.pack("<29sB", name.encode(), revision), 30)
    try:
        _getsockopt(
            sock.fileno(), IPT_SO_GET_REVISION_TARGET if target else IPT_SO_GET_REVISION_MATCH, buf
        )
    except OSError:
        return False
    return True


@contextmanager
def xtables_lock(wait: float = 5.0):
    """The lock every iptables command takes (``-w``): flock on /run/xtables.lock."""
    fd = os.open(XT_LOCK, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise XtablesError(
                        f"another app holds the xtables lock ({XT_LOCK}) for more than {wait:g}s"
                    ) from None
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)  # releases the lock


# -- writing tables ------------------------------------------------------------------------


@dataclass
class TableEdit:
    """What one sync does to one table (the same semantics as our restore input)."""

    chains: dict[str, tuple[list[bytes], list[str | None]]] = field(
        default_factory=dict
    )  # flushed + refilled
    delete: set[str] = field(default_factory=set)
    stale: Callable[[Iterable[str]], set[str]] | None = (
        None  # full sync: existing chains -> ours to delete
    )
    jumps: list[tuple[str, bytes, str]] = field(
        default_factory=list
    )  # (built-in chain, entry, target)


@dataclass
class WriteStats:
    read: bool = False  # the table was fetched with GET_ENTRIES (not trusted from GET_INFO)
    parsed: bool = False  # ... and split into chains (it was not the table we wrote last)
    replaced: bool = False  # SET_REPLACE done (False: the table already was as wanted)
    read_s: float = 0.0
    compile_s: float = 0.0
    kernel_s: float = 0.0  # SET_REPLACE + ADD_COUNTERS
    entries: int = 0
    bytes: int = 0
    stale: int = 0
    jumps_inserted: int = 0


def apply_edit(t: Table, edit: TableEdit) -> tuple[int, int, bool]:
    """Change the table model as the restore input would.

    Returns (stale chains deleted, jumps inserted, whether anything changed). A chain whose
    new rules equal its current ones keeps its entries (and so its counters).
    """
    delete = set(edit.delete)
    if edit.stale is not None:
        delete |= edit.stale(t.chains)
    delete.difference_update(edit.chains)  # (no set of 30,000 names built for this)
    deleted = 0
    for name in delete:
        c = t.chains.get(name)
        if c is not None and c.hook is None:
            t.drop(name)
            deleted += 1
    changed = bool(deleted)
    new: list[Chain] = []  # 30,000 of them in a cold sync at 10,000 services: added at once
    get = t.chains.get
    for name, (entries, labels) in edit.chains.items():
        c = get(name)
        if c is None:
            new.append(Chain(name, None, entries, labels))  # (name, hook, entries, labels)
            continue
        if c.hook is not None:
            raise XtablesError(f"table {t.name}: {name} is a built-in chain")
        elif c.entries == entries and c.labels == labels:
            continue
        c.set_rules(entries, labels)
        t.touch(name)
        changed = True
    if new:
        t.add_user_chains(new)
        changed = True
    inserted = 0
    for src, entry, dst in edit.jumps:
        c = t.chains.get(src)
        if c is None or c.hook is None:
            raise XtablesError(f"table {t.name} has no built-in chain {src}")
        if any(same_rule(e, lab, entry, dst) for e, lab in zip(c.entries, c.labels, strict=True)):
            continue
        c.entries.insert(0, entry)
        c.labels.insert(0, dst)
        c.kidx.insert(0, -1)
        t.touch(None)
        inserted += 1
    return deleted, inserted, changed or inserted > 0


@dataclass
class _Written:
    """What we know about a table we wrote: enough to recognise it and to reuse our model."""

    info: Info
    table: Table
    offsets: np.ndarray
    blob: bytes | bytearray | memoryview  # as we wrote or read it (masked only when compared)
    clean: bool = False  # blob's counters and comefrom are zero (as compiled): no mask needed
    _words: np.ndarray | None = None

    def words(self) -> np.ndarray:
        if self._words is None:
            if self.clean:  # a view of the blob we wrote (kept unchanged: the next patch reads it)
                self._words = np.frombuffer(self.blob, dtype="<u4")
            else:
                self._words = masked(self.blob, self.offsets)
                self.blob = b""
        return self._words


class TableWriter:
    """Read-modify-write of x_tables tables, remembering what it wrote last."""

    def __init__(self) -> None:
        self._last: dict[str, _Written] = {}

    def forget(self) -> None:
        self._last.clear()

    def write(
        self, edits: dict[str, TableEdit], reread: bool, sock: socket.socket | None = None
    ) -> dict[str, WriteStats]:
        """Apply the edits, one replace per table (none for a table already as wanted).

        ``reread`` (full syncs): fetch the table even when GET_INFO looks like ours; if its
        bytes are what we wrote (counters aside) our model is reused, else it is parsed,
        so rules someone changed by hand are seen and repaired. ``sock``: the raw socket
        to use (it decides the network namespace; default: one opened in this thread's).
        Blocking: the async caller runs it in a worker thread.
        """
        out: dict[str, WriteStats] = {}
        with xtables_lock(), sock if sock is not None else open_socket() as s:
            for table, edit in edits.items():
                out[table] = self._write_one(s, table, edit, reread)
        return out

    def _load(
        self, sock: socket.socket, table: str, reread: bool, st: WriteStats
    ) -> tuple[Info, Table, _Written | None]:
        """The table (ours from last time if the kernel still holds it) and how to recognise it."""
        info = get_info(sock, table)
        last = self._last.pop(table, None)  # whatever happens next, the cache is spent
        if last is not None and last.info == info:
            if not reread:
                return info, last.table, last
            # Compared in the sockopt's buffer, masked in place (no copies of the blob);
            # if it differs the table is read again below, as bytes, to be parsed.
            words = get_entry_words(sock, table, info.size)
            st.read = True
            if np.array_equal(mask_words(words, last.offsets), last.words()):
                return info, last.table, last
            del words
            blob = get_entries(sock, table, info.size)  # still under the lock: the same table
        else:
            st.read = True
            try:
                blob = get_entries(sock, table, info.size)
            except OSError as e:
                if e.errno != errno.EAGAIN:
                    raise XtablesError(
                        f"cannot read table {table!r} (IPT_SO_GET_ENTRIES: {e.strerror})"
                    ) from e
                info, t = read_table(sock, table)  # replaced in between: start over
                st.parsed = True
                return info, t, None
        st.parsed = True
        t = parse_table(table, info.valid_hooks, info.hook_entry, info.underflow, blob)
        return info, t, _Written(info, t, t.offsets, blob)

    def _write_one(
        self, sock: socket.socket, table: str, edit: TableEdit, reread: bool
    ) -> WriteStats:
        st = WriteStats()
        t0 = time.perf_counter()
        info, t, known = self._load(sock, table, reread, st)
        t1 = time.perf_counter()
        st.stale, st.jumps_inserted, changed = apply_edit(t, edit)
        if not changed:  # the kernel already holds exactly this table
            if known is not None:
                self._last[table] = known
            st.read_s = t1 - t0
            st.compile_s = time.perf_counter() - t1
            st.entries, st.bytes = info.num_entries, info.size
            return st
        c = compile_table(t)
        t2 = time.perf_counter()
        try:
            old = replace(sock, table, info.valid_hooks, c, info.num_entries)
        except OSError as e:
            if e.errno == errno.EAGAIN:  # changed since we read it (a writer not taking the lock)
                raise XtablesError(
                    f"table {table} changed while we wrote it; the next sync re-reads it"
                ) from e
            raise XtablesError(
                f"cannot replace table {table} (IPT_SO_SET_REPLACE: {e.strerror}); the kernel refused"
                f" the table we built: run with --iptables-backend legacy-restore for iptables' diagnosis"
            ) from e
        st.replaced = True
        keep = c.old_index >= 0
        counters = np.zeros((c.num_entries, 2), dtype=np.uint64)
        if len(old):
            counters[keep] = old[c.old_index[keep]]
        if counters.any():  # adding zeros changes nothing (a cold sync on an empty node)
            add_counters(sock, table, counters)
        t3 = time.perf_counter()
        reindex(t)
        after = get_info(sock, table)  # still under the lock: this is the table we wrote
        if after.num_entries == c.num_entries and after.size == len(c.blob):
            self._last[table] = _Written(after, t, c.offsets, c.blob, clean=True)
        st.read_s, st.compile_s, st.kernel_s = t1 - t0, t2 - t1, t3 - t2
        st.entries, st.bytes = c.num_entries, len(c.blob)
        return st


# -- the legacy backend's writer ------------------------------------------------------------


class XtablesWriter(DirectWriter):
    """Ruleset -> per-table edits (encoded, memoised per fragment) -> one replace per table."""

    kind = "x_tables"

    def __init__(self, fallback: RestoreWriter):
        super().__init__(fallback)
        self.tables = TableWriter()
        self._jumps: dict[str, list[tuple[str, bytes, str]]] | None = None

    def forget(self) -> None:
        self.tables.forget()

    def jumps(self) -> dict[str, list[tuple[str, bytes, str]]]:
        if self._jumps is None:
            out: dict[str, list[tuple[str, bytes, str]]] = {"filter": [], "nat": []}
            for j in JUMP_RULES:
                e = self.encoder.parse_line(j.save_line())
                out[j.table].append((j.src, e.entry, j.dst))
            self._jumps = out
        return self._jumps

    def _top_chain(
        self, rs: Ruleset, table: str, chain: str
    ) -> tuple[list[bytes], list[str | None]]:
        return self.encoder.top_chain(table, chain, rs.top_pieces(table, chain))

    def build(self, rs: Ruleset, plan: SyncPlan) -> dict[str, TableEdit]:
        """Encode what this sync writes (raises EncodeError for text we cannot encode)."""
        skip = set(plan.skip_top) if not plan.full else set()
        jumps = self.jumps()
        out: dict[str, TableEdit] = {}
        fchains = [c for c in FILTER_CHAINS if ("filter", c) not in skip]
        if fchains:  # like the restore input: an unchanged filter table is not written at all
            out["filter"] = TableEdit(
                {c: self._top_chain(rs, "filter", c) for c in fchains}, jumps=jumps["filter"]
            )
        nat = TableEdit(jumps=jumps["nat"])
        for c in NAT_CHAINS:
            if ("nat", c) not in skip:
                nat.chains[c] = self._top_chain(rs, "nat", c)
        if plan.full:
            picked = rs.services.values()
            wanted = plan.wanted
            nat.stale = lambda existing: {c for c in existing if is_service_chain(c)} - wanted
        else:
            picked = [rs.services[s] for s in plan.only or () if s in rs.services]
            nat.delete = set(plan.stale)
        chains, enc = nat.chains, self.encoder.port_chains
        for r in picked:
            chains.update(enc(r.chains, r.chain_rules, r.chain_rules_shape))
        out["nat"] = nat
        return out

    async def write_built(
        self, rs: Ruleset, plan: SyncPlan, edits: dict[str, TableEdit], encode_s: float
    ) -> WriteResult:
        try:
            # The kernel calls (and building the 31 MB blob) block for 0.2-0.5 s at 10,000
            # services: a worker thread does them, the event loop keeps serving /healthz
            # and watches. The socket is opened here: its network namespace is this
            # thread's (setns is per thread), whichever thread then uses it.
            sock = open_socket()
            stats = await asyncio.to_thread(_write_tables, self.tables, edits, plan.full, sock)
        except (XtablesError, BlobError, OSError):
            self.tables.forget()
            raise
        res = WriteResult("xtables", encode_s=encode_s)
        for table, st in stats.items():
            res.tables_read[table] = st.read
            res.tables_written[table] = st.replaced
            res.stale += st.stale
            res.bytes += st.bytes
            res.read_s += st.read_s
            res.kernel_s += st.compile_s + st.kernel_s
        inserted = sum(st.jumps_inserted for st in stats.values())
        if inserted:
            log.info("inserted %d jump rule(s) into built-in chains (legacy, direct)", inserted)
        return res


def _write_tables(
    tables: TableWriter, edits: dict[str, TableEdit], reread: bool, sock: socket.socket
) -> dict[str, WriteStats]:
    with gc_paused():
        return tables.write(edits, reread=reread, sock=sock)


__all__ = [
    "HOOKS",
    "BlobError",
    "Encoder",
    "Info",
    "TableEdit",
    "TableWriter",
    "XtablesWriter",
    "WriteStats",
    "XtablesError",
    "add_counters",
    "get_info",
    "kernel_revision",
    "open_socket",
    "read_table",
    "replace",
    "xtables_lock",
]
