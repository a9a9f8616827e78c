"""overlay: the pure parts (leases from Nodes, vxlan/host-gw render and plan, masq, subnet.env)."""

from __future__ import annotations

from ipaddress import IPv4Address as A
from ipaddress import IPv4Network as N

from kubecommon.model import node_from_obj
from overlay import masq, subnetfile
from overlay.backend import hostgw, vxlan
from overlay.backend.vxlan import CREATE, KEEP, REPLACE, Fdb, KernelEntries, Neighbour, Route
from overlay.kernel import ExternalInterface
from overlay.lease import (
    BACKEND_DATA,
    BACKEND_TYPE,
    PUBLIC_IP,
    Lease,
    annotations_for,
    lease_from_node,
    leases_from_nodes,
)

MAC1, MAC2, MAC3 = "aa:00:00:00:00:01", "aa:00:00:00:00:02", "aa:00:00:00:00:03"


def vx(node: str, i: int, mac: str) -> Lease:
    return Lease(N(f"10.244.{i}.0/24"), node, A(f"172.30.4.{10 + i}"), "vxlan", mac, 1)


L0, L1, L2 = vx("n0", 0, MAC1), vx("n1", 1, MAC2), vx("n2", 2, MAC3)


def node_obj(name: str, cidr: str | None, ann: dict | None) -> dict:
    return {
        "metadata": {"name": name, "annotations": ann or {}},
        "spec": {"podCIDR": cidr} if cidr else {},
        "status": {"addresses": [{"type": "InternalIP", "address": "172.30.4.11"}]},
    }


def test_lease_round_trips_through_node_annotations():
    ann = annotations_for(L1)
    assert ann[BACKEND_TYPE] == "vxlan"
    assert ann[BACKEND_DATA] == '{"VNI":1,"VtepMAC":"aa:00:00:00:00:02"}'
    assert ann[PUBLIC_IP] == "172.30.4.11"
    assert ann["flannel.alpha.coreos.com/kube-subnet-manager"] == "true"
    assert lease_from_node(node_from_obj(node_obj("n1", "10.244.1.0/24", ann))) == L1


def test_node_without_podcidr_or_annotations_has_no_lease():
    assert lease_from_node(node_from_obj(node_obj("n1", None, annotations_for(L1)))) is None
    assert lease_from_node(node_from_obj(node_obj("n1", "10.244.1.0/24", {}))) is None
    bad = dict(annotations_for(L1), **{BACKEND_DATA: "not json"})
    assert lease_from_node(node_from_obj(node_obj("n1", "10.244.1.0/24", bad))) is None


def test_leases_sorted_by_subnet():
    nodes = [
        node_from_obj(node_obj(lease.node, str(lease.subnet), annotations_for(lease)))
        for lease in (L2, L0, L1)
    ]
    assert leases_from_nodes(nodes) == (L0, L1, L2)


def test_vxlan_renders_neighbour_fdb_route_per_remote_lease_in_order():
    peers = vxlan.render_peers(L0, [L2, L1, L0])
    assert [p.node for p in peers] == ["n1", "n2"]
    p = peers[0]
    assert p.neighbour == Neighbour(A("10.244.1.0"), MAC2)
    assert p.fdb == Fdb(MAC2, A("172.30.4.11"))
    assert p.route == Route(N("10.244.1.0/24"), A("10.244.1.0"))


def test_vxlan_skips_other_backends():
    gw = Lease(N("10.244.5.0/24"), "g", A("172.30.4.50"), "host-gw")
    assert [p.node for p in vxlan.render_peers(L0, [L1, gw])] == ["n1"]


def test_device_spec_mtu_and_address():
    ext = ExternalInterface("eth0", 3, A("172.30.4.10"), 1500, (N("172.30.4.0/24"),))
    spec = vxlan.device_spec(ext, L0.subnet)
    assert (spec.name, spec.vni, spec.port, spec.learning) == ("flannel.1", 1, 8472, False)
    assert spec.mtu == 1450 and str(spec.address) == "10.244.0.0/32"
    assert spec.local_ip == A("172.30.4.10") and spec.underlay_index == 3


def test_plan_from_empty_kernel_creates_everything():
    peers = vxlan.render_peers(L0, [L0, L1, L2])
    p = vxlan.plan(peers, KernelEntries())
    assert [(s.peer.node, s.neighbour, s.fdb, s.route) for s in p.steps] == [
        ("n1", CREATE, CREATE, CREATE),
        ("n2", CREATE, CREATE, CREATE),
    ]
    assert not (p.del_routes or p.del_fdb or p.del_neighbours)


def kernel_for(peers) -> KernelEntries:
    return KernelEntries(
        frozenset(p.neighbour for p in peers),
        frozenset(p.fdb for p in peers),
        frozenset(p.route for p in peers),
    )


def test_plan_is_empty_when_kernel_already_agrees():
    peers = vxlan.render_peers(L0, [L0, L1, L2])
    assert vxlan.plan(peers, kernel_for(peers)).empty


def test_plan_removes_all_three_entries_of_a_node_that_left():
    before = vxlan.render_peers(L0, [L0, L1, L2])
    p = vxlan.plan(vxlan.render_peers(L0, [L0, L1]), kernel_for(before))
    assert p.steps == ()
    assert p.del_routes == (before[1].route,)
    assert p.del_fdb == (before[1].fdb,)
    assert p.del_neighbours == (before[1].neighbour,)


