"""The pure renderer of kube-proxy's nftables mode: two maps in, the desired table out.

``Renderer.render(services, endpoints, ctx)`` turns the service-port map and the endpoints
map (keyed by ``ServicePortName``, built by ``kubecommon.model``) plus the node's context
into a ``TableState``: the table's fixed skeleton (``BaseState``: base chains, top-level
chains, maps and sets), one ``ServiceFragment`` per service port (its elements in the
maps; in kube-proxy's layout also its chains, rules and affinity sets), the shared chains
in use and the hairpin pairs. ``diff.py`` turns two states into ``nft -f`` text. No I/O.

Default layout ("maps", see CHOICES), table ``ip kube-proxy``:

    nat-prerouting / nat-output  -> services:
        ip daddr . meta l4proto . th dport vmap @service-ips      (ClusterIP, external, LB IPs)
        fib daddr type local ... meta l4proto . th dport vmap @service-nodeports
    @service-ips / @service-nodeports -> shared chains named by protocol and endpoint count:
        clusterip-tcp-2: [masquerade off-cluster clients] dnat via @service-endpoints-tcp
        external-[nodeport-]tcp-2: masquerade, dnat           (Cluster external policy)
        external-local-[nodeport-]tcp-2-1: pods/node -> pick-…-2, others -> local endpoints
    @service-endpoints-tcp: "10.96.0.10 . 80 . <numgen random mod N>" : "10.244.1.2 . 8080"
    nat-postrouting -> masquerading: hairpin pairs (ip saddr . ip daddr @hairpin-endpoints)
        and what mark-for-masquerade marked (0x4000) are masqueraded
    filter-input/forward/output (ct state new) -> endpoints-check:
        vmap @no-endpoint-services / @no-endpoint-nodeports   (goto reject-chain, or drop)
    filter-forward -> forward: ct state invalid drop

kube-proxy's layout ("rules"/"vmap", and services with session affinity in any case): the
verdict maps point at per-service chains service-/local-/external-<h>-ns/name/proto/port,
which pick endpoint-<h>-…__ip/port chains (hairpin mark, [update @affinity-…], dnat).

Memoisation: each service port's fragment is cached keyed by (service, endpoints, context),
so after one endpoint change only that service port is rendered again, and unchanged
fragments are the *same objects* as before, which is what makes the diff O(changed).
"""

from __future__ import annotations

import base64
import gc
import hashlib
import itertools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import NamedTuple

from kubecommon.model import Endpoint, ServicePortInfo, ServicePortName

from ..iptables.render import categorize

FAMILY = "ip"
TABLE = "kube-proxy"
TABLE_COMMENT = "rules for kube-proxy"

# Top-level chains, sets and maps (constants: never spell a name twice).
SERVICES = "services"
MASQUERADING = "masquerading"
MARK_MASQ = "mark-for-masquerade"
ENDPOINTS_CHECK = "endpoints-check"
REJECT_CHAIN = "reject-chain"
FORWARD = "forward"
SERVICE_IPS = "service-ips"
SERVICE_NODEPORTS = "service-nodeports"
NO_ENDPOINT_SERVICES = "no-endpoint-services"
NO_ENDPOINT_NODEPORTS = "no-endpoint-nodeports"
NODEPORT_IPS = "nodeport-ips"

CLUSTER_PREFIX = "service-"
LOCAL_PREFIX = "local-"
EXTERNAL_PREFIX = "external-"
ENDPOINT_PREFIX = "endpoint-"
AFFINITY_PREFIX = "affinity-"

# How a service port picks an endpoint.
# "maps" (default): no per-service chain at all. The verdict maps send a service address to
# one of a few *shared* chains, one per endpoint count N ("clusterip-2", "external-3", ...),
# whose one DNAT rule looks the endpoint up in a named data map keyed by the address and
# ``numgen random mod N``:  ``dnat ip to ip daddr . meta l4proto . th dport . numgen random
# mod 2 map @service-endpoints``. The hairpin case (a pod reaching itself) is masqueraded in
# nat-postrouting from one set of "ip . ip" pairs. A table of 10,000 services then holds
# ~20 chains instead of ~30,000, and that matters beyond the full load: nft 1.0.6 dumps
# every chain of the ruleset into its cache before any "add rule" or "add element", so a
# one-line change cost ~300 ms at 10,000 services; now it is a few ms. Services with
# session affinity keep the per-service layout below (their timed sets are per endpoint).
# "rules": kube-proxy's chains (service-/local-/external-/endpoint- per service port) with
# ``numgen random mod (N-i) == 0 goto endpoint-i`` for i < N-1, then ``goto`` the last one
# -- the same uniform choice (1/(N-i) of what is left, as iptables' statistic match does).
# "vmap": kube-proxy's own rule, ``numgen random mod N vmap { 0 : goto ..., ... }``, whose
# anonymous map costs the kernel a set per service; measured here (kernel 6.18, nft 1.0.6)
# a full load of 10,000 services then takes ~100 s (quadratic in the number of anonymous
# sets) against ~3 s for "rules".
CHOICES = ("maps", "rules", "vmap")

