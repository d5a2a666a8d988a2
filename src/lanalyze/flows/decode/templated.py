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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from lanalyze.flows.decode import ipfix, v9
from lanalyze.flows.decode.applications import APPLICATION_ID, APPLICATION_NAME
from lanalyze.flows.decode.errors import PeerDataError
from lanalyze.flows.decode.records import UNKNOWN_UPTIME, RowContext, convert
from lanalyze.flows.decode.sequence import account
from lanalyze.flows.decode.state import DecoderState, DomainState, ExporterState
from lanalyze.flows.decode.templates import VARIABLE_LENGTH, Template

if TYPE_CHECKING:
    from lanalyze.flows.decode import ExporterStats

Array = npt.NDArray[Any]
SET_HEADER = struct.Struct(">HH")


SetInfo = tuple[bytes, int, int, int, int, int, dict[int, int]]
"""Per data set: exporter address, domain, received ms, export ms, sysUpTime at export
(:data:`UNKNOWN_UPTIME` if unknown), rate for records without sampler id, sampler id -> rate."""


@dataclass
class PendingGroup:
    template: Template
    parts: list[bytes] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    infos: list[SetInfo] = field(default_factory=list)
    var_extras: list[dict[str, Any]] | None = None


class TemplatedWalker:
    """Walks the v9/IPFIX datagrams of one batch; ``stats_for(exporter, domain, version)``
    gives the batch's statistics object of a stream."""

    def __init__(
        self,
        state: DecoderState,
        stats_for: Callable[[str, int, int], Any],
        max_records: int = 2**31,
    ) -> None:
        self.state = state
        self.stats_for = stats_for
        self.max_records = max_records
        """Records (data and option) read from one datagram at most; the rest are dropped."""
        self.groups: dict[Template, PendingGroup] = {}

    def walk(
        self,
        data: bytes,
        exporter: ExporterState,
        received_ms: int,
        configured_rate: int,
        problems: list[str],
    ) -> None:
        """Walks one datagram; the peer's errors go to ``problems`` (or raise PeerDataError)."""
        name = exporter.exporter
        stats_for = self.stats_for
        version = (data[0] << 8) | data[1]
        size = len(data)
        if version == v9.VERSION:
            if size < v9.HEADER.size:
                stats_for(name, 0, version).decode_errors += 1
                raise PeerDataError(f"truncated v9 header: {size} bytes")
            _, _, uptime, secs, sequence, domain_id = v9.HEADER.unpack_from(data)
            pos, end = v9.HEADER.size, size
            export_ms = secs * 1000
        else:
            if size < ipfix.HEADER.size:
                stats_for(name, 0, version).decode_errors += 1
                raise PeerDataError(f"truncated IPFIX header: {size} bytes")
            _, length, secs, sequence, domain_id = ipfix.HEADER.unpack_from(data)
            if length > size or length < ipfix.HEADER.size:
                stats_for(name, domain_id, version).decode_errors += 1
                raise PeerDataError(
                    f"truncated IPFIX message: header says {length} bytes, {size} present"
                )
            pos, end = ipfix.HEADER.size, length
            export_ms = secs * 1000
            uptime = UNKNOWN_UPTIME
        domain = self.state.domain(exporter, version, domain_id)
        stats: ExporterStats = stats_for(name, domain_id, version)
        stats.packets += 1
        if version == ipfix.VERSION:
            init = domain.sampling.system_init_ms
            uptime = export_ms - init if init else UNKNOWN_UPTIME
        info = _set_info(domain, exporter.address, received_ms, export_ms, uptime, configured_rate)
        templates = domain.templates
        groups = self.groups
        records = 0
        countable = True
        # Records this datagram may still give: a set of one-byte records must not turn one
        # 64 KiB datagram into 65,000 rows (nor 65,000 turns of a per-record Python loop).
        room = self.max_records
        cut = False
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
            if set_id >= 256:
                # The common case, kept inline: a data set of a known fixed-length template.
                template = templates.get(set_id)
                if template is not None and template.fixed and not template.options:
                    count = (stop - start) // template.fixed_length
                    if count > room:
                        count = room
                        cut = True
                    room -= count
                    if count:
                        group = groups.get(template)
                        if group is None:
                            group = groups[template] = PendingGroup(template)
                        group.parts.append(data[start : start + count * template.fixed_length])
                        group.counts.append(count)
                        group.infos.append(info)
                        records += count
                        stats.flows += count
                    continue
            try:
                if set_id >= 256:
                    added = self._data_set(
                        data,
                        start=start,
                        stop=stop,
                        set_id=set_id,
                        domain=domain,
                        info=info,
                        stats=stats,
                        problems=problems,
                        room=room,
                    )
                    if added < 0:
                        countable = False
                    else:
                        if added > room:  # records beyond ``room`` were left unread
                            added = room
                            cut = True
                        room -= added
                        records += added
                        # Option records may have changed the sampling or the init time.
                        if version == ipfix.VERSION:
                            init = domain.sampling.system_init_ms
                            uptime = export_ms - init if init else UNKNOWN_UPTIME
                        info = _set_info(
                            domain,
                            exporter.address,
                            received_ms,
                            export_ms,
                            uptime,
                            configured_rate,
                        )
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
        if cut:
            # The datagram's own record count is unknown now: no sequence accounting.
            countable = False
            self.state.counters.datagrams_capped += 1
            problems.append(
                f"more than {self.max_records} records in one datagram "
                "(flows.max_records_per_datagram): the rest dropped"
            )
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
        options = set_id in (v9.OPTIONS_TEMPLATE_SET, ipfix.OPTIONS_TEMPLATE_SET)
        for action, number, wire in events:
            if action == "add":
                assert wire is not None
                current = domain.templates.get(number)
                if current is not None and current.wire == wire:
                    self.state.touch(exporter, domain, number)
                    continue  # a refresh: nothing to parse or compile
                if current is not None:
                    stats.template_changes += 1  # redefined: churn (alarms.template_churn)
                template = self.state.compiled.compile(version, wire, options)
                evicted = self.state.add_template(exporter, domain, template)
                if domain.templates.get(number) is not template:
                    problems.append(
                        f"template {number} refused: no room in flows.template_memory "
                        "(or its per-exporter share)"
                    )
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
        domain: DomainState,
        info: SetInfo,
        stats: ExporterStats,
        problems: list[str],
        room: int,
    ) -> int:
        """Options data, variable-length data, or unknown template; returns the record
        count read (at most ``room``; ``room + 1`` when more were left unread), -1 if the
        template is unknown."""
        template = domain.templates.get(set_id)
        if template is None:
            stats.unknown_template_records += 1
            problems.append(f"data set {set_id} before its template: dropped")
            return -1
        if template.options:
            return _option_records(
                template, data, start, stop, domain, room, (info[0], self.state, problems)
            )
        part, var_extras, count, more = template.split_variable(data, start, stop, room)
        if count == 0:
            return room + 1 if more else 0
        group = self.groups.get(template)
        if group is None:
            group = self.groups[template] = PendingGroup(template)
        if group.var_extras is None:
            group.var_extras = []
        group.var_extras.extend(var_extras)
        group.parts.append(part)
        group.counts.append(count)
        group.infos.append(info)
        stats.flows += count
        return room + 1 if more else count

    def finish(self) -> list[tuple[dict[str, Array], list[str | None] | None]]:
        out = []
        for group in self.groups.values():
            out.append(_decode_group(group))
        self.groups = {}
        return out


