"""Our own description of the served kinds' fields: the single source for the OpenAPI
documents (kubectl validation, ``kubectl explain``, client-side apply patch metadata) and
for server-side unknown-field checks (``fieldValidation``).

A schema is a plain OpenAPI v3 dict. ``OPEN`` subtrees (``x-kubernetes-preserve-unknown-
fields``) accept any field: they are kinds' corners we store but do not interpret.
"""

from __future__ import annotations

from typing import Any

from .patch import MERGE_KEYS

CORE = "io.k8s.api.core.v1."
DISC = "io.k8s.api.discovery.v1."
META = "io.k8s.apimachinery.pkg.apis.meta.v1."
INTSTR = "io.k8s.apimachinery.pkg.util.intstr.IntOrString"

Schema = dict[str, Any]


def s(desc: str) -> Schema:
    return {"type": "string", "description": desc}


def i(desc: str, fmt: str = "int32") -> Schema:
    return {"type": "integer", "format": fmt, "description": desc}


def b(desc: str) -> Schema:
    return {"type": "boolean", "description": desc}


def ref(name: str, desc: str = "") -> Schema:
    out: Schema = {"allOf": [{"$ref": f"#/components/schemas/{name}"}]}
    if desc:
        out["description"] = desc
    return out


def arr(item: Schema, desc: str) -> Schema:
    return {"type": "array", "items": item, "description": desc}


def smap(desc: str) -> Schema:
    return {
        "type": "object",
        "additionalProperties": {"type": "string", "default": ""},
        "description": desc,
    }


def obj(desc: str, props: dict[str, Schema], required: list[str] | None = None) -> Schema:
    out: Schema = {"type": "object", "description": desc, "properties": props}
    if required:
        out["required"] = required
    return out


def open_obj(desc: str) -> Schema:
    return {"type": "object", "description": desc, "x-kubernetes-preserve-unknown-fields": True}


def kind_schema(group: str, version: str, kind: str, desc: str, props: dict[str, Schema]) -> Schema:
    base = {
        "apiVersion": s(
            "APIVersion defines the versioned schema of this representation of an object."
        ),
        "kind": s("Kind is a string value representing the REST resource this object represents."),
        "metadata": ref(META + "ObjectMeta", "Standard object's metadata."),
    }
    out = obj(desc, {**base, **props})
    out["x-kubernetes-group-version-kind"] = [{"group": group, "kind": kind, "version": version}]
    return out


def list_schema(group: str, version: str, kind: str, item: str) -> Schema:
    out = obj(
        f"{kind} is a list of {item.rsplit('.', 1)[-1]} objects.",
        {
            "apiVersion": s(
                "APIVersion defines the versioned schema of this representation of an object."
            ),
            "kind": s(
                "Kind is a string value representing the REST resource this object represents."
            ),
            "metadata": ref(META + "ListMeta", "Standard list metadata."),
            "items": arr(ref(item), "List of objects."),
        },
        ["items"],
    )
    out["x-kubernetes-group-version-kind"] = [{"group": group, "kind": kind, "version": version}]
    return out


SCHEMAS: dict[str, Schema] = {}

# ---- meta ---------------------------------------------------------------------------------------