MASQ_MARK = "0x4000"  # bit 14, kube-proxy's default masquerade bit
NAME_MAX = 256 - 16  # nft names are at most 256 bytes; our prefixes are shorter than 16

IP_KEY_TYPE = "ipv4_addr . inet_proto . inet_service : verdict"
PORT_KEY_TYPE = "inet_proto . inet_service : verdict"
MAPS: tuple[tuple[str, str, str], ...] = (
    (SERVICE_IPS, IP_KEY_TYPE, "ClusterIP, ExternalIP and LoadBalancer IP traffic"),
    (SERVICE_NODEPORTS, PORT_KEY_TYPE, "NodePort traffic"),
    (
        NO_ENDPOINT_SERVICES,
        IP_KEY_TYPE,
        "vmap to drop or reject packets to services with no endpoints",
    ),
    (
        NO_ENDPOINT_NODEPORTS,
        PORT_KEY_TYPE,
        "vmap to drop or reject packets to service nodeports with no endpoints",
    ),
)
MAP_NAMES = tuple(m[0] for m in MAPS)

# "maps" layout: endpoint maps (service address . numgen index -> endpoint), the shared
# chains that use them, and the hairpin set.
SERVICE_ENDPOINTS = "service-endpoints"
LOCAL_ENDPOINTS = "local-endpoints"
NODEPORT_ENDPOINTS = "nodeport-endpoints"
LOCAL_NODEPORT_ENDPOINTS = "local-nodeport-endpoints"
HAIRPIN = "hairpin-endpoints"
PROTOCOLS = ("tcp", "udp", "sctp")
# One map per protocol: the map's value type names the protocol's port, and nft adds the
# matching "meta l4proto" dependency to the DNAT rule that uses it. (A protocol-neutral
# "th dport" value cannot be read back by nft 1.0.6 -- "conflicting protocols specified:
# ip vs. th" -- so no later transaction could add a rule using such a map.)
_MAP_KINDS: tuple[tuple[str, str, str], ...] = (
    (SERVICE_ENDPOINTS, "addr", "endpoints of ClusterIP, ExternalIP and LoadBalancer IP"),
    (LOCAL_ENDPOINTS, "addr", "local endpoints of ExternalIP and LoadBalancer IP"),
    (NODEPORT_ENDPOINTS, "port", "endpoints of NodePorts"),
    (LOCAL_NODEPORT_ENDPOINTS, "port", "local endpoints of NodePorts"),
)


def map_key(kind: str, proto: str) -> str:
    """The lookup key's expressions: destination (address .) port."""
    return f"ip daddr . {proto} dport" if kind == "addr" else f"{proto} dport"


# (map name, its "typeof" definition, comment) for every endpoint map
DNAT_MAPS: tuple[tuple[str, str, str], ...] = tuple(
    (
        f"{name}-{p}",
        f"typeof {map_key(kind, p)} . numgen random mod 1 : ip daddr . {p} dport",
        f"{comment} ({p})",
    )
    for name, kind, comment in _MAP_KINDS
    for p in PROTOCOLS
)


@dataclass(frozen=True, slots=True)
class BaseChain:
    name: str
    type: str  # filter | nat
    hook: str
    priority: int  # dstnat = -100, srcnat = 100; filtering runs before DNAT (-110)


BASE_CHAINS: tuple[BaseChain, ...] = (
    BaseChain("filter-input", "filter", "input", -110),
    BaseChain("filter-forward", "filter", "forward", -110),
    BaseChain("filter-output", "filter", "output", -110),
    BaseChain("nat-prerouting", "nat", "prerouting", -100),
    BaseChain("nat-output", "nat", "output", -100),
    BaseChain("nat-postrouting", "nat", "postrouting", 100),
)
TOP_CHAINS = (SERVICES, MASQUERADING, MARK_MASQ, ENDPOINTS_CHECK, REJECT_CHAIN, FORWARD)


# ---------------------------------------------------------------------------------------
# Names: kube-proxy's nftables chain names, "<prefix><HASH8>-ns/name/proto/port[__ip/port]".


@lru_cache(maxsize=1 << 17)
def hash_and_truncate(name: str) -> str:
    """``name`` prefixed with 8 base32 characters of its sha256, cut to fit nft's limit."""
    h = base64.b32encode(hashlib.sha256(name.encode()).digest())[:8].decode()
    out = f"{h}-{name}"
    return out if len(out) <= NAME_MAX else out[: NAME_MAX - 3] + "..."


