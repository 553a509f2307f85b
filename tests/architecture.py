"""The import rules of the tree, as a checker the suite runs (see docs/architecture.md).

Every import is found, those inside functions included, and so are modules named in
strings of a module that loads modules by name (``importlib.import_module``), such as
the CLI's table of subcommands.

The rules:
- ``agent`` (the domain and its store) imports no other package of ours, except the
  leaf modules of ``touchpoint``, and no I/O library; ``sqlite3`` only in ``agent.store``.
- An adapter's production modules (``can_signals``, ``ui_bridge``, ``cloud_sync``, not
  their ``reference``/``simulator`` tools) import of the agent only its contract modules,
  nothing of the other adapters, no tool module, and of ``touchpoint`` only its leaves;
  ``can_signals`` imports nothing of the agent.
- The top-level packages' production modules form no cycle.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

PACKAGES: Final = ("agent", "can_signals", "ui_bridge", "cloud_sync", "touchpoint")
ADAPTERS: Final = ("can_signals", "ui_bridge", "cloud_sync")
#: Modules of ``touchpoint`` that import nothing of the project: any package may use them.
LEAVES: Final = frozenset(
    {"touchpoint", "touchpoint.errors", "touchpoint.version", "touchpoint.tasks",
     "touchpoint.ratelimit"}
)  # fmt: skip
#: What the adapters may import of the agent: its contracts.
AGENT_CONTRACT: Final = frozenset(
    {"agent", "agent.ports", "agent.cards", "agent.consent", "agent.booking", "agent.events",
     "agent.documents", "agent.errors"}
)  # fmt: skip
#: Developer tools inside the packages (never imported by production modules).
TOOL_PACKAGES: Final = ("cloud_sync.reference", "ui_bridge.reference", "can_signals.simulator")
#: Libraries that do I/O, which the domain must not import.
IO_LIBRARIES: Final = frozenset(
    {"can", "cantools", "isotp", "dbus_fast", "paho", "socket", "ssl", "asyncio", "selectors",
     "subprocess", "http", "urllib", "textual", "cryptography", "threading", "concurrent",
     "sqlite3", "sqlite_utils", "yaml", "can_remote", "multiprocessing"}
)  # fmt: skip


#: The store's libraries: allowed in ``agent.store`` alone.
STORE_LIBRARIES: Final = frozenset({"sqlite3", "sqlite_utils"})


@dataclass(frozen=True, slots=True)
class Import:
    """One module importing another, and where."""

    source: str
    target: str
    line: int

    def __str__(self) -> str:
        return f"{self.source}:{self.line} imports {self.target}"


def module_name(root: Path, path: Path) -> str:
    """The dotted name of the module at ``path`` under ``root``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path) -> dict[str, Path]:
    """Every module of our packages under ``root``, by name."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            found[module_name(root, path)] = path
    return found


def imports_of(name: str, path: Path) -> Iterator[Import]:
    """What the module imports: statements anywhere in it, and modules named in strings."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    loads_by_name = False
    strings: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(name, alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            yield from _from_import(name, package, node)
        elif _names_a_loader(node):
            loads_by_name = True
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            strings.append((node.value, node.lineno))
    if loads_by_name:
        for text, line in strings:
            if text.split(".")[0] in PACKAGES and text.replace(".", "").replace("_", "").isalnum():
                yield Import(name, text, line)


def _names_a_loader(node: ast.AST) -> bool:
    """Whether ``node`` names ``importlib.import_module`` or ``__import__``."""
    loaders = ("import_module", "__import__")
    if isinstance(node, ast.Attribute):
        return node.attr in loaders
    return isinstance(node, ast.Name) and node.id in loaders


def _from_import(name: str, package: str, node: ast.ImportFrom) -> Iterator[Import]:
    if node.level:
        base = package.split(".")
        base = base[: len(base) - node.level + 1]
        target = ".".join([*base, node.module] if node.module else base)
    else:
        target = node.module or ""
    yield Import(name, target, node.lineno)
    # ``from agent import state_codec`` imports the module agent.state_codec.
    for alias in node.names:
        yield Import(name, f"{target}.{alias.name}", node.lineno)


def resolve(target: str, known: Mapping[str, Path]) -> str | None:
    """The module of ours ``target`` names (a name inside a module resolves to it)."""
    while target:
        if target in known:
            return target
        target = target.rpartition(".")[0]
    return None


def top(module: str) -> str:
    """The top-level package of a module."""
    return module.split(".", maxsplit=1)[0]


def is_tool(module: str) -> bool:
    """Whether a module is a developer tool (reference cloud and HMI, simulator)."""
    return any(module == t or module.startswith(t + ".") for t in TOOL_PACKAGES)


def is_production(module: str) -> bool:
    """Whether a module runs in the car (or is the app that composes it)."""
    return not is_tool(module)


def violations(root: Path) -> list[str]:
    """Every broken rule in the tree at ``root``, one line each."""
    known = modules(root)
    edges: list[Import] = []
    problems: list[str] = []
    for name, path in known.items():
        for imp in imports_of(name, path):
            first = top(imp.target)
            if top(name) == "agent" and first in IO_LIBRARIES:
                if not (first in STORE_LIBRARIES and name.startswith("agent.store")):
                    problems.append(f"{imp}: the domain imports an I/O library")
                continue
            target = resolve(imp.target, known)
            if target is None:
                continue
            edges.append(Import(name, target, imp.line))
    for imp in edges:
        problems.extend(_rule_problems(imp))
    problems.extend(_cycles(edges))
    return sorted(set(problems))


def _rule_problems(imp: Import) -> Iterable[str]:
    source, target = imp.source, imp.target
    src_top, dst_top = top(source), top(target)
    if src_top == dst_top or target in LEAVES:
        if is_production(source) and is_tool(target) and src_top != "touchpoint":
            yield f"{imp}: a production module imports a developer tool"
        return
    if src_top == "agent":
        yield f"{imp}: the domain imports another package"
    elif src_top in ADAPTERS and is_production(source):
        if dst_top == "agent" and src_top == "can_signals":
            yield f"{imp}: the CAN layer imports the agent"
        elif dst_top == "agent" and target not in AGENT_CONTRACT:
            yield f"{imp}: an adapter imports agent internals, not its contract"
        elif dst_top in ADAPTERS:
            yield f"{imp}: an adapter imports another adapter"
        elif dst_top == "touchpoint":
            yield f"{imp}: an adapter imports the application"
        elif is_tool(target):
            yield f"{imp}: a production module imports a developer tool"


def _cycles(edges: Iterable[Import]) -> list[str]:
    """Cycles between top-level packages (production modules only; leaves apart)."""
    graph: dict[str, set[str]] = {}
    witness: dict[tuple[str, str], Import] = {}
    for imp in edges:
        if not (is_production(imp.source) and is_production(imp.target)):
            continue
        if imp.target in LEAVES or imp.source in LEAVES:
            continue
        a, b = top(imp.source), top(imp.target)
        if a != b:
            graph.setdefault(a, set()).add(b)
            witness.setdefault((a, b), imp)
    found: list[str] = []
    for start in sorted(graph):
        path = _path(graph, start, start, [start], set())
        if path is not None:
            steps = [str(witness[(x, y)]) for x, y in itertools.pairwise(path)]
            found.append(f"cycle {' -> '.join(path)}: " + "; ".join(steps))
    return found


def _path(
    graph: Mapping[str, set[str]], node: str, goal: str, trail: list[str], seen: set[str]
) -> list[str] | None:
    for nxt in sorted(graph.get(node, ())):
        if nxt == goal:
            return [*trail, nxt]
        if nxt not in seen:
            seen.add(nxt)
            found = _path(graph, nxt, goal, [*trail, nxt], seen)
            if found is not None:
                return found
    return None


def reachable(root: Path, start: str) -> set[str]:
    """The modules of ours that ``start`` imports, directly or not (statically)."""
    known = modules(root)
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        for imp in imports_of(name, path):
            target = resolve(imp.target, known)
            if target is not None and target != name:
                graph.setdefault(name, set()).add(target)
                # Importing a module runs its package's face first.
                parent = target.rpartition(".")[0]
                while parent:
                    graph[name].add(parent)
                    parent = parent.rpartition(".")[0]
    seen = {start}
    todo = [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen
