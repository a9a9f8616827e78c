"""List + watch -> a local cache, the way client-go's reflector does it.

An ``Informer`` lists a resource, then watches from the list's resourceVersion; on
``410 Gone`` it relists (and reports the difference as events, so handlers never miss a
delete), on a dropped connection it reconnects with exponential backoff and resumes from
the last resourceVersion it saw (bookmarks included). Handlers are plain callables run on
the event loop: ``handler(event_type, new_obj, old_obj)`` with event_type ADDED / MODIFIED /
DELETED. ``synced`` is set after the first complete list.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from .client import ApiClient, ApiError

Handler = Callable[[str, dict | None, dict | None], None]
log = logging.getLogger("informer")


def object_key(obj: dict) -> str:
    md = obj.get("metadata", {})
    ns = md.get("namespace")
    return f"{ns}/{md['name']}" if ns else md["name"]


class Informer:
    def __init__(
        self,
        client: ApiClient,
        plural: str,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        watch_timeout: int = 300,
        max_backoff: float = 5.0,
    ):
        self.client = client
        self.plural = plural
        self.namespace = namespace
        self.params: dict[str, Any] = {
            "labelSelector": label_selector,
            "fieldSelector": field_selector,
        }
        self.watch_timeout = watch_timeout
        self.max_backoff = max_backoff
        self.store: dict[str, dict] = {}
        self.synced = asyncio.Event()
        self.resource_version: str | None = None
        self._handlers: list[Handler] = []
        self._synced_handlers: list[Callable[[], None]] = []

    def add_handler(self, handler: Handler) -> None:
        self._handlers.append(handler)

    def on_synced(self, fn: Callable[[], None]) -> None:
        self._synced_handlers.append(fn)

    def _emit(self, etype: str, new: dict | None, old: dict | None) -> None:
        for h in self._handlers:
            try:
                h(etype, new, old)
            except Exception:  # a broken handler must not kill the watch
                log.exception("%s handler failed on %s", self.plural, etype)

    async def _list(self) -> None:
        items: list[dict] = []
        cont: str | None = None
        while True:
            resp = await self.client.list(
                self.plural, self.namespace, limit=5000, **{"continue": cont}, **self.params
            )
            items.extend(resp.get("items") or [])
            cont = (resp.get("metadata") or {}).get("continue")
            if not cont:
                break
        rv = (resp.get("metadata") or {}).get("resourceVersion")
        fresh = {object_key(o): o for o in items}
        old_store, self.store = self.store, fresh
        for k, o in old_store.items():
            if k not in fresh:
                self._emit("DELETED", None, o)
        for k, o in fresh.items():
            prev = old_store.get(k)
            if prev is None:
                self._emit("ADDED", o, None)
            elif prev.get("metadata", {}).get("resourceVersion") != o.get("metadata", {}).get(
                "resourceVersion"
            ):
                self._emit("MODIFIED", o, prev)
        self.resource_version = rv
        if not self.synced.is_set():
            self.synced.set()
            for fn in self._synced_handlers:
                fn()
        log.debug("listed %d %s at rv %s", len(fresh), self.plural, rv)

    def _apply(self, etype: str, obj: dict) -> None:
        md = obj.get("metadata", {})
        if md.get("resourceVersion"):
            self.resource_version = md["resourceVersion"]
        if etype == "BOOKMARK":
            return
        key = object_key(obj)
        old = self.store.get(key)
        if etype == "DELETED":
            self.store.pop(key, None)
            self._emit("DELETED", None, old or obj)
        else:
            self.store[key] = obj
            self._emit("ADDED" if old is None else "MODIFIED", obj, old)

    async def run(self) -> None:
        """Run forever (cancel the task to stop)."""
        backoff = 0.1
        need_list = True
        while True:
            try:
                if need_list:
                    await self._list()
                    need_list = False
                async for etype, obj in self.client.watch(
                    self.plural,
                    self.namespace,
                    self.resource_version,
                    timeout_seconds=self.watch_timeout,
                    **self.params,
                ):
                    if etype == "ERROR":
                        code = obj.get("code")
                        log.info(
                            "%s watch ended with %s %s; relisting",
                            self.plural,
                            code,
                            obj.get("reason"),
                        )
                        need_list = True
                        break
                    self._apply(etype, obj)
                    backoff = 0.1
            except asyncio.CancelledError:
                raise
            except ApiError as e:
                if e.code == 410:
                    need_list = True
                    continue
                log.warning("%s: %s; retrying in %.1fs", self.plural, e, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
            except Exception:
                log.exception("%s informer failed; retrying in %.1fs", self.plural, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                need_list = True
