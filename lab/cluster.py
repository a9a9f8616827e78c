"""The Lab: bring a cluster of namespace nodes up, use it, take it down (the Python API).

    lab = Lab(prefix="knl", nodes=2)      # 2 workers + the control-plane node
    lab.up()                              # topology, apiserver, agents, cluster DNS
    lab.apply("examples/web.yaml")
    pods = lab.wait_ready("demo", "app=web", 3)
    lab.pod_exec("demo", pods[0]["metadata"]["name"], ["curl", "-s", "http://web.demo"])
    lab.down()

Division of labour: lab/topology.py wires namespaces and links, lab/agents.py starts and
checks processes, lab/cleanup.py removes everything; this module sequences them, keeps the
state file, talks to the API and reports progress. Commands are argument lists; names given
by users (pods, namespaces) never pass through a shell.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import yaml

from kubecommon.client import ApiError, SyncApiClient

from . import agents as ag
from . import cleanup
from . import topology as topo
from .config import LabConfig, LabState, load_state, save_state

log = logging.getLogger("lab")

KINDS: dict[str, str] = {
    "Namespace": "namespaces",
    "Node": "nodes",
    "Pod": "pods",
    "Service": "services",
    "Endpoints": "endpoints",
    "EndpointSlice": "endpointslices",
}
APPLY_ORDER = {"Namespace": 0, "Service": 1}  # then everything else, in file order
CONTROL_PLANE_TAINT = {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}


class LabError(Exception):
    """Something the user can act on: what failed, where, and where to look."""


class Progress(Protocol):
    """How `up`/`down` report long steps (the CLI shows rich progress bars)."""

    def phase(self, description: str, total: int | None = None) -> None: ...
    def update(self, completed: int, detail: str = "") -> None: ...
    def done(self, message: str = "") -> None: ...


class LogProgress:
    """Default reporter: one log line per phase."""

    def phase(self, description: str, total: int | None = None) -> None:
        log.info("%s%s", description, f" (0/{total})" if total else "")

    def update(self, completed: int, detail: str = "") -> None:
        pass

    def done(self, message: str = "") -> None:
        if message:
            log.info("%s", message)


def kubeconfig_text(prefix: str, server: str) -> str:
    name = f"kube-netlab-{prefix}"
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": server}}],
        "users": [{"name": name, "user": {}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
        "preferences": {},
    }
    return yaml.safe_dump(doc, sort_keys=False)


def load_manifest(path_or_text: str) -> list[dict[str, Any]]:
    """Objects of a YAML/JSON manifest (a file path or the text itself); ``List`` flattened."""
    text = path_or_text
    if "\n" not in path_or_text and os.path.exists(path_or_text):
        with open(path_or_text, encoding="utf-8") as f:
            text = f.read()
    objs: list[dict[str, Any]] = []
    for doc in yaml.safe_load_all(text):
        if not doc:
            continue
        if not isinstance(doc, dict) or "kind" not in doc:
            raise LabError(f"manifest document is not a Kubernetes object: {str(doc)[:80]!r}")
        if doc["kind"].endswith("List"):
            objs.extend(doc.get("items") or [])
        else:
            objs.append(doc)
    for o in objs:
        if o.get("kind") not in KINDS:
            raise LabError(
                f"kind {o.get('kind')!r} is not served by the lab's API "
                f"(known: {', '.join(sorted(KINDS))})"
            )
    return sorted(objs, key=lambda o: APPLY_ORDER.get(o["kind"], 2))


def selector_matches(selector: str, labels: Mapping[str, str]) -> bool:
    """Equality-based label selectors (``a=b,c!=d,e``), as wait_ready uses them."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k.strip()) == v.strip():
                return False
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            if labels.get(k.strip()) != v.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def pod_ready(pod: Mapping[str, Any]) -> bool:
    st = pod.get("status") or {}
    if not st.get("podIP"):
        return False
    return any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or []
    )