SCHEMAS[META + "ObjectMeta"] = obj(
    "ObjectMeta is metadata that all persisted resources must have.",
    {
        "name": s("Name must be unique within a namespace; a DNS name for most kinds."),
        "generateName": s(
            "Optional prefix the server uses to generate a unique name when name is empty."
        ),
        "namespace": s("Namespace the object lives in; empty for cluster-scoped kinds."),
        "selfLink": s("Deprecated; not set."),
        "uid": s("Unique id set by the server at creation; never reused."),
        "resourceVersion": s(
            "Opaque version of the object, changed on every write; used for optimistic concurrency and watches."
        ),
        "generation": i("Sequence number of spec changes, set by the server.", "int64"),
        "creationTimestamp": {**s("Server time at creation (RFC 3339)."), "format": "date-time"},
        "deletionTimestamp": {
            **s(
                "Set when deletion was requested and the object waits for finalizers or a grace period."
            ),
            "format": "date-time",
        },
        "deletionGracePeriodSeconds": i(
            "Seconds allowed for graceful termination once deletionTimestamp is set.", "int64"
        ),
        "labels": smap("Key/value pairs selectable by label selectors."),
        "annotations": smap("Key/value pairs for tools; not selectable."),
        "ownerReferences": {
            **arr(
                ref(META + "OwnerReference"),
                "Objects this one depends on; deleting them may garbage-collect it.",
            ),
            "x-kubernetes-patch-merge-key": "uid",
            "x-kubernetes-patch-strategy": "merge",
        },
        "finalizers": {
            **arr(
                {"type": "string", "default": ""},
                "Tokens that must be removed before the object is deleted.",
            ),
            "x-kubernetes-patch-strategy": "merge",
            "x-kubernetes-list-type": "set",
        },
        "managedFields": arr(
            open_obj("Field ownership entry."), "Field ownership (accepted, not tracked)."
        ),
    },
)
SCHEMAS[META + "OwnerReference"] = obj(
    "OwnerReference points at the object that owns this one.",
    {
        "apiVersion": s("API version of the owner."),
        "kind": s("Kind of the owner."),
        "name": s("Name of the owner."),
        "uid": s("UID of the owner."),
        "controller": b("True when the owner is the managing controller."),
        "blockOwnerDeletion": b(
            "Owner cannot be deleted before this object when true (foreground deletion)."
        ),
    },
    ["apiVersion", "kind", "name", "uid"],
)
SCHEMAS[META + "ListMeta"] = obj(
    "ListMeta describes a list response.",
    {
        "resourceVersion": s("Version of the list; start a watch from it."),
        "continue": s("Token to fetch the next page when the list was limited."),
        "remainingItemCount": i("Items left after this page.", "int64"),
        "selfLink": s("Deprecated; not set."),
    },
)
SCHEMAS[INTSTR] = {
    "type": "string",
    "format": "int-or-string",
    "description": "A number or a string.",
    "x-kubernetes-int-or-string": True,
}
SCHEMAS[META + "LabelSelector"] = open_obj("A label query over a set of resources.")

# ---- core: Namespace ------------------------------------------------------------------------------

SCHEMAS[CORE + "Namespace"] = kind_schema(
    "",
    "v1",
    "Namespace",
    "Namespace provides a scope for names of namespaced objects.",
    {
        "spec": ref(CORE + "NamespaceSpec", "Behaviour of the namespace."),
        "status": ref(CORE + "NamespaceStatus", "Status of the namespace; read-only."),
    },
)
SCHEMAS[CORE + "NamespaceSpec"] = obj(
    "NamespaceSpec.",
    {
        "finalizers": arr(
            {"type": "string", "default": ""},
            "Finalizers that must be empty before the namespace is removed.",
        )
    },
)
SCHEMAS[CORE + "NamespaceStatus"] = obj(
    "NamespaceStatus.",
    {
        "phase": s("Active or Terminating."),
        "conditions": arr(open_obj("Namespace condition."), "Conditions of the namespace."),
    },
)

# ---- core: Node -----------------------------------------------------------------------------------

