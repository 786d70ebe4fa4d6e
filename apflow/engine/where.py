"""``--where`` expressions over data-id keys, parsed by a small recursive-descent parser.

The grammar is deliberately tiny, and nothing is ever passed to ``eval``::

    expr       := or_expr
    or_expr    := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | "(" expr ")" | comparison
    comparison := KEY op VALUE | KEY ["not"] "in" "(" VALUE ("," VALUE)* ")"
    op         := "=" | "==" | "!=" | "<" | "<=" | ">" | ">="
    VALUE      := integer | 'string' | "string"

Keywords are case-insensitive. Examples: ``visit in (1, 2) and detector < 5``,
``band = 'r' or not (visit >= 10)``.

A data id that lacks a key the expression names (a per-visit dataset under ``detector < 5``)
is neither accepted nor rejected by that comparison: evaluation uses three-valued logic, and a data
id is excluded only when the expression is definitely false for it. This is what lets one
expression constrain every dataset type of a workflow, whatever its dimensions.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ApflowError

__all__ = ["WhereError", "Where", "parse_where"]


class WhereError(ApflowError, ValueError):
    """A ``--where`` expression is malformed or names an unknown key."""


_TOKEN = re.compile(
    r"""\s*(?:
        (?P<number>[+-]?\d+)(?![A-Za-z_.\d])
      | (?P<string>'[^']*'|"[^"]*")
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<op>==|!=|<=|>=|=|<|>)
      | (?P<punct>[(),])
    )""",
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "in"}
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq,
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


@dataclass(frozen=True)
class _Token:
    kind: str  # number, string, name, keyword, op, punct, end
    text: str
    value: Any
    pos: int


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            start = len(text) - len(text[pos:].lstrip())
            raise _error(text, start, f"unexpected character {text[start]!r}")
        kind = match.lastgroup or ""
        raw = match.group(kind)
        start = match.start(kind)
        if kind == "number":
            value: Any = int(raw)
        elif kind == "string":
            value = raw[1:-1]
        elif kind == "name" and raw.lower() in _KEYWORDS:
            kind, value = "keyword", raw.lower()
        else:
            value = raw
        tokens.append(_Token(kind, raw, value, start))
        pos = match.end()
    tokens.append(_Token("end", "", None, len(text)))
    return tokens


def _error(text: str, pos: int, message: str) -> WhereError:
    return WhereError(f"invalid --where expression: {message} at column {pos + 1}: {text!r}")


# The parsed expression is a tree of closures-free tuples so that it pickles and prints plainly:
# ("or", a, b) / ("and", a, b) / ("not", a) / ("cmp", key, op, value) / ("in", key, values, negate)
_Node = tuple


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.index = 0

    @property
    def current(self) -> _Token:
        return self.tokens[self.index]

    def _advance(self) -> _Token:
        token = self.current
        self.index += 1
        return token

    def _accept_keyword(self, word: str) -> bool:
        if self.current.kind == "keyword" and self.current.value == word:
            self.index += 1
            return True
        return False

    def _expect_punct(self, char: str) -> None:
        if self.current.kind == "punct" and self.current.text == char:
            self.index += 1
            return
        raise self._unexpected(f"expected {char!r}")

    def _unexpected(self, expected: str) -> WhereError:
        token = self.current
        found = "end of expression" if token.kind == "end" else repr(token.text)
        return _error(self.text, token.pos, f"{expected}, found {found}")

    def parse(self) -> _Node:
        if self.current.kind == "end":
            raise _error(self.text, 0, "empty expression")
        node = self._or()
        if self.current.kind != "end":
            raise self._unexpected("expected 'and', 'or' or end of expression")
        return node

    def _or(self) -> _Node:
        node = self._and()
        while self._accept_keyword("or"):
            node = ("or", node, self._and())
        return node

    def _and(self) -> _Node:
        node = self._not()
        while self._accept_keyword("and"):
            node = ("and", node, self._not())
        return node

    def _not(self) -> _Node:
        if self._accept_keyword("not"):
            return ("not", self._not())
        if self.current.kind == "punct" and self.current.text == "(":
            self._advance()
            node = self._or()
            self._expect_punct(")")
            return node
        return self._comparison()

    def _comparison(self) -> _Node:
        if self.current.kind != "name":
            raise self._unexpected("expected a data-id key such as 'visit'")
        key = self._advance().value
        negate = self._accept_keyword("not")
        if self._accept_keyword("in"):
            self._expect_punct("(")
            values = [self._value()]
            while self.current.kind == "punct" and self.current.text == ",":
                self._advance()
                values.append(self._value())
            self._expect_punct(")")
            return ("in", key, tuple(values), negate)
        if negate:
            raise self._unexpected("expected 'in' after 'not'")
        if self.current.kind != "op":
            raise self._unexpected(f"expected a comparison or 'in' after {key!r}")
        op = self._advance().text
        return ("cmp", key, op, self._value())

    def _value(self) -> Any:
        if self.current.kind in ("number", "string"):
            return self._advance().value
        raise self._unexpected("expected a number or a quoted string")


def _evaluate(node: _Node, data_id: Mapping[str, Any]) -> bool | None:
    kind = node[0]
    if kind == "and":
        left = _evaluate(node[1], data_id)
        if left is False:
            return False
        right = _evaluate(node[2], data_id)
        if right is False:
            return False
        return None if left is None or right is None else True
    if kind == "or":
        left = _evaluate(node[1], data_id)
        if left is True:
            return True
        right = _evaluate(node[2], data_id)
        if right is True:
            return True
        return None if left is None or right is None else False
    if kind == "not":
        inner = _evaluate(node[1], data_id)
        return None if inner is None else not inner
    key = node[1]
    if key not in data_id:
        return None
    actual = data_id[key]
    if kind == "in":
        found = any(_same_kind(actual, v) and actual == v for v in node[2])
        return found != node[3]
    _, _, op, value = node
    if not _same_kind(actual, value):
        # 'visit = "12"' never matches an integer visit; ordering across types is meaningless
        return op == "!="
    return bool(_OPS[op](actual, value))


def _same_kind(a: Any, b: Any) -> bool:
    return isinstance(a, str) == isinstance(b, str)


def _keys(node: _Node) -> set[str]:
    if node[0] in ("and", "or"):
        return _keys(node[1]) | _keys(node[2])
    if node[0] == "not":
        return _keys(node[1])
    return {node[1]}


@dataclass(frozen=True)
class Where:
    """A parsed ``--where`` expression.

    Attributes
    ----------
    text : str
        The expression as given.
    keys : frozenset of str
        Data-id keys the expression names.
    """

    text: str
    tree: _Node
    keys: frozenset[str]

    def evaluate(self, data_id: Mapping[str, Any]) -> bool | None:
        """True, False, or None when the data id lacks a key that decides the result."""
        return _evaluate(self.tree, data_id)

    def __call__(self, data_id: Mapping[str, Any]) -> bool:
        """Whether ``data_id`` is selected: anything not definitely excluded is."""
        return self.evaluate(data_id) is not False

    def check_keys(self, known: set[str] | frozenset[str]) -> None:
        """Raise :class:`WhereError` if the expression names a key outside ``known``."""
        unknown = sorted(self.keys - set(known))
        if unknown:
            raise WhereError(
                f"--where names unknown data-id key(s) {', '.join(unknown)}; "
                f"this workflow's keys are: {', '.join(sorted(known)) or '(none)'}"
            )


def parse_where(text: str | None) -> Where | None:
    """Parse a ``--where`` expression; ``None`` or blank text selects everything.

    Parameters
    ----------
    text : str or None
        Expression such as ``"visit in (1, 2) and detector < 5 and band = 'r'"``.

    Returns
    -------
    Where or None

    Raises
    ------
    WhereError
        With the column of the first offending token.
    """
    if text is None or not text.strip():
        return None
    tree = _Parser(text).parse()
    return Where(text=text, tree=tree, keys=frozenset(_keys(tree)))
