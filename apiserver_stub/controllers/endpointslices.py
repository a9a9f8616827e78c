"""The EndpointSlice controller's pure part: a Service and its pods -> desired slices.

One slice per distinct resolved port set (named targetPorts can differ between pods), at
most ``MAX_ENDPOINTS`` endpoints each. Endpoints carry conditions ready / serving /
terminating, nodeName, targetRef and hostname. Slices are labelled
``kubernetes.io/service-name`` and ``endpointslice.kubernetes.io/managed-by`` and owned by
the Service.
"""

from __future__ import annotations

from typing import Any

from .endpoints import hostname_for, pod_finished, pod_ip, pod_ports, pod_ready, target_ref

MAX_ENDPOINTS = 100
SERVICE_NAME = "kubernetes.io/service-name"
MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
CONTROLLER = "endpointslice-controller.k8s.io"


def desired_slices(
    svc: dict[str, Any], pods: list[dict[str, Any]]
) -> list[tuple[tuple, dict[str, Any]]]:
    """-> [(port-set key, slice body without name)], sorted; at least one (maybe empty)."""
    spec = svc.get("spec") or {}
    publish = bool(spec.get("publishNotReadyAddresses"))
    has_ports = bool(spec.get("ports"))
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for pod in pods:
        ip = pod_ip(pod)
        if not ip or pod_finished(pod):
            continue
        ports = pod_ports(svc, pod)
        if has_ports and not ports:
            continue
        terminating = bool(pod["metadata"].get("deletionTimestamp"))
        ready = pod_ready(pod)
        ep: dict[str, Any] = {
            "addresses": [ip],
            "conditions": {
                "ready": (ready or publish) and not terminating,
                "serving": ready or publish,
                "terminating": terminating,
            },
        }
        host = hostname_for(svc, pod)
        if host:
            ep["hostname"] = host
        node = (pod.get("spec") or {}).get("nodeName")
        if node:
            ep["nodeName"] = node
        ep["targetRef"] = target_ref(pod)
        groups.setdefault(ports, []).append(ep)
    labels = dict(svc["metadata"].get("labels") or {})
    labels[SERVICE_NAME] = svc["metadata"]["name"]
    labels[MANAGED_BY] = CONTROLLER
    if spec.get("clusterIP") == "None":
        labels["service.kubernetes.io/headless"] = ""
    out = []
    if not groups:
        groups[()] = []
    for ports, eps in sorted(groups.items(), key=lambda kv: kv[0]):
        eps.sort(key=lambda e: (e["addresses"][0], e["targetRef"]["name"]))
        port_list = [
            {
                k: v
                for k, v in (("name", n), ("protocol", pr), ("port", p), ("appProtocol", ap))
                if v is not None
            }
            for n, p, pr, ap in ports
        ]
        for i in range(0, max(len(eps), 1), MAX_ENDPOINTS):
            out.append(
                (
                    (ports, i),
                    {
                        "labels": labels,
                        "addressType": "IPv4",
                        "endpoints": eps[i : i + MAX_ENDPOINTS] or None,
                        "ports": port_list if ports else ([] if has_ports else None),
                    },
                )
            )
    return out


def owner_ref(svc: dict[str, Any]) -> dict[str, Any]:
    md = svc["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "name": md["name"],
        "uid": md.get("uid", ""),
        "controller": True,
        "blockOwnerDeletion": True,
    }
