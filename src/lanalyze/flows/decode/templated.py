"""Set walking shared by NetFlow v9 and IPFIX, and batching of data sets by template.

Per datagram (Python, a few microseconds): parse the header, walk the sets, apply template
and options-template sets to the exporter's state at once (so a template and its data in the
same datagram work, and a redefinition affects only later data), decode option data records
(rare: sampler announcements) and queue each flow data set under the template object it was
read with. At the end of the batch every queue is decoded with one ``np.frombuffer`` over the
concatenated sets (:mod:`.records`). A set whose template is unknown is counted and dropped.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from lanalyze.flows.decode import ipfix, v9
from lanalyze.flows.decode.errors import PeerDataError
from lanalyze.flows.decode.records import RowContext, convert
from lanalyze.flows.decode.state import DecoderState, DomainState, ExporterState
from lanalyze.flows.decode.templates import VARIABLE_LENGTH, Template

if TYPE_CHECKING:
    from lanalyze.flows.decode import ExporterStats

Array = npt.NDArray[Any]
SET_HEADER = struct.Struct(">HH")


@dataclass
class PendingGroup:
    template: Template
    parts: list[bytes | memoryview] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    exporter: list[bytes] = field(default_factory=list)
    domain: list[int] = field(default_factory=list)
    received: list[int] = field(default_factory=list)
    export_ms: list[int] = field(default_factory=list)
    uptime_ms: list[int] = field(default_factory=list)
    rate: list[int] = field(default_factory=list)
    samplers: list[dict[int, int] | None] = field(default_factory=list)
    var_extras: list[dict[str, Any]] | None = None


class TemplatedWalker:
    def __init__(self, state: DecoderState) -> None:
        self.state = state
        self.groups: dict[int, PendingGroup] = {}

    def walk(
        self,
        data: bytes,
        *,
        exporter: ExporterState,
        received_ms: int,
        configured_rate: int,
        stats_for: Any,
        problems: list[str],
    ) -> None:
        """Walks one v9 or IPFIX datagram; ``stats_for(domain, version)`` gives its stats."""
        version = (data[0] << 8) | data[1]
        size = len(data)
        if version == v9.VERSION:
            if size < v9.HEADER.size:
                stats_for(0, version).decode_errors += 1
                raise PeerDataError(f"truncated v9 header: {size} bytes")
            _, _, uptime, secs, sequence, domain_id = v9.HEADER.unpack_from(data)
            pos, end = v9.HEADER.size, size
            export_ms = secs * 1000
        else:
            if size < ipfix.HEADER.size:
                stats_for(0, version).decode_errors += 1
                raise PeerDataError(f"truncated IPFIX header: {size} bytes")
            _, length, secs, sequence, domain_id = ipfix.HEADER.unpack_from(data)
            if length > size or length < ipfix.HEADER.size:
                stats_for(domain_id, version).decode_errors += 1
                raise PeerDataError(
                    f"truncated IPFIX message: header says {length} bytes, {size} present"
                )
            pos, end = ipfix.HEADER.size, length
            export_ms = secs * 1000
            uptime = -1
        domain = exporter.domain(version, domain_id)
        stats: ExporterStats = stats_for(domain_id, version)
        stats.packets += 1
        if version == ipfix.VERSION:
            init = domain.sampling.system_init_ms
            uptime = export_ms - init if init else -1
        records = 0
        countable = True
        while end - pos >= 4:
            set_id, set_length = SET_HEADER.unpack_from(data, pos)
            if set_length < 4 or pos + set_length > end:
                stats.decode_errors += 1
                problems.append(
                    f"{_name(version)} set {set_id} at offset {pos}: length {set_length} "
                    f"overruns the {end}-byte packet"
                )
                countable = False
                break
            start, stop = pos + 4, pos + set_length
            pos = stop
            try:
                if set_id >= 256:
                    added = self._data_set(
                        data,
                        start=start,
                        stop=stop,
                        set_id=set_id,
                        exporter=exporter,
                        domain=domain,
                        received_ms=received_ms,
                        export_ms=export_ms,
                        uptime=uptime,
                        configured_rate=configured_rate,
                        stats=stats,
                        problems=problems,
                    )
                    if added < 0:
                        countable = False
                    else:
                        records += added
                else:
                    self._template_set(
                        data,
                        start=start,
                        stop=stop,
                        set_id=set_id,
                        version=version,
                        exporter=exporter,
                        domain=domain,
                        stats=stats,
                        problems=problems,
                    )
            except PeerDataError as exc:
                stats.decode_errors += 1
                problems.append(f"{_name(version)} set {set_id}: {exc}")
                countable = False
        _account_sequence(stats, domain, version, sequence, records if countable else None)

    def _template_set(
        self,
        data: bytes,
        *,
        start: int,
        stop: int,
        set_id: int,
        version: int,
        exporter: ExporterState,
        domain: DomainState,
        stats: ExporterStats,
        problems: list[str],
    ) -> None:
        if version == v9.VERSION:
            if set_id == v9.TEMPLATE_SET:
                events = v9.parse_template_set(data, start, stop)
            elif set_id == v9.OPTIONS_TEMPLATE_SET:
                events = v9.parse_options_template_set(data, start, stop)
            else:
                return  # reserved flowset ids: skipped, as RFC 3954 §5.3 allows
        elif set_id in (ipfix.TEMPLATE_SET, ipfix.OPTIONS_TEMPLATE_SET):
            events = ipfix.parse_template_set(
                data, start, stop, set_id == ipfix.OPTIONS_TEMPLATE_SET
            )
        else:
            return
        for action, number, template in events:
            if action == "add":
                assert template is not None
                current = domain.templates.get(number)
                if current is not None and current.fields == template.fields:
                    continue  # refresh: keep the compiled one
                evicted = self.state.add_template(exporter, domain, template)
                if evicted:
                    stats.decode_errors += evicted
                    problems.append(
                        f"template limit {self.state.max_templates} reached: evicted {evicted}"
                    )
            elif action == "withdraw":
                self.state.remove_template(exporter, domain, number)
            else:
                self.state.remove_all(exporter, domain, options=bool(number))

    def _data_set(
        self,
        data: bytes,
        *,
        start: int,
        stop: int,
        set_id: int,
        exporter: ExporterState,
        domain: DomainState,
        received_ms: int,
        export_ms: int,
        uptime: int,
        configured_rate: int,
        stats: ExporterStats,
        problems: list[str],
    ) -> int:
        """Queues (or applies) one data set; returns its record count, -1 if unknown."""
        template = domain.templates.get(set_id)
        if template is None:
            stats.unknown_template_records += 1
            problems.append(f"data set {set_id} before its template: dropped")
            return -1
        if template.options:
            return _option_records(template, data, start, stop, domain)
        var_extras: list[dict[str, Any]] | None = None
        if template.fixed:
            count = (stop - start) // template.fixed_length
            part: bytes | memoryview = data[start : start + count * template.fixed_length]
        else:
            part, var_extras, count = template.split_variable(data, start, stop)
        if count == 0:
            return 0
        group = self.groups.get(id(template))
        if group is None:
            group = self.groups[id(template)] = PendingGroup(template)
        if var_extras is not None:
            if group.var_extras is None:
                group.var_extras = []
            group.var_extras.extend(var_extras)
        group.parts.append(part)
        group.counts.append(count)
        group.exporter.append(exporter.address)
        group.domain.append(domain.domain)
        group.received.append(received_ms)
        group.export_ms.append(export_ms)
        group.uptime_ms.append(uptime)
        sampling = domain.sampling
        group.rate.append(sampling.rate_without_sampler_id() or configured_rate)
        group.samplers.append(
            sampling.samplers if sampling.samplers and template.has_sampler_id else None
        )
        stats.flows += count
        return count

    def finish(self) -> list[tuple[dict[str, Array], list[str | None] | None]]:
        out = []
        for group in self.groups.values():
            out.append(_decode_group(group))
        self.groups = {}
        return out


def _decode_group(group: PendingGroup) -> tuple[dict[str, Array], list[str | None] | None]:
    template = group.template
    counts = np.array(group.counts, dtype=np.int64)
    n = int(counts.sum())
    if template.dtype.itemsize:
        recs = np.frombuffer(b"".join(group.parts), dtype=template.dtype, count=n)
    else:
        recs = np.zeros(n, dtype=template.dtype)
    sampler_chunks: list[tuple[int, int, dict[int, int]]] = []
    if any(s is not None for s in group.samplers):
        offset = 0
        for count, samplers in zip(group.counts, group.samplers, strict=True):
            if samplers is not None:
                sampler_chunks.append((offset, offset + count, samplers))
            offset += count
    ctx = RowContext(
        exporter=np.repeat(np.array(group.exporter, dtype="S16"), counts),
        domain=np.repeat(np.array(group.domain, dtype=np.uint32), counts),
        received_ms=np.repeat(np.array(group.received, dtype=np.uint64), counts),
        export_ms=np.repeat(np.array(group.export_ms, dtype=np.int64), counts),
        uptime_ms=np.repeat(np.array(group.uptime_ms, dtype=np.int64), counts),
        rate=np.repeat(np.array(group.rate, dtype=np.uint32), counts),
        sampler_chunks=sampler_chunks,
    )
    return convert(template, recs, ctx, group.var_extras)


def _option_records(
    template: Template, data: bytes, start: int, stop: int, domain: DomainState
) -> int:
    """Decodes option data records one by one (they are few) into the sampling state."""
    count = 0
    pos = start
    while stop - pos >= template.min_length:
        values: dict[int, int] = {}
        for f in template.fields:
            length = f.length
            if length == VARIABLE_LENGTH:
                if pos >= stop:
                    raise PeerDataError("variable-length field overruns its set")
                length = data[pos]
                pos += 1
                if length == 255:
                    if pos + 2 > stop:
                        raise PeerDataError("variable-length field overruns its set")
                    length = (data[pos] << 8) | data[pos + 1]
                    pos += 2
            if pos + length > stop:
                raise PeerDataError("option record overruns its set")
            if not f.scope and not f.enterprise and length <= 8:
                values[f.element] = int.from_bytes(data[pos : pos + length], "big")
            pos += length
        domain.sampling.apply_option_record(values)
        count += 1
    return count


def _account_sequence(
    stats: ExporterStats, domain: DomainState, version: int, sequence: int, records: int | None
) -> None:
    """Lost export packets (v9: packets, RFC 3954 §5.1) or records (IPFIX, RFC 7011 §3.1)."""
    expected = domain.expected_sequence
    if expected is not None:
        gap = (sequence - expected) % 2**32
        if 0 < gap < 2**31:
            stats.sequence_gaps += gap
    domain.last_sequence = sequence
    stats.last_sequence = sequence
    if version == v9.VERSION:
        domain.expected_sequence = (sequence + 1) % 2**32
    elif records is None:
        domain.expected_sequence = None
    else:
        domain.expected_sequence = (sequence + records) % 2**32


def _name(version: int) -> str:
    return "v9" if version == v9.VERSION else "IPFIX"
