"""The `lab` command line (netns-lab.sh is a thin front for it): click commands, rich output.

Every command takes ``--prefix`` (env KNL_PREFIX, default "knl") to pick the lab. Commands
that run something inside a pod build argument lists; pod and namespace names are passed as
single arguments and never through a shell.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from . import agents as ag
from . import cleanup
from . import topology as topo
from .cluster import Lab, LabError, node_ready, pod_ready
from .config import PROXY_MODES

console = Console()
err_console = Console(stderr=True)

REPO = ag.REPO


class RichProgress:
    """Lab progress as rich spinners/bars; finished phases stay on screen as ✓ lines."""

    def __init__(self, console: Console):
        self.console = console
        self._progress: Progress | None = None
        self._task: Any = None

    def _ensure(self) -> Progress:
        if self._progress is None:
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("[progress.description]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("[dim]{task.fields[detail]}"),
                console=self.console,
                transient=True,
            )
            self._progress.start()
        return self._progress

    def phase(self, description: str, total: int | None = None) -> None:
        p = self._ensure()
        if self._task is not None:
            p.remove_task(self._task)
        self._task = p.add_task(description, total=total, detail="")

    def update(self, completed: int, detail: str = "") -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=completed, detail=detail)

    def done(self, message: str = "") -> None:
        if self._progress is not None and self._task is not None:
            self._progress.remove_task(self._task)
            self._task = None
        if message:
            self.console.print(f"[green]✓[/] {message}")

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
            self._task = None


def prefix_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--prefix",
        envvar="KNL_PREFIX",
        default=topo.DEFAULT_PREFIX,
        show_default=True,
        help="Lab name prefix (namespaces P-*, host link P-host, state /run/kube-netlab/P).",
    )(fn)


def lab_shape_options(min_nodes: int) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The options that say what lab to build (shared by ``up`` and ``demo``)."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        for opt in reversed(
            [
                click.option(
                    "--nodes",
                    default=2,
                    show_default=True,
                    type=click.IntRange(min_nodes, 200),
                    help="Worker nodes.",
                ),
                click.option(
                    "--proxy-mode",
                    type=click.Choice(list(PROXY_MODES)),
                    default="iptables",
                    show_default=True,
                ),
                click.option(
                    "--overlay",
                    type=click.Choice(["vxlan", "host-gw"]),
                    default="vxlan",
                    show_default=True,
                ),
                click.option(
                    "--node-cidr",
                    envvar="KNL_NODE_CIDR",
                    default=topo.DEFAULT_NODE_CIDR,
                    show_default=True,
                    help="Node network (host gets .1, control-plane .2, workers .3 ...).",
                ),
                prefix_option,
            ]
        ):
            fn = opt(fn)
        return fn

    return deco


def namespace_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "-n", "--namespace", default="default", show_default=True, help="API namespace of the pod."
    )(fn)


def fail(msg: str, code: int = 1) -> NoReturn:
    err_console.print("[bold red]error:[/] ", end="")
    err_console.print(msg, highlight=False, markup=False)
    sys.exit(code)


def attach(prefix: str) -> Lab:
    try:
        return Lab.attach(prefix)
    except LabError as e:
        fail(str(e))
        raise  # unreachable


def need_root() -> None:
    if os.geteuid() != 0:
        fail("the lab needs root (it creates network namespaces); run with sudo")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log lab internals.")
def main(verbose: bool) -> None:
    """kube-netlab: a Kubernetes cluster of network namespaces on this machine."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )


# ------------------------------------------------------------------------------------ up/down


def do_up(lab: Lab) -> None:
    progress = RichProgress(console)
    lab.progress = progress
    try:
        lab.up()
    except LabError as e:
        progress.close()
        err_console.print("[bold red]up failed:[/] ", end="")
        err_console.print(str(e), highlight=False, markup=False)
        err_console.print(
            f"logs: {lab.state_dir}/nodes/<node>/logs/*.log  ·  inspect: netns-lab.sh status "
            f"--prefix {lab.prefix}  ·  remove: netns-lab.sh down --prefix {lab.prefix}",
            highlight=False,
        )
        sys.exit(1)
    except KeyboardInterrupt:
        progress.close()
        err_console.print(
            f"[yellow]interrupted[/]: the lab is half-built; remove it with "
            f"netns-lab.sh down --prefix {lab.prefix}"
        )
        sys.exit(130)
    finally:
        progress.close()
    if lab.reused:
        console.print(f"[green]✓[/] lab {lab.prefix!r} is already up with this configuration")


