"""kube-netlab's flanneld: every pod reaches every pod across nodes.

Division of labour (flannel's ``pkg/backend`` shape):

* ``lease``      the model: one ``Lease`` per node (podCIDR + the annotations its agent published).
* ``subnetfile`` renders and atomically writes ``subnet.env`` (what the CNI side reads).
* ``backend``    a small ``Backend`` interface; ``backend.vxlan`` (flannel.1, VNI 1, port 8472)
                 and ``backend.hostgw`` (plain routes via the peer's node IP), each a pure render
                 of leases -> desired kernel entries plus one idempotent netlink apply.
* ``masq``       ``--ip-masq``: the FLANNEL-POSTRTG chain, rendered and restored atomically.
* ``agent``      watch Nodes -> leases -> backend sync; publishes this node's lease.
* ``cleanup``    ``--cleanup``: remove everything the agent ever installed.
* ``testbed``    namespaces for tests and the benchmark (fabric, nodes, pods, API stub, agents).
* ``bench``      ``python -m overlay.bench``: throughput and join-to-reachable figures.
"""