def test_plan_replaces_entries_when_a_node_comes_back_with_a_new_mac():
    before = vxlan.render_peers(L0, [L0, L1])
    new = vx("n1", 1, "aa:00:00:00:00:99")
    p = vxlan.plan(vxlan.render_peers(L0, [L0, new]), kernel_for(before))
    (s,) = p.steps
    assert (s.neighbour, s.fdb, s.route) == (REPLACE, CREATE, KEEP)
    # the old MAC's FDB entry goes; the neighbour (same IP) is replaced, not deleted
    assert p.del_fdb == (Fdb(MAC2, A("172.30.4.11")),)
    assert p.del_neighbours == ()


def test_plan_ignores_nothing_it_should_keep_and_is_deterministic():
    peers = vxlan.render_peers(L0, [L2, L1, L0])
    assert vxlan.plan(peers, KernelEntries()) == vxlan.plan(
        vxlan.render_peers(L0, [L1, L0, L2]), KernelEntries()
    )


def test_incompatible_device_detected():
    ext = ExternalInterface("eth0", 3, A("172.30.4.10"), 1500, (N("172.30.4.0/24"),))
    spec = vxlan.device_spec(ext, L0.subnet)
    ok = {"kind": "vxlan", "vni": 1, "link": 3, "local": "172.30.4.10", "port": 8472, "learning": 0}
    assert vxlan.incompatibilities(spec, ok) == ""
    assert "vni" in vxlan.incompatibilities(spec, dict(ok, vni=2))
    assert "port" in vxlan.incompatibilities(spec, dict(ok, port=4789))
    assert "kind" in vxlan.incompatibilities(spec, {"kind": "bridge"})


def test_random_mac_is_local_unicast():
    for _ in range(50):
        first = int(vxlan.random_mac().split(":")[0], 16)
        assert first & 0x02 and not first & 0x01


def gw(node: str, i: int) -> Lease:
    return Lease(N(f"10.244.{i}.0/24"), node, A(f"172.30.4.{10 + i}"), "host-gw")


def test_hostgw_routes_via_remote_node_ip():
    routes = hostgw.render_routes(gw("n0", 0), [gw("n2", 2), gw("n0", 0), gw("n1", 1)])
    assert [(str(r.dst), str(r.gateway)) for r in routes] == [
        ("10.244.1.0/24", "172.30.4.11"),
        ("10.244.2.0/24", "172.30.4.12"),
    ]


def test_hostgw_refuses_peers_off_the_segment():
    far = Lease(N("10.244.9.0/24"), "far", A("192.168.7.7"), "host-gw")
    problems = hostgw.unreachable(gw("n0", 0), [gw("n1", 1), far], [N("172.30.4.0/24")])
    assert len(problems) == 1 and "far" in problems[0] and "192.168.7.7" in problems[0]


def test_hostgw_plan_adds_missing_and_deletes_departed():
    local = gw("n0", 0)
    have = hostgw.render_routes(local, [gw("n1", 1), gw("n2", 2)])
    want = hostgw.render_routes(local, [gw("n1", 1), gw("n3", 3)])
    p = hostgw.plan(want, have)
    assert [str(r.dst) for r in p.add] == ["10.244.3.0/24"]
    assert [str(r.dst) for r in p.delete] == ["10.244.2.0/24"]
    assert hostgw.plan(want, want).empty


def test_masq_rules_keep_pod_to_pod_and_masquerade_outside():
    text = masq.render(N("10.244.0.0/16"), N("10.244.1.0/24"), jump_present=False)
    lines = text.splitlines()
    assert lines[:3] == [
        "*nat",
        ":FLANNEL-POSTRTG - [0:0]",
        '-I POSTROUTING 1 -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG',
    ]
    rules = [line for line in lines if line.startswith("-A FLANNEL-POSTRTG")]
    assert rules[1].startswith("-A FLANNEL-POSTRTG -s 10.244.0.0/16 -d 10.244.0.0/16")
    assert rules[1].endswith("-j RETURN")
    assert "-s 10.244.0.0/16 ! -d 224.0.0.0/4" in rules[2] and "MASQUERADE" in rules[2]
    assert "-d 10.244.1.0/24" in rules[3] and rules[3].endswith("RETURN")
    assert lines[-1] == "COMMIT"
    # re-applying does not add a second jump
    assert "-I POSTROUTING" not in masq.render(N("10.244.0.0/16"), N("10.244.1.0/24"), True)


def test_masq_cleanup_text():
    assert masq.render_cleanup(False, False) == ""
    t = masq.render_cleanup(True, True)
    assert "-D POSTROUTING" in t and "-X FLANNEL-POSTRTG" in t
    save = '*nat\n:FLANNEL-POSTRTG - [0:0]\n-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG\n'
    assert masq.parse_state(save) == (True, True)


def test_subnet_env_as_flannel_writes_it(tmp_path):
    text = subnetfile.render(N("10.244.0.0/16"), L1, 1450, True)
    assert text == (
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n"
        "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
    )
    path = str(tmp_path / "run" / "subnet.env")
    assert subnetfile.write_atomic(path, text) is True
    assert subnetfile.write_atomic(path, text) is False  # unchanged: not rewritten
    assert subnetfile.parse(open(path).read())["FLANNEL_MTU"] == "1450"
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["subnet.env"]
