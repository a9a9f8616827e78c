"""The pure renderer of kube-proxy's iptables mode: two maps in, iptables-restore text out.

``Renderer.render(services, endpoints, ctx)`` turns the service-port map and the endpoints
map (both keyed by ``ServicePortName``, built by ``kubecommon.model``) plus the node's
context into a ``Ruleset``: the rules of every KUBE- chain of the ``filter`` and ``nat``
tables, laid out exactly as kube-proxy's ``syncProxyRules`` lays them out (same chain
names, same hashes, same rule text and order inside a service). ``Ruleset.restore_input``
assembles the text for ``iptables-restore --noflush``; ``render()`` is the one-shot form.

No I/O here. A ``Renderer`` only memoises: each service port's share of the rules is cached
keyed by (service, endpoints, context), so after a one-endpoint change only that service
is rendered again. Told which service ports changed (``render(..., changed=)``), it looks
at those only and edits the last ruleset (sorted order, endpoint total, top-level texts)
instead of walking and re-joining every service port: the same result, in time
proportional to the change.

Layout (nat): PREROUTING/OUTPUT -> KUBE-SERVICES -> per service port KUBE-SVC-<h> (cluster
policy) or KUBE-SVL-<h> (local policy) -> KUBE-SEP-<h> (one per endpoint: hairpin mark,
DNAT). NodePorts/external IPs go through KUBE-EXT-<h>. KUBE-NODEPORTS is the last rule of
KUBE-SERVICES (``--dst-type LOCAL``). KUBE-MARK-MASQ sets 0x4000; KUBE-POSTROUTING
masquerades marked packets. filter: KUBE-SERVICES / KUBE-EXTERNAL-SERVICES reject traffic
to services without endpoints, KUBE-FORWARD accepts marked and established traffic,
KUBE-NODEPORTS accepts health-check node ports.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import repeat
from operator import attrgetter

from kubecommon.model import Endpoint, ServicePortInfo, ServicePortName

# Top-level chains (constants: never spell a chain name twice).
KUBE_SERVICES = "KUBE-SERVICES"
KUBE_EXTERNAL_SERVICES = "KUBE-EXTERNAL-SERVICES"
KUBE_NODEPORTS = "KUBE-NODEPORTS"
KUBE_POSTROUTING = "KUBE-POSTROUTING"
KUBE_MARK_MASQ = "KUBE-MARK-MASQ"
KUBE_FORWARD = "KUBE-FORWARD"

SVC_PREFIX = "KUBE-SVC-"  # cluster traffic policy: all usable endpoints
SVL_PREFIX = "KUBE-SVL-"  # local traffic policy: this node's endpoints only
EXT_PREFIX = "KUBE-EXT-"  # external destinations (NodePort, external IP, LB IP)
FW_PREFIX = "KUBE-FW-"  # loadBalancerSourceRanges (not rendered, cleaned up)
SEP_PREFIX = "KUBE-SEP-"  # one endpoint
SERVICE_CHAIN_PREFIXES = (SVC_PREFIX, SVL_PREFIX, EXT_PREFIX, FW_PREFIX, SEP_PREFIX)

MASQ_MARK = "0x4000"  # bit 14, kube-proxy's default --iptables-masquerade-bit
LARGE_CLUSTER_ENDPOINTS = 1000  # above this many endpoints, drop per-endpoint comments

FILTER_CHAINS = (KUBE_SERVICES, KUBE_EXTERNAL_SERVICES, KUBE_FORWARD, KUBE_NODEPORTS)
NAT_CHAINS = (KUBE_SERVICES, KUBE_NODEPORTS, KUBE_POSTROUTING, KUBE_MARK_MASQ)

NODEPORTS_COMMENT = '"kubernetes service nodeports; NOTE: this must be the last rule in this chain"'


@dataclass(frozen=True, slots=True)
class JumpRule:
    """A rule in a built-in chain sending packets to one of ours (ensured, never flushed)."""

    table: str
    src: str
    dst: str
    comment: str
    extra: tuple[str, ...] = ()

    def args(self) -> list[str]:
        """The rule as iptables arguments (after ``-t TABLE -C/-I/-D SRC``)."""
        return [*self.extra, "-m", "comment", "--comment", self.comment, "-j", self.dst]

    def save_line(self) -> str:
        """How iptables-save prints it (to find it without running ``iptables -C``)."""
        parts = [f"-A {self.src}", *self.extra, f'-m comment --comment "{self.comment}"']
        return " ".join([*parts, f"-j {self.dst}"])


_NEW = ("-m", "conntrack", "--ctstate", "NEW")
JUMP_RULES: tuple[JumpRule, ...] = (
    JumpRule("filter", "INPUT", KUBE_EXTERNAL_SERVICES, "kubernetes externally-visible service portals", _NEW),
    JumpRule("filter", "FORWARD", KUBE_EXTERNAL_SERVICES, "kubernetes externally-visible service portals", _NEW),
    JumpRule("filter", "INPUT", KUBE_NODEPORTS, "kubernetes health check service ports"),
    JumpRule("filter", "FORWARD", KUBE_SERVICES, "kubernetes service portals", _NEW),
    JumpRule("filter", "OUTPUT", KUBE_SERVICES, "kubernetes service portals", _NEW),
    JumpRule("filter", "FORWARD", KUBE_FORWARD, "kubernetes forwarding rules"),
    JumpRule("nat", "OUTPUT", KUBE_SERVICES, "kubernetes service portals"),
    JumpRule("nat", "PREROUTING", KUBE_SERVICES, "kubernetes service portals"),
    JumpRule("nat", "POSTROUTING", KUBE_POSTROUTING, "kubernetes postrouting rules"),
)


# ---------------------------------------------------------------------------------------
# Chain names: kube-proxy's portProtoHash / servicePortEndpointChainName.
# sha256 of "<ns>/<name>[:<port name>]" + lowercase protocol (+ "<ip>:<port>" for an
# endpoint), base32 (standard alphabet, padded), first 16 characters.


_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_B32_PAIRS = [a + b for a in _B32 for b in _B32]  # 10 bits -> two characters


def _hash16(text: str) -> str:
    # 16 base32 characters are the digest's first 80 bits; base64.b32encode of the whole
    # digest (pure Python) was a quarter of rendering 10,000 services from nothing
    n = int.from_bytes(hashlib.sha256(text.encode()).digest()[:10], "big")
    p = _B32_PAIRS
    return (
        p[n >> 70] + p[(n >> 60) & 1023] + p[(n >> 50) & 1023] + p[(n >> 40) & 1023]
        + p[(n >> 30) & 1023] + p[(n >> 20) & 1023] + p[(n >> 10) & 1023] + p[n & 1023]
    )


@lru_cache(maxsize=1 << 17)
def port_proto_hash(service_port_name: str, protocol: str) -> str:
    return _hash16(service_port_name + protocol)


def service_chain(spn: ServicePortName) -> str:
    return SVC_PREFIX + port_proto_hash(str(spn), spn.protocol.lower())


def local_chain(spn: ServicePortName) -> str:
    return SVL_PREFIX + port_proto_hash(str(spn), spn.protocol.lower())


def external_chain(spn: ServicePortName) -> str:
    return EXT_PREFIX + port_proto_hash(str(spn), spn.protocol.lower())


@lru_cache(maxsize=1 << 18)
def _sep(service_port_name: str, protocol: str, endpoint: str) -> str:
    return SEP_PREFIX + _hash16(service_port_name + protocol + endpoint)


def endpoint_chain(spn: ServicePortName, endpoint: str) -> str:
    """KUBE-SEP-<hash> for one endpoint given as "ip:port"."""
    return _sep(str(spn), spn.protocol.lower(), endpoint)


def is_service_chain(name: str) -> bool:
    return name.startswith(SERVICE_CHAIN_PREFIXES)


_PROBABILITIES: list[str] = ["<bad value>"]


def probability(n: int) -> str:
    """1/n as kube-proxy prints it (``%0.10f``), precomputed."""
    while len(_PROBABILITIES) <= n:
        _PROBABILITIES.append(f"{1.0 / len(_PROBABILITIES):0.10f}")
    return _PROBABILITIES[n]


# ---------------------------------------------------------------------------------------
# Inputs and outputs.


@dataclass(frozen=True, slots=True)
class NodeContext:
    """What the rules need to know about the node they are rendered for."""

    node_name: str = ""
    cluster_cidr: str = ""  # "" = no local-traffic detector (no masquerade of off-cluster traffic)
    masquerade_all: bool = False
    nodeport_ips: tuple[str, ...] | None = None  # None = every local address (addrtype LOCAL)
    localhost_nodeports: bool = False  # NodePorts on 127.0.0.0/8 (needs route_localnet)
    conntrack_tcp_liberal: bool = False  # nf_conntrack_tcp_be_liberal set: no INVALID drop


# A fragment as the renderer built it: (format, fields), the text being ``format % fields``.
# Fields are the values that differ from one service port to the next (our chain names,
# comments, plain addresses, ports), each a whole token; everything else, '%' doubled, is
# in the format. The x_tables encoder uses it to patch its per-shape templates without
# re-parsing the text (it checks that the text is exactly ``format % fields``).
Shape = tuple[str, tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class ServiceRules:
    """One service port's share of the ruleset (all strings are whole lines)."""

    filter_services: str
    filter_external: str
    filter_nodeports: str
    nat_services: str
    nat_nodeports: str
    chains: tuple[str, ...]  # nat chains this service port owns (SVC/SVL/EXT/SEP)
    chain_rules: str  # the rules of those chains
    has_endpoints: bool
    # The same three nat fragments as shapes (None: no shape, only the text).
    nat_services_shape: Shape | None = None
    nat_nodeports_shape: Shape | None = None
    chain_rules_shape: Shape | None = None


