"""Settings of the flow collector and store (section ``[flows]``)."""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator

from lanalyze.configbase import ListenAddress, ListenAddresses, Section
from lanalyze.configpath import QUERY_DEFAULTS
from lanalyze.flows.enrich.config import EnrichConfig, NetworkAttributes, check_networks


class RollupConfig(Section):
    """Rollup tables and retention (section ``[flows.rollup]``), see lanalyze.flows.store.rollup."""

    enabled: bool = Field(
        default=True,
        description="Maintain rollup tables, compact closed hours and enforce retention while "
        "the collector runs.",
    )
    interval: float = Field(
        default=10.0, gt=0, le=3600, description="Seconds between maintenance rounds."
    )
    close_after: int = Field(
        default=300,
        ge=0,
        le=86400,
        description="Seconds after an hour ends before it is compacted (late flows still "
        "count; they are merged again later).",
    )
    compression: Literal["lz4", "zstd", "snappy", "none"] = Field(
        default="lz4", description="Parquet compression of rollup parts and compacted raw files."
    )
    max_memory: int = Field(
        default=1024 * 1024 * 1024,
        ge=1024 * 1024,
        description="Bytes the maintainer's roll-up of new raw segments may hold at once "
        "(chunks being summed and sums not written yet), whatever the backlog.",
    )
    # Before [flows.query] existed the report settings lived here, applied only where a
    # maintainer ran: still accepted (moved by FlowsConfig, with a warning), never used here.
    query_threads: int | None = Field(
        default=None, ge=1, le=256, description="Deprecated: use flows.query.threads."
    )
    query_max_raw_bytes: int | None = Field(
        default=None, ge=0, description="Deprecated: use flows.query.max_raw_bytes."
    )
    raw_max_age: float = Field(
        default=7, ge=0, description="Days of raw flows kept (0: no age limit)."
    )
    raw_max_bytes: int = Field(
        default=0, ge=0, description="Bytes of raw flows kept, oldest hours go first (0: no limit)."
    )
    minute_max_age: float = Field(
        default=2, ge=0, description="Days of per-minute rollups kept (0: no age limit)."
    )
    minute_max_bytes: int = Field(
        default=0, ge=0, description="Bytes of per-minute rollups kept (0: no limit)."
    )
    hour_max_age: float = Field(
        default=90, ge=0, description="Days of per-hour and 6-hour rollups kept (0: no age limit)."
    )
    hour_max_bytes: int = Field(
        default=0,
        ge=0,
        description="Bytes of per-hour (and, apart, 6-hour) rollups kept (0: no limit).",
    )
    day_max_age: float = Field(
        default=0, ge=0, description="Days of per-day rollups kept (0: no age limit)."
    )
    day_max_bytes: int = Field(
        default=0, ge=0, description="Bytes of per-day rollups kept (0: no limit)."
    )


class NamesConfig(Section):
    """Reverse DNS names of the addresses reports show (section ``[flows.query.names]``):
    ``--resolve`` on the report commands, the console's *Names* toggle."""

    resolver: ListenAddress | None = Field(
        default=None,
        description="DNS server for the PTR lookups as HOST:PORT; unset uses /etc/resolv.conf.",
    )
    timeout: float = Field(
        default=2.0, gt=0, le=30, description="Seconds one PTR lookup may take (all retries)."
    )
    budget: float = Field(
        default=0.2,
        gt=0,
        le=10,
        description="Seconds a console page or API answer waits for names; addresses not "
        "resolved by then are shown as addresses (their lookups go on, for the next view).",
    )
    cli_budget: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description="Seconds a report command with --resolve waits for names.",
    )
    concurrency: int = Field(default=16, ge=1, le=256, description="PTR lookups in flight at once.")
    max_pending: int = Field(
        default=1024,
        ge=1,
        le=100_000,
        description="Lookups queued or in flight at most; addresses beyond it stay unresolved "
        "in that view.",
    )
    cache_size: int = Field(
        default=10_000,
        ge=0,
        le=1_000_000,
        description="Names (and no-name answers) kept for their TTL; 0 disables the cache.",
    )
    cache_memory: int = Field(
        default=4 * 1024 * 1024,
        ge=65536,
        le=1024 * 1024 * 1024,
        description="Bytes the name cache may hold (estimated); least recently used go first.",
    )


