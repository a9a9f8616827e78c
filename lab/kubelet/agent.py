"""The kubelet's control loop: Pods bound to this node -> sandboxes, processes, status.

One informer watches Pods with ``spec.nodeName=<node>``, another this node's Node (for its
podCIDR, which brings ``cni0`` up). Every pod gets a :class:`PodWorker` (one asyncio task):
it creates the sandbox, starts and supervises the process, runs readiness and reports status
(coalesced patches of ``pods/<name>/status``), and on deletion stops the process within the
grace period, removes the sandbox and finalizes the API object (DELETE with
``gracePeriodSeconds=0``) when the API kept it with a deletionTimestamp.

At start-up, before any pod is touched, leftovers of this node are reconciled with the API:
sandboxes whose pod is gone (or was recreated with another uid) are removed, the rest is
adopted with their running processes (a restarted kubelet does not restart pods).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
from pathlib import Path

from kubecommon.client import ApiClient, ApiError, resource_path
from kubecommon.informer import Informer, object_key

from . import status as podstatus
from .node import NodeRegistrar, Taint
from .probes import Probe, ReadinessLoop, parse_probe
from .runtime import Container, container_spec, now_rfc3339
from .sandbox import PodNetwork, SandboxManager, netns_inode

log = logging.getLogger("kubelet")

STATUS_DEBOUNCE = 0.01
MTU_CHECK_INTERVAL = 2.0


def pod_text(namespace: str, name: str, ip: str) -> str:
    return f"pod={name} namespace={namespace} ip={ip}\n"


class Kubelet:
    def __init__(
        self,
        client: ApiClient,
        *,
        node_name: str,
        node_ip: str,
        prefix: str,
        cluster_dns: str,
        state_dir: Path,
        subnet_file: Path | None = None,
        taints: tuple[Taint, ...] = (),
        heartbeat: float = 5.0,
        underlay_iface: str = "eth0",
    ):
        self.client = client
        self.node_name = node_name
        self.node_ip = node_ip
        self.state_dir = state_dir
        self.pods_dir = state_dir / "pods"
        self.sandboxes = SandboxManager(
            prefix, state_dir, cluster_dns, subnet_file, underlay_iface=underlay_iface
        )
        self.registrar = NodeRegistrar(client, node_name, node_ip, taints, heartbeat)
        self.pod_informer = Informer(client, "pods", field_selector=f"spec.nodeName={node_name}")
        self.node_informer = Informer(client, "nodes", field_selector=f"metadata.name={node_name}")
        self.workers: dict[str, PodWorker] = {}
        self.cidr_ready = asyncio.Event()
        self.dispatching = False
        self._tasks: list[asyncio.Task] = []

    # -------------------------------------------------------------- wiring

    async def run(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.node_informer.add_handler(self._on_node)
        self.pod_informer.add_handler(self._on_pod)
        self._tasks = [
            asyncio.create_task(self.registrar.run(), name="node-registrar"),
            asyncio.create_task(self.node_informer.run(), name="node-informer"),
            asyncio.create_task(self.pod_informer.run(), name="pod-informer"),
        ]
        try:
            await self.registrar.registered.wait()
            await self.pod_informer.synced.wait()
            await self.cleanup_leftovers()
            self.dispatching = True
            for key, pod in list(self.pod_informer.store.items()):
                self._dispatch(key, pod)
            log.info(
                "kubelet for node %s ready (%d pods bound here)", self.node_name, len(self.workers)
            )
            self._tasks.append(asyncio.create_task(self._follow_mtu(), name="mtu"))
            await asyncio.gather(*self._tasks)
        finally:
            for t in self._tasks:
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            for w in list(self.workers.values()):
                w.detach()
            await self.sandboxes.close()

    def _on_node(self, etype: str, new: dict | None, old: dict | None) -> None:
        if new is None:
            return
        spec = new.get("spec") or {}
        cidr = spec.get("podCIDR") or (spec.get("podCIDRs") or [None])[0]
        if cidr and cidr != self.sandboxes.pod_cidr:
            asyncio.get_running_loop().create_task(self._bridge(cidr))

    async def _bridge(self, cidr: str) -> None:
        try:
            await self.sandboxes.ensure_bridge(cidr)
            self.cidr_ready.set()
        except Exception:
            log.exception("cannot set up %s for podCIDR %s", "cni0", cidr)

    def _on_pod(self, etype: str, new: dict | None, old: dict | None) -> None:
        obj = new or old
        if obj is None or not self.dispatching:
            return
        if new is not None and (new.get("spec") or {}).get("nodeName") != self.node_name:
            new = None  # not (or no longer) ours
        self._dispatch(object_key(obj), new)

    def _dispatch(self, key: str, pod: dict | None) -> None:
        w = self.workers.get(key)
        if w is None:
            if pod is None:
                return
            w = self.workers[key] = PodWorker(self, key)
        w.update(pod)

    def worker_done(self, key: str, worker: PodWorker) -> None:
        if self.workers.get(key) is worker:
            del self.workers[key]

    # -------------------------------------------------------------- start-up reconcile

    async def cleanup_leftovers(self) -> None:
        store = self.pod_informer.store
        stale: list[PodNetwork] = []
        for rec in self.sandboxes.records():
            pod = store.get(rec.key)
            uid = ((pod or {}).get("metadata") or {}).get("uid")
            deleting = bool(((pod or {}).get("metadata") or {}).get("deletionTimestamp"))
            if pod is None or uid != rec.uid or deleting:
                stale.append(rec)
        if stale:
            log.info("removing %d leftover pod sandboxes: %s", len(stale), [r.key for r in stale])
        await asyncio.gather(*(self.remove_leftover(r.namespace, r.name) for r in stale))

    async def remove_leftover(self, namespace: str, name: str) -> None:
        pod_dir = self.pod_dir(namespace, name)
        saved = Container.saved(pod_dir)
        if saved:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(saved["pid"], signal.SIGKILL)
        await self.sandboxes.destroy(namespace, name)
        shutil.rmtree(pod_dir, ignore_errors=True)

    async def cleanup_all(self) -> None:
        """--cleanup: every sandbox and process this node's kubelet ever made, and cni0."""
        for rec in self.sandboxes.records():
            await self.remove_leftover(rec.namespace, rec.name)
        await self.sandboxes.remove_bridge()
        shutil.rmtree(self.sandboxes.ipam.dir, ignore_errors=True)
        await self.sandboxes.close()

    def pod_dir(self, namespace: str, name: str) -> Path:
        return self.pods_dir / f"{namespace}_{name}"

    def log_path(self, namespace: str, name: str) -> Path:
        return self.pods_dir / f"{namespace}_{name}.log"

    # -------------------------------------------------------------- MTU follow-up

    async def _follow_mtu(self) -> None:
        """When flanneld writes (or changes) FLANNEL_MTU, existing pods follow it."""
        while True:
            await asyncio.sleep(MTU_CHECK_INTERVAL)
            mtu = self.sandboxes.subnet_mtu()
            if mtu is None:
                continue
            for w in list(self.workers.values()):
                net = w.net
                if net is not None and net.mtu != mtu and not w.stopping:
                    try:
                        await self.sandboxes.set_mtu(net, mtu)
                        w.net = PodNetwork(
                            net.namespace, net.name, net.uid, net.netns, net.ip, net.veth, mtu
                        )
                        log.info("pod %s: MTU %d -> %d", net.key, net.mtu, mtu)
                    except Exception as e:  # noqa: BLE001
                        log.warning("pod %s: cannot set MTU %d: %s", net.key, mtu, e)

    # -------------------------------------------------------------- API writes

    async def patch_status(self, namespace: str, name: str, status: dict) -> None:
        try:
            await self.client.patch(
                "pods", name, {"status": status}, namespace, "strategic", subresource="status"
            )
        except ApiError as e:
            if e.code != 415:
                raise
            await self.client.patch(
                "pods", name, {"status": status}, namespace, subresource="status"
            )

    async def finalize(self, namespace: str, name: str, uid: str) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": uid},
        }
        try:
            await self.client.request(
                "DELETE",
                resource_path("pods", namespace, name),
                body,
                params={"gracePeriodSeconds": 0},
            )
        except ApiError as e:
            if e.code not in (404, 409):
                raise


