"""Per-kind object semantics: create, update, patch, delete as kube-apiserver's registry.

Everything here is synchronous (no ``await``), so a check-then-write (resourceVersion
precondition, allocation of a ClusterIP) can never interleave with another request; the
HTTP layer awaits ``store.sync()`` afterwards for durability. Every failure raises
``ApiError`` before anything is stored or allocated, so a rejected request changes nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import uuid
from typing import Any

from . import defaults, schema, validation
from .allocators import ServiceAllocations
from .patch import apply_patch
from .resources import NAMESPACES, NODES, PODS, RESOURCES, SERVICES, Resource
from .status import (
    STALE,
    ApiError,
    Cause,
    already_exists,
    bad_request,
    conflict,
    invalid,
    not_found,
)
from .store import Entry, Store

log = logging.getLogger("apiserver_stub")

# kinds whose main PUT cannot change status (it has its own /status subresource)
STATUS_SPLIT = {"pods", "services", "nodes", "namespaces"}
# kinds a PUT may create (rest.Update AllowCreateOnUpdate upstream)
CREATE_ON_UPDATE = {"endpoints", "events", "endpointslices.discovery.k8s.io"}
PROTECTED_NAMESPACES = {"default", "kube-system", "kube-public"}
_GEN_CHARS = "bcdfghjklmnpqrstvwxz2456789"


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    md = obj.get("metadata")
    if md is None:
        md = obj["metadata"] = {}
    if not isinstance(md, dict):
        raise bad_request("metadata must be an object")
    return md


class Registry:
    """The write side of the API: what each verb does to each kind."""

    def __init__(self, store: Store, services: ServiceAllocations, pod_grace_cap: float = 0.0):
        self.store = store
        self.services = services
        self.pod_grace_cap = pod_grace_cap
        self.pending_pod_deletions: dict[tuple[str, str], float] = {}

    # ---- helpers -----------------------------------------------------------------------

    def _check_type(self, res: Resource, obj: dict[str, Any]) -> None:
        kind = obj.get("kind")
        api_version = obj.get("apiVersion")
        if kind and kind != res.kind:
            raise bad_request(
                f"the kind in the data ({kind}) does not match the expected kind ({res.kind})"
            )
        if api_version and api_version != res.api_version:
            raise bad_request(
                f"the API version in the data ({api_version}) does not match the expected API version ({res.api_version})"
            )
        obj["kind"] = res.kind
        obj["apiVersion"] = res.api_version

    def _check_namespace(self, res: Resource, obj: dict[str, Any], ns: str) -> None:
        md = _meta(obj)
        if not res.namespaced:
            md.pop("namespace", None)
            return
        body_ns = md.get("namespace")
        if body_ns and body_ns != ns:
            raise bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        md["namespace"] = ns

    def require_namespace(self, ns: str, creating: bool = True) -> None:
        entry = self.store.get(NAMESPACES, "", ns)
        if entry is None:
            raise not_found("namespaces", "", ns)
        if creating and entry.obj["metadata"].get("deletionTimestamp"):
            raise ApiError(
                403,
                "Forbidden",
                f"unable to create new content in namespace {ns} because it is being terminated",
                {"name": ns, "kind": "namespaces"},
            )

    def get(self, res: Resource, ns: str, name: str) -> Entry:
        entry = self.store.get(res, ns if res.namespaced else "", name)
        if entry is None:
            raise not_found(res.plural, res.group, name)
        return entry

    # ---- create ------------------------------------------------------------------------

    def check_fields(
        self, res: Resource, obj: dict[str, Any], fv: str, warnings: list[str] | None
    ) -> None:
        """fieldValidation: Strict rejects unknown fields; Warn/Ignore drop them (Warn says so)."""
        if fv == "Skip":  # internal writers (controllers) build well-formed objects
            return
        unknown = schema.unknown_fields(res.kind, obj)
        if not unknown:
            return
        if fv == "Strict":
            raise bad_request(
                f'{res.kind} in version "{res.version}" cannot be handled as a {res.kind}: strict decoding error: '
                + ", ".join(f'unknown field "{u}"' for u in unknown)
            )
        if fv != "Ignore" and warnings is not None:
            warnings.extend(f'unknown field "{u}"' for u in unknown)
        schema.prune(res.kind, obj)

    def create(
        self,
        res: Resource,
        obj: dict[str, Any],
        ns: str,
        dry_run: bool = False,
        fv: str = "Warn",
        warnings: list[str] | None = None,
    ) -> Entry:
        if not isinstance(obj, dict):
            raise bad_request("the body of the request must be a JSON or YAML object")
        self._check_type(res, obj)
        self.check_fields(res, obj, fv, warnings)
        self._check_namespace(res, obj, ns)
        md = _meta(obj)
        if md.get("resourceVersion"):
            raise bad_request("resourceVersion should not be set on objects to be created")
        if not md.get("name") and md.get("generateName"):
            gen = md["generateName"]
            for _ in range(10):
                cand = gen + "".join(random.choices(_GEN_CHARS, k=5))
                if self.store.get(res, ns if res.namespaced else "", cand) is None:
                    md["name"] = cand
                    break
        name = md.get("name") or ""
        if res.namespaced:
            self.require_namespace(ns)
        for key in (
            "uid",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
            "selfLink",
        ):
            md.pop(key, None)
        md["creationTimestamp"] = now()
        md["uid"] = str(uuid.uuid4())
        if res.kind not in ("Event", "Endpoints", "EndpointSlice", "Namespace"):
            md["generation"] = 1
        self._prepare_create(res, obj)
        defaults.apply(res, obj)
        causes = validation.validate(res, obj, None)
        if causes:
            raise invalid(res.kind, res.group, name, causes)
        if self.store.get(res, ns if res.namespaced else "", name) is not None:
            raise already_exists(res.plural, res.group, name)
        if res is SERVICES:
            self.services.allocate(obj, None, dry_run)  # raises ApiError, allocates nothing then
        if dry_run:
            md["resourceVersion"] = ""
            return Entry(res, obj, 0)
        return self.store.put(res, obj)

    def _prepare_create(self, res: Resource, obj: dict[str, Any]) -> None:
        if res is PODS:
            spec = obj.get("spec") or {}
            obj["status"] = {"phase": "Pending", "qosClass": defaults.pod_qos(spec)}
        elif res is SERVICES:
            obj["status"] = {"loadBalancer": {}}
        elif res is NAMESPACES:
            obj["spec"] = {"finalizers": ["kubernetes"]}
            obj["status"] = {"phase": "Active"}
            labels = obj["metadata"].setdefault("labels", {})
            labels["kubernetes.io/metadata.name"] = obj["metadata"].get("name", "")

    # ---- update ------------------------------------------------------------------------

    def update(
        self,
        res: Resource,
        ns: str,
        name: str,
        obj: dict[str, Any],
        sub: str | None = None,
        dry_run: bool = False,
        fv: str = "Warn",
        warnings: list[str] | None = None,
    ) -> tuple[Entry, bool]:
        """PUT; returns (entry, created)."""
        if not isinstance(obj, dict):
            raise bad_request("the body of the request must be a JSON or YAML object")
        self._check_type(res, obj)
        self.check_fields(res, obj, fv, warnings)
        self._check_namespace(res, obj, ns)
        md = _meta(obj)
        if md.get("name") and md["name"] != name:
            raise bad_request(
                f"the name of the object ({md['name']}) does not match the name on the URL ({name})"
            )
        md["name"] = name
        old = self.store.get(res, ns if res.namespaced else "", name)
        if old is None:
            if res.key in CREATE_ON_UPDATE and sub is None:
                md.pop("resourceVersion", None)
                return self.create(res, obj, ns, dry_run, fv, warnings), True
            raise not_found(res.plural, res.group, name)
        rv = md.get("resourceVersion")
        if rv and rv != str(old.rv):
            raise conflict(res.plural, res.group, name, STALE)
        return self._replace(res, old, obj, sub, dry_run), False

    def patch(
        self,
        res: Resource,
        ns: str,
        name: str,
        content_type: str,
        body: bytes,
        sub: str | None = None,
        dry_run: bool = False,
        fv: str = "Warn",
        warnings: list[str] | None = None,
    ) -> Entry:
        old = self.get(res, ns, name)
        current = old.copy()
        patched = apply_patch(res, current, content_type, body)
        if not isinstance(patched, dict):
            raise bad_request("the patch must produce an object")
        self.check_fields(res, patched, fv, warnings)
        md = _meta(patched)
        if md.get("name", name) != name:
            raise bad_request(
                f"the name of the object ({md.get('name')}) does not match the name on the URL ({name})"
            )
        self._check_type(res, patched)
        self._check_namespace(res, patched, ns)
        rv = md.get("resourceVersion")
        if rv and rv != str(old.rv):
            raise conflict(res.plural, res.group, name, STALE)
        return self._replace(res, old, patched, sub, dry_run)

    def _replace(
        self, res: Resource, old: Entry, obj: dict[str, Any], sub: str | None, dry_run: bool
    ) -> Entry:
        md = obj["metadata"]
        omd = old.obj["metadata"]
        for key in (
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ):
            if key in omd:
                md[key] = omd[key]
            else:
                md.pop(key, None)
        md.pop("managedFields", None)
        if sub == "status":
            # status writes change status only (and keep all of metadata as it was)
            new = old.copy()
            if "status" in obj:
                new["status"] = obj["status"]
            else:
                new.pop("status", None)
            obj = new
            md = obj["metadata"]
        elif res.key in STATUS_SPLIT:
            if "status" in old.obj:
                obj["status"] = old.copy()["status"]
            else:
                obj.pop("status", None)
            if res is NAMESPACES:
                obj["spec"] = old.copy().get("spec", {})
        if res is SERVICES and sub is None:
            _wipe_on_type_change(obj, old.obj)
        defaults.apply(res, obj)
        causes = validation.validate(res, obj, old.obj)
        if causes:
            raise invalid(res.kind, res.group, md.get("name", ""), causes)
        if res is SERVICES and sub is None:
            self.services.allocate(obj, old.obj, dry_run)
        if "generation" in omd and obj.get("spec") != old.obj.get("spec"):
            md["generation"] = int(omd["generation"]) + 1
        md["resourceVersion"] = str(old.rv)
        if _same(obj, old.obj):
            if res is SERVICES and sub is None and not dry_run:
                self.services.release_changes(obj, old.obj)
            return old
        if dry_run:
            return Entry(res, obj, old.rv)
        if res is SERVICES and sub is None:
            self.services.release_changes(obj, old.obj)
        if omd.get("finalizers") and md.get("deletionTimestamp") and not md.get("finalizers"):
            return self._remove(res, old)
        return self.store.put(res, obj)

    # ---- subresources ------------------------------------------------------------------

    def bind(self, ns: str, name: str, binding: dict[str, Any]) -> None:
        """pods/{name}/binding: set spec.nodeName once, as the scheduler does."""
        if not isinstance(binding, dict):
            raise bad_request("the body of the request must be a Binding object")
        target = binding.get("target") or {}
        node = target.get("name")
        bname = (binding.get("metadata") or {}).get("name") or name
        if bname != name:
            raise bad_request(f"the name of the binding ({bname}) does not match the pod ({name})")
        if not node:
            raise invalid(
                "Binding", "", name, [Cause("target.name", "FieldValueRequired", "Required value")]
            )
        old = self.get(PODS, ns, name)
        pod = old.copy()
        spec = pod.setdefault("spec", {})
        if pod["metadata"].get("deletionTimestamp"):
            raise conflict("pods", "", name, "pod is being deleted, cannot be assigned to a host")
        if spec.get("nodeName"):
            raise conflict(
                "pods", "", name, f'pod {name} is already assigned to node "{spec["nodeName"]}"'
            )
        spec["nodeName"] = node
        status = pod.setdefault("status", {})
        conds = [c for c in status.get("conditions") or [] if c.get("type") != "PodScheduled"]
        conds.append(
            {
                "type": "PodScheduled",
                "status": "True",
                "lastProbeTime": None,
                "lastTransitionTime": now(),
            }
        )
        status["conditions"] = conds
        self.store.put(PODS, pod)

    # ---- delete ------------------------------------------------------------------------

    def delete(
        self,
        res: Resource,
        ns: str,
        name: str,
        options: dict[str, Any] | None = None,
        dry_run: bool = False,
    ) -> Entry:
        options = options or {}
        old = self.get(res, ns, name)
        pre = options.get("preconditions") or {}
        if pre.get("uid") and pre["uid"] != old.obj["metadata"].get("uid"):
            raise conflict(
                res.plural,
                res.group,
                name,
                f"Precondition failed: UID in precondition: {pre['uid']}, UID in object meta: {old.obj['metadata'].get('uid')}",
            )
        if pre.get("resourceVersion") and pre["resourceVersion"] != str(old.rv):
            raise conflict(
                res.plural,
                res.group,
                name,
                f"Precondition failed: ResourceVersion in precondition: {pre['resourceVersion']}, ResourceVersion in meta: {old.rv}",
            )
        if res is NAMESPACES and name in PROTECTED_NAMESPACES:
            raise ApiError(
                403,
                "Forbidden",
                f'namespaces "{name}" is forbidden: this namespace may not be deleted',
                {"name": name, "kind": "namespaces"},
            )
        if dry_run:
            return old
        md = old.obj["metadata"]
        if res is NAMESPACES:
            return self._delete_namespace(old)
        if md.get("finalizers"):
            if md.get("deletionTimestamp"):
                return old
            obj = old.copy()
            obj["metadata"]["deletionTimestamp"] = now()
            obj["metadata"]["deletionGracePeriodSeconds"] = 0
            return self.store.put(res, obj)
        if res is PODS and self.pod_grace_cap > 0:
            spec = old.obj.get("spec") or {}
            grace = options.get("gracePeriodSeconds")
            if grace is None:
                grace = spec.get("terminationGracePeriodSeconds", 30)
            if spec.get("nodeName") and grace and int(grace) > 0:
                if md.get("deletionTimestamp"):
                    return old
                obj = old.copy()
                wait = min(float(grace), self.pod_grace_cap)
                obj["metadata"]["deletionTimestamp"] = now()
                obj["metadata"]["deletionGracePeriodSeconds"] = int(grace)
                self.pending_pod_deletions[(ns, name)] = wait
                return self.store.put(res, obj)
        return self._remove(res, old)

    def _remove(self, res: Resource, old: Entry) -> Entry:
        entry = self.store.remove(res, old.namespace, old.name)
        if res is SERVICES:
            self.services.release(old.obj)
        return entry or old

    def _delete_namespace(self, ns_entry: Entry) -> Entry:
        """Mark the namespace Terminating; ``finish_namespace`` (run shortly after by the
        namespace controller) deletes its content and then the namespace, as upstream."""
        if ns_entry.obj["metadata"].get("deletionTimestamp"):
            return ns_entry
        obj = ns_entry.copy()
        obj["metadata"]["deletionTimestamp"] = now()
        obj["metadata"]["deletionGracePeriodSeconds"] = 0
        obj["status"] = {"phase": "Terminating"}
        return self.store.put(NAMESPACES, obj)

    def finish_namespace(self, name: str) -> None:
        entry = self.store.get(NAMESPACES, "", name)
        if entry is None or not entry.obj["metadata"].get("deletionTimestamp"):
            return
        for res in RESOURCES:
            if res.namespaced:
                for e in list(self.store.list(res, name)):
                    self._remove(res, e)
        self.store.remove(NAMESPACES, "", name)

    def finish_pod_deletion(self, ns: str, name: str) -> None:
        """The kubelet stand-in: remove a terminating pod once its grace period ran out."""
        self.pending_pod_deletions.pop((ns, name), None)
        e = self.store.get(PODS, ns, name)
        if e is not None and e.obj["metadata"].get("deletionTimestamp"):
            self.store.remove(PODS, ns, name)

    def ensure(self, res: Resource, obj: dict[str, Any]) -> Entry:
        """Create or update, used at start-up (namespaces, the kubernetes service)."""
        md = obj["metadata"]
        existing = self.store.get(
            res, md.get("namespace", "") if res.namespaced else "", md["name"]
        )
        if existing is not None:
            return existing
        return self.create(res, obj, md.get("namespace", ""))


def _wipe_on_type_change(svc: dict[str, Any], old: dict[str, Any]) -> None:
    """Fields the API server clears when a Service changes type (as upstream does)."""
    spec = svc.get("spec")
    if not isinstance(spec, dict):
        return
    new_type = spec.get("type", "ClusterIP")
    old_type = (old.get("spec") or {}).get("type", "ClusterIP")
    if new_type == old_type:
        return
    if new_type == "ExternalName":
        for key in (
            "clusterIP",
            "clusterIPs",
            "ipFamilies",
            "ipFamilyPolicy",
            "sessionAffinity",
            "sessionAffinityConfig",
            "internalTrafficPolicy",
            "externalTrafficPolicy",
        ):
            spec.pop(key, None)
    if new_type not in ("NodePort", "LoadBalancer"):
        spec.pop("externalTrafficPolicy", None)
        spec.pop("healthCheckNodePort", None)
        for p in spec.get("ports") or []:
            if isinstance(p, dict):
                p.pop("nodePort", None)
    if new_type != "LoadBalancer":
        spec.pop("allocateLoadBalancerNodePorts", None)
        spec.pop("loadBalancerClass", None)


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal apart from resourceVersion (an update that changes nothing bumps nothing)."""
    if a.keys() != b.keys():
        return False
    for k in a:
        if k == "metadata":
            ma, mb = a[k], b[k]
            if {x: y for x, y in ma.items() if x != "resourceVersion"} != {
                x: y for x, y in mb.items() if x != "resourceVersion"
            }:
                return False
        elif a[k] != b[k]:
            return False
    return True


__all__ = ["Registry", "NODES", "now"]
