"""Everything the flow side stores is private: directories 0700, files 0600, under umask 022.

Flows say who talks to whom and ``exporters.json`` names the routers (docs/security.md,
"Files"). A real collector (in this process, its worker a child process) receives NetFlow v5
and IPFIX on loopback, and the rollup maintainer rolls up and compacts what it stored; then
every directory and file under the data directory is checked.
"""

from __future__ import annotations

import asyncio
import socket
import stat
import time
from pathlib import Path

from lanalyze.datadir import atomic_write_bytes, make_private_dirs
from lanalyze.flows.collector import FlowCollector
from lanalyze.flows.config import FlowsConfig, RollupConfig
from lanalyze.flows.store.paths import flow_dir
from lanalyze.flows.store.rollup import RollupMaintainer
from tests.conftest import free_port, modes
from tests.flows.test_collect import (
    ipfix_data_set,
    ipfix_message,
    ipfix_template_set,
    send,
    stored,
    v5_datagram,
    wait_until,
)


def test_collector_and_maintainer_create_only_private_files(
    tmp_path: Path, umask_022: None
) -> None:
    data_dir = tmp_path / "data"  # created by the collector
    port = free_port(socket.SOCK_DGRAM)
    config = FlowsConfig(listen=[f"127.0.0.1:{port}"], workers=1, flush_interval=0.2)

    async def collect() -> None:
        collector = FlowCollector(config, data_dir)
        await collector.start()
        try:
            await asyncio.to_thread(send, port, [v5_datagram(0, 0)])
            await asyncio.to_thread(wait_until, lambda: stored(data_dir) == 30, 15)
            message = ipfix_message([ipfix_template_set(), ipfix_data_set(0, 10)], 0)
            await asyncio.to_thread(send, port, [message])
            await asyncio.to_thread(wait_until, lambda: stored(data_dir) == 40, 15)
        finally:
            await collector.stop()  # writes exporters.json and the templates

    asyncio.run(collect())
    maintainer = RollupMaintainer(RollupConfig(), flow_dir(data_dir))
    try:
        assert maintainer.run_once()["rolled_files"] >= 2
        maintainer.run_once(now=time.time() + 2 * 3600)  # the hour closed: compaction
    finally:
        maintainer.release()

    found = modes(data_dir)
    for expected in (
        "flows/exporters.json",
        "flows/templates/worker-0.bin",
        "flows/rollup/manifest.json",
        "flows/rollup/.maintainer.lock",
    ):
        assert expected in found
    assert any(name.startswith("flows/raw/") and name.endswith(".parquet") for name in found)
    assert any(name.startswith("flows/rollup/1h/") and name.endswith(".parquet") for name in found)
    directories = {name for name in found if (data_dir / name).is_dir()}
    wrong = {
        name: oct(mode)
        for name, mode in found.items()
        if mode != (0o700 if name in directories else 0o600)
    }
    assert not wrong, f"not private: {wrong}"


def test_rewrite_over_a_readable_leftover_makes_it_private(tmp_path: Path, umask_022: None) -> None:
    """A temporary a crash left (or a file of an older version) carries its old mode: a
    write-then-rename through it still ends 0600."""
    target = tmp_path / "flows" / "exporters.json"
    target.parent.mkdir()
    leftover = target.with_name(f".{target.name}.tmp")
    leftover.write_bytes(b"old")
    leftover.chmod(0o644)
    target.write_bytes(b"old")
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_existing_directories_keep_their_mode(tmp_path: Path, umask_022: None) -> None:
    """An administrator may have opened the data directory to a group on purpose."""
    shared = tmp_path / "data"
    shared.mkdir(mode=0o750)
    shared.chmod(0o750)
    make_private_dirs(shared / "flows" / "raw")
    assert stat.S_IMODE(shared.stat().st_mode) == 0o750
    assert stat.S_IMODE((shared / "flows").stat().st_mode) == 0o700
    assert stat.S_IMODE((shared / "flows" / "raw").stat().st_mode) == 0o700
