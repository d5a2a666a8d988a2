"""SNMP poller: interface names and speeds of the flow exporters, for the interface reports.

Walks four IF-MIB columns (RFC 2863) of each configured exporter's agent over SNMPv2c
(GETBULK, RFC 3416 section 4.2.3) or SNMPv1: ifName, ifAlias, ifDescr and ifHighSpeed, with
ifSpeed as the fallback for agents without the ifXTable or for speeds under 1 Mb/s. The
result goes to ``<data_dir>/flows/interfaces.json`` (atomically), which the reports read
(:mod:`lanalyze.flows.query.interfaces`).

The protocol work is done by pysnmp (an optional dependency: ``lanalyze[snmp]``): SNMP's BER
encoding and request/retry handling is a library's job, not ours. What is ours is small and
sans-IO: choosing whom to poll (:func:`poll_targets`: the listed exporters, and with a default
community the exporters seen in ``exporters.json`` inside ``flows.snmp.networks``, never any
other address: a flow datagram's source can be forged, and polling it would send the community
to an address of the forger's choice) and turning walked columns into the
file's entries (:func:`interface_table`). Agents' answers are untrusted: texts are decoded
leniently and cut to a bounded length, indexes outside 1..2^31-1 and rows beyond
:data:`MAX_INTERFACES` are dropped. A failing agent is counted and logged (rate-limited,
naming the exporter, never the community) and keeps its previous entries; the poller never
stops because of one.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import ipaddress
import json
import time
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import Counter

from lanalyze import metrics
from lanalyze.datadir import atomic_write_bytes
from lanalyze.flows.config import SnmpConfig
from lanalyze.flows.errors import PollFailed
from lanalyze.flows.store.paths import exporters_path, interfaces_path
from lanalyze.log import RateLimiter, get_logger

log = get_logger(__name__)

COLUMNS = {
    "name": "1.3.6.1.2.1.31.1.1.1.1",  # ifName
    "alias": "1.3.6.1.2.1.31.1.1.1.18",  # ifAlias
    "description": "1.3.6.1.2.1.2.2.1.2",  # ifDescr
    "high_speed": "1.3.6.1.2.1.31.1.1.1.15",  # ifHighSpeed, Mb/s
    "speed": "1.3.6.1.2.1.2.2.1.5",  # ifSpeed, b/s (saturates at 2^32-1)
}
MAX_INTERFACES = 100_000
MAX_TEXT = 255
PARALLEL_AGENTS = 16
BULK_REPETITIONS = 25

POLLS = Counter(
    "lanalyze_snmp_polls_total",
    "SNMP polls of an exporter's interface table that succeeded.",
    ["exporter"],
    registry=metrics.REGISTRY,
)
POLL_FAILURES = Counter(
    "lanalyze_snmp_poll_failures_total",
    "SNMP polls that failed (no_response: timeout, wrong community or no agent; error).",
    ["exporter", "reason"],
    registry=metrics.REGISTRY,
)


@dataclass(frozen=True)
class PollTarget:
    exporter: str
    port: int
    community: str
    version: str

    def __repr__(self) -> str:  # the community is a secret
        return f"PollTarget({self.exporter}:{self.port}, v{self.version})"


def poll_targets(config: SnmpConfig, seen: Iterable[str]) -> list[PollTarget]:
    """Listed exporters, then (with a default community) the exporters the collector saw
    inside ``config.networks``: a seen address alone is never polled (it may be forged)."""
    targets: dict[str, PollTarget] = {}
    default = config.community.get_secret_value() if config.community is not None else None
    for address, settings in config.exporters.items():
        community = settings.community.get_secret_value() if settings.community else default
        if community is not None:
            targets[address] = PollTarget(address, settings.port, community, settings.version)
    networks = [ipaddress.ip_network(n) for n in config.networks]
    if default is not None and networks:
        for address in seen:
            if address not in targets and _inside(address, networks):
                targets[address] = PollTarget(address, 161, default, "2c")
    return list(targets.values())[: config.max_exporters]


def _inside(address: str, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return False
    # exporters.json names IPv4 exporters as dotted quads, but be sure of mapped ones too.
    mapped = getattr(parsed, "ipv4_mapped", None)
    return any((mapped or parsed) in network for network in networks)


def _text(value: object) -> str | None:
    if not isinstance(value, bytes):
        return None
    text = value.split(b"\x00", 1)[0].decode("utf-8", "replace").strip()
    return text[:MAX_TEXT] or None


def interface_table(
    columns: Mapping[str, Mapping[int, object]], polled_at: str
) -> dict[str, dict[str, Any]]:
    """One exporter's file entries from its walked columns (index -> raw value)."""
    indexes = sorted(set[int]().union(*(column.keys() for column in columns.values())))
    table: dict[str, dict[str, Any]] = {}
    for index in indexes[:MAX_INTERFACES]:
        if not 1 <= index <= 2**31 - 1:
            continue
        high = columns.get("high_speed", {}).get(index)
        low = columns.get("speed", {}).get(index)
        speed: int | None = None
        if isinstance(high, int) and high > 0:
            speed = high * 1_000_000
        if isinstance(low, int) and 0 < low < 2**32 - 1 and (speed is None or speed < 10**9):
            # ifSpeed is exact below 4.29 Gb/s; ifHighSpeed rounds to whole Mb/s.
            speed = low
        table[str(index)] = {
            "name": _text(columns.get("name", {}).get(index)),
            "alias": _text(columns.get("alias", {}).get(index)),
            "description": _text(columns.get("description", {}).get(index)),
            "speed_bps": speed,
            "polled_at": polled_at,
        }
    return table


