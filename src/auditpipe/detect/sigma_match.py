"""A parsed Sigma condition (pySigma's tree) → one Python predicate over a *view*.

A view is what a rule is evaluated on: one audit record (auditd rules) or one event's ECS fields
(process_creation, file_event, network_connection rules). It offers ``get(field)`` (a string, a
list of strings, or None when absent) and ``text()`` (the lower-cased values, for keywords).

Sigma's string semantics: case-insensitive, ``*``/``?`` wildcards; numbers compare as their text
(audit writes hex where the kernel does, and the rules are written against that text) or by
value; ``|re`` is case-sensitive unless ``|i``. Keywords (values without a field) match anywhere
in the view's text. Anything this module cannot evaluate raises :class:`Unsupported` at compile
time, with the reason that ``auditpipe detect check`` prints.
"""

from __future__ import annotations

import ipaddress
import operator
import re
import re._parser as sre  # the regex's own parse tree: which literals every match holds
from collections.abc import Callable
from typing import Any, Protocol

from sigma.conditions import (
    ConditionAND,
    ConditionFieldEqualsValueExpression,
    ConditionNOT,
    ConditionOR,
    ConditionValueExpression,
)
from sigma.types import (
    CompareOperators,
    Placeholder,
    SigmaBool,
    SigmaCIDRExpression,
    SigmaCompareExpression,
    SigmaExists,
    SigmaFieldReference,
    SigmaNull,
    SigmaNumber,
    SigmaRegularExpression,
    SigmaRegularExpressionFlag,
    SigmaString,
    SpecialChars,
)

__all__ = [
    "TEXT",
    "Predicate",
    "Unsupported",
    "View",
    "assume",
    "basename",
    "compile_condition",
    "fields_of",
    "has_keywords",
    "index_keys",
    "regex_literals",
    "required_fields",
    "required_literals",
    "required_numbers",
    "string_pattern",
    "type_constraint",
]


class Unsupported(Exception):
    """A rule (part) this engine cannot evaluate; the message is the exact reason."""


class View(Protocol):
    def get(self, field: str) -> Any: ...

    def lower(self, field: str) -> Any: ...

    def text(self) -> str: ...


Predicate = Callable[[View], bool]
StrTest = Callable[[str], bool]

_COMPARE = {CompareOperators.LT: operator.lt, CompareOperators.LTE: operator.le, CompareOperators.GT: operator.gt,
            CompareOperators.GTE: operator.ge, CompareOperators.NEQ: operator.ne}
_RE_FLAGS = {SigmaRegularExpressionFlag.IGNORECASE: re.IGNORECASE,
             SigmaRegularExpressionFlag.MULTILINE: re.MULTILINE,
             SigmaRegularExpressionFlag.DOTALL: re.DOTALL}


def string_pattern(s: SigmaString) -> tuple[str, str]:
    """(kind, lower-cased operand) for a Sigma string: kind is eq, contains, startswith,
    endswith, or regex (then the operand is a Python regex for fullmatch)."""
    parts: list[Any] = list(s.s)
    for p in parts:
        if isinstance(p, Placeholder):
            raise Unsupported(f"placeholder %{p.name}% is not defined (no placeholder values configured)")
    plain = [p for p in parts if isinstance(p, str)]
    specials = [i for i, p in enumerate(parts) if isinstance(p, SpecialChars)]
    star = SpecialChars.WILDCARD_MULTI
    if not specials:
        return "eq", "".join(plain).lower()
    if len(parts) == 3 and specials == [0, 2] and parts[0] is star and parts[2] is star:
        return "contains", parts[1].lower()
    if len(parts) == 2 and specials == [1] and parts[1] is star:
        return "startswith", parts[0].lower()
    if len(parts) == 2 and specials == [0] and parts[0] is star:
        return "endswith", parts[1].lower()
    rx = "".join(re.escape(p) if isinstance(p, str) else (".*" if p is star else ".") for p in parts)
    return "regex", rx


def _number_test(n: SigmaNumber) -> StrTest:
    text = str(n.number)

    def test(x: str) -> bool:
        if x == text:
            return True
        try:
            return float(x) == n.number
        except ValueError:
            return False

    return test


def _compare_test(c: SigmaCompareExpression) -> StrTest:
    op = _COMPARE[c.op]
    bound = c.number.number

    def test(x: str) -> bool:
        try:
            return bool(op(float(x), bound))
        except ValueError:
            return False

    return test


