"""The layout keeps its promises, read from the source with ``ast`` (nothing is imported):

- no module reaches into another module's private names (``from .x import _y``,
  ``from optical_memory.x import _y``, ``render._layout`` on an imported module);
- the core (``memory/``) imports none of the optional frameworks, anywhere;
- the core's modules import each other without a cycle at module top level
  (``if TYPE_CHECKING:`` blocks aside).
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Source folder -> the dotted name its files import as.
PACKAGES = {
    "memory": "optical_memory",
    "adapters": "optical_memory.adapters",
    "migrations": "optical_memory.migrations",
    "benchmarks": "benchmarks",
    "examples": "examples",
    "tests": "",  # on sys.path itself: `helpers`, `fakes`, `workers.hardening`
}
# The workers run as scripts with tests/workers on sys.path: `from hardening import …`.
SCRIPT_DIRS = {"tests/workers": ""}

FRAMEWORKS = {
    "langchain",
    "langchain_core",
    "langgraph",
    "torch",
    "transformers",
    "numpy",
    "safetensors",
    "fastapi",
}


@dataclass(frozen=True)
class Module:
    name: str  # dotted, as imported
    path: Path
    is_package: bool

    @property
    def package(self) -> str:
        return self.name if self.is_package else self.name.rpartition(".")[0]


def _dotted(prefix: str, parts: tuple[str, ...]) -> str:
    return ".".join(p for p in (prefix, *parts) if p)


def discover(repo: Path = REPO) -> dict[str, Module]:
    """Every project module under each name it is imported by."""
    modules: dict[str, Module] = {}
    for folder, prefixes in [(f, [p]) for f, p in PACKAGES.items()] + [
        (f, [p]) for f, p in SCRIPT_DIRS.items()
    ]:
        root = repo / folder
        for path in sorted(root.rglob("*.py")):
            if ".venv" in path.parts or "__pycache__" in path.parts:
                continue
            rel = path.relative_to(root).with_suffix("").parts
            is_package = rel[-1] == "__init__"
            parts = rel[:-1] if is_package else rel
            for prefix in prefixes:
                name = _dotted(prefix, parts)
                if name:
                    modules.setdefault(name, Module(name, path, is_package))
    return modules


MODULES = discover()


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _owner(name: str, modules: dict[str, Module]) -> str | None:
    """The longest project module that ``name`` (dotted) starts with, if any."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        candidate = ".".join(parts[:i])
        if candidate in modules:
            return candidate
    return None


def _is_project(name: str, modules: dict[str, Module]) -> bool:
    return _owner(name, modules) is not None or any(m.startswith(name + ".") for m in modules)


def _resolve_from(node: ast.ImportFrom, me: Module) -> str:
    """The absolute module an ``ImportFrom`` reads from."""
    if not node.level:
        return node.module or ""
    base = me.package.split(".") if me.package else []
    base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
    return ".".join([*base, *([node.module] if node.module else [])])


def _private_module_outside(target: str, me: Module) -> str | None:
    """A private module on ``target``'s path that ``me`` sits outside the package of."""
    parts = target.split(".")
    for i, part in enumerate(parts):
        if _private(part):
            package = ".".join(parts[:i])
            if not (me.name == package or me.name.startswith(package + ".")):
                return ".".join(parts[: i + 1])
    return None


