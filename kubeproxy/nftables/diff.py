"""``nft -f`` transaction text from desired table states (pure; no I/O).

``full(state, existing_chains, existing_sets)``: the whole table, for the first sync, a
periodic resync and after any failure. ``add table`` + ``flush table`` (every chain of ours
emptied, so rules removed or edited by hand come back), the verdict maps, endpoint maps and
the hairpin set flushed and refilled, every chain (shared ones included) and set declared,
every rule added, and whatever exists in the kernel
but is no longer wanted deleted. Affinity sets are declared, never flushed, so sticky
clients stay sticky across a resync.

``partial(prev, new)``: only what changed between the state applied last and the new one.
Fragments the renderer did not re-render are the same objects, so finding the changed
service ports is one identity check each -- or nothing at all when ``new`` was rendered
right after ``prev`` (its ``changed`` says which); the text is proportional to the change.
Order inside the transaction: declare new chains and sets, flush the changed chains, add
their rules, delete map elements that went away (or changed value), add the new ones,
update the hairpin pairs (by reference count), then flush and delete stale chains (shared
ones no longer used included) and sets. The whole text is one atomic nft transaction.
Returns "" when nothing changed.
"""

from __future__ import annotations

from collections.abc import Iterable

from .render import (
    BASE_CHAINS,
    DNAT_MAPS,
    FAMILY,
    HAIRPIN,
    MAPS,
    NODEPORT_IPS,
    TABLE,
    TABLE_COMMENT,
    Element,
    ServiceFragment,
    TableState,
)

T = f"{FAMILY} {TABLE}"


def _set_decl(name: str, timeout: int) -> str:
    return (
        f"add set {T} {name} {{ type ipv4_addr ; flags dynamic,timeout ; timeout {timeout}s ; }}\n"
    )


def _elements(out: list[str], verb: str, elems: Iterable[Element], with_value: bool) -> None:
    by_map: dict[str, list[str]] = {}
    for m, key, value, comment in elems:  # ~50,000 in a full sync: no method calls
        if with_value:
            key = f'{key} comment "{comment}" : {value}' if comment else f"{key} : {value}"
        lst = by_map.get(m)
        if lst is None:
            by_map[m] = lst = []
        lst.append(key)
    for m in sorted(by_map):
        out.append(f"{verb} element {T} {m} {{ {', '.join(by_map[m])} }}\n")


def _rules(out: list[str], chain: str, rules: Iterable[str]) -> None:
    prefix = f"add rule {T} {chain} "
    out.extend(f"{prefix}{r}\n" for r in rules)


def full(
    state: TableState,
    existing_chains: Iterable[str] = (),
    existing_sets: Iterable[str] = (),
) -> str:
    """The transaction that makes our table exactly ``state``, whatever it held before."""
    out = [f'add table {T} {{ comment "{TABLE_COMMENT}" ; }}\n', f"flush table {T}\n"]
    for b in BASE_CHAINS:
        out.append(
            f"add chain {T} {b.name} {{ type {b.type} hook {b.hook} priority {b.priority} ; }}\n"
        )
    base_names = {b.name for b in BASE_CHAINS}
    for c, _ in state.base.chains:
        if c not in base_names:
            out.append(f"add chain {T} {c}\n")
    for name, typ, comment in MAPS:
        out.append(f'add map {T} {name} {{ type {typ} ; comment "{comment}" ; }}\n')
        out.append(f"flush map {T} {name}\n")
    for name, typ, comment in DNAT_MAPS:
        out.append(f'add map {T} {name} {{ {typ} ; comment "{comment}" ; }}\n')
        out.append(f"flush map {T} {name}\n")
    out.append(
        f'add set {T} {HAIRPIN} {{ type ipv4_addr . ipv4_addr ; comment "endpoint IP . same IP: hairpin traffic to masquerade" ; }}\n'
    )
    out.append(f"flush set {T} {HAIRPIN}\n")
    for c in sorted(state.shared):
        out.append(f"add chain {T} {c}\n")
    if state.base.nodeport_ips is not None:
        out.append(
            f'add set {T} {NODEPORT_IPS} {{ type ipv4_addr ; comment "IPs that accept NodePort traffic" ; }}\n'
        )
        out.append(f"flush set {T} {NODEPORT_IPS}\n")
        if state.base.nodeport_ips:
            out.append(
                f"add element {T} {NODEPORT_IPS} {{ {', '.join(state.base.nodeport_ips)} }}\n"
            )
    frags = [f for _, f in sorted(state.services.items(), key=_item_key)]
    for f in frags:
        for s, timeout in f.sets:
            out.append(_set_decl(s, timeout))
        for c, _ in f.chains:
            out.append(f"add chain {T} {c}\n")
    for c, rules in state.base.chains:
        _rules(out, c, rules)
    for c in sorted(state.shared):
        _rules(out, c, state.shared[c])
    for f in frags:
        for c, rules in f.chains:
            _rules(out, c, rules)
    _elements(out, "add", (e for f in frags for e in f.elements), True)
    if state.hairpin:
        pairs = ", ".join(f"{ip} . {ip}" for ip in sorted(state.hairpin))
        out.append(f"add element {T} {HAIRPIN} {{ {pairs} }}\n")
    wanted_chains = state.chain_names()
    wanted_sets = state.set_names()
    for c in sorted(set(existing_chains) - wanted_chains):
        out.append(f"delete chain {T} {c}\n")  # already flushed by "flush table"
    for s in sorted(set(existing_sets) - wanted_sets):
        out.append(f"delete set {T} {s}\n")
    return "".join(out)


