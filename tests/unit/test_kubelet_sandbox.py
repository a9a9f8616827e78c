"""Kubelet sandbox pure parts and IPAM state: names, resolv.conf, subnet.env, address picking."""

from __future__ import annotations

from lab.kubelet.sandbox import (
    Ipam,
    gateway_of,
    netns_name,
    parse_subnet_env,
    pick_ip,
    resolv_conf,
    veth_name,
)


def test_netns_name_follows_the_contract_and_stays_short_enough():
    assert netns_name("knl", "default", "web-1") == "knl-pod-default.web-1"
    long = netns_name("knl", "ns", "x" * 250)
    assert len(long) <= 200 and long.startswith("knl-pod-ns.xxx")
    assert long != netns_name("knl", "ns", "x" * 251)


def test_veth_names_fit_ifnamsiz_and_differ_per_pod():
    a, b = veth_name("knl-pod-default.a"), veth_name("knl-pod-default.b")
    assert len(a) <= 15 and a.startswith("veth") and a != b
    assert veth_name("knl-pod-default.a") == a


def test_resolv_conf_has_cluster_search_path():
    assert resolv_conf("shop", "10.96.0.10") == (
        "nameserver 10.96.0.10\n"
        "search shop.svc.cluster.local svc.cluster.local cluster.local\n"
        "options ndots:5\n"
    )


def test_subnet_env_parsing_and_gateway():
    env = parse_subnet_env(
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\n"
    )
    assert env["FLANNEL_MTU"] == "1450" and env["FLANNEL_SUBNET"] == "10.244.1.1/24"
    assert str(gateway_of("10.244.1.0/24")) == "10.244.1.1/24"


def test_pick_ip_round_robins_and_skips_gateway_and_used():
    assert pick_ip("10.244.1.0/24", []) == "10.244.1.2"
    assert pick_ip("10.244.1.0/24", ["10.244.1.2"]) == "10.244.1.3"
    assert pick_ip("10.244.1.0/24", [], last="10.244.1.7") == "10.244.1.8"
    assert pick_ip("10.244.1.0/24", [], last="10.244.1.254") == "10.244.1.2"  # wraps
    assert pick_ip("10.0.0.0/30", ["10.0.0.2"]) is None


def test_ipam_keeps_an_owners_address_and_does_not_reuse_at_once(tmp_path):
    ipam = Ipam(tmp_path)
    a = ipam.allocate("10.244.1.0/24", "ns/a", "u1")
    b = ipam.allocate("10.244.1.0/24", "ns/b", "u2")
    assert a != b
    assert Ipam(tmp_path).allocate("10.244.1.0/24", "ns/a", "u1") == a  # after a restart too
    ipam.release("ns/a")
    c = ipam.allocate("10.244.1.0/24", "ns/c", "u3")
    assert c not in (a, b)  # round robin: a freed address is not handed out again right away
    ipam.release_outside("10.244.2.0/24")
    assert ipam.leases() == []