def _set_info(  # noqa: PLR0917 - a hot path: positional on purpose
    domain: DomainState,
    address: bytes,
    received_ms: int,
    export_ms: int,
    uptime: int,
    configured_rate: int,
) -> SetInfo:
    sampling = domain.sampling
    rate = sampling.rate_without_sampler_id() or configured_rate
    return (address, domain.domain, received_ms, export_ms, uptime, rate, sampling.samplers)


def _decode_group(group: PendingGroup) -> tuple[dict[str, Array], list[str | None] | None]:
    template = group.template
    counts = np.array(group.counts, dtype=np.int64)
    n = int(counts.sum())
    if template.dtype.itemsize:
        recs = np.frombuffer(b"".join(group.parts), dtype=template.dtype, count=n)
    else:
        recs = np.zeros(n, dtype=template.dtype)
    address, domain, received, export_ms, uptime_ms, rate, samplers = zip(*group.infos, strict=True)
    sampler_chunks: list[tuple[int, int, dict[int, int]]] = []
    if template.has_sampler_id:
        offset = 0
        for count, table in zip(group.counts, samplers, strict=True):
            if table:
                sampler_chunks.append((offset, offset + count, table))
            offset += count
    ctx = RowContext(
        exporter=np.repeat(np.array(address, dtype="S16"), counts),
        domain=np.repeat(np.array(domain, dtype=np.uint32), counts),
        received_ms=np.repeat(np.array(received, dtype=np.uint64), counts),
        export_ms=np.repeat(np.array(export_ms, dtype=np.int64), counts),
        uptime_ms=np.repeat(np.array(uptime_ms, dtype=np.int64), counts),
        rate=np.repeat(np.array(rate, dtype=np.uint32), counts),
        sampler_chunks=sampler_chunks,
    )
    return convert(template, recs, ctx, group.var_extras)


def _option_records(  # noqa: PLR0917
    template: Template,
    data: bytes,
    start: int,
    stop: int,
    domain: DomainState,
    room: int,
    origin: tuple[bytes, DecoderState, list[str]],
) -> int:
    """Decodes option data records one by one (they are few) into the sampling state and
    the exporter's application names (:mod:`.applications`): at most ``room``, returns
    ``room + 1`` when more were left unread. ``origin``: the exporter's address, the
    decoder state and the datagram's problem list."""
    count = 0
    pos = start
    names = any(
        f.element == APPLICATION_NAME and not f.scope and not f.enterprise for f in template.fields
    )
    while stop - pos >= template.min_length:
        if count == room:
            return room + 1
        values: dict[int, int] = {}
        name = b""
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
            if not f.scope and not f.enterprise:
                if length <= 8:
                    values[f.element] = int.from_bytes(data[pos : pos + length], "big")
                if names and f.element == APPLICATION_NAME:
                    name = bytes(data[pos : pos + length])
            pos += length
        domain.sampling.apply_option_record(values)
        if names:
            _learn_application(values.get(APPLICATION_ID), name, origin)
        count += 1
    return count


def _learn_application(
    app_id: int | None, name: bytes, origin: tuple[bytes, DecoderState, list[str]]
) -> None:
    exporter, state, problems = origin
    if not app_id:
        return  # an id over 8 bytes, or 0 (no application): flows never carry it
    if not state.applications.learn(exporter, app_id, name):
        problems.append(f"application name for id {app_id} is not a printable name: dropped")


def _account_sequence(
    stats: ExporterStats, domain: DomainState, version: int, sequence: int, records: int | None
) -> None:
    """Lost export packets (v9: packets, RFC 3954 §5.1) or records (IPFIX, RFC 7011 §3.1, in
    the stream's detected convention: :mod:`.sequence`)."""
    counted = 1 if version == v9.VERSION else records
    stats.sequence_gaps += account(domain, sequence, counted)
    stats.last_sequence = sequence


def _name(version: int) -> str:
    return "v9" if version == v9.VERSION else "IPFIX"
