"""The shared model: API dicts -> the maps kube-proxy renders from."""

from kubecommon import model as m


def svc(name="web", ns="demo", **spec):
    base = {"clusterIP": "10.96.0.5", "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    base.update(spec)
    return {"metadata": {"name": name, "namespace": ns}, "spec": base}


def slice_(svc_name="web", ns="demo", eps=(), ports=({"name": "http", "port": 8080},), name=None):
    return {
        "metadata": {
            "name": name or f"{svc_name}-x",
            "namespace": ns,
            "labels": {m.SERVICE_NAME_LABEL: svc_name},
        },
        "addressType": "IPv4",
        "ports": list(ports),
        "endpoints": list(eps),
    }


def test_service_port_name_string_matches_kube_proxy():
    assert str(m.ServicePortName("demo", "web", "http")) == "demo/web:http"
    assert str(m.ServicePortName("demo", "web", "")) == "demo/web"


def test_headless_and_external_name_services_are_not_proxied():
    got = m.service_port_map(
        [
            svc(),
            svc("hl", clusterIP="None"),
            svc("ext", type="ExternalName", externalName="example.org", clusterIP=""),
        ]
    )
    assert [str(k) for k in got] == ["demo/web:http"]


def test_service_defaults_and_policies():
    (p,) = m.service_from_obj(
        svc(
            type="NodePort",
            externalTrafficPolicy="Local",
            sessionAffinity="ClientIP",
            ports=[{"port": 53, "protocol": "UDP", "nodePort": 30053}],
        )
    ).ports
    assert p.protocol == "UDP" and p.target_port == 53 and p.node_port == 30053
    assert p.external_local and not p.internal_local
    assert p.session_affinity_timeout == 10800 and p.affinity


def test_external_local_only_for_externally_reachable_types():
    (p,) = m.service_from_obj(svc(externalTrafficPolicy="Local")).ports
    assert not p.external_local


def test_endpoints_merge_slices_and_keep_conditions():
    eps = m.endpoints_map(
        [
            slice_(
                eps=[
                    {"addresses": ["10.244.1.2"], "conditions": {"ready": True}, "nodeName": "w1"}
                ],
                name="a",
            ),
            slice_(
                eps=[
                    {
                        "addresses": ["10.244.2.2"],
                        "conditions": {"ready": False, "serving": True, "terminating": True},
                        "nodeName": "w2",
                    }
                ],
                name="b",
            ),
        ]
    )
    (key,) = eps
    assert key == m.ServicePortName("demo", "web", "http", "TCP")
    a, b = eps[key]
    assert (a.ip, a.port, a.ready, a.node_name) == ("10.244.1.2", 8080, True, "w1")
    assert (b.ready, b.serving, b.terminating) == (False, True, True)


def test_slice_without_service_label_is_ignored():
    sl = slice_(eps=[{"addresses": ["10.244.1.2"]}])
    sl["metadata"]["labels"] = {}
    assert m.endpoints_map([sl]) == {}


def test_node_info():
    n = m.node_from_obj(
        {
            "metadata": {"name": "w1", "annotations": {"a": "b"}},
            "spec": {"podCIDR": "10.244.1.0/24"},
            "status": {
                "addresses": [
                    {"type": "Hostname", "address": "w1"},
                    {"type": "InternalIP", "address": "172.18.0.3"},
                ],
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }
    )
    assert (n.name, n.internal_ip, n.pod_cidr, n.ready, n.annotation("a")) == (
        "w1",
        "172.18.0.3",
        "10.244.1.0/24",
        True,
        "b",
    )


def test_service_port_name_hash_is_cached_and_rebuilt_after_pickling():
    import os
    import pickle
    import subprocess
    import sys

    a, b = m.ServicePortName("ns", "web", "http"), m.ServicePortName("ns", "web", "http")
    assert a == b and hash(a) == hash(b) and {a: 1}[b] == 1
    assert hash(a) != hash(m.ServicePortName("ns", "web", "http", "UDP"))
    assert repr(a) == "ServicePortName(namespace='ns', name='web', port='http', protocol='TCP')"
    # another process hashes strings with another seed: a pickled map must still find a
    # key built there (the bench hands its service maps to a child this way)
    code = (
        "import pickle, sys\n"
        "from kubecommon.model import ServicePortName as S\n"
        "d = pickle.loads(sys.stdin.buffer.read())\n"
        "print(d[S('ns', 'web', 'http')], S('ns', 'web', 'http') in set(d))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "4242"}
    out = subprocess.run(
        [sys.executable, "-c", code], input=pickle.dumps({a: 7}), capture_output=True, env=env, check=True
    )
    assert out.stdout.decode().split() == ["7", "True"]
