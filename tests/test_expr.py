"""The composition expression language (tvreg.compose.expr): parsing, linearisation, errors, canonical."""

from __future__ import annotations

import math
import pickle

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tvreg.compose.expr import (
    MAX_DEPTH,
    MAX_LENGTH,
    ExpressionError,
    Neg,
    Number,
    Product,
    RefNode,
    Sum,
    Term,
    canonical,
    linear_terms,
    parse,
)
from tvreg.errors import InvalidInput, InvalidRef


def terms(text):
    return [(t.coef, t.ref) for t in linear_terms(text)]


# --- valid expressions -> linear terms ----------------------------------------------------------

VALID = [
    ("a", [(1.0, "a")]),
    ("  a  ", [(1.0, "a")]),
    ("\ta\n+\r\nb", [(1.0, "a"), (1.0, "b")]),
    ("0.5*sentiment + topic@2 - 0.3*toxicity@prod",
     [(0.5, "sentiment"), (1.0, "topic@2"), (-0.3, "toxicity@prod")]),
    ("(king - man) + woman", [(1.0, "king"), (-1.0, "man"), (1.0, "woman")]),
    ("king - (man - woman)", [(1.0, "king"), (-1.0, "man"), (1.0, "woman")]),
    ("a - b - c", [(1.0, "a"), (-1.0, "b"), (-1.0, "c")]),
    ("a - (b - c)", [(1.0, "a"), (-1.0, "b"), (1.0, "c")]),
    ("a/2", [(0.5, "a")]),
    ("a/2/2", [(0.25, "a")]),
    ("a/(2/4)", [(2.0, "a")]),
    ("(a+b)/4", [(0.25, "a"), (0.25, "b")]),
    ("-a", [(-1.0, "a")]),
    ("+a", [(1.0, "a")]),
    ("--a", [(1.0, "a")]),
    ("-(-a)", [(1.0, "a")]),
    ("-+-a", [(1.0, "a")]),
    ("2*(a+b)", [(2.0, "a"), (2.0, "b")]),
    ("a*2", [(2.0, "a")]),
    ("a*2*3", [(6.0, "a")]),
    ("2*a*3", [(6.0, "a")]),
    ("(1+1)*a", [(2.0, "a")]),
    ("(3-1)/(1+1)*a", [(1.0, "a")]),
    ("2*-a", [(-2.0, "a")]),
    ("-2*a", [(-2.0, "a")]),
    ("a*-2", [(-2.0, "a")]),
    ("a - a", [(0.0, "a")]),
    ("-a + a", [(0.0, "a")]),
    ("-(a - a)", [(0.0, "a")]),
    ("0*a", [(0.0, "a")]),
    ("-0*a", [(0.0, "a")]),
    ("a - a + b", [(0.0, "a"), (1.0, "b")]),
    ("a + b + a", [(2.0, "a"), (1.0, "b")]),
    ("b + a + b@1 + a", [(1.0, "b"), (2.0, "a"), (1.0, "b@1")]),
    ('a + "a"', [(2.0, "a")]),
    ("1e-3*a", [(0.001, "a")]),
    ("1E3*a", [(1000.0, "a")]),
    ("1e+2*a", [(100.0, "a")]),
    (".5*a", [(0.5, "a")]),
    ("2.*a", [(2.0, "a")]),
    ("2.5e-1*a", [(0.25, "a")]),
    ("007*a", [(7.0, "a")]),
    # names and refs
    ("topic@2", [(1.0, "topic@2")]),
    ("topic@prod", [(1.0, "topic@prod")]),
    ("my_task.v2@rc.1", [(1.0, "my_task.v2@rc.1")]),
    ("a-b", [(1.0, "a"), (-1.0, "b")]),            # unquoted '-' is always minus
    ("a@x-b", [(1.0, "a@x"), (-1.0, "b")]),        # ... also after a tag
    ('"sst-2@prod"', [(1.0, "sst-2@prod")]),
    ('"sst-2@prod" - "sst-2"', [(1.0, "sst-2@prod"), (-1.0, "sst-2")]),
    ('"a@my-tag"', [(1.0, "a@my-tag")]),
    ('"team/sentiment@3"/2', [(0.5, "team/sentiment@3")]),
    ('0.5*"my-task"@x' if False else '0.5*"my-task@x"', [(0.5, "my-task@x")]),
    # id prefixes: a digit-led token that does not read entirely as a number is a ref
    ("0961eb36", [(1.0, "0961eb36")]),
    ("0961eb36a62e - deadbeef", [(1.0, "0961eb36a62e"), (-1.0, "deadbeef")]),
    ("1e5abc", [(1.0, "1e5abc")]),
    ('"096123"', [(1.0, "096123")]),
    ('2*"123e45"', [(2.0, "123e45")]),
    ("2a", [(1.0, "2a")]),
    ("3d@prod", [(1.0, "3d@prod")]),
    ("12@3", [(1.0, "12@3")]),
    ("2.5a", [(1.0, "2.5a")]),
    ("2 * 2a", [(2.0, "2a")]),
    # many terms, deep but legal nesting
    ("(" * MAX_DEPTH + "a" + ")" * MAX_DEPTH, [(1.0, "a")]),
    ("-" * MAX_DEPTH + "a", [(1.0, "a")]),
    ("+".join(["a"] * 4000), [(4000.0, "a")]),
    (" + ".join(f"t{i}" for i in range(1000)), [(1.0, f"t{i}") for i in range(1000)]),
    ("a" + "*2" * 1000 + "/2" * 1000, [(1.0, "a")]),
]


