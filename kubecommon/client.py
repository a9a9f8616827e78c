"""Kubernetes REST client: the one place that knows URLs, auth and the watch wire format.

Works against apiserver_stub and against a real kube-apiserver: the server comes from
``--master URL`` or a kubeconfig (server, bearer token, client certificate, CA), exactly as
kube-proxy and flanneld take it. ``ApiClient`` is asyncio (aiohttp) for the agents;
``SyncApiClient`` is a blocking twin (urllib) for CLIs, tests and benchmarks.
"""

from __future__ import annotations

import json
import os
import ssl
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import yaml

# plural -> (API prefix, namespaced)
RESOURCES: dict[str, tuple[str, bool]] = {
    "namespaces": ("/api/v1", False),
    "nodes": ("/api/v1", False),
    "pods": ("/api/v1", True),
    "services": ("/api/v1", True),
    "endpoints": ("/api/v1", True),
    "events": ("/api/v1", True),
    "endpointslices": ("/apis/discovery.k8s.io/v1", True),
}

PATCH_TYPES = {
    "merge": "application/merge-patch+json",
    "strategic": "application/strategic-merge-patch+json",
    "json": "application/json-patch+json",
}


class ApiError(Exception):
    """A Kubernetes ``Status`` failure (or a transport failure, code 0)."""

    def __init__(
        self, code: int, reason: str, message: str, status: Mapping[str, Any] | None = None
    ):
        super().__init__(f"{code} {reason}: {message}")
        self.code = code
        self.reason = reason
        self.message = message
        self.status = dict(status or {})


