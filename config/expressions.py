"""The expression language of dataset configs: `$steering(...)`, `$args(...)`, `$eval(...)` and kin.

Any string of a dataset config may hold expressions. The pilot evaluates them once per job, where
the job arguments and the site's system values are known; the matchmaker evaluates those in
requirements at submit time. `evaluate` turns one string into its value, `evaluate_tree` a whole
nested structure, `parse` checks the syntax without evaluating anything, and `references` /
`functions` say statically what a string uses, so that a submission naming an unknown steering
parameter is refused before any job runs. `$eval` is arithmetic through a whitelisted walk of
Python's `ast`, never Python's `eval`. docs/expressions.md is the reference for users.
"""

from __future__ import annotations

import ast
import copy
import difflib
import functools
import hashlib
import json
import math
import operator
import re
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Callable, NoReturn, Union

from floe.config.schema import counted

MAX_DEPTH = 32
"""How deeply calls, lists and steering parameters may nest inside one another."""
MAX_INT_BITS = 4096
"""The largest whole number `$eval` computes or accepts, in bits."""
MAX_TEXT_LENGTH = 131072
"""The longest string an expression may produce: the longest single argument Linux accepts."""
MAX_EVAL_LENGTH = 4096
"""The longest code inside one `$eval(...)`, not counting the values substituted into it."""
MAX_EVAL_NESTING = 100
"""How deeply the operations inside one `$eval(...)` may nest."""
MAX_FORMAT_WIDTH = 1024
"""The largest width or precision a `$sprintf` format may ask for."""

FUNCTIONS = ("steering", "args", "system", "eval", "sprintf", "choice")
_NAMED = ("steering", "args", "system")

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INT_RE = re.compile(r"[-+]?\d+\Z")
_FLOAT_RE = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?\Z")
_WORDS = {"true": True, "false": False, "null": None}
_FORMAT_SPEC_RE = re.compile(
    r"%(?:\([^)]*\))?[#0\- +]*(?P<width>\*|\d+)?(?:\.(?P<precision>\*|\d*))?[hlL]?."
)


class _Unknown:
    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN: Any = _Unknown()
"""A value not known where an expression is checked, only where its job runs: give it as the
value of an argument (the attempt, at submit time), or as the whole `system` scope (the site's
values), and `evaluate` raises `NotKnownYet` for an expression that needs it."""


class NotKnownYet(Exception):
    """The expression needs a value given as UNKNOWN, or what `$choice` picks while the dataset
    is: it cannot be evaluated yet, which is no error."""


class ExpressionError(ValueError):
    """An expression that cannot be parsed or evaluated; the message names the expression."""

    def __init__(self, message: str, *, expression: str = "", position: int | None = None):
        super().__init__(message)
        self.expression = expression
        self.position = position


@dataclass(frozen=True)
class Text:
    """Literal text: between calls, in an unquoted argument, or the code of `$eval`."""

    value: str


@dataclass(frozen=True)
class Quoted:
    """A quoted argument, "..." or '...': always a string, never scanned for expressions."""

    value: str


@dataclass(frozen=True)
class ListLiteral:
    """A JSON-style list argument, `[1, 2, "three", $args(job)]`."""

    items: tuple[Node, ...]


@dataclass(frozen=True)
class Template:
    """Text with calls embedded: a whole string, an unquoted argument, or the code of `$eval`."""

    parts: tuple[Text | Call, ...]


@dataclass(frozen=True)
class Call:
    """One `$function(arguments)[index]...`.

    `source` is the call as written without its indices (what `$choice` hashes, so that
    `$choice(...)[0]` and `$choice(...)[1]` pick from the same row); `text` includes the indices
    and is what error messages name.
    """

    function: str
    args: tuple[Node, ...]
    indices: tuple[Node, ...]
    source: str
    text: str
    position: int


Node = Union[Text, Quoted, ListLiteral, Template, Call]


