"""Bulk decoding of the common IPFIX (RFC 7011) and NetFlow v9 (RFC 3954) datagram: one data
set of a known fixed-length template, read for many datagrams at once from ``recvmmsg`` rows.

The message headers (RFC 7011 §3.1: version, length, export time, sequence, observation
domain; RFC 3954 §5.1: version, count, sysUpTime, unix_secs, sequence, source id) and the
first set header (§3.3.2: set id, set length) are numpy columns at fixed offsets. A datagram
is a *candidate* when it holds exactly one set, a data set (id >= 256) that fills the message
(IPFIX: message length == datagram length, set length == message length - 16; v9: flowset
length == datagram length - 20; anything else, padding included, takes the exact walk).

Candidates whose (exporter, version, domain, template id) has, when their run starts, a
fixed-length flow template without sampler ids are grouped by (template, set length), stacked
into one 2-D uint8 array and read with the template's dtype at once; their counters and
sequence numbers are accounted with numpy per stream, exactly as the walk would. Every other
datagram goes through :class:`~.templated.TemplatedWalker` in arrival order, and ends the run
(a template set must apply before the data that follows it, an option record before the data
whose sampling it changes). ``tests/flows/test_decode_fuzz.py`` checks that both paths give
the same flows and counters.

Trust: the bytes are the exporter's; a datagram that is not exactly the common shape is never
read here, and the walk counts its errors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from lanalyze.flows.decode import ipfix, v9
from lanalyze.flows.decode.records import UNKNOWN_UPTIME, RowContext, convert
from lanalyze.flows.decode.state import MAX_DOMAINS, DomainState, ExporterState
from lanalyze.flows.decode.templates import Template

Array = npt.NDArray[Any]
Part = tuple[dict[str, Array], list[str | None] | None]
HEAD = 24
"""Bytes read per datagram: the v9 header (20) and a set header; IPFIX's (16) fits in it."""


class RowHeaders:
    """The fixed-offset header fields of datagrams ``indexes`` of ``rows``."""

    def __init__(self, rows: Array, lengths: Array, indexes: Array) -> None:
        sizes = lengths[indexes]
        head = rows[indexes, :HEAD].astype(np.int64)

        def u16(at: int) -> Array:
            return (head[:, at] << 8) | head[:, at + 1]

        def u32(at: int) -> Array:
            return (u16(at) << 16) | u16(at + 2)

        version = u16(0)
        is_ipfix = (version == ipfix.VERSION) & (u16(2) == sizes)
        is_ipfix &= (u16(16) >= 256) & (u16(18) == sizes - ipfix.HEADER.size)
        is_v9 = (version == v9.VERSION) & (u16(20) >= 256) & (u16(22) == sizes - v9.HEADER.size)
        self.candidate = (sizes >= HEAD) & (is_ipfix | is_v9)
        self.version = version
        self.sizes = sizes
        self.set_id = np.where(is_ipfix, u16(16), u16(20))
        self.set_length = np.where(is_ipfix, u16(18), u16(22))
        self.secs = np.where(is_ipfix, u32(4), u32(8))
        self.sequence = np.where(is_ipfix, u32(8), u32(12))
        self.domain = np.where(is_ipfix, u32(12), u32(16))
        self.uptime = u32(4)  # v9 only


