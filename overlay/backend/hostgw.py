"""The host-gw backend: plain routes, ``remote podCIDR via remote node IP``, no device.

Works only when every node is on one L2 segment (the next hop must be directly connected);
``check`` says which leases break that, and the agent refuses to start on them.

Pure part: ``render_routes`` and ``plan``. Apply part: ``HostGwBackend``. Our routes are
recognised as main-table IPv4 routes inside the cluster network with a gateway, leaving by
the underlay interface.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from ..kernel import ExternalInterface, NetlinkUser, ignore_missing, ipv4_routes
from ..lease import HOST_GW, Lease

log = logging.getLogger("overlay")


@dataclass(frozen=True, slots=True, order=True)
class GwRoute:
    dst: IPv4Network
    gateway: IPv4Address
    node: str = ""

    def key(self) -> tuple[IPv4Network, IPv4Address]:
        return (self.dst, self.gateway)


@dataclass(frozen=True, slots=True)
class GwPlan:
    add: tuple[GwRoute, ...] = ()  # written with replace (also fixes a changed gateway)
    delete: tuple[GwRoute, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.add or self.delete)


def render_routes(local: Lease, leases: Iterable[Lease]) -> tuple[GwRoute, ...]:
    return tuple(
        sorted(
            GwRoute(lease.subnet, lease.public_ip, lease.node)
            for lease in leases
            if lease.backend_type == HOST_GW
            and lease.subnet != local.subnet
            and lease.node != local.node
        )
    )


def unreachable(
    local: Lease, leases: Iterable[Lease], networks: Sequence[IPv4Network]
) -> list[str]:
    """Leases whose public IP is not on a directly connected subnet of the underlay."""
    return [
        f"node {r.node} ({r.dst}) has public IP {r.gateway}, which is not on a directly "
        f"connected subnet ({', '.join(map(str, networks))})"
        for r in render_routes(local, leases)
        if not any(r.gateway in n for n in networks)
    ]


def plan(desired: Sequence[GwRoute], current: Iterable[GwRoute]) -> GwPlan:
    have = {r.key() for r in current}
    want_dsts = {r.dst for r in desired}
    return GwPlan(
        add=tuple(r for r in desired if r.key() not in have),
        # a route to a wanted subnet via another gateway is overwritten by the add (replace)
        delete=tuple(sorted(r for r in current if r.dst not in want_dsts)),
    )


class HostGwBackend(NetlinkUser):
    name = HOST_GW

    def __init__(self, cluster_cidr: IPv4Network) -> None:
        self.cluster_cidr = cluster_cidr
        self._ext: ExternalInterface | None = None

    @property
    def mtu(self) -> int:
        assert self._ext is not None
        return self._ext.mtu

    async def prepare(self, ext: ExternalInterface) -> None:
        self._ext = ext

    async def setup(self, ext: ExternalInterface, subnet: IPv4Network) -> Lease:
        self._ext = ext
        return Lease(subnet=subnet, node="", public_ip=ext.ip, backend_type=HOST_GW)

    def check(self, local: Lease, leases: Sequence[Lease]) -> list[str]:
        assert self._ext is not None
        return unreachable(local, leases, self._ext.networks)

    async def read(self, oif: int | None = None) -> list[GwRoute]:
        ipr = await self._nl()
        return [
            GwRoute(r.dst, IPv4Address(r.gateway))
            for r in await ipv4_routes(ipr, oif=oif)
            if r.gateway
            and r.dst.subnet_of(self.cluster_cidr)
            and r.dst != self.cluster_cidr
            and (oif is None or r.oif == oif)
        ]

    async def sync(self, local: Lease, leases: Sequence[Lease]) -> None:
        assert self._ext is not None
        desired = render_routes(local, leases)
        bad = {r.node for r in desired if not any(r.gateway in n for n in self._ext.networks)}
        if bad:
            for problem in unreachable(local, leases, self._ext.networks):
                log.error("host-gw cannot reach %s; skipping it", problem)
            desired = tuple(r for r in desired if r.node not in bad)
        p = plan(desired, await self.read(self._ext.index))
        ipr = await self._nl()
        for r in p.add:
            await ipr.route("replace", dst=str(r.dst), gateway=str(r.gateway), oif=self._ext.index)
            log.info("node %s: route %s via %s dev %s", r.node, r.dst, r.gateway, self._ext.name)
        for r in p.delete:
            await ignore_missing(ipr.route("del", dst=str(r.dst), gateway=str(r.gateway)))
            log.info("removed route %s via %s", r.dst, r.gateway)

    async def cleanup(self) -> None:
        ipr = await self._nl()
        for r in await self.read():
            await ignore_missing(ipr.route("del", dst=str(r.dst), gateway=str(r.gateway)))
            log.info("removed host-gw route %s via %s", r.dst, r.gateway)
