"""What the JSON API's routes share: typed query parameters, 400 answers, the OpenAPI document.

Every route of ``/api/flows`` and ``/api/mail`` is declared once as an :class:`Endpoint`: its
path, a summary, a pydantic model of its query parameters (names, types, defaults, bounds,
descriptions) and the schema of its answer. The Starlette route and the route's part of
``/api/openapi.json`` (OpenAPI 3.1) are both generated from that declaration, so the document
cannot miss a route or a parameter, and a parameter is checked the way the document says.

Query-string rules, the same for every route: an empty parameter is the same as an absent one;
the last of repeated parameters wins; unknown parameters are ignored. Integers are decimal
digits with an optional sign (``int()``'s syntax, no ``1.0``).

Trust: query strings are the (authenticated) user's. A parameter that does not fit its model is
answered HTTP 400 with ``{"error": message}`` naming the parameter (a filter error also carries
``{"filter": {"message", "text", "column"}}``), counted on ``/metrics`` per route and outcome,
and logged (rate-limited per client). Echoed input is cut short. Work runs in a thread so
DuckDB and SQLite never block the event loop.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Generic, Self, TypeVar

from prometheus_client import Counter, Histogram
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    ValidationError,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from lanalyze.flows.errors import FilterError
from lanalyze.log import RateLimiter, get_logger
from lanalyze.web.errors import BadRequest

log = get_logger(__name__)
_log_limit = RateLimiter(interval=60, burst=5)

ECHO_CHARS = 40
"""How much of a refused value an error message repeats."""
SEARCH_CHARS = 200
"""Search text longer than this is cut (the index matches substrings; more is no use)."""

_INTEGER = re.compile(r"\s*[+-]?\d+\s*")


# --- parameter types ----------------------------------------------------------------------


def _integer(value: object) -> object:
    # pydantic's lax mode reads "1.0" as 1; the API always took int()'s syntax only.
    if isinstance(value, str) and not _INTEGER.fullmatch(value):
        raise PydanticCustomError("int_parsing", "not an integer")
    return value


def _flag(value: object) -> bool:
    # As before the typed models: 1, true, yes (any case) are true, anything else false.
    if isinstance(value, bool):
        return value
    return str(value).lower() in ("1", "true", "yes")


def _search_text(value: str) -> str:
    return value[:SEARCH_CHARS].strip()


def member_of(choices: Sequence[str]) -> AfterValidator:
    """Checks a value is one of ``choices`` (give the schema ``enum_of(choices)`` too)."""

    def check(value: str) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value

    return AfterValidator(check)


def enum_of(choices: Sequence[str]) -> WithJsonSchema:
    return WithJsonSchema({"type": "string", "enum": list(choices)})


def bounds(minimum: int, maximum: int | None = None) -> dict[str, Any]:
    """Document a range another layer checks in its own words (``json_schema_extra``)."""
    return {"minimum": minimum} | ({} if maximum is None else {"maximum": maximum})


INTEGER_SYNTAX = BeforeValidator(_integer)
"""Put after any bounds in an ``Annotated`` (before them pydantic documents ``ge``, not
``minimum``)."""
Integer = Annotated[int, INTEGER_SYNTAX]
"""An integer query parameter: decimal digits only."""
Flag = Annotated[bool, BeforeValidator(_flag), WithJsonSchema({"type": "boolean"})]
"""A yes/no query parameter: ``1``, ``true`` or ``yes`` (any case) is yes."""
SearchText = Annotated[str, AfterValidator(_search_text)]
"""Free text matched as a substring: cut at ``SEARCH_CHARS`` and stripped."""


class Params(BaseModel):
    """Base of a route's query parameters. Every field needs a ``description``."""

    # By alias only: `if` is the parameter, not the Python field name behind it.
    model_config = ConfigDict(extra="ignore", frozen=True)

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> Self:
        """The parameters of a query string, or :class:`BadRequest` naming the bad one."""
        values = {key: value for key, value in query.items() if value != ""}
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise BadRequest(_message(cls, exc)) from None

    @classmethod
    def lenient(cls, query: Mapping[str, str]) -> Self:
        """As :meth:`parse`, but a bad parameter takes its default (the console's pages, which
        show what they understood instead of an error). A rule across parameters still fails.
        """
        values = {key: value for key, value in query.items() if value != ""}
        while True:
            try:
                return cls.model_validate(values)
            except ValidationError as exc:
                bad = {str(e["loc"][0]) for e in exc.errors() if e.get("loc")}
                if not bad & set(values):
                    raise BadRequest(_message(cls, exc)) from None
                for name in bad:
                    values.pop(name, None)


