"""apiserver_stub: a small kube-apiserver (+ etcd + kube-controller-manager parts) in Python.

Division of labour: ``resources`` lists the kinds served, ``store`` keeps objects, the
resourceVersion counter and the watch history (SQLite or memory), ``server`` maps the REST
protocol (``watch`` streams, ``selectors``, ``patch``, ``protobuf`` bodies) onto the
``registry``, which gives each verb its per-kind meaning with ``validation``, ``defaults``
and ``allocators``; ``controllers`` derive Endpoints, EndpointSlices and node podCIDRs;
``discovery``, ``openapi`` (from ``schema``) and ``tables`` serve what kubectl asks for;
``status`` builds errors; ``testing`` starts a stub for tests; ``bench`` measures it.
"""
