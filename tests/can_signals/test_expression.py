"""The safe evaluator of ``math`` transforms: KUKSA's arithmetic, and nothing else.

KUKSA evaluates transforms with py-expression-eval, where ``^`` is the power operator
and binds tighter than unary minus and ``*`` (``-3^2`` is -9, ``2-3^x`` at 4 is -79, as
py-expression-eval's own tests have it). Anything that is not arithmetic over ``x`` and
the frame's signals is refused when the mapping loads.
"""

from __future__ import annotations

import ast
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from can_signals.errors import ExpressionError
from can_signals.expression import MAX_EXPRESSION_LENGTH, compile_expression


def evaluate(source: str, x: float = 4, **others: float) -> float | int | bool:
    names = ("x", *others)
    return compile_expression(source, allowed_names=names)({"x": x, **others})


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("2 + 3 * 4", 14),
        ("(2 + 3) * 4", 20),
        ("10 - 4 - 3", 3),
        ("2 * x + 1", 9),
        ("7 / 2", 3.5),
        ("7 // 2", 3),
        ("7 % 4", 3),
        # ^ is power, as in py-expression-eval, with the precedence of **.
        ("2 ^ x", 16),
        ("2-3^x", -79),
        ("-2-3^x", -83),
        ("-3^x", -81),
        ("(-3)^x", 81),
        ("2*x^2", 32),
        ("x^2*2", 32),
        ("2^3^2", 512),
        ("16^.5", 4),
        ("x ** 2", 16),
        ("floor((x*40)-100)", 60),  # KUKSA's mirror tilt example
        ("+x", 4),
        ("--x", 4),
    ],
)
def test_arithmetic_and_precedence(source: str, expected: float) -> None:
    assert evaluate(source) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("x > 3", True),
        ("x < 3", False),
        ("x >= 4", True),
        ("x <= 3.9", False),
        ("x == 4", True),
        ("x != 4", False),
        ("1 < x < 5", True),
        ("1 < x < 3", False),
        ("x > 1 and x < 3", False),
        ("x > 1 or x < 3", True),
        ("not x", False),
        ("10 if x > 3 else 20", 10),
        ("10 if x > 5 else 20", 20),
        ("x * (1000 + 609.344 * (x == 4))", 4 * 1609.344),  # the RAV4 odometer
    ],
)
def test_comparisons_and_logic(source: str, expected: float) -> None:
    assert evaluate(source) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("min(x, 2, 9)", 2),
        ("max(x, 2, 9)", 9),
        ("floor(-x / 3)", -2),
        ("ceil(x / 3)", 2),
        ("abs(-x)", 4),
        ("round(x / 3)", 1),
        ("round(x / 3, 2)", 1.33),
        ("sqrt(x)", 2),
        ("PI", math.pi),
        ("E", math.e),
        ("floor(PI * x)", 12),
    ],
)
def test_functions_and_constants(source: str, expected: float) -> None:
    assert evaluate(source) == pytest.approx(expected)


def test_other_signals_of_the_frame_are_variables() -> None:
    expression = compile_expression("x * UNITS + OFFSET", allowed_names=("x", "UNITS", "OFFSET"))

    assert expression({"x": 2, "UNITS": 3, "OFFSET": 1}) == 7
    assert expression.names == frozenset({"x", "UNITS", "OFFSET"})
    with pytest.raises(KeyError):  # a truncated frame: the converter counts it
        expression({"x": 2})


