"""Interface counters from sFlow counter samples: speeds and octet rates without SNMP.

sFlow v5 agents send, every polling interval (20-30 s is usual), a generic interface counters
record per interface (:class:`~lanalyze.flows.decode.sflow.InterfaceCounters`: ifIndex,
ifSpeed, ifInOctets, ifOutOctets, 64-bit). The workers pass the latest record per interface to
the collector process (in their counter reports, once a second); :class:`InterfaceCounterTable`
there keeps the last record of each (exporter, ifIndex), turns two consecutive ones into bits
per second in and out, and is written to ``<data_dir>/flows/interface_counters.json``
(:func:`~lanalyze.flows.store.paths.interface_counters_path`) with ``exporters.json``. The
interface reports read it (:mod:`lanalyze.flows.query.interfaces`): an interface SNMP does
not know (or SNMP is off) gets its speed, and so its utilisation, from here.

Trust: the values are the agent's (any source that reaches ``flows.listen``): a rate is only
computed from two records of the same agent uptime run whose counters did not go back (a
reset, or a forged record, gives no rate, not a huge one), and the table holds at most
``max_interfaces`` interfaces (new ones beyond it are counted and dropped).

Shape of the file: ``{exporter: {ifIndex: {speed_bps, in_octets, out_octets, in_bps,
out_bps, updated_ms}}}`` (``in_bps``/``out_bps`` null until two records were seen).
"""

from __future__ import annotations

import functools
import ipaddress
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lanalyze.datadir import atomic_write_bytes
from lanalyze.flows.store.paths import interface_counters_path

MAX_INTERFACES = 100_000
"""Interfaces whose counters are kept (all exporters together)."""

Row = Sequence[int | str]
"""As a worker reports a record: [exporter, ifIndex, speed_bps, in_octets, out_octets,
received_ms, uptime_ms]."""


@functools.lru_cache(maxsize=4096)
def exporter_name(source: str) -> str:
    """An exporter as the reports name it: IPv4 (also when IPv4-mapped, as a dual-stack
    socket gives it) as a dotted quad; anything unparsable as given."""
    try:
        address = ipaddress.ip_address(source.split("%", 1)[0])
    except ValueError:
        return source
    return str(getattr(address, "ipv4_mapped", None) or address)


@dataclass
class _Entry:
    speed_bps: int
    in_octets: int
    out_octets: int
    received_ms: int
    uptime_ms: int
    in_bps: float | None = None
    out_bps: float | None = None


class InterfaceCounterTable:
    """The last counter record of every interface, and the rates between the last two."""

    def __init__(self, max_interfaces: int = MAX_INTERFACES) -> None:
        self.max_interfaces = max_interfaces
        self._entries: dict[tuple[str, int], _Entry] = {}
        self.records = 0
        """Records taken (counted on /metrics by the decoder already; here for tests)."""
        self.dropped = 0
        """Records of new interfaces beyond ``max_interfaces``."""
        self.changed = False

    def __len__(self) -> int:
        return len(self._entries)

    def update(self, rows: Iterable[Row]) -> None:
        entries = self._entries
        for row in rows:
            exporter, index, speed, in_octets, out_octets, received, uptime = row
            key = (exporter_name(str(exporter)), int(index))
            previous = entries.get(key)
            entry = _Entry(int(speed), int(in_octets), int(out_octets), int(received), int(uptime))
            if previous is None:
                if len(entries) >= self.max_interfaces:
                    self.dropped += 1
                    continue
            else:
                if entry.received_ms < previous.received_ms:
                    continue  # an older record reported late: keep the newer one
                elapsed = entry.uptime_ms - previous.uptime_ms
                went_on = (
                    elapsed > 0
                    and entry.in_octets >= previous.in_octets
                    and entry.out_octets >= previous.out_octets
                )
                if went_on:
                    seconds = elapsed / 1000
                    entry.in_bps = (entry.in_octets - previous.in_octets) * 8 / seconds
                    entry.out_bps = (entry.out_octets - previous.out_octets) * 8 / seconds
                elif elapsed == 0 and entry.in_octets == previous.in_octets:
                    entry.in_bps, entry.out_bps = previous.in_bps, previous.out_bps  # repeated
            entries[key] = entry
            self.records += 1
            self.changed = True

    def to_json(self) -> dict[str, dict[str, dict[str, int | float | None]]]:
        out: dict[str, dict[str, dict[str, int | float | None]]] = {}
        for (exporter, index), entry in sorted(self._entries.items()):
            out.setdefault(exporter, {})[str(index)] = {
                "speed_bps": entry.speed_bps,
                "in_octets": entry.in_octets,
                "out_octets": entry.out_octets,
                "in_bps": None if entry.in_bps is None else round(entry.in_bps, 3),
                "out_bps": None if entry.out_bps is None else round(entry.out_bps, 3),
                "updated_ms": entry.received_ms,
            }
        return out

    def snapshot(self) -> bytes | None:
        """The file's bytes if anything changed since the last snapshot (None otherwise)."""
        if not self.changed:
            return None
        self.changed = False
        return json.dumps(self.to_json()).encode() + b"\n"


def write(flow_dir: Path, data: bytes) -> None:
    """Replace the file atomically (0600)."""
    atomic_write_bytes(interface_counters_path(flow_dir), data)
