"""Two lanalyze processes never share a data directory or a listener by accident (issue 14).

SO_REUSEPORT, which our own workers and acceptors need, would let a stray second server bind
the same port and silently take part of the traffic; the first socket of each group is only
bound once a probe without SO_REUSEPORT shows nobody holds the address.
"""

from __future__ import annotations

import signal
import socket
import subprocess
from pathlib import Path

from tests.conftest import free_port, lanalyze_cmd
from tests.test_serve import udp_port_bound, wait_for, write_config


def _serve(config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*lanalyze_cmd(), "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _ports() -> dict[str, int]:
    return {"udp": free_port(socket.SOCK_DGRAM), "smtp": free_port(), "http": free_port()}


def test_second_server_on_the_same_data_dir_or_port_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ports = _ports()
    first_dir = tmp_path / "first"
    first_dir.mkdir()
    first = _serve(write_config(first_dir, data, **ports))
    try:
        wait_for(lambda: udp_port_bound(ports["udp"]))
        wait_for(lambda: socket.create_connection(("127.0.0.1", ports["http"]), 1).close() or 1)

        # Same data directory, other ports: refused, naming the first process.
        other = tmp_path / "other"
        other.mkdir()
        second = subprocess.run(
            [*lanalyze_cmd(), "serve", "--config", str(write_config(other, data, **_ports()))],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 3, second.stderr
        assert "in use by another lanalyze process" in second.stderr
        assert f"pid {first.pid}" in second.stderr

        # Another data directory, but the first server's flow port (two workers: SO_REUSEPORT).
        collect = subprocess.run(
            [
                *lanalyze_cmd(),
                "flows",
                "collect",
                "--data",
                str(tmp_path / "data2"),
                "--listen",
                f"127.0.0.1:{ports['udp']}",
                "--workers",
                "2",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert collect.returncode == 3, collect.stderr
        assert "already in use by another process" in collect.stderr
        assert f"pid {first.pid}" in collect.stderr
        assert "flows.listen[0]" in collect.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
    assert first.returncode == 0


def test_lock_is_released_when_the_server_dies(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ports = _ports()
    first = _serve(write_config(tmp_path, data, **ports))
    wait_for(lambda: socket.create_connection(("127.0.0.1", ports["http"]), 1).close() or 1, 90)
    first.kill()
    first.communicate(timeout=30)
    ports = _ports()
    again = _serve(write_config(tmp_path, data, **ports))
    try:

        def up() -> bool:
            assert again.poll() is None, again.communicate()[1]
            socket.create_connection(("127.0.0.1", ports["http"]), 1).close()
            return True

        wait_for(up, timeout=90)
        assert f"pid {again.pid}" in (data / "lanalyze.lock").read_text()
    finally:
        again.send_signal(signal.SIGTERM)
        _, err = again.communicate(timeout=60)
    assert again.returncode == 0, err