def private_reaches(tree: ast.Module, me: Module, modules: dict[str, Module]) -> Iterator[str]:
    """Each place ``tree`` (module ``me``) uses a private name of another project module."""
    bound: dict[str, str] = {}  # local name -> the project module it holds
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not _is_project(alias.name, modules):
                    continue
                if hidden := _private_module_outside(alias.name, me):
                    yield f"{node.lineno}: import {alias.name} (private module {hidden})"
                if alias.asname:
                    bound[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    bound[top] = top
        elif isinstance(node, ast.ImportFrom):
            source = _resolve_from(node, me)
            if not _is_project(source, modules):
                continue
            dots = "." * node.level + (node.module or "")
            if hidden := _private_module_outside(source, me):
                yield f"{node.lineno}: from {dots} import … (private module {hidden})"
            for alias in node.names:
                full = f"{source}.{alias.name}" if source else alias.name
                if _private(alias.name) and not (
                    full in modules and me.name.startswith(source + ".")
                ):  # a package's own private submodule is its business
                    yield f"{node.lineno}: from {dots} import {alias.name}"
                if full in modules:
                    bound[alias.asname or alias.name] = full
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            held = _module_of(node.value, bound, modules)
            if held is not None and held != me.name:
                full = f"{held}.{node.attr}"
                if not (full in modules and not _private_module_outside(full, me)):
                    yield f"{node.lineno}: {ast.unparse(node)} ({held}.{node.attr})"
        elif isinstance(node, ast.Call):
            yield from _private_by_string(node, me, bound, modules)


def _module_of(node: ast.expr, bound: dict[str, str], modules: dict[str, Module]) -> str | None:
    """The project module an expression like ``render`` or ``optical_memory.aging`` names."""
    if isinstance(node, ast.Name):
        return bound.get(node.id)
    if isinstance(node, ast.Attribute):
        held = _module_of(node.value, bound, modules)
        if held is not None and f"{held}.{node.attr}" in modules:
            return f"{held}.{node.attr}"
    return None


def _private_by_string(
    call: ast.Call, me: Module, bound: dict[str, str], modules: dict[str, Module]
) -> Iterator[str]:
    """``getattr(render, "_fit")``, ``monkeypatch.setattr(aging, "_apply_in", …)`` and
    ``monkeypatch.setattr("optical_memory.aging._apply_in", …)``."""
    name = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")
    if name not in {"getattr", "setattr", "hasattr", "delattr"} or not call.args:
        return
    first = call.args[0]
    if isinstance(first, ast.Constant) and isinstance(first.value, str):
        owner, _, attr = first.value.rpartition(".")
        if _private(attr) and _owner(owner, modules) not in (None, me.name):
            yield f"{call.lineno}: {name}({first.value!r}, …)"
        return
    held = _module_of(first, bound, modules)
    if held is None or held == me.name or len(call.args) < 2:
        return
    second = call.args[1]
    if (
        isinstance(second, ast.Constant)
        and isinstance(second.value, str)
        and _private(second.value)
    ):
        yield f"{call.lineno}: {name}({ast.unparse(first)}, {second.value!r}, …)"


def _imported_names(tree: ast.Module, me: Module, modules: dict[str, Module]) -> dict[str, str]:
    """Local name -> ``module.Name`` for each class or function imported from another project
    module (``if TYPE_CHECKING:`` imports included: they type the names we follow)."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = _resolve_from(node, me)
            if source == me.name or not _is_project(source, modules):
                continue
            for alias in node.names:
                full = f"{source}.{alias.name}" if source else alias.name
                if full not in modules and alias.name != "*":
                    names[alias.asname or alias.name] = full
    return names


def _mentions(annotation: ast.expr | None, classes: dict[str, str]) -> str | None:
    """The imported project class an annotation names (``C``, ``C | None``, ``"C"``)."""
    if annotation is None:
        return None
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
        try:
            annotation = ast.parse(annotation.value, mode="eval").body
        except SyntaxError:
            return None
    for node in ast.walk(annotation):
        if isinstance(node, ast.Name) and node.id in classes:
            return classes[node.id]
    return None


def _instances(tree: ast.Module, classes: dict[str, str]) -> dict[str, str]:
    """Local name -> ``module.Class`` for names the file types or builds as a project class:
    annotated parameters and variables, ``x = C(…)``, ``with C(…) as x`` and pytest fixtures
    whose return annotation names the class (a test's parameter of that name)."""
    held: dict[str, str] = {}

    def built(value: ast.expr | None) -> str | None:
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name):
            return classes.get(value.func.id)
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.arg) and (cls := _mentions(node.annotation, classes)):
            held[node.arg] = cls
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if cls := _mentions(node.annotation, classes) or built(node.value):
                held[node.target.id] = cls
        elif isinstance(node, ast.Assign) and (cls := built(node.value)):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    held[target.id] = cls
        elif isinstance(node, ast.withitem) and isinstance(node.optional_vars, ast.Name):
            if cls := built(node.context_expr):
                held[node.optional_vars.id] = cls
        elif (  # a fixture's name stands for its value in the tests that take it
            isinstance(node, ast.FunctionDef)
            and any("fixture" in ast.unparse(d) for d in node.decorator_list)
            and (cls := _mentions(node.returns, classes))
        ):
            held[node.name] = cls
    return held


def private_member_reaches(
    tree: ast.Module, me: Module, modules: dict[str, Module]
) -> Iterator[str]:
    """Each use of a private member of a class from another project module: on the class
    (``PageRenderer._resize``) or on a name the file types or builds as one
    (``aging: Aging`` … ``aging._apply_in``; ``renderer = PageRenderer()`` … ``renderer._m``).
    A heuristic by name, file-wide: it does not follow scopes or reassignments."""
    classes = _imported_names(tree, me, modules)
    instances = _instances(tree, classes)
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and _private(node.attr)):
            continue
        if isinstance(node.value, ast.Name):
            owner = classes.get(node.value.id) or instances.get(node.value.id)
            if owner is not None:
                yield f"{node.lineno}: {ast.unparse(node)} ({owner}.{node.attr})"


