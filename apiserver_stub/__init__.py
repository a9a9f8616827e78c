"""apiserver_stub: a small kube-apiserver (+ etcd + kube-controller-manager parts) in Python.

Division of labour: ``resources`` lists the kinds served, ``store`` keeps objects, the
resourceVersion counter and the watch history (SQLite or memory), ``server`` maps the REST
protocol onto the store, ``validation``/``defaults``/``allocators`` give objects their
Kubernetes semantics, ``controllers`` derive Endpoints, EndpointSlices and node podCIDRs,
``discovery``/``openapi``/``tables`` serve what kubectl asks for, ``status`` builds errors.
"""
