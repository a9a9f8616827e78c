"""kube-proxy nftables mode, applying: small transactions in-process, large ones via nft -f."""

from __future__ import annotations

import asyncio

import pytest

from kubeproxy.nftables import apply
from kubeproxy.nftables.apply import NftApplier, NftError


class FakeLib:
    def __init__(self, rc: int = 0, err: str = ""):
        self.texts: list[str] = []
        self.rc, self.err = rc, err

    def run(self, text: str) -> tuple[int, str]:
        self.texts.append(text)
        return self.rc, self.err


@pytest.fixture
def spawned(monkeypatch):
    calls: list[tuple[list[str], str | None]] = []

    async def fake_run(argv, stdin=None):
        calls.append((argv, stdin))
        if argv[:3] == ["nft", "delete", "table"]:
            return 1, "", "Error: Could not process rule: No such file or directory\n"
        return 0, "", ""

    monkeypatch.setattr(apply, "run", fake_run)
    return calls


def test_small_transactions_in_process_large_ones_through_nft_f(spawned):
    ap = NftApplier(inprocess_max=100)
    ap._lib = lib = FakeLib()
    small, large = "add element ip kube-proxy x { 1 }\n", "#" * 101 + "\n"
    asyncio.run(ap.apply(small))
    asyncio.run(ap.apply(large))
    asyncio.run(ap.apply(""))  # nothing to do: nothing run
    assert lib.texts == [small]
    assert spawned == [(["nft", "-f", "-"], large)]  # one transaction, no -e/-a/echo


def test_refused_transaction_raises_with_nft_message(spawned):
    ap = NftApplier()
    ap._lib = FakeLib(rc=1, err="Error: No such file or directory\nadd rule ip kube-proxy c x\n")
    with pytest.raises(NftError, match="No such file or directory"):
        asyncio.run(ap.apply("add rule ip kube-proxy c x\n"))


def test_without_libnftables_everything_goes_to_nft_f(spawned):
    ap = NftApplier()
    ap._lib_failed = True
    asyncio.run(ap.apply("flush chain ip kube-proxy c\n"))
    assert spawned == [(["nft", "-f", "-"], "flush chain ip kube-proxy c\n")]


def test_delete_missing_table_is_not_an_error(spawned):
    assert asyncio.run(NftApplier().delete_table()) is False
