"""Every setting in the code is documented in docs/configuration.md, and nothing stale is."""

from __future__ import annotations

import re

from lanalyze.config import iter_settings
from tests.conftest import ROOT

DOC = ROOT / "docs" / "configuration.md"


def documented_keys() -> set[str]:
    return set(re.findall(r"^\|\s*`([a-z_][a-z0-9_.*\[\]]*)`\s*\|", DOC.read_text(), re.M))


def test_every_setting_is_documented() -> None:
    missing = [key for key, _, _ in iter_settings() if key not in documented_keys()]
    assert not missing, f"settings missing from docs/configuration.md: {missing}"


def test_no_stale_settings_documented() -> None:
    known = {key for key, _, _ in iter_settings()}
    stale = sorted(documented_keys() - known)
    assert not stale, f"docs/configuration.md documents settings that do not exist: {stale}"


def test_every_setting_has_a_description() -> None:
    bare = [key for key, _, description in iter_settings() if not description]
    assert not bare, f"settings without a description: {bare}"