@main.command()
@lab_shape_options(min_nodes=0)
def up(nodes: int, proxy_mode: str, overlay: str, node_cidr: str, prefix: str) -> None:
    """Create the lab: nodes, apiserver, agents, cluster DNS (reuses a lab already up)."""
    lab = build_lab(nodes, proxy_mode, overlay, node_cidr, prefix)
    print_usage(lab)


def build_lab(nodes: int, proxy_mode: str, overlay: str, node_cidr: str, prefix: str) -> Lab:
    """What ``up`` and ``demo`` share: check root, validate the shape, bring the lab up."""
    need_root()
    try:
        lab = Lab(
            prefix=prefix, nodes=nodes, proxy_mode=proxy_mode, overlay=overlay, node_cidr=node_cidr
        )
    except ValueError as e:
        fail(str(e))
    do_up(lab)
    return lab


def print_usage(lab: Lab) -> None:
    p = lab.plan
    console.print(
        f"\nlab [bold]{lab.prefix}[/]: {len(p.nodes)} nodes on {p.node_cidr}, "
        f"API {lab.apiserver_url}, proxy {lab.config.proxy_mode}, overlay {lab.config.overlay}"
    )
    console.print("use kubectl from this shell:")
    console.print(f"  [bold]export KUBECONFIG={lab.kubeconfig}[/]", highlight=False, soft_wrap=True)
    console.print("  kubectl get pods -A -o wide")
    console.print(
        f"and: netns-lab.sh status · apply -f FILE · exec POD -- CMD · curl POD URL · "
        f"dig POD NAME · logs COMPONENT --node NODE   (add --prefix {lab.prefix} if not default)"
    )
    console.print(f"take it down: [bold]netns-lab.sh down --prefix {lab.prefix}[/]")


@main.command()
@prefix_option
def down(prefix: str) -> None:
    """Remove the lab completely (processes, namespaces, links, files). Idempotent."""
    need_root()
    t0 = time.monotonic()
    try:
        topo.validate_prefix(prefix)
        with cleanup.lab_lock(prefix, remove=True):
            rep = cleanup.down(prefix, report=lambda m: console.print(f"  {m}"))
    except (ValueError, cleanup.LabBusy) as e:
        fail(str(e))
        return
    if rep.nothing_found:
        console.print(f"lab {prefix!r}: nothing to remove")
    else:
        console.print(
            f"[green]✓[/] lab {prefix!r} removed in {time.monotonic() - t0:.1f}s: "
            f"{len(rep.killed)} processes, {len(rep.netns)} namespaces, "
            f"{len(rep.links)} host link(s), {len(rep.paths)} paths"
        )
    for e in rep.errors:
        err_console.print(f"[yellow]warning:[/] {e}")
    left = cleanup.leftovers(prefix)
    if left:
        fail(f"still present after down: {', '.join(left)}")


# ------------------------------------------------------------------------------------ status


def _age(ts: str | None) -> str:
    return ts or "-"


