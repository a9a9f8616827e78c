"""Running the node's command-line tools (iptables-*, nft, conntrack) from the event loop."""

from __future__ import annotations

import asyncio


async def run(argv: list[str], stdin: str | None = None) -> tuple[int, str, str]:
    """Run ``argv`` (feeding ``stdin`` if given); -> (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")
