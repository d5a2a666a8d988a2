"""Sans-IO, vectorised decoders for NetFlow v5/v7, NetFlow v9 (RFC 3954), IPFIX (RFC 7011) and
sFlow v5 (:mod:`.sflow`).

Datagram bytes + exporter address + receive time in (:class:`Packet`), a columnar batch in the
catalogue's layout out (:class:`DecodedBatch`); no sockets, no clock, no asyncio. One
:class:`FlowDecoder` keeps the templates and sampling announcements of every exporter between
batches, bounded in memory, and can save and restore them (:meth:`FlowDecoder.save_templates`).

Why hand-written: the collector must decode several million flows a second on two cores, and
the only maintained Python library (``netflow``) parses record by record into dicts (about
46 000 IPFIX flows/s measured on this machine). Here a template is compiled once into a numpy
structured dtype and every data set of a batch that uses it is read with one ``np.frombuffer``
and converted column by column; v5 (and v7) datagrams of one length are stacked and read the
same way.
Python runs per datagram (header, set walk), never per record, except for option records and
the documented variable-length path (:mod:`.templates`); sFlow is walked with numpy over
all of a batch's datagrams (:mod:`.sflow`); on the collector's path
(:meth:`FlowDecoder.decode_rows`) not even per datagram for v5 and for the common v9/IPFIX
datagram, data sets of known fixed-length templates only (:mod:`.bulk`).

Which decoder reads a datagram is decided per datagram, so one listen address may receive
every kind: sFlow v5 starts with the 32-bit word 5 (``00 00 00 05``), NetFlow with a 16-bit
version (``00 05``, ``00 07``, ``00 09``, ``00 0a``).

Trust: all bytes are the exporter's. Bad bytes never raise out of :meth:`FlowDecoder.decode`:
they are counted as ``decode_errors`` of the exporter, described in a :class:`DecodeProblem`,
and the datagram (or the bad set) is dropped. An exception escaping ``decode`` is our bug.
"""

from __future__ import annotations

import functools
import ipaddress
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from lanalyze.flows import catalogue
from lanalyze.flows.decode import sflow, v5
from lanalyze.flows.decode.applications import ApplicationNames
from lanalyze.flows.decode.bulk import BulkRows
from lanalyze.flows.decode.errors import PeerDataError
from lanalyze.flows.decode.memory import keep_freed_memory
from lanalyze.flows.decode.sflow import InterfaceCounters, SflowBatch
from lanalyze.flows.decode.state import DecoderCounters, DecoderState, ExporterState, address16
from lanalyze.flows.decode.templated import TemplatedWalker

__all__ = [
    "DecodeProblem",
    "DecodedBatch",
    "DecoderCounters",
    "ExporterStats",
    "FlowDecoder",
    "InterfaceCounters",
    "Packet",
    "PeerDataError",
]

Array = npt.NDArray[Any]
MAX_PROBLEMS_PER_BATCH = 256
"""Problems beyond this in one batch are only counted (in ``decode_errors``)."""
MAX_ALLOWED_CACHE = 65536
"""Exporter names whose allow-list answer is remembered (then forgotten all at once)."""


class Packet(NamedTuple):
    """One export datagram as received. A named tuple, not a dataclass: the worker builds
    one per datagram, and a frozen dataclass's ``__init__`` cost ~0.5 µs of it."""

    data: bytes | memoryview
    """One UDP payload."""
    exporter: str
    """Exporter IP as text ("192.0.2.1" or "2001:db8::1")."""
    received_ms: int
    """UTC ms since the epoch when received."""


@dataclass
class ExporterStats:
    """Counts for one (exporter, observation domain) seen in a batch."""

    exporter: str
    observation_domain: int
    version: int
    packets: int = 0
    flows: int = 0
    sequence_gaps: int = 0
    """Lost export packets as the sequence numbers tell: v5 counts flows, v9 export packets,
    IPFIX data records (each protocol's own unit)."""
    decode_errors: int = 0
    unknown_template_records: int = 0
    """Data sets dropped because their template is not known (yet)."""
    template_changes: int = 0
    """Templates (v9/IPFIX, options included) redefined with other fields under an id the
    domain already held; a refresh with the same fields is not a change (template churn)."""
    last_sequence: int = 0


@dataclass
class DecodeProblem:
    """Something wrong with the peer's data, for rate-limited logging by the shell."""

    exporter: str
    reason: str