@functools.lru_cache(maxsize=4096)
def parse(text: str) -> Template:
    """The syntax tree of `text`; raises ExpressionError naming the text and the position.

    Checks balance of parentheses, brackets and quotes, the function names, the number of
    arguments and, for `$eval`, that the code is arithmetic only.
    """
    if not isinstance(text, str):
        raise TypeError(f"expressions are strings, got {type(text).__name__}")
    return _Parser(text).template("")


def evaluate(
    text: str,
    *,
    steering: Mapping[str, Any] | None = None,
    args: Mapping[str, Any] | None = None,
    system: Mapping[str, Any] | None = None,
) -> Any:
    """The value of `text`, typed when the whole text is one expression, else a string.

    Text without `$` (and anything that is not a string) comes back unchanged. Where a scope
    holds UNKNOWN (see there), an expression that needs it raises NotKnownYet once the rest of
    the text has been evaluated (so that its errors still show).
    """
    if not isinstance(text, str) or "$" not in text:
        return text
    return _Evaluator(steering, args, system).text(text)


def evaluate_tree(
    value: Any,
    *,
    steering: Mapping[str, Any] | None = None,
    args: Mapping[str, Any] | None = None,
    system: Mapping[str, Any] | None = None,
) -> Any:
    """A copy of `value` with every string inside its lists and dict values evaluated."""
    return _Evaluator(steering, args, system).tree(value)


def references(text: str) -> set[tuple[str, str]]:
    """The (function, name) pairs that `text` names literally: ("steering", "seed") and such."""
    found = set()
    for call in _calls(parse(text)):
        if call.function in _NAMED:
            name = call.args[0]
            if isinstance(name, Quoted):
                found.add((call.function, name.value))
            elif isinstance(name, Template) and all(isinstance(p, Text) for p in name.parts):
                found.add((call.function, "".join(p.value for p in name.parts)))
    return found


def functions(text: str) -> set[str]:
    """The names of the functions that `text` calls, e.g. {"eval", "args"}."""
    return {call.function for call in _calls(parse(text))}


def _calls(node: Node) -> Iterator[Call]:
    if isinstance(node, Template):
        for part in node.parts:
            yield from _calls(part)
    elif isinstance(node, ListLiteral):
        for item in node.items:
            yield from _calls(item)
    elif isinstance(node, Call):
        yield node
        for child in node.args + node.indices:
            yield from _calls(child)


# ---------------------------------------------------------------- parsing


