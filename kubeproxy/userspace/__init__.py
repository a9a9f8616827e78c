"""kube-proxy's userspace mode: a proxy process behind KUBE-PORTALS rules.

iptables only redirects a ClusterIP (or NodePort, external IP) to a local port where
this process listens; the process picks an endpoint and copies the bytes.

- render.py       pure: the portal and NodePort rules as iptables-restore text
- apply.py        the only place touching iptables: one restore per sync, jumps, cleanup
- loadbalancer.py round robin with ClientIP session affinity (no I/O)
- proxy.py        listening sockets, connect failover, zero-copy TCP relay, UDP sessions
- proxier.py      UserspaceProxier: start/sync/cleanup, the runner's Proxier
- harness.py      drive the proxier from a JSON file (tests and the benchmark, no API)
- bench.py        direct vs userspace (vs iptables) with iperf3 and wrk
"""
