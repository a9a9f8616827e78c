"""Controllers running inside the stub, as kube-controller-manager runs them upstream.

``Controllers`` subscribes to committed store events, keeps the indexes of ``index``, marks
the Services a change touches as dirty, and one asyncio task reconciles dirty Services
(Endpoints via ``endpoints``, EndpointSlices via ``endpointslices``) and new Nodes
(``nodeipam``). It also finishes graceful pod deletions (the kubelet's confirmation).
Writes go through the registry, so they get the same validation and metadata as any client's.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..registry import Registry
from ..resources import ENDPOINTS, ENDPOINTSLICES, NAMESPACES, NODES, PODS, SERVICES
from ..status import ApiError
from ..store import Event, Store
from .endpoints import desired_labels, desired_subsets
from .endpointslices import CONTROLLER, MANAGED_BY, SERVICE_NAME, desired_slices, owner_ref
from .index import Index, selector_of
from .nodeipam import NodeIpam

log = logging.getLogger("apiserver_stub")

NAMESPACE_FINALIZE_DELAY = 0.5  # seconds a deleted namespace stays Terminating

# pod fields the endpoint controllers read; other changes (e.g. annotations) are ignored
_POD_SPEC_FIELDS = ("nodeName", "hostname", "subdomain", "containers")


def _pod_relevant(old: dict[str, Any] | None, new: dict[str, Any] | None) -> bool:
    if old is None or new is None:
        return True
    om, nm = old["metadata"], new["metadata"]
    if om.get("labels") != nm.get("labels") or om.get("deletionTimestamp") != nm.get(
        "deletionTimestamp"
    ):
        return True
    os_, ns_ = old.get("spec") or {}, new.get("spec") or {}
    if any(os_.get(f) != ns_.get(f) for f in _POD_SPEC_FIELDS):
        return True
    ost, nst = old.get("status") or {}, new.get("status") or {}
    if (ost.get("podIP"), ost.get("podIPs"), ost.get("phase")) != (
        nst.get("podIP"),
        nst.get("podIPs"),
        nst.get("phase"),
    ):
        return True
    ready = [c for c in ost.get("conditions") or [] if c.get("type") == "Ready"]
    nready = [c for c in nst.get("conditions") or [] if c.get("type") == "Ready"]
    return [c.get("status") for c in ready] != [c.get("status") for c in nready]


class Controllers:
    def __init__(self, store: Store, registry: Registry, cluster_cidr: str, mask: int):
        self.store = store
        self.registry = registry
        self.index = Index()
        self.ipam = NodeIpam(cluster_cidr, mask)
        self.dirty: dict[tuple[str, str], None] = {}
        self.nodes_pending: dict[str, None] = {}
        self.own_writes: set[int] = set()
        self.wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._timers: list[asyncio.TimerHandle] = []
        self._in_write = False
        store.add_listener(self.on_event)

    # ---- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        for e in self.store.list(PODS):
            self.index.set_pod(e.obj)
        for e in self.store.list(SERVICES):
            self.index.set_service(e.obj)
            self.dirty[(e.namespace, e.name)] = None
        for e in self.store.list(ENDPOINTSLICES):
            self._index_slice(e.obj, None)
        for e in self.store.list(NODES):
            if self.ipam.observe(e.obj):
                self.nodes_pending[e.name] = None
        for e in self.store.list(PODS):  # pods left Terminating by a previous run
            if e.obj["metadata"].get("deletionTimestamp"):
                self.registry.pending_pod_deletions[(e.namespace, e.name)] = 0.0
                self._schedule_pod_removal(e.namespace, e.name, 0.0)
        for e in self.store.list(NAMESPACES):  # namespaces a previous run left Terminating
            if e.obj["metadata"].get("deletionTimestamp"):
                self._schedule(0.0, self.registry.finish_namespace, e.name)
        self.wake = asyncio.Event()
        self.wake.set()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        for t in self._timers:
            t.cancel()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    # ---- events ----------------------------------------------------------------------

    def on_event(self, ev: Event) -> None:
        if self._in_write or ev.rv in self.own_writes:
            self.own_writes.discard(ev.rv)
            return
        res = ev.res
        new = ev.entry.obj if ev.type != "DELETED" else None
        old = ev.prev.obj if ev.prev is not None else None
        if res is PODS:
            self._on_pod(ev, old, new)
        elif res is SERVICES:
            ns, name = ev.entry.namespace, ev.entry.name
            if new is None:
                self.index.drop_service(ns, name)
            else:
                self.index.set_service(new)
            self._mark(ns, name)
        elif res is ENDPOINTSLICES:
            self._index_slice(new, old)
            svc = (ev.entry.obj["metadata"].get("labels") or {}).get(SERVICE_NAME)
            if svc:
                self._mark(ev.entry.namespace, svc)
        elif res is ENDPOINTS:
            if ev.entry.name in self.index.services.get(ev.entry.namespace, {}):
                self._mark(ev.entry.namespace, ev.entry.name)
        elif res is NAMESPACES:
            if (
                new is not None
                and new["metadata"].get("deletionTimestamp")
                and not (old or {}).get("metadata", {}).get("deletionTimestamp")
            ):
                self._schedule(
                    NAMESPACE_FINALIZE_DELAY, self.registry.finish_namespace, ev.entry.name
                )
        elif res is NODES:
            if new is None:
                if old is not None:
                    self.ipam.release(old)
                self.nodes_pending.pop(ev.entry.name, None)
            elif self.ipam.observe(new):
                self.nodes_pending[ev.entry.name] = None
                self._wake()

    def _on_pod(self, ev: Event, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        ns, name = ev.entry.namespace, ev.entry.name
        if new is None:
            self.index.drop_pod(ns, name)
            self.registry.pending_pod_deletions.pop((ns, name), None)
        else:
            self.index.set_pod(new)
            wait = self.registry.pending_pod_deletions.get((ns, name))
            if wait is not None and new["metadata"].get("deletionTimestamp"):
                self._schedule_pod_removal(ns, name, wait)
        if not _pod_relevant(old, new):
            return
        targets = self.index.services_for(ns, (new or {}).get("metadata", {}).get("labels"))
        if old is not None:
            targets |= self.index.services_for(ns, old["metadata"].get("labels"))
        for svc in targets:
            self._mark(ns, svc)

    def _schedule_pod_removal(self, ns: str, name: str, wait: float) -> None:
        self._schedule(wait, self.registry.finish_pod_deletion, ns, name)

    def _schedule(self, wait: float, fn: Any, *args: Any) -> None:
        loop = asyncio.get_running_loop()
        self._timers = [t for t in self._timers if loop.time() < t.when()]
        self._timers.append(loop.call_later(wait, fn, *args))

    def _index_slice(self, new: dict[str, Any] | None, old: dict[str, Any] | None) -> None:
        for obj, add in ((old, False), (new, True)):
            if obj is None:
                continue
            labels = obj["metadata"].get("labels") or {}
            if labels.get(MANAGED_BY) != CONTROLLER or not labels.get(SERVICE_NAME):
                continue
            key = (obj["metadata"].get("namespace", ""), labels[SERVICE_NAME])
            if add:
                self.index.slices[key][obj["metadata"]["name"]] = obj
            else:
                self.index.slices[key].pop(obj["metadata"]["name"], None)
                if not self.index.slices[key]:
                    del self.index.slices[key]

    def _mark(self, ns: str, name: str) -> None:
        self.dirty[(ns, name)] = None
        self._wake()

    def _wake(self) -> None:
        if self.wake is not None:
            self.wake.set()

    # ---- reconcile -------------------------------------------------------------------

    async def _run(self) -> None:
        assert self.wake is not None
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.nodes_pending or self.dirty:
                for name in list(self.nodes_pending)[:500]:
                    self.nodes_pending.pop(name, None)
                    self._assign_cidr(name)
                batch = list(self.dirty)[:500]
                for key in batch:
                    self.dirty.pop(key, None)
                    try:
                        self.sync_service(*key)
                    except Exception:
                        log.exception(
                            "endpoints of service %s/%s failed; will retry on next change", *key
                        )
                await asyncio.sleep(0)

    def _write(self, fn: Any, *args: Any) -> None:
        self._in_write = True
        try:
            entry = fn(*args)
        except ApiError as e:
            if e.code not in (404, 409):
                log.warning("controller write failed: %s", e)
            return
        finally:
            self._in_write = False
        if isinstance(entry, tuple):
            entry = entry[0]
        if entry is not None:
            if entry.rv > self.store.published_rv:  # its event is still to come (SQLite)
                self.own_writes.add(entry.rv)
            if entry.res is ENDPOINTSLICES:  # index at once: the event comes after commit
                if fn == self.registry.delete:
                    self._index_slice(None, entry.obj)
                else:
                    self._index_slice(entry.obj, None)

    def _assign_cidr(self, name: str) -> None:
        e = self.store.get(NODES, "", name)
        if e is None or (e.obj.get("spec") or {}).get("podCIDR"):
            return
        node = self.ipam.assign(e.copy())
        if node is not None:
            try:
                self.registry.update(NODES, "", name, node)
            except ApiError as err:
                self.ipam.release(node)
                log.warning("could not set podCIDR on node %s: %s", name, err)

    def sync_service(self, ns: str, name: str) -> None:
        svc = self.index.services.get(ns, {}).get(name)
        sel = selector_of(svc) if svc is not None else None
        current_ep = self.store.get(ENDPOINTS, ns, name)
        slices = dict(self.index.slices.get((ns, name), {}))
        if sel is None:
            # no service, or one without selector: nothing of ours may remain
            if svc is None and current_ep is not None:
                self._write(self.registry.delete, ENDPOINTS, ns, name)
            for sname in slices:
                self._write(self.registry.delete, ENDPOINTSLICES, ns, sname)
            return
        assert svc is not None
        pods = self.index.pods_for(ns, sel)
        # Endpoints
        subsets = desired_subsets(svc, pods)
        labels = desired_labels(svc)
        if current_ep is None:
            body: dict[str, Any] = {"metadata": {"name": name, "namespace": ns}}
            if labels:
                body["metadata"]["labels"] = labels
            if subsets:
                body["subsets"] = subsets
            self._write(self.registry.create, ENDPOINTS, body, ns, False, "Skip")
        elif (current_ep.obj.get("subsets") or []) != subsets or (
            current_ep.obj["metadata"].get("labels") or {}
        ) != labels:
            obj = current_ep.copy()
            if labels:
                obj["metadata"]["labels"] = labels
            else:
                obj["metadata"].pop("labels", None)
            if subsets:
                obj["subsets"] = subsets
            else:
                obj.pop("subsets", None)
            self._write(self.registry.update, ENDPOINTS, ns, name, obj, None, False, "Skip")
        # EndpointSlices
        want = desired_slices(svc, pods)
        existing = sorted(slices.items())
        owner = owner_ref(svc)
        for i, (_key, body) in enumerate(want):
            if i < len(existing):
                sname, cur = existing[i]
                if (
                    cur.get("endpoints") == body["endpoints"]
                    and cur.get("ports") == body["ports"]
                    and (cur["metadata"].get("labels") or {}) == body["labels"]
                    and cur.get("addressType") == body["addressType"]
                    and cur["metadata"].get("ownerReferences") == [owner]
                ):
                    continue
                obj = self.store.get(ENDPOINTSLICES, ns, sname)
                if obj is None:
                    continue
                o = obj.copy()
                o["metadata"]["labels"] = body["labels"]
                o["metadata"]["ownerReferences"] = [owner]
                o["addressType"] = body["addressType"]
                o["endpoints"] = body["endpoints"]
                o["ports"] = body["ports"]
                self._write(self.registry.update, ENDPOINTSLICES, ns, sname, o, None, False, "Skip")
            else:
                o = {
                    "metadata": {
                        "generateName": f"{name}-",
                        "namespace": ns,
                        "labels": body["labels"],
                        "ownerReferences": [owner],
                    },
                    "addressType": body["addressType"],
                    "endpoints": body["endpoints"],
                    "ports": body["ports"],
                }
                self._write(self.registry.create, ENDPOINTSLICES, o, ns, False, "Skip")
        for sname, _ in existing[len(want) :]:
            self._write(self.registry.delete, ENDPOINTSLICES, ns, sname)
