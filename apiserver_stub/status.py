"""Kubernetes ``Status`` errors: one exception type, rendered the way kube-apiserver does.

Handlers raise ``ApiError`` (or use the helpers below); the server turns it into a
``{"kind":"Status",...}`` body with the matching HTTP code, never a stack trace.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Cause:
    field: str
    reason: str  # FieldValueInvalid, FieldValueRequired, FieldValueDuplicate, ...
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "message": self.message, "field": self.field}


@dataclass(slots=True)
class ApiError(Exception):
    code: int
    reason: str
    message: str
    details: dict[str, Any] | None = None
    causes: list[Cause] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.code} {self.reason}: {self.message}"

    def to_status(self) -> dict[str, Any]:
        st: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        details = dict(self.details or {})
        if self.causes:
            details["causes"] = [c.to_dict() for c in self.causes]
        if details:
            st["details"] = details
        return st

    def body(self) -> bytes:
        return json.dumps(self.to_status()).encode()


def _qual(plural: str, group: str) -> str:
    return f"{plural}.{group}" if group else plural


def not_found(plural: str, group: str, name: str) -> ApiError:
    return ApiError(
        404,
        "NotFound",
        f'{_qual(plural, group)} "{name}" not found',
        {"name": name, "group": group, "kind": plural} if group else {"name": name, "kind": plural},
    )


def already_exists(plural: str, group: str, name: str) -> ApiError:
    d = {"name": name, "kind": plural}
    if group:
        d["group"] = group
    return ApiError(409, "AlreadyExists", f'{_qual(plural, group)} "{name}" already exists', d)


def conflict(plural: str, group: str, name: str, why: str) -> ApiError:
    d = {"name": name, "kind": plural}
    if group:
        d["group"] = group
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {_qual(plural, group)} "{name}": {why}',
        d,
    )


STALE = (
    "the object has been modified; please apply your changes to the latest version and try again"
)


def invalid(kind: str, group: str, name: str, causes: list[Cause]) -> ApiError:
    """422 Invalid, message formatted as upstream: ``Kind "name" is invalid: [a, b]``."""
    msgs = [f"{c.field}: {c.message}" if c.field else c.message for c in causes]
    joined = msgs[0] if len(msgs) == 1 else "[" + ", ".join(msgs) + "]"
    d: dict[str, Any] = {"name": name, "kind": kind}
    if group:
        d["group"] = group
    return ApiError(422, "Invalid", f'{kind} "{name}" is invalid: {joined}', d, list(causes))


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def method_not_allowed(
    message: str = "the server does not allow this method on the requested resource",
) -> ApiError:
    return ApiError(405, "MethodNotAllowed", message)


def expired(message: str) -> ApiError:
    return ApiError(410, "Expired", message)