def _shown(value: object) -> str:
    text = value if isinstance(value, str) else str(value)
    return repr(text[:ECHO_CHARS] + ("..." if len(text) > ECHO_CHARS else ""))


def _message(model: type[Params], exc: ValidationError) -> str:
    """One line naming the first bad parameter, in the words of the OpenAPI document."""
    error = exc.errors(include_url=False)[0]
    loc = error.get("loc") or ()
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if not loc:  # a rule across parameters (a model validator): its own words
        return str(ctx.get("error", error["msg"]))
    name = str(loc[0])
    schema = _parameter_schemas(model).get(name, {})
    shown = _shown(error.get("input"))
    if kind == "missing":
        examples = schema.get("examples")
        example = f" (for example {name}={examples[0]})" if examples else ""
        return f"{name} is required{example}"
    if "enum" in schema:
        return f"{name} must be one of {', '.join(map(str, schema['enum']))}, not {shown}"
    if schema.get("type") == "integer":
        low, high = schema.get("minimum"), schema.get("maximum")
        if low is not None and high is not None:
            return f"{name} must be an integer from {low} to {high}, not {shown}"
        if low is not None:
            return f"{name} must be an integer of at least {low}, not {shown}"
        return f"{name} must be an integer, not {shown}"
    if kind == "value_error":
        return f"{name}: {ctx.get('error', error['msg'])}"
    return f"{name}: {error['msg']}, not {shown}"


# --- the parameters of the OpenAPI document -------------------------------------------------


@functools.cache
def _parameter_schemas(model: type[Params]) -> dict[str, dict[str, Any]]:
    """Each query parameter's JSON schema, by its name in the query string (read-only: shared;
    cached so a flood of bad requests does not generate schemas)."""
    schema = model.model_json_schema(by_alias=True)
    out: dict[str, dict[str, Any]] = {}
    for name, generated in schema.get("properties", {}).items():
        prop = {k: v for k, v in generated.items() if k != "title"}
        # `x: T | None = None` is "optional T" in a query string: there is no null to send.
        options = [s for s in prop.pop("anyOf", ()) if s != {"type": "null"}]
        if len(options) == 1:
            prop = {**options[0], **prop}
        elif options:
            prop["anyOf"] = options
        if prop.get("default", 0) is None:
            del prop["default"]
        out[name] = prop
    return out


def query_parameters(model: type[Params]) -> list[dict[str, Any]]:
    """OpenAPI parameter objects for a model's fields."""
    required = set(model.model_json_schema(by_alias=True).get("required", ()))
    parameters = []
    for name, generated in _parameter_schemas(model).items():
        schema = dict(generated)
        description = schema.pop("description", "")
        if not description:
            raise TypeError(f"{model.__name__}: parameter {name!r} has no description")
        parameter = {"name": name, "in": "query", "description": description, "schema": schema}
        if name in required:
            parameter["required"] = True
        parameters.append(parameter)
    return parameters


# --- endpoints ------------------------------------------------------------------------------

P = TypeVar("P", bound=Params)
Job = Callable[[], Any]


@dataclass(frozen=True)
class Endpoint(Generic[P]):
    """One GET route: ``prepare`` checks the request and returns the work, run in a thread."""

    path: str
    summary: str
    params: type[P]
    response: str
    """Name of the answer's schema in the document's ``components.schemas``."""
    prepare: Callable[[Request, P], Job]
    description: str = ""

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class ApiMetrics:
    """Counters of one group of routes, labelled by the route's last path segment."""

    requests: Counter
    """Labels: the route's name and ``outcome`` (``ok``, ``bad_request``)."""
    seconds: Histogram