class QueryConfig(Section):
    """Report queries (section ``[flows.query]``): applied by every process that answers
    reports (``lanalyze flows top|series|...``, the console and API of ``lanalyze serve``)."""

    threads: int = Field(
        default=QUERY_DEFAULTS["threads"],
        ge=1,
        le=256,
        description="DuckDB threads per report query.",
    )
    max_raw_bytes: int = Field(
        default=QUERY_DEFAULTS["max_raw_bytes"],
        ge=0,
        description="Bytes of raw segments one report may scan; a report needing more "
        "(a per-flow filter over weeks) is refused with a message.",
    )
    socket: bool = Field(
        default=True,
        description="`lanalyze serve` answers the report commands (`lanalyze flows top|series|"
        "list|interfaces|status`) of the same user over `<data_dir>/lanalyze.sock`, with its warm "
        "query engine; the commands run the query themselves when no server answers.",
    )
    socket_clients: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Report-socket connections served at once (each runs one report); more "
        "are told to run the report themselves.",
    )
    socket_max_request: int = Field(
        default=1 << 20,
        ge=4096,
        le=64 << 20,
        description="Bytes of one report-socket request (the command's parameters and the "
        "client's configuration file); a longer one is refused.",
    )
    socket_max_answer: int = Field(
        default=64 << 20,
        ge=1 << 16,
        le=1 << 30,
        description="Bytes of a report's printed output the server sends back; a longer one "
        "is left to the command to run itself.",
    )
    names: NamesConfig = Field(
        default_factory=NamesConfig, description="Reverse DNS names in reports."
    )


_MOVED_TO_QUERY = {"query_threads": "threads", "query_max_raw_bytes": "max_raw_bytes"}


class SnmpExporterConfig(Section):
    """How to reach one exporter's SNMP agent (a table in ``[flows.snmp.exporters]``)."""

    community: SecretStr | None = Field(
        default=None,
        description="SNMP community of this exporter (unset: flows.snmp.community). A secret: "
        "never logged.",
    )
    port: int = Field(default=161, ge=1, le=65535, description="UDP port of the SNMP agent.")
    version: Literal["1", "2c"] = Field(
        default="2c", description='SNMP version: "2c" (GETBULK walks) or "1".'
    )


class SnmpConfig(Section):
    """Interface names and speeds from SNMP (section ``[flows.snmp]``), see lanalyze.flows.snmp."""

    enabled: bool = Field(
        default=False,
        description="Poll the exporters' IF-MIB for interface names and speeds while the "
        "collector runs (needs the optional `snmp` dependency).",
    )
    interval: float = Field(
        default=300.0, ge=5, le=86400, description="Seconds between polls of every exporter."
    )
    timeout: float = Field(
        default=2.0, gt=0, le=60, description="Seconds to wait for each SNMP response."
    )
    retries: int = Field(default=1, ge=0, le=10, description="Retries of an unanswered request.")
    community: SecretStr | None = Field(
        default=None,
        description="Default community: used for listed exporters without one, and to poll "
        "the exporters the collector has seen (exporters.json) inside flows.snmp.networks. "
        "A secret: never logged.",
    )
    networks: list[str] = Field(
        default_factory=list,
        description="Networks whose seen exporters are polled with the default community "
        '(e.g. ["192.0.2.0/24"]); others never are: a source address can be forged.',
    )
    max_exporters: int = Field(
        default=1000,
        ge=1,
        le=100_000,
        description="Exporters polled per round at most (bounds a round's time and the file).",
    )
    exporters: dict[str, SnmpExporterConfig] = Field(
        default_factory=dict,
        description='Per exporter address: { community = "...", port = 161, version = "2c" }.',
    )

    @field_validator("networks")
    @classmethod
    def _check_networks(cls, value: list[str]) -> list[str]:
        normal = []
        for text in value:
            try:
                normal.append(str(ipaddress.ip_network(text, strict=False)))
            except ValueError:
                raise ValueError(f"SNMP network {text!r} is not an IP network") from None
        return normal

    @field_validator("exporters")
    @classmethod
    def _check_exporters(
        cls, value: dict[str, SnmpExporterConfig]
    ) -> dict[str, SnmpExporterConfig]:
        normal = {}
        for address, settings in value.items():
            try:
                parsed = ipaddress.ip_address(address)
            except ValueError:
                raise ValueError(f"SNMP exporter {address!r} is not an IP address") from None
            mapped = getattr(parsed, "ipv4_mapped", None)
            # The reports name exporters so: IPv4 (also when mapped) as dotted quads.
            normal[str(mapped or parsed)] = settings
        return normal

    @model_validator(mode="after")
    def _check_communities(self) -> SnmpConfig:
        if not self.enabled or self.community is not None:
            return self
        if not self.exporters:
            raise ValueError("flows.snmp is enabled but names no exporters and no community")
        for address, settings in self.exporters.items():
            if settings.community is None:
                raise ValueError(
                    f"SNMP exporter {address} has no community and flows.snmp.community is unset"
                )
        return self


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def _check_identifier(value: str) -> str:
    """A ClickHouse database or cluster name: it is written into DDL, so only plain names."""
    if not _IDENTIFIER.fullmatch(value):
        raise ValueError(f"{value!r} is not a plain name (letters, digits, _; not first a digit)")
    return value


