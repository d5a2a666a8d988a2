"""The systemd unit and the command that installs it; a stop as systemd does it is clean."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

from click.testing import CliRunner

from lanalyze.cli import main
from lanalyze.config import load_config
from tests.conftest import free_port, lanalyze_cmd, require_tool
from tests.test_serve import udp_port_bound, wait_for


def test_install_service_writes_a_unit_systemd_accepts(tmp_path: Path) -> None:
    root = tmp_path / "root"
    result = CliRunner().invoke(main, ["install-service", "--root", str(root)])
    assert result.exit_code == 0, result.output
    unit = root / "etc/systemd/system/lanalyze.service"
    text = unit.read_text()
    for line in (
        "User=lanalyze",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "StateDirectory=lanalyze",
        "StateDirectoryMode=0700",
        "UMask=0077",
        "KillMode=mixed",
        "serve --config /etc/lanalyze/lanalyze.toml",
    ):
        assert line in text, line
    config = load_config(root / "etc/lanalyze/lanalyze.toml")
    assert config.general.data_dir == Path("/var/lib/lanalyze")
    assert (root / "etc/lanalyze/lanalyze.toml").stat().st_mode & 0o777 == 0o640
    assert (root / "var/lib/lanalyze").stat().st_mode & 0o777 == 0o700
    verify = subprocess.run(
        [require_tool("systemd-analyze"), "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verify.returncode == 0, verify.stderr
    assert "lanalyze.service" not in verify.stderr, verify.stderr


def test_stop_signal_to_the_whole_group_logs_no_error(tmp_path: Path) -> None:
    """systemd's default stop (KillMode=control-group) signals every process of the service
    at once, and the workers may exit before the parent hears of the stop. That is a clean stop,
    not `worker_exited`. The race is forced here: the workers get SIGTERM first."""
    port = free_port(socket.SOCK_DGRAM)
    log = tmp_path / "stderr.log"
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            [
                *lanalyze_cmd(),
                "flows",
                "collect",
                "--data",
                str(tmp_path / "data"),
                "--listen",
                f"127.0.0.1:{port}",
                "--workers",
                "2",
            ],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
    try:
        wait_for(lambda: udp_port_bound(port))
        wait_for(lambda: "flows.ready" in log.read_text(), timeout=60)
        children = _session_members(proc.pid) - {proc.pid}
        assert children
        for child in children:
            os.kill(child, signal.SIGTERM)
        wait_for(lambda: "flows.worker_" in log.read_text(), timeout=30)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    err = log.read_text()
    assert proc.returncode == 0, err
    assert "level=error" not in err, err


def _session_members(sid: int) -> set[int]:
    members = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # Fields after the command (which may hold spaces): state ppid pgrp session ...
            if int(stat.rsplit(")", 1)[1].split()[3]) == sid:
                members.add(int(entry.name))
    return members
