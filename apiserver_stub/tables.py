"""meta.k8s.io Table rendering (what ``kubectl get`` prints)."""

from __future__ import annotations

from typing import Any

from .resources import Resource
from .store import Entry


def table(
    res: Resource,
    items: list[Entry],
    version: str,
    include: str | None,
    rv: str,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    cols = [{"name": "Name", "type": "string", "format": "name", "description": "", "priority": 0}]
    rows = [{"cells": [e.name], "object": e.copy()} for e in items]
    return {
        "kind": "Table",
        "apiVersion": f"meta.k8s.io/{version}",
        "metadata": meta or {"resourceVersion": rv},
        "columnDefinitions": cols,
        "rows": rows,
    }
