"""clusterdns against apiserver_stub: one test per rule of the Kubernetes DNS specification.

Real DNS queries (dnspython) over UDP/TCP to a running ``python -m clusterdns`` (one
worker, loopback high port) that watches the stub; objects are created through the API
like a user would. Section numbers refer to kubernetes/dns docs/specification.md 1.1.0.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from apiserver_stub.testing import free_port, run_apiserver
from kubecommon.client import SyncApiClient

NS = "dnsspec"
ZONE = "cluster.local"


def _ready(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} never became ready")


def _start(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        argv, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _stop(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(10)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def _slice(name: str, svc: str, endpoints: list[dict], ports: list[dict]) -> dict:
    return {
        "metadata": {"name": name, "namespace": NS, "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": ports,
    }


class Dns:
    def __init__(self, port: int, metrics: str, ready: str, api: SyncApiClient):
        self.port, self.metrics, self.ready, self.api = port, metrics, ready, api

    def q(self, name: str, rtype: str = "A", tcp: bool = False, **kw) -> dns.message.Message:
        msg = dns.message.make_query(name, rtype, **kw)
        fn = dns.query.tcp if tcp else dns.query.udp
        return fn(msg, "127.0.0.1", port=self.port, timeout=3, ignore_trailing=True)

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(self.metrics, timeout=3) as r:
            text = r.read().decode()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name) and not line.startswith("#")
        )


def answers(r: dns.message.Message, rtype: str = "A") -> list[str]:
    t = dns.rdatatype.from_text(rtype)
    return sorted(rd.to_text() for rrset in r.answer if rrset.rdtype == t for rd in rrset)


def soa_in_authority(r: dns.message.Message) -> bool:
    return any(
        rr.rdtype == dns.rdatatype.SOA and rr.name.to_text() == ZONE + "." for rr in r.authority
    )


@pytest.fixture(scope="module")
def env():
    with run_apiserver() as url:
        api = SyncApiClient(url)
        api.create("namespaces", {"metadata": {"name": NS}})
        web = api.create(
            "services",
            {
                "metadata": {"name": "web", "namespace": NS},
                "spec": {
                    "ports": [
                        {"name": "http", "port": 80, "protocol": "TCP"},
                        {"name": "dns", "port": 53, "protocol": "UDP"},
                    ]
                },
            },
            NS,
        )
        api.create(
            "services",
            {"metadata": {"name": "plain", "namespace": NS}, "spec": {"ports": [{"port": 8080}]}},
            NS,
        )
        api.create(
            "services",
            {
                "metadata": {"name": "db", "namespace": NS},
                "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]},
            },
            NS,
        )
        api.create(
            "endpointslices",
            _slice(
                "db-1",
                "db",
                [
                    {
                        "addresses": ["10.244.1.10"],
                        "hostname": "db-0",
                        "conditions": {"ready": True},
                    },
                    {"addresses": ["10.244.2.11"], "conditions": {"ready": True}},
                    {
                        "addresses": ["10.244.2.12"],
                        "hostname": "db-2",
                        "conditions": {"ready": False},
                    },
                ],
                [{"name": "pg", "port": 5432, "protocol": "TCP"}],
            ),
            NS,
        )
        api.create(
            "services",
            {
                "metadata": {"name": "pub", "namespace": NS},
                "spec": {
                    "clusterIP": "None",
                    "publishNotReadyAddresses": True,
                    "ports": [{"port": 80}],
                },
            },
            NS,
        )
        api.create(
            "endpointslices",
            _slice(
                "pub-1",
                "pub",
                [
                    {"addresses": ["10.244.3.5"], "conditions": {"ready": False}},
                ],
                [{"port": 80, "protocol": "TCP"}],
            ),
            NS,
        )
        api.create(
            "services",
            {
                "metadata": {"name": "empty", "namespace": NS},
                "spec": {"clusterIP": "None", "ports": [{"port": 80}]},
            },
            NS,
        )
        api.create(
            "services",
            {
                "metadata": {"name": "ext", "namespace": NS},
                "spec": {"type": "ExternalName", "externalName": "www.example.test"},
            },
            NS,
        )
        api.create(
            "services",
            {
                "metadata": {"name": "big", "namespace": NS},
                "spec": {"clusterIP": "None", "ports": [{"name": "http", "port": 80}]},
            },
            NS,
        )
        api.create(
            "endpointslices",
            _slice(
                "big-1",
                "big",
                [
                    {
                        "addresses": [f"10.244.9.{i}"],
                        "hostname": f"member-number-{i}",
                        "conditions": {"ready": True},
                    }
                    for i in range(1, 41)
                ],
                [{"name": "http", "port": 80, "protocol": "TCP"}],
            ),
            NS,
        )
        up_port, port, mport = free_port(), free_port(), free_port()
        up = _start([sys.executable, "-m", "clusterdns.fakeupstream", "--port", str(up_port)])
        srv = _start(
            [
                sys.executable,
                "-m",
                "clusterdns",
                "--master",
                url,
                "--listen",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
                "--zone",
                ZONE,
                "--upstream",
                f"127.0.0.1:{up_port}",
                "--health-port",
                str(mport),
                "--ready-port",
                str(mport),
                "--metrics-port",
                str(mport),
            ]
        )
        try:
            _ready(f"http://127.0.0.1:{mport}/ready")
            d = Dns(port, f"http://127.0.0.1:{mport}/metrics", f"http://127.0.0.1:{mport}", api)
            d.web_ip = web["spec"]["clusterIP"]
            yield d
        finally:
            _stop(srv)
            _stop(up)


def N(name: str) -> str:
    return f"{name}.{NS}.svc.{ZONE}"


# ---- 2.2 -------------------------------------------------------------------------------


def test_2_2_schema_version_txt_record(env):
    """2.2: dns-version.<zone> TXT holds the schema version."""
    r = env.q(f"dns-version.{ZONE}", "TXT")
    assert r.rcode() == dns.rcode.NOERROR
    assert answers(r, "TXT") == ['"1.1.0"']


# ---- 2.3 ClusterIP ---------------------------------------------------------------------


def test_2_3_1_clusterip_a_record_without_endpoints(env):
    """2.3.1: <svc>.<ns>.svc.<zone> A <cluster-ip>, whether or not endpoints are ready."""
    r = env.q(N("web"))
    assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA
    assert answers(r) == [env.web_ip]
    assert r.answer[0].ttl == 5


def test_2_3_1_aaaa_of_ipv4_service_is_nodata_with_soa(env):
    """2.3.1 + CoreDNS negatives: the name exists without AAAA -> NOERROR, no answer, SOA, AA."""
    r = env.q(N("web"), "AAAA")
    assert r.rcode() == dns.rcode.NOERROR and not r.answer
    assert r.flags & dns.flags.AA and soa_in_authority(r)


def test_2_3_2_srv_for_named_port_with_a_in_additional(env):
    """2.3.2: _<port>._<proto>.<svc>.<ns>.svc.<zone> SRV -> port and the service name."""
    r = env.q(f"_http._tcp.{N('web')}", "SRV")
    srv = r.answer[0][0]
    assert (srv.port, srv.target.to_text()) == (80, N("web") + ".")
    assert [a.to_text() for rr in r.additional for a in rr] == [env.web_ip]
    r = env.q(f"_dns._udp.{N('web')}", "SRV")
    assert r.answer[0][0].port == 53


def test_2_3_2_unnamed_port_has_no_srv(env):
    """2.3.2: unnamed ports do not have an SRV record."""
    r = env.q(f"_tcp.{N('plain')}", "SRV")
    assert r.rcode() == dns.rcode.NXDOMAIN
    r = env.q(f"_http._tcp.{N('plain')}", "SRV")
    assert r.rcode() == dns.rcode.NXDOMAIN


def test_2_3_3_ptr_for_cluster_ip(env):
    """2.3.3: <d>.<c>.<b>.<a>.in-addr.arpa PTR <svc>.<ns>.svc.<zone>."""
    rev = ".".join(reversed(env.web_ip.split("."))) + ".in-addr.arpa"
    r = env.q(rev, "PTR")
    assert answers(r, "PTR") == [N("web") + "."]


# ---- 2.4 headless ----------------------------------------------------------------------


def test_2_4_1_headless_a_per_ready_endpoint(env):
    """2.4.1: one A per ready endpoint; not-ready endpoints are left out."""
    r = env.q(N("db"))
    assert answers(r) == ["10.244.1.10", "10.244.2.11"]


def test_2_4_1_publish_not_ready_addresses(env):
    """2.1 'ready': with publishNotReadyAddresses every endpoint counts as ready."""
    assert answers(env.q(N("pub"))) == ["10.244.3.5"]


def test_2_4_1_headless_without_ready_endpoints_is_nxdomain(env):
    """2.4.1: no ready endpoints -> NXDOMAIN."""
    r = env.q(N("empty"))
    assert r.rcode() == dns.rcode.NXDOMAIN and soa_in_authority(r)


def test_2_4_1_endpoint_hostname_record(env):
    """2.4.1: <hostname>.<svc>.<ns>.svc.<zone> A <endpoint-ip> (slice hostname)."""
    assert answers(env.q(f"db-0.{N('db')}")) == ["10.244.1.10"]
    # not ready: no record
    assert env.q(f"db-2.{N('db')}").rcode() == dns.rcode.NXDOMAIN


def test_2_1_hostname_derived_from_ip_when_absent(env):
    """2.1 'hostname': without a hostname the endpoint is named by its dashed IP (CoreDNS)."""
    assert answers(env.q(f"10-244-2-11.{N('db')}")) == ["10.244.2.11"]


def test_2_4_2_headless_srv_per_endpoint_and_port(env):
    """2.4.2: one SRV per (ready endpoint x named port), target the hostname record, A in
    Additional."""
    r = env.q(f"_pg._tcp.{N('db')}", "SRV")
    targets = sorted((rd.port, rd.target.to_text()) for rr in r.answer for rd in rr)
    assert targets == [(5432, f"10-244-2-11.{N('db')}."), (5432, f"db-0.{N('db')}.")]
    extra = sorted((rr.name.to_text(), rd.to_text()) for rr in r.additional for rd in rr)
    assert extra == [
        (f"10-244-2-11.{N('db')}.", "10.244.2.11"),
        (f"db-0.{N('db')}.", "10.244.1.10"),
    ]


def test_2_4_3_ptr_for_endpoint(env):
    """2.4.3: PTR of a ready endpoint IP -> <hostname>.<svc>.<ns>.svc.<zone>."""
    assert answers(env.q("10.1.244.10.in-addr.arpa", "PTR"), "PTR") == [f"db-0.{N('db')}."]


# ---- 2.5 ExternalName ------------------------------------------------------------------


def test_2_5_externalname_cname(env):
    """2.5: <svc>.<ns>.svc.<zone> CNAME <extname>; an A query also gets the target's A from
    the upstream."""
    r = env.q(N("ext"), "CNAME")
    assert answers(r, "CNAME") == ["www.example.test."]
    r = env.q(N("ext"), "A")
    assert answers(r, "CNAME") == ["www.example.test."]
    assert answers(r, "A") == ["192.0.2.10"]


# ---- 2.6 pods --------------------------------------------------------------------------


def test_2_6_pod_a_record_insecure(env):
    """2.6: <a>-<b>-<c>-<d>.<ns>.pod.<zone> A <a>.<b>.<c>.<d> (pods insecure)."""
    assert answers(env.q(f"10-244-7-8.{NS}.pod.{ZONE}")) == ["10.244.7.8"]
    assert env.q(f"not-an-ip.{NS}.pod.{ZONE}").rcode() == dns.rcode.NXDOMAIN


# ---- 2.1 and the negatives -------------------------------------------------------------


def test_2_1_case_insensitive_and_answer_keeps_query_case(env):
    """2.1: comparisons are case-insensitive; the answer echoes the query's case."""
    name = f"WeB.{NS.upper()}.Svc.Cluster.LOCAL"
    r = env.q(name)
    assert answers(r) == [env.web_ip]
    assert r.answer[0].name.to_text() == name + "."
    assert r.question[0].name.to_text() == name + "."


