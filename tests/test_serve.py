"""The real `lanalyze serve` as a subprocess: every listener answers, SIGTERM exits 0."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port, lanalyze_cmd


def write_config(tmp_path: Path, data_dir: Path, **ports: int) -> Path:
    config = tmp_path / "lanalyze.toml"
    config.write_text(
        f"""
[general]
data_dir = "{data_dir}"
hostname = "mx.test.example"

[flows]
listen = ["127.0.0.1:{ports["udp"]}"]

[mail]
listen = ["127.0.0.1:{ports["smtp"]}"]

[web]
listen = "127.0.0.1:{ports["http"]}"
"""
    )
    return config


def wait_for(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except OSError as exc:
            last = exc
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout}s (last error: {last})")


def udp_port_bound(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def test_serve_answers_on_every_listener_and_stops_on_sigterm(
    tmp_path: Path, data_dir: Path
) -> None:
    ports = {
        "udp": free_port(socket.SOCK_DGRAM),
        "smtp": free_port(),
        "http": free_port(),
    }
    config = write_config(tmp_path, data_dir, **ports)
    proc = subprocess.Popen(
        [*lanalyze_cmd(), "--config", str(config), "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def smtp_greets() -> bool:
            with socket.create_connection(("127.0.0.1", ports["smtp"]), timeout=2) as conn:
                banner = conn.recv(512)
            assert banner.startswith(b"220 mx.test.example ESMTP"), banner
            return True

        def metrics() -> bool:
            url = f"http://127.0.0.1:{ports['http']}/metrics"
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)

        wait_for(smtp_greets)
        wait_for(metrics)
        wait_for(lambda: udp_port_bound(ports["udp"]))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, err


def test_busy_port_is_a_clear_error(tmp_path: Path, data_dir: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        busy = blocker.getsockname()[1]
        ports = {"udp": free_port(socket.SOCK_DGRAM), "smtp": busy, "http": free_port()}
        config = write_config(tmp_path, data_dir, **ports)
        result = subprocess.run(
            [*lanalyze_cmd(), "--config", str(config), "serve"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode != 0
    assert "mail.listen[0]" in result.stderr
    assert str(busy) in result.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT])
def test_ctrl_c_stops_cleanly(tmp_path: Path, data_dir: Path, sig: int) -> None:
    ports = {"udp": free_port(socket.SOCK_DGRAM), "smtp": free_port(), "http": free_port()}
    config = write_config(tmp_path, data_dir, **ports)
    proc = subprocess.Popen(
        [*lanalyze_cmd(), "--config", str(config), "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: socket.create_connection(("127.0.0.1", ports["smtp"]), 1).close() or True)
    finally:
        proc.send_signal(sig)
        proc.communicate(timeout=10)
    assert proc.returncode == 0