def chain_base(spn: ServicePortName) -> str:
    """e.g. ``ULMVA6XW-ns1/svc1/tcp/p80``."""
    return hash_and_truncate(f"{spn.namespace}/{spn.name}/{spn.protocol.lower()}/{spn.port}")


def endpoint_base(spn: ServicePortName, ip: str, port: int) -> str:
    """e.g. ``5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80``."""
    proto = spn.protocol.lower()
    return hash_and_truncate(f"{spn.namespace}/{spn.name}/{proto}/{spn.port}__{ip}/{port}")


def cluster_chain(spn: ServicePortName) -> str:
    return CLUSTER_PREFIX + chain_base(spn)


def local_chain(spn: ServicePortName) -> str:
    return LOCAL_PREFIX + chain_base(spn)


def external_chain(spn: ServicePortName) -> str:
    return EXTERNAL_PREFIX + chain_base(spn)


def endpoint_chain(spn: ServicePortName, ip: str, port: int) -> str:
    return ENDPOINT_PREFIX + endpoint_base(spn, ip, port)


def affinity_set(spn: ServicePortName, ip: str, port: int) -> str:
    return AFFINITY_PREFIX + endpoint_base(spn, ip, port)


def is_service_chain(name: str) -> bool:
    """Per-service chains always contain a "/"; the fixed ones never do."""
    return "/" in name


# ---------------------------------------------------------------------------------------
# Inputs and outputs.


@dataclass(frozen=True, slots=True)
class NodeContext:
    """What the rules need to know about the node they are rendered for."""

    node_name: str = ""
    cluster_cidr: str = ""  # "" = no local-traffic detector (no masquerade of off-cluster traffic)
    masquerade_all: bool = False
    nodeport_ips: tuple[str, ...] | None = None  # None = every local address (fib type local)
    localhost_nodeports: bool = False  # NodePorts also on 127.0.0.0/8 (needs route_localnet)
    conntrack_tcp_liberal: bool = False  # nf_conntrack_tcp_be_liberal set: no INVALID drop
    endpoint_choice: str = "maps"  # "maps" | "rules" | "vmap" (see CHOICES)


class Element(NamedTuple):
    """One element of a map (verdict map or endpoint map).

    NamedTuple, like ``ServiceFragment``, rather than a frozen dataclass: a full render
    makes ~50,000 of them and a frozen dataclass's ``__init__`` (one ``object.__setattr__``
    per field) costs ~3x a tuple's.
    """

    map: str
    key: str  # "10.96.0.10 . udp . 53" or "tcp . 30080"
    value: str  # "goto service-...", "goto reject-chain", "drop"
    comment: str = ""

    def text(self) -> str:
        c = f' comment "{self.comment}"' if self.comment else ""
        return f"{self.key}{c} : {self.value}"


class ServiceFragment(NamedTuple):
    """One service port's share of the table."""

    chains: tuple[tuple[str, tuple[str, ...]], ...]  # (chain, rules) in creation order
    sets: tuple[tuple[str, int], ...]  # affinity sets: (name, timeout seconds)
    elements: tuple[Element, ...]
    has_endpoints: bool
    shared: tuple[tuple[str, tuple[str, ...]], ...] = ()  # shared chains it sends packets to
    hairpin: tuple[str, ...] = ()  # endpoint IPs whose "ip . ip" pair is in the hairpin set


@dataclass(frozen=True, slots=True)
class BaseState:
    """The fixed skeleton: base chains, top-level chains and their rules, maps, sets."""

    chains: tuple[tuple[str, tuple[str, ...]], ...]  # top-level chains with their rules
    nodeport_ips: tuple[str, ...] | None  # the nodeport-ips set (None: no set)


@dataclass(frozen=True, slots=True)
class TableState:
    """The whole desired table."""

    base: BaseState
    services: Mapping[ServicePortName, ServiceFragment]
    changed: frozenset[ServicePortName] = field(default_factory=frozenset)  # vs previous render
    shared: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # chain -> rules
    hairpin: Mapping[str, int] = field(default_factory=dict)  # endpoint IP -> users
    # Which render this is, which one ``changed`` is relative to (0: none), and the service
    # ports whose inputs (service or endpoints object) differ from that render's.
    generation: int = 0
    since: int = 0
    inputs_changed: frozenset[ServicePortName] = field(default_factory=frozenset)

    def chain_names(self) -> set[str]:
        out = {c for c, _ in self.base.chains} | {b.name for b in BASE_CHAINS}
        out.update(self.shared)
        for f in self.services.values():
            out.update(c for c, _ in f.chains)
        return out

    def set_names(self) -> set[str]:
        out = {NODEPORT_IPS} if self.base.nodeport_ips is not None else set()
        out.update(m for m, _, _ in DNAT_MAPS)
        out.add(HAIRPIN)
        for f in self.services.values():
            out.update(s for s, _ in f.sets)
        return out


