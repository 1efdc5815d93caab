"""Where a module can carry a small deliberate bug, and the bug itself: the mutation operators of
tests/mutants.py, applied to a fresh parse of the module's source one at a time.

Operators: flip a comparison (== and !=, < and >=, in and not in, is and is not), swap `and` and `or` (and
`&` and `|`, as Spark column conditions and set algebra use them), drop a `not` (or a `~`), drop an
`if ...: raise` guard, return None instead of a value, add or subtract one from an int constant, flip a bool
constant, remove a call statement, and drop one member of a set display or of a tuple or list that an `in`
test reads (the states a rule allows, the kinds a check accepts). They apply to the bodies of the chosen
functions (with their parameters' defaults) and to the values of the chosen module-level constants (a
transition table is behaviour too). Constants inside f-strings only word messages and are left alone.
The same source always gives the same mutants in the same order.
"""

from __future__ import annotations

import ast
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass

Parents = dict[int, tuple[ast.AST, str, int | None]]  # id(node) -> (parent, field, position in a list field)
Mutation = Callable[[ast.AST, Parents], None]

NEGATED_COMPARISON: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Lt: ast.GtE,
    ast.GtE: ast.Lt,
    ast.LtE: ast.Gt,
    ast.Gt: ast.LtE,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}


@dataclass(frozen=True)
class Scope:
    """What of one module is mutated."""

    path: str  # relative to the package root, as the report names the module
    functions: tuple[str, ...] | None = None  # qualified names (`Class.method`); None: every function
    constants: tuple[str, ...] = ()  # module-level names whose values are mutated too
    skip: tuple[str, ...] = ()  # functions left alone (they only word messages)


@dataclass(frozen=True)
class Mutant:
    scope: Scope
    index: int  # position of the mutated site in the module's deterministic site order
    line: int
    function: str  # the function, or the module-level constant, that holds the site
    description: str

    @property
    def where(self) -> str:
        return f"{self.scope.path}:{self.line}"


