"""meta.k8s.io Table rendering: the columns ``kubectl get`` prints, computed server-side.

kubectl asks with ``Accept: application/json;as=Table;v=v1;g=meta.k8s.io``; each kind has
the columns kube-apiserver's printers give it (pods: NAME READY STATUS RESTARTS AGE, plus
IP NODE ... for ``-o wide`` as priority-1 columns; services: NAME TYPE CLUSTER-IP
EXTERNAL-IP PORT(S) AGE ...). Rows carry the object as PartialObjectMetadata unless the
client asks ``includeObject=Object`` or ``None``.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

from .resources import Resource
from .store import Entry

Col = tuple[str, str, int, str]  # name, type, priority, description


def human_duration(seconds: float) -> str:
    """Age as kubectl shows it (k8s.io/apimachinery duration.HumanDuration)."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m" if s % 60 == 0 else f"{minutes}m{s % 60}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h" if minutes % 60 == 0 else f"{hours}h{minutes % 60}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d" if hours % 24 == 0 else f"{hours // 24}d{hours % 24}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        dy = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if dy == 0 else f"{hours // 24 // 365}y{dy}d"
    return f"{hours // 24 // 365}y"


_NOW: list[float] = [0.0]  # "now" for the table being rendered (one clock read per table)
_PARSED: dict[str, float] = {}


def age(obj: dict[str, Any]) -> str:
    ts = obj["metadata"].get("creationTimestamp")
    if not ts:
        return "<unknown>"
    t = _PARSED.get(ts)
    if t is None:
        try:
            t = dt.datetime.fromisoformat(ts).timestamp()
        except ValueError:
            return "<unknown>"
        if len(_PARSED) > 100_000:
            _PARSED.clear()
        _PARSED[ts] = t
    return human_duration((_NOW[0] or time.time()) - t)


def _join_limited(items: list[str], limit: int = 3) -> str:
    if not items:
        return "<none>"
    out = ",".join(items[:limit])
    if len(items) > limit:
        out += f" + {len(items) - limit} more..."
    return out


# ---- pods --------------------------------------------------------------------------------------


def _pod_cells(o: dict[str, Any]) -> list[Any]:
    spec, st = o.get("spec") or {}, o.get("status") or {}
    containers = spec.get("containers") or []
    statuses = st.get("containerStatuses") or []
    total = len(containers)
    if statuses:
        ready = sum(1 for c in statuses if c.get("ready"))
    else:
        cond = next((c for c in st.get("conditions") or [] if c.get("type") == "Ready"), None)
        ready = total if cond and cond.get("status") == "True" else 0
    restarts = sum(int(c.get("restartCount", 0)) for c in statuses)
    reason = st.get("reason") or st.get("phase") or "Unknown"
    for c in statuses:
        state = c.get("state") or {}
        if state.get("waiting", {}).get("reason"):
            reason = state["waiting"]["reason"]
        elif state.get("terminated", {}).get("reason"):
            reason = state["terminated"]["reason"]
    if reason == "Pending" and spec.get("nodeName") and not statuses:
        reason = "ContainerCreating" if not st.get("podIP") else reason
    if o["metadata"].get("deletionTimestamp"):
        reason = "Terminating"
    gates = spec.get("readinessGates") or []
    if gates:
        conds = {c.get("type"): c.get("status") for c in st.get("conditions") or []}
        ok = sum(1 for g in gates if conds.get(g.get("conditionType")) == "True")
        gate_cell = f"{ok}/{len(gates)}"
    else:
        gate_cell = "<none>"
    return [
        o["metadata"]["name"],
        f"{ready}/{total}",
        reason,
        str(restarts),
        age(o),
        st.get("podIP") or "<none>",
        spec.get("nodeName") or "<none>",
        st.get("nominatedNodeName") or "<none>",
        gate_cell,
    ]


POD_COLS: list[Col] = [
    ("Name", "string", 0, "Name must be unique within a namespace."),
    ("Ready", "string", 0, "The aggregate readiness state of this pod for accepting traffic."),
    ("Status", "string", 0, "The aggregate status of the containers in this pod."),
    (
        "Restarts",
        "string",
        0,
        "The number of times the containers in this pod have been restarted.",
    ),
    (
        "Age",
        "string",
        0,
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
    ),
    ("IP", "string", 1, "IP address allocated to the pod. Routable at least within the cluster."),
    ("Node", "string", 1, "NodeName is a request to schedule this pod onto a specific node."),
    (
        "Nominated Node",
        "string",
        1,
        "nominatedNodeName is set only when this pod preempts other pods on the node.",
    ),
    (
        "Readiness Gates",
        "string",
        1,
        "If specified, all readiness gates will be evaluated for pod readiness.",
    ),
]

# ---- services ----------------------------------------------------------------------------------


def _svc_cells(o: dict[str, Any]) -> list[Any]:
    spec = o.get("spec") or {}
    stype = spec.get("type", "ClusterIP")
    cluster_ip = spec.get("clusterIP") or "<none>"
    if stype == "ExternalName":
        cluster_ip = "<none>"
        external = spec.get("externalName") or "<none>"
    else:
        ext = list(spec.get("externalIPs") or [])
        if stype == "LoadBalancer":
            ing = [
                i.get("ip") or i.get("hostname")
                for i in ((o.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
            ]
            ext = [x for x in ing if x] + ext
            external = ",".join(ext) if ext else "<pending>"
        else:
            external = ",".join(ext) if ext else "<none>"
    ports = []
    for p in spec.get("ports") or []:
        proto = p.get("protocol", "TCP")
        if p.get("nodePort"):
            ports.append(f"{p.get('port')}:{p['nodePort']}/{proto}")
        else:
            ports.append(f"{p.get('port')}/{proto}")
    sel = spec.get("selector") or {}
    return [
        o["metadata"]["name"],
        stype,
        cluster_ip,
        external,
        ",".join(ports) if ports else "<none>",
        age(o),
        ",".join(f"{k}={v}" for k, v in sorted(sel.items())) if sel else "<none>",
    ]


SVC_COLS: list[Col] = [
    ("Name", "string", 0, "Name must be unique within a namespace."),
    ("Type", "string", 0, "type determines how the Service is exposed."),
    ("Cluster-IP", "string", 0, "clusterIP is the IP address of the service."),
    (
        "External-IP",
        "string",
        0,
        "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service.",
    ),
    ("Port(s)", "string", 0, "The list of ports that are exposed by this service."),
    (
        "Age",
        "string",
        0,
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
    ),
    (
        "Selector",
        "string",
        1,
        "Route service traffic to pods with label keys and values matching this selector.",
    ),
]

# ---- endpoints / slices --------------------------------------------------------------------------


def _ep_cells(o: dict[str, Any]) -> list[Any]:
    items = []
    for s in o.get("subsets") or []:
        ports = s.get("ports") or []
        for a in s.get("addresses") or []:
            if ports:
                items.extend(f"{a['ip']}:{p.get('port')}" for p in ports)
            else:
                items.append(a["ip"])
    return [o["metadata"]["name"], _join_limited(items), age(o)]


EP_COLS: list[Col] = [
    ("Name", "string", 0, "Name must be unique within a namespace."),
    ("Endpoints", "string", 0, "Endpoints of the service."),
    (
        "Age",
        "string",
        0,
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
    ),
]


def _slice_cells(o: dict[str, Any]) -> list[Any]:
    ports = [str(p.get("port")) for p in o.get("ports") or [] if p.get("port") is not None]
    addrs = [a for e in o.get("endpoints") or [] for a in e.get("addresses") or []]
    return [
        o["metadata"]["name"],
        o.get("addressType", ""),
        ",".join(ports) if ports else "<unset>",
        _join_limited(addrs) if addrs else "<unset>",
        age(o),
    ]


SLICE_COLS: list[Col] = [
    ("Name", "string", 0, "Name must be unique within a namespace."),
    (
        "AddressType",
        "string",
        0,
        "addressType specifies the type of address carried by this EndpointSlice.",
    ),
    (
        "Ports",
        "string",
        0,
        "ports specifies the list of network ports exposed by each endpoint in this slice.",
    ),
    ("Endpoints", "string", 0, "endpoints is a list of unique endpoints in this slice."),
    (
        "Age",
        "string",
        0,
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
    ),
]

# ---- nodes / namespaces / events ----------------------------------------------------------------


def _node_cells(o: dict[str, Any]) -> list[Any]:
    spec, st = o.get("spec") or {}, o.get("status") or {}
    cond = next((c for c in st.get("conditions") or [] if c.get("type") == "Ready"), None)
    if cond is None:
        status = "Unknown"
    else:
        status = {"True": "Ready", "False": "NotReady"}.get(cond.get("status"), "Unknown")
    if spec.get("unschedulable"):
        status += ",SchedulingDisabled"
    roles = sorted(
        k.split("/", 1)[1]
        for k in (o["metadata"].get("labels") or {})
        if k.startswith("node-role.kubernetes.io/") and k.split("/", 1)[1]
    )
    info = st.get("nodeInfo") or {}
    addrs = st.get("addresses") or []
    internal = next((a.get("address") for a in addrs if a.get("type") == "InternalIP"), None)
    external = next((a.get("address") for a in addrs if a.get("type") == "ExternalIP"), None)
    return [
        o["metadata"]["name"],
        status,
        ",".join(roles) if roles else "<none>",
        age(o),
        info.get("kubeletVersion", ""),
        internal or "<none>",
        external or "<none>",
        info.get("osImage") or "<unknown>",
        info.get("kernelVersion") or "<unknown>",
        info.get("containerRuntimeVersion") or "<unknown>",
    ]


NODE_COLS: list[Col] = [
    ("Name", "string", 0, "Name must be unique within a namespace."),
    ("Status", "string", 0, "The status of the node"),
    ("Roles", "string", 0, "The roles of the node"),
    (
        "Age",
        "string",
        0,
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
    ),
    ("Version", "string", 0, "Kubelet Version reported by the node."),
    ("Internal-IP", "string", 1, "List of addresses reachable to the node."),
    ("External-IP", "string", 1, "List of addresses reachable to the node."),
    ("OS-Image", "string", 1, "OS Image reported by the node from /etc/os-release."),
    ("Kernel-Version", "string", 1, "Kernel Version reported by the node from 'uname -r'."),
    (
        "Container-Runtime",
        "string",
        1,
        "ContainerRuntime Version reported by the node through runtime remote API.",
    ),
]


def _ns_cells(o: dict[str, Any]) -> list[Any]:
    return [o["metadata"]["name"], (o.get("status") or {}).get("phase", ""), age(o)]


NS_COLS: list[Col] = [
    ("Name", "string", 0, "Name must be unique within a namespace."),
    ("Status", "string", 0, "The status of the namespace"),
    (
        "Age",
        "string",
        0,
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
    ),
]


def _event_cells(o: dict[str, Any]) -> list[Any]:
    io = o.get("involvedObject") or {}
    return [
        age(o),
        o.get("type", ""),
        o.get("reason", ""),
        f"{str(io.get('kind', '')).lower()}/{io.get('name', '')}",
        o.get("message", ""),
    ]


EVENT_COLS: list[Col] = [
    ("Last Seen", "string", 0, "Time since the event was first seen."),
    ("Type", "string", 0, "Type of this event."),
    ("Reason", "string", 0, "Reason of this event."),
    ("Object", "string", 0, "Object this event is about."),
    ("Message", "string", 0, "Message of this event."),
]

PRINTERS: dict[str, tuple[list[Col], Callable[[dict[str, Any]], list[Any]]]] = {
    "Pod": (POD_COLS, _pod_cells),
    "Service": (SVC_COLS, _svc_cells),
    "Endpoints": (EP_COLS, _ep_cells),
    "EndpointSlice": (SLICE_COLS, _slice_cells),
    "Node": (NODE_COLS, _node_cells),
    "Namespace": (NS_COLS, _ns_cells),
    "Event": (EVENT_COLS, _event_cells),
}


def _row_object(e: Entry, include: str | None) -> dict[str, Any] | None:
    if include == "None":
        return None
    if include == "Object":
        return e.copy()
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": e.obj["metadata"],
    }


def table(
    res: Resource,
    items: list[Entry],
    version: str,
    include: str | None,
    rv: str,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    cols, cells = PRINTERS.get(
        res.kind,
        (
            [("Name", "string", 0, ""), ("Age", "string", 0, "")],
            lambda o: [o["metadata"]["name"], age(o)],
        ),
    )
    _NOW[0] = time.time()
    defs = [
        {
            "name": n,
            "type": t,
            "format": "name" if n == "Name" else "",
            "description": d,
            "priority": p,
        }
        for n, t, p, d in cols
    ]
    rows = []
    for e in items:
        row: dict[str, Any] = {"cells": cells(e.obj)}
        obj = _row_object(e, include)
        if obj is not None:
            row["object"] = obj
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": f"meta.k8s.io/{version or 'v1'}",
        "metadata": meta or {"resourceVersion": rv},
        "columnDefinitions": defs,
        "rows": rows,
    }
