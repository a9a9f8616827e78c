"""The endpoints controller's pure part: a Service and its pods -> the Endpoints subsets.

Ready pods go to ``addresses``, the others to ``notReadyAddresses`` (all to ``addresses``
with publishNotReadyAddresses); terminating and finished pods are left out. Named target
ports are resolved per pod against its container ports, and pods that resolve to the same
port set share a subset, as upstream.
"""

from __future__ import annotations

from typing import Any

LAST_CHANGE = "endpoints.kubernetes.io/last-change-trigger-time"


def pod_ready(pod: dict[str, Any]) -> bool:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return c.get("status") == "True"
    return False


def pod_ip(pod: dict[str, Any]) -> str | None:
    st = pod.get("status") or {}
    return st.get("podIP") or next(
        (p.get("ip") for p in st.get("podIPs") or [] if p.get("ip")), None
    )


def pod_finished(pod: dict[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def resolve_port(pod: dict[str, Any], target: Any, protocol: str) -> int | None:
    """targetPort (number or container port name) -> the pod's port number."""
    if isinstance(target, int):
        return target
    if isinstance(target, str):
        if target.isdigit():
            return int(target)
        for c in (pod.get("spec") or {}).get("containers") or []:
            for p in c.get("ports") or []:
                if p.get("name") == target and p.get("protocol", "TCP") == protocol:
                    return int(p["containerPort"])
    return None


def pod_ports(
    svc: dict[str, Any], pod: dict[str, Any]
) -> tuple[tuple[str, int, str, str | None], ...]:
    """(name, port, protocol, appProtocol) for every service port this pod serves."""
    out = []
    for sp in (svc.get("spec") or {}).get("ports") or []:
        proto = sp.get("protocol", "TCP")
        port = resolve_port(pod, sp.get("targetPort", sp.get("port")), proto)
        if port is not None:
            out.append((sp.get("name", ""), port, proto, sp.get("appProtocol")))
    return tuple(out)


def target_ref(pod: dict[str, Any]) -> dict[str, Any]:
    md = pod["metadata"]
    return {
        "kind": "Pod",
        "namespace": md.get("namespace", ""),
        "name": md["name"],
        "uid": md.get("uid", ""),
    }


def hostname_for(svc: dict[str, Any], pod: dict[str, Any]) -> str | None:
    spec = pod.get("spec") or {}
    if spec.get("hostname") and spec.get("subdomain") == svc["metadata"]["name"]:
        return str(spec["hostname"])
    return None


def desired_subsets(svc: dict[str, Any], pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    publish = bool((svc.get("spec") or {}).get("publishNotReadyAddresses"))
    has_ports = bool((svc.get("spec") or {}).get("ports"))
    groups: dict[tuple, dict[str, list[dict[str, Any]]]] = {}
    for pod in pods:
        ip = pod_ip(pod)
        if not ip or pod_finished(pod):
            continue
        if pod["metadata"].get("deletionTimestamp") and not publish:
            continue
        ports = pod_ports(svc, pod)
        if has_ports and not ports:
            continue
        addr: dict[str, Any] = {"ip": ip}
        host = hostname_for(svc, pod)
        if host:
            addr["hostname"] = host
        node = (pod.get("spec") or {}).get("nodeName")
        if node:
            addr["nodeName"] = node
        addr["targetRef"] = target_ref(pod)
        g = groups.setdefault(ports, {"addresses": [], "notReadyAddresses": []})
        if publish or pod_ready(pod):
            g["addresses"].append(addr)
        else:
            g["notReadyAddresses"].append(addr)
    subsets = []
    for ports, g in sorted(groups.items(), key=lambda kv: kv[0]):
        s: dict[str, Any] = {}
        for key in ("addresses", "notReadyAddresses"):
            if g[key]:
                s[key] = sorted(g[key], key=lambda a: (a["ip"], a["targetRef"]["name"]))
        if ports:
            s["ports"] = [
                {
                    k: v
                    for k, v in (("name", n), ("port", p), ("protocol", pr), ("appProtocol", ap))
                    if v not in (None, "") or k == "port"
                }
                for n, p, pr, ap in ports
            ]
        subsets.append(s)
    return subsets


def desired_labels(svc: dict[str, Any]) -> dict[str, str]:
    labels = dict(svc["metadata"].get("labels") or {})
    if (svc.get("spec") or {}).get("clusterIP") == "None":
        labels["service.kubernetes.io/headless"] = ""
    return labels