def _usable(ep: Endpoint) -> bool:
    return ep.ready


def _serving_terminating(ep: Endpoint) -> bool:
    return ep.serving and ep.terminating


def categorize(
    svc: ServicePortInfo, eps: Iterable[Endpoint], node_name: str
) -> tuple[list[Endpoint], list[Endpoint], list[Endpoint], bool]:
    """kube-proxy's CategorizeEndpoints (without topology hints).

    Returns (cluster endpoints, local endpoints, all endpoints reachable from this node,
    whether the service has usable endpoints anywhere). Ready endpoints are preferred;
    serving-but-terminating ones are used only when there are no ready ones.
    """
    eps = list(eps)
    externally = bool(svc.node_port or svc.external_ips or svc.load_balancer_ips)
    ext_local = svc.external_local and externally
    uses_cluster = not svc.internal_local or (externally and not ext_local)
    uses_local = svc.internal_local or ext_local
    cluster: list[Endpoint] = []
    local: list[Endpoint] = []
    has_any = False
    if uses_cluster:
        cluster = [e for e in eps if _usable(e)]
        if not cluster:
            cluster = [e for e in eps if _serving_terminating(e)]
        has_any = bool(cluster)
    if not uses_local:
        return cluster, local, cluster, has_any
    local_ready = local_term = False
    for e in eps:
        if e.ready:
            has_any = True
            local_ready = local_ready or e.node_name == node_name
        elif _serving_terminating(e):
            has_any = True
            local_term = local_term or e.node_name == node_name
    if local_ready:
        local = [e for e in eps if e.node_name == node_name and e.ready]
    elif local_term:
        local = [e for e in eps if e.node_name == node_name and _serving_terminating(e)]
    if not uses_cluster:
        return cluster, local, local, has_any
    seen = set(map(id, cluster))
    reachable = cluster + [e for e in local if id(e) not in seen]
    return cluster, local, reachable, has_any