@pytest.mark.parametrize("text,expected", VALID, ids=[v[0][:40] for v in VALID])
def test_valid(text, expected):
    got = terms(text)
    assert got == expected
    for c, _ in got:
        assert math.copysign(1.0, c) == 1.0 or c != 0  # never -0.0
    parse(text)  # parse succeeds whenever linear_terms does


def test_linear_terms_accepts_a_node():
    node = parse("0.5*a - b")
    assert linear_terms(node) == [Term(0.5, "a"), Term(-1.0, "b")]


def test_ast_shape():
    assert parse("a") == RefNode("a", 1)
    assert parse(' "x-y"') == RefNode("x-y", 2, quoted=True)
    assert parse("-2*a") == Product(Neg(Number(2.0, 2), 1), (("*", 3, RefNode("a", 4)),))
    assert parse("a - b + c") == Sum(RefNode("a", 1), (("-", 3, RefNode("b", 5)),
                                                       ("+", 7, RefNode("c", 9))))
    assert parse("(a)") == RefNode("a", 2)  # parentheses leave no node


def test_hand_built_node_errors_have_no_caret():
    with pytest.raises(ExpressionError) as ei:
        linear_terms(Product(RefNode("a", 1), (("*", 2, RefNode("b", 3)),)))
    assert str(ei.value) == ("invalid expression: cannot multiply two vectors (the expression "
                             "must be linear in the refs) at column 2")
    with pytest.raises(TypeError):
        linear_terms(42)
    with pytest.raises(TypeError):
        parse(None)


# --- errors ---------------------------------------------------------------------------------------

