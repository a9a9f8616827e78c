"""subnet.env: what this node's pods get (network, subnet gateway, MTU, masquerading).

Rendered as flanneld writes it and replaced atomically (temp file in the same directory,
then rename), so a reader never sees half a file. No fsync: it lives in /run (tmpfs) and is
rewritten at every start.
"""

from __future__ import annotations

import os
import tempfile
from ipaddress import IPv4Network

from .lease import Lease


def render(network: IPv4Network, lease: Lease, mtu: int, ip_masq: bool) -> str:
    return (
        f"FLANNEL_NETWORK={network}\n"
        f"FLANNEL_SUBNET={lease.gateway}/{lease.subnet.prefixlen}\n"
        f"FLANNEL_MTU={mtu}\n"
        f"FLANNEL_IPMASQ={'true' if ip_masq else 'false'}\n"
    )


def parse(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def write_atomic(path: str, content: str) -> bool:
    """Write ``content`` to ``path`` unless it already holds exactly that; True if written."""
    try:
        with open(path, encoding="utf-8") as f:
            if f.read() == content:
                return False
    except OSError:
        pass
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".subnet.env.", dir=d)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(content)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return True


def remove(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False
