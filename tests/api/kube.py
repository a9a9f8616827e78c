"""A tiny synchronous Kubernetes REST client for the API tests (urllib + http.client)."""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass
class Reply:
    status: int
    body: Any
    headers: Any

    @property
    def reason(self) -> str:
        return self.body.get("reason", "") if isinstance(self.body, dict) else ""


class Api:
    def __init__(self, base: str, token: str | None = None):
        self.base = base
        self.token = token

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        ctype: str = "application/json",
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> Reply:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        h = {"Content-Type": ctype, **(headers or {})}
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                status, payload, hdrs = r.status, r.read(), r.headers
        except urllib.error.HTTPError as e:
            status, payload, hdrs = e.code, e.read(), e.headers
        try:
            parsed: Any = json.loads(payload) if payload else None
        except ValueError:
            parsed = payload.decode(errors="replace")
        return Reply(status, parsed, hdrs)

    def get(self, path: str, **kw: Any) -> Reply:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any, **kw: Any) -> Reply:
        return self.request("POST", path, body, **kw)

    def put(self, path: str, body: Any, **kw: Any) -> Reply:
        return self.request("PUT", path, body, **kw)

    def patch(self, path: str, body: Any, kind: str = "merge", **kw: Any) -> Reply:
        ctype = {
            "merge": "application/merge-patch+json",
            "strategic": "application/strategic-merge-patch+json",
            "json": "application/json-patch+json",
        }[kind]
        return self.request("PATCH", path, body, ctype=ctype, **kw)

    def delete(self, path: str, **kw: Any) -> Reply:
        return self.request("DELETE", path, **kw)

    def ok(self, r: Reply, *codes: int) -> Any:
        assert r.status in (codes or (200, 201)), (r.status, r.body)
        return r.body

    def watch(
        self, path: str, params: dict[str, str] | None = None, timeout: float = 10.0
    ) -> Watch:
        return Watch(self, path, params or {}, timeout)

    def wait_for(self, fn: Any, timeout: float = 5.0, interval: float = 0.05) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            v = fn()
            if v:
                return v
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout}s; last value {v!r}")
            time.sleep(interval)


class Watch:
    """A streaming watch; iterate to get (type, object) pairs."""

    def __init__(self, api: Api, path: str, params: dict[str, str], timeout: float):
        u = urllib.parse.urlparse(api.base)
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
        q = urllib.parse.urlencode({"watch": "true", **params})
        headers = {"Authorization": f"Bearer {api.token}"} if api.token else {}
        self.conn.request("GET", f"{path}?{q}", headers=headers)
        self.resp = self.conn.getresponse()
        self.status = self.resp.status

    def next(self) -> tuple[str, dict[str, Any]] | None:
        line = self.resp.readline()
        if not line:
            return None
        ev = json.loads(line)
        return ev["type"], ev["object"]

    def __iter__(self) -> Iterator[tuple[str, dict[str, Any]]]:
        while True:
            ev = self.next()
            if ev is None:
                return
            yield ev

    def take(self, n: int) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for _ in range(n):
            ev = self.next()
            assert ev is not None, f"watch ended after {out}"
            out.append(ev)
        return out

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *a: Any) -> None:
        self.close()


def pod(
    name: str,
    labels: dict[str, str] | None = None,
    ports: list[dict[str, Any]] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    c: dict[str, Any] = {"name": "app", "image": "busybox:1.36"}
    if ports:
        c["ports"] = ports
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"containers": [c], **spec},
    }


def service(
    name: str,
    selector: dict[str, str] | None = None,
    ports: list[dict[str, Any]] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    s: dict[str, Any] = {"ports": ports if ports is not None else [{"port": 80}], **spec}
    if selector is not None:
        s["selector"] = selector
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": s}


def make_running(
    api: Api, ns: str, name: str, ip: str, ready: bool = True, node: str | None = None
) -> Any:
    """Play the kubelet: report the pod running with an IP and a Ready condition."""
    status = {
        "status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        }
    }
    return api.ok(api.patch(f"/api/v1/namespaces/{ns}/pods/{name}/status", status, "strategic"))