SCHEMAS[CORE + "Node"] = kind_schema(
    "",
    "v1",
    "Node",
    "Node is a worker machine; here, a network namespace of the lab.",
    {
        "spec": ref(CORE + "NodeSpec", "Behaviour of the node."),
        "status": ref(CORE + "NodeStatus", "Observed state of the node."),
    },
)
SCHEMAS[CORE + "NodeSpec"] = obj(
    "NodeSpec describes the attributes a node is created with.",
    {
        "podCIDR": s("Pod IP range assigned to the node (set by node IPAM)."),
        "podCIDRs": {
            **arr(
                {"type": "string", "default": ""},
                "Pod IP ranges assigned to the node, one per IP family.",
            ),
            "x-kubernetes-patch-strategy": "merge",
            "x-kubernetes-list-type": "set",
        },
        "providerID": s("Cloud provider id."),
        "unschedulable": b("Mark the node unschedulable."),
        "taints": arr(open_obj("Taint."), "Taints of the node."),
        "externalID": s("Deprecated."),
        "configSource": open_obj("Deprecated."),
    },
)
SCHEMAS[CORE + "NodeStatus"] = obj(
    "NodeStatus is the observed state of a node.",
    {
        "addresses": {
            **arr(ref(CORE + "NodeAddress"), "Addresses of the node (InternalIP, Hostname ...)."),
            "x-kubernetes-patch-merge-key": "type",
            "x-kubernetes-patch-strategy": "merge",
        },
        "conditions": {
            **arr(ref(CORE + "NodeCondition"), "Conditions such as Ready."),
            "x-kubernetes-patch-merge-key": "type",
            "x-kubernetes-patch-strategy": "merge",
        },
        "capacity": open_obj("Total resources of the node."),
        "allocatable": open_obj("Resources available to pods."),
        "nodeInfo": open_obj("Versions and ids reported by the node."),
        "phase": s("Deprecated."),
        "daemonEndpoints": open_obj("Endpoints of daemons on the node."),
        "images": arr(open_obj("Image."), "Images on the node."),
        "volumesInUse": arr({"type": "string"}, "Volumes in use."),
        "volumesAttached": arr(open_obj("Volume."), "Volumes attached."),
        "config": open_obj("Node config status."),
        "runtimeHandlers": arr(open_obj("Runtime handler."), "Runtime handlers."),
        "features": open_obj("Node features."),
    },
)
SCHEMAS[CORE + "NodeAddress"] = obj(
    "NodeAddress.",
    {"type": s("Hostname, InternalIP or ExternalIP."), "address": s("The address.")},
    ["type", "address"],
)
SCHEMAS[CORE + "NodeCondition"] = obj(
    "NodeCondition.",
    {
        "type": s("Condition type, e.g. Ready."),
        "status": s("True, False or Unknown."),
        "reason": s("Machine-readable reason."),
        "message": s("Human-readable message."),
        "lastHeartbeatTime": {**s("Last heartbeat."), "format": "date-time"},
        "lastTransitionTime": {**s("Last status change."), "format": "date-time"},
    },
    ["type", "status"],
)

# ---- core: Pod ------------------------------------------------------------------------------------

