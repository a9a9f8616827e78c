"""The agent loop: watch Nodes -> leases -> backend sync, and publish this node's lease.

Start-up, as flanneld with the kube subnet manager does it:

1. list + watch Nodes (kubecommon.informer); bring flannel.1 up already (vxlan; adopted as
   is if it exists, so its VTEP MAC survives restarts), then wait for ``spec.podCIDR``;
2. give flannel.1 the lease's address; host-gw: refuse to start when a peer is not on a
   directly connected subnet;
3. program every peer, then write the FLANNEL-POSTRTG chain (``--ip-masq``) and subnet.env
   (atomically), then publish our lease (annotations) and NetworkUnavailable=False, so a
   peer that sees us already finds the return path in place.

Then event-driven: every Node event wakes one sync; a burst of events costs one pass. A
sync whose leases equal those of the last complete sync stops there (most Node events —
heartbeats, conditions, a node that has not published yet — change no lease), otherwise
the backend diffs against the kernel and writes only the difference. A failed sync forgets
what it applied, so the retry diffs against the kernel again. Failures retry with
backoff. While the API is away nothing changes: the informer keeps its cache, the data path
stays as it is, and a relist when the API is back brings any difference in.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from ipaddress import IPv4Network

from kubecommon.client import ApiClient, ApiError
from kubecommon.informer import Informer
from kubecommon.model import node_from_obj

from . import masq, subnetfile
from .backend import Backend, get_backend
from .kernel import OverlayError, external_interface, iproute
from .lease import (
    ANNOTATION_PREFIX,
    Lease,
    annotations_for,
    annotations_missing,
    leases_from_nodes,
)

log = logging.getLogger("overlay")

CONDITION = "NetworkUnavailable"
CONDITION_REASON = "FlannelIsUp"
CONDITION_MESSAGE = "Flannel is running on this node"


class LeaseChanged(OverlayError):
    """This node's podCIDR changed under the running agent."""


@dataclass(frozen=True, slots=True)
class AgentConfig:
    node_name: str
    iface: str | None
    backend: str
    subnet_file: str
    ip_masq: bool
    cluster_cidr: IPv4Network


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition_set(node: dict) -> bool:
    for c in (node.get("status") or {}).get("conditions") or []:
        if c.get("type") == CONDITION:
            return c.get("status") == "False" and c.get("reason") == CONDITION_REASON
    return False