def test_nonexistent_service_is_nxdomain_with_soa(env):
    r = env.q(N("nope"))
    assert r.rcode() == dns.rcode.NXDOMAIN and r.flags & dns.flags.AA and soa_in_authority(r)
    assert env.q(f"web.nonamespace.svc.{ZONE}").rcode() == dns.rcode.NXDOMAIN


def test_namespace_name_is_nodata(env):
    """<ns>.svc.<zone> of an existing namespace: NOERROR/NODATA with SOA."""
    r = env.q(f"{NS}.svc.{ZONE}")
    assert r.rcode() == dns.rcode.NOERROR and not r.answer and soa_in_authority(r)
    assert env.q(f"nonamespace.svc.{ZONE}").rcode() == dns.rcode.NXDOMAIN


def test_zone_apex_soa_and_ns(env):
    r = env.q(ZONE, "SOA")
    assert r.answer[0][0].mname.to_text() == f"ns.dns.{ZONE}."
    r = env.q(ZONE, "NS")
    assert answers(r, "NS") == [f"ns.dns.{ZONE}."]


# ---- transport, forwarding, robustness -------------------------------------------------


def test_forward_outside_zone_with_cache(env):
    before = env.metric("coredns_cache_hits_total")
    r1 = env.q("cached.example.test")
    r2 = env.q("cached.example.test")
    assert answers(r1) == answers(r2) == ["192.0.2.10"]
    time.sleep(0.7)  # metrics are flushed every 0.5 s
    assert env.metric("coredns_cache_hits_total") >= before + 1
    assert r2.answer[0].ttl <= r1.answer[0].ttl <= 300


