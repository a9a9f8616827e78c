"""Address and port allocators: Service ClusterIPs, NodePorts and node podCIDRs.

Each allocator is a set of taken values plus a cursor, so allocating is O(1) amortized and
never scans the store. ``ServiceAllocations`` applies them to a Service: it checks every
request first and only then takes anything, so a rejected Service leaves nothing taken.
State is rebuilt from the stored objects at start-up.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from .status import ApiError, Cause, invalid

NODE_PORT_RANGE = (30000, 32767)


@dataclass(slots=True)
class IPAllocator:
    """Addresses of a CIDR, minus network and broadcast; the first one is reserved."""

    cidr: ipaddress.IPv4Network | ipaddress.IPv6Network
    taken: set[int] = field(default_factory=set)
    cursor: int = 0

    @classmethod
    def parse(cls, text: str) -> IPAllocator:
        return cls(ipaddress.ip_network(text, strict=False))

    @property
    def first(self) -> int:
        return int(self.cidr.network_address) + 1

    @property
    def last(self) -> int:
        return int(self.cidr.broadcast_address) - 1

    def first_ip(self) -> str:
        return str(ipaddress.ip_address(self.first))

    def contains(self, ip: str) -> bool:
        try:
            v = int(ipaddress.ip_address(ip))
        except ValueError:
            return False
        return self.first <= v <= self.last

    def is_taken(self, ip: str) -> bool:
        return int(ipaddress.ip_address(ip)) in self.taken

    def take(self, ip: str) -> None:
        self.taken.add(int(ipaddress.ip_address(ip)))

    def release(self, ip: str) -> None:
        try:
            self.taken.discard(int(ipaddress.ip_address(ip)))
        except ValueError:
            pass

    def next_free(self) -> str | None:
        size = self.last - self.first + 1
        if len(self.taken) >= size:
            return None
        start = self.cursor if self.first <= self.cursor <= self.last else self.first + 1
        v = start
        for _ in range(size):
            if v not in self.taken:
                self.cursor = v + 1 if v < self.last else self.first
                return str(ipaddress.ip_address(v))
            v = v + 1 if v < self.last else self.first
        return None


@dataclass(slots=True)
class PortAllocator:
    lo: int = NODE_PORT_RANGE[0]
    hi: int = NODE_PORT_RANGE[1]
    taken: set[int] = field(default_factory=set)
    cursor: int = 0

    def contains(self, port: int) -> bool:
        return self.lo <= port <= self.hi

    def next_free(self, also_taken: set[int]) -> int | None:
        size = self.hi - self.lo + 1
        v = self.cursor if self.lo <= self.cursor <= self.hi else self.lo
        for _ in range(size):
            if v not in self.taken and v not in also_taken:
                self.cursor = v + 1 if v < self.hi else self.lo
                return v
            v = v + 1 if v < self.hi else self.lo
        return None


@dataclass(slots=True)
class SubnetAllocator:
    """Fixed-size subnets (/24 by default) of the cluster CIDR, one per node."""

    cidr: ipaddress.IPv4Network | ipaddress.IPv6Network
    prefix: int = 24
    taken: set[int] = field(default_factory=set)

    @property
    def count(self) -> int:
        return 1 << max(self.prefix - self.cidr.prefixlen, 0)

    def _index(self, subnet: str) -> int | None:
        try:
            net = ipaddress.ip_network(subnet, strict=False)
        except ValueError:
            return None
        if net.prefixlen != self.prefix or not net.subnet_of(self.cidr):  # type: ignore[arg-type]
            return None
        return (int(net.network_address) - int(self.cidr.network_address)) >> (
            self.cidr.max_prefixlen - self.prefix
        )

    def subnet(self, i: int) -> str:
        base = int(self.cidr.network_address) + (i << (self.cidr.max_prefixlen - self.prefix))
        return f"{ipaddress.ip_address(base)}/{self.prefix}"

    def take(self, subnet: str) -> bool:
        i = self._index(subnet)
        if i is None or i in self.taken:
            return False
        self.taken.add(i)
        return True

    def release(self, subnet: str) -> None:
        i = self._index(subnet)
        if i is not None:
            self.taken.discard(i)

    def allocate(self) -> str | None:
        for i in range(self.count):
            if i not in self.taken:
                self.taken.add(i)
                return self.subnet(i)
        return None


def _node_ports(svc: dict[str, Any]) -> list[int]:
    return [
        int(p["nodePort"])
        for p in (svc.get("spec") or {}).get("ports") or []
        if isinstance(p, dict) and p.get("nodePort")
    ]


def _cluster_ip(svc: dict[str, Any]) -> str | None:
    ip = (svc.get("spec") or {}).get("clusterIP")
    return ip if ip and ip != "None" else None


class ServiceAllocations:
    """ClusterIP + NodePort bookkeeping for Services."""

    def __init__(self, service_cidr: str, node_ports: tuple[int, int] = NODE_PORT_RANGE):
        self.ips = IPAllocator.parse(service_cidr)
        self.ports = PortAllocator(*node_ports)

    def load(self, svc: dict[str, Any]) -> None:
        ip = _cluster_ip(svc)
        if ip and self.ips.contains(ip):
            self.ips.take(ip)
        for p in _node_ports(svc):
            self.ports.taken.add(p)

    def allocate(self, svc: dict[str, Any], old: dict[str, Any] | None, dry_run: bool) -> None:
        """Fill spec.clusterIP(s)/nodePorts of ``svc``; raise 422 without taking anything."""
        spec = svc.setdefault("spec", {})
        name = svc["metadata"].get("name", "")
        stype = spec.get("type", "ClusterIP")
        causes: list[Cause] = []
        old_spec = (old or {}).get("spec") or {}
        old_ip = _cluster_ip(old) if old else None
        # --- ClusterIP
        want_ip: str | None = None
        new_ip = False
        if stype == "ExternalName":
            spec.pop("clusterIP", None)
            spec.pop("clusterIPs", None)
        else:
            req = spec.get("clusterIP") or (spec.get("clusterIPs") or [None])[0]
            if (
                old is not None
                and old_spec.get("type") != "ExternalName"
                and old_spec.get("clusterIP")
            ):
                if req and req != old_spec.get("clusterIP"):
                    causes.append(
                        Cause(
                            "spec.clusterIPs[0]",
                            "FieldValueInvalid",
                            f'Invalid value: []string{{"{req}"}}: may not change once set',
                        )
                    )
                req = old_spec.get("clusterIP")
            if req == "None":
                spec["clusterIP"] = "None"
                spec["clusterIPs"] = ["None"]
            elif req and req == old_ip:
                want_ip = req
            elif req:
                if not self.ips.contains(req):
                    causes.append(
                        Cause(
                            "spec.clusterIPs",
                            "FieldValueInvalid",
                            f'Invalid value: []string{{"{req}"}}: failed to allocate IP {req}: the provided IP ({req}) is not in the valid range. The range of valid IPs is {self.ips.cidr}',
                        )
                    )
                elif self.ips.is_taken(req):
                    causes.append(
                        Cause(
                            "spec.clusterIPs",
                            "FieldValueInvalid",
                            f'Invalid value: []string{{"{req}"}}: failed to allocate IP {req}: provided IP is already allocated',
                        )
                    )
                else:
                    want_ip = req
                    new_ip = True
            else:
                new_ip = True
        # --- NodePorts
        ports = spec.get("ports") or []
        needs_np = stype in ("NodePort", "LoadBalancer") and not (
            stype == "LoadBalancer" and spec.get("allocateLoadBalancerNodePorts") is False
        )
        old_nps = set(_node_ports(old)) if old else set()
        seen: dict[int, int] = {}
        requested: list[int] = []
        for i, p in enumerate(ports):
            if not isinstance(p, dict):
                continue
            np = p.get("nodePort")
            if not np:
                continue
            if stype not in ("NodePort", "LoadBalancer"):
                if old is not None and old_spec.get("type") in ("NodePort", "LoadBalancer"):
                    p.pop("nodePort", None)  # type changed away: drop the ports
                    continue
                causes.append(
                    Cause(
                        f"spec.ports[{i}].nodePort",
                        "FieldValueForbidden",
                        f"Forbidden: may not be used when `type` is '{stype}'",
                    )
                )
                continue
            np = int(np)
            if not self.ports.contains(np):
                causes.append(
                    Cause(
                        f"spec.ports[{i}].nodePort",
                        "FieldValueInvalid",
                        f"Invalid value: {np}: provided port is not in the valid range. The range of valid ports is {self.ports.lo}-{self.ports.hi}",
                    )
                )
            elif np in self.ports.taken and np not in old_nps:
                causes.append(
                    Cause(
                        f"spec.ports[{i}].nodePort",
                        "FieldValueInvalid",
                        f"Invalid value: {np}: provided port is already allocated",
                    )
                )
            elif np in seen and ports[seen[np]].get("protocol", "TCP") == p.get("protocol", "TCP"):
                causes.append(
                    Cause(
                        f"spec.ports[{i}].nodePort", "FieldValueDuplicate", f"Duplicate value: {np}"
                    )
                )
            else:
                seen[np] = i
                if np not in old_nps:
                    requested.append(np)
        if causes:
            raise invalid("Service", "", name, causes)
        if (
            new_ip
            and want_ip is None
            and stype != "ExternalName"
            and spec.get("clusterIP") != "None"
        ):
            want_ip = self.ips.next_free()
            if want_ip is None:
                raise ApiError(
                    500,
                    "InternalError",
                    f"Internal error occurred: failed to allocate a serviceIP: range is full ({self.ips.cidr})",
                )
        fresh: list[int] = []
        if needs_np:
            taken_here = set(seen)
            for p in ports:
                if isinstance(p, dict) and not p.get("nodePort"):
                    np = self.ports.next_free(taken_here)
                    if np is None:
                        raise ApiError(
                            500,
                            "InternalError",
                            "Internal error occurred: failed to allocate a nodePort: range is full",
                        )
                    taken_here.add(np)
                    fresh.append(np)
                    p["nodePort"] = np
        if want_ip is not None:
            spec["clusterIP"] = want_ip
            spec["clusterIPs"] = [want_ip]
        if dry_run:
            return
        if new_ip and want_ip:
            self.ips.take(want_ip)
        self.ports.taken.update(requested)
        self.ports.taken.update(fresh)

    def release_changes(self, svc: dict[str, Any], old: dict[str, Any]) -> None:
        """After an update: give back what the old version held and the new one does not."""
        old_ip, new_ip = _cluster_ip(old), _cluster_ip(svc)
        if old_ip and old_ip != new_ip:
            self.ips.release(old_ip)
        for p in set(_node_ports(old)) - set(_node_ports(svc)):
            self.ports.taken.discard(p)

    def release(self, svc: dict[str, Any]) -> None:
        ip = _cluster_ip(svc)
        if ip:
            self.ips.release(ip)
        for p in _node_ports(svc):
            self.ports.taken.discard(p)
