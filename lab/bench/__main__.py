"""``python -m lab.bench [--quick] [--out DIR] [--modes iptables,userspace,nftables]``."""

from __future__ import annotations

import json
import logging
import os
import sys

import click

from . import ALL_MODES, SECTIONS, Params, report, run


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--quick", is_flag=True, help="Small sizes, 1 repetition, 1 s runs (CI, < 2 min).")
@click.option(
    "--out",
    "out_dir",
    default="bench-results/bench",
    show_default=True,
    help="Directory for bench.json, datapath.png and controlplane.png.",
)
@click.option(
    "--modes",
    default=",".join(ALL_MODES),
    show_default=True,
    help="Proxy modes to compare (the direct pod IP is always the baseline).",
)
@click.option("--sections", default=",".join(SECTIONS), show_default=True, help="Parts to run.")
@click.option("--prefix", default="knlb", show_default=True, help="Lab prefix of the bench.")
@click.option("--node-cidr", default="172.19.0.0/16", show_default=True)
@click.option(
    "--overlay-underlay",
    default="172.19.250.0/24",
    show_default=True,
    help="Underlay of the overlay section's own testbed (built after the lab is down).",
)
@click.option(
    "--markdown",
    "markdown_of",
    default=None,
    metavar="JSON",
    help="Print the tables of an earlier run's bench.json as Markdown and exit.",
)
@click.option("-v", "--verbose", is_flag=True)
def main(quick: bool, out_dir: str, modes: str, sections: str, prefix: str, node_cidr: str,
         overlay_underlay: str, markdown_of: str | None, verbose: bool) -> None:  # fmt: skip
    """Benchmark the proxy modes side by side on one lab (root; takes its lab down at the end)."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")  # fmt: skip
    if markdown_of:
        with open(markdown_of, encoding="utf-8") as f:
            click.echo(report.markdown(json.load(f)), nl=False)
        return
    if os.geteuid() != 0:
        sys.exit("bench: run as root (it builds network namespaces)")
    wanted = [s for s in sections.split(",") if s]
    bad = set(wanted) - set(SECTIONS)
    if bad:
        raise click.BadParameter(f"unknown sections {sorted(bad)}; known: {', '.join(SECTIONS)}")
    params = Params.for_run(quick, prefix=prefix, node_cidr=node_cidr, sections=tuple(wanted),
                            overlay_underlay=overlay_underlay)  # fmt: skip
    try:
        result = run(quick, out_dir, [m for m in modes.split(",") if m], params=params)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    sys.exit(1 if result["errors"] else 0)


if __name__ == "__main__":
    main()
