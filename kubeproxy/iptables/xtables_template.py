"""Per-shape templates for the encoder: encode a line shape once, then only patch fields.

The renderer emits a handful of line shapes per service port; 10,000 services differ only
in chain names, addresses, ports and comments. A *shape* is a rule line with those
variable fields cut out (``_VAR``). The first time a shape is seen, its template is learnt
from the general parser (``Encoder.parse_line``), not from layout knowledge here: the line
is encoded as given, then once per variable field with that field replaced by a sentinel
of the same kind (every byte of its encoding different); the bytes that change are where
the field lands (and in which byte order), a field that changes no byte but the rule's
chain or jump label is that chain or label. The template is kept only if encoding the
line with all sentinels at once gives exactly what the template predicts. Per line
afterwards: copy the learnt bytes, write the fields. A field value the template cannot
take (a longer name, an address out of range) makes that fragment use the general path.

The fields of a fragment come from one regex split of its text, or, cheaper, from the
renderer itself: a *shape* ``(format, fields)`` with ``text == format % fields``
(``render.Shape``). Such a fragment is used only if its text is exactly that, and every
field is one token of the kind its template learnt (a chain name, a quoted or bare
comment, an address, a port: what the regex would have cut out); else it takes the
regex split like any other text. Both ways share the learnt line templates.

Pure; used by ``xtables_codec.Encoder.chains``.
"""

from __future__ import annotations

import re
import socket
import struct
from collections.abc import Callable
from typing import NamedTuple

# Variable fields: our chain names, comments, plain IPv4 addresses (not a CIDR: those are
# per node, part of the shape), ports after --dport and after a DNAT "ip:".
_VAR = re.compile(
    r"([ :])"  # a leading character class: the regex engine skips ahead to it
    r"(KUBE-(?:SVC|SVL|EXT|SEP|FW)-[A-Z2-7]{16}"
    r'|"[^"\n]*"'
    r"|\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}(?![\d./])"
    r"|(?<=--dport )\d+(?![\d:])"
    r"|(?<=\d:)\d+(?![\d.:])"
    r'|(?<=--comment )[^\s"]+'
    r")"
)
split_fields = _VAR.split  # text -> [literal, sep, field, literal, sep, field, ..., literal]

_NAME, _COMMENT, _IP, _PORT = range(4)
_IP_BYTES: dict[str, bytes] = {}


class NoFit(Exception):
    """This value cannot go through the template (use the general encoder)."""


def _ip(v: str) -> bytes:
    b = _IP_BYTES.get(v)
    if b is None:
        if v.count(".") != 3:  # the general parser's rule (inet_aton takes "10.1" too)
            raise NoFit(v)
        try:
            b = socket.inet_aton(v)
        except OSError:
            raise NoFit(v) from None
        if len(_IP_BYTES) > 1 << 18:
            _IP_BYTES.clear()
        _IP_BYTES[v] = b
    return b


def _port(v: str) -> int:
    try:
        p = int(v)
    except ValueError:
        raise NoFit(v) from None
    if p > 65535:
        raise NoFit(v)
    return p


def _port_be(v: str) -> int:  # packed as a little-endian u16: swap the bytes
    p = _port(v)
    return (p >> 8) | ((p & 0xFF) << 8)


def _text(v: str, lo: int, hi: int) -> bytes:
    b = (v[1:-1] if v[0] == '"' else v).encode()
    if not lo <= len(b) <= hi:
        raise NoFit(v)
    return b


