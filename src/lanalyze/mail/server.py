"""SMTP listener shell: greets and says goodbye. (The dialogue lands in issue 5.)"""

from __future__ import annotations

import asyncio

from lanalyze.mail.config import MailConfig
from lanalyze.service import bind_socket


class MailServer:
    name = "mail"

    def __init__(self, config: MailConfig, hostname: str) -> None:
        self.config = config
        self.hostname = hostname
        self._servers: list[asyncio.Server] = []

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(f"220 {self.hostname} ESMTP lanalyze\r\n".encode())
        await writer.drain()
        writer.close()

    async def start(self) -> None:
        for index, address in enumerate(self.config.listen):
            sock = bind_socket(address, f"mail.listen[{index}]")
            self._servers.append(await asyncio.start_server(self._session, sock=sock))

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
