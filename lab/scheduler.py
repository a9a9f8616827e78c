"""A small scheduler: bind pods without ``spec.nodeName`` to the least-loaded fitting node.

``python -m lab.scheduler --master URL``. Informers on Pods and Nodes; :func:`choose_node` is
pure (Ready, schedulable, nodeSelector matches, NoSchedule/NoExecute taints tolerated, then
fewest non-terminated pods, ties by name) and bindings go through the ``pods/<name>/binding``
subresource (a v1 Binding), as kube-scheduler does. Decisions count pods bound a moment ago
but not yet seen back through the watch, so a burst of pods still spreads evenly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping

import click

from kubecommon import log as knl_log
from kubecommon.aio import run_until_signalled
from kubecommon.cli import api_options, client_from
from kubecommon.client import ApiClient, ApiError, resource_path
from kubecommon.informer import Informer, object_key

log = logging.getLogger("scheduler")

SCHEDULER_NAME = "default-scheduler"
RETRY_INTERVAL = 1.0


def node_ready(node: Mapping) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (node.get("status") or {}).get("conditions") or []
    )


def tolerates(tolerations: Iterable[Mapping], taint: Mapping) -> bool:
    for t in tolerations:
        if t.get("effect") and t.get("effect") != taint.get("effect"):
            continue
        op = t.get("operator") or "Equal"
        if not t.get("key"):
            if op == "Exists":
                return True
            continue
        if t.get("key") != taint.get("key"):
            continue
        if op == "Exists" or (t.get("value") or "") == (taint.get("value") or ""):
            return True
    return False


def fits(pod: Mapping, node: Mapping) -> bool:
    spec = pod.get("spec") or {}
    if not node_ready(node) or (node.get("spec") or {}).get("unschedulable"):
        return False
    labels = (node.get("metadata") or {}).get("labels") or {}
    for k, v in (spec.get("nodeSelector") or {}).items():
        if labels.get(k) != v:
            return False
    tolerations = spec.get("tolerations") or []
    for taint in (node.get("spec") or {}).get("taints") or []:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not tolerates(tolerations, taint):
            return False
    return True


def choose_node(pod: Mapping, nodes: Iterable[Mapping], load: Mapping[str, int]) -> str | None:
    candidates = [n["metadata"]["name"] for n in nodes if fits(pod, n)]
    if not candidates:
        return None
    return min(candidates, key=lambda name: (load.get(name, 0), name))


def wants_us(pod: Mapping) -> bool:
    spec = pod.get("spec") or {}
    md = pod.get("metadata") or {}
    phase = (pod.get("status") or {}).get("phase")
    return (
        not spec.get("nodeName")
        and (spec.get("schedulerName") or SCHEDULER_NAME) == SCHEDULER_NAME
        and not md.get("deletionTimestamp")
        and phase not in ("Succeeded", "Failed")
    )


def binding_for(pod: Mapping, node: str) -> dict:
    md = pod["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {
            "name": md["name"],
            "namespace": md.get("namespace", "default"),
            "uid": md.get("uid"),
        },
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    }


class Scheduler:
    def __init__(self, client: ApiClient):
        self.client = client
        self.pods = Informer(client, "pods")
        self.nodes = Informer(client, "nodes")
        self.assumed: dict[str, str] = {}  # pod key -> node, bound but not yet seen bound
        self.inflight: set[str] = set()
        self.kick = asyncio.Event()

    def load(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for key, p in self.pods.store.items():
            node = (p.get("spec") or {}).get("nodeName") or self.assumed.get(key)
            if node and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
                out[node] = out.get(node, 0) + 1
        return out

    def _on_event(self, etype: str, new: dict | None, old: dict | None) -> None:
        if new is not None and (new.get("spec") or {}).get("nodeName"):
            self.assumed.pop(object_key(new), None)
        if new is None and old is not None:
            self.assumed.pop(object_key(old), None)
        self.kick.set()

    async def run(self) -> None:
        self.pods.add_handler(self._on_event)
        self.nodes.add_handler(self._on_event)
        tasks = [asyncio.create_task(self.pods.run()), asyncio.create_task(self.nodes.run())]
        try:
            await self.pods.synced.wait()
            await self.nodes.synced.wait()
            log.info("scheduler running")
            while True:
                with_pending = self.schedule_pending()
                self.kick.clear()
                timeout = RETRY_INTERVAL if with_pending else None
                try:
                    await asyncio.wait_for(self.kick.wait(), timeout)
                except TimeoutError:
                    pass
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def schedule_pending(self) -> bool:
        """Decide for every unbound pod now (synchronously), bind in the background."""
        pending = False
        nodes = list(self.nodes.store.values())
        load = self.load()
        for key, pod in sorted(self.pods.store.items()):
            if not wants_us(pod) or key in self.assumed or key in self.inflight:
                continue
            node = choose_node(pod, nodes, load)
            if node is None:
                pending = True
                continue
            load[node] = load.get(node, 0) + 1
            self.assumed[key] = node
            self.inflight.add(key)
            asyncio.get_running_loop().create_task(self.bind(key, pod, node))
        return pending

    async def bind(self, key: str, pod: dict, node: str) -> None:
        md = pod["metadata"]
        ns, name = md.get("namespace", "default"), md["name"]
        try:
            await self.client.request(
                "POST", resource_path("pods", ns, name, "binding"), binding_for(pod, node)
            )
            log.info("bound %s to %s", key, node)
        except ApiError as e:
            self.assumed.pop(key, None)
            if e.code in (404, 405):
                if e.code == 405 or "binding" in e.message:
                    await self._bind_by_patch(ns, name, node, key)
                    return
            elif e.code != 409:
                log.warning("binding %s to %s failed: %s", key, node, e)
            self.kick.set()
        finally:
            self.inflight.discard(key)

    async def _bind_by_patch(self, ns: str, name: str, node: str, key: str) -> None:
        try:
            await self.client.patch("pods", name, {"spec": {"nodeName": node}}, ns)
            self.assumed[key] = node
            log.info("bound %s to %s (spec.nodeName patch: no binding subresource)", key, node)
        except ApiError as e:
            log.warning("binding %s to %s failed: %s", key, node, e)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@api_options
def main(
    master: str | None, kubeconfig: str | None, token_file: str | None, log_level: str
) -> None:
    """Bind unscheduled pods to the least-loaded Ready node whose taints they tolerate."""
    knl_log.setup("scheduler", log_level)
    client = client_from(master, kubeconfig, token_file, "scheduler")

    run_until_signalled(lambda: Scheduler(client).run(), closing=client)


if __name__ == "__main__":
    main()
