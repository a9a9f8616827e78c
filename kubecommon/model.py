"""The object model every agent renders from: frozen dataclasses, no I/O.

Parsing functions turn API dicts (v1 Service, discovery.k8s.io/v1 EndpointSlice, v1 Node)
into these values; ``service_port_map`` and ``endpoints_map`` build the two maps kube-proxy's
``syncProxyRules`` works from, keyed by ``ServicePortName`` (namespace/name:port + protocol).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

SERVICE_NAME_LABEL = "kubernetes.io/service-name"


@dataclass(frozen=True, slots=True, order=True)
class ServicePortName:
    namespace: str
    name: str
    port: str  # the port's name, "" when unnamed
    protocol: str = "TCP"
    # The key of every per-service-port map: a dataclass hash re-hashes the four strings
    # on each lookup (a third of an iptables partial render at 10,000 services), so it is
    # computed once. Not pickled: string hashes differ from one process to the next.
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.namespace, self.name, self.port, self.protocol)))

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self):
        return (ServicePortName, (self.namespace, self.name, self.port, self.protocol))

    def __str__(self) -> str:  # kube-proxy's String(): ns/name:port (":port" only when named)
        base = f"{self.namespace}/{self.name}"
        return f"{base}:{self.port}" if self.port else base


@dataclass(frozen=True, slots=True)
class ServicePortInfo:
    """One port of one Service, with everything a proxy needs to program it."""

    name: ServicePortName
    cluster_ip: str  # "" for headless / ExternalName
    port: int
    protocol: str
    target_port: int | str
    node_port: int = 0
    type: str = "ClusterIP"
    session_affinity_timeout: int = 0  # seconds; 0 = no ClientIP affinity
    external_local: bool = False  # externalTrafficPolicy: Local
    internal_local: bool = False  # internalTrafficPolicy: Local
    external_ips: tuple[str, ...] = ()
    load_balancer_ips: tuple[str, ...] = ()
    health_check_node_port: int = 0

    @property
    def affinity(self) -> bool:
        return self.session_affinity_timeout > 0


@dataclass(frozen=True, slots=True, order=True)
class Endpoint:
    ip: str
    port: int
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    node_name: str = ""
    hostname: str = ""
    zone: str = ""

    @property
    def addr(self) -> str:
        return f"{self.ip}:{self.port}"


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    """A whole Service (for DNS, which needs more than ports)."""

    namespace: str
    name: str
    type: str
    cluster_ip: str  # "" when headless or ExternalName
    ports: tuple[ServicePortInfo, ...]
    external_name: str = ""
    headless: bool = False
    publish_not_ready: bool = False


@dataclass(frozen=True, slots=True)
class NodeInfo:
    name: str
    internal_ip: str
    pod_cidr: str
    ready: bool
    annotations: tuple[tuple[str, str], ...] = field(default=())

    def annotation(self, key: str, default: str = "") -> str:
        for k, v in self.annotations:
            if k == key:
                return v
        return default


def _cluster_ip(spec: Mapping) -> str:
    ip = spec.get("clusterIP") or ""
    return "" if ip == "None" else ip


def service_from_obj(svc: Mapping) -> ServiceInfo:
    md, spec = svc.get("metadata", {}), svc.get("spec", {})
    ns, name = md.get("namespace", "default"), md["name"]
    stype = spec.get("type") or "ClusterIP"
    cip = _cluster_ip(spec) if stype != "ExternalName" else ""
    timeout = 0
    if spec.get("sessionAffinity") == "ClientIP":
        cfg = (spec.get("sessionAffinityConfig") or {}).get("clientIP") or {}
        timeout = int(cfg.get("timeoutSeconds") or 10800)
    lb_ips = tuple(
        i["ip"]
        for i in ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        if i.get("ip")
    )
    ports = []
    for p in spec.get("ports") or []:
        proto = p.get("protocol") or "TCP"
        ports.append(
            ServicePortInfo(
                name=ServicePortName(ns, name, p.get("name") or "", proto),
                cluster_ip=cip,
                port=int(p["port"]),
                protocol=proto,
                target_port=p.get("targetPort", p["port"]),
                node_port=int(p.get("nodePort") or 0),
                type=stype,
                session_affinity_timeout=timeout,
                external_local=spec.get("externalTrafficPolicy") == "Local"
                and stype in ("NodePort", "LoadBalancer"),
                internal_local=spec.get("internalTrafficPolicy") == "Local",
                external_ips=tuple(spec.get("externalIPs") or ()),
                load_balancer_ips=lb_ips,
                health_check_node_port=int(spec.get("healthCheckNodePort") or 0),
            )
        )
    return ServiceInfo(
        namespace=ns,
        name=name,
        type=stype,
        cluster_ip=cip,
        ports=tuple(ports),
        external_name=spec.get("externalName") or "",
        headless=spec.get("clusterIP") == "None",
        publish_not_ready=bool(spec.get("publishNotReadyAddresses")),
    )


def service_port_map(services: Iterable[Mapping]) -> dict[ServicePortName, ServicePortInfo]:
    """All proxyable service ports: ClusterIP/NodePort/LoadBalancer services with a cluster IP."""
    out: dict[ServicePortName, ServicePortInfo] = {}
    for svc in services:
        info = service_from_obj(svc)
        if not info.cluster_ip or info.type == "ExternalName":
            continue
        for p in info.ports:
            out[p.name] = p
    return out


def endpoints_from_slice(sl: Mapping) -> dict[ServicePortName, list[Endpoint]]:
    md = sl.get("metadata", {})
    svc = (md.get("labels") or {}).get(SERVICE_NAME_LABEL)
    if not svc or sl.get("addressType", "IPv4") != "IPv4":
        return {}
    ns = md.get("namespace", "default")
    out: dict[ServicePortName, list[Endpoint]] = {}
    for p in sl.get("ports") or [{}]:
        if p.get("port") is None:
            continue
        spn = ServicePortName(ns, svc, p.get("name") or "", p.get("protocol") or "TCP")
        eps = out.setdefault(spn, [])
        for ep in sl.get("endpoints") or []:
            cond = ep.get("conditions") or {}
            ready = cond.get("ready")
            ready = True if ready is None else bool(ready)
            serving = cond.get("serving")
            serving = ready if serving is None else bool(serving)
            for ip in ep.get("addresses") or []:
                eps.append(
                    Endpoint(
                        ip=ip,
                        port=int(p["port"]),
                        ready=ready,
                        serving=serving,
                        terminating=bool(cond.get("terminating")),
                        node_name=ep.get("nodeName") or "",
                        hostname=ep.get("hostname") or "",
                        zone=ep.get("zone") or "",
                    )
                )
    return out


def endpoints_map(slices: Iterable[Mapping]) -> dict[ServicePortName, tuple[Endpoint, ...]]:
    """Merge every slice of every service; endpoints sorted and de-duplicated."""
    acc: dict[ServicePortName, set[Endpoint]] = {}
    for sl in slices:
        for spn, eps in endpoints_from_slice(sl).items():
            acc.setdefault(spn, set()).update(eps)
    return {k: tuple(sorted(v)) for k, v in acc.items()}


def node_from_obj(node: Mapping) -> NodeInfo:
    md, spec, status = node.get("metadata", {}), node.get("spec", {}), node.get("status", {})
    ip = ""
    for a in status.get("addresses") or []:
        if a.get("type") == "InternalIP":
            ip = a.get("address", "")
            break
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    return NodeInfo(
        name=md["name"],
        internal_ip=ip,
        pod_cidr=spec.get("podCIDR") or (spec.get("podCIDRs") or [""])[0],
        ready=ready,
        annotations=tuple(sorted((md.get("annotations") or {}).items())),
    )
