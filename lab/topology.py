"""The lab's wiring: names, the address plan, and building the fabric and node namespaces.

Division of labour: ``plan()`` is pure (names and addresses from prefix, node count and node
CIDR; unit-tested without root); ``build_fabric()`` / ``build_node()`` are the only functions
here that touch the kernel, and they do it through netlink (pyroute2) and /proc/sys, never
through a shell.

Shape (kind-like)::

    host ns            P-fabric ns                 P-<node> ns
    P-host (N.1) ===== host --+
                              br0 -- n0 ========== eth0 (N.2)  control-plane
                              |  --- n1 ========== eth0 (N.3)  worker1 ...

The host namespace gets exactly one link (``P-host``) and its address; nothing else there
changes. Each node namespace gets ip_forward, bridge-nf-call-iptables, loose rp_filter, lo up,
``eth0`` with its node IP and a route for the service CIDR (so traffic a node originates
towards a ClusterIP is routed and can be DNAT-ed in OUTPUT, as on a real node with a default
route, without pointing any default route at the host).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
import shutil
from dataclasses import dataclass

log = logging.getLogger("lab")

CONTROL_PLANE = "control-plane"
FABRIC_BRIDGE = "br0"
NODE_IFACE = "eth0"
HOST_PEER = "host"  # the host veth's peer, inside the fabric namespace
DEFAULT_PREFIX = "knl"
DEFAULT_NODE_CIDR = "172.18.0.0/16"
DEFAULT_CLUSTER_CIDR = "10.244.0.0/16"
DEFAULT_SERVICE_CIDR = "10.96.0.0/12"
CLUSTER_DNS_IP = "10.96.0.10"
API_PORT = 6443
NETNS_DIR = "/run/netns"
ETC_NETNS_DIR = "/etc/netns"
STATE_ROOT = "/run/kube-netlab"

# prefix: lower-case, starts with a letter, short enough that "P-host" fits IFNAMSIZ (15).
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9-]{0,9}$")
_NODE_RE = re.compile(r"^(control-plane|worker[1-9][0-9]*)$")

NODE_SYSCTLS: tuple[tuple[str, str], ...] = (
    ("net/ipv4/ip_forward", "1"),
    ("net/ipv4/conf/all/rp_filter", "2"),
    ("net/ipv4/conf/default/rp_filter", "2"),
    ("net/bridge/bridge-nf-call-iptables", "1"),
    ("net/bridge/bridge-nf-call-ip6tables", "1"),
)


class TopologyError(Exception):
    """A wiring step failed; the message says which object."""


def validate_prefix(prefix: str) -> str:
    if not _PREFIX_RE.match(prefix) or prefix.endswith("-"):
        raise ValueError(
            f"invalid lab prefix {prefix!r}: use 1-10 characters [a-z0-9-], starting with a letter"
            " (it becomes part of namespace and interface names, e.g. 'knl-host')"
        )
    return prefix


def node_names(workers: int) -> tuple[str, ...]:
    """``control-plane`` then ``worker1`` .. ``workerN``."""
    if workers < 0:
        raise ValueError("number of worker nodes must be >= 0")
    return (CONTROL_PLANE, *(f"worker{i}" for i in range(1, workers + 1)))


def node_netns(prefix: str, node: str) -> str:
    return f"{prefix}-{node}"


def fabric_netns(prefix: str) -> str:
    return f"{prefix}-fabric"


def host_link(prefix: str) -> str:
    return f"{prefix}-host"


def pod_netns(prefix: str, namespace: str, pod: str) -> str:
    """Name of a pod's namespace as the kubelet creates it: ``P-pod-<namespace>.<pod>``."""
    return f"{prefix}-pod-{namespace}.{pod}"


def remove_netns_etc(name: str) -> None:
    """Remove /etc/netns/NAME (a pod's resolv.conf), then /etc/netns itself if that left it
    empty: a fresh machine has none, and ``ip netns`` works without it."""
    shutil.rmtree(os.path.join(ETC_NETNS_DIR, name), ignore_errors=True)
    with contextlib.suppress(OSError):  # not empty (other pods, other labs) or not there
        os.rmdir(ETC_NETNS_DIR)


def is_lab_netns(prefix: str, name: str) -> bool:
    """True for every namespace name a lab with this prefix may own (the cleanup pattern).

    Only the exact shapes the lab and kubelet create match, so a lab with prefix ``knl`` never
    claims ``knl2-worker1`` or ``knl-x-fabric``.
    """
    if not name.startswith(prefix + "-"):
        return False
    rest = name[len(prefix) + 1 :]
    return rest == "fabric" or bool(_NODE_RE.match(rest)) or rest.startswith("pod-")


