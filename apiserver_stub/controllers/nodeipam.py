"""Node IPAM (kube-controller-manager's range allocator): each Node gets spec.podCIDR(s), a
/24 (by default) of the cluster CIDR, and gives it back when deleted."""

from __future__ import annotations

import logging
from typing import Any

from ..allocators import SubnetAllocator

log = logging.getLogger("apiserver_stub")


class NodeIpam:
    def __init__(self, cluster_cidr: str, mask: int):
        import ipaddress

        self.alloc = SubnetAllocator(ipaddress.ip_network(cluster_cidr, strict=False), mask)

    def observe(self, node: dict[str, Any]) -> bool:
        """Record a node's existing podCIDR; True when it still needs one."""
        cidr = (node.get("spec") or {}).get("podCIDR")
        if cidr:
            if not self.alloc.take(cidr) and self.alloc._index(cidr) is None:
                log.warning(
                    "node %s has podCIDR %s outside the cluster CIDR",
                    node["metadata"]["name"],
                    cidr,
                )
            return False
        return True

    def assign(self, node: dict[str, Any]) -> dict[str, Any] | None:
        """A copy of ``node`` with a podCIDR, or None when the range is exhausted."""
        cidr = self.alloc.allocate()
        if cidr is None:
            log.error(
                "cluster CIDR %s exhausted; node %s gets no podCIDR",
                self.alloc.cidr,
                node["metadata"]["name"],
            )
            return None
        spec = node.setdefault("spec", {})
        spec["podCIDR"] = cidr
        spec["podCIDRs"] = [cidr]
        return node

    def release(self, node: dict[str, Any]) -> None:
        for cidr in (node.get("spec") or {}).get("podCIDRs") or [
            (node.get("spec") or {}).get("podCIDR")
        ]:
            if cidr:
                self.alloc.release(cidr)
