"""The model: a node's subnet lease, as flannel's kube subnet manager keeps it. No I/O.

A lease is a Node's ``spec.podCIDR`` plus what that node's overlay agent published on the
Node as annotations (``flannel.alpha.coreos.com/*``): the backend type, the backend data
(for vxlan ``{"VNI": 1, "VtepMAC": "..."}``) and the public (underlay) IP. A Node whose agent
has not published yet has no lease: nothing can be programmed towards it.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from kubecommon.model import NodeInfo

ANNOTATION_PREFIX = "flannel.alpha.coreos.com/"
BACKEND_TYPE = ANNOTATION_PREFIX + "backend-type"
BACKEND_DATA = ANNOTATION_PREFIX + "backend-data"
PUBLIC_IP = ANNOTATION_PREFIX + "public-ip"
KUBE_SUBNET_MANAGER = ANNOTATION_PREFIX + "kube-subnet-manager"

VXLAN = "vxlan"
HOST_GW = "host-gw"


@dataclass(frozen=True, slots=True, order=True)
class Lease:
    """One node's slice of the cluster network and how to reach it."""

    subnet: IPv4Network
    node: str
    public_ip: IPv4Address
    backend_type: str
    vtep_mac: str = ""  # vxlan only, lower case aa:bb:..
    vni: int = 0  # vxlan only

    @property
    def network_address(self) -> IPv4Address:
        """The subnet's .0: flannel.1's address and the vxlan next hop towards this node."""
        return self.subnet.network_address

    @property
    def gateway(self) -> IPv4Address:
        """The subnet's .1: cni0's address, written as FLANNEL_SUBNET."""
        return self.subnet.network_address + 1


def backend_data(backend_type: str, vni: int = 0, vtep_mac: str = "") -> str:
    """The backend-data annotation value, as flannel writes it."""
    if backend_type == VXLAN:
        return json.dumps({"VNI": vni, "VtepMAC": vtep_mac}, separators=(",", ":"))
    return "null"


def annotations_for(lease: Lease) -> dict[str, str]:
    """What an agent publishes on its own Node for ``lease``."""
    return {
        BACKEND_TYPE: lease.backend_type,
        BACKEND_DATA: backend_data(lease.backend_type, lease.vni, lease.vtep_mac),
        PUBLIC_IP: str(lease.public_ip),
        KUBE_SUBNET_MANAGER: "true",
    }


def lease_from_node(node: NodeInfo) -> Lease | None:
    """The lease a Node carries, or None while it has no podCIDR or no published annotations."""
    if not node.pod_cidr:
        return None
    btype = node.annotation(BACKEND_TYPE)
    pip = node.annotation(PUBLIC_IP)
    if not btype or not pip:
        return None
    try:
        subnet = ipaddress.IPv4Network(node.pod_cidr, strict=False)
        public_ip = IPv4Address(pip)
    except ValueError:
        return None
    mac, vni = "", 0
    if btype == VXLAN:
        try:
            data = json.loads(node.annotation(BACKEND_DATA) or "null") or {}
            mac = str(data.get("VtepMAC") or "").lower()
            vni = int(data.get("VNI") or 0)
        except (ValueError, TypeError, AttributeError):
            return None
        if not mac:
            return None
    return Lease(
        subnet=subnet,
        node=node.name,
        public_ip=public_ip,
        backend_type=btype,
        vtep_mac=mac,
        vni=vni,
    )


def leases_from_nodes(nodes: Iterable[NodeInfo]) -> tuple[Lease, ...]:
    """Every complete lease, sorted by subnet (deterministic order for rendering)."""
    out = (lease_from_node(n) for n in nodes)
    return tuple(sorted(lease for lease in out if lease is not None))


def annotations_missing(current: Mapping[str, str], wanted: Mapping[str, str]) -> dict[str, str]:
    """The subset of ``wanted`` annotations the Node does not carry (with that value) yet."""
    return {k: v for k, v in wanted.items() if current.get(k) != v}
