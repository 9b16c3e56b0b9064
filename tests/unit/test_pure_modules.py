"""The pure modules stay pure: they import nothing that touches the world, and call no builtin that does.

The rule, the list of pure modules and the imports they may use are pyproject.toml's
``[tool.rudder-fast]`` table, the one place to extend them. Each module's source is parsed with
``ast``: every ``import`` and ``from ... import`` anywhere in it (inside functions too, but not under
``if TYPE_CHECKING:``, which never runs) must name another pure module or an allowed one; no call of
``open``, ``print``, ``input``, ``exec``, ``eval``, ``compile`` or ``__import__``.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Any

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "rudder_fast"
CONFIG: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["rudder-fast"]
PURE: list[str] = CONFIG["pure-modules"]
ALLOWED: set[str] = set(CONFIG["pure-allowed-imports"])
EXCEPTIONS: dict[str, list[str]] = CONFIG.get("pure-import-exceptions", {})
FORBIDDEN_CALLS = frozenset({"open", "print", "input", "exec", "eval", "compile", "__import__"})


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node that can run: all of them but the bodies of ``if TYPE_CHECKING:``."""
    out: list[ast.AST] = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        out.append(node)
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))
    return out


def imported_modules(source: str) -> set[str]:
    """The absolute names of the modules ``source`` imports at run time (relative ones as
    ``rudder_fast.<name>``)."""
    names: set[str] = set()
    for node in _runtime_nodes(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # from . import x / from .x import y: a module of the package
                if node.module:
                    names.add(f"rudder_fast.{node.module}")
                else:
                    names.update(f"rudder_fast.{alias.name}" for alias in node.names)
            elif node.module:
                names.add(node.module)
    return names


def forbidden_calls(source: str) -> set[str]:
    return {
        node.func.id
        for node in _runtime_nodes(ast.parse(source))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FORBIDDEN_CALLS
    }


def disallowed(module: str, names: set[str]) -> set[str]:
    """The imports of pure module ``module`` that the rule does not allow (its listed exceptions aside)."""
    pure = {f"rudder_fast.{m}" for m in PURE}
    bad = {n for n in names if n not in ALLOWED and n not in pure and n != "rudder_fast"}
    return bad - set(EXCEPTIONS.get(module, []))


@pytest.mark.parametrize("module", PURE)
def test_a_pure_module_imports_only_pure_modules_and_allowed_ones(module: str) -> None:
    source = (PACKAGE / f"{module}.py").read_text()
    assert disallowed(module, imported_modules(source)) == set(), (
        f"rudder_fast/{module}.py is a pure module (pyproject.toml [tool.rudder-fast]): it may import "
        f"only other pure modules and {sorted(ALLOWED)}"
    )
    assert forbidden_calls(source) == set(), f"rudder_fast/{module}.py calls builtins that do I/O"


def test_every_listed_exception_is_still_needed() -> None:
    """An exception that the module no longer needs is removed from the list, so it cannot return."""
    for module, exceptions in EXCEPTIONS.items():
        assert module in PURE
        names = imported_modules((PACKAGE / f"{module}.py").read_text())
        assert set(exceptions) <= names, f"{module} no longer imports {set(exceptions) - names}"


def test_the_list_names_modules_that_exist() -> None:
    assert PURE, "no pure module listed"
    for module in PURE:
        assert (PACKAGE / f"{module}.py").is_file(), module


@pytest.mark.parametrize(
    ("source", "found"),
    [
        ("import os", {"os"}),
        ("import time as t", {"time"}),
        ("from socket import socket", {"socket"}),
        ("def f():\n    import threading", {"threading"}),
        ("from . import spool", {"rudder_fast.spool"}),
        ("from .tail import read_whole", {"rudder_fast.tail"}),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import os", {"typing"}),
        (
            "import typing\nif typing.TYPE_CHECKING:\n    import os\nelse:\n    import time",
            {"typing", "time"},
        ),
    ],
)
def test_the_check_sees_every_import_that_runs(source: str, found: set[str]) -> None:
    assert imported_modules(source) == found


def test_the_check_refuses_what_touches_the_world() -> None:
    assert disallowed("framing", {"os", "zlib", "rudder_fast.events", "rudder_fast.spool"}) == {
        "os",
        "rudder_fast.spool",
    }
    assert forbidden_calls("def f(p):\n    return open(p).read()") == {"open"}
    assert forbidden_calls("def f(x):\n    return len(x)") == set()
