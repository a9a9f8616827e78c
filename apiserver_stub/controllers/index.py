"""Indexes the endpoint controllers keep from events: pods and services by namespace and by
label pair, so a pod change finds its services (and a service its pods) without a scan."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from ..selectors import LabelSelector, Requirement


def selector_of(svc: dict[str, Any]) -> dict[str, str] | None:
    """The Service's selector, or None when the service manages no endpoints."""
    spec = svc.get("spec") or {}
    if spec.get("type") == "ExternalName":
        return None
    sel = spec.get("selector")
    if not sel:
        return None
    return {str(k): str(v) for k, v in sel.items()}


def matches(selector: dict[str, str], labels: dict[str, str] | None) -> bool:
    if not labels:
        return False
    return all(labels.get(k) == v for k, v in selector.items())


class Index:
    """namespace -> name -> object, plus (namespace, key, value) -> names."""

    def __init__(self) -> None:
        self.pods: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        self.pods_by_label: dict[tuple[str, str, str], set[str]] = defaultdict(set)
        self.services: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        self.svc_by_selector: dict[tuple[str, str, str], set[str]] = defaultdict(set)
        # (ns, service name) -> names of EndpointSlices we manage for it
        self.slices: dict[tuple[str, str], dict[str, dict[str, Any]]] = defaultdict(dict)

    # pods
    def set_pod(self, pod: dict[str, Any]) -> None:
        md = pod["metadata"]
        ns, name = md.get("namespace", ""), md["name"]
        self.drop_pod(ns, name)
        self.pods[ns][name] = pod
        for k, v in (md.get("labels") or {}).items():
            self.pods_by_label[(ns, k, v)].add(name)

    def drop_pod(self, ns: str, name: str) -> dict[str, Any] | None:
        old = self.pods.get(ns, {}).pop(name, None)
        if old is not None:
            for k, v in (old["metadata"].get("labels") or {}).items():
                s = self.pods_by_label.get((ns, k, v))
                if s is not None:
                    s.discard(name)
                    if not s:
                        del self.pods_by_label[(ns, k, v)]
        return old

    def pods_for(self, ns: str, selector: dict[str, str]) -> list[dict[str, Any]]:
        sets = [self.pods_by_label.get((ns, k, v), set()) for k, v in selector.items()]
        if not sets:
            return []
        smallest = min(sets, key=len)
        pods = self.pods.get(ns, {})
        out = []
        for name in smallest:
            p = pods.get(name)
            if p is not None and matches(selector, p["metadata"].get("labels")):
                out.append(p)
        return out

    # services
    def set_service(self, svc: dict[str, Any]) -> None:
        md = svc["metadata"]
        ns, name = md.get("namespace", ""), md["name"]
        self.drop_service(ns, name)
        self.services[ns][name] = svc
        for k, v in (selector_of(svc) or {}).items():
            self.svc_by_selector[(ns, k, v)].add(name)

    def drop_service(self, ns: str, name: str) -> dict[str, Any] | None:
        old = self.services.get(ns, {}).pop(name, None)
        if old is not None:
            for k, v in (selector_of(old) or {}).items():
                s = self.svc_by_selector.get((ns, k, v))
                if s is not None:
                    s.discard(name)
                    if not s:
                        del self.svc_by_selector[(ns, k, v)]
        return old

    def services_for(self, ns: str, labels: dict[str, str] | None) -> set[str]:
        """Names of services in ``ns`` whose selector matches ``labels``."""
        out: set[str] = set()
        if not labels:
            return out
        svcs = self.services.get(ns, {})
        for k, v in labels.items():
            for name in self.svc_by_selector.get((ns, k, v), ()):
                if name in out:
                    continue
                sel = selector_of(svcs.get(name) or {})
                if sel is not None and matches(sel, labels):
                    out.add(name)
        return out


def as_selector(sel: dict[str, str]) -> LabelSelector:
    return LabelSelector(tuple(Requirement(k, "=", frozenset([v])) for k, v in sorted(sel.items())))