def _seen_exporters(flow_dir: Path) -> list[str]:
    """Exporters in the collector's exporters.json (empty when it has not written one)."""
    try:
        data = json.loads(exporters_path(flow_dir).read_bytes())
        rows = data["exporters"]
        return sorted({str(row["exporter"]) for row in rows if row["exporter"] != "overflow"})
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _load_previous(path: Path) -> dict[str, dict[str, dict[str, Any]]]:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class SnmpPoller:
    """Component polling the exporters' IF-MIB every ``interval`` seconds."""

    name = "snmp"

    def __init__(self, config: SnmpConfig, flow_dir: Path) -> None:
        self.config = config
        self.flow_dir = flow_dir
        self.path = interfaces_path(flow_dir)
        self._hlapi: Any = None
        self._engine: Any = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._limiter = RateLimiter(interval=600, burst=1)
        self._state: dict[str, dict[str, dict[str, Any]]] = {}
        self._round = asyncio.Lock()  # the loop's round and a caller's poll_once() share a file

    @property
    def available(self) -> bool:
        return self._hlapi is not None

    async def start(self) -> None:
        try:
            # A cold import reads ~0.4 s of modules: not on the event loop.
            self._hlapi = await asyncio.to_thread(
                importlib.import_module, "pysnmp.hlapi.v3arch.asyncio"
            )
        except ImportError:
            log.warning(
                "snmp.unavailable",
                extra={"hint": "pip install 'lanalyze[snmp]'; reports stay on ifIndex"},
            )
            return
        self._engine = self._hlapi.SnmpEngine()
        self._state = await asyncio.to_thread(_load_previous, self.path)
        self._stopping = asyncio.Event()
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._engine is not None:
            self._engine.close_dispatcher()
            self._engine = None

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.poll_once()
            except Exception:
                log.exception("snmp.round_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.config.interval)

    async def poll_once(self) -> dict[str, int]:
        """Poll every target once and rewrite the file; returns interfaces found per exporter."""
        async with self._round:
            return await self._poll_round()

    async def _poll_round(self) -> dict[str, int]:
        if self._engine is None:
            return {}
        seen = await asyncio.to_thread(_seen_exporters, self.flow_dir)
        targets = poll_targets(self.config, seen)
        gate = asyncio.Semaphore(PARALLEL_AGENTS)

        async def one(target: PollTarget) -> tuple[str, dict[str, dict[str, Any]] | None]:
            async with gate:
                return target.exporter, await self._poll_target(target)

        found: dict[str, int] = {}
        for exporter, table in await asyncio.gather(*(one(t) for t in targets)):
            if table is not None:
                self._state[exporter] = table  # a failed agent keeps its last answer
                found[exporter] = len(table)
        payload = json.dumps(self._state, sort_keys=True, indent=1).encode()
        await asyncio.to_thread(atomic_write_bytes, self.path, payload)
        return found

    async def _poll_target(self, target: PollTarget) -> dict[str, dict[str, Any]] | None:
        try:
            udp = "Udp6TransportTarget" if ":" in target.exporter else "UdpTransportTarget"
            transport = await getattr(self._hlapi, udp).create(
                (target.exporter, target.port),
                timeout=self.config.timeout,
                retries=self.config.retries,
            )
            columns = {
                key: await self._walk(target, transport, oid) for key, oid in COLUMNS.items()
            }
        except PollFailed as exc:
            POLL_FAILURES.labels(target.exporter, exc.reason).inc()
            self._log_failure(target, exc.reason, str(exc))
            return None
        except Exception as exc:  # the library's bug or an agent it cannot handle
            POLL_FAILURES.labels(target.exporter, "error").inc()
            self._log_failure(target, "error", f"{type(exc).__name__}: {exc}")
            return None
        POLLS.labels(target.exporter).inc()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return interface_table(columns, stamp)

    def _log_failure(self, target: PollTarget, reason: str, detail: str) -> None:
        suppressed = self._limiter.allow(target.exporter)
        if suppressed is not None:
            log.warning(
                "snmp.poll_failed",
                extra={
                    "exporter": target.exporter,
                    "port": target.port,
                    "reason": reason,
                    "error": detail[:200],
                    "suppressed": suppressed,
                },
            )

    async def _walk(self, target: PollTarget, transport: Any, oid: str) -> dict[int, object]:
        """One column of the agent's table: ifIndex -> int or bytes."""
        h = self._hlapi
        auth = h.CommunityData(target.community, mpModel=0 if target.version == "1" else 1)
        request = h.ObjectType(h.ObjectIdentity(oid))
        prefix = tuple(int(part) for part in oid.split("."))
        if target.version == "1":
            walk = h.walk_cmd(
                self._engine, auth, transport, h.ContextData(), request,
                lexicographicMode=False, lookupMib=False,
            )  # fmt: skip
        else:
            walk = h.bulk_walk_cmd(
                self._engine, auth, transport, h.ContextData(), 0, BULK_REPETITIONS, request,
                lexicographicMode=False, lookupMib=False,
            )  # fmt: skip
        column: dict[int, object] = {}
        async for error_indication, error_status, _index, var_binds in walk:
            if error_indication:
                reason = "no_response" if "timeout" in str(error_indication).lower() else "error"
                raise PollFailed(reason, str(error_indication))
            if error_status:
                break  # v1 noSuchName past the table's end, or a column the agent lacks
            for name, value in var_binds:
                sub_ids = tuple(name)
                if len(sub_ids) != len(prefix) + 1 or sub_ids[: len(prefix)] != prefix:
                    continue
                column[sub_ids[-1]] = _value(value)
            if len(column) >= MAX_INTERFACES:
                break
        return column


def _value(value: Any) -> object:
    if hasattr(value, "asOctets"):
        return bytes(value.asOctets())
    try:
        return int(value)
    except (TypeError, ValueError):
        return None  # noSuchObject / noSuchInstance / endOfMibView


async def run_with_poller(config: SnmpConfig, flow_dir: Path, main: Awaitable[None]) -> None:
    """``lanalyze flows collect``: run ``main`` with the poller beside when SNMP is enabled."""
    if not config.enabled:
        await main
        return
    poller = SnmpPoller(config, flow_dir)
    await poller.start()
    try:
        await main
    finally:
        await poller.stop()
