"""The README, walked as a new user walks it: every ``sh`` block's command, in order.

The README's shell blocks are the source of truth: this test parses them and runs each line
in a fresh directory with ``HOME`` pointing there (so the default data directory
``~/.local/share/lanalyze`` is a temporary one), against the real server, softflowd and swaks.
What it must change to run here is only this:

- ``make run`` starts ``.venv/bin/lanalyze serve`` (what the Makefile runs) in the background,
  after stopping the one a previous ``make run`` started (the README says Ctrl-C);
  ``make test`` is this suite and is skipped. ``export`` sets the variable for the commands
  that follow. ``.venv/bin/lanalyze`` is a link to the console
  script of the Python running the tests.
- The default ports (2055, 2525, 8080) become free ports: the commands are rewritten and the
  server reads them from ``$LANALYZE_CONFIG``, which every command gets.
- ``sudo X install-service`` runs ``X install-service --root DIR``: the files only.
- Files a command reads that a user would bring (``capture.pcap``) are made first; prompts are
  answered on standard input; the API token and its id that ``web token create`` printed take
  the place of the README's placeholders (``lzt_...``, the example id), and ``curl`` gets
  ``--fail`` so an HTTP error fails the step.

Every command must exit 0; the reports must show what was sent.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
from pathlib import Path

from tests.conftest import ROOT, free_port, lanalyze_cmd, require_tool
from tests.flows.test_softflowd import write_capture
from tests.test_serve import wait_for

README = ROOT / "README.md"
PASSWORD = "correct-horse-battery\n"


def readme_commands() -> list[str]:
    """Every command line of the README's ``sh`` blocks, in order, without comments."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", README.read_text(), re.S):
        for raw in block.splitlines():
            line = re.sub(r"\s{2,}#.*$", "", raw).strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def test_readme_lists_the_steps_this_test_knows() -> None:
    commands = readme_commands()
    assert commands[0].startswith("make run"), "the README starts the server first"
    assert any(c.startswith("softflowd") for c in commands)
    assert any(c.startswith("swaks") for c in commands)


def test_readme_walk_through(tmp_path: Path) -> None:
    softflowd = require_tool("softflowd")
    require_tool("swaks")
    home = tmp_path / "home"
    work = tmp_path / "work"
    home.mkdir()
    (work / ".venv" / "bin").mkdir(parents=True)
    script = lanalyze_cmd()
    assert len(script) == 1, "the lanalyze console script is installed (make test installs it)"
    (work / ".venv" / "bin" / "lanalyze").symlink_to(script[0])
    ports = {
        "2055": str(free_port(socket.SOCK_DGRAM)),
        "2525": str(free_port()),
        "8080": str(free_port()),
    }
    defaults = tmp_path / "ports.toml"
    defaults.write_text(
        f'[flows]\nlisten = ["127.0.0.1:{ports["2055"]}"]\n'
        f'[mail]\nlisten = ["127.0.0.1:{ports["2525"]}"]\n'
        f'[web]\nlisten = "127.0.0.1:{ports["8080"]}"\n'
    )
    env = {**os.environ, "HOME": str(home), "LANALYZE_CONFIG": str(defaults)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    data = home / ".local" / "share" / "lanalyze"
    outputs: dict[str, str] = {}
    token = ""
    server: subprocess.Popen[bytes] | None = None
    try:
        for written in readme_commands():
            command = written
            for default, port in ports.items():
                command = command.replace(f"127.0.0.1:{default}", f"127.0.0.1:{port}")
            if command == "make test":
                continue
            if command.startswith("export "):
                name, _, value = command.removeprefix("export ").partition("=")
                env[name] = value.replace("$PWD", str(work))
                continue
            if token:
                command = command.replace("lzt_...", token)
                command = command.replace("3f9c0a1b2d4e", token.split("_")[1])
            if command.startswith("curl "):
                command = command.replace("curl ", "curl --fail --silent --show-error ", 1)
            if command.startswith("make run"):
                if server is not None:
                    _stop(server, tmp_path)
                args = re.search(r'ARGS="([^"]*)"', command)
                with (tmp_path / "serve.log").open("wb") as log:
                    # exec: the signal at the end must reach the server, not the shell.
                    server = subprocess.Popen(
                        f"exec .venv/bin/lanalyze serve {args.group(1) if args else ''}",
                        shell=True,
                        cwd=work,
                        env=env,
                        stdout=subprocess.DEVNULL,
                        stderr=log,
                    )
                wait_for(lambda: _listening(int(ports["8080"])), timeout=90)
                continue
            if command.startswith("sudo "):
                command = command.removeprefix("sudo ")
                assert "install-service" in command, command
                command += f" --root {tmp_path / 'root'}"
            if command.startswith("softflowd"):
                write_capture(work / "capture.pcap", flows_v4=300, flows_v6=100)
                command = command.replace("softflowd", softflowd, 1)
            result = subprocess.run(
                command,
                shell=True,
                cwd=work,
                env=env,
                input=PASSWORD * 2,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert result.returncode == 0, (command, result.stdout, result.stderr)
            outputs[command] = result.stdout
            found = re.search(r"\blzt_[0-9a-f]+_\S+", result.stdout)
            if "token create" in command and found:
                token = found.group(0)
            if command.startswith(softflowd):
                # softflowd exports at the end of the capture; the collector stores within ~1 s.
                wait_for(lambda: any((data / "flows" / "raw").glob("*/*.parquet")), timeout=60)
        top = next(out for cmd, out in outputs.items() if "flows top --by srcip" in cmd)
        assert "10.1.0." in top, top  # the capture's sources are 10.1.0.1-40
        exporters = next(out for cmd, out in outputs.items() if cmd.endswith("flows exporters"))
        assert "127.0.0.1" in exporters, exporters
        mail = next(out for cmd, out in outputs.items() if cmd.endswith("mail ls"))
        assert "alice@example.org" in mail, mail
        assert (work / "lanalyze.toml").is_file()
        assert "[[web.users]]" in (work / "lanalyze.toml").read_text()
        assert token, "web token create printed a token"
        api = next(out for cmd, out in outputs.items() if cmd.startswith("curl "))
        assert '"rows"' in api and "10.1.0." in api, api
    finally:
        if server is not None:
            _stop(server, tmp_path)


def _stop(server: subprocess.Popen[bytes], tmp_path: Path) -> None:
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=60)
    assert server.returncode == 0, (tmp_path / "serve.log").read_text()


def _listening(port: int) -> bool:
    socket.create_connection(("127.0.0.1", port), 1).close()
    return True
