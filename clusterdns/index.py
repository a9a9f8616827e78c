"""The precomputed answer index: every answer the zone can give, as ready wire bytes.

Division of labour: ``controller`` hands this module one ``ServiceRecords`` per owner
(a Service, a Pod IP, the zone apex, a namespace) whenever the API changes; the index
keeps the RRsets by owner, merges PTR contributions (``reverse``), and re-encodes only
the RRsets that changed into ``table``:

    table[lower(qname wire) + qtype + qclass] = Entry tuple (see ``_entry``)

so the hot path (``handler``) answers a query with one dict lookup and a few byte
concatenations: the response is ``query id + header for (RD, EDNS) + the query's own
question bytes (keeps its letter case) + body``; answer owners are pointers to offset 12.
``nodata`` maps every existing name to its zone (NOERROR/NODATA with the SOA for types
the name does not have); ``dynamic`` names are answered on the slow path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from . import reverse
from .ns import soa_tail, zone_records
from .records import RRset, ServiceRecords
from .wire import (
    CLASS_IN,
    CNAME,
    NOERROR,
    PTR,
    RR,
    Message,
    encode_name,
    flags_counts,
    opt_rr,
)

log = logging.getLogger("clusterdns")

# Entry layout (a plain tuple: fastest to index on the hot path)
E_HDR = 0  # 0..3: flags+counts for (rd=0,plain) (rd=1,plain) (rd=0,edns) (rd=1,edns)
E_BODY, E_BODY_EDNS, E_SIZE, E_SIZE_EDNS, E_RCODE = 4, 5, 6, 7, 8

OPT_BYTES = opt_rr()


def _entry(qname: str, qname_len: int, rrset: RRset, rcode: int = NOERROR) -> tuple:
    answers, extra = rrset
    m = Message(qname, qname_len)
    for rr in answers:
        m.add(rr)
    for rr in extra:
        m.add(rr)
    body = bytes(m.buf)
    an, ar = len(answers), len(extra)
    size = 12 + qname_len + 4 + len(body)
    return (
        flags_counts(rcode, False, an, 0, ar),
        flags_counts(rcode, True, an, 0, ar),
        flags_counts(rcode, False, an, 0, ar + 1),
        flags_counts(rcode, True, an, 0, ar + 1),
        body,
        body + OPT_BYTES,
        size,
        size + len(OPT_BYTES),
        rcode,
    )


def table_key(name: str, qtype: int, qclass: int = CLASS_IN) -> bytes:
    return encode_name(name.lower()) + qtype.to_bytes(2, "big") + qclass.to_bytes(2, "big")


class Index:
    def __init__(self, zones: Iterable[str], ttl: int = 5, pods: str = "disabled"):
        self.zones = [z.strip(".").lower() for z in zones]
        self.zone_wires = [encode_name(z) for z in self.zones]
        self.ttl = ttl
        self.pods = pods
        self.synced = False
        self.serial = int(time.time())
        self.ns_ips: tuple[str, ...] = ("127.0.0.1",)
        # what the hot path reads
        self.table: dict[bytes, tuple] = {}
        self.nodata: dict[bytes, int] = {}  # existing name wire -> zone id
        self.dynamic: set[bytes] = set()
        self.soa_tails: list[bytes] = [b""] * len(self.zones)
        # sources
        self._owners: dict[str, ServiceRecords] = {}
        self._rrsets: dict[tuple[str, int], RRset] = {}
        self._rr_owner: dict[tuple[str, int], str] = {}
        self._name_refs: dict[str, int] = {}
        self._ptr: dict[str, dict[str, tuple[tuple[str, bool], ...]]] = {}  # ip -> owner -> ...
        self.changes = 0
        self._render_zones()

    # ---- queries used by the slow path -------------------------------------------------
    def zone_of(self, name: str) -> int | None:
        n = name.lower().rstrip(".")
        for i, z in enumerate(self.zones):
            if n == z or n.endswith("." + z):
                return i
        return None

    def rrset(self, name: str, qtype: int) -> tuple[RR, ...]:
        return self._rrsets.get((name.lower(), qtype), ((), ()))[0]

    def rrset_full(self, name: str, qtype: int) -> RRset | None:
        return self._rrsets.get((name.lower(), qtype))

    def exists(self, name: str) -> bool:
        return name.lower() in self._name_refs

    def cname_target(self, name: str) -> str | None:
        rrs = self.rrset(name, CNAME)
        return str(rrs[0].rdata) if rrs else None

    # ---- updates -----------------------------------------------------------------------
    def set_owner(self, owner: str, recs: ServiceRecords | None) -> None:
        """Replace everything ``owner`` contributes (None removes it)."""
        old = self._owners.pop(owner, None)
        if recs is not None and (recs.rrsets or recs.names or recs.ptrs):
            self._owners[owner] = recs
        else:
            recs = None
        if old is None and recs is None:
            return
        old_rr = old.rrsets if old else {}
        new_rr = recs.rrsets if recs else {}
        for key in old_rr.keys() - new_rr.keys():
            if self._rr_owner.get(key) == owner:
                del self._rr_owner[key]
                del self._rrsets[key]
                self.table.pop(table_key(*key), None)
        for key, rrset in new_rr.items():
            if old_rr.get(key) == rrset and self._rr_owner.get(key) == owner:
                continue
            self._rr_owner[key] = owner
            self._rrsets[key] = rrset
            self._encode(key, rrset)
        old_names = old.names if old else frozenset()
        new_names = recs.names if recs else frozenset()
        for n in old_names - new_names:
            self._unref(n)
        for n in new_names - old_names:
            self._ref(n)
        old_dyn = old.dynamic if old else frozenset()
        new_dyn = recs.dynamic if recs else frozenset()
        for n in old_dyn - new_dyn:
            self.dynamic.discard(encode_name(n))
        for n in new_dyn:
            self.dynamic.add(encode_name(n))
        old_ptrs = old.ptrs if old else ()
        new_ptrs = recs.ptrs if recs else ()
        if old_ptrs != new_ptrs:
            touched = {ip for ip, _, _ in old_ptrs} | {ip for ip, _, _ in new_ptrs}
            for ip in {ip for ip, _, _ in old_ptrs}:
                self._ptr.get(ip, {}).pop(owner, None)
            grouped: dict[str, list[tuple[str, bool]]] = {}
            for ip, target, is_svc in new_ptrs:
                grouped.setdefault(ip, []).append((target, is_svc))
            for ip, items in grouped.items():
                self._ptr.setdefault(ip, {})[owner] = tuple(items)
            for ip in touched:
                self._render_ptr(ip)
        self._bump()

    def set_ns_ips(self, ips: tuple[str, ...]) -> None:
        if ips and ips != self.ns_ips:
            self.ns_ips = ips
            self._render_zones()

    def mark_synced(self) -> None:
        if not self.synced:
            self.synced = True
            log.info("index synced: %d answers, %d names", len(self.table), len(self.nodata))

    # ---- internals ---------------------------------------------------------------------
    def _ref(self, name: str) -> None:
        c = self._name_refs.get(name, 0)
        self._name_refs[name] = c + 1
        if c == 0:
            zid = self.zone_of(name)
            if zid is None and reverse.is_reverse(name):
                zid = -1
            if zid is not None and zid >= 0:
                self.nodata[encode_name(name)] = zid

    def _unref(self, name: str) -> None:
        c = self._name_refs.get(name, 0) - 1
        if c <= 0:
            self._name_refs.pop(name, None)
            self.nodata.pop(encode_name(name), None)
        else:
            self._name_refs[name] = c

    def _encode(self, key: tuple[str, int], rrset: RRset) -> None:
        name, qtype = key
        wire = encode_name(name)
        self.table[wire + qtype.to_bytes(2, "big") + b"\x00\x01"] = _entry(name, len(wire), rrset)

    def _render_ptr(self, ip: str) -> None:
        owners = self._ptr.get(ip)
        rname = reverse.reverse_name(ip)
        key = (rname, PTR)
        if not owners:
            self._ptr.pop(ip, None)
            if self._rr_owner.pop(key, None) is not None:
                del self._rrsets[key]
                self.table.pop(table_key(*key), None)
            return
        answers = reverse.ptr_answer((c for items in owners.values() for c in items), self.ttl)
        rrset = (answers, ())
        self._rr_owner[key] = "ptr"
        self._rrsets[key] = rrset
        self._encode(key, rrset)

    def _bump(self) -> None:
        self.changes += 1
        now = int(time.time())
        if now != self.serial:
            self.serial = max(now, self.serial + 1)
            self._render_zones()

    def _render_zones(self) -> None:
        for zid, zone in enumerate(self.zones):
            self.soa_tails[zid] = soa_tail(zone, self.ttl, self.serial)
            recs = zone_records(zone, self.ttl, self.serial, self.ns_ips)
            owner = f"zone/{zone}"
            old = self._owners.pop(owner, None)
            self._owners[owner] = recs
            for key, rrset in recs.rrsets.items():
                if old is not None and old.rrsets.get(key) == rrset:
                    continue
                self._rr_owner[key] = owner
                self._rrsets[key] = rrset
                self._encode(key, rrset)
            if old is None:
                for n in recs.names:
                    self._ref(n)
