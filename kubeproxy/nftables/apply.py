"""The only place kube-proxy's nftables mode touches the kernel: the ``nft`` command.

One ``nft -f -`` per sync carries the whole transaction on stdin (nft commits a file as one
atomic batch: all of it applies, or none). Every statement names our table (``ip
kube-proxy``), so other tables, and the iptables-nft tables, are never touched. Listing
(our chains and sets, for a full sync to delete leftovers) uses ``nft -j``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re

from .render import FAMILY, TABLE

log = logging.getLogger("kubeproxy")

NFT = "nft"
_LINE = re.compile(r"^/dev/stdin:(\d+):")


class NftError(RuntimeError):
    pass


async def run(argv: list[str], stdin: str | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


def _explain(text: str, err: str) -> str:
    """nft's error plus the offending transaction line, so a user can see what failed."""
    lines = text.splitlines()
    for m in map(_LINE.match, err.splitlines()):
        if m and 0 < int(m.group(1)) <= len(lines):
            return f"{err.strip()}\n  (transaction line {m.group(1)}: {lines[int(m.group(1)) - 1][:300]})"
    return err.strip()


class NftApplier:
    def __init__(self, nft: str = NFT):
        self.nft = nft

    async def apply(self, text: str) -> None:
        """Run one transaction; raises NftError with nft's message if it was refused."""
        if not text:
            return
        rc, _, err = await run([self.nft, "-f", "-"], text)
        if rc != 0:
            raise NftError(f"nft -f refused the {TABLE} transaction: {_explain(text, err)}")

    async def _list(self, what: str) -> list[dict]:
        rc, out, err = await run([self.nft, "-j", "list", what, FAMILY])
        if rc != 0:
            raise NftError(f"nft list {what} {FAMILY} failed: {err.strip()}")
        items = json.loads(out or "{}").get("nftables", [])
        kind = what[:-1]  # chains -> chain, sets -> set
        return [i[kind] for i in items if kind in i and i[kind].get("table") == TABLE]

    async def existing(self) -> tuple[set[str], set[str]]:
        """(chains, sets) our table holds now; empty when the table does not exist."""
        if not await self.table_exists():
            return set(), set()
        chains = {c["name"] for c in await self._list("chains")}
        sets = {s["name"] for s in await self._list("sets")}
        return chains, sets

    async def table_exists(self) -> bool:
        rc, out, _ = await run([self.nft, "list", "tables", FAMILY])
        return rc == 0 and any(line.split()[-1:] == [TABLE] for line in out.splitlines())

    async def delete_table(self) -> bool:
        """Delete our table; returns False when there was none."""
        if not await self.table_exists():
            return False
        rc, _, err = await run([self.nft, "delete", "table", FAMILY, TABLE])
        if rc != 0:
            raise NftError(f"nft delete table {FAMILY} {TABLE} failed: {err.strip()}")
        return True