def _cidr_test(c: SigmaCIDRExpression) -> StrTest:
    net = c.network

    def test(x: str) -> bool:
        try:
            return ipaddress.ip_address(x) in net
        except ValueError:
            return False

    return test


def _regex_source(r: SigmaRegularExpression) -> tuple[str, int]:
    """(pattern, flags) of a Sigma ``|re`` value, as :func:`_regex_test` compiles it."""
    flags = 0
    for f in r.flags:
        flags |= _RE_FLAGS[f]
    return str(r.regexp.to_plain_regex() if isinstance(r.regexp, SigmaString) else r.regexp), flags


def _regex_test(r: SigmaRegularExpression) -> StrTest:
    rx = re.compile(*_regex_source(r))
    return lambda x: rx.search(x) is not None


def _value_test(value: Any, field: str) -> StrTest:
    if isinstance(value, SigmaString):  # a subclass (cased strings): tested as given
        strings = _Strings()
        strings.add(value)
        return lambda x: strings.test(x.lower())
    if isinstance(value, SigmaBool):
        want = "true" if value.boolean else "false"
        return lambda x: x.lower() == want
    if isinstance(value, SigmaNumber):
        return _number_test(value)
    if isinstance(value, SigmaCompareExpression):
        return _compare_test(value)
    if isinstance(value, SigmaRegularExpression):
        return _regex_test(value)
    if isinstance(value, SigmaCIDRExpression):
        return _cidr_test(value)
    raise Unsupported(f"field {field}: value type {type(value).__name__} is not supported")


def _any_value(field: str, test: StrTest) -> Predicate:
    def pred(view: View) -> bool:
        v = view.get(field)
        if v is None:
            return False
        if isinstance(v, list):
            return any(test(str(x)) for x in v)
        return test(v if isinstance(v, str) else str(v))

    return pred


def _field_predicate(node: ConditionFieldEqualsValueExpression) -> Predicate:
    field, value = node.field, node.value
    if isinstance(value, SigmaNull):
        return lambda view: view.get(field) in (None, "")
    if isinstance(value, SigmaExists):
        want = value.exists
        return lambda view: (view.get(field) is not None) is want
    if isinstance(value, SigmaFieldReference):
        other = value.field
        if value.starts_with or value.ends_with:
            raise Unsupported(f"field {field}: |fieldref with startswith/endswith is not supported")

        def same(view: View) -> bool:
            a, b = view.get(field), view.get(other)
            return a is not None and b is not None and str(a).lower() == str(b).lower()

        return same
    return _any_value(field, _value_test(value, field))


def _keyword_predicate(node: ConditionValueExpression) -> Predicate:
    value = node.value
    if isinstance(value, SigmaNumber):
        value = SigmaString(str(value.number))
    if not isinstance(value, SigmaString):
        raise Unsupported(f"keyword of type {type(value).__name__} is not supported")
    kind, v = string_pattern(value)
    if kind != "regex":
        needle = v
        return lambda view: needle in view.text()
    rx = re.compile(".*" + v + ".*", re.IGNORECASE | re.DOTALL)
    return lambda view: rx.fullmatch(view.text()) is not None


class _Strings:
    """Sigma string values of one field, tested together on the lower-cased value: equality as
    a set lookup, prefixes/suffixes as one str.startswith/endswith over a tuple."""

    __slots__ = ("cont", "eq", "ew", "rx", "sw")

    def __init__(self) -> None:
        self.eq: set[str] = set()
        self.sw: tuple[str, ...] = ()
        self.ew: tuple[str, ...] = ()
        self.cont: tuple[str, ...] = ()
        self.rx: tuple[re.Pattern[str], ...] = ()

    def add(self, s: SigmaString) -> None:
        kind, v = string_pattern(s)
        if kind == "eq":
            self.eq.add(v)
        elif kind == "startswith":
            self.sw += (v,)
        elif kind == "endswith":
            self.ew += (v,)
        elif kind == "contains":
            self.cont += (v,)
        else:
            self.rx += (re.compile(v, re.IGNORECASE | re.DOTALL),)

    def test(self, low: str) -> bool:
        if low in self.eq:
            return True
        if self.sw and low.startswith(self.sw):
            return True
        if self.ew and low.endswith(self.ew):
            return True
        for c in self.cont:
            if c in low:
                return True
        for r in self.rx:
            if r.fullmatch(low) is not None:
                return True
        return False