def parse_server(value: str) -> tuple[str, int]:
    """``HOST:PORT`` of a ClickHouse server's native port (a host name or an IP address;
    IPv6 in brackets); the port defaults to 9000 (9440 is the usual TLS port)."""
    host, sep, port_text = value.rpartition(":")
    if not sep or (host.count(":") and not host.startswith("[")):
        host, port_text = value, "9000"
    host = host.removeprefix("[").removesuffix("]")
    if not host or not re.fullmatch(r"[A-Za-z0-9.:_-]+", host):
        raise ValueError(f"{value!r}: expected HOST or HOST:PORT")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{value!r}: port must be a number from 1 to 65535")
    return host, int(port_text)


class StoreConfig(Section):
    """Where flows are stored (section ``[flows.store]``): the embedded Parquet store, or a
    ClickHouse cluster (lanalyze.flows.store.clickhouse; docs/scale-out.md)."""

    backend: Literal["parquet", "clickhouse"] = Field(
        default="parquet",
        description='"parquet": the embedded store in the data directory; "clickhouse": '
        "the ClickHouse cluster named below.",
    )
    servers: list[str] = Field(
        default_factory=lambda: ["127.0.0.1:9000"],
        min_length=1,
        description="ClickHouse servers (native protocol, HOST:PORT), tried in order for "
        "inserts; list every server of the cluster: the tables are created on each.",
    )
    cluster: str = Field(
        default="lanalyze",
        description="Cluster name of the servers' `remote_servers` the Distributed tables span.",
    )
    database: str = Field(default="lanalyze", description="ClickHouse database of the tables.")
    user: str = Field(default="default", description="ClickHouse user.")
    password: SecretStr | None = Field(
        default=None, description="ClickHouse password (unset: none). A secret: never logged."
    )
    tls: bool = Field(default=False, description="Connect with TLS (the servers' secure port).")
    tls_ca: str | None = Field(
        default=None,
        description="CA certificate file to verify the servers with (unset: the system's).",
    )
    tls_verify: bool = Field(
        default=True, description="Verify the servers' certificates and names (with tls)."
    )
    connect_timeout: float = Field(
        default=5.0, gt=0, le=300, description="Seconds to connect to a ClickHouse server."
    )
    insert_timeout: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="Seconds an insert may take before the batch goes to the spool instead.",
    )
    spool_max_bytes: int = Field(
        default=1 << 30,
        ge=0,
        le=1 << 50,
        description="Bytes of batches each collector keeps on local disk while ClickHouse is "
        "unreachable or slow (per worker: this divided by the workers); when full, new batches "
        "are dropped and counted, the oldest kept.",
    )
    retry_interval: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="Seconds between attempts to reach ClickHouse again after a failed insert.",
    )
    fill_rollups: bool = Field(
        default=True,
        description="This collector fills the hour and day rollups from the minute rollups "
        "every flows.rollup.interval (materialized views feed only the minute ones). With "
        "several collectors on one cluster, set it on one only (docs/scale-out.md).",
    )

    @field_validator("cluster", "database")
    @classmethod
    def _check_names(cls, value: str) -> str:
        return _check_identifier(value)

    @field_validator("servers")
    @classmethod
    def _check_servers(cls, value: list[str]) -> list[str]:
        for server in value:
            parse_server(server)
        return value


