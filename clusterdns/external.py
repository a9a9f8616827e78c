"""ExternalName Services (specification 2.5): a CNAME, and its target chased per query.

Division of labour: ``external_records`` is the pure part (the CNAME RRset the index
precomputes for CNAME queries; the name exists, so other types are NODATA); ``chase``
runs on the slow path for A/AAAA queries: the answer is the CNAME followed by the
target's records, taken from the index when the target is inside one of our zones and
from the upstream (through the forwarder and its cache) otherwise. Without an upstream,
or when it fails, the answer is the CNAME alone (as CoreDNS does).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .records import RRset, ServiceRecords
from .wire import CNAME, RR

if TYPE_CHECKING:
    from .forward import Forwarder
    from .index import Index

MAX_CHAIN = 8


def external_records(base: str, external_name: str, ttl: int) -> ServiceRecords:
    target = external_name.rstrip(".").lower()
    if not target:
        return ServiceRecords()
    rrsets: dict[tuple[str, int], RRset] = {(base, CNAME): ((RR(None, CNAME, ttl, target),), ())}
    return ServiceRecords(rrsets=rrsets, names=frozenset({base}), dynamic=frozenset({base}))


async def chase(index: Index, forwarder: Forwarder | None, name: str, qtype: int) -> list[RR]:
    """RRs answering ``name``/``qtype`` for a dynamic (ExternalName) name: CNAME chain plus the
    final target's records (owner names explicit, never the question pointer)."""
    out: list[RR] = []
    seen: set[str] = set()
    cur = name
    for _ in range(MAX_CHAIN):
        target = index.cname_target(cur)
        if target is None or cur in seen:
            break
        seen.add(cur)
        out.append(RR(cur, CNAME, index.ttl, target))
        cur = target
        if index.zone_of(cur) is None:
            if forwarder is not None and forwarder.enabled:
                out.extend(await forwarder.resolve(cur, qtype))
            return out
        rrs = index.rrset(cur, qtype)
        if rrs:
            out.extend(RR(cur, r.rtype, r.ttl, r.rdata) for r in rrs)
            return out
    return out
