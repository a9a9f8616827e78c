"""The backend interface: how a node's lease turns into a data path to every other node.

As in flannel's ``pkg/backend``, a backend is small and self-contained; adding one touches
no other file but the registry below. The agent drives it:

    await backend.prepare(ext)                   # before the lease is known (device, VTEP MAC)
    lease = await backend.setup(ext, subnet)     # own lease (address, backend data, MTU)
    problems = backend.check(lease, leases)       # refuse to start on a broken topology
    await backend.sync(lease, leases)            # idempotent: desired state from all leases
    await backend.cleanup()                      # remove everything ever installed
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Network
from typing import Protocol

from ..kernel import ExternalInterface
from ..lease import Lease


class Backend(Protocol):
    name: str

    async def prepare(self, ext: ExternalInterface) -> None: ...

    async def setup(self, ext: ExternalInterface, subnet: IPv4Network) -> Lease: ...

    @property
    def mtu(self) -> int: ...

    def check(self, local: Lease, leases: Sequence[Lease]) -> list[str]: ...

    async def sync(self, local: Lease, leases: Sequence[Lease]) -> None: ...

    async def cleanup(self) -> None: ...


def get_backend(name: str, cluster_cidr: IPv4Network) -> Backend:
    if name == "vxlan":
        from .vxlan import VxlanBackend

        return VxlanBackend()
    if name == "host-gw":
        from .hostgw import HostGwBackend

        return HostGwBackend(cluster_cidr)
    raise ValueError(f"unknown backend {name!r}; choose vxlan or host-gw")
