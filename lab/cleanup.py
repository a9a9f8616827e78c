"""Tearing a lab down: idempotent, and complete after anything (a crash, Ctrl-C, SIGKILL mid-up).

Like mininet's ``mn -c`` it does not trust that state is complete. It removes, in order:

1. processes: those in pidfiles under /run/kube-netlab/P (identity checked by start time),
   every process inside a lab namespace (the ``ip netns pids`` test, for all namespaces in
   one /proc scan), every process carrying the lab's marker environment variable
   (``KNL_LAB=P``, set for everything the lab starts), and all their descendants;
2. lab network namespaces, found by name pattern (``P-fabric``, ``P-control-plane``,
   ``P-workerN``, ``P-pod-*``), which takes their links, routes and iptables rules with them;
3. the host link ``P-host``; stray mounts under /run/netns/P-*;
4. /etc/netns/P-* (pod resolv.conf files) and the state dir /run/kube-netlab/P (kubeconfig,
   logs, pidfiles, apiserver data).

The host namespace's iptables are never touched (the lab never writes there).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from . import topology as topo

log = logging.getLogger("lab")

MARKER_ENV = "KNL_LAB"


class LabBusy(Exception):
    """Another `up`/`down` of the same lab holds its lock."""


def lock_path(prefix: str) -> str:
    return os.path.join(topo.STATE_ROOT, f".{prefix}.lock")


def lock_holders(path: str) -> list[str]:
    """``pid (command)`` of the processes holding a flock on ``path`` (from /proc/locks)."""
    try:
        ino = os.stat(path).st_ino
        with open("/proc/locks", encoding="ascii") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        parts = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 00:1a:5678 0 EOF" (blocked waiters carry a "->")
        if len(parts) < 6 or parts[1] != "FLOCK" or parts[4] == "->":
            continue
        pid, dev_ino = parts[4], parts[5]
        if dev_ino.rsplit(":", 1)[-1] != str(ino):
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            cmd = "?"
        out.append(f"{pid} ({cmd[:80]})")
    return out


@contextlib.contextmanager
def lab_lock(prefix: str, remove: bool = False, wait: float = 5.0) -> Iterator[None]:
    """One `up`/`down` per lab at a time (flock); ``remove`` drops the lock file on exit.

    A busy lock is retried for ``wait`` seconds before refusing: a holder that was just
    killed can take a moment to let go (a child it forked may still be on its way to exec).
    Because ``remove`` unlinks the file, a lock taken on a file that was unlinked meanwhile
    does not count; it is taken again on the current file.
    """
    os.makedirs(topo.STATE_ROOT, exist_ok=True)
    path = lock_path(prefix)
    deadline = time.monotonic() + wait
    while True:
        f = open(path, "w")  # noqa: SIM115 - closed below or after the with-body
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            if time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            holders = lock_holders(path)
            held_by = f"; held by {', '.join(holders)}" if holders else ""
            raise LabBusy(
                f"another `up` or `down` of lab {prefix!r} is running (lock {path}{held_by})"
            ) from None
        try:
            same = os.fstat(f.fileno()).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        f.close()
    with f:
        try:
            yield
        finally:
            if remove:
                with contextlib.suppress(OSError):
                    os.unlink(path)
                with contextlib.suppress(OSError):
                    os.rmdir(topo.STATE_ROOT)  # only when empty


@dataclass(slots=True)
class CleanupReport:
    killed: list[int] = field(default_factory=list)
    netns: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def nothing_found(self) -> bool:
        return not (self.killed or self.netns or self.links or self.paths)


# --------------------------------------------------------------------------------- processes


def proc_start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks): pid + start time = identity."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            data = f.read()
    except OSError:
        return None
    # comm may contain spaces/parentheses: split after the last ')'
    rest = data.rsplit(")", 1)[-1].split()
    return rest[19] if len(rest) > 19 else None


def proc_alive(pid: int) -> bool:
    """True when the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            state = f.read().rsplit(")", 1)[-1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def read_pidfile(path: str) -> int | None:
    """A pidfile holds ``PID STARTTIME``; returns PID only if that very process still runs."""
    try:
        with open(path, encoding="ascii") as f:
            parts = f.read().split()
    except OSError:
        return None
    if not parts or not parts[0].isdigit():
        return None
    pid = int(parts[0])
    if len(parts) > 1 and proc_start_time(pid) != parts[1]:
        return None
    return pid if proc_alive(pid) else None


def write_pidfile(path: str, pid: int) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(f"{pid} {proc_start_time(pid) or ''}\n")
    os.replace(tmp, path)


def pidfile_pids(state: str) -> set[int]:
    out: set[int] = set()
    for root, _dirs, files in os.walk(state):
        for name in files:
            if name.endswith(".pid"):
                pid = read_pidfile(os.path.join(root, name))
                if pid:
                    out.add(pid)
    return out


def netns_pids(names: Iterable[str]) -> dict[str, list[int]]:
    """Processes in each named netns, by comparing /proc/PID/ns/net with /run/netns/NAME."""
    want: dict[tuple[int, int], str] = {}
    for name in names:
        try:
            st = os.stat(os.path.join(topo.NETNS_DIR, name))
        except OSError:
            continue
        want[(st.st_dev, st.st_ino)] = name
    out: dict[str, list[int]] = {}
    if not want:
        return out
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        name = want.get((st.st_dev, st.st_ino))
        if name is not None:
            out.setdefault(name, []).append(int(entry))
    return out


def marked_pids(prefix: str) -> set[int]:
    """Processes whose environment carries ``KNL_LAB=<prefix>``."""
    needle = f"{MARKER_ENV}={prefix}".encode()
    out: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if needle in env.split(b"\0"):
            out.add(int(entry))
    return out


def _protected() -> set[int]:
    """Ourselves and our ancestors: never killed, whatever their environment says."""
    out = set()
    pid = os.getpid()
    while pid > 1 and pid not in out:
        out.add(pid)
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as f:
                pid = int(f.read().rsplit(")", 1)[-1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return out


def kill_all(pids: Iterable[int], grace: float = 0.0) -> list[int]:
    """SIGTERM (if grace > 0) then SIGKILL; wait until each is gone or a zombie."""
    targets = sorted(set(pids) - _protected())
    if not targets:
        return []
    if grace > 0:
        for pid in targets:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(proc_alive(p) for p in targets):
            time.sleep(0.05)
    for pid in targets:
        if proc_alive(pid):
            _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(proc_alive(p) for p in targets):
        time.sleep(0.02)
    for pid in targets:  # reap our own children, if any
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
    return targets


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return int(f.read().rsplit(")", 1)[-1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def with_descendants(pids: set[int]) -> set[int]:
    """``pids`` plus all their descendants (a kubelet's pods, before they are orphaned)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            ppid = _ppid(int(entry))
            if ppid is not None:
                children.setdefault(ppid, []).append(int(entry))
    out = set(pids)
    todo = list(pids)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def lab_pids(prefix: str, extra_netns: Iterable[str] = ()) -> set[int]:
    """Every process of the lab: pidfiles, namespace members, marked, and their descendants."""
    names = [n for n in topo.list_netns() if topo.is_lab_netns(prefix, n)]
    names.extend(extra_netns)
    pids = pidfile_pids(topo.state_dir(prefix))
    for group in netns_pids(names).values():
        pids.update(group)
    pids.update(marked_pids(prefix))
    protected = _protected()
    return with_descendants(pids - protected) - protected


# ---------------------------------------------------------------------------- kernel objects


def remove_netns(name: str) -> None:
    from pyroute2 import netns

    netns.remove(name)


def _lab_mounts(prefix: str) -> list[str]:
    """Mount points left under /run/netns/P-* or the state dir (e.g. a half-made netns)."""
    out = []
    state = topo.state_dir(prefix)
    try:
        with open("/proc/self/mounts", encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 2:
                    continue
                mnt = parts[1].replace("\\040", " ")
                base = os.path.basename(mnt)
                if (
                    (os.path.dirname(mnt) == topo.NETNS_DIR and topo.is_lab_netns(prefix, base))
                    or mnt == state
                    or mnt.startswith(state + "/")
                ):
                    out.append(mnt)
    except OSError:
        pass
    return out


def _umount(path: str) -> None:
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.umount2(path.encode(), 2)  # MNT_DETACH


def down(
    prefix: str,
    report: Callable[[str], None] | None = None,
    remove_state: bool = True,
) -> CleanupReport:
    """Remove everything a lab with ``prefix`` may have created. Safe to call any time."""
    topo.validate_prefix(prefix)
    say = report or (lambda msg: log.info("%s", msg))
    rep = CleanupReport()

    # 1. processes; loop because a dying kubelet may have just spawned a pod process
    for _ in range(5):
        pids = lab_pids(prefix)
        if not pids:
            break
        say(f"stopping {len(pids)} process(es)")
        rep.killed.extend(kill_all(pids))

    # 2. namespaces by pattern (the fabric last: node links hang off its bridge)
    names = [n for n in topo.list_netns() if topo.is_lab_netns(prefix, n)]
    names.sort(key=lambda n: (n == topo.fabric_netns(prefix), n))
    if names:
        say(f"removing {len(names)} network namespace(s)")
    for name in names:
        try:
            remove_netns(name)
            rep.netns.append(name)
        except OSError as e:
            rep.errors.append(f"netns {name}: {e}")
    for mnt in _lab_mounts(prefix):
        _umount(mnt)
        if os.path.dirname(mnt) == topo.NETNS_DIR:
            try:
                os.unlink(mnt)
            except OSError:
                pass

    # 3. the host link (its peer went with the fabric, but deletion there is asynchronous)
    link = topo.host_link(prefix)
    try:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            idx = ipr.link_lookup(ifname=link)
            if idx:
                try:
                    ipr.link("del", index=idx[0])
                except Exception as e:  # raced with the kernel removing it
                    if ipr.link_lookup(ifname=link):
                        rep.errors.append(f"link {link}: {e}")
                rep.links.append(link)
    except Exception as e:
        rep.errors.append(f"link {link}: {e}")

    # 4. files
    try:
        etc = sorted(os.listdir(topo.ETC_NETNS_DIR))
    except FileNotFoundError:
        etc = []
    for name in etc:
        if topo.is_lab_netns(prefix, name):
            topo.remove_netns_etc(name)
            rep.paths.append(os.path.join(topo.ETC_NETNS_DIR, name))
    state = topo.state_dir(prefix)
    if remove_state and os.path.exists(state):
        shutil.rmtree(state, ignore_errors=True)
        rep.paths.append(state)
    if rep.errors:
        for err in rep.errors:
            log.warning("cleanup: %s", err)
    return rep


def leftovers(prefix: str) -> list[str]:
    """What of a lab still exists (for `up` refusing and for tests asserting a clean host)."""
    out = [f"netns {n}" for n in topo.list_netns() if topo.is_lab_netns(prefix, n)]
    try:
        if topo.host_link_exists(topo.host_link(prefix)):
            out.append(f"link {topo.host_link(prefix)}")
    except Exception:
        pass
    try:
        out.extend(
            f"/etc/netns/{n}"
            for n in os.listdir(topo.ETC_NETNS_DIR)
            if topo.is_lab_netns(prefix, n)
        )
    except FileNotFoundError:
        pass
    pids = lab_pids(prefix)
    out.extend(f"process {p}" for p in sorted(pids))
    return out