@main.command()
@prefix_option
def status(prefix: str) -> None:
    """Nodes, pods, services, and the lab's agents with their health."""
    lab = attach(prefix)
    st = lab.state()
    console.print(
        f"lab [bold]{prefix}[/] ({st.phase if st else '?'}): API {lab.apiserver_url} · "
        f"KUBECONFIG={lab.kubeconfig}",
        highlight=False,
    )
    if st and st.error:
        console.print(f"[red]last error:[/] {st.error}", highlight=False)
    api_ok = ag.apiserver_healthy(lab.apiserver_url)
    if api_ok:
        nodes = lab.api.list("nodes").get("items") or []
        t = Table(title="Nodes")
        for c in ("NAME", "STATUS", "INTERNAL-IP", "POD-CIDR", "TAINTS"):
            t.add_column(c, no_wrap=True)
        order = {n: i for i, n in enumerate(lab.node_names)}
        for n in sorted(nodes, key=lambda n: order.get(n["metadata"]["name"], 999)):
            name = n["metadata"]["name"]
            addrs = (n.get("status") or {}).get("addresses") or []
            ips = [a["address"] for a in addrs if a.get("type") == "InternalIP"]
            taints = ",".join(
                f"{str(x.get('key')).rsplit('/', 1)[-1]}:{x.get('effect')}"
                for x in (n.get("spec") or {}).get("taints") or []
            )
            t.add_row(
                name,
                "[green]Ready[/]" if node_ready(n) else "[red]NotReady[/]",
                ",".join(ips),
                (n.get("spec") or {}).get("podCIDR") or "-",
                taints or "-",
            )
        console.print(t)
        pods = lab.api.list("pods").get("items") or []
        t = Table(title="Pods")
        for c in ("NAMESPACE", "NAME", "READY", "STATUS", "IP", "NODE"):
            t.add_column(c, no_wrap=c in ("READY", "IP", "STATUS"))
        for p in sorted(
            pods, key=lambda p: (p["metadata"].get("namespace", ""), p["metadata"]["name"])
        ):
            stt = p.get("status") or {}
            t.add_row(
                p["metadata"].get("namespace", ""),
                p["metadata"]["name"],
                "[green]yes[/]" if pod_ready(p) else "[red]no[/]",
                stt.get("phase", "?"),
                stt.get("podIP") or "-",
                (p.get("spec") or {}).get("nodeName") or "-",
            )
        console.print(t)
        svcs = lab.api.list("services").get("items") or []
        t = Table(title="Services")
        for c in ("NAMESPACE", "NAME", "TYPE", "CLUSTER-IP", "PORTS", "SELECTOR"):
            t.add_column(c, no_wrap=c in ("TYPE", "CLUSTER-IP"))
        for s in sorted(
            svcs, key=lambda s: (s["metadata"].get("namespace", ""), s["metadata"]["name"])
        ):
            spec = s.get("spec") or {}
            ports = ",".join(
                f"{pp.get('port')}{':' + str(pp['nodePort']) if pp.get('nodePort') else ''}/{pp.get('protocol', 'TCP')}"
                for pp in spec.get("ports") or []
            )
            sel = ",".join(f"{k}={v}" for k, v in (spec.get("selector") or {}).items())
            t.add_row(
                s["metadata"].get("namespace", ""),
                s["metadata"]["name"],
                spec.get("type", "ClusterIP"),
                spec.get("clusterIP") or "-",
                ports,
                sel or "-",
            )
        console.print(t)
    else:
        console.print(f"[red]the apiserver at {lab.apiserver_url} does not answer[/]")
    t = Table(title=f"Agents (logs: {lab.state_dir}/nodes/NODE/logs/AGENT.log)")
    for c in ("NODE", "AGENT", "RUNNING", "HEALTHY"):
        t.add_column(c, no_wrap=True)
    t.add_column("DETAIL")
    for a, h in lab.agent_health():
        healthy = "-" if h.healthy is None else ("[green]yes[/]" if h.healthy else "[red]no[/]")
        t.add_row(
            a.node,
            a.component,
            "[green]yes[/]" if h.running else "[red]no[/]",
            healthy,
            h.detail,
        )
    console.print(t)
    if st:
        missing = [c for c, ok in st.agents.items() if not ok]
        if missing:
            console.print(f"[dim]not available (package not runnable): {', '.join(missing)}[/]")


# ---------------------------------------------------------------------------------- using it


@main.command()
@click.option("-f", "--filename", "filename", required=True, help="Manifest file ('-' for stdin).")
@prefix_option
def apply(filename: str, prefix: str) -> None:
    """Create or update the objects of a manifest (Namespaces, Pods, Services ...)."""
    lab = attach(prefix)
    text = sys.stdin.read() if filename == "-" else None
    if text is None and not os.path.exists(filename):
        fail(f"no such file: {filename}")
    try:
        done = lab.apply(text if text is not None else filename)
    except LabError as e:
        fail(str(e))
        return
    for kind, ident, action in done:
        console.print(f"{kind.lower()}/{ident} {action}", highlight=False)


def _pod_run(lab: Lab, namespace: str, pod: str, argv: list[str]) -> int:
    """Run in the pod's namespace with the terminal attached; returns the exit code."""
    netns = lab.pod_ns(namespace, pod)
    if not topo.netns_exists(netns):
        fail(
            f"pod {namespace}/{pod} has no sandbox on this machine ({netns}); "
            f"check `netns-lab.sh status --prefix {lab.prefix}`"
        )
    env = ag.agent_env(lab.prefix)
    env.pop(cleanup.MARKER_ENV, None)
    try:
        return subprocess.run(["ip", "netns", "exec", netns, *argv], env=env).returncode
    except FileNotFoundError as e:
        fail(str(e))
        return 127


