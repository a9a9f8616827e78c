"""Benchmark: how long a lab of 2, 10 and 20 worker nodes takes to come up, to run 2 pods per
worker, and to go down.

    python -m lab.bench_up [--nodes 2,10,20] [--pods-per-node 2] [--out bench-results/bench_up.json]

For each size: ``up`` (namespaces, apiserver, every agent healthy, cluster DNS), then the pods
(created with their nodeName, timed until all are Ready with an IP), then ``down`` (timed until
nothing is left). Prints a table with ratios against the smallest lab measured in the same run
and writes the figures as JSON. Uses its own prefix and an RFC 2544 node network, so it never
touches a lab the user has up.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time

import click
from rich.console import Console
from rich.table import Table

from . import cleanup
from .cluster import Lab, LabError

console = Console()


def bench_pod(name: str, node: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "bench", "labels": {"app": "bench"}},
        "spec": {"nodeName": node, "containers": [{"name": "echo", "image": "kube-netlab/echo"}]},
    }


def measure(workers: int, pods_per_node: int, prefix: str, node_cidr: str) -> dict:
    cleanup.down(prefix)
    lab = Lab(prefix=prefix, nodes=workers, node_cidr=node_cidr)
    row: dict = {"workers": workers, "nodes": workers + 1, "pods": workers * pods_per_node}
    try:
        t0 = time.monotonic()
        lab.up()
        row["up_s"] = round(time.monotonic() - t0, 2)
        row["up_phases_s"] = dict(lab.timings)
        st = lab.state()
        row["agents"] = sorted(c for c, ok in (st.agents if st else {}).items() if ok)
        if (st.agents if st else {}).get("kubelet"):
            t1 = time.monotonic()
            lab.apply_objects(
                [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}}]
                + [
                    bench_pod(f"p{i}-{node}", node)
                    for node in lab.worker_names
                    for i in range(pods_per_node)
                ]
            )
            lab.wait_ready("bench", "app=bench", row["pods"], timeout=120 + 5 * row["pods"])
            row["pods_ready_s"] = round(time.monotonic() - t1, 2)
    finally:
        t2 = time.monotonic()
        rep = lab.down()
        row["down_s"] = round(time.monotonic() - t2, 2)
        row["killed_processes"] = len(rep.killed)
        row["removed_netns"] = len(rep.netns)
    left = cleanup.leftovers(prefix)
    row["leftovers"] = left
    return row


@click.command()
@click.option("--nodes", "sizes", default="2,10,20", show_default=True, help="Worker counts.")
@click.option("--pods-per-node", default=2, show_default=True)
@click.option("--prefix", default="knlb", show_default=True)
@click.option("--node-cidr", default="198.19.250.0/24", show_default=True)
@click.option(
    "--out",
    default=os.path.join("bench-results", "bench_up.json"),
    show_default=True,
    type=click.Path(dir_okay=False),
)
def main(sizes: str, pods_per_node: int, prefix: str, node_cidr: str, out: str) -> None:
    """Time lab up / pods Ready / down for several lab sizes."""
    if os.geteuid() != 0:
        sys.exit("bench_up needs root (it creates network namespaces)")
    rows = []
    for n in [int(s) for s in sizes.split(",") if s.strip()]:
        with console.status(f"lab with {n} workers: up, {n * pods_per_node} pods, down"):
            try:
                row = measure(n, pods_per_node, prefix, node_cidr)
            except LabError as e:
                console.print(f"[red]{n} workers failed:[/] {e}", markup=False)
                row = {"workers": n, "nodes": n + 1, "error": str(e)}
        rows.append(row)
        console.print(
            f"{n} workers: up {row.get('up_s', '-')}s, pods {row.get('pods_ready_s', '-')}s, "
            f"down {row.get('down_s', '-')}s"
        )
    base = next((r for r in rows if "up_s" in r), None)
    t = Table(title=f"lab up/down ({pods_per_node} pods per worker; ratios vs the smallest lab)")
    for c in (
        "workers",
        "nodes",
        "pods",
        "up s",
        "pods Ready s",
        "down s",
        "up ×",
        "down ×",
        "left",
    ):
        t.add_column(c, justify="right")
    for r in rows:

        def ratio(key: str, r: dict = r) -> str:
            if base and key in r and base.get(key):
                return f"{r[key] / base[key]:.1f}"
            return "-"

        t.add_row(
            str(r["workers"]),
            str(r["nodes"]),
            str(r.get("pods", "-")),
            str(r.get("up_s", "error")),
            str(r.get("pods_ready_s", "-")),
            str(r.get("down_s", "-")),
            ratio("up_s"),
            ratio("down_s"),
            str(len(r.get("leftovers", []))),
        )
    console.print(t)
    result = {
        "benchmark": "lab_up_down",
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release()},
        "pods_per_node": pods_per_node,
        "rows": rows,
    }
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
