"""Numbers as grammar: a finite automaton over a number's characters ("-", digits, "."),
built from the bounds and multipleOf, minimised, and written as one rule per state.

Ranges, exclusive bounds and multipleOf are exact: the automaton tracks, digit by digit,
where the number stands against each bound and its remainder modulo the step. Numbers are
canonical (no leading zeros, no exponent) with at most DIGITS significant digits, so that
reading one back as a binary double keeps every comparison with the bounds exact.
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

from .bounds import digits, int_range, integer_step, lcm, tightest
from .gbnf import EPS, NONE, Rules, alt, lit, opt, seq
from .limits import DIGITS, MAX_STATES, Refuse, at
from .node import Node
from .values import dec


class _Compare:
    """Where a nonnegative number read digit by digit stands against a bound B: while reading
    the integer part ("I", lex) or "G" (more digits than B); then "L", "G", or j (equal so far,
    j fraction digits of B matched)."""

    def __init__(self, bound: Fraction):
        self.whole, self.frac = digits(bound)

    def int_digit(self, st, n_before: int, d: str):
        if st == "G" or n_before >= len(self.whole):
            return "G"
        lex = st[1]
        if lex == 0:
            b = self.whole[n_before]
            lex = (d > b) - (d < b)
        return ("I", lex)

    def end_int(self, st, n: int):
        if st == "G":
            return "G"
        if n < len(self.whole):
            return "L"
        return {-1: "L", 1: "G", 0: 0}[st[1]]

    def frac_digit(self, st, d: str):
        if st in ("L", "G"):
            return st
        b = self.frac[st] if st < len(self.frac) else "0"
        if d != b:
            return "G" if d > b else "L"
        return min(st + 1, len(self.frac))

    def final(self, st) -> int:
        if st in ("L", "G"):
            return -1 if st == "L" else 1
        return -1 if st < len(self.frac) else 0


class _Magnitude:
    """Canonical nonnegative JSON numbers (no leading zeros, no exponent) x with lo <= x <= hi
    (each (Fraction, strict) or None) and (x * 10**scale) % modulus == 0, with at most
    `frac` fraction digits and `total` digits in all (None: any number of integer digits)."""

    def __init__(self, lo, hi, modulus, scale, frac, total):
        self.lo = None if lo is None else (_Compare(lo[0]), lo[1])
        self.hi = None if hi is None else (_Compare(hi[0]), hi[1])
        self.modulus, self.scale = modulus, scale
        self.frac, self.total = frac, total
        # past the longest bound only the count matters for `total`: without one, it saturates
        longest = max((len(b[0].whole) for b in (self.lo, self.hi) if b), default=0)
        self.saturate = longest + 1 if total is None else None
        self.start = ("S", 0, 0, ("I", 0), ("I", 0), 0)

    def step(self, state, ch):
        phase, n, f, a, b, r = state
        lo, hi = self.lo, self.hi
        if ch == ".":
            if phase not in ("Z", "I") or self.frac == 0:
                return None
            a = lo[0].end_int(a, n) if lo else a
            b = hi[0].end_int(b, n) if hi else b
            phase = "D"
        else:
            d = int(ch)
            if phase == "S":
                phase = "Z" if d == 0 else "I"
            elif phase == "I":
                pass
            elif phase in ("D", "F"):
                phase = "F"
            else:  # after a leading "0" only "." may follow
                return None
            if phase in ("Z", "I"):
                if self.total is not None and n + 1 > self.total:
                    return None
                a = lo[0].int_digit(a, n, ch) if lo else a
                b = hi[0].int_digit(b, n, ch) if hi else b
                n = n + 1 if self.saturate is None else min(n + 1, self.saturate)
            else:
                if f + 1 > self.frac or self.total is not None and n + f + 1 > self.total:
                    return None
                a = lo[0].frac_digit(a, ch) if lo else a
                b = hi[0].frac_digit(b, ch) if hi else b
                f += 1
            r = (r * 10 + d) % self.modulus
        if lo and a == "L" or hi and b == "G":
            return None
        return (phase, n, f, a, b, r)

    def accept(self, state) -> bool:
        phase, n, f, a, b, r = state
        if phase not in ("Z", "I", "F"):
            return False
        if (r * 10 ** (self.scale - f)) % self.modulus:
            return False
        for bound, st, sign in ((self.lo, a, 1), (self.hi, b, -1)):
            if bound:
                cmp, strict = bound
                if phase != "F":
                    st = cmp.end_int(st, n)
                c = cmp.final(st) * sign
                if c < 0 or c == 0 and strict:
                    return False
        return True


def _minimal_dfa(start, step, accept, alphabet, what: str, budget: int = MAX_STATES):
    """Reachable, co-reachable, minimised DFA: (transitions [{ch: state}], accepting [bool]),
    state 0 the start; None if it accepts nothing."""
    index = {start: 0}
    states = [start]
    trans: list[dict] = []
    i = 0
    while i < len(states):
        t = {}
        for ch in alphabet:
            nxt = step(states[i], ch)
            if nxt is None:
                continue
            if nxt not in index:
                if len(states) >= budget:
                    raise Refuse(f"{what} needs too large a grammar (over {budget:,} states)")
                index[nxt] = len(states)
                states.append(nxt)
            t[ch] = index[nxt]
        trans.append(t)
        i += 1
    acc = [accept(s) for s in states]
    back: list[list[int]] = [[] for _ in states]
    for s, t in enumerate(trans):
        for d in t.values():
            back[d].append(s)
    live = {s for s, a in enumerate(acc) if a}
    todo = list(live)
    while todo:
        for p in back[todo.pop()]:
            if p not in live:
                live.add(p)
                todo.append(p)
    if 0 not in live:
        return None
    keep = sorted(live)
    # Moore's partition refinement (a missing or dead transition is class -1)
    part = {s: int(acc[s]) for s in keep}
    n_classes = len(set(part.values()))
    while True:
        sig = {s: (part[s],) + tuple(part.get(trans[s].get(c), -1) for c in alphabet) for s in keep}
        ids: dict = {}
        part = {s: ids.setdefault(sig[s], len(ids)) for s in keep}
        if len(ids) == n_classes:
            break
        n_classes = len(ids)
    rep: dict = {}
    for s in keep:
        rep.setdefault(part[s], s)
    number = {part[0]: 0}  # classes numbered in breadth-first order from the start
    queue = [part[0]]
    out_trans: list[dict] = []
    out_acc: list[bool] = []
    for k in queue:  # grows while iterating
        s = rep[k]
        t = {}
        for c, d in trans[s].items():
            if d in live:
                if part[d] not in number:
                    number[part[d]] = len(number)
                    queue.append(part[d])
                t[c] = number[part[d]]
        out_trans.append(t)
        out_acc.append(acc[s])
    return out_trans, out_acc


def _digit_groups(chars) -> list:
    """Characters of "-0123456789." as grammar pieces: one class for the digits, literals."""
    ds = sorted(int(c) for c in chars if c.isdigit())
    out, runs, i = [], [], 0
    while i < len(ds):
        j = i
        while j + 1 < len(ds) and ds[j + 1] == ds[j] + 1:
            j += 1
        runs.append(f"{ds[i]}" if i == j else f"{ds[i]}-{ds[j]}")
        i = j + 1
    if runs:
        out.append(("cls", "[" + "".join(runs) + "]"))
    return out + [lit(c) for c in sorted(chars) if not c.isdigit()]


def number_grammar(rules: Rules, n: Node, integer: bool, shared: dict):
    """The numbers (or integers) a plain node allows; `shared` caches the automata of one
    grammar by their limits."""
    where = at(n.path)
    if integer:
        # Python (and so jsonschema) compares an int with a float bound exactly
        a, b = int_range(*tightest(n))
        lo = None if a is None else (Fraction(a), False)
        hi = None if b is None else (Fraction(b), False)
        modulus = integer_step(n.mults)
        return _number_expr(rules, lo, hi, modulus, 0, 0, True, shared, where)
    for raw, _, kw, p in n.lows + n.highs:
        places = Decimal(repr(raw)).normalize().as_tuple().digits
        if abs(raw) < 10**DIGITS and len(places) > DIGITS:
            raise Refuse(
                f'"{kw}" {raw!r} {at(p)} has more than {DIGITS} significant digits '
                "(limits of numbers must read back exactly as a double)"
            )
    lo, hi = tightest(n, dec)
    scale, modulus = 0, 1
    if n.mults:  # x multiple of each m  <=>  x * 10**scale is a multiple of each m * 10**scale
        ms = [dec(m) for m in n.mults]
        while any((m * 10**scale).denominator != 1 for m in ms):
            scale += 1
        if scale >= DIGITS:
            raise Refuse(f'"multipleOf" {where} has {scale} decimals, over {DIGITS - 1}')
        for m in ms:
            modulus = lcm(modulus, int(m * 10**scale))
    frac = scale if n.mults else DIGITS
    return _number_expr(rules, lo, hi, modulus, scale, frac, False, shared, where)


def any_number(rules: Rules):
    """The fixed rule "number": the automaton without limits."""
    return _number_expr(rules, None, None, 1, 0, DIGITS, False)


def _number_expr(rules: Rules, lo, hi, modulus, scale, frac, integer, shared=None, where=""):
    """Integers (or numbers) x with lo <= x <= hi ((Fraction, strict) or None), at most
    `frac` decimals, and x * 10**scale a multiple of `modulus` (frac <= scale if it is
    over 1); numbers have DIGITS digits in all, integers at least as many. `shared` (if
    given) caches the expression by these limits."""
    key = (lo, hi, modulus, scale, frac, integer)
    if shared is not None and key in shared:
        return shared[key]
    if integer:  # at most 15 digits (or as many as a bound has): a sampler must end
        longest = max((len(digits(abs(x[0]))[0]) for x in (lo, hi) if x), default=0)
        capped = max(DIGITS, longest)
    else:
        capped = DIGITS
    what = f'"multipleOf" {where}' if modulus > 1 else f"the number limits {where}"
    try:
        dfa = _number_dfa(lo, hi, modulus, scale, frac, capped, what, MAX_STATES // 3)
    except Refuse:
        if not integer:
            raise
        # a large multipleOf times the digit count: any number of digits instead (the
        # automaton is then about `modulus` states, and every state is at most a few
        # digits from a multiple)
        dfa = _number_dfa(lo, hi, modulus, scale, frac, None, what, MAX_STATES)
    if dfa is None:
        kind = "integer" if integer else "number"
        rules.reasons.append(f"no {kind} of at most {capped} digits is within the limits {where}")
        expr = NONE
    else:
        expr = _dfa_rules(rules, dfa, "n")
    if shared is not None:
        shared[key] = expr
    return expr


def _number_dfa(lo, hi, modulus, scale, frac, total, what, budget):
    """The minimal automaton of _number_expr's numbers (with at most `total` digits, None: any
    number); None if there are none."""

    def tighter_low(x, y):
        if x is None:
            return y
        return x if (x[0] > y[0] or x[0] == y[0] and x[1]) else y

    pos = neg = None
    if hi is None or hi[0] > 0 or hi[0] == 0 and not hi[1]:
        zero = (Fraction(0), False)
        pos = _Magnitude(tighter_low(lo, zero), hi, modulus, scale, frac, total)
    if lo is None or lo[0] < 0:  # "-" and a magnitude m > 0 with -hi <= m <= -lo
        above = (Fraction(0), True)
        mlo = above if hi is None else tighter_low((-hi[0], hi[1]), above)
        mhi = None if lo is None else (-lo[0], lo[1])
        neg = _Magnitude(mlo, mhi, modulus, scale, frac, total)

    def step(state, ch):
        if state == "start":
            if ch == "-":
                return ("-", neg.start) if neg else None
            nxt = pos.step(pos.start, ch) if pos else None
            return None if nxt is None else ("+", nxt)
        if ch == "-":
            return None
        nxt = (pos if state[0] == "+" else neg).step(state[1], ch)
        return None if nxt is None else (state[0], nxt)

    def accept(state):
        return state != "start" and (pos if state[0] == "+" else neg).accept(state[1])

    return _minimal_dfa("start", step, accept, "-0123456789.", what, budget)


def _dfa_rules(rules: Rules, dfa, stem):
    """An automaton as one rule per state; the expression of its start."""
    trans, acc = dfa
    names = [rules.new(stem) for _ in trans]
    for s, t in enumerate(trans):
        by_target: dict = {}
        for c, d in t.items():
            by_target.setdefault(d, []).append(c)
        options = []
        for d, chars in by_target.items():
            tail = EPS if acc[d] and not trans[d] else ("ref", names[d])
            options.extend(seq(g, tail) for g in _digit_groups(chars))
        body = alt(*options)
        rules.define(names[s], opt(body) if acc[s] else body)
    return ("ref", names[0])