def _short(node: ast.AST, limit: int = 70) -> str:
    text = " ".join(ast.unparse(node).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _operand(node: ast.AST) -> str:
    """One side of a binary operator, short, in parentheses unless it is a single term."""
    text = _short(node, 45)
    simple = ast.Name | ast.Attribute | ast.Call | ast.Constant | ast.Subscript
    return text if isinstance(node, simple) else f"({text})"


def _replace(node: ast.AST, new: ast.AST, parents: Parents) -> None:
    parent, field, position = parents[id(node)]
    if position is None:
        setattr(parent, field, new)
    else:
        getattr(parent, field)[position] = new


def _parents(tree: ast.AST) -> Parents:
    found: Parents = {}
    for parent in ast.walk(tree):
        for field, value in ast.iter_fields(parent):
            if isinstance(value, list):
                for position, child in enumerate(value):
                    if isinstance(child, ast.AST):
                        found[id(child)] = (parent, field, position)
            elif isinstance(value, ast.AST):
                found[id(value)] = (parent, field, None)
    return found


def _functions(tree: ast.Module) -> Iterator[tuple[str, ast.FunctionDef]]:
    def visit(body: list[ast.stmt], prefix: str) -> Iterator[tuple[str, ast.FunctionDef]]:
        for node in body:
            if isinstance(node, ast.FunctionDef):
                yield f"{prefix}{node.name}", node
            elif isinstance(node, ast.ClassDef):
                yield from visit(node.body, f"{prefix}{node.name}.")

    yield from visit(tree.body, "")


def body_lines(source: str) -> dict[str, range]:
    """Function (qualified name) -> the lines of its body: what runs when it is called, not when the module
    is imported (the `def` line, decorators and defaults run then)."""
    return {
        name: range(function.body[0].lineno, (function.end_lineno or function.lineno) + 1)
        for name, function in _functions(ast.parse(source))
    }


def _constants(tree: ast.Module) -> Iterator[tuple[str, ast.expr]]:
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            yield node.targets[0].id, node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            yield node.target.id, node.value


def _in_fstring(node: ast.AST, parents: Parents) -> bool:
    # Constants inside f-strings only shape messages (e.g. how many problems a message lists).
    while id(node) in parents:
        node = parents[id(node)][0]
        if isinstance(node, ast.JoinedStr):
            return True
    return False


def _tested_with_in(node: ast.AST, parents: Parents) -> bool:
    """Whether the node is a tuple or list that an `in` / `not in` test looks in."""
    if not isinstance(node, ast.Tuple | ast.List):
        return False
    parent, field, position = parents.get(id(node), (None, "", None))
    if not isinstance(parent, ast.Compare) or field != "comparators" or position is None:
        return False
    return isinstance(parent.ops[position], ast.In | ast.NotIn)


def _sites(node: ast.AST, parents: Parents) -> Iterator[tuple[str, Mutation]]:
    """The mutations of one node: (description, how to apply it to the same node of a fresh parse)."""
    if isinstance(node, ast.Compare):
        for position, op in enumerate(node.ops):
            flipped = NEGATED_COMPARISON.get(type(op))
            if flipped is None:
                continue

            def flip(target: ast.AST, _: Parents, position: int = position, flipped: type = flipped) -> None:
                target.ops[position] = flipped()  # type: ignore[attr-defined]

            mutated = copy.deepcopy(node)
            flip(mutated, {})
            yield f"`{_short(node)}` -> `{_short(mutated)}`", flip
    elif isinstance(node, ast.BoolOp):
        other = ast.Or if isinstance(node.op, ast.And) else ast.And

        def swap(target: ast.AST, _: Parents, other: type = other) -> None:
            target.op = other()  # type: ignore[attr-defined]

        mutated = copy.deepcopy(node)
        swap(mutated, {})
        yield f"`{_short(node)}` -> `{_short(mutated)}`", swap
    elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitAnd | ast.BitOr):
        # Spark column conditions (`a & b`, `a | b`) and set algebra.
        other = ast.BitOr if isinstance(node.op, ast.BitAnd) else ast.BitAnd

        def swap_bits(target: ast.AST, _: Parents, other: type = other) -> None:
            target.op = other()  # type: ignore[attr-defined]

        left, right = _operand(node.left), _operand(node.right)
        symbols = {ast.BitAnd: "&", ast.BitOr: "|"}
        before, after = symbols[type(node.op)], symbols[other]
        yield f"`{left} {before} {right}` -> `{left} {after} {right}`", swap_bits
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not | ast.Invert):

        def drop_not(target: ast.AST, parents: Parents) -> None:
            _replace(target, target.operand, parents)  # type: ignore[attr-defined]

        yield f"`{_short(node)}` -> `{_short(node.operand)}`", drop_not
    elif isinstance(node, ast.If) and any(isinstance(stmt, ast.Raise) for stmt in node.body):
        if not node.orelse:

            def drop_guard(target: ast.AST, parents: Parents) -> None:
                _replace(target, ast.Pass(), parents)

            yield f"drop guard `if {_short(node.test, 60)}: raise ...`", drop_guard
    elif isinstance(node, ast.Return) and node.value is not None:
        if not (isinstance(node.value, ast.Constant) and node.value.value is None):

            def return_none(target: ast.AST, _: Parents) -> None:
                target.value = ast.Constant(None)  # type: ignore[attr-defined]

            yield f"`return {_short(node.value, 60)}` -> `return None`", return_none
    elif isinstance(node, ast.Constant) and type(node.value) is int and not _in_fstring(node, parents):
        for step in (1, -1):

            def shift(target: ast.AST, _: Parents, step: int = step) -> None:
                target.value += step  # type: ignore[attr-defined]

            yield (
                f"int constant {node.value} -> {node.value + step} in `{_short(parents[id(node)][0], 50)}`",
                shift,
            )
    elif isinstance(node, ast.Constant) and type(node.value) is bool:

        def negate(target: ast.AST, _: Parents) -> None:
            target.value = not target.value  # type: ignore[attr-defined]

        yield f"`{node.value}` -> `{not node.value}` in `{_short(parents[id(node)][0], 50)}`", negate
    elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):

        def remove_call(target: ast.AST, parents: Parents) -> None:
            _replace(target, ast.Pass(), parents)

        yield f"remove call `{_short(node.value, 60)}`", remove_call
    elif (isinstance(node, ast.Set) or _tested_with_in(node, parents)) and len(node.elts) > 1:  # type: ignore[attr-defined]
        for position, member in enumerate(node.elts):  # type: ignore[attr-defined]

            def drop_member(target: ast.AST, _: Parents, position: int = position) -> None:
                del target.elts[position]  # type: ignore[attr-defined]

            yield f"drop `{_short(member, 40)}` from `{_short(node, 60)}`", drop_member


