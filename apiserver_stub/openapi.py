"""OpenAPI documents generated from ``schema``: v3 (``/openapi/v3`` index + one document per
group-version) and v2 (``/openapi/v2``, JSON only).

kubectl reads the v3 document of a group-version to learn that PATCH accepts
``fieldValidation`` (then it validates on the server instead of fetching the protobuf v2
document), to compute client-side apply patches (``x-kubernetes-patch-merge-key``), and for
``kubectl explain``. Documents are built once and served as cached bytes.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from typing import Any

from .resources import RESOURCES, Resource
from .schema import KIND_SCHEMA, SCHEMAS
from .server_info import K8S_VERSION

_PATCH_TYPES = [
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
]


def _q(name: str, desc: str, typ: str = "string") -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "description": desc,
        "schema": {"type": typ, "uniqueItems": True},
    }


_WRITE_PARAMS = [
    _q("dryRun", "When present (value All), the request is validated but not persisted."),
    _q("fieldManager", "Name of the actor making the change (accepted, not tracked)."),
    _q(
        "fieldValidation",
        "Ignore, Warn (default) or Strict: what to do with fields the schema does not know.",
    ),
]
_LIST_PARAMS = [
    _q("allowWatchBookmarks", "Send BOOKMARK events on watches.", "boolean"),
    _q("continue", "Token from a previous limited list to get the next page."),
    _q("fieldSelector", "Select by fields, e.g. metadata.name=x or spec.nodeName=n1."),
    _q("labelSelector", "Select by labels, equality or set-based."),
    _q("limit", "Maximum number of items to return.", "integer"),
    _q("resourceVersion", "List: at least this version. Watch: start after this version."),
    _q("resourceVersionMatch", "NotOlderThan or Exact."),
    _q("sendInitialEvents", "Start a watch with ADDED events for the current state.", "boolean"),
    _q("timeoutSeconds", "Close the list/watch after this many seconds.", "integer"),
    _q("watch", "Stream changes instead of listing.", "boolean"),
]


def _op_id(verb: str, r: Resource, scope: str, sub: str = "") -> str:
    gv = (r.group.split(".")[0].capitalize() if r.group else "Core") + r.version.capitalize()
    return f"{verb}{gv}{scope}{r.kind}{sub.capitalize()}"


def _ref(r: Resource, lst: bool = False) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{KIND_SCHEMA[r.kind]}{'List' if lst else ''}"}


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}, "application/yaml": {"schema": schema}}


def _operation(
    r: Resource,
    action: str,
    op_id: str,
    params: list[dict[str, Any]],
    body: dict[str, Any] | None,
    resp: dict[str, Any],
    kind: str | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "tags": [f"{r.group.split('.')[0] if r.group else 'core'}_{r.version}"],
        "description": f"{action} {kind or r.kind}",
        "operationId": op_id,
        "parameters": params,
        "responses": {
            "200": {"description": "OK", "content": _json_content(resp)},
            "401": {"description": "Unauthorized"},
        },
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {
            "group": r.group,
            "version": r.version,
            "kind": kind or r.kind,
        },
    }
    if body is not None:
        op["requestBody"] = body
    if action in ("post", "put"):
        op["responses"]["201"] = {"description": "Created", "content": _json_content(resp)}
    return op


def _paths(r: Resource) -> dict[str, Any]:
    prefix = f"/apis/{r.group}/{r.version}" if r.group else f"/api/{r.version}"
    ns_param = {
        "name": "namespace",
        "in": "path",
        "description": "object name and auth scope",
        "required": True,
        "schema": {"type": "string", "uniqueItems": True},
    }
    name_param = {
        "name": "name",
        "in": "path",
        "description": f"name of the {r.kind}",
        "required": True,
        "schema": {"type": "string", "uniqueItems": True},
    }
    body = {"content": _json_content(_ref(r)), "required": True}
    patch_body = {
        "content": {t: {"schema": {"type": "object"}} for t in _PATCH_TYPES},
        "required": True,
    }
    scope = "Namespaced" if r.namespaced else ""
    base = (
        f"{prefix}/namespaces/{{namespace}}/{r.plural}" if r.namespaced else f"{prefix}/{r.plural}"
    )
    common = [ns_param] if r.namespaced else []
    paths: dict[str, Any] = {
        base: {
            "get": _operation(
                r, "list", _op_id("list", r, scope), list(_LIST_PARAMS), None, _ref(r, True)
            ),
            "post": _operation(
                r, "post", _op_id("create", r, scope), list(_WRITE_PARAMS), body, _ref(r)
            ),
            "delete": _operation(
                r,
                "deletecollection",
                _op_id("deleteCollection", r, scope),
                list(_LIST_PARAMS),
                None,
                {"type": "object"},
            ),
            "parameters": common,
        },
        f"{base}/{{name}}": {
            "get": _operation(r, "get", _op_id("read", r, scope), [], None, _ref(r)),
            "put": _operation(
                r, "put", _op_id("replace", r, scope), list(_WRITE_PARAMS), body, _ref(r)
            ),
            "patch": _operation(
                r,
                "patch",
                _op_id("patch", r, scope),
                list(_WRITE_PARAMS) + [_q("force", "Force apply.", "boolean")],
                patch_body,
                _ref(r),
            ),
            "delete": _operation(
                r,
                "delete",
                _op_id("delete", r, scope),
                [
                    _q("dryRun", "Validate only."),
                    _q("gracePeriodSeconds", "Grace period.", "integer"),
                    _q("propagationPolicy", "Orphan, Background or Foreground."),
                ],
                None,
                _ref(r),
            ),
            "parameters": common + [name_param],
        },
    }
    if r.namespaced:
        paths[f"{prefix}/{r.plural}"] = {
            "get": _operation(
                r,
                "list",
                _op_id("list", r, "", "ForAllNamespaces"),
                list(_LIST_PARAMS),
                None,
                _ref(r, True),
            ),
        }
    if "status" in r.subresources:
        paths[f"{base}/{{name}}/status"] = {
            "get": _operation(r, "get", _op_id("read", r, scope, "Status"), [], None, _ref(r)),
            "put": _operation(
                r, "put", _op_id("replace", r, scope, "Status"), list(_WRITE_PARAMS), body, _ref(r)
            ),
            "patch": _operation(
                r,
                "patch",
                _op_id("patch", r, scope, "Status"),
                list(_WRITE_PARAMS),
                patch_body,
                _ref(r),
            ),
            "parameters": common + [name_param],
        }
    if "binding" in r.subresources:
        paths[f"{base}/{{name}}/binding"] = {
            "post": _operation(
                r,
                "post",
                _op_id("create", r, scope, "Binding"),
                list(_WRITE_PARAMS),
                {"content": _json_content({"type": "object"}), "required": True},
                {"type": "object"},
                kind="Binding",
            ),
            "parameters": common + [name_param],
        }
    return paths


def _gv_key(r: Resource) -> str:
    return f"apis/{r.group}/{r.version}" if r.group else f"api/{r.version}"


def _needed(names: list[str]) -> dict[str, Any]:
    """The schemas reachable from ``names``."""
    out: dict[str, Any] = {}
    todo = list(names)
    while todo:
        n = todo.pop()
        if n in out:
            continue
        out[n] = SCHEMAS[n]
        todo.extend(_refs(SCHEMAS[n]))
    return dict(sorted(out.items()))


def _refs(v: Any) -> list[str]:
    if isinstance(v, dict):
        out = []
        for k, x in v.items():
            if k == "$ref" and isinstance(x, str):
                out.append(x.rsplit("/", 1)[-1])
            else:
                out.extend(_refs(x))
        return out
    if isinstance(v, list):
        return [y for x in v for y in _refs(x)]
    return []


@functools.cache
def _v3_docs() -> dict[str, bytes]:
    docs: dict[str, dict[str, Any]] = {}
    for r in RESOURCES:
        key = _gv_key(r)
        d = docs.setdefault(
            key,
            {
                "openapi": "3.0.0",
                "info": {"title": "Kubernetes", "version": K8S_VERSION},
                "paths": {},
                "components": {"schemas": {}},
            },
        )
        d["paths"].update(_paths(r))
        names = [KIND_SCHEMA[r.kind], KIND_SCHEMA[r.kind] + "List"]
        d["components"]["schemas"].update(_needed(names))
    return {k: json.dumps(v, sort_keys=True).encode() for k, v in docs.items()}


def v3_bytes(gv: str) -> bytes | None:
    return _v3_docs().get(gv.strip("/"))


def etag(gv: str) -> str:
    doc = v3_bytes(gv) or b""
    return hashlib.sha512(doc).hexdigest()[:64].upper()


def v3_index() -> dict[str, Any]:
    return {
        "paths": {
            k: {"serverRelativeURL": f"/openapi/v3/{k}?hash={etag(k)}"} for k in sorted(_v3_docs())
        }
    }


def _to_v2(v: Any) -> Any:
    if isinstance(v, dict):
        if "allOf" in v and len(v["allOf"]) == 1 and "$ref" in v["allOf"][0]:
            out = {k: _to_v2(x) for k, x in v.items() if k != "allOf"}
            out["$ref"] = v["allOf"][0]["$ref"].replace("#/components/schemas/", "#/definitions/")
            out.pop("description", None)
            return out
        return {
            k: (x.replace("#/components/schemas/", "#/definitions/") if k == "$ref" else _to_v2(x))
            for k, x in v.items()
        }
    if isinstance(v, list):
        return [_to_v2(x) for x in v]
    return v


@functools.cache
def v2_bytes() -> bytes:
    paths: dict[str, Any] = {}
    for r in RESOURCES:
        for p, item in _paths(r).items():
            v2item: dict[str, Any] = {}
            for verb, op in item.items():
                if verb == "parameters":
                    v2item["parameters"] = [
                        {k: v for k, v in prm.items() if k != "schema"} | {"type": "string"}
                        for prm in op
                    ]
                    continue
                op2 = {
                    k: v
                    for k, v in op.items()
                    if k not in ("requestBody", "responses", "parameters")
                }
                op2["parameters"] = [
                    {k: v for k, v in prm.items() if k != "schema"}
                    | {"type": prm["schema"]["type"]}
                    for prm in op["parameters"]
                ]
                if "requestBody" in op:
                    op2["consumes"] = sorted(op["requestBody"]["content"])
                    op2["parameters"].append(
                        {
                            "name": "body",
                            "in": "body",
                            "required": True,
                            "schema": {"type": "object"},
                        }
                    )
                op2["produces"] = ["application/json", "application/yaml"]
                op2["responses"] = {
                    "200": {"description": "OK"},
                    "401": {"description": "Unauthorized"},
                }
                v2item[verb] = op2
            paths[p] = v2item
    doc = {
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": K8S_VERSION},
        "paths": paths,
        "definitions": _to_v2(copy.deepcopy(SCHEMAS)),
    }
    return json.dumps(doc, sort_keys=True).encode()