class PodWorker:
    """Everything this node does for one pod key (namespace/name), one incarnation at a time."""

    def __init__(self, kubelet: Kubelet, key: str):
        self.k = kubelet
        self.key = key
        self.namespace, self.name = key.split("/", 1)
        self.pod: dict | None = None
        self.wake = asyncio.Event()
        self.dirty = asyncio.Event()
        self.uid: str | None = None
        self.net: PodNetwork | None = None
        self.container: Container | None = None
        self.readiness: ReadinessLoop | None = None
        self.stopping = False
        self.error = ""
        self.start_time = ""
        self.transitions: dict[str, tuple[str, str]] = {}
        self.last_sent: dict | None = None
        self._side: list[asyncio.Task] = []
        self.task = asyncio.create_task(self.run(), name=f"pod {key}")

    def update(self, pod: dict) -> None:
        self.pod = pod
        self.wake.set()

    def mark_dirty(self) -> None:
        self.dirty.set()

    def detach(self) -> None:
        """Kubelet shutting down: stop watching, leave the pod's process running."""
        for t in [self.task, *self._side]:
            t.cancel()

    # ---------------------------------------------------------------- main loop

    async def run(self) -> None:
        try:
            while True:
                await self.wake.wait()
                self.wake.clear()
                pod = self.pod
                md = (pod or {}).get("metadata") or {}
                deleting = pod is None or bool(md.get("deletionTimestamp"))
                if self.uid is not None and (deleting or md.get("uid") != self.uid):
                    await self.teardown(pod)
                elif deleting and self.k.sandboxes.record(self.namespace, self.name):
                    await self.k.remove_leftover(self.namespace, self.name)
                if pod is not None and md.get("deletionTimestamp") and md.get("uid"):
                    await self.k.finalize(self.namespace, self.name, md["uid"])
                if deleting:
                    if self.pod is pod or self.pod is None:
                        break
                    continue
                if self.uid is None:
                    if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                        continue  # finished before this kubelet started; nothing to run
                    await self.setup(pod)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("pod %s: worker failed", self.key)
        finally:
            self.k.worker_done(self.key, self)

    async def setup(self, pod: dict) -> None:
        md = pod["metadata"]
        self.uid = md.get("uid", "")
        self.stopping = False
        self.start_time = (pod.get("status") or {}).get("startTime") or now_rfc3339()
        self.transitions = {}
        self.last_sent = None
        for c in (pod.get("status") or {}).get("conditions") or []:
            if c.get("type") and c.get("lastTransitionTime"):
                self.transitions[c["type"]] = (c.get("status", ""), c["lastTransitionTime"])
        if not self.k.cidr_ready.is_set():
            log.info("pod %s waits for node %s to get a podCIDR", self.key, self.k.node_name)
            await self.k.cidr_ready.wait()
        rec = self.k.sandboxes.record(self.namespace, self.name)
        adoptable = rec is not None and rec.uid == self.uid and netns_inode(rec.netns) is not None
        backoff = 0.2
        while True:
            try:
                self.net = await self.k.sandboxes.create(self.namespace, self.name, self.uid)
                self.error = ""
                break
            except Exception as e:  # noqa: BLE001 - reported and retried
                self.error = f"sandbox: {e}"
                log.warning("pod %s: cannot create sandbox: %s", self.key, e)
                self.mark_dirty()
                self._ensure_status_task()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10)
                if self.pod is None or (self.pod["metadata"].get("deletionTimestamp")):
                    return
        net = self.net
        spec = container_spec(pod, net.ip, self.k.node_name, self.k.node_ip)
        container = Container(
            spec,
            net.netns,
            self.k.pod_dir(self.namespace, self.name),
            self.k.log_path(self.namespace, self.name),
            pod_text(self.namespace, self.name, net.ip),
            self.mark_dirty,
            netns_inode(net.netns),
        )
        self.container = container
        saved = Container.saved(container.pod_dir) if adoptable else None
        adopted = bool(
            saved
            and container.adopt(
                saved["pid"], saved.get("started_at"), saved.get("restart_count", 0)
            )
        )
        if adopted:
            log.info("pod %s: adopted running process %d", self.key, saved["pid"])
        else:
            container.start()
        was_ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in (pod.get("status") or {}).get("conditions") or []
        )
        try:
            probe = parse_probe(spec.readiness, spec.first_port, spec.named_port)
        except ValueError as e:
            log.warning("pod %s: %s; using the default readiness", self.key, e)
            probe = Probe(kind="running")
        self.readiness = ReadinessLoop(
            probe,
            net.ip,
            net.netns,
            lambda: container.state.running,
            lambda: container.generation,
            self.mark_dirty,
            initially_ready=adopted and was_ready,
        )
        self._side.append(asyncio.create_task(self.readiness.run(), name=f"ready {self.key}"))
        self._ensure_status_task()
        self.mark_dirty()

    async def teardown(self, pod: dict | None) -> None:
        self.stopping = True
        grace = None
        if pod is not None:
            g = (pod.get("metadata") or {}).get("deletionGracePeriodSeconds")
            if g is not None:
                grace = float(g)
        for t in self._side:
            if t.get_name().startswith("ready"):
                t.cancel()
        if self.container is not None:
            await self.container.stop(grace)
        await self.k.sandboxes.destroy(self.namespace, self.name)
        shutil.rmtree(self.k.pod_dir(self.namespace, self.name), ignore_errors=True)
        for t in self._side:
            t.cancel()
        await asyncio.gather(*self._side, return_exceptions=True)
        self._side.clear()
        self.uid = None
        self.net = None
        self.container = None
        self.readiness = None
        log.info("pod %s stopped and cleaned", self.key)

    # ---------------------------------------------------------------- status

    def _ensure_status_task(self) -> None:
        if not any(t.get_name().startswith("status") and not t.done() for t in self._side):
            self._side.append(asyncio.create_task(self._status_loop(), name=f"status {self.key}"))

    def view(self) -> podstatus.PodView:
        c = self.container
        pod = self.pod or {}
        spec = (pod.get("spec") or {}).get("containers") or [{}]
        return podstatus.view_of(
            c.state if c else None,
            pod_ip=self.net.ip if self.net else "",
            host_ip=self.k.node_ip,
            start_time=self.start_time,
            container_name=c.spec.name if c else spec[0].get("name", "main"),
            image=c.spec.image if c else spec[0].get("image", ""),
            restart_policy=(pod.get("spec") or {}).get("restartPolicy") or "Always",
            ready=bool(self.readiness and self.readiness.ready),
            message=self.error,
        )

    async def _status_loop(self) -> None:
        backoff = 0.2
        while True:
            await self.dirty.wait()
            await asyncio.sleep(STATUS_DEBOUNCE)
            self.dirty.clear()
            if self.stopping or self.pod is None:
                continue
            status, trans = podstatus.render(self.view(), self.transitions, now_rfc3339())
            if status == self.last_sent:
                continue
            try:
                await self.k.patch_status(self.namespace, self.name, status)
                self.transitions, self.last_sent = trans, status
                backoff = 0.2
                log.debug(
                    "pod %s status: %s ready=%s",
                    self.key,
                    status["phase"],
                    status["conditions"][3]["status"],
                )
            except ApiError as e:
                if e.code == 404:
                    continue
                log.warning("pod %s: status update failed: %s", self.key, e)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5)
                self.dirty.set()
