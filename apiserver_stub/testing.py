"""Test helper: run ``python -m apiserver_stub`` as a subprocess on a free loopback port.

    with run_apiserver() as url:      # "http://127.0.0.1:PORT", ready (/readyz answered)
        ...

The process is terminated (then killed if needed) when the block exits, even on error.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def run_apiserver(
    *,
    memory: bool = True,
    data_dir: str | None = None,
    port: int | None = None,
    extra_args: list[str] = [],  # noqa: B006 - never mutated
    timeout: float = 20.0,
) -> Iterator[str]:
    """Start the stub, wait for /readyz, yield its base URL, stop it on exit."""
    port = port or free_port()
    args = [sys.executable, "-m", "apiserver_stub", "--port", str(port), "--bind", "127.0.0.1"]
    if data_dir is not None:
        args += ["--data-dir", data_dir]
    elif memory:
        args += ["--memory"]
    args += list(extra_args)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise RuntimeError(f"apiserver_stub exited with {proc.returncode}: {err[-2000:]}")
            try:
                with urllib.request.urlopen(url + "/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"apiserver_stub did not become ready on {url}")
            time.sleep(0.05)
        yield url
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr:
            proc.stderr.close()
