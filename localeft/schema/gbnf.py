"""Grammar expressions and the GBNF writer: every other step builds small expression trees
(simplified as they are built, so that what matches nothing disappears), and Rules holds the
named rules of one grammar until it is written out as text.

Expressions: ("lit", text) | ("cls", gbnf class) | ("ref", rule) | ("raw", gbnf text)
| ("seq", items) | ("alt", items) | ("opt", e) | ("star", e) | NONE (matches nothing);
EPS = ("seq", ()) matches "".
"""

from __future__ import annotations

NONE = ("none",)
EPS = ("seq", ())


def lit(text: str):
    return ("lit", text) if text else EPS


def seq(*items):
    out: list = []
    for x in items:
        if x == NONE:
            return NONE
        parts = x[1] if x[0] == "seq" else (x,)
        for p in parts:
            if out and p[0] == "lit" and out[-1][0] == "lit":
                out[-1] = ("lit", out[-1][1] + p[1])
            else:
                out.append(p)
    return out[0] if len(out) == 1 else ("seq", tuple(out))


def alt(*items):
    out: dict = {}  # ordered set
    empty = False
    for x in items:
        parts = x[1] if x[0] == "alt" else (x,)
        for p in parts:
            if p == NONE:
                continue
            if p == EPS:
                empty = True
            elif p[0] == "opt":
                empty = True
                out[p[1]] = None
            else:
                out[p] = None
    out = list(out)
    if not out:
        return EPS if empty else NONE
    body = out[0] if len(out) == 1 else ("alt", tuple(out))
    return opt(body) if empty else body


def opt(x):
    if x in (NONE, EPS) or x[0] in ("opt", "star"):
        return EPS if x == NONE else x
    return ("opt", x)


def star(x):
    if x in (NONE, EPS):
        return EPS
    return ("star", x[1] if x[0] == "opt" else x)


def _lit_text(text: str) -> str:
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ch == "\x7f":
            out.append(f"\\x{ord(ch):02X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _emit(e, top=False) -> str:
    kind = e[0]
    if kind == "lit":
        return _lit_text(e[1])
    if kind in ("cls", "ref", "raw"):
        return e[1]
    if kind == "seq":
        if not e[1]:
            return '""'
        return " ".join(_emit(x) for x in e[1])
    if kind == "alt":
        text = " | ".join(_emit(x, top=True) for x in e[1])
        return text if top else f"( {text} )"
    if kind in ("opt", "star"):
        text = _emit(e[1])
        if e[1][0] == "seq":
            text = f"( {text} )"
        return text + ("?" if kind == "opt" else "*")
    raise AssertionError(e)


def _refs(e, out: set) -> set:
    if e[0] == "ref":
        out.add(e[1])
    elif e[0] in ("seq", "alt"):
        for x in e[1]:
            _refs(x, out)
    elif e[0] in ("opt", "star"):
        _refs(e[1], out)
    return out


def _productive(e, ok: set) -> bool:  # fixed ("raw") rules name only productive rules
    kind = e[0]
    if kind == "none":
        return False
    if kind == "ref":
        return e[1] in ok
    if kind == "seq":
        return all(_productive(x, ok) for x in e[1])
    if kind == "alt":
        return any(_productive(x, ok) for x in e[1])
    return True


def _prune(e, ok: set):
    """`e` with references to rules that match nothing replaced by NONE (and simplified)."""
    kind = e[0]
    if kind == "ref":
        return e if e[1] in ok else NONE
    if kind == "seq":
        return seq(*(_prune(x, ok) for x in e[1])) if e[1] else e
    if kind == "alt":
        return alt(*(_prune(x, ok) for x in e[1]))
    if kind == "opt":
        return opt(_prune(e[1], ok))
    if kind == "star":
        return star(_prune(e[1], ok))
    return e


class Rules:
    """The named rules of one grammar while it is built: fresh names, fixed rules added on
    first use (with the fixed rules they name), and the text of what the root reaches.

    `fixed` maps a name to its GBNF text, or to a function (Rules -> expression) that builds
    it; `fixed_deps` names the fixed rules each fixed rule's text refers to."""

    def __init__(self, fixed: dict, fixed_deps: dict):
        self.fixed, self.fixed_deps = fixed, fixed_deps
        self.bodies: dict = {}  # rule name -> expression
        self.used: set = set()  # fixed rules added
        self.count = 0
        self.reasons: list[str] = []  # why some part matches nothing (the first explains it)

    def new(self, stem: str) -> str:
        """A fresh rule name."""
        self.count += 1
        return f"{stem}{self.count}"

    def define(self, name: str, body) -> None:
        self.bodies[name] = body

    def use(self, name: str):
        """A reference to one of the fixed rules (added with the rules it names)."""
        todo = [name]
        while todo:
            n = todo.pop()
            if n not in self.used:
                self.used.add(n)
                body = self.fixed[n]
                self.bodies[n] = ("raw", body) if isinstance(body, str) else body(self)
                todo.extend(self.fixed_deps.get(n, ()))
        return ("ref", name)

    def repeat(self, item, lo: int, hi, stem: str):
        """item{lo,hi} (hi None: unbounded) as flat text and a chain of rules, never nested."""
        head = seq(*([item] * lo))
        if hi is None:
            return seq(head, star(item))
        if hi == lo:
            return head
        if hi - lo <= 4:
            tail = EPS
            for _ in range(hi - lo):
                tail = opt(seq(item, tail))
            return seq(head, tail)
        names = [self.new(stem) for _ in range(hi - lo)]
        for i, nm in enumerate(names):
            nxt = ("ref", names[i + 1]) if i + 1 < len(names) else EPS
            self.bodies[nm] = opt(seq(item, nxt)) if nxt != EPS else opt(item)
        return seq(head, ("ref", names[0]))

    def text(self, root) -> str | None:
        """GBNF text with `root` as its root rule: the rules it reaches, those that match
        nothing pruned; None if the root itself matches nothing."""
        self.bodies["root"] = root
        ok: set = set()
        while True:
            more = {n for n, e in self.bodies.items() if n not in ok and _productive(e, ok)}
            if not more:
                break
            ok |= more
        if "root" not in ok:
            return None
        body = {n: _prune(e, ok) for n, e in self.bodies.items() if n in ok}
        seen, todo = {"root"}, ["root"]
        while todo:
            n = todo.pop()
            for r in _refs(body[n], set()) | set(self.fixed_deps.get(n, ())):
                if r not in seen:
                    seen.add(r)
                    todo.append(r)
        lines = [f"{n} ::= {_emit(body[n], True)}" for n in ["root"] + sorted(seen - {"root"})]
        return "\n".join(lines) + "\n"
