"""``netns-lab.sh bench``: the proxy modes side by side, in one run, with pictures.

    from lab.bench import run
    result = run(quick=False, out_dir="bench-results/bench", modes=["iptables", "userspace", "nftables"])

Division of labour: datapath.py (one lab, pods on two workers, every proxy mode in turn
against the direct pod IP), controlplane.py (sync time and first-packet latency by number
of services, via kubeproxy.nftables.bench), dns.py (clusterdns.bench's dnsperf runs),
overlay.py (overlay.bench), stats.py (figures: median/min/max and ratios to a baseline from
the same run), report.py (progress, tables, JSON, PNG). This module sets the budgets
(``quick`` for CI) and sequences the sections; a section that fails is recorded in
``errors`` and the others still run. The lab (prefix "knlb", node network 172.19.0.0/16 by
default) is always taken down, also on failure.
"""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.console import Console

from . import report
from .stats import Figure, fill_ratios, missing

log = logging.getLogger("lab.bench")

ALL_MODES = ("iptables", "userspace", "nftables")
SECTIONS = ("datapath", "controlplane", "dns", "overlay")


@dataclass(frozen=True, slots=True)
class Params:
    prefix: str = "knlb"
    node_cidr: str = "172.19.0.0/16"
    overlay_underlay: str = "172.19.250.0/24"  # used after the lab is down
    dp_reps: int = 3
    dp_seconds: float = 2.0
    dp_changes: int = 5
    cp_sizes: tuple[int, ...] = (100, 1000, 5000, 10000)
    cp_reps: int = 2
    cp_probes: int = 200
    cp_changes: int = 5
    dns_services: int = 1000
    dns_seconds: float = 2.0
    dns_reps: int = 2
    ov_reps: int = 3
    ov_seconds: float = 2.0
    dp_direct_every_phase: bool = True
    dns_quick: bool = False
    sections: tuple[str, ...] = field(default=SECTIONS)

    @classmethod
    def for_run(cls, quick: bool, **over: Any) -> Params:
        if quick:
            base = dict(dp_reps=1, dp_seconds=1.0, dp_changes=2, cp_sizes=(100, 1000), cp_reps=1,
                        cp_probes=50, cp_changes=2, dns_services=100, dns_seconds=1.0,
                        dns_reps=1, ov_reps=1, ov_seconds=1.0,
                        dp_direct_every_phase=False, dns_quick=True)  # fmt: skip
        else:
            base = {}
        base.update({k: v for k, v in over.items() if v is not None})
        return cls(**base)

    def steps(self, modes: list[str]) -> int:
        n = 0
        if "datapath" in self.sections:
            n += 2 + len(modes) * (1 + self.dp_reps * 2 + self.dp_changes) + 2 * self.dp_reps
        if "controlplane" in self.sections:
            n += self.cp_reps * len(modes)
        if "dns" in self.sections:
            n += 1 + self.dns_reps * 4
        if "overlay" in self.sections:
            n += 1
        return n + 1


def available_modes(wanted: list[str]) -> tuple[list[str], dict[str, str]]:
    """The wanted modes whose proxier imports; the others with the reason."""
    import importlib

    from kubeproxy.proxier import MODES

    ok, skipped = [], {}
    for m in wanted:
        if m not in MODES:
            skipped[m] = "not a kube-proxy mode of this tree"
            continue
        try:
            importlib.import_module(MODES[m].partition(":")[0])
        except ImportError as e:
            skipped[m] = f"not importable: {e}"
            continue
        ok.append(m)
    return ok, skipped


def _version(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=5)
    except OSError:
        return "missing"
    return (
        ((r.stdout or "") + (r.stderr or "")).strip().splitlines()[0]
        if (r.stdout or r.stderr)
        else ""
    )


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "hostname": platform.node(),
        "tools": {
            "wrk": _version(["wrk", "-v"]),
            "iperf3": _version(["iperf3", "-v"]),
            "nginx": _version(["nginx", "-v"]),
            "dnsperf": _version(["dnsperf", "-h"]),
        },
    }


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _datapath(p: Params, modes: list[str], step: Callable[[str], None]) -> tuple[dict, dict]:
    from lab.cluster import Lab

    from . import datapath

    lab = Lab(prefix=p.prefix, nodes=2, proxy_mode="iptables", overlay="vxlan",
              node_cidr=p.node_cidr)  # fmt: skip
    raw: dict[str, Any] = {}
    try:
        lab.down()  # leftovers of an interrupted run with our prefix
        step(f"bringing up lab {p.prefix!r} (control-plane + 2 workers, vxlan)")
        t0 = time.monotonic()
        lab.up()
        raw["lab_up_s"] = round(time.monotonic() - t0, 2)
        figs, raw_dp = datapath.run(lab, modes, p.dp_reps, p.dp_seconds, p.dp_changes, step,
                                    p.dp_direct_every_phase)  # fmt: skip
        raw.update(raw_dp)
        return figs, raw
    finally:
        rep = lab.down()
        raw["lab_down_errors"] = list(rep.errors)


