"""The direct nf_tables writer against the oracle: iptables-nft-restore.

Two scratch namespaces ("nfw-direct", "nfw-restore") get the same foreign rules and chains
(loaded with iptables-nft-restore), then the same syncs: one through the iptables proxier
with the ``nft`` backend (our netlink batches), one with ``nft-restore``. After every
sync ``iptables-nft-save``, ``nft list ruleset`` and the expression dumps of
``nft --debug=netlink list table ip nat`` / ``ip filter`` must be identical once rule
handles and counter values are masked: the same rules, in the same encoding, in chains
created in the same order. Foreign rules and chains must survive, and the direct writer
must not have fallen back to iptables-nft-restore. Namespaces are removed even on failure.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

pytestmark = [pytest.mark.netns]
if os.geteuid() != 0:
    pytest.skip("needs root (network namespaces)", allow_module_level=True)

from kubecommon.model import Endpoint, ServicePortInfo  # noqa: E402
from kubeproxy.iptables import nft_codec, nft_writer  # noqa: E402
from kubeproxy.iptables.render import service_chain  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
import oracle  # noqa: E402  (tests/netns, next to this file)
from oracle import FOREIGN, fresh_namespaces, inside, proxier, run  # noqa: E402
from pyroute2 import netns  # noqa: E402
from test_kubeproxy_xtables_codec import scenario, spn  # noqa: E402

DIRECT, RESTORE = "nfw-direct", "nfw-restore"


def saved(ns: str, counters: bool = False) -> str:
    return oracle.saved("iptables-nft-save", ns, counters)


def exprs(ns: str, table: str) -> str:
    """``nft --debug=netlink list table``: every rule's expressions, handles and counters masked."""
    out = run("nft", "--debug=netlink", "list", "table", "ip", table, ns=ns)
    out = re.sub(rf"^ip {table} (\S+) \d+( \d+)?$", rf"ip {table} \1 H", out, flags=re.M)
    out = re.sub(r"counter pkts \d+ bytes \d+", "counter", out)
    out = re.sub(r"counter packets \d+ bytes \d+", "counter", out)
    return "\n".join(ln for ln in out.splitlines() if not ln.startswith("#"))


def ruleset(ns: str) -> str:
    out = run("nft", "list", "ruleset", ns=ns)
    return re.sub(r"counter packets \d+ bytes \d+", "counter", out)


def foreign_lines(ns: str) -> set[str]:
    return {ln for ln in saved(ns).splitlines() if ln.startswith("-A") and "KUBE-" not in ln}


@pytest.fixture
def pair() -> Iterator[tuple[str, ...]]:
    yield from fresh_namespaces(DIRECT, RESTORE)


def assert_same() -> None:
    assert saved(DIRECT) == saved(RESTORE)
    for table in ("nat", "filter"):
        assert exprs(DIRECT, table) == exprs(RESTORE, table), f"ip {table} expressions differ"
    assert ruleset(DIRECT) == ruleset(RESTORE)


class Twin:
    """The same proxier state in both namespaces; every sync is compared."""

    def __init__(self, **cfg):
        self.direct = proxier("nft", **cfg)
        self.restore = proxier("nft-restore", **cfg)

    def sync(self, services: dict, endpoints: dict, full: bool | None = None) -> None:
        for ns, p in ((DIRECT, self.direct), (RESTORE, self.restore)):
            if full:
                p.request_full_sync()
            with inside(ns):
                asyncio.run(p.sync(services, endpoints))
            if full is not None:
                assert p.last.full == full
        assert self.direct.last.write.via == "nft", self.direct.last.write.fallback
        assert self.restore.last.write.via == "restore"
        assert_same()


def load_foreign() -> set[str]:
    for ns in (DIRECT, RESTORE):
        run("iptables-nft-restore", "--counters", ns=ns, stdin=FOREIGN)
    before = foreign_lines(DIRECT)
    assert len(before) == 12 and before == foreign_lines(RESTORE)
    return before


def by_hand(*args: str) -> None:
    for ns in (DIRECT, RESTORE):
        run("iptables-nft", *args, ns=ns)


CFGS = {
    "cluster-cidr": {},
    "masquerade-all+localhost-nodeports": {
        "cluster_cidr": "",
        "masquerade_all": True,
        "localhost_nodeports": True,
    },
    "cluster-cidr-/20": {"cluster_cidr": "10.0.16.0/20"},
}


