"""overlay (host-gw): pods reach pods across nodes over plain routes via the peer node IP.

Own 3-node testbed (prefix "ovt", 172.30.4.0/24); also checks the refusal to start when a
peer is not on the same L2 segment, and that host-gw's --cleanup removes its routes.
"""

from __future__ import annotations

import time

import pytest

from overlay.lease import annotations_for
from overlay.testbed import Testbed, leftovers

PREFIX = "ovt"
NODES = ("node1", "node2", "node3")


@pytest.fixture(scope="module")
def tb():
    bed = Testbed(PREFIX, "172.30.4.0/24")
    try:
        bed.up()
        for n in NODES:
            bed.add_node(n)
            bed.start_agent(n, "host-gw")
        for n in NODES:
            bed.add_pod(n)
        yield bed
    finally:
        bed.down()
        assert leftovers(PREFIX) == []


def test_pod_reaches_pods_on_other_nodes_over_tcp_and_udp_with_its_own_source_ip(tb):
    src_ip = str(tb.nodes["node1"].pod_ip)
    for dst in ("node2", "node3"):
        seen = tb.wait_reachable("node1", dst)
        assert seen["pod"] == f"pod-{dst}" and seen["client_ip"] == src_ip
        assert tb.tcp_echo("node1", dst, "gw") == "gw"
        pod, client, payload = tb.udp_echo("node1", dst, "u").split(" ", 2)
        assert pod == f"pod-{dst}" and client.split(":")[0] == src_ip and payload == "u"
    routes = tb.nsexec(tb.nodes["node1"].ns, ["ip", "-4", "route"]).stdout
    for peer in ("node2", "node3"):
        assert f"{tb.nodes[peer].subnet} via {tb.nodes[peer].ip} dev eth0" in routes
    assert tb.nsexec(tb.nodes["node1"].ns, ["ip", "link", "show", "flannel.1"],
                     check=False).returncode != 0  # fmt: skip
    assert "FLANNEL_MTU=1500" in open(tb.subnet_file("node1")).read()


def test_refuses_to_start_when_a_peer_is_not_on_the_same_segment(tb):
    far = tb.node_object("far", "10.244.200.0/24", ip="192.168.77.7")
    far["metadata"]["annotations"] = {
        "flannel.alpha.coreos.com/backend-type": "host-gw",
        "flannel.alpha.coreos.com/backend-data": "null",
        "flannel.alpha.coreos.com/public-ip": "192.168.77.7",
        "flannel.alpha.coreos.com/kube-subnet-manager": "true",
    }
    tb.api.create("nodes", far)
    try:
        tb.add_node("node4")
        agent = tb.start_agent("node4", "host-gw")
        assert agent.wait(15) == 1
        log = tb.agent_log("node4")
        assert "192.168.77.7" in log and "not on a directly connected subnet" in log
        assert "use --backend vxlan" in log
        # running agents skip the unreachable peer and keep everything else working
        time.sleep(0.3)
        assert "10.244.200.0" not in tb.nsexec(tb.nodes["node1"].ns, ["ip", "route"]).stdout
        assert tb.tcp_json("node1", "node2")["pod"] == "pod-node2"
        assert all(tb.nodes[n].agent.poll() is None for n in NODES)
    finally:
        tb.api.delete("nodes", "far")
        tb.api.delete("nodes", "node4")


def test_deleted_node_loses_its_route(tb):
    subnet = tb.nodes["node3"].subnet
    tb.stop_agent("node3")
    tb.api.delete("nodes", "node3")
    deadline = time.monotonic() + 2
    while str(subnet) in tb.nsexec(tb.nodes["node1"].ns, ["ip", "route"]).stdout:
        assert time.monotonic() < deadline, "route to the deleted node still there"
        time.sleep(0.05)


def test_cleanup_removes_host_gw_routes(tb):
    for n in ("node1", "node2"):
        tb.stop_agent(n)
        assert tb.cleanup_agent(n, "host-gw").returncode == 0
        assert " via " not in tb.nsexec(tb.nodes[n].ns, ["ip", "-4", "route"]).stdout


def test_annotations_round_trip():
    from ipaddress import IPv4Address, IPv4Network

    from overlay.lease import Lease

    lease = Lease(IPv4Network("10.244.3.0/24"), "n", IPv4Address("172.30.4.13"), "host-gw")
    assert annotations_for(lease)["flannel.alpha.coreos.com/backend-data"] == "null"
