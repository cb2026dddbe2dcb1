"""Required literals of a regular expression, for a cheap substring prefilter.

`required_literals(rx)` returns the strings one of which every match must contain, when the
pattern is simple enough to tell: a sequence of anchors/word boundaries and literals, or an
alternation of literal sequences (optionally in a group), e.g. `(?i)\\b(exception|waive|policy)\\b`
or the keyword rules' `\\b(?:refund|invoice)\\b`. Anything else (classes, repeats, nested
alternations, scoped flags, non-ASCII literals) returns None and the caller runs the regex alone.
With IGNORECASE the literals come back lower-cased, to be searched in lower-cased ASCII text.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

# re's own parser (Python 3.11+ keeps it in re._parser; typeshed does not describe it)
P: Any = importlib.import_module("re._parser")
C: Any = importlib.import_module("re._constants")


def required_literals(rx: re.Pattern[str]) -> tuple[tuple[str, ...], bool] | None:
    try:
        parsed = P.parse(rx.pattern, rx.flags)
    except Exception:  # pragma: no cover - rx compiled, so it parses
        return None
    icase = bool(parsed.state.flags & re.IGNORECASE)
    lits = _alternatives(list(parsed))
    if lits is None or not lits or not all(s.isascii() for s in lits):
        return None
    if icase:
        lits = [s.lower() for s in lits]
    return tuple(dict.fromkeys(lits)), icase


def _alternatives(items: list[tuple[Any, Any]]) -> list[str] | None:
    """Literal strings one of which a match of `items` contains, or None when unknown."""
    core = [it for it in items if it[0] is not C.AT]  # anchors and \\b match no characters
    if not core:
        return None
    if len(core) == 1 and core[0][0] is C.SUBPATTERN:
        _group, add, delete, sub = core[0][1]
        if add or delete:
            return None
        return _alternatives(list(sub))
    if len(core) == 1 and core[0][0] is C.BRANCH:
        out: list[str] = []
        for branch in core[0][1][1]:
            s = _literal_run(list(branch))
            if s is None:
                return None
            out.append(s)
        return out
    s = _literal_run(items)
    return None if s is None else [s]


def _literal_run(items: list[tuple[Any, Any]]) -> str | None:
    chars = []
    for op, av in items:
        if op is C.AT:
            continue
        if op is not C.LITERAL:
            return None
        chars.append(chr(av))
    return "".join(chars)
