"""kube-netlab's lab: nodes and pods as network namespaces on one machine (kind/mininet-like).

``from lab import Lab`` is the Python API (see lab/cluster.py). The import is lazy so that
agents living in this package (lab.kubelet, lab.scheduler, lab.workload) start without loading
the orchestration code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .cluster import Lab, LabError

__all__ = ["Lab", "LabError"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import cluster

        return getattr(cluster, name)
    raise AttributeError(f"module 'lab' has no attribute {name!r}")
