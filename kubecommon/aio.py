"""How every agent's process runs its event loop: until its work ends or a signal stops it."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import Any


def run_until_signalled(
    work: Callable[[], Awaitable[Any]],
    *,
    closing: Any = None,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> bool:
    """Run ``work()``; SIGTERM or SIGINT cancels it. ``closing.close()`` is awaited at the end.

    Returns True when a signal stopped the work, False when it returned by itself.
    """
    stopped = False

    async def main() -> None:
        nonlocal stopped
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await work()
        except asyncio.CancelledError:
            stopped = True
        finally:
            if closing is not None:
                await closing.close()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())
    return stopped