def framework_imports(tree: ast.Module) -> Iterator[str]:
    """Each import of an optional framework anywhere in ``tree`` (functions included)."""
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call):
            func = node.func
            fname = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            arg = node.args[0] if node.args else None
            if fname in {"import_module", "__import__"} and isinstance(arg, ast.Constant):
                names = [str(arg.value)]
        for name in names:
            if name.split(".")[0] in FRAMEWORKS:
                yield f"{node.lineno}: {name}"


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def top_level_imports(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: not in functions, not under
    ``if TYPE_CHECKING:``."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from top_level_imports(node.body)
            yield from top_level_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody):
                yield from top_level_imports(block)
            for handler in node.handlers:
                yield from top_level_imports(handler.body)
        elif isinstance(node, ast.With | ast.ClassDef):
            yield from top_level_imports(node.body)


def import_edges(
    tree: ast.Module, me: Module, modules: dict[str, Module], *, everywhere: bool = False
) -> set[str]:
    """The project modules ``me`` needs loaded to finish loading itself; with
    ``everywhere``, every project module it imports at all (in functions, for type checkers)."""
    edges: set[str] = set()
    nodes = (
        [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]
        if everywhere
        else top_level_imports(tree.body)
    )
    for node in nodes:
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            source = _resolve_from(node, me)
            subs = [f"{source}.{a.name}" for a in node.names]
            targets = [s for s in subs if s in modules]
            if len(targets) < len(subs):
                targets.append(source)  # names defined in `source` itself
        for target in targets:
            owner = _owner(target, modules)
            if owner is not None and owner != me.name:
                edges.add(owner)
    return edges


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as a
    closed path through it, sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(_closed_path(sorted(component), graph))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def _closed_path(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest cycle through the component's first module, for a readable message."""
    start, members = component[0], set(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph.get(v, set()) & members):
            if w == start:
                return [*paths[v], start]
            if w not in paths:
                paths[w] = [*paths[v], w]
                queue.append(w)
    return component  # pragma: no cover - a component always closes


def _parse(module: Module) -> ast.Module:
    return ast.parse(module.path.read_text(encoding="utf-8"), filename=str(module.path))


def _unique_files(modules: dict[str, Module]) -> list[Module]:
    """One entry per file (a worker is known as `hardening` and `workers.hardening`)."""
    seen: dict[Path, Module] = {}
    for m in sorted(modules.values(), key=lambda m: (m.name.count("."), m.name), reverse=True):
        seen.setdefault(m.path, m)
    return sorted(seen.values(), key=lambda m: str(m.path))


Check = Callable[[ast.Module, Module, dict[str, Module]], Iterator[str]]


def _findings(check: Check, modules: list[Module]) -> list[str]:
    """``path:line: what`` for each finding of ``check`` over ``modules``, in file order."""
    found = []
    for m in modules:
        for where in check(_parse(m), m, MODULES):
            line, _, what = where.partition(": ")
            found.append((str(m.path.relative_to(REPO)), int(line), what))
    return [f"{path}:{line}: {what}" for path, line, what in sorted(found)]


def _core(modules: dict[str, Module]) -> list[Module]:
    return [m for m in _unique_files(modules) if m.path.is_relative_to(REPO / "memory")]


# -- the checks -------------------------------------------------------------------------------


def test_no_module_uses_another_modules_private_names() -> None:
    found = _findings(private_reaches, _unique_files(MODULES))
    assert not found, "private names used across modules:\n" + "\n".join(found)


def test_no_module_uses_private_members_of_another_modules_classes() -> None:
    found = _findings(private_member_reaches, _unique_files(MODULES))
    assert not found, "private members of other modules' classes used:\n" + "\n".join(found)


def test_the_core_imports_no_optional_framework() -> None:
    found = _findings(lambda tree, m, modules: framework_imports(tree), _core(MODULES))
    assert not found, "memory/ imports an optional framework:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "everywhere",
    [
        pytest.param(False, id="top-level"),
        # stricter: no module of the core needs another that needs it back, not even lazily
        # or for the type checker (manager <-> scheduler used to, through both)
        pytest.param(True, id="any-import"),
    ],
)
def test_the_core_modules_import_each_other_without_a_cycle(everywhere: bool) -> None:
    core = _core(MODULES)
    names = {m.name for m in core}
    graph = {
        m.name: import_edges(_parse(m), m, MODULES, everywhere=everywhere) & names for m in core
    }
    found = cycles(graph)
    where = "anywhere" if everywhere else "at module top level"
    assert not found, f"import cycles in memory/ {where}:\n" + "\n".join(
        " -> ".join(c) for c in found
    )


# -- the checks catch what they should (on made-up sources) ----------------------------------

