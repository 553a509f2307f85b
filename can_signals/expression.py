"""A small, safe evaluator for the ``math`` transforms of mapping files.

Expressions are parsed with :mod:`ast` (parsing runs no code) and compiled into a tree
of closures over a whitelist of node types: numbers, the variable ``x`` (the DBC
signal's value), other signals of the same CAN frame by their DBC names (a touchpoint
extension), ``+ - * / // % **``, ``^`` as power (as in the py-expression-eval syntax the
KUKSA CAN provider uses), comparisons, ``and``/``or``/``not``, ``a if c else b``, the
constants ``PI`` and ``E``, and the functions ``floor ceil abs min max round sqrt``.
Anything else (attribute access, subscripts, calls of other names, lambdas,
comprehensions) is refused when the mapping loads. ``eval`` is never used.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Collection, Mapping
from typing import Final

from can_signals.errors import ExpressionError

Number = float | int | bool
Variables = Mapping[str, Number]
Evaluator = Callable[[Variables], Number]

MAX_EXPRESSION_LENGTH: Final = 500
MAX_NODES: Final = 200

_CONSTANTS: Final[dict[str, float]] = {"PI": math.pi, "E": math.e}


def _power(base: Number, exponent: Number) -> float:
    # Floats overflow with an error instead of building a huge integer (no 9**9**9 DoS).
    return math.pow(float(base), float(exponent))


def _round(value: Number, digits: Number = 0) -> float:
    return float(round(float(value), int(digits)))


_FUNCTIONS: Final[dict[str, tuple[Callable[..., Number], int, int]]] = {
    # name: (function, min args, max args)
    "floor": (math.floor, 1, 1),
    "ceil": (math.ceil, 1, 1),
    "abs": (abs, 1, 1),
    "min": (min, 2, 16),
    "max": (max, 2, 16),
    "round": (_round, 1, 2),
    "sqrt": (math.sqrt, 1, 1),
}

_BINARY: Final[dict[type[ast.operator], Callable[[Number, Number], Number]]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: _power,
}

_COMPARE: Final[dict[type[ast.cmpop], Callable[[Number, Number], bool]]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}


class Expression:
    """A compiled ``math`` transform.

    Attributes:
        source: The expression text as written in the mapping.
        names: The variables it reads (``x`` and any other signal names).
    """

    __slots__ = ("_evaluate", "names", "source")

    def __init__(self, source: str, evaluate: Evaluator, names: frozenset[str]) -> None:
        self.source = source
        self.names = names
        self._evaluate = evaluate

    def __call__(self, variables: Variables) -> Number:
        """Evaluate with the given variables.

        Raises:
            ArithmeticError: Division by zero, overflow.
            ValueError: A math domain error (``sqrt(-1)``).
            KeyError: A variable that is not in ``variables`` (a truncated frame).
        """
        return self._evaluate(variables)

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"


def compile_expression(source: str, allowed_names: Collection[str] = ("x",)) -> Expression:
    """Parse and compile a ``math`` transform.

    Args:
        source: The expression, e.g. ``floor((x*40)-100)``.
        allowed_names: Variable names the expression may read besides the constants.

    Raises:
        ExpressionError: If the text is not a safe expression over the allowed names.
    """
    if not isinstance(source, str) or not source.strip():
        raise ExpressionError("the expression is empty")
    if len(source) > MAX_EXPRESSION_LENGTH:
        raise ExpressionError(f"the expression is longer than {MAX_EXPRESSION_LENGTH} characters")
    # In py-expression-eval, as in mathematics, ``^`` is the power operator and binds
    # tighter than ``*`` and unary minus (``-3^2`` is -9); Python's ``^`` binds looser
    # than ``+``, so it is rewritten to ``**`` before parsing (it has no other meaning here).
    text = source.strip().replace("^", "**")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as err:
        raise ExpressionError(f"not a valid expression: {err.msg} in {source!r}") from err
    except ValueError as err:  # null bytes, lone surrogates
        raise ExpressionError(f"not a valid expression: {err} in {source!r}") from err
    node_count = sum(1 for _ in ast.walk(tree))
    if node_count > MAX_NODES:
        raise ExpressionError(f"the expression has more than {MAX_NODES} parts")
    names: set[str] = set()
    evaluate = _Compiler(allowed_names, names).compile(tree.body)
    return Expression(source, evaluate, frozenset(names))


class _Compiler:
    def __init__(self, allowed: Collection[str], names: set[str]) -> None:
        self._allowed = allowed
        self._names = names

    def compile(self, node: ast.expr) -> Evaluator:  # noqa: PLR0911 - one branch per node type
        match node:
            case ast.Constant(value=bool() | int() | float() as value):
                return lambda _v: value
            case ast.Name(id=name):
                return self._name(name)
            case ast.BinOp(left=left, op=op, right=right) if type(op) in _BINARY:
                return self._binary(_BINARY[type(op)], self.compile(left), self.compile(right))
            case ast.UnaryOp(op=ast.USub(), operand=operand):
                inner = self.compile(operand)
                return lambda v: -inner(v)
            case ast.UnaryOp(op=ast.UAdd(), operand=operand):
                return self.compile(operand)
            case ast.UnaryOp(op=ast.Not(), operand=operand):
                inner = self.compile(operand)
                return lambda v: not inner(v)
            case ast.Compare(left=left, ops=ops, comparators=rest):
                return self._compare(left, ops, rest)
            case ast.BoolOp(op=op, values=values):
                return self._boolean(isinstance(op, ast.And), [self.compile(x) for x in values])
            case ast.IfExp(test=test, body=body, orelse=orelse):
                condition, yes, no = self.compile(test), self.compile(body), self.compile(orelse)
                return lambda v: yes(v) if condition(v) else no(v)
            case ast.Call(func=ast.Name(id=name), args=args, keywords=[]):
                return self._call(name, args)
        raise ExpressionError(f"not allowed in a transform: {ast.unparse(node)!r}")

    def _name(self, name: str) -> Evaluator:
        if name in _CONSTANTS:
            constant = _CONSTANTS[name]
            return lambda _v: constant
        if name not in self._allowed:
            allowed = ", ".join(sorted({*self._allowed, *_CONSTANTS}))
            raise ExpressionError(f"unknown name {name!r} (known: {allowed})")
        self._names.add(name)
        return lambda v: v[name]

    @staticmethod
    def _binary(
        function: Callable[[Number, Number], Number], left: Evaluator, right: Evaluator
    ) -> Evaluator:
        return lambda v: function(left(v), right(v))

    def _compare(self, left: ast.expr, ops: list[ast.cmpop], rest: list[ast.expr]) -> Evaluator:
        if any(type(op) not in _COMPARE for op in ops):
            raise ExpressionError("only == != < <= > >= comparisons are allowed")
        operands = [self.compile(left), *(self.compile(x) for x in rest)]
        functions = [_COMPARE[type(op)] for op in ops]

        def evaluate(v: Variables) -> bool:
            previous = operands[0](v)
            for function, operand in zip(functions, operands[1:], strict=True):
                current = operand(v)
                if not function(previous, current):
                    return False
                previous = current
            return True

        return evaluate

    @staticmethod
    def _boolean(conjunction: bool, parts: list[Evaluator]) -> Evaluator:  # noqa: FBT001
        if conjunction:
            return lambda v: all(part(v) for part in parts)
        return lambda v: any(part(v) for part in parts)

    def _call(self, name: str, args: list[ast.expr]) -> Evaluator:
        if name not in _FUNCTIONS:
            known = ", ".join(sorted(_FUNCTIONS))
            raise ExpressionError(f"unknown function {name!r} (known: {known})")
        function, lowest, highest = _FUNCTIONS[name]
        if not lowest <= len(args) <= highest:
            raise ExpressionError(f"{name}() takes {lowest} to {highest} arguments")
        compiled = [self.compile(arg) for arg in args]
        if len(compiled) == 1:
            (only,) = compiled
            return lambda v: function(only(v))
        return lambda v: function(*(arg(v) for arg in compiled))