def _postponed_annotations(tree: ast.Module) -> bool:
    return any(
        isinstance(stmt, ast.ImportFrom)
        and stmt.module == "__future__"
        and any(alias.name == "annotations" for alias in stmt.names)
        for stmt in tree.body
    )


# function or constant, line, what, how, the node of this parse
Site = tuple[str, int, str, Mutation, ast.AST]


def _enumerate(scope: Scope, source: str) -> tuple[ast.Module, Parents, list[Site]]:
    """The parsed module, its parent links and every mutation site of the scope, in a deterministic order
    (the same source always gives the same sites)."""
    tree = ast.parse(source)
    parents = _parents(tree)
    wanted = None if scope.functions is None else set(scope.functions)
    found: list[Site] = []
    seen: set[str] = set()

    # Annotations of local names are never evaluated, nor, under `from __future__ import annotations`, those
    # of nested functions: a mutant there could not change anything.
    annotated = [stmt.annotation for stmt in ast.walk(tree) if isinstance(stmt, ast.AnnAssign)]
    if _postponed_annotations(tree):
        for function in ast.walk(tree):
            if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                arguments = function.args
                every = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
                every += [arg for arg in (arguments.vararg, arguments.kwarg) if arg is not None]
                annotated += [arg.annotation for arg in every if arg.annotation is not None]
                annotated += [function.returns] if function.returns is not None else []
    annotations = {id(node) for annotation in annotated for node in ast.walk(annotation)}

    def add(name: str, nodes: list[ast.AST], line: int) -> None:
        for node in nodes:
            if id(node) in annotations:
                continue
            for description, mutation in _sites(node, parents):
                found.append((name, getattr(node, "lineno", line), description, mutation, node))

    for name, value in _constants(tree):
        if name in scope.constants:
            seen.add(name)
            add(name, list(ast.walk(value)), value.lineno)
    for name, function in _functions(tree):
        if (wanted is not None and name not in wanted) or name in scope.skip:
            continue
        seen.add(name)
        body = function.body[1:] if ast.get_docstring(function) else function.body
        nodes = [node for stmt in body for node in ast.walk(stmt)]
        # Default values of parameters are behaviour too (e.g. force=False).
        nodes.extend(node for default in function.args.defaults for node in ast.walk(default))
        nodes.extend(node for default in function.args.kw_defaults if default for node in ast.walk(default))
        add(name, nodes, function.lineno)
    missing = (wanted or set()) | set(scope.constants)
    if missing - seen:
        raise SystemExit(f"{scope.path}: nothing named {', '.join(sorted(missing - seen))} to mutate")
    return tree, parents, found


def mutants(scope: Scope, source: str) -> list[Mutant]:
    _, _, sites = _enumerate(scope, source)
    return [
        Mutant(scope, index, line, function, description)
        for index, (function, line, description, _, _) in enumerate(sites)
    ]


def mutated_source(mutant: Mutant, source: str) -> str:
    tree, parents, sites = _enumerate(mutant.scope, source)
    _, _, description, mutation, node = sites[mutant.index]
    if description != mutant.description:
        raise RuntimeError(f"{mutant.where}: the source changed while mutating ({description!r})")
    mutation(node, parents)
    return ast.unparse(ast.fix_missing_locations(tree))