@pytest.mark.parametrize(
    ("source", "error"),
    [
        ("10 ^ 400", OverflowError),
        ("9 ^ 9 ^ 9", OverflowError),
        ("x ** 99999", OverflowError),
        ("x / 0", ZeroDivisionError),
        ("x // 0", ZeroDivisionError),
        ("x % 0", ZeroDivisionError),
        ("sqrt(-x)", ValueError),
        ("floor(10 ^ 308 * 10)", OverflowError),
    ],
)
def test_runaway_arithmetic_fails_cleanly_and_fast(source: str, error: type[Exception]) -> None:
    # Powers are floats: 9^9^9 overflows at once instead of building a huge integer.
    with pytest.raises(error):
        evaluate(source)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("x +", "not a valid expression"),
        ("x.real", "not allowed"),
        ("x.__class__.__bases__", "not allowed"),
        ("__import__('os').system('touch /tmp/pwned')", "not allowed"),
        ("__import__('os')", "unknown function '__import__'"),
        ("eval('1')", "unknown function 'eval'"),
        ("open('/etc/passwd')", "unknown function 'open'"),
        ("lambda: 1", "not allowed"),
        ("(lambda: 1)()", "not allowed"),
        ("[x for x in range(9)]", "not allowed"),
        ("[1, 2][0]", "not allowed"),
        ("{'a': 1}", "not allowed"),
        ("'text'", "not allowed"),
        ("f'{x}'", "not allowed"),
        ("(y := 2)", "not allowed"),
        ("x if", "not a valid expression"),
        ("x is None", "only == != < <= > >= comparisons"),
        ("x in (1, 2)", "only == != < <= > >= comparisons"),
        ("x << 2", "not allowed"),
        ("x & 1", "not allowed"),
        ("~x", "not allowed"),
        ("1j", "not allowed"),
        ("min(x)", "min() takes 2 to 16 arguments"),
        ("sqrt(x, 2)", "sqrt() takes 1 to 1 arguments"),
        ("round(x, digits=2)", "not allowed"),
        ("y + 1", "unknown name 'y'"),
        ("x\x00", "not a valid expression"),
        ("x\udc80", "not a valid expression"),
        ("1 + " * 200 + "1", "longer than"),
        ("-" * 300 + "x", "more than 200 parts"),
    ],
)
def test_anything_but_arithmetic_is_refused(source: str, message: str) -> None:
    with pytest.raises(ExpressionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        compile_expression(source)


def test_the_length_limit() -> None:
    assert len("1 + " * 200 + "1") > MAX_EXPRESSION_LENGTH
    compile_expression("+".join(["x"] * 40))  # long but fine


# What an accepted expression may contain, checked independently of the compiler.
_ALLOWED_NODES = (
    ast.Expression, ast.Constant, ast.Name, ast.Load, ast.BinOp, ast.UnaryOp, ast.Compare,
    ast.BoolOp, ast.IfExp, ast.Call, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv,
    ast.Mod, ast.Pow, ast.USub, ast.UAdd, ast.Not, ast.And, ast.Or, ast.Eq, ast.NotEq,
    ast.Lt, ast.LtE, ast.Gt, ast.GtE,
)  # fmt: skip
_FUNCTIONS = {"floor", "ceil", "abs", "min", "max", "round", "sqrt"}

expression_like = st.text(alphabet="x0123456789.+-*/%^()<>=!, ifelsandotrqmxbcPIE_", max_size=40)


def _check_compiles_or_refuses(source: str) -> None:
    try:
        expression = compile_expression(source, allowed_names=("x", "SIG"))
    except ExpressionError:
        return
    # Accepted: it must be arithmetic over x, SIG and the constants, nothing else.
    tree = ast.parse(source.strip().replace("^", "**"), mode="eval")
    for node in ast.walk(tree):
        assert isinstance(node, _ALLOWED_NODES), f"{type(node).__name__} accepted in {source!r}"
        if isinstance(node, ast.Call):
            assert isinstance(node.func, ast.Name)
            assert node.func.id in _FUNCTIONS
        if isinstance(node, ast.Constant):
            assert type(node.value) in (int, float, bool)
    assert expression.names <= {"x", "SIG"}
    try:
        result = expression({"x": 3.5, "SIG": -2})
    except (ArithmeticError, ValueError):
        return
    assert isinstance(result, int | float | bool)


@settings(max_examples=400, deadline=None)
@given(source=st.text(max_size=60))
def test_random_text_compiles_or_raises_expression_error(source: str) -> None:
    _check_compiles_or_refuses(source)


@settings(max_examples=600, deadline=None)
@given(source=expression_like)
def test_random_expressions_compile_or_raise_expression_error(source: str) -> None:
    _check_compiles_or_refuses(source)
