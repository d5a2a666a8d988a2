"""Reports on a flow directory that does not exist or holds no flows say so (issue 14)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import lanalyze_cmd

REPORTS = [
    ["top", "--by", "srcip"],
    ["series"],
    ["list"],
    ["interfaces"],
    ["status"],
]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*lanalyze_cmd(), "flows", *args], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("report", REPORTS, ids=lambda r: r[0])
def test_missing_directory_is_an_error(report: list[str], tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    result = run(*report, "--data", str(missing))
    assert result.returncode == 1, result
    assert f"{missing} (--data) does not exist" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("report", REPORTS, ids=lambda r: r[0])
def test_empty_store_says_it_holds_no_flows(report: list[str], tmp_path: Path) -> None:
    (tmp_path / "flows" / "raw").mkdir(parents=True)
    result = run(*report, "--data", str(tmp_path), "--format", "json")
    assert result.returncode == 0, result
    assert f"{tmp_path / 'flows'} holds no flows" in result.stderr
    assert result.stdout.strip()  # still the (empty) JSON document for scripts
