"""The HTTP listener: console, JSON API and ``/metrics``, served by uvicorn in our event loop.

We bind the socket ourselves so a busy port is a :class:`~lanalyze.service.BindError` naming
the config key instead of uvicorn's exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from lanalyze import metrics
from lanalyze.log import get_logger
from lanalyze.service import bind_socket
from lanalyze.web.config import WebConfig

log = get_logger(__name__)


async def metrics_endpoint(request: Request) -> Response:
    return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


async def health_endpoint(request: Request) -> Response:
    return PlainTextResponse("ok\n")


def build_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/metrics", metrics_endpoint),
            Route("/healthz", health_endpoint),
        ]
    )


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling: `lanalyze serve` owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class WebServer:
    name = "web"

    def __init__(self, config: WebConfig) -> None:
        self.config = config
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None

    @property
    def address(self) -> tuple[str, int]:
        assert self._sock is not None
        host, port = self._sock.getsockname()[:2]
        return host, port

    async def start(self) -> None:
        self._sock = bind_socket(self.config.listen, "web.listen")
        config = uvicorn.Config(
            build_app(), log_config=None, access_log=False, lifespan="off", timeout_notify=5
        )
        self._server = _EmbeddedServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
                return
            await asyncio.sleep(0.01)
        log.info("web.listening", extra={"address": "{}:{}".format(*self.address)})

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
        self._server = None
        self._task = None
