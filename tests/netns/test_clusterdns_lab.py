"""clusterdns in the lab: pods resolve services through kube-dns (10.96.0.10) and their
resolv.conf search path, over UDP and TCP, SRV and PTR, and names outside the cluster are
forwarded to a fake upstream.

The lab runs clusterdns as Pod kube-system/coredns with ``--upstream 127.0.0.1:5353`` (the
pod's own loopback): this test starts ``clusterdns.fakeupstream`` on that address inside the
coredns pod's network namespace, so no query ever leaves the lab.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.netns

ZONE = "cluster.local"


def _manifest(ns: str) -> str:
    return f"""
apiVersion: v1
kind: Pod
metadata: {{name: web-0, namespace: {ns}, labels: {{app: web}}}}
spec: {{containers: [{{name: web, image: kube-netlab/workload}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {ns}}}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: 8080, protocol: TCP}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: {ns}, labels: {{app: client}}}}
spec: {{containers: [{{name: client, image: kube-netlab/workload}}]}}
"""


@contextlib.contextmanager
def fake_upstream_in_dns_pod(lab):
    netns = lab.pod_ns("kube-system", "coredns")
    p = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            netns,
            sys.executable,
            "-m",
            "clusterdns.fakeupstream",
            "--listen",
            "127.0.0.1",
            "--port",
            "5353",
            "--answer",
            "192.0.2.53",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.0)
        yield
    finally:
        p.terminate()
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _sh(lab, ns: str, argv: list[str], timeout: float = 15) -> str:
    r = lab.pod_exec(ns, "client", argv, timeout=timeout)
    assert r.returncode == 0, f"{argv}: rc={r.returncode} {r.stdout} {r.stderr}"
    return r.stdout.strip()


def _retry(fn, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_pods_resolve_services_via_cluster_dns(lab, api_namespace):
    ns = api_namespace
    lab.apply(_manifest(ns))
    lab.wait_ready(ns, "app=web", 1, timeout=60)
    lab.wait_ready(ns, "app=client", 1, timeout=60)
    lab.wait_ready("kube-system", "k8s-app=kube-dns", 1, timeout=60)
    cip = lab.api.get("services", "web", ns)["spec"]["clusterIP"]

    # curl through the search path: web.<ns> and plain web
    for url in (f"http://web.{ns}", "http://web"):
        out = _retry(lambda u=url: _sh(lab, ns, ["curl", "-s", "--max-time", "5", u]))
        assert "pod=web-0" in out, out

    # dig +search (resolv.conf search list), over UDP and TCP
    assert _sh(lab, ns, ["dig", "+search", "+short", "web"]) == cip
    assert _sh(lab, ns, ["dig", "+tcp", "+short", f"web.{ns}.svc.{ZONE}"]) == cip

    # SRV for the named port, PTR for the cluster IP
    srv = _sh(lab, ns, ["dig", "+short", "SRV", f"_http._tcp.web.{ns}.svc.{ZONE}"])
    assert srv.split()[2:] == ["80", f"web.{ns}.svc.{ZONE}."], srv
    ptr = _sh(lab, ns, ["dig", "+short", "-x", cip])
    assert ptr == f"web.{ns}.svc.{ZONE}.", ptr

    # a name outside the cluster zone goes to the upstream
    with fake_upstream_in_dns_pod(lab):
        out = _retry(lambda: _check_a(lab, ns, "www.example.test", "192.0.2.53"))
        assert out == "192.0.2.53"


def _check_a(lab, ns: str, name: str, want: str) -> str:
    out = _sh(lab, ns, ["dig", "+short", "+tries=1", "+time=2", name])
    assert out == want, out
    return out