ERRORS = [
    # (text, column, fragment of the reason)
    ("", 1, "empty expression"),
    ("   ", 1, "empty expression"),
    ("3", 1, "no vector in expression"),
    ("  2*3", 3, "no vector in expression"),
    ("(1+2)/4", 2, "no vector in expression"),
    ("a*b", 2, "cannot multiply two vectors"),
    ("2*a * (b+c)", 5, "cannot multiply two vectors"),
    ("(a-a)*b", 6, "cannot multiply two vectors"),
    ("a/b", 2, "cannot divide by a vector"),
    ("2/a", 2, "cannot divide by a vector"),
    ("a / (b - b)", 3, "cannot divide by a vector"),
    ("a/0", 2, "division by zero"),
    ("a/(1-1)", 2, "division by zero"),
    ("a / 0.0", 3, "division by zero"),
    ("a/-0", 2, "division by zero"),
    ("a + 1", 3, "cannot add a number and a vector"),
    ("1 + a", 3, "cannot add a number and a vector"),
    ("a - 1", 3, "cannot subtract a number from a vector"),
    ("1 - a", 3, "cannot subtract a vector from a number"),
    ("1e308*10*a", 6, "not finite"),
    ("a*1e308*10", 8, "not finite"),
    ("1e308*a + 1e308*a", 9, "not finite"),
    ("a/1e-320", 2, "not finite"),
    ("1e999*a", 1, "out of range"),
    ("(a + b", 1, "unclosed '('"),
    ("((a) + b", 1, "unclosed '('"),
    ("(a + (b)", 1, "unclosed '('"),
    ("a + b)", 6, "unmatched ')'"),
    ("()", 2, "empty parentheses"),
    ("a + ()", 6, "empty parentheses"),
    ("(a b)", 4, "expected an operator or ')'"),
    ("a b", 3, "expected an operator or the end of the expression, found ref 'b'"),
    ("a 2", 3, "found number 2"),
    ("2 a", 3, "found ref 'a'"),
    ("a (b)", 3, "found '('"),
    ("1e-3a", 5, "found ref 'a'"),
    (".5a", 3, "found ref 'a'"),
    ('a "b"', 3, 'found ref "b"'),
    ("a +", 4, "expected a ref, a number or '(' after '+', found end of expression"),
    ("a + * b", 5, "found '*'"),
    ("* a", 1, "expected a ref, a number or '(', found '*'"),
    ("a ** 2", 4, "found '*'"),
    ("a // 2", 4, "found '/'"),
    ("a + )", 5, "found ')'"),
    ("a % b", 3, "unexpected character '%'"),
    ("a + b; c", 6, "unexpected character ';'"),
    ("a^2", 2, "unexpected character '^'"),
    ("a @2", 3, "unexpected character '@'"),
    ("é", 1, "unexpected character 'é'"),
    ("a\x00", 2, "unexpected character '\\x00'"),
    ("Sentiment", 1, "names are lowercase"),
    ("a + B", 5, "names are lowercase"),
    ("a.", 1, None),                                  # valid word "a." is a valid name: see below
    (".", 1, "unexpected character '.'"),
    ("a + .", 5, "unexpected character '.'"),
    ("1.2.3*a", 1, "malformed number '1.2.3'"),
    ("1_000*a", 1, "malformed number"),
    ("a@0", 1, "versions start at 1"),
    ("a@", 1, "after @ comes a version number or a tag"),
    ("a@2x", 1, "after @ comes a version number or a tag"),
    ("b + a.json", 5, "invalid name 'a.json'"),
    ("x" * 200, 1, "too long"),
    ('"abc', 1, "unterminated quoted ref"),
    ('a + "', 5, "unterminated quoted ref"),
    ('""', 1, "empty quoted ref"),
    ('a - "Bad"', 5, "bad quoted ref: invalid ref 'Bad'"),
    ('"a b"', 1, "bad quoted ref"),
    ('"x@0"', 1, "bad quoted ref: invalid ref 'x@0': versions start at 1"),
    ('"/x"', 1, "bad quoted ref"),
    ("x" * (MAX_LENGTH + 1), MAX_LENGTH + 1, f"longer than {MAX_LENGTH} characters"),
    ("(" * (MAX_DEPTH + 1) + "a" + ")" * (MAX_DEPTH + 1), MAX_DEPTH + 1, "nesting deeper"),
    ("-" * (MAX_DEPTH + 1) + "a", MAX_DEPTH + 1, "nesting deeper"),
    ("(" * 50 + "-" * 51 + "a", 101, "nesting deeper"),
    ("(" * 5000, MAX_DEPTH + 1, "nesting deeper"),
    ("-" * 9000, MAX_DEPTH + 1, "nesting deeper"),
]
ERRORS = [e for e in ERRORS if e[2] is not None]


@pytest.mark.parametrize("text,column,reason", ERRORS, ids=[e[0][:30] for e in ERRORS])
def test_errors(text, column, reason):
    with pytest.raises(ExpressionError) as ei:
        linear_terms(text)
    e = ei.value
    assert e.column == column, str(e)
    assert reason in e.reason, str(e)
    assert e.expression == text
    assert isinstance(e, InvalidInput) and e.exit_code == 2
    first = str(e).splitlines()[0]
    assert first == f"invalid expression: {e.reason} at column {column}"
    with pytest.raises(ExpressionError):
        parse(text)


def test_trailing_dot_is_part_of_a_name():
    assert terms("a.") == [(1.0, "a.")]


@pytest.mark.parametrize("text,column,message", [
    ("a*b", 2, "invalid expression: cannot multiply two vectors (the expression must be linear "
               "in the refs) at column 2\n  a*b\n   ^"),
    ("0.5*sentiment + topic@2 - 0.3*", 31,
     "invalid expression: expected a ref, a number or '(' after '*', found end of expression at "
     "column 31\n  0.5*sentiment + topic@2 - 0.3*\n                                ^"),
    ("(king - man) + woman)", 21, "invalid expression: unmatched ')' at column 21\n"
                                  "  (king - man) + woman)\n                      ^"),
    ("", 1, "invalid expression: empty expression at column 1\n  \n  ^"),
    ("a\t% b", 3, "invalid expression: unexpected character '%' at column 3\n  a % b\n    ^"),
    ("team/sentiment", 5,
     "invalid expression: cannot divide by a vector (only by a number) (if 'team/sentiment' is "
     "one ref, quote it: \"team/sentiment\") at column 5\n  team/sentiment\n      ^"),
    ("sst-2", 4,
     "invalid expression: cannot subtract a number from a vector (if 'sst-2' is one ref, "
     "quote it: \"sst-2\") at column 4\n  sst-2\n     ^"),
])
def test_exact_messages(text, column, message):
    with pytest.raises(ExpressionError) as ei:
        linear_terms(text)
    assert ei.value.column == column
    assert str(ei.value) == message


