"""Label rules: a 0/1 label computed from a source record's columns, e.g. for ``config.preprocess.labels``.

    "like":         "rating >= 4"
    "bought":       "behavior == 'buy'"                   # also "behavior == buy", the one-comparison spelling
    "converted_1d": "0 <= conversion_timestamp - click_timestamp <= 86400"
    "engaged":      "(clicked == 1 and dwell >= 30) or shared == 1"

A rule is a Python-syntax boolean expression over the record's scalar columns: comparisons (``>= > <= < ==
!=``, chained as in ``a <= x <= b``), combined with ``and``, ``or``, ``not`` and parentheses; the compared terms
are columns, numbers, quoted strings, and sums or differences of numeric columns and numbers. Nothing else is
evaluated (no calls, no attribute access). A missing float (NaN) fails every comparison, as in numpy.

The rule is checked against the source's columns when it is parsed, so a misspelt column or a string column
in arithmetic is an error naming the rule and the column before any data is read. The parsed rule is a tree of
small picklable nodes, because Beam ships it to its workers.
"""

import ast
import dataclasses
import operator
import re

NUMERIC_DTYPES = ("int64", "float32")
_COMPARISONS = {ast.GtE: (">=", operator.ge), ast.Gt: (">", operator.gt), ast.LtE: ("<=", operator.le),
                ast.Lt: ("<", operator.lt), ast.Eq: ("==", operator.eq), ast.NotEq: ("!=", operator.ne)}
_SYMBOLS = {symbol: function for symbol, function in _COMPARISONS.values()}
_ARITHMETIC = {ast.Add: operator.add, ast.Sub: operator.sub}
# The one-comparison spelling, whose value against a string column need not be quoted ("behavior == buy").
_ONE_COMPARISON = re.compile(r"^\s*(\w+)\s*(>=|<=|==|!=|>|<)\s*(.+?)\s*$")
_SYNTAX = ("is not '<column> <op> <value>' or comparisons of columns, numbers, quoted strings and sums or "
           "differences of numeric columns, combined with and / or / not and parentheses")


@dataclasses.dataclass(frozen=True)
class _Column:
    name: str

    def evaluate(self, record):
        return record[self.name]


@dataclasses.dataclass(frozen=True)
class _Literal:
    value: object

    def evaluate(self, record):
        return self.value


@dataclasses.dataclass(frozen=True)
class _Arithmetic:
    symbol: str  # "+", "-" or "neg"
    operands: tuple

    def evaluate(self, record):
        values = [operand.evaluate(record) for operand in self.operands]
        if self.symbol == "neg":
            return -values[0]
        return values[0] + values[1] if self.symbol == "+" else values[0] - values[1]


@dataclasses.dataclass(frozen=True)
class _Comparison:
    """``operands[0] ops[0] operands[1] ops[1] operands[2] ...``, each link must hold (Python's chaining)."""

    operands: tuple
    ops: tuple

    def evaluate(self, record):
        values = [operand.evaluate(record) for operand in self.operands]
        return all(_SYMBOLS[op](left, right) for op, left, right in zip(self.ops, values, values[1:]))


@dataclasses.dataclass(frozen=True)
class _Logic:
    symbol: str  # "and", "or" or "not"
    operands: tuple

    def evaluate(self, record):
        if self.symbol == "not":
            return not self.operands[0].evaluate(record)
        if self.symbol == "and":
            return all(operand.evaluate(record) for operand in self.operands)
        return any(operand.evaluate(record) for operand in self.operands)


@dataclasses.dataclass(frozen=True)
class LabelRule:
    """``name = float(rule holds for the record)``; ``columns`` are the source columns the rule reads."""

    name: str
    rule: str
    expression: object
    columns: tuple

    def __call__(self, record: dict) -> float:
        return float(bool(self.expression.evaluate(record)))


