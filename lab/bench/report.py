"""What the bench shows: progress while it runs, tables, the JSON file and the PNG charts.

Reads the flat figure mapping (lab/bench/stats.py) and nothing else; matplotlib runs with
the Agg backend so no display is needed.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .stats import Figure

MODE_ORDER = ("direct", "iptables", "nftables", "userspace")
COLORS = {"direct": "#888888", "iptables": "#1f77b4", "nftables": "#2ca02c", "userspace": "#d62728"}


class StepProgress:
    """A rich progress bar over the bench's measurements; one line per finished section."""

    def __init__(self, console: Console, total: int):
        self.console = console
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self.task = self.progress.add_task("starting", total=total)
        self.started = False
        self.t0 = time.monotonic()
        self.timeline: list[tuple[float, str]] = []  # (seconds since start, step) for the JSON

    def __enter__(self) -> StepProgress:
        self.progress.start()
        self.started = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def step(self, description: str) -> None:
        self.timeline.append((round(time.monotonic() - self.t0, 1), description))
        t = self.progress.tasks[0]
        if t.total is not None and t.completed + 1 > t.total:
            self.progress.update(self.task, total=t.completed + 1)
        self.progress.update(self.task, description=description, advance=1)

    def note(self, message: str) -> None:
        self.console.print(message, highlight=False)


def _fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit in ("req/s", "conn/s", "q/s"):
        return f"{v:,.0f}"
    if unit == "µs":
        return f"{v:,.0f}"
    if unit == "s":
        return f"{v * 1000:,.1f} ms" if v < 1 else f"{v:.2f} s"
    return f"{v:.3f}" if v < 10 else f"{v:,.1f}"


def cell(f: Figure | None) -> str:
    if not f or f["median"] is None:
        return "-"
    s = _fmt(f["median"], f["unit"])
    if f["n"] > 1:
        s += f" [dim]({_fmt(f['min'], f['unit'])}–{_fmt(f['max'], f['unit'])})[/]"
    if f.get("baseline") and f.get("ratio") is not None:
        s += f" [cyan]×{f['ratio']:.2f}[/]"
    return s


def _modes(figs: Mapping[str, Figure], section: str, pos: int) -> list[str]:
    seen = {k.split(".")[pos] for k in figs if k.startswith(section + ".")}
    return [m for m in MODE_ORDER if m in seen]


def tables(result: Mapping[str, Any]) -> list[Table]:
    figs: Mapping[str, Figure] = result["figures"]
    out = []
    if any(k.startswith("datapath.") for k in figs):
        t = Table(title="Data path (median (min–max) ×ratio to direct pod IP, same run)")
        cols = [("http_rps", "HTTP req/s"), ("http_p50_ms", "p50 ms"), ("http_p90_ms", "p90 ms"),
                ("http_p99_ms", "p99 ms"), ("conn_rps", "new conn/s"),
                ("tcp_gbps", "TCP Gbit/s"), ("udp_rr_per_s", "UDP req/resp/s")]  # fmt: skip
        t.add_column("client")
        t.add_column("mode")
        for _, label in cols:
            t.add_column(label, justify="right")
        for pl in ("same_node", "other_node"):
            for m in _modes(figs, "datapath", 2):
                t.add_row(pl.replace("_", " "), m,
                          *(cell(figs.get(f"datapath.{pl}.{m}.{k}")) for k, _ in cols))  # fmt: skip
        out.append(t)
    if any(k.startswith("controlplane.") for k in figs):
        t = Table(
            title="Control plane (full sync ×ratio to iptables; first packet ×ratio to a pod IP on a node without rules)"
        )
        for c in (
            "mode",
            "services",
            "full sync",
            "first packet µs (ClusterIP)",
            "pod IP, rules loaded µs",
        ):
            t.add_column(c, justify="right")
        sizes = sorted(
            {int(k.rsplit(".", 1)[1]) for k in figs if k.startswith("controlplane.full_sync.")}
        )
        for m in _modes(figs, "controlplane.full_sync", 2):
            for n in sizes:
                t.add_row(m, f"{n:,}", cell(figs.get(f"controlplane.full_sync.{m}.{n}")),
                          cell(figs.get(f"controlplane.first_packet.{m}.{n}")),
                          cell(figs.get(f"controlplane.first_packet_pod_ip.{m}.{n}")))  # fmt: skip
        out.append(t)
        t = Table(title="Endpoint change (×ratio to iptables)")
        for c in ("mode", "API change → traffic (lab)", "sync → live at max services"):
            t.add_column(c, justify="right")
        ms = set(_modes(figs, "controlplane.change_to_traffic", 2)) | set(
            _modes(figs, "controlplane.change_live_at_max", 2)
        )
        for m in [m for m in MODE_ORDER if m in ms]:
            t.add_row(m, cell(figs.get(f"controlplane.change_to_traffic.{m}")),
                      cell(figs.get(f"controlplane.change_live_at_max.{m}")))  # fmt: skip
        out.append(t)
    if any(k.startswith("dns.") for k in figs):
        t = Table(title="DNS, dnsperf (×ratio to a bare recvfrom/sendto loop)")
        for c in ("names", "queries/s", "p50 ms", "p99 ms"):
            t.add_column(c, justify="right")
        for kind in ("internal", "nxdomain", "forwarded", "bare_loop"):
            if f"dns.{kind}.qps" in figs:
                t.add_row(
                    kind, *(cell(figs.get(f"dns.{kind}.{k}")) for k in ("qps", "p50_ms", "p99_ms"))
                )
        out.append(t)
    if any(k.startswith("overlay.") for k in figs):
        t = Table(title="Overlay, iperf3 TCP (×ratio to the underlay)")
        t.add_column("path")
        t.add_column("Gbit/s", justify="right")
        labels = {k: v.get("label", k) for k, v in result.get("raw", {}).get("overlay", {})
                  .get("throughput_bps", {}).items()}  # fmt: skip
        for k, f in figs.items():
            if k.startswith("overlay."):
                key = k.split(".")[1]
                t.add_row(labels.get(key, key), cell(f))
        out.append(t)
    return out


