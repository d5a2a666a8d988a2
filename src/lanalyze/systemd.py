"""``lanalyze install-service``: run ``lanalyze serve`` under systemd as an unprivileged user.

The unit gives the service only what it needs: its own user, ``CAP_NET_BIND_SERVICE`` (ports
25, 465 and 587 are below 1024), a private state directory under ``/var/lib`` (mode 0700),
``UMask=0077`` so every file it writes is private, and a read-only view of the rest of the
system. ``KillMode=mixed`` sends SIGTERM to the main process only: it stops its flow workers and
mail acceptors itself, flushing what they hold, and systemd kills whatever is left after
``TimeoutStopSec``.

With ``--root DIR`` every file goes under DIR and no user is created nor systemctl called: for
packagers and for the tests.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

import click

UNIT_NAME = "lanalyze.service"


def lanalyze_executable() -> str:
    """The ``lanalyze`` script next to this Python (the virtualenv's), else ``python -m``."""
    script = Path(sys.executable).parent / "lanalyze"
    if script.exists():
        return str(script.absolute())
    return f"{sys.executable} -m lanalyze"


def unit_text(*, user: str, config: Path, data_dir: Path, executable: str) -> str:
    state = data_dir.name if data_dir.parent == Path("/var/lib") else None
    state_lines = (
        f"StateDirectory={state}\nStateDirectoryMode=0700\n"
        if state
        else f"ReadWritePaths={data_dir}\n"
    )
    return f"""\
# Written by `lanalyze install-service`; edit the configuration, not this file.
[Unit]
Description=lanalyze: flow collector, mail server and console
Documentation=file://{config}
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
User={user}
Group={user}
ExecStart={executable} serve --config {config}
{state_lines}UMask=0077
AmbientCapabilities=CAP_NET_BIND_SERVICE
CapabilityBoundingSet=CAP_NET_BIND_SERVICE
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectControlGroups=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK
KillMode=mixed
TimeoutStopSec=30
Restart=on-failure
RestartSec=5
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
"""


def _ensure_user(user: str, home: Path) -> None:
    try:
        pwd.getpwnam(user)
        return
    except KeyError:
        pass
    subprocess.run(
        [
            "useradd",
            "--system",
            "--user-group",
            "--home-dir",
            str(home),
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            user,
        ],
        check=True,
    )


@click.command("install-service")
@click.option("--user", default="lanalyze", show_default=True, help="System user to run as.")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=Path("/var/lib/lanalyze"),
    show_default=True,
    help="general.data_dir of the service.",
)
@click.option(
    "--service-config",
    type=click.Path(path_type=Path),
    default=Path("/etc/lanalyze/lanalyze.toml"),
    show_default=True,
    help="Configuration file the unit passes to `serve`; written from the defaults if absent.",
)
@click.option(
    "--root",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Write every file under this directory; create no user, call no systemctl.",
)
@click.option("--no-start", is_flag=True, help="Install and enable, but do not start now.")
def install_service(
    user: str, data_dir: Path, service_config: Path, root: Path | None, no_start: bool
) -> None:
    """Install a systemd unit that runs `lanalyze serve` as an unprivileged user."""
    from lanalyze.config import Config, dump_config

    base = root or Path("/")
    if root is None:
        if os.geteuid() != 0:
            raise click.UsageError("run as root (or use --root DIR to write the files only)")
        _ensure_user(user, data_dir)
    unit_path = base / "etc/systemd/system" / UNIT_NAME
    config_path = base / service_config.relative_to("/")
    state_path = base / data_dir.relative_to("/")
    unit_path.parent.mkdir(parents=True, exist_ok=True)
    unit_path.write_text(
        unit_text(
            user=user, config=service_config, data_dir=data_dir, executable=lanalyze_executable()
        )
    )
    unit_path.chmod(0o644)
    state_path.mkdir(mode=0o700, parents=True, exist_ok=True)
    state_path.chmod(0o700)
    if not config_path.exists():
        config = Config()
        config.general.data_dir = data_dir
        config_path.parent.mkdir(parents=True, exist_ok=True)
        config_path.write_text(dump_config(config))
        # Readable by the service's group only: it may come to hold secrets (relay password).
        config_path.chmod(0o640)
    if root is None:
        gid = grp.getgrnam(user).gr_gid
        os.chown(config_path, 0, gid)
        os.chown(state_path, pwd.getpwnam(user).pw_uid, gid)
        systemctl = shutil.which("systemctl")
        if systemctl and Path("/run/systemd/system").is_dir():
            subprocess.run([systemctl, "daemon-reload"], check=True)
            action = ["enable"] if no_start else ["enable", "--now"]
            subprocess.run([systemctl, *action, UNIT_NAME], check=True)
        else:
            click.echo("systemd is not running here: the unit is installed, not started")
    click.echo(f"unit: {unit_path}\nconfiguration: {config_path}\ndata: {state_path}")