# ---------------------------------------------------------------------------------------
# The skeleton.


def render_base(ctx: NodeContext) -> BaseState:
    no_lo = "" if ctx.localhost_nodeports else " ip daddr != 127.0.0.0/8"
    if ctx.nodeport_ips is None:
        local_dst = f"fib daddr type local{no_lo}"
    else:
        local_dst = f"ip daddr @{NODEPORT_IPS}"
    new_check = f"ct state new jump {ENDPOINTS_CHECK}"
    chains: list[tuple[str, tuple[str, ...]]] = [
        ("filter-input", (new_check,)),
        ("filter-forward", (new_check, f"jump {FORWARD}")),
        ("filter-output", (new_check,)),
        ("nat-prerouting", (f"jump {SERVICES}",)),
        ("nat-output", (f"jump {SERVICES}",)),
        ("nat-postrouting", (f"jump {MASQUERADING}",)),
        (
            SERVICES,
            (
                f"ip daddr . meta l4proto . th dport vmap @{SERVICE_IPS}",
                f"{local_dst} meta l4proto . th dport vmap @{SERVICE_NODEPORTS}",
            ),
        ),
        (
            MASQUERADING,
            (
                f"ct status dnat ip saddr . ip daddr @{HAIRPIN} mark set mark or {MASQ_MARK}",
                f"mark and {MASQ_MARK} == 0 return",
                f"mark set mark xor {MASQ_MARK}",
                "masquerade fully-random",
            ),
        ),
        (MARK_MASQ, (f"mark set mark or {MASQ_MARK}",)),
        (
            ENDPOINTS_CHECK,
            (
                f"ip daddr . meta l4proto . th dport vmap @{NO_ENDPOINT_SERVICES}",
                f"{local_dst} meta l4proto . th dport vmap @{NO_ENDPOINT_NODEPORTS}",
            ),
        ),
        (REJECT_CHAIN, ("reject",)),
        (FORWARD, () if ctx.conntrack_tcp_liberal else ("ct state invalid drop",)),
    ]
    ips = None
    if ctx.nodeport_ips is not None:
        ips = tuple(
            sorted(
                i for i in ctx.nodeport_ips if ctx.localhost_nodeports or not i.startswith("127.")
            )
        )
    return BaseState(tuple(chains), ips)


# ---------------------------------------------------------------------------------------
# The "maps" layout's shared chains: their names say everything their rules depend on
# (besides the node context), so a name is rendered into the same rules every time.

ADDR, PORT = "addr", "port"  # keyed by destination address . port / by port (NodePorts)
# name templates: (protocol, endpoint count[, local endpoint count])
CLUSTERIP_CHAIN = "clusterip-{}-{}"  # ClusterIP traffic: masquerade off-cluster clients, DNAT
PICK_CHAIN = {ADDR: "pick-{}-{}", PORT: "pick-nodeport-{}-{}"}  # DNAT only
EXT_CHAIN = {ADDR: "external-{}-{}", PORT: "external-nodeport-{}-{}"}  # cluster policy
EXT_LOCAL_CHAIN = {ADDR: "external-local-{}-{}-{}", PORT: "external-local-nodeport-{}-{}-{}"}
ENDPOINT_MAPS = {
    ADDR: (SERVICE_ENDPOINTS, LOCAL_ENDPOINTS),
    PORT: (NODEPORT_ENDPOINTS, LOCAL_NODEPORT_ENDPOINTS),
}


def _ext_chain(kind: str, proto: str, n: tuple[int, ...]) -> str:
    t = EXT_CHAIN[kind] if len(n) == 1 else EXT_LOCAL_CHAIN[kind]
    return t.format(proto, *n)


def _dnat(kind: str, proto: str, n: int, local: bool = False) -> str:
    m = ENDPOINT_MAPS[kind][1 if local else 0]
    return f"dnat ip to {map_key(kind, proto)} . numgen random mod {n} map @{m}-{proto}"


def _endpoint_elements(m: str, key: str, eps: list[Endpoint]) -> list[Element]:
    """Map ``m``'s elements "<key> . <index> : <endpoint ip> . <port>" for one address."""
    return [Element(m, f"{key} . {i}", f"{e.ip} . {e.port}") for i, e in enumerate(eps)]