class FlowsConfig(Section):
    enabled: bool = Field(default=True, description="Run the flow collector in `lanalyze serve`.")
    listen: ListenAddresses = Field(
        default_factory=lambda: ["127.0.0.1:2055", "127.0.0.1:6343"],
        description="UDP addresses to receive NetFlow v5/v7/v9, IPFIX and sFlow v5 on (4739 "
        "and 9995 are also common); every address takes every protocol, told apart per "
        "datagram.",
    )
    receive_buffer: int = Field(
        default=64 * 1024 * 1024,
        ge=65536,
        le=2**31 - 1,
        description="Kernel receive buffer per socket in bytes (SO_RCVBUF; raised with "
        "SO_RCVBUFFORCE when running as root).",
    )
    workers: int = Field(
        default=0,
        ge=0,
        le=64,
        description="Receive/decode/store worker processes sharing each listen address with "
        "SO_REUSEPORT (0: one per CPU core, at most 8). The kernel keeps each exporter on "
        "one worker.",
    )
    flush_interval: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="Seconds between segment writes: flows are queryable, and survive a "
        "crash, at most about this long after they arrive.",
    )
    segment_max_rows: int = Field(
        default=500_000,
        ge=1000,
        le=100_000_000,
        description="A segment is written as soon as this many flows are waiting, even "
        "before the flush interval (bounds a worker's memory: ~180 bytes a waiting flow).",
    )
    compression: Literal["lz4", "zstd", "snappy", "none"] = Field(
        default="lz4", description="Parquet compression of flow segments."
    )
    compression_level: int | None = Field(
        default=None,
        ge=1,
        le=22,
        description="zstd level (unset: 1); ignored by the other codecs.",
    )
    max_templates_per_exporter: int = Field(
        default=1024,
        ge=1,
        le=65536,
        description="Templates kept per exporter and observation domain; more are dropped "
        "and counted (bounds memory under a template flood).",
    )
    max_exporters: int = Field(
        default=10_000,
        ge=1,
        le=1_000_000,
        description="Exporter (address, domain) pairs tracked for templates and counters; "
        "beyond it counts go to an `overflow` row.",
    )
    sampling_rates: dict[str, int] = Field(
        default_factory=dict,
        description="Sampling rate per exporter address (1 in N), used when the exporter "
        'does not announce one, e.g. { "192.0.2.1" = 1000 }.',
    )
    template_memory: int = Field(
        default=64 * 2**20,
        ge=2**20,
        le=2**40,
        description="Bytes of template and exporter state each worker may hold (estimated "
        "footprint); beyond it templates are evicted or refused, and counted.",
    )
    template_memory_per_exporter: int = Field(
        default=4 * 2**20,
        ge=65536,
        le=2**40,
        description="Bytes of that state one exporter address may hold; over it, it evicts "
        "its own oldest templates (a flood from one address cannot evict the others').",
    )
    max_records_per_datagram: int = Field(
        default=4096,
        ge=1,
        le=65535,
        description="Flow records read from one datagram at most; the rest are dropped and "
        "the datagram counted.",
    )
    exporters_allowed: list[str] | None = Field(
        default=None,
        description="Networks whose datagrams are decoded, e.g. "
        '["192.0.2.0/24", "2001:db8::/32"] (unset: any source). Others are counted and '
        "dropped unread.",
    )
    rollup: RollupConfig = Field(
        default_factory=RollupConfig, description="Rollup tables and retention."
    )
    query: QueryConfig = Field(default_factory=QueryConfig, description="Report queries.")
    snmp: SnmpConfig = Field(
        default_factory=SnmpConfig, description="Interface names and speeds from SNMP."
    )
    store: StoreConfig = Field(
        default_factory=StoreConfig, description="Where flows are stored (Parquet or ClickHouse)."
    )
    enrich: EnrichConfig = Field(
        default_factory=EnrichConfig,
        description="Country, AS, interface and application names added at ingest.",
    )
    networks: dict[str, NetworkAttributes] = Field(
        default_factory=dict,
        description='Names and roles of networks, e.g. "10.1.0.0/16" = { name = "office", '
        'role = "inside" }; the longest prefix holding an address wins.',
    )

    @field_validator("networks")
    @classmethod
    def _check_named_networks(
        cls, value: dict[str, NetworkAttributes]
    ) -> dict[str, NetworkAttributes]:
        return check_networks(value)

    _deprecated: list[tuple[str, str]] = PrivateAttr(default_factory=list)

    @model_validator(mode="after")
    def _move_query_settings(self) -> FlowsConfig:
        """``flows.rollup.query_*`` (older configurations) into ``[flows.query]``, unless that
        sets the same key; remembered for :meth:`deprecated_keys`."""
        for old, new in _MOVED_TO_QUERY.items():
            value = getattr(self.rollup, old)
            if value is None:
                continue
            if new not in self.query.model_fields_set:
                setattr(self.query, new, value)
            setattr(self.rollup, old, None)
            self.rollup.model_fields_set.discard(old)
            self._deprecated.append((f"flows.rollup.{old}", f"flows.query.{new}"))
        return self

    def deprecated_keys(self) -> list[tuple[str, str]]:
        """(old key, new key) of the deprecated keys the configuration used."""
        return list(self._deprecated)

    @field_validator("exporters_allowed")
    @classmethod
    def _check_networks(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        normal = []
        for text in value:
            try:
                normal.append(str(ipaddress.ip_network(text, strict=False)))
            except ValueError:
                raise ValueError(f"{text!r} is not an IP network (address/prefix)") from None
        return normal

    @field_validator("sampling_rates")
    @classmethod
    def _check_rates(cls, value: dict[str, int]) -> dict[str, int]:
        normal = {}
        for address, rate in value.items():
            if not 1 <= rate <= 2**32 - 1:
                raise ValueError(f"sampling rate of {address} must be 1 to 4294967295")
            # The canonical text, as the receive side names exporters.
            normal[str(ipaddress.ip_address(address))] = rate
        return normal
