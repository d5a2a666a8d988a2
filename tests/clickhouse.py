"""Two real ClickHouse servers as the shards of a cluster ``lanalyze``, for the ClickHouse backend.

Debian's ``clickhouse-server`` (18.16 here; in packaging/debian-test-packages.txt) is started
twice in a temporary directory, each instance with its own config.xml/users.xml, data, tmp and
user_files paths and logs, listening on 127.0.0.1 only on free ports (native TCP, HTTP,
interserver). Both configs carry the same ``remote_servers`` definition: cluster ``lanalyze``
with two shards of one replica each. There is no ZooKeeper, so ``ON CLUSTER`` DDL does not work:
create tables on each server (``ClickHouseCluster.each``).

The fixture ``clickhouse_cluster`` is session-scoped (a server starts in well under a second);
tests isolate themselves by database (``ClickHouseCluster.fresh_database``). ``stop(i)`` /
``start(i)`` stop and restart one shard on the same ports and data, for outage tests.

Users: ``default`` without a password, and ``lanalyze`` with the password ``PASSWORD`` (to test
that a configured secret is sent and never logged).
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CLUSTER = "lanalyze"
USER = "lanalyze"
PASSWORD = "k1-test-secret"

_CONFIG = """<?xml version="1.0"?>
<yandex>
  <logger>
    <level>warning</level>
    <log>{root}/log/server.log</log>
    <errorlog>{root}/log/error.log</errorlog>
    <console>0</console>
  </logger>
  <listen_host>127.0.0.1</listen_host>
  <tcp_port>{tcp}</tcp_port>
  <http_port>{http}</http_port>
  <interserver_http_port>{interserver}</interserver_http_port>
  <interserver_http_host>127.0.0.1</interserver_http_host>
  <path>{root}/data/</path>
  <tmp_path>{root}/tmp/</tmp_path>
  <user_files_path>{root}/user_files/</user_files_path>
  <format_schema_path>{root}/format_schemas/</format_schema_path>
  <users_config>users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>67108864</mark_cache_size>
  <uncompressed_cache_size>67108864</uncompressed_cache_size>
  <max_concurrent_queries>100</max_concurrent_queries>
  <remote_servers>
    <{cluster}>
{shards}
    </{cluster}>
  </remote_servers>
</yandex>
"""

_SHARD = "      <shard><replica><host>127.0.0.1</host><port>{tcp}</port></replica></shard>"

_USERS = """<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>2000000000</max_memory_usage></default></profiles>
  <users>
    <default>
      <password></password>
      <networks><ip>127.0.0.1</ip></networks>
      <profile>default</profile>
      <quota>default</quota>
    </default>
    <{user}>
      <password>{password}</password>
      <networks><ip>127.0.0.1</ip></networks>
      <profile>default</profile>
      <quota>default</quota>
    </{user}>
  </users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors>
    <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time>
  </interval></default></quotas>
