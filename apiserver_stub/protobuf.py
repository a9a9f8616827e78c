"""Decode the Kubernetes protobuf request bodies that kubectl's typed clients send.

``kubectl create namespace`` / ``create service`` and client-go schedulers (Binding) post
``application/vnd.kubernetes.protobuf``: the ``k8s\\0`` magic, a runtime.Unknown envelope
(typeMeta, raw), and the object in protobuf. This module decodes those few kinds into the
JSON-shaped dicts the rest of the server uses; responses stay JSON (the clients accept it).
Zero values are dropped, as Go's ``omitempty`` would do on the JSON path.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from .status import ApiError

MAGIC = b"k8s\x00"

# field number -> (json name, type, nested spec); types: str, int, bool, msg, map, strs, msgs,
# time, intstr
Spec = dict[int, tuple[str, str, Any]]

TIME = "time"
OWNER_REF: Spec = {
    1: ("kind", "str", None),
    3: ("name", "str", None),
    4: ("uid", "str", None),
    5: ("apiVersion", "str", None),
    6: ("controller", "bool", None),
    7: ("blockOwnerDeletion", "bool", None),
}
OBJECT_META: Spec = {
    1: ("name", "str", None),
    2: ("generateName", "str", None),
    3: ("namespace", "str", None),
    5: ("uid", "str", None),
    6: ("resourceVersion", "str", None),
    7: ("generation", "int", None),
    8: ("creationTimestamp", TIME, None),
    9: ("deletionTimestamp", TIME, None),
    10: ("deletionGracePeriodSeconds", "int", None),
    11: ("labels", "map", None),
    12: ("annotations", "map", None),
    13: ("ownerReferences", "msgs", OWNER_REF),
    14: ("finalizers", "strs", None),
}
SERVICE_PORT: Spec = {
    1: ("name", "str", None),
    2: ("protocol", "str", None),
    3: ("port", "int", None),
    4: ("targetPort", "intstr", None),
    5: ("nodePort", "int", None),
    6: ("appProtocol", "str", None),
}
SERVICE_SPEC: Spec = {
    1: ("ports", "msgs", SERVICE_PORT),
    2: ("selector", "map", None),
    3: ("clusterIP", "str", None),
    4: ("type", "str", None),
    5: ("externalIPs", "strs", None),
    7: ("sessionAffinity", "str", None),
    8: ("loadBalancerIP", "str", None),
    9: ("loadBalancerSourceRanges", "strs", None),
    10: ("externalName", "str", None),
    11: ("externalTrafficPolicy", "str", None),
    12: ("healthCheckNodePort", "int", None),
    13: ("publishNotReadyAddresses", "bool", None),
    14: (
        "sessionAffinityConfig",
        "msg",
        {1: ("clientIP", "msg", {1: ("timeoutSeconds", "int", None)})},
    ),
    17: ("ipFamilyPolicy", "str", None),
    18: ("clusterIPs", "strs", None),
    19: ("ipFamilies", "strs", None),
    20: ("allocateLoadBalancerNodePorts", "bool", None),
    21: ("loadBalancerClass", "str", None),
    22: ("internalTrafficPolicy", "str", None),
    23: ("trafficDistribution", "str", None),
}
OBJECT_REF: Spec = {
    1: ("kind", "str", None),
    2: ("namespace", "str", None),
    3: ("name", "str", None),
    4: ("uid", "str", None),
    5: ("apiVersion", "str", None),
    6: ("resourceVersion", "str", None),
    7: ("fieldPath", "str", None),
}
KINDS: dict[str, Spec] = {
    "Service": {1: ("metadata", "msg", OBJECT_META), 2: ("spec", "msg", SERVICE_SPEC)},
    "Namespace": {
        1: ("metadata", "msg", OBJECT_META),
        2: ("spec", "msg", {1: ("finalizers", "strs", None)}),
    },
    "Binding": {1: ("metadata", "msg", OBJECT_META), 2: ("target", "msg", OBJECT_REF)},
    "DeleteOptions": {
        1: ("gracePeriodSeconds", "int", None),
        2: ("preconditions", "msg", {1: ("uid", "str", None), 2: ("resourceVersion", "str", None)}),
        4: ("propagationPolicy", "str", None),
    },
}


def _unsupported(why: str) -> ApiError:
    return ApiError(
        415,
        "UnsupportedMediaType",
        f"{why}; send application/json or application/yaml",
    )


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(buf):
            raise _unsupported("truncated protobuf varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def fields(buf: bytes) -> list[tuple[int, int, Any]]:
    """(field number, wire type, value) for every field of one message."""
    out = []
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(buf, i)
        elif wt == 2:
            n, i = _varint(buf, i)
            v = buf[i : i + n]
            i += n
        elif wt == 1:
            v = int.from_bytes(buf[i : i + 8], "little")
            i += 8
        elif wt == 5:
            v = int.from_bytes(buf[i : i + 4], "little")
            i += 4
        else:
            raise _unsupported(f"protobuf wire type {wt} not supported")
        out.append((num, wt, v))
    return out


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _time(buf: bytes) -> str | None:
    secs = 0
    for num, _, v in fields(buf):
        if num == 1:
            secs = _signed(v)
    if not secs:
        return None
    return dt.datetime.fromtimestamp(secs, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def decode_message(buf: bytes, spec: Spec) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for num, _wt, v in fields(buf):
        if num not in spec:
            continue
        name, typ, sub = spec[num]
        if typ == "str":
            if v:
                out[name] = v.decode()
        elif typ == "int":
            if v:
                out[name] = _signed(v)
        elif typ == "bool":
            if v:
                out[name] = True
        elif typ == "msg":
            m = decode_message(v, sub)
            if m:
                out[name] = m
        elif typ == "msgs":
            out.setdefault(name, []).append(decode_message(v, sub))
        elif typ == "strs":
            out.setdefault(name, []).append(v.decode())
        elif typ == "map":
            k = val = ""
            for n2, _, v2 in fields(v):
                if n2 == 1:
                    k = v2.decode()
                elif n2 == 2:
                    val = v2.decode()
            out.setdefault(name, {})[k] = val
        elif typ == TIME:
            t = _time(v)
            if t:
                out[name] = t
        elif typ == "intstr":
            kind = ival = 0
            sval = ""
            for n2, _, v2 in fields(v):
                if n2 == 1:
                    kind = v2
                elif n2 == 2:
                    ival = _signed(v2)
                elif n2 == 3:
                    sval = v2.decode()
            out[name] = sval if kind == 1 else ival
    return out


def decode(body: bytes) -> dict[str, Any]:
    """A protobuf request body -> a JSON-shaped object (with kind/apiVersion)."""
    if not body.startswith(MAGIC):
        raise _unsupported("protobuf body without the k8s envelope")
    api_version = kind = ""
    raw = b""
    for num, _, v in fields(body[len(MAGIC) :]):
        if num == 1:
            for n2, _, v2 in fields(v):
                if n2 == 1:
                    api_version = v2.decode()
                elif n2 == 2:
                    kind = v2.decode()
        elif num == 2:
            raw = v
    spec = KINDS.get(kind)
    if spec is None:
        raise _unsupported(f"protobuf bodies of kind {kind or '?'} are not supported")
    obj = decode_message(raw, spec)
    obj["kind"], obj["apiVersion"] = kind, api_version
    return obj