@dataclass(frozen=True, slots=True)
class NodePlan:
    name: str
    index: int  # 0 = control-plane
    ip: str
    netns: str
    fabric_port: str  # the veth end on br0 inside the fabric namespace

    @property
    def is_control_plane(self) -> bool:
        return self.index == 0


@dataclass(frozen=True, slots=True)
class Plan:
    """Every name and address of one lab; a pure function of its configuration."""

    prefix: str
    node_cidr: str
    prefixlen: int
    host_ip: str
    host_link: str
    fabric_netns: str
    nodes: tuple[NodePlan, ...]
    service_cidr: str = DEFAULT_SERVICE_CIDR
    cluster_cidr: str = DEFAULT_CLUSTER_CIDR

    @property
    def control_plane(self) -> NodePlan:
        return self.nodes[0]

    @property
    def apiserver_url(self) -> str:
        return f"http://{self.control_plane.ip}:{API_PORT}"

    @property
    def state_dir(self) -> str:
        return state_dir(self.prefix)

    def node(self, name: str) -> NodePlan:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node {name!r} in lab {self.prefix!r} (nodes: {self.node_names_str})")

    @property
    def node_names_str(self) -> str:
        return ", ".join(n.name for n in self.nodes)

    def netns_names(self) -> tuple[str, ...]:
        return (self.fabric_netns, *(n.netns for n in self.nodes))


def state_dir(prefix: str, root: str = STATE_ROOT) -> str:
    return os.path.join(root, prefix)


def plan(
    prefix: str = DEFAULT_PREFIX,
    workers: int = 2,
    node_cidr: str = DEFAULT_NODE_CIDR,
    service_cidr: str = DEFAULT_SERVICE_CIDR,
    cluster_cidr: str = DEFAULT_CLUSTER_CIDR,
) -> Plan:
    """Names and addresses: host N.1, control-plane N.2, workerI N.(2+I)."""
    validate_prefix(prefix)
    try:
        net = ipaddress.IPv4Network(node_cidr, strict=True)
    except ValueError as e:
        raise ValueError(f"invalid node CIDR {node_cidr!r}: {e}") from None
    names = node_names(workers)
    needed = len(names) + 2  # host + nodes + network + broadcast
    if net.num_addresses < needed + 1:
        raise ValueError(
            f"node CIDR {node_cidr} is too small for {len(names)} nodes (needs > {needed} addresses)"
        )
    for other in (service_cidr, cluster_cidr):
        if net.overlaps(ipaddress.IPv4Network(other)):
            raise ValueError(f"node CIDR {node_cidr} overlaps {other}")
    base = int(net.network_address)
    nodes = tuple(
        NodePlan(
            name=name,
            index=i,
            ip=str(ipaddress.IPv4Address(base + 2 + i)),
            netns=node_netns(prefix, name),
            fabric_port=f"n{i}",
        )
        for i, name in enumerate(names)
    )
    return Plan(
        prefix=prefix,
        node_cidr=str(net),
        prefixlen=net.prefixlen,
        host_ip=str(ipaddress.IPv4Address(base + 1)),
        host_link=host_link(prefix),
        fabric_netns=fabric_netns(prefix),
        nodes=nodes,
        service_cidr=service_cidr,
        cluster_cidr=cluster_cidr,
    )


# ---------------------------------------------------------------------------------------------
# kernel side


def _netns_path(name: str) -> str:
    return os.path.join(NETNS_DIR, name)


def netns_exists(name: str) -> bool:
    return os.path.exists(_netns_path(name))


def list_netns() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def _write_sysctls(items: tuple[tuple[str, str], ...]) -> None:
    """Write sysctls of the network namespace the calling thread is in."""
    for key, value in items:
        path = "/proc/sys/" + key
        try:
            with open(path, "w", encoding="ascii") as f:
                f.write(value)
        except OSError as e:
            raise TopologyError(f"sysctl {key.replace('/', '.')}={value}: {e}") from e