def _strings_predicate(field: str, strings: _Strings) -> Predicate:
    test = strings.test

    def pred(view: View) -> bool:
        v = view.lower(field)
        if v is None:
            return False
        if v.__class__ is str:
            return test(v)
        return any(test(x) for x in v)

    return pred


def _is_string_item(node: Any) -> bool:
    return isinstance(node, ConditionFieldEqualsValueExpression) and type(node.value) is SigmaString


def _combine(parts: list[Predicate], is_and: bool) -> Predicate:
    """AND/OR of predicates: plain lambdas for one or two parts (most Sigma conditions), a loop
    that stops at the deciding verdict for more."""
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        a, b = parts
        return (lambda view: a(view) and b(view)) if is_and else (lambda view: a(view) or b(view))
    decides = not is_and  # False decides an AND, True an OR

    def combined(view: View) -> bool:
        for p in parts:
            if bool(p(view)) is decides:
                return decides
        return is_and

    return combined


def compile_condition(node: Any) -> Predicate:
    """The predicate of one parsed condition (``rule.detection.parsed_condition[i].parsed``).
    String values of one field under an OR (Sigma's value lists) become one test."""
    if isinstance(node, ConditionAND):
        return _combine([compile_condition(a) for a in node.args], True)
    if isinstance(node, ConditionOR):
        groups: dict[str, _Strings] = {}
        parts: list[Predicate] = []
        a: Any
        for a in node.args:
            if _is_string_item(a):
                g = groups.get(a.field)
                if g is None:
                    g = groups[a.field] = _Strings()
                    parts.append(_strings_predicate(a.field, g))
                g.add(a.value)
            else:
                parts.append(compile_condition(a))
        return _combine(parts, False)
    if isinstance(node, ConditionNOT):
        inner = compile_condition(node.args[0])
        return lambda view: not inner(view)
    if _is_string_item(node):
        g = _Strings()
        g.add(node.value)
        return _strings_predicate(node.field, g)
    if isinstance(node, ConditionFieldEqualsValueExpression):
        return _field_predicate(node)
    if isinstance(node, ConditionValueExpression):
        return _keyword_predicate(node)
    raise Unsupported(f"condition element {type(node).__name__} is not supported")


# ------------------------------------------------------------------------- prefilter analysis
def _necessary(node: Any, leaf: Callable[[Any], frozenset | None],
               pick: Callable[[list[frozenset]], frozenset]) -> frozenset | None:
    """A set one element of which every match needs (None: none known). ``leaf`` answers for a
    test; an AND needs what ``pick`` chooses from its parts' sets; an OR the union of all of
    its parts' sets (None as soon as one part needs nothing known); a NOT nothing."""
    if isinstance(node, ConditionAND):
        found = [k for k in (_necessary(a, leaf, pick) for a in node.args) if k is not None]
        return pick(found) if found else None
    if isinstance(node, ConditionOR):
        acc: frozenset = frozenset()
        for a in node.args:
            k = _necessary(a, leaf, pick)
            if k is None:
                return None
            acc |= k
        return acc
    if isinstance(node, ConditionNOT):
        return None
    return leaf(node)


def _intersection(sets: list[frozenset]) -> frozenset:
    out = sets[0]
    for k in sets[1:]:
        out &= k
    return out


def _smallest(sets: list[frozenset]) -> frozenset:
    return min(sets, key=len)


def type_constraint(node: Any, field: str = "type") -> frozenset[str] | None:
    """The record types (upper case) a record must have for the condition to hold, or None
    when the condition can hold for any type."""

    def leaf(n: Any) -> frozenset[str] | None:
        if (isinstance(n, ConditionFieldEqualsValueExpression) and n.field == field
                and isinstance(n.value, SigmaString) and not n.value.contains_special()):
            return frozenset({n.value.to_plain().upper()})
        return None

    return _necessary(node, leaf, _intersection)


def required_fields(node: Any) -> frozenset[str] | None:
    """Fields of which at least one must be present for the condition to hold (None: no such
    set, e.g. keywords or negations)."""

    def leaf(n: Any) -> frozenset[str] | None:
        if isinstance(n, ConditionFieldEqualsValueExpression) and not isinstance(n.value, (SigmaNull, SigmaExists)):
            return frozenset({n.field})
        return None

    return _necessary(node, leaf, _smallest)


