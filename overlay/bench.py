"""``python -m overlay.bench``: what the overlay costs, measured in one run on one machine.

Builds its own namespaces (prefix "ovb", underlay 172.30.10.0/24, API stub on the fabric):
nodes vx1/vx2 running our agent with the vxlan backend, gw1/gw2 with host-gw, hb1/hb2 with
a VXLAN pair built by hand (the kernel's ceiling, nothing of ours involved), and one pod
behind cni0 on each agent node. Then, interleaved over several repetitions, iperf3 TCP
throughput for:

    underlay            node -> node on the fabric (the baseline)
    hand-built vxlan    hb1 -> hb2 over a hand-made vxlan device
    hand-built pod path pod on hp1 -> pod on hp2: veth + cni0 on both ends (same MTU as
                        ours), a hand-made vxlan device with static neighbour/FDB/route
    hand-built routed   pod on hr1 -> pod on hr2: the same pod hops, plain routes between
                        the nodes (what host-gw installs), made by hand
    vxlan pod-to-pod    pod on vx1 -> pod on vx2 through flannel.1 (ours)
    vxlan node-to-node  vx1 -> vx2's flannel.1 address (ours, without the pod hops)
    host-gw pod-to-pod  pod on gw1 -> pod on gw2 (ours)
    host-gw node-to-pod-net  gw1 -> gw2's cni0 address over our route (ours, no pod hops)

Like for like: our pod rows against the hand-built pod paths (same veth pairs, bridges,
forwarding hops and MTU; only who built the way between the nodes differs), our node rows
against the hand-built pair and the underlay. Ratios are also computed per repetition (each repetition runs
every path back to back), and their median is reported, which cancels slow drifts in the
machine's load.

And the time from a new Node appearing in the API (its agent already running and waiting,
as flanneld waits for its node) to its pod being reachable by TCP from a pod on vx1 (a new
SYN every millisecond on its own socket, so no figure waits on a SYN retransmit), plus
the time from starting the agent (Node already there) to reachable. Prints a table (median,
min, max, ratios to the baseline measured in the same run) and writes JSON.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from .testbed import ECHO_PORT, Testbed, leftovers, sh

IPERF_PORT = 5201
HB_VNI, HB_PORT = 42, 4789
HB_NET = "192.168.250"
HP_NETS = ("10.251.1.0/24", "10.251.2.0/24")  # hand-built vxlan pod path (outside the cluster)
HR_NETS = ("10.252.1.0/24", "10.252.2.0/24")  # hand-built routed pod path

PROBE = """
import errno, selectors, socket, sys, time
ip, port = sys.argv[1], int(sys.argv[2])
sel = selectors.DefaultSelector()
live = []
last = 0.0
print("ready", flush=True)
while True:
    # a new SYN every millisecond, each on its own socket, older attempts kept open for
    # 0.2 s: a SYN dropped before the path existed never costs a retransmit timeout,
    # and the first attempt that completes stops the clock
    if time.monotonic() - last >= 0.001:
        last = time.monotonic()
        s = socket.socket()
        s.setblocking(False)
        err = s.connect_ex((ip, port))
        if err in (0, errno.EINPROGRESS):
            sel.register(s, selectors.EVENT_WRITE)
            live.append((last, s))
        else:
            s.close()
    for key, _ in sel.select(0.001):
        c = key.fileobj
        if c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
            print(time.monotonic(), flush=True)
            sys.exit(0)
        sel.unregister(c)
        live = [(t, x) for t, x in live if x is not c]
        c.close()
    now = time.monotonic()
    while live and now - live[0][0] > 0.2:
        sel.unregister(live[0][1])
        live.pop(0)[1].close()
