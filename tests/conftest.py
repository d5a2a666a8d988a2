"""Shared fixtures: free ports, a temporary config and data directory, the lanalyze binary."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpus" / "netflow"
ARTIFACTS = ROOT / "test-artifacts"


def lanalyze_cmd() -> list[str]:
    """The installed console script, so tests run what users run."""
    exe = shutil.which("lanalyze", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "lanalyze"]


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_tool(name: str) -> str:
    """Path of a Debian tool that `make test` installs; a missing one fails loudly in CI."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed: `make test` should have installed it")
        pytest.skip(f"{name} not installed (run `make test` to install it)")
    return path


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def corpus() -> Iterator[Path]:
    """The shared capture corpus beside the clone; CI lays it there, so it is a failure there."""
    if not CORPUS.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{CORPUS} is absent: CI lays ../shared beside the clone")
        pytest.skip(f"{CORPUS} is absent")
    yield CORPUS


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask, under which a file created without an explicit mode is world-readable."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def modes(root: Path) -> dict[str, int]:
    """Relative path -> permission bits of ``root`` and everything under it (dotfiles too)."""
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory, name)
            found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


# The ClickHouse cluster fixtures (issue 17), imported last: tests/clickhouse.py uses the
# helpers above.
from tests.clickhouse import clickhouse_cluster, clickhouse_db  # noqa: E402, F401
