"""The lab's processes: the apiserver, the scheduler and the per-node agents.

Pure part: :func:`agent_argv` (the command line of each agent, per docs/contracts.md) and
the file layout (logs and pidfiles under /run/kube-netlab/P/nodes/NODE/). Process part:
:func:`probe` (which agent packages are runnable: ``python -m PKG --help`` exits 0, all probed
at once), :func:`launch` (a detached process, new session, inside the node's network
namespace through ``nsenter --net``, stdout+stderr appended to its log, pidfile with pid and start time),
:func:`stop` and :func:`health` (process alive + the agent's own health signal).

Every process the lab starts carries ``KNL_LAB=P`` in its environment; lab/cleanup.py uses it
(with pidfiles and namespace membership) to find them again after anything.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from . import cleanup
from . import topology as topo
from .config import LabConfig

log = logging.getLogger("lab")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# component -> python module
MODULES: dict[str, str] = {
    "apiserver": "apiserver_stub",
    "scheduler": "lab.scheduler",
    "overlay": "overlay",
    "kubelet": "lab.kubelet",
    "kubeproxy": "kubeproxy",
    "clusterdns": "clusterdns",
}
NODE_AGENTS = ("overlay", "kubelet", "kubeproxy")  # started on every node, in this order
CONTROL_PLANE_AGENTS = ("apiserver", "scheduler")
CONTROL_PLANE_TAINT = "node-role.kubernetes.io/control-plane:NoSchedule"
KUBEPROXY_HEALTH_PORT = 10256
KUBEPROXY_METRICS_PORT = 10249


def node_dir(prefix: str, node: str) -> str:
    return os.path.join(topo.state_dir(prefix), "nodes", node)


def log_path(prefix: str, node: str, component: str) -> str:
    return os.path.join(node_dir(prefix, node), "logs", f"{component}.log")


def pid_path(prefix: str, node: str, component: str) -> str:
    return os.path.join(node_dir(prefix, node), "pids", f"{component}.pid")


def subnet_file(prefix: str, node: str) -> str:
    return os.path.join(node_dir(prefix, node), "subnet.env")


def apiserver_data_dir(prefix: str) -> str:
    return os.path.join(topo.state_dir(prefix), "apiserver")


def kubeconfig_path(prefix: str) -> str:
    return os.path.join(topo.state_dir(prefix), "kubeconfig")


@dataclass(frozen=True, slots=True)
class Agent:
    """One process of the lab: what runs where, and where its log and pidfile are."""

    component: str
    node: str
    netns: str
    argv: tuple[str, ...]  # the python command line, run inside ``netns``
    log_path: str
    pid_path: str

    @property
    def key(self) -> str:
        return f"{self.node}/{self.component}"


def agent_argv(
    cfg: LabConfig, node: str, component: str, python: str = sys.executable
) -> list[str]:
    """The command line of ``component`` on ``node`` (the contract in docs/contracts.md)."""
    p = cfg.plan()
    n = p.node(node)
    url = p.apiserver_url
    base = [python, "-m", MODULES[component]]
    if component == "apiserver":
        return base + [
            "--bind", "0.0.0.0", "--port", str(topo.API_PORT),
            "--data-dir", apiserver_data_dir(cfg.prefix),
            "--service-cluster-ip-range", cfg.service_cidr,
            "--cluster-cidr", cfg.cluster_cidr,
        ]  # fmt: skip
    if component == "scheduler":
        return base + ["--master", url]
    if component == "kubelet":
        return base + [
            "--master", url, "--node-name", node, "--node-ip", n.ip, "--prefix", cfg.prefix,
            "--cluster-dns", cfg.cluster_dns, "--subnet-file", subnet_file(cfg.prefix, node),
        ] + (["--register-with-taints", CONTROL_PLANE_TAINT] if n.is_control_plane else [])  # fmt: skip
    if component == "overlay":
        argv = base + [
            "--master", url, "--node-name", node, "--iface", topo.NODE_IFACE,
            "--backend", cfg.overlay, "--subnet-file", subnet_file(cfg.prefix, node),
        ]  # fmt: skip
        return argv + (["--ip-masq"] if cfg.ip_masq else [])
    if component == "kubeproxy":
        return base + [
            "--master", url, "--hostname-override", node, "--proxy-mode", cfg.proxy_mode,
            "--cluster-cidr", cfg.cluster_cidr, "--min-sync-period", "0s",
            "--metrics-bind-address", f"0.0.0.0:{KUBEPROXY_METRICS_PORT}",
            "--healthz-bind-address", f"0.0.0.0:{KUBEPROXY_HEALTH_PORT}",
        ]  # fmt: skip
    raise ValueError(f"unknown component {component!r}; known: {', '.join(MODULES)}")


def clusterdns_command(cfg: LabConfig) -> list[str]:
    """The coredns Pod's command (run by the kubelet inside the pod's namespace)."""
    return [
        "python", "-m", MODULES["clusterdns"], "--master", cfg.plan().apiserver_url,
        "--listen", "0.0.0.0", "--port", "53", "--zone", "cluster.local",
        "--upstream", cfg.dns_upstream,
    ]  # fmt: skip


def make_agent(
    cfg: LabConfig,
    node: str,
    component: str,
    extra_args: Iterable[str] = (),
    python: str = sys.executable,
) -> Agent:
    return Agent(
        component=component,
        node=node,
        netns=topo.node_netns(cfg.prefix, node),
        argv=tuple(agent_argv(cfg, node, component, python)) + tuple(extra_args),
        log_path=log_path(cfg.prefix, node, component),
        pid_path=pid_path(cfg.prefix, node, component),
    )


def agent_env(prefix: str, python: str = sys.executable) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("KUBECONFIG", None)
    bindir = os.path.dirname(python)
    path = env.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env["PATH"] = bindir + os.pathsep + path
    for d in ("/usr/sbin", "/sbin"):
        if d not in env["PATH"].split(os.pathsep):
            env["PATH"] += os.pathsep + d
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    env["KNL_PREFIX"] = prefix
    env[cleanup.MARKER_ENV] = prefix
    return env


# ------------------------------------------------------------------------------- probing


def probe(components: Iterable[str], python: str = sys.executable) -> dict[str, bool]:
    """Which components are runnable: their package has ``__main__`` and ``--help`` exits 0."""
    return Prober(components, python).result()


def _module_exists(mod: str) -> bool:
    """The module exists (a package must also have ``__main__``); cheap, no import of it."""
    try:
        spec = importlib.util.find_spec(mod)
        if spec is None:
            return False
        if spec.submodule_search_locations is not None:  # a package
            return importlib.util.find_spec(mod + ".__main__") is not None
        return True
    except (ImportError, ValueError):
        return False


class Prober:
    """``probe`` started early and collected later (so it overlaps building the topology)."""

    def __init__(self, components: Iterable[str], python: str = sys.executable):
        self._components = list(components)
        self._python = python
        self._result: dict[str, bool] | None = None
        env = agent_env("probe", python)
        env.pop(cleanup.MARKER_ENV, None)
        self._procs: dict[str, subprocess.Popen[bytes] | None] = {}
        for comp in self._components:
            mod = MODULES[comp]
            found = _module_exists(mod)
            self._procs[comp] = (
                subprocess.Popen(
                    [python, "-m", mod, "--help"],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    env=env,
                    cwd=REPO,
                )
                if found
                else None
            )

    def result(self, timeout: float = 60) -> dict[str, bool]:
        if self._result is None:
            out: dict[str, bool] = {}
            deadline = time.monotonic() + timeout
            for comp, proc in self._procs.items():
                if proc is None:
                    out[comp] = False
                    continue
                try:
                    out[comp] = proc.wait(timeout=max(0.1, deadline - time.monotonic())) == 0
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                    out[comp] = False
            self._result = out
        return self._result

    def cancel(self) -> None:
        for proc in self._procs.values():
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


# ------------------------------------------------------------------------------ processes


def ns_argv(netns: str, argv: Iterable[str]) -> list[str]:
    """Run ``argv`` in ``netns`` only (``nsenter --net``), staying in the host's mount namespace.

    Not ``ip netns exec``: that gives the process a private mount namespace, and pod
    namespaces the kubelet creates there (bind mounts under /run/netns) would stay invisible
    to the host, to ``lab down`` and to ``ip netns``.
    """
    return ["nsenter", f"--net={os.path.join(topo.NETNS_DIR, netns)}", "--", *argv]


def launch(agent: Agent, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    """Start ``agent`` detached inside its node namespace; pidfile written before returning."""
    os.makedirs(os.path.dirname(agent.log_path), exist_ok=True)
    os.makedirs(os.path.dirname(agent.pid_path), exist_ok=True)
    with open(agent.log_path, "ab") as logf:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        logf.write(f"--- {stamp} lab: starting {json.dumps(list(agent.argv))}\n".encode())
        logf.flush()
        proc = subprocess.Popen(
            ns_argv(agent.netns, agent.argv),
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env=dict(env),
            cwd=REPO,
        )
    cleanup.write_pidfile(agent.pid_path, proc.pid)
    return proc


def running_pid(agent_or_pidfile: Agent | str) -> int | None:
    path = agent_or_pidfile if isinstance(agent_or_pidfile, str) else agent_or_pidfile.pid_path
    return cleanup.read_pidfile(path)


def stop(agent: Agent, grace: float = 5.0) -> bool:
    """SIGTERM the agent (SIGKILL after ``grace``); True if it was running.

    Only the agent's own process: what it started in other sessions (a kubelet's pods) keeps
    running, as a restarted kubelet adopts its pods.
    """
    pid = running_pid(agent)
    if pid is None:
        return False
    cleanup.kill_all([pid], grace=grace)
    try:
        os.unlink(agent.pid_path)
    except FileNotFoundError:
        pass
    return True


def log_tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 8192))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


# --------------------------------------------------------------------------------- health


def http_status(url: str, timeout: float = 1.0) -> int | None:
    """HTTP status of a GET (None when nothing answers)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError, ValueError):
        return None


