"""kube-proxy's configuration as one frozen value, parsed once by the CLI and shared by
the runner and every proxy mode (iptables, userspace)."""

from __future__ import annotations

import re
from dataclasses import dataclass

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str | float | int) -> float:
    """Go-style durations as kube-proxy's flags take them: "0s", "100ms", "1s", "30s", "5m".

    A bare number is seconds. Returns seconds as a float; raises ValueError otherwise.
    """
    if isinstance(text, int | float):
        return float(text)
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"invalid duration {text!r} (use e.g. 0s, 100ms, 1s, 5m)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_hostport(text: str) -> tuple[str, int]:
    """ "127.0.0.1:10249" -> ("127.0.0.1", 10249); an empty host means 0.0.0.0."""
    host, _, port = text.rpartition(":")
    if not port.isdigit():
        raise ValueError(f"invalid address {text!r} (use HOST:PORT)")
    return (host.strip("[]") or "0.0.0.0"), int(port)


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    hostname_override: str = ""  # this node's name (endpoints' nodeName are compared to it)
    proxy_mode: str = "iptables"  # iptables | userspace
    cluster_cidr: str = ""  # pod CIDR of the cluster: traffic from outside it is masqueraded
    masquerade_all: bool = False
    min_sync_period: float = 1.0  # seconds between two syncs at most this often
    sync_period: float = 30.0  # full resync period (repairs rules removed by hand)
    metrics_bind_address: str = "127.0.0.1:10249"  # "" disables the metrics server
    healthz_bind_address: str = "0.0.0.0:10256"  # "" disables /healthz
    nodeport_addresses: tuple[str, ...] = ()  # CIDRs; () = every local address
    iptables_backend: str = "legacy"  # legacy (direct x_tables) | legacy-restore | nft (direct nf_tables) | nft-restore
    localhost_nodeports: bool = False  # NodePorts on 127.0.0.1 (sets route_localnet=1)
    proxy_port_range: str = ""  # userspace mode: "FROM-TO" or "" for ephemeral ports
    udp_timeout: float = 0.25  # userspace mode: idle timeout of a UDP session (seconds)
