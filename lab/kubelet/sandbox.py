"""Pod sandboxes: the network namespace, veth into ``cni0``, address, routes and resolv.conf.

This is the kubelet's CNI (the flannel "bridge" plugin plus host-local IPAM, in one file).
Pure parts first (names, resolv.conf text, subnet.env parsing, address picking), then
:class:`Ipam` (file-per-address state under ``<state>/ipam`` so a restarted kubelet keeps
every pod's address) and :class:`SandboxManager`, the only place here touching the kernel.

Namespaces are created with ``ip netns add`` in the mount namespace of whoever started the
kubelet: ``ip netns exec NODE`` gives it a private (slave) mount namespace, where a netns bind
mount would stay invisible to the host's ``ip netns`` (and to ``lab down``), so the CLI first
calls :func:`join_parent_mount_ns`. Everything else is netlink (pyroute2): a socket is opened inside the pod namespace by
switching the main thread there for the instant of ``socket()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import hashlib
import ipaddress
import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from pyroute2 import AsyncIPRoute

from lab.topology import remove_netns_etc

log = logging.getLogger("kubelet")

BRIDGE = "cni0"
POD_IFACE = "eth0"
NETNS_DIR = Path("/run/netns")
ETC_NETNS = Path("/etc/netns")
CLUSTER_DOMAIN = "cluster.local"
DEFAULT_MTU = 1500
CLONE_NEWNET = 0x40000000
CLONE_NEWNS = 0x00020000
BRPORT_MODE_HAIRPIN = 1
MAX_NETNS_NAME = 200

_libc = ctypes.CDLL(None, use_errno=True)


# ---------------------------------------------------------------------------------------- pure


def netns_name(prefix: str, namespace: str, name: str) -> str:
    """``P-pod-<namespace>.<name>``; very long names keep a readable head plus a hash."""
    full = f"{prefix}-pod-{namespace}.{name}"
    if len(full) <= MAX_NETNS_NAME:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:12]
    return f"{full[: MAX_NETNS_NAME - 13]}-{digest}"


def veth_name(netns: str) -> str:
    """Node end of the pod's veth: stable, short (<= 15 chars, IFNAMSIZ) and unique per netns."""
    return "veth" + hashlib.sha256(netns.encode()).hexdigest()[:10]


def resolv_conf(namespace: str, dns: str, domain: str = CLUSTER_DOMAIN) -> str:
    return (
        f"nameserver {dns}\n"
        f"search {namespace}.svc.{domain} svc.{domain} {domain}\n"
        "options ndots:5\n"
    )