def _addr(e: Endpoint) -> str:
    return f"{e.ip}:{e.port}"


def _sorted_eps(eps: Iterable[Endpoint]) -> list[Endpoint]:
    # kube-proxy keeps a service's endpoints sorted by their "ip:port" string.
    eps = list(eps)
    return eps if len(eps) < 2 else sorted(eps, key=_addr)


def render_service(
    svc: ServicePortInfo, eps: Iterable[Endpoint], ctx: NodeContext, large: bool = False
) -> ServiceRules:
    """All rules for one service port (kube-proxy's loop body in syncProxyRules)."""
    if not (
        svc.node_port or svc.external_ips or svc.load_balancer_ips or svc.internal_local
        or svc.session_affinity_timeout or svc.health_check_node_port
    ):  # fmt: skip
        eps = _sorted_eps(eps)
        if eps and all(map(_READY, eps)):
            return _render_plain(svc, eps, ctx, large)
    return _render_general(svc, eps, ctx, large)


_READY = attrgetter("ready")


def _render_plain(
    svc: ServicePortInfo, eps: list[Endpoint], ctx: NodeContext, large: bool
) -> ServiceRules:
    """``_render_general`` for the commonest service port, in a third less time: ClusterIP
    only, cluster traffic policy, no session affinity, every endpoint (sorted) ready.

    The rules: KUBE-SERVICES -> KUBE-SVC (masquerade rule, one jump per endpoint) ->
    KUBE-SEP (hairpin mark, DNAT). The unit tests compare it with the general path.
    """
    name = str(svc.name)
    proto = svc.protocol.lower()
    svc_chain = SVC_PREFIX + port_proto_hash(name, proto)
    cip, sport = svc.cluster_ip, str(svc.port)
    ip_comment = f'"{name} cluster IP"'
    n = len(eps)
    n_svc_fmt, rules_fmt, masq = _plain_formats(
        proto, ctx.masquerade_all, ctx.cluster_cidr, large, n
    )
    rv: list[str] = [svc_chain, ip_comment, cip, sport] if masq else []
    addrs = [f"{e.ip}:{e.port}" for e in eps]
    seps = [_sep(name, proto, a) for a in addrs]
    if large:
        for sep in seps:
            rv += (svc_chain, sep)
        for e, sep in zip(eps, seps, strict=True):
            rv += (sep, e.ip, sep, e.ip, str(e.port))
    else:
        for a, sep in zip(addrs, seps, strict=True):
            rv += (svc_chain, f'"{name} -> {a}"', sep)
        for e, sep in zip(eps, seps, strict=True):
            rv += (sep, name, e.ip, sep, name, e.ip, str(e.port))
    n_svc = (n_svc_fmt, (ip_comment, cip, sport, svc_chain))
    chain_rules = (rules_fmt, tuple(rv))
    return ServiceRules(
        filter_services="",
        filter_external="",
        filter_nodeports="",
        nat_services=n_svc_fmt % n_svc[1],
        nat_nodeports="",
        chains=(svc_chain, *seps),
        chain_rules=rules_fmt % chain_rules[1],
        has_endpoints=True,
        nat_services_shape=n_svc,
        nat_nodeports_shape=_NO_SHAPE,
        chain_rules_shape=chain_rules,
    )


@lru_cache(maxsize=256)
def _plain_formats(
    proto: str, masquerade_all: bool, cluster_cidr: str, large: bool, n: int
) -> tuple[str, str, bool]:
    """``_render_plain``'s formats: the KUBE-SERVICES rule, the service port's chains
    (masquerade rule, n jumps, n endpoint chains), whether the masquerade rule is there."""
    mpf = _esc(f"-m {proto} -p {proto}")
    n_svc = f"-A {KUBE_SERVICES} -m comment --comment %s {mpf} -d %s --dport %s -j %s\n"
    masq = _internal_masq(
        NodeContext(masquerade_all=masquerade_all, cluster_cidr=cluster_cidr), mpf
    )
    out = [masq] if masq else []
    for i in range(n):
        stat = (
            f"-m statistic --mode random --probability {probability(n - i)} " if i < n - 1 else ""
        )
        out.append(
            f"-A %s {stat}-j %s\n" if large else f"-A %s -m comment --comment %s {stat}-j %s\n"
        )
    out += _sep_formats(mpf, large, False) * n
    return n_svc, "".join(out), bool(masq)