def resource_path(
    plural: str,
    namespace: str | None = None,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    """``/api/v1/namespaces/NS/services/NAME[/status]`` and friends."""
    try:
        prefix, namespaced = RESOURCES[plural]
    except KeyError:
        raise ValueError(
            f"unknown resource {plural!r}; known: {', '.join(sorted(RESOURCES))}"
        ) from None
    parts = [prefix]
    if namespaced and namespace:
        parts.append(f"namespaces/{urllib.parse.quote(namespace, safe='')}")
    parts.append(plural)
    if name:
        parts.append(urllib.parse.quote(name, safe=""))
        if subresource:
            parts.append(subresource)
    return "/".join(p.strip("/") if i else p.rstrip("/") for i, p in enumerate(parts))


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """Where the API is and how to authenticate to it."""

    server: str
    token: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.server.startswith("https"):
            return None
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.cert_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


def _materialize(data_b64: str | None, suffix: str) -> str | None:
    """kubeconfig ``*-data`` fields are base64 PEM; ssl wants files."""
    if not data_b64:
        return None
    import base64

    fd, path = tempfile.mkstemp(prefix="knl-kubeconfig-", suffix=suffix)
    with os.fdopen(fd, "wb") as f:
        f.write(base64.b64decode(data_b64))
    return path


def load_config(
    master: str | None = None, kubeconfig: str | None = None, token_file: str | None = None
) -> ClusterConfig:
    """Resolve the API endpoint: ``--master`` wins, then ``--kubeconfig``, then $KUBECONFIG."""
    token = None
    if token_file:
        with open(token_file, encoding="utf-8") as f:
            token = f.read().strip()
    if master:
        return ClusterConfig(server=master.rstrip("/"), token=token)
    path = kubeconfig or os.environ.get("KUBECONFIG")
    if not path:
        raise ValueError(
            "no API server given: pass --master URL or --kubeconfig FILE (or set KUBECONFIG)"
        )
    with open(path, encoding="utf-8") as f:
        cfg = yaml.safe_load(f) or {}
    ctx_name = cfg.get("current-context")
    ctxs = {c["name"]: c.get("context", {}) for c in cfg.get("contexts") or []}
    ctx = ctxs.get(ctx_name) or (next(iter(ctxs.values())) if ctxs else {})
    clusters = {c["name"]: c.get("cluster", {}) for c in cfg.get("clusters") or []}
    users = {u["name"]: u.get("user", {}) or {} for u in cfg.get("users") or []}
    cluster = clusters.get(ctx.get("cluster")) or (
        next(iter(clusters.values())) if clusters else None
    )
    if not cluster or "server" not in cluster:
        raise ValueError(f"kubeconfig {path}: no cluster with a server for context {ctx_name!r}")
    user = users.get(ctx.get("user"), {})
    if token is None:
        token = user.get("token")
        if not token and user.get("tokenFile"):
            with open(user["tokenFile"], encoding="utf-8") as f:
                token = f.read().strip()
    return ClusterConfig(
        server=cluster["server"].rstrip("/"),
        token=token,
        ca_file=cluster.get("certificate-authority")
        or _materialize(cluster.get("certificate-authority-data"), ".crt"),
        cert_file=user.get("client-certificate")
        or _materialize(user.get("client-certificate-data"), ".crt"),
        key_file=user.get("client-key") or _materialize(user.get("client-key-data"), ".key"),
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
    )


def _error_from(code: int, body: bytes) -> ApiError:
    try:
        st = json.loads(body)
        if isinstance(st, dict) and st.get("kind") == "Status":
            return ApiError(code, st.get("reason", ""), st.get("message", ""), st)
    except ValueError:
        pass
    return ApiError(code, "Unknown", body[:200].decode("utf-8", "replace"))


def _query(params: Mapping[str, Any] | None) -> str:
    if not params:
        return ""
    clean = {
        k: ("true" if v is True else "false" if v is False else v)
        for k, v in params.items()
        if v is not None
    }
    return "?" + urllib.parse.urlencode(clean) if clean else ""


class _Verbs:
    """The REST verbs, written once over ``self.request``.

    Each returns what ``request`` returns: a coroutine for :class:`ApiClient` (so callers
    ``await client.get(...)``), the decoded object for :class:`SyncApiClient`.
    """

    def request(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        raise NotImplementedError

    def get(self, plural: str, name: str, namespace: str | None = None) -> Any:
        return self.request("GET", resource_path(plural, namespace, name))

    def list(self, plural: str, namespace: str | None = None, **params: Any) -> Any:
        return self.request("GET", resource_path(plural, namespace), params=params)

    def create(self, plural: str, obj: dict, namespace: str | None = None) -> Any:
        ns = namespace or obj.get("metadata", {}).get("namespace")
        return self.request("POST", resource_path(plural, ns), obj)

    def replace(self, plural: str, obj: dict, subresource: str | None = None) -> Any:
        md = obj["metadata"]
        return self.request(
            "PUT", resource_path(plural, md.get("namespace"), md["name"], subresource), obj
        )

    def patch(
        self,
        plural: str,
        name: str,
        patch: Any,
        namespace: str | None = None,
        patch_type: str = "merge",
        subresource: str | None = None,
    ) -> Any:
        return self.request(
            "PATCH",
            resource_path(plural, namespace, name, subresource),
            patch,
            content_type=PATCH_TYPES[patch_type],
        )

    def delete(self, plural: str, name: str, namespace: str | None = None) -> Any:
        return self.request("DELETE", resource_path(plural, namespace, name))


def _headers(config: ClusterConfig, user_agent: str) -> dict[str, str]:
    h = {"Accept": "application/json", "User-Agent": user_agent}
    if config.token:
        h["Authorization"] = f"Bearer {config.token}"
    return h


class ApiClient(_Verbs):
    """asyncio client. One ``aiohttp.ClientSession`` per client; close it with ``await close()``."""

    def __init__(self, config: ClusterConfig, user_agent: str = "kube-netlab"):
        self.config = config
        self._headers = _headers(config, user_agent)
        self._session: aiohttp.ClientSession | None = None

    def _s(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                connector=aiohttp.TCPConnector(ssl=self.config.ssl_context() or False, limit=64),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: Mapping[str, Any] | None = None,
        content_type: str = "application/json",
        timeout: float = 30,
    ) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": content_type} if data is not None else None
        try:
            async with self._s().request(
                method,
                self.config.server + path + _query(params),
                data=data,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as r:
                raw = await r.read()
                if r.status >= 400:
                    raise _error_from(r.status, raw)
                return json.loads(raw) if raw else None
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            raise ApiError(0, "Unreachable", f"{method} {path}: {e!r}") from e

    async def watch(
        self,
        plural: str,
        namespace: str | None = None,
        resource_version: str | None = None,
        timeout_seconds: int = 300,
        **params: Any,
    ) -> AsyncIterator[tuple[str, dict]]:
        """Yield ``(type, object)`` events; returns when the server ends the stream."""
        q = dict(
            params,
            watch="true",
            allowWatchBookmarks="true",
            timeoutSeconds=timeout_seconds,
            resourceVersion=resource_version,
        )
        url = self.config.server + resource_path(plural, namespace) + _query(q)
        try:
            async with self._s().get(
                url, timeout=aiohttp.ClientTimeout(total=None, sock_read=timeout_seconds + 30)
            ) as r:
                if r.status >= 400:
                    raise _error_from(r.status, await r.read())
                buf = b""
                async for chunk in r.content.iter_any():
                    buf += chunk
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        if line.strip():
                            ev = json.loads(line)
                            yield ev["type"], ev["object"]
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            raise ApiError(0, "Unreachable", f"watch {plural}: {e!r}") from e


class SyncApiClient(_Verbs):
    """Blocking twin of :class:`ApiClient` for CLIs, tests and benchmarks."""

    def __init__(self, config: ClusterConfig | str, user_agent: str = "kube-netlab"):
        self.config = (
            ClusterConfig(server=config.rstrip("/")) if isinstance(config, str) else config
        )
        self._headers = _headers(self.config, user_agent)
        self._ctx = self.config.ssl_context()

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: Mapping[str, Any] | None = None,
        content_type: str = "application/json",
        timeout: float = 30,
    ) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = dict(self._headers)
        if data is not None:
            headers["Content-Type"] = content_type
        req = urllib.request.Request(
            self.config.server + path + _query(params), data=data, headers=headers, method=method
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self._ctx) as r:
                raw = r.read()
                return json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            raise _error_from(e.code, e.read()) from None
        except (urllib.error.URLError, OSError) as e:
            raise ApiError(0, "Unreachable", f"{method} {path}: {e}") from e
