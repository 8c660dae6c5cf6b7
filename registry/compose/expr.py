"""Composition expressions over refs: ``0.5*sentiment + topic@2 - 0.3*toxicity@prod``.

A small hand-written recursive-descent parser (no ``eval``) for linear combinations of task
vectors. The grammar, the quoting rules and every tokenising decision are documented in
``docs/composition.md`` ("Expressions"); in short::

    expression = sum ;
    sum        = product , { ( "+" | "-" ) , product } ;
    product    = unary , { ( "*" | "/" ) , unary } ;
    unary      = { "+" | "-" } , primary ;
    primary    = NUMBER | REF | QUOTED_REF | "(" , sum , ")" ;

The result must be linear in the refs: :func:`linear_terms` reduces it to ``Σ coef_i * ref_i``.
Every error is an :class:`ExpressionError` (exit code 2) whose message shows the expression with a
caret under the offending column.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import NoReturn

from tvreg.errors import InvalidInput, InvalidRef
from tvreg.names import parse_ref

__all__ = [
    "MAX_DEPTH", "MAX_LENGTH", "ExpressionError", "Term", "Number", "RefNode", "Neg", "Sum",
    "Product", "Node", "parse", "linear_terms", "canonical", "Run", "runs",
]

MAX_LENGTH = 10_000
MAX_DEPTH = 100

_WINDOW = 72  # longer expressions are shown as a window of this many characters around the caret


class ExpressionError(InvalidInput):
    """A composition expression that cannot be parsed or is not a linear combination of refs.

    ``str(e)`` is ``"invalid expression: <reason> at column N"`` followed by two lines: the
    expression (indented two spaces; whitespace shown as spaces, expressions longer than 72
    characters shown as a window with ``...`` around the caret) and a caret under column N.
    ``column`` is 1-based and may be ``len(expression) + 1`` (the end) for a missing operand.
    Errors raised while evaluating a hand-built AST (no source text) have no caret lines.
    """

    def __init__(self, reason: str, expression: str | None, column: int):
        self.reason = reason
        self.expression = expression
        self.column = column
        super().__init__(_format(reason, expression, column))

    def __reduce__(self):
        return (type(self), (self.reason, self.expression, self.column))


def _format(reason: str, expression: str | None, column: int) -> str:
    head = f"invalid expression: {reason} at column {column}"
    if expression is None:
        return head
    shown = "".join(c if c.isprintable() else " " for c in expression)
    offset = column - 1
    if len(shown) > _WINDOW:
        start = max(0, min(offset - _WINDOW // 2, len(shown) - _WINDOW))
        end = start + _WINDOW
        window = shown[start:end]
        offset -= start
        if start > 0:
            window = "..." + window
            offset += 3
        if end < len(shown):
            window += "..."
        shown = window
    return f"{head}\n  {shown}\n  {' ' * offset}^"


@dataclass(frozen=True)
class Term:
    """One ``coef * ref`` of a linear combination; ``ref`` is the ref as written, without quotes."""

    coef: float
    ref: str


# --- AST ----------------------------------------------------------------------------------------
# Columns are 1-based positions in the source text. Chains of + - and of * / are n-ary nodes (left
# associative), so the tree's depth is bounded by the nesting depth, not the expression's length.


@dataclass(frozen=True)
class Number:
    """A number literal."""

    value: float
    column: int


@dataclass(frozen=True)
class RefNode:
    """A ref to a vector (``name``, ``name@version``, or quoted)."""

    ref: str          # without quotes
    column: int       # of the ref's first character (the opening quote when quoted)
    quoted: bool = False


@dataclass(frozen=True)
class Neg:
    """Unary minus of ``operand``."""

    operand: Node
    column: int       # of the "-"


@dataclass(frozen=True)
class Sum:
    """``first (op operand)*``, op ``"+"`` or ``"-"``; ``rest`` holds (op, op column, operand)."""

    first: Node
    rest: tuple[tuple[str, int, Node], ...]


@dataclass(frozen=True)
class Product:
    """``first (op operand)*``, op ``"*"`` or ``"/"``; ``rest`` holds (op, op column, operand)."""

    first: Node
    rest: tuple[tuple[str, int, Node], ...]


Node = Number | RefNode | Neg | Sum | Product


# --- lexer --------------------------------------------------------------------------------------

_WS = " \t\r\n"
_NUMBER = re.compile(r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# Unquoted refs: a name without "-" and "/" (those are operators), then optionally "@" and a
# version or tag, also without "-". parse_ref validates the whole text afterwards.
_WORD = re.compile(r"[a-z0-9][a-z0-9._]*(?:@[a-z0-9._]*)?")
_LETTER = re.compile(r"[a-z]")

# token kinds
_NUM, _REF, _OP, _LPAREN, _RPAREN, _END = "number", "ref", "op", "(", ")", "end"


@dataclass
class _Token:
    kind: str
    text: str         # source text of the token
    column: int
    value: float | str | None = None  # a number's value, a ref's text (unquoted)


class _Lexer:
    def __init__(self, text: str):
        self.text = text
        self.pos = 0

    def error(self, reason: str, column: int):
        raise ExpressionError(reason, self.text, column)

    def next(self) -> _Token:
        text, n = self.text, len(self.text)
        pos = self.pos
        while pos < n and text[pos] in _WS:
            pos += 1
        col = pos + 1
        if pos >= n:
            self.pos = pos
            return _Token(_END, "", col)
        c = text[pos]
        if c in "+-*/":
            self.pos = pos + 1
            return _Token(_OP, c, col)
        if c == "(":
            self.pos = pos + 1
            return _Token(_LPAREN, c, col)
        if c == ")":
            self.pos = pos + 1
            return _Token(_RPAREN, c, col)
        if c == '"':
            close = text.find('"', pos + 1)
            if close < 0:
                self.error("unterminated quoted ref (no closing '\"')", col)
            inner = text[pos + 1:close]
            if not inner:
                self.error("empty quoted ref", col)
            try:
                parse_ref(inner)
            except InvalidRef as e:
                self.error(f"bad quoted ref: {e}", col)
            self.pos = close + 1
            return _Token(_REF, text[pos:close + 1], col, inner)
        num = _NUMBER.match(text, pos)
        word = _WORD.match(text, pos)
        if word and (num is None or word.end() > num.end()):
            ref = word.group()
            if "@" not in ref and not _LETTER.search(ref):
                # digits, dots and underscores only: a malformed number, not a name
                self.error(f"malformed number {ref!r} (quote a ref that looks like a number: "
                           f"\"{ref}\")", col)
            try:
                parse_ref(ref)
            except InvalidRef as e:
                self.error(str(e), col)
            self.pos = word.end()
            return _Token(_REF, ref, col, ref)
        if num:
            value = float(num.group())
            if not math.isfinite(value):
                self.error(f"number {num.group()!r} is out of range", col)
            self.pos = num.end()
            return _Token(_NUM, num.group(), col, value)
        if "A" <= c <= "Z":
            self.error(f"unexpected character {c!r} (names are lowercase)", col)
        self.error(f"unexpected character {c!r}", col)
        raise AssertionError("unreachable")


# --- parser -------------------------------------------------------------------------------------


def _describe(tok: _Token) -> str:
    if tok.kind == _END:
        return "end of expression"
    if tok.kind == _REF:
        return f"ref {tok.text}" if tok.text.startswith('"') else f"ref {tok.text!r}"
    if tok.kind == _NUM:
        return f"number {tok.text}"
    return repr(tok.text)


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.lexer = _Lexer(text)
        self.tok = self.lexer.next()
        self.depth = 0
        self.prev: _Token | None = None

    def error(self, reason: str, column: int):
        raise ExpressionError(reason, self.text, column)

    def advance(self) -> _Token:
        tok = self.tok
        self.tok = self.lexer.next()
        self.prev = tok
        return tok

    def enter(self, column: int):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            self.error(f"nesting deeper than {MAX_DEPTH} levels (parentheses and unary signs)",
                       column)

    def parse(self) -> Node:
        if self.tok.kind == _END:
            self.error("empty expression", 1)
        node = self.sum()
        tok = self.tok
        if tok.kind == _RPAREN:
            self.error("unmatched ')'", tok.column)
        if tok.kind != _END:
            self.error("expected an operator or the end of the expression, found "
                       f"{_describe(tok)}", tok.column)
        return node

    def sum(self) -> Node:
        first = self.product()
        rest = []
        while self.tok.kind == _OP and self.tok.text in "+-":
            op = self.advance()
            rest.append((op.text, op.column, self.product()))
        return Sum(first, tuple(rest)) if rest else first

    def product(self) -> Node:
        first = self.unary()
        rest = []
        while self.tok.kind == _OP and self.tok.text in "*/":
            op = self.advance()
            rest.append((op.text, op.column, self.unary()))
        return Product(first, tuple(rest)) if rest else first

    def unary(self) -> Node:
        signs = []
        while self.tok.kind == _OP and self.tok.text in "+-":
            op = self.advance()
            self.enter(op.column)
            signs.append(op)
        node = self.primary()
        for op in reversed(signs):
            if op.text == "-":
                node = Neg(node, op.column)
        self.depth -= len(signs)
        return node

    def primary(self) -> Node:
        tok = self.tok
        if tok.kind == _NUM:
            self.advance()
            assert isinstance(tok.value, float)
            return Number(tok.value, tok.column)
        if tok.kind == _REF:
            self.advance()
            assert isinstance(tok.value, str)
            return RefNode(tok.value, tok.column, tok.text.startswith('"'))
        if tok.kind == _LPAREN:
            self.advance()
            self.enter(tok.column)
            if self.tok.kind == _RPAREN:
                self.error("empty parentheses", self.tok.column)
            node = self.sum()
            if self.tok.kind != _RPAREN:
                if self.tok.kind == _END:
                    self.error("unclosed '('", tok.column)
                self.error(f"expected an operator or ')', found {_describe(self.tok)}",
                           self.tok.column)
            self.advance()
            self.depth -= 1
            return node
        after = self.prev
        where = f" after {after.text!r}" if after is not None and after.kind == _OP else ""
        self.error(f"expected a ref, a number or '('{where}, found {_describe(tok)}", tok.column)
        raise AssertionError("unreachable")


def parse(text: str) -> Node:
    """Parse ``text`` into an AST and check that it is a linear combination of refs.

    Raises :class:`ExpressionError` for any syntax error, for a non-linear expression (a ref
    multiplied by or divided into a ref), division by zero, non-finite numbers, or an expression
    without any ref. ``parse(text)`` succeeds exactly when ``linear_terms(text)`` does."""
    if not isinstance(text, str):
        raise TypeError(f"expression must be a str, not {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"longer than {MAX_LENGTH} characters", text, MAX_LENGTH + 1)
    node = _Parser(text).parse()
    _evaluate(node, text)
    return node


# --- linearisation ------------------------------------------------------------------------------

_Value = float | dict  # a number, or {ref: coef} in order of first appearance


def _first_column(node: Node) -> int:
    while isinstance(node, (Sum, Product)):
        node = node.first
    return node.column


def _hint(text: str | None, column: int) -> str:
    """For ``x-y`` / ``x/y`` written without spaces: suggest quoting the ref (names may contain
    ``-`` and ``/``, which unquoted are operators)."""
    if text is None or not (1 < column < len(text)):
        return ""
    i = column - 1

    def word(ch: str) -> bool:
        return ch in "._@-/" or ("a" <= ch <= "z") or ("0" <= ch <= "9")

    if text[i] not in "-/" or not word(text[i - 1]) or not word(text[i + 1]):
        return ""
    start, end = i, i + 1
    while start > 0 and word(text[start - 1]):
        start -= 1
    while end < len(text) and word(text[end]):
        end += 1
    return f" (if {text[start:end]!r} is one ref, quote it: \"{text[start:end]}\")"


def _evaluate(node: Node, text: str | None) -> dict[str, float]:
    def fail(reason: str, column: int) -> NoReturn:
        raise ExpressionError(reason, text, column)

    def check(value: _Value, column: int) -> _Value:
        if isinstance(value, dict):
            if not all(math.isfinite(c) for c in value.values()):
                fail("a coefficient is not finite (overflow)", column)
        elif not math.isfinite(value):
            fail("the number is not finite (overflow)", column)
        return value

    def ev(node: Node) -> _Value:
        if isinstance(node, Number):
            if not math.isfinite(node.value):
                fail("number is out of range", node.column)
            return float(node.value)
        if isinstance(node, RefNode):
            return {node.ref: 1.0}
        if isinstance(node, Neg):
            v = ev(node.operand)
            return {k: -c for k, c in v.items()} if isinstance(v, dict) else -v
        if isinstance(node, Sum):
            acc = ev(node.first)
            for op, col, operand in node.rest:
                v = ev(operand)
                if isinstance(acc, dict) != isinstance(v, dict):
                    if op == "+":
                        what = "cannot add a number and a vector"
                    elif isinstance(acc, dict):
                        what = "cannot subtract a number from a vector"
                    else:
                        what = "cannot subtract a vector from a number"
                    fail(what + _hint(text, col), col)
                if isinstance(acc, dict):  # acc is a fresh dict owned by this loop
                    assert isinstance(v, dict)  # a number and a vector failed above
                    for k, c in v.items():
                        c = acc.get(k, 0.0) + c if op == "+" else acc.get(k, 0.0) - c
                        if not math.isfinite(c):
                            fail("a coefficient is not finite (overflow)", col)
                        acc[k] = c
                else:
                    assert not isinstance(v, dict)
                    acc = check(acc + v if op == "+" else acc - v, col)
            return acc
        if isinstance(node, Product):
            acc = ev(node.first)
            for op, col, operand in node.rest:
                v = ev(operand)
                if op == "*":
                    if isinstance(acc, dict) and isinstance(v, dict):
                        fail("cannot multiply two vectors (the expression must be linear in the "
                             "refs)", col)
                    if isinstance(acc, dict):
                        acc = {k: c * v for k, c in acc.items()}
                    elif isinstance(v, dict):
                        acc = {k: acc * c for k, c in v.items()}
                    else:
                        acc = acc * v
                else:
                    if isinstance(v, dict):
                        fail("cannot divide by a vector (only by a number)" + _hint(text, col),
                             col)
                    if v == 0:
                        fail("division by zero", col)
                    acc = {k: c / v for k, c in acc.items()} if isinstance(acc, dict) else acc / v
                check(acc, col)
            return acc
        raise TypeError(f"not an expression node: {type(node).__name__}")

    value = ev(node)
    if not isinstance(value, dict):
        fail("no vector in expression (it is only a number)", _first_column(node))
    return value


def linear_terms(text_or_node: str | Node) -> list[Term]:
    """The expression as ``Σ coef_i * ref_i``: one :class:`Term` per distinct ref text, in order of
    first appearance. Refs are combined by their exact text (``a`` and ``a@3`` stay separate, even
    if they resolve to the same version; ``"a"`` and ``a`` are the same text). A ref whose
    coefficients cancel stays, with ``coef == 0.0`` (``a - a`` is the zero vector of a's shape)."""
    if isinstance(text_or_node, str):
        node = parse(text_or_node)
        text = text_or_node
    else:
        node, text = text_or_node, None
    value = _evaluate(node, text)
    return [Term(c if c != 0 else 0.0, ref) for ref, c in value.items()]


# --- unspaced runs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """Unquoted refs joined by ``-`` or ``/`` with no space around the operators, e.g.
    ``sent-topic`` in ``0.5*sent-topic + x``: text that reads as arithmetic but may be meant as
    one name (names may contain ``-`` and ``/``). ``text`` is the run as written
    (``sent-topic@2``), ``name`` the name it would spell (``sent-topic``), ``parts`` the refs it
    is made of (``sent``, ``topic@2``), ``spaced`` the arithmetic reading (``sent - topic@2``),
    ``column`` where it starts (1-based)."""

    text: str
    name: str
    parts: tuple[str, ...]
    column: int

    @property
    def spaced(self) -> str:
        """The run read as arithmetic, with a space around each operator (``sent - topic@2``)."""
        out = self.parts[0]
        pos = len(self.parts[0])
        for part in self.parts[1:]:
            out += f" {self.text[pos]} {part}"
            pos += 1 + len(part)
        return out


def runs(text: str) -> list[Run]:
    """Every run of two or more unquoted refs joined by ``-``/``/`` without spaces in ``text``,
    including each contiguous part of a longer run (``a-b-c`` gives ``a-b-c``, ``a-b``, ``b-c``),
    longest first. Only runs that could be a name are listed: ``@`` may appear in the last ref
    only. ``text`` must be a valid expression (see :func:`parse`)."""
    lexer = _Lexer(text)
    tokens = []
    while True:
        tok = lexer.next()
        if tok.kind == _END:
            break
        tokens.append(tok)
    chains: list[list[_Token]] = []
    chain: list[_Token] = []

    def close():
        while chain and chain[-1].kind == _OP:
            chain.pop()
        if len(chain) >= 3:
            chains.append(list(chain))
        chain.clear()

    for tok in tokens:
        glued = bool(chain) and chain[-1].column + len(chain[-1].text) == tok.column
        if tok.kind == _REF and not tok.text.startswith('"'):
            if not (glued and chain[-1].kind == _OP):
                close()
            chain.append(tok)
        elif tok.kind == _OP and tok.text in "-/" and glued and chain[-1].kind == _REF:
            chain.append(tok)
        else:
            close()
    close()
    found: list[Run] = []
    for chain in chains:
        refs = chain[0::2]
        for size in range(len(refs), 1, -1):
            for start in range(len(refs) - size + 1):
                parts = refs[start:start + size]
                if any("@" in p.text for p in parts[:-1]):
                    continue
                first, last = parts[0], parts[-1]
                run_text = text[first.column - 1:last.column - 1 + len(last.text)]
                found.append(Run(run_text, run_text.partition("@")[0],
                                 tuple(p.text for p in parts), first.column))
    found.sort(key=lambda r: (-len(r.parts), r.column))
    return found


# --- canonical form -----------------------------------------------------------------------------


def _quote_if_needed(ref: str) -> str:
    parse_ref(ref)  # InvalidRef for text that could never round-trip
    try:
        tok = _Lexer(ref).next()
    except ExpressionError:
        return f'"{ref}"'
    if tok.kind == _REF and tok.text == ref:
        return ref
    return f'"{ref}"'


def _format_coef(c: float) -> str:
    s = repr(float(c))
    return s[:-2] if s.endswith(".0") else s


def canonical(terms: list[Term]) -> str:
    """The canonical text of a linear combination: ``0.5*sentiment + topic@2 - 0.3*toxicity@prod``.

    Coefficients use Python's shortest round-tripping ``repr`` (``.0`` dropped, ``1e-05`` kept);
    a coefficient of 1 is omitted and -1 becomes a sign; zero stays (``0*a``). Refs that would not
    read back as themselves unquoted (names with ``-`` or ``/``, refs that look like numbers) are
    double-quoted. ``linear_terms(canonical(terms)) == terms`` for any output of
    :func:`linear_terms`."""
    if not terms:
        raise ValueError("canonical() needs at least one term")
    parts = []
    for i, t in enumerate(terms):
        c = float(t.coef)
        if not math.isfinite(c):
            raise ValueError(f"coefficient of {t.ref!r} is not finite: {c!r}")
        ref = _quote_if_needed(t.ref)
        negative = c < 0
        mag = -c if negative else c
        body = ref if mag == 1.0 else f"{_format_coef(mag)}*{ref}"
        if i == 0:
            parts.append(f"-{body}" if negative else body)
        else:
            parts.append(f" - {body}" if negative else f" + {body}")
    return "".join(parts)
