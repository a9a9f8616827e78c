"""overlay (vxlan): pods reach pods across nodes by pod IP, as flannel makes them.

Own 3-node testbed (prefix "ovt", underlay 172.30.4.0/24, API stub on the host end of the
fabric), one agent per node namespace, one pod namespace behind cni0 per node. Tests run in
file order on the shared testbed; everything is removed at the end, even on failure.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from overlay.testbed import ECHO_PORT, Testbed, leftovers

PREFIX = "ovt"
NODES = ("node1", "node2", "node3")


@pytest.fixture(scope="module")
def tb():
    bed = Testbed(PREFIX, "172.30.4.0/24")
    try:
        bed.up()
        for n in NODES:
            bed.add_node(n)
        bed.start_agent("node1", "vxlan", ["--ip-masq"])
        for n in NODES[1:]:
            bed.start_agent(n, "vxlan")
        for n in NODES:
            bed.add_pod(n)
        # an "outside the cluster" host on the underlay, for --ip-masq
        bed.add_node("ext", register=False)
        bed.spawn(bed.nodes["ext"].ns, [sys.executable, "-m", "lab.workload"], "ext.log",
                  {"POD_NAME": "ext", "ECHO_PORT": str(ECHO_PORT)})  # fmt: skip
        bed.wait_listening(bed.nodes["ext"].ns, 8080)
        yield bed
    finally:
        bed.down()
        assert leftovers(PREFIX) == []


def flannel_entries(tb: Testbed, node: str) -> tuple[str, str, str]:
    ns = tb.nodes[node].ns
    neigh = tb.nsexec(ns, ["ip", "-4", "neigh", "show", "dev", "flannel.1"]).stdout
    fdb = tb.nsexec(ns, ["bridge", "fdb", "show", "dev", "flannel.1"]).stdout
    routes = tb.nsexec(ns, ["ip", "-4", "route", "show", "dev", "flannel.1"]).stdout
    return neigh, fdb, routes


def wait_for(pred, timeout: float = 5, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_pod_reaches_pods_on_other_nodes_over_tcp_and_udp_with_its_own_source_ip(tb):
    src_ip = str(tb.nodes["node1"].pod_ip)
    for dst in ("node2", "node3"):
        seen = tb.wait_reachable("node1", dst)
        assert seen["pod"] == f"pod-{dst}" and seen["ip"] == str(tb.nodes[dst].pod_ip)
        assert seen["client_ip"] == src_ip  # no NAT inside the cluster (even with --ip-masq)
        assert tb.tcp_echo("node1", dst, "across nodes") == "across nodes"
        pod, client, payload = tb.udp_echo("node1", dst, "udp-hello").split(" ", 2)
        assert pod == f"pod-{dst}" and client.split(":")[0] == src_ip and payload == "udp-hello"
    # and back
    assert tb.tcp_json("node3", "node1")["client_ip"] == str(tb.nodes["node3"].pod_ip)


def test_flannel_device_entries_lease_and_subnet_file(tb):
    ns = tb.nodes["node1"].ns
    link = tb.nsexec(ns, ["ip", "-d", "link", "show", "flannel.1"]).stdout
    assert "vxlan id 1 " in link and "dstport 8472" in link and "nolearning" in link
    assert f"local {tb.nodes['node1'].ip} dev eth0" in link and "mtu 1450" in link
    addr = tb.nsexec(ns, ["ip", "-4", "-o", "addr", "show", "dev", "flannel.1"]).stdout
    assert f"{tb.nodes['node1'].subnet.network_address}/32" in addr
    neigh, fdb, routes = flannel_entries(tb, "node1")
    for peer in ("node2", "node3"):
        obj = tb.api.get("nodes", peer)
        ann = obj["metadata"]["annotations"]
        assert ann["flannel.alpha.coreos.com/backend-type"] == "vxlan"
        assert ann["flannel.alpha.coreos.com/kube-subnet-manager"] == "true"
        assert ann["flannel.alpha.coreos.com/public-ip"] == str(tb.nodes[peer].ip)
        data = json.loads(ann["flannel.alpha.coreos.com/backend-data"])
        mac, net = data["VtepMAC"], tb.nodes[peer].subnet
        assert data["VNI"] == 1
        assert f"{net.network_address} lladdr {mac} PERMANENT" in neigh
        assert f"{mac} dst {tb.nodes[peer].ip} self permanent" in fdb
        assert f"{net} via {net.network_address} onlink" in routes.replace(" proto static", "")
        cond = {c["type"]: c for c in obj["status"]["conditions"]}
        assert cond["NetworkUnavailable"]["status"] == "False"
        assert cond["Ready"]["status"] == "True"  # our status patch kept the kubelet's
    env = open(tb.subnet_file("node1")).read()
    assert env == (
        f"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={tb.nodes['node1'].subnet.network_address + 1}"
        f"/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
    )


def test_ip_masq_masquerades_only_traffic_leaving_the_cluster(tb):
    ext_ip = tb.nodes["ext"].ip
    code = (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.settimeout(2)\n"
        f"s.sendto(b'out',('{ext_ip}',{ECHO_PORT})); sys.stdout.write(s.recv(999).decode())\n"
    )
    out = tb.pod_exec("node1", [sys.executable, "-c", code], check=True).stdout
    assert out.split(" ")[1].split(":")[0] == str(tb.nodes["node1"].ip)  # masqueraded
    rules = tb.nsexec(tb.nodes["node1"].ns, ["iptables-legacy-save", "-t", "nat"]).stdout
    assert '-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG' in rules
    # pod-to-pod stays unmasqueraded (checked with the source IP in the first test too)
    assert tb.tcp_json("node1", "node2")["client_ip"] == str(tb.nodes["node1"].pod_ip)


PROBE = """
import json, socket, sys, time
dst, port, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
tcp = socket.create_connection((dst, port), timeout=3)
tcp.sendall(b"before"); assert tcp.recv(100) == b"before"
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(0.5)
sent = got = 0
end = time.monotonic() + secs
while time.monotonic() < end:
    sent += 1
    u.sendto(b"%d" % sent, (dst, port))
    try:
        u.recv(200); got += 1
    except TimeoutError:
        pass
    time.sleep(0.01)