@dataclass
class DecodedBatch:
    """The flows of a batch. Rows are grouped by template (v9/IPFIX) and datagram length (v5),
    in arrival order within a group: not in arrival order overall."""

    columns: dict[str, Array]
    """Catalogue column names (:func:`catalogue.empty_batch` layout), equal lengths."""
    extra: list[str | None] | None
    """The catalogue ``extra`` column (JSON), or None when no record has any."""
    stats: list[ExporterStats]
    problems: list[DecodeProblem] = field(default_factory=list)
    interface_counters: list[InterfaceCounters] = field(default_factory=list)
    """sFlow generic interface counter records of the batch, in arrival order."""

    @property
    def rows(self) -> int:
        return len(self.columns["bytes"])

    def to_record_batch(self) -> pa.RecordBatch:
        return catalogue.to_record_batch(self.columns, self.extra)


class FlowDecoder:
    """Decodes batches of export datagrams; keeps per-exporter template and sampling state.

    ``sampling_rates`` (exporter address -> N) applies to flows whose export announces no
    rate (v5 header interval 0, no option record, no inline IE 34): an announced rate wins.

    Bounds (:mod:`.state`): ``memory_budget`` bytes of template and exporter state in all,
    ``exporter_share`` of it per exporter; ``max_records_per_datagram`` rows from one datagram.
    ``exporters_allowed`` (networks; None: any source) drops other sources' datagrams before
    anything of them is read. What they cost is in :attr:`counters`.
    Not thread-safe: one decoder per worker."""

    def __init__(
        self,
        *,
        max_templates_per_exporter: int = 1024,
        max_exporters: int = 10000,
        sampling_rates: Mapping[str, int] | None = None,
        memory_budget: int = 64 * 2**20,
        exporter_share: int = 4 * 2**20,
        max_records_per_datagram: int = 4096,
        exporters_allowed: Sequence[str] | None = None,
    ) -> None:
        keep_freed_memory()
        self._state = DecoderState(
            max_templates_per_exporter, max_exporters, memory_budget, exporter_share
        )
        self._max_records = max(1, max_records_per_datagram)
        # Networks as IPv6 (IPv4 ones IPv4-mapped), matched against address16(source), so
        # "192.0.2.0/24" also allows a source seen as "::ffff:192.0.2.1".
        self._allowed_networks: list[ipaddress.IPv6Network] | None = None
        if exporters_allowed is not None:
            self._allowed_networks = [_mapped_network(n) for n in exporters_allowed]
        self._allowed_cache: dict[str, bool] = {}
        # Keyed by the 16-byte address, so "192.0.2.1" also matches an exporter seen as
        # "::ffff:192.0.2.1" on a dual-stack socket.
        self._sampling_rates = {
            address16(k): max(1, int(v)) for k, v in (sampling_rates or {}).items()
        }
        # v5 sequence tracking: (exporter, engine) -> next expected flow_sequence.
        self._v5_expected: dict[tuple[str, int], int] = {}
        # sFlow: (exporter, sub-agent) -> next expected datagram sequence number.
        self._sflow_expected: dict[tuple[str, int], int] = {}

    def decode(self, packets: Sequence[Packet]) -> DecodedBatch:
        run = _BatchRun(self)
        if self._allowed_networks is not None:
            allowed = self._allowed
            kept = [p for p in packets if allowed(p.exporter)]
            if len(kept) < len(packets):
                self._state.counters.datagrams_not_allowed += len(packets) - len(kept)
                for name in dict.fromkeys(p.exporter for p in packets if not allowed(p.exporter)):
                    run.problem(name, NOT_ALLOWED)
                packets = kept
        v5_groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for index, packet in enumerate(packets):
            data = packet.data
            if run.is_v5(data, packet.exporter):
                v5_groups[data[1], len(data)].append(index)
            else:
                run.other(data, packet.exporter, packet.received_ms)
        if v5_groups:
            code_of: dict[str, int] = {}
            groups: list[V5Group] = []
            for (version, _), indexes in v5_groups.items():
                group = [packets[i] for i in indexes]
                names = [p.exporter for p in group]
                for name in dict.fromkeys(names):
                    code_of.setdefault(name, len(code_of))
                codes = np.fromiter(map(code_of.__getitem__, names), np.int64, len(names))
                received = np.fromiter((p.received_ms for p in group), np.uint64, len(group))
                raw = v5.stack([p.data for p in group])
                groups.append(
                    V5Group(raw, np.array(indexes, dtype=np.int64), codes, received, version)
                )
            run.v5(groups, list(code_of))
        return run.finish()

    def decode_rows(
        self,
        rows: Array,
        lengths: Array,
        exporter_codes: Array,
        exporters: Sequence[str],
        received_ms: int,
    ) -> DecodedBatch:
        """:meth:`decode` for datagrams laid out as ``recvmmsg`` leaves them: datagram ``i``
        is the first ``lengths[i]`` bytes of row ``i`` of ``rows`` (a 2-D uint8 array, at
        least ``len(lengths)`` rows), from ``exporters[exporter_codes[i]]``, all received at
        ``received_ms``. NetFlow v5 (and v7) datagrams are told apart, grouped by version and
        length and stacked
        with numpy, without any Python work per datagram; so are v9/IPFIX datagrams of data
        sets of known fixed-length templates only (:class:`.bulk.BulkRows`), the others are
        walked one by one in arrival order."""
        run = _BatchRun(self)
        count = len(lengths)
        if not count:
            return run.finish()
        lengths = np.asarray(lengths, dtype=np.int64)
        exporter_codes = np.asarray(exporter_codes, dtype=np.int64)
        head = rows[:count, :2].astype(np.int64)
        is_v7 = (head[:, 0] == 0) & (head[:, 1] == 7)
        is_v7 &= lengths >= v5.HEADER_LENGTH + v5.V7_RECORD_LENGTH
        is_v5 = (head[:, 0] == 0) & (head[:, 1] == 5)
        is_v5 &= lengths >= v5.HEADER_LENGTH + v5.RECORD_LENGTH
        is_v5 |= is_v7
        if self._allowed_networks is not None:
            # Once per distinct source, then per datagram with numpy: refused datagrams are
            # neither v5 nor walked, so nothing of them is read past the version.
            allowed = np.fromiter(map(self._allowed, exporters), bool, len(exporters))
            keep = allowed[exporter_codes]
            if not keep.all():
                refused = ~keep
                self._state.counters.datagrams_not_allowed += int(refused.sum())
                for code in np.unique(exporter_codes[refused]).tolist():
                    run.problem(exporters[code], NOT_ALLOWED)
                is_v5 &= keep
                others = np.flatnonzero(~is_v5 & keep)
            else:
                others = np.flatnonzero(~is_v5)
        else:
            others = np.flatnonzero(~is_v5)
        if len(others):
            # Per datagram only where the bulk path cannot: plain ints and bytes, not numpy.
            sizes = lengths.tolist()
            codes = exporter_codes.tolist()
            width = rows.shape[1]
            flat = np.ascontiguousarray(rows[: int(others[-1]) + 1]).reshape(-1).data

            def walk(index: int) -> None:
                name = exporters[codes[index]]
                start = index * width
                data = bytes(flat[start : start + sizes[index]])
                if not run.is_v5(data, name):
                    run.other(data, name, received_ms)

            BulkRows(
                rows,
                lengths,
                exporter_codes,
                exporters,
                received_ms,
                run.exporter,
                walk,
                run.stats_for,
                self._sampling_rates,
                run.parts.append,
                max_records=self._max_records,
            ).decode(others)
        v5_rows = np.flatnonzero(is_v5)
        if len(v5_rows):
            # Group key: length, plus 2**16 for v7 (a datagram is at most 65535 bytes).
            v5_keys = lengths[v5_rows] + is_v7[v5_rows] * 2**16
            groups: list[V5Group] = []
            distinct = np.unique(v5_keys)
            for key in distinct.tolist():
                indexes = v5_rows if len(distinct) == 1 else v5_rows[v5_keys == key]
                first, last = int(indexes[0]), int(indexes[-1])
                # Consecutive slots (a batch of one kind, the usual case) are read where
                # recvmmsg left them, through a strided view; others gathered in one copy.
                raw = (
                    rows[first : last + 1, : key & 0xFFFF]
                    if last - first + 1 == len(indexes)
                    else rows[indexes, : key & 0xFFFF]
                )
                groups.append(
                    V5Group(
                        raw,
                        indexes,
                        exporter_codes[indexes],
                        np.full(len(indexes), received_ms, dtype=np.uint64),
                        7 if key >> 16 else 5,
                    )
                )
            run.v5(groups, list(exporters))
        return run.finish()

    def _decode_v5(
        self, run: _BatchRun, groups: list[V5Group], names: list[str]
    ) -> list[tuple[dict[str, Array], list[str | None] | None]]:
        parts: list[tuple[dict[str, Array], list[str | None] | None]] = []
        used = np.unique(np.concatenate([group.codes for group in groups])).tolist()
        exporter16 = np.zeros(len(names), dtype="S16")
        rates = np.ones(len(names), dtype=np.uint32)
        for code in used:
            address = self._state.exporter(names[code]).address
            exporter16[code] = address
            rates[code] = self._sampling_rates.get(address, 1)
        accounted: list[tuple[Array, Array, Array, Array, Array]] = []
        for group in groups:
            codes = group.codes
            version = group.version
            columns, headers, bad = v5.decode_group(
                group.raw, exporter16[codes], group.received_ms, rates[codes], version
            )
            for row in bad.tolist():
                name = names[codes[row]]
                run.stats_for(name, 0, version).decode_errors += 1
                run.problem(
                    name, f"v{version} header count does not fit the datagram (or wrong version)"
                )
            if len(columns["bytes"]):
                parts.append((columns, None))
                valid = headers.valid
                accounted.append(
                    (
                        group.indexes[valid] if len(bad) else group.indexes,
                        headers.counts,
                        headers.sequences,
                        # The stream key: v7 streams apart from v5 ones (domains are 16 bits).
                        headers.domains + (2**16 if version == 7 else 0),
                        codes[valid] if len(bad) else codes,
                    )
                )
        if accounted:
            self._v5_sequences(accounted, names, run.stats_for)
        return parts

    def _v5_sequences(
        self,
        accounted: list[tuple[Array, Array, Array, Array, Array]],
        names: list[str],
        stats_for: Any,
    ) -> None:
        """Counts, lost flows and last sequence per (exporter, engine), in arrival order; v7
        streams are told apart by bit 16 of their domain (v7 has no engine: domain 0).

        Vectorised: datagrams are sorted by (stream, arrival); each one's expected
        flow_sequence is its predecessor's sequence + count (RFC-less v5 convention), the
        first of each stream's is remembered from the previous batch."""
        index, count, sequence, domain, code = (
            np.concatenate([a[k] for a in accounted]).astype(np.int64) for k in range(5)
        )
        stream = code * 2**32 + domain
        order = np.lexsort((index, stream))
        stream, count, sequence = stream[order], count[order], sequence[order]
        starts = np.flatnonzero(np.r_[True, stream[1:] != stream[:-1]])
        ends = np.r_[starts[1:], len(stream)]
        following = (sequence + count) % 2**32
        expected = np.r_[0, following[:-1]]
        known = np.ones(len(stream), dtype=bool)
        remembered = self._v5_expected
        keys = [(names[int(s) >> 32], int(s) & 0xFFFFFFFF) for s in stream[starts].tolist()]
        for start, key in zip(starts.tolist(), keys, strict=True):
            previous = remembered.get(key)
            known[start] = previous is not None
            expected[start] = previous or 0
        gap = (sequence - expected) % 2**32
        gap[~known | (gap >= 2**31)] = 0
        gaps = np.add.reduceat(gap, starts).tolist()
        flows = np.add.reduceat(count, starts).tolist()
        last = sequence[ends - 1].tolist()
        following_last = following[ends - 1].tolist()
        for i, key in enumerate(keys):
            item = stats_for(key[0], key[1] & 0xFFFF, 7 if key[1] >> 16 else 5)
            item.packets += int(ends[i] - starts[i])
            item.flows += flows[i]
            item.sequence_gaps += gaps[i]
            item.last_sequence = last[i]
            if key not in remembered and len(remembered) >= self._state.max_exporters * 4:
                remembered.pop(next(iter(remembered)))
            remembered[key] = following_last[i]

    def save_templates(self) -> bytes:
        """Templates and sampling announcements of every exporter, as versioned JSON."""
        return self._state.save()

    def load_templates(self, state: bytes) -> None:
        """Restores :meth:`save_templates` output; ValueError if it is not such a state."""
        try:
            self._state.load(state)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"unusable template state: {exc}") from exc

    def _allowed(self, name: str) -> bool:
        """Whether ``exporters_allowed`` lets this source in (cached per name)."""
        answer = self._allowed_cache.get(name)
        if answer is None:
            networks = self._allowed_networks or []
            raw = address16(name)
            address = ipaddress.IPv6Address(raw)
            answer = raw != bytes(16) and any(address in network for network in networks)
            if len(self._allowed_cache) >= MAX_ALLOWED_CACHE:
                self._allowed_cache.clear()
            self._allowed_cache[name] = answer
        return answer

    @property
    def counters(self) -> DecoderCounters:
        """What the bounds and the allow-list cost so far (cumulative)."""
        return self._state.counters

    @property
    def application_names(self) -> ApplicationNames:
        """Application names the exporters announced in option records (the enricher's)."""
        return self._state.applications

    @property
    def state_bytes(self) -> int:
        """Bytes of exporter, domain and template state charged, the compile cache's included
        (at most ``memory_budget``, give or take one exporter's bookkeeping)."""
        return self._state.used + self._state.compiled.used

    @property
    def template_count(self) -> int:
        """Templates held over all exporters (for metrics and tests of the bounds)."""
        return self._state.template_total()

    @property
    def exporter_count(self) -> int:
        return len(self._state.exporters)


