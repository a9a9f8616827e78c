"""The only place kube-proxy's nftables mode touches the kernel: libnftables and ``nft``.

One transaction per sync (nft commits a whole input as one atomic batch: all of it applies,
or none). Small transactions -- the usual sync, a few lines -- go through libnftables in
this process (a ctypes binding of four calls; the context is made once), which saves the
~10-20 ms of starting ``nft`` from a large Python process. Large ones -- full syncs -- go to
``nft -f -`` on stdin, so the event loop is not blocked while the kernel loads 10,000
services. Either way the same text, parsed by the same library. Every statement names our
table (``ip kube-proxy``), so other tables, and the iptables-nft tables, are never
touched. Listing (our chains and sets, for a full sync to delete leftovers) uses ``nft -j``.

nft 1.0.6 does not keep its cache across our own commits (the ruleset generation moves
on), so each command still lists the table's chains and sets first; that is why the
renderer keeps the number of chains small.
"""

from __future__ import annotations

import ctypes
import json
import logging
import re

from ..tools import run
from .render import FAMILY, TABLE

log = logging.getLogger("kubeproxy")

NFT = "nft"
LIBNFTABLES = "libnftables.so.1"
INPROCESS_MAX = 64 * 1024  # bytes of transaction applied in-process; larger ones: nft -f
_LINE = re.compile(r"^/dev/stdin:(\d+):")


class Libnftables:
    """A libnftables context: ``run(text)`` applies one transaction, like ``nft -f``."""

    def __init__(self, path: str = LIBNFTABLES):
        lib = ctypes.CDLL(path)
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        ctx = lib.nft_ctx_new(0)  # NFT_CTX_DEFAULT
        if not ctx:
            raise OSError(f"{path}: nft_ctx_new failed")
        if lib.nft_ctx_buffer_output(ctx) or lib.nft_ctx_buffer_error(ctx):
            lib.nft_ctx_free(ctx)
            raise OSError(f"{path}: cannot buffer output")
        self._lib, self._ctx = lib, ctx

    def run(self, text: str) -> tuple[int, str]:
        """(0, "") or (non-zero, nft's error text). Blocks: keep the input small."""
        rc = self._lib.nft_run_cmd_from_buffer(self._ctx, text.encode())
        err = self._lib.nft_ctx_get_error_buffer(self._ctx) or b""
        return rc, err.decode(errors="replace")

    def close(self) -> None:
        if self._ctx:
            self._lib.nft_ctx_free(self._ctx)
            self._ctx = None


class NftError(RuntimeError):
    pass




def _explain(text: str, err: str) -> str:
    """nft's error plus the offending transaction line, so a user can see what failed."""
    lines = text.splitlines()
    for m in map(_LINE.match, err.splitlines()):
        if m and 0 < int(m.group(1)) <= len(lines):
            return f"{err.strip()}\n  (transaction line {m.group(1)}: {lines[int(m.group(1)) - 1][:300]})"
    return err.strip()


class NftApplier:
    def __init__(self, nft: str = NFT, inprocess_max: int = INPROCESS_MAX):
        self.nft = nft
        self.inprocess_max = inprocess_max  # 0: always nft -f
        self._lib: Libnftables | None = None
        self._lib_failed = False

    def _library(self) -> Libnftables | None:
        if self._lib is None and not self._lib_failed:
            try:
                self._lib = Libnftables()  # opened in the network namespace we run in
            except (OSError, AttributeError) as e:
                self._lib_failed = True
                log.info("libnftables not usable (%s): every transaction goes to nft -f", e)
        return self._lib

    async def apply(self, text: str) -> None:
        """Run one transaction; raises NftError with nft's message if it was refused."""
        if not text:
            return
        lib = self._library() if len(text) <= self.inprocess_max else None
        if lib is not None:
            rc, err = lib.run(text)
        else:
            rc, _, err = await run([self.nft, "-f", "-"], text)
        if rc != 0:
            raise NftError(f"nft -f refused the {TABLE} transaction: {_explain(text, err)}")

    async def _list(self, what: str) -> list[dict]:
        # -t (terse): no set elements. Without it nft 1.0.6 fetches every element of every
        # set first (~2 s at 10,000 services) only to print names.
        rc, out, err = await run([self.nft, "-t", "-j", "list", what, FAMILY])
        if rc != 0:
            raise NftError(f"nft list {what} {FAMILY} failed: {err.strip()}")
        items = json.loads(out or "{}").get("nftables", [])
        kind = what[:-1]  # chains -> chain, sets -> set
        return [i[kind] for i in items if kind in i and i[kind].get("table") == TABLE]

    async def existing(self) -> tuple[set[str], set[str]]:
        """(chains, sets) our table holds now; empty when the table does not exist."""
        chains = {c["name"] for c in await self._list("chains")}
        sets = {s["name"] for s in await self._list("sets")}
        return chains, sets

    async def delete_table(self) -> bool:
        """Delete our table; returns False when there was none."""
        rc, _, err = await run([self.nft, "delete", "table", FAMILY, TABLE])
        if rc == 0:
            return True
        if "No such file or directory" in err:
            return False
        raise NftError(f"nft delete table {FAMILY} {TABLE} failed: {err.strip()}")