class _Parser:
    """Recursive descent over one string; `pos` is where it reads next."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.depth = 0

    def fail(self, problem: str, position: int) -> NoReturn:
        raise ExpressionError(
            f"{_shortened(self.text)}: {problem} (at position {position})",
            expression=self.text,
            position=position,
        )

    def peek(self) -> str:
        return self.text[self.pos : self.pos + 1]

    def skip_space(self) -> None:
        while self.peek().isspace():
            self.pos += 1

    def enter(self, position: int) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            self.fail(f"expressions nest deeper than {MAX_DEPTH} levels", position)

    def template(self, stops: str) -> Template:
        """Text up to the end, or (inside an argument) up to one of `stops` outside parentheses."""
        parts: list[Text | Call] = []
        literal: list[str] = []
        depth = 0
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char == "$":
                call = self.dollar(literal)
                if call is not None:
                    _flush(parts, literal)
                    parts.append(call)
                continue
            if stops:
                if char in stops and depth == 0:
                    break
                if char in "\"'":
                    self.fail("a quote inside an unquoted argument; quote the whole argument",
                              self.pos)
                if char == "(":
                    depth += 1
                elif char == ")" and depth:
                    depth -= 1
            literal.append(char)
            self.pos += 1
        _flush(parts, literal)
        return Template(tuple(parts))

    def dollar(self, literal: list[str]) -> Call | None:
        """At a `$`: a call, or `$$` and shell variables (`$HOME`, `${X}`, `$1`) kept as text."""
        start = self.pos
        if self.text.startswith("$$", start):
            literal.append("$")
            self.pos += 2
            return None
        match = _NAME_RE.match(self.text, start + 1)
        name = match.group() if match else ""
        opens = match is not None and self.text.startswith("(", match.end())
        if name in FUNCTIONS and opens:
            return self.call(name, start)
        if name in FUNCTIONS:
            self.fail(f"${name} must be followed by '(', as in ${name}(...); "
                      f"write $${name} for the literal text", start)
        if opens:
            close = difflib.get_close_matches(name, FUNCTIONS, n=1)
            hint = f"did you mean ${close[0]}? " if close else ""
            known = ", ".join(f"${f}" for f in FUNCTIONS)
            self.fail(f"unknown function ${name} ({hint}the functions are {known}; "
                      f"write $$ for a literal $)", start)
        literal.append("$")
        self.pos += 1
        return None

    def call(self, name: str, start: int) -> Call:
        self.enter(start)
        self.pos = start + len(name) + 2
        if name == "eval":
            args: tuple[Node, ...] = (self.code(start),)
        else:
            args = self.arguments(name, start)
        source = self.text[start : self.pos]
        indices = []
        while self.peek() == "[":
            opened = self.pos
            self.pos += 1
            indices.append(self.argument("]", "missing ']' to close the index", opened))
            self.pos += 1
        self.depth -= 1
        call = Call(name, args, tuple(indices), source, self.text[start : self.pos], start)
        self.check_arguments(call)
        return call

    def arguments(self, name: str, start: int) -> tuple[Node, ...]:
        self.skip_space()
        if self.peek() == ")":
            self.pos += 1
            return ()
        args = []
        while True:
            args.append(self.argument(",)", f"missing ')' to close ${name}(", start))
            self.pos += 1
            if self.text[self.pos - 1] == ")":
                return tuple(args)

    def argument(self, stops: str, unclosed: str, opened: int) -> Node:
        """One argument, list item or index; leaves `pos` on the stop character after it."""
        self.skip_space()
        start = self.pos
        node: Node
        if self.peek() in ("'", '"'):
            node = Quoted(self.quoted())
        elif self.peek() == "[":
            node = self.list_literal()
        else:
            node = _trimmed(self.template(stops))
        self.skip_space()
        if not self.peek():
            self.fail(unclosed, opened)
        if self.peek() not in stops:
            self.fail("unexpected text after a quoted string or list; "
                      "put a comma between arguments", self.pos)
        if node == Template(()):
            self.fail("an empty argument", start)
        return node

    def list_literal(self) -> ListLiteral:
        start = self.pos
        self.enter(start)
        self.pos += 1
        self.skip_space()
        items = []
        if self.peek() == "]":
            self.pos += 1
        else:
            while True:
                items.append(self.argument(",]", "missing ']' to close the list", start))
                self.pos += 1
                if self.text[self.pos - 1] == "]":
                    break
        self.depth -= 1
        return ListLiteral(tuple(items))

    def quoted(self) -> str:
        """A quoted string; only \\", \\' and \\\\ are escapes, other backslashes stay."""
        quote = self.text[self.pos]
        start = self.pos
        self.pos += 1
        chars = []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            following = self.text[self.pos + 1 : self.pos + 2]
            if char == "\\" and following and following in "\\\"'":
                chars.append(following)
                self.pos += 2
                continue
            self.pos += 1
            if char == quote:
                return "".join(chars)
            chars.append(char)
        self.fail(f"unterminated string: missing the closing {quote}", start)

    def code(self, start: int) -> Template:
        """The code of `$eval(...)`: raw text up to the matching ')', with calls inside it."""
        parts: list[Text | Call] = []
        literal: list[str] = []
        depth = 0
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char in "\"'":
                end = self.python_string_end()
                literal.append(self.text[self.pos : end])
                self.pos = end
                continue
            if char == "$":
                call = self.dollar(literal)
                if call is not None:
                    _flush(parts, literal)
                    parts.append(call)
                continue
            self.pos += 1
            if char == ")" and depth == 0:
                _flush(parts, literal)
                template = Template(tuple(parts))
                self.check_code(template, start)
                return template
            if char == "(":
                depth += 1
            elif char == ")":
                depth -= 1
            literal.append(char)
        self.fail("missing ')' to close $eval(", start)

    def python_string_end(self) -> int:
        quote = self.text[self.pos]
        index = self.pos + 1
        while index < len(self.text):
            if self.text[index] == "\\":
                index += 2
                continue
            if self.text[index] == quote:
                return index + 1
            index += 1
        self.fail(f"unterminated string: missing the closing {quote}", self.pos)

    def check_code(self, template: Template, start: int) -> None:
        code = [part.value for part in template.parts if isinstance(part, Text)]
        if len(code) == len(template.parts) and not "".join(code).strip():
            self.fail("$eval needs an expression, as in $eval(1 + 2)", start)
        if sum(len(piece) for piece in code) > MAX_EVAL_LENGTH:
            self.fail(f"the code of $eval is longer than {MAX_EVAL_LENGTH} characters", start)
        # Calls stand in as a number: the whitelist is about the shape of the code, and the
        # values are checked again when they are known.
        shape = "".join(p.value if isinstance(p, Text) else "(0)" for p in template.parts)
        try:
            _compile_code(shape)
        except _Refused as refused:
            self.fail(f"$eval: {refused}", start)

    def check_arguments(self, call: Call) -> None:
        name, count = call.function, len(call.args)
        if name in _NAMED:
            if count != 1:
                self.fail(f"${name} takes one name, as in ${name}(name); "
                          f"got {counted(count, 'argument')}", call.position)
            if isinstance(call.args[0], ListLiteral):
                self.fail(f"${name} takes a name, not a list", call.position)
        elif name == "sprintf":
            if count == 0:
                self.fail('$sprintf needs a format, as in $sprintf("%06d", $args(job))',
                          call.position)
            first = call.args[0]
            problem = _format_problem(first.value) if isinstance(first, Quoted) else None
            if problem:
                self.fail(f"$sprintf: {problem}", call.position)
        elif name == "choice" and count == 0:
            self.fail("$choice needs a list or several values, as in $choice(1, 2, 3)",
                      call.position)