SCHEMAS[CORE + "Pod"] = kind_schema(
    "",
    "v1",
    "Pod",
    "Pod is a group of containers sharing a network namespace.",
    {
        "spec": ref(CORE + "PodSpec", "Desired behaviour of the pod."),
        "status": ref(CORE + "PodStatus", "Observed state of the pod; written by the kubelet."),
    },
)
_open_pod = {
    k: open_obj(k)
    for k in (
        "affinity",
        "securityContext",
        "dnsConfig",
        "overhead",
        "os",
        "resources",
        "resourceClaims",
        "schedulingGates",
    )
}
SCHEMAS[CORE + "PodSpec"] = obj(
    "PodSpec is the description of a pod.",
    {
        "containers": {
            **arr(ref(CORE + "Container"), "Containers of the pod; at least one."),
            "x-kubernetes-patch-merge-key": "name",
            "x-kubernetes-patch-strategy": "merge",
        },
        "initContainers": {
            **arr(ref(CORE + "Container"), "Containers run to completion before the others start."),
            "x-kubernetes-patch-merge-key": "name",
            "x-kubernetes-patch-strategy": "merge",
        },
        "ephemeralContainers": arr(open_obj("Ephemeral container."), "Debug containers."),
        "volumes": {
            **arr(open_obj("Volume."), "Volumes the containers can mount."),
            "x-kubernetes-patch-merge-key": "name",
            "x-kubernetes-patch-strategy": "merge,retainKeys",
        },
        "nodeName": s(
            "Node the pod is bound to (set by the scheduler via pods/binding, or directly)."
        ),
        "nodeSelector": smap("Labels a node must have to run the pod."),
        "hostname": s(
            "Hostname of the pod; with subdomain, gives the pod a DNS record under a headless service."
        ),
        "subdomain": s(
            "Headless service name giving the pod the DNS name <hostname>.<subdomain>.<ns>.svc."
        ),
        "hostNetwork": b("Use the node's network namespace."),
        "hostPID": b("Use the host's PID namespace."),
        "hostIPC": b("Use the host's IPC namespace."),
        "shareProcessNamespace": b("Share a PID namespace between containers."),
        "restartPolicy": s("Always, OnFailure or Never."),
        "dnsPolicy": s("ClusterFirst, ClusterFirstWithHostNet, Default or None."),
        "schedulerName": s("Scheduler that places the pod."),
        "serviceAccountName": s("Service account of the pod."),
        "serviceAccount": s("Deprecated alias of serviceAccountName."),
        "automountServiceAccountToken": b("Mount the service account token."),
        "terminationGracePeriodSeconds": i(
            "Seconds between SIGTERM and SIGKILL on deletion.", "int64"
        ),
        "activeDeadlineSeconds": i("Seconds the pod may run.", "int64"),
        "priority": i("Priority value."),
        "priorityClassName": s("Priority class."),
        "preemptionPolicy": s("PreemptLowerPriority or Never."),
        "runtimeClassName": s("Runtime class."),
        "enableServiceLinks": b("Inject service environment variables."),
        "tolerations": arr(open_obj("Toleration."), "Taints the pod tolerates."),
        "topologySpreadConstraints": arr(open_obj("Constraint."), "Spread constraints."),
        "readinessGates": arr(open_obj("Readiness gate."), "Extra conditions for readiness."),
        "imagePullSecrets": {
            **arr(open_obj("Secret reference."), "Pull secrets."),
            "x-kubernetes-patch-merge-key": "name",
            "x-kubernetes-patch-strategy": "merge",
        },
        "hostAliases": {
            **arr(open_obj("Host alias."), "/etc/hosts entries."),
            "x-kubernetes-patch-merge-key": "ip",
            "x-kubernetes-patch-strategy": "merge",
        },
        "setHostnameAsFQDN": b("Use the FQDN as hostname."),
        "hostUsers": b("Use the host user namespace."),
        **_open_pod,
    },
    ["containers"],
)
SCHEMAS[CORE + "Container"] = obj(
    "A container of a pod.",
    {
        "name": s("Name of the container (DNS label), unique in the pod."),
        "image": s("Image to run."),
        "command": arr({"type": "string"}, "Entrypoint."),
        "args": arr({"type": "string"}, "Arguments."),
        "workingDir": s("Working directory."),
        "ports": {
            **arr(
                ref(CORE + "ContainerPort"),
                "Ports the container listens on; a Service's named targetPort resolves against these.",
            ),
            "x-kubernetes-patch-merge-key": "containerPort",
            "x-kubernetes-patch-strategy": "merge",
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["containerPort", "protocol"],
        },
        "env": {
            **arr(open_obj("Environment variable."), "Environment variables."),
            "x-kubernetes-patch-merge-key": "name",
            "x-kubernetes-patch-strategy": "merge",
        },
        "envFrom": arr(open_obj("Env source."), "Environment sources."),
        "resources": open_obj("Compute resources (requests, limits)."),
        "volumeMounts": {
            **arr(open_obj("Volume mount."), "Mounts."),
            "x-kubernetes-patch-merge-key": "mountPath",
            "x-kubernetes-patch-strategy": "merge",
        },
        "imagePullPolicy": s("Always, Never or IfNotPresent."),
        "terminationMessagePath": s("Path of the termination message."),
        "terminationMessagePolicy": s("File or FallbackToLogsOnError."),
        **{
            k: open_obj(k)
            for k in (
                "livenessProbe",
                "readinessProbe",
                "startupProbe",
                "lifecycle",
                "securityContext",
            )
        },
        "volumeDevices": arr(open_obj("Device."), "Block devices."),
        "stdin": b("Allocate stdin."),
        "stdinOnce": b("Close stdin after first attach."),
        "tty": b("Allocate a TTY."),
        "restartPolicy": s("Restart policy of an init container (Always for sidecars)."),
        "resizePolicy": arr(open_obj("Resize policy."), "Resize policies."),
    },
    ["name"],
)
SCHEMAS[CORE + "ContainerPort"] = obj(
    "A port a container listens on.",
    {
        "name": s("IANA_SVC_NAME, unique in the pod; referenced by named targetPorts."),
        "containerPort": i("Port number on the pod's IP (1-65535)."),
        "protocol": s("TCP (default), UDP or SCTP."),
        "hostPort": i("Port on the node."),
        "hostIP": s("Host IP to bind the hostPort to."),
    },
    ["containerPort"],
)
SCHEMAS[CORE + "PodStatus"] = obj(
    "PodStatus is the observed state of a pod.",
    {
        "phase": s("Pending, Running, Succeeded, Failed or Unknown."),
        "conditions": {
            **arr(
                ref(CORE + "PodCondition"),
                "Conditions such as Ready; the Ready condition decides ready vs not-ready endpoints.",
            ),
            "x-kubernetes-patch-merge-key": "type",
            "x-kubernetes-patch-strategy": "merge",
        },
        "message": s("Human-readable message."),
        "reason": s("Machine-readable reason."),
        "hostIP": s("IP of the node."),
        "hostIPs": arr(open_obj("Host IP."), "IPs of the node."),
        "podIP": s("IP of the pod; endpoints use it."),
        "podIPs": {
            **arr(obj("Pod IP.", {"ip": s("An IP of the pod.")}), "IPs of the pod."),
            "x-kubernetes-patch-merge-key": "ip",
            "x-kubernetes-patch-strategy": "merge",
        },
        "startTime": {**s("When the kubelet acknowledged the pod."), "format": "date-time"},
        "qosClass": s("Guaranteed, Burstable or BestEffort."),
        "containerStatuses": arr(open_obj("Container status."), "Status of each container."),
        "initContainerStatuses": arr(
            open_obj("Container status."), "Status of each init container."
        ),
        "ephemeralContainerStatuses": arr(
            open_obj("Container status."), "Status of each ephemeral container."
        ),
        "nominatedNodeName": s("Node nominated by preemption."),
        "resize": s("Resize status."),
        "resourceClaimStatuses": arr(open_obj("Claim status."), "Resource claim statuses."),
    },
)
SCHEMAS[CORE + "PodCondition"] = obj(
    "PodCondition.",
    {
        "type": s("PodScheduled, Initialized, ContainersReady, Ready ..."),
        "status": s("True, False or Unknown."),
        "reason": s("Machine-readable reason."),
        "message": s("Human-readable message."),
        "lastProbeTime": {**s("Last probe."), "format": "date-time"},
        "lastTransitionTime": {**s("Last status change."), "format": "date-time"},
    },
    ["type", "status"],
)

