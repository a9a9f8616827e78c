"""Watch streams: one ``WatchStream`` per client, NDJSON over chunked HTTP.

The store calls ``offer(event)``; without selectors the event's pre-serialized line is
queued as is (one serialization shared by every watcher). With label/field selectors an
update that makes an object match becomes ADDED and one that makes it stop matching becomes
DELETED, as kube-apiserver's watch cache does. A watcher that falls too far behind is ended
(the client re-watches or relists), so a stuck client cannot grow memory without bound.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from aiohttp import web

from .resources import Resource
from .selectors import FieldSelector, LabelSelector
from .store import Entry, Event, Store

log = logging.getLogger("apiserver_stub")

DISCONNECT_CHECK = 2.0  # seconds between checks that an idle watcher is still connected

Render = Callable[[str, Entry], bytes]


class WatchStream:
    """A watcher's filter and queue."""

    def __init__(
        self,
        res: Resource,
        ns: str | None,
        labels: LabelSelector,
        fields: FieldSelector,
        render: Render | None,
        min_rv: int,
        max_queue: int = 200_000,
    ) -> None:
        self.res = res
        self.ns = ns
        self.labels = labels
        self.fields = fields
        self.render = render
        self.min_rv = min_rv
        self.max_queue = max_queue
        self.queue: deque[bytes] = deque()
        self.wake = asyncio.Event()
        self.overflow = False
        self.closed = False  # set on server shutdown
        self.last_rv = min_rv
        self._plain = labels.empty and fields.empty

    def close(self) -> None:
        self.closed = True
        self.wake.set()

    def matches(self, entry: Entry | None) -> bool:
        if entry is None:
            return False
        md = entry.obj["metadata"]
        return self.labels.matches(md.get("labels")) and self.fields.matches(entry.obj)

    def line(self, etype: str, entry: Entry) -> bytes:
        if self.render is not None:
            return self.render(etype, entry)
        return b'{"type":"' + etype.encode() + b'","object":' + entry.typed() + b"}\n"

    def offer(self, ev: Event) -> None:
        if ev.rv <= self.min_rv or self.overflow:
            return
        if self.ns is not None and ev.entry.namespace != self.ns:
            return
        self.last_rv = ev.rv
        if self._plain:
            data = ev.line() if self.render is None else self.render(ev.type, ev.entry)
        else:
            now = self.matches(ev.entry) if ev.type != "DELETED" else False
            before = self.matches(ev.prev)
            if ev.type == "DELETED":
                if not before:
                    return
                data = self.line("DELETED", ev.entry)
            elif now and before:
                data = self.line(ev.type, ev.entry)
            elif now:
                data = self.line("ADDED", ev.entry)
            elif before:
                data = self.line("DELETED", ev.entry)
            else:
                return
        self.queue.append(data)
        if len(self.queue) > self.max_queue:
            self.overflow = True
            self.queue.clear()
        self.wake.set()


def bookmark(res: Resource, rv: int, initial_end: bool = False) -> bytes:
    md: dict[str, Any] = {"resourceVersion": str(rv)}
    if initial_end:
        md["annotations"] = {"k8s.io/initial-events-end": "true"}
    return (
        json.dumps(
            {
                "type": "BOOKMARK",
                "object": {"kind": res.kind, "apiVersion": res.api_version, "metadata": md},
            },
            separators=(",", ":"),
        ).encode()
        + b"\n"
    )


def error_line(status: dict[str, Any]) -> bytes:
    return json.dumps({"type": "ERROR", "object": status}, separators=(",", ":")).encode() + b"\n"


async def serve(
    request: web.Request,
    store: Store,
    stream: WatchStream,
    initial: list[bytes],
    timeout: float,
    bookmarks: bool,
    bookmark_interval: float,
) -> web.StreamResponse:
    """Stream ``initial`` lines then live events until timeout or client disconnect."""
    resp = web.StreamResponse(status=200)
    resp.content_type = "application/json"
    resp.enable_chunked_encoding()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        await resp.prepare(request)
        if initial:
            for i in range(0, len(initial), 1000):
                await resp.write(b"".join(initial[i : i + 1000]))
        else:
            await resp.write(b"")
        next_bookmark = loop.time() + bookmark_interval
        while True:
            if stream.queue:
                data = b"".join(stream.queue)
                stream.queue.clear()
                await resp.write(data)
                continue
            if stream.overflow:
                log.warning("watch of %s fell too far behind; closing it", stream.res.plural)
                break
            now = loop.time()
            if now >= deadline or stream.closed:
                break
            transport = request.transport
            if transport is None or transport.is_closing():
                break  # the client went away
            if bookmarks and now >= next_bookmark:
                await resp.write(bookmark(stream.res, max(stream.last_rv, store.published_rv)))
                next_bookmark = now + bookmark_interval
                continue
            stream.wake.clear()
            wait = min(deadline - now, DISCONNECT_CHECK)
            if bookmarks:
                wait = min(wait, next_bookmark - now)
            try:
                await asyncio.wait_for(stream.wake.wait(), timeout=max(wait, 0.001))
            except TimeoutError:
                pass
        await resp.write_eof()
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        store.unsubscribe(stream.res, stream)
    return resp