def _internal_masq(ctx: NodeContext, mpf: str) -> str:
    """The format of the service chain's first rule (fields: chain, comment, cluster IP,
    port), "" when nothing is masqueraded."""
    if ctx.masquerade_all:
        return f"-A %s -m comment --comment %s {mpf} -d %s --dport %s -j {KUBE_MARK_MASQ}\n"
    if ctx.cluster_cidr:
        cidr = _esc(ctx.cluster_cidr)
        return f"-A %s -m comment --comment %s {mpf} -d %s --dport %s ! -s {cidr} -j {KUBE_MARK_MASQ}\n"
    return ""


def _render_general(
    svc: ServicePortInfo, eps: Iterable[Endpoint], ctx: NodeContext, large: bool = False
) -> ServiceRules:
    """Every kind of service port (the reference for ``_render_plain``)."""
    spn = svc.name
    name = str(spn)
    proto = svc.protocol.lower()
    h = port_proto_hash(name, proto)
    svc_chain, svl_chain, ext_chain = SVC_PREFIX + h, SVL_PREFIX + h, EXT_PREFIX + h
    cluster_eps, local_eps, reachable, has_eps = categorize(svc, _sorted_eps(eps), ctx.node_name)

    externally = bool(svc.node_port or svc.external_ips or svc.load_balancer_ips)
    ext_local = svc.external_local and externally
    uses_cluster_chain = bool(cluster_eps) and (not svc.internal_local or (externally and not ext_local))
    uses_local_chain = bool(local_eps) and (svc.internal_local or ext_local)

    internal_chain = svc_chain
    has_internal = has_eps
    if svc.internal_local:
        internal_chain = svl_chain
        has_internal = bool(local_eps)
    ext_policy_chain = svc_chain
    has_external = has_eps
    if ext_local:
        ext_policy_chain = svl_chain
        has_external = bool(local_eps)
    uses_ext_chain = has_eps and externally

    int_target = int_comment = ext_target = ext_comment = ""
    if not has_eps:
        int_target = ext_target = "REJECT"
        int_comment = ext_comment = f'"{name} has no endpoints"'
    else:
        if not has_internal:
            int_target, int_comment = "DROP", f'"{name} has no local endpoints"'
        if not has_external:
            ext_target, ext_comment = "DROP", f'"{name} has no local endpoints"'

    mp = f"-m {proto} -p {proto}"
    cip, port = svc.cluster_ip, svc.port
    sport = str(port)
    f_svc: list[str] = []
    f_ext: list[str] = []
    f_np: list[str] = []
    # nat fragments as formats + fields (see Shape): '%' of literal text doubled
    mpf = _esc(mp)
    n_svc_f: list[str] = []
    n_svc_v: list[str] = []
    n_np_f: list[str] = []
    n_np_v: list[str] = []
    chains: list[str] = []
    rf: list[str] = []  # chain_rules: formats ...
    rv: list[str] = []  # ... and fields

    ip_comment = f'"{name} cluster IP"'
    cluster_ip_fmt = f"-m comment --comment %s {mpf} -d %s --dport %s"  # ip_comment, cip, port
    if has_internal:
        n_svc_f.append(f"-A {KUBE_SERVICES} {cluster_ip_fmt} -j %s\n")
        n_svc_v += (ip_comment, cip, sport, internal_chain)
    else:
        f_svc.append(
            f"-A {KUBE_SERVICES} -m comment --comment {int_comment} {mp} -d {cip} --dport {port} -j {int_target}\n"
        )

    for xip in svc.external_ips:
        if has_eps:
            n_svc_f.append(f"-A {KUBE_SERVICES} -m comment --comment %s {mpf} -d %s --dport %s -j %s\n")
            n_svc_v += (f'"{name} external IP"', xip, sport, ext_chain)
        if not has_external:
            f_ext.append(
                f"-A {KUBE_EXTERNAL_SERVICES} -m comment --comment {ext_comment} {mp} -d {xip} --dport {port} -j {ext_target}\n"
            )
    for lbip in svc.load_balancer_ips:
        if has_eps:
            n_svc_f.append(f"-A {KUBE_SERVICES} -m comment --comment %s {mpf} -d %s --dport %s -j %s\n")
            n_svc_v += (f'"{name} loadbalancer IP"', lbip, sport, ext_chain)
    if not has_external:
        for lbip in svc.load_balancer_ips:
            f_ext.append(
                f"-A {KUBE_EXTERNAL_SERVICES} -m comment --comment {ext_comment} {mp} -d {lbip} --dport {port} -j {ext_target}\n"
            )

    if svc.node_port:
        if has_eps:
            n_np_f.append(f"-A {KUBE_NODEPORTS} -m comment --comment %s {mpf} --dport %s -j %s\n")
            n_np_v += (name, str(svc.node_port), ext_chain)
        if not has_external:
            f_ext.append(
                f"-A {KUBE_EXTERNAL_SERVICES} -m comment --comment {ext_comment} -m addrtype --dst-type LOCAL {mp} --dport {svc.node_port} -j {ext_target}\n"
            )
    if svc.health_check_node_port:
        f_np.append(
            f'-A {KUBE_NODEPORTS} -m comment --comment "{name} health check node port" -m tcp -p tcp --dport {svc.health_check_node_port} -j ACCEPT\n'
        )

    # Internal traffic: masquerade what does not come from a pod (or everything).
    internal_masq = _internal_masq(ctx, mpf) if has_internal else ""

    if uses_ext_chain:
        chains.append(ext_chain)
        if not ext_local:
            rf.append(f"-A %s -m comment --comment %s -j {KUBE_MARK_MASQ}\n")
            rv += (ext_chain, f'"masquerade traffic for {name} external destinations"')
        else:
            if ctx.cluster_cidr:
                rf.append(f"-A %s -m comment --comment %s -s {_esc(ctx.cluster_cidr)} -j %s\n")
                rv += (ext_chain, f'"pod traffic for {name} external destinations"', svc_chain)
            rf.append(f"-A %s -m comment --comment %s -m addrtype --src-type LOCAL -j {KUBE_MARK_MASQ}\n")
            rv += (ext_chain, f'"masquerade LOCAL traffic for {name} external destinations"')
            rf.append("-A %s -m comment --comment %s -m addrtype --src-type LOCAL -j %s\n")
            rv += (ext_chain, f'"route LOCAL traffic for {name} external destinations"', svc_chain)
        if has_external:
            rf.append("-A %s -j %s\n")
            rv += (ext_chain, ext_policy_chain)

    addr_of = {id(e): f"{e.ip}:{e.port}" for e in reachable}
    sep_of = {k: _sep(name, proto, a) for k, a in addr_of.items()}
    affinity = svc.session_affinity_timeout

    def to_endpoints(chain: str, targets: list[Endpoint]) -> None:
        if internal_masq and chain == internal_chain:
            rf.append(internal_masq)
            rv.extend((chain, ip_comment, cip, sport))
        if affinity:
            for e in targets:
                sep = sep_of[id(e)]
                if large:
                    rf.append(f"-A %s -m recent --name %s --rcheck --seconds {affinity} --reap -j %s\n")
                    rv.extend((chain, sep, sep))
                else:
                    rf.append(
                        f"-A %s -m comment --comment %s -m recent --name %s --rcheck --seconds {affinity} --reap -j %s\n"
                    )
                    rv.extend((chain, f'"{name} -> {addr_of[id(e)]}"', sep, sep))
        n = len(targets)
        for i, e in enumerate(targets):
            stat = f"-m statistic --mode random --probability {probability(n - i)} " if i < n - 1 else ""
            if large:
                rf.append(f"-A %s {stat}-j %s\n")
                rv.extend((chain, sep_of[id(e)]))
            else:
                rf.append(f"-A %s -m comment --comment %s {stat}-j %s\n")
                rv.extend((chain, f'"{name} -> {addr_of[id(e)]}"', sep_of[id(e)]))

    if uses_cluster_chain:
        chains.append(svc_chain)
        to_endpoints(svc_chain, cluster_eps)
    if uses_local_chain:
        chains.append(svl_chain)
        to_endpoints(svl_chain, local_eps)

    masq_f, dnat_f = _sep_formats(mpf, large, bool(affinity))
    for e in reachable:
        sep = sep_of[id(e)]
        chains.append(sep)
        rf.append(masq_f)
        rf.append(dnat_f)
        ip = e.ip
        if large:
            rv += (sep, ip, sep, sep, ip, str(e.port)) if affinity else (sep, ip, sep, ip, str(e.port))
        elif affinity:
            rv += (sep, name, ip, sep, name, sep, ip, str(e.port))
        else:
            rv += (sep, name, ip, sep, name, ip, str(e.port))

    n_svc = _shape(n_svc_f, n_svc_v)
    n_np = _shape(n_np_f, n_np_v) if n_np_f else _NO_SHAPE
    chain_rules = _shape(rf, rv)
    return ServiceRules(
        filter_services="".join(f_svc) if f_svc else "",
        filter_external="".join(f_ext) if f_ext else "",
        filter_nodeports="".join(f_np) if f_np else "",
        nat_services=n_svc[0] % n_svc[1],
        nat_nodeports=n_np[0] % n_np[1] if n_np_f else "",
        chains=tuple(chains),
        chain_rules=chain_rules[0] % chain_rules[1],
        has_endpoints=has_eps,
        nat_services_shape=n_svc,
        nat_nodeports_shape=n_np,
        chain_rules_shape=chain_rules,
    )