_SHARED = re.compile(
    r"^(clusterip|pick|pick-nodeport|external|external-nodeport"
    r"|external-local|external-local-nodeport)-(tcp|udp|sctp)-(\d+)(?:-(\d+))?$"
)


@lru_cache(maxsize=4096)
def _shared_rules(name: str, ctx: NodeContext) -> tuple[str, ...]:
    """The rules of shared chain ``name`` (see CHOICES): a pure function of name and context."""
    m = _SHARED.match(name)
    if m is None:
        raise ValueError(f"not a shared chain: {name}")
    what, proto, n = m.group(1), m.group(2), int(m.group(3))
    kind = PORT if what.endswith("nodeport") else ADDR
    dnat = (_dnat(kind, proto, n),) if n else ()
    if what == "clusterip":
        if ctx.masquerade_all:
            return (f"jump {MARK_MASQ}", *dnat)
        if ctx.cluster_cidr:
            return (f"ip saddr != {ctx.cluster_cidr} jump {MARK_MASQ}", *dnat)
        return dnat
    if what.startswith("pick"):
        return dnat
    if m.group(4) is None:  # external, cluster policy: masquerade, any endpoint
        return (f"jump {MARK_MASQ}", *dnat)
    # external, local policy: pods and the node itself still reach every endpoint
    n_local = int(m.group(4))
    short = PICK_CHAIN[kind].format(proto, n)
    rules = []
    if ctx.cluster_cidr and n:
        rules.append(
            f'ip saddr {ctx.cluster_cidr} goto {short} comment "short-circuit pod traffic"'
        )
    rules.append(f'fib saddr type local jump {MARK_MASQ} comment "masquerade local traffic"')
    if n:
        rules.append(f'fib saddr type local goto {short} comment "short-circuit local traffic"')
    if n_local:
        rules.append(_dnat(kind, proto, n_local, local=True))
    return tuple(rules)


# ---------------------------------------------------------------------------------------
# One service port (kube-proxy's loop body in syncProxyRules).


def _sorted_eps(eps: Iterable[Endpoint]) -> list[Endpoint]:
    eps = list(eps)
    return eps if len(eps) < 2 else sorted(eps, key=lambda e: f"{e.ip}:{e.port}")


def _render_plain_cluster_ip(
    svc: ServicePortInfo, eps: Iterable[Endpoint], ctx: NodeContext
) -> ServiceFragment:
    """``render_service`` for the common shape, in a third of the time: a ClusterIP only
    (no NodePort, external or LB IP), Cluster internal policy, no affinity, "maps" layout.
    Same result as the general path (a unit test compares them)."""
    proto = svc.protocol.lower()
    cluster, _, _, has_eps = categorize(svc, _sorted_eps(eps), ctx.node_name)
    cip_key = f"{svc.cluster_ip} . {proto} . {svc.port}"
    if not has_eps:
        el = Element(NO_ENDPOINT_SERVICES, cip_key, f"goto {REJECT_CHAIN}", str(svc.name))
        return ServiceFragment((), (), (el,), False)
    chain = CLUSTERIP_CHAIN.format(proto, len(cluster))
    m = f"{SERVICE_ENDPOINTS}-{proto}"
    key = f"{svc.cluster_ip} . {svc.port}"
    elements = [Element(SERVICE_IPS, cip_key, f"goto {chain}")]
    elements += [Element(m, f"{key} . {i}", f"{e.ip} . {e.port}") for i, e in enumerate(cluster)]
    return ServiceFragment(
        (),
        (),
        tuple(elements),
        True,
        ((chain, _shared_rules(chain, ctx)),),
        tuple(sorted({e.ip for e in cluster})),
    )


def render_service(
    svc: ServicePortInfo, eps: Iterable[Endpoint], ctx: NodeContext
) -> ServiceFragment:
    if (
        ctx.endpoint_choice == "maps"
        and not svc.session_affinity_timeout
        and not svc.node_port
        and not svc.external_ips
        and not svc.load_balancer_ips
        and not svc.internal_local
    ):
        return _render_plain_cluster_ip(svc, eps, ctx)
    return _render_service(svc, eps, ctx)


