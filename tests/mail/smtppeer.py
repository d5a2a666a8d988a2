"""A small receiving SMTP server for the outbound tests' failure peers (asyncio, one thread).

Real MTAs (a second lanalyze, Postfix) are the peers where delivery must land; this server
plays the misbehaving ones the tests need on demand: ``mode`` is ``ok``, ``tempfail`` (451
to every RCPT), ``reject_bad`` (550 to recipients starting with
``bad``), ``drop_data`` (closes the connection in the middle of DATA), ``slow`` (waits
``delay`` seconds before each reply), ``tls_required`` (530 to MAIL before STARTTLS).
It records every message it acknowledged, with its envelope, in :attr:`received`, and in
:attr:`unconfirmed` the ones a client never followed with another command before its
connection ended (its last transaction's 250 may not have reached it: RFC 1047's window).
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Received:
    mail_from: str
    recipients: list[str]
    data: bytes
    tls: bool
    mail_line: str


@dataclass
class Peer:
    host: str
    port: int
    mode: str = "ok"
    eightbit: bool = True
    chunking: bool = False
    tls_pair: tuple[Path, Path] | None = None
    delay: float = 0.0
    received: list[Received] = field(default_factory=list)
    connections: int = 0
    # indexes into ``received``: acknowledged, then the connection ended without another
    # command from the client (killed, or lost, between our 250 and its next step)
    unconfirmed: list[int] = field(default_factory=list)
    _loop: asyncio.AbstractEventLoop | None = None
    _server: asyncio.Server | None = None
    _thread: threading.Thread | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def start(self) -> None:
        loop = asyncio.new_event_loop()
        started: Future[None] = Future()

        def main() -> None:
            asyncio.set_event_loop(loop)

            async def serve() -> None:
                try:
                    self._server = await asyncio.start_server(self._session, self.host, self.port)
                    started.set_result(None)
                except BaseException as exc:
                    started.set_exception(exc)

            loop.run_until_complete(serve())
            loop.run_forever()
            if self._server is not None:
                self._server.close()
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=main, daemon=True)
        self._thread.start()
        started.result(timeout=10)

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            # Sessions still open (a client the test killed, a slow peer) are closed here: left
            # to the garbage collector, their sockets warn in whichever test runs next.
            async def shutdown() -> None:
                if self._server is not None:
                    self._server.close()
                for writer in list(self._writers):
                    writer.transport.abort()
                tasks = [task for task in self._tasks if not task.done()]
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        tls = False
        mail_from, mail_line, recipients = "", "", []
        last_acked: int | None = None

        async def reply(text: str) -> None:
            if self.mode == "slow":
                await asyncio.sleep(self.delay)
            writer.write(text.encode() + b"\r\n")
            await writer.drain()

        try:
            await reply("220 peer.test ESMTP")
            while True:
                line = await reader.readline()
                if not line:
                    return
                last_acked = None  # the client went on after our last 250
                command = line.decode("utf-8", "replace").strip()
                verb = command.split(" ", 1)[0].upper()
                if verb in ("EHLO", "HELO"):
                    lines = ["peer.test", "PIPELINING", "SIZE 1000000"]
                    if self.eightbit:
                        lines.append("8BITMIME")
                    if self.chunking:
                        lines.append("CHUNKING")
                    if self.tls_pair is not None and not tls:
                        lines.append("STARTTLS")
                    text = "".join(f"250-{x}\r\n" for x in lines[:-1]) + f"250 {lines[-1]}"
                    await reply(text)
                elif verb == "STARTTLS" and self.tls_pair is not None:
                    await reply("220 go ahead")
                    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                    context.load_cert_chain(*self.tls_pair)
                    await writer.start_tls(context)
                    tls = True
                elif verb == "MAIL":
                    if self.mode == "tls_required" and not tls:
                        await reply("530 5.7.0 Must issue a STARTTLS command first")
                        continue
                    mail_line = command
                    mail_from = command[command.index("<") + 1 : command.index(">")]
                    recipients = []
                    await reply("250 2.1.0 Ok")
                elif verb == "RCPT":
                    address = command[command.index("<") + 1 : command.index(">")]
                    if self.mode == "tempfail":
                        await reply("451 4.3.0 try again later")
                    elif self.mode == "reject_bad" and address.startswith("bad"):
                        await reply("550 5.1.1 no such user here")
                    else:
                        recipients.append(address)
                        await reply("250 2.1.5 Ok")
                elif verb == "DATA":
                    if not recipients:
                        await reply("554 5.5.1 no valid recipients")
                        continue
                    await reply("354 go on")
                    data = bytearray()
                    while True:
                        chunk = await reader.readline()
                        if not chunk:
                            return
                        if chunk == b".\r\n":
                            break
                        if self.mode == "drop_data" and len(data) > 10:
                            writer.transport.abort()
                            return
                        data += chunk[1:] if chunk.startswith(b"..") else chunk
                    self.received.append(
                        Received(mail_from, recipients, bytes(data), tls, mail_line)
                    )
                    last_acked = len(self.received) - 1
                    await reply("250 2.0.0 Ok: queued")
                elif verb == "BDAT":
                    size = int(command.split()[1])
                    data = await reader.readexactly(size)
                    self.received.append(
                        Received(mail_from, recipients, bytes(data), tls, mail_line)
                    )
                    last_acked = len(self.received) - 1
                    await reply("250 2.0.0 Ok: queued")
                elif verb == "RSET":
                    recipients = []
                    await reply("250 2.0.0 Ok")
                elif verb == "QUIT":
                    await reply("221 2.0.0 Bye")
                    return
                else:
                    await reply("502 5.5.2 Error: command not recognized")
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            return
        finally:
            if last_acked is not None:
                self.unconfirmed.append(last_acked)
            self._writers.discard(writer)
            writer.close()