_NO_SHAPE: Shape = ("", ())


def _esc(text: str) -> str:
    """Literal text inside a %-format."""
    return text.replace("%", "%%")


def _shape(formats: list[str], fields: list[str]) -> Shape:
    return "".join(formats), tuple(fields)


@lru_cache(maxsize=64)
def _sep_formats(mpf: str, large: bool, affinity: bool) -> tuple[str, str]:
    """An endpoint chain's two rules (hairpin masquerade, DNAT) as formats."""
    head = "-A %s " if large else "-A %s -m comment --comment %s "
    rec = "-m recent --name %s --set " if affinity else ""
    return (
        f"{head}-s %s -j {KUBE_MARK_MASQ}\n",
        f"{head}{rec}{mpf} -j DNAT --to-destination %s:%s\n",
    )


def _static_nat(ctx: NodeContext) -> dict[str, str]:
    post = (
        f"-A {KUBE_POSTROUTING} -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN\n"
        f"-A {KUBE_POSTROUTING} -j MARK --xor-mark {MASQ_MARK}\n"
        f'-A {KUBE_POSTROUTING} -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully\n'
    )
    return {KUBE_POSTROUTING: post, KUBE_MARK_MASQ: f"-A {KUBE_MARK_MASQ} -j MARK --or-mark {MASQ_MARK}\n"}


