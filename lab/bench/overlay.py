"""Overlay: vxlan and host-gw throughput against the underlay, with overlay.bench as is.

overlay.bench.run builds its own testbed (pairs of nodes running our agent with each backend
plus a hand-built vxlan pair) and runs iperf3 over every path, interleaved, ``reps`` times;
here its samples become figures with the underlay (node to node on the fabric) as baseline.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import overlay.bench as ovb

from .stats import Figure, figure


def run(
    prefix: str, underlay: str, reps: int, seconds: float, step: Callable[[str], None]
) -> tuple[dict[str, Figure], dict[str, Any]]:
    step(f"overlay: iperf3 over 6 paths x {reps} (vxlan, host-gw, underlay)")
    res = ovb.run(reps, seconds, 1, prefix, underlay)
    figs: dict[str, Figure] = {}
    for key, v in res["throughput_bps"].items():
        figs[f"overlay.{key}.tcp_gbps"] = figure(
            [x / 1e9 for x in v["samples"]],
            "Gbit/s",
            "higher",
            None if key == "underlay" else "overlay.underlay.tcp_gbps",
        )
    return figs, res