def _render_service(
    svc: ServicePortInfo, eps: Iterable[Endpoint], ctx: NodeContext
) -> ServiceFragment:
    spn = svc.name
    name = str(spn)
    proto = svc.protocol.lower()
    maps = ctx.endpoint_choice == "maps" and not svc.session_affinity_timeout
    # per-service chain names (a sha256 each): only kube-proxy's layout needs them
    base = "" if maps else chain_base(spn)
    svc_chain, loc_chain, ext_chain = (
        CLUSTER_PREFIX + base,
        LOCAL_PREFIX + base,
        EXTERNAL_PREFIX + base,
    )
    cluster_eps, local_eps, reachable, has_eps = categorize(svc, _sorted_eps(eps), ctx.node_name)

    externally = bool(svc.node_port or svc.external_ips or svc.load_balancer_ips)
    ext_local = svc.external_local and externally
    uses_cluster_chain = bool(cluster_eps) and (
        not svc.internal_local or (externally and not ext_local)
    )
    uses_local_chain = bool(local_eps) and (svc.internal_local or ext_local)

    internal_chain, has_internal = svc_chain, has_eps
    if svc.internal_local:
        internal_chain, has_internal = loc_chain, bool(local_eps)
    ext_policy_chain, has_external = svc_chain, has_eps
    if ext_local:
        ext_policy_chain, has_external = loc_chain, bool(local_eps)
    uses_ext_chain = has_eps and externally

    if not has_eps:
        int_verdict = ext_verdict = f"goto {REJECT_CHAIN}"
    else:
        int_verdict = "" if has_internal else "drop"
        ext_verdict = "" if has_external else "drop"

    if maps:
        # The targets of the verdict maps are shared chains named by endpoint counts.
        int_eps = local_eps if svc.internal_local else cluster_eps
        if ext_local:
            if uses_cluster_chain:
                short_eps = cluster_eps
            elif svc.internal_local and uses_local_chain:
                short_eps = local_eps
            else:
                short_eps = []
            ext_n = (len(short_eps), len(local_eps) if uses_local_chain else 0)
        else:
            short_eps = cluster_eps if uses_cluster_chain else []
            ext_n = (len(short_eps),)
        internal_chain = CLUSTERIP_CHAIN.format(proto, len(int_eps))
        ext_chain = _ext_chain(ADDR, proto, ext_n)
        np_chain = _ext_chain(PORT, proto, ext_n)
    else:
        np_chain = ext_chain

    elements: list[Element] = []
    cip_key = f"{svc.cluster_ip} . {proto} . {svc.port}"
    if has_internal:
        elements.append(Element(SERVICE_IPS, cip_key, f"goto {internal_chain}"))
    else:
        elements.append(Element(NO_ENDPOINT_SERVICES, cip_key, int_verdict, name))
    for xip in (*svc.external_ips, *svc.load_balancer_ips):
        key = f"{xip} . {proto} . {svc.port}"
        if has_eps:
            elements.append(Element(SERVICE_IPS, key, f"goto {ext_chain}"))
        if not has_external:
            elements.append(Element(NO_ENDPOINT_SERVICES, key, ext_verdict, name))
    if svc.node_port:
        key = f"{proto} . {svc.node_port}"
        if has_eps:
            elements.append(Element(SERVICE_NODEPORTS, key, f"goto {np_chain}"))
        if not has_external:
            elements.append(Element(NO_ENDPOINT_NODEPORTS, key, ext_verdict, name))

    if maps:
        shared: dict[str, tuple[str, ...]] = {}
        if has_internal:
            shared[internal_chain] = _shared_rules(internal_chain, ctx)
            m = f"{SERVICE_ENDPOINTS}-{proto}"
            elements.extend(_endpoint_elements(m, f"{svc.cluster_ip} . {svc.port}", int_eps))
        if uses_ext_chain:
            addr_keys = [f"{x} . {svc.port}" for x in (*svc.external_ips, *svc.load_balancer_ips)]
            for kind, keys, chain in (
                (ADDR, addr_keys, ext_chain),
                (PORT, [str(svc.node_port)] if svc.node_port else [], np_chain),
            ):
                if not keys:
                    continue
                shared[chain] = _shared_rules(chain, ctx)
                if short_eps:
                    pick = PICK_CHAIN[kind].format(proto, len(short_eps))
                    shared[pick] = _shared_rules(pick, ctx)
                cluster_map, local_map = (f"{m}-{proto}" for m in ENDPOINT_MAPS[kind])
                for k in keys:
                    elements.extend(_endpoint_elements(cluster_map, k, short_eps))
                    if ext_local and uses_local_chain:
                        elements.extend(_endpoint_elements(local_map, k, local_eps))
        return ServiceFragment(
            chains=(),
            sets=(),
            elements=tuple(elements),
            has_endpoints=has_eps,
            shared=tuple(sorted(shared.items())),
            hairpin=tuple(sorted({e.ip for e in reachable})),
        )

    chains: dict[str, list[str]] = {}
    if uses_cluster_chain:
        chains[svc_chain] = []
    if uses_local_chain:
        chains[loc_chain] = []
    if has_internal and internal_chain in chains:
        match = f"ip daddr {svc.cluster_ip} {proto} dport {svc.port}"
        if ctx.masquerade_all:
            chains[internal_chain].append(f"{match} jump {MARK_MASQ}")
        elif ctx.cluster_cidr:
            chains[internal_chain].append(
                f"{match} ip saddr != {ctx.cluster_cidr} jump {MARK_MASQ}"
            )

    if uses_ext_chain:
        rules: list[str] = []
        if not ext_local:
            rules.append(f"jump {MARK_MASQ}")
        else:
            # Pod and host traffic to an external destination is not subject to the
            # external policy: it goes to every endpoint (kube-proxy's short-circuit).
            short = (
                svc_chain
                if uses_cluster_chain
                else (internal_chain if internal_chain in chains else "")
            )
            if ctx.cluster_cidr and short:
                rules.append(
                    f'ip saddr {ctx.cluster_cidr} goto {short} comment "short-circuit pod traffic"'
                )
            rules.append(
                f'fib saddr type local jump {MARK_MASQ} comment "masquerade local traffic"'
            )
            if short:
                rules.append(
                    f'fib saddr type local goto {short} comment "short-circuit local traffic"'
                )
        if has_external and ext_policy_chain in chains:
            rules.append(f"goto {ext_policy_chain}")
        chains[ext_chain] = rules

    affinity = svc.session_affinity_timeout
    ep_names = {(e.ip, e.port): endpoint_base(spn, e.ip, e.port) for e in reachable}

    def to_endpoints(chain: str, targets: list[Endpoint]) -> None:
        rules = chains[chain]
        if affinity:
            for e in targets:
                b = ep_names[(e.ip, e.port)]
                rules.append(f"ip saddr @{AFFINITY_PREFIX}{b} goto {ENDPOINT_PREFIX}{b}")
        names = [ENDPOINT_PREFIX + ep_names[(e.ip, e.port)] for e in targets]
        n = len(names)
        if ctx.endpoint_choice == "vmap":
            vmap = ", ".join(f"{i} : goto {c}" for i, c in enumerate(names))
            rules.append(f"numgen random mod {n} vmap {{ {vmap} }}")
        else:
            rules.extend(
                f"numgen random mod {n - i} == 0 goto {c}" for i, c in enumerate(names[:-1])
            )
            rules.append(f"goto {names[-1]}")

    if uses_cluster_chain:
        to_endpoints(svc_chain, cluster_eps)
    if uses_local_chain:
        to_endpoints(loc_chain, local_eps)

    sets: list[tuple[str, int]] = []
    ep_chains: list[tuple[str, tuple[str, ...]]] = []
    seen: set[str] = set()
    for e in reachable:
        b = ep_names[(e.ip, e.port)]
        if b in seen:
            continue
        seen.add(b)
        rules = [f"ip saddr {e.ip} jump {MARK_MASQ}"]
        if affinity:
            sets.append((AFFINITY_PREFIX + b, affinity))
            rules.append(f"update @{AFFINITY_PREFIX}{b} {{ ip saddr }}")
        rules.append(f"meta l4proto {proto} dnat to {e.ip}:{e.port}")
        ep_chains.append((ENDPOINT_PREFIX + b, tuple(rules)))

    return ServiceFragment(
        chains=tuple(ep_chains) + tuple((c, tuple(r)) for c, r in chains.items()),
        sets=tuple(sets),
        elements=tuple(elements),
        has_endpoints=has_eps,
    )