def _nodeports_tail(ctx: NodeContext) -> str:
    if ctx.nodeport_ips is None:
        lo = "" if ctx.localhost_nodeports else " ! -d 127.0.0.0/8"
        return f"-A {KUBE_SERVICES} -m comment --comment {NODEPORTS_COMMENT} -m addrtype --dst-type LOCAL{lo} -j {KUBE_NODEPORTS}\n"
    out = []
    for ip in ctx.nodeport_ips:
        if ip.startswith("127.") and not ctx.localhost_nodeports:
            continue
        out.append(f"-A {KUBE_SERVICES} -m comment --comment {NODEPORTS_COMMENT} -d {ip} -j {KUBE_NODEPORTS}\n")
    return "".join(out)


def _forward(ctx: NodeContext) -> str:
    out = []
    if not ctx.conntrack_tcp_liberal:
        out.append(f"-A {KUBE_FORWARD} -m conntrack --ctstate INVALID -j DROP\n")
    out.append(
        f'-A {KUBE_FORWARD} -m comment --comment "kubernetes forwarding rules" -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT\n'
    )
    out.append(
        f'-A {KUBE_FORWARD} -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n'
    )
    return "".join(out)


@dataclass(frozen=True, slots=True)
class Ruleset:
    """The whole desired state: top-level chains' rules per table, and per service port."""

    filter_top: dict[str, str]  # chain -> rules (FILTER_CHAINS)
    nat_top: dict[str, str]  # chain -> rules (NAT_CHAINS)
    services: dict[ServicePortName, ServiceRules]  # sorted by name
    changed: frozenset[ServicePortName] = field(default_factory=frozenset)  # vs previous render
    # the previous render's rules of the changed service ports that had rules there
    previous: dict[ServicePortName, ServiceRules] = field(default_factory=dict)

    def nat_service_chains(self) -> set[str]:
        return {c for r in self.services.values() for c in r.chains}

    def top_pieces(self, table: str, chain: str) -> list[tuple[str, Shape | None]]:
        """A top-level chain's rules as the pieces they were joined from: each service
        port's fragment of the chain (with its ``Shape`` where the renderer has one), in
        order, then the static rest; the texts join to ``filter_top``/``nat_top``."""
        text = (self.filter_top if table == "filter" else self.nat_top)[chain]
        attr = _FRAGMENT_OF.get((table, chain))
        if attr is None:
            return [(text, None)]
        rules = self.services.values()
        frags = list(map(attrgetter(attr), rules))
        shape = _FRAGMENT_SHAPES.get(attr)
        shapes = list(map(attrgetter(shape), rules)) if shape else [None] * len(frags)
        pieces = list(zip(frags, shapes, strict=True))
        pieces.append((text[sum(map(len, frags)) :], None))
        return pieces

    def restore_input(
        self,
        only: Collection[ServicePortName] | None = None,
        stale_chains: Iterable[str] = (),
        skip_top: Collection[tuple[str, str]] = (),
    ) -> str:
        """Text for ``iptables-restore --noflush``: filter then nat, one COMMIT each.

        ``only``: write the service chains of these service ports only (a partial sync;
        chains not mentioned keep their rules). ``stale_chains``: nat chains to flush and
        delete. ``skip_top``: (table, chain) pairs whose rules are known to be unchanged.
        """
        out = []
        filter_chains = [c for c in FILTER_CHAINS if ("filter", c) not in skip_top]
        if filter_chains:  # nothing to write: leave the table alone (no commit at all)
            out.append("*filter\n")
            out.extend(f":{c} - [0:0]\n" for c in filter_chains)
            out.extend(self.filter_top[c] for c in filter_chains)
            out.append("COMMIT\n")
        out.append("*nat\n")
        for c in NAT_CHAINS:
            if ("nat", c) not in skip_top:
                out.append(f":{c} - [0:0]\n")
        if only is None:
            picked = list(self.services.values())
        else:
            picked = [self.services[s] for s in sorted(only, key=_spn_key) if s in self.services]
        for r in picked:
            for c in r.chains:
                out.append(f":{c} - [0:0]\n")
        stale = sorted(stale_chains)
        for c in stale:
            out.append(f":{c} - [0:0]\n")
        for c in NAT_CHAINS:
            if ("nat", c) not in skip_top:
                out.append(self.nat_top[c])
        for r in picked:
            out.append(r.chain_rules)
        for c in stale:
            out.append(f"-X {c}\n")
        out.append("COMMIT\n")
        return "".join(out)