class _InNetns:
    """Create (or enter) a named netns for the calling process and return on exit.

    Creating in-process (unshare + bind mount) avoids one fork per namespace, which matters
    when a lab has twenty nodes. Sockets opened inside stay bound to that namespace.
    """

    def __init__(self, name: str, create: bool):
        self.name = name
        self.create = create

    def __enter__(self) -> _InNetns:
        from pyroute2 import netns

        netns.pushns()
        try:
            flags = (os.O_CREAT | os.O_EXCL) if self.create else 0
            netns.setns(self.name, flags=flags, fork=False)
        except Exception as e:
            netns.popns()
            what = "create" if self.create else "enter"
            raise TopologyError(f"cannot {what} network namespace {self.name}: {e}") from e
        return self

    def __exit__(self, *exc: object) -> None:
        from pyroute2 import netns

        netns.popns()


def build_fabric(p: Plan) -> None:
    """The fabric namespace with bridge br0, and the host's veth ``P-host`` into it."""
    from pyroute2 import IPRoute

    with _InNetns(p.fabric_netns, create=True):
        with IPRoute() as ipr:
            lo = ipr.link_lookup(ifname="lo")
            ipr.link("set", index=lo[0], state="up")
            ipr.link("add", ifname=FABRIC_BRIDGE, kind="bridge", br_forward_delay=0, br_stp_state=0)
            br = ipr.link_lookup(ifname=FABRIC_BRIDGE)[0]
            ipr.link("set", index=br, state="up")
    fabric_fd = os.open(_netns_path(p.fabric_netns), os.O_RDONLY)
    try:
        with IPRoute() as ipr:
            try:
                ipr.link(
                    "add",
                    ifname=p.host_link,
                    kind="veth",
                    peer={"ifname": HOST_PEER, "net_ns_fd": fabric_fd},
                )
            except Exception as e:
                raise TopologyError(f"cannot create host link {p.host_link}: {e}") from e
            idx = ipr.link_lookup(ifname=p.host_link)[0]
            ipr.addr("add", index=idx, address=p.host_ip, prefixlen=p.prefixlen)
            ipr.link("set", index=idx, state="up")
    finally:
        os.close(fabric_fd)
    with _InNetns(p.fabric_netns, create=False):
        with IPRoute() as ipr:
            br = ipr.link_lookup(ifname=FABRIC_BRIDGE)[0]
            peer = ipr.link_lookup(ifname=HOST_PEER)[0]
            ipr.link("set", index=peer, master=br, state="up")


def build_node(p: Plan, node: NodePlan) -> None:
    """One node namespace: sysctls, lo, eth0 (veth to br0) with the node IP, service route."""
    from pyroute2 import IPRoute

    fabric_fd = os.open(_netns_path(p.fabric_netns), os.O_RDONLY)
    try:
        with _InNetns(node.netns, create=True):
            _write_sysctls(NODE_SYSCTLS)
            with IPRoute() as ipr:
                ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
                try:
                    ipr.link(
                        "add",
                        ifname=NODE_IFACE,
                        kind="veth",
                        peer={"ifname": node.fabric_port, "net_ns_fd": fabric_fd},
                    )
                except Exception as e:
                    raise TopologyError(f"node {node.name}: cannot create {NODE_IFACE}: {e}") from e
                idx = ipr.link_lookup(ifname=NODE_IFACE)[0]
                ipr.addr("add", index=idx, address=node.ip, prefixlen=p.prefixlen)
                ipr.link("set", index=idx, state="up")
                ipr.route("add", dst=p.service_cidr, oif=idx, scope="link")
    finally:
        os.close(fabric_fd)
    with _InNetns(p.fabric_netns, create=False):
        with IPRoute() as ipr:
            br = ipr.link_lookup(ifname=FABRIC_BRIDGE)[0]
            port = ipr.link_lookup(ifname=node.fabric_port)[0]
            ipr.link("set", index=port, master=br, state="up")


def host_conflicts(p: Plan) -> list[str]:
    """Host-namespace addresses inside the node CIDR on links other than ours (another lab?)."""
    from pyroute2 import IPRoute

    net = ipaddress.IPv4Network(p.node_cidr)
    out = []
    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for a in ipr.get_addr(family=2):
            addr = a.get_attr("IFA_ADDRESS")
            ifname = names.get(a["index"], "?")
            if ifname == p.host_link:
                continue
            other = ipaddress.IPv4Network(f"{addr}/{a['prefixlen']}", strict=False)
            if other.overlaps(net):
                out.append(f"{addr}/{a['prefixlen']} on {ifname}")
    return out


def host_link_exists(name: str) -> bool:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return bool(ipr.link_lookup(ifname=name))
