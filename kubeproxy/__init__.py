"""kube-proxy for kube-netlab: watches Services and EndpointSlices and programs the node so
that ClusterIPs and NodePorts reach ready endpoints.

``__main__`` (CLI) -> ``runner`` (informers, batching, metrics, /healthz) -> a ``Proxier``
mode: ``iptables`` (kubeproxy.iptables: pure render, iptables-restore apply, conntrack
cleanup) or ``userspace`` (kubeproxy.userspace).
"""
