"""Validation: the field errors kube-apiserver would return, as ``Cause`` lists.

``validate(res, obj, old)`` returns every problem found (empty list = valid); the registry
turns a non-empty list into one 422 ``Invalid`` Status whose ``details.causes`` name each
field. Names follow upstream: DNS-1123 labels for namespaces, DNS-1035 labels for services,
DNS-1123 subdomains for the rest. Allocation problems (ClusterIP or NodePort taken, out of
range) are reported by ``allocators`` in the same form.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from .resources import Resource
from .status import Cause

LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1035_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
SVC_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
QNAME_RE = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
LABEL_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
PROTOCOLS = ("TCP", "UDP", "SCTP")
SERVICE_TYPES = ("ClusterIP", "ExternalName", "LoadBalancer", "NodePort")

MSG_LABEL = (
    "must be a lowercase RFC 1123 label: at most 63 characters, lower case letters, digits "
    "or '-', starting and ending with a letter or digit (e.g. 'my-name' or '123-abc')"
)
MSG_SUBDOMAIN = (
    "must be a lowercase RFC 1123 subdomain: at most 253 characters, lower case letters, "
    "digits, '-' or '.', starting and ending with a letter or digit (e.g. 'example.com')"
)
MSG_1035 = (
    "must be a DNS-1035 label: at most 63 characters, lower case letters, digits or '-', "
    "starting with a letter and ending with a letter or digit (e.g. 'my-name' or 'abc-123')"
)


def _q(v: Any) -> str:
    return f'"{v}"' if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else str(v)


def invalid(field: str, value: Any, detail: str) -> Cause:
    return Cause(field, "FieldValueInvalid", f"Invalid value: {_q(value)}: {detail}")


def required(field: str, detail: str = "") -> Cause:
    return Cause(field, "FieldValueRequired", "Required value" + (f": {detail}" if detail else ""))


def duplicate(field: str, value: Any) -> Cause:
    return Cause(field, "FieldValueDuplicate", f"Duplicate value: {_q(value)}")


def unsupported(field: str, value: Any, allowed: tuple[str, ...]) -> Cause:
    opts = ", ".join(f'"{a}"' for a in allowed)
    return Cause(
        field, "FieldValueNotSupported", f"Unsupported value: {_q(value)}: supported values: {opts}"
    )


def forbidden(field: str, detail: str) -> Cause:
    return Cause(field, "FieldValueForbidden", f"Forbidden: {detail}")


def is_label(v: Any) -> bool:
    return isinstance(v, str) and len(v) <= 63 and bool(LABEL_RE.match(v))


def is_subdomain(v: Any) -> bool:
    return isinstance(v, str) and len(v) <= 253 and bool(SUBDOMAIN_RE.match(v))


def is_dns1035(v: Any) -> bool:
    return isinstance(v, str) and len(v) <= 63 and bool(DNS1035_RE.match(v))


def is_port_name(v: Any) -> bool:
    """IANA_SVC_NAME: at most 15 characters, a-z 0-9 '-', at least one letter, no '--'."""
    return (
        isinstance(v, str)
        and 1 <= len(v) <= 15
        and bool(SVC_NAME_RE.match(v))
        and "--" not in v
        and any(c.isalpha() for c in v)
    )


def is_port(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 65535


def is_ip(v: Any, version: int | None = None) -> bool:
    if not isinstance(v, str):
        return False
    try:
        ip = ipaddress.ip_address(v)
    except ValueError:
        return False
    return version is None or ip.version == version


def _name_check(res: Resource) -> tuple[Any, str]:
    if res.kind == "Namespace":
        return is_label, MSG_LABEL
    if res.kind == "Service":
        return is_dns1035, MSG_1035
    return is_subdomain, MSG_SUBDOMAIN


def validate_meta(res: Resource, obj: dict[str, Any]) -> list[Cause]:
    out: list[Cause] = []
    md = obj.get("metadata") or {}
    name = md.get("name")
    check, msg = _name_check(res)
    if not name:
        out.append(required("metadata.name", "name or generateName is required"))
    elif not check(name):
        out.append(invalid("metadata.name", name, msg))
    if res.namespaced and md.get("namespace") and not is_label(md["namespace"]):
        out.append(invalid("metadata.namespace", md["namespace"], MSG_LABEL))
    labels = md.get("labels")
    if labels is not None:
        if not isinstance(labels, dict):
            out.append(invalid("metadata.labels", "", "must be a map of strings"))
        else:
            out.extend(validate_labels(labels, "metadata.labels"))
    ann = md.get("annotations")
    if ann is not None:
        if not isinstance(ann, dict) or not all(isinstance(v, str) for v in ann.values()):
            out.append(invalid("metadata.annotations", "", "must be a map of strings"))
        else:
            for k in ann:
                if not _is_qualified(k):
                    out.append(
                        invalid(
                            "metadata.annotations",
                            k,
                            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
                        )
                    )
            if sum(len(k) + len(v) for k, v in ann.items()) > 256 * 1024:
                out.append(
                    Cause(
                        "metadata.annotations",
                        "FieldValueTooLong",
                        "Too long: must have at most 262144 bytes",
                    )
                )
    return out


def _is_qualified(key: Any) -> bool:
    if not isinstance(key, str) or not key:
        return False
    prefix, _, name = key.rpartition("/")
    if prefix and not is_subdomain(prefix):
        return False
    return len(name) <= 63 and bool(QNAME_RE.match(name))


def validate_labels(labels: dict[str, Any], field: str) -> list[Cause]:
    out = []
    for k, v in labels.items():
        if not _is_qualified(k):
            out.append(
                invalid(
                    field,
                    k,
                    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName' or 'my.name' or '123-abc')",
                )
            )
        if not isinstance(v, str) or len(v) > 63 or not LABEL_VALUE_RE.match(v):
            out.append(
                invalid(
                    field,
                    v,
                    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
                )
            )
    return out


# ---- Service ----------------------------------------------------------------------------------


def validate_service(obj: dict[str, Any], old: dict[str, Any] | None) -> list[Cause]:
    out: list[Cause] = []
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [required("spec")]
    stype = spec.get("type", "ClusterIP")
    if stype not in SERVICE_TYPES:
        out.append(unsupported("spec.type", stype, SERVICE_TYPES))
    cip = spec.get("clusterIP")
    headless = cip == "None"
    if stype == "ExternalName":
        en = spec.get("externalName")
        if not en:
            out.append(required("spec.externalName"))
        elif not is_subdomain(str(en).rstrip(".")):
            out.append(
                invalid("spec.externalName", en, "must be a DNS name (" + MSG_SUBDOMAIN + ")")
            )
        if cip and cip != "":
            out.append(forbidden("spec.clusterIP", "may not be set for ExternalName services"))
    elif cip not in (None, "", "None") and not is_ip(cip):
        out.append(invalid("spec.clusterIP", cip, "must be empty, 'None', or a valid IP address"))
    if headless and stype in ("NodePort", "LoadBalancer"):
        out.append(
            invalid("spec.clusterIP", "None", f"may not be set to 'None' for {stype} services")
        )
    ports = spec.get("ports")
    if ports is None:
        ports = []
    if not isinstance(ports, list):
        out.append(invalid("spec.ports", "", "must be a list"))
        ports = []
    if not ports and stype != "ExternalName" and not headless:
        out.append(required("spec.ports"))
    names: set[str] = set()
    seen: set[tuple[Any, Any]] = set()
    for i, p in enumerate(ports):
        f = f"spec.ports[{i}]"
        if not isinstance(p, dict):
            out.append(invalid(f, "", "must be an object"))
            continue
        name = p.get("name")
        if len(ports) > 1 and not name:
            out.append(required(f + ".name"))
        elif name:
            if not is_label(name):
                out.append(invalid(f + ".name", name, MSG_LABEL))
            elif name in names:
                out.append(duplicate(f + ".name", name))
            names.add(name)
        port = p.get("port")
        if port is None:
            out.append(required(f + ".port"))
        elif not is_port(port):
            out.append(invalid(f + ".port", port, "must be between 1 and 65535, inclusive"))
        proto = p.get("protocol", "TCP")
        if proto not in PROTOCOLS:
            out.append(unsupported(f + ".protocol", proto, PROTOCOLS))
        key = (port, proto)
        if key in seen:
            out.append(duplicate(f, f"{port}/{proto}"))
        seen.add(key)
        tp = p.get("targetPort")
        if tp is not None and stype != "ExternalName":
            if isinstance(tp, bool):
                out.append(invalid(f + ".targetPort", tp, "must be a port number or name"))
            elif isinstance(tp, int):
                if not is_port(tp):
                    out.append(
                        invalid(f + ".targetPort", tp, "must be between 1 and 65535, inclusive")
                    )
            elif isinstance(tp, str):
                if not is_port_name(tp) and not (tp.isdigit() and is_port(int(tp))):
                    out.append(
                        invalid(
                            f + ".targetPort",
                            tp,
                            "must be a port number (1-65535) or an IANA_SVC_NAME (at most 15 characters, a-z, 0-9 and '-', at least one letter)",
                        )
                    )
            else:
                out.append(invalid(f + ".targetPort", tp, "must be a port number or name"))
        np = p.get("nodePort")
        if np is not None and (
            isinstance(np, bool) or not isinstance(np, int) or not 0 <= np <= 65535
        ):
            out.append(invalid(f + ".nodePort", np, "must be between 1 and 65535, inclusive"))
    sel = spec.get("selector")
    if sel is not None:
        if not isinstance(sel, dict):
            out.append(invalid("spec.selector", "", "must be a map of strings"))
        else:
            out.extend(validate_labels(sel, "spec.selector"))
    aff = spec.get("sessionAffinity", "None")
    if aff not in ("None", "ClientIP") and stype != "ExternalName":
        out.append(unsupported("spec.sessionAffinity", aff, ("ClientIP", "None")))
    if aff == "ClientIP":
        t = ((spec.get("sessionAffinityConfig") or {}).get("clientIP") or {}).get("timeoutSeconds")
        if t is not None and (not isinstance(t, int) or not 0 < t <= 86400):
            out.append(
                invalid(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                    t,
                    "must be greater than 0 and less than 86400",
                )
            )
    etp = spec.get("externalTrafficPolicy")
    if etp is not None and etp != "":
        if stype not in ("NodePort", "LoadBalancer"):
            out.append(
                invalid(
                    "spec.externalTrafficPolicy",
                    etp,
                    "may only be set for externally-accessible services",
                )
            )
        elif etp not in ("Cluster", "Local"):
            out.append(unsupported("spec.externalTrafficPolicy", etp, ("Cluster", "Local")))
    itp = spec.get("internalTrafficPolicy")
    if itp is not None and itp not in ("Cluster", "Local"):
        out.append(unsupported("spec.internalTrafficPolicy", itp, ("Cluster", "Local")))
    fams = spec.get("ipFamilies") or []
    for i, fam in enumerate(fams):
        if fam not in ("IPv4", "IPv6"):
            out.append(unsupported(f"spec.ipFamilies[{i}]", fam, ("IPv4", "IPv6")))
        elif fam == "IPv6":
            out.append(
                invalid(f"spec.ipFamilies[{i}]", fam, "not configured on this cluster (IPv4 only)")
            )
    pol = spec.get("ipFamilyPolicy")
    if pol is not None and pol not in ("SingleStack", "PreferDualStack", "RequireDualStack"):
        out.append(
            unsupported(
                "spec.ipFamilyPolicy", pol, ("PreferDualStack", "RequireDualStack", "SingleStack")
            )
        )
    for i, ip in enumerate(spec.get("externalIPs") or []):
        if not is_ip(ip):
            out.append(invalid(f"spec.externalIPs[{i}]", ip, "must be a valid IP address"))
    return out


# ---- Pod --------------------------------------------------------------------------------------


def validate_pod(obj: dict[str, Any], old: dict[str, Any] | None) -> list[Cause]:
    out: list[Cause] = []
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [required("spec")]
    containers = spec.get("containers")
    if not containers:
        out.append(required("spec.containers"))
        containers = []
    names: set[str] = set()
    port_names: set[str] = set()
    for key in ("initContainers", "containers"):
        for i, c in enumerate(spec.get(key) or []):
            f = f"spec.{key}[{i}]"
            if not isinstance(c, dict):
                out.append(invalid(f, "", "must be an object"))
                continue
            n = c.get("name")
            if not n:
                out.append(required(f + ".name"))
            elif not is_label(n):
                out.append(invalid(f + ".name", n, MSG_LABEL))
            elif n in names:
                out.append(duplicate(f + ".name", n))
            names.add(n or "")
            if not c.get("image"):
                out.append(required(f + ".image"))
            for j, p in enumerate(c.get("ports") or []):
                pf = f"{f}.ports[{j}]"
                if not isinstance(p, dict):
                    out.append(invalid(pf, "", "must be an object"))
                    continue
                cp = p.get("containerPort")
                if cp is None:
                    out.append(required(pf + ".containerPort"))
                elif not is_port(cp):
                    out.append(
                        invalid(pf + ".containerPort", cp, "must be between 1 and 65535, inclusive")
                    )
                hp = p.get("hostPort")
                if hp not in (None, 0) and not is_port(hp):
                    out.append(
                        invalid(pf + ".hostPort", hp, "must be between 1 and 65535, inclusive")
                    )
                proto = p.get("protocol", "TCP")
                if proto not in PROTOCOLS:
                    out.append(unsupported(pf + ".protocol", proto, PROTOCOLS))
                pn = p.get("name")
                if pn:
                    if not is_port_name(pn):
                        out.append(
                            invalid(
                                pf + ".name",
                                pn,
                                "must be an IANA_SVC_NAME (at most 15 characters, a-z, 0-9 and '-', at least one letter)",
                            )
                        )
                    elif pn in port_names:
                        out.append(duplicate(pf + ".name", pn))
                    port_names.add(pn)
    rp = spec.get("restartPolicy", "Always")
    if rp not in ("Always", "OnFailure", "Never"):
        out.append(unsupported("spec.restartPolicy", rp, ("Always", "Never", "OnFailure")))
    dp = spec.get("dnsPolicy", "ClusterFirst")
    if dp not in ("ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"):
        out.append(
            unsupported(
                "spec.dnsPolicy", dp, ("ClusterFirst", "ClusterFirstWithHostNet", "Default", "None")
            )
        )
    for f in ("hostname", "subdomain"):
        v = spec.get(f)
        if v and not is_label(v):
            out.append(invalid(f"spec.{f}", v, MSG_LABEL))
    if spec.get("nodeName") and not is_subdomain(spec["nodeName"]):
        out.append(invalid("spec.nodeName", spec["nodeName"], MSG_SUBDOMAIN))
    st = obj.get("status") or {}
    if st.get("podIP") and not is_ip(st["podIP"]):
        out.append(invalid("status.podIP", st["podIP"], "must be a valid IP address"))
    for i, p in enumerate(st.get("podIPs") or []):
        if not isinstance(p, dict) or not is_ip(p.get("ip")):
            out.append(
                invalid(
                    f"status.podIPs[{i}].ip",
                    (p or {}).get("ip") if isinstance(p, dict) else p,
                    "must be a valid IP address",
                )
            )
    if old is not None:
        out.extend(_pod_update(spec, old.get("spec") or {}))
    return out


def _mutable_view(spec: dict[str, Any]) -> dict[str, Any]:
    """The pod spec with the fields an update may change blanked out."""
    v = {
        k: x
        for k, x in spec.items()
        if k not in ("activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds")
    }
    for key in ("containers", "initContainers"):
        if isinstance(v.get(key), list):
            v[key] = [
                {k: x for k, x in c.items() if k != "image"} if isinstance(c, dict) else c
                for c in v[key]
            ]
    return v


def _pod_update(spec: dict[str, Any], old: dict[str, Any]) -> list[Cause]:
    if old.get("nodeName") and spec.get("nodeName") != old.get("nodeName"):
        return [forbidden("spec.nodeName", "may not be changed once set")]
    a, b = _mutable_view(spec), _mutable_view(old)
    if not old.get("nodeName"):
        a.pop("nodeName", None)
        b.pop("nodeName", None)
    if a != b:
        return [
            forbidden(
                "spec",
                "pod updates may not change fields other than `spec.containers[*].image`, "
                "`spec.initContainers[*].image`, `spec.activeDeadlineSeconds`, "
                "`spec.tolerations` (only additions to existing tolerations) or "
                "`spec.terminationGracePeriodSeconds`",
            )
        ]
    return []


# ---- Node / Namespace -----------------------------------------------------------------------


def validate_node(obj: dict[str, Any], old: dict[str, Any] | None) -> list[Cause]:
    out: list[Cause] = []
    spec = obj.get("spec") or {}
    cidrs = spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
    for i, c in enumerate(cidrs):
        try:
            ipaddress.ip_network(c, strict=False)
        except (ValueError, TypeError):
            out.append(invalid(f"spec.podCIDRs[{i}]", c, "must be a valid CIDR"))
    if old is not None:
        ospec = old.get("spec") or {}
        if ospec.get("podCIDR") and spec.get("podCIDR") != ospec.get("podCIDR"):
            out.append(forbidden("spec.podCIDR", "may not be changed once set"))
    for i, a in enumerate((obj.get("status") or {}).get("addresses") or []):
        if not isinstance(a, dict) or not a.get("type"):
            out.append(required(f"status.addresses[{i}].type"))
    return out


# ---- Endpoints / EndpointSlice ------------------------------------------------------------------


def _validate_endpoint_ports(ports: Any, field: str, allow_unset: bool) -> list[Cause]:
    out: list[Cause] = []
    names: set[str] = set()
    if ports is None:
        return out
    if not isinstance(ports, list):
        return [invalid(field, "", "must be a list")]
    for i, p in enumerate(ports):
        f = f"{field}[{i}]"
        if not isinstance(p, dict):
            out.append(invalid(f, "", "must be an object"))
            continue
        port = p.get("port")
        if port is None and not allow_unset:
            out.append(required(f + ".port"))
        elif port is not None and not is_port(port):
            out.append(invalid(f + ".port", port, "must be between 1 and 65535, inclusive"))
        proto = p.get("protocol", "TCP")
        if proto not in PROTOCOLS:
            out.append(unsupported(f + ".protocol", proto, PROTOCOLS))
        n = p.get("name") or ""
        if n and not is_label(n):
            out.append(invalid(f + ".name", n, MSG_LABEL))
        if n in names:
            out.append(duplicate(f + ".name", n))
        names.add(n)
    return out


def validate_endpoints(obj: dict[str, Any], old: dict[str, Any] | None) -> list[Cause]:
    out: list[Cause] = []
    subsets = obj.get("subsets") or []
    if not isinstance(subsets, list):
        return [invalid("subsets", "", "must be a list")]
    for i, s in enumerate(subsets):
        f = f"subsets[{i}]"
        if not isinstance(s, dict):
            out.append(invalid(f, "", "must be an object"))
            continue
        for key in ("addresses", "notReadyAddresses"):
            for j, a in enumerate(s.get(key) or []):
                if not isinstance(a, dict) or not is_ip(a.get("ip")):
                    out.append(
                        invalid(
                            f"{f}.{key}[{j}].ip",
                            a.get("ip") if isinstance(a, dict) else a,
                            "must be a valid IP address",
                        )
                    )
        out.extend(_validate_endpoint_ports(s.get("ports"), f + ".ports", False))
    return out


def validate_endpointslice(obj: dict[str, Any], old: dict[str, Any] | None) -> list[Cause]:
    out: list[Cause] = []
    at = obj.get("addressType")
    if not at:
        out.append(required("addressType"))
    elif at not in ("IPv4", "IPv6", "FQDN"):
        out.append(unsupported("addressType", at, ("FQDN", "IPv4", "IPv6")))
    if old is not None and old.get("addressType") and at != old.get("addressType"):
        out.append(invalid("addressType", at, "field is immutable"))
    eps = obj.get("endpoints") or []
    if not isinstance(eps, list):
        return out + [invalid("endpoints", "", "must be a list")]
    if len(eps) > 1000:
        out.append(
            Cause(
                "endpoints",
                "FieldValueTooMany",
                f"Too many: {len(eps)}: must have at most 1000 items",
            )
        )
    for i, e in enumerate(eps):
        f = f"endpoints[{i}]"
        if not isinstance(e, dict):
            out.append(invalid(f, "", "must be an object"))
            continue
        addrs = e.get("addresses") or []
        if not addrs:
            out.append(required(f + ".addresses"))
        elif len(addrs) > 100:
            out.append(
                Cause(
                    f + ".addresses",
                    "FieldValueTooMany",
                    f"Too many: {len(addrs)}: must have at most 100 items",
                )
            )
        for j, a in enumerate(addrs):
            ok = is_ip(a, 4) if at == "IPv4" else is_ip(a, 6) if at == "IPv6" else is_subdomain(a)
            if not ok:
                out.append(invalid(f"{f}.addresses[{j}]", a, f"must be a valid {at} address"))
        h = e.get("hostname")
        if h and not is_label(h):
            out.append(invalid(f + ".hostname", h, MSG_LABEL))
    out.extend(_validate_endpoint_ports(obj.get("ports"), "ports", True))
    return out


_BY_KIND = {
    "Service": validate_service,
    "Pod": validate_pod,
    "Node": validate_node,
    "Endpoints": validate_endpoints,
    "EndpointSlice": validate_endpointslice,
}


def validate(res: Resource, obj: dict[str, Any], old: dict[str, Any] | None) -> list[Cause]:
    """All problems with ``obj`` (``old`` is the stored version on update)."""
    out = validate_meta(res, obj)
    fn = _BY_KIND.get(res.kind)
    if fn is not None:
        out.extend(fn(obj, old))
    return out
