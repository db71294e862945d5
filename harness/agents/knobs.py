"""Find train.py's numeric hyperparameters and rewrite their literals in place.

The offline agent needs to know, for the run's profile, which literal in the source actually sets each
hyperparameter, and to change that literal without touching anything else. This module does both by
reading the syntax tree, never by importing or running train.py (it is untrusted candidate code).

What counts as a knob (a "site"):
- a module-level `NAME = <number>` where NAME is UPPER_CASE and <number> is a constant expression
  (`0.04`, `-1`, `2**19`), or each number of a tuple literal (`ADAM_BETAS = (0.8, 0.95)`, named
  `ADAM_BETAS[0]`), or the branch the profile takes of a conditional (`3 if TINY else 8`), or the
  profile's entry of a per-profile dict (`{"tiny": 3, "gpu": 8}[PROFILE.name]`);
- the profile's numeric entries of a dict of per-profile dicts (`HP = {"tiny": {"depth": 3}, ...}`,
  named `HP["tiny"]["depth"]`).

Deliberate:
- Profile awareness. `if PROFILE.name == "tiny": DEPTH = 3` overrides the module-level `DEPTH = 8`
  for the tiny profile, so editing the gpu literal would be a no-op trial. Conditions that compare
  something mentioning "profile" with string constants are evaluated for the run's profile, and so are
  flags defined from them (`TINY = PROFILE.name == "tiny"`, then `if TINY:` or `3 if TINY else 8`);
  the last assignment that applies wins, as it would at run time.
- Conservatism. A name assigned under a condition we cannot decide (`if device == "cuda":`), inside a
  loop/with/try, by augmented assignment, or declared `global` in a function is not a knob: we could
  not say which literal is in effect, and a wrong guess would waste a trial.
- Exact spans. AST column offsets are UTF-8 byte offsets; they are converted to character offsets so
  a non-ASCII comment on the same line cannot shift an edit.
"""

from __future__ import annotations

import ast
import io
import itertools
import logging
import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

logger = logging.getLogger(__name__)

Number = int | float

_UPPER_NAME = re.compile(r"[A-Z][A-Z0-9_]*")
_POWER = re.compile(r"(?P<base>\d+)(?P<op>\s*\*\*\s*)(?P<exp>\d+)")
_BINOPS: dict[type[ast.operator], Callable[[Number, Number], Number]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}


@dataclass(frozen=True)
class Knob:
    """One numeric literal that sets a hyperparameter for the profile."""

    name: str  # as shown in descriptions: DEPTH, ADAM_BETAS[1], HP["tiny"]["depth"]
    key: str  # the hyperparameter's own name, upper-cased, for classifying it: DEPTH, ADAM_BETAS
    value: Number
    text: str  # the literal's source text, e.g. "2**19"
    start: int  # character offsets of the literal in the source
    end: int
    in_tuple: bool = False


def number_value(node: ast.expr) -> Number | None:
    """The value of a constant numeric expression (`0.04`, `-3`, `2**19`), or None if it is not one."""
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return value if not isinstance(value, float) or math.isfinite(value) else None
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        inner = number_value(node.operand)
        if inner is None:
            return None
        return -inner if isinstance(node.op, ast.USub) else inner
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = number_value(node.left), number_value(node.right)
        if left is None or right is None:
            return None
        if isinstance(node.op, ast.Pow) and (abs(right) > 256 or abs(left) > 2**32):
            return None  # refuse to evaluate huge powers
        try:
            result = _BINOPS[type(node.op)](left, right)
        except (ZeroDivisionError, OverflowError):
            return None
        if isinstance(result, bool) or not isinstance(result, int | float):
            return None  # e.g. a complex number from (-8) ** 0.5
        return result if isinstance(result, int) or math.isfinite(result) else None
    return None


def describe_number(value: Number) -> str:
    """How a value reads in a description: integers as is, floats to 4 significant digits."""
    if isinstance(value, int):
        return str(value)
    return repr(float(f"{value:.4g}"))


def format_number(value: Number, like: str) -> str:
    """Source text for `value`, in the style of the literal it replaces (`2**k`, `1_000`, `3e-4`)."""
    if isinstance(value, int):
        power = _POWER.fullmatch(like.strip())
        if power is not None and value > 0:
            base = int(power["base"])
            if base >= 2:
                exp = round(math.log(value, base))
                if base**exp == value:
                    return f"{power['base']}{power['op']}{exp}"
        return f"{value:_}" if "_" in like else str(value)
    if not math.isfinite(value):
        raise ValueError(f"cannot write a non-finite value ({value}) into train.py")
    if re.fullmatch(r"[-+]?[\d.]+[eE][-+]?\d+", like.strip()):
        mantissa, exponent = f"{value:.3e}".split("e")
        mantissa = mantissa.rstrip("0").rstrip(".") if "." in mantissa else mantissa
        return f"{mantissa}e{int(exponent)}"
    return describe_number(value)