class LineTemplate(NamedTuple):
    """One learnt line shape: bytes with fields to write, where the chain/label come from."""

    raw: bytes
    patches: tuple[
        tuple[int, int, tuple[int, ...], int, int], ...
    ]  # (field, kind, offsets, len, cap)
    chain: str | int  # literal chain name, or the index of the field holding it
    label: str | int | None  # literal label (or None), or the index of the field holding it

    def pack_parts(self, field: Callable[[int], str]) -> tuple[str, list[str], list[bytes]]:
        """The struct format, the argument expressions (constant i is ``{c<i>}``, a field
        ``field(k)``) and the constants of this line's single struct.pack."""
        slots: list[tuple[int, int, str, str]] = []  # (offset, size, struct code, expression)
        for k, kind, offs, n, cap in self.patches:
            f = field(k)
            for o in offs:
                if kind == _IP:
                    slots.append((o, 4, "4s", f"_ip({f})"))
                elif kind == _PORT:
                    slots.append(
                        (~o, 2, "H", f"_port({f})") if o < 0 else (o, 2, "H", f"_port_be({f})")
                    )
                elif kind == _NAME:
                    slots.append((o, n, f"{n}s", f"_text({f}, {n}, {n})"))
                else:  # a comment: up to cap bytes, the rest of the field stays zero
                    slots.append((o, cap, f"{cap}s", f"_text({f}, 0, {cap})"))
        slots.sort()
        fmt, args, consts, pos = ["<"], [], [], 0
        for o, size, code, expr in slots:
            if o < pos:
                raise ValueError("overlapping fields")
            if o > pos:
                args.append(f"{{c{len(consts)}}}")
                consts.append(self.raw[pos:o])
                fmt.append(f"{o - pos}s")
            fmt.append(code)
            args.append(expr)
            pos = o + size
        if pos < len(self.raw):
            args.append(f"{{c{len(consts)}}}")
            consts.append(self.raw[pos:])
            fmt.append(f"{len(self.raw) - pos}s")
        return "".join(fmt), args, consts

    def compile(self) -> Callable[[list[str], int], tuple[str, bytes, str | None]]:
        """The template as one function: a single struct.pack of constants and fields."""
        fmt, args, consts = self.pack_parts(lambda k: f"f[b + {k}]")
        names = {f"c{i}": f"c{i}" for i in range(len(consts))}
        c = repr(self.chain) if type(self.chain) is str else f"f[b + {self.chain}]"
        lab = f"f[b + {self.label}]" if type(self.label) is int else repr(self.label)
        ns = {
            "_S": struct.Struct(fmt).pack, "_ip": _ip, "_port": _port,
            "_port_be": _port_be, "_text": _text,
            **{f"c{i}": v for i, v in enumerate(consts)},
        }  # fmt: skip
        call = ", ".join(a.format(**names) if a[0] == "{" else a for a in args)
        src = f"def make(f, b):\n    return ({c}, _S({call}), {lab})\n"
        exec(src, ns)  # noqa: S102 (generated from our own template, no outside text)
        make = ns["make"]
        make.template = self  # for fusing the lines of a fragment (FragmentTemplate.fuse)
        return make


def _kind(v: str) -> int:
    if v.startswith("KUBE-"):
        return _NAME
    if v[0] == '"' or not v[0].isdigit():
        return _COMMENT
    return _IP if "." in v else _PORT


def _swap(s: str, keep: int = 0) -> str:
    return s[:keep] + "".join("y" if c == "x" else "x" for c in s[keep:])


def _sentinel(kind: int, v: str) -> str:
    if kind == _NAME:  # same prefix, every hash character different (still base32)
        return v[:9] + "".join("B" if c == "A" else "A" for c in v[9:])
    if kind == _COMMENT:
        return '"' + _swap(v[1:-1]) + '"' if v[0] == '"' else _swap(v)
    if kind == _IP:
        return ".".join(str(255 - int(x)) for x in v.split("."))
    return str(65535 - int(v))


def _runs(a: bytes, b: bytes) -> list[tuple[int, int]]:
    """(start, end) of the runs of differing bytes."""
    out: list[tuple[int, int]] = []
    start = -1
    for i in range(len(a)):
        if a[i] != b[i]:
            if start < 0:
                start = i
        elif start >= 0:
            out.append((start, i))
            start = -1
    if start >= 0:
        out.append((start, len(a)))
    return out


