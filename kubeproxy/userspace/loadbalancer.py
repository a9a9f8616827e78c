"""Round-robin endpoint choice with ClientIP session affinity, as kube-proxy's userspace
LoadBalancerRR did it. No I/O; time comes from an injectable clock.

- The endpoint list of a service is shuffled whenever its set changes, and the round-robin
  index restarts at 0; an unchanged set (same endpoints in another order) changes nothing.
- With affinity (timeout > 0) a client IP keeps its endpoint while it keeps using it within
  the timeout; records for endpoints that disappeared are dropped on update.
- ``next_endpoint(..., reset_affinity=True)`` is what connect failover uses: skip the sticky
  endpoint (it just failed) and take the next one in the rotation.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field

log = logging.getLogger("kubeproxy")

Addr = tuple[str, int]  # (ip, port) of an endpoint


@dataclass(slots=True)
class _Sticky:
    endpoint: Addr
    last_used: float


@dataclass(slots=True)
class _State:
    endpoints: list[Addr] = field(default_factory=list)
    index: int = 0
    affinity_timeout: float = 0.0  # seconds; 0 = none
    sticky: dict[str, _Sticky] = field(default_factory=dict)


class LoadBalancer:
    """Per-service rotation; keys are any hashable (ServicePortName in the proxier)."""

    def __init__(
        self,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rng = rng or random.Random()
        self._clock = clock
        self._services: dict[Hashable, _State] = {}

    # -- configuration -------------------------------------------------------------------

    def set_service(self, key: Hashable, affinity_timeout: float = 0.0) -> None:
        st = self._services.get(key)
        if st is None:
            self._services[key] = _State(affinity_timeout=affinity_timeout)
            return
        if st.affinity_timeout != affinity_timeout:
            st.affinity_timeout = affinity_timeout
            st.sticky.clear()

    def delete_service(self, key: Hashable) -> None:
        self._services.pop(key, None)

    def set_endpoints(self, key: Hashable, endpoints: Iterable[Addr]) -> bool:
        """Replace the endpoints; returns True when the set changed (then reshuffled)."""
        st = self._services.get(key)
        if st is None:
            st = self._services[key] = _State()
        new = list(dict.fromkeys(endpoints))
        if set(new) == set(st.endpoints) and len(new) == len(st.endpoints):
            return False
        keep = set(new)
        for ip in [ip for ip, s in st.sticky.items() if s.endpoint not in keep]:
            del st.sticky[ip]
        self._rng.shuffle(new)
        st.endpoints = new
        st.index = 0
        log.debug("endpoints of %s: %s", key, new)
        return True

    def endpoints(self, key: Hashable) -> tuple[Addr, ...]:
        st = self._services.get(key)
        return tuple(st.endpoints) if st else ()

    def has_endpoints(self, key: Hashable) -> bool:
        st = self._services.get(key)
        return bool(st and st.endpoints)

    # -- the hot path --------------------------------------------------------------------

    def next_endpoint(
        self, key: Hashable, client_ip: str, reset_affinity: bool = False
    ) -> Addr | None:
        st = self._services.get(key)
        if st is None or not st.endpoints:
            return None
        timeout = st.affinity_timeout
        if timeout > 0:
            now = self._clock()
            if not reset_affinity:
                s = st.sticky.get(client_ip)
                if s is not None and now - s.last_used < timeout:
                    s.last_used = now
                    return s.endpoint
        eps = st.endpoints
        ep = eps[st.index % len(eps)]
        st.index = (st.index + 1) % len(eps)
        if timeout > 0:
            st.sticky[client_ip] = _Sticky(ep, now)
        return ep

    def cleanup_stale_affinity(self) -> None:
        now = self._clock()
        for st in self._services.values():
            if st.affinity_timeout > 0 and st.sticky:
                t = st.affinity_timeout
                for ip in [ip for ip, s in st.sticky.items() if now - s.last_used >= t]:
                    del st.sticky[ip]
