"""The contract between the runner and a proxy mode, and the registry of modes.

The runner (kubeproxy.runner) watches the API and hands a mode the two complete maps
every time something changed; the mode makes the node forward service traffic to match.
Modes are imported lazily so a mode's dependencies are only needed when it is used.
"""

from __future__ import annotations

import importlib
from typing import Protocol, runtime_checkable

from kubecommon.model import Endpoint, NodeInfo, ServicePortInfo, ServicePortName

from .config import ProxyConfig


@runtime_checkable
class Proxier(Protocol):
    async def start(self) -> None:
        """Prepare the node (sysctls, base chains); called once before the first sync."""

    async def sync(
        self,
        services: dict[ServicePortName, ServicePortInfo],
        endpoints: dict[ServicePortName, tuple[Endpoint, ...]],
    ) -> None:
        """Make the node match these maps. Raise on failure; the runner retries."""

    async def cleanup(self) -> None:
        """--cleanup: remove everything this mode ever installed on the node."""


# Optional hooks a mode may implement (the runner calls them when present):
#   def on_node(self, node: NodeInfo) -> None      this node's object changed (IP, podCIDR)
#   async def stop(self) -> None                   the process is exiting
NodeHook = NodeInfo  # re-exported for modes' type hints

MODES: dict[str, str] = {
    "iptables": "kubeproxy.iptables.proxier:IptablesProxier",
    "userspace": "kubeproxy.userspace.proxier:UserspaceProxier",
    "nftables": "kubeproxy.nftables.proxier:NftablesProxier",
}


def make_proxier(config: ProxyConfig) -> Proxier:
    """Instantiate the proxier for ``config.proxy_mode`` (class(config))."""
    try:
        target = MODES[config.proxy_mode]
    except KeyError:
        raise ValueError(
            f"unknown proxy mode {config.proxy_mode!r}; choose one of {', '.join(MODES)}"
        ) from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)(config)
