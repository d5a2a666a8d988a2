"""The source tree keeps the shape docs/ARCHITECTURE.md describes.

- Exceptions: every exception class under ``src/lanalyze`` is defined in an ``errors.py``
  (one per package, saying whose fault each error is), found by reading the source, so a
  module that fails to import (an optional dependency) is still checked.
"""

from __future__ import annotations

import ast
import builtins
from pathlib import Path

from tests.conftest import ROOT

SRC = ROOT / "src" / "lanalyze"


def source_files() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def _base_name(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return ""


def exception_classes() -> dict[str, str]:
    """Class name -> module path (relative to src/lanalyze) of every exception class."""
    classes: list[tuple[str, str, set[str]]] = []
    for path in source_files():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                bases = {_base_name(base) for base in node.bases}
                classes.append((node.name, path.relative_to(SRC).as_posix(), bases))
    known = {
        name
        for name, value in vars(builtins).items()
        if isinstance(value, type) and issubclass(value, BaseException)
    }
    found: dict[str, str] = {}
    changed = True
    while changed:  # a subclass of one of ours is an exception too, wherever it is declared
        changed = False
        for name, module, bases in classes:
            if name not in found and bases & (known | set(found)):
                found[name] = module
                changed = True
    return found


def test_every_exception_is_defined_in_an_errors_module() -> None:
    found = exception_classes()
    assert "BindError" in found  # the scan sees subclasses of our own exceptions
    stray = {name: module for name, module in found.items() if Path(module).name != "errors.py"}
    assert not stray, f"exception classes outside an errors.py: {stray}"
