"""Enrichment at ingest: country, AS, network, exporter, interface and application names.

The collector's workers (and ``flows import``) pass each decoded batch through one
:class:`Enricher` before it is stored, so the names are kept with the flows, in rollups and
history, as they were when the flow arrived. Parts:

* :mod:`.geoip`: country and AS number/organisation of source and destination from
  MaxMind-format files; the AS number the exporter sent (NetFlow v9 / IPFIX IE 16/17) wins
  when it is not 0, unless ``flows.enrich.as_source = "geoip"``;
* :mod:`.networks`: names and roles of configured networks, longest prefix wins;
* exporter names and interface classification (name, boundary, provider) from rules,
  falling back to the interface names the SNMP poller wrote (``interfaces.json``);
* application names: the application id (IE 95, RFC 6759: classification engine and
  selector) named by ``flows.enrich.applications``, else by the name its exporter announced
  in option records (IE 96, the NBAR option table: :mod:`lanalyze.flows.decode.
  applications`), engine 3 (IANA L4 ports) by the port table; without an id, the port table
  of :mod:`lanalyze.flows.query.apps`.

No Python runs per flow: addresses are searched in sorted ranges (``np.searchsorted``,
:mod:`.ranges`); exporter+ifIndex pairs and application keys are reduced to the batch's
distinct ones with ``np.unique``, each answered once; answers become Arrow dictionary columns
(:mod:`.names`: the table's distinct names once, an int32 index per flow), no text per flow.
Unknown is null.

Trust: flow values are the exporter's (untrusted) and only used as lookup keys; names come
from the configuration, the administrator's databases and the SNMP file, all bounded in
length (:mod:`.config`, :mod:`.geoip`).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from lanalyze.flows import catalogue
from lanalyze.flows.decode.applications import ApplicationNames
from lanalyze.flows.enrich.config import (
    MAX_LABEL,
    EnrichConfig,
    InterfaceRule,
    NetworkAttributes,
)
from lanalyze.flows.enrich.geoip import GeoIP
from lanalyze.flows.enrich.names import NameCodes, NameRegistry, column
from lanalyze.flows.enrich.networks import NetworkTable
from lanalyze.flows.enrich.ranges import AddressKeys
from lanalyze.log import RateLimiter, get_logger

log = get_logger(__name__)

LABEL_COLUMNS = catalogue.LABEL_COLUMNS
"""The catalogue's name columns this package fills (null when unknown)."""

MAX_INTERFACE_CACHE = 65536
"""(exporter, ifIndex) classifications kept per worker (~300 bytes each); emptied when full."""

Labels = dict[str, pa.Array]


@dataclass
class EnrichCounters:
    """What enrichment did in this process (sent to the parent with the worker's counters)."""

    batches: int = 0
    flows: int = 0
    geo_lookups: int = 0
    database_reloads: int = 0
    database_failures: int = 0
    interface_rules_matched: int = 0


