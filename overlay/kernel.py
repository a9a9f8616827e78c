"""Small netlink helpers shared by the backends (pyroute2 ``AsyncIPRoute``, current netns).

Reads are turned into plain values here so that the backends' planning stays pure; writes
go through ``ignore_missing`` / ``ignore_exists`` so that idempotent callers can say what they
mean ("delete if there") without try/except noise.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

RT_TABLE_MAIN = 254
RTPROT_KERNEL = 2
RTNH_F_ONLINK = 4


class OverlayError(Exception):
    """A failure the user can act on (message says what and where)."""


@dataclass(frozen=True, slots=True)
class ExternalInterface:
    """The node's underlay interface: where VXLAN packets leave, whose IP peers use."""

    name: str
    index: int
    ip: IPv4Address
    mtu: int
    networks: tuple[IPv4Network, ...]  # directly connected IPv4 subnets of this interface


@asynccontextmanager
async def iproute() -> AsyncIterator[AsyncIPRoute]:
    ipr = AsyncIPRoute()
    await ipr.setup_endpoint()
    try:
        yield ipr
    finally:
        ipr.close()


class NetlinkUser:
    """One long-lived ``AsyncIPRoute`` per backend, opened on first use (``_nl``)."""

    _ipr: AsyncIPRoute | None = None

    async def _nl(self) -> AsyncIPRoute:
        if self._ipr is None:
            self._ipr = AsyncIPRoute()
            await self._ipr.setup_endpoint()
        return self._ipr

    async def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None


async def collect(res: Any) -> list:
    """pyroute2 0.9 returns lists for some calls and async generators for dumps."""
    if isinstance(res, Awaitable):
        res = await res
    if hasattr(res, "__aiter__"):
        return [m async for m in res]
    return list(res or [])


async def ignore_missing(coro: Awaitable[Any]) -> bool:
    """Await a delete; False (no error) when the object was already gone."""
    try:
        await coro
        return True
    except NetlinkError as e:
        if e.code in (errno.ENOENT, errno.ESRCH, errno.ENODEV, errno.EADDRNOTAVAIL):
            return False
        raise


async def link_index(ipr: AsyncIPRoute, name: str) -> int | None:
    idx = await ipr.link_lookup(ifname=name)
    return idx[0] if idx else None


async def ipv4_addresses(ipr: AsyncIPRoute, index: int) -> list[IPv4Interface]:
    out = []
    for a in await collect(ipr.addr("dump", index=index)):
        if a["family"] == socket.AF_INET:
            out.append(IPv4Interface(f"{a.get('address')}/{a['prefixlen']}"))
    return out


async def external_interface(ipr: AsyncIPRoute, name: str | None) -> ExternalInterface:
    """Resolve ``--iface`` (or the default route's interface) to index, first IPv4, MTU."""
    if name:
        index = await link_index(ipr, name)
        if index is None:
            raise OverlayError(f"interface {name!r} not found in this network namespace")
    else:
        index = None
        for r in await collect(ipr.route("dump", family=socket.AF_INET, table=RT_TABLE_MAIN)):
            if r["dst_len"] == 0 and r.get("oif"):
                index = r.get("oif")
                break
        if index is None:
            raise OverlayError("no --iface given and no default route to pick an interface from")
    link = (await collect(ipr.link("get", index=index)))[0]
    addrs = await ipv4_addresses(ipr, index)
    if not addrs:
        raise OverlayError(f"interface {link.get('ifname')!r} has no IPv4 address")
    return ExternalInterface(
        name=link.get("ifname"),
        index=index,
        ip=addrs[0].ip,
        mtu=int(link.get("mtu")),
        networks=tuple(a.network for a in addrs),
    )


@dataclass(frozen=True, slots=True)
class KernelRoute:
    dst: IPv4Network
    gateway: str
    oif: int
    proto: int
    onlink: bool


async def ipv4_routes(ipr: AsyncIPRoute, oif: int | None = None) -> list[KernelRoute]:
    """Main-table IPv4 routes (optionally only those leaving by ``oif``)."""
    out = []
    kw: dict[str, Any] = {"family": socket.AF_INET, "table": RT_TABLE_MAIN}
    if oif is not None:
        kw["oif"] = oif
    for r in await collect(ipr.route("dump", **kw)):
        if r["family"] != socket.AF_INET or r.get("table") != RT_TABLE_MAIN:
            continue
        dst = r.get("dst") or "0.0.0.0"
        out.append(
            KernelRoute(
                dst=IPv4Network(f"{dst}/{r['dst_len']}"),
                gateway=r.get("gateway") or "",
                oif=int(r.get("oif") or 0),
                proto=int(r["proto"]),
                onlink=bool(r["flags"] & RTNH_F_ONLINK),
            )
        )
    return out
