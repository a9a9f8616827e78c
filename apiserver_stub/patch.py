"""PATCH bodies: JSON merge patch (RFC 7386), strategic merge patch, JSON patch (RFC 6902).

Strategic merge follows the Kubernetes rules for the common cases: maps merge, ``null``
deletes a key, lists of named things (containers by ``name``, service ports by ``port``,
conditions by ``type`` ...) merge item by item by their key, ``$patch: delete`` removes a
list item or a map, ``$patch: replace`` replaces, ``$deleteFromPrimitiveList/<f>`` and
``$retainKeys`` are honoured, ``$setElementOrder/<f>`` is accepted. Which lists merge and by
what key is declared in ``MERGE_KEYS`` (also published in our OpenAPI documents).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import yaml

from .resources import Resource
from .status import ApiError, bad_request

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY_YAML = "application/apply-patch+yaml"
PATCH_TYPES = (JSON_PATCH, MERGE_PATCH, STRATEGIC)

_CONTAINER = {
    "ports": ("merge", "containerPort"),
    "env": ("merge", "name"),
    "volumeMounts": ("merge", "mountPath"),
    "volumeDevices": ("merge", "devicePath"),
}
_META = {"metadata.finalizers": ("merge", None), "metadata.ownerReferences": ("merge", "uid")}


def _with_containers(prefix: str) -> dict[str, tuple[str, str | None]]:
    out: dict[str, tuple[str, str | None]] = {}
    for field in ("containers", "initContainers", "ephemeralContainers"):
        out[f"{prefix}.{field}"] = ("merge", "name")
        for sub, v in _CONTAINER.items():
            out[f"{prefix}.{field}[].{sub}"] = v
    return out


# kind -> dotted path (list items as []) -> (strategy, merge key or None for primitives)
MERGE_KEYS: dict[str, dict[str, tuple[str, str | None]]] = {
    "Pod": {
        **_META,
        **_with_containers("spec"),
        "spec.volumes": ("merge", "name"),
        "spec.imagePullSecrets": ("merge", "name"),
        "spec.hostAliases": ("merge", "ip"),
        "status.conditions": ("merge", "type"),
        "status.podIPs": ("merge", "ip"),
    },
    "Service": {**_META, "spec.ports": ("merge", "port")},
    "Node": {
        **_META,
        "spec.podCIDRs": ("merge", None),
        "status.conditions": ("merge", "type"),
        "status.addresses": ("merge", "type"),
    },
    "Namespace": dict(_META),
    "Endpoints": dict(_META),
    "EndpointSlice": dict(_META),
    "Event": dict(_META),
}


def decode_patch(content_type: str, body: bytes) -> Any:
    try:
        if content_type == APPLY_YAML:
            return yaml.safe_load(body)
        return json.loads(body)
    except (ValueError, yaml.YAMLError) as e:
        raise bad_request(f"error decoding patch: {e}") from None


def apply_patch(res: Resource, current: dict[str, Any], content_type: str, body: bytes) -> Any:
    if content_type not in PATCH_TYPES:
        raise ApiError(
            415,
            "UnsupportedMediaType",
            f"the body of the request was in an unknown format - accepted media types include: {', '.join(PATCH_TYPES)}",
        )
    p = decode_patch(content_type, body)
    if content_type == JSON_PATCH:
        return json_patch(current, p)
    if not isinstance(p, dict):
        raise bad_request("the patch must be a JSON object")
    if content_type == MERGE_PATCH:
        return merge_patch(current, p)
    return strategic_merge(current, p, MERGE_KEYS.get(res.kind, {}))


# ---- RFC 7386 --------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


# ---- strategic merge ---------------------------------------------------------------------------

_DELETE = object()


def strategic_merge(
    original: dict[str, Any], patch: dict[str, Any], keys: dict[str, tuple[str, str | None]]
) -> dict[str, Any]:
    out = _merge_map(original, patch, "", keys)
    if out is _DELETE:
        return {}
    return out  # type: ignore[return-value]


def _merge_map(orig: Any, patch: dict[str, Any], path: str, keys: dict) -> Any:
    directive = patch.get("$patch")
    if directive == "delete":
        return _DELETE
    body = {k: v for k, v in patch.items() if k != "$patch"}
    if directive == "replace":
        return _clean(body)
    if directive not in (None, "merge"):
        raise bad_request(f"unknown patch directive {directive!r} at {path or '.'}")
    out = dict(orig) if isinstance(orig, dict) else {}
    retain = body.pop("$retainKeys", None)
    for k, v in body.items():
        if k.startswith("$setElementOrder/"):
            continue
        if k.startswith("$deleteFromPrimitiveList/"):
            field = k.split("/", 1)[1]
            if isinstance(out.get(field), list) and isinstance(v, list):
                out[field] = [x for x in out[field] if x not in v]
            continue
        sub = f"{path}.{k}" if path else k
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict):
            merged = _merge_map(out.get(k), v, sub, keys)
            if merged is _DELETE:
                out.pop(k, None)
            else:
                out[k] = merged
        elif isinstance(v, list):
            out[k] = _merge_list(out.get(k), v, sub, keys)
        else:
            out[k] = v
    if isinstance(retain, list):
        out = {k: v for k, v in out.items() if k in retain}
    return out


def _clean(v: Any) -> Any:
    """Drop directives from a value that replaces wholesale."""
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items() if not k.startswith("$") or k == "$ref"}
    if isinstance(v, list):
        return [
            _clean(x)
            for x in v
            if not (isinstance(x, dict) and x.get("$patch") == "replace" and len(x) == 1)
        ]
    return v


def _merge_list(orig: Any, patch: list[Any], path: str, keys: dict) -> list[Any]:
    strategy = keys.get(path)
    if any(isinstance(x, dict) and x.get("$patch") == "replace" for x in patch):
        return _clean(
            [x for x in patch if not (isinstance(x, dict) and x.get("$patch") == "replace")]
        )
    if strategy is None or not isinstance(orig, list):
        return [
            _clean(x) for x in patch if not (isinstance(x, dict) and x.get("$patch") == "delete")
        ]
    _, key = strategy
    if key is None:  # merge a list of primitives: union, original order first
        out = list(orig)
        for x in patch:
            if x not in out:
                out.append(x)
        return out
    out = [copy.deepcopy(x) for x in orig]
    item_path = path + "[]"
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            out.append(_clean(item))
            continue
        idx = next(
            (i for i, o in enumerate(out) if isinstance(o, dict) and o.get(key) == item[key]), None
        )
        if item.get("$patch") == "delete":
            out = [o for o in out if not (isinstance(o, dict) and o.get(key) == item[key])]
            continue
        if idx is None:
            merged = _merge_map({}, item, item_path, keys)
            if merged is not _DELETE:
                out.append(merged)
        else:
            merged = _merge_map(out[idx], item, item_path, keys)
            if merged is _DELETE:
                out.pop(idx)
            else:
                out[idx] = merged
    return out


# ---- RFC 6902 ------------------------------------------------------------------------------


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, "Invalid", f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str]) -> Any:
    cur = doc
    for p in parts[:-1]:
        if isinstance(cur, list):
            try:
                cur = cur[int(p)]
            except (ValueError, IndexError):
                raise ApiError(422, "Invalid", f"path not found: /{'/'.join(parts)}") from None
        elif isinstance(cur, dict) and p in cur:
            cur = cur[p]
        else:
            raise ApiError(422, "Invalid", f"path not found: /{'/'.join(parts)}")
    return cur


def json_patch(doc: Any, ops: Any) -> Any:
    if not isinstance(ops, list):
        raise bad_request("a JSON patch must be a list of operations")
    doc = copy.deepcopy(doc)

    def get(parts: list[str]) -> Any:
        if not parts:
            return doc
        parent = _parent(doc, parts)
        last = parts[-1]
        try:
            return parent[int(last)] if isinstance(parent, list) else parent[last]
        except (ValueError, IndexError, KeyError, TypeError):
            raise ApiError(422, "Invalid", f"path not found: /{'/'.join(parts)}") from None

    def remove(parts: list[str]) -> Any:
        parent = _parent(doc, parts)
        last = parts[-1]
        try:
            return parent.pop(int(last) if isinstance(parent, list) else last)
        except (ValueError, IndexError, KeyError):
            raise ApiError(422, "Invalid", f"path not found: /{'/'.join(parts)}") from None

    def add(parts: list[str], value: Any) -> None:
        nonlocal doc
        if not parts:
            doc = value
            return
        parent = _parent(doc, parts)
        last = parts[-1]
        if isinstance(parent, list):
            if last == "-":
                parent.append(value)
            else:
                try:
                    i = int(last)
                except ValueError:
                    raise ApiError(422, "Invalid", f"bad index {last!r}") from None
                if i > len(parent):
                    raise ApiError(422, "Invalid", f"index {i} out of range")
                parent.insert(i, value)
        elif isinstance(parent, dict):
            parent[last] = value
        else:
            raise ApiError(422, "Invalid", f"cannot add at /{'/'.join(parts)}")

    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise bad_request("each JSON patch operation needs op and path")
        kind = op["op"]
        parts = _pointer(op["path"])
        if kind == "add":
            add(parts, copy.deepcopy(op.get("value")))
        elif kind == "remove":
            remove(parts)
        elif kind == "replace":
            get(parts)
            if parts:
                remove(parts)
            add(parts, copy.deepcopy(op.get("value")))
        elif kind == "move":
            v = remove(_pointer(op["from"]))
            add(parts, v)
        elif kind == "copy":
            add(parts, copy.deepcopy(get(_pointer(op["from"]))))
        elif kind == "test":
            if get(parts) != op.get("value"):
                raise ApiError(422, "Invalid", f"testing value {op['path']} failed")
        else:
            raise bad_request(f"unknown JSON patch operation {kind!r}")
    return doc