def _mapped(key: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    packed = key.ljust(16, b"\x00")
    if packed[:12] == b"\x00" * 10 + b"\xff\xff":
        return ipaddress.IPv4Address(packed[12:])
    return ipaddress.IPv6Address(packed)


@dataclass(frozen=True)
class _Interface:
    name: str | None
    boundary: str | None
    provider: str | None


@dataclass
class _Rules:
    exporters: list[tuple[list[ipaddress.IPv4Network | ipaddress.IPv6Network], str]]
    interfaces: list[tuple[InterfaceRule, list[Any], re.Pattern[str] | None]] = field(
        default_factory=list
    )


def _in(address: ipaddress.IPv4Address | ipaddress.IPv6Address, networks: list[Any]) -> bool:
    return any(address.version == n.version and address in n for n in networks)


DIRECT_KEYS = 1 << 22
"""Largest exporters x ifIndex span :func:`_interface_pairs` answers with a table of flags
(4 MiB) instead of sorting every flow's key."""


def _interface_pairs(
    exporter_code: npt.NDArray[np.intp], in_if: npt.NDArray[Any], out_if: npt.NDArray[Any]
) -> tuple[list[tuple[int, int]], npt.NDArray[np.intp]]:
    """The distinct (exporter code, ifIndex) pairs of a batch's input and output interfaces,
    and each flow's pair index (inputs first, then outputs). A batch has few exporters and a
    router's ifIndex values are small, so a flag per possible pair finds them in O(n);
    ``np.unique`` (a sort of 2n keys) cost more than the rest of enrichment."""
    exporters = int(exporter_code.max()) + 1 if len(exporter_code) else 0
    top = max(int(in_if.max()), int(out_if.max())) + 1 if len(in_if) else 0
    if exporters * top <= DIRECT_KEYS:
        base = exporter_code * top
        dense = np.concatenate((base + in_if, base + out_if))
        seen = np.zeros(exporters * top, dtype=bool)
        seen[dense] = True
        present = np.flatnonzero(seen)
        position = np.cumsum(seen, dtype=np.intp) - 1
        pairs = list(zip((present // top).tolist(), (present % top).tolist(), strict=True))
        return pairs, position[dense]
    code = exporter_code.astype(np.uint64) << np.uint64(32)
    packed = np.concatenate((code | in_if.astype(np.uint64), code | out_if.astype(np.uint64)))
    unique, inverse = np.unique(packed, return_inverse=True)
    return [(v >> 32, v & 0xFFFF_FFFF) for v in unique.tolist()], inverse.reshape(-1)


class Enricher:
    """Adds the enrichment columns to decoded batches. One per worker (not thread-safe)."""

    def __init__(
        self,
        config: EnrichConfig,
        networks: Mapping[str, NetworkAttributes],
        flow_dir: Path | None = None,
        announced: ApplicationNames | None = None,
    ) -> None:
        self.config = config
        self.announced = announced
        """The decoder's table of application names the exporters announced (option data)."""
        self.flow_dir = flow_dir
        self.geoip = GeoIP(
            config.geoip_country, config.geoip_asn, config.reload_interval, config.database_memory
        )
        self.networks = NetworkTable(networks)
        self.rules = _Rules(
            [([ipaddress.ip_network(m) for m in r.match], r.name) for r in config.exporters],
            [
                (
                    rule,
                    [ipaddress.ip_network(n) for n in rule.exporter],
                    re.compile(rule.if_name) if rule.if_name is not None else None,
                )
                for rule in config.interfaces
            ],
        )
        self.applications = dict(config.applications)
        self._net_names = NameCodes.of(self.networks.names)
        self._net_roles = NameCodes.of(self.networks.roles)
        # Names met in the traffic: one dictionary each (in and out share theirs), kept
        # from batch to batch so a segment's chunks share it.
        self._exporter_registry = NameRegistry()
        self._if_names = NameRegistry()
        self._if_boundaries = NameRegistry()
        self._if_providers = NameRegistry()
        self._app_names = NameRegistry()
        self.counters = EnrichCounters()
        self._snmp: object = None
        self._interfaces: dict[tuple[bytes, int], _Interface] = {}
        self._exporter_names: dict[bytes, str | None] = {}
        self._batch_exporters: (
            tuple[npt.NDArray[Any], tuple[list[bytes], npt.NDArray[np.intp]]] | None
        ) = None

    @property
    def classifies_interfaces(self) -> bool:
        return bool(self.rules.interfaces) or self.flow_dir is not None

    def start(self) -> None:
        """Open the databases now (a missing file is warned about at start, not later)."""
        self.geoip.refresh()

    def close(self) -> None:
        """Nothing is held open (databases are read into memory); kept for symmetry."""

    # -- one batch ----------------------------------------------------------------------------

    def enrich(self, columns: dict[str, npt.NDArray[Any]]) -> Labels:
        """The label columns of a batch; replaces ``src_as``/``dst_as`` in ``columns`` when a
        database supplies them (never writes into the decoder's arrays: some are shared)."""
        rows = len(columns["bytes"])
        labels: Labels = {}
        if not rows:
            return labels
        self.counters.batches += 1
        self.counters.flows += rows
        if self.geoip.enabled or len(self.networks):
            self._addresses(columns, labels, rows)
        if self.rules.exporters:
            self._exporters(columns, labels)
        if self.classifies_interfaces:
            self._interfaces_of(columns, labels, rows)
        self._applications(columns, labels)
        self._batch_exporters = None  # the batch's arrays are not kept past it
        geo = self.geoip.counters
        self.counters.geo_lookups = geo.lookups
        self.counters.database_reloads = geo.reloads
        self.counters.database_failures = geo.failures
        return labels

    def _addresses(self, columns: dict[str, npt.NDArray[Any]], labels: Labels, rows: int) -> None:
        # Source and destination addresses split into IPv4 and IPv6 keys once, for every table.
        keys = AddressKeys.of(np.concatenate((columns["src_addr"], columns["dst_addr"])))
        sides = (("src", slice(0, rows)), ("dst", slice(rows, 2 * rows)))
        if len(self.networks):
            match = self.networks.lookup(keys).index  # -1: in no configured network
            for side, index in sides:
                labels[f"{side}_net_name"] = self._net_names.column(match[index])
                labels[f"{side}_net_role"] = self._net_roles.column(match[index])
        if not self.geoip.enabled:
            return
        self.geoip.refresh()
        geo = self.geoip.lookup(keys)
        if self.geoip.country is not None:
            for side, index in sides:
                labels[f"{side}_country"] = geo.countries.column(geo.country[index])
        if self.geoip.asn is None:
            return
        for side, index in sides:
            exported = columns[f"{side}_as"]
            found = geo.asn[index]
            if self.config.as_source == "exporter":
                final = np.where(exported != 0, exported, found)
            else:
                final = np.where(found != 0, found, exported)
            columns[f"{side}_as"] = final.astype(np.uint32, copy=False)
            # The organisation is the database's: shown only beside its own AS number.
            name_index = np.where((final == found) & (found != 0), geo.as_name[index], -1)
            labels[f"{side}_as_name"] = geo.as_names.column(name_index)

    def _exporter_codes(
        self, exporters: npt.NDArray[Any]
    ) -> tuple[list[bytes], npt.NDArray[np.intp]]:
        # Asked by the exporter names and the interfaces: found once per batch.
        if self._batch_exporters is not None and self._batch_exporters[0] is exporters:
            return self._batch_exporters[1]
        found = self._find_exporter_codes(exporters)
        self._batch_exporters = (exporters, found)
        return found

    def _find_exporter_codes(
        self, exporters: npt.NDArray[Any]
    ) -> tuple[list[bytes], npt.NDArray[np.intp]]:
        # A batch holds few exporters, in runs (the decoder groups rows by datagram): find
        # the runs (O(n) compares), then sort only their first addresses.
        flat = np.ascontiguousarray(exporters).view(">u8").reshape(-1, 2)
        starts = np.ones(len(flat), dtype=bool)
        starts[1:] = (flat[1:, 0] != flat[:-1, 0]) | (flat[1:, 1] != flat[:-1, 1])
        heads = np.asarray(exporters, dtype="S16")[starts]
        unique, inverse = np.unique(heads, return_inverse=True)
        codes = inverse.reshape(-1)[np.cumsum(starts) - 1]
        return [bytes(k) for k in unique.tolist()], codes

    def _exporters(self, columns: dict[str, npt.NDArray[Any]], labels: Labels) -> None:
        keys, inverse = self._exporter_codes(columns["exporter"])
        names = []
        for key in keys:
            if key not in self._exporter_names:
                if len(self._exporter_names) > MAX_INTERFACE_CACHE:
                    self._exporter_names.clear()
                address = _mapped(key)
                self._exporter_names[key] = next(
                    (name for nets, name in self.rules.exporters if _in(address, nets)), None
                )
            names.append(self._exporter_names[key])
        labels["exporter_name"] = self._exporter_registry.column(names, inverse)

    def _snmp_names(self) -> Mapping[str, Mapping[int, Mapping[str, Any]]]:
        if self.flow_dir is None:
            return {}
        from lanalyze.flows.query import interfaces

        known = interfaces.load(self.flow_dir)
        if known is not self._snmp:
            self._snmp = known
            self._interfaces.clear()
        return known

    def _classify(
        self, snmp: Mapping[str, Mapping[int, Mapping[str, Any]]], exporter: bytes, index: int
    ) -> _Interface:
        address = _mapped(exporter)
        polled = snmp.get(str(address), {}).get(index, {})
        snmp_name = polled.get("name") if isinstance(polled.get("name"), str) else None
        if snmp_name is not None and (len(snmp_name) > MAX_LABEL or not snmp_name.isprintable()):
            snmp_name = None  # an agent's odd answer: not stored with every flow
        for rule, networks, pattern in self.rules.interfaces:
            if networks and not _in(address, networks):
                continue
            if rule.if_index and index not in rule.if_index:
                continue
            if pattern is not None and (snmp_name is None or not pattern.search(snmp_name)):
                continue
            self.counters.interface_rules_matched += 1
            return _Interface(
                rule.name if rule.name is not None else snmp_name,
                rule.boundary or None,
                rule.provider or None,
            )
        return _Interface(snmp_name, None, None)

    def _interfaces_of(
        self, columns: dict[str, npt.NDArray[Any]], labels: Labels, rows: int
    ) -> None:
        snmp = self._snmp_names()
        if not snmp and not self.rules.interfaces:
            return
        keys, exporter_code = self._exporter_codes(columns["exporter"])
        pairs, inverse = _interface_pairs(exporter_code, columns["in_if"], columns["out_if"])
        found: list[_Interface] = []
        if len(self._interfaces) > MAX_INTERFACE_CACHE:
            self._interfaces.clear()
        for exporter, if_index in pairs:
            key = (keys[exporter], if_index)
            item = self._interfaces.get(key)
            if item is None:
                item = self._classify(snmp, *key)
                self._interfaces[key] = item
            found.append(item)
        for what, registry, values in (
            ("name", self._if_names, [f.name for f in found]),
            ("boundary", self._if_boundaries, [f.boundary for f in found]),
            ("provider", self._if_providers, [f.provider for f in found]),
        ):
            codes = registry.codes(values)[inverse]
            dictionary = registry.dictionary
            labels[f"in_if_{what}"] = column(codes[:rows], dictionary)
            labels[f"out_if_{what}"] = column(codes[rows:], dictionary)

    def _application(self, app_id: int, protocol: int, port: int, exporter: bytes | None) -> str:
        from lanalyze.flows.query.apps import application, service_name

        if app_id:
            engine, selector = (
                (app_id >> 24, app_id & 0xFFFFFF)
                if app_id < 2**32
                else (
                    app_id >> 56,
                    app_id & (2**56 - 1),
                )
            )
            named = self.applications.get(f"{engine}:{selector}")
            if named:
                return named
            if exporter is not None and self.announced is not None:
                named = self.announced.get(exporter, app_id)
                if named:
                    return named
            if engine == 3 and selector < 65536:  # RFC 6759 IANA-L4: the selector is a port
                port = selector
            else:
                return f"{engine}:{selector}"
        if protocol in (6, 17, 132):
            return service_name(protocol, port) or application(protocol, port)
        return application(protocol, port)  # the protocol's name: it has no ports

    def _applications(self, columns: dict[str, npt.NDArray[Any]], labels: Labels) -> None:
        """Names of exported application ids; flows without one get theirs from the port
        table when shown (the ``appname`` dimension), which costs nothing here."""
        app_id = columns["app_id"]
        present = app_id != 0
        if not present.any():
            return
        # The exporter matters only once some exporter announced names (its ids are its own).
        per_exporter = self.announced is not None and len(self.announced) > 0
        fields = [("a", "u8"), ("p", "u8"), ("o", "u8"), ("e", "i8")]
        table = np.zeros(int(present.sum()), dtype=fields)
        table["a"] = app_id[present]
        table["p"] = columns["protocol"][present]
        table["o"] = np.minimum(columns["src_port"], columns["dst_port"])[present]
        exporters: list[bytes] = []
        if per_exporter:
            keys, codes = self._exporter_codes(columns["exporter"])
            # S16 values lose their trailing zero bytes (2001:db8::100): the table's keys
            # are whole 16-byte addresses.
            exporters = [key.ljust(16, b"\0") for key in keys]
            table["e"] = codes[present]
        unique, inverse = np.unique(table, return_inverse=True)
        names = [
            self._application(int(a), int(p), int(o), exporters[e] if per_exporter else None)
            for a, p, o, e in unique.tolist()
        ]
        index = np.full(len(app_id), -1, dtype=np.int32)
        index[present] = inverse.reshape(-1)
        labels["app_name"] = self._app_names.column(names, index)


def make_enricher(
    config: EnrichConfig | None,
    networks: Mapping[str, NetworkAttributes],
    flow_directory: Path | None,
    announced: ApplicationNames | None = None,
) -> Enricher | None:
    """The enricher of a worker or an import (None when enrichment is off), its databases
    read (a missing file is warned about now); ``announced``: the decoder's application
    names from option records."""
    if config is None or not config.enabled:
        return None
    enricher = Enricher(config, networks, flow_directory, announced)
    enricher.start()
    return enricher


def enrich_or_log(
    enricher: Enricher, columns: dict[str, npt.NDArray[Any]], limiter: RateLimiter
) -> Labels | None:
    """The enricher's columns; on a bug of ours none (the flows are stored unenriched and
    the bug logged, rate-limited), so enrichment can never lose flows."""
    try:
        return enricher.enrich(columns)
    except Exception:
        if limiter.allow(("enrich-bug",)) is not None:
            log.exception("flows.enrich_bug")
        return None
