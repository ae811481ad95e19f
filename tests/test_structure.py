"""Code structure: no module under vlm_jax/ reaches into another module's private (`_name`) names;
what is shared is public. Also checks that the checker itself catches each form of access."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "vlm_jax"


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _imported_module(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module name of `from ... import`, relative imports resolved against `module`."""
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def private_accesses(source: str, module: str = "m", is_package: bool = False) -> list[str]:
    """'line: what' for each import of a private name or module, and each `x._name` where `x` is a
    name bound by an import (a module, or a class or function of another module)."""
    tree = ast.parse(source)
    found, imported = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if any(_private(p) for p in alias.name.split(".")):
                    found.append(f"{node.lineno}: import {alias.name}")
                imported.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            source_module = _imported_module(node, module, is_package)
            if any(_private(p) for p in source_module.split(".")):
                found.append(f"{node.lineno}: from {source_module} import ...")
            for alias in node.names:
                if _private(alias.name):
                    found.append(f"{node.lineno}: from {source_module} import {alias.name}")
                imported.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in imported:
                found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        is_package = rel.name == "__init__"
        yield path, ".".join(rel.parts[:-1] if is_package else rel.parts), is_package


def test_checker_catches_each_form():
    src = """
import numpy as np
from vlm_jax.data import pipeline as pipe
from vlm_jax.data.pipeline import _visual_order, Pipeline
from vlm_jax.data._impl import helper
import jax._src.core
from . import _sibling
from .sources import count_visuals


def _own(x):
    return x._cache + np.__version__


def f(it):
    from vlm_jax.data import sources
    return pipe._helper(it), sources._count_visuals(it), Pipeline._state, jax._src, _own(it), it._buf
"""
    found = private_accesses(src, "vlm_jax.data.mod")
    assert sorted(found) == sorted([
        "4: from vlm_jax.data.pipeline import _visual_order",
        "5: from vlm_jax.data._impl import ...",
        "6: import jax._src.core",
        "7: from vlm_jax.data import _sibling",
        "17: pipe._helper",
        "17: sources._count_visuals",
        "17: Pipeline._state",
        "17: jax._src",
    ]), found
    # Relative imports resolve against the package for an __init__ module.
    found = private_accesses("from ._x import y\n", "vlm_jax.data", is_package=True)
    assert found == ["1: from vlm_jax.data._x import ..."], found


@pytest.mark.parametrize("path, module, is_package", [pytest.param(*m, id=m[1]) for m in _modules()])
def test_no_private_names_across_modules(path, module, is_package):
    found = private_accesses(path.read_text(), module, is_package)
    assert not found, f"{module} uses private names of other modules (make them public where shared):\n  " + \
        "\n  ".join(found)


def test_test_modules_share_helpers_not_each_other():
    """Shared test code lives in helper modules (tests/helpers.py, tests/hf_oracle.py, ...): importing a
    `test_*` module from another would run (or skip) its tests' imports along with it."""
    found = []
    for path in sorted(PACKAGE.parent.joinpath("tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
                     if isinstance(node, ast.ImportFrom) else
                     [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            if any(n.startswith("tests.test_") for n in names):
                found.append(f"{path.name}:{node.lineno}")
    assert not found, f"test modules imported by other tests: {found}"
