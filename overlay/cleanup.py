"""``--cleanup``: remove everything the overlay agent ever installed in this namespace.

Works after anything (a crash, another backend, a half-finished start): flannel.1 (its
neighbours, FDB entries and routes go with it), host-gw routes into the cluster network,
the FLANNEL-POSTRTG chain and its jump, and the subnet file. Idempotent: a second run finds
nothing and says so.
"""

from __future__ import annotations

import logging
from ipaddress import IPv4Network

from . import masq, subnetfile
from .backend.hostgw import HostGwBackend
from .backend.vxlan import VxlanBackend

log = logging.getLogger("overlay")


async def cleanup(cluster_cidr: IPv4Network, subnet_file: str) -> None:
    vx = VxlanBackend()
    try:
        await vx.cleanup()
    finally:
        await vx.close()
    gw = HostGwBackend(cluster_cidr)
    try:
        await gw.cleanup()
    finally:
        await gw.close()
    try:
        masq.cleanup()
    except (OSError, RuntimeError) as e:
        log.warning("could not remove masquerade rules: %s", e)
    if subnetfile.remove(subnet_file):
        log.info("removed %s", subnet_file)
    log.info("cleanup done")
