"""The vxlan backend: flannel.1 (VNI 1, UDP 8472, no learning) and three entries per peer.

Pure part (no I/O, unit-tested): ``device_spec`` (what flannel.1 must look like),
``render_peers`` (leases -> per remote node: permanent neighbour ``remote .0 -> remote VTEP
MAC``, permanent FDB entry ``VTEP MAC -> remote public IP``, route ``remote podCIDR via
remote .0 dev flannel.1 onlink``) and ``plan`` (desired vs what the kernel holds -> the
smallest set of writes and deletes).

Apply part (``VxlanBackend``): the only code touching the kernel. Per peer it writes the
neighbour, then the FDB entry, then the route (the kernel must never route to a next hop it
cannot resolve) and rolls back what it created if a later step fails; stale entries go
route first. An existing flannel.1 with a compatible configuration is kept as it is (same
VTEP MAC, no flap), so restarting the agent changes nothing and drops no packet.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from pyroute2.netlink.rtnl import ndmsg

from ..kernel import (
    RTNH_F_ONLINK,
    ExternalInterface,
    NetlinkUser,
    OverlayError,
    collect,
    ignore_missing,
    ipv4_addresses,
    ipv4_routes,
    link_index,
)
from ..lease import VXLAN, Lease

log = logging.getLogger("overlay")

DEVICE = "flannel.1"
VNI = 1
PORT = 8472
ENCAP_OVERHEAD = 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14

NUD_PERMANENT = ndmsg.states["permanent"]
NTF_SELF = ndmsg.flags["self"]


# ---------------------------------------------------------------- pure: model and render


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    name: str
    vni: int
    port: int
    underlay_index: int
    local_ip: IPv4Address
    mtu: int
    address: IPv4Interface | None  # the lease's network address as /32 (None: not known yet)
    learning: bool = False


@dataclass(frozen=True, slots=True, order=True)
class Neighbour:
    ip: IPv4Address
    mac: str


@dataclass(frozen=True, slots=True, order=True)
class Fdb:
    mac: str
    dst: IPv4Address


@dataclass(frozen=True, slots=True, order=True)
class Route:
    dst: IPv4Network
    gateway: IPv4Address  # always onlink, dev flannel.1


@dataclass(frozen=True, slots=True, order=True)
class Peer:
    """Everything one remote node needs on this node."""

    subnet: IPv4Network
    node: str
    neighbour: Neighbour
    fdb: Fdb
    route: Route


@dataclass(frozen=True, slots=True)
class KernelEntries:
    """What flannel.1 currently carries (only entries of the kinds we install)."""

    neighbours: frozenset[Neighbour] = frozenset()
    fdb: frozenset[Fdb] = frozenset()
    routes: frozenset[Route] = frozenset()


CREATE, REPLACE, KEEP = "create", "replace", "keep"


@dataclass(frozen=True, slots=True)
class Step:
    """Writes for one peer; each part is CREATE (absent), REPLACE (differs) or KEEP."""

    peer: Peer
    neighbour: str
    fdb: str
    route: str


@dataclass(frozen=True, slots=True)
class Plan:
    steps: tuple[Step, ...] = ()
    del_routes: tuple[Route, ...] = ()
    del_fdb: tuple[Fdb, ...] = ()
    del_neighbours: tuple[Neighbour, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.steps or self.del_routes or self.del_fdb or self.del_neighbours)


def device_spec(ext: ExternalInterface, subnet: IPv4Network | None) -> DeviceSpec:
    return DeviceSpec(
        name=DEVICE,
        vni=VNI,
        port=PORT,
        underlay_index=ext.index,
        local_ip=ext.ip,
        mtu=ext.mtu - ENCAP_OVERHEAD,
        address=IPv4Interface(f"{subnet.network_address}/32") if subnet else None,
    )


def render_peers(local: Lease, leases: Iterable[Lease]) -> tuple[Peer, ...]:
    """One Peer per remote vxlan lease, sorted by subnet. Own and foreign-backend leases skipped."""
    peers = []
    for lease in sorted(leases):
        if lease.subnet == local.subnet or lease.node == local.node:
            continue
        if lease.backend_type != VXLAN or not lease.vtep_mac:
            continue
        gw = lease.network_address
        peers.append(
            Peer(
                subnet=lease.subnet,
                node=lease.node,
                neighbour=Neighbour(gw, lease.vtep_mac),
                fdb=Fdb(lease.vtep_mac, lease.public_ip),
                route=Route(lease.subnet, gw),
            )
        )
    return tuple(peers)


def _op(want: object, have: set, same_key: bool) -> str:
    if want in have:
        return KEEP
    return REPLACE if same_key else CREATE


def plan(peers: Sequence[Peer], current: KernelEntries) -> Plan:
    """The writes that turn ``current`` into ``peers``; empty when they already agree."""
    neigh_by_ip = {n.ip for n in current.neighbours}
    fdb_macs = {f.mac for f in current.fdb}
    route_dsts = {r.dst for r in current.routes}
    steps = []
    for p in peers:
        step = Step(
            peer=p,
            neighbour=_op(p.neighbour, set(current.neighbours), p.neighbour.ip in neigh_by_ip),
            fdb=_op(p.fdb, set(current.fdb), p.fdb.mac in fdb_macs),
            route=_op(p.route, set(current.routes), p.route.dst in route_dsts),
        )
        if (step.neighbour, step.fdb, step.route) != (KEEP, KEEP, KEEP):
            steps.append(step)
    want_ips = {p.neighbour.ip for p in peers}
    want_fdb = {p.fdb for p in peers}
    want_dsts = {p.route.dst for p in peers}
    return Plan(
        steps=tuple(steps),
        del_routes=tuple(sorted(r for r in current.routes if r.dst not in want_dsts)),
        del_fdb=tuple(sorted(f for f in current.fdb if f not in want_fdb)),
        del_neighbours=tuple(sorted(n for n in current.neighbours if n.ip not in want_ips)),
    )


def random_mac() -> str:
    """A random locally administered unicast MAC, as flannel picks a VTEP MAC."""
    b = [random.randrange(256) for _ in range(6)]
    b[0] = (b[0] & 0xFE) | 0x02
    return ":".join(f"{x:02x}" for x in b)


def incompatibilities(spec: DeviceSpec, info: dict) -> str:
    """Why an existing link cannot serve as ``spec`` ("" when it can be kept)."""
    if info.get("kind") != "vxlan":
        return f"kind {info.get('kind')!r} is not vxlan"
    checks = [
        ("vni", info.get("vni"), spec.vni),
        ("underlay interface", info.get("link"), spec.underlay_index),
        ("local address", info.get("local"), str(spec.local_ip)),
        ("port", info.get("port"), spec.port),
        ("learning", bool(info.get("learning")), spec.learning),
    ]
    for what, have, want in checks:
        if have != want:
            return f"{what} is {have!r}, want {want!r}"
    return ""


# ---------------------------------------------------------------- apply


class VxlanBackend(NetlinkUser):
    name = VXLAN

    def __init__(self) -> None:
        self._spec: DeviceSpec | None = None
        self._index = 0
        self._mac = ""
        self._have: KernelEntries | None = None  # our entries as the last complete sync left them

    @property
    def mtu(self) -> int:
        assert self._spec is not None
        return self._spec.mtu

    # -- device

    async def _link_info(self, index: int) -> tuple[dict, str]:
        ipr = await self._nl()
        link = (await collect(ipr.link("get", index=index)))[0]
        kind = link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
        data = link.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA")
        info = {"kind": kind}
        if kind == "vxlan" and data is not None:
            info.update(
                vni=data.get("IFLA_VXLAN_ID"),
                link=data.get("IFLA_VXLAN_LINK"),
                local=data.get("IFLA_VXLAN_LOCAL"),
                port=data.get("IFLA_VXLAN_PORT"),
                learning=data.get("IFLA_VXLAN_LEARNING"),
            )
        info["mtu"] = link.get("mtu")
        info["up"] = bool(link["flags"] & 1)
        return info, (link.get("address") or "").lower()

    async def ensure_device(self, spec: DeviceSpec) -> str:
        """Create or adopt flannel.1; returns its (stable) MAC."""
        ipr = await self._nl()
        index = await link_index(ipr, spec.name)
        mac = ""
        if index is not None:
            info, mac = await self._link_info(index)
            why = incompatibilities(spec, info)
            if why:
                log.warning(
                    "%s exists with an incompatible configuration (%s); recreating it "
                    "with the same MAC",
                    spec.name,
                    why,
                )
                await ipr.link("del", index=index)
                index = None
            elif index != self._index:
                log.info("adopting existing %s (VTEP MAC %s)", spec.name, mac)
        if index is None:
            mac = mac or random_mac()
            await ipr.link(
                "add",
                ifname=spec.name,
                kind="vxlan",
                vxlan_id=spec.vni,
                vxlan_link=spec.underlay_index,
                vxlan_local=str(spec.local_ip),
                vxlan_port=spec.port,
                vxlan_learning=int(spec.learning),
                mtu=spec.mtu,
                address=mac,
            )
            index = await link_index(ipr, spec.name)
            if index is None:
                raise OverlayError(f"created {spec.name} but cannot find it again")
            log.info(
                "created %s: VNI %d port %d dev index %d local %s MTU %d MAC %s",
                spec.name,
                spec.vni,
                spec.port,
                spec.underlay_index,
                spec.local_ip,
                spec.mtu,
                mac,
            )
        info, mac = await self._link_info(index)
        if info["mtu"] != spec.mtu:
            await ipr.link("set", index=index, mtu=spec.mtu)
        if spec.address is not None:
            addrs = await ipv4_addresses(ipr, index)
            for a in addrs:
                if a != spec.address:
                    await ignore_missing(
                        ipr.addr(
                            "del", index=index, address=str(a.ip), prefixlen=a.network.prefixlen
                        )
                    )
            if spec.address not in addrs:
                await ipr.addr("add", index=index, address=str(spec.address.ip), prefixlen=32)
        if not info["up"]:
            await ipr.link("set", index=index, state="up")
        if index != self._index:
            self._have = None
        self._index, self._mac, self._spec = index, mac, spec
        return mac

    async def prepare(self, ext: ExternalInterface) -> None:
        """flannel.1 up before the lease is known: a joining node then only adds its address.

        Reading flannel.1's entries here, while the agent still waits for its Node, takes the
        one-off cost of the first dump off the join path (the first sync diffs against it).
        """
        await self.ensure_device(device_spec(ext, None))
        self._have = await self.read()

    async def _add_address(self, spec: DeviceSpec) -> bool:
        """Only the lease's address on the flannel.1 that prepare() just checked (the join
        path: decoding the link twice more costs tens of ms of CPU). False when the device is
        not the one prepare() left, or carries other addresses: then the full check runs."""
        if self._spec is None or not self._index or spec.address is None:
            return False
        if dataclasses.replace(self._spec, address=spec.address) != spec:
            return False
        ipr = await self._nl()
        try:
            addrs = await ipv4_addresses(ipr, self._index)
            if any(a != spec.address for a in addrs):
                return False
            if spec.address not in addrs:
                await ipr.addr("add", index=self._index, address=str(spec.address.ip), prefixlen=32)
        except Exception as e:  # gone or changed since prepare(): let ensure_device sort it out
            log.debug("fast address path failed (%s); checking %s in full", e, spec.name)
            return False
        self._spec = spec
        return True

    async def setup(self, ext: ExternalInterface, subnet: IPv4Network) -> Lease:
        spec = device_spec(ext, subnet)
        mac = self._mac if await self._add_address(spec) else await self.ensure_device(spec)
        return Lease(
            subnet=subnet, node="", public_ip=ext.ip, backend_type=VXLAN, vtep_mac=mac, vni=VNI
        )

    def check(self, local: Lease, leases: Sequence[Lease]) -> list[str]:
        return []

    # -- entries

    async def read(self) -> KernelEntries:
        ipr = await self._nl()
        neigh = set()
        for n in await collect(ipr.neigh("dump", family=socket.AF_INET, ifindex=self._index)):
            if n["family"] == socket.AF_INET and n["state"] & NUD_PERMANENT and n.get("lladdr"):
                if n["ifindex"] != self._index:
                    continue
                neigh.add(Neighbour(IPv4Address(n.get("dst")), n.get("lladdr").lower()))
        fdb = set()
        for n in await collect(ipr.neigh("dump", family=socket.AF_BRIDGE, ifindex=self._index)):
            dst = n.get("dst")
            if n["ifindex"] != self._index or not dst or ":" in dst:
                continue
            fdb.add(Fdb(n.get("lladdr").lower(), IPv4Address(dst)))
        routes = {
            Route(r.dst, IPv4Address(r.gateway))
            for r in await ipv4_routes(ipr, oif=self._index)
            if r.gateway and r.oif == self._index and r.onlink
        }
        return KernelEntries(frozenset(neigh), frozenset(fdb), frozenset(routes))

    async def _set_neighbour(self, n: Neighbour) -> None:
        ipr = await self._nl()
        await ipr.neigh(
            "replace", ifindex=self._index, dst=str(n.ip), lladdr=n.mac, state=NUD_PERMANENT
        )

    async def _del_neighbour(self, n: Neighbour) -> None:
        ipr = await self._nl()
        await ignore_missing(ipr.neigh("del", ifindex=self._index, dst=str(n.ip), lladdr=n.mac))

    async def _set_fdb(self, f: Fdb) -> None:
        ipr = await self._nl()
        await ipr.neigh(
            "replace",
            family=socket.AF_BRIDGE,
            ifindex=self._index,
            lladdr=f.mac,
            dst=str(f.dst),
            state=NUD_PERMANENT,
            flags=NTF_SELF,
        )

    async def _del_fdb(self, f: Fdb) -> None:
        ipr = await self._nl()
        await ignore_missing(
            ipr.neigh(
                "del",
                family=socket.AF_BRIDGE,
                ifindex=self._index,
                lladdr=f.mac,
                dst=str(f.dst),
                flags=NTF_SELF,
            )
        )

    async def _set_route(self, r: Route) -> None:
        ipr = await self._nl()
        await ipr.route(
            "replace", dst=str(r.dst), gateway=str(r.gateway), oif=self._index, flags=RTNH_F_ONLINK
        )

    async def _del_route(self, r: Route) -> None:
        ipr = await self._nl()
        await ignore_missing(
            ipr.route("del", dst=str(r.dst), gateway=str(r.gateway), oif=self._index)
        )

    async def _apply_step(self, s: Step) -> None:
        """Neighbour, FDB, route in that order; undo what this step created on failure."""
        created: list = []
        try:
            if s.neighbour != KEEP:
                await self._set_neighbour(s.peer.neighbour)
                if s.neighbour == CREATE:
                    created.append(s.peer.neighbour)
            if s.fdb != KEEP:
                await self._set_fdb(s.peer.fdb)
                if s.fdb == CREATE:
                    created.append(s.peer.fdb)
            if s.route != KEEP:
                await self._set_route(s.peer.route)
        except Exception:
            for entry in reversed(created):
                try:
                    if isinstance(entry, Fdb):
                        await self._del_fdb(entry)
                    else:
                        await self._del_neighbour(entry)
                except Exception:
                    log.exception("rollback of %s for node %s failed", entry, s.peer.node)
            raise

    async def apply(self, p: Plan) -> list[str]:
        """Apply a plan; returns the errors (each peer is its own transaction)."""
        errors = []
        for s in p.steps:
            try:
                await self._apply_step(s)
                log.info(
                    "node %s: %s via %s (VTEP %s at %s) [neigh %s, fdb %s, route %s]",
                    s.peer.node,
                    s.peer.subnet,
                    s.peer.neighbour.ip,
                    s.peer.fdb.mac,
                    s.peer.fdb.dst,
                    s.neighbour,
                    s.fdb,
                    s.route,
                )
            except Exception as e:
                errors.append(f"node {s.peer.node} ({s.peer.subnet}): {e}")
                log.error(
                    "could not program node %s (%s): %s; rolled back", s.peer.node, s.peer.subnet, e
                )
        for r in p.del_routes:
            await self._del_route(r)
            log.info("removed route %s via %s", r.dst, r.gateway)
        for f in p.del_fdb:
            await self._del_fdb(f)
            log.info("removed fdb %s -> %s", f.mac, f.dst)
        for n in p.del_neighbours:
            await self._del_neighbour(n)
            log.info("removed neighbour %s -> %s", n.ip, n.mac)
        return errors

    async def sync(self, local: Lease, leases: Sequence[Lease]) -> None:
        """Diff against the kernel (first sync, or after a failure) or against what the last
        complete sync left there (every later one: a joining peer costs its three writes and
        no dump of the neighbour, FDB and route tables)."""
        peers = render_peers(local, leases)
        current = self._have if self._have is not None else await self.read()
        p = plan(peers, current)
        if p.empty:
            self._have = current
            return
        self._have = None
        errors = await self.apply(p)
        if errors:
            raise OverlayError("; ".join(errors))
        self._have = KernelEntries(
            frozenset(x.neighbour for x in peers),
            frozenset(x.fdb for x in peers),
            frozenset(x.route for x in peers),
        )

    async def cleanup(self) -> None:
        """Deleting flannel.1 takes its neighbours, FDB entries and routes with it."""
        ipr = await self._nl()
        index = await link_index(ipr, DEVICE)
        if index is not None:
            await ignore_missing(ipr.link("del", index=index))
            log.info("removed %s (with its neighbours, FDB entries and routes)", DEVICE)