class Agent:
    def __init__(self, client: ApiClient, cfg: AgentConfig, backend: Backend | None = None):
        self.client = client
        self.cfg = cfg
        self.backend = backend or get_backend(cfg.backend, cfg.cluster_cidr)
        self.informer = Informer(client, "nodes")
        self.informer.add_handler(self._on_event)
        self._wake = asyncio.Event()
        self.local: Lease | None = None
        self._applied: tuple[Lease, ...] | None = None  # leases of the last complete sync
        self.ready = asyncio.Event()  # set after the first successful sync + publish

    def _relevant(self, node: dict | None) -> tuple:
        """What a sync depends on: podCIDR, our annotations (and our own condition)."""
        if node is None:
            return ()
        md = node.get("metadata") or {}
        ann = sorted(
            (k, v)
            for k, v in (md.get("annotations") or {}).items()
            if k.startswith(ANNOTATION_PREFIX)
        )
        own = md.get("name") == self.cfg.node_name and condition_set(node)
        return ((node.get("spec") or {}).get("podCIDR"), tuple(ann), own)

    def _on_event(self, etype: str, new: dict | None, old: dict | None) -> None:
        # kubelet heartbeats (status-only updates) do not wake a sync
        if etype != "MODIFIED" or self._relevant(new) != self._relevant(old):
            log.debug(
                "%s %s wakes a sync", etype, ((new or old or {}).get("metadata") or {}).get("name")
            )
            self._wake.set()

    def _own(self) -> dict | None:
        return self.informer.store.get(self.cfg.node_name)

    def _leases(self) -> tuple[Lease, ...]:
        return leases_from_nodes(node_from_obj(o) for o in self.informer.store.values())

    async def _wait_for_subnet(self) -> IPv4Network:
        announced = False
        while True:
            own = self._own()
            cidr = ((own or {}).get("spec") or {}).get("podCIDR")
            if cidr:
                return IPv4Network(cidr, strict=False)
            if not announced:
                log.info("waiting for Node %s to exist with spec.podCIDR", self.cfg.node_name)
                announced = True
            self._wake.clear()
            await self._wake.wait()

    async def _publish(self) -> None:
        """Annotations and the NetworkUnavailable=False condition, when not already there."""
        assert self.local is not None
        own = self._own()
        if own is None:
            return
        current = (own.get("metadata") or {}).get("annotations") or {}
        missing = annotations_missing(current, annotations_for(self.local))
        if missing:
            await self.client.patch(
                "nodes", self.cfg.node_name, {"metadata": {"annotations": missing}}
            )
            log.info("published lease %s on Node %s", self.local.subnet, self.cfg.node_name)
        if not condition_set(own):
            await self._set_condition(own)

    async def _set_condition(self, own: dict) -> None:
        now = _now()
        cond = {
            "type": CONDITION,
            "status": "False",
            "reason": CONDITION_REASON,
            "message": CONDITION_MESSAGE,
            "lastTransitionTime": now,
            "lastHeartbeatTime": now,
        }
        try:
            await self.client.patch(
                "nodes",
                self.cfg.node_name,
                {"status": {"conditions": [cond]}},
                patch_type="strategic",
                subresource="status",
            )
            return
        except ApiError as e:
            if e.code not in (400, 405, 415, 422):
                raise
        # no strategic merge patch: merge-patch the whole list with ours in it
        conds = [
            c
            for c in (own.get("status") or {}).get("conditions") or []
            if c.get("type") != CONDITION
        ]
        await self.client.patch(
            "nodes",
            self.cfg.node_name,
            {"status": {"conditions": [*conds, cond]}},
            subresource="status",
        )

    def _check_own(self) -> None:
        """Our podCIDR cannot change under a running agent (flanneld exits too)."""
        assert self.local is not None
        own = self._own()
        cidr = ((own or {}).get("spec") or {}).get("podCIDR")
        if cidr and IPv4Network(cidr, strict=False) != self.local.subnet:
            raise LeaseChanged(
                f"Node {self.cfg.node_name} podCIDR changed from {self.local.subnet} to {cidr}; "
                "restart the agent (after --cleanup) to take the new subnet"
            )

    async def start(self) -> None:
        await self.informer.synced.wait()
        async with iproute() as ipr:
            ext = await external_interface(ipr, self.cfg.iface)
        await self.backend.prepare(ext)
        subnet = await self._wait_for_subnet()
        lease = await self.backend.setup(ext, subnet)
        self.local = dataclasses.replace(lease, node=self.cfg.node_name)
        log.info(
            "node %s: subnet %s, backend %s, public IP %s on %s, MTU %d",
            self.cfg.node_name,
            subnet,
            self.cfg.backend,
            ext.ip,
            ext.name,
            self.backend.mtu,
        )
        problems = self.backend.check(self.local, self._leases())
        if problems:
            raise OverlayError(
                f"backend {self.cfg.backend} cannot work here: "
                + "; ".join(problems)
                + ". host-gw needs all nodes on one L2 segment; use --backend vxlan instead."
            )

    def _write_local_config(self) -> None:
        """Masquerading first, then subnet.env (pods start only once it exists)."""
        assert self.local is not None
        if self.cfg.ip_masq:
            try:
                masq.apply(self.cfg.cluster_cidr, self.local.subnet)
            except (OSError, RuntimeError, subprocess.SubprocessError) as e:
                raise OverlayError(f"--ip-masq: {e}") from e
        content = subnetfile.render(
            self.cfg.cluster_cidr, self.local, self.backend.mtu, self.cfg.ip_masq
        )
        if subnetfile.write_atomic(self.cfg.subnet_file, content):
            log.info("wrote %s", self.cfg.subnet_file)

    async def run(self) -> None:
        inf = asyncio.create_task(self.informer.run(), name="nodes-informer")
        try:
            await self.start()
            backoff = 0.1
            configured = False
            while True:
                self._wake.clear()
                try:
                    self._check_own()
                    # peers first, then our lease: whoever sees us finds the way back in place
                    leases = self._leases()
                    try:
                        # a Node event that changes no lease (another node's heartbeat,
                        # condition, or a node not yet published) costs no kernel round trip
                        if leases != self._applied:
                            log.debug("sync: %d leases", len(leases))
                            self._applied = None
                            await self.backend.sync(self.local, leases)  # type: ignore[arg-type]
                            self._applied = leases
                    finally:
                        if not configured:
                            self._write_local_config()
                            configured = True
                    await self._publish()
                    if not self.ready.is_set():
                        log.info("ready: lease %s published", self.local.subnet)  # type: ignore[union-attr]
                        self.ready.set()
                    backoff = 0.1
                except LeaseChanged:
                    raise
                except ApiError as e:
                    log.warning("publishing lease failed: %s; retrying in %.1fs", e, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                except Exception as e:  # netlink, iptables: retry, keep what works in place
                    log.error("sync failed: %s; retrying in %.1fs", e, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                await self._wake.wait()
        finally:
            inf.cancel()
            await asyncio.gather(inf, return_exceptions=True)
            close = getattr(self.backend, "close", None)
            if close is not None:
                await close()