def test_upstream_nxdomain_passed_through(env):
    assert env.q("nx.example.test").rcode() == dns.rcode.NXDOMAIN


def test_tcp_several_queries_per_connection(env):
    with socket.create_connection(("127.0.0.1", env.port), timeout=3) as s:
        for name in (N("web"), N("db"), "tcp.example.test"):
            wire = dns.message.make_query(name, "A").to_wire()
            s.sendall(struct.pack("!H", len(wire)) + wire)
            n = struct.unpack("!H", s.recv(2, socket.MSG_WAITALL))[0]
            r = dns.message.from_wire(s.recv(n, socket.MSG_WAITALL))
            assert r.rcode() == dns.rcode.NOERROR and r.answer


def test_udp_truncation_then_tcp(env):
    """Answers over 512 bytes (no EDNS) or the client's EDNS size get TC; TCP gets all."""
    r = env.q(f"_http._tcp.{N('big')}", "SRV")
    assert r.flags & dns.flags.TC and not r.answer
    r = env.q(f"_http._tcp.{N('big')}", "SRV", use_edns=0, payload=1232)
    assert r.flags & dns.flags.TC
    r = env.q(f"_http._tcp.{N('big')}", "SRV", tcp=True)
    assert len(r.answer[0]) == 40
    r = env.q(N("big"), "A", use_edns=0, payload=4096)
    assert not r.flags & dns.flags.TC and len(r.answer[0]) == 40