def _flush(parts: list[Text | Call], literal: list[str]) -> None:
    if literal:
        parts.append(Text("".join(literal)))
        literal.clear()


def _trimmed(template: Template) -> Template:
    """An unquoted argument without the spaces after it (those before it were skipped)."""
    parts = list(template.parts)
    if parts and isinstance(parts[-1], Text):
        tail = parts[-1].value.rstrip()
        parts[-1:] = [Text(tail)] if tail else []
    return Template(tuple(parts))


def _shortened(text: str) -> str:
    """The text for a message: long $eval code would bury the problem."""
    return text if len(text) <= 200 else text[:200] + "..."


def _format_problem(fmt: str) -> str | None:
    """Why a printf format is refused: widths that would allocate without bound."""
    for spec in _FORMAT_SPEC_RE.finditer(fmt):
        for field in ("width", "precision"):
            size = spec.group(field)
            if size == "*":
                return f'write the {field} into the format instead of "*" ("{spec.group()}")'
            if size and int(size) > MAX_FORMAT_WIDTH:
                return (f'the {field} in "{spec.group()}" is larger than {MAX_FORMAT_WIDTH}')
    return None


# ---------------------------------------------------------------- $eval arithmetic


class _Refused(Exception):
    """Why `$eval` will not compute something; becomes an ExpressionError naming the call."""