FAKE = {
    name: Module(name, Path(name.replace(".", "/") + ".py"), is_package)
    for name, is_package in [
        ("optical_memory", True),
        ("optical_memory.aging", False),
        ("optical_memory.render", False),
        ("optical_memory.integrity", False),
        ("optical_memory.adapters", True),
        ("optical_memory.adapters._framing", False),
        ("optical_memory.adapters.openai", False),
        ("helpers", False),
        ("test_x", False),
    ]
}


def _reaches(source: str, me: str) -> list[str]:
    return [w.split(": ", 1)[1] for w in private_reaches(ast.parse(source), FAKE[me], FAKE)]


@pytest.mark.parametrize(
    ("source", "me"),
    [
        ("from .aging import _apply_in", "optical_memory.integrity"),
        ("from . import _secret", "optical_memory.integrity"),
        ("from optical_memory.render import _layout", "test_x"),
        ("from helpers import _png", "test_x"),
        ("from optical_memory import render\nrender._layout(1)", "test_x"),
        ("from . import aging\naging._apply_in()", "optical_memory.integrity"),
        ("import optical_memory.render as r\nr._fit", "test_x"),
        ("import optical_memory\noptical_memory.render._m", "test_x"),
        ("from optical_memory.adapters._framing import frame", "test_x"),
        ("from optical_memory import aging\nmonkeypatch.setattr(aging, '_x', 1)", "test_x"),
        ("monkeypatch.setattr('optical_memory.aging._x', 1)", "test_x"),
    ],
)
def test_a_private_reach_is_caught(source: str, me: str) -> None:
    assert _reaches(source, me)


@pytest.mark.parametrize(
    ("source", "me"),
    [
        ("from .aging import Aging, __version__", "optical_memory.integrity"),
        ("from ._framing import frame", "optical_memory.adapters.openai"),
        ("from . import _framing", "optical_memory.adapters.openai"),
        ("from os import _exit\nimport os\nos._exit", "test_x"),
        ("from optical_memory import aging\naging.__doc__\naging.Aging._p", "test_x"),
        ("mm._aging.run\nself._x", "optical_memory.aging"),
    ],
)
def test_a_public_or_foreign_use_is_not_caught(source: str, me: str) -> None:
    assert not _reaches(source, me)


@pytest.mark.parametrize(
    ("source", "caught"),
    [
        ("from .aging import Aging\ndef f(aging: Aging):\n    aging._apply_in()", True),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .aging import Aging\n"
         "def f(aging: 'Aging | None'):\n    aging._apply_in()", True),
        ("from optical_memory.render import PageRenderer as PR\nPR._resize(1)", True),
        ("from optical_memory.render import PageRenderer\nr = PageRenderer()\nr._m(3)", True),
        ("from optical_memory.render import PageRenderer\n@pytest.fixture\n"
         "def renderer() -> PageRenderer: ...\ndef test(renderer):\n    renderer._fit()", True),
        ("from .aging import Aging\ndef f(aging: Aging):\n    aging.run()\n    aging.__dict__", False),
        ("from collections import OrderedDict\nOrderedDict._x\nself._y", False),
    ],
)  # fmt: skip
def test_a_private_member_reach_is_caught(source: str, caught: bool) -> None:
    me = FAKE["optical_memory.integrity"]
    assert bool(list(private_member_reaches(ast.parse(source), me, FAKE))) is caught


def test_framework_imports_are_caught_anywhere() -> None:
    source = (
        "import numpy as np\ndef f():\n    from langchain_core.messages import AIMessage\n"
        "    importlib.import_module('torch')\nimport sqlalchemy\nfrom .x import torch\n"
    )
    assert [w.split(": ")[1] for w in framework_imports(ast.parse(source))] == [
        "numpy",
        "langchain_core.messages",
        "torch",
    ]


def test_cycles_count_top_level_imports_only() -> None:
    sources = {
        "optical_memory.aging": "from .render import PageRenderer\n",
        "optical_memory.render": (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .aging import Aging\n"
            "def f():\n    from .aging import Aging\n"
            "try:\n    from .integrity import VerifyReport\nexcept ImportError:\n    pass\n"
        ),
        "optical_memory.integrity": "from . import aging\n",
    }
    graph = {name: import_edges(ast.parse(src), FAKE[name], FAKE) for name, src in sources.items()}
    assert graph["optical_memory.render"] == {"optical_memory.integrity"}
    assert cycles(graph) == [
        [
            "optical_memory.aging",
            "optical_memory.render",
            "optical_memory.integrity",
            "optical_memory.aging",
        ]
    ]
    graph["optical_memory.integrity"] = set()
    assert cycles(graph) == []
    lazy = import_edges(
        ast.parse(sources["optical_memory.render"]),
        FAKE["optical_memory.render"],
        FAKE,
        everywhere=True,
    )
    assert lazy == {"optical_memory.aging", "optical_memory.integrity"}