def apiserver_healthy(url: str, timeout: float = 1.0) -> bool:
    st = http_status(url + "/healthz", timeout)
    if st == 200:
        return True
    return http_status(url + "/api/v1/namespaces", timeout) == 200


@dataclass(frozen=True, slots=True)
class Health:
    running: bool
    healthy: bool | None  # None: no health signal beyond "running"
    detail: str


def health(cfg: LabConfig, agent: Agent, nodes_ready: Mapping[str, bool] | None = None) -> Health:
    """Process alive + the component's own signal (apiserver /healthz, kube-proxy /healthz,
    overlay's subnet.env, kubelet's Node Ready)."""
    pid = running_pid(agent)
    if pid is None:
        return Health(False, False, "not running")
    p = cfg.plan()
    comp = agent.component
    if comp == "apiserver":
        ok = apiserver_healthy(p.apiserver_url)
        return Health(True, ok, f"pid {pid}, /healthz " + ("ok" if ok else "not answering"))
    if comp == "kubeproxy":
        st = http_status(f"http://{p.node(agent.node).ip}:{KUBEPROXY_HEALTH_PORT}/healthz")
        return Health(True, st == 200, f"pid {pid}, healthz {st if st else 'not answering'}")
    if comp == "overlay":
        ok = os.path.exists(subnet_file(cfg.prefix, agent.node))
        return Health(True, ok, f"pid {pid}, subnet.env " + ("written" if ok else "missing"))
    if comp == "kubelet":
        if nodes_ready is None:
            return Health(True, None, f"pid {pid}")
        if agent.node not in nodes_ready:
            return Health(True, False, f"pid {pid}, Node not registered")
        ok = nodes_ready[agent.node]
        return Health(True, ok, f"pid {pid}, Node " + ("Ready" if ok else "NotReady"))
    return Health(True, None, f"pid {pid}")
