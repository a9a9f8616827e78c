"""Label selectors (equality and set-based) and field selectors, parsed and matched.

``parse_labels("app=web,tier in (a,b),!canary")`` and ``parse_fields("spec.nodeName=n1")``
return matchers; a malformed selector raises ``ApiError`` 400 as kube-apiserver does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .status import ApiError, bad_request


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!"
    values: frozenset[str]

    def matches(self, labels: dict[str, str]) -> bool:
        op = self.op
        if op == "exists":
            return self.key in labels
        if op == "!":
            return self.key not in labels
        if op in ("=", "in"):
            return labels.get(self.key) in self.values
        # "!=" and "notin" also match objects without the key, as upstream
        return labels.get(self.key) not in self.values


@dataclass(frozen=True, slots=True)
class LabelSelector:
    reqs: tuple[Requirement, ...]

    def matches(self, labels: dict[str, str] | None) -> bool:
        lab = labels or {}
        return all(r.matches(lab) for r in self.reqs)

    @property
    def empty(self) -> bool:
        return not self.reqs


_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_VAL = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_TOKEN = re.compile(r"\s*(\(|\)|,|!=|==|=|!|[^\s(),!=]+)")


def _check_key(key: str, text: str) -> str:
    if not _KEY.match(key) or len(key.rsplit("/", 1)[-1]) > 63:
        raise bad_request(f"unable to parse requirement: invalid label key {key!r} in {text!r}")
    return key


def _check_val(val: str, text: str) -> str:
    if not _VAL.match(val) or len(val) > 63:
        raise bad_request(f"unable to parse requirement: invalid label value {val!r} in {text!r}")
    return val


def parse_labels(text: str | None) -> LabelSelector:
    """Parse the labelSelector query syntax into requirements (ANDed)."""
    if not text or not text.strip():
        return LabelSelector(())
    toks = [m.group(1) for m in _TOKEN.finditer(text)]
    if "".join(toks) != re.sub(r"\s+", "", text):
        raise bad_request(f"unable to parse requirement: {text!r}")
    reqs: list[Requirement] = []
    i = 0
    n = len(toks)

    def need(cond: bool) -> None:
        if not cond:
            raise bad_request(f"unable to parse requirement: found unexpected token in {text!r}")

    while i < n:
        if toks[i] == "!":
            need(i + 1 < n)
            reqs.append(Requirement(_check_key(toks[i + 1], text), "!", frozenset()))
            i += 2
        else:
            key = _check_key(toks[i], text)
            i += 1
            if i >= n or toks[i] == ",":
                reqs.append(Requirement(key, "exists", frozenset()))
            elif toks[i] in ("=", "==", "!="):
                op = "!=" if toks[i] == "!=" else "="
                i += 1
                val = ""
                if i < n and toks[i] not in (",", "(", ")", "=", "!=", "=="):
                    val = toks[i]
                    i += 1
                reqs.append(Requirement(key, op, frozenset([_check_val(val, text)])))
            elif toks[i] in ("in", "notin"):
                op = toks[i]
                i += 1
                need(i < n and toks[i] == "(")
                i += 1
                vals: list[str] = []
                while i < n and toks[i] != ")":
                    if toks[i] == ",":
                        i += 1
                        continue
                    vals.append(_check_val(toks[i], text))
                    i += 1
                need(i < n and toks[i] == ")")
                i += 1
                reqs.append(Requirement(key, op, frozenset(vals)))
            else:
                need(False)
        if i < n:
            need(toks[i] == ",")
            i += 1
            need(i < n)
    return LabelSelector(tuple(reqs))


def from_match(selector: dict[str, Any] | None) -> LabelSelector:
    """metav1.LabelSelector (matchLabels + matchExpressions) -> LabelSelector."""
    if not selector:
        return LabelSelector(())
    reqs = [
        Requirement(k, "=", frozenset([str(v)]))
        for k, v in sorted((selector.get("matchLabels") or {}).items())
    ]
    for e in selector.get("matchExpressions") or []:
        op = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}[e["operator"]]
        reqs.append(Requirement(e["key"], op, frozenset(e.get("values") or [])))
    return LabelSelector(tuple(reqs))


# ---- field selectors ---------------------------------------------------------------------

FIELDS: dict[str, tuple[str, ...]] = {
    "pods": (
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    ),
    "services": ("spec.clusterIP", "spec.type"),
    "nodes": ("spec.unschedulable",),
    "namespaces": ("status.phase",),
    "events": (
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    ),
}


def field_value(obj: dict[str, Any], path: str) -> str:
    if path == "source":
        return (obj.get("source") or {}).get("component", "")
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, dict):
            return ""
        cur = cur.get(part)
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return str(cur)


@dataclass(frozen=True, slots=True)
class FieldSelector:
    reqs: tuple[tuple[str, bool, str], ...]  # (field, equal?, value)

    def matches(self, obj: dict[str, Any]) -> bool:
        for path, eq, val in self.reqs:
            if (field_value(obj, path) == val) != eq:
                return False
        return True

    @property
    def empty(self) -> bool:
        return not self.reqs

    def value_of(self, path: str) -> str | None:
        """The value an equality requirement pins ``path`` to, if any (for fast paths)."""
        for p, eq, val in self.reqs:
            if p == path and eq:
                return val
        return None


def parse_fields(text: str | None, plural: str) -> FieldSelector:
    if not text or not text.strip():
        return FieldSelector(())
    allowed = ("metadata.name", "metadata.namespace") + FIELDS.get(plural, ())
    reqs: list[tuple[str, bool, str]] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        m = re.match(r"^([^=!]+)(==|=|!=)(.*)$", part)
        if not m:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
        path, op, val = m.group(1).strip(), m.group(2), m.group(3).strip()
        if path not in allowed:
            raise ApiError(
                400,
                "BadRequest",
                f"field label not supported: {path}",
            )
        reqs.append((path, op != "!=", val))
    return FieldSelector(tuple(reqs))