def learn_line(
    literals: list[str], fields: list[str], encode: Callable[[str], tuple[str, bytes, str | None]]
) -> LineTemplate | None:
    """A template for this line shape, or None (then it always takes the general path).

    ``literals``/``fields`` alternate to form the line; ``encode`` is the general parser
    (line -> (chain, entry bytes, label)); it may raise for text it does not know.
    """

    def line(vals: list[str]) -> str:
        out = [literals[0]]
        for v, lit in zip(vals, literals[1:], strict=True):
            out += (v, lit)
        return "".join(out)

    try:
        chain0, raw, label0 = encode(line(fields))
        patches = []
        chain: str | int = chain0
        label: str | int | None = label0
        for k, v in enumerate(fields):
            kind = _kind(v)
            s = _sentinel(kind, v)
            vals = list(fields)
            vals[k] = s
            c1, b1, l1 = encode(line(vals))
            if len(b1) != len(raw):
                return None
            runs = _runs(raw, b1)
            if c1 != chain0 or l1 != label0:  # the field is the chain or the jump target
                if runs or kind != _NAME:
                    return None
                if c1 == s and chain0 == v and chain == chain0:
                    chain = k
                elif l1 == s and label0 == v and label == label0:
                    label = k
                else:
                    return None
                continue
            if not runs:
                return None  # a field that changes nothing: not a shape we understand
            if kind == _IP:
                want0, want1 = socket.inet_aton(v), socket.inet_aton(s)
                offs = []
                for a, b in runs:
                    if (b - a) % 4:
                        return None
                    for o in range(a, b, 4):
                        if raw[o : o + 4] != want0 or b1[o : o + 4] != want1:
                            return None
                        offs.append(o)
                patches.append((k, kind, tuple(offs), 4, 4))
            elif kind == _PORT:
                p0, p1 = int(v), int(s)
                offs = []
                for a, b in runs:
                    if (b - a) % 2:
                        return None
                    for o in range(a, b, 2):
                        if raw[o : o + 2] == p0.to_bytes(2, "big") and b1[o : o + 2] == p1.to_bytes(
                            2, "big"
                        ):
                            offs.append(o)
                        elif raw[o : o + 2] == p0.to_bytes(2, "little") and b1[
                            o : o + 2
                        ] == p1.to_bytes(2, "little"):
                            offs.append(~o)
                        else:
                            return None
                patches.append((k, kind, tuple(offs), 2, 2))
            else:  # a string field: one run, its characters (after a fixed prefix) all differ
                text0 = (v[1:-1] if kind == _COMMENT and v[0] == '"' else v).encode()
                skip = 9 if kind == _NAME else 0
                if len(runs) != 1:
                    return None
                start = runs[0][0] - skip
                n = len(text0)
                if runs[0][1] != start + n or raw[start : start + n] != text0:
                    return None
                z = start + n  # room: the zero padding after it, keeping one NUL (and a byte spare)
                while z < len(raw) and raw[z] == 0:
                    z += 1
                cap = min(255, z - start - 2)
                if cap < n:
                    return None
                patches.append((k, kind, (start,), n, cap))
        make = LineTemplate(raw, tuple(patches), chain, label).compile()
        # The proof: the template predicts the parser's bytes for the fields as given and
        # for all of them changed at once.
        sent = [_sentinel(_kind(v), v) for v in fields]
        if make(fields, 0) != (chain0, raw, label0) or make(sent, 0) != tuple(encode(line(sent))):
            return None
        return make
    except (NoFit, ValueError, OSError, IndexError, struct.error):
        return None


LineMaker = Callable[[list[str], int], tuple[str, bytes, str | None]]

# What one field of a shape may hold: one token of the kind its template learnt, as the
# field regex (_VAR) would have cut it out of the text.
_FIELD_SYNTAX = {
    _NAME: r"KUBE-(?:SVC|SVL|EXT|SEP|FW)-[A-Z2-7]{16}",
    _IP: r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}",
    _PORT: r"\d{1,5}",
}
_QUOTED = r'"[^"\n\0]*"'
_BARE = r'[^\s"\0]+'
_FORMAT = re.compile(r"%(.)", re.S)


