"""Shared fixtures for namespace tests: one lab per session, one API namespace per test.

* ``lab`` (session): control-plane + 2 workers, vxlan, iptables proxy mode, prefix from
  ``KNL_PREFIX`` (default "knltest", so a user's own "knl" lab is never touched) and node
  network from ``KNL_NODE_CIDR`` (default: a /24 in 198.18.0.0/15 derived from the prefix).
  Any stale lab with that prefix is removed first; teardown always runs ``down``, also when
  ``up`` failed half-way.
* ``api_namespace`` (function): a fresh API namespace for one test, deleted (with its pods
  and services) afterwards, waiting until the kubelet has removed the pods' namespaces.
* ``scratch_lab_config``: prefix and node network for a small lab a test builds and destroys
  itself (down / killed-mid-up tests), distinct from the session lab's.
"""

from __future__ import annotations

import os
import re
import time
import uuid
import zlib
from collections.abc import Callable, Iterator

import pytest

from lab import Lab, LabError
from lab import cleanup as lab_cleanup
from lab import topology as topo


def lab_cidr(prefix: str) -> str:
    """A /24 for a test lab in 198.18.0.0/15 (RFC 2544 benchmark space, never routed),
    picked from the prefix so labs of parallel workers differ."""
    return f"198.18.{zlib.crc32(prefix.encode()) % 250}.0/24"


PREFIX = os.environ.get("KNL_PREFIX", "knltest")
NODE_CIDR = os.environ.get("KNL_NODE_CIDR") or lab_cidr(PREFIX)


def _scratch(tag: str) -> tuple[str, str]:
    prefix = PREFIX[: 10 - len(tag)] + tag
    cidr = lab_cidr(prefix)
    if cidr == NODE_CIDR:
        cidr = f"198.19.{zlib.crc32(prefix.encode()) % 250}.0/24"
    return prefix, cidr


@pytest.fixture
def scratch_lab_config() -> Callable[[str], tuple[str, str]]:
    """``scratch_lab_config(tag) -> (prefix, node_cidr)`` for a lab a test builds and destroys
    itself; never the session lab's prefix or network."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    return _scratch


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    lab = Lab(prefix=PREFIX, nodes=2, proxy_mode="iptables", overlay="vxlan", node_cidr=NODE_CIDR)
    lab_cleanup.down(PREFIX)  # a lab left by an interrupted run must not be reused
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


def _dns_label(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:40].strip("-") or "t"


def delete_api_namespace(lab: Lab, name: str, timeout: float = 30) -> None:
    """Delete the pods, services and the namespace itself; wait until pod sandboxes are gone."""
    pods = [p["metadata"]["name"] for p in lab.api.list("pods", name).get("items") or []]
    for plural in ("pods", "services"):
        for obj in lab.api.list(plural, name).get("items") or []:
            try:
                lab.api.delete(plural, obj["metadata"]["name"], name)
            except Exception:
                pass
    try:
        lab.api.delete("namespaces", name)
    except Exception:
        pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(topo.netns_exists(lab.pod_ns(name, p)) for p in pods):
            return
        time.sleep(0.2)


@pytest.fixture
def api_namespace(lab: Lab, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh API namespace named after the test; removed with its objects afterwards."""
    name = f"{_dns_label(request.node.name)[:30]}-{uuid.uuid4().hex[:5]}"
    try:
        lab.api.create(
            "namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        )
    except Exception as e:
        raise LabError(f"cannot create API namespace {name}: {e}") from e
    try:
        yield name
    finally:
        delete_api_namespace(lab, name)
