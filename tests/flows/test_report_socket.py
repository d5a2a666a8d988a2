"""The report socket: `lanalyze flows ...` answered by a running `lanalyze serve`.

A real `lanalyze serve` (web console on for /metrics, collector and mail off) runs on a data
directory with stored flows; every report command is run as a fresh process through it and
with `--no-server`, and the two must print the same bytes. The protocol core is tested on its
own, and the socket's owner checks with a real other user (nobody) when the tests run as root.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lanalyze.flows.config import QueryConfig
from lanalyze.flows.errors import ProtocolError
from lanalyze.flows.query import reportproto
from lanalyze.flows.query.reportproto import (
    Answer,
    LineBuffer,
    Request,
    decode_answer,
    decode_request,
    encode_answer,
    encode_request,
)
from lanalyze.flows.store.synthetic import random_flows, write_flows
from tests.conftest import free_port, lanalyze_cmd
from tests.test_serve import wait_for

T0 = 1_700_000_000_000 - 1_700_000_000_000 % 3_600_000
SPAN = 2 * 3_600_000
WINDOW = ["--since", "2023-11-14T20:00Z", "--until", "2023-11-14T23:00Z"]


def metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def counter(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, int]]:
    """(config, data directory, web port) of a running `lanalyze serve`."""
    base = tmp_path_factory.mktemp("socket")
    data = base / "data"
    columns = random_flows(20_000, T0, T0 + SPAN, seed=7, sources=300, sampling=(1, 1, 10))
    write_flows(data / "flows", columns, segment_ms=600_000)
    port = free_port()
    config = base / "lanalyze.toml"
    config.write_text(
        f'[general]\ndata_dir = "{data}"\n[flows]\nenabled = false\n[mail]\nenabled = false\n'
        f'[web]\nlisten = "127.0.0.1:{port}"\n'
    )
    proc = subprocess.Popen(
        [*lanalyze_cmd(), "--config", str(config), "serve"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: (data / "lanalyze.sock").exists() and bool(metrics(port)))
        yield config, data, port
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
    assert not (data / "lanalyze.sock").exists()  # removed at stop


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*lanalyze_cmd(), *args], capture_output=True, text=True, timeout=120)


CASES = [
    ["flows", "top", "--by", "srcip", *WINDOW],
    ["flows", "top", "--by", "srcip,proto", "-n", "0", "--format", "json", *WINDOW],
    ["flows", "top", "--by", "app", "--format", "csv", "--filter", "proto tcp", *WINDOW],
    ["flows", "series", "--by", "srcip", "--bucket", "10m", *WINDOW],
    ["flows", "series", "--format", "json", *WINDOW],
    ["flows", "list", "-n", "30", "--filter", "port 443", *WINDOW],
    ["flows", "interfaces", *WINDOW],
    ["flows", "interfaces", "--format", "json", *WINDOW],
    ["flows", "status"],
    ["flows", "status", "--format", "json"],
    # Errors: a bad filter (the caret line), a usage error (left to the client).
    ["flows", "top", "--by", "srcip", "--filter", "proto tcp and port x", *WINDOW],
    ["flows", "interfaces", "--exporter", "192.0.2.1", *WINDOW],
]


@pytest.mark.parametrize("args", CASES, ids=[" ".join(case[1:4]) for case in CASES])
def test_served_and_in_process_print_the_same(server, args: list[str]) -> None:
    config, _data, port = server
    before = metrics(port)
    served = run("--config", str(config), *args)
    after = metrics(port)
    alone = run("--config", str(config), *args, "--no-server")
    assert (served.stdout, served.stderr, served.returncode) == (
        alone.stdout,
        alone.stderr,
        alone.returncode,
    )
    name = "lanalyze_report_socket_requests_total"
    usage_error = "--exporter" in args
    outcome = "usage_error" if usage_error else "ok"
    assert counter(after, name, command=args[1], outcome=outcome) == (
        counter(before, name, command=args[1], outcome=outcome) + 1
    )
    if not usage_error:
        assert alone.stdout or alone.stderr


def test_data_option_names_the_data_or_the_flow_directory(server) -> None:
    _config, data, port = server
    name = "lanalyze_report_socket_requests_total"
    for where in (data, data / "flows"):
        before = counter(metrics(port), name, command="top", outcome="ok")
        served = run("flows", "top", "--by", "dstip", "--data", str(where), *WINDOW)
        assert counter(metrics(port), name, command="top", outcome="ok") == before + 1
        alone = run("flows", "top", "--by", "dstip", "--data", str(where), *WINDOW, "--no-server")
        assert served.stdout == alone.stdout and served.returncode == alone.returncode == 0


def test_other_query_settings_run_in_process(server, tmp_path: Path) -> None:
    """A client configured differently would answer differently: the server leaves it."""
    config, _data, port = server
    other = tmp_path / "other.toml"
    other.write_text(config.read_text() + "[flows.query]\nthreads = 1\n")
    name = "lanalyze_report_socket_requests_total"
    before = counter(metrics(port), name, command="top", outcome="config_differs")
    result = run("--config", str(other), "flows", "top", "--by", "srcip", *WINDOW)
    assert result.returncode == 0 and "srcip" in result.stdout
    assert counter(metrics(port), name, command="top", outcome="config_differs") == before + 1


def imported(args: list[str], tmp_path: Path, env: dict[str, str] | None = None) -> set[str]:
    """Modules loaded by the time `lanalyze ARGS` exits (as the console script runs it)."""
    out = tmp_path / "modules.txt"
    script = (
        "import atexit, sys\n"
        f"atexit.register(lambda: open({str(out)!r}, 'w').write('\\n'.join(sys.modules)))\n"
        "from lanalyze.cli import main\n"
        "main()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return {name for name in out.read_text().splitlines() if name.split(".")[0] != "tests"}


HEAVY = {"duckdb", "pyarrow", "numpy", "pydantic", "lanalyze.mail", "lanalyze.web"}


def test_served_report_imports_no_query_engine(server, tmp_path: Path) -> None:
    config, _data, _port = server
    args = ["--config", str(config), "flows", "top", "--by", "srcip", *WINDOW]
    modules = imported(args, tmp_path)
    assert "lanalyze.flows.query.reportclient" in modules
    assert not modules & HEAVY, modules & HEAVY


def test_a_report_without_server_or_configuration_imports_no_heavy_library(
    server, tmp_path: Path
) -> None:
    """What a user typing `flows top --data DIR` gets with no configuration file and no
    server: the query runs here from the rollups with DuckDB's extension alone, and prints
    the same as the served answer (the configuration differs only in the data directory)."""
    _config, data, _port = server
    home = tmp_path / "home"  # no ~/.config/lanalyze/lanalyze.toml
    home.mkdir()
    args = ["flows", "top", "--by", "srcip", "--data", str(data), *WINDOW, "--no-server"]
    env = {**os.environ, "HOME": str(home)}
    env.pop("LANALYZE_CONFIG", None)
    if Path("/etc/lanalyze/lanalyze.toml").exists():
        pytest.skip("a system-wide configuration file exists here")
    modules = imported(args, tmp_path, env)
    heavy = HEAVY | {"pandas", "lanalyze.config", "lanalyze.flows.config", "prometheus_client"}
    assert "_duckdb" in modules and not modules & heavy, modules & heavy
    served = run("flows", "top", "--by", "srcip", "--data", str(data), *WINDOW)
    alone = subprocess.run(
        [*lanalyze_cmd(), *args], capture_output=True, text=True, timeout=120, env=env
    )
    assert alone.returncode == served.returncode == 0, alone.stderr
    assert alone.stdout == served.stdout and "srcip" in alone.stdout


def test_a_command_imports_only_its_own_group(tmp_path: Path) -> None:
    modules = imported(["flows", "top", "--help"], tmp_path)
    assert not modules & (HEAVY | {"lanalyze.flows.collect_cli", "lanalyze.config"})
    modules = imported(["mail", "--help"], tmp_path)
    assert "lanalyze.mail.cli" in modules and "lanalyze.flows.cli" not in modules


# --- the protocol core ------------------------------------------------------------------


def test_request_and_answer_round_trip() -> None:
    request = Request("top", {"by": "srcip", "limit": 10, "raw": False, "data": None}, "f", "x")
    assert decode_request(encode_request(request).rstrip(b"\n")) == request
    for answer in (
        Answer("ok", stdout="a\n", stderr="b", exit=2),
        Answer("fallback", reason="busy"),
        Answer("error", reason="bad", fault="client"),
    ):
        assert decode_answer(encode_answer(answer).rstrip(b"\n")) == answer


def test_line_buffer_bounds_a_line_and_blames_the_sender() -> None:
    buffer = LineBuffer(16, "client")
    assert buffer.feed(b"0123456789") is None
    assert buffer.feed(b"abc\nrest") == b"0123456789abc"
    with pytest.raises(ProtocolError) as error:
        LineBuffer(16, "client").feed(b"x" * 17)
    assert error.value.fault == "client"
    with pytest.raises(ProtocolError):
        LineBuffer(16, "server").feed(b"x" * 20 + b"\n")
    with pytest.raises(ProtocolError) as error:
        LineBuffer(16, "server").end_of_input()
    assert error.value.fault == "server"


@pytest.mark.parametrize(
    "line",
    [
        b"not json",
        b"[1]",
        b'{"v": 2, "command": "top", "params": {}, "config": {}}',
        b'{"v": 1, "command": "serve", "params": {}, "config": {}}',
        b'{"v": 1, "command": "top", "params": {"by": [1]}, "config": {}}',
        b'{"v": 1, "command": "top", "params": {}, "config": {"text": 3}}',
        b'{"v": 1, "command": "top", "params": {}}',
        b"[" * 100_000,
    ],
)
def test_malformed_requests_are_the_clients_fault(line: bytes) -> None:
    with pytest.raises(ProtocolError) as error:
        decode_request(line)
    assert error.value.fault == "client"


@pytest.mark.parametrize(
    "line",
    [
        b'{"v": 1, "status": "ok", "stdout": "", "stderr": "", "exit": 256}',
        b'{"v": 1, "status": "ok", "stdout": 1, "stderr": "", "exit": 0}',
        b'{"v": 1, "status": "maybe"}',
        b'{"v": 1, "status": "error", "fault": "nobody"}',
    ],
)
def test_malformed_answers_are_the_servers_fault(line: bytes) -> None:
    with pytest.raises(ProtocolError) as error:
        decode_answer(line)
    assert error.value.fault == "server"


# --- other users --------------------------------------------------------------------------

NOBODY = 65534
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not os.access("/usr/bin/python3", os.X_OK),
    reason="needs root (to act as another user) and /usr/bin/python3",
)


@needs_root
def test_a_socket_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_flows(data / "flows", random_flows(100, T0, T0 + SPAN), segment_ms=SPAN)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(data / "lanalyze.sock"))
    listener.listen()
    os.chown(data / "lanalyze.sock", NOBODY, NOBODY)
    try:
        result = run("flows", "status", "--data", str(data))
    finally:
        listener.close()
    assert result.returncode == 0
    assert "owned by uid 65534" in result.stderr
    assert "raw" in result.stdout  # answered in-process


@needs_root
def test_the_server_refuses_another_users_connection() -> None:
    """The socket is 0600 in a 0700 directory; opened up here on purpose, so the server's own
    SO_PEERCRED check is what stops nobody."""
    from lanalyze.flows.query.reportserver import REFUSED, ReportSocket

    base = Path(tempfile.mkdtemp(prefix="lanalyze-sock-"))
    os.chmod(base, 0o755)
    loop = asyncio.new_event_loop()
    component = ReportSocket(QueryConfig(), base / "data")
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    try:
        loop.run_until_complete(component.start())
        assert component.path.name == reportproto.SOCKET_NAME
        assert component.path.stat().st_mode & 0o777 == 0o600
        os.chmod(base / "data", 0o755)
        os.chmod(component.path, 0o666)
        thread.start()
        before = REFUSED.labels("uid")._value.get()
        # The server answers before reading a byte: the script only reads.
        script = (
            "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
            "sys.stdout.write(s.makefile('rb').readline().decode())"
        )
        result = subprocess.run(
            ["/usr/bin/python3", "-c", script, str(component.path)],  # Debian's: nobody may run it
            user=NOBODY,
            cwd="/",
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        answer = decode_answer(result.stdout.strip().encode())
        assert answer.status == "error" and answer.fault == "client", result
        assert "not the server's user" in answer.reason
        assert REFUSED.labels("uid")._value.get() == before + 1
    finally:
        if thread.is_alive():
            asyncio.run_coroutine_threadsafe(component.stop(), loop).result(timeout=30)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=30)
        else:
            loop.run_until_complete(component.stop())
        loop.close()
        shutil.rmtree(base)


# Fuzz: whatever bytes a peer sends, the protocol core answers with a request or answer, or a
# ProtocolError that names the sender's side; never another exception, never a longer line.
_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300),
        _JSONISH.map(lambda value: json.dumps(value).encode()),
        st.fixed_dictionaries(
            {"v": st.sampled_from([reportproto.VERSION, 0, "1", None])},
            optional={
                "command": st.sampled_from(["top", "list", "rm", 1, None]),
                "params": _JSONISH,
                "config": _JSONISH,
                "status": st.sampled_from(["ok", "fallback", "error", "x"]),
                "stdout": _JSONISH,
                "stderr": _JSONISH,
                "exit": _JSONISH,
                "fault": _JSONISH,
                "reason": _JSONISH,
            },
        ).map(lambda value: json.dumps(value).encode()),
    )
)
def test_protocol_core_takes_any_bytes(line: bytes) -> None:
    for decode, side in ((decode_request, "client"), (decode_answer, "server")):
        try:
            decode(line)
        except ProtocolError as exc:
            assert exc.fault == side
    buffer = LineBuffer(128, "client")
    try:
        for start in range(0, len(line) + 1, 7):
            got = buffer.feed(line[start : start + 7] + (b"\n" if start >= len(line) else b""))
            if got is not None:
                assert len(got) <= 128 and b"\n" not in got
    except ProtocolError as exc:
        assert exc.fault == "client" and len(line) > 128