_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[Any], Any]] = {
    ast.UAdd: operator.pos, ast.USub: operator.neg, ast.Not: operator.not_,
}
_COMPARE: dict[type, Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt,
    ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
}
_SYMBOLS = {
    ast.LShift: "<<", ast.RShift: ">>", ast.BitOr: "|", ast.BitXor: "^", ast.BitAnd: "&",
    ast.MatMult: "@", ast.Invert: "~", ast.Is: "is", ast.IsNot: "is not", ast.In: "in",
    ast.NotIn: "not in",
}
_REFUSED_NODES = (
    (ast.Name, "names are not allowed; use $steering(name) or $args(name) for values"),
    (ast.Call, "function calls are not allowed"),
    (ast.Attribute, "attribute access is not allowed"),
    (ast.Subscript, "subscripts are not allowed; index outside, as in $steering(name)[0]"),
    (ast.Lambda, "lambda is not allowed"),
    ((ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp),
     "comprehensions are not allowed"),
    ((ast.List, ast.Tuple, ast.Set, ast.Dict),
     "lists, tuples, sets and dicts are not allowed (a comma makes a tuple)"),
    (ast.JoinedStr, "f-strings are not allowed"),
)


def _compile_code(code: str) -> ast.expr:
    """The checked syntax tree of `$eval` code, or _Refused saying what is not allowed."""
    try:
        # Python 3.12+ warns about odd escapes in string literals; a pilot's log is no place for
        # warnings about a user's expression, and the same code must mean the same everywhere.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(code.strip(), mode="eval")
    except SyntaxError as err:
        raise _Refused(f"not an arithmetic expression ({err.msg})") from None
    except (RecursionError, MemoryError, ValueError):
        raise _Refused("the expression is too complex") from None
    for node in ast.walk(tree):
        problem = _refusal(node)
        if problem:
            raise _Refused(problem)
    if _nesting(tree.body) > MAX_EVAL_NESTING:
        raise _Refused(f"operations nest deeper than {MAX_EVAL_NESTING} levels")
    return tree.body


def _refusal(node: ast.AST) -> str | None:
    """Why one node of `$eval` code is not allowed, or None; operators are checked via parents."""
    if isinstance(node, ast.Constant):
        value = node.value
        if value is None or isinstance(value, (bool, int, float, str)):
            return None
        return f"{type(value).__name__} constants are not allowed"
    if isinstance(node, ast.BinOp):
        return _operator_refusal(node.op, _BINARY)
    if isinstance(node, ast.UnaryOp):
        return _operator_refusal(node.op, _UNARY)
    if isinstance(node, ast.Compare):
        for op in node.ops:
            problem = _operator_refusal(op, _COMPARE)
            if problem:
                return problem
        return None
    if isinstance(node, (ast.BoolOp, ast.IfExp)):
        return None
    for kinds, problem in _REFUSED_NODES:
        if isinstance(node, kinds):
            return problem
    if isinstance(node, ast.expr):
        return f"{type(node).__name__} is not allowed"
    return None


def _operator_refusal(op: ast.AST, allowed: Mapping[type, Any]) -> str | None:
    if type(op) in allowed:
        return None
    symbol = _SYMBOLS.get(type(op), type(op).__name__)
    return f"the operator {symbol} is not allowed"


def _nesting(root: ast.AST) -> int:
    deepest = 0
    pending = [(root, 1)]
    while pending:
        node, depth = pending.pop()
        deepest = max(deepest, depth)
        pending.extend((child, depth + 1) for child in ast.iter_child_nodes(node)
                       if isinstance(child, ast.expr))
    return deepest


def _compute(node: ast.expr) -> Any:
    """The value of checked `$eval` code; every intermediate result is size-checked."""
    if isinstance(node, ast.Constant):
        return _checked(node.value)
    if isinstance(node, ast.UnaryOp):
        return _checked(_UNARY[type(node.op)](_compute(node.operand)))
    if isinstance(node, ast.BinOp):
        return _checked(_binary(node.op, _compute(node.left), _compute(node.right)))
    if isinstance(node, ast.BoolOp):
        stop_when = not isinstance(node.op, ast.And)
        value = None
        for operand in node.values:
            value = _compute(operand)
            if bool(value) == stop_when:
                return value
        return value
    if isinstance(node, ast.Compare):
        left = _compute(node.left)
        for op, comparator in zip(node.ops, node.comparators):
            right = _compute(comparator)
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.IfExp):
        return _compute(node.body) if _compute(node.test) else _compute(node.orelse)
    # _compile_code refuses such nodes before this runs; refusing here too means a node that the
    # whitelist check ever misses still cannot be computed.
    raise _Refused(_refusal(node) or f"{type(node).__name__} is not allowed")


