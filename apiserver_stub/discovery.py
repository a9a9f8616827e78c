"""API discovery documents: legacy (/api, /api/v1, /apis, /apis/<g>[/<v>]) and aggregated
(apidiscovery.k8s.io/v2, which kubectl >= 1.30 asks for first), built from ``resources``.
"""

from __future__ import annotations

from typing import Any

from .resources import GROUP_VERSIONS, RESOURCES, VERBS, Resource

AGGREGATED_V2 = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
AGGREGATED_V2BETA1 = "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"

_SUB_VERBS = {"status": ["get", "patch", "update"], "binding": ["create"], "finalize": ["update"]}


def _verbs(r: Resource) -> list[str]:
    return list(VERBS)


def _sub_kind(r: Resource, sub: str) -> tuple[str, str, str]:
    if sub == "binding":
        return ("", "v1", "Binding")
    return (r.group, r.version, r.kind)


def _resources(group: str, version: str) -> list[Resource]:
    return [r for r in RESOURCES if r.group == group and r.version == version]


def resource_list(group: str, version: str) -> dict[str, Any] | None:
    rs = _resources(group, version)
    if not rs:
        return None
    out: list[dict[str, Any]] = []
    for r in rs:
        item: dict[str, Any] = {
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": _verbs(r),
        }
        if r.short_names:
            item["shortNames"] = list(r.short_names)
        if r.categories:
            item["categories"] = list(r.categories)
        out.append(item)
        for sub in r.subresources:
            g, v, k = _sub_kind(r, sub)
            s: dict[str, Any] = {
                "name": f"{r.plural}/{sub}",
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": k,
                "verbs": _SUB_VERBS.get(sub, ["get"]),
            }
            if g != group:
                s["group"], s["version"] = g, v
            out.append(s)
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": out,
    }


def api_versions(server_address: str) -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": GROUP_VERSIONS[""],
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
        ],
    }


def _group(group: str) -> dict[str, Any]:
    versions = [{"groupVersion": f"{group}/{v}", "version": v} for v in GROUP_VERSIONS[group]]
    return {"name": group, "versions": versions, "preferredVersion": versions[0]}


def api_group_list() -> dict[str, Any]:
    return {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [_group(g) for g in GROUP_VERSIONS if g],
    }


def api_group(group: str) -> dict[str, Any] | None:
    if not group or group not in GROUP_VERSIONS:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group(group)}


def aggregated(legacy: bool, api_version: str = "apidiscovery.k8s.io/v2") -> dict[str, Any]:
    """APIGroupDiscoveryList for /api (legacy=True) or /apis."""
    items = []
    for group, versions in GROUP_VERSIONS.items():
        if (group == "") != legacy:
            continue
        vlist = []
        for v in versions:
            rlist = []
            for r in _resources(group, v):
                item: dict[str, Any] = {
                    "resource": r.plural,
                    "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
                    "scope": "Namespaced" if r.namespaced else "Cluster",
                    "singularResource": r.singular,
                    "verbs": _verbs(r),
                }
                if r.short_names:
                    item["shortNames"] = list(r.short_names)
                if r.categories:
                    item["categories"] = list(r.categories)
                subs = []
                for sub in r.subresources:
                    g, sv, k = _sub_kind(r, sub)
                    subs.append(
                        {
                            "subresource": sub,
                            "responseKind": {"group": g, "version": sv, "kind": k},
                            "verbs": _SUB_VERBS.get(sub, ["get"]),
                        }
                    )
                if subs:
                    item["subresources"] = subs
                rlist.append(item)
            vlist.append({"version": v, "resources": rlist, "freshness": "Current"})
        md: dict[str, Any] = {"creationTimestamp": None}
        if group:
            md["name"] = group
        items.append({"metadata": md, "versions": vlist})
    return {
        "kind": "APIGroupDiscoveryList",
        "apiVersion": api_version,
        "metadata": {},
        "items": items,
    }
