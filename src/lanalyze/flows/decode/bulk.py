"""Bulk decoding of the common IPFIX (RFC 7011) and NetFlow v9 (RFC 3954) datagram: data sets
of known fixed-length templates only, read for many datagrams at once from ``recvmmsg`` rows.

The message headers (RFC 7011 §3.1: version, length, export time, sequence, observation
domain; RFC 3954 §5.1: version, count, sysUpTime, unix_secs, sequence, source id) are numpy
columns at fixed offsets, and the sets (§3.3.2: set id, set length) are walked with numpy, one
pass per set position over all datagrams. A datagram is a *candidate* when its sets tile the
message as the walk reads them (IPFIX: message length == datagram length; a set length >= 4
that stays inside; < 4 trailing bytes ignored) and all are data sets (id >= 256), at most
:data:`MAX_SETS` of them.

Candidates all of whose sets have, when their run starts, a fixed-length flow template without
sampler ids (and at least one record per set, at most ``max_records`` in all: the walk cuts a
datagram at that cap) are read in bulk: records are gathered per (template, records per set)
with one fancy-indexing copy and read with the template's dtype;
counters and sequence numbers are accounted with numpy per (exporter, domain), exactly as the
walk would (in the stream's sequence convention, :mod:`.sequence`; a message that may decide
an undecided stream's convention is walked in place). Every other datagram goes through
:class:`~.templated.TemplatedWalker` in arrival order, and ends the run (a template set must
apply before the data that follows it, an option record before the data whose sampling it
changes). ``tests/flows/test_decode_fuzz.py`` and the corpus test check that both paths give
the same flows and counters.

Trust: the bytes are the exporter's; a datagram that is not exactly the common shape is never
read here, and the walk counts its errors. Hand-written because no library decodes IPFIX in
bulk; it reuses the walk's compiled templates and record conversion.
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


MAX_SETS = 64
"""Sets walked per datagram with numpy; a datagram with more is walked in Python."""


class RowHeaders:
    """The fixed-offset header fields of datagrams ``indexes`` of ``rows``, and their sets
    (walked with numpy, one pass per set position, over all datagrams at once)."""

    def __init__(self, rows: Array, lengths: Array, indexes: Array) -> None:
        sizes = lengths[indexes]
        head = rows[indexes, :HEAD].astype(np.int64)

        def u16(at: int) -> Array:
            return (head[:, at] << 8) | head[:, at + 1]

        def u32(at: int) -> Array:
            return (u16(at) << 16) | u16(at + 2)

        version = u16(0)
        is_ipfix = (version == ipfix.VERSION) & (u16(2) == sizes)
        is_v9 = version == v9.VERSION
        self.version = version
        self.secs = np.where(is_ipfix, u32(4), u32(8))
        self.sequence = np.where(is_ipfix, u32(8), u32(12))
        self.domain = np.where(is_ipfix, u32(12), u32(16))
        self.uptime = u32(4)  # v9 only
        candidate = (sizes >= HEAD) & (is_ipfix | is_v9)
        # The sets, as the walk reads them: a set header needs 4 bytes, its length must be
        # >= 4 and stay inside the message; any set that is not a data set (or any error)
        # sends the whole datagram to the walk.
        pos = np.where(is_ipfix, ipfix.HEADER.size, v9.HEADER.size)
        found: list[tuple[Array, Array, Array, Array]] = []
        active = np.flatnonzero(candidate)
        for _ in range(MAX_SETS):
            if not len(active):
                break
            where, at = indexes[active], pos[active]
            set_id = (rows[where, at].astype(np.int64) << 8) | rows[where, at + 1]
            set_length = (rows[where, at + 2].astype(np.int64) << 8) | rows[where, at + 3]
            bad = (set_id < 256) | (set_length < 4) | (at + set_length > sizes[active])
            candidate[active[bad]] = False
            good = ~bad
            active = active[good]
            found.append((active, set_id[good], at[good], set_length[good]))
            pos[active] += set_length[good]
            active = active[sizes[active] - pos[active] >= 4]
        candidate[active] = False
        if found:
            owner, set_id, at, set_length = (np.concatenate(f) for f in zip(*found, strict=True))
        else:
            owner = set_id = at = set_length = np.zeros(0, dtype=np.int64)
        keep = candidate[owner]
        order = np.argsort(owner[keep], kind="stable")  # per datagram, in set order
        self.set_owner = owner[keep][order]
        self.set_id = set_id[keep][order]
        self.set_start = at[keep][order]
        self.set_length = set_length[keep][order]
        self.first_set = np.searchsorted(self.set_owner, np.arange(len(sizes) + 1))
        self.candidate = candidate


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
        max_records: int = 2**31,
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
        self.max_records = max_records
        self._windows: dict[int, Array] = {}

    def decode(self, indexes: Array) -> None:
        if self.rows.shape[1] < HEAD or not self.rows.flags.c_contiguous:
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
        """Candidates ``start:stop``: bulk where every set's template is known and fixed,
        walking the others in place (they change no template, but may change sampling or
        sequences)."""
        codes = self.codes[indexes[start:stop]]
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
        sets = slice(int(head.first_set[start]), int(head.first_set[stop]))
        owner = head.set_owner[sets]
        dgram = owner - start
        is_ipfix = head.version[owner] == ipfix.VERSION
        key = ((local[dgram] * 2 + is_ipfix) << 48) | (head.domain[owner] << 16)
        keys, inverse = np.unique(key | head.set_id[sets], return_inverse=True)
        templates: list[tuple[Template, DomainState] | None] = []
        for value in keys.tolist():
            code, version_bit = exporter_of[value >> 49], (value >> 48) & 1
            state = states[code].domains.get(
                (ipfix.VERSION if version_bit else v9.VERSION, (value >> 16) & 0xFFFFFFFF)
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
        counts = np.zeros(len(owner), dtype=np.int64)
        known = record_length > 0
        counts[known] = (head.set_length[sets][known] - 4) // record_length[known]
        # Walked instead: a datagram with a set the bulk read cannot take, or with more
        # records than the cap (the walk cuts it and counts that).
        walk = np.bincount(dgram[counts == 0], minlength=stop - start) > 0
        walk |= np.bincount(dgram, weights=counts, minlength=stop - start) > self.max_records
        walked = np.flatnonzero(walk).tolist()
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
        set_keys: Array,
        templates: list[tuple[Template, DomainState] | None],
        set_counts: Array,
    ) -> None:
        """Datagrams ``offset + begin : offset + end``, every set of a usable template: in
        bulk, but for the messages whose sequence number may decide a stream's convention
        (:mod:`.sequence`), which are walked in place."""
        while begin < end:
            cut = self._bulk_span(
                head, indexes, offset, begin, end, set_keys, templates, set_counts
            )
            if cut is None:
                return
            self.walk(int(indexes[offset + cut]))
            begin = cut + 1

    def _bulk_span(  # noqa: PLR0917
        self,
        head: RowHeaders,
        indexes: Array,
        offset: int,
        begin: int,
        end: int,
        set_keys: Array,
        templates: list[tuple[Template, DomainState] | None],
        set_counts: Array,
    ) -> int | None:
        """Datagrams ``offset + begin : offset + end``, up to (excluding) the first message of
        a stream whose convention is undecided and whose record count changes: returns that
        message's position (to be walked), None if all were decoded."""
        span = slice(offset + begin, offset + end)
        base = int(head.first_set[offset])
        sets = slice(
            int(head.first_set[offset + begin]) - base, int(head.first_set[offset + end]) - base
        )
        keys = set_keys[sets]
        count = set_counts[sets]
        owner = head.set_owner[base + sets.start : base + sets.stop] - (offset + begin)
        rows = indexes[span]
        n = end - begin
        records = np.bincount(owner, weights=count, minlength=n).astype(np.int64)
        sequence = head.sequence[span]
        is_ipfix = head.version[span] == ipfix.VERSION
        export_ms = head.secs[span] * 1000
        # The domain of each datagram: that of its first set's template.
        first_key = keys[np.searchsorted(owner, np.arange(n))]
        rate = np.ones(n, dtype=np.int64)
        init = np.zeros(n, dtype=np.int64)
        address = np.zeros(n, dtype="S16")
        domain_id = np.zeros(n, dtype=np.int64)
        by_domain: dict[int, tuple[DomainState, list[int]]] = {}
        for key in np.unique(first_key).tolist():
            entry = templates[key]
            assert entry is not None
            by_domain.setdefault(id(entry[1]), (entry[1], []))[1].append(key)
        # One record per packet for v9 (RFC 3954 numbers packets).
        counted = np.where(is_ipfix, records, 1)
        members_of: list[tuple[DomainState, Array]] = []
        cut = n
        for domain, members in by_domain.values():
            mine = np.flatnonzero(np.isin(first_key, members))
            members_of.append((domain, mine))
            if domain.post_increment is None:
                mine_counted = counted[mine]
                changes = mine_counted[1:] != mine_counted[:-1]
                if domain.last_records is not None and mine_counted[0] != domain.last_records:
                    cut = min(cut, int(mine[0]))
                elif changes.any():
                    cut = min(cut, int(mine[1 + int(np.argmax(changes))]))
        if cut < n:
            # The sequence of datagram ``cut`` may decide its stream's convention: the walk's.
            if cut > 0:
                self._bulk_span(
                    head, indexes, offset, begin, begin + cut, set_keys, templates, set_counts
                )
            return begin + cut
        for domain, mine in members_of:
            name = self.exporters[int(self.codes[rows[mine[0]]])]
            exporter_address = self.exporter(name).address
            rate[mine] = domain.sampling.rate_without_sampler_id() or self.rates.get(
                exporter_address, 1
            )
            init[mine] = domain.sampling.system_init_ms
            address[mine] = exporter_address
            domain_id[mine] = domain.domain
            seq = sequence[mine]
            mine_counted = counted[mine]
            previous = np.r_[domain.last_sequence, seq[:-1]]
            # Undecided here means every count equals its predecessor's: both conventions
            # give the same gap.
            if domain.post_increment:
                shift = mine_counted
            else:
                shift = np.r_[domain.last_records or 0, mine_counted[:-1]]
            gap = (seq - previous - shift) % 2**32
            gap[(gap >= 2**31)] = 0
            if domain.last_records is None:
                gap[0] = 0
            version = ipfix.VERSION if is_ipfix[mine[0]] else v9.VERSION
            stats = self.stats_for(name, domain.domain, version)
            stats.packets += len(mine)
            stats.flows += int(records[mine].sum())
            stats.sequence_gaps += int(gap.sum())
            stats.last_sequence = domain.last_sequence = int(seq[-1])
            domain.last_records = int(mine_counted[-1])
        uptime = np.where(
            is_ipfix,
            np.where(init != 0, export_ms - init, UNKNOWN_UPTIME),
            head.uptime[span],
        )
        # One read per template: exporters that send the same template share one compiled
        # object (:class:`.state.CompileCache`), so their sets are read together.
        shared: dict[int, int] = {}
        template_of = np.zeros(len(templates), dtype=np.int64)
        for key in np.unique(keys).tolist():
            entry = templates[key]
            assert entry is not None
            template_of[key] = shared.setdefault(id(entry[0]), key)
        set_template = template_of[keys]
        width = self.rows.shape[1]
        set_byte = rows[owner] * width + head.set_start[base + sets.start : base + sets.stop] + 4
        for value in shared.values():
            mine = (
                np.flatnonzero(set_template == value) if len(shared) > 1 else np.arange(len(keys))
            )
            entry = templates[value]
            assert entry is not None
            template = entry[0]
            length = template.fixed_length
            # Sets of one record count are copied as whole rows of count * length bytes
            # (one memcpy each), then the groups' bytes are joined: one read per template.
            c = count[mine]
            chunks: list[Array] = []
            spread: list[tuple[Array, int]] = []
            for records_in_set in np.unique(c).tolist():
                same = mine[c == records_in_set]
                chunks.append(self._window(records_in_set * length)[set_byte[same]].reshape(-1))
                spread.append((owner[same], records_in_set))
            raw = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
            recs = np.frombuffer(raw, dtype=template.dtype)

            def per_record(values: Array, spread: list[tuple[Array, int]] = spread) -> Array:
                parts = [np.repeat(values[o], k) for o, k in spread]
                return parts[0] if len(parts) == 1 else np.concatenate(parts)

            ctx = RowContext(
                exporter=per_record(address),
                domain=per_record(domain_id.astype(np.uint32)),
                received_ms=np.full(len(recs), self.received_ms, dtype=np.uint64),
                export_ms=per_record(export_ms),
                uptime_ms=per_record(uptime),
                rate=per_record(rate.astype(np.uint32)),
                sampler_chunks=[],
            )
            self.emit(convert(template, recs, ctx, None))
        return None

    def _window(self, length: int) -> Array:
        """Every ``length``-byte window of the slots, as rows (a view: no copy)."""
        window = self._windows.get(length)
        if window is None:
            flat = self.rows.reshape(-1)
            window = self._windows[length] = np.lib.stride_tricks.sliding_window_view(flat, length)
        return window