def error_response(exc: ValueError) -> JSONResponse:
    body: dict[str, Any] = {"error": str(exc)}
    if isinstance(exc, FilterError):
        body["filter"] = {"message": exc.message, "text": exc.text, "column": exc.column}
    return JSONResponse(body, status_code=400)


def route(
    endpoint: Endpoint[Any],
    metrics: ApiMetrics,
    work_errors: tuple[type[ValueError], ...] = (),
) -> Route:
    """The Starlette route of ``endpoint``.

    A ``ValueError`` while the request is checked is a 400; so are ``work_errors`` raised by
    the work itself (the flow reports refuse a bad dimension or window there, in the same words
    as the CLI). Anything else is a bug: 500.
    """
    name = endpoint.name

    async def handle(request: Request) -> Response:
        try:
            params = endpoint.params.parse(request.query_params)
            job = endpoint.prepare(request, params)
        except ValueError as exc:
            return _refused(request, name, metrics, exc)
        try:
            with metrics.seconds.labels(name).time():
                result = await run_in_threadpool(job)
        except work_errors as exc:
            return _refused(request, name, metrics, exc)
        metrics.requests.labels(name, "ok").inc()
        return JSONResponse(result)

    return Route(endpoint.path, handle, methods=["GET"])


def _refused(request: Request, name: str, metrics: ApiMetrics, exc: ValueError) -> Response:
    metrics.requests.labels(name, "bad_request").inc()
    client = request.client.host if request.client else "?"
    suppressed = _log_limit.allow(client)
    if suppressed is not None:
        log.info(
            "web.api_bad_request",
            extra={
                "peer": client,
                "path": request.url.path,
                "error": str(exc).splitlines()[0][:200],
                "suppressed": suppressed,
            },
        )
    return error_response(exc)


# --- the document ---------------------------------------------------------------------------

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {"type": "string", "description": "What is wrong, naming the parameter."},
        "filter": {
            "type": "object",
            "description": "A filter error: its message, the filter and the caret column.",
            "properties": {
                "message": {"type": "string"},
                "text": {"type": "string"},
                "column": {"type": "integer"},
            },
        },
    },
}


SECURITY_SCHEMES: dict[str, Any] = {
    "apiToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API token from `lanalyze web token create --user NAME`, sent as "
        "`Authorization: Bearer <token>`; it acts as that console user.",
    },
    "session": {
        "type": "apiKey",
        "in": "cookie",
        "name": "lanalyze_session",
        "description": "The console's login cookie (`__Host-lanalyze_session` over TLS).",
    },
}


def _operation(endpoint: Endpoint[Any]) -> dict[str, Any]:
    def answer(description: str, schema: str) -> dict[str, Any]:
        content = {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}
        return {"description": description, "content": content}

    operation: dict[str, Any] = {
        "operationId": endpoint.path.removeprefix("/api/").replace("/", "_"),
        "summary": endpoint.summary,
        "parameters": query_parameters(endpoint.params),
        "responses": {
            "200": answer("OK", endpoint.response),
            "400": answer("Bad parameters; `filter` details a filter error.", "Error"),
            "401": {"description": "Login required, or the API token is invalid or revoked."},
        },
    }
    if endpoint.description:
        operation["description"] = endpoint.description
    return {"get": operation}


def openapi(
    endpoints: Sequence[Endpoint[Any]], info: Mapping[str, Any], schemas: Mapping[str, Any]
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``endpoints``; ``schemas`` are their answers' schemas."""
    missing = {e.response for e in endpoints} - set(schemas)
    if missing:
        raise TypeError(f"no schema for {sorted(missing)}")
    return {
        "openapi": "3.1.0",
        "info": dict(info),
        "paths": {e.path: _operation(e) for e in endpoints},
        "components": {
            "schemas": {"Error": ERROR_SCHEMA, **schemas},
            "securitySchemes": SECURITY_SCHEMES,
        },
        "security": [{name: []} for name in SECURITY_SCHEMES],
    }
