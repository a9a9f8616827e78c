"""Shared by the writer oracle tests (test_kubeproxy_xtables.py, test_kubeproxy_nft_writer.py).

Each of those runs the same syncs through a direct writer in one scratch namespace and
through iptables-*-restore in another, and compares what the kernel then holds. This
module has what both need: the foreign rules both load first, running a command in a
namespace, a saved table without its noise, switching this thread into a namespace, the
namespace pair, a proxier per backend.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

from pyroute2 import netns

from kubeproxy.config import ProxyConfig
from kubeproxy.iptables.proxier import IptablesProxier

# Foreign state: a flannel-like chain, rules in built-in chains before and after where our
# jumps go, a fall-through rule, a goto, matches and targets we never encode, and a stale
# chain of ours (KUBE-SVC-) that a full sync must delete. Counters set with -c.
FOREIGN = """*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:FLANNEL-POSTRTG - [0:0]
:KUBE-SVC-STALESTALESTALE0 - [0:0]
:LAB-OUT - [0:0]
[11:1100] -A PREROUTING -i eth9 -p tcp -m multiport --dports 8000,8001 -j REDIRECT --to-ports 9000
[12:1200] -A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG
[13:1300] -A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN
[14:1400] -A FLANNEL-POSTRTG -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j RETURN
[15:1500] -A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully
[16:1600] -A FLANNEL-POSTRTG -s 192.0.2.77
[17:1700] -A OUTPUT -o lo -g LAB-OUT
[18:1800] -A LAB-OUT -p udp -m udp --dport 53 -j RETURN
[1:100] -A KUBE-SVC-STALESTALESTALE0 -j RETURN
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:LAB-FW - [0:0]
[21:2100] -A INPUT -m limit --limit 5/sec -j LOG --log-prefix "lab: "
[22:2200] -A FORWARD -j LAB-FW
[23:2300] -A LAB-FW -i cni0 -j ACCEPT
[24:2400] -A LAB-FW -m state --state RELATED,ESTABLISHED -j ACCEPT
COMMIT
"""


def run(*argv: str, ns: str, stdin: str | None = None) -> str:
    r = subprocess.run(
        ["ip", "netns", "exec", ns, *argv], input=stdin, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, f"{argv} in {ns}: {r.stderr}"
    return r.stdout


def saved(save_cmd: str, ns: str, counters: bool = False) -> str:
    """``save_cmd`` (iptables-legacy-save or iptables-nft-save) output without the
    header/footer comments, and without counters unless asked."""
    out = run(save_cmd, *(["-c"] if counters else []), ns=ns)
    lines = [ln for ln in out.splitlines() if not ln.startswith("#")]
    if not counters:
        lines = [re.sub(r" \[\d+:\d+\]$", " [0:0]", ln) for ln in lines]
    return "\n".join(lines)


@contextmanager
def inside(ns: str) -> Iterator[None]:
    """Run this thread (and the processes it starts) in namespace ``ns``."""
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        netns.setns(ns)
        yield
    finally:
        netns.setns(f"/proc/self/fd/{home}")
        os.close(home)


def fresh_namespaces(*names: str) -> Iterator[tuple[str, ...]]:
    """For a fixture: the namespaces made anew, and removed afterwards even on failure."""
    for ns in names:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        yield names
    finally:
        for ns in names:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def proxier(backend: str, **cfg) -> IptablesProxier:
    c = ProxyConfig(
        **{
            "hostname_override": "node1",
            "cluster_cidr": "10.0.0.0/24",
            **cfg,
            "iptables_backend": backend,
        }
    )
    return IptablesProxier(c)