def write_json(result: Mapping[str, Any], path: str) -> None:
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2, sort_keys=False, default=str)
    os.replace(path + ".tmp", path)


def _err(f: Figure) -> tuple[float, float]:
    return (f["median"] - f["min"], f["max"] - f["median"])


def charts(figs: Mapping[str, Figure], out_dir: str) -> list[str]:
    """datapath.png (req/s and p99 per mode) and controlplane.png (sync, first packet vs n)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    modes = _modes(figs, "datapath", 2)
    if modes:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        width = 0.38
        for ax, metric, title in ((axes[0], "http_rps", "HTTP requests/s (keep-alive, wrk)"),
                                  (axes[1], "http_p99_ms", "HTTP latency p99 (ms)")):  # fmt: skip
            for j, pl in enumerate(("same_node", "other_node")):
                xs, ys, lo, hi = [], [], [], []
                for i, m in enumerate(modes):
                    f = figs.get(f"datapath.{pl}.{m}.{metric}")
                    if not f or f["median"] is None:
                        continue
                    xs.append(i + (j - 0.5) * width)
                    ys.append(f["median"])
                    e = _err(f)
                    lo.append(e[0])
                    hi.append(e[1])
                bars = ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3,
                              label=pl.replace("_", " ") + " client",
                              color=["#4c72b0", "#dd8452"][j])  # fmt: skip
                for b, m in zip(
                    bars,
                    [m for m in modes if figs.get(f"datapath.{pl}.{m}.{metric}")],
                    strict=False,
                ):
                    r = figs[f"datapath.{pl}.{m}.{metric}"].get("ratio")
                    if r is not None and m != "direct":
                        ax.annotate(f"×{r:.2f}", (b.get_x() + b.get_width() / 2, b.get_height()),
                                    ha="center", va="bottom", fontsize=7)  # fmt: skip
            ax.set_xticks(range(len(modes)), modes)
            ax.set_title(title)
            ax.grid(axis="y", alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle("Data path per proxy mode (median, min–max bars; ×ratio to direct pod IP)")
        fig.tight_layout()
        p = os.path.join(out_dir, "datapath.png")
        fig.savefig(p, dpi=110)
        plt.close(fig)
        written.append(p)
    cp_modes = _modes(figs, "controlplane.full_sync", 2)
    if cp_modes:
        sizes = sorted(
            {int(k.rsplit(".", 1)[1]) for k in figs if k.startswith("controlplane.full_sync.")}
        )
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for m in cp_modes:
            for ax, key, scale in ((axes[0], "full_sync", 1.0), (axes[1], "first_packet", 1.0)):
                fs = [figs.get(f"controlplane.{key}.{m}.{n}") for n in sizes]
                pts = [
                    (n, f) for n, f in zip(sizes, fs, strict=True) if f and f["median"] is not None
                ]
                if not pts:
                    continue
                ax.errorbar([n for n, _ in pts], [f["median"] * scale for _, f in pts],
                            yerr=[[_err(f)[0] * scale for _, f in pts], [_err(f)[1] * scale for _, f in pts]],
                            marker="o", capsize=3, label=m, color=COLORS.get(m))  # fmt: skip
        floor = figs.get("controlplane.first_packet_no_rules")
        if floor and floor["median"] is not None:
            axes[1].axhline(floor["median"], ls="--", color=COLORS["direct"],
                            label="pod IP, node without rules")  # fmt: skip
        axes[0].set_title("Full sync time (s) vs services")
        axes[1].set_title("First-packet latency, connect() (µs) vs services")
        for ax in axes:
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("services (2 endpoints each)")
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=8)
        fig.suptitle("Control plane per proxy mode (median, min–max bars)")
        fig.tight_layout()
        p = os.path.join(out_dir, "controlplane.png")
        fig.savefig(p, dpi=110)
        plt.close(fig)
        written.append(p)
    return written


def _md(f: Figure | None, ratio: bool = True) -> str:
    if not f or f["median"] is None:
        return "–"
    s = _fmt(f["median"], f["unit"])
    if f["n"] > 1:
        s += f" ({_fmt(f['min'], f['unit'])}–{_fmt(f['max'], f['unit'])})"
    if ratio and f.get("baseline") and f.get("ratio") is not None:
        s += f" **×{f['ratio']:.2f}**"
    return s


def markdown(result: Mapping[str, Any]) -> str:
    """The tables of a run as Markdown (docs/benchmarks.md is written from it)."""
    figs: Mapping[str, Figure] = result["figures"]
    lines: list[str] = []
    cols = [("http_rps", "HTTP req/s"), ("http_p50_ms", "p50 ms"), ("http_p90_ms", "p90 ms"),
            ("http_p99_ms", "p99 ms"), ("conn_rps", "new conn/s"), ("tcp_gbps", "TCP Gbit/s"),
            ("udp_rr_per_s", "UDP req/resp/s")]  # fmt: skip
    lines += ["| client | mode | " + " | ".join(c for _, c in cols) + " |",
              "|---|---|" + "---:|" * len(cols)]  # fmt: skip
    for pl in ("same_node", "other_node"):
        for m in _modes(figs, "datapath", 2):
            lines.append(f"| {pl.replace('_', ' ')} | {m} | "
                         + " | ".join(_md(figs.get(f"datapath.{pl}.{m}.{k}")) for k, _ in cols)
                         + " |")  # fmt: skip
    lines += ["", "| mode | services | full sync | first packet via ClusterIP, µs | "
              "to the pod IP with the rules loaded, µs |", "|---|---:|---:|---:|---:|"]  # fmt: skip
    sizes = sorted(
        {int(k.rsplit(".", 1)[1]) for k in figs if k.startswith("controlplane.full_sync.")}
    )
    for m in _modes(figs, "controlplane.full_sync", 2):
        for n in sizes:
            lines.append(f"| {m} | {n:,} | {_md(figs.get(f'controlplane.full_sync.{m}.{n}'))} | "
                         f"{_md(figs.get(f'controlplane.first_packet.{m}.{n}'))} | "
                         f"{_md(figs.get(f'controlplane.first_packet_pod_ip.{m}.{n}'))} |")  # fmt: skip
    lines += ["", "| mode | endpoint change in the API → traffic (lab) | "
              "sync → live at the largest size |", "|---|---:|---:|"]  # fmt: skip
    for m in _modes(figs, "controlplane.change_to_traffic", 2):
        lines.append(f"| {m} | {_md(figs.get(f'controlplane.change_to_traffic.{m}'))} | "
                     f"{_md(figs.get(f'controlplane.change_live_at_max.{m}'))} |")  # fmt: skip
    lines += ["", "| names | queries/s | p50 ms | p99 ms |", "|---|---:|---:|---:|"]
    for kind in ("internal", "nxdomain", "forwarded", "bare_loop"):
        lines.append(f"| {kind} | " + " | ".join(_md(figs.get(f"dns.{kind}.{k}"))
                                                 for k in ("qps", "p50_ms", "p99_ms")) + " |")  # fmt: skip
    labels = {k: v.get("label", k) for k, v in result.get("raw", {}).get("overlay", {})
              .get("throughput_bps", {}).items()}  # fmt: skip
    lines += ["", "| path | TCP Gbit/s |", "|---|---:|"]
    for k, f in figs.items():
        if k.startswith("overlay."):
            lines.append(f"| {labels.get(k.split('.')[1], k)} | {_md(f)} |")
    return "\n".join(lines) + "\n"