def test_long_expression_is_shown_as_a_window_around_the_caret():
    text = " + ".join(f"t{i}" for i in range(100)) + " % x"
    with pytest.raises(ExpressionError) as ei:
        parse(text)
    e = ei.value
    assert e.column == text.index("%") + 1
    _, shown, caret = str(e).splitlines()
    assert shown.startswith("  ...") and len(shown) <= 2 + 3 + 72 + 3
    assert caret.endswith("^") and set(caret[:-1]) == {" "}
    assert shown[len(caret) - 1] == "%"
    # and at the start of a long expression
    text = "% " + "a + " * 50 + "a"
    _, shown, caret = str(pytest.raises(ExpressionError, parse, text).value).splitlines()
    assert caret == "  ^" and shown.startswith("  % a") and shown.endswith("...")


def test_error_pickles():
    e = pytest.raises(ExpressionError, parse, "a*b").value
    e2 = pickle.loads(pickle.dumps(e))
    assert (e2.reason, e2.expression, e2.column, str(e2)) == (e.reason, e.expression, e.column,
                                                              str(e))


# --- canonical form -------------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("0.5*sentiment + topic@2 - 0.3*toxicity@prod", "0.5*sentiment + topic@2 - 0.3*toxicity@prod"),
    ("(king - man) + woman", "king - man + woman"),
    ("-a", "-a"),
    ("-(a + 2*b)", "-a - 2*b"),
    ("a/2", "0.5*a"),
    ("a/3", "0.3333333333333333*a"),
    ("a - a", "0*a"),
    ("b - (a - a)", "b + 0*a"),
    ("1e-5*a + 1e20*b", "1e-05*a + 1e+20*b"),
    ('"sst-2@prod" + "team/x" + "096123" + "123e45" + 0961eb36 + "2.5"',
     '"sst-2@prod" + "team/x" + "096123" + "123e45" + 0961eb36 + "2.5"'),
    ('"a" + "1e5abc" + "a.b@x" + a', "2*a + 1e5abc + a.b@x"),
])
def test_canonical(text, expected):
    ts = linear_terms(text)
    assert canonical(ts) == expected
    assert linear_terms(canonical(ts)) == ts


def test_canonical_rejects_bad_input():
    with pytest.raises(ValueError):
        canonical([])
    with pytest.raises(ValueError):
        canonical([Term(math.inf, "a")])
    with pytest.raises(ValueError):
        canonical([Term(math.nan, "a")])
    with pytest.raises(InvalidRef):
        canonical([Term(1.0, "Bad Name")])


# --- property tests -------------------------------------------------------------------------------

_CHARS = st.sampled_from(list("abz09_.@-+*/()\" \t\n2e5E%") + ["1e308", "0961eb36", '"a-b"'])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=60), st.lists(_CHARS, max_size=40).map("".join)))
def test_fuzz_only_expression_errors(text):
    try:
        ts = linear_terms(text)
    except ExpressionError as e:
        assert 1 <= e.column <= len(text) + 1
        assert str(e).startswith("invalid expression: ")
        if e.expression is not None:
            assert str(e).splitlines()[-1].endswith("^")
        return
    assert ts and all(math.isfinite(t.coef) for t in ts)
    assert linear_terms(canonical(ts)) == ts


REFS = ["a", "b", "topic@2", "toxicity@prod", "my_task.v2", "0961eb36", "2a",
        '"sst-2@prod"', '"team/x@3"', '"096123"']


def _unquote(ref):
    return ref.strip('"')


# Trees: ("num", float) | ("ref", text) | ("neg", t) | (op, l, r) with op in + - * /
_nums = st.sampled_from([0.0, 1.0, 2.0, 0.5, 3.0, 0.25, 10.0, 1e-3, 7.5, 100.0]).map(
    lambda x: ("num", x))
