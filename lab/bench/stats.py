"""Figures of the bench: median of repetitions with min and max, and ratios to a baseline.

Every measured quantity is a *figure*: a plain dict (it goes to JSON as is) holding the raw
samples, their median/min/max, the unit, which direction is better, the id of its baseline
figure measured in the same run and the ratio ``median / baseline median``. Figures live in
one flat mapping keyed by a dotted id ("datapath.same_node.iptables.http_rps"), so the report,
the charts and the test walk them without knowing the sections. No I/O here.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from typing import Any

Figure = dict[str, Any]


def figure(
    samples: Iterable[float], unit: str, better: str = "higher", baseline: str | None = None
) -> Figure:
    """A figure from raw samples; its ratio is filled in by :func:`fill_ratios`."""
    xs = [float(x) for x in samples if x is not None and not math.isnan(float(x))]
    return {
        "unit": unit,
        "better": better,
        "samples": xs,
        "n": len(xs),
        "median": statistics.median(xs) if xs else None,
        "min": min(xs) if xs else None,
        "max": max(xs) if xs else None,
        "baseline": baseline,
        "ratio": None,
    }


def ratio(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or base == 0:
        return None
    return value / base


def fill_ratios(figures: Mapping[str, Figure]) -> None:
    """Set every figure's ratio to its median over its baseline's median (1.0 for baselines)."""
    for fid, f in figures.items():
        b = f.get("baseline")
        if b is None:
            f["ratio"] = 1.0 if f["median"] is not None else None
            continue
        if b not in figures:
            raise KeyError(f"figure {fid}: baseline {b} was not measured")
        f["ratio"] = ratio(f["median"], figures[b]["median"])


def missing(figures: Mapping[str, Figure]) -> list[str]:
    """Ids of figures without any sample (a measurement that failed every time)."""
    return sorted(fid for fid, f in figures.items() if not f["n"])
