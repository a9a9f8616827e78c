"""The node agent ("kubelet") of kube-netlab: pods as network namespaces with one process each.

Division of labour: ``node`` registers the Node and heartbeats, ``sandbox`` makes the pod's
namespace/veth/address/resolv.conf (CNI + IPAM), ``runtime`` runs and supervises the process,
``probes`` decides readiness, ``status`` renders what is reported, ``agent`` ties them to the
Pod watch. ``python -m lab.kubelet --help`` for the command line.
"""