# ---- core: Service --------------------------------------------------------------------------------

SCHEMAS[CORE + "Service"] = kind_schema(
    "",
    "v1",
    "Service",
    "Service is a named abstraction of software service (for example, mysql) consisting of local port (for example 3306) that the proxy listens on, and the selector that determines which pods will answer requests sent through the proxy.",
    {
        "spec": ref(CORE + "ServiceSpec", "Behaviour of the service."),
        "status": ref(CORE + "ServiceStatus", "Observed state of the service."),
    },
)
SCHEMAS[CORE + "ServiceSpec"] = obj(
    "ServiceSpec describes the attributes a user creates on a service.",
    {
        "ports": {
            **arr(ref(CORE + "ServicePort"), "Ports exposed by the service."),
            "x-kubernetes-patch-merge-key": "port",
            "x-kubernetes-patch-strategy": "merge",
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["port", "protocol"],
        },
        "selector": smap(
            "Pods with these labels receive the traffic; without a selector the endpoints are managed by hand."
        ),
        "clusterIP": s(
            'Virtual IP of the service, allocated from the service CIDR unless given; "None" makes a headless service.'
        ),
        "clusterIPs": {
            **arr(
                {"type": "string", "default": ""}, "Virtual IPs of the service, one per IP family."
            ),
            "x-kubernetes-list-type": "atomic",
        },
        "type": s("ClusterIP (default), NodePort, LoadBalancer or ExternalName."),
        "externalIPs": arr(
            {"type": "string", "default": ""}, "Extra IPs the nodes accept traffic for."
        ),
        "sessionAffinity": s("None (default) or ClientIP."),
        "loadBalancerIP": s("Deprecated."),
        "loadBalancerSourceRanges": arr(
            {"type": "string", "default": ""}, "Client CIDRs allowed through the load balancer."
        ),
        "externalName": s("DNS name returned as a CNAME for type ExternalName."),
        "externalTrafficPolicy": s(
            "Cluster (default) or Local, for NodePort and LoadBalancer traffic."
        ),
        "healthCheckNodePort": i("Health check port for externalTrafficPolicy Local."),
        "publishNotReadyAddresses": b("Publish endpoints of pods that are not ready."),
        "sessionAffinityConfig": obj(
            "Session affinity settings.",
            {
                "clientIP": obj(
                    "ClientIP affinity.",
                    {"timeoutSeconds": i("Seconds of affinity (default 10800).")},
                )
            },
        ),
        "ipFamilies": {
            **arr({"type": "string", "default": ""}, "IPv4 and/or IPv6."),
            "x-kubernetes-list-type": "atomic",
        },
        "ipFamilyPolicy": s("SingleStack, PreferDualStack or RequireDualStack."),
        "allocateLoadBalancerNodePorts": b(
            "Allocate NodePorts for a LoadBalancer service (default true)."
        ),
        "loadBalancerClass": s("Load balancer implementation class."),
        "internalTrafficPolicy": s(
            "Cluster (default) or Local, for traffic from inside the cluster."
        ),
        "trafficDistribution": s("Routing preference, e.g. PreferClose."),
    },
)
SCHEMAS[CORE + "ServicePort"] = obj(
    "ServicePort contains information on a service's port.",
    {
        "name": s("Name of the port (DNS label); required when there are several ports."),
        "protocol": s("TCP (default), UDP or SCTP."),
        "appProtocol": s("Application protocol hint."),
        "port": i("Port exposed by the service."),
        "targetPort": ref(
            INTSTR, "Port number or container port name on the pods (defaults to port)."
        ),
        "nodePort": i(
            "Port on every node for NodePort and LoadBalancer services (30000-32767; allocated unless given)."
        ),
    },
    ["port"],
)
SCHEMAS[CORE + "ServiceStatus"] = obj(
    "ServiceStatus.",
    {
        "loadBalancer": open_obj("Load balancer status (ingress points)."),
        "conditions": arr(open_obj("Condition."), "Conditions."),
    },
)

