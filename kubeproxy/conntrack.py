"""Stale UDP conntrack entries: what to delete (pure) and deleting it (the conntrack tool).

UDP has no connection end, so a client that keeps sending from the same port keeps its
conntrack entry, and with it the DNAT to an endpoint that may be gone. As kube-proxy does,
after each sync we delete (a) entries DNATed to an endpoint that left a UDP service, and
(b) entries for a UDP service's addresses when it goes from no endpoints to some (those
entries were created while the packets were rejected and would keep being rejected).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from kubecommon.model import Endpoint, ServicePortInfo, ServicePortName

from .tools import run

log = logging.getLogger("kubeproxy")


@dataclass(frozen=True, slots=True, order=True)
class Deletion:
    """One ``conntrack -D`` call: flows to ``dst`` (or to port ``dport``), DNATed to ``nat``."""

    protocol: str
    dst: str = ""  # original destination IP (service IP)
    dport: int = 0  # original destination port (a NodePort)
    nat: str = ""  # the endpoint IP the flow was DNATed to ("" = any)

    def argv(self) -> list[str]:
        a = ["conntrack", "-D", "-p", self.protocol.lower()]
        if self.dst:
            a += ["--orig-dst", self.dst]
        if self.dport:
            a += ["--orig-port-dst", str(self.dport)]
        if self.nat:
            a += ["--dst-nat", self.nat]
        return a


def _serving_ips(eps: tuple[Endpoint, ...]) -> set[str]:
    return {e.ip for e in eps if e.ready or (e.serving and e.terminating)}


def stale_entries(
    old_services: Mapping[ServicePortName, ServicePortInfo],
    old_endpoints: Mapping[ServicePortName, tuple[Endpoint, ...]],
    services: Mapping[ServicePortName, ServicePortInfo],
    endpoints: Mapping[ServicePortName, tuple[Endpoint, ...]],
) -> list[Deletion]:
    out: set[Deletion] = set()
    for spn in set(old_endpoints) | set(endpoints):
        if spn.protocol != "UDP":
            continue
        before = old_endpoints.get(spn, ())
        after = endpoints.get(spn, ())
        if before is after:
            continue
        old_ips, new_ips = _serving_ips(before), _serving_ips(after)
        svc = services.get(spn) or old_services.get(spn)
        if svc is None or not svc.cluster_ip:
            continue
        addrs = (svc.cluster_ip, *svc.external_ips, *svc.load_balancer_ips)
        for ip in old_ips - new_ips:
            for a in addrs:
                out.add(Deletion("UDP", dst=a, nat=ip))
            if svc.node_port:
                out.add(Deletion("UDP", dport=svc.node_port, nat=ip))
        if new_ips and not old_ips:
            for a in addrs:
                out.add(Deletion("UDP", dst=a))
            if svc.node_port:
                out.add(Deletion("UDP", dport=svc.node_port))
    return sorted(out)


async def delete(entries: list[Deletion]) -> None:
    """Run the deletions (exit status 1 = nothing matched, which is fine)."""
    if not entries:
        return
    results = await asyncio.gather(*(run(d.argv()) for d in entries), return_exceptions=True)
    for d, r in zip(entries, results, strict=True):
        if isinstance(r, BaseException):
            log.warning("conntrack %s failed: %s", " ".join(d.argv()[1:]), r)
        elif r[0] not in (0, 1):
            log.warning("conntrack %s failed (%d): %s", " ".join(d.argv()[1:]), r[0], r[2].strip())
    log.debug("cleared stale UDP conntrack entries: %s", entries)
