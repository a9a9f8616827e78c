"""Prometheus metrics with CoreDNS's names, counted cheaply in every worker process.

Division of labour: a worker's hot path increments plain Python lists (``Stats``); once
in a while (``flush``) the worker copies them into its slot of a shared-memory array the
supervisor allocated before forking; the supervisor's ``/metrics`` (``Collector``) sums the
slots into:

  coredns_dns_requests_total{server,zone,proto}          queries answered or dropped
  coredns_dns_responses_total{server,zone,rcode,proto}    responses by rcode
  coredns_dns_request_duration_seconds{server,zone}       histogram (CoreDNS buckets)
  coredns_dns_malformed_requests_total{server}            hostile/garbage packets dropped
  coredns_cache_hits_total / coredns_cache_misses_total{server,type="forward"}
  coredns_forward_requests_total{to} / coredns_forward_responses_total{rcode}
  coredns_kubernetes_index_answers / coredns_ready (gauges)
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

RCODES = ["NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED"] + [
    str(i) for i in range(6, 16)
]
PROTOS = ["udp", "tcp"]
# CoreDNS: prometheus.ExponentialBuckets(0.00025, 2, 16)
BUCKETS = [0.00025 * 2**i for i in range(16)]

# slot layout (unsigned 64-bit cells; the duration sum is kept in microseconds)
S_RESP = 0  # proto*16 + rcode
S_HIST = S_RESP + 32  # len(BUCKETS)+1 cells (+Inf last)
S_DUR_SUM_US = S_HIST + len(BUCKETS) + 1
S_MALFORMED = S_DUR_SUM_US + 1
S_CACHE_HIT = S_MALFORMED + 1
S_CACHE_MISS = S_CACHE_HIT + 1
S_FWD_REQ = S_CACHE_MISS + 1
S_FWD_RESP = S_FWD_REQ + 1  # 16 rcodes
S_FWD_TIMEOUT = S_FWD_RESP + 16
S_READY = S_FWD_TIMEOUT + 1
S_ANSWERS = S_READY + 1
S_PID = S_ANSWERS + 1
SLOT = S_PID + 1


class Stats:
    """One worker's counters (plain lists: the hot path does ``resp[i] += 1``)."""

    def __init__(self) -> None:
        self.resp = [0] * 32
        self.hist = [0] * (len(BUCKETS) + 1)
        self.dur_sum = 0.0
        self.malformed = 0
        self.cache_hit = 0
        self.cache_miss = 0
        self.fwd_req = 0
        self.fwd_resp = [0] * 16
        self.fwd_timeout = 0

    def observe(self, seconds: float) -> None:
        self.dur_sum += seconds
        for i, b in enumerate(BUCKETS):
            if seconds <= b:
                self.hist[i] += 1
                return
        self.hist[-1] += 1


class SharedStats:
    """Shared-memory slots, one per worker (allocate before forking)."""

    def __init__(self, workers: int):
        self.workers = workers
        self.arr = multiprocessing.RawArray("Q", SLOT * workers)

    def flush(self, slot: int, st: Stats, ready: bool, answers: int, pid: int) -> None:
        a, base = self.arr, slot * SLOT
        for i, v in enumerate(st.resp):
            a[base + S_RESP + i] = v
        for i, v in enumerate(st.hist):
            a[base + S_HIST + i] = v
        a[base + S_DUR_SUM_US] = int(st.dur_sum * 1e6)
        a[base + S_MALFORMED] = st.malformed
        a[base + S_CACHE_HIT] = st.cache_hit
        a[base + S_CACHE_MISS] = st.cache_miss
        a[base + S_FWD_REQ] = st.fwd_req
        for i, v in enumerate(st.fwd_resp):
            a[base + S_FWD_RESP + i] = v
        a[base + S_FWD_TIMEOUT] = st.fwd_timeout
        a[base + S_READY] = 1 if ready else 0
        a[base + S_ANSWERS] = answers
        a[base + S_PID] = pid

    def reset(self, slot: int) -> None:
        for i in range(SLOT):
            self.arr[slot * SLOT + i] = 0

    def total(self, cell: int) -> int:
        return sum(self.arr[w * SLOT + cell] for w in range(self.workers))

    def ready(self) -> bool:
        return all(self.arr[w * SLOT + S_READY] for w in range(self.workers))


class Collector:
    """prometheus_client collector summing every worker's slot."""

    def __init__(self, shared: SharedStats, server: str, zones: list[str]):
        self.shared = shared
        self.server = server
        self.zone = zones[0] + "." if zones else "."

    def collect(self) -> Iterator:
        s, srv, zone = self.shared, self.server, self.zone
        req = CounterMetricFamily(
            "coredns_dns_requests",
            "Queries received, by transport.",
            labels=["server", "zone", "proto"],
        )
        resp = CounterMetricFamily(
            "coredns_dns_responses",
            "Responses sent, by rcode.",
            labels=["server", "zone", "rcode", "proto"],
        )
        for p, proto in enumerate(PROTOS):
            tot = 0
            for rc in range(16):
                v = s.total(S_RESP + p * 16 + rc)
                tot += v
                if v or rc in (0, 2, 3, 5):
                    resp.add_metric([srv, zone, RCODES[rc], proto], v)
            req.add_metric([srv, zone, proto], tot)
        yield req
        yield resp
        cum, buckets = 0, []
        for i, b in enumerate(BUCKETS):
            cum += s.total(S_HIST + i)
            buckets.append((repr(b), cum))
        cum += s.total(S_HIST + len(BUCKETS))
        buckets.append(("+Inf", cum))
        h = HistogramMetricFamily(
            "coredns_dns_request_duration_seconds",
            "Time to answer a query.",
            labels=["server", "zone"],
        )
        h.add_metric([srv, zone], buckets, s.total(S_DUR_SUM_US) / 1e6)
        yield h
        m = CounterMetricFamily(
            "coredns_dns_malformed_requests",
            "Packets dropped as garbage or hostile.",
            labels=["server"],
        )
        m.add_metric([srv], s.total(S_MALFORMED))
        yield m
        ch = CounterMetricFamily(
            "coredns_cache_hits", "Forward cache hits.", labels=["server", "type"]
        )
        ch.add_metric([srv, "forward"], s.total(S_CACHE_HIT))
        yield ch
        cm = CounterMetricFamily(
            "coredns_cache_misses", "Forward cache misses.", labels=["server", "type"]
        )
        cm.add_metric([srv, "forward"], s.total(S_CACHE_MISS))
        yield cm
        fr = CounterMetricFamily("coredns_forward_requests", "Queries sent upstream.")
        fr.add_metric([], s.total(S_FWD_REQ))
        yield fr
        fresp = CounterMetricFamily(
            "coredns_forward_responses", "Upstream responses by rcode.", labels=["rcode"]
        )
        for rc in range(16):
            v = s.total(S_FWD_RESP + rc)
            if v:
                fresp.add_metric([RCODES[rc]], v)
        yield fresp
        ft = CounterMetricFamily("coredns_forward_timeouts", "Upstream queries that timed out.")
        ft.add_metric([], s.total(S_FWD_TIMEOUT))
        yield ft
        g = GaugeMetricFamily(
            "coredns_kubernetes_index_answers",
            "Precomputed answers in each worker's index.",
            labels=["worker"],
        )
        for w in range(s.workers):
            g.add_metric([str(w)], s.arr[w * SLOT + S_ANSWERS])
        yield g
        r = GaugeMetricFamily("coredns_ready", "1 when every worker has synced with the API.")
        r.add_metric([], 1 if s.ready() else 0)
        yield r
