"""UserspaceProxier: kube-proxy's userspace mode behind the runner's Proxier contract.

Each sync reconciles the listeners with the service map (a service port keeps its listener,
proxy port and established connections while its portal is unchanged; a changed portal gets
a new listener; a removed one closes its listener), hands the ready endpoints to the load
balancer, holds every NodePort open, then renders the portal rules and applies them in one
iptables-legacy-restore. ``cleanup`` removes every rule and chain this mode installs.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
from dataclasses import dataclass

from kubecommon.model import Endpoint, NodeInfo, ServicePortInfo, ServicePortName

from ..config import ProxyConfig
from .apply import PortalApplier
from .loadbalancer import LoadBalancer
from .proxy import PipePool, Poller, PortAllocator, TCPProxy, UDPProxy, raise_nofile_limit
from .render import Portal, render

log = logging.getLogger("kubeproxy")

PROTOCOLS = ("TCP", "UDP")


@dataclass(slots=True)
class _Service:
    portal: Portal
    portal_key: tuple
    proxy: TCPProxy | UDPProxy
    node_port_key: tuple[str, int] | None


def _portal_key(info: ServicePortInfo) -> tuple:
    return (
        info.protocol,
        info.cluster_ip,
        info.port,
        info.node_port,
        info.external_ips,
        info.load_balancer_ips,
    )


def detect_node_ip() -> str:
    """The node's address when the Node object has not told us: eth0's, else any global one."""
    from pyroute2 import IPRoute

    best = ""
    with IPRoute() as ipr:
        for a in ipr.get_addr(family=socket.AF_INET):
            label, ip = a.get_attr("IFA_LABEL") or "", a.get_attr("IFA_ADDRESS") or ""
            if a["scope"] != 0 or not ip or ip.startswith("127."):
                continue
            if label == "eth0":
                return ip
            best = best or ip
    return best


class UserspaceProxier:
    def __init__(
        self,
        config: ProxyConfig,
        node_ip: str = "",
        listen_ip: str = "0.0.0.0",
        clean_other_modes: bool = True,
    ) -> None:
        self.clean_other_modes = clean_other_modes
        self.config = config
        self.node_ip = node_ip
        self.listen_ip = listen_ip
        self.lb = LoadBalancer()
        self.ports = PortAllocator(config.proxy_port_range)
        self.pipes = PipePool()
        self.applier = PortalApplier()
        self.services: dict[ServicePortName, _Service] = {}
        self.node_ports: dict[tuple[str, int], tuple[ServicePortName, socket.socket]] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.poller: Poller | None = None

    # -- runner hooks --------------------------------------------------------------------

    def on_node(self, node: NodeInfo) -> None:
        if node.internal_ip and node.internal_ip != self.node_ip:
            log.info("node IP is %s", node.internal_ip)
            self.node_ip = node.internal_ip

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.poller = Poller(self.loop)
        limit = raise_nofile_limit()
        if not self.node_ip:
            # pyroute2's IPRoute runs its own event loop: not inside ours
            self.node_ip = await asyncio.to_thread(detect_node_ip)
        if self.clean_other_modes:  # like kube-proxy: a mode starts by removing the other's rules
            await self.applier.cleanup_iptables_mode()
        # everything allocated so far (modules, the informers' caches, ...) lives as long as
        # the process: out of the cyclic GC's sight, so a full collection on the data path
        # only walks what was allocated since
        gc.freeze()
        if type(self.loop).__module__.split(".")[0] != "uvloop":
            log.info("userspace proxy on %s (uvloop is faster)", type(self.loop).__name__)
        log.info(
            "userspace proxy: node IP %s, fd limit %d, proxy ports %s",
            self.node_ip,
            limit,
            self.config.proxy_port_range or "ephemeral",
        )

    async def sync(
        self,
        services: dict[ServicePortName, ServicePortInfo],
        endpoints: dict[ServicePortName, tuple[Endpoint, ...]],
    ) -> None:
        if self.loop is None:
            await self.start()
        want = {k: v for k, v in services.items() if v.cluster_ip and v.protocol in PROTOCOLS}
        for spn in [s for s in self.services if s not in want]:
            log.info("stopping proxy for %s", spn)
            self._stop(spn)
            self.lb.delete_service(spn)
        errors: list[str] = []
        for spn, info in want.items():
            cur = self.services.get(spn)
            if cur is not None and _portal_key(info) == cur.portal_key:
                pass
            else:
                if cur is not None:
                    log.info("portal of %s changed; restarting its proxy", spn)
                    self._stop(spn)
                try:
                    self._start(spn, info)
                except OSError as e:
                    errors.append(f"{spn}: {e}")
                    continue
            self.lb.set_service(spn, float(info.session_affinity_timeout))
            eps = [(e.ip, e.port) for e in endpoints.get(spn, ()) if e.ready]
            if self.lb.set_endpoints(spn, eps):
                log.info(
                    "endpoints of %s: %s", spn, ", ".join(f"{i}:{p}" for i, p in eps) or "none"
                )
                proxy = self.services[spn].proxy
                if isinstance(proxy, UDPProxy):
                    proxy.prune(set(eps))
        self.lb.cleanup_stale_affinity()
        await self.applier.apply(render([s.portal for s in self.services.values()], self.node_ip))
        if errors:
            raise RuntimeError("userspace proxy: cannot serve " + "; ".join(errors))

    async def cleanup(self) -> None:
        await self.stop()
        await self.applier.cleanup()

    async def stop(self) -> None:
        for spn in list(self.services):
            self._stop(spn, drop_connections=True)
        self.pipes.close()
        if self.poller is not None:
            self.poller.close()

    # -- listeners -----------------------------------------------------------------------

    def _start(self, spn: ServicePortName, info: ServicePortInfo) -> None:
        assert self.loop is not None and self.poller is not None
        sock = self.ports.bind(info.protocol, self.listen_ip)
        try:
            if info.protocol == "TCP":
                proxy: TCPProxy | UDPProxy = TCPProxy(
                    self.loop, spn, self.lb, sock, self.pipes, self.poller
                )
            else:
                proxy = UDPProxy(self.loop, spn, self.lb, sock, self.config.udp_timeout)
        except OSError:
            sock.close()
            raise
        np_key = self._claim_node_port(spn, info) if info.node_port else None
        portal = Portal(
            name=spn,
            protocol=info.protocol,
            cluster_ip=info.cluster_ip,
            port=info.port,
            proxy_port=proxy.port,
            node_port=info.node_port,
            external_ips=info.external_ips,
            load_balancer_ips=info.load_balancer_ips,
        )
        svc = _Service(portal, _portal_key(info), proxy, np_key)
        self.services[spn] = svc
        log.info("proxying %s %s:%d on port %d", spn, info.cluster_ip, info.port, proxy.port)

    def _claim_node_port(
        self, spn: ServicePortName, info: ServicePortInfo
    ) -> tuple[str, int] | None:
        """Hold the NodePort open so no other process on the node can take it."""
        key = (info.protocol, info.node_port)
        if key in self.node_ports:
            owner = self.node_ports[key][0]
            if owner != spn:
                log.error("NodePort %s/%d of %s is already held for %s", *key, spn, owner)
            return None
        kind = socket.SOCK_STREAM if info.protocol == "TCP" else socket.SOCK_DGRAM
        s = socket.socket(socket.AF_INET, kind)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("", info.node_port))
            if kind == socket.SOCK_STREAM:
                s.listen(1)
        except OSError as e:
            s.close()
            log.error("cannot hold NodePort %s/%d for %s: %s", *key, spn, e)
            return None
        self.node_ports[key] = (spn, s)
        return key

    def _stop(self, spn: ServicePortName, drop_connections: bool = False) -> None:
        svc = self.services.pop(spn, None)
        if svc is None:
            return
        svc.proxy.close(drop_connections=drop_connections or isinstance(svc.proxy, UDPProxy))
        self.ports.release(svc.portal.protocol, svc.portal.proxy_port)
        if svc.node_port_key is not None:
            _, s = self.node_ports.pop(svc.node_port_key)
            s.close()