</yandex>
"""


@dataclass
class ClickHouseServer:
    """One clickhouse-server process; ``root`` holds its config, data and logs."""

    root: Path
    tcp_port: int
    http_port: int
    interserver_port: int
    proc: subprocess.Popen[bytes] | None = None

    host: str = "127.0.0.1"

    def start(self, binary: str) -> None:
        out = (self.root / "log" / "stdout.log").open("ab")
        self.proc = subprocess.Popen(
            [binary, f"--config-file={self.root / 'config.xml'}"],
            cwd=self.root,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()
        self.wait_ready()

    def wait_ready(self) -> None:
        """Until a query answers; the process dying or 30 s passing is a failure with its log."""
        from clickhouse_driver import Client
        from clickhouse_driver.errors import Error as DriverError

        deadline = time.monotonic() + 30
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"clickhouse-server exited ({self.proc.returncode}):\n{self.log()}"
                )
            try:
                # a plain connect first: the driver logs a traceback for every refused one
                socket.create_connection((self.host, self.tcp_port), timeout=1).close()
                with Client(self.host, port=self.tcp_port, connect_timeout=1) as client:
                    client.execute("SELECT 1")
                return
            except (DriverError, OSError, EOFError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"clickhouse-server did not answer:\n{self.log()}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        parts = []
        for name in ("stdout.log", "error.log"):
            path = self.root / "log" / name
            if path.exists():
                parts.append(path.read_text(errors="replace")[-4000:])
        return "\n".join(parts)


@dataclass
class ClickHouseCluster:
    """The shards of cluster ``lanalyze``; ``client(i)``: a native-protocol client to shard i."""

    servers: list[ClickHouseServer]
    binary: str
    cluster: str = CLUSTER
    user: str = USER
    password: str = PASSWORD
    _databases: Iterator[int] = field(default_factory=itertools.count)

    @property
    def hosts(self) -> list[tuple[str, int]]:
        """(host, native TCP port) of each shard, in shard order."""
        return [(s.host, s.tcp_port) for s in self.servers]

    @property
    def http_ports(self) -> list[int]:
        return [s.http_port for s in self.servers]

    def client(self, shard: int = 0, **kwargs: Any) -> Any:
        """A ``clickhouse_driver.Client`` to one shard (as ``default`` unless ``user=`` is given).

        Use it as a context manager (``with cluster.client(0) as c:``) so its socket is closed:
        the suite runs with warnings as errors, and an unclosed socket is a ResourceWarning.
        """
        from clickhouse_driver import Client

        server = self.servers[shard]
        return Client(server.host, port=server.tcp_port, **kwargs)

    def execute(self, shard: int, sql: str, *args: Any, **kwargs: Any) -> Any:
        """One statement on one shard through a client closed right after."""
        with self.client(shard) as client:
            return client.execute(sql, *args, **kwargs)

    def each(self, sql: str) -> list[Any]:
        """Run one statement on every shard (DDL: no ``ON CLUSTER`` without ZooKeeper)."""
        return [self.execute(i, sql) for i in range(len(self.servers))]

    def fresh_database(self, prefix: str = "t") -> str:
        """A new empty database on every shard, unique within the session."""
        name = f"{prefix}_{os.getpid()}_{next(self._databases)}"
        self.each(f"CREATE DATABASE {name}")
        return name

    def stop(self, shard: int) -> None:
        self.servers[shard].stop()

    def start(self, shard: int) -> None:
        """Restart a stopped shard on the same ports and data."""
        if not self.servers[shard].running:
            self.servers[shard].start(self.binary)


def start_cluster(root: Path, shards: int = 2) -> ClickHouseCluster:
    """Start ``shards`` servers under ``root`` (also usable outside pytest: the benchmark)."""
    # Imported here: tests/conftest.py imports this module for its fixtures.
    from tests.conftest import free_port, require_tool

    binary = require_tool("clickhouse-server")
    servers = []
    for i in range(shards):
        server_root = root / f"shard{i}"
        for sub in ("log", "data", "tmp", "user_files", "format_schemas"):
            (server_root / sub).mkdir(parents=True, exist_ok=True)
        servers.append(ClickHouseServer(server_root, free_port(), free_port(), free_port()))
    # the Distributed engine connects to the shards as `default` (no password, loopback only)
    shard_xml = "\n".join(_SHARD.format(tcp=s.tcp_port) for s in servers)
    for server in servers:
        (server.root / "config.xml").write_text(
            _CONFIG.format(
                root=server.root,
                tcp=server.tcp_port,
                http=server.http_port,
                interserver=server.interserver_port,
                cluster=CLUSTER,
                shards=shard_xml,
            )
        )
        (server.root / "users.xml").write_text(_USERS.format(user=USER, password=PASSWORD))
    cluster = ClickHouseCluster(servers, binary)
    try:
        for server in servers:
            server.start(binary)
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return cluster


@pytest.fixture(scope="session")
def clickhouse_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseCluster]:
    """Two clickhouse-server shards on loopback for the whole session, stopped at the end."""
    cluster = start_cluster(tmp_path_factory.mktemp("clickhouse"))
    try:
        yield cluster
    finally:
        for server in cluster.servers:
            server.stop()


@pytest.fixture
def clickhouse_db(clickhouse_cluster: ClickHouseCluster) -> str:
    """An empty database on both shards for one test."""
    return clickhouse_cluster.fresh_database()
