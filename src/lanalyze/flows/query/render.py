"""Rendering report rows as a text table, CSV or JSON (shared by the CLI and the console)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

TOP_COLUMNS = ("bytes", "packets", "flows", "bps", "pps", "share")
"""CSV and table columns of a top report after its dimensions (the CLI and report mails)."""
LIST_COLUMNS = (
    "time_received",
    "exporter",
    "protocol",
    "src_addr",
    "src_port",
    "dst_addr",
    "dst_port",
    "flags",
    "tos",
    "in_if",
    "out_if",
    "packets",
    "bytes",
)
"""CSV and table columns of a flow list (the CLI; the API names the addresses among them)."""
SERIES_COLUMNS = ("time", "group", "bps", "pps", "fps", "bytes", "packets", "flows")
INTERFACE_COLUMNS = (
    "exporter",
    "interface",
    "name",
    "in_bps",
    "in_util_pct",
    "out_bps",
    "out_util_pct",
    "in_bytes",
    "out_bytes",
    "in_packets",
    "out_packets",
    "in_flows",
    "out_flows",
)


def human(value: float, unit: str = "", base: int = 1000) -> str:
    """``1234567`` -> ``1.2 M``: the figures people read in a table."""
    for prefix in ("", " k", " M", " G", " T", " P"):
        if abs(value) < base or prefix == " P":
            text = f"{value:.0f}" if prefix == "" else f"{value:.1f}"
            return f"{text}{prefix}{unit}".strip()
        value /= base
    raise AssertionError("unreachable")


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str], formats: dict[str, Any]) -> str:
    """A left/right-aligned text table; ``formats`` maps a column to a value formatter."""
    cells = [[str(formats.get(c, str)(row.get(c, ""))) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    numeric = [
        bool(rows) and all(isinstance(row.get(c), int | float) for row in rows) for c in columns
    ]
    lines = []
    header = [
        c.rjust(w) if n else c.ljust(w) for c, w, n in zip(columns, widths, numeric, strict=True)
    ]
    lines.append("  ".join(header).rstrip())
    for row in cells:
        line = [
            v.rjust(w) if n else v.ljust(w) for v, w, n in zip(row, widths, numeric, strict=True)
        ]
        lines.append("  ".join(line).rstrip())
    return "\n".join(lines) + "\n"


CSV_DECIMALS = 3
"""Rates and shares are averages: a thousandth is more than any reader uses, and 16 digits
of binary-float noise (``1234.5678901234567``) make a spreadsheet column unreadable."""


def csv_number(value: float) -> str:
    """A float for CSV: fixed point, at most :data:`CSV_DECIMALS` decimals, no trailing
    zeros (``1234.5``, ``0.001``, ``7``), never an exponent."""
    text = f"{value:.{CSV_DECIMALS}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def to_csv(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(
        out, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n"
    )
    writer.writeheader()
    for row in rows:
        writer.writerow({k: csv_number(v) if isinstance(v, float) else v for k, v in row.items()})
    return out.getvalue()


def to_json(value: Any) -> str:
    return json.dumps(value, indent=1)