def assume(node: Any, field: str, value: str) -> Any:
    """The condition simplified for views whose ``field`` is ``value`` (upper case): tests of
    that field become True/False and the tree is pruned. The engine specializes each auditd rule
    per record type this way, so a PATH record never evaluates a rule's EXECVE branch or the
    type test itself. Returns True, False or a (smaller) tree."""
    if isinstance(node, ConditionFieldEqualsValueExpression):
        if node.field == field and type(node.value) is SigmaString and not node.value.contains_special():
            return node.value.to_plain().upper() == value
        return node
    if isinstance(node, ConditionNOT):
        inner = assume(node.args[0], field, value)
        return (not inner) if isinstance(inner, bool) else ConditionNOT(args=[inner])
    if isinstance(node, (ConditionAND, ConditionOR)):
        is_and = isinstance(node, ConditionAND)
        kept = []
        for a in node.args:
            r = assume(a, field, value)
            if r is (not is_and):  # False in an AND, True in an OR decides it
                return r
            if r is not is_and:  # drop the neutral constants
                kept.append(r)
        if not kept:
            return is_and
        return kept[0] if len(kept) == 1 else type(node)(args=kept)
    return node


def basename(value: str) -> str:
    """The index key of a program value: what follows its last slash."""
    return value[value.rfind("/") + 1:]


def index_keys(node: Any, field: str) -> frozenset[str] | None:
    """Basenames (lower case) one of which ``field`` must have for the condition to hold —
    from equality and ``/``-anchored endswith tests — or None when there is no such set. The
    engine indexes rules by it (``Image|endswith: '/base64'`` runs only for programs named base64)."""

    def leaf(n: Any) -> frozenset[str] | None:
        if _is_string_item(n) and n.field == field:
            kind, v = string_pattern(n.value)
            if kind == "eq" or (kind == "endswith" and "/" in v):
                return frozenset({basename(v)})
        return None

    return _necessary(node, leaf, _smallest)


#: the pseudo-field of keywords (the view's whole text) in required_literals
TEXT = "\x00text"


def required_literals(node: Any) -> frozenset[tuple[str, str]] | None:
    """(field, lower-case literal) pairs at least one of which must hold — the literal is a
    substring of the field's lower-cased value (TEXT: of the view's text) — for the condition
    to hold; None when no such set is known (negations, regexes, numbers). The engine scans a
    view for all literals at once and tries only the rules one of whose literals is there."""

    def leaf(n: Any) -> frozenset[tuple[str, str]] | None:
        if isinstance(n, ConditionFieldEqualsValueExpression) and isinstance(n.value, SigmaRegularExpression):
            lits = regex_literals(*_regex_source(n.value))
            return None if lits is None else frozenset((n.field, lit) for lit in lits)
        if _is_string_item(n) or (isinstance(n, ConditionValueExpression) and type(n.value) is SigmaString):
            kind, v = string_pattern(n.value)
            if kind == "regex":  # a wildcard pattern: each of its plain parts must occur
                v = max((p for p in n.value.s if isinstance(p, str)), key=len, default="").lower()
            if v:
                return frozenset({(TEXT if isinstance(n, ConditionValueExpression) else n.field, v)})
        return None

    def most_selective(sets: list[frozenset]) -> frozenset:  # its shortest literal is the longest
        return max(sets, key=lambda k: (min(len(lit) for _, lit in k), -len(k)))

    return _necessary(node, leaf, most_selective)


def required_numbers(node: Any) -> frozenset[tuple[str, float]] | None:
    """(field, number) pairs at least one of which must hold — ``float`` of the field's value
    equals the number, which is exactly what a Sigma number test accepts — for the condition to
    hold; None when no such set is known. A number gives no literal (``33`` is also ``33.0``),
    yet an equality gates as well as one: the engine indexes rules by it (``euid: 33``)."""

    def leaf(n: Any) -> frozenset[tuple[str, float]] | None:
        if isinstance(n, ConditionFieldEqualsValueExpression) and type(n.value) is SigmaNumber:
            return frozenset({(n.field, float(n.value.number))})
        return None

    return _necessary(node, leaf, _smallest)


#: literals derived from a regex: at most this many alternatives (``(a|b)(c|d)`` is 4)
_MAX_ALTERNATIVES = 16
#: under IGNORECASE, these ASCII letters also match a non-ASCII letter whose lower case is not
#: theirs (ſ, ı/İ, K): a literal holding one is not provably in the lower-cased value
_FOLD_ODD = frozenset("iks")


