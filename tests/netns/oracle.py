"""Shared by the writer oracle tests (test_kubeproxy_xtables.py, test_kubeproxy_nft_writer.py).

Each of those runs the same syncs through a direct writer in one scratch namespace and
through iptables-*-restore in another, and compares what the kernel then holds. This
module has what both need: running a command in a namespace, a saved table without its
noise, switching this thread into a namespace, the namespace pair, a proxier per backend.
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
