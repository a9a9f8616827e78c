"""HTTP layer: aiohttp routes mapping the Kubernetes REST protocol onto the registry/store.

Paths are parsed by hand (``/api/v1/namespaces/ns/pods/name/status`` is ambiguous for a
router), requests are authenticated (optional bearer token), bodies decoded (JSON or YAML,
3 MiB cap), responses negotiated (JSON, YAML, meta.k8s.io Table; protobuf-only -> 406).
Every error leaves as a ``Status`` object. Writes return only after ``store.sync()``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import yaml
from aiohttp import web

from . import discovery, openapi, protobuf, tables
from .allocators import ServiceAllocations
from .controllers import Controllers
from .registry import Registry
from .resources import ENDPOINTS, ENDPOINTSLICES, NAMESPACES, SERVICES, Resource, lookup
from .selectors import FieldSelector, LabelSelector, parse_fields, parse_labels
from .server_info import VERSION
from .status import ApiError, bad_request, expired, method_not_allowed, not_found
from .store import Entry, Store
from .watch import WatchStream, error_line, serve

log = logging.getLogger("apiserver_stub")

MAX_BODY = 3 * 1024 * 1024


@dataclass(slots=True)
class Config:
    bind: str = "127.0.0.1"
    port: int = 6443
    data_dir: str | None = None
    service_cidr: str = "10.96.0.0/12"
    cluster_cidr: str = "10.244.0.0/16"
    node_cidr_mask: int = 24
    node_port_range: tuple[int, int] = (30000, 32767)
    tokens: set[str] = field(default_factory=set)
    history: int = 20000
    fsync: bool = False
    bookmark_interval: float = 60.0
    pod_grace_cap: float = 0.0
    default_watch_timeout: float = 1800.0


# ---- request parsing ---------------------------------------------------------------------------


@dataclass(slots=True)
class Target:
    res: Resource
    ns: str | None  # None: cluster-wide (all namespaces, or a cluster-scoped kind)
    name: str | None
    sub: str | None
    watch_path: bool = False


def parse_path(group: str, parts: list[str]) -> Target:
    """``parts`` after /api or /apis/<group>: [version, ...]."""
    if not parts:
        raise not_found("", "", "")
    version, rest = parts[0], parts[1:]
    watch_path = False
    if rest and rest[0] == "watch":
        watch_path, rest = True, rest[1:]
    if not rest:
        raise not_found("", "", "")
    if rest[0] == "namespaces" and len(rest) >= 3:
        res = lookup(group, version, rest[2])
        if res is not None and res.namespaced:
            if len(rest) > 5:
                raise _path_not_found()
            return Target(res, rest[1], _get(rest, 3), _get(rest, 4), watch_path)
    res = lookup(group, version, rest[0])
    if res is None or len(rest) > 3:
        raise _path_not_found()
    return Target(res, None if res.namespaced else "", _get(rest, 1), _get(rest, 2), watch_path)


def _get(parts: list[str], i: int) -> str | None:
    return parts[i] if len(parts) > i and parts[i] != "" else None


def _path_not_found() -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource")


def _accepts(request: web.Request) -> tuple[str, str]:
    """-> (format, table version); format is json, yaml or table. Raises 406."""
    header = request.headers.get("Accept", "")
    if not header.strip():
        return "json", ""
    for part in header.split(","):
        bits = [b.strip() for b in part.split(";")]
        mtype = bits[0].lower()
        params = {}
        for b in bits[1:]:
            if "=" in b:
                k, v = b.split("=", 1)
                params[k.strip()] = v.strip()
        if mtype in ("application/json", "*/*", "application/*"):
            as_ = params.get("as")
            if as_ is None:
                return "json", ""
            if params.get("g") == "meta.k8s.io" and params.get("v") in ("v1", "v1beta1"):
                if as_ == "Table":
                    return "table", params["v"]
                if as_ in ("PartialObjectMetadata", "PartialObjectMetadataList"):
                    return "meta", params["v"]
            continue
        if mtype in ("application/yaml", "text/yaml"):
            if "as" not in params:
                return "yaml", ""
    raise ApiError(
        406,
        "NotAcceptable",
        "only the following media types are accepted: application/json, application/yaml",
    )


def _bool(v: str | None) -> bool:
    return v is not None and v.lower() in ("true", "1", "yes")


# ---- the server ------------------------------------------------------------------------------


class ApiServer:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.store = Store(cfg.data_dir, cfg.history, cfg.fsync)
        self.services = ServiceAllocations(cfg.service_cidr, cfg.node_port_range)
        for e in self.store.list(SERVICES):
            self.services.load(e.obj)
        self.registry = Registry(self.store, self.services, cfg.pod_grace_cap)
        self.controllers = Controllers(
            self.store, self.registry, cfg.cluster_cidr, cfg.node_cidr_mask
        )
        self.streams: set[WatchStream] = set()
        self._bootstrap()

    def _bootstrap(self) -> None:
        for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self.registry.ensure(NAMESPACES, {"metadata": {"name": ns}})
        first = self.services.ips.first_ip()
        self.registry.ensure(
            SERVICES,
            {
                "metadata": {
                    "name": "kubernetes",
                    "namespace": "default",
                    "labels": {"component": "apiserver", "provider": "kubernetes"},
                },
                "spec": {
                    "clusterIP": first,
                    "ports": [
                        {
                            "name": "https",
                            "port": 443,
                            "protocol": "TCP",
                            "targetPort": self.cfg.port,
                        }
                    ],
                    "type": "ClusterIP",
                },
            },
        )
        # the apiserver publishes its own address behind the kubernetes service, as upstream
        ip = self.cfg.bind if self.cfg.bind not in ("0.0.0.0", "::", "") else "127.0.0.1"
        port = [{"name": "https", "port": self.cfg.port, "protocol": "TCP"}]
        ep = self.store.get(ENDPOINTS, "default", "kubernetes")
        subsets = [{"addresses": [{"ip": ip}], "ports": port}]
        if ep is None:
            self.registry.create(
                ENDPOINTS,
                {
                    "metadata": {
                        "name": "kubernetes",
                        "namespace": "default",
                        "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"},
                    },
                    "subsets": subsets,
                },
                "default",
            )
        elif ep.obj.get("subsets") != subsets:
            obj = ep.copy()
            obj["subsets"] = subsets
            self.registry.update(ENDPOINTS, "default", "kubernetes", obj)
        body = {
            "metadata": {
                "name": "kubernetes",
                "namespace": "default",
                "labels": {"kubernetes.io/service-name": "kubernetes"},
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True}}],
            "ports": [{"name": "https", "port": self.cfg.port, "protocol": "TCP"}],
        }
        sl = self.store.get(ENDPOINTSLICES, "default", "kubernetes")
        if sl is None:
            self.registry.create(ENDPOINTSLICES, body, "default")
        elif sl.obj.get("endpoints") != body["endpoints"] or sl.obj.get("ports") != body["ports"]:
            obj = sl.copy()
            obj["endpoints"], obj["ports"] = body["endpoints"], body["ports"]
            self.registry.update(ENDPOINTSLICES, "default", "kubernetes", obj)

    # ---- app -------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY + 1, middlewares=[self._errors, self._auth])
        r = app.router
        for path in ("/healthz", "/readyz", "/livez"):
            r.add_get(path, self.health)
            r.add_get(path + "/{check:.*}", self.health)
        r.add_get("/version", self.version)
        r.add_get("/openapi/v2", self.openapi_v2)
        r.add_get("/openapi/v3", self.openapi_v3_root)
        r.add_get("/openapi/v3/{gv:.+}", self.openapi_v3)
        r.add_get("/api", self.api_root)
        r.add_get("/apis", self.apis_root)
        r.add_route("*", "/api/{tail:.*}", self.core)
        r.add_route("*", "/apis/{tail:.*}", self.grouped)
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, app: web.Application) -> None:
        self.controllers.start()
        await self.store.sync()

    async def _on_shutdown(self, app: web.Application) -> None:
        log.debug("shutting down: closing %d watches", len(self.streams))
        for stream in list(self.streams):
            stream.close()

    async def _on_cleanup(self, app: web.Application) -> None:
        await self.controllers.stop()
        await self.store.sync()
        self.store.close()

    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as e:
            return _status_response(e)
        except web.HTTPRequestEntityTooLarge:
            return _status_response(
                ApiError(
                    413, "RequestEntityTooLarge", "the server has received too large of a request"
                )
            )
        except web.HTTPException as e:
            if e.status == 404:
                return _status_response(_path_not_found())
            if e.status == 405:
                return _status_response(method_not_allowed())
            raise
        except asyncio.CancelledError:
            raise
        except Exception as e:  # never a stack trace on the wire
            log.exception("internal error on %s %s", request.method, request.path)
            return _status_response(ApiError(500, "InternalError", f"Internal error occurred: {e}"))

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.cfg.tokens and request.path not in ("/healthz", "/readyz", "/livez", "/version"):
            auth = request.headers.get("Authorization", "")
            token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
            if token not in self.cfg.tokens:
                return _status_response(ApiError(401, "Unauthorized", "Unauthorized"))
        return await handler(request)

    # ---- health / version / discovery ------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok", content_type="text/plain")

    async def version(self, request: web.Request) -> web.Response:
        return _json(VERSION)

    def _server_address(self, request: web.Request) -> str:
        return request.host or f"{self.cfg.bind}:{self.cfg.port}"

    def _aggregated(self, request: web.Request, legacy: bool) -> web.Response | None:
        accept = request.headers.get("Accept", "")
        for part in accept.split(","):
            p = part.replace(" ", "")
            if "as=APIGroupDiscoveryList" in p and "g=apidiscovery.k8s.io" in p:
                if "v=v2beta1" in p:
                    body = discovery.aggregated(legacy, "apidiscovery.k8s.io/v2beta1")
                    ctype = discovery.AGGREGATED_V2BETA1
                elif "v=v2" in p:
                    body = discovery.aggregated(legacy)
                    ctype = discovery.AGGREGATED_V2
                else:
                    continue
                resp = web.Response(body=json.dumps(body).encode())
                resp.headers["Content-Type"] = ctype
                return resp
        return None

    async def api_root(self, request: web.Request) -> web.Response:
        agg = self._aggregated(request, True)
        return agg or _json(discovery.api_versions(self._server_address(request)))

    async def apis_root(self, request: web.Request) -> web.Response:
        agg = self._aggregated(request, False)
        return agg or _json(discovery.api_group_list())

    async def openapi_v2(self, request: web.Request) -> web.Response:
        accept = request.headers.get("Accept", "")
        if "protobuf" in accept and "json" not in accept and "*/*" not in accept:
            raise ApiError(406, "NotAcceptable", "only application/json is served for /openapi/v2")
        return web.Response(body=openapi.v2_bytes(), content_type="application/json")

    async def openapi_v3_root(self, request: web.Request) -> web.Response:
        return _json(openapi.v3_index())

    async def openapi_v3(self, request: web.Request) -> web.Response:
        doc = openapi.v3_bytes(request.match_info["gv"])
        if doc is None:
            raise _path_not_found()
        resp = web.Response(body=doc, content_type="application/json")
        resp.headers["Cache-Control"] = "no-cache, private"
        resp.headers["Etag"] = '"' + openapi.etag(request.match_info["gv"]) + '"'
        return resp

    # ---- resources -------------------------------------------------------------------

    async def core(self, request: web.Request) -> web.StreamResponse:
        parts = request.match_info["tail"].split("/")
        if parts == [""]:
            return await self.api_root(request)
        if len(parts) == 1:
            if request.method != "GET":
                raise method_not_allowed()
            rl = discovery.resource_list("", parts[0])
            if rl is None:
                raise _path_not_found()
            return _json(rl)
        return await self._resource(request, parse_path("", parts))

    async def grouped(self, request: web.Request) -> web.StreamResponse:
        parts = request.match_info["tail"].split("/")
        if parts == [""]:
            return await self.apis_root(request)
        group = parts[0]
        if len(parts) == 1 or (len(parts) == 2 and parts[1] == ""):
            g = discovery.api_group(group)
            if g is None:
                raise _path_not_found()
            return _json(g)
        if len(parts) == 2:
            rl = discovery.resource_list(group, parts[1])
            if rl is None:
                raise _path_not_found()
            return _json(rl)
        return await self._resource(request, parse_path(group, parts[1:]))

    async def _resource(self, request: web.Request, t: Target) -> web.StreamResponse:
        m = request.method
        q = request.query
        dry_run = q.get("dryRun") == "All"
        fv = q.get("fieldValidation") or "Warn"
        if fv not in ("Strict", "Warn", "Ignore"):
            raise bad_request(f"fieldValidation must be one of Strict, Warn, Ignore, not {fv!r}")
        if t.sub is not None and t.sub not in t.res.subresources:
            raise _path_not_found()
        if t.name is None:
            if t.sub is not None:
                raise _path_not_found()
            if m == "GET":
                if _bool(q.get("watch")) or t.watch_path:
                    return await self.watch(request, t)
                return self.list(request, t)
            if m == "POST":
                if t.ns is None:
                    raise method_not_allowed()
                obj = await _body(request)
                fmt, tv = _accepts(request)
                warnings: list[str] = []
                entry = self.registry.create(t.res, obj, t.ns, dry_run, fv, warnings)
                await self.store.sync()
                return _warn(self._object(entry, fmt, tv, request, status=201), warnings)
            if m == "DELETE":
                return await self.delete_collection(request, t)
            raise method_not_allowed()
        if t.ns is None:
            raise _path_not_found()
        if t.watch_path:
            if m != "GET":
                raise method_not_allowed()
            return await self.watch(request, t)
        if t.sub == "binding":
            if m != "POST":
                raise method_not_allowed()
            self.registry.bind(t.ns, t.name, await _body(request))
            await self.store.sync()
            return _json(
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Success",
                    "code": 201,
                },
                201,
            )
        fmt, tv = _accepts(request)
        if m == "GET":
            if t.sub not in (None, "status"):
                raise method_not_allowed()
            entry = self.registry.get(t.res, t.ns, t.name)
            return self._object(entry, fmt, tv, request)
        if m == "PUT":
            obj = await _body(request)
            sub = "status" if t.sub == "status" else None
            if t.sub == "finalize":
                sub = "finalize"
            warnings = []
            entry, created = self.registry.update(
                t.res, t.ns, t.name, obj, sub, dry_run, fv, warnings
            )
            await self.store.sync()
            return _warn(
                self._object(entry, fmt, tv, request, status=201 if created else 200), warnings
            )
        if m == "PATCH":
            ctype = request.content_type
            body = await _raw_body(request)
            warnings = []
            entry = self.registry.patch(
                t.res,
                t.ns,
                t.name,
                ctype,
                body,
                "status" if t.sub == "status" else None,
                dry_run,
                fv,
                warnings,
            )
            await self.store.sync()
            return _warn(self._object(entry, fmt, tv, request), warnings)
        if m == "DELETE":
            if t.sub is not None:
                raise method_not_allowed()
            opts = await _delete_options(request)
            entry = self.registry.delete(t.res, t.ns, t.name, opts, dry_run)
            await self.store.sync()
            return self._object(entry, fmt, tv, request)
        raise method_not_allowed()

    def _object(
        self, entry: Entry, fmt: str, table_version: str, request: web.Request, status: int = 200
    ) -> web.Response:
        if fmt == "table":
            tbl = tables.table(
                entry.res, [entry], table_version, request.query.get("includeObject"), str(entry.rv)
            )
            return _json(tbl, status)
        if fmt == "yaml":
            return _yaml(json.loads(entry.typed()), status)
        if fmt == "meta":
            return _json(_partial(entry, table_version), status)
        return web.Response(body=entry.typed(), status=status, content_type="application/json")

    # ---- list ------------------------------------------------------------------------

    def _selectors(self, request: web.Request, t: Target) -> tuple[LabelSelector, FieldSelector]:
        return (
            parse_labels(request.query.get("labelSelector")),
            parse_fields(request.query.get("fieldSelector"), t.res.plural),
        )

    def _select(self, t: Target, labels: LabelSelector, fields: FieldSelector) -> list[Entry]:
        ns = t.ns
        fns = fields.value_of("metadata.namespace")
        if t.res.namespaced and fns is not None:
            if ns is not None and ns != fns:
                return []
            ns = fns
        name = fields.value_of("metadata.name")
        if name is not None and (ns is not None or not t.res.namespaced):
            e = self.store.get(t.res, ns or "", name)
            items = [e] if e is not None else []
        else:
            items = self.store.list(t.res, ns)
        if labels.empty and fields.empty:
            return items
        return [
            e
            for e in items
            if labels.matches(e.obj["metadata"].get("labels")) and fields.matches(e.obj)
        ]

    def list(self, request: web.Request, t: Target) -> web.Response:
        q = request.query
        fmt, tv = _accepts(request)
        labels, fields = self._selectors(request, t)
        items = self._select(t, labels, fields)
        rv = self.store.rv
        cont = q.get("continue")
        if cont:
            try:
                token = json.loads(base64.urlsafe_b64decode(cont + "=" * (-len(cont) % 4)))
                start = (token["start"][0], token["start"][1])
                rv = int(token["rv"])
            except (ValueError, KeyError, TypeError, IndexError, binascii.Error):
                raise bad_request("continue key is not valid: malformed continue token") from None
            lo, hi = 0, len(items)
            while lo < hi:
                mid = (lo + hi) // 2
                if (items[mid].namespace, items[mid].name) <= start:
                    lo = mid + 1
                else:
                    hi = mid
            items = items[lo:]
        limit = 0
        if q.get("limit"):
            try:
                limit = int(q["limit"])
            except ValueError:
                raise bad_request(f"invalid limit {q['limit']!r}") from None
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if limit > 0 and len(items) > limit:
            last = items[limit - 1]
            meta["continue"] = (
                base64.urlsafe_b64encode(
                    json.dumps({"rv": rv, "start": [last.namespace, last.name]}).encode()
                )
                .decode()
                .rstrip("=")
            )
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        if fmt == "table":
            return _json(tables.table(t.res, items, tv, q.get("includeObject"), str(rv), meta))
        if fmt == "meta":
            return _json(
                {
                    "kind": "PartialObjectMetadataList",
                    "apiVersion": f"meta.k8s.io/{tv}",
                    "metadata": meta,
                    "items": [_partial(e, tv) for e in items],
                }
            )
        head = (
            (
                f'{{"kind":"{t.res.list_kind}","apiVersion":"{t.res.api_version}","metadata":'
            ).encode()
            + json.dumps(meta, separators=(",", ":")).encode()
            + b',"items":['
        )
        body = head + b",".join(e.raw for e in items) + b"]}"
        if fmt == "yaml":
            return _yaml(json.loads(body))
        return web.Response(body=body, content_type="application/json")

    async def delete_collection(self, request: web.Request, t: Target) -> web.Response:
        fmt, tv = _accepts(request)
        labels, fields = self._selectors(request, t)
        opts = await _delete_options(request)
        dry_run = request.query.get("dryRun") == "All"
        deleted = []
        for e in list(self._select(t, labels, fields)):
            if t.res is NAMESPACES and e.name in ("default", "kube-system", "kube-public"):
                continue
            try:
                deleted.append(self.registry.delete(t.res, e.namespace, e.name, opts, dry_run))
            except ApiError as err:
                if err.code != 404:
                    raise
        await self.store.sync()
        body = {
            "kind": t.res.list_kind,
            "apiVersion": t.res.api_version,
            "metadata": {"resourceVersion": str(self.store.rv)},
            "items": [json.loads(e.raw) for e in deleted],
        }
        return _json(body)

    # ---- watch -----------------------------------------------------------------------

    async def watch(self, request: web.Request, t: Target) -> web.StreamResponse:
        q = request.query
        fmt, tv = _accepts(request)
        labels, fields = self._selectors(request, t)
        if t.name is not None:
            fields = FieldSelector(fields.reqs + (("metadata.name", True, t.name),))
        render = None
        if fmt == "table":
            include = q.get("includeObject")

            def render(etype: str, entry: Entry) -> bytes:
                tbl = tables.table(entry.res, [entry], tv, include, str(entry.rv))
                return (
                    json.dumps({"type": etype, "object": tbl}, separators=(",", ":")).encode()
                    + b"\n"
                )

        elif fmt == "meta":

            def render(etype: str, entry: Entry) -> bytes:
                obj = _partial(entry, tv)
                return (
                    json.dumps({"type": etype, "object": obj}, separators=(",", ":")).encode()
                    + b"\n"
                )

        timeout = self.cfg.default_watch_timeout
        if q.get("timeoutSeconds"):
            try:
                timeout = float(q["timeoutSeconds"])
            except ValueError:
                raise bad_request(f"invalid timeoutSeconds {q['timeoutSeconds']!r}") from None
        rv_param = q.get("resourceVersion", "")
        bookmarks = _bool(q.get("allowWatchBookmarks"))
        send_initial = _bool(q.get("sendInitialEvents"))
        initial: list[bytes] = []
        stream: WatchStream
        if send_initial or rv_param in ("", "0"):
            start = self.store.rv
            stream = WatchStream(t.res, t.ns, labels, fields, render, start)
            for e in self._select(t, labels, fields):
                initial.append(stream.line("ADDED", e))
            if send_initial and bookmarks:
                from .watch import bookmark

                initial.append(bookmark(t.res, start, initial_end=True))
        else:
            try:
                since = int(rv_param)
            except ValueError:
                raise bad_request(f"invalid resourceVersion {rv_param!r}") from None
            events = self.store.since(t.res, since)
            if events is None:
                st = expired(
                    f"too old resource version: {since} ({self.store.oldest(t.res) + 1})"
                ).to_status()
                resp = web.StreamResponse(status=200)
                resp.content_type = "application/json"
                resp.enable_chunked_encoding()
                await resp.prepare(request)
                await resp.write(error_line(st))
                await resp.write_eof()
                return resp
            last = events[-1].rv if events else since
            stream = WatchStream(t.res, t.ns, labels, fields, render, last)
            for ev in events:
                stream.min_rv = ev.rv - 1
                stream.offer(ev)
            stream.min_rv = max(last, since)
            initial = list(stream.queue)
            stream.queue.clear()
        self.store.subscribe(t.res, stream)
        self.streams.add(stream)
        try:
            return await serve(
                request, self.store, stream, initial, timeout, bookmarks, self.cfg.bookmark_interval
            )
        finally:
            self.streams.discard(stream)


# ---- helpers -----------------------------------------------------------------------------------


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(obj).encode(), status=status, content_type="application/json"
    )


def _yaml(obj: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=yaml.safe_dump(obj, sort_keys=False), status=status, content_type="application/yaml"
    )


def _partial(entry: Entry, version: str) -> dict[str, Any]:
    """The object as meta.k8s.io PartialObjectMetadata (metadata-only clients)."""
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": f"meta.k8s.io/{version or 'v1'}",
        "metadata": entry.obj["metadata"],
    }


def _warn(resp: web.Response, warnings: list[str]) -> web.Response:
    for w in warnings:
        resp.headers.add("Warning", "299 - " + json.dumps(w))
    return resp


def _status_response(e: ApiError) -> web.Response:
    return web.Response(body=e.body(), status=e.code, content_type="application/json")


async def _raw_body(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ApiError(
            413, "RequestEntityTooLarge", "the server has received too large of a request"
        )
    chunks = []
    size = 0
    async for chunk in request.content.iter_chunked(65536):
        size += len(chunk)
        if size > MAX_BODY:
            raise ApiError(
                413, "RequestEntityTooLarge", "the server has received too large of a request"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def decode_body(ctype: str, raw: bytes) -> Any:
    if "protobuf" in ctype:
        return protobuf.decode(raw)
    try:
        if "yaml" in ctype:
            return yaml.safe_load(raw)
        return json.loads(raw)
    except (ValueError, yaml.YAMLError) as e:
        fmt = "YAML" if "yaml" in ctype else "JSON"
        raise bad_request(f"error decoding {fmt} body: {e}") from None


async def _body(request: web.Request) -> Any:
    raw = await _raw_body(request)
    if not raw.strip():
        raise bad_request("the request body is empty; expected an object")
    obj = decode_body(request.content_type, raw)
    if not isinstance(obj, dict):
        raise bad_request("the body of the request must be a JSON or YAML object")
    return obj


async def _delete_options(request: web.Request) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    raw = await _raw_body(request)
    if raw.strip():
        try:
            body = decode_body(request.content_type or "application/json", raw)
        except ApiError:
            if "protobuf" not in (request.content_type or ""):
                raise
            body = None  # protobuf options we cannot read: delete with the defaults
        if isinstance(body, dict):
            opts = body
    if request.query.get("gracePeriodSeconds"):
        try:
            opts["gracePeriodSeconds"] = int(request.query["gracePeriodSeconds"])
        except ValueError:
            raise bad_request("invalid gracePeriodSeconds") from None
    return opts


async def run(cfg: Config) -> None:
    """Serve until cancelled."""
    server = ApiServer(cfg)
    runner = web.AppRunner(server.app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, cfg.bind, cfg.port, backlog=1024)
    await site.start()
    log.info("apiserver_stub listening on http://%s:%d", cfg.bind, cfg.port)
    try:
        while True:
            await asyncio.sleep(3600)
    finally:
        await runner.cleanup()