def _spn_key(s: ServicePortName) -> tuple[str, str, str, str]:
    return (s.namespace, s.name, s.port, s.protocol)


_generations = itertools.count(1)


class _Entry:
    """One service port's last inputs and fragment (mutable: the renderer's own cache)."""

    __slots__ = ("spn", "svc", "eps", "ctx", "frag")

    def __init__(self, spn, svc, eps, ctx, frag) -> None:
        self.spn, self.svc, self.eps, self.ctx, self.frag = spn, svc, eps, ctx, frag


class Renderer:
    """Memoising renderer: the same inputs always give the same (identical) fragments.

    At 10,000 service ports a sync that changed one of them must not cost 10,000 renders,
    nor 10,000 hashes of ``ServicePortName`` (a dataclass hash builds a tuple each time):
    unchanged ports are recognised by object identity through an index keyed by ``id()``
    of the caller's key objects (kept alive by the cache, so an id cannot be reused), and
    only misses fall back to lookups by value. It also keeps, across renders, how many
    service ports use each shared chain and each hairpin pair.
    """

    def __init__(self) -> None:
        self._entries: dict[ServicePortName, _Entry] = {}
        self._by_id: dict[int, _Entry] = {}
        self._out: dict[ServicePortName, ServiceFragment] = {}
        self._base: tuple[NodeContext, BaseState] | None = None
        self._shared_users: dict[str, int] = {}
        self._shared: dict[str, tuple[str, ...]] = {}
        self._hairpin: dict[str, int] = {}
        self._generation = 0

    def _count(self, frag: ServiceFragment, d: int) -> None:
        users, shared, hp = self._shared_users, self._shared, self._hairpin
        for c, rules in frag.shared:
            n = users.get(c, 0) + d
            if n:
                users[c] = n
                shared[c] = rules  # rules follow the context: the newest wins
            else:
                del users[c], shared[c]
        for ip in frag.hairpin:
            n = hp.get(ip, 0) + d
            if n:
                hp[ip] = n
            else:
                del hp[ip]

    def _drop(self, e: _Entry) -> None:
        del self._entries[e.spn]
        del self._by_id[id(e.spn)]
        if e.frag is not None:
            del self._out[e.spn]
            self._count(e.frag, -1)

    def _render_misses(
        self,
        misses: list[tuple[ServicePortName, ServicePortInfo, tuple[Endpoint, ...]]],
        ctx: NodeContext,
        changed: set[ServicePortName],
        inputs: set[ServicePortName],
    ) -> None:
        entries, by_id, out = self._entries, self._by_id, self._out
        for spn, svc, eps in misses:
            inputs.add(spn)
            e = entries.get(spn)
            if e is not None and e.spn is not spn:  # an equal key object: re-index it
                self._drop(e)
                e = _Entry(spn, e.svc, e.eps, e.ctx, e.frag) if e.frag is not None else None
                if e is not None:
                    entries[spn], by_id[id(spn)], out[spn] = e, e, e.frag
                    self._count(e.frag, 1)
            old = e.frag if e is not None else None
            if not svc.cluster_ip:
                frag = None
            elif (
                e is not None and old is not None and e.svc == svc and e.eps == eps and e.ctx == ctx
            ):
                frag = old
            else:
                frag = render_service(svc, eps, ctx)
                if old is not None and old == frag:
                    frag = old
            if e is None:
                e = _Entry(spn, svc, eps, ctx, None)
                entries[spn], by_id[id(spn)] = e, e
            e.svc, e.eps, e.ctx = svc, eps, ctx
            if frag is not old:
                changed.add(spn)
                if old is not None:
                    self._count(old, -1)
                    del out[spn]
                if frag is not None:
                    self._count(frag, 1)
                    out[spn] = frag
                e.frag = frag

    def render(
        self,
        services: Mapping[ServicePortName, ServicePortInfo],
        endpoints: Mapping[ServicePortName, tuple[Endpoint, ...]],
        ctx: NodeContext,
    ) -> TableState:
        if self._base is None or self._base[0] != ctx:
            self._base = (ctx, render_base(ctx))
        ctx = self._base[0]  # an equal context is the same object: identity checks below
        eps_by_id = {id(k): v for k, v in endpoints.items()}
        by_id, entries, out = self._by_id, self._entries, self._out
        changed: set[ServicePortName] = set()
        inputs: set[ServicePortName] = set()
        misses: list[tuple[ServicePortName, ServicePortInfo, tuple[Endpoint, ...]]] = []
        for spn, svc in services.items():
            k = id(spn)
            eps = eps_by_id.get(k)
            if eps is None:
                eps = endpoints.get(spn, ())  # no endpoints, or an equal key object
            e = by_id.get(k)
            if e is None or e.svc is not svc or e.eps is not eps or e.ctx is not ctx:
                misses.append((spn, svc, eps))  # e.spn is spn: a live object's id is unique
        # Rendering thousands of ports allocates ~10 objects each; the cyclic GC would walk
        # the whole heap many times over meanwhile (measured: ~2x the render time).
        pause = len(misses) > 1000 and gc.isenabled()
        if pause:
            gc.disable()
        try:
            self._render_misses(misses, ctx, changed, inputs)
        finally:
            if pause:
                gc.enable()
        if len(entries) > len(services):  # service ports went away
            for e in [e for spn, e in entries.items() if spn not in services]:
                if e.frag is not None:
                    changed.add(e.spn)
                inputs.add(e.spn)
                self._drop(e)
        since, self._generation = self._generation, next(_generations)
        return TableState(
            self._base[1],
            dict(out),
            frozenset(changed),
            dict(self._shared),
            dict(self._hairpin),
            generation=self._generation,
            since=since,
            inputs_changed=frozenset(inputs),
        )


def render(
    services: Mapping[ServicePortName, ServicePortInfo],
    endpoints: Mapping[ServicePortName, tuple[Endpoint, ...]],
    ctx: NodeContext,
) -> TableState:
    """The desired table for these services and endpoints on this node (one-shot form)."""
    return Renderer().render(services, endpoints, ctx)