"""


@dataclass(frozen=True, slots=True)
class Scenario:
    key: str
    label: str
    client_ns: str
    server_ns: str
    server_ip: str


def hand_built_vxlan(tb: Testbed, a: str, b: str) -> str:
    """vx0 in nodes a and b, VNI 42, port 4789, static all-zeros FDB to the peer."""
    for i, (me, peer) in enumerate(((a, b), (b, a)), start=1):
        ns, me_ip, peer_ip = tb.nodes[me].ns, tb.nodes[me].ip, tb.nodes[peer].ip
        sh(["ip", "-n", ns, "link", "add", "vx0", "type", "vxlan", "id", str(HB_VNI), "dstport",
            str(HB_PORT), "dev", "eth0", "local", str(me_ip), "nolearning"])  # fmt: skip
        sh(["ip", "-n", ns, "link", "set", "vx0", "mtu", "1450", "up"])
        sh(["ip", "-n", ns, "addr", "add", f"{HB_NET}.{i}/24", "dev", "vx0"])
        sh(["bridge", "-n", ns, "fdb", "append", "00:00:00:00:00:00", "dev", "vx0", "dst",
            str(peer_ip)])  # fmt: skip
    return f"{HB_NET}.2"


def hand_built_pod_path(tb: Testbed, a: str, b: str, nets: tuple[str, str], mode: str, mtu: int):
    """Two nodes with cni0 + one pod each (as the testbed gives our agents' nodes, same MTU),
    joined by hand: ``mode`` "vxlan" builds what flannel.1 does (vx0 VNI 42 port 4789, no
    learning, the subnet's .0/32 on it, static neighbour, FDB entry and onlink route per
    peer), "routed" adds plain routes via the peer's underlay address (what host-gw does).
    Nothing of ours runs on these nodes. Returns the server pod's IP (on ``b``)."""
    for name, net in zip((a, b), nets, strict=True):
        tb.add_node(name, register=False)
        tb.nodes[name].subnet = IPv4Network(net)
        tb.add_pod(name, mtu=mtu, workload=False)
    N = tb.nodes
    macs = {a: "02:42:00:00:00:01", b: "02:42:00:00:00:02"}
    if mode == "vxlan":
        for me in (a, b):
            ns = N[me].ns
            sh(["ip", "-n", ns, "link", "add", "vx0", "address", macs[me], "type", "vxlan", "id",
                str(HB_VNI), "dstport", str(HB_PORT), "dev", "eth0", "local", str(N[me].ip),
                "nolearning"])  # fmt: skip
            sh(["ip", "-n", ns, "link", "set", "vx0", "mtu", str(mtu), "up"])
            sh(["ip", "-n", ns, "addr", "add",
                f"{N[me].subnet.network_address}/32", "dev", "vx0"])  # type: ignore[union-attr]  # fmt: skip
    for me, peer in ((a, b), (b, a)):
        ns, psub = N[me].ns, N[peer].subnet
        assert psub is not None
        gw = str(psub.network_address)
        if mode == "vxlan":
            sh(["ip", "-n", ns, "neigh", "add", gw, "lladdr", macs[peer], "dev", "vx0", "nud",
                "permanent"])  # fmt: skip
            sh(["bridge", "-n", ns, "fdb", "add", macs[peer], "dev", "vx0", "dst",
                str(N[peer].ip), "self", "permanent"])  # fmt: skip
            sh(["ip", "-n", ns, "route", "add", str(psub), "via", gw, "dev", "vx0", "onlink"])
        else:
            sh(["ip", "-n", ns, "route", "add", str(psub), "via", str(N[peer].ip), "dev", "eth0"])
    return str(N[b].pod_ip)


def iperf(tb: Testbed, sc: Scenario, seconds: float) -> float:
    r = tb.nsexec(
        sc.client_ns,
        ["iperf3", "-c", sc.server_ip, "-p", str(IPERF_PORT), "-t", str(seconds), "-O", "1",
         "-J"],
        check=False, timeout=seconds + 30,
    )  # fmt: skip
    try:
        data = json.loads(r.stdout)
        return float(data["end"]["sum_received"]["bits_per_second"])
    except (ValueError, KeyError) as e:
        raise RuntimeError(f"iperf3 {sc.label} failed: {r.stdout[-500:]} {r.stderr}") from e


def stats(xs: list[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(xs),
        "min": min(xs),
        "max": max(xs),
        "samples": xs,
    }


def wait_log(tb: Testbed, node: str, text: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while text not in tb.agent_log(node):
        if time.monotonic() > deadline:
            raise TimeoutError(f"agent on {node} never logged {text!r}:\n{tb.agent_log(node)}")
        time.sleep(0.01)


def probe_start(tb: Testbed, src_pod_ns: str, ip: str) -> subprocess.Popen:
    p = subprocess.Popen(
        ["ip", "netns", "exec", src_pod_ns, sys.executable, "-c", PROBE, ip, str(ECHO_PORT)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    tb.procs.append(p)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return p


def probe_wait(p: subprocess.Popen, timeout: float = 15) -> float:
    out, _ = p.communicate(timeout=timeout)
    return float(out.strip().splitlines()[-1])


def measure_join(tb: Testbed, name: str, cidr: str, mode: str) -> float:
    """Seconds until a pod on vx1 reaches the new node's pod.

    mode "node": the agent runs and waits; the clock starts at the Node's creation.
    mode "agent": the Node exists; the clock starts when the agent process is started.
    """
    tb.add_node(name, register=False)
    tb.nodes[name].subnet = IPv4Network(cidr)
    tb.add_pod(name, mtu=1450)
    if mode == "node":
        tb.start_agent(name, "vxlan")
        wait_log(tb, name, "waiting for Node")
    else:
        tb.register_node(name, cidr)
    probe = probe_start(tb, tb.nodes["vx1"].pod_ns, str(tb.nodes[name].pod_ip))
    t0 = time.monotonic()
    if mode == "node":
        tb.register_node(name, cidr)
    else:
        tb.start_agent(name, "vxlan")
    return probe_wait(probe) - t0


def run(reps: int, seconds: float, joins: int, prefix: str, underlay: str) -> dict[str, Any]:
    tb = Testbed(prefix, underlay)
    try:
        tb.up()
        for n in ("vx1", "vx2", "gw1", "gw2"):
            tb.add_node(n)
            tb.start_agent(n, "host-gw" if n.startswith("gw") else "vxlan")
        for n in ("hb1", "hb2"):
            tb.add_node(n, register=False)
        for n in ("vx1", "vx2", "gw1", "gw2"):
            tb.add_pod(n)
        hb_ip = hand_built_vxlan(tb, "hb1", "hb2")
        vx_mtu = int(tb.wait_subnet_file("vx1")["FLANNEL_MTU"])
        gw_mtu = int(tb.wait_subnet_file("gw1")["FLANNEL_MTU"])
        hp_ip = hand_built_pod_path(tb, "hp1", "hp2", HP_NETS, "vxlan", vx_mtu)
        hr_ip = hand_built_pod_path(tb, "hr1", "hr2", HR_NETS, "routed", gw_mtu)
        vx2_flannel = str(tb.nodes["vx2"].subnet.network_address)  # type: ignore[union-attr]
        N = tb.nodes
        scenarios = [
            Scenario("underlay", "underlay node->node", N["vx1"].ns, N["vx2"].ns, str(N["vx2"].ip)),
            Scenario("handbuilt", "hand-built vxlan", N["hb1"].ns, N["hb2"].ns, hb_ip),
            Scenario("handbuilt_pod", "hand-built vxlan pod->pod", N["hp1"].pod_ns,
                     N["hp2"].pod_ns, hp_ip),
            Scenario("routed_pod", "hand-built routed pod->pod", N["hr1"].pod_ns,
                     N["hr2"].pod_ns, hr_ip),
            Scenario("vxlan_pod", "vxlan pod->pod (ours)", N["vx1"].pod_ns, N["vx2"].pod_ns,
                     str(N["vx2"].pod_ip)),
            Scenario("vxlan_node", "vxlan node->flannel.1 (ours)", N["vx1"].ns, N["vx2"].ns,
                     vx2_flannel),
            Scenario("hostgw_pod", "host-gw pod->pod (ours)", N["gw1"].pod_ns, N["gw2"].pod_ns,
                     str(N["gw2"].pod_ip)),
            Scenario("hostgw_node", "host-gw node->remote cni0 (ours)", N["gw1"].ns, N["gw2"].ns,
                     str(N["gw2"].subnet.network_address + 1)),  # type: ignore[union-attr]
        ]  # fmt: skip
        servers = {sc.server_ns for sc in scenarios}
        for ns in servers:
            tb.spawn(ns, ["iperf3", "-s", "-p", str(IPERF_PORT)], f"iperf-{ns}.log")
        for ns in servers:
            tb.wait_listening(ns, IPERF_PORT)
        for sc in scenarios:  # reachability first: a failure here is a bug, not a figure
            if sc.key in ("vxlan_pod", "hostgw_pod"):
                src = next(n for n in N.values() if n.pod_ns == sc.client_ns).name
                dst = next(n for n in N.values() if n.pod_ns == sc.server_ns).name
                tb.wait_reachable(src, dst)
        samples: dict[str, list[float]] = {sc.key: [] for sc in scenarios}
        for _ in range(reps):
            for sc in scenarios:
                samples[sc.key].append(iperf(tb, sc, seconds))
        join_node = [
            measure_join(tb, f"jn{i}", f"10.244.{200 + i}.0/24", "node") for i in range(joins)
        ]
        join_agent = [
            measure_join(tb, f"ja{i}", f"10.244.{220 + i}.0/24", "agent") for i in range(joins)
        ]
    finally:
        tb.down()
    left = leftovers(prefix)
    med = {k: statistics.median(v) for k, v in samples.items()}

    def paired(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(samples[a], samples[b], strict=True))

    pairs = {
        "handbuilt_vs_underlay": paired("handbuilt", "underlay"),
        "vxlan_node_vs_handbuilt": paired("vxlan_node", "handbuilt"),
        "vxlan_pod_vs_handbuilt_pod": paired("vxlan_pod", "handbuilt_pod"),
        "hostgw_pod_vs_routed_pod": paired("hostgw_pod", "routed_pod"),
        "handbuilt_pod_vs_handbuilt": paired("handbuilt_pod", "handbuilt"),
        "routed_pod_vs_underlay": paired("routed_pod", "underlay"),
        "vxlan_pod_vs_handbuilt": paired("vxlan_pod", "handbuilt"),
        "hostgw_node_vs_underlay": paired("hostgw_node", "underlay"),
        "hostgw_pod_vs_underlay": paired("hostgw_pod", "underlay"),
        "vxlan_pod_vs_underlay": paired("vxlan_pod", "underlay"),
    }
    return {
        "machine": {
            "kernel": platform.release(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "loadavg": [round(x, 2) for x in os.getloadavg()],
        },
        "params": {"reps": reps, "seconds": seconds, "joins": joins},
        "throughput_bps": {
            sc.key: dict(stats(samples[sc.key]), label=sc.label) for sc in scenarios
        },
        "ratios_of_medians": {k: med[k.split("_vs_")[0]] / med[k.split("_vs_")[1]] for k in pairs},
        "ratios_paired_median": pairs,
        "goals": {
            "vxlan_node_vs_handbuilt >= 0.97": pairs["vxlan_node_vs_handbuilt"] >= 0.97,
            "vxlan_pod_vs_handbuilt_pod >= 0.97": pairs["vxlan_pod_vs_handbuilt_pod"] >= 0.97,
            "hostgw_node_vs_underlay >= 0.95": pairs["hostgw_node_vs_underlay"] >= 0.95,
            "hostgw_pod_vs_routed_pod >= 0.95": pairs["hostgw_pod_vs_routed_pod"] >= 0.95,
            "node_join_to_reachable_median < 0.1s": statistics.median(join_node) < 0.1,
        },
        "join_seconds": {
            "node_appears_to_reachable": stats(join_node),
            "agent_start_to_reachable": stats(join_agent),
        },
        "leftovers": left,
    }


def show(res: dict[str, Any], console: Console) -> None:
    base = res["throughput_bps"]["underlay"]["median"]
    t = Table(title=f"overlay throughput (iperf3 TCP, {res['params']['reps']} reps x "
              f"{res['params']['seconds']}s, interleaved)")  # fmt: skip
    for col in ("path", "median Gbit/s", "min", "max", "vs underlay"):
        t.add_column(col, justify="left" if col == "path" else "right")
    for v in res["throughput_bps"].values():
        t.add_row(v["label"], f"{v['median'] / 1e9:.2f}", f"{v['min'] / 1e9:.2f}",
                  f"{v['max'] / 1e9:.2f}", f"{v['median'] / base:.3f}")  # fmt: skip
    console.print(t)
    r = Table(title="ratios (same run) and goals")
    r.add_column("ratio")
    r.add_column("paired, median of reps", justify="right")
    r.add_column("of medians", justify="right")
    for k, v in res["ratios_paired_median"].items():
        r.add_row(k, f"{v:.3f}", f"{res['ratios_of_medians'][k]:.3f}")
    for k, v in res["goals"].items():
        r.add_row(f"goal: {k}", "met" if v else "NOT met", "")
    console.print(r)
    j = Table(title="join to reachable (TCP connect from a pod on vx1 to the new node's pod)")
    for col in ("clock starts at", "median ms", "min ms", "max ms"):
        j.add_column(col, justify="left" if col == "clock starts at" else "right")
    for k, v in res["join_seconds"].items():
        j.add_row(k.replace("_", " "), f"{v['median'] * 1e3:.1f}", f"{v['min'] * 1e3:.1f}",
                  f"{v['max'] * 1e3:.1f}")  # fmt: skip
    console.print(j)
    console.print(f"load average during the run: {res['machine']['loadavg']}")
    if res["leftovers"]:
        console.print(f"[red]left behind: {res['leftovers']}[/red]")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--reps", default=3, show_default=True, help="iperf3 runs per path (interleaved).")
@click.option("--seconds", default=3.0, show_default=True, help="Length of each iperf3 run.")
@click.option("--joins", default=5, show_default=True, help="Node joins to time (per mode).")
@click.option("--prefix", default="ovb", show_default=True)
@click.option("--underlay", default="172.30.10.0/24", show_default=True, help="Underlay network of the bench (distinct from the test suites' 172.30.4-9.0/24).")
@click.option("--output", default="overlay-bench.json", show_default=True, help="JSON results.")
def main(reps: int, seconds: float, joins: int, prefix: str, underlay: str, output: str) -> None:
    """Measure the overlay's throughput and join latency against kernel baselines."""
    console = Console()
    res = run(reps, seconds, joins, prefix, underlay)
    show(res, console)
    with open(output, "w", encoding="utf-8") as f:
        json.dump(res, f, indent=2)
    console.print(f"wrote {output}")
    if res["leftovers"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