def format_literals(fmt: str) -> list[str] | None:
    """The literal texts between the ``%s`` of a format ('%%' undone); None if not only %s."""
    out: list[str] = []
    cur: list[str] = []
    pos = 0
    for m in _FORMAT.finditer(fmt):
        cur.append(fmt[pos : m.start()])
        if m.group(1) == "%":
            cur.append("%")
        elif m.group(1) == "s":
            out.append("".join(cur))
            cur = []
        else:
            return None
        pos = m.end()
    if "%" in fmt[pos:]:
        return None
    cur.append(fmt[pos:])
    out.append("".join(cur))
    return out


def _field_syntax(fields: tuple[str, ...] | list[str]) -> re.Pattern:
    """A pattern for ``"\0".join(fields)``: each field one token of its (learnt) kind."""
    pats = []
    for v in fields:
        k = _kind(v)
        pats.append(_FIELD_SYNTAX.get(k) or (_QUOTED if v[:1] == '"' else _BARE))
    return re.compile("\0".join(pats))


Grouped = dict[str, tuple[list[bytes], list[str | None]]]


def fuse(lines: tuple[tuple[LineMaker, int], ...], sample: list[str] | tuple[str, ...]):
    """A fragment's line templates as one generated function: each field converted once,
    the lines grouped by chain as in ``sample`` (the function returns None when the
    fields do not group that way: same chain where the sample had it, distinct chains)."""
    ns: dict[str, object] = {"_ip": _ip, "_port": _port, "_port_be": _port_be, "_text": _text}
    body: list[str] = []
    local: dict[str, str] = {}  # conversion expression -> local variable
    entries: list[str] = []
    chains: list[str] = []
    values: list[str] = []
    labels: list[str] = []
    for n, (make, base) in enumerate(lines):
        t: LineTemplate | None = getattr(make, "template", None)
        if t is None:
            return None
        fmt, args, consts = t.pack_parts(lambda k, base=base: f"f[{base + k}]")
        ns[f"_S{n}"] = struct.Struct(fmt).pack
        call = []
        for a in args:
            if a[0] == "{":
                name = f"c{n}_{a[2:-1]}"
                ns[name] = consts[int(a[2:-1])]
            else:
                name = local.get(a)
                if name is None:
                    name = local[a] = f"v{len(local)}"
                    body.append(f"    {name} = {a}")
            call.append(name)
        entries.append(f"_S{n}({', '.join(call)})")
        if type(t.chain) is str:
            chains.append(repr(t.chain))
            values.append(t.chain)
        else:
            chains.append(f"f[{base + t.chain}]")
            values.append(sample[base + t.chain])
        labels.append(f"f[{base + t.label}]" if type(t.label) is int else repr(t.label))
    groups: dict[str, list[int]] = {}
    for n, v in enumerate(values):
        groups.setdefault(v, []).append(n)
    checks = []
    for members in groups.values():
        same = list(dict.fromkeys(chains[n] for n in members))
        if len(same) > 1:
            checks.append(" == ".join(same))
    heads = [chains[m[0]] for m in groups.values()]
    if len(heads) > 1:
        checks.append(f"len({{{', '.join(heads)}}}) == {len(heads)}")
    out = ", ".join(
        f"{chains[m[0]]}: ([{', '.join(entries[n] for n in m)}], [{', '.join(labels[n] for n in m)}])"
        for m in groups.values()
    )
    src = "def make(f):\n"
    if checks:
        src += f"    if not ({' and '.join(checks)}):\n        return None\n"
    src += "".join(b + "\n" for b in body) + f"    return {{{out}}}\n"
    exec(src, ns)  # noqa: S102 (generated from our own templates, no outside text)
    return ns["make"]


class FragmentTemplate(NamedTuple):
    lines: tuple[tuple[LineMaker, int], ...]  # (line template, index of its first field)
    fused: Callable[[list[str] | tuple[str, ...]], Grouped | None] | None = None

    def make(self, fields: list[str]) -> dict[str, tuple[list[bytes], list[str | None]]]:
        if self.fused is not None:
            out = self.fused(fields)
            if out is not None:
                return out
        return self.make_lines(fields)

    def make_lines(self, fields: list[str]) -> dict[str, tuple[list[bytes], list[str | None]]]:
        """Line by line, grouped by the chains the fields name (the reference for fused)."""
        out: dict[str, tuple[list[bytes], list[str | None]]] = {}
        for make, base in self.lines:
            chain, entry, label = make(fields, base)
            g = out.get(chain)
            if g is None:
                g = out[chain] = ([], [])
            g[0].append(entry)
            g[1].append(label)
        return out


