"""The package's import structure: no cycles between modules at import time, and every
module imports alone in a fresh interpreter (a cycle shows up only for some first import)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import guarita

PACKAGE = Path(guarita.__file__).parent


def module_names() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if "migrations" in parts:
            continue  # Alembic loads these by path, not as modules
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_time_imports(name: str, known: set[str]) -> set[str]:
    """The guarita modules ``name`` imports when it is imported (module level, not in a
    function or under ``TYPE_CHECKING``)."""
    path = PACKAGE.parent.joinpath(*name.split("."))
    source = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    package = name if path.is_dir() else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and not _is_type_checking(node):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                found.add(base)
                found.update(f"{base}.{a.name}" for a in node.names)

    visit(ast.parse(source.read_text()).body)
    return {m for m in found if m in known and m != name}


def test_no_import_cycles() -> None:
    names = module_names()
    known = set(names)
    graph = {name: import_time_imports(name, known) for name in names}
    # a package imports its parent first: count that edge too
    for name in names:
        parent = name.rpartition(".")[0]
        if parent and parent in known:
            graph[name].add(parent)
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                walk(target)
        path.pop()
        state[node] = 2

    for name in names:
        if name not in state:
            walk(name)
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.skipif(
    os.environ.get("GUARITA_TEST_MODE") == "scaleout", reason="the same in both modes: once"
)
def test_every_module_imports_alone() -> None:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}

    def try_import(name: str) -> tuple[str, int, str]:
        done = subprocess.run(
            [sys.executable, "-c", f"import {name}"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        return name, done.returncode, done.stderr[-2000:]

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(try_import, module_names()))
    failed = {name: err for name, code, err in results if code != 0}
    assert failed == {}
