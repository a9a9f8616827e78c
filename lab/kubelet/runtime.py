"""The container runtime: a pod's first container as a process inside the pod's namespace.

Pure part: :func:`container_spec` reads what to run from a Pod (command/args with ``$(VAR)``
expansion, env with the downward-API fields we support, ports, restart policy) and
:func:`build_argv` turns it into ``ip netns exec <netns> ...`` (the default workload when no
command is given, Debian's nginx for images named ``*nginx*``). :class:`Container` supervises
the process: start, wait, restart by policy with backoff, stop with SIGTERM then SIGKILL after
the grace period. A pid file per pod lets a restarted kubelet adopt the processes it left
running (it watches them through a pidfd then, since they are no longer its children).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("kubelet")

DEFAULT_WORKLOAD = ("python", "-m", "lab.workload")
BACKOFF_START = 0.5
BACKOFF_MAX = 10.0
BACKOFF_RESET_AFTER = 10.0
_VAR_RE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class PortSpec:
    port: int
    protocol: str = "TCP"
    name: str = ""


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    """What to run for a pod (its first container), already resolved from the Pod object."""

    name: str
    image: str
    command: tuple[str, ...]
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    ports: tuple[PortSpec, ...]
    working_dir: str
    restart_policy: str  # Always | OnFailure | Never
    grace_seconds: float
    readiness: Mapping | None = field(default=None, hash=False, compare=False)

    @property
    def first_port(self) -> int | None:
        for p in self.ports:
            if p.protocol == "TCP":
                return p.port
        return self.ports[0].port if self.ports else None

    def named_port(self, name: str) -> int | None:
        for p in self.ports:
            if p.name == name:
                return p.port
        return None

    @property
    def is_nginx(self) -> bool:
        return not self.command and "nginx" in self.image.lower()


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: known vars replaced, unknown kept, ``$$`` -> ``$``."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR_RE.sub(sub, value)


def _field_ref(path: str, pod: Mapping, pod_ip: str, host_ip: str) -> str:
    md = pod.get("metadata") or {}
    simple = {
        "metadata.name": md.get("name", ""),
        "metadata.namespace": md.get("namespace", ""),
        "metadata.uid": md.get("uid", ""),
        "spec.nodeName": (pod.get("spec") or {}).get("nodeName", ""),
        "spec.serviceAccountName": (pod.get("spec") or {}).get("serviceAccountName", ""),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": host_ip,
    }
    if path in simple:
        return simple[path]
    m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if m:
        return str((md.get(m.group(1)) or {}).get(m.group(2), ""))
    return ""


def container_spec(pod: Mapping, pod_ip: str, node_name: str, host_ip: str) -> ContainerSpec:
    md, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    containers = spec.get("containers") or [{}]
    c = containers[0]
    ports = tuple(
        PortSpec(int(p["containerPort"]), p.get("protocol") or "TCP", p.get("name") or "")
        for p in c.get("ports") or []
        if p.get("containerPort")
    )
    env: dict[str, str] = {
        "POD_NAME": md.get("name", ""),
        "POD_NAMESPACE": md.get("namespace", "default"),
        "POD_IP": pod_ip,
        "NODE_NAME": node_name,
    }
    first_tcp = next((p.port for p in ports if p.protocol == "TCP"), None)
    if first_tcp is not None:
        env["HTTP_PORT"] = str(first_tcp)
    for e in c.get("env") or []:
        name = e.get("name")
        if not name:
            continue
        if "value" in e:
            env[name] = expand(str(e.get("value") or ""), env)
        elif (e.get("valueFrom") or {}).get("fieldRef"):
            env[name] = _field_ref(
                e["valueFrom"]["fieldRef"].get("fieldPath", ""), pod, pod_ip, host_ip
            )
        else:
            env[name] = ""
    grace = md.get("deletionGracePeriodSeconds")
    if grace is None:
        grace = spec.get("terminationGracePeriodSeconds")
    return ContainerSpec(
        name=c.get("name") or "main",
        image=c.get("image") or "",
        command=tuple(expand(str(x), env) for x in c.get("command") or ()),
        args=tuple(expand(str(x), env) for x in c.get("args") or ()),
        env=tuple(sorted(env.items())),
        ports=ports,
        working_dir=c.get("workingDir") or "/",
        restart_policy=spec.get("restartPolicy") or "Always",
        grace_seconds=float(30 if grace is None else grace),
        readiness=c.get("readinessProbe"),
    )


def nginx_config(spec: ContainerSpec, pod_dir: Path, text: str) -> str:
    """A one-worker nginx answering the pod's who-am-I text on every TCP container port."""
    ports = sorted({p.port for p in spec.ports if p.protocol == "TCP"}) or [80]
    body = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    listens = "\n".join(f"    listen {p} reuseport;" for p in ports)
    tmp = pod_dir / "tmp"
    return f"""# generated by the kube-netlab kubelet
worker_processes 1;
daemon off;
master_process on;
pid {pod_dir}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  keepalive_requests 1000000;
  server {{
{listens}
    location / {{
      default_type text/plain;
      return 200 "{body}";
    }}
  }}
}}
"""


