"""Controllers running inside the stub, as kube-controller-manager runs them upstream."""

from __future__ import annotations

import asyncio
import logging

from ..registry import Registry
from ..store import Store

log = logging.getLogger("apiserver_stub")


class Controllers:
    def __init__(self, store: Store, registry: Registry, cluster_cidr: str, mask: int):
        self.store = store
        self.registry = registry
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        pass

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
