"""clusterdns: the cluster DNS server (CoreDNS's ``kubernetes`` plugin, plus forward and cache).

Division of labour, one concern per module as in CoreDNS's plugin/kubernetes:
``controller`` (watch Services, EndpointSlices, Namespaces, Pods -> model),
``records`` (the specification's rules: model -> RRsets), ``reverse`` (PTR),
``external`` (ExternalName CNAME), ``ns`` (SOA, NS, dns-version), ``index`` (every
answer precomputed as wire bytes), ``parse`` (query name -> request, for the slow path
and for reading), ``handler`` (the hot path and the slow path), ``forward`` (upstream
and cache), ``server`` (UDP/TCP listeners, SO_REUSEPORT workers), ``metrics``,
``health``, ``wire`` (DNS wire format by hand), ``bench`` (dnsperf benchmark).
"""
