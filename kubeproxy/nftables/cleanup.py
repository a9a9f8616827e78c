"""``kubeproxy --cleanup`` for the nftables mode: delete our table, and nothing else.

Everything the mode installs lives in the one table ``ip kube-proxy``; deleting it removes
every chain, map, set and base-chain hook at once. Idempotent: no table, nothing to do.
"""

from __future__ import annotations

import logging

from .apply import NftApplier, NftError
from .render import FAMILY, TABLE

log = logging.getLogger("kubeproxy")


async def cleanup(applier: NftApplier | None = None) -> bool:
    """Returns True when everything went fine (including: there was nothing to remove)."""
    ap = applier or NftApplier()
    try:
        if await ap.delete_table():
            log.info("cleanup: deleted nftables table %s %s", FAMILY, TABLE)
        return True
    except (NftError, OSError) as e:
        log.error("cleanup of nftables table %s %s failed: %s", FAMILY, TABLE, e)
        return False
