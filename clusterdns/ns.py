"""The zone's own records: SOA, NS, the name server's address and the dns-version TXT.

Division of labour: ``records`` answers for Services; this module answers for the zone
apex the way CoreDNS's kubernetes plugin does: ``<zone> SOA ns.dns.<zone>
hostmaster.<zone> <serial> 7200 1800 86400 <ttl>`` (also the Authority of every negative
answer), ``<zone> NS ns.dns.<zone>`` with the server's address in Additional,
``ns.dns.<zone> A`` (the kube-dns Service IP when it exists), ``dns-version.<zone> TXT
"1.1.0"`` (specification 2.2, TTL 28800 as CoreDNS), and NODATA for ``<zone>``,
``svc.<zone>`` and ``pod.<zone>``.
"""

from __future__ import annotations

import struct

from .records import RRset, ServiceRecords, addr_rr
from .wire import NS, RR, SOA, TXT, encode_name, rdata_for

SCHEMA_VERSION = "1.1.0"
VERSION_TTL = 28800
REFRESH, RETRY, EXPIRE = 7200, 1800, 86400


def soa_rr(zone: str, ttl: int, serial: int) -> RR:
    return RR(
        zone,
        SOA,
        ttl,
        (f"ns.dns.{zone}", f"hostmaster.{zone}", serial & 0xFFFFFFFF, REFRESH, RETRY, EXPIRE, ttl),
    )


def soa_tail(zone: str, ttl: int, serial: int) -> bytes:
    """The SOA RR after its owner name (type, class, TTL, rdata, names uncompressed): the
    Authority of a negative answer is ``pointer-to-zone-in-the-question + soa_tail``."""
    rdata = (
        encode_name(f"ns.dns.{zone}")
        + encode_name(f"hostmaster.{zone}")
        + struct.pack("!IIIII", serial & 0xFFFFFFFF, REFRESH, RETRY, EXPIRE, ttl)
    )
    return struct.pack("!HHIH", SOA, 1, ttl, len(rdata)) + rdata


def zone_records(zone: str, ttl: int, serial: int, ns_ips: tuple[str, ...]) -> ServiceRecords:
    rrsets: dict[tuple[str, int], RRset] = {}
    nsname = f"ns.dns.{zone}"
    rrsets[(zone, SOA)] = ((RR(None, SOA, ttl, soa_rr(zone, ttl, serial).rdata),), ())
    glue = tuple(addr_rr(nsname, ip, ttl) for ip in sorted(ns_ips))
    rrsets[(zone, NS)] = ((RR(None, NS, ttl, nsname),), glue)
    for ip in ns_ips:
        rr = addr_rr(None, ip, ttl)
        prev = rrsets.get((nsname, rr.rtype), ((), ()))[0]
        rrsets[(nsname, rr.rtype)] = (prev + (rr,), ())
    rrsets[(f"dns-version.{zone}", TXT)] = (
        (RR(None, TXT, VERSION_TTL, rdata_for(TXT, SCHEMA_VERSION)),),
        (),
    )
    names = frozenset({zone, f"svc.{zone}", f"pod.{zone}", f"dns-version.{zone}", nsname})
    return ServiceRecords(rrsets=rrsets, names=names)
