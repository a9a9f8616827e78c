"""Userspace load balancer: round robin, shuffle on change, ClientIP affinity, removal."""

import random

from kubeproxy.userspace.loadbalancer import LoadBalancer

EPS = [("10.0.0.1", 80), ("10.0.0.2", 80), ("10.0.0.3", 80)]


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_round_robin_visits_every_endpoint_in_turn():
    lb = LoadBalancer(rng=random.Random(1))
    lb.set_service("s")
    lb.set_endpoints("s", EPS)
    picks = [lb.next_endpoint("s", "1.1.1.1") for _ in range(9)]
    assert set(picks[:3]) == set(EPS)
    assert picks[:3] == picks[3:6] == picks[6:9]


def test_no_endpoints_or_unknown_service_gives_none():
    lb = LoadBalancer()
    assert lb.next_endpoint("missing", "1.1.1.1") is None
    lb.set_service("s")
    assert lb.next_endpoint("s", "1.1.1.1") is None
    assert not lb.has_endpoints("s")


def test_order_is_shuffled_on_update_and_unchanged_set_is_kept():
    orders = set()
    for seed in range(20):
        lb = LoadBalancer(rng=random.Random(seed))
        lb.set_endpoints("s", EPS)
        orders.add(lb.endpoints("s"))
    assert len(orders) > 1
    lb = LoadBalancer(rng=random.Random(3))
    assert lb.set_endpoints("s", EPS)
    first = lb.next_endpoint("s", "c")
    assert not lb.set_endpoints("s", list(reversed(EPS)))  # same set: rotation goes on
    assert lb.next_endpoint("s", "c") != first


def test_affinity_sticks_per_client_ip_until_timeout():
    clock = Clock()
    lb = LoadBalancer(rng=random.Random(0), clock=clock)
    lb.set_service("s", affinity_timeout=10)
    lb.set_endpoints("s", EPS)
    a = lb.next_endpoint("s", "1.1.1.1")
    b = lb.next_endpoint("s", "2.2.2.2")
    assert a != b
    for _ in range(5):
        clock.t += 9  # each use refreshes the record
        assert lb.next_endpoint("s", "1.1.1.1") == a
    clock.t += 10
    assert lb.next_endpoint("s", "1.1.1.1") != a or len(EPS) == 1


def test_affinity_reset_skips_the_sticky_endpoint_for_failover():
    lb = LoadBalancer(rng=random.Random(0))
    lb.set_service("s", affinity_timeout=100)
    lb.set_endpoints("s", EPS)
    a = lb.next_endpoint("s", "1.1.1.1")
    b = lb.next_endpoint("s", "1.1.1.1", reset_affinity=True)
    assert b != a
    assert lb.next_endpoint("s", "1.1.1.1") == b  # the new one sticks


def test_affinity_dropped_for_removed_endpoint():
    lb = LoadBalancer(rng=random.Random(0))
    lb.set_service("s", affinity_timeout=100)
    lb.set_endpoints("s", EPS)
    a = lb.next_endpoint("s", "1.1.1.1")
    lb.set_endpoints("s", [e for e in EPS if e != a])
    picks = {lb.next_endpoint("s", "1.1.1.1") for _ in range(3)}
    assert a not in picks
    assert len(picks) == 1  # sticky again, on a surviving endpoint


def test_stale_affinity_records_are_cleaned():
    clock = Clock()
    lb = LoadBalancer(rng=random.Random(0), clock=clock)
    lb.set_service("s", affinity_timeout=5)
    lb.set_endpoints("s", EPS)
    lb.next_endpoint("s", "1.1.1.1")
    clock.t += 6
    lb.cleanup_stale_affinity()
    assert lb._services["s"].sticky == {}


def test_delete_service():
    lb = LoadBalancer()
    lb.set_endpoints("s", EPS)
    lb.delete_service("s")
    assert lb.next_endpoint("s", "c") is None
