"""The only place userspace mode touches iptables (legacy backend).

``apply(text)``: one ``iptables-legacy-restore --noflush`` per sync. The rendered text
declares (so creates or flushes) and refills our chains; to the same transaction we add the
jumps from the built-in chains that are missing or out of place (the portal jumps must be
rule 1 of PREROUTING/OUTPUT/INPUT). Rules of other chains are untouched.

``cleanup()``: remove every jump into a KUBE-PORTALS-*/KUBE-NODEPORT-* chain and the chains
themselves, whatever state they were left in. Idempotent.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Callable

from ..tools import run
from .render import ALL_CHAINS, JumpRule, jump_rules, quote

log = logging.getLogger("kubeproxy")

SAVE = "iptables-legacy-save"
RESTORE = "iptables-legacy-restore"
OUR_PREFIXES = ("KUBE-PORTALS-", "KUBE-NODEPORT-")
BUILTIN = {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}


class IptablesError(RuntimeError):
    pass


async def _run(argv: list[str], stdin: str | None = None) -> str:
    rc, out, err = await run(argv, stdin)
    if rc != 0:
        raise IptablesError(
            f"{argv[0]} failed (exit {rc}): {err.strip()}"
            + (f"\n--- input ---\n{stdin}" if stdin else "")
        )
    return out


def _tables(saved: str) -> dict[str, list[str]]:
    """table -> its '-A' and ':' lines from iptables-save output."""
    out: dict[str, list[str]] = {}
    cur: list[str] | None = None
    for line in saved.splitlines():
        if line.startswith("*"):
            cur = out.setdefault(line[1:].strip(), [])
        elif cur is not None and (line.startswith("-A ") or line.startswith(":")):
            cur.append(line)
    return out


def _target(line: str) -> tuple[str, str]:
    """('-A CHAIN ... -j TARGET') -> (CHAIN, TARGET)."""
    try:
        words = shlex.split(line)
    except ValueError:
        return "", ""
    chain = words[1] if len(words) > 1 else ""
    target = words[words.index("-j") + 1] if "-j" in words[:-1] else ""
    return chain, target


def jump_fixes(saved: str, jumps: tuple[JumpRule, ...] | None = None) -> dict[str, list[str]]:
    """Restore lines per table that make the jumps exist (and be first where required)."""
    tables = _tables(saved)
    fixes: dict[str, list[str]] = {}
    for jr in jumps or jump_rules():
        rules = [ln for ln in tables.get(jr.table, []) if ln.startswith(f"-A {jr.chain} ")]
        ours = [ln for ln in rules if _target(ln)[1] == jr.target]
        ok = bool(ours) and (not jr.first or (rules[0] in ours and len(ours) == 1))
        if ok:
            continue
        lines = fixes.setdefault(jr.table, [])
        lines += ["-D" + ln[2:] for ln in ours]
        args = " ".join(quote(a) for a in jr.args)
        lines.append(f"-I {jr.chain} 1 {args}" if jr.first else f"-A {jr.chain} {args}")
    return fixes


def merge(text: str, fixes: dict[str, list[str]]) -> str:
    """Insert each table's fix lines just before that table's COMMIT in ``text``."""
    out: list[str] = []
    table = ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:]
        if line == "COMMIT":
            out += fixes.get(table, [])
        out.append(line)
    return "\n".join(out) + "\n"


# iptables mode's chains (kube-proxy's CleanupLeftovers list), removed when userspace starts
IPTABLES_MODE_CHAINS = (
    "KUBE-SERVICES",
    "KUBE-EXTERNAL-SERVICES",
    "KUBE-NODEPORTS",
    "KUBE-POSTROUTING",
    "KUBE-FORWARD",
    "KUBE-MARK-MASQ",
    "KUBE-MARK-DROP",
    "KUBE-PROXY-FIREWALL",
    "KUBE-PROXY-CANARY",
)
IPTABLES_MODE_PREFIXES = (
    "KUBE-SVC-",
    "KUBE-SEP-",
    "KUBE-FW-",
    "KUBE-XLB-",
    "KUBE-EXT-",
    "KUBE-SVL-",
)


def is_ours(chain: str) -> bool:
    return chain.startswith(OUR_PREFIXES)


def is_iptables_mode(chain: str) -> bool:
    return chain in IPTABLES_MODE_CHAINS or chain.startswith(IPTABLES_MODE_PREFIXES)


def cleanup_text(saved: str, match: Callable[[str], bool] = is_ours) -> str:
    """Restore input deleting the jumps into, and the chains named by, ``match``."""
    body: list[str] = []
    for table, lines in sorted(_tables(saved).items()):
        ours = sorted(
            c for c in (ln[1:].split()[0] for ln in lines if ln.startswith(":")) if match(c)
        )
        deletes = []
        for ln in lines:
            if ln.startswith("-A "):
                chain, target = _target(ln)
                if chain in BUILTIN and match(target):
                    deletes.append("-D" + ln[2:])
        if not ours and not deletes:
            continue
        body.append(f"*{table}")
        body += [f":{c} - [0:0]" for c in ours]
        body += deletes
        body += [f"-X {c}" for c in ours]
        body.append("COMMIT")
    return "\n".join(body) + "\n" if body else ""


class PortalApplier:
    """Applies rendered portal rules; remembers nothing but the last text for logging."""

    def __init__(self) -> None:
        self.last_text = ""

    async def save(self) -> str:
        return await _run([SAVE])

    async def apply(self, text: str) -> None:
        saved = await self.save()
        full = merge(text, jump_fixes(saved))
        await _run([RESTORE, "-w", "5", "--noflush"], full)
        if full != self.last_text:
            log.debug("applied portal rules:\n%s", full)
        self.last_text = full

    async def cleanup_iptables_mode(self) -> bool:
        """Remove iptables mode's leftovers (a node switched modes without --cleanup)."""
        try:
            text = cleanup_text(await self.save(), is_iptables_mode)
        except (IptablesError, OSError) as e:
            log.info("userspace: cannot read iptables-legacy (%s)", e)
            return False
        if not text:
            return False
        await _run([RESTORE, "-w", "5", "--noflush"], text)
        log.info("userspace: removed iptables mode's KUBE- chains left from a previous run")
        return True

    async def cleanup(self) -> bool:
        """Remove all our chains and jumps; True if something was removed."""
        try:
            saved = await self.save()
        except (IptablesError, OSError) as e:
            log.info("userspace cleanup: iptables-legacy unavailable (%s)", e)
            return False
        text = cleanup_text(saved)
        if not text:
            return False
        await _run([RESTORE, "-w", "5", "--noflush"], text)
        log.info(
            "userspace cleanup: removed %s",
            ", ".join(sorted({c for cs in ALL_CHAINS.values() for c in cs})),
        )
        return True
