"""Flow collector shell: binds the UDP listeners. (Receive/decode/store land in issue 3.)"""

from __future__ import annotations

import socket

from lanalyze.flows.config import FlowsConfig
from lanalyze.log import get_logger
from lanalyze.service import bind_socket

log = get_logger(__name__)


class FlowCollector:
    name = "flows"

    def __init__(self, config: FlowsConfig) -> None:
        self.config = config
        self._socks: list[socket.socket] = []

    async def start(self) -> None:
        for index, address in enumerate(self.config.listen):
            sock = bind_socket(address, f"flows.listen[{index}]", socket.SOCK_DGRAM)
            self._socks.append(sock)
            log.info("flows.listening", extra={"address": address})

    async def stop(self) -> None:
        for sock in self._socks:
            sock.close()
        self._socks.clear()