def find_knobs(source: str, profile: str) -> list[Knob]:
    """The knobs in effect for `profile`, in source order. Raises SyntaxError if `source` does not parse."""
    tree = ast.parse(source)
    collector = _Collector(profile, _Positions(source))
    collector.walk(tree.body, active=True)
    if re.search(r"\bglobal\b", source):  # skip the full walk when no `global` statement can exist
        for node in ast.walk(tree):
            if isinstance(node, ast.Global):  # a function may reassign these at run time
                collector.ambiguous.update(node.names)
    knobs: list[Knob] = []
    for name, sites in collector.sites.items():
        if sites and name not in collector.ambiguous and _UPPER_NAME.fullmatch(name):
            knobs.extend(sites)
    for name, sites in collector.dict_sites.items():
        if name not in collector.ambiguous:
            knobs.extend(sites)
    return sorted(knobs, key=lambda k: k.start)


def apply_edits(source: str, edits: Sequence[tuple[Knob, str]]) -> str:
    """`source` with each knob's literal replaced by the given text (spans must not overlap)."""
    ordered = sorted(edits, key=lambda edit: edit[0].start, reverse=True)
    for (later, _), (earlier, _) in itertools.pairwise(ordered):
        if earlier.end > later.start:
            raise ValueError(f"overlapping edits: {earlier.name} and {later.name}")
    for knob, text in ordered:
        if source[knob.start : knob.end] != knob.text:
            raise ValueError(f"{knob.name}: the source changed since the knob was found")
        source = source[: knob.start] + text + source[knob.end :]
    return source


def profile_test(node: ast.expr, profile: str, flags: Mapping[str, bool] | None = None) -> bool | None:
    """Whether a condition holds for `profile`; None when it does not depend on the profile alone.

    `flags` are module globals already known to be booleans of the profile (`TINY = PROFILE.name == "tiny"`).
    """
    if isinstance(node, ast.Name) and flags and node.id in flags:
        return flags[node.id]
    if isinstance(node, ast.Constant) and isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.BoolOp):
        results = [profile_test(value, profile, flags) for value in node.values]
        if isinstance(node.op, ast.And):
            return False if False in results else (True if all(results) else None)
        return True if True in results else (False if all(r is False for r in results) else None)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        inner = profile_test(node.operand, profile, flags)
        return None if inner is None else not inner
    if not isinstance(node, ast.Compare) or len(node.ops) != 1:
        return None
    op, left, right = node.ops[0], node.left, node.comparators[0]
    if _mentions_profile(right) and isinstance(op, ast.Eq | ast.NotEq | ast.Is | ast.IsNot):
        left, right = right, left
    if not _mentions_profile(left):
        return None
    names = _string_set(right)
    if names is None:
        return None
    if isinstance(op, ast.Eq | ast.Is | ast.In):
        return profile in names
    if isinstance(op, ast.NotEq | ast.IsNot | ast.NotIn):
        return profile not in names
    return None


def _mentions_profile(node: ast.expr) -> bool:
    return not isinstance(node, ast.Constant) and "PROFILE" in ast.unparse(node).upper()


def _string_set(node: ast.expr) -> set[str] | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        items = [_string_set(elt) for elt in node.elts]
        if all(item is not None and len(item) == 1 for item in items):
            return {next(iter(item)) for item in items if item}
    return None


def _str_items(node: ast.expr) -> list[tuple[str, ast.expr]] | None:
    """(key, value) pairs of a dict literal or `dict(k=v)` call with string keys, else None."""
    if isinstance(node, ast.Dict):
        pairs = []
        for key, value in zip(node.keys, node.values, strict=True):
            if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
                return None
            pairs.append((key.value, value))
        return pairs
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
        if node.args or any(kw.arg is None for kw in node.keywords):
            return None
        return [(str(kw.arg), kw.value) for kw in node.keywords]
    return None


def _stored_names(node: ast.AST) -> Iterable[str]:
    """Module-level names a statement binds (a def binds its name; its body binds only locals)."""
    stack = [node]
    while stack:
        sub = stack.pop()
        if isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            yield sub.name
            continue
        if isinstance(sub, ast.Lambda):
            continue
        if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
            yield sub.id
        elif isinstance(sub, ast.Import | ast.ImportFrom):
            yield from ((alias.asname or alias.name).split(".")[0] for alias in sub.names)
        stack.extend(ast.iter_child_nodes(sub))


class _Positions:
    """(line, UTF-8 byte column) as the AST reports them -> character offsets into the source."""

    def __init__(self, source: str) -> None:
        self.source = source
        # newline="" splits on \n, \r\n and \r exactly as the tokenizer numbers lines
        self.lines = io.StringIO(source, newline="").readlines()
        self.starts = [0]
        for line in self.lines:
            self.starts.append(self.starts[-1] + len(line))

    def offset(self, lineno: int, col: int) -> int:
        line = self.lines[lineno - 1] if lineno <= len(self.lines) else ""
        return self.starts[lineno - 1] + len(line.encode("utf-8")[:col].decode("utf-8"))

    def span(self, node: ast.expr) -> tuple[int, int, str]:
        assert node.end_lineno is not None and node.end_col_offset is not None  # set by ast.parse
        start = self.offset(node.lineno, node.col_offset)
        end = self.offset(node.end_lineno, node.end_col_offset)
        return start, end, self.source[start:end]