@pytest.mark.parametrize("cfg", CFGS.values(), ids=CFGS.keys())
def test_syncs_write_what_iptables_nft_restore_writes_and_keep_foreign_rules(pair, cfg):
    before = load_foreign()
    t = Twin(**cfg)
    services, endpoints = scenario()
    t.sync(services, endpoints, full=True)
    text = saved(DIRECT)
    assert "KUBE-SVC-STALESTALESTALE0" not in text and ":FLANNEL-POSTRTG" in text
    assert 'requiring SNAT" -j MASQUERADE --random-fully' in text
    assert foreign_lines(DIRECT) == before
    assert t.direct.last.write.stale == 1

    # one endpoint changes (partial: one service's chains; the filter table is not written)
    s = spn()
    endpoints = {**endpoints, s: (endpoints[s][0], Endpoint("10.180.0.99", 80, node_name="node2"))}
    t.sync(services, endpoints, full=False)
    assert "10.180.0.99:80" in saved(DIRECT)
    assert t.direct.last.write.tables_written == {"nat": True}
    # a service without endpoints gets some, one disappears (stale chains), one is new,
    # affinity changes
    none, udp, aff = spn(name="none"), spn(name="udp", port="dns", proto="UDP"), spn(name="aff")
    services = {k: v for k, v in services.items() if k != udp}
    endpoints = {k: v for k, v in endpoints.items() if k != udp}
    endpoints[none] = (Endpoint("10.180.0.50", 80, node_name="node1"),)
    new = spn(name="new")
    services[new] = ServicePortInfo(
        new, "172.30.0.60", 8080, "TCP", 80, node_port=30090, type="NodePort"
    )
    endpoints[new] = (
        Endpoint("10.180.0.61", 80),
        Endpoint("10.180.0.62", 80),
        Endpoint("10.180.0.63", 80),
    )
    services[aff] = replace(services[aff], session_affinity_timeout=60)
    t.sync(services, endpoints, full=False)
    assert t.direct.last.write.stale >= 2
    # an unchanged full resync: the generation did not move, nothing is sent
    t.sync(services, endpoints, full=True)
    assert t.direct.last.write.bytes == 0 and t.direct.last.write.tables_read == {}
    # rules removed by hand come back with the next full sync; foreign ones are left alone
    by_hand("-t", "nat", "-D", "PREROUTING", "-m", "comment", "--comment", "kubernetes service portals",
            "-j", "KUBE-SERVICES")  # fmt: skip
    by_hand("-t", "nat", "-F", service_chain(new))
    by_hand("-t", "filter", "-F", "KUBE-FORWARD")
    t.sync(services, endpoints, full=True)
    assert t.direct.last.write.tables_read == {"filter": True, "nat": True}
    assert "-A PREROUTING -m comment --comment" in saved(DIRECT)
    assert foreign_lines(DIRECT) == before


def test_first_sync_on_an_empty_node_creates_tables_and_base_chains(pair):
    t = Twin()
    services, endpoints = scenario()
    t.sync(services, endpoints, full=True)
    out = run("nft", "list", "chains", ns=DIRECT)
    assert "type nat hook prerouting priority dstnat" in out
    assert "type filter hook forward priority filter" in out
    # and a second full sync of the same state writes nothing
    t.sync(services, endpoints, full=True)
    assert t.direct.last.write.bytes == 0


def test_partial_sync_after_someone_else_committed(pair):
    load_foreign()
    t = Twin()
    services, endpoints = scenario()
    t.sync(services, endpoints, full=True)
    by_hand("-t", "nat", "-A", "FLANNEL-POSTRTG", "-s", "192.0.2.88", "-j", "RETURN")
    endpoints = {**endpoints, spn(): (Endpoint("10.180.0.70", 80),)}
    t.sync(services, endpoints, full=False)  # lists the chains again, writes the partial
    assert t.direct.last.write.tables_read == {"filter": True, "nat": True}
    assert "-A FLANNEL-POSTRTG -s 192.0.2.88/32 -j RETURN" in saved(DIRECT)
    # the chain someone deleted is created again by the partial sync that writes it
    s = spn(name="np")
    by_hand("-t", "nat", "-F", service_chain(s))
    endpoints = {**endpoints, s: (Endpoint("10.180.0.71", 8080),)}
    t.sync(services, endpoints, full=False)
    t.sync(services, endpoints, full=True)


