"""Query name -> request: which Service, namespace, endpoint, port and protocol a name asks for.

Division of labour: the index is built forwards (objects -> every name they own), so the
hot path never parses names; this is the backwards reading, CoreDNS's ``parseRequest``,
used by the slow path for names that cannot be precomputed (``pods insecure``) and by the
tests to state the naming rules. Shapes under ``<zone>`` (lowercased):

    _<port>._<proto>.<service>.<ns>.svc   SRV for a named port
    <endpoint>.<service>.<ns>.svc         one endpoint (hostname or dashed IP)
    <service>.<ns>.svc                    the Service
    <a-b-c-d>.<ns>.pod                    a pod by IP
    <ns>.svc | <ns>.pod | svc | pod | ""  exist without records (NODATA)

Anything longer, or not ending in ``svc``/``pod``, is not a name of the zone (NXDOMAIN).
"""

from __future__ import annotations

from dataclasses import dataclass

SVC, POD = "svc", "pod"


@dataclass(frozen=True, slots=True)
class Request:
    pod_or_svc: str = ""  # "" for the apex, svc. or pod.
    namespace: str = ""
    service: str = ""  # the Service name, or the dashed pod IP for pods
    endpoint: str = ""
    port: str = ""  # without the underscore
    protocol: str = ""  # without the underscore


class InvalidName(ValueError):
    """The name is inside the zone but cannot exist (NXDOMAIN)."""


def strip_underscore(label: str) -> str:
    return label[1:] if label.startswith("_") else label


def parse_request(name: str, zone: str) -> Request:
    n = name.lower().rstrip(".")
    z = zone.lower().rstrip(".")
    if n == z:
        return Request()
    if not n.endswith("." + z):
        raise InvalidName(f"{name} is not in zone {zone}")
    segs = n[: -len(z) - 1].split(".")
    kind = segs.pop()
    if kind not in (SVC, POD):
        raise InvalidName(f"{name}: expected .svc. or .pod. before the zone")
    if not segs:
        return Request(kind)
    ns = segs.pop()
    if not segs:
        return Request(kind, ns)
    service = segs.pop()
    if not segs:
        return Request(kind, ns, service)
    if len(segs) == 1:
        return Request(kind, ns, service, endpoint=segs[0])
    if len(segs) == 2:
        return Request(
            kind, ns, service, port=strip_underscore(segs[0]), protocol=strip_underscore(segs[1])
        )
    raise InvalidName(f"{name}: too many labels")