def regex_literals(pattern: str, flags: int = 0) -> frozenset[str] | None:
    """Lower-case strings one of which occurs in the lower-cased text of every string in which
    the regex finds a match (None: none provable) — from the regex's parse tree: runs of
    literal characters (and small sets and alternations of them) that every match passes
    through. Only ASCII is trusted (its lower case is one character, whatever the context)."""
    try:
        tree = sre.parse(pattern, flags)
    except re.error:
        return None
    found = _seq_required(list(tree), bool(tree.state.flags & re.IGNORECASE))
    return found if found else None


def _seq_required(items: list[Any], icase: bool) -> frozenset[str] | None:
    """The best set of alternatives one of which every match of the sequence holds: the
    literal runs (consecutive fixed items) and what mandatory inner parts require."""
    best: frozenset[str] | None = None
    run: set[str] = {""}
    for op, av in items:
        alts = _fixed(op, av, icase)
        if alts is not None and len(run) * len(alts) <= _MAX_ALTERNATIVES:
            run = {a + b for a in run for b in alts}
            continue
        best = _better(best, frozenset(run))
        run = set(alts) if alts is not None else {""}
        if alts is None:
            best = _better(best, _item_required(op, av, icase))
    return _better(best, frozenset(run))


def _better(a: frozenset[str] | None, b: frozenset[str] | None) -> frozenset[str] | None:
    """The more selective set: its shortest alternative is longer (an empty one gates nothing)."""
    if b is None or not b or "" in b:
        return a
    if a is None or min(map(len, b)) > min(map(len, a)):
        return b
    return a


def _fixed(op: Any, av: Any, icase: bool) -> set[str] | None:
    """The few strings (lower case) the item matches exactly, or None."""
    if op is sre.LITERAL:
        c = chr(av)
        return {c.lower()} if c.isascii() and not (icase and c.lower() in _FOLD_ODD) else None
    if op is sre.IN:
        out: set[str] = set()
        for o, a in av:
            if o is not sre.LITERAL:
                return None
            one = _fixed(o, a, icase)
            if one is None:
                return None
            out |= one
        return out
    if op is sre.SUBPATTERN:
        return _seq_fixed(list(av[3]), _local_icase(av, icase))
    if op is sre.BRANCH:
        both = _each_branch(av[1], lambda alt: _seq_fixed(alt, icase))
        return None if both is None else set(both)
    return None


def _seq_fixed(items: list[Any], icase: bool) -> set[str] | None:
    out = {""}
    for op, av in items:
        alts = _fixed(op, av, icase)
        if alts is None or len(out) * len(alts) > _MAX_ALTERNATIVES:
            return None
        out = {a + b for a in out for b in alts}
    return out


def _item_required(op: Any, av: Any, icase: bool) -> frozenset[str] | None:
    """What a mandatory compound item (a group, an alternation, a repeat of at least once)
    requires of every match."""
    if op is sre.SUBPATTERN:
        return _seq_required(list(av[3]), _local_icase(av, icase))
    if op in (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT) and av[0] >= 1:
        return _seq_required(list(av[2]), icase)
    if op is sre.BRANCH:
        return _each_branch(av[1], lambda alt: _seq_required(alt, icase))
    return None


def _each_branch(alts: list[Any], of: Callable[[list[Any]], Any]) -> frozenset[str] | None:
    """The union of what ``of`` finds in each alternative (None: one has none, or too many)."""
    acc: frozenset[str] = frozenset()
    for alt in alts:
        one = of(list(alt))
        if one is None:
            return None
        acc |= frozenset(one)
    return acc if len(acc) <= _MAX_ALTERNATIVES else None


def _local_icase(av: Any, icase: bool) -> bool:
    """A group's ``(?i:…)``/``(?-i:…)`` flags."""
    add, remove = av[1], av[2]
    return bool(add & re.IGNORECASE) or (icase and not remove & re.IGNORECASE)


def has_keywords(node: Any) -> bool:
    """Whether the condition searches the view's whole text (keywords)."""
    if isinstance(node, ConditionValueExpression):
        return True
    if isinstance(node, (ConditionAND, ConditionOR, ConditionNOT)):
        return any(has_keywords(a) for a in node.args)
    return False


def fields_of(node: Any) -> set[str]:
    """Every field the condition names."""
    if isinstance(node, ConditionFieldEqualsValueExpression):
        out = {node.field}
        if isinstance(node.value, SigmaFieldReference):
            out.add(node.value.field)
        return out
    if isinstance(node, (ConditionAND, ConditionOR, ConditionNOT)):
        acc: set[str] = set()
        for a in node.args:
            acc |= fields_of(a)
        return acc
    return set()
