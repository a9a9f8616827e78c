"""Defaulting, as the API server's scheme defaulters fill in omitted fields.

Services get protocol TCP, targetPort = port, sessionAffinity None (ClientIP gets the
10800 s timeout), traffic policies Cluster, ipFamilies [IPv4] / SingleStack; pods get
restartPolicy, dnsPolicy, schedulerName, grace period, container defaults; endpoint ports
get protocol TCP. ``apply`` mutates the object in place and never fails.
"""

from __future__ import annotations

from typing import Any

from .resources import Resource


def apply(res: Resource, obj: dict[str, Any]) -> None:
    fn = _BY_KIND.get(res.kind)
    if fn is not None:
        fn(obj)


def _dict(parent: dict[str, Any], key: str) -> dict[str, Any]:
    v = parent.get(key)
    if not isinstance(v, dict):
        v = parent[key] = {}
    return v


def service(obj: dict[str, Any]) -> None:
    spec = _dict(obj, "spec")
    stype = spec.setdefault("type", "ClusterIP")
    for p in spec.get("ports") or []:
        if not isinstance(p, dict):
            continue
        p.setdefault("protocol", "TCP")
        if stype != "ExternalName" and p.get("targetPort") in (None, 0, ""):
            if "port" in p:
                p["targetPort"] = p["port"]
    if stype == "ExternalName":
        return
    spec.setdefault("sessionAffinity", "None")
    if spec["sessionAffinity"] == "ClientIP":
        cfg = _dict(_dict(spec, "sessionAffinityConfig"), "clientIP")
        cfg.setdefault("timeoutSeconds", 10800)
    if stype in ("NodePort", "LoadBalancer"):
        spec.setdefault("externalTrafficPolicy", "Cluster")
    if stype == "LoadBalancer":
        spec.setdefault("allocateLoadBalancerNodePorts", True)
    spec.setdefault("internalTrafficPolicy", "Cluster")
    if spec.get("clusterIP") != "None" or spec.get("selector"):
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")


def _container(c: dict[str, Any]) -> None:
    for p in c.get("ports") or []:
        if isinstance(p, dict):
            p.setdefault("protocol", "TCP")
    image = str(c.get("image", ""))
    tag = image.rsplit("/", 1)[-1]
    if "imagePullPolicy" not in c:
        c["imagePullPolicy"] = (
            "Always"
            if (":" not in tag or tag.endswith(":latest")) and "@" not in tag
            else "IfNotPresent"
        )
    c.setdefault("terminationMessagePath", "/dev/termination-log")
    c.setdefault("terminationMessagePolicy", "File")
    c.setdefault("resources", {})


def pod(obj: dict[str, Any]) -> None:
    spec = _dict(obj, "spec")
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("securityContext", {})
    spec.setdefault("enableServiceLinks", True)
    spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
    spec.setdefault("priority", 0)
    for key in ("containers", "initContainers"):
        for c in spec.get(key) or []:
            if isinstance(c, dict):
                _container(c)


def pod_qos(spec: dict[str, Any]) -> str:
    """QoS class from container resources (Guaranteed / Burstable / BestEffort)."""
    containers = [c for c in spec.get("containers") or [] if isinstance(c, dict)]
    any_set = False
    guaranteed = bool(containers)
    for c in containers:
        r = c.get("resources") or {}
        req, lim = r.get("requests") or {}, r.get("limits") or {}
        if req or lim:
            any_set = True
        for k in ("cpu", "memory"):
            if k not in lim or (k in req and req[k] != lim[k]):
                guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


def endpoints(obj: dict[str, Any]) -> None:
    for s in obj.get("subsets") or []:
        if isinstance(s, dict):
            for p in s.get("ports") or []:
                if isinstance(p, dict):
                    p.setdefault("protocol", "TCP")


def endpointslice(obj: dict[str, Any]) -> None:
    for p in obj.get("ports") or []:
        if isinstance(p, dict):
            p.setdefault("protocol", "TCP")
    if obj.get("endpoints") is None:
        obj["endpoints"] = None


def node(obj: dict[str, Any]) -> None:
    spec = obj.get("spec")
    if spec is None:
        obj["spec"] = {}


_BY_KIND = {
    "Service": service,
    "Pod": pod,
    "Endpoints": endpoints,
    "EndpointSlice": endpointslice,
    "Node": node,
}
