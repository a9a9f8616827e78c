"""The per-lab lock that keeps two `up`/`down` of one lab apart (no root needed)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from lab import cleanup
from lab import topology as topo


@pytest.fixture
def state_root(tmp_path, monkeypatch):
    monkeypatch.setattr(topo, "STATE_ROOT", str(tmp_path / "state"))
    return tmp_path / "state"


HOLD = """
import fcntl, sys, time
f = open(sys.argv[1], "w")
fcntl.flock(f, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def _holder(path: str, seconds: float) -> subprocess.Popen[str]:
    p = subprocess.Popen(
        [sys.executable, "-c", HOLD, path, str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert p.stdout is not None and p.stdout.readline().strip() == "held"
    return p


def test_a_busy_lab_is_refused_naming_the_holder(state_root) -> None:
    os.makedirs(state_root)
    holder = _holder(cleanup.lock_path("knlu"), 30)
    try:
        with pytest.raises(cleanup.LabBusy, match=rf"is running .*held by {holder.pid} "):
            with cleanup.lab_lock("knlu", wait=0.2):
                pass
    finally:
        holder.kill()
        holder.wait()


def test_a_holder_that_lets_go_soon_is_waited_for(state_root) -> None:
    os.makedirs(state_root)
    holder = _holder(cleanup.lock_path("knlu"), 0.5)
    t0 = time.monotonic()
    with cleanup.lab_lock("knlu", wait=10):
        waited = time.monotonic() - t0
    holder.wait()
    assert 0.2 < waited < 5


def test_remove_drops_the_file_and_the_next_lock_takes_a_fresh_one(state_root) -> None:
    with cleanup.lab_lock("knlu", remove=True):
        assert os.path.exists(cleanup.lock_path("knlu"))
    assert not os.path.exists(cleanup.lock_path("knlu"))
    # two lockers in a row, one removing: the second still excludes a third
    entered = threading.Event()
    release = threading.Event()

    def first() -> None:
        with cleanup.lab_lock("knlu", remove=True):
            entered.set()
            release.wait(5)

    t = threading.Thread(target=first)
    t.start()
    entered.wait(5)
    with pytest.raises(cleanup.LabBusy):
        with cleanup.lab_lock("knlu", wait=0.1):
            pass
    release.set()
    t.join()
    with cleanup.lab_lock("knlu", wait=0.1):
        pass
