"""Pure renderer of userspace mode's iptables rules (no I/O): the desired content of our
chains as iptables-restore text, from the list of portals the proxy listens for.

nat table (kube-proxy <= 1.25 userspace layout):
  PREROUTING  first rule  -> KUBE-PORTALS-CONTAINER  ClusterIP/external/LB IP:port of traffic
                             arriving from pods or the network: REDIRECT --to-ports proxyPort
  OUTPUT      first rule  -> KUBE-PORTALS-HOST       the same for the node's own traffic:
                             DNAT to nodeIP:proxyPort (REDIRECT of locally generated traffic
                             would answer from the wrong address)
  PREROUTING  last rule   -> KUBE-NODEPORT-CONTAINER (-m addrtype --dst-type LOCAL) NodePorts
  OUTPUT      last rule   -> KUBE-NODEPORT-HOST      (-m addrtype --dst-type LOCAL) NodePorts
filter table:
  INPUT       first rule  -> KUBE-NODEPORT-NON-LOCAL accept NEW connections to the proxy ports
                             (kube-proxy did it for NodePorts; we do it for every proxy port so
                             a default-deny INPUT policy cannot break ClusterIPs either)

Every service rule carries the ``ns/svc[:port]`` comment kube-proxy wrote. The jumps from the
built-in chains are not part of the text (a restore cannot say "first rule, once"); they are
listed by ``jump_rules`` and ensured by apply.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from kubecommon.model import ServicePortName

CONTAINER_PORTALS = "KUBE-PORTALS-CONTAINER"
HOST_PORTALS = "KUBE-PORTALS-HOST"
CONTAINER_NODEPORTS = "KUBE-NODEPORT-CONTAINER"
HOST_NODEPORTS = "KUBE-NODEPORT-HOST"
NON_LOCAL_NODEPORTS = "KUBE-NODEPORT-NON-LOCAL"

NAT_CHAINS = (CONTAINER_PORTALS, HOST_PORTALS, CONTAINER_NODEPORTS, HOST_NODEPORTS)
FILTER_CHAINS = (NON_LOCAL_NODEPORTS,)
ALL_CHAINS = {"nat": NAT_CHAINS, "filter": FILTER_CHAINS}


@dataclass(frozen=True, slots=True, order=True)
class Portal:
    """One service port as the proxy serves it: where clients aim, where we listen."""

    name: ServicePortName
    protocol: str  # TCP | UDP
    cluster_ip: str
    port: int
    proxy_port: int
    node_port: int = 0
    external_ips: tuple[str, ...] = ()
    load_balancer_ips: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class JumpRule:
    table: str
    chain: str  # built-in chain
    first: bool  # True: must be rule 1 (insert); False: appended
    args: tuple[str, ...]  # match + comment + "-j TARGET"

    @property
    def target(self) -> str:
        return self.args[-1]


def jump_rules() -> tuple[JumpRule, ...]:
    portals = (
        "-m",
        "comment",
        "--comment",
        "kube-proxy userspace: service portals (before NodePorts)",
    )
    nodeports = (
        "-m",
        "addrtype",
        "--dst-type",
        "LOCAL",
        "-m",
        "comment",
        "--comment",
        "kube-proxy userspace: NodePorts (keep last)",
    )
    accept = ("-m", "comment", "--comment", "kube-proxy userspace: accept proxy ports")
    return (
        JumpRule("nat", "PREROUTING", True, (*portals, "-j", CONTAINER_PORTALS)),
        JumpRule("nat", "OUTPUT", True, (*portals, "-j", HOST_PORTALS)),
        JumpRule("nat", "PREROUTING", False, (*nodeports, "-j", CONTAINER_NODEPORTS)),
        JumpRule("nat", "OUTPUT", False, (*nodeports, "-j", HOST_NODEPORTS)),
        JumpRule("filter", "INPUT", True, (*accept, "-j", NON_LOCAL_NODEPORTS)),
    )


def quote(text: str) -> str:
    """Quote a comment as iptables-save does (only when needed)."""
    if text and all(c.isalnum() or c in "/:._-" for c in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _common(p: Portal, dport: int, dest: str = "") -> str:
    proto = p.protocol.lower()
    s = f"-m comment --comment {quote(str(p.name))} -p {proto} -m {proto} --dport {dport}"
    if dest:
        s += f" -d {dest}/32"
    return s


def render(portals: Iterable[Portal], node_ip: str) -> str:
    """iptables-restore text (nat and filter) declaring and filling all our chains."""
    ps = sorted(portals)
    cont: list[str] = []
    host: list[str] = []
    ncont: list[str] = []
    nhost: list[str] = []
    accept: list[str] = []
    for p in ps:
        redirect = f"-j REDIRECT --to-ports {p.proxy_port}"
        dnat = f"-j DNAT --to-destination {node_ip}:{p.proxy_port}"
        for ip in (p.cluster_ip, *p.load_balancer_ips):
            if ip:
                cont.append(f"-A {CONTAINER_PORTALS} {_common(p, p.port, ip)} {redirect}")
                host.append(f"-A {HOST_PORTALS} {_common(p, p.port, ip)} {dnat}")
        for ip in p.external_ips:
            # an external IP may be one of the node's own: for the node's traffic only then
            cont.append(f"-A {CONTAINER_PORTALS} {_common(p, p.port, ip)} {redirect}")
            host.append(
                f"-A {HOST_PORTALS} {_common(p, p.port, ip)} -m addrtype --dst-type LOCAL {dnat}"
            )
        if p.node_port:
            ncont.append(f"-A {CONTAINER_NODEPORTS} {_common(p, p.node_port)} {redirect}")
            nhost.append(f"-A {HOST_NODEPORTS} {_common(p, p.node_port)} {dnat}")
        accept.append(
            f"-A {NON_LOCAL_NODEPORTS} {_common(p, p.proxy_port)} -m state --state NEW -j ACCEPT"
        )
    out = ["*nat"]
    out += [f":{c} - [0:0]" for c in NAT_CHAINS]
    out += cont + host + ncont + nhost
    out += ["COMMIT", "*filter"]
    out += [f":{c} - [0:0]" for c in FILTER_CHAINS]
    out += accept
    out.append("COMMIT")
    return "\n".join(out) + "\n"
