"""run_until_signalled: how every agent stops on SIGTERM (no root needed)."""

from __future__ import annotations

import signal
import subprocess
import sys

CHILD = """
import asyncio
from kubecommon.aio import run_until_signalled

class Client:
    async def close(self):
        print("closed", flush=True)

async def work():
    print("working", flush=True)
    await asyncio.sleep(60)

print("stopped by signal" if run_until_signalled(work, closing=Client()) else "returned", flush=True)
"""


def test_sigterm_cancels_the_work_closes_and_exits_cleanly() -> None:
    p = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "working"
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=10)
    assert p.returncode == 0
    assert out.split() == ["closed", "stopped", "by", "signal"]


def test_work_that_returns_is_not_reported_as_stopped() -> None:
    from kubecommon.aio import run_until_signalled

    closed = []

    class Client:
        async def close(self) -> None:
            closed.append(True)

    async def work() -> int:
        return 1

    assert run_until_signalled(work, closing=Client()) is False
    assert closed == [True]
