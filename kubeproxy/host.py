"""What the kernel modes (iptables, nftables) read from and set on the node they run on.

The node's addresses (for ``--nodeport-addresses``), whether conntrack is TCP-liberal (then
kube-proxy need not drop ctstate INVALID), and ``route_localnet`` for NodePorts on
127.0.0.1 when asked for. One place, so the modes cannot drift apart.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import logging
from pathlib import Path

from kubecommon.model import NodeInfo

from .config import ProxyConfig

log = logging.getLogger("kubeproxy")

LIBERAL = Path("/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal")
ROUTE_LOCALNET = Path("/proc/sys/net/ipv4/conf/all/route_localnet")


def _dump_ipv4s() -> list[str]:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return sorted({a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=2)})


def local_ipv4s() -> list[str]:
    """IPv4 addresses of this network namespace.

    pyroute2's blocking ``IPRoute`` runs its own event loop, which fails inside a running
    one (a sync is called from the agent's loop), so there the dump runs on a short-lived
    thread (it starts in the caller's network namespace).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _dump_ipv4s()
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(_dump_ipv4s).result(timeout=10)


def nodeport_ips(cidrs: tuple[str, ...], addrs: list[str]) -> tuple[str, ...]:
    """The node addresses inside ``--nodeport-addresses`` CIDRs."""
    nets = [ipaddress.ip_network(c, strict=False) for c in cidrs]
    return tuple(a for a in addrs if any(ipaddress.ip_address(a) in n for n in nets))


def configured_nodeport_ips(config: ProxyConfig) -> tuple[str, ...] | None:
    """None means every local address (kube-proxy's default)."""
    if not config.nodeport_addresses:
        return None
    return nodeport_ips(config.nodeport_addresses, local_ipv4s())


def conntrack_tcp_liberal() -> bool:
    try:
        return LIBERAL.read_text().strip() not in ("", "0")
    except OSError:
        return False


def prepare_node(config: ProxyConfig) -> bool:
    """Sysctls a kernel mode needs at start; returns whether conntrack is TCP-liberal."""
    if config.localhost_nodeports:
        try:
            ROUTE_LOCALNET.write_text("1")
            log.info("route_localnet=1 for NodePorts on 127.0.0.1 (--iptables-localhost-nodeports)")
        except OSError as e:
            log.warning("cannot set route_localnet: %s", e)
    return conntrack_tcp_liberal()


class NodeAwareProxier:
    """The Proxier hooks both kernel modes implement the same way (mixed into each)."""

    config: ProxyConfig
    node: NodeInfo | None
    _need_full: bool
    _liberal: bool

    async def start(self) -> None:
        self._liberal = prepare_node(self.config)

    def on_node(self, node: NodeInfo) -> None:
        self.node = node

    def request_full_sync(self) -> None:
        self._need_full = True

    def node_context_fields(self) -> dict[str, object]:
        """The NodeContext fields every kernel mode's renderer takes."""
        cfg = self.config
        return {
            "node_name": cfg.hostname_override,
            "cluster_cidr": cfg.cluster_cidr,
            "masquerade_all": cfg.masquerade_all,
            "nodeport_ips": configured_nodeport_ips(cfg),
            "localhost_nodeports": cfg.localhost_nodeports,
            "conntrack_tcp_liberal": self._liberal,
        }