class Templates:
    """Fragment shape -> template (None: that shape takes the general path)."""

    def __init__(self, encode: Callable[[str], tuple[str, bytes, str | None]]) -> None:
        self._encode = encode
        self._frags: dict[str, FragmentTemplate | None] = {}
        self._lines: dict[str, LineMaker | None] = {}
        self._formats: dict[str, tuple[FragmentTemplate, re.Pattern] | None] = {}

    def chains(
        self, text: str, shape: tuple[str, tuple[str, ...]] | None = None
    ) -> dict[str, tuple[list[bytes], list[str | None]]] | None:
        """The fragment's entries grouped by chain, or None if it has no usable template.

        ``shape``: the renderer's ``(format, fields)`` for this text (used only if the
        text is exactly ``format % fields`` and each field has its kind's syntax).
        """
        if shape is not None:
            fmt, fields = shape
            t = self._formats.get(fmt, False)
            if t is False:
                t = self._formats[fmt] = self._learn_format(text, fmt, fields)
            if t is not None:
                try:
                    if fmt % fields == text and t[1].fullmatch("\0".join(fields)):
                        return t[0].make(fields)  # type: ignore[arg-type]
                except (NoFit, struct.error, TypeError, ValueError):
                    pass
        parts = split_fields(text)
        key = "\0".join(parts[0::3]) + "\1" + "".join(parts[1::3])
        t = self._frags.get(key, False)
        if t is False:
            t = self._frags[key] = self._learn(parts)
        if t is None:
            return None
        try:
            return t.make(parts[2::3])
        except (NoFit, struct.error):
            return None

    def _learn_format(
        self, text: str, fmt: str, fields: tuple[str, ...]
    ) -> tuple[FragmentTemplate, re.Pattern] | None:
        lits = format_literals(fmt)
        try:
            if lits is None or fmt % fields != text or any("\n" in v or not v for v in fields):
                return None
        except (TypeError, ValueError):
            return None
        parts: list[str] = [lits[0]]
        for v, lit in zip(fields, lits[1:], strict=True):
            parts += ("", v, lit)
        t = self._learn(parts)
        return None if t is None else (t, _field_syntax(fields))

    def _learn(self, parts: list[str]) -> FragmentTemplate | None:
        # Into lines of alternating literals (separator included) and fields; fields never
        # hold a newline.
        lines: list[tuple[LineMaker, int]] = []
        lit: list[str] = [""]
        fields: list[str] = []
        base = 0
        for i in range(0, len(parts), 3):
            chunks = parts[i].split("\n")
            lit[-1] += chunks[0]
            for c in chunks[1:]:
                if lit != [""] or fields:
                    t = self._line(lit, fields)
                    if t is None:
                        return None
                    lines.append((t, base))
                    base += len(fields)
                lit, fields = [c], []
            if i + 2 < len(parts):
                lit[-1] += parts[i + 1]
                fields.append(parts[i + 2])
                lit.append("")
        if lit != [""] or fields:
            t = self._line(lit, fields)
            if t is None:
                return None
            lines.append((t, base))
        sample = parts[2::3]
        frag = FragmentTemplate(tuple(lines))
        try:
            fused = fuse(frag.lines, sample)
            if fused is not None and fused(sample) != frag.make_lines(sample):
                fused = None  # cannot happen: the same packs, grouped as the sample is
        except (NoFit, ValueError, struct.error, SyntaxError):
            fused = None
        return frag._replace(fused=fused)

    def _line(self, lit: list[str], fields: list[str]) -> LineMaker | None:
        key = "\0".join(lit)
        t = self._lines.get(key, False)
        if t is False:
            t = self._lines[key] = learn_line(lit, fields, self._encode)
        return t

    def clear(self) -> None:
        self._frags.clear()
        self._lines.clear()
        self._formats.clear()
