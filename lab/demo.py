"""The demo: deploy examples/web.yaml into a lab that is up and show what the cluster does.

Load-balancing (20 curls of the ClusterIP from a pod on another node, counted by answering
pod), cluster DNS (dig of the service name, when clusterdns runs), and the NodePort from the
host. Each step says plainly when the agent it needs is not available yet.
"""

from __future__ import annotations

import collections
import os
import re
import urllib.request

from rich.console import Console
from rich.table import Table

from . import agents as ag
from .cluster import Lab, LabError

WEB_YAML = os.path.join(ag.REPO, "examples", "web.yaml")
NAMESPACE = "demo"
CLIENT = "client"
ANSWER_RE = re.compile(r"pod=(\S+)")


def client_pod(node: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": CLIENT, "namespace": NAMESPACE, "labels": {"app": "demo-client"}},
        "spec": {"nodeName": node, "containers": [{"name": "client", "image": "kube-netlab/echo"}]},
    }


def pick_client_node(lab: Lab, web_pods: list[dict]) -> str:
    """A worker with the fewest web pods, so most answers cross nodes."""
    count = collections.Counter(p["spec"].get("nodeName") for p in web_pods)
    workers = lab.worker_names or lab.node_names
    return min(workers, key=lambda n: (count.get(n, 0), n))


def run_demo(lab: Lab, console: Console, requests: int = 20) -> dict:
    """Returns the figures it printed (answers per pod, dns answer, nodeport answer)."""
    result: dict = {}
    st = lab.state()
    runnable = st.agents if st else {}
    if not runnable.get("kubelet"):
        raise LabError("the kubelet is not available yet: pods cannot run, nothing to demo")
    console.rule("deploying examples/web.yaml")
    for kind, ident, action in lab.apply(WEB_YAML):
        console.print(f"  {kind.lower()}/{ident} {action}", highlight=False)
    pods = lab.wait_ready(NAMESPACE, "app=web", 3, timeout=60)
    node_of = {p["metadata"]["name"]: p["spec"].get("nodeName", "?") for p in pods}
    ip_of = {p["metadata"]["name"]: p["status"].get("podIP", "?") for p in pods}
    console.print(
        "[green]✓[/] 3 web pods Ready: "
        + ", ".join(f"{n} on {node_of[n]} ({ip_of[n]})" for n in sorted(node_of))
    )
    cnode = pick_client_node(lab, pods)
    lab.apply_objects([client_pod(cnode)])
    lab.wait_ready(NAMESPACE, "app=demo-client", 1, timeout=30)
    svc = lab.api.get("services", "web", NAMESPACE)
    cip = svc["spec"]["clusterIP"]

    console.rule(f"ClusterIP {cip}:80 from pod {NAMESPACE}/{CLIENT} on {cnode}")
    if not runnable.get("kubeproxy"):
        console.print("[yellow]kube-proxy is not available yet: ClusterIPs do not work[/]")
    else:
        counts: collections.Counter[str] = collections.Counter()
        failures = 0
        for _ in range(requests):
            r = lab.pod_exec(
                NAMESPACE, CLIENT, ["curl", "-sS", "--max-time", "3", f"http://{cip}/"], timeout=10
            )
            m = ANSWER_RE.search(r.stdout)
            if r.returncode == 0 and m:
                counts[m.group(1)] += 1
            else:
                failures += 1
        t = Table(title=f"{requests} requests to http://{cip}/ (service demo/web)")
        for c in ("POD", "NODE", "POD IP", "ANSWERS"):
            t.add_column(c)
        for name in sorted(node_of):
            t.add_row(name, node_of[name], ip_of[name], str(counts.get(name, 0)))
        if failures:
            t.add_row("[red]failed[/]", "", "", str(failures))
        console.print(t)
        result["answers"] = dict(counts)
        result["failures"] = failures

    console.rule("cluster DNS")
    dns_ready = False
    if runnable.get("clusterdns") and runnable.get("kubeproxy"):
        try:
            dns_ready = bool(lab.wait_ready("kube-system", "k8s-app=kube-dns", 1, timeout=5))
        except LabError:
            dns_ready = False
    if not dns_ready:
        console.print(
            "[yellow]DNS is not available yet[/] (needs the clusterdns pod and kube-proxy for "
            "the kube-dns ClusterIP)"
        )
    else:
        for name in ("web", "web.demo.svc.cluster.local"):
            r = lab.pod_exec(
                NAMESPACE,
                CLIENT,
                ["dig", "+search", "+short", "+time=2", "+tries=1", "-q", name],
                timeout=20,
            )
            answer = r.stdout.strip() or r.stderr.strip() or "(no answer)"
            console.print(f"  dig {name} -> {answer}", highlight=False)
            result.setdefault("dns", {})[name] = answer

    console.rule("NodePort from the host")
    np = lab.api.get("services", "web-nodeport", NAMESPACE)
    node_port = next((p.get("nodePort") for p in np["spec"].get("ports") or []), None)
    if not runnable.get("kubeproxy") or not node_port:
        console.print("[yellow]NodePort not available yet (no kube-proxy)[/]")
    else:
        node = lab.worker_names[0] if lab.worker_names else lab.node_names[0]
        url = f"http://{lab.node_ip(node)}:{node_port}/"
        try:
            with urllib.request.urlopen(url, timeout=3) as resp:
                body = resp.read().decode().strip()
        except OSError as e:
            body = f"failed: {e}"
        console.print(f"  curl {url} -> {body}", highlight=False)
        result["nodeport"] = body
    return result