def run(
    quick: bool,
    out_dir: str,
    modes: list[str],
    console: Console | None = None,
    params: Params | None = None,
) -> dict[str, Any]:
    """Run the bench; write bench.json, datapath.png and controlplane.png into ``out_dir``."""
    console = console or Console(width=max(Console().width, 150))
    p = params or Params.for_run(quick)
    os.makedirs(out_dir, exist_ok=True)
    modes, skipped = available_modes(list(modes))
    for m, why in skipped.items():
        console.print(f"[yellow]mode {m} skipped:[/] {why}")
    if not modes:
        raise ValueError(f"no proxy mode to compare with the direct pod IP ({skipped})")
    result: dict[str, Any] = {
        "command": "netns-lab.sh bench" + (" --quick" if quick else ""),
        "quick": quick,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {**machine(), "load_start": _load()},
        "params": asdict(p),
        "modes": ["direct", *modes],
        "skipped_modes": skipped,
        "figures": {},
        "raw": {},
        "errors": {},
        "durations_s": {},
    }
    figures: dict[str, Figure] = result["figures"]
    from . import controlplane, dns, overlay

    t_start = time.monotonic()
    with report.StepProgress(console, p.steps(modes)) as prog:
        jobs: list[tuple[str, Callable[[], tuple[dict, dict]]]] = [
            ("datapath", lambda: _datapath(p, modes, prog.step)),
            ("controlplane", lambda: controlplane.run(
                p.prefix, modes, list(p.cp_sizes), p.cp_reps, p.cp_probes, p.cp_changes,
                prog.step)),
            ("dns", lambda: dns.run(p.dns_services, p.dns_seconds, p.dns_reps, prog.step,
                                    quick=p.dns_quick)),
            ("overlay", lambda: overlay.run(f"{p.prefix}o", p.overlay_underlay, p.ov_reps,
                                            p.ov_seconds, prog.step)),
        ]  # fmt: skip
        for name, job in jobs:
            if name not in p.sections:
                continue
            t0 = time.monotonic()
            try:
                figs, raw = job()
            except Exception as e:  # keep the other sections' figures
                log.debug("section %s failed", name, exc_info=True)
                result["errors"][name] = f"{type(e).__name__}: {e}"
                result["raw"][name + "_traceback"] = traceback.format_exc()
                prog.note(f"[red]✗ {name} failed:[/] {type(e).__name__}: {e}")
            else:
                figures.update(figs)
                result["raw"][name] = raw
                prog.note(f"[green]✓[/] {name}: {len(figs)} figures "
                          f"in {time.monotonic() - t0:.0f}s (load {_load()[0]})")  # fmt: skip
            result["durations_s"][name] = round(time.monotonic() - t0, 1)
    result["durations_s"]["total"] = round(time.monotonic() - t_start, 1)
    result["timeline"] = prog.timeline
    result["machine"]["load_end"] = _load()
    fill_ratios(figures)
    empty = missing(figures)
    if empty:
        result["errors"]["empty_figures"] = empty
    result["charts"] = [os.path.basename(x) for x in report.charts(figures, out_dir)]
    report.write_json(result, os.path.join(out_dir, "bench.json"))
    for t in report.tables(result):
        console.print(t)
    m = result["machine"]
    console.print(
        f"{m['cpu_model']} · {m['cores']} cores · kernel {m['kernel']} · load average "
        f"{m['load_start']} at start, {m['load_end']} at end · "
        f"{result['durations_s']['total']:.0f}s",
        highlight=False,
    )
    console.print(f"wrote {out_dir}/bench.json and {', '.join(result['charts'])}")
    return result