@main.command(name="exec", context_settings={"ignore_unknown_options": True})
@namespace_option
@prefix_option
@click.argument("pod")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(namespace: str, prefix: str, pod: str, command: tuple[str, ...]) -> None:
    """Run COMMAND inside POD's network namespace:  exec POD -- CMD ARGS..."""
    lab = attach(prefix)
    sys.exit(_pod_run(lab, namespace, pod, list(command)))


@main.command()
@namespace_option
@prefix_option
@click.argument("pod")
@click.argument("url")
def curl(namespace: str, prefix: str, pod: str, url: str) -> None:
    """curl URL from inside POD."""
    lab = attach(prefix)
    sys.exit(_pod_run(lab, namespace, pod, ["curl", "-sS", "--max-time", "5", url]))


@main.command()
@namespace_option
@prefix_option
@click.argument("pod")
@click.argument("name")
def dig(namespace: str, prefix: str, pod: str, name: str) -> None:
    """Resolve NAME from inside POD (the pod's resolv.conf: search list, ndots:5)."""
    lab = attach(prefix)
    # -q: the name is a name even when it spells a record type ("srv", "a", "ns")
    argv = ["dig", "+search", "+time=2", "+tries=2", "+noall", "+answer", "+comments", "-q", name]
    sys.exit(_pod_run(lab, namespace, pod, argv))


@main.command()
@click.argument("component")
@click.option("--node", default=None, help="Node of the agent (default control-plane).")
@namespace_option
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.option(
    "--tail", "tail_lines", default=200, show_default=True, help="Lines to show (0: all)."
)
@prefix_option
def logs(
    component: str, node: str | None, namespace: str, follow: bool, tail_lines: int, prefix: str
) -> None:
    """Log of an agent (apiserver, scheduler, kubelet, overlay, kubeproxy) or of a pod."""
    lab = attach(prefix)
    if component in ag.MODULES and component != "clusterdns":
        node = node or topo.CONTROL_PLANE
        try:
            lab.plan.node(node)
        except KeyError as e:
            fail(str(e.args[0]))
        path = ag.log_path(prefix, node, component)
    else:
        pod_node = node
        if pod_node is None:
            try:
                pod_node = (lab.api.get("pods", component, namespace).get("spec") or {}).get(
                    "nodeName"
                )
            except Exception:
                pod_node = None
        if not pod_node:
            fail(
                f"{component!r} is neither an agent ({', '.join(ag.MODULES)}) nor a scheduled pod "
                f"in namespace {namespace!r}"
            )
        path = os.path.join(ag.node_dir(prefix, pod_node), "pods", f"{namespace}_{component}.log")
    if not os.path.exists(path):
        fail(f"no log at {path}")
    argv = ["tail", "-n", str(tail_lines) if tail_lines else "+1"]
    if follow:
        argv.append("-F")
    try:
        sys.exit(subprocess.run([*argv, path]).returncode)
    except KeyboardInterrupt:
        sys.exit(0)


# ------------------------------------------------------------------------- demo, bench, test


@main.command()
@lab_shape_options(min_nodes=1)
def demo(nodes: int, proxy_mode: str, overlay: str, node_cidr: str, prefix: str) -> None:
    """Up, deploy examples/web.yaml, show load-balancing, DNS and NodePort; leave the lab up."""
    from .demo import run_demo

    lab = build_lab(nodes, proxy_mode, overlay, node_cidr, prefix)
    try:
        run_demo(lab, console)
    except LabError as e:
        fail(f"{e}\n(the lab stays up for inspection: netns-lab.sh status --prefix {prefix})")
    print_usage(lab)


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def bench(ctx: click.Context) -> None:
    """Benchmarks (lab.bench if present; lab.bench_up for lab up/down times)."""
    mod = "lab.bench" if ag._module_exists("lab.bench") else "lab.bench_up"
    sys.exit(subprocess.run([sys.executable, "-m", mod, *ctx.args], cwd=REPO).returncode)


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def test(ctx: click.Context) -> None:
    """Run the test suite (pytest; extra arguments are passed on), with the leak check."""
    env = dict(os.environ, KNL_LEAK_CHECK="1")
    args = ctx.args or ["tests"]
    sys.exit(subprocess.run([sys.executable, "-m", "pytest", *args], cwd=REPO, env=env).returncode)


if __name__ == "__main__":  # pragma: no cover
    main()
