"""Jinja2 environment of the console: autoescaped templates and the number formats they use.

Every value reaching a template is escaped (``autoescape=True``); nothing is marked safe
except JSON that :func:`json_script` serialises for a ``<script type="application/json">``
element, with ``<``, ``>`` and ``&`` escaped so it cannot close the element.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import HTMLResponse

TEMPLATES = Path(__file__).resolve().parent / "templates"

_UNITS = ("", "k", "M", "G", "T", "P", "E")


def human(value: float | int | None, unit: str = "", base: float = 1000.0) -> str:
    """``1234567`` -> ``1.23 M``: three significant digits, SI prefixes."""
    if value is None:
        return "–"
    number = float(value)
    index = 0
    while abs(number) >= base and index < len(_UNITS) - 1:
        number /= base
        index += 1
    if index == 0:
        text = f"{number:,.0f}" if number == int(number) else f"{number:.3g}"
    else:
        text = f"{number:.3g}" if abs(number) >= 1 else f"{number:.2f}"
    return f"{text} {_UNITS[index]}{unit}".rstrip()


def bytes_filter(value: float | int | None) -> str:
    return human(value, "B")


def bps_filter(value: float | int | None) -> str:
    return human(value, "b/s")


def count_filter(value: float | int | None) -> str:
    return "–" if value is None else f"{int(value):,}"


def time_filter(ms: float | int | None) -> str:
    if ms is None or not ms:
        return "–"
    seconds = float(ms) / 1000
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds)) + " UTC"


def json_script(value: Any) -> Markup:
    text = json.dumps(value, separators=(",", ":"), default=str)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return Markup(text)  # noqa: S704  (escaped above for a JSON script element)


ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
    undefined=jinja2.StrictUndefined,
)
ENV.filters.update(
    bytes=bytes_filter, bps=bps_filter, count=count_filter, utc=time_filter, human=human
)
ENV.globals["json_script"] = json_script


def render(
    request: Request,
    name: str,
    context: dict[str, Any] | None = None,
    *,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    session = request.scope.get("state", {}).get("session")
    values: dict[str, Any] = {
        "request": request,
        "user": session.user if session else None,
        "csrf": session.csrf if session else "",
        "path": request.url.path,
        "query": str(request.url.query),
    }
    values.update(context or {})
    html = ENV.get_template(name).render(values)
    return HTMLResponse(html, status_code=status_code, headers=headers)
