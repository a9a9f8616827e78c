"""The DNS model and the specification's rules: Service + endpoints -> RRsets (pure, no I/O).

Division of labour: ``controller`` turns API objects into the frozen values defined here,
``service_records`` applies the Kubernetes DNS-Based Service Discovery rules (schema 1.1.0,
with CoreDNS's answers where the specification leaves room) and returns every
``(name, qtype) -> (answer, additional)`` RRset one Service owns, the names that exist
(for NODATA versus NXDOMAIN), the PTR contributions and the names answered on the slow
path (ExternalName targets are chased per query). ``index`` turns all that into wire bytes.

Rules implemented (section numbers of the specification):
  2.3.1 A/AAAA ``<svc>.<ns>.svc.<zone>`` -> every cluster IP, ready endpoints or not
  2.3.2 SRV ``_<port>._<proto>.<svc>.<ns>.svc.<zone>`` for named ports -> target the service
  2.3.3 PTR of each cluster IP -> ``<svc>.<ns>.svc.<zone>`` (see ``reverse``)
  2.4.1 headless A/AAAA -> each ready endpoint (not-ready too with publishNotReadyAddresses);
        no ready endpoint -> the name does not exist (NXDOMAIN);
        ``<hostname>.<svc>.<ns>.svc.<zone>`` -> that endpoint's addresses
  2.4.2 headless SRV -> one per (ready endpoint x named port), target the hostname record
  2.4.3 PTR of each ready endpoint IP -> ``<hostname>.<svc>.<ns>.svc.<zone>``
  2.5   ExternalName -> CNAME (see ``external``)
CoreDNS extras kept for compatibility: SRV on the bare service name lists every port
(named or not), endpoint hostname records also exist for ClusterIP services, and an
endpoint without a hostname gets one derived from its IP (``10-244-1-5``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .wire import AAAA, RR, SRV, A, rdata_for

Key = tuple[str, int]  # (lowercased name, qtype)
RRset = tuple[tuple[RR, ...], tuple[RR, ...]]  # (answer, additional)


@dataclass(frozen=True, slots=True, order=True)
class DnsPort:
    name: str
    port: int
    protocol: str  # "TCP" | "UDP" | "SCTP"


@dataclass(frozen=True, slots=True, order=True)
class DnsEndpoint:
    ip: str
    hostname: str  # from the EndpointSlice endpoint, "" if none
    ready: bool
    ports: tuple[DnsPort, ...] = ()


@dataclass(frozen=True, slots=True)
class DnsService:
    namespace: str
    name: str
    kind: str  # "ClusterIP" | "Headless" | "ExternalName"
    cluster_ips: tuple[str, ...] = ()
    ports: tuple[DnsPort, ...] = ()
    external_name: str = ""
    publish_not_ready: bool = False


@dataclass(frozen=True, slots=True)
class ServiceRecords:
    rrsets: dict[Key, RRset] = field(default_factory=dict)
    names: frozenset[str] = frozenset()  # names that exist (any type)
    ptrs: tuple[tuple[str, str, bool], ...] = ()  # (ip, target, is_cluster_ip)
    dynamic: frozenset[str] = frozenset()  # names whose A/AAAA answers are built per query


def endpoint_hostname(ep: DnsEndpoint) -> str:
    """CoreDNS's endpointHostname: the slice's hostname, else the IP with dashes."""
    if ep.hostname:
        return ep.hostname.lower()
    if "." in ep.ip:
        return ep.ip.replace(".", "-")
    return ep.ip.replace(":", "-")


def addr_rr(owner: str | None, ip: str, ttl: int) -> RR:
    rtype = AAAA if ":" in ip else A
    return RR(owner, rtype, ttl, rdata_for(rtype, ip))


def srv_weight(n: int) -> int:
    return max(1, 100 // max(1, n))


def _published(svc: DnsService, eps: tuple[DnsEndpoint, ...]) -> list[DnsEndpoint]:
    """Endpoints the DNS publishes: ready ones, or all with publishNotReadyAddresses."""
    seen: set[tuple[str, str]] = set()
    out = []
    for ep in sorted(eps):
        if not (ep.ready or svc.publish_not_ready):
            continue
        k = (ep.ip, ep.hostname)
        if k in seen:
            continue
        seen.add(k)
        out.append(ep)
    return out


def _put_addrs(rrsets: dict[Key, RRset], name: str, ips: list[str], ttl: int) -> None:
    uniq = sorted(set(ips))
    for rtype in (A, AAAA):
        rrs = tuple(addr_rr(None, ip, ttl) for ip in uniq if (rtype == AAAA) == (":" in ip))
        if rrs:
            rrsets[(name, rtype)] = (rrs, ())


def _put_srv(rrsets: dict[Key, RRset], name: str, targets: list[tuple[int, str, str]], ttl: int):
    """targets: (port, target name, target ip) -> SRV answer + A/AAAA additional."""
    if not targets:
        return
    uniq = sorted(set(targets))
    w = srv_weight(len({(p, t) for p, t, _ in uniq}))
    answers = tuple(sorted({RR(None, SRV, ttl, (0, w, p, t)) for p, t, _ in uniq}))
    extra = tuple(sorted({addr_rr(t, ip, ttl) for _, t, ip in uniq}))
    rrsets[(name, SRV)] = (answers, extra)


def service_records(
    svc: DnsService, endpoints: tuple[DnsEndpoint, ...], zone: str, ttl: int, ptr_zone: str
) -> ServiceRecords:
    """Every RRset one Service contributes to ``zone`` (names lowercased)."""
    base = f"{svc.name}.{svc.namespace}.svc.{zone}".lower()
    ptr_base = f"{svc.name}.{svc.namespace}.svc.{ptr_zone}".lower()
    rrsets: dict[Key, RRset] = {}
    names: set[str] = set()
    ptrs: list[tuple[str, str, bool]] = []
    dynamic: set[str] = set()

    if svc.kind == "ExternalName":
        from .external import external_records

        return external_records(base, svc.external_name, ttl)

    published = _published(svc, endpoints)
    # endpoint hostname records (headless and ClusterIP alike, as CoreDNS)
    by_host: dict[str, list[DnsEndpoint]] = {}
    for ep in published:
        by_host.setdefault(endpoint_hostname(ep), []).append(ep)
    for host, eps in by_host.items():
        hname = f"{host}.{base}"
        _put_addrs(rrsets, hname, [e.ip for e in eps], ttl)
        _put_srv(rrsets, hname, [(p.port, hname, e.ip) for e in eps for p in e.ports], ttl)
        names.add(hname)
        for e in eps:
            ptrs.append((e.ip, f"{host}.{ptr_base}", False))

    if svc.kind == "Headless":
        if published:
            names.add(base)
            _put_addrs(rrsets, base, [e.ip for e in published], ttl)
            targets = [
                (p.port, f"{endpoint_hostname(e)}.{base}", e.ip) for e in published for p in e.ports
            ]
            _put_srv(rrsets, base, targets, ttl)
            named: dict[str, list[tuple[int, str, str]]] = {}
            for e in published:
                for p in e.ports:
                    if p.name:
                        pn = f"_{p.name}._{p.protocol}.{base}".lower()
                        named.setdefault(pn, []).append(
                            (p.port, f"{endpoint_hostname(e)}.{base}", e.ip)
                        )
            for pn, t in named.items():
                _put_srv(rrsets, pn, t, ttl)
                names.add(pn)
    elif svc.cluster_ips and svc.ports:  # ClusterIP (CoreDNS: no ports -> no records)
        names.add(base)
        _put_addrs(rrsets, base, list(svc.cluster_ips), ttl)
        _put_srv(
            rrsets, base, [(p.port, base, ip) for p in svc.ports for ip in svc.cluster_ips], ttl
        )
        for p in svc.ports:
            if p.name:
                pn = f"_{p.name}._{p.protocol}.{base}".lower()
                _put_srv(rrsets, pn, [(p.port, base, ip) for ip in svc.cluster_ips], ttl)
                names.add(pn)
        for ip in svc.cluster_ips:
            ptrs.append((ip, ptr_base, True))

    return ServiceRecords(rrsets, frozenset(names), tuple(ptrs), frozenset(dynamic))


def pod_name(ip: str) -> str:
    """``10.244.1.5`` -> ``10-244-1-5`` (IPv6: colons to dashes), the pod record label."""
    return ip.replace(".", "-") if "." in ip else ip.replace(":", "-")


def pod_ip_from_label(label: str) -> str | None:
    """CoreDNS's reading of a pod label back into an IP (None if it is not one)."""
    import ipaddress

    if label.count("-") == 3 and "--" not in label:
        text = label.replace("-", ".")
    else:
        text = label.replace("-", ":")
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None