# ---- core: Endpoints ------------------------------------------------------------------------------

SCHEMAS[CORE + "Endpoints"] = kind_schema(
    "",
    "v1",
    "Endpoints",
    "Endpoints is the set of addresses implementing a service (maintained by the endpoints controller for services with a selector).",
    {"subsets": arr(ref(CORE + "EndpointSubset"), "Groups of addresses sharing the same ports.")},
)
SCHEMAS[CORE + "EndpointSubset"] = obj(
    "EndpointSubset is a group of addresses with a common set of ports.",
    {
        "addresses": arr(ref(CORE + "EndpointAddress"), "Ready addresses."),
        "notReadyAddresses": arr(
            ref(CORE + "EndpointAddress"), "Addresses of pods that are not ready."
        ),
        "ports": arr(ref(CORE + "EndpointPort"), "Ports of these addresses."),
    },
)
SCHEMAS[CORE + "EndpointAddress"] = obj(
    "EndpointAddress is a single IP address of an endpoint.",
    {
        "ip": s("IP of the endpoint."),
        "hostname": s("Hostname of the endpoint (pod hostname under its subdomain)."),
        "nodeName": s("Node hosting the endpoint."),
        "targetRef": ref(CORE + "ObjectReference", "The pod behind the address."),
    },
    ["ip"],
)
SCHEMAS[CORE + "EndpointPort"] = obj(
    "EndpointPort is a port of an endpoint.",
    {
        "name": s("Name matching the service port name."),
        "port": i("Port number."),
        "protocol": s("TCP, UDP or SCTP."),
        "appProtocol": s("Application protocol."),
    },
    ["port"],
)
SCHEMAS[CORE + "ObjectReference"] = obj(
    "ObjectReference points at another object.",
    {
        "kind": s("Kind of the referent."),
        "namespace": s("Namespace of the referent."),
        "name": s("Name of the referent."),
        "uid": s("UID of the referent."),
        "apiVersion": s("API version of the referent."),
        "resourceVersion": s("Resource version of the referent."),
        "fieldPath": s("Field within the referent."),
    },
)

