"""A real authoritative DNS server for the mail tests: Knot DNS (knotd) on a loopback port.

Tests write zones as text (``{"good.test": "<records>"}``); :class:`KnotServer` adds the SOA
and NS records, writes ``knot.conf``, starts ``knotd`` and waits until ``kdig`` gets an
answer. A zone given as ``None`` is configured with a broken file, so Knot answers SERVFAIL
for it: the tests' way of producing DNS temperrors. The root zone ``"."`` may be served too, so
that every name the tests do not write is NXDOMAIN.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import free_port, require_tool

STARTUP_TIMEOUT = 10.0


def txt(text: str) -> str:
    """A TXT record's data, split into the 255-octet strings DNS requires."""
    chunks = [text[i : i + 250] for i in range(0, len(text), 250)] or [""]
    return " ".join('"' + c.replace("\\", "\\\\").replace('"', '\\"') + '"' for c in chunks)


class KnotServer:
    def __init__(self, workdir: Path, zones: dict[str, str | None]) -> None:
        self.workdir = workdir
        self.zones = zones
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _write(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        zone_entries = []
        for index, (domain, records) in enumerate(self.zones.items()):
            # Numbered files: zone names may hold characters a file name should not ("." root).
            path = self.workdir / f"zone-{index}.zone"
            zone_entries.append(f"  - domain: {domain}\n    file: {path}\n")
            if records is None:
                path.write_text("this is not a zone file\n")
                continue
            origin = "." if domain == "." else f"{domain}."
            suffix = origin if origin != "." else ""
            ns = f"ns.{suffix}"
            path.write_text(
                f"$ORIGIN {origin}\n$TTL 60\n"
                f"@ SOA {ns} hostmaster.{suffix} 1 60 60 600 60\n"
                f"@ NS {ns}\n{ns} A 127.0.0.1\n{records}\n"
            )
        conf = self.workdir / "knot.conf"
        conf.write_text(
            "server:\n"
            f"    listen: 127.0.0.1@{self.port}\n"
            f"    rundir: {self.workdir}\n"
            "    udp-workers: 1\n    tcp-workers: 1\n    background-workers: 1\n"
            "log:\n  - target: stderr\n    any: critical\n"
            f"database:\n    storage: {self.workdir}\n"
            "template:\n  - id: default\n"
            f"    storage: {self.workdir}\n    zonefile-sync: -1\n    journal-content: none\n"
            "zone:\n" + "".join(zone_entries)
        )
        return conf

    def start(self) -> None:
        knotd = require_tool("knotd")
        kdig = require_tool("kdig")
        conf = self._write()
        self.process = subprocess.Popen(
            [knotd, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        probe = next((d for d, r in self.zones.items() if r is not None), None)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"knotd exited: {err}")
            out = subprocess.run(
                [kdig, "@127.0.0.1", "-p", str(self.port), probe or "test", "SOA", "+time=1"],
                capture_output=True,
                text=True,
                timeout=5,
            )
            if "status: NOERROR" in out.stdout or (probe is None and "status:" in out.stdout):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"knotd did not answer on port {self.port}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None


@contextmanager
def knot_server(workdir: Path, zones: dict[str, str | None]) -> Iterator[KnotServer]:
    server = KnotServer(workdir, zones)
    server.start()
    try:
        yield server
    finally:
        server.stop()