class _Parser:
    """Turns a rule's syntax tree into nodes, checking every column and operand type."""

    def __init__(self, name: str, rule: str, columns: dict):
        self.name, self.rule, self.columns = name, rule, columns
        self.used = []

    def error(self, reason: str) -> ValueError:
        return ValueError(f"preprocess.labels[{self.name!r}] = {self.rule!r}: {reason}")

    def condition(self, node):
        if isinstance(node, ast.BoolOp):
            symbol = "and" if isinstance(node.op, ast.And) else "or"
            return _Logic(symbol, tuple(self.condition(value) for value in node.values))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return _Logic("not", (self.condition(node.operand),))
        if isinstance(node, ast.Compare):
            return self.comparison(node)
        raise self.error(f"{ast.unparse(node)!r} is not a condition (a comparison, or conditions joined by and / "
                         "or / not)")

    def comparison(self, node):
        ops = []
        for op in node.ops:
            if type(op) not in _COMPARISONS:
                raise self.error(f"operator {type(op).__name__} is not one of {sorted(_SYMBOLS)}")
            ops.append(_COMPARISONS[type(op)][0])
        terms = [self.term(operand) for operand in [node.left, *node.comparators]]
        for (left, left_kind), (right, right_kind) in zip(terms, terms[1:]):
            if left_kind != right_kind:
                raise self.error(f"compares a {left_kind} ({self.describe(left)}) with a {right_kind} "
                                 f"({self.describe(right)})")
        return _Comparison(tuple(term for term, _ in terms), tuple(ops))

    def term(self, node):
        """``(node, kind)`` with kind "number" or "string"."""
        if isinstance(node, ast.Name):
            if node.id not in self.columns:
                raise self.error(f"the source has no column {node.id!r}; it has {sorted(self.columns)}")
            dtype = self.columns[node.id]
            if dtype not in NUMERIC_DTYPES + ("string",):
                raise self.error(f"column {node.id!r} is {dtype}; rules compare scalar columns")
            self.used.append(node.id)
            return _Column(node.id), "number" if dtype in NUMERIC_DTYPES else "string"
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str)) \
                and not isinstance(node.value, bool):
            return _Literal(node.value), "string" if isinstance(node.value, str) else "number"
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            operand = self.numeric(node.operand)
            return (_Arithmetic("neg", (operand,)) if isinstance(node.op, ast.USub) else operand), "number"
        if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
            symbol = "+" if isinstance(node.op, ast.Add) else "-"
            return _Arithmetic(symbol, (self.numeric(node.left), self.numeric(node.right))), "number"
        raise self.error(f"{ast.unparse(node)!r} is not a column, a number, a quoted string or a sum or "
                         "difference of numeric terms")

    def numeric(self, node):
        term, kind = self.term(node)
        if kind != "number":
            raise self.error(f"{self.describe(term)} is not numeric; only numeric columns and numbers take + and -")
        return term

    def describe(self, term) -> str:
        if isinstance(term, _Column):
            return f"column {term.name!r} ({self.columns[term.name]})"
        if isinstance(term, _Literal):
            return repr(term.value)
        return "an arithmetic term"


def parse_label_rule(name: str, rule: str, columns: dict) -> LabelRule:
    """Parses ``rule`` (see the module docstring) for a source whose records have ``columns`` (``{name:
    dtype}``). Raises ValueError naming the label, the rule and the column or operand at fault.

    A rule that is not a valid expression but is one comparison of a string column with an unquoted value
    (``behavior == buy``, the spelling before rules could combine) compares with that text."""
    text = str(rule)
    try:
        return _parse(name, text, text, columns)
    except ValueError:
        legacy = _ONE_COMPARISON.match(text)
        if not legacy or columns.get(legacy.group(1)) != "string":
            raise
    column, op, value = legacy.groups()
    return _parse(name, text, f"{column} {op} {value.strip(chr(39) + chr(34))!r}", columns)


def _parse(name: str, rule: str, expression_text: str, columns: dict) -> LabelRule:
    parser = _Parser(name, rule, columns)
    try:
        tree = ast.parse(expression_text.strip(), mode="eval").body
    except SyntaxError:
        raise parser.error(_SYNTAX) from None
    expression = parser.condition(tree)
    return LabelRule(name, rule, expression, tuple(dict.fromkeys(parser.used)))
