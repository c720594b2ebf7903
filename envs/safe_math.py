"""Arithmetic on model-written text without eval: a whitelisted walk over Python's AST.

Why not eval: model text is untrusted. Only numbers, + - * / ** (or ^), unary minus/plus and
parentheses are accepted; anything else (names, calls, attributes, comparisons, ...) is rejected
before any evaluation. Sizes are bounded so that `9**9**9` cannot hang a worker.
"""

from __future__ import annotations

import ast
import math
import operator
from typing import Callable

MAX_EXPR_CHARS = 200
MAX_NODES = 100
MAX_ABS_EXPONENT = 100.0
MAX_ABS_VALUE = 1e100

_BINOPS: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[float], float]] = {
    ast.USub: operator.neg, ast.UAdd: operator.pos,
}


class CalcError(ValueError):
    """An expression that is not allowed or cannot be evaluated; the message is model-facing."""


def parse_expression(text: str, max_chars: int = MAX_EXPR_CHARS) -> ast.expr:
    """The AST of `text` as a single expression, with size limits checked (not yet whitelisted)."""
    if not isinstance(text, str):
        raise CalcError("expression must be a string")
    if len(text) > max_chars:
        raise CalcError(f"expression too long (> {max_chars} chars)")
    try:  # '^' means power here, with the precedence of '**' (as sympy's convert_xor reads it)
        tree = ast.parse(text.strip().replace("^", "**"), mode="eval")
    except SyntaxError:
        raise CalcError("invalid expression") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise CalcError("expression too complex")
    return tree.body


def evaluate_node(node: ast.expr, names: dict[str, float] | None = None) -> float:
    """Evaluate a whitelisted AST node with floats; `names` maps allowed variable names to values."""
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise CalcError("only numbers are allowed")
        return float(node.value)
    if isinstance(node, ast.Name) and names is not None and node.id in names:
        return float(names[node.id])
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](evaluate_node(node.operand, names))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left = evaluate_node(node.left, names)
        right = evaluate_node(node.right, names)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_ABS_EXPONENT:
            raise CalcError("exponent too large")
        try:
            value = _BINOPS[type(node.op)](left, right)
        except ZeroDivisionError:
            raise CalcError("division by zero") from None
        except OverflowError:
            raise CalcError("result too large") from None
        if isinstance(value, complex):
            raise CalcError("complex result")
        if math.isnan(value) or math.isinf(value) or abs(value) > MAX_ABS_VALUE:
            raise CalcError("result too large")
        return value
    if isinstance(node, ast.Name):
        raise CalcError(f"unknown name '{node.id}'")
    raise CalcError(f"'{type(node).__name__}' is not allowed")


def safe_eval(text: str) -> float:
    """The value of an arithmetic expression such as `2*1.008+15.999` or `(3+4)^2`."""
    return evaluate_node(parse_expression(text))


def format_number(value: float, digits: int = 6) -> str:
    """Short text for a number: integers without a decimal point, others to `digits` significant
    digits (short outputs keep small models' context free)."""
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return format(value, f".{digits}g")


def parse_number(text: str) -> int | float | None:
    """The number in a tool output such as `58.44`, `72` or `F=12.5` (after the last `=`), as an
    int when it is written as one, so a demonstration repeats it exactly as it was observed."""
    part = text.rsplit("=", 1)[-1].strip()
    try:
        return int(part)
    except ValueError:
        pass
    try:
        return float(part)
    except ValueError:
        return None
