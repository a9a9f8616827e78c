"""clusterdns index: the specification's rules as pure RRsets, and incremental updates of
the precomputed wire table (table-driven: model in, records out)."""

from __future__ import annotations

from clusterdns.index import Index, table_key
from clusterdns.records import DnsEndpoint, DnsPort, DnsService, endpoint_hostname, service_records
from clusterdns.wire import AAAA, CNAME, PTR, SRV, A

Z = "cluster.local"
HTTP = DnsPort("http", 80, "TCP")


def recs(svc, eps=()):
    return service_records(svc, tuple(eps), Z, 5, Z)


def test_clusterip_records_and_no_endpoint_names():
    r = recs(DnsService("ns", "web", "ClusterIP", ("10.96.0.5",), (HTTP,)))
    base = f"web.ns.svc.{Z}"
    assert set(r.rrsets) == {(base, A), (base, SRV), (f"_http._tcp.{base}", SRV)}
    assert r.ptrs == (("10.96.0.5", base, True),)


def test_headless_ready_only_and_hostnames():
    eps = [
        DnsEndpoint("10.0.0.1", "a", True, (HTTP,)),
        DnsEndpoint("10.0.0.2", "", True, (HTTP,)),
        DnsEndpoint("10.0.0.3", "c", False, (HTTP,)),
    ]
    r = recs(DnsService("ns", "h", "Headless", (), (HTTP,)), eps)
    base = f"h.ns.svc.{Z}"
    ips = sorted(rr.rdata for rr in r.rrsets[(base, A)][0])
    assert len(ips) == 2
    assert (f"a.{base}", A) in r.rrsets and (f"10-0-0-2.{base}", A) in r.rrsets
    assert (f"c.{base}", A) not in r.rrsets
    srv = r.rrsets[(f"_http._tcp.{base}", SRV)]
    assert len(srv[0]) == 2 and len(srv[1]) == 2


def test_headless_without_ready_endpoints_has_no_name():
    r = recs(
        DnsService("ns", "h", "Headless", (), (HTTP,)),
        [DnsEndpoint("10.0.0.3", "c", False, (HTTP,))],
    )
    assert f"h.ns.svc.{Z}" not in r.names


def test_endpoint_hostname_rules():
    assert endpoint_hostname(DnsEndpoint("10.1.2.3", "", True)) == "10-1-2-3"
    assert endpoint_hostname(DnsEndpoint("fd00::1", "", True)) == "fd00--1"
    assert endpoint_hostname(DnsEndpoint("10.1.2.3", "Pet-0", True)) == "pet-0"


def test_ipv6_service_gets_aaaa():
    r = recs(DnsService("ns", "v6", "ClusterIP", ("fd00::10",), (HTTP,)))
    assert (f"v6.ns.svc.{Z}", AAAA) in r.rrsets and (f"v6.ns.svc.{Z}", A) not in r.rrsets


def test_externalname_is_cname_and_dynamic():
    r = recs(DnsService("ns", "ext", "ExternalName", external_name="www.example.com."))
    assert r.rrsets[(f"ext.ns.svc.{Z}", CNAME)][0][0].rdata == "www.example.com"
    assert f"ext.ns.svc.{Z}" in r.dynamic


def test_index_incremental_update_and_removal():
    idx = Index([Z])
    svc = DnsService("ns", "web", "ClusterIP", ("10.96.0.5",), (HTTP,))
    idx.set_owner("svc/ns/web", recs(svc))
    key = table_key(f"web.ns.svc.{Z}", A)
    assert key in idx.table and table_key("5.0.96.10.in-addr.arpa", PTR) in idx.table
    idx.set_owner("svc/ns/web", recs(DnsService("ns", "web", "ClusterIP", ("10.96.0.6",), (HTTP,))))
    assert idx.table[key][4].endswith(bytes([10, 96, 0, 6]))
    assert table_key("5.0.96.10.in-addr.arpa", PTR) not in idx.table
    idx.set_owner("svc/ns/web", None)
    assert key not in idx.table and not idx.exists(f"web.ns.svc.{Z}")


def test_ptr_cluster_ip_wins_over_endpoints():
    idx = Index([Z])
    idx.set_owner(
        "svc/ns/a",
        recs(
            DnsService("ns", "a", "Headless", (), (HTTP,)),
            [DnsEndpoint("10.0.0.9", "x", True, (HTTP,))],
        ),
    )
    idx.set_owner(
        "svc/ns/b",
        recs(
            DnsService("ns", "b", "Headless", (), (HTTP,)),
            [DnsEndpoint("10.0.0.9", "y", True, (HTTP,))],
        ),
    )
    targets = sorted(rr.rdata for rr in idx.rrset("9.0.0.10.in-addr.arpa", PTR))
    assert targets == [f"x.a.ns.svc.{Z}", f"y.b.ns.svc.{Z}"]
    idx.set_owner("svc/ns/c", recs(DnsService("ns", "c", "ClusterIP", ("10.0.0.9",), (HTTP,))))
    assert [rr.rdata for rr in idx.rrset("9.0.0.10.in-addr.arpa", PTR)] == [f"c.ns.svc.{Z}"]