def parse_subnet_env(text: str) -> dict[str, str]:
    """flannel's subnet.env (``FLANNEL_NETWORK=...`` lines) as a dict."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            out[key.strip()] = value.strip().strip('"')
    return out


def gateway_of(pod_cidr: str) -> ipaddress.IPv4Interface:
    net = ipaddress.ip_network(pod_cidr, strict=False)
    return ipaddress.ip_interface(f"{net.network_address + 1}/{net.prefixlen}")


def pick_ip(pod_cidr: str, used: Iterable[str], last: str | None = None) -> str | None:
    """The next free host address after ``last`` (round robin, like host-local), skipping .1."""
    net = ipaddress.ip_network(pod_cidr, strict=False)
    taken = set(used)
    first = int(net.network_address) + 2
    end = int(net.broadcast_address) - 1
    if end < first:
        return None
    start = first
    if last:
        try:
            li = int(ipaddress.ip_address(last))
            if first <= li < end:
                start = li + 1
        except ValueError:
            pass
    span = end - first + 1
    for i in range(span):
        cand = first + (start - first + i) % span
        s = str(ipaddress.ip_address(cand))
        if s not in taken:
            return s
    return None


# ---------------------------------------------------------------------------------------- IPAM


@dataclass(frozen=True, slots=True)
class Lease:
    ip: str
    owner: str  # "<namespace>/<name>"
    uid: str


class Ipam:
    """host-local style: one file per allocated address, holding its owner; O_EXCL claims."""

    def __init__(self, state_dir: Path):
        self.dir = state_dir / "ipam"
        self._cache: dict[str, Lease] | None = None  # we are the only writer: read the dir once

    def leases(self) -> list[Lease]:
        if self._cache is None:
            self._cache = {lease.ip: lease for lease in self._read()}
        return list(self._cache.values())

    def _read(self) -> list[Lease]:
        out = []
        with contextlib.suppress(FileNotFoundError):
            for p in self.dir.iterdir():
                if p.name.startswith("last_reserved"):
                    continue
                try:
                    doc = json.loads(p.read_text())
                    out.append(Lease(p.name, doc.get("owner", ""), doc.get("uid", "")))
                except (OSError, ValueError):
                    continue
        return out

    def lookup(self, owner: str) -> Lease | None:
        for lease in self.leases():
            if lease.owner == owner:
                return lease
        return None

    def allocate(self, pod_cidr: str, owner: str, uid: str) -> str:
        """Return the owner's address (kept across restarts) or claim a new one."""
        net = ipaddress.ip_network(pod_cidr, strict=False)
        self.dir.mkdir(parents=True, exist_ok=True)
        leases = self.leases()
        for lease in leases:
            if lease.owner == owner and ipaddress.ip_address(lease.ip) in net:
                if lease.uid != uid:
                    self._write(lease.ip, owner, uid, overwrite=True)
                return lease.ip
        last_file = self.dir / "last_reserved_ip"
        last = last_file.read_text().strip() if last_file.exists() else None
        used = {lease.ip for lease in leases}
        while True:
            ip = pick_ip(pod_cidr, used, last)
            if ip is None:
                raise RuntimeError(f"pod CIDR {pod_cidr} is full ({len(used)} addresses in use)")
            if self._write(ip, owner, uid):
                last_file.write_text(ip)
                return ip
            used.add(ip)

    def _write(self, ip: str, owner: str, uid: str, overwrite: bool = False) -> bool:
        path = self.dir / ip
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
        try:
            fd = os.open(path, flags, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump({"owner": owner, "uid": uid}, f)
        if self._cache is not None:
            self._cache[ip] = Lease(ip, owner, uid)
        return True

    def _drop(self, ip: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.dir / ip).unlink()
        if self._cache is not None:
            self._cache.pop(ip, None)

    def release(self, owner: str) -> None:
        for lease in self.leases():
            if lease.owner == owner:
                self._drop(lease.ip)

    def release_outside(self, pod_cidr: str) -> None:
        net = ipaddress.ip_network(pod_cidr, strict=False)
        for lease in self.leases():
            if ipaddress.ip_address(lease.ip) not in net:
                self._drop(lease.ip)


# ---------------------------------------------------------------------------------------- apply


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Switch this thread into a named netns and back (no awaits inside!)."""
    orig = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        fd = os.open(NETNS_DIR / name, os.O_RDONLY)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                e = ctypes.get_errno()
                raise OSError(e, f"setns into {name}: {os.strerror(e)}")
        finally:
            os.close(fd)
        try:
            yield
        finally:
            if _libc.setns(orig, CLONE_NEWNET) != 0:  # pragma: no cover - would be fatal
                raise OSError(ctypes.get_errno(), "setns back to the node namespace failed")
    finally:
        os.close(orig)


async def ipr_in(name: str | None) -> AsyncIPRoute:
    """An AsyncIPRoute whose socket lives in netns ``name`` (None: the current one)."""
    if name is None:
        ipr = AsyncIPRoute()
        _ = ipr.socket
    else:
        with in_netns(name):
            ipr = AsyncIPRoute()
            _ = ipr.socket  # the netlink socket is created now, inside the pod netns
    await ipr.setup_endpoint()
    return ipr


def join_parent_mount_ns() -> bool:
    """Leave the private mount namespace ``ip netns exec`` gave us for our parent's one.

    Pod namespaces are bind mounts under /run/netns; made in a private (slave) mount
    namespace they would be invisible to the host's ``ip netns`` and to ``lab down``. Call this
    first thing, while the process is still single-threaded (setns(CLONE_NEWNS) requires it).
    Returns True when it switched.
    """
    ppid = os.getppid()
    try:
        if os.stat("/proc/self/ns/mnt").st_ino == os.stat(f"/proc/{ppid}/ns/mnt").st_ino:
            return False
        fd = os.open(f"/proc/{ppid}/ns/mnt", os.O_RDONLY)
    except OSError as e:
        log.warning("cannot see the parent's mount namespace (%s); pod netns stay private", e)
        return False
    try:
        if _libc.setns(fd, CLONE_NEWNS) != 0:
            e = ctypes.get_errno()
            log.warning("cannot join the parent's mount namespace: %s", os.strerror(e))
            return False
    finally:
        os.close(fd)
    os.chdir("/")
    return True


async def run_cmd(argv: list[str], check: bool = True) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    text = err.decode(errors="replace").strip()
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {text}")
    return proc.returncode or 0, text


def netns_inode(name: str) -> tuple[int, int] | None:
    try:
        st = os.stat(NETNS_DIR / name)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def pids_in_netns(name: str) -> list[int]:
    """Like ``ip netns pids``: every process whose network namespace is this one."""
    target = netns_inode(name)
    if target is None:
        return []
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry.name}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == target:
            out.append(int(entry.name))
    return out


@dataclass(frozen=True, slots=True)
class PodNetwork:
    """What a pod got: its namespace, address and the node end of its veth."""

    namespace: str
    name: str
    uid: str
    netns: str
    ip: str
    veth: str
    mtu: int

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


class SandboxManager:
    """Creates and removes pod sandboxes on this node; keeps a JSON record per pod."""

    def __init__(
        self,
        prefix: str,
        state_dir: Path,
        cluster_dns: str,
        subnet_file: Path | None = None,
        cluster_domain: str = CLUSTER_DOMAIN,
        underlay_iface: str = "eth0",
    ):
        self.prefix = prefix
        self.state_dir = state_dir
        self.records_dir = state_dir / "sandboxes"
        self.cluster_dns = cluster_dns
        self.cluster_domain = cluster_domain
        self.subnet_file = subnet_file
        self.underlay_iface = underlay_iface
        self.ipam = Ipam(state_dir)
        self.pod_cidr: str | None = None
        self._ipr: AsyncIPRoute | None = None
        self._bridge_lock = asyncio.Lock()
        self.applied_mtu: int | None = None

    async def node_ipr(self) -> AsyncIPRoute:
        if self._ipr is None:
            self._ipr = await ipr_in(None)
        return self._ipr

    async def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    # ------------------------------------------------------------------ MTU

    def overlay_expected(self) -> bool:
        """The lab leaves an ``overlay`` pid/log file next to subnet.env when flanneld runs."""
        if self.subnet_file is None:
            return False
        d = self.subnet_file.parent
        for sub in (d, d / "pids", d / "logs"):
            with contextlib.suppress(OSError):
                if any(p.name.startswith("overlay") for p in sub.iterdir()):
                    return True
        return False

    def subnet_mtu(self) -> int | None:
        if self.subnet_file is None:
            return None
        try:
            env = parse_subnet_env(self.subnet_file.read_text())
            return int(env["FLANNEL_MTU"])
        except (OSError, KeyError, ValueError):
            return None

    async def underlay_mtu(self) -> int:
        ipr = await self.node_ipr()
        with contextlib.suppress(Exception):
            idx = await ipr.link_lookup(ifname=self.underlay_iface)
            if idx:
                links = await ipr.get_links(idx[0])
                async for link in _aiter(links):
                    return int(link.get("mtu") or DEFAULT_MTU)
        return DEFAULT_MTU

    async def pod_mtu(self, wait: float = 3.0) -> int:
        mtu = self.subnet_mtu()
        if mtu is None and self.overlay_expected():
            deadline = asyncio.get_running_loop().time() + wait
            while mtu is None and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.1)
                mtu = self.subnet_mtu()
        return mtu if mtu is not None else await self.underlay_mtu()

    # ------------------------------------------------------------------ bridge

    async def ensure_bridge(self, pod_cidr: str) -> None:
        """``cni0`` up with the pod CIDR's .1 (replacing a stale gateway address)."""
        async with self._bridge_lock:
            ipr = await self.node_ipr()
            gw = gateway_of(pod_cidr)
            idx = await ipr.link_lookup(ifname=BRIDGE)
            if not idx:
                with contextlib.suppress(Exception):
                    await ipr.link("add", ifname=BRIDGE, kind="bridge", br_forward_delay=0)
                idx = await ipr.link_lookup(ifname=BRIDGE)
            br = idx[0]
            have = set()
            async for a in _aiter(await ipr.get_addr(index=br, family=2)):
                have.add((a.get_attr("IFA_ADDRESS"), a["prefixlen"]))
            for addr, plen in have:
                if (addr, plen) != (str(gw.ip), gw.network.prefixlen):
                    await ipr.addr("del", index=br, address=addr, prefixlen=plen)
            if (str(gw.ip), gw.network.prefixlen) not in have:
                await ipr.addr("add", index=br, address=str(gw.ip), prefixlen=gw.network.prefixlen)
            await ipr.link("set", index=br, state="up")
            if self.pod_cidr != pod_cidr:
                log.info("bridge %s has %s (podCIDR %s)", BRIDGE, gw, pod_cidr)
                self.ipam.release_outside(pod_cidr)
            self.pod_cidr = pod_cidr

    # ------------------------------------------------------------------ records

    def _record_path(self, namespace: str, name: str) -> Path:
        return self.records_dir / f"{namespace}_{name}.json"

    def records(self) -> list[PodNetwork]:
        out = []
        with contextlib.suppress(FileNotFoundError):
            for p in sorted(self.records_dir.glob("*.json")):
                try:
                    out.append(PodNetwork(**json.loads(p.read_text())))
                except (OSError, ValueError, TypeError):
                    log.warning("ignoring unreadable sandbox record %s", p)
        return out

    def record(self, namespace: str, name: str) -> PodNetwork | None:
        try:
            return PodNetwork(**json.loads(self._record_path(namespace, name).read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def _save(self, net: PodNetwork) -> None:
        self.records_dir.mkdir(parents=True, exist_ok=True)
        tmp = self._record_path(net.namespace, net.name).with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(net)))
        tmp.replace(self._record_path(net.namespace, net.name))

    # ------------------------------------------------------------------ create / destroy

    async def create(self, namespace: str, name: str, uid: str) -> PodNetwork:
        """Idempotent: an existing healthy sandbox of this pod is kept (same address)."""
        if self.pod_cidr is None:
            raise RuntimeError("node has no podCIDR yet")
        ns = netns_name(self.prefix, namespace, name)
        veth = veth_name(ns)
        owner = f"{namespace}/{name}"
        ip = self.ipam.allocate(self.pod_cidr, owner, uid)
        gw = gateway_of(self.pod_cidr)
        mtu = await self.pod_mtu()
        net = PodNetwork(namespace, name, uid, ns, ip, veth, mtu)
        self._save(net)  # first, so a crash half-way is still cleaned up
        self._write_resolv(ns, namespace)
        if netns_inode(ns) is None:
            await run_cmd(["ip", "netns", "add", ns])
        node = await self.node_ipr()
        pod = await ipr_in(ns)
        try:
            have_veth = await node.link_lookup(ifname=veth)
            have_eth0 = await pod.link_lookup(ifname=POD_IFACE)
            if not (have_veth and have_eth0):
                # a half-made pair, or the node end of a just-deleted namespace of the same name
                with contextlib.suppress(Exception):
                    if have_veth:
                        await node.link("del", index=have_veth[0])
                with contextlib.suppress(Exception):
                    if have_eth0:
                        await pod.link("del", index=have_eth0[0])
                fd = os.open(NETNS_DIR / ns, os.O_RDONLY)
                try:
                    await node.link(
                        "add",
                        ifname=veth,
                        kind="veth",
                        mtu=mtu,
                        peer={"ifname": POD_IFACE, "net_ns_fd": fd, "mtu": mtu},
                    )
                finally:
                    os.close(fd)
            vidx = (await node.link_lookup(ifname=veth))[0]
            br = (await node.link_lookup(ifname=BRIDGE))[0]
            await node.link("set", index=vidx, master=br, mtu=mtu, state="up")
            with contextlib.suppress(Exception):
                await node.link("set", index=vidx, kind="bridge_slave", mode=BRPORT_MODE_HAIRPIN)
            eidx = (await pod.link_lookup(ifname=POD_IFACE))[0]
            with contextlib.suppress(Exception):
                await pod.link("set", index=1, state="up")  # lo
            try:
                await pod.addr("add", index=eidx, address=ip, prefixlen=gw.network.prefixlen)
            except Exception as e:
                if getattr(e, "code", None) != errno.EEXIST:
                    raise
            await pod.link("set", index=eidx, mtu=mtu, state="up")
            try:
                await pod.route("add", dst="0.0.0.0/0", gateway=str(gw.ip))
            except Exception as e:
                if getattr(e, "code", None) != errno.EEXIST:
                    raise
        finally:
            pod.close()
        log.info("sandbox %s: %s ip %s veth %s mtu %d", owner, ns, ip, veth, mtu)
        return net

    def _write_resolv(self, ns: str, namespace: str) -> None:
        d = ETC_NETNS / ns
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / ".resolv.conf.tmp"
        tmp.write_text(resolv_conf(namespace, self.cluster_dns, self.cluster_domain))
        tmp.replace(d / "resolv.conf")

    async def destroy(self, namespace: str, name: str) -> None:
        """Remove everything of one pod's sandbox; safe to repeat, safe on half-made ones."""
        rec = self.record(namespace, name)
        ns = rec.netns if rec else netns_name(self.prefix, namespace, name)
        veth = rec.veth if rec else veth_name(ns)
        for pid in pids_in_netns(ns):  # stragglers the runtime did not know about
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        if netns_inode(ns) is None:  # half-made sandbox: the node end may be all there is
            node = await self.node_ipr()
            with contextlib.suppress(Exception):
                idx = await node.link_lookup(ifname=veth)
                if idx:
                    await node.link("del", index=idx[0])
        else:  # removing the namespace removes its veth pair too
            rc, err = await run_cmd(["ip", "netns", "del", ns], check=False)
            if rc != 0 and netns_inode(ns) is not None:
                log.warning("could not remove netns %s: %s", ns, err)
        remove_netns_etc(ns)
        self.ipam.release(f"{namespace}/{name}")
        with contextlib.suppress(FileNotFoundError):
            self._record_path(namespace, name).unlink()
        log.info("sandbox %s/%s removed", namespace, name)

    async def set_mtu(self, net: PodNetwork, mtu: int) -> None:
        """Follow a changed FLANNEL_MTU on an existing pod (both veth ends)."""
        node = await self.node_ipr()
        idx = await node.link_lookup(ifname=net.veth)
        if idx:
            await node.link("set", index=idx[0], mtu=mtu)
        if netns_inode(net.netns) is not None:
            pod = await ipr_in(net.netns)
            try:
                eidx = await pod.link_lookup(ifname=POD_IFACE)
                if eidx:
                    await pod.link("set", index=eidx[0], mtu=mtu)
            finally:
                pod.close()
        self._save(PodNetwork(net.namespace, net.name, net.uid, net.netns, net.ip, net.veth, mtu))

    async def remove_bridge(self) -> None:
        node = await self.node_ipr()
        with contextlib.suppress(Exception):
            idx = await node.link_lookup(ifname=BRIDGE)
            if idx:
                await node.link("del", index=idx[0])


async def _aiter(result):  # pyroute2 0.9 returns async generators or lists depending on call
    if hasattr(result, "__aiter__"):
        async for item in result:
            yield item
    else:
        for item in result or ():
            yield item
