"""clusterdns parsing: query names -> requests (CoreDNS parseRequest) and the wire parsers,
fuzzed with hypothesis: garbage never raises anything but WireError, and the hot path and
the slow path never raise at all."""

from __future__ import annotations

import dnslib
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clusterdns.handler import Handler
from clusterdns.index import Index
from clusterdns.metrics import Stats
from clusterdns.parse import InvalidName, Request, parse_request
from clusterdns.records import DnsPort, DnsService, service_records
from clusterdns.wire import WireError, parse_query, read_name, ttl_offsets

Z = "cluster.local"


@pytest.mark.parametrize(
    "name, want",
    [
        (Z, Request()),
        (f"svc.{Z}", Request("svc")),
        (f"demo.svc.{Z}", Request("svc", "demo")),
        (f"web.demo.svc.{Z}", Request("svc", "demo", "web")),
        (f"Web.DEMO.svc.{Z}", Request("svc", "demo", "web")),
        (f"db-0.db.demo.svc.{Z}", Request("svc", "demo", "db", endpoint="db-0")),
        (
            f"_http._tcp.web.demo.svc.{Z}",
            Request("svc", "demo", "web", port="http", protocol="tcp"),
        ),
        (f"10-1-2-3.demo.pod.{Z}", Request("pod", "demo", "10-1-2-3")),
    ],
)
def test_parse_request_shapes(name, want):
    assert parse_request(name, Z) == want


@pytest.mark.parametrize("name", [f"a.b.c.web.demo.svc.{Z}", f"web.demo.nope.{Z}", "example.com"])
def test_parse_request_invalid_names(name):
    with pytest.raises(InvalidName):
        parse_request(name, Z)


def test_compression_loop_rejected():
    pkt = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01"
    with pytest.raises(WireError):
        parse_query(pkt)
    with pytest.raises(WireError):
        read_name(b"\xc0\x02\xc0\x00", 0)


def test_huge_counts_rejected():
    good = bytes(dnslib.DNSRecord.question("web.demo.svc.cluster.local").pack())
    with pytest.raises(WireError):
        parse_query(good[:4] + b"\x00\x01\xff\xff\xff\xff\xff\xff" + good[12:])


def _handler() -> Handler:
    idx = Index([Z], pods="insecure")
    svc = DnsService("demo", "web", "ClusterIP", ("10.96.0.10",), (DnsPort("http", 80, "TCP"),))
    idx.set_owner("svc/demo/web", service_records(svc, (), Z, 5, Z))
    idx.mark_synced()
    return Handler(idx, None, Stats())


HANDLER = _handler()
GOOD = bytes(dnslib.DNSRecord.question("web.demo.svc.cluster.local").pack())


def _exercise(data: bytes) -> None:
    try:
        parse_query(data)
    except WireError:
        pass
    ttl_offsets(data)
    for tcp in (0, 16):
        HANDLER.fast(data, tcp)
    out: list[bytes] = []
    HANDLER.slow(data, out.append, 0)  # no event loop: must not need one for garbage
    for o in out:
        assert len(o) >= 12


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_random_bytes(data):
    _exercise(data)


@settings(max_examples=1500, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.integers(0, 255)), max_size=6),
    st.integers(0, len(GOOD)),
)
def test_fuzz_mutated_queries(edits, cut):
    b = bytearray(GOOD)
    for pos, val in edits:
        b[pos] = val
    _exercise(bytes(b[: max(cut, 12)]))


def test_fast_path_answers_and_keeps_case():
    q = bytes(dnslib.DNSRecord.question("WEB.demo.SVC.cluster.local").pack())
    out = HANDLER.fast(q, 0)
    r = dnslib.DNSRecord.parse(out)
    assert str(r.rr[0].rname) == "WEB.demo.SVC.cluster.local."
    assert str(r.rr[0].rdata) == "10.96.0.10" and r.header.aa and r.header.id == r.header.id
