"""Suite-wide guards.

* With ``KNL_LEAK_CHECK=1`` (set by ``netns-lab.sh test`` and CI) the session snapshots the
  machine at start and fails the run if anything the tests made is still there at the end:
  network namespaces, host links, KUBE-/FLANNEL- rules in either iptables backend, nft tables
  named kube-*, agent processes, or files under /etc/netns and /run/kube-netlab (and those
  directories themselves). This is the "nothing leaks" rule, enforced.
* Tests under tests/netns need root; in CI (``CI=true``) a missing root is an error, not a skip.
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest

AGENT_RE = re.compile(r"-m (apiserver_stub|kubeproxy|overlay|clusterdns|lab\.(kubelet|scheduler|workload))\b")


def _run(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def machine_snapshot() -> dict[str, set[str]]:
    netns = {line.split()[0] for line in _run(["ip", "netns", "list"]).splitlines() if line.strip()}
    links = {line.split(":")[1].strip().split("@")[0] for line in _run(["ip", "-o", "link"]).splitlines()
             if line.count(":") >= 2}
    rules = set()
    for tool in ("iptables-legacy-save", "iptables-nft-save"):
        for line in _run([tool]).splitlines():
            if "KUBE-" in line or "FLANNEL-" in line:
                rules.add(f"{tool}: {line}")
    for line in _run(["nft", "list", "tables"]).splitlines():
        if "kube" in line:
            rules.add(f"nft: {line}")
    procs = set()
    for line in _run(["ps", "-eo", "pid=,args="]).splitlines():
        if AGENT_RE.search(line) and str(os.getpid()) != line.split()[0]:
            procs.add(line.strip())
    files = set()
    for d in ("/etc/netns", "/run/kube-netlab"):  # pods' resolv.conf dirs, the lab's state
        if os.path.isdir(d):
            files.add(d)
            files.update(os.path.join(d, n) for n in os.listdir(d))
    return {"netns": netns, "links": links, "rules": rules, "processes": procs, "files": files}


def pytest_sessionstart(session: pytest.Session) -> None:
    if os.environ.get("KNL_LEAK_CHECK") == "1":
        session.config._knl_snapshot = machine_snapshot()  # type: ignore[attr-defined]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    before = getattr(session.config, "_knl_snapshot", None)
    if before is None:
        return
    after = machine_snapshot()
    leaks = {k: sorted(after[k] - before[k]) for k in after if after[k] - before[k]}
    if leaks:
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        msg = "LEAK CHECK FAILED: the tests left these behind:\n" + "\n".join(
            f"  {k}: {v}" for k, v in leaks.items())
        if tr:
            tr.write_line(msg, red=True, bold=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    else:
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        if tr:
            tr.write_line("leak check: nothing left behind (namespaces, links, rules, processes, files)", green=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = os.geteuid() == 0
    for item in items:
        if "tests/netns/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.netns)
            if not root:
                if os.environ.get("CI"):
                    raise pytest.UsageError("tests/netns need root; CI must run as root")
                item.add_marker(pytest.mark.skip(reason="needs root and network namespaces"))
