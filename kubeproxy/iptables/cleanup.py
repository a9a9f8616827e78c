"""``kubeproxy --cleanup``: remove every KUBE- chain and every jump to one, in both backends.

Works after anything (a crash, a half-applied sync, another kube-proxy's leftovers): read
the tables, and in one restore per table delete each rule of a built-in chain that jumps
to a KUBE- chain, flush every KUBE- chain, then delete them. Idempotent.
"""

from __future__ import annotations

import logging
import shlex

from .apply import Applier, IptablesError, chains_in, table_text

log = logging.getLogger("kubeproxy")

TABLES = ("filter", "nat", "mangle", "raw")
BUILTIN = {"INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING"}


def cleanup_input(saved: str, table: str, prefix: str = "KUBE-") -> str:
    """Restore input removing our chains and the jumps into them from one saved table."""
    ours = sorted(c for c in chains_in(saved, table) if c.startswith(prefix))
    deletes = []
    for line in table_text(saved, table).splitlines():
        if not line.startswith("-A "):
            continue
        try:
            words = shlex.split(line)
        except ValueError:
            continue
        if words[1] in BUILTIN and "-j" in words and words[words.index("-j") + 1].startswith(prefix):
            deletes.append("-D" + line[2:])
    if not ours and not deletes:
        return ""
    body = [f"*{table}"]
    body += [f":{c} - [0:0]" for c in ours]
    body += deletes
    body += [f"-X {c}" for c in ours]
    body.append("COMMIT")
    return "\n".join(body) + "\n"


async def cleanup(backends: tuple[str, ...] = ("legacy-restore", "nft-restore")) -> bool:
    """Remove all KUBE- chains/jumps; returns True when everything went fine."""
    ok = True
    for backend in backends:
        ap = Applier(backend)
        try:
            saved = await ap.save()
        except (IptablesError, OSError) as e:
            log.info("cleanup: %s backend unavailable (%s)", backend, e)
            continue
        text = "".join(cleanup_input(saved, t) for t in TABLES)
        if not text:
            continue
        try:
            await ap.restore(text)
            log.info("cleanup: removed KUBE- chains and jumps (%s)", backend)
        except IptablesError as e:
            log.error("cleanup (%s) failed: %s", backend, e)
            ok = False
    return ok