NOT_ALLOWED = "source not in flows.exporters_allowed: datagram dropped"
SFLOW_MAGIC = b"\0\0\0\x05"
"""The first word of an sFlow v5 datagram (NetFlow's versions are 16-bit: ``00 05`` ...)."""


def _mapped_network(text: str) -> ipaddress.IPv6Network:
    network = ipaddress.ip_network(text, strict=False)
    if network.version == 4:
        mapped = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + network.network_address.packed)
        return ipaddress.IPv6Network((mapped, 96 + network.prefixlen))
    return ipaddress.IPv6Network(network)


class V5Group(NamedTuple):
    """NetFlow v5 datagrams of one length, stacked: row ``i`` arrived ``indexes[i]``-th."""

    raw: Array
    indexes: Array
    codes: Array
    """Index of each datagram's exporter in the batch's exporter list."""
    received_ms: Array
    version: int = 5
    """5 or 7: the record layout."""


def _stats_for(
    stats: dict[tuple[str, int, int], ExporterStats], exporter: str, domain: int, version: int
) -> ExporterStats:
    key = (exporter, domain, version)
    item = stats.get(key)
    if item is None:
        item = stats[key] = ExporterStats(exporter, domain, version)
    return item


class _BatchRun:
    """The state of one :meth:`FlowDecoder.decode` call: counts, problems, parts."""

    def __init__(self, decoder: FlowDecoder) -> None:
        self.decoder = decoder
        self.stats: dict[tuple[str, int, int], ExporterStats] = {}
        self.problems: list[DecodeProblem] = []
        self.exporters: dict[str, ExporterState] = {}
        # Not a bound method: the walker must not refer back to this object, or the two
        # would form a reference cycle that keeps every batch's columns (MiBs) alive until
        # the cyclic GC, which the worker runs rarely (measured: decoding took twice the
        # CPU, in page faults and cache misses).
        self.stats_for = functools.partial(_stats_for, self.stats)
        self.walker = TemplatedWalker(decoder._state, self.stats_for, decoder._max_records)
        self.reasons: list[str] = []
        self.parts: list[tuple[dict[str, Array], list[str | None] | None]] = []
        self.sflow_batch: SflowBatch | None = None

    def problem(self, exporter: str, reason: str) -> None:
        if len(self.problems) < MAX_PROBLEMS_PER_BATCH:
            self.problems.append(DecodeProblem(exporter, reason))

    def exporter(self, name: str) -> ExporterState:
        """The exporter's state, looked up once per batch (so in order of first appearance)."""
        exporter = self.exporters.get(name)
        if exporter is None:
            exporter = self.exporters[name] = self.decoder._state.exporter(name)
        return exporter

    def is_v5(self, data: bytes | memoryview, name: str) -> bool:
        """Whether ``data`` is a v5 or v7 datagram long enough for one record (a shorter one
        is counted here as the peer's error)."""
        size = len(data)
        if size < 4 or data[0] != 0 or data[1] not in v5.RECORD_LENGTHS:
            return False
        version = data[1]
        if size < v5.HEADER_LENGTH + v5.RECORD_LENGTHS[version]:
            self.stats_for(name, 0, version).decode_errors += 1
            self.problem(name, f"truncated v{version} datagram: {size} bytes")
            return False
        return True

    def other(self, data: bytes | memoryview, name: str, received_ms: int) -> None:
        """Anything but a valid-length v5 datagram (already counted when a short v5)."""
        size = len(data)
        if size < 4:
            self.stats_for(name, 0, 0).decode_errors += 1
            self.problem(name, f"datagram of {size} bytes is too short for any NetFlow header")
            return
        if data[:4] == SFLOW_MAGIC:
            self.sflow(data if isinstance(data, bytes) else bytes(data), name, received_ms)
            return
        version = (data[0] << 8) | data[1]
        if version in v5.RECORD_LENGTHS:
            return  # a truncated v5/v7 datagram, counted by is_v5
        if version not in (9, 10):
            self.stats_for(name, 0, version).decode_errors += 1
            self.problem(name, f"unknown export version {version} ({size} bytes)")
            return
        exporter = self.exporter(name)
        reasons = self.reasons
        try:
            self.walker.walk(
                data if isinstance(data, bytes) else bytes(data),
                exporter,
                received_ms,
                self.decoder._sampling_rates.get(exporter.address, 1),
                reasons,
            )
        except PeerDataError as exc:
            reasons.append(str(exc))
        if reasons:
            for reason in reasons:
                self.problem(name, reason)
            reasons.clear()

    def sflow(self, data: bytes, name: str, received_ms: int) -> None:
        """One sFlow v5 datagram: kept for the batch's sFlow decode (:meth:`finish`)."""
        batch = self.sflow_batch
        if batch is None:
            decoder = self.decoder
            batch = self.sflow_batch = SflowBatch(decoder._max_records, decoder._sampling_rates)
        batch.add(data, name, received_ms)

    def sflow_finish(self) -> tuple[dict[str, Array] | None, list[InterfaceCounters]]:
        """Decodes the batch's sFlow datagrams at once; counts and sequence numbers are then
        accounted per datagram, in arrival order, per (exporter, sub-agent)."""
        assert self.sflow_batch is not None
        result = self.sflow_batch.decode()
        decoder = self.decoder
        expected_of = decoder._sflow_expected
        for item in result.datagrams:
            name = item.name
            if item.problem is not None:
                self.stats_for(name, 0, sflow.STATS_VERSION).decode_errors += 1
                self.problem(name, item.problem)
                continue
            stats = self.stats_for(name, item.sub_agent, sflow.STATS_VERSION)
            stats.packets += 1
            stats.flows += item.flows
            if item.capped:
                stats.decode_errors += 1
                decoder._state.counters.datagrams_capped += 1
                self.problem(
                    name,
                    f"sFlow datagram of more than {decoder._max_records} flow samples: "
                    f"{item.capped} dropped",
                )
            key = (name, item.sub_agent)
            expected = expected_of.get(key)
            if expected is not None:
                gap = (item.sequence - expected) % 2**32
                if gap < 2**31:  # not a reordered or repeated datagram
                    stats.sequence_gaps += gap
            elif len(expected_of) >= decoder._state.max_exporters * 4:
                expected_of.pop(next(iter(expected_of)))
            expected_of[key] = (item.sequence + 1) % 2**32
            stats.last_sequence = item.sequence
        totals = decoder._state.counters
        totals.interface_counters += len(result.counters)
        totals.interface_counters_dropped += result.counters_dropped
        return result.columns, result.counters

    def v5(self, groups: list[V5Group], names: list[str]) -> None:
        self.parts.extend(self.decoder._decode_v5(self, groups, names))

    def finish(self) -> DecodedBatch:
        parts = self.walker.finish() + self.parts
        counters: list[InterfaceCounters] = []
        if self.sflow_batch is not None:
            sflow_columns, counters = self.sflow_finish()
            if sflow_columns is not None:
                parts.append((sflow_columns, None))
        columns, extra = _concatenate(parts)
        return DecodedBatch(columns, extra, list(self.stats.values()), self.problems, counters)


def _concatenate(
    parts: list[tuple[dict[str, Array], list[str | None] | None]],
) -> tuple[dict[str, Array], list[str | None] | None]:
    if not parts:
        return catalogue.empty_batch(0), None
    if len(parts) == 1:
        return parts[0]
    columns = {name: np.concatenate([p[0][name] for p in parts]) for name in parts[0][0]}
    if all(p[1] is None for p in parts):
        return columns, None
    extra: list[str | None] = []
    for part_columns, part_extra in parts:
        extra.extend(part_extra if part_extra is not None else [None] * len(part_columns["bytes"]))
    return columns, extra
