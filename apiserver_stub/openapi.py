"""OpenAPI documents (stub)."""

from __future__ import annotations

import json
from typing import Any


def v2_bytes() -> bytes:
    return json.dumps(
        {
            "swagger": "2.0",
            "info": {"title": "Kubernetes", "version": "v1.32.0"},
            "paths": {},
            "definitions": {},
        }
    ).encode()


def v3_index() -> dict[str, Any]:
    return {"paths": {}}


def v3_bytes(gv: str) -> bytes | None:
    return None


def etag(gv: str) -> str:
    return ""
