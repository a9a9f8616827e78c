"""The kinds this API server serves: group, version, plural, scope, short names.

One ``Resource`` per served REST resource; everything else (routing, discovery, OpenAPI,
tables, storage keys) looks kinds up here, so adding a kind starts in this file.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Resource:
    group: str
    version: str
    kind: str
    plural: str
    singular: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> str:
        """Storage key: ``pods`` for core, ``endpointslices.discovery.k8s.io`` otherwise."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def list_kind(self) -> str:
        return self.kind + "List"

    def type_prefix(self) -> bytes:
        """JSON prefix that puts kind/apiVersion in front of a stored object's bytes."""
        return f'{{"kind":"{self.kind}","apiVersion":"{self.api_version}",'.encode()


VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]

RESOURCES: tuple[Resource, ...] = (
    Resource(
        "", "v1", "Namespace", "namespaces", "namespace", False, ("ns",), ("status", "finalize")
    ),
    Resource("", "v1", "Node", "nodes", "node", False, ("no",), ("status",)),
    Resource("", "v1", "Pod", "pods", "pod", True, ("po",), ("status", "binding"), ("all",)),
    Resource("", "v1", "Service", "services", "service", True, ("svc",), ("status",), ("all",)),
    Resource("", "v1", "Endpoints", "endpoints", "endpoints", True, ("ep",)),
    Resource("", "v1", "Event", "events", "event", True, ("ev",)),
    Resource("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", "endpointslice", True),
)

BY_GV_PLURAL: dict[tuple[str, str, str], Resource] = {
    (r.group, r.version, r.plural): r for r in RESOURCES
}
BY_KEY: dict[str, Resource] = {r.key: r for r in RESOURCES}
BY_KIND: dict[tuple[str, str], Resource] = {(r.api_version, r.kind): r for r in RESOURCES}

NAMESPACES = BY_KEY["namespaces"]
NODES = BY_KEY["nodes"]
PODS = BY_KEY["pods"]
SERVICES = BY_KEY["services"]
ENDPOINTS = BY_KEY["endpoints"]
EVENTS = BY_KEY["events"]
ENDPOINTSLICES = BY_KEY["endpointslices.discovery.k8s.io"]

GROUP_VERSIONS: dict[str, list[str]] = {}
for _r in RESOURCES:
    GROUP_VERSIONS.setdefault(_r.group, [])
    if _r.version not in GROUP_VERSIONS[_r.group]:
        GROUP_VERSIONS[_r.group].append(_r.version)


def lookup(group: str, version: str, plural: str) -> Resource | None:
    return BY_GV_PLURAL.get((group, version, plural))