def node_ready(node: Mapping[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (node.get("status") or {}).get("conditions") or []
    )


def pod_netns_name(prefix: str, namespace: str, pod: str) -> str:
    """The kubelet's name for a pod's namespace (its rule, including long-name hashing)."""
    try:
        from lab.kubelet.sandbox import netns_name
    except ImportError:
        return topo.pod_netns(prefix, namespace, pod)
    return netns_name(prefix, namespace, pod)


class Lab:
    """A cluster of namespace nodes; see the module docstring and docs/contracts.md."""

    def __init__(
        self,
        prefix: str = topo.DEFAULT_PREFIX,
        nodes: int = 2,
        proxy_mode: str = "iptables",
        overlay: str = "vxlan",
        node_cidr: str = topo.DEFAULT_NODE_CIDR,
        *,
        ip_masq: bool = True,
        dns_upstream: str = "127.0.0.1:5353",
        progress: Progress | None = None,
        python: str = sys.executable,
        config: LabConfig | None = None,
    ):
        self.config = config or LabConfig(
            prefix=prefix,
            workers=nodes,
            proxy_mode=proxy_mode,
            overlay=overlay,
            node_cidr=node_cidr,
            ip_masq=ip_masq,
            dns_upstream=dns_upstream,
        )
        self.plan = self.config.plan()
        self.progress: Progress = progress or LogProgress()
        self.python = python
        self.reused = False
        self.timings: dict[str, float] = {}  # seconds per `up` phase (bench_up reports them)
        self._api: SyncApiClient | None = None

    @classmethod
    def attach(cls, prefix: str = topo.DEFAULT_PREFIX, progress: Progress | None = None) -> Lab:
        """The lab already up with this prefix (from its state file)."""
        st = load_state(prefix)
        if st is None:
            raise LabError(
                f"no lab with prefix {prefix!r} is up (no {topo.state_dir(prefix)}/state.json); "
                "start one with: netns-lab.sh up"
            )
        return cls(config=st.config, progress=progress)

    # ------------------------------------------------------------------ names and handles

    @property
    def prefix(self) -> str:
        return self.config.prefix

    @property
    def apiserver_url(self) -> str:
        return self.plan.apiserver_url

    @property
    def api(self) -> SyncApiClient:
        if self._api is None:
            self._api = SyncApiClient(self.apiserver_url, user_agent="kube-netlab/lab")
        return self._api

    @property
    def node_names(self) -> list[str]:
        return [n.name for n in self.plan.nodes]

    @property
    def worker_names(self) -> list[str]:
        return [n.name for n in self.plan.nodes if not n.is_control_plane]

    def node_ip(self, name: str) -> str:
        return self.plan.node(name).ip

    def node_ns(self, name: str) -> str:
        return self.plan.node(name).netns

    def pod_ns(self, namespace: str, pod: str) -> str:
        return pod_netns_name(self.prefix, namespace, pod)

    @property
    def state_dir(self) -> str:
        return topo.state_dir(self.prefix)

    @property
    def kubeconfig(self) -> str:
        return ag.kubeconfig_path(self.prefix)

    def state(self) -> LabState | None:
        return load_state(self.prefix)

    def agents(self) -> list[ag.Agent]:
        """The agents this lab runs (as recorded at `up`: only runnable components)."""
        st = self.state()
        runnable = st.agents if st else {}
        out = [ag.make_agent(self.config, topo.CONTROL_PLANE, "apiserver", python=self.python)]
        if runnable.get("scheduler"):
            out.append(
                ag.make_agent(self.config, topo.CONTROL_PLANE, "scheduler", python=self.python)
            )
        for node in self.node_names:
            for comp in ag.NODE_AGENTS:
                if runnable.get(comp):
                    out.append(ag.make_agent(self.config, node, comp, python=self.python))
        return out

    # ------------------------------------------------------------------------------- up

    @contextlib.contextmanager
    def _lock(self, remove: bool = False) -> Iterator[None]:
        try:
            with cleanup.lab_lock(self.prefix, remove=remove):
                yield
        except cleanup.LabBusy as e:
            raise LabError(str(e)) from None

    def up(self) -> Lab:
        """Build the lab; reuse it when one with the same configuration is already up."""
        with self._lock():
            if self._check_existing():
                self.reused = True
                return self
            state = LabState(config=self.config, phase="building")
            save_state(state)
            try:
                self._build(state)
            except BaseException as e:
                state.phase = "failed"
                state.error = str(e) or type(e).__name__
                save_state(state)
                if isinstance(e, LabError):
                    raise
                if isinstance(e, KeyboardInterrupt):
                    raise
                raise LabError(f"lab {self.prefix!r}: up failed: {e!r}") from e
            state.phase = "up"
            save_state(state)
        return self

    def _check_existing(self) -> bool:
        old = load_state(self.prefix)
        down_hint = f"take it down first: netns-lab.sh down --prefix {self.prefix}"
        if old is not None:
            diffs = old.config.differences(self.config)
            if diffs:
                raise LabError(
                    f"a lab with prefix {self.prefix!r} already exists with another "
                    f"configuration ({'; '.join(diffs)}); {down_hint}, or use another --prefix"
                )
            if old.phase == "up":
                if ag.apiserver_healthy(self.apiserver_url, timeout=2):
                    log.info(
                        "lab %s is already up with this configuration: reusing it", self.prefix
                    )
                    return True
                raise LabError(
                    f"lab {self.prefix!r} is recorded as up but its apiserver "
                    f"({self.apiserver_url}) does not answer; {down_hint}"
                )
            why = f": {old.error}" if old.error else ""
            raise LabError(
                f"lab {self.prefix!r} is half-built (phase {old.phase!r}{why}); {down_hint}"
            )
        left = cleanup.leftovers(self.prefix)
        if left:
            raise LabError(
                f"remains of a lab with prefix {self.prefix!r} exist without its state "
                f"({', '.join(left[:5])}{' ...' if len(left) > 5 else ''}); {down_hint}"
            )
        conflicts = topo.host_conflicts(self.plan)
        if conflicts:
            raise LabError(
                f"node network {self.plan.node_cidr} is already used on this host "
                f"({', '.join(conflicts)}); pick another --node-cidr"
            )
        return False

    def _build(self, state: LabState) -> None:
        p, pr = self.plan, self.progress
        t0 = time.monotonic()
        # the apiserver is required (it is started and checked, not probed); the optional
        # agents are probed in the background while namespaces are wired and the API starts
        optional = [c for c in ag.MODULES if c != "apiserver"]
        prober = ag.Prober(optional, self.python)
        try:
            pr.phase(f"creating {len(p.nodes)} node namespaces", total=len(p.nodes) + 1)
            topo.build_fabric(p)
            pr.update(1, p.fabric_netns)
            for i, node in enumerate(p.nodes, start=2):
                topo.build_node(p, node)
                pr.update(i, node.netns)
            self.timings["network"] = round(time.monotonic() - t0, 2)
            pr.done(f"network: {len(p.nodes)} nodes on {p.node_cidr}, host link {p.host_link}")
            env = ag.agent_env(self.prefix, self.python)

            # the API server first: every other agent talks to it
            pr.phase(f"starting apiserver on {topo.CONTROL_PLANE} ({self.apiserver_url})")
            api_agent = ag.make_agent(
                self.config, topo.CONTROL_PLANE, "apiserver", python=self.python
            )
            os.makedirs(ag.apiserver_data_dir(self.prefix), exist_ok=True)
            procs = {api_agent.key: (api_agent, ag.launch(api_agent, env))}
            self._wait_agents(procs, timeout=30, title="apiserver")
            t_api = time.monotonic()
            self.timings["apiserver"] = round(t_api - t0 - self.timings["network"], 2)
            pr.done(f"apiserver up at {self.apiserver_url}")
            pr.phase("probing agent packages")
            runnable = {"apiserver": True, **prober.result()}
        finally:
            prober.cancel()
        state.agents = runnable
        save_state(state)
        self.timings["probe_wait"] = round(time.monotonic() - t_api, 2)
        pr.done(
            "agents: "
            + ", ".join(f"{c} {'yes' if ok else 'not available'}" for c, ok in runnable.items())
        )
        self._write_kubeconfig()
        self._ensure_namespace("default")
        self._ensure_namespace("kube-system")

        # everything else at once, then wait for all of them together
        started: dict[str, tuple[ag.Agent, subprocess.Popen[bytes]]] = {}
        if runnable.get("scheduler"):
            a = ag.make_agent(self.config, topo.CONTROL_PLANE, "scheduler", python=self.python)
            started[a.key] = (a, ag.launch(a, env))
        for node in self.node_names:
            for comp in ag.NODE_AGENTS:
                if runnable.get(comp):
                    a = ag.make_agent(self.config, node, comp, python=self.python)
                    started[a.key] = (a, ag.launch(a, env))
        if started:
            self._wait_agents(started, timeout=60 + 3 * len(p.nodes), title="agents")
            pr.done(f"{len(started)} agents healthy")
        t_agents = time.monotonic()
        self.timings["agents"] = round(t_agents - t_api - self.timings["probe_wait"], 2)
        if runnable.get("kubelet"):
            self._taint_control_plane()
            if runnable.get("clusterdns"):
                self._deploy_cluster_dns()
        else:
            log.warning("no kubelet package yet: nodes do not register and pods do not run")
        self.timings["dns"] = round(time.monotonic() - t_agents, 2)
        pr.done(f"lab {self.prefix!r} up in {time.monotonic() - t0:.1f}s")

    def _wait_agents(
        self,
        procs: Mapping[str, tuple[ag.Agent, subprocess.Popen[bytes]]],
        timeout: float,
        title: str,
    ) -> None:
        """Wait until every agent is healthy; fail fast (with its log) when one exits."""
        pr = self.progress
        pending = dict(procs)
        total = len(procs)
        pr.phase(f"waiting for {total} {title} to become healthy", total=total)
        deadline = time.monotonic() + timeout
        last: dict[str, str] = {}
        while pending:
            nodes_ready = None
            if any(a.component == "kubelet" for a, _ in pending.values()):
                nodes_ready = self._nodes_ready()
            for key, (agent, proc) in list(pending.items()):
                rc = proc.poll()
                if rc is not None:
                    raise LabError(
                        f"{agent.component} on node {agent.node} exited with code {rc} while "
                        f"starting; log: {agent.log_path}\n{ag.log_tail(agent.log_path)}"
                    )
                h = ag.health(self.config, agent, nodes_ready)
                last[key] = h.detail
                if h.healthy is not False:
                    del pending[key]
            pr.update(total - len(pending), ", ".join(sorted(pending)[:3]))
            if not pending:
                break
            if time.monotonic() > deadline:
                lines = [
                    f"  {k}: {last.get(k, '?')} (log: {a.log_path})"
                    for k, (a, _) in sorted(pending.items())
                ]
                raise LabError(
                    f"{len(pending)} of {total} {title} not healthy after {timeout:.0f}s:\n"
                    + "\n".join(lines[:20])
                )
            time.sleep(0.25)
        # reap the Popen handles' zombies later; they are detached sessions

    def _nodes_ready(self) -> dict[str, bool]:
        try:
            items = self.api.list("nodes").get("items") or []
        except ApiError:
            return {}
        return {n["metadata"]["name"]: node_ready(n) for n in items}

    def _write_kubeconfig(self) -> None:
        path = self.kubeconfig
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.write(kubeconfig_text(self.prefix, self.apiserver_url))
        os.chmod(path + ".tmp", 0o600)
        os.replace(path + ".tmp", path)

    def _ensure_namespace(self, name: str) -> None:
        try:
            self.api.create(
                "namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
            )
        except ApiError as e:
            if e.code != 409:
                raise LabError(f"cannot create namespace {name}: {e}") from e

    def _taint_control_plane(self) -> None:
        try:
            node = self.api.get("nodes", topo.CONTROL_PLANE)
        except ApiError as e:
            raise LabError(f"node {topo.CONTROL_PLANE} did not register: {e}") from e
        taints = list((node.get("spec") or {}).get("taints") or [])
        if any(t.get("key") == CONTROL_PLANE_TAINT["key"] for t in taints):
            return
        taints.append(dict(CONTROL_PLANE_TAINT))
        self.api.patch("nodes", topo.CONTROL_PLANE, {"spec": {"taints": taints}})

    def _deploy_cluster_dns(self) -> None:
        pr = self.progress
        pr.phase("deploying cluster DNS (kube-system/coredns)")
        self.apply_objects(cluster_dns_objects(self.config))
        try:
            self.wait_ready("kube-system", "k8s-app=kube-dns", 1, timeout=30)
        except LabError as e:
            raise LabError(
                f"cluster DNS pod kube-system/coredns did not become Ready: {e}\n"
                f"kubelet log: {ag.log_path(self.prefix, topo.CONTROL_PLANE, 'kubelet')}"
            ) from None
        pr.done(f"cluster DNS at {self.config.cluster_dns}")

    # ------------------------------------------------------------------------------ down

    def down(self) -> cleanup.CleanupReport:
        self._api = None
        with self._lock(remove=True):
            return cleanup.down(self.prefix)

    # ----------------------------------------------------------------------------- using

    def apply(self, path_or_yaml: str) -> list[tuple[str, str, str]]:
        """Create (or update) the objects of a manifest; returns (kind, ns/name, action)."""
        return self.apply_objects(load_manifest(path_or_yaml))

    def apply_objects(self, objs: Iterable[dict[str, Any]]) -> list[tuple[str, str, str]]:
        out = []
        for obj in objs:
            kind = obj["kind"]
            plural = KINDS[kind]
            md = obj.setdefault("metadata", {})
            ns = md.get("namespace") or (
                "default" if plural not in ("namespaces", "nodes") else None
            )
            if ns:
                md["namespace"] = ns
            ident = f"{ns}/{md.get('name')}" if ns else str(md.get("name"))
            try:
                self.api.create(plural, obj, namespace=ns)
                action = "created"
            except ApiError as e:
                if e.code != 409:
                    raise LabError(f"cannot create {kind} {ident}: {e.message or e}") from e
                if kind in ("Pod", "Namespace"):
                    action = "unchanged"
                else:
                    patch = {k: v for k, v in obj.items() if k not in ("status",)}
                    try:
                        self.api.patch(plural, md["name"], patch, namespace=ns)
                    except ApiError as e2:
                        raise LabError(f"cannot update {kind} {ident}: {e2.message or e2}") from e2
                    action = "configured"
            out.append((kind, ident, action))
        return out

    def list_pods(self, namespace: str | None = None, label_selector: str = "") -> list[dict]:
        params = {"labelSelector": label_selector} if label_selector else {}
        items = self.api.list("pods", namespace, **params).get("items") or []
        labels_of = lambda p: (p.get("metadata") or {}).get("labels") or {}  # noqa: E731
        return [p for p in items if selector_matches(label_selector, labels_of(p))]

    def wait_ready(
        self, namespace: str, label_selector: str, count: int, timeout: float = 30
    ) -> list[dict]:
        """Wait until ``count`` pods matching the selector are Ready with an IP; return them."""
        deadline = time.monotonic() + timeout
        pods: list[dict] = []
        while True:
            try:
                pods = self.list_pods(namespace, label_selector)
            except ApiError as e:
                if time.monotonic() > deadline:
                    raise LabError(f"API unreachable while waiting for pods: {e}") from e
                pods = []
            ready = [p for p in pods if pod_ready(p)]
            if len(ready) >= count:
                return sorted(ready, key=lambda p: p["metadata"]["name"])
            if time.monotonic() > deadline:
                desc = "; ".join(
                    f"{p['metadata']['name']}: {(p.get('status') or {}).get('phase', '?')} "
                    f"node={(p.get('spec') or {}).get('nodeName') or '-'} "
                    f"ip={(p.get('status') or {}).get('podIP') or '-'}"
                    for p in pods
                )
                raise LabError(
                    f"{len(ready)}/{count} pods Ready in {namespace} ({label_selector}) after "
                    f"{timeout:.0f}s: [{desc or 'no pods'}]; kubelet logs: "
                    f"{self.state_dir}/nodes/*/logs/kubelet.log"
                )
            time.sleep(0.2)

    def _ns_exec(
        self, netns: str, argv: Sequence[str], timeout: float
    ) -> subprocess.CompletedProcess[str]:
        if not topo.netns_exists(netns):
            raise LabError(f"network namespace {netns} does not exist")
        env = ag.agent_env(self.prefix, self.python)
        env.pop(cleanup.MARKER_ENV, None)
        full = ["ip", "netns", "exec", netns, *argv]
        try:
            return subprocess.run(
                full,
                capture_output=True,
                text=True,
                timeout=timeout,
                env=env,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else e.stdout
            err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else e.stderr
            return subprocess.CompletedProcess(
                full, 124, out or "", (err or "") + f"\ntimed out after {timeout}s"
            )

    def pod_exec(
        self, namespace: str, pod: str, argv: Sequence[str], timeout: float = 10
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the pod's namespace (its /etc/netns resolv.conf applies).

        A command still running after ``timeout`` is killed and returns code 124.
        """
        netns = self.pod_ns(namespace, pod)
        if not topo.netns_exists(netns):
            raise LabError(
                f"pod {namespace}/{pod} has no sandbox ({netns} does not exist): "
                "is it scheduled and running? (netns-lab.sh status)"
            )
        return self._ns_exec(netns, argv, timeout)

    def node_exec(
        self, node: str, argv: Sequence[str], timeout: float = 10
    ) -> subprocess.CompletedProcess[str]:
        return self._ns_exec(self.node_ns(node), argv, timeout)

    def restart_agent(
        self, node: str, component: str, extra_args: Sequence[str] = (), timeout: float = 30
    ) -> None:
        """Stop one agent and start it again (optionally with extra flags); wait until healthy."""
        if component not in ag.MODULES:
            raise LabError(f"unknown agent {component!r}; known: {', '.join(ag.MODULES)}")
        self.plan.node(node)
        agent = ag.make_agent(self.config, node, component, extra_args, python=self.python)
        ag.stop(agent)
        proc = ag.launch(agent, ag.agent_env(self.prefix, self.python))
        if component == "kubelet":
            time.sleep(0.5)  # let the Node heartbeat come from the new process
        self._wait_agents(
            {agent.key: (agent, proc)}, timeout=timeout, title=f"{component} on {node}"
        )

    def agent_health(self) -> list[tuple[ag.Agent, ag.Health]]:
        nodes_ready = self._nodes_ready() if ag.apiserver_healthy(self.apiserver_url) else {}
        return [(a, ag.health(self.config, a, nodes_ready)) for a in self.agents()]


def cluster_dns_objects(cfg: LabConfig) -> list[dict[str, Any]]:
    """kube-system/kube-dns Service and the coredns Pod (docs/contracts.md)."""
    labels = {"k8s-app": "kube-dns"}
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": dict(labels)},
        "spec": {
            "clusterIP": cfg.cluster_dns,
            "selector": dict(labels),
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
            ],
        },
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "coredns", "namespace": "kube-system", "labels": dict(labels)},
        "spec": {
            "nodeName": topo.CONTROL_PLANE,
            "tolerations": [
                {"key": CONTROL_PLANE_TAINT["key"], "operator": "Exists", "effect": "NoSchedule"}
            ],
            "containers": [
                {
                    "name": "coredns",
                    "image": "kube-netlab/clusterdns",
                    "command": ag.clusterdns_command(cfg),
                    "ports": [
                        {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                        {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                    ],
                }
            ],
        },
    }
    return [svc, pod]
