"""The watch: Services, EndpointSlices, Namespaces (and Pods for ``pods verified``) -> index.

Division of labour: ``kubecommon.informer`` lists and watches; this module turns each
event into the DNS model (``records.DnsService`` / ``DnsEndpoint``), re-renders only the
owner the event touched (one Service, one namespace, one pod IP) and hands the result
to ``index.set_owner`` right away, on the event loop, so an API change is in the
answers within milliseconds. A Service is published only while its Namespace exists
(CoreDNS's ``namespaceExposed``). The index is marked synced (queries for the zone stop
getting SERVFAIL) once every informer has finished its first list.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from kubecommon.client import ApiClient
from kubecommon.informer import Informer
from kubecommon.model import SERVICE_NAME_LABEL

from .index import Index
from .records import (
    DnsEndpoint,
    DnsPort,
    DnsService,
    ServiceRecords,
    addr_rr,
    pod_name,
    service_records,
)

log = logging.getLogger("clusterdns")


def dns_service_from_obj(obj: Mapping) -> DnsService:
    md, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    ports = tuple(
        DnsPort(p.get("name") or "", int(p["port"]), p.get("protocol") or "TCP")
        for p in spec.get("ports") or []
        if p.get("port") is not None
    )
    stype = spec.get("type") or "ClusterIP"
    cip = spec.get("clusterIP") or ""
    if stype == "ExternalName":
        kind, ips = "ExternalName", ()
    elif cip == "None":
        kind, ips = "Headless", ()
    else:
        kind = "ClusterIP"
        ips = tuple(i for i in (spec.get("clusterIPs") or ([cip] if cip else [])) if i != "None")
    return DnsService(
        namespace=md.get("namespace") or "default",
        name=md["name"],
        kind=kind,
        cluster_ips=ips,
        ports=ports,
        external_name=spec.get("externalName") or "",
        publish_not_ready=bool(spec.get("publishNotReadyAddresses")),
    )


def dns_endpoints_from_slice(sl: Mapping) -> tuple[str, tuple[DnsEndpoint, ...]] | None:
    """(namespace/service, endpoints) of one EndpointSlice, None if it belongs to no Service."""
    md = sl.get("metadata") or {}
    svc = (md.get("labels") or {}).get(SERVICE_NAME_LABEL)
    if not svc or sl.get("addressType", "IPv4") not in ("IPv4", "IPv6"):
        return None
    ports = tuple(
        sorted(
            DnsPort(p.get("name") or "", int(p["port"]), p.get("protocol") or "TCP")
            for p in sl.get("ports") or []
            if p.get("port") is not None
        )
    )
    eps = []
    for ep in sl.get("endpoints") or []:
        ready = (ep.get("conditions") or {}).get("ready")
        ready = True if ready is None else bool(ready)
        for ip in ep.get("addresses") or []:
            eps.append(DnsEndpoint(ip, ep.get("hostname") or "", ready, ports))
    return f"{md.get('namespace') or 'default'}/{svc}", tuple(sorted(eps))


def pod_ips(obj: Mapping) -> tuple[str, ...]:
    st = obj.get("status") or {}
    ips = [p.get("ip") for p in st.get("podIPs") or [] if p.get("ip")]
    if not ips and st.get("podIP"):
        ips = [st["podIP"]]
    return tuple(ips)


class Controller:
    def __init__(
        self, client: ApiClient, index: Index, *, dns_service: str = "kube-system/kube-dns"
    ):
        self.client = client
        self.index = index
        self.dns_service = dns_service
        self.services: dict[str, DnsService] = {}
        self.slices: dict[str, dict[str, tuple[DnsEndpoint, ...]]] = {}
        self.slice_owner: dict[str, str] = {}  # slice key -> service key
        self.namespaces: set[str] = set()
        self.by_ns: dict[str, set[str]] = {}  # ns -> service keys
        self.pods: dict[str, tuple[str, tuple[str, ...]]] = {}  # pod key -> (ns, ips)
        self.pod_refs: dict[tuple[str, str], int] = {}
        self.informers = [
            Informer(client, "namespaces"),
            Informer(client, "services"),
            Informer(client, "endpointslices"),
        ]
        self.informers[0].add_handler(self._on_namespace)
        self.informers[1].add_handler(self._on_service)
        self.informers[2].add_handler(self._on_slice)
        if index.pods == "verified":
            pi = Informer(client, "pods")
            pi.add_handler(self._on_pod)
            self.informers.append(pi)
        self._tasks: list[asyncio.Task] = []

    async def run(self) -> None:
        """Start the informers; returns once all have synced (they keep running)."""
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(i.run()) for i in self.informers]
        await asyncio.gather(*(i.synced.wait() for i in self.informers))
        self.index.mark_synced()

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.client.close()

    # -- events ----------------------------------------------------------------------------
    def _on_namespace(self, etype: str, new: dict | None, old: dict | None) -> None:
        obj = new or old
        if obj is None:
            return
        ns = obj["metadata"]["name"]
        if etype == "DELETED":
            self.namespaces.discard(ns)
            self.index.set_owner(f"ns/{ns}", None)
        else:
            if ns in self.namespaces:
                return
            self.namespaces.add(ns)
            names = set()
            for z in self.index.zones:
                names.add(f"{ns}.svc.{z}".lower())
                if self.index.pods != "disabled":
                    names.add(f"{ns}.pod.{z}".lower())
            self.index.set_owner(f"ns/{ns}", ServiceRecords(names=frozenset(names)))
        for key in list(self.by_ns.get(ns, ())):
            self._render(key)
        for _pk, (pns, ips) in list(self.pods.items()):
            if pns == ns:
                for ip in ips:
                    self._render_pod(ns, ip)

    def _on_service(self, etype: str, new: dict | None, old: dict | None) -> None:
        obj = new or old
        if obj is None:
            return
        md = obj["metadata"]
        key = f"{md.get('namespace') or 'default'}/{md['name']}"
        if etype == "DELETED":
            self.services.pop(key, None)
            self.by_ns.get(key.split("/", 1)[0], set()).discard(key)
        else:
            svc = dns_service_from_obj(obj)
            self.services[key] = svc
            self.by_ns.setdefault(svc.namespace, set()).add(key)
        if key == self.dns_service:
            svc = self.services.get(key)
            if svc is not None and svc.cluster_ips:
                self.index.set_ns_ips(svc.cluster_ips)
        self._render(key)

    def _on_slice(self, etype: str, new: dict | None, old: dict | None) -> None:
        obj = new or old
        if obj is None:
            return
        md = obj["metadata"]
        skey = f"{md.get('namespace') or 'default'}/{md['name']}"
        prev_owner = self.slice_owner.pop(skey, None)
        if prev_owner is not None:
            self.slices.get(prev_owner, {}).pop(skey, None)
        parsed = dns_endpoints_from_slice(obj) if etype != "DELETED" else None
        if parsed is not None:
            svc_key, eps = parsed
            self.slices.setdefault(svc_key, {})[skey] = eps
            self.slice_owner[skey] = svc_key
            if prev_owner and prev_owner != svc_key:
                self._render(prev_owner)
            self._render(svc_key)
        elif prev_owner is not None:
            self._render(prev_owner)

    def _on_pod(self, etype: str, new: dict | None, old: dict | None) -> None:
        obj = new or old
        if obj is None:
            return
        md = obj["metadata"]
        ns = md.get("namespace") or "default"
        key = f"{ns}/{md['name']}"
        before = self.pods.pop(key, None)
        ips = pod_ips(obj) if etype != "DELETED" else ()
        if ips:
            self.pods[key] = (ns, ips)
        touched = set()
        if before:
            for ip in before[1]:
                self.pod_refs[(ns, ip)] = self.pod_refs.get((ns, ip), 1) - 1
                touched.add(ip)
        for ip in ips:
            self.pod_refs[(ns, ip)] = self.pod_refs.get((ns, ip), 0) + 1
            touched.add(ip)
        for ip in touched:
            self._render_pod(ns, ip)

    # -- rendering -------------------------------------------------------------------------
    def _render(self, key: str) -> None:
        svc = self.services.get(key)
        owner = f"svc/{key}"
        if svc is None or svc.namespace not in self.namespaces:
            self.index.set_owner(owner, None)
            return
        eps = tuple(e for part in self.slices.get(key, {}).values() for e in part)
        idx = self.index
        merged: dict = {}
        names: set[str] = set()
        dynamic: set[str] = set()
        ptrs: tuple = ()
        for i, zone in enumerate(idx.zones):
            r = service_records(svc, eps, zone, idx.ttl, idx.zones[0])
            merged.update(r.rrsets)
            names |= r.names
            dynamic |= r.dynamic
            if i == 0:
                ptrs = r.ptrs
        idx.set_owner(owner, ServiceRecords(merged, frozenset(names), ptrs, frozenset(dynamic)))

    def _render_pod(self, ns: str, ip: str) -> None:
        owner = f"pod/{ns}/{ip}"
        if self.pod_refs.get((ns, ip), 0) <= 0 or ns not in self.namespaces:
            self.pod_refs.pop((ns, ip), None) if self.pod_refs.get((ns, ip), 0) <= 0 else None
            self.index.set_owner(owner, None)
            return
        rrsets = {}
        names = set()
        for zone in self.index.zones:
            name = f"{pod_name(ip)}.{ns}.pod.{zone}".lower()
            rr = addr_rr(None, ip, self.index.ttl)
            rrsets[(name, rr.rtype)] = ((rr,), ())
            names.add(name)
        self.index.set_owner(owner, ServiceRecords(rrsets, frozenset(names)))
