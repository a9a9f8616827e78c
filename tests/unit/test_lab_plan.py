"""The lab's names and address plan (pure: no root, no kernel)."""

from __future__ import annotations

import pytest

from lab import topology as topo
from lab.config import LabConfig, LabState


def test_plan_addresses_host_dot1_control_plane_dot2_then_workers() -> None:
    p = topo.plan("knl", 3, "172.18.0.0/16")
    assert p.host_ip == "172.18.0.1"
    assert [(n.name, n.ip) for n in p.nodes] == [
        ("control-plane", "172.18.0.2"),
        ("worker1", "172.18.0.3"),
        ("worker2", "172.18.0.4"),
        ("worker3", "172.18.0.5"),
    ]
    assert p.apiserver_url == "http://172.18.0.2:6443"
    assert p.host_link == "knl-host"
    assert p.fabric_netns == "knl-fabric"
    assert [n.netns for n in p.nodes][:2] == ["knl-control-plane", "knl-worker1"]
    assert p.prefixlen == 16


def test_plan_twenty_workers_fit_a_slash_24_and_port_names_are_unique() -> None:
    p = topo.plan("knl", 20, "198.18.3.0/24")
    assert p.nodes[-1].name == "worker20" and p.nodes[-1].ip == "198.18.3.22"
    assert len({n.fabric_port for n in p.nodes}) == 21
    assert all(len(n.fabric_port) <= 15 for n in p.nodes)


@pytest.mark.parametrize(
    "cidr, workers, match",
    [
        ("198.18.3.0/29", 10, "too small"),
        ("10.96.0.0/16", 2, "overlaps"),
        ("10.244.0.0/24", 2, "overlaps"),
        ("172.18.0.1/16", 2, "invalid node CIDR"),
    ],
)
def test_plan_rejects_bad_node_networks(cidr: str, workers: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        topo.plan("knl", workers, cidr)


@pytest.mark.parametrize("prefix", ["", "Knl", "1abc", "a" * 11, "knl-", "k;rm", "k l", "k/x"])
def test_prefix_must_fit_interface_names_and_be_harmless(prefix: str) -> None:
    with pytest.raises(ValueError):
        topo.validate_prefix(prefix)


def test_prefix_limit_keeps_host_link_within_ifnamsiz() -> None:
    assert len(topo.host_link(topo.validate_prefix("a" * 10))) <= 15


@pytest.mark.parametrize(
    "name, ours",
    [
        ("knl-fabric", True),
        ("knl-control-plane", True),
        ("knl-worker12", True),
        ("knl-pod-demo.web-1", True),
        ("knl2-worker1", False),  # another lab's prefix
        ("knl-x-fabric", False),  # prefix "knl-x"
        ("knl-worker", False),
        ("knl-worker01", False),
        ("knl-ext", False),
        ("knl", False),
    ],
)
def test_cleanup_pattern_claims_only_this_labs_namespaces(name: str, ours: bool) -> None:
    assert topo.is_lab_netns("knl", name) is ours


def test_pod_netns_name() -> None:
    assert topo.pod_netns("knl", "demo", "web-1") == "knl-pod-demo.web-1"


def test_config_round_trips_through_state_and_reports_differences() -> None:
    cfg = LabConfig(prefix="knl", workers=2)
    st = LabState.from_dict(LabState(config=cfg, phase="up", agents={"kubelet": True}).to_dict())
    assert st.config == cfg and st.phase == "up" and st.agents == {"kubelet": True}
    other = LabConfig(prefix="knl", workers=3, overlay="host-gw")
    diffs = cfg.differences(other)
    assert any(d.startswith("workers: 2") for d in diffs)
    assert any(d.startswith("overlay: 'vxlan'") for d in diffs)
    assert cfg.differences(LabConfig(prefix="knl", workers=2)) == []


@pytest.mark.parametrize(
    "kw", [{"proxy_mode": "ipvs"}, {"overlay": "udp"}, {"workers": -1}, {"prefix": "BAD"}]
)
def test_config_rejects_unknown_modes(kw: dict) -> None:
    with pytest.raises(ValueError):
        LabConfig(**kw)