# ---- core: Event -----------------------------------------------------------------------------------

SCHEMAS[CORE + "Event"] = kind_schema(
    "",
    "v1",
    "Event",
    "Event is a report of something that happened in the cluster.",
    {
        "involvedObject": ref(CORE + "ObjectReference", "The object this event is about."),
        **{
            k: s(k)
            for k in (
                "reason",
                "message",
                "type",
                "action",
                "reportingComponent",
                "reportingInstance",
            )
        },
        "source": open_obj("Component reporting the event."),
        "count": i("Times this event occurred."),
        **{
            k: {**s(k), "format": "date-time"}
            for k in ("firstTimestamp", "lastTimestamp", "eventTime")
        },
        "series": open_obj("Series data."),
        "related": open_obj("Secondary object."),
    },
)

# ---- discovery.k8s.io/v1 ----------------------------------------------------------------------------

SCHEMAS[DISC + "EndpointSlice"] = kind_schema(
    "discovery.k8s.io",
    "v1",
    "EndpointSlice",
    "EndpointSlice is a subset of the endpoints of a service (label kubernetes.io/service-name); maintained by the EndpointSlice controller for services with a selector.",
    {
        "addressType": s("IPv4, IPv6 or FQDN; immutable."),
        "endpoints": {
            **arr(ref(DISC + "Endpoint"), "Endpoints of this slice (at most 1000)."),
            "x-kubernetes-list-type": "atomic",
        },
        "ports": {
            **arr(ref(DISC + "EndpointPort"), "Ports of every endpoint in this slice."),
            "x-kubernetes-list-type": "atomic",
        },
    },
)
SCHEMAS[DISC + "EndpointSlice"]["required"] = ["addressType", "endpoints"]
SCHEMAS[DISC + "Endpoint"] = obj(
    "Endpoint is one backend of a service.",
    {
        "addresses": {
            **arr({"type": "string", "default": ""}, "Addresses of the endpoint (1 to 100)."),
            "x-kubernetes-list-type": "set",
        },
        "conditions": ref(DISC + "EndpointConditions", "Ready, serving and terminating state."),
        "hostname": s("Hostname of the endpoint."),
        "targetRef": ref(CORE + "ObjectReference", "The pod behind the endpoint."),
        "deprecatedTopology": smap("Deprecated topology labels."),
        "nodeName": s("Node hosting the endpoint."),
        "zone": s("Zone of the endpoint."),
        "hints": open_obj("Topology hints."),
    },
    ["addresses"],
)
SCHEMAS[DISC + "EndpointConditions"] = obj(
    "EndpointConditions.",
    {
        "ready": b("Ready to receive traffic (serving and not terminating)."),
        "serving": b("Passes readiness checks, even while terminating."),
        "terminating": b("The pod is being deleted."),
    },
)
SCHEMAS[DISC + "EndpointPort"] = obj(
    "EndpointPort.",
    {
        "name": s("Name matching the service port name."),
        "protocol": s("TCP, UDP or SCTP."),
        "port": i("Port number."),
        "appProtocol": s("Application protocol."),
    },
)

