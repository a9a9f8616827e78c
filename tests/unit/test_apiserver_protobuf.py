"""Decoding kubectl's protobuf request bodies (apiserver_stub.protobuf)."""

from __future__ import annotations

import pytest

from apiserver_stub.protobuf import MAGIC, decode
from apiserver_stub.status import ApiError


def _varint(n: int) -> bytes:
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def ld(num: int, payload: bytes) -> bytes:
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def vi(num: int, value: int) -> bytes:
    return _varint(num << 3) + _varint(value)


def envelope(api_version: str, kind: str, raw: bytes) -> bytes:
    return MAGIC + ld(1, ld(1, api_version.encode()) + ld(2, kind.encode())) + ld(2, raw)


def test_service_with_ports_selector_and_int_or_string() -> None:
    meta = ld(1, b"web") + ld(3, b"") + ld(11, ld(1, b"app") + ld(2, b"web"))
    port1 = ld(1, b"http") + ld(2, b"TCP") + vi(3, 80) + ld(4, vi(1, 1) + ld(3, b"http"))
    port2 = ld(1, b"dns") + ld(2, b"UDP") + vi(3, 53) + ld(4, vi(1, 0) + vi(2, 5353)) + vi(5, 30053)
    spec = (
        ld(1, port1)
        + ld(1, port2)
        + ld(2, ld(1, b"app") + ld(2, b"web"))
        + ld(4, b"NodePort")
        + ld(3, b"")
    )
    obj = decode(envelope("v1", "Service", ld(1, meta) + ld(2, spec)))
    assert obj == {
        "kind": "Service",
        "apiVersion": "v1",
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {
            "ports": [
                {"name": "http", "protocol": "TCP", "port": 80, "targetPort": "http"},
                {
                    "name": "dns",
                    "protocol": "UDP",
                    "port": 53,
                    "targetPort": 5353,
                    "nodePort": 30053,
                },
            ],
            "selector": {"app": "web"},
            "type": "NodePort",
        },
    }


def test_namespace_and_unknown_kind() -> None:
    assert decode(envelope("v1", "Namespace", ld(1, ld(1, b"team-a"))))["metadata"] == {
        "name": "team-a"
    }
    with pytest.raises(ApiError) as e:
        decode(envelope("v1", "Pod", b""))
    assert e.value.code == 415
    with pytest.raises(ApiError):
        decode(b"not protobuf")
