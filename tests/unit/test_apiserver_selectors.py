"""Label and field selector parsing and matching (apiserver_stub.selectors)."""

from __future__ import annotations

import pytest

from apiserver_stub.selectors import from_match, parse_fields, parse_labels
from apiserver_stub.status import ApiError

LABELS = {"app": "web", "tier": "fe", "env": "prod"}


@pytest.mark.parametrize(
    ("selector", "matches"),
    [
        ("", True),
        ("app=web", True),
        ("app==web", True),
        ("app=db", False),
        ("app!=db", True),
        ("missing!=x", True),
        ("app=web,tier=fe", True),
        ("app=web,tier=be", False),
        ("tier in (fe,be)", True),
        ("tier in (be)", False),
        ("tier notin (be)", True),
        ("missing notin (be)", True),
        ("app", True),
        ("missing", False),
        ("!missing", True),
        ("!app", False),
        (" app = web , env in ( prod , dev ) ", True),
        ("example.com/role=x", False),
    ],
)
def test_label_selector_matches(selector: str, matches: bool) -> None:
    assert parse_labels(selector).matches(LABELS) is matches


def test_label_selector_empty_value_and_no_labels() -> None:
    assert parse_labels("app=").matches({"app": ""})
    assert not parse_labels("app").matches(None)
    assert parse_labels("").matches(None)


@pytest.mark.parametrize(
    "bad", ["app in b", "app in (a", "=x", "a,,b", "app=web,", "bad key=1", "a=b c"]
)
def test_malformed_label_selectors_are_bad_requests(bad: str) -> None:
    with pytest.raises(ApiError) as e:
        parse_labels(bad)
    assert e.value.code == 400


def test_match_expressions() -> None:
    sel = from_match(
        {
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["fe"]},
                {"key": "x", "operator": "DoesNotExist"},
            ],
        }
    )
    assert sel.matches(LABELS)
    assert not sel.matches({"app": "web", "tier": "fe", "x": "1"})


POD = {
    "metadata": {"name": "p", "namespace": "ns"},
    "spec": {"nodeName": "n1", "hostNetwork": True},
    "status": {"phase": "Running"},
}


def test_field_selectors() -> None:
    assert parse_fields("spec.nodeName=n1", "pods").matches(POD)
    assert parse_fields("spec.nodeName==n1,metadata.namespace=ns", "pods").matches(POD)
    assert not parse_fields("spec.nodeName!=n1", "pods").matches(POD)
    assert parse_fields("status.phase=Running,metadata.name=p", "pods").matches(POD)
    assert parse_fields("spec.hostNetwork=true", "pods").matches(POD)
    assert parse_fields("spec.nodeName=", "pods").matches({"metadata": {"name": "x"}, "spec": {}})
    assert parse_fields("metadata.name=p", "pods").value_of("metadata.name") == "p"


def test_unsupported_field_is_bad_request() -> None:
    with pytest.raises(ApiError) as e:
        parse_fields("spec.nodeName=n1", "services")
    assert e.value.code == 400 and "field label not supported" in e.value.message
