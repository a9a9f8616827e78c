"""A lab's configuration: what `up` was asked for, saved in the state dir so later commands
(status, exec, a second `up`, down) know the lab without being told again. Pure, no I/O
beyond reading/writing the JSON state file.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from . import topology as topo

PROXY_MODES = ("iptables", "userspace", "nftables")
OVERLAYS = ("vxlan", "host-gw")
STATE_FILE = "state.json"


@dataclass(frozen=True, slots=True)
class LabConfig:
    prefix: str = topo.DEFAULT_PREFIX
    workers: int = 2
    proxy_mode: str = "iptables"
    overlay: str = "vxlan"
    node_cidr: str = topo.DEFAULT_NODE_CIDR
    service_cidr: str = topo.DEFAULT_SERVICE_CIDR
    cluster_cidr: str = topo.DEFAULT_CLUSTER_CIDR
    cluster_dns: str = topo.CLUSTER_DNS_IP
    ip_masq: bool = True
    dns_upstream: str = "127.0.0.1:5353"  # nothing real: the lab never forwards outside

    def __post_init__(self) -> None:
        topo.validate_prefix(self.prefix)
        if self.proxy_mode not in PROXY_MODES:
            raise ValueError(f"proxy mode {self.proxy_mode!r}: choose one of {PROXY_MODES}")
        if self.overlay not in OVERLAYS:
            raise ValueError(f"overlay {self.overlay!r}: choose one of {OVERLAYS}")
        if self.workers < 0:
            raise ValueError("nodes must be >= 0")

    def plan(self) -> topo.Plan:
        return topo.plan(
            self.prefix, self.workers, self.node_cidr, self.service_cidr, self.cluster_cidr
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabConfig:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})

    def differences(self, other: LabConfig) -> list[str]:
        a, b = self.to_dict(), other.to_dict()
        return [f"{k}: {a[k]!r} (running) vs {b[k]!r} (asked)" for k in a if a[k] != b[k]]


@dataclass(slots=True)
class LabState:
    """state.json: config, phase ("building" | "up" | "failed") and what was started."""

    config: LabConfig
    phase: str = "building"
    agents: dict[str, bool] = field(default_factory=dict)  # component -> runnable
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "phase": self.phase,
            "agents": dict(self.agents),
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabState:
        return cls(
            config=LabConfig.from_dict(d["config"]),
            phase=d.get("phase", "building"),
            agents=dict(d.get("agents") or {}),
            error=d.get("error", ""),
        )


def state_path(prefix: str) -> str:
    return os.path.join(topo.state_dir(prefix), STATE_FILE)


def load_state(prefix: str) -> LabState | None:
    try:
        with open(state_path(prefix), encoding="utf-8") as f:
            return LabState.from_dict(json.load(f))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        return None


def save_state(state: LabState) -> None:
    path = state_path(state.config.prefix)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(state.to_dict(), f, indent=2, sort_keys=True)
    os.replace(tmp, path)
