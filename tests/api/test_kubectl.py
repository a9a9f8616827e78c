"""Drive the real kubectl against the stub: apply, get, describe, get -w, delete.

The test plays the kubelet by patching pod status (podIP + Ready) through the API, then
checks what a user sees in kubectl's output.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from apiserver_stub.testing import run_apiserver

from .kube import Api, make_running

KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"
pytestmark = pytest.mark.skipif(not os.path.exists(KUBECTL), reason="kubectl not installed")

MANIFEST = """\
apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: shop, labels: {app: web}}
spec:
  nodeName: node-a
  containers:
  - name: web
    image: nginx:1.27
    ports: [{name: http, containerPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec:
  nodeName: node-b
  containers:
  - name: web
    image: nginx:1.27
    ports: [{name: http, containerPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-2, namespace: shop, labels: {app: web}}
spec:
  nodeName: node-b
  containers:
  - name: web
    image: nginx:1.27
    ports: [{name: http, containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http}
---
apiVersion: v1
kind: Service
metadata: {name: web-np, namespace: shop}
spec:
  type: NodePort
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080, nodePort: 30080}
"""

IPS = {"web-0": "10.244.1.10", "web-1": "10.244.2.11", "web-2": "10.244.2.12"}


class Kubectl:
    def __init__(self, kubeconfig: Path, home: Path):
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig), "HOME": str(home)}

    def __call__(self, *args: str, check: bool = True) -> str:
        p = subprocess.run(
            [KUBECTL, *args], env=self.env, capture_output=True, text=True, timeout=60
        )
        if check:
            assert p.returncode == 0, f"kubectl {' '.join(args)} failed: {p.stderr}"
        return p.stdout + p.stderr

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [KUBECTL, *args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Api, Kubectl, Path]]:
    tmp = tmp_path_factory.mktemp("kubectl")
    with run_apiserver() as url:
        cfg = tmp / "kubeconfig"
        cfg.write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters: [{{name: stub, cluster: {{server: '{url}'}}}}]\n"
            "users: [{name: me, user: {}}]\n"
            "contexts: [{name: stub, context: {cluster: stub, user: me}}]\n"
            "current-context: stub\n"
        )
        manifest = tmp / "shop.yaml"
        manifest.write_text(MANIFEST)
        yield Api(url), Kubectl(cfg, tmp), manifest


def _rows(out: str) -> list[list[str]]:
    return [re.split(r"\s{2,}", line.strip()) for line in out.strip().splitlines()]


def test_apply_then_get_describe_watch_delete(cluster: tuple[Api, Kubectl, Path]) -> None:
    api, kubectl, manifest = cluster
    out = kubectl("apply", "-f", str(manifest))
    for line in (
        "namespace/shop created",
        "pod/web-0 created",
        "pod/web-2 created",
        "service/web created",
        "service/web-np created",
    ):
        assert line in out, out
    # re-applying is a no-op, as with a real cluster
    assert "service/web unchanged" in kubectl("apply", "-f", str(manifest))

    for name, ip in IPS.items():  # the kubelet's part
        make_running(api, "shop", name, ip)
    api.wait_for(
        lambda: (
            len(
                api.ok(api.get("/api/v1/namespaces/shop/endpoints/web"))
                .get("subsets", [{}])[0]
                .get("addresses", [])
            )
            == 3
        )
    )

    out = kubectl("get", "svc,ep,pods", "-A")
    assert re.search(
        r"shop\s+service/web\s+ClusterIP\s+10\.\d+\.\d+\.\d+\s+<none>\s+80/TCP\s+\d+s", out
    ), out
    assert re.search(r"shop\s+service/web-np\s+NodePort\s+10\.\S+\s+<none>\s+80:30080/TCP", out), (
        out
    )
    assert re.search(r"default\s+service/kubernetes\s+ClusterIP\s+10\.96\.0\.1\s", out), out
    assert re.search(
        r"shop\s+endpoints/web\s+10\.244\.1\.10:8080,10\.244\.2\.11:8080,10\.244\.2\.12:8080\s", out
    ), out
    for name in IPS:
        assert re.search(rf"shop\s+pod/{name}\s+1/1\s+Running\s+0\s+\d+s", out), out

    out = kubectl("get", "pods", "-n", "shop", "-o", "wide")
    assert re.search(r"web-1\s+1/1\s+Running\s+0\s+\S+\s+10\.244\.2\.11\s+node-b", out), out

    out = kubectl("get", "endpointslices", "-n", "shop")
    rows = _rows(out)
    assert rows[0] == ["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"]
    web = [r for r in rows[1:] if r[0].startswith("web-") and not r[0].startswith("web-np-")]
    assert web and web[0][1:4] == ["IPv4", "8080", "10.244.1.10,10.244.2.11,10.244.2.12"], out

    out = kubectl("describe", "svc", "-n", "shop", "web-np")
    assert re.search(r"Type:\s+NodePort", out), out
    assert re.search(r"NodePort:\s+http\s+30080/TCP", out), out
    assert re.search(
        r"Endpoints:\s+10\.244\.1\.10:8080,10\.244\.2\.11:8080,10\.244\.2\.12:8080", out
    ), out
    assert re.search(r"Selector:\s+app=web", out), out

    out = kubectl("explain", "svc.spec.clusterIP")
    assert "clusterIP" in out and "Service" in out

    # kubectl get -w sees web-2 become not ready
    watcher = kubectl.popen("get", "pods", "-n", "shop", "-w")
    try:
        _read_until(
            watcher, lambda text: re.search(r"web-2\s+1/1\s+Running\s+0\s+\S+\n", text) is not None
        )
        make_running(api, "shop", "web-2", IPS["web-2"], ready=False)
        _read_until(watcher, lambda text: re.search(r"web-2\s+0/1\s+Running", text) is not None)
    finally:
        watcher.terminate()
        watcher.wait(timeout=10)
        if watcher.stdout:
            watcher.stdout.close()
    api.wait_for(lambda: "10.244.2.12:8080" not in kubectl("get", "ep", "-n", "shop", "web"))

    out = kubectl("delete", "-f", str(manifest))
    assert 'namespace "shop" deleted' in out and 'service "web-np" deleted' in out, out
    out = kubectl("get", "ns", "shop", check=False)
    assert 'namespaces "shop" not found' in out
    # the NodePort went back to the pool
    api.ok(
        api.post(
            "/api/v1/namespaces/default/services",
            {
                "metadata": {"name": "again"},
                "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]},
            },
        )
    )


def _read_until(proc: subprocess.Popen[str], done, timeout: float = 15.0) -> str:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    buf = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            chunk = os.read(fd, 65536).decode()
            if not chunk:
                break
            buf += chunk
            if done(buf):
                return buf
    raise AssertionError(f"kubectl output never matched; got:\n{buf}")


def test_kubectl_create_sends_protobuf_bodies_that_work(cluster: tuple[Api, Kubectl, Path]) -> None:
    api, kubectl, _ = cluster
    assert "namespace/pb created" in kubectl("create", "namespace", "pb")
    assert "service/edge created" in kubectl(
        "create", "service", "nodeport", "edge", "--tcp=80:8080", "--node-port=30999", "-n", "pb"
    )
    out = kubectl("get", "svc", "-n", "pb", "edge")
    assert re.search(r"edge\s+NodePort\s+10\.\S+\s+<none>\s+80:30999/TCP", out), out
    svc = api.ok(api.get("/api/v1/namespaces/pb/services/edge"))
    assert svc["spec"]["ports"][0]["targetPort"] == 8080 and svc["spec"]["selector"] == {
        "app": "edge"
    }
    assert 'namespace "pb" deleted' in kubectl("delete", "namespace", "pb")