def build_argv(spec: ContainerSpec, netns: str, nginx_conf: Path | None = None) -> list[str]:
    if spec.command:
        inner = [*spec.command, *spec.args]
    elif spec.is_nginx and nginx_conf is not None:
        inner = ["nginx", "-c", str(nginx_conf), "-e", "stderr"]
    else:
        inner = [*DEFAULT_WORKLOAD, *spec.args]
    return ["ip", "netns", "exec", netns, *inner]


def process_env(spec: ContainerSpec) -> dict[str, str]:
    venv_bin = str(Path(sys.executable).parent)
    base_path = (
        os.environ.get("PATH") or "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    )
    env = {
        "PATH": f"{venv_bin}:{base_path}",
        "HOME": "/root",
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "PYTHONUNBUFFERED": "1",
    }
    if os.environ.get("VIRTUAL_ENV") or (Path(venv_bin) / "activate").exists():
        env["VIRTUAL_ENV"] = str(Path(venv_bin).parent)
    env.update(dict(spec.env))
    return env


# ---------------------------------------------------------------------------------------- state


@dataclass(slots=True)
class ContainerState:
    """What containerStatuses reports; mutated by the supervisor, read by the agent."""

    running: bool = False
    pid: int | None = None
    started_at: str | None = None
    restart_count: int = 0
    waiting_reason: str = "ContainerCreating"
    exit_code: int | None = None
    finished_at: str | None = None
    terminated_reason: str = ""
    last_exit_code: int | None = None
    last_started_at: str | None = None
    last_finished_at: str | None = None
    done: bool = False  # no more restarts will happen (policy satisfied)


def _pid_alive_in(pid: int, netns_ino: tuple[int, int] | None) -> bool:
    try:
        st = os.stat(f"/proc/{pid}/ns/net")
    except OSError:
        return False
    if netns_ino is None:
        return True
    return (st.st_dev, st.st_ino) == netns_ino


class Container:
    """Supervises one pod process; ``on_change`` is called whenever its state changes."""

    def __init__(
        self,
        spec: ContainerSpec,
        netns: str,
        pod_dir: Path,
        log_path: Path,
        pod_text: str,
        on_change: Callable[[], None],
        netns_ino: tuple[int, int] | None = None,
    ):
        self.spec = spec
        self.netns = netns
        self.pod_dir = pod_dir
        self.log_path = log_path
        self.pid_path = pod_dir / "pid"
        self.pod_text = pod_text
        self.on_change = on_change
        self.netns_ino = netns_ino
        self.state = ContainerState()
        self.proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task | None = None
        self._stopping = False
        self.generation = 0  # bumps at every (re)start; probes reset on change

    # -- lifecycle

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name=f"container {self.netns}")

    async def _launch(self) -> None:
        self.pod_dir.mkdir(parents=True, exist_ok=True)
        conf = None
        if self.spec.is_nginx:
            conf = self.pod_dir / "nginx.conf"
            for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
                (self.pod_dir / "tmp" / sub).mkdir(parents=True, exist_ok=True)
            conf.write_text(nginx_config(self.spec, self.pod_dir, self.pod_text))
        argv = build_argv(self.spec, self.netns, conf)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as logf:
            logf.write(f"--- {now_rfc3339()} starting: {argv[4:]!r}\n".encode())
            logf.flush()
            cwd = self.spec.working_dir if os.path.isdir(self.spec.working_dir) else "/"
            self.proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=logf,
                stderr=logf,
                env=process_env(self.spec),
                cwd=cwd,
                start_new_session=True,  # own process group: kubelet signals never reach it
            )
        self._save_pid(self.proc.pid)

    def _save_pid(self, pid: int) -> None:
        doc = {"pid": pid, "started_at": now_rfc3339(), "restart_count": self.state.restart_count}
        tmp = self.pid_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(self.pid_path)

    @staticmethod
    def saved(pod_dir: Path) -> dict | None:
        """The pid file a previous kubelet left: {pid, started_at, restart_count}."""
        try:
            doc = json.loads((pod_dir / "pid").read_text())
            return doc if isinstance(doc, dict) and isinstance(doc.get("pid"), int) else None
        except (OSError, ValueError):
            return None

    def adopt(self, pid: int, started_at: str | None, restart_count: int) -> bool:
        """Take over a process a previous kubelet started (same netns, still alive)."""
        if not _pid_alive_in(pid, self.netns_ino):
            return False
        st = self.state
        st.running, st.pid, st.started_at = True, pid, started_at or now_rfc3339()
        st.restart_count, st.waiting_reason = restart_count, ""
        self.generation += 1
        self._task = asyncio.create_task(
            self._supervise(adopted=pid), name=f"container {self.netns}"
        )
        return True

    async def _wait_adopted(self, pid: int) -> int:
        loop = asyncio.get_running_loop()
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return 1
        fut: asyncio.Future[None] = loop.create_future()
        loop.add_reader(fd, lambda: fut.done() or fut.set_result(None))
        try:
            await fut
        finally:
            loop.remove_reader(fd)
            os.close(fd)
        return 1  # not our child: the exit code is unknown

    async def _supervise(self, adopted: int | None = None) -> None:
        backoff = BACKOFF_START
        st = self.state
        while not self._stopping:
            began = time.monotonic()
            if adopted is not None:
                code = await self._wait_adopted(adopted)
                adopted = None
            else:
                try:
                    await self._launch()
                except Exception as e:  # noqa: BLE001 - reported in status, retried
                    log.warning("pod %s: cannot start process: %s", self.netns, e)
                    st.running, st.waiting_reason = False, "CreateContainerError"
                    self.on_change()
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX)
                    continue
                assert self.proc is not None
                st.running, st.pid, st.waiting_reason = True, self.proc.pid, ""
                st.started_at = now_rfc3339()
                st.exit_code = None
                self.generation += 1
                self.on_change()
                code = await self.proc.wait()
            if self._stopping:
                break
            st.running = False
            st.exit_code, st.finished_at = code, now_rfc3339()
            st.last_exit_code, st.last_started_at = code, st.started_at
            st.last_finished_at = st.finished_at
            st.terminated_reason = "Completed" if code == 0 else "Error"
            with open(self.log_path, "ab") as logf:
                logf.write(f"--- {now_rfc3339()} exited with {code}\n".encode())
            policy = self.spec.restart_policy
            if policy == "Never" or (policy == "OnFailure" and code == 0):
                st.done = True
                self.on_change()
                return
            if time.monotonic() - began > BACKOFF_RESET_AFTER:
                backoff = BACKOFF_START
            st.waiting_reason = "CrashLoopBackOff" if code != 0 else ""
            log.info("pod %s: process exited %s; restarting in %.1fs", self.netns, code, backoff)
            self.on_change()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)
            st.restart_count += 1

    async def stop(self, grace: float | None = None) -> None:
        """SIGTERM the process group, SIGKILL after the grace period; idempotent."""
        self._stopping = True
        grace = self.spec.grace_seconds if grace is None else grace
        pid = self.state.pid
        if pid is not None and self.state.running:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and self._alive(pid):
                await asyncio.sleep(0.05)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            if self.proc is not None and self.proc.pid == pid:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.proc.wait(), 5)
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.state.running = False
        with contextlib.suppress(FileNotFoundError):
            self.pid_path.unlink()

    def _alive(self, pid: int) -> bool:
        if self.proc is not None and self.proc.pid == pid:
            return self.proc.returncode is None
        return _pid_alive_in(pid, None) and not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False
