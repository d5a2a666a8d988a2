"""The source tree keeps the shape docs/ARCHITECTURE.md describes.

- Exceptions: every exception class under ``src/lanalyze`` is defined in an ``errors.py``
  (one per package, saying whose fault each error is), found by reading the source, so a
  module that fails to import (an optional dependency) is still checked.
"""

from __future__ import annotations

import ast
import builtins
import functools
import importlib
import re
import tokenize
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


# --- the module map -----------------------------------------------------------------------

ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"
BACKTICKED = re.compile(r"`([^`\s]+)`")


def module_map() -> str:
    """The table rows of the "## Module map" section of docs/ARCHITECTURE.md."""
    text = ARCHITECTURE.read_text()
    start = text.index("\n## Module map\n")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end > 0 else len(text)]
    return "\n".join(line for line in section.splitlines() if line.startswith("|"))


def named_in(text: str) -> set[str]:
    return {token.rstrip(",.;:") for token in BACKTICKED.findall(text)}


def unmapped_modules(names: set[str]) -> list[str]:
    """The rule: in a row of the module map's table, a module is named by its whole path
    relative to ``src/lanalyze`` in backticks (`flows/store/paths.py`; a bare `compile.py`
    names nothing), or covered by a sub-package folder listed whole with a trailing slash
    (`mail/smtp/` covers every module under it). A top-level package folder (`flows/`)
    covers only its own ``__init__.py``, and ``__init__.py`` of ``lanalyze`` is the package
    itself."""
    missing = []
    for path in source_files():
        relative = path.relative_to(SRC)
        name = relative.as_posix()
        if name in names or name == "__init__.py":
            continue
        folders = [p.as_posix() + "/" for p in relative.parents if p.as_posix() != "."]
        if path.name == "__init__.py" and folders and folders[0] in names:
            continue
        if any(folder in names for folder in folders if folder.count("/") >= 2):
            continue
        missing.append(name)
    return missing


def test_every_module_is_in_the_module_map() -> None:
    missing = unmapped_modules(named_in(module_map()))
    assert not missing, f"modules not named in the module map of docs/ARCHITECTURE.md: {missing}"


# --- stale names in docs and docstrings ---------------------------------------------------

CHECKED_DOCS = [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
"""docs/performance.md is left out: it is a dated record, and names what a measurement ran
at the time (``query/rollup_aggregate.py, now store/rollup_aggregate.py``)."""
CHECKED_DOCS = [path for path in CHECKED_DOCS if path.name != "performance.md"]
PY_PATH = re.compile(r"(?<![\w./-])((?:[\w-]+/)*[\w-]+\.py)\b")
DOTTED = re.compile(r"\blanalyze(?:\.[A-Za-z_]\w*)+")


def docstrings_and_comments(path: Path) -> str:
    """The prose of a source file: its docstrings and comments (not its string literals,
    where ``lanalyze.session`` is a salt and ``lanalyze.mail.auth.dkimpy`` a logger)."""
    source = path.read_text()
    parts = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            parts.append(ast.get_docstring(node, clean=False) or "")
    with path.open("rb") as stream:
        parts += [
            token.string
            for token in tokenize.tokenize(stream.readline)
            if token.type == tokenize.COMMENT
        ]
    return "\n".join(parts)


@functools.cache
def prose() -> dict[str, str]:
    texts = {path.relative_to(ROOT).as_posix(): path.read_text() for path in CHECKED_DOCS}
    for path in source_files():
        texts[path.relative_to(ROOT).as_posix()] = docstrings_and_comments(path)
    return texts


def python_files() -> list[str]:
    return [
        path.relative_to(ROOT).as_posix()
        for folder in ("src", "tests", "bench")
        for path in (ROOT / folder).rglob("*.py")
    ]


def path_exists(name: str, files: list[str]) -> bool:
    """A path in prose may be relative to the repository, to ``src/lanalyze`` or to the
    package the text is about (``auth/spf.py`` in the mail chapter): it must end some file."""
    return any(file == name or file.endswith("/" + name) for file in files)


def dotted_exists(name: str) -> bool:
    parts = name.split(".")
    for end in range(len(parts), 1, -1):
        try:
            value: object = importlib.import_module(".".join(parts[:end]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[end:]:
            if not hasattr(value, attribute):
                return False
            value = getattr(value, attribute)
        return True
    return False


def test_every_module_path_named_in_prose_exists() -> None:
    files = python_files()
    stale = {
        (where, name)
        for where, text in prose().items()
        for name in PY_PATH.findall(text)
        if not path_exists(name, files)
    }
    assert not stale, f"stale .py names in docs or docstrings: {sorted(stale)}"


def test_every_dotted_lanalyze_name_in_prose_exists() -> None:
    # ``lanalyze.toml`` and ``lanalyze.lock`` are files: only names whose first part after
    # ``lanalyze.`` is one of the package's modules are module references.
    top = {path.stem if path.is_file() else path.name for path in SRC.iterdir()}
    stale = {
        (where, name.rstrip("."))
        for where, text in prose().items()
        for name in DOTTED.findall(text)
        if name.split(".")[1] in top and not dotted_exists(name.rstrip("."))
    }
    assert not stale, f"stale lanalyze.* names in docs or docstrings: {sorted(stale)}"


def test_every_folder_in_the_module_map_exists() -> None:
    folders = {name for name in named_in(module_map()) if re.fullmatch(r"[\w/]+/", name)}
    stale = sorted(folder for folder in folders if not (SRC / folder).is_dir())
    assert not stale, f"folders in the module map that do not exist: {stale}"
