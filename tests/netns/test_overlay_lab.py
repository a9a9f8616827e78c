"""overlay in the shared 3-node lab: a pod on each node, every pod reaches every other one by
pod IP over flannel.1 (TCP and UDP), and the receiver sees the sender's pod IP."""

from __future__ import annotations

import json
import sys

import yaml

UDP = (
    "import socket,sys\n"
    "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.settimeout(3)\n"
    "s.sendto(b'lab',(sys.argv[1],9000)); sys.stdout.write(s.recv(999).decode())\n"
)
HTTP = (
    "import json,sys,urllib.request\n"
    "sys.stdout.write(urllib.request.urlopen('http://%s:8080/json' % sys.argv[1], timeout=3)"
    ".read().decode())\n"
)


def test_pods_on_all_nodes_reach_each_other_with_their_own_source_ip(lab, api_namespace):
    nodes = lab.node_names
    docs = [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"ov-{i}", "namespace": api_namespace, "labels": {"app": "ovlab"}},
            "spec": {
                "nodeName": node,
                "tolerations": [{"operator": "Exists"}],
                "containers": [{"name": "w", "image": "workload"}],
            },
        }  # fmt: skip
        for i, node in enumerate(nodes)
    ]
    lab.apply(yaml.safe_dump_all(docs))
    pods = lab.wait_ready(api_namespace, "app=ovlab", len(nodes), timeout=60)
    ip = {p["metadata"]["name"]: p["status"]["podIP"] for p in pods}
    where = {p["metadata"]["name"]: p["spec"]["nodeName"] for p in pods}
    assert len(set(where.values())) == len(nodes)
    for src in ip:
        for dst in ip:
            if src == dst:
                continue
            r = lab.pod_exec(api_namespace, src, [sys.executable, "-c", HTTP, ip[dst]])
            assert r.returncode == 0, f"{src} ({where[src]}) -> {dst} ({where[dst]}): {r.stderr}"
            seen = json.loads(r.stdout)
            assert seen["client_ip"] == ip[src]
            r = lab.pod_exec(api_namespace, src, [sys.executable, "-c", UDP, ip[dst]])
            assert r.returncode == 0, r.stderr
            assert r.stdout.split(" ")[1].split(":")[0] == ip[src]
    for node in nodes:
        link = lab.node_exec(node, ["ip", "-d", "link", "show", "flannel.1"]).stdout
        assert "vxlan id 1 " in link and "dstport 8472" in link and "nolearning" in link