tcp.sendall(b"after"); ok = tcp.recv(100) == b"after"
print(json.dumps({"sent": sent, "received": got, "tcp_after": ok}))
"""


def test_agent_restart_changes_nothing_and_drops_no_packet(tb):
    before = {n: flannel_entries(tb, n) for n in NODES}
    link_before = tb.nsexec(tb.nodes["node1"].ns, ["ip", "-o", "link", "show", "flannel.1"]).stdout
    probe = subprocess.Popen(
        ["ip", "netns", "exec", tb.nodes["node1"].pod_ns, sys.executable, "-c", PROBE,
         str(tb.nodes["node2"].pod_ip), str(ECHO_PORT), "4"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(0.5)
        ready = {n: tb.agent_log(n).count("ready: lease") for n in ("node1", "node2")}
        for n in ("node1", "node2"):
            tb.stop_agent(n)
            tb.start_agent(n, "vxlan", ["--ip-masq"] if n == "node1" else [])
        for n in ("node1", "node2"):
            wait_for(lambda n=n: tb.agent_log(n).count("ready: lease") > ready[n],
                     10, f"{n} agent restart")  # fmt: skip
            assert "adopting existing flannel.1" in tb.agent_log(n)
        out, _ = probe.communicate(timeout=30)
    finally:
        if probe.poll() is None:
            probe.kill()
            probe.wait()
    res = json.loads(out)
    assert res["tcp_after"] is True
    assert res["received"] == res["sent"] > 100
    time.sleep(0.3)
    assert {n: flannel_entries(tb, n) for n in NODES} == before
    link_after = tb.nsexec(tb.nodes["node1"].ns, ["ip", "-o", "link", "show", "flannel.1"]).stdout
    assert link_after == link_before  # same device, same VTEP MAC


def test_fourth_node_is_reachable_without_restarting_the_others(tb):
    pids = {n: tb.nodes[n].agent.pid for n in NODES}
    tb.add_node("node4")
    tb.start_agent("node4", "vxlan")
    tb.add_pod("node4")
    seen = tb.wait_reachable("node1", "node4", timeout=5)
    assert seen["client_ip"] == str(tb.nodes["node1"].pod_ip)
    assert tb.udp_echo("node4", "node3").startswith("pod-node3 ")
    assert {n: tb.nodes[n].agent.pid for n in NODES} == pids
    assert all(tb.nodes[n].agent.poll() is None for n in NODES)


def test_deleted_node_loses_route_fdb_and_neighbour_on_the_others(tb):
    subnet = tb.nodes["node4"].subnet
    mac = json.loads(
        tb.api.get("nodes", "node4")["metadata"]["annotations"][
            "flannel.alpha.coreos.com/backend-data"
        ]
    )["VtepMAC"]
    tb.stop_agent("node4")
    tb.api.delete("nodes", "node4")
    for n in NODES:
        wait_for(
            lambda n=n: all(
                str(subnet.network_address) not in text and mac not in text
                for text in flannel_entries(tb, n)
            ),
            2,
            f"node4 entries gone on {n}",
        )
    assert tb.tcp_json("node1", "node4", timeout=1) is None
    assert tb.tcp_json("node1", "node2")["pod"] == "pod-node2"


def test_data_path_survives_api_restart_and_resyncs(tb):
    before = {n: flannel_entries(tb, n) for n in NODES}
    tb.stop_api()
    time.sleep(1.0)
    assert tb.tcp_echo("node1", "node3", "api down") == "api down"
    assert {n: flannel_entries(tb, n) for n in NODES} == before
    tb.restart_api()
    # the watch comes back: a node joining now is still programmed on the others
    tb.add_node("node5")
    tb.start_agent("node5", "vxlan")
    tb.add_pod("node5")
    assert tb.wait_reachable("node2", "node5", timeout=10)["pod"] == "pod-node5"
    assert all(tb.nodes[n].agent.poll() is None for n in NODES)


def test_cleanup_leaves_nothing(tb):
    for n in (*NODES, "node5"):
        tb.stop_agent(n)
        r = tb.cleanup_agent(n)
        assert r.returncode == 0, r.stderr
        ns = tb.nodes[n].ns
        assert tb.nsexec(ns, ["ip", "link", "show", "flannel.1"], check=False).returncode != 0
        routes = tb.nsexec(ns, ["ip", "-4", "route"]).stdout
        assert " via 10.244." not in routes
        assert "FLANNEL" not in tb.nsexec(ns, ["iptables-legacy-save"]).stdout
        with pytest.raises(FileNotFoundError):
            open(tb.subnet_file(n))
    # a second cleanup finds nothing and still succeeds
    assert tb.cleanup_agent("node1").returncode == 0
