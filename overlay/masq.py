"""``--ip-masq``: masquerade pod traffic leaving the cluster network, never pod-to-pod.

Rules as flanneld writes them, in our own nat chain FLANNEL-POSTRTG jumped to first from
POSTROUTING (kube-proxy-marked packets are left to kube-proxy's own masquerade):

    -m mark --mark 0x4000/0x4000           RETURN      (kube-proxy masquerades those)
    -s NET -d NET                          RETURN      pod -> pod: no NAT
    -s NET ! -d 224.0.0.0/4                MASQUERADE  pod -> outside
    ! -s NET -d SUBNET                     RETURN      outside -> this node's pods
    ! -s NET -d NET                        MASQUERADE  host -> remote pods

``render`` is pure (restore text); ``apply`` feeds it to ``iptables-legacy-restore
--noflush`` in one commit: the chain is declared (which flushes and refills it atomically)
and the POSTROUTING jump added only when missing, so re-applying changes nothing.
"""

from __future__ import annotations

import logging
import subprocess
from ipaddress import IPv4Network

log = logging.getLogger("overlay")

CHAIN = "FLANNEL-POSTRTG"
COMMENT = "flanneld masq"
KUBE_PROXY_MARK = "0x4000/0x4000"
RESTORE = "iptables-legacy-restore"
SAVE = "iptables-legacy-save"

JUMP = f'-m comment --comment "{COMMENT}" -j {CHAIN}'


def chain_rules(network: IPv4Network, subnet: IPv4Network) -> list[str]:
    n, sn, c = str(network), str(subnet), f'-m comment --comment "{COMMENT}"'
    return [
        f"-A {CHAIN} -m mark --mark {KUBE_PROXY_MARK} {c} -j RETURN",
        f"-A {CHAIN} -s {n} -d {n} {c} -j RETURN",
        f"-A {CHAIN} -s {n} ! -d 224.0.0.0/4 {c} -j MASQUERADE --random-fully",
        f"-A {CHAIN} ! -s {n} -d {sn} {c} -j RETURN",
        f"-A {CHAIN} ! -s {n} -d {n} {c} -j MASQUERADE --random-fully",
    ]


def render(network: IPv4Network, subnet: IPv4Network, jump_present: bool) -> str:
    lines = ["*nat", f":{CHAIN} - [0:0]"]
    if not jump_present:
        lines.append(f"-I POSTROUTING 1 {JUMP}")
    lines += chain_rules(network, subnet)
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def render_cleanup(jump_present: bool, chain_present: bool) -> str:
    if not (jump_present or chain_present):
        return ""
    lines = ["*nat"]
    if jump_present:
        lines.append(f"-D POSTROUTING {JUMP}")
    if chain_present:
        lines += [f":{CHAIN} - [0:0]", f"-X {CHAIN}"]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def parse_state(save_text: str) -> tuple[bool, bool]:
    """(jump in POSTROUTING present, chain present) from ``iptables-save -t nat`` text."""
    jump = any(
        line.startswith("-A POSTROUTING") and f"-j {CHAIN}" in line
        for line in save_text.splitlines()
    )
    chain = any(line.startswith(f":{CHAIN} ") for line in save_text.splitlines())
    return jump, chain


def _save() -> str:
    r = subprocess.run([SAVE, "-t", "nat"], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError(f"{SAVE} -t nat failed: {r.stderr.strip()}")
    return r.stdout


def _restore(text: str) -> None:
    r = subprocess.run(
        [RESTORE, "--noflush", "-w", "5"], input=text, capture_output=True, text=True, timeout=30
    )
    if r.returncode != 0:
        raise RuntimeError(f"{RESTORE} failed: {r.stderr.strip()}\ninput was:\n{text}")


def apply(network: IPv4Network, subnet: IPv4Network) -> None:
    jump, _ = parse_state(_save())
    _restore(render(network, subnet, jump))
    log.info("masquerade rules in %s for %s (node subnet %s)", CHAIN, network, subnet)


def cleanup() -> bool:
    jump, chain = parse_state(_save())
    text = render_cleanup(jump, chain)
    if not text:
        return False
    _restore(text)
    log.info("removed %s and its POSTROUTING jump", CHAIN)
    return True
