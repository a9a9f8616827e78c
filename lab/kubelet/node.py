"""Node registration and heartbeat: the Node object this kubelet stands for.

:func:`node_object` and :func:`status_patch` are pure (what we register, what each heartbeat
says); :class:`NodeRegistrar` creates the Node if needed, makes sure the requested taints are
there, and patches ``status`` (addresses, Ready and the pressure conditions, with a fresh
``lastHeartbeatTime``) every few seconds. The ``NetworkUnavailable`` condition belongs to the
overlay: we never send it, and strategic merge on ``type`` leaves it alone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
from collections.abc import Iterable
from dataclasses import dataclass

from kubecommon.client import ApiClient, ApiError

from .runtime import now_rfc3339

log = logging.getLogger("kubelet")

KUBELET_VERSION = "v1.30.0-knl"
CONTROL_PLANE_ROLE = "node-role.kubernetes.io/control-plane"


@dataclass(frozen=True, slots=True)
class Taint:
    key: str
    value: str
    effect: str

    def to_api(self) -> dict:
        d = {"key": self.key, "effect": self.effect}
        if self.value:
            d["value"] = self.value
        return d


def parse_taints(text: str | None) -> tuple[Taint, ...]:
    """``key[=value]:Effect[,...]`` as kubelet's --register-with-taints takes it."""
    out = []
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        kv, sep, effect = item.rpartition(":")
        if not sep or effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
            raise ValueError(
                f"taint {item!r}: want key[=value]:NoSchedule|PreferNoSchedule|NoExecute"
            )
        key, _, value = kv.partition("=")
        out.append(Taint(key, value, effect))
    return tuple(out)


def conditions(ready: bool, heartbeat: str, since: str) -> list[dict]:
    def cond(ctype: str, status: bool, reason: str, message: str) -> dict:
        return {
            "type": ctype,
            "status": "True" if status else "False",
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": heartbeat,
            "lastTransitionTime": since,
        }

    return [
        cond(
            "MemoryPressure",
            False,
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available",
        ),
        cond("DiskPressure", False, "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        cond(
            "PIDPressure", False, "KubeletHasSufficientPID", "kubelet has sufficient PID available"
        ),
        cond(
            "Ready",
            ready,
            "KubeletReady" if ready else "KubeletNotReady",
            "kubelet is posting ready status" if ready else "kubelet is starting",
        ),
    ]


def status_patch(node_ip: str, hostname: str, ready: bool, heartbeat: str, since: str) -> dict:
    return {
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": node_ip},
                {"type": "Hostname", "address": hostname},
            ],
            "conditions": conditions(ready, heartbeat, since),
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "kubeletVersion": KUBELET_VERSION,
                "kubeProxyVersion": KUBELET_VERSION,
                "operatingSystem": "linux",
                "architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(
                    platform.machine(), platform.machine()
                ),
                "osImage": "kube-netlab network namespace",
                "kernelVersion": platform.release(),
                "containerRuntimeVersion": "knl://netns",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
            "capacity": {"cpu": str(os.cpu_count() or 1), "memory": "4Gi", "pods": "250"},
            "allocatable": {"cpu": str(os.cpu_count() or 1), "memory": "4Gi", "pods": "250"},
        }
    }


def node_object(name: str, taints: Iterable[Taint]) -> dict:
    taints = tuple(taints)
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
    }
    if any(t.key == CONTROL_PLANE_ROLE for t in taints):
        labels[CONTROL_PLANE_ROLE] = ""
    obj: dict = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": {},
    }
    if taints:
        obj["spec"]["taints"] = [t.to_api() for t in taints]
    return obj


def missing_taints(existing: Iterable[dict], wanted: Iterable[Taint]) -> list[dict]:
    have = {(t.get("key"), t.get("effect")) for t in existing}
    return [t.to_api() for t in wanted if (t.key, t.effect) not in have]


class NodeRegistrar:
    def __init__(
        self,
        client: ApiClient,
        name: str,
        node_ip: str,
        taints: tuple[Taint, ...] = (),
        interval: float = 5.0,
    ):
        self.client = client
        self.name = name
        self.node_ip = node_ip
        self.taints = taints
        self.interval = interval
        self.since = now_rfc3339()
        self.registered = asyncio.Event()

    async def register(self) -> dict:
        try:
            node = await self.client.get("nodes", self.name)
        except ApiError as e:
            if e.code != 404:
                raise
            try:
                # with its status, as the kubelet registers: the node is never seen bare
                body = node_object(self.name, self.taints)
                body.update(status_patch(self.node_ip, self.name, True, now_rfc3339(), self.since))
                node = await self.client.create("nodes", body)
                log.info("registered node %s (%s)", self.name, self.node_ip)
            except ApiError as e2:
                if e2.code != 409:
                    raise
                node = await self.client.get("nodes", self.name)
        add = missing_taints((node.get("spec") or {}).get("taints") or [], self.taints)
        if add:
            taints = [*((node.get("spec") or {}).get("taints") or []), *add]
            node = await self.client.patch("nodes", self.name, {"spec": {"taints": taints}})
        await self.heartbeat()
        self.registered.set()
        return node

    async def heartbeat(self) -> None:
        body = status_patch(self.node_ip, self.name, True, now_rfc3339(), self.since)
        try:
            await self.client.patch(
                "nodes", self.name, body, patch_type="strategic", subresource="status"
            )
        except ApiError as e:
            if e.code not in (400, 415):
                raise
            # no strategic merge: read-modify-write keeps the overlay's conditions
            node = await self.client.get("nodes", self.name)
            mine = {c["type"] for c in body["status"]["conditions"]}
            others = [
                c
                for c in (node.get("status") or {}).get("conditions") or []
                if c.get("type") not in mine
            ]
            body["status"]["conditions"] = others + body["status"]["conditions"]
            await self.client.patch("nodes", self.name, body, subresource="status")

    async def run(self) -> None:
        """Register (retrying until the API answers), then heartbeat forever."""
        delay = 0.2
        while not self.registered.is_set():
            try:
                await self.register()
            except ApiError as e:
                log.warning("registering node %s: %s; retrying in %.1fs", self.name, e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5)
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.heartbeat()
            except ApiError as e:
                if e.code == 404:  # someone deleted our Node: register again
                    log.warning("node %s vanished from the API; registering again", self.name)
                    self.registered.clear()
                    return await self.run()
                log.warning("heartbeat for node %s failed: %s", self.name, e)