def _binary(op: ast.operator, left: Any, right: Any) -> Any:
    if isinstance(op, ast.Mult) and (isinstance(left, str) or isinstance(right, str)):
        raise _Refused("multiplying strings is not allowed")
    if isinstance(op, ast.Mod) and isinstance(left, str):
        raise _Refused('formatting strings with % is not allowed; use $sprintf("...", ...)')
    if (isinstance(op, ast.Pow) and isinstance(left, int) and isinstance(right, int)
            and right > 0 and (abs(left).bit_length() - 1) * right >= MAX_INT_BITS):
        raise _Refused(f"{left} ** {right} would have more than {MAX_INT_BITS} bits")
    return _BINARY[type(op)](left, right)


def _checked(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise _Refused(f"a whole number with more than {MAX_INT_BITS} bits is not allowed")
    if isinstance(value, float) and not math.isfinite(value):
        raise _Refused(f"the result {value} is not a finite number")
    if isinstance(value, complex):
        raise _Refused("the result is not a real number")
    if isinstance(value, str) and len(value) > MAX_TEXT_LENGTH:
        raise _Refused(f"a string longer than {MAX_TEXT_LENGTH} characters is not allowed")
    return value


# ---------------------------------------------------------------- evaluation


class _Evaluator:
    """Evaluates strings in one set of scopes; steering values are resolved once and cached."""

    def __init__(
        self,
        steering: Mapping[str, Any] | None,
        args: Mapping[str, Any] | None,
        system: Mapping[str, Any] | None,
    ) -> None:
        self.steering = steering if steering is not None else {}
        self.args = args
        self.system = system
        self.resolved: dict[str, Any] = {}
        self.resolving: list[str] = []
        self.depth = 0

    def tree(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.tree(item) for item in value]
        if isinstance(value, tuple):
            return tuple(self.tree(item) for item in value)
        if isinstance(value, dict):
            return {key: self.tree(item) for key, item in value.items()}
        return value

    def text(self, text: str) -> Any:
        if "$" not in text:
            return text
        try:
            template = parse(text)
        except ExpressionError as err:
            if not self.resolving:
                raise
            raise ExpressionError(f"{err}{self.where()}", expression=err.expression,
                                  position=err.position) from None
        parts = template.parts
        if len(parts) == 1 and isinstance(parts[0], Call):
            return self.call(parts[0])
        return self.joined(parts)

    def joined(self, parts: tuple[Text | Call, ...]) -> str:
        """The parts as one string; what the calls add is capped, so nesting cannot explode."""
        pieces = []
        added = 0
        unknown = False
        for part in parts:
            if isinstance(part, Text):
                pieces.append(part.value)
                continue
            try:
                piece = self.as_text(part)
            except NotKnownYet:
                unknown = True
                continue
            added += len(piece)
            if added > MAX_TEXT_LENGTH:
                self.fail(part, f"the text would grow by more than {MAX_TEXT_LENGTH} characters")
            pieces.append(piece)
        if unknown:
            raise NotKnownYet
        return "".join(pieces)

    def as_text(self, call: Call) -> str:
        """A call's value as it reads inside a longer string: JSON for all but strings."""
        value = self.call(call)
        if isinstance(value, str):
            return value
        if isinstance(value, float):
            return repr(value)
        try:
            return json.dumps(value, ensure_ascii=False)
        except (TypeError, ValueError) as err:
            self.fail(call, f"{_kind(value)} cannot be written as text ({err})")

    def where(self) -> str:
        if not self.resolving:
            return ""
        return f" (in steering parameter {' -> '.join(self.resolving)})"

    def fail(self, call: Call, problem: str) -> NoReturn:
        raise ExpressionError(f"{_shortened(call.text)}: {problem}{self.where()}",
                              expression=call.text)

    def call(self, call: Call) -> Any:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                self.fail(call, f"expressions nest deeper than {MAX_DEPTH} levels")
            value = _HANDLERS[call.function](self, call)
            for index in call.indices:
                value = self.index(call, value, self.key(index))
            return value
        finally:
            self.depth -= 1

    # One method per function, picked through _HANDLERS.

    def steering_value(self, call: Call) -> Any:
        name = self.name(call)
        if name in self.resolved:
            return copy.deepcopy(self.resolved[name])
        if name not in self.steering:
            self.fail(call, f'no steering parameter "{name}" (have: {_have(self.steering)})')
        if name in self.resolving:
            cycle = [*self.resolving[self.resolving.index(name):], name]
            raise ExpressionError(
                f"{_shortened(call.text)}: steering parameters refer to each other in a cycle: "
                f"{' -> '.join(cycle)}",
                expression=call.text,
            )
        self.resolving.append(name)
        try:
            value = self.tree(self.steering[name])
        finally:
            self.resolving.pop()
        self.resolved[name] = value
        return copy.deepcopy(value)

    def args_value(self, call: Call) -> Any:
        name = self.name(call)
        if self.args is None:
            self.fail(call, "job arguments are not known here; $args works only in values "
                            "evaluated per job (not in requirements)")
        if name not in self.args:
            self.fail(call, f'no job argument "{name}" (have: {_have(self.args)})')
        if self.args[name] is UNKNOWN:
            raise NotKnownYet
        return self.args[name]

    def system_value(self, call: Call) -> Any:
        name = self.name(call)
        if self.system is UNKNOWN:
            raise NotKnownYet
        if self.system is None:
            self.fail(call, "the site did not provide system values here; $system is known "
                            "only on the pilot, when the job runs")
        if name not in self.system:
            self.fail(call, f'the site did not provide system value "{name}" '
                            f"(have: {_have(self.system)})")
        return self.system[name]

    def eval_value(self, call: Call) -> Any:
        code = call.args[0]
        assert isinstance(code, Template)
        pieces = []
        for part in code.parts:
            if isinstance(part, Text):
                pieces.append(part.value)
            else:
                pieces.append(f"({self.python_literal(call, part)})")
        try:
            return _compute(_compile_code("".join(pieces)))
        except _Refused as refused:
            self.fail(call, str(refused))
        except (ArithmeticError, TypeError, ValueError) as err:
            self.fail(call, str(err))

    def python_literal(self, call: Call, inner: Call) -> str:
        value = self.call(inner)
        if isinstance(value, float) and not math.isfinite(value):
            self.fail(call, f"{inner.text} is {value}, not a finite number")
        if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
            self.fail(call, f"{inner.text} has more than {MAX_INT_BITS} bits")
        if value is None or isinstance(value, (bool, int, float, str)):
            return repr(value)
        self.fail(call, f"$eval works on numbers, strings and booleans; {inner.text} is "
                        f"{_kind(value)} (index it, as in {inner.text}[0])")

    def sprintf_value(self, call: Call) -> str:
        values = [self.value(arg) for arg in call.args]
        fmt = values[0]
        if not isinstance(fmt, str):
            self.fail(call, f"the format must be a string, got {_kind(fmt)}")
        problem = _format_problem(fmt)
        if problem:
            self.fail(call, problem)
        operands: Any = tuple(values[1:])
        if len(values) == 2 and isinstance(values[1], dict) and "%(" in fmt:
            operands = values[1]
        try:
            text = fmt % operands
        except (TypeError, ValueError, KeyError, OverflowError) as err:
            shown = ", ".join(_shown(v) for v in values[1:]) or "no values"
            self.fail(call, f'the format "{fmt}" does not fit {shown}: {err}')
        if len(text) > MAX_TEXT_LENGTH:
            self.fail(call, f"the text would be longer than {MAX_TEXT_LENGTH} characters")
        return text

    def choice_value(self, call: Call) -> Any:
        values = [self.value(arg) for arg in call.args]
        if len(values) == 1:
            options = values[0]
            if not isinstance(options, list):
                self.fail(call, f"needs a list or several values, got {_kind(options)}")
        else:
            options = values
        if not options:
            self.fail(call, "nothing to choose from: the list is empty")
        if self.args is not None and any(self.args.get(name) is UNKNOWN
                                         for name in ("dataset", "job")):
            raise NotKnownYet  # the pick depends on them
        return options[_stable_index(len(options), self.args, call.source)]

    # Arguments.

    def value(self, node: Node) -> Any:
        """The typed value of an argument or list item."""
        if isinstance(node, Quoted):
            return node.value
        if isinstance(node, ListLiteral):
            return [self.value(item) for item in node.items]
        assert isinstance(node, Template)
        if len(node.parts) == 1 and isinstance(node.parts[0], Call):
            return self.call(node.parts[0])
        if all(isinstance(part, Text) for part in node.parts):
            return _word("".join(part.value for part in node.parts))
        return self.joined(node.parts)

    def name(self, call: Call) -> str:
        """The name given to $steering, $args or $system: a word, a quoted string or a call."""
        node = call.args[0]
        if isinstance(node, Template) and all(isinstance(p, Text) for p in node.parts):
            return "".join(part.value for part in node.parts)
        name = self.value(node)
        if isinstance(name, bool) or not isinstance(name, (str, int)):
            self.fail(call, f"a name must be a string, got {_kind(name)}")
        return str(name)

    def key(self, node: Node) -> Any:
        """An index: a whole number, or a word / quoted string / call giving a key."""
        if isinstance(node, Template) and all(isinstance(p, Text) for p in node.parts):
            word = "".join(part.value for part in node.parts)
            return int(word) if _INT_RE.match(word) else word
        return self.value(node)

    def index(self, call: Call, value: Any, key: Any) -> Any:
        if isinstance(value, dict):
            if isinstance(key, int) and not isinstance(key, bool) and key not in value:
                key = str(key)  # JSON objects have string keys: table[0] means table["0"]
            if isinstance(key, (str, int)) and key in value:
                return value[key]
            self.fail(call, f"no key {_shown(key)} (have: {_have(value)})")
        if isinstance(value, (list, str)):
            if isinstance(key, bool) or not isinstance(key, int):
                self.fail(call, f"{_kind(value)} is indexed by whole numbers, not {_shown(key)}")
            if not -len(value) <= key < len(value):
                self.fail(call, f"index {key} is out of range for {_kind(value)} of "
                                f"{counted(len(value), 'item')}")
            return value[key]
        self.fail(call, f"cannot index {_kind(value)}")


_HANDLERS: dict[str, Callable[[_Evaluator, Call], Any]] = {
    "steering": _Evaluator.steering_value,
    "args": _Evaluator.args_value,
    "system": _Evaluator.system_value,
    "eval": _Evaluator.eval_value,
    "sprintf": _Evaluator.sprintf_value,
    "choice": _Evaluator.choice_value,
}


def _word(text: str) -> Any:
    """An unquoted argument as JSON would read it: 3, 2.5, true, null; otherwise the word."""
    if text in _WORDS:
        return _WORDS[text]
    try:
        if _INT_RE.match(text):
            return int(text)
        if _FLOAT_RE.match(text):
            return float(text)
    except ValueError:  # more digits than Python converts; keep the word
        return text
    return text


def _stable_index(count: int, args: Mapping[str, Any] | None, source: str) -> int:
    """The same index for the same dataset, job and call text on every run, on every machine."""
    args = args or {}
    seed = json.dumps([str(args.get("dataset", "")), str(args.get("job", "")), source])
    digest = hashlib.sha256(seed.encode()).digest()
    return int.from_bytes(digest[:8], "big") % count


def _have(mapping: Mapping[Any, Any]) -> str:
    return ", ".join(str(key) for key in mapping) or "none"


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "a whole number"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return f"{value!r} ({_kind(value)})"
