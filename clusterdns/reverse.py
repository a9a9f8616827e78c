"""PTR records (specification 2.3.3 and 2.4.3): reverse names and which target wins.

Division of labour: ``records`` says which (IP, target) pairs a Service contributes;
this module turns an IP into its ``in-addr.arpa`` / ``ip6.arpa`` name and picks the
answer for one IP from every contribution, as CoreDNS does: a cluster IP answers with
its Service only; otherwise every endpoint that has the IP answers (one PTR per
``<hostname>.<svc>.<ns>.svc.<zone>``). Reverse names we know nothing about are not ours:
the handler forwards them upstream (CoreDNS's ``fallthrough in-addr.arpa ip6.arpa``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from .wire import PTR, RR

REVERSE_SUFFIXES = ("in-addr.arpa", "ip6.arpa")


def reverse_name(ip: str) -> str:
    if "." in ip and ":" not in ip:
        return ".".join(reversed(ip.split("."))) + ".in-addr.arpa"
    return ipaddress.ip_address(ip).reverse_pointer.lower()


def is_reverse(name: str) -> bool:
    n = name.lower().rstrip(".")
    return any(n == s or n.endswith("." + s) for s in REVERSE_SUFFIXES)


def ptr_answer(contribs: Iterable[tuple[str, bool]], ttl: int) -> tuple[RR, ...]:
    """contribs: (target, is_cluster_ip) from every Service that has this IP."""
    items = sorted(set(contribs))
    service_targets = [t for t, is_svc in items if is_svc]
    if service_targets:
        return (RR(None, PTR, ttl, service_targets[0]),)
    return tuple(RR(None, PTR, ttl, t) for t, _ in items)
