"""One TOML configuration for every component, validated before anything starts.

Each component owns its section model (``lanalyze.flows.config``, ``lanalyze.mail.config``,
``lanalyze.web.config``); this module composes them, loads the file and turns validation
failures into :class:`ConfigError` messages that name the dotted key, the file and, where the
key can be found in the text, the line.

Trust: the file is the operator's, not a peer's, but it is still validated completely: unknown
keys, wrong types and out-of-range values are errors, never silently ignored.
"""

from __future__ import annotations

import tomllib
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import tomli_w
from pydantic import AfterValidator, BaseModel, Field, ValidationError

from lanalyze.alarms.config import AlarmsConfig
from lanalyze.configbase import ListenAddress, Section, parse_listen
from lanalyze.configpath import (
    DEFAULT_CONFIG_PATHS,
    DEFAULT_DATA_DIR,
    ENV_CONFIG,
    default_config_path,
)
from lanalyze.errors import ConfigError
from lanalyze.flows.config import FlowsConfig
from lanalyze.mail.config import MailConfig
from lanalyze.mailer import MailerConfig
from lanalyze.reports.config import ReportConfig, unique_names
from lanalyze.web.config import WebConfig

__all__ = [
    "DEFAULT_CONFIG_PATHS",
    "ENV_CONFIG",
    "Config",
    "ListenAddress",
    "Section",
    "default_config_path",
    "load_config",
    "parse_listen",
]


class GeneralConfig(Section):
    data_dir: Path = Field(
        default=DEFAULT_DATA_DIR,
        description="Directory holding flows, the mail queue, mailboxes and state.",
    )
    log_format: Literal["kv", "json"] = Field(
        default="kv", description="Log line format: key=value pairs or one JSON object per line."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Lowest level that is logged."
    )
    hostname: str = Field(
        default="localhost",
        min_length=1,
        max_length=253,
        description="Our host name: SMTP greeting, Received lines, authserv-id.",
    )

    @property
    def data_path(self) -> Path:
        return self.data_dir.expanduser()


class Config(Section):
    general: GeneralConfig = Field(default_factory=GeneralConfig)
    flows: FlowsConfig = Field(default_factory=FlowsConfig)
    mail: MailConfig = Field(default_factory=MailConfig)
    web: WebConfig = Field(default_factory=WebConfig)
    alarms: AlarmsConfig = Field(default_factory=AlarmsConfig)
    mailer: MailerConfig = Field(
        default_factory=MailerConfig, description="Mail lanalyze writes: sender, relay host."
    )
    reports: Annotated[list[ReportConfig], AfterValidator(unique_names)] = Field(
        default_factory=list,
        description="Scheduled reports, one `[[reports]]` table each, mailed by `lanalyze serve`.",
    )


def find_key_line(text: str, loc: tuple[str | int, ...]) -> int | None:
    """Best-effort 1-based line of a dotted key in TOML text (tables and ``a.b =`` keys)."""
    keys = [str(part) for part in loc if isinstance(part, str)]
    if not keys:
        return None
    table: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line.startswith("["):
            name = line.strip("[]").strip()
            table = [part.strip().strip('"') for part in name.split(".")]
            if table == keys:
                return number
            continue
        key, sep, _ = line.partition("=")
        if not sep or line.startswith("#"):
            continue
        path = table + [part.strip().strip('"') for part in key.split(".")]
        if path == keys[: len(path)] and len(path) >= min(len(keys), len(table) + 1):
            return number
    return None


def _format_errors(exc: ValidationError, source: str, text: str) -> str:
    lines = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        key = ".".join(str(part) for part in loc) or "(top level)"
        where = source
        line = find_key_line(text, loc)
        if line is not None:
            where = f"{source}:{line}"
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"{where}: {key}: {message}")
    return "\n".join(lines)


def load_config(path: Path | None = None, *, required: bool = False) -> Config:
    """Load and validate ``path`` (or the default location); defaults when there is none."""
    if path is None:
        path = default_config_path()
        if path is None:
            return Config()
    else:
        required = True
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if required:
            raise ConfigError(f"{path}: no such configuration file") from None
        return Config()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_config(text, str(path))


def parse_config(text: str, source: str = "<config>") -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source, text)) from None


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def dump_config(config: Config) -> str:
    """The effective settings, defaults included, as TOML that ``load_config`` accepts.

    An empty list of tables (``[[web.users]]``, ``[[mail.users]]``, ...) is written as a
    commented example instead of ``users = []``: TOML forbids appending ``[[web.users]]``
    tables to an array already defined inline, and appending one is what the README says to do.
    """
    data = _plain(config.model_dump(mode="json"))
    examples: list[str] = []
    for key, model in _empty_table_lists(config):
        section: dict[str, Any] = data
        *parents, leaf = key.split(".")
        for part in parents:
            section = section[part]
        del section[leaf]
        examples.append(_commented_example(key, model))
    text = tomli_w.dumps(data)
    if examples:
        text += (
            "\n# Lists of tables with no entry yet: uncomment an example to add one"
            " (docs/configuration.md).\n" + "".join(examples)
        )
    return text


def _empty_table_lists(model: BaseModel, prefix: str = "") -> Iterator[tuple[str, type[BaseModel]]]:
    """Dotted keys of the empty ``list[Model]`` fields under ``model``, with the item model."""
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        nested = _model_in(field.annotation)
        if isinstance(value, BaseModel):
            yield from _empty_table_lists(value, f"{prefix}{name}.")
        elif nested is not None and nested[1] == "[]" and not value:
            yield f"{prefix}{name}", nested[0]


def _commented_example(key: str, model: type[BaseModel]) -> str:
    lines = [f"\n# [[{key}]]"]
    for name, field in model.model_fields.items():
        if field.is_required():
            value = '"..."'
        else:
            default = _plain(field.get_default(call_default_factory=True))
            if default is None:
                value = '"..."'
            else:
                value = tomli_w.dumps({"v": default}).strip()[len("v = ") :]
        note = f"  # {field.description}" if field.description else ""
        lines.append(f"# {name} = {value}{note}")
    return "\n".join(lines) + "\n"


def _model_in(annotation: Any) -> tuple[type[BaseModel], str] | None:
    """The model a field holds directly, or as list items (``[]``) or dict values (``.*``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, ""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is list and args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return args[0], "[]"
    if origin is dict and len(args) == 2:
        value = args[1]
        if isinstance(value, type) and issubclass(value, BaseModel):
            return value, ".*"
    return None


def iter_settings(
    model: type[BaseModel] = Config, prefix: str = ""
) -> Iterator[tuple[str, Any, str]]:
    """Every leaf setting as (dotted key, default, description), for docs and their test.

    Settings inside a list of tables are named ``section.list[].key``, inside a table of
    tables ``section.table.*.key``.
    """
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        nested = _model_in(field.annotation)
        if nested is not None:
            inner, suffix = nested
            if suffix:
                yield key, field.get_default(call_default_factory=True), field.description or ""
            yield from iter_settings(inner, key + suffix + ".")
            continue
        default = field.get_default(call_default_factory=True)
        yield key, default, field.description or ""