class _Collector:
    """Walks the module body, tracking for each name the assignment in effect for the profile."""

    def __init__(self, profile: str, positions: _Positions) -> None:
        self.profile = profile
        self.positions = positions
        self.sites: dict[str, list[Knob] | None] = {}  # None: the assignment in effect is not a literal
        self.dict_sites: dict[str, list[Knob]] = {}
        self.flags: dict[str, bool] = {}  # TINY = PROFILE.name == "tiny"
        self.ambiguous: set[str] = set()

    def test(self, node: ast.expr) -> bool | None:
        return profile_test(node, self.profile, self.flags)

    def walk(self, body: Sequence[ast.stmt], active: bool | None) -> None:
        """`active`: True if these statements run for the profile, False if not, None if unknown."""
        for stmt in body:
            if (
                isinstance(stmt, ast.Assign)
                and len(stmt.targets) == 1
                and isinstance(stmt.targets[0], ast.Name)
            ):
                self.assign(stmt.targets[0].id, stmt.value, active)
            elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value:
                self.assign(stmt.target.id, stmt.value, active)
            elif isinstance(stmt, ast.If):
                test = self.test(stmt.test)
                body_active: bool | None
                orelse_active: bool | None
                if active is False:
                    body_active = orelse_active = False
                elif active is None or test is None:
                    body_active = orelse_active = None
                else:
                    body_active, orelse_active = test, not test
                self.walk(stmt.body, body_active)
                self.walk(stmt.orelse, orelse_active)
            elif isinstance(
                stmt,
                ast.Assign
                | ast.AugAssign
                | ast.AnnAssign
                | ast.Import
                | ast.ImportFrom
                | ast.FunctionDef
                | ast.AsyncFunctionDef
                | ast.ClassDef,
            ):
                for name in _stored_names(stmt):
                    self.assign(name, None, active)
            else:  # loops, with, try, match: whatever they bind may or may not be in effect
                for name in _stored_names(stmt):
                    self.assign(name, None, None if active is not False else False)

    def assign(self, name: str, value: ast.expr | None, active: bool | None) -> None:
        if active is False:
            return
        self.flags.pop(name, None)
        self.dict_sites.pop(name, None)
        if active is None:
            self.ambiguous.add(name)
            return
        self.sites[name] = self._literal_sites(name, value) if value is not None else None
        if value is None:
            return
        flag = (
            self.test(value) if isinstance(value, ast.Compare | ast.BoolOp | ast.UnaryOp | ast.Name) else None
        )
        if flag is not None:
            self.flags[name] = flag
        dict_sites = self._profile_dict_sites(name, value)
        if dict_sites:
            self.dict_sites[name] = dict_sites

    def resolve(self, node: ast.expr) -> ast.expr | None:
        """The sub-expression that gives the value for the profile, or None if that depends on more.

        `3 if TINY else 8` -> `3` for tiny; `{"tiny": 3, "gpu": 8}[PROFILE.name]` -> `3`.
        """
        if isinstance(node, ast.IfExp):
            test = self.test(node.test)
            return None if test is None else self.resolve(node.body if test else node.orelse)
        if isinstance(node, ast.Subscript) and _mentions_profile(node.slice):
            for key, entry in _str_items(node.value) or []:
                if key == self.profile:
                    return self.resolve(entry)
            return None
        return node

    def _knob(self, name: str, key: str, node: ast.expr, *, in_tuple: bool = False) -> Knob | None:
        resolved = self.resolve(node)
        value = number_value(resolved) if resolved is not None else None
        if resolved is None or value is None:
            return None
        start, end, text = self.positions.span(resolved)
        return Knob(
            name=name, key=key.upper(), value=value, text=text, start=start, end=end, in_tuple=in_tuple
        )

    def _literal_sites(self, name: str, value: ast.expr) -> list[Knob] | None:
        knob = self._knob(name, name, value)
        if knob is not None:
            return [knob]
        resolved = self.resolve(value)
        if isinstance(resolved, ast.Tuple):
            elements = [
                self._knob(f"{name}[{i}]", name, elt, in_tuple=True) for i, elt in enumerate(resolved.elts)
            ]
            found = [k for k in elements if k is not None]
            return found or None
        return None

    def _profile_dict_sites(self, name: str, value: ast.expr) -> list[Knob]:
        for profile_key, entry in _str_items(value) or []:
            if profile_key != self.profile:
                continue
            sites = []
            for key, item in _str_items(entry) or []:
                knob = self._knob(f'{name}["{profile_key}"]["{key}"]', key, item)
                if knob is not None:
                    sites.append(knob)
            return sites
        return []