def test_edns0_opt_echoed(env):
    r = env.q(N("web"), use_edns=0, payload=1232)
    assert r.edns == 0 and r.payload >= 512
    r = env.q(N("nope"), use_edns=0)
    assert r.edns == 0 and r.rcode() == dns.rcode.NXDOMAIN


def test_update_visible_quickly(env):
    """Event-driven index: a new Service answers within 100 ms of the API accepting it."""
    env.api.create(
        "services",
        {"metadata": {"name": "late", "namespace": NS}, "spec": {"ports": [{"port": 80}]}},
        NS,
    )
    t0 = time.monotonic()
    while not env.q(N("late")).answer:
        assert time.monotonic() - t0 < 5
    elapsed = time.monotonic() - t0
    env.api.delete("services", "late", NS)
    while env.q(N("late")).rcode() != dns.rcode.NXDOMAIN:
        assert time.monotonic() - t0 < 5
    print(f"visible after {elapsed * 1000:.1f} ms")


def test_hostile_packets_counted_and_dropped(env):
    before = env.metric("coredns_dns_malformed_requests_total")
    good = dns.message.make_query(N("web"), "A").to_wire()
    bad = [
        b"",
        b"\x00" * 5,
        good[:15],  # truncated question
        good[:4] + b"\xff\xff" + good[6:],  # qdcount 65535
        # compression loop: question name is a pointer to itself
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01",
        bytes(range(256)),
    ]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for b in bad:
            s.sendto(b, ("127.0.0.1", env.port))
    time.sleep(0.3)
    assert answers(env.q(N("web"))) == [env.web_ip]
    time.sleep(0.7)  # metrics are flushed every 0.5 s
    assert env.metric("coredns_dns_malformed_requests_total") >= before + 4


def test_health_ready_metrics(env):
    with urllib.request.urlopen(env.ready + "/health", timeout=3) as r:
        assert r.read() == b"OK"
    with urllib.request.urlopen(env.ready + "/ready", timeout=3) as r:
        assert r.status == 200
    assert env.metric("coredns_dns_responses_total{") > 0
    assert env.metric("coredns_dns_request_duration_seconds_count") > 0


def test_servfail_until_first_sync():
    """Before the first list from the API completes, zone names get SERVFAIL; /ready 503."""
    port, mport = free_port(), free_port()
    srv = _start(
        [
            sys.executable,
            "-m",
            "clusterdns",
            "--master",
            f"http://127.0.0.1:{free_port()}",
            "--listen",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--health-port",
            "0",
            "--metrics-port",
            "0",
            "--ready-port",
            str(mport),
        ]
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                r = dns.query.udp(
                    dns.message.make_query(N("web"), "A"), "127.0.0.1", port=port, timeout=0.5
                )
                break
            except (dns.exception.Timeout, OSError):
                assert time.monotonic() < deadline
        assert r.rcode() == dns.rcode.SERVFAIL
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{mport}/ready", timeout=3)
        assert e.value.code == 503
        # no upstream: names outside the zone are refused, never recursed
        r = dns.query.udp(
            dns.message.make_query("example.test", "A"), "127.0.0.1", port=port, timeout=2
        )
        assert r.rcode() == dns.rcode.REFUSED
    finally:
        _stop(srv)