def partial(prev: TableState, new: TableState) -> str:
    """Only the statements that turn ``prev`` (applied) into ``new``; "" if equal.

    The skeletons must be equal (a changed node context needs ``full``).
    """
    if prev.base != new.base:
        raise ValueError("the table skeleton changed: a full sync is needed")
    old_s, new_s = prev.services, new.services
    if new.since and new.since == prev.generation:
        changed = list(new.changed)  # the renderer already knows (no scan of every port)
    else:
        changed = [k for k, f in new_s.items() if old_s.get(k) is not f]
        changed += [k for k in old_s if k not in new_s]
    if not changed and prev.shared == new.shared:
        return ""
    changed.sort(key=_key)
    empty = ServiceFragment((), (), (), False)
    decl: list[str] = []
    flush: list[str] = []
    rules: list[str] = []
    del_elems: list[Element] = []
    add_elems: list[Element] = []
    stale_chains: list[str] = []
    stale_sets: list[str] = []
    recreate: list[str] = []  # sets whose timeout changed: deleted once their users are flushed
    hairpin_ips: set[str] = set()
    # Shared chains (few): declared when first used, rewritten when their rules changed,
    # deleted once no service port uses them.
    for c, r in sorted(new.shared.items()):
        old_rules = prev.shared.get(c)
        if old_rules is None:
            decl.append(f"add chain {T} {c}\n")
            _rules(rules, c, r)
        elif old_rules != r:
            flush.append(f"flush chain {T} {c}\n")
            _rules(rules, c, r)
    stale_chains.extend(c for c in sorted(prev.shared) if c not in new.shared)
    for k in changed:
        a = old_s.get(k, empty)
        b = new_s.get(k, empty)
        if a == b:
            continue
        hairpin_ips.update(a.hairpin)
        hairpin_ips.update(b.hairpin)
        # Sets: a timeout cannot be changed in place, so a changed set is re-created.
        a_sets, b_sets = dict(a.sets), dict(b.sets)
        redo: list[str] = []
        for s, t in b.sets:
            if s not in a_sets:
                decl.append(_set_decl(s, t))
            elif a_sets[s] != t:
                redo.append(f"@{s} ")
                recreate.append(f"delete set {T} {s}\n")
                recreate.append(_set_decl(s, t))
        stale_sets.extend(s for s in a_sets if s not in b_sets)
        # Chains: new ones declared, changed ones flushed and rewritten, gone ones deleted.
        a_chains = dict(a.chains)
        b_names = set()
        for c, r in b.chains:
            b_names.add(c)
            old_rules = a_chains.get(c)
            if old_rules is None:
                decl.append(f"add chain {T} {c}\n")
                _rules(rules, c, r)
            elif old_rules != r or (redo and any(x in rule for x in redo for rule in old_rules)):
                flush.append(f"flush chain {T} {c}\n")
                _rules(rules, c, r)
        stale_chains.extend(c for c in a_chains if c not in b_names)
        # Map elements, keyed by (map, key).
        a_el = {(e.map, e.key): e for e in a.elements}
        b_el = {(e.map, e.key): e for e in b.elements}
        for mk, e in a_el.items():
            if b_el.get(mk) != e:
                del_elems.append(e)
        for mk, e in b_el.items():
            if a_el.get(mk) != e:
                add_elems.append(e)
    out = decl + flush + recreate + rules
    _elements(out, "delete", del_elems, False)
    _elements(out, "add", add_elems, True)
    gone = sorted(ip for ip in hairpin_ips if ip in prev.hairpin and ip not in new.hairpin)
    came = sorted(ip for ip in hairpin_ips if ip not in prev.hairpin and ip in new.hairpin)
    if gone:
        out.append(f"delete element {T} {HAIRPIN} {{ {', '.join(f'{i} . {i}' for i in gone)} }}\n")
    if came:
        out.append(f"add element {T} {HAIRPIN} {{ {', '.join(f'{i} . {i}' for i in came)} }}\n")
    out.extend(f"flush chain {T} {c}\n" for c in stale_chains)
    out.extend(f"delete chain {T} {c}\n" for c in stale_chains)
    out.extend(f"delete set {T} {s}\n" for s in stale_sets)
    return "".join(out)


def _item_key(item) -> tuple[str, str, str, str]:
    s = item[0]
    return (s.namespace, s.name, s.port, s.protocol)


def _key(s) -> tuple[str, str, str, str]:
    return (s.namespace, s.name, s.port, s.protocol)
