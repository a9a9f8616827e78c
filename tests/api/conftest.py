"""Fixtures for API tests: one apiserver_stub per test module (a subprocess on loopback)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from apiserver_stub.testing import run_apiserver

from .kube import Api

_ns_counter = itertools.count()


@pytest.fixture(scope="module")
def api() -> Iterator[Api]:
    with run_apiserver() as url:
        yield Api(url)


@pytest.fixture
def ns(api: Api, request: pytest.FixtureRequest) -> str:
    """A fresh namespace per test."""
    name = f"t{next(_ns_counter)}-{request.node.name.lower().replace('_', '-')[:40].strip('-')}"
    name = "".join(c if c.isalnum() or c == "-" else "-" for c in name)[:60].strip("-")
    api.ok(api.post("/api/v1/namespaces", {"metadata": {"name": name}}))
    return name
