"""Object storage, the resourceVersion counter and the watch history (etcd's role).

Objects live in memory, indexed resource -> namespace -> name, each with its JSON bytes
serialized once (lists and watch events reuse them). Every write takes the next
resourceVersion, appends an ``Event`` to a per-resource history ring and, with a data
directory, is written to SQLite (WAL) by a group commit: all writes made during one event
loop turn share one transaction, and ``await store.sync()`` returns only after the
transaction holding them has committed. Watchers and controllers get events only after
commit, so nobody sees a write that could be lost.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from .resources import BY_KEY, Resource

log = logging.getLogger("apiserver_stub")

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def encode(obj: dict[str, Any]) -> bytes:
    """Compact JSON bytes of an object without kind/apiVersion (added back per request)."""
    return _dumps({k: v for k, v in obj.items() if k != "kind" and k != "apiVersion"}).encode()


class Entry:
    """One stored object version. ``obj`` must never be mutated; use ``copy()``."""

    __slots__ = ("res", "obj", "raw", "rv")

    def __init__(self, res: Resource, obj: dict[str, Any], rv: int, raw: bytes | None = None):
        self.res = res
        self.obj = obj
        self.rv = rv
        self.raw = raw if raw is not None else encode(obj)

    def typed(self) -> bytes:
        """JSON with kind/apiVersion, as GET and watch events return it."""
        return self.res.type_prefix() + self.raw[1:]

    def copy(self) -> dict[str, Any]:
        o = json.loads(self.raw)
        return {"kind": self.res.kind, "apiVersion": self.res.api_version, **o}

    @property
    def namespace(self) -> str:
        return self.obj["metadata"].get("namespace", "")

    @property
    def name(self) -> str:
        return self.obj["metadata"]["name"]


class Event:
    """A change: type ADDED/MODIFIED/DELETED, the new entry and the one it replaced."""

    __slots__ = ("rv", "type", "res", "entry", "prev", "_line")

    def __init__(self, rv: int, etype: str, res: Resource, entry: Entry, prev: Entry | None):
        self.rv = rv
        self.type = etype
        self.res = res
        self.entry = entry
        self.prev = prev
        self._line: bytes | None = None

    def line(self) -> bytes:
        """The NDJSON watch line, built once and shared by every watcher."""
        if self._line is None:
            self._line = (
                b'{"type":"' + self.type.encode() + b'","object":' + self.entry.typed() + b"}\n"
            )
        return self._line


class Watcher(Protocol):
    def offer(self, ev: Event) -> None: ...


class Store:
    """In-memory objects + optional SQLite durability + watch fan-out."""

    def __init__(self, data_dir: str | None = None, history: int = 20000, fsync: bool = False):
        self.rv = 0
        self.published_rv = 0
        self.history = history
        self._objs: dict[str, dict[str, dict[str, Entry]]] = {k: {} for k in BY_KEY}
        self._counts: dict[str, int] = {k: 0 for k in BY_KEY}
        self._sorted: dict[str, list[Entry] | None] = {k: None for k in BY_KEY}
        self._hist: dict[str, deque[Event]] = {k: deque() for k in BY_KEY}
        self._floor: dict[str, int] = {k: 0 for k in BY_KEY}
        self._watchers: dict[str, set[Watcher]] = {k: set() for k in BY_KEY}
        self._listeners: list[Callable[[Event], None]] = []
        self._db: sqlite3.Connection | None = None
        self._pending: list[Event] = []
        self._evicted: dict[str, int] = {}
        self._batch: asyncio.Future[None] | None = None
        if data_dir is not None:
            os.makedirs(data_dir, exist_ok=True)
            self._open(os.path.join(data_dir, "apiserver.sqlite3"), fsync)

    # ---- persistence -------------------------------------------------------------------

    def _open(self, path: str, fsync: bool) -> None:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
        db.executescript(
            """
            CREATE TABLE IF NOT EXISTS objects (
                res TEXT NOT NULL, ns TEXT NOT NULL, name TEXT NOT NULL,
                rv INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY (res, ns, name));
            CREATE TABLE IF NOT EXISTS events (
                rv INTEGER PRIMARY KEY, res TEXT NOT NULL, type TEXT NOT NULL,
                prev_rv INTEGER, data BLOB NOT NULL);
            CREATE INDEX IF NOT EXISTS events_res ON events (res, rv);
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            """
        )
        self._db = db
        for key, value in db.execute("SELECT key, value FROM meta"):
            if key == "rv":
                self.rv = int(value)
            elif key.startswith("floor:") and key[6:] in self._floor:
                self._floor[key[6:]] = int(value)
        n = 0
        for res_key, ns, name, rv, data in db.execute(
            "SELECT res, ns, name, rv, data FROM objects"
        ):
            res = BY_KEY.get(res_key)
            if res is None:
                continue
            obj = {"kind": res.kind, "apiVersion": res.api_version, **json.loads(data)}
            self._objs[res_key].setdefault(ns, {})[name] = Entry(res, obj, rv, bytes(data))
            self._counts[res_key] += 1
            self.rv = max(self.rv, rv)
            n += 1
        last: dict[tuple[str, str, str], Entry] = {}
        for rv, res_key, etype, _prev_rv, data in db.execute(
            "SELECT rv, res, type, prev_rv, data FROM events ORDER BY rv"
        ):
            res = BY_KEY.get(res_key)
            if res is None:
                continue
            obj = {"kind": res.kind, "apiVersion": res.api_version, **json.loads(data)}
            entry = Entry(res, obj, rv, bytes(data))
            k = (res_key, entry.namespace, entry.name)
            self._hist[res_key].append(Event(rv, etype, res, entry, last.get(k)))
            last[k] = entry
            self.rv = max(self.rv, rv)
        for res_key, hist in self._hist.items():
            while len(hist) > self.history:
                self._floor[res_key] = hist.popleft().rv
        self.published_rv = self.rv
        log.info("loaded %d objects from %s, resourceVersion %d", n, path, self.rv)

    def _schedule_commit(self) -> None:
        if self._batch is None:
            loop = asyncio.get_running_loop()
            self._batch = loop.create_future()
            loop.call_soon(self._commit)

    def _commit(self) -> None:
        """One SQLite transaction for every write made since the last commit."""
        batch, fut = self._pending, self._batch
        evicted = self._evicted
        self._pending, self._batch, self._evicted = [], None, {}
        assert self._db is not None
        db = self._db
        try:
            db.execute("BEGIN")
            upserts = []
            deletes = []
            events = []
            for ev in batch:
                e = ev.entry
                ns, name = e.namespace, e.name
                if ev.type == "DELETED":
                    deletes.append((ev.res.key, ns, name))
                else:
                    upserts.append((ev.res.key, ns, name, ev.rv, e.raw))
                events.append((ev.rv, ev.res.key, ev.type, ev.prev.rv if ev.prev else None, e.raw))
            if upserts:
                db.executemany("INSERT OR REPLACE INTO objects VALUES (?,?,?,?,?)", upserts)
            if deletes:
                db.executemany("DELETE FROM objects WHERE res=? AND ns=? AND name=?", deletes)
            db.executemany("INSERT OR REPLACE INTO events VALUES (?,?,?,?,?)", events)
            for res_key, floor in evicted.items():
                db.execute("DELETE FROM events WHERE res=? AND rv<=?", (res_key, floor))
                db.execute(
                    "INSERT OR REPLACE INTO meta VALUES (?,?)", (f"floor:{res_key}", str(floor))
                )
            db.execute("INSERT OR REPLACE INTO meta VALUES ('rv', ?)", (str(self.rv),))
            db.execute("COMMIT")
        except BaseException as exc:  # the process cannot continue with memory ahead of disk
            log.critical("SQLite commit failed: %s; exiting", exc)
            if fut is not None and not fut.done():
                fut.set_exception(exc)
            os._exit(70)
        for ev in batch:
            self._publish(ev)
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def sync(self) -> None:
        """Return once every write made so far is committed (no-op in memory mode)."""
        if self._batch is not None:
            await asyncio.shield(self._batch)

    def close(self) -> None:
        if self._db is not None:
            if self._pending:
                self._commit()
            self._db.close()
            self._db = None

    # ---- reads -------------------------------------------------------------------------

    def get(self, res: Resource, ns: str, name: str) -> Entry | None:
        by_ns = self._objs[res.key].get(ns)
        return by_ns.get(name) if by_ns else None

    def count(self, res: Resource) -> int:
        return self._counts[res.key]

    def list(self, res: Resource, ns: str | None = None) -> list[Entry]:
        """Entries sorted by (namespace, name); ``ns=None`` for all namespaces."""
        objs = self._objs[res.key]
        if ns is not None:
            by_ns = objs.get(ns)
            if not by_ns:
                return []
            if ns == "" or len(objs) == 1:
                return [by_ns[n] for n in sorted(by_ns)]
            cached = self._sorted[res.key]
            if cached is not None:
                return [e for e in cached if e.namespace == ns]
            return [by_ns[n] for n in sorted(by_ns)]
        cached = self._sorted[res.key]
        if cached is None:
            cached = [objs[n][m] for n in sorted(objs) for m in sorted(objs[n])]
            self._sorted[res.key] = cached
        return cached

    def namespaces_with(self, res: Resource) -> Iterator[str]:
        return iter([ns for ns, d in self._objs[res.key].items() if d])

    # ---- writes ------------------------------------------------------------------------

    def put(self, res: Resource, obj: dict[str, Any]) -> Entry:
        """Create or replace ``obj`` (metadata already filled in); stamps the next rv."""
        md = obj["metadata"]
        ns = md.get("namespace", "") if res.namespaced else ""
        name = md["name"]
        self.rv += 1
        rv = self.rv
        md["resourceVersion"] = str(rv)
        entry = Entry(res, obj, rv)
        by_ns = self._objs[res.key].setdefault(ns, {})
        prev = by_ns.get(name)
        by_ns[name] = entry
        if prev is None:
            self._counts[res.key] += 1
            self._sorted[res.key] = None
        else:
            cached = self._sorted[res.key]
            if cached is not None:
                self._sorted[res.key] = None
        self._record(Event(rv, "MODIFIED" if prev else "ADDED", res, entry, prev))
        return entry

    def remove(self, res: Resource, ns: str, name: str) -> Entry | None:
        """Delete; the DELETED event carries the object stamped with the deletion rv."""
        ns = ns if res.namespaced else ""
        by_ns = self._objs[res.key].get(ns)
        prev = by_ns.pop(name, None) if by_ns else None
        if prev is None:
            return None
        if not by_ns:
            del self._objs[res.key][ns]
        self._counts[res.key] -= 1
        self._sorted[res.key] = None
        self.rv += 1
        obj = dict(prev.obj)
        obj["metadata"] = {**prev.obj["metadata"], "resourceVersion": str(self.rv)}
        entry = Entry(res, obj, self.rv)
        self._record(Event(self.rv, "DELETED", res, entry, prev))
        return entry

    def _record(self, ev: Event) -> None:
        hist = self._hist[ev.res.key]
        if len(hist) >= self.history:
            old = hist.popleft()
            self._floor[ev.res.key] = old.rv
            self._evicted[ev.res.key] = old.rv
        hist.append(ev)
        if self._db is not None:
            self._pending.append(ev)
            self._schedule_commit()
        else:
            self._publish(ev)

    def _publish(self, ev: Event) -> None:
        self.published_rv = ev.rv
        for listener in self._listeners:
            try:
                listener(ev)
            except Exception:
                log.exception("listener failed on %s %s", ev.type, ev.res.kind)
        for w in tuple(self._watchers[ev.res.key]):
            w.offer(ev)

    # ---- watch -------------------------------------------------------------------------

    def add_listener(self, fn: Callable[[Event], None]) -> None:
        """In-process subscribers (controllers); called for every committed event."""
        self._listeners.append(fn)

    def subscribe(self, res: Resource, w: Watcher) -> None:
        self._watchers[res.key].add(w)

    def unsubscribe(self, res: Resource, w: Watcher) -> None:
        self._watchers[res.key].discard(w)

    def oldest(self, res: Resource) -> int:
        """Smallest resourceVersion a watch of ``res`` can start from."""
        return self._floor[res.key]

    def since(self, res: Resource, rv: int) -> list[Event] | None:
        """Committed events of ``res`` after ``rv``; None when history no longer has them."""
        if rv < self._floor[res.key]:
            return None
        hist = self._hist[res.key]
        out: list[Event] = []
        pending = {id(e) for e in self._pending} if self._pending else ()
        for ev in reversed(hist):
            if ev.rv <= rv:
                break
            if id(ev) not in pending:
                out.append(ev)
        out.reverse()
        return out