def test_what_the_codec_cannot_encode_falls_back_to_iptables_nft_restore(pair, monkeypatch):
    t = Twin()
    services, endpoints = scenario()
    t.sync(services, endpoints, full=True)
    from kubeproxy.iptables import render

    real = render.render_service

    def odd(svc, eps, ctx, large=False):
        r = real(svc, eps, ctx, large)
        if svc.name == spn():  # a port range: the x_tables encoder knows it, our codec does not
            r = replace(
                r,
                chain_rules=r.chain_rules.replace(
                    "-s 10.180.0.80 -j", "-s 10.180.0.80 -m tcp -p tcp --sport 1:2 -j"
                ),
            )
        return r

    monkeypatch.setattr(render, "render_service", odd)
    endpoints = {**endpoints, spn(): (Endpoint("10.180.0.80", 80),)}
    with inside(DIRECT):
        asyncio.run(t.direct.sync(services, endpoints))
    w = t.direct.last.write
    assert w.via == "restore" and "port ranges" in w.fallback, w
    assert "--sport 1:2" in saved(DIRECT)
    # the next sync is direct again (after a fresh read of what iptables-nft-restore wrote)
    monkeypatch.setattr(render, "render_service", real)
    endpoints = {**endpoints, spn(): (Endpoint("10.180.0.81", 80),)}
    with inside(DIRECT):
        asyncio.run(t.direct.sync(services, endpoints))
    assert t.direct.last.write.via == "nft"
    assert "10.180.0.81:80" in saved(DIRECT) and "--sport 1:2" not in saved(DIRECT)


def test_a_refused_batch_names_the_rule_and_changes_nothing(pair, monkeypatch):
    t = Twin()
    services, endpoints = scenario()
    t.sync(services, endpoints, full=True)
    before = saved(DIRECT)
    real = nft_codec.rule_exprs

    def bad(entry, label):  # a match revision the kernel does not have
        r = real(entry, label)
        if label == "KUBE-MARK-MASQ" and b"comment" in r.exprs:
            r = r._replace(exprs=r.exprs.replace(b"comment\0", b"commenx\0", 1))
        return r

    monkeypatch.setattr(nft_codec, "rule_exprs", bad)
    t.direct.writer.translator = nft_codec.Translator()
    endpoints = {**endpoints, spn(): (Endpoint("10.180.0.90", 80),)}
    with inside(DIRECT), pytest.raises(nft_writer.NftError) as e:
        asyncio.run(t.direct.sync(services, endpoints))
    assert "No such file or directory" in str(e.value) and "-A KUBE-" in str(e.value), e.value
    assert "KUBE-MARK-MASQ" in str(e.value)
    assert saved(DIRECT) == before
    monkeypatch.setattr(nft_codec, "rule_exprs", real)
    t.direct.writer.translator = nft_codec.Translator()
    with inside(DIRECT):
        asyncio.run(t.direct.sync(services, endpoints))  # the retry (a full sync) works
    assert t.direct.last.full and "10.180.0.90:80" in saved(DIRECT)


def test_netlink_runs_off_the_event_loop_in_the_callers_namespace(pair, monkeypatch):
    """A slow batch does not stall the loop, and the worker thread (even one born in
    another namespace) writes the namespace the sync was called from."""
    real = nft_writer.Netlink.batch

    def slow_batch(self, *a, **kw):
        import time

        time.sleep(0.4)
        return real(self, *a, **kw)

    monkeypatch.setattr(nft_writer.Netlink, "batch", slow_batch)
    p = proxier("nft")
    services, endpoints = scenario()
    ticks = 0

    async def main() -> None:
        nonlocal ticks
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, lambda: None)  # a worker thread born in RESTORE
        netns.setns(DIRECT)  # this thread only: the sync is called from DIRECT

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.02)
                ticks += 1

        task = asyncio.create_task(tick())
        try:
            await p.sync(services, endpoints)
        finally:
            task.cancel()

    with inside(RESTORE):
        asyncio.run(main())
    assert p.last.write.via == "nft"
    assert ticks >= 10
    assert "KUBE-SERVICES" in saved(DIRECT)
    assert "KUBE-" not in saved(RESTORE)