def _spn_key(s: ServicePortName) -> tuple[str, str, str, str]:
    return (s.namespace, s.name, s.port, s.protocol)


class Renderer:
    """Memoising renderer: the same inputs always give the same ``Ruleset``.

    Each service port's rules are cached with the (service, endpoints, context, layout)
    they were rendered from. ``render`` without ``changed`` walks every service port and
    re-renders the ones whose inputs differ; with ``changed`` it looks at those service
    ports only and edits its state in place (sorted order by bisection, the endpoint total
    that picks the large-cluster layout, the joined top-level texts, re-joined only when a
    changed port's fragment of them differs). A new node context or layout, or a failed
    render, makes the next render walk everything again.
    """

    def __init__(self) -> None:
        self._cache: dict[
            ServicePortName, tuple[ServicePortInfo, tuple[Endpoint, ...], NodeContext, bool, ServiceRules]
        ] = {}
        self._order: list[ServicePortName] = []  # the cache's keys, sorted
        # The last render, complete: its context (None: no such render, or one that failed
        # half way: the next one walks everything), layout, endpoint total, rules in sorted
        # order, and top-level texts. The dicts were handed out in the last Ruleset: they
        # are copied before an edit, never changed in place.
        self._ctx: NodeContext | None = None
        self._large = False
        self._n_eps = 0
        self._out: dict[ServicePortName, ServiceRules] = {}
        self._joined: dict[str, str] = {}  # ServiceRules fragment attribute -> joined
        self._filter_top: dict[str, str] = {}
        self._nat_top: dict[str, str] = {}

    def render(
        self,
        services: Mapping[ServicePortName, ServicePortInfo],
        endpoints: Mapping[ServicePortName, tuple[Endpoint, ...]],
        ctx: NodeContext,
        changed: Iterable[ServicePortName] | None = None,
    ) -> Ruleset:
        """The ruleset of these maps; ``Ruleset.changed`` is relative to the last call.

        ``changed``: every service port whose entries in the maps may differ from the maps
        of this renderer's previous call (every other key maps to the same or equal
        entries there); only those are looked at. Without it every entry is compared.
        """
        # until this render is complete: a failed one makes the next walk everything
        last, self._ctx = self._ctx, None
        if changed is not None and last is not None and ctx == last:
            rs = self._render_changed(services, endpoints, ctx, changed)
            if rs is not None:
                return rs
        return self._render_all(services, endpoints, ctx, last is not None)

    def _render_all(
        self,
        services: Mapping[ServicePortName, ServicePortInfo],
        endpoints: Mapping[ServicePortName, tuple[Endpoint, ...]],
        ctx: NodeContext,
        valid: bool,
    ) -> Ruleset:
        """Every service port looked at (``valid``: the state is a complete last render's)."""
        # The endpoints map's keys are other (equal) objects than the services map's: each
        # lookup compares the two keys field by field, so it is done once per service port.
        eps_of = dict(zip(services, map(endpoints.get, services, repeat(())), strict=True))
        n_eps = sum(map(len, eps_of.values()))
        large = n_eps > LARGE_CLUSTER_ENDPOINTS
        if not valid or services.keys() != self._cache.keys():  # the last render's ports
            self._order = sorted(services, key=_spn_key)
        old = self._cache
        new: dict = {}
        changed: set[ServicePortName] = set()
        previous: dict[ServicePortName, ServiceRules] = {}
        out: dict[ServicePortName, ServiceRules] = {}
        for spn in self._order:
            svc = services[spn]
            eps = eps_of[spn]
            hit = old.get(spn)
            if (
                hit is not None
                and (hit[0] is svc or hit[0] == svc)
                and (hit[1] is eps or hit[1] == eps)
                and (hit[2] is ctx or hit[2] == ctx)
                and hit[3] == large
            ):
                rules = hit[4]
            else:
                rules = render_service(svc, eps, ctx, large)
                if hit is None:
                    changed.add(spn)
                elif hit[4] != rules:
                    changed.add(spn)
                    previous[spn] = hit[4]
            new[spn] = (svc, eps, ctx, large, rules)
            out[spn] = rules
        for s, hit in old.items():
            if s not in new:
                changed.add(s)
                previous[s] = hit[4]
        self._cache = new

        values = out.values()
        self._joined = {a: "".join(map(attrgetter(a), values)) for a in _FRAGMENTS}
        self._filter_top = {KUBE_FORWARD: _forward(ctx)}
        self._nat_top = _static_nat(ctx)
        for a in _FRAGMENTS:
            self._set_top(a, ctx)
        self._out, self._n_eps, self._large, self._ctx = out, n_eps, large, ctx
        return self._ruleset(changed, previous)

    def _render_changed(
        self,
        services: Mapping[ServicePortName, ServicePortInfo],
        endpoints: Mapping[ServicePortName, tuple[Endpoint, ...]],
        ctx: NodeContext,
        changed: Iterable[ServicePortName],
    ) -> Ruleset | None:
        """``_render_all``'s result when only ``changed`` may differ since the last render
        (same context; None: the layout changes, render everything; the state is as the
        last render left it)."""
        cache = self._cache
        n_eps = self._n_eps
        todo: list[tuple[ServicePortName, ServicePortInfo | None, tuple[Endpoint, ...], tuple | None]] = []
        for spn in set(changed):
            hit = cache.get(spn)
            svc = services.get(spn)
            if svc is None:
                if hit is not None:  # removed
                    n_eps -= len(hit[1])
                    todo.append((spn, None, (), hit))
                continue
            eps = endpoints.get(spn, ())
            if hit is not None:
                if (hit[0] is svc or hit[0] == svc) and (hit[1] is eps or hit[1] == eps):
                    continue  # every cached entry has this render's context and layout
                n_eps -= len(hit[1])
            n_eps += len(eps)
            todo.append((spn, svc, eps, hit))
        large = n_eps > LARGE_CLUSTER_ENDPOINTS
        if large != self._large:  # every service port's rules change layout
            return None
        rendered = [
            (spn, svc, eps, hit, None if svc is None else render_service(svc, eps, ctx, large))
            for spn, svc, eps, hit in todo
        ]

        order = self._order  # edited in place from here on
        out = self._out.copy()  # the last Ruleset's: not edited
        appended_only = True  # ``out`` is still in sorted order
        changed_now: set[ServicePortName] = set()
        previous: dict[ServicePortName, ServiceRules] = {}
        edited: set[str] = set()  # fragment attributes whose joined text changes
        for spn, svc, eps, hit, rules in rendered:
            old = None if hit is None else hit[4]
            if rules is None:
                del cache[spn], out[spn]
                del order[self._index(spn)]
            elif old is None:
                cache[spn] = (svc, eps, ctx, large, rules)
                i = bisect_left(order, _spn_key(spn), key=_spn_key)
                order.insert(i, spn)
                out[spn] = rules  # at the end of the dict: in order if last in ``order``
                appended_only = appended_only and i == len(order) - 1
            elif old == rules:
                cache[spn] = (svc, eps, ctx, large, old)
                continue
            else:
                cache[spn] = (svc, eps, ctx, large, rules)
                out[spn] = rules
            changed_now.add(spn)
            if old is not None:
                previous[spn] = old
            for a in _FRAGMENTS:
                if getattr(old, a, "") != getattr(rules, a, ""):
                    edited.add(a)
        if not appended_only:
            out = dict(zip(order, map(out.__getitem__, order), strict=True))
        self._out = out
        if edited:
            self._joined = joined = dict(self._joined)
            self._filter_top, self._nat_top = dict(self._filter_top), dict(self._nat_top)
            values = out.values()
            for a in edited:
                joined[a] = "".join(map(attrgetter(a), values))
                self._set_top(a, ctx)
        self._n_eps, self._ctx = n_eps, ctx
        return self._ruleset(changed_now, previous)

    def _index(self, spn: ServicePortName) -> int:
        """Where a cached service port is in ``_order``."""
        i = bisect_left(self._order, _spn_key(spn), key=_spn_key)
        if i == len(self._order) or self._order[i] != spn:
            raise RuntimeError(f"iptables renderer: {spn} missing from the sorted order")
        return i

    def _set_top(self, attr: str, ctx: NodeContext) -> None:
        """The top-level text made of the fragment ``attr`` (joined in ``_joined``)."""
        table, chain = _FRAGMENTS[attr]
        text = self._joined[attr]
        if table == "filter":
            self._filter_top[chain] = text
        elif chain == KUBE_SERVICES:
            self._nat_top[chain] = text + _nodeports_tail(ctx)
        else:
            self._nat_top[chain] = text

    def _ruleset(
        self, changed: set[ServicePortName], previous: dict[ServicePortName, ServiceRules]
    ) -> Ruleset:
        filter_top = {c: self._filter_top[c] for c in FILTER_CHAINS}
        nat_top = {c: self._nat_top[c] for c in NAT_CHAINS}
        return Ruleset(filter_top, nat_top, self._out, frozenset(changed), previous)


# ServiceRules attribute -> the top-level chain it is a fragment of (joined in sorted order)
_FRAGMENTS: dict[str, tuple[str, str]] = {
    "filter_services": ("filter", KUBE_SERVICES),
    "filter_external": ("filter", KUBE_EXTERNAL_SERVICES),
    "filter_nodeports": ("filter", KUBE_NODEPORTS),
    "nat_services": ("nat", KUBE_SERVICES),
    "nat_nodeports": ("nat", KUBE_NODEPORTS),
}
_FRAGMENT_OF = {v: k for k, v in _FRAGMENTS.items()}
# ... and the ServiceRules attribute holding its Shape, where the renderer makes one
_FRAGMENT_SHAPES = {"nat_services": "nat_services_shape", "nat_nodeports": "nat_nodeports_shape"}


def render(
    services: Mapping[ServicePortName, ServicePortInfo],
    endpoints: Mapping[ServicePortName, tuple[Endpoint, ...]],
    ctx: NodeContext,
) -> str:
    """The full iptables-restore input for these services and endpoints on this node."""
    return Renderer().render(services, endpoints, ctx).restore_input()
