"""The direct x_tables writer against the oracle: iptables-legacy-restore.

Two scratch namespaces ("xtt-direct", "xtt-restore") get the same foreign rules and chains
(with counters), then the same syncs: one through the iptables proxier with the ``legacy``
backend (x_tables written directly), one with ``legacy-restore``. After every sync
``iptables-legacy-save`` must print the same tables (header comments and counters aside),
the foreign rules must keep their counters in the direct namespace, and the direct writer
must not have fallen back to iptables-restore. Namespaces are removed even on failure.
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
from kubeproxy.iptables import xtables  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
import oracle  # noqa: E402  (tests/netns, next to this file)
from oracle import FOREIGN, fresh_namespaces, inside, proxier, run  # noqa: E402
from pyroute2 import netns  # noqa: E402
from test_kubeproxy_xtables_codec import scenario, spn  # noqa: E402

DIRECT, RESTORE = "xtt-direct", "xtt-restore"


def saved(ns: str, counters: bool = False) -> str:
    return oracle.saved("iptables-legacy-save", ns, counters)


def foreign_counters(ns: str) -> dict[str, str]:
    out = {}
    for ln in saved(ns, counters=True).splitlines():
        m = re.match(r"^\[(\d+:\d+)\] (-A .*)$", ln)
        if m and not re.search(r"KUBE-", m.group(2)):
            out[m.group(2)] = m.group(1)
    return out


@pytest.fixture
def pair() -> Iterator[tuple[str, ...]]:
    yield from fresh_namespaces(DIRECT, RESTORE)


class Twin:
    """The same proxier state in both namespaces; every sync is compared."""

    def __init__(self, **cfg):
        self.direct = proxier("legacy", **cfg)
        self.restore = proxier("legacy-restore", **cfg)

    def sync(self, services: dict, endpoints: dict, full: bool | None = None) -> None:
        for ns, p in ((DIRECT, self.direct), (RESTORE, self.restore)):
            if full:
                p.request_full_sync()
            with inside(ns):
                asyncio.run(p.sync(services, endpoints))
            if full is not None:
                assert p.last.full == full
        assert self.direct.last.write.via == "xtables", self.direct.last.write.fallback
        assert self.restore.last.write.via == "restore"
        assert saved(DIRECT) == saved(RESTORE)


def load_foreign() -> dict[str, str]:
    for ns in (DIRECT, RESTORE):
        run("iptables-legacy-restore", "--counters", ns=ns, stdin=FOREIGN)
    before = foreign_counters(DIRECT)
    assert len(before) == 12 and before == foreign_counters(RESTORE)
    return before


CFGS = {
    "cluster-cidr": {},
    "masquerade-all+localhost-nodeports": {
        "cluster_cidr": "",
        "masquerade_all": True,
        "localhost_nodeports": True,
    },
}


@pytest.mark.parametrize("cfg", CFGS.values(), ids=CFGS.keys())
def test_full_then_partial_syncs_match_iptables_restore_and_keep_foreign_rules(pair, cfg):
    before = load_foreign()
    t = Twin(**cfg)
    services, endpoints = scenario()
    t.sync(services, endpoints, full=True)
    text = saved(DIRECT)
    assert "KUBE-SVC-STALESTALESTALE0" not in text and "FLANNEL-POSTRTG" in text
    assert 'requiring SNAT" -j MASQUERADE --random-fully' in text
    after = foreign_counters(DIRECT)
    assert after == before  # counters of rules we did not write survive the replace

    # one endpoint changes (partial: one service's chains; the filter table is not written)
    s = spn()
    endpoints = {**endpoints, s: (endpoints[s][0], Endpoint("10.180.0.99", 80, node_name="node2"))}
    t.sync(services, endpoints, full=False)
    assert "10.180.0.99:80" in saved(DIRECT)
    # a service without endpoints gets some, one disappears, one is new, affinity changes
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
    assert not t.direct.last.write.read_s > 1.0
    # rules removed by hand come back with the next full sync; foreign ones are left alone
    for ns in (DIRECT, RESTORE):
        run("iptables-legacy", "-t", "nat", "-D", "PREROUTING", "-m", "comment", "--comment",
            "kubernetes service portals", "-j", "KUBE-SERVICES", ns=ns)  # fmt: skip
        run("iptables-legacy", "-t", "nat", "-F", f"KUBE-SVC-{_hash(services, new)}", ns=ns)
    t.sync(services, endpoints, full=True)
    assert foreign_counters(DIRECT) == before


def _hash(services: dict, s) -> str:
    from kubeproxy.iptables.render import service_chain

    return service_chain(s)[len("KUBE-SVC-") :]


def test_partial_sync_uses_the_cached_table_unless_someone_else_wrote(pair, monkeypatch):
    parsed: list[str] = []
    parse = xtables.parse_table

    def counting_parse(name, *args):
        parsed.append(name)
        return parse(name, *args)

    monkeypatch.setattr(xtables, "parse_table", counting_parse)
    load_foreign()
    t = Twin()
    services, endpoints = scenario()
    t.sync(services, endpoints, full=True)
    s = spn()
    for k, ip in enumerate(("10.180.0.70", "10.180.0.71")):
        endpoints = {**endpoints, s: (Endpoint(ip, 80),)}
        if k == 1:  # someone else changes the table: the next partial sync must re-read it
            for ns in (DIRECT, RESTORE):
                run(
                    "iptables-legacy",
                    "-t",
                    "nat",
                    "-A",
                    "FLANNEL-POSTRTG",
                    "-s",
                    "192.0.2.88",
                    "-j",
                    "RETURN",
                    ns=ns,
                )
        t.sync(services, endpoints, full=False)
        w = t.direct.last.write.tables_read
        assert w == {"nat": k == 1}, w
    assert "-A FLANNEL-POSTRTG -s 192.0.2.88/32 -j RETURN" in saved(DIRECT)
    # a full resync of an unchanged table reads it, finds it as written (without parsing
    # it again), and writes nothing
    parsed.clear()
    t.sync(services, endpoints, full=True)
    assert t.direct.last.write.tables_read == {"filter": True, "nat": True}
    assert t.direct.last.write.tables_written == {"filter": False, "nat": False}
    assert parsed == []
    # a same-size edit by hand (GET_INFO cannot see it) is found by the next full sync
    for ns in (DIRECT, RESTORE):
        run(
            "iptables-legacy",
            "-t",
            "nat",
            "-R",
            "KUBE-MARK-MASQ",
            "1",
            "-j",
            "MARK",
            "--or-mark",
            "0x8000",
            ns=ns,
        )
    assert "--or-mark 0x8000" in saved(DIRECT) or "0x8000/0x8000" in saved(DIRECT)
    t.sync(services, endpoints, full=True)
    assert t.direct.last.write.tables_written == {"filter": False, "nat": True}
    assert "nat" in parsed  # read again and parsed: our model no longer matched
    assert "0x8000" not in saved(DIRECT)


def test_unknown_rule_text_falls_back_to_iptables_restore(pair, monkeypatch, caplog):
    t = Twin()
    services, endpoints = scenario()
    t.sync(services, endpoints, full=True)
    from kubeproxy.iptables import render

    real = render.render_service

    def odd(svc, eps, ctx, large=False):
        r = real(svc, eps, ctx, large)
        if svc.name == spn():  # a rule the encoder does not know (-m limit)
            r = replace(
                r,
                chain_rules=r.chain_rules.replace(
                    " -j KUBE-MARK-MASQ", " -m limit --limit 5/sec -j KUBE-MARK-MASQ", 1
                ),
            )
        return r

    monkeypatch.setattr(render, "render_service", odd)
    endpoints = {**endpoints, spn(): (Endpoint("10.180.0.80", 80),)}
    with inside(DIRECT):
        asyncio.run(t.direct.sync(services, endpoints))
    assert t.direct.last.write.via == "restore" and "limit" in t.direct.last.write.fallback
    assert "-m limit --limit 5/sec" in saved(DIRECT)
    # and the next sync (re-reading the table iptables-restore wrote) is direct again
    monkeypatch.setattr(render, "render_service", real)
    endpoints = {**endpoints, spn(): (Endpoint("10.180.0.81", 80),)}
    with inside(DIRECT):
        asyncio.run(t.direct.sync(services, endpoints))
    assert t.direct.last.write.via == "xtables"
    assert "10.180.0.81:80" in saved(DIRECT) and "-m limit" not in saved(DIRECT)


def test_kernel_has_the_revisions_we_encode(pair):
    with inside(DIRECT):
        run("iptables-legacy", "-t", "nat", "-L", "-n", ns=DIRECT)  # loads the table modules
        with xtables.open_socket() as s:
            for name, rev in (("comment", 0), ("tcp", 0), ("udp", 0), ("sctp", 0), ("statistic", 0), ("recent", 1),
                              ("addrtype", 1), ("conntrack", 3), ("mark", 1)):  # fmt: skip
                assert xtables.kernel_revision(s, name, rev), name
            for name, rev in (("DNAT", 2), ("MARK", 2), ("MASQUERADE", 0), ("REJECT", 0)):
                assert xtables.kernel_revision(s, name, rev, target=True), name
            assert not xtables.kernel_revision(s, "conntrack", 99)


def test_kernel_calls_run_off_the_event_loop_in_the_callers_namespace(pair, monkeypatch):
    """A slow replace does not stall the loop, and the worker thread (even one born in
    another namespace) writes the namespace the sync was called from."""
    real = xtables.replace

    def slow_replace(*a, **kw):
        import time

        time.sleep(0.4)
        return real(*a, **kw)

    monkeypatch.setattr(xtables, "replace", slow_replace)
    p = proxier("legacy")
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

        t = asyncio.create_task(tick())
        try:
            await p.sync(services, endpoints)
        finally:
            t.cancel()

    with inside(RESTORE):
        asyncio.run(main())
    assert p.last.write.via == "xtables"
    assert ticks >= 10  # ~0.8 s of replaces (filter, nat) while the loop ticked every 20 ms
    assert "KUBE-SERVICES" in saved(DIRECT)
    assert "KUBE-" not in saved(RESTORE)
