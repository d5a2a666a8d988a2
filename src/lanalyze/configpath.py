"""Where the configuration file is, and the data directory it names, without validating it.

Kept apart from :mod:`lanalyze.config` (pydantic, every section's model) so a report command
that a running server answers can find the server's socket without paying for the
validation: :func:`data_dir_hint` reads one key with :mod:`tomllib` and is only a hint; the
server validates the same text completely before it answers (see
:mod:`lanalyze.flows.query.reportserver`). When there is no configuration file at all, a
report command runs with the defaults kept here (:data:`DEFAULT_DATA_DIR`,
:data:`QUERY_DEFAULTS`) and never loads pydantic: the defaults need no validation.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_CONFIG = "LANALYZE_CONFIG"
DEFAULT_CONFIG_PATHS = (
    Path("/etc/lanalyze/lanalyze.toml"),
    Path("~/.config/lanalyze/lanalyze.toml"),
)
DEFAULT_DATA_DIR = Path("~/.local/share/lanalyze")
QUERY_DEFAULTS = {"threads": 2, "max_raw_bytes": 8 * 2**30}
"""``[flows.query]`` ``threads`` and ``max_raw_bytes`` by default: the section's model
(:class:`lanalyze.flows.config.QueryConfig`) takes them from here, and a report command run
without a configuration file uses them without loading that model."""


def default_config_path() -> Path | None:
    env = os.environ.get(ENV_CONFIG)
    if env:
        return Path(env)
    for candidate in DEFAULT_CONFIG_PATHS:
        path = candidate.expanduser()
        if path.exists():
            return path
    return None


def data_dir_hint(text: str | None) -> Path | None:
    """``general.data_dir`` of the configuration text (its default without one), expanded;
    ``None`` when the text is not TOML or the key is not a string (validation will say so)."""
    if text is None:
        return DEFAULT_DATA_DIR.expanduser()
    import tomllib  # here: the report engine imports this module for QUERY_DEFAULTS only

    try:
        general = tomllib.loads(text).get("general", {})
    except tomllib.TOMLDecodeError:
        return None
    value = general.get("data_dir", str(DEFAULT_DATA_DIR)) if isinstance(general, dict) else None
    return Path(value).expanduser() if isinstance(value, str) else None