class BulkRows:
    """Decodes the v9/IPFIX datagrams ``indexes`` (arrival order) of a batch of rows.

    ``exporter(name)`` gives the batch's (cached) state of an exporter, ``walk(index)`` walks
    one datagram exactly, ``stats_for`` is the batch's counters, ``rates`` the configured
    sampling rates by 16-byte address, ``emit`` takes decoded columns."""

    def __init__(  # noqa: PLR0917 - explicit dependencies of one batch
        self,
        rows: Array,
        lengths: Array,
        exporter_codes: Array,
        exporters: Sequence[str],
        received_ms: int,
        exporter: Callable[[str], ExporterState],
        walk: Callable[[int], None],
        stats_for: Callable[[str, int, int], Any],
        rates: dict[bytes, int],
        emit: Callable[[Part], None],
    ) -> None:
        self.rows = rows
        self.lengths = lengths
        self.codes = exporter_codes
        self.exporters = exporters
        self.received_ms = received_ms
        self.exporter = exporter
        self.walk = walk
        self.stats_for = stats_for
        self.rates = rates
        self.emit = emit

    def decode(self, indexes: Array) -> None:
        if self.rows.shape[1] < HEAD:
            for index in indexes.tolist():
                self.walk(index)
            return
        head = RowHeaders(self.rows, self.lengths, indexes)
        candidate = head.candidate
        # Runs of consecutive candidates, between the datagrams that must be walked.
        breaks = np.flatnonzero(~candidate).tolist()
        start = 0
        index_list = indexes.tolist()
        for stop in [*breaks, len(indexes)]:
            if stop > start:
                self._run(head, indexes, start, stop)
            if stop < len(indexes):
                self.walk(index_list[stop])
            start = stop + 1

    def _run(self, head: RowHeaders, indexes: Array, start: int, stop: int) -> None:
        """Candidates ``start:stop``: bulk where the template is known and fixed, walking the
        others in place (they change no template, but may change sampling or sequences)."""
        codes = self.codes[indexes[start:stop]]
        version = head.version[start:stop]
        domain = head.domain[start:stop]
        set_id = head.set_id[start:stop]
        # Exporters in order of first appearance, as the walk would look them up.
        distinct, first, local = np.unique(codes, return_index=True, return_inverse=True)
        states = {
            code: self.exporter(self.exporters[code]) for code in codes[np.sort(first)].tolist()
        }
        if len(distinct) >= 2**14:
            # The packed key below has 14 bits for the exporter: walk such a crowd instead.
            for index in indexes[start:stop].tolist():
                self.walk(index)
            return
        exporter_of = distinct.tolist()
        key = ((local * 2 + (version == ipfix.VERSION)) << 48) | (domain << 16) | set_id
        keys, inverse = np.unique(key, return_inverse=True)
        templates: list[tuple[Template, DomainState] | None] = []
        for value in keys.tolist():
            code, is_ipfix = exporter_of[value >> 49], (value >> 48) & 1
            state = states[code].domains.get(
                (ipfix.VERSION if is_ipfix else v9.VERSION, (value >> 16) & 0xFFFFFFFF)
            )
            if state is None:
                if len(states[code].domains) >= MAX_DOMAINS:
                    # Walking it would create a domain and evict another one's templates.
                    for index in indexes[start:stop].tolist():
                        self.walk(index)
                    return
                templates.append(None)
                continue
            template = state.templates.get(value & 0xFFFF)
            if (
                template is not None
                and template.fixed
                and not template.options
                and not template.has_sampler_id
                and template.dtype.itemsize == template.fixed_length
            ):
                templates.append((template, state))
            else:
                templates.append(None)
        fixed = np.array([0 if t is None else t[0].fixed_length for t in templates], np.int64)
        record_length = fixed[inverse]
        counts = np.zeros(stop - start, dtype=np.int64)
        known = record_length > 0
        counts[known] = (head.set_length[start:stop][known] - 4) // record_length[known]
        walked = np.flatnonzero(counts == 0).tolist()
        begin = 0
        for position in [*walked, stop - start]:
            if position > begin:
                self._bulk(head, indexes, start, begin, position, inverse, templates, counts)
            if position < stop - start:
                self.walk(int(indexes[start + position]))
            begin = position + 1

    def _bulk(  # noqa: PLR0917
        self,
        head: RowHeaders,
        indexes: Array,
        offset: int,
        begin: int,
        end: int,
        inverse: Array,
        templates: list[tuple[Template, DomainState] | None],
        counts: Array,
    ) -> None:
        """Datagrams ``offset + begin : offset + end``, all of usable templates."""
        span = slice(offset + begin, offset + end)
        rows = indexes[span]
        keys = inverse[begin:end]
        count = counts[begin:end]
        sequence = head.sequence[span]
        is_ipfix = head.version[span] == ipfix.VERSION
        export_ms = head.secs[span] * 1000
        # Per stream (one key = one stream and template): counters, sequence, header values.
        used = np.unique(keys)
        n_keys = len(templates)
        stream_rate = np.ones(n_keys, dtype=np.int64)
        stream_init = np.zeros(n_keys, dtype=np.int64)
        stream_address = np.zeros(n_keys, dtype="S16")
        stream_domain = np.zeros(n_keys, dtype=np.int64)
        # Streams by domain state: several template ids of one domain are one sequence.
        by_domain: dict[int, list[int]] = {}
        for key in used.tolist():
            entry = templates[key]
            assert entry is not None
            by_domain.setdefault(id(entry[1]), []).append(key)
        following = sequence + np.where(is_ipfix, count, 1)
        for members in by_domain.values():
            entry = templates[members[0]]
            assert entry is not None
            domain = entry[1]
            code = int(self.codes[rows[np.flatnonzero(keys == members[0])[0]]])
            name = self.exporters[code]
            address = self.exporter(name).address
            rate = domain.sampling.rate_without_sampler_id() or self.rates.get(address, 1)
            for key in members:
                stream_rate[key] = rate
                stream_init[key] = domain.sampling.system_init_ms
                stream_address[key] = address
                stream_domain[key] = domain.domain
            mine = np.flatnonzero(np.isin(keys, members))
            seq = sequence[mine]
            expected = np.r_[0, following[mine][:-1] % 2**32]
            gap = (seq - expected) % 2**32
            gap[(gap >= 2**31)] = 0
            if domain.expected_sequence is None:
                gap[0] = 0
            else:
                first_gap = (int(seq[0]) - domain.expected_sequence) % 2**32
                gap[0] = first_gap if first_gap < 2**31 else 0
            version = ipfix.VERSION if is_ipfix[mine[0]] else v9.VERSION
            stats = self.stats_for(name, domain.domain, version)
            stats.packets += len(mine)
            stats.flows += int(count[mine].sum())
            stats.sequence_gaps += int(gap.sum())
            last = int(seq[-1])
            stats.last_sequence = domain.last_sequence = last
            domain.expected_sequence = int(following[mine[-1]]) % 2**32
        uptime = np.where(
            is_ipfix,
            np.where(stream_init[keys] != 0, export_ms - stream_init[keys], UNKNOWN_UPTIME),
            head.uptime[span],
        )
        set_length = head.set_length[span]
        data_start = np.where(is_ipfix, ipfix.HEADER.size, v9.HEADER.size) + 4
        # One read per (template, set length): exporters that send the same template share
        # one compiled object (``compile_wire`` is cached), so their datagrams stack together.
        shared: dict[int, int] = {}
        template_of = np.zeros(n_keys, dtype=np.int64)
        for key in used.tolist():
            entry = templates[key]
            assert entry is not None
            template_of[key] = shared.setdefault(id(entry[0]), key)
        group_key = template_of[keys] << 17 | set_length << 1 | is_ipfix
        groups, group_of = np.unique(group_key, return_inverse=True)
        for g, value in enumerate(groups.tolist()):
            members_of = (
                np.flatnonzero(group_of == g) if len(groups) > 1 else np.arange(end - begin)
            )
            entry = templates[value >> 17]
            assert entry is not None
            template = entry[0]
            n = int(count[members_of[0]])
            first = int(data_start[members_of[0]])
            raw = self.rows[rows[members_of], first : first + n * template.fixed_length]
            recs = np.frombuffer(np.ascontiguousarray(raw), dtype=template.dtype)
            k = keys[members_of]
            ctx = RowContext(
                exporter=np.repeat(stream_address[k], n),
                domain=np.repeat(stream_domain[k].astype(np.uint32), n),
                received_ms=np.full(len(recs), self.received_ms, dtype=np.uint64),
                export_ms=np.repeat(export_ms[members_of], n),
                uptime_ms=np.repeat(uptime[members_of], n),
                rate=np.repeat(stream_rate[k].astype(np.uint32), n),
                sampler_chunks=[],
            )
            self.emit(convert(template, recs, ctx, None))