KIND_SCHEMA: dict[str, str] = {
    "Namespace": CORE + "Namespace",
    "Node": CORE + "Node",
    "Pod": CORE + "Pod",
    "Service": CORE + "Service",
    "Endpoints": CORE + "Endpoints",
    "Event": CORE + "Event",
    "EndpointSlice": DISC + "EndpointSlice",
}

for _kind, _name in list(KIND_SCHEMA.items()):
    _g, _v = ("discovery.k8s.io", "v1") if _name.startswith(DISC) else ("", "v1")
    SCHEMAS[_name + "List"] = list_schema(_g, _v, _kind + "List", _name)

_ = MERGE_KEYS


_RESOLVED: dict[int, Schema] = {}


def resolve(sch: Schema) -> Schema:
    """Follow allOf/$ref to the named schema (memoized: schemas never change)."""
    hit = _RESOLVED.get(id(sch))
    if hit is not None:
        return hit
    out = _resolve(sch)
    _RESOLVED[id(sch)] = out
    return out


def _resolve(sch: Schema) -> Schema:
    while True:
        if "allOf" in sch and sch["allOf"]:
            sch = sch["allOf"][0]
            continue
        r = sch.get("$ref")
        if r:
            sch = SCHEMAS[r.rsplit("/", 1)[-1]]
            continue
        return sch


def unknown_fields(kind: str, obj: Any) -> list[str]:
    """Paths of fields the schema of ``kind`` does not know (for fieldValidation)."""
    name = KIND_SCHEMA.get(kind)
    if name is None:
        return []
    out: list[str] = []
    _walk(SCHEMAS[name], obj, "", out)
    return out


def _walk(sch: Schema, value: Any, path: str, out: list[str]) -> None:
    sch = resolve(sch)
    if sch.get("x-kubernetes-preserve-unknown-fields"):
        return
    if isinstance(value, dict) and sch.get("type") == "object":
        props = sch.get("properties")
        if props is None:
            return  # a map (additionalProperties)
        for k, v in value.items():
            sub = f"{path}.{k}" if path else k
            if k not in props:
                out.append(sub)
            elif v is not None:
                _walk(props[k], v, sub, out)
    elif isinstance(value, list) and sch.get("type") == "array":
        for n, v in enumerate(value):
            _walk(sch.get("items") or {}, v, f"{path}[{n}]", out)


def prune(kind: str, obj: Any) -> None:
    """Drop unknown fields in place (what decoding into typed structs does upstream)."""
    name = KIND_SCHEMA.get(kind)
    if name is not None:
        _prune(SCHEMAS[name], obj)


def _prune(sch: Schema, value: Any) -> None:
    sch = resolve(sch)
    if sch.get("x-kubernetes-preserve-unknown-fields"):
        return
    if isinstance(value, dict) and sch.get("type") == "object":
        props = sch.get("properties")
        if props is None:
            return
        for k in list(value):
            if k not in props:
                del value[k]
            elif value[k] is not None:
                _prune(props[k], value[k])
    elif isinstance(value, list) and sch.get("type") == "array":
        for v in value:
            _prune(sch.get("items") or {}, v)