_refs = st.sampled_from(REFS).map(lambda r: ("ref", r))
_trees = st.recursive(
    st.one_of(_nums, _refs),
    lambda sub: st.one_of(
        sub.map(lambda t: ("neg", t)),
        st.tuples(st.sampled_from("+-*/"), sub, sub)),
    max_leaves=12)


class _Bad(Exception):
    pass


def _eval_tree(tree):
    """Independent evaluation: (is_vector, scalar or {ref: coef}); raises _Bad where the
    expression must be rejected."""
    kind = tree[0]
    if kind == "num":
        return tree[1]
    if kind == "ref":
        return {_unquote(tree[1]): 1.0}
    if kind == "neg":
        v = _eval_tree(tree[1])
        return {k: -c for k, c in v.items()} if isinstance(v, dict) else -v
    op, left, right = tree
    lv, rv = _eval_tree(left), _eval_tree(right)
    lvec, rvec = isinstance(lv, dict), isinstance(rv, dict)
    if op in "+-":
        if lvec != rvec:
            raise _Bad
        sign = 1.0 if op == "+" else -1.0
        if not lvec:
            out = lv + sign * rv
        else:
            out = dict(lv)
            for k, c in rv.items():
                out[k] = out.get(k, 0.0) + sign * c
    elif op == "*":
        if lvec and rvec:
            raise _Bad
        if lvec:
            out = {k: c * rv for k, c in lv.items()}
        elif rvec:
            out = {k: lv * c for k, c in rv.items()}
        else:
            out = lv * rv
    else:
        if rvec or rv == 0:
            raise _Bad
        out = {k: c / rv for k, c in lv.items()} if lvec else lv / rv
    vals = out.values() if isinstance(out, dict) else [out]
    if not all(math.isfinite(x) for x in vals):
        raise _Bad
    return out


def _render(tree, draw):
    ws = draw(st.sampled_from(["", " ", "  ", "\t"]))
    kind = tree[0]
    if kind == "num":
        return ws + draw(st.sampled_from([repr(tree[1]), f"{tree[1]:e}", f"{tree[1]:g}"]))
    if kind == "ref":
        return ws + tree[1]
    if kind == "neg":
        return f"{ws}-({_render(tree[1], draw)})"
    op, left, right = tree
    return f"({_render(left, draw)}{ws}{op}{ws}({_render(right, draw)}))"


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_generated_trees_linearise_like_an_independent_evaluator(data):
    tree = data.draw(_trees)
    text = _render(tree, data.draw)
    try:
        expected = _eval_tree(tree)
        if not isinstance(expected, dict):
            raise _Bad
    except _Bad:
        with pytest.raises(ExpressionError):
            linear_terms(text)
        return
    got = linear_terms(text)
    assert [t.ref for t in got] == list(expected)
    for t in got:
        want = expected[t.ref]
        assert math.isclose(t.coef, want, rel_tol=1e-12, abs_tol=1e-12), (text, t, want)
    assert linear_terms(canonical(got)) == got


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.sampled_from([_unquote(r) for r in REFS] + ["x-y", "1e5", "0.5", "a@b-c", "n/m"])),
    min_size=1, max_size=6, unique_by=lambda t: t[1]))
def test_canonical_round_trips_any_coefficients(pairs):
    ts = [Term(c if c != 0 else 0.0, r) for c, r in pairs]
    assert linear_terms(canonical(ts)) == ts


# --- the documented examples stay true ---------------------------------------------------------

def test_documented_error_messages_are_exact():
    import pathlib
    import re
    doc = (pathlib.Path(__file__).resolve().parent.parent / "docs" / "composition.md").read_text()
    blocks, current = [], None
    for line in doc.splitlines():
        if line.startswith("```"):
            if current is not None:
                blocks.append("\n".join(current))
            current = [] if current is None else None
        elif current is not None:
            current.append(line)
    blocks = [b for b in blocks if b.startswith("invalid expression:")]
    assert len(blocks) >= 8
    for block in blocks:
        expression = block.splitlines()[1][2:]
        with pytest.raises(ExpressionError) as ei:
            linear_terms(expression)
        assert str(ei.value) == block
    rows = re.findall(r"^\| `([^`]+)` \| `([^`]+)` \|$", doc, re.M)
    canon = [(e, c) for e, c in rows if not e.startswith("text")]
    assert len(canon) == 5
    for expression, expected in canon:
        assert canonical(linear_terms(expression)) == expected
