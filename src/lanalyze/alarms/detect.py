"""Detection on stored flows *(core)*: Arrow batches in, findings out, no IO.

Every algorithm works on whole batches with numpy (hashing, ``sort``, ``searchsorted``,
``np.add.at``), converting only the columns and rows it uses; Python loops run only over the
few keys that cross a threshold, to describe them. State is windows of counters keyed by
64-bit hashes, each charged by bytes against its share of ``alarms.state_memory``;
:meth:`Detector.snapshot` / :meth:`Detector.restore` turn it into plain arrays so a restart
keeps an incident's counts.

Counting distinct targets (scans, mass mailer) is exact up to 64-bit hash collisions (about
one in 10^19 pairs): each window keeps the set of distinct (key, target) pair hashes. When a
window outgrows its byte budget, the keys with the fewest distinct targets are forgotten first
(counted in ``evicted``), so the sources closest to a threshold are the last to lose their
count. Windows are tumbling, aligned to multiples of their length since the epoch.

Floods compare a destination's rate in the current window with a threshold and with its own
baseline: an EWMA (alpha 0.2) of its rate in past windows, kept for the ``baseline_keys``
busiest destinations; a window over the threshold does not teach the baseline, so a long
attack stays an attack.

Trust: the flows are the exporters' (anyone who can send UDP to the collector, unless
``flows.exporters_allowed``): addresses, ports and counters are used only as numbers, and a
flood of distinct keys costs bounded memory.
"""

from __future__ import annotations

import functools
import ipaddress
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from lanalyze.alarms.config import AlarmsConfig, DeviationConfig

U64 = npt.NDArray[np.uint64]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]

COLUMNS = (
    "exporter",
    "sampling_rate",
    "bytes",
    "packets",
    "flows",
    "src_addr",
    "dst_addr",
    "src_port",
    "dst_port",
    "protocol",
    "tcp_flags",
)
"""The flow columns detection reads (the engine reads only these from a segment)."""

_EMPTY_U64: U64 = np.zeros(0, np.uint64)
TOP = 10
"""Evidence rows (targets, ports) kept per finding."""


@dataclass
class Finding:
    """One algorithm's verdict on one subject in the current window."""

    algorithm: str
    subject: str
    value: float
    threshold: float
    unit: str
    evidence: dict[str, Any] = field(default_factory=dict)
    filter: str = ""
    """nfdump filter of the matching flows (the drill-down link)."""
    window_start_ms: int = 0
    address: str = ""
    """The host behind the subject, when there is one (mail-side evidence, links)."""

    @property
    def ratio(self) -> float:
        return self.value / self.threshold if self.threshold else 0.0

    @property
    def severity(self) -> str:
        return severity_for(self.ratio)


def severity_for(ratio: float) -> str:
    """At the threshold a warning, 4 times over major, 16 times over critical."""
    if ratio >= 16:
        return "critical"
    if ratio >= 4:
        return "major"
    return "warning"


# --- addresses ------------------------------------------------------------------------------


def address_words(column: pa.ChunkedArray | pa.Array) -> tuple[U64, U64]:
    """A 16-byte address column as its high and low 64-bit halves (big-endian numbers)."""
    array = _one_chunk(column)
    n = len(array)
    if n == 0:
        return _EMPTY_U64, _EMPTY_U64
    data = array.buffers()[1]
    assert data is not None
    # The buffer as native words, each half swapped into its own contiguous array: one pass
    # a half (a big-endian view then ``astype`` and a contiguous copy took three).
    words = np.frombuffer(data, dtype=np.uint64)[array.offset * 2 : (array.offset + n) * 2]
    pairs = words.reshape(n, 2)
    if np.little_endian:
        return pairs[:, 0].byteswap(), pairs[:, 1].byteswap()
    return np.ascontiguousarray(pairs[:, 0]), np.ascontiguousarray(pairs[:, 1])


def _one_chunk(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """A column as one array: a single chunk as it is (``combine_chunks`` copied it)."""
    if not isinstance(column, pa.ChunkedArray):
        return column
    if column.num_chunks == 1:
        return column.chunk(0)
    return column.combine_chunks()


@functools.lru_cache(maxsize=4096)
def _address_text(value: int) -> str:
    address = ipaddress.IPv6Address(value)
    return str(address.ipv4_mapped or address)


def format_address(hi: int, lo: int) -> str:
    """``10.0.0.1`` for an IPv4-mapped address, else the IPv6 text."""
    return _address_text(int(hi) << 64 | int(lo))


@dataclass(frozen=True)
class Networks:
    """CIDRs as masks over the 128-bit IPv4-mapped form; ``contains`` works on whole columns."""

    nets: tuple[tuple[int, int, int, int], ...]

    @classmethod
    def of(cls, cidrs: Iterable[str]) -> Networks:
        nets = []
        for text in cidrs:
            net = ipaddress.ip_network(text, strict=False)
            if isinstance(net, ipaddress.IPv4Network):
                base = int(ipaddress.IPv6Address(f"::ffff:{net.network_address}"))
                bits = 96 + net.prefixlen
            else:
                base, bits = int(net.network_address), net.prefixlen
            mask = ((1 << bits) - 1) << (128 - bits) if bits else 0
            nets.append((base >> 64, base & (2**64 - 1), mask >> 64, mask & (2**64 - 1)))
        return cls(tuple(nets))

    def contains(self, hi: U64, lo: U64) -> Mask:
        found = np.zeros(hi.shape, np.bool_)
        for net_hi, net_lo, mask_hi, mask_lo in self.nets:
            found |= ((hi & np.uint64(mask_hi)) == np.uint64(net_hi)) & (
                (lo & np.uint64(mask_lo)) == np.uint64(net_lo)
            )
        return found


def is_inside(hi: U64, lo: U64, inside: Networks) -> Mask:
    """Whether each address is one of ours: the one rule of ``inside`` (``alarms.inside``),
    a single function so it can later defer to the network roles of ``[flows.networks]``."""
    return inside.contains(hi, lo)


# --- hashing --------------------------------------------------------------------------------


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


def _mix(x: U64) -> U64:
    """splitmix64's finaliser, on a whole array (uint64 arithmetic wraps, as meant). One new
    array, the rest in place: every flow passes here."""
    x = x + _GOLDEN
    return _mix_in_place(x)


def _mix_in_place(x: U64) -> U64:
    x ^= x >> _S30
    x *= _M1
    x ^= x >> _S27
    x *= _M2
    x ^= x >> _S31
    return x


def combine(*parts: npt.NDArray[Any]) -> U64:
    """One 64-bit hash per row of the given columns."""
    h = np.zeros(parts[0].shape, np.uint64)
    for part in parts:
        h = _mix(h ^ part.astype(np.uint64))
    return h


def address_hash(hi: U64, lo: U64) -> U64:
    """One 64-bit hash per address (one mixing round: the high half of an IPv4-mapped
    address is a constant)."""
    x = hi * _GOLDEN
    x ^= lo
    x += _GOLDEN
    return _mix_in_place(x)


def _lookup(sorted_keys: U64, keys: U64) -> tuple[npt.NDArray[np.intp], Mask]:
    """Positions of ``keys`` in ``sorted_keys`` and whether each is there."""
    pos = np.searchsorted(sorted_keys, keys)
    if sorted_keys.size == 0:
        return pos, np.zeros(keys.shape, np.bool_)
    found = sorted_keys[np.minimum(pos, sorted_keys.size - 1)] == keys
    return pos, found


def _aligned(now_ms: int, window_ms: int) -> int:
    return now_ms - now_ms % window_ms


# --- windows --------------------------------------------------------------------------------


def _merge(old: npt.NDArray[Any], pos: npt.NDArray[np.intp], new: npt.NDArray[Any]) -> Any:
    """``old`` (sorted) with the sorted ``new`` inserted at ``pos`` (from ``searchsorted``),
    in one pass without sorting (``np.insert`` sorts its indices)."""
    if new.size == 0:
        return old
    out = np.empty(old.size + new.size, old.dtype)
    at = pos + np.arange(new.size)
    taken = np.zeros(out.size, np.bool_)
    taken[at] = True
    out[at] = new
    out[~taken] = old
    return out


def _runs(sorted_values: U64) -> tuple[U64, I64]:
    """The distinct values of a sorted array and how often each occurs."""
    if sorted_values.size == 0:
        return _EMPTY_U64, np.zeros(0, np.int64)
    starts = np.flatnonzero(np.concatenate(([True], sorted_values[1:] != sorted_values[:-1])))
    counts = np.diff(np.append(starts, sorted_values.size)).astype(np.int64)
    return sorted_values[starts], counts


KEY_BITS = 40
"""A distinct-count key is a 40-bit hash, a target within it a 24-bit one: a pair is one
sortable uint64 whose top bits are its key, so a plain sort groups pairs by key."""
_ITEM_MASK = np.uint64((1 << (64 - KEY_BITS)) - 1)
_ITEM_SHIFT = np.uint64(64 - KEY_BITS)


class DistinctWindow:
    """Distinct items per key in a window: exact up to the hashes' collisions (see module),
    bounded by bytes.

    Two sorted levels, so a batch does not copy the whole window: new pairs (and keys the
    window did not hold) go into a small ``recent`` level, which is folded into the main one
    when it outgrows about the square root of (main size x 64 Ki). Inserting into one sorted
    array cost a copy of the whole window a batch: with a minute of ordinary traffic's
    SYN-only flows (about 2 M pairs) that was most of the detector's time."""

    FOLD_MIN = 1 << 16

    def __init__(self, window_s: int, max_bytes: int) -> None:
        self.window_ms = window_s * 1000
        self.max_bytes = max_bytes
        self.started = 0
        self.pairs: U64 = _EMPTY_U64  # sorted (key << 24 | item) values
        self.keys: U64 = _EMPTY_U64  # sorted key hashes (the pairs' top bits)
        self.counts: I64 = np.zeros(0, np.int64)  # pairs per key, in the same order
        # The recent level: pairs in neither level before, keys not in ``keys``.
        self.recent_pairs: U64 = _EMPTY_U64
        self.recent_keys: U64 = _EMPTY_U64
        self.recent_counts: I64 = np.zeros(0, np.int64)
        self.prev_keys: U64 = _EMPTY_U64  # the previous window's keys and counts
        self.prev_counts: I64 = np.zeros(0, np.int64)
        self.evicted = 0

    @property
    def nbytes(self) -> int:
        held = (self.pairs, self.keys, self.counts, self.prev_keys, self.prev_counts)
        recent = (self.recent_pairs, self.recent_keys, self.recent_counts)
        return sum(a.nbytes for a in held) + sum(a.nbytes for a in recent)

    def _fold(self) -> None:
        """Merge the recent level into the main one (its keys are not there: no sums)."""
        if self.recent_pairs.size == 0 and self.recent_keys.size == 0:
            return
        at = np.searchsorted(self.pairs, self.recent_pairs)
        self.pairs = _merge(self.pairs, at, self.recent_pairs)
        at = np.searchsorted(self.keys, self.recent_keys)
        self.counts = _merge(self.counts, at, self.recent_counts)
        self.keys = _merge(self.keys, at, self.recent_keys)
        self.recent_pairs = self.recent_keys = _EMPTY_U64
        self.recent_counts = np.zeros(0, np.int64)

    def _roll(self, now_ms: int) -> None:
        start = _aligned(now_ms, self.window_ms)
        if start != self.started:
            self._fold()
            if start - self.started == self.window_ms:
                self.prev_keys, self.prev_counts = self.keys, self.counts
            else:
                self.prev_keys, self.prev_counts = _EMPTY_U64, np.zeros(0, np.int64)
            self.started = start
            self.pairs = self.keys = _EMPTY_U64
            self.counts = np.zeros(0, np.int64)

    @staticmethod
    def key_of(key: U64) -> U64:
        """The key hash a window keeps for ``key`` (what :meth:`add` returns)."""
        return key >> _ITEM_SHIFT

    def _counts_of(self, keys: U64) -> tuple[U64, I64]:
        """The ``keys`` (sorted) the window holds, with their counts."""
        pos, main = _lookup(self.keys, keys)
        rpos, recent = _lookup(self.recent_keys, keys)
        counts = np.zeros(keys.size, np.int64)
        counts[main] = self.counts[pos[main]]
        counts[recent] = self.recent_counts[rpos[recent]]
        there = main | recent
        return keys[there], counts[there]

    def add(self, now_ms: int, key: U64, item: U64) -> tuple[U64, I64]:
        """Count the batch's (key, item) pairs; the keys that gained a pair, with their
        counts (the current window's plus the previous one's share)."""
        self._roll(now_ms)
        if key.size == 0:
            return _EMPTY_U64, np.zeros(0, np.int64)
        pair = ((key >> _ITEM_SHIFT) << _ITEM_SHIFT) | (_mix(key ^ item) & _ITEM_MASK)
        pair = _runs(np.sort(pair))[0]
        _, known = _lookup(self.pairs, pair)
        pair = pair[~known]
        pos, known = _lookup(self.recent_pairs, pair)
        new = pair[~known]
        if new.size == 0:
            return _EMPTY_U64, np.zeros(0, np.int64)
        self.recent_pairs = _merge(self.recent_pairs, pos[~known], new)
        new_keys, new_counts = _runs(new >> _ITEM_SHIFT)
        mpos, main = _lookup(self.keys, new_keys)
        self.counts[mpos[main]] += new_counts[main]
        rest_keys, rest_counts = new_keys[~main], new_counts[~main]
        rpos, known = _lookup(self.recent_keys, rest_keys)
        self.recent_counts[rpos[known]] += rest_counts[known]
        # The keys' counts now (before a fold or eviction moves them).
        counts = np.empty(new_keys.size, np.int64)
        counts[main] = self.counts[mpos[main]]
        rest = np.empty(rest_keys.size, np.int64)
        rest[known] = self.recent_counts[rpos[known]]
        rest[~known] = rest_counts[~known]
        counts[~main] = rest
        self.recent_counts = _merge(self.recent_counts, rpos[~known], rest_counts[~known])
        self.recent_keys = _merge(self.recent_keys, rpos[~known], rest_keys[~known])
        if self.recent_pairs.size > max(self.FOLD_MIN, math.isqrt(self.pairs.size << 16)):
            self._fold()
        evicted = self.evicted
        self._bound()
        if self.evicted == evicted:
            touched = new_keys
        else:  # some keys forgotten: only those still held
            touched, counts = self._counts_of(new_keys)
        # A sliding window's estimate: the previous window's count, weighted by how much of
        # it the sliding window still covers, so a scan across a boundary is not split in two.
        ppos, before = _lookup(self.prev_keys, touched)
        if before.any():
            weight = 1 - (now_ms - self.started) / self.window_ms
            extra = np.zeros(touched.size, np.int64)
            extra[before] = (self.prev_counts[ppos[before]] * weight).astype(np.int64)
            counts = counts + extra
        return touched, counts

    def _bound(self) -> None:
        if self.nbytes <= self.max_bytes:
            return
        self._fold()
        # Forget the keys with the fewest items until half the budget is free: the cut is
        # a count (from a histogram of the counts, no sort), pairs follow their keys' order.
        cost = np.bincount(np.minimum(self.counts, 1 << 20), weights=self.counts * 8 + 16).cumsum()
        need = self.nbytes - self.max_bytes // 2
        cut = int(np.searchsorted(cost, need))  # drop keys with counts <= cut
        keep = self.counts > cut
        self.evicted += int(keep.size - keep.sum())
        self.pairs = self.pairs[np.repeat(keep, self.counts)]
        self.keys, self.counts = self.keys[keep], self.counts[keep]

    def state(self, prefix: str) -> dict[str, npt.NDArray[Any]]:
        self._fold()  # the snapshot's form is one level
        return {
            f"{prefix}.meta": np.array([self.started, self.evicted], np.int64),
            f"{prefix}.pairs": self.pairs,
            f"{prefix}.keys": self.keys,
            f"{prefix}.counts": self.counts,
            f"{prefix}.prev_keys": self.prev_keys,
            f"{prefix}.prev_counts": self.prev_counts,
        }

    def restore(self, prefix: str, data: dict[str, npt.NDArray[Any]]) -> None:
        meta = data.get(f"{prefix}.meta")
        if meta is None:
            return
        self.started, self.evicted = int(meta[0]), int(meta[1])
        self.pairs = data[f"{prefix}.pairs"].astype(np.uint64)
        self.keys = data[f"{prefix}.keys"].astype(np.uint64)
        self.counts = data[f"{prefix}.counts"].astype(np.int64)
        self.prev_keys = data[f"{prefix}.prev_keys"].astype(np.uint64)
        self.prev_counts = data[f"{prefix}.prev_counts"].astype(np.int64)
        self.recent_pairs = self.recent_keys = _EMPTY_U64
        self.recent_counts = np.zeros(0, np.int64)


SKETCH_ROWS = 2


@dataclass
class SketchDelta:
    """What one worker added to a :class:`WindowSums` since its last report: the counters of
    its window starting at ``started`` (ms), and ``tail``, what it added to the window before
    that one after its previous report (None: nothing). float32: one report's sums per
    counter, exact to 2^24 and within 6e-8 beyond."""

    started: int
    sums: npt.NDArray[np.float32] | None
    tail: npt.NDArray[np.float32] | None = None


class WindowSums:
    """Sums of a few values per key in a window, in a count-min sketch: ``SKETCH_ROWS`` rows
    of ``width`` counters each, a key's sum the smallest of its counters (never below the
    truth; above it only when every row collides with heavier keys). Fixed memory, no sort:
    ``np.add.at`` per batch. ``closed`` holds the previous window's sketch."""

    def __init__(self, window_s: int, width: int, columns: int) -> None:
        self.window_ms = window_s * 1000
        self.width = 1 << (width - 1).bit_length()
        self.columns = columns
        self.started = 0
        # The rounded width: ``buckets`` masks with it (a width not a power of two once
        # made every batch fail on a shape mismatch).
        self.sums: F64 = np.zeros((columns, SKETCH_ROWS, self.width))
        self.closed: F64 | None = None
        self._closed_top: F64 = np.zeros(columns)

    @property
    def nbytes(self) -> int:
        return self.sums.nbytes * (2 if self.closed is not None else 1)

    def buckets(self, key: U64) -> list[I64]:
        """Each key's counter in each row: keys are hashes already, each row takes its own
        32 bits of them (the width is a power of two: a mask, no division). Computed on the
        signed view: the result indexes without a conversion pass."""
        signed = key.view(np.int64)
        mask = self.width - 1
        return [(signed >> (32 * r)) & mask if r else signed & mask for r in range(SKETCH_ROWS)]

    def _roll(self, now_ms: int) -> None:
        start = _aligned(now_ms, self.window_ms)
        if start != self.started:
            adjacent = self.started and start - self.started == self.window_ms
            self.closed = self.sums if adjacent else None
            self._closed_tops()
            self.started = start
            self.sums = np.zeros((self.columns, SKETCH_ROWS, self.width))

    def _closed_tops(self) -> None:
        """Each column's biggest counter of the closed window (first row), once a window."""
        self._closed_top = (
            self.closed[:, 0].max(axis=1) if self.closed is not None else np.zeros(self.columns)
        )

    def add(
        self,
        now_ms: int,
        buckets: list[I64],
        values: list[F64],
        limits: tuple[float, ...],
    ) -> tuple[npt.NDArray[np.intp], F64]:
        """Add the batch's values (one array per column) at their keys' ``buckets``. The
        rows whose key's estimated window sum reaches its column's limit in some column, and
        their estimates (rows, columns): :meth:`hot`."""
        self._roll(now_ms)
        if buckets[0].size:
            for c, column in enumerate(values):
                for r in range(SKETCH_ROWS):
                    np.add.at(self.sums[c, r], buckets[r], column)
        return self.hot(now_ms, buckets, limits)

    def merge(self, now_ms: int, delta: SketchDelta) -> None:
        """Add another process's counts (a worker's, :mod:`lanalyze.alarms.partial`): its
        current window's counters to ours when it is ours, to the closed window when it is
        the one before; the tail of its previous window likewise. Older counts are dropped
        (a worker that lagged a whole window)."""
        self._roll(now_ms)
        for started, counts in (
            (delta.started, delta.sums),
            (delta.started - self.window_ms, delta.tail),
        ):
            if counts is None or counts.shape != self.sums.shape:
                continue
            if started == self.started:
                self.sums += counts
            elif started == self.started - self.window_ms and self.closed is not None:
                self.closed += counts
                self._closed_tops()

    def hot(
        self, now_ms: int, buckets: list[I64], limits: tuple[float, ...]
    ) -> tuple[npt.NDArray[np.intp], F64]:
        """The rows (of ``buckets``) whose key's estimated window sum reaches its column's
        limit in some column, and their estimates (rows, columns).

        Only counters at the limit in every sketch row can hold such a key, so the batch's
        rows are looked up only when some counter is; and no counter is when the first row's
        biggest one (plus the closed window's biggest share) is below the limit: the common
        case costs one ``max`` a column, no pass over the sketch."""
        none = (np.zeros(0, np.intp), np.zeros((0, self.columns)))
        n = buckets[0].size
        if n == 0:
            return none
        weight = 1 - (now_ms - self.started) / self.window_ms
        candidate: Mask | None = None
        for c, limit in enumerate(limits):
            if self.sums[c, 0].max() + self._closed_top[c] * weight < limit:
                continue
            total = self.sums[c]
            if self.closed is not None:
                total = total + self.closed[c] * weight
            hot = total >= limit
            if not hot[0].any():
                continue
            mask = np.ones(n, np.bool_)
            for r in range(SKETCH_ROWS):
                mask &= hot[r][buckets[r]]
            candidate = mask if candidate is None else candidate | mask
        if candidate is None:
            return none
        rows = np.flatnonzero(candidate)
        if rows.size == 0:
            return none
        estimate = np.empty((rows.size, self.columns))
        for c in range(self.columns):
            per_row = []
            for r in range(SKETCH_ROWS):
                at = buckets[r][rows]
                value = self.sums[c, r][at]
                if self.closed is not None:
                    value = value + self.closed[c, r][at] * weight
                per_row.append(value)
            estimate[:, c] = np.min(per_row, axis=0)
        return rows, estimate

    def state(self, prefix: str) -> dict[str, npt.NDArray[Any]]:
        data = {
            f"{prefix}.meta": np.array([self.started], np.int64),
            f"{prefix}.sums": self.sums,
        }
        if self.closed is not None:
            data[f"{prefix}.closed"] = self.closed
        return data

    def restore(self, prefix: str, data: dict[str, npt.NDArray[Any]]) -> None:
        meta = data.get(f"{prefix}.meta")
        sums = data.get(f"{prefix}.sums")
        if meta is None or sums is None or sums.shape != self.sums.shape:
            return  # another width: start afresh
        self.started = int(meta[0])
        self.sums = sums.astype(np.float64)
        closed = data.get(f"{prefix}.closed")
        fits = closed is not None and closed.shape == sums.shape
        self.closed = closed.astype(np.float64) if fits else None  # type: ignore[union-attr]
        self._closed_tops()


class Baseline:
    """EWMA (alpha 0.2) of each destination's packet rate in past windows, in a sketch of
    the same shape as the flood window's (a key's baseline: the smallest of its counters)."""

    ALPHA = 0.2

    def __init__(self, width: int) -> None:
        self.values: F64 = np.zeros((SKETCH_ROWS, 1 << (width - 1).bit_length()))

    @property
    def nbytes(self) -> int:
        return self.values.nbytes

    def learn(self, rates: F64, calm: npt.NDArray[np.bool_]) -> None:
        """One closed window's rates (a sketch); counters over the threshold do not learn."""
        learnt = (1 - self.ALPHA) * self.values + self.ALPHA * rates
        self.values = np.where(calm, learnt, self.values)

    def get(self, buckets: list[I64]) -> F64:
        return np.min([self.values[r][buckets[r]] for r in range(SKETCH_ROWS)], axis=0)  # type: ignore[no-any-return]


FloodInput = tuple["WindowSums", Mask, list[I64], list[F64], tuple[float, ...]]
"""A flood sketch, the flows of a batch it counts, their buckets, values and the limits."""


# --- the batch ------------------------------------------------------------------------------


class Batch:
    """A stored segment's columns as numpy arrays, each converted when first used (most
    batches need few of them: no probe, no UDP, no port 25)."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table
        self.size = table.num_rows

    def _column(self, name: str) -> npt.NDArray[Any]:
        values: npt.NDArray[Any] = self.table.column(name).to_numpy()
        return values

    def native(self, name: str) -> npt.NDArray[Any]:
        """A column in its stored type (no copy), for comparisons."""
        return self._column(name)

    def take(self, name: str, rows: npt.NDArray[np.intp]) -> F64:
        """A numeric column's values at ``rows``, as floats (converting only those rows)."""
        values: F64 = self._column(name)[rows].astype(np.float64)
        return values

    @functools.cached_property
    def _src(self) -> tuple[U64, U64]:
        return address_words(self.table.column("src_addr"))

    @functools.cached_property
    def _dst(self) -> tuple[U64, U64]:
        return address_words(self.table.column("dst_addr"))

    @functools.cached_property
    def _exp(self) -> tuple[U64, U64]:
        return address_words(self.table.column("exporter"))

    def raw_words(self, name: str) -> U64:
        """A 16-byte column as (n, 2) words in the machine's byte order (no copy): equality
        tests need no big-endian numbers."""
        array = _one_chunk(self.table.column(name))
        data = array.buffers()[1]
        assert data is not None
        words = np.frombuffer(data, dtype=np.uint64)
        return words[array.offset * 2 : (array.offset + self.size) * 2].reshape(self.size, 2)

    @property
    def src_hi(self) -> U64:
        return self._src[0]

    @property
    def src_lo(self) -> U64:
        return self._src[1]

    @property
    def dst_hi(self) -> U64:
        return self._dst[0]

    @property
    def dst_lo(self) -> U64:
        return self._dst[1]

    @property
    def exp_hi(self) -> U64:
        return self._exp[0]

    @property
    def exp_lo(self) -> U64:
        return self._exp[1]

    @functools.cached_property
    def src(self) -> U64:
        return address_hash(self.src_hi, self.src_lo)

    @functools.cached_property
    def dst(self) -> U64:
        return address_hash(self.dst_hi, self.dst_lo)

    @functools.cached_property
    def sampling(self) -> F64:
        return np.maximum(self._column("sampling_rate").astype(np.float64), 1.0)

    @functools.cached_property
    def raw_bytes(self) -> F64:
        return self._column("bytes").astype(np.float64)

    @functools.cached_property
    def raw_packets(self) -> F64:
        return self._column("packets").astype(np.float64)

    @functools.cached_property
    def unsampled(self) -> bool:
        """No flow of the batch is sampled (rate 0 or 1): the scaling is a no-op."""
        return bool(self._column("sampling_rate").max(initial=0) <= 1)

    @functools.cached_property
    def bytes(self) -> F64:
        """Bytes scaled by the sampling rate."""
        if self.unsampled:
            return self.raw_bytes
        return self.raw_bytes * self.sampling

    @functools.cached_property
    def packets(self) -> F64:
        """Packets scaled by the sampling rate."""
        if self.unsampled:
            return self.raw_packets
        return self.raw_packets * self.sampling

    @functools.cached_property
    def flows(self) -> F64:
        return self._column("flows").astype(np.float64)

    @functools.cached_property
    def src_port(self) -> U64:
        return self._column("src_port").astype(np.uint64)

    @functools.cached_property
    def dst_port(self) -> U64:
        return self._column("dst_port").astype(np.uint64)

    @functools.cached_property
    def protocol(self) -> npt.NDArray[np.uint8]:
        return self._column("protocol")

    @functools.cached_property
    def tcp_flags(self) -> npt.NDArray[np.uint8]:
        return self._column("tcp_flags")

    @functools.cached_property
    def tcp(self) -> Mask:
        mask: Mask = self.protocol == 6
        return mask

    @functools.cached_property
    def syn_only(self) -> Mask:
        """TCP flows with SYN and without ACK."""
        mask: Mask = self.tcp & ((self.tcp_flags & 0x12) == 0x02)
        return mask

    def src_text(self, row: int) -> str:
        return format_address(self.src_hi[row], self.src_lo[row])

    def dst_text(self, row: int) -> str:
        return format_address(self.dst_hi[row], self.dst_lo[row])


EVIDENCE_ROWS = 10_000
"""Rows of one subject an alarm's evidence is drawn from (a flood's target may be the whole
batch)."""
MAX_SUBJECTS = 100
"""Subjects one algorithm reports per batch, the biggest first (a spoofed scan from a whole
/8 must not make a Python loop of millions)."""


def _rows_of(mask: Mask) -> npt.NDArray[np.intp]:
    rows: npt.NDArray[np.intp] = np.flatnonzero(mask)[:EVIDENCE_ROWS]
    return rows


def _top_addresses(hi: U64, lo: U64, weight: F64) -> list[dict[str, Any]]:
    if hi.size == 0:
        return []
    key = combine(hi, lo)
    order = np.argsort(key, kind="stable")
    _, counts = _runs(key[order])
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    sums = np.add.reduceat(weight[order], starts)
    top = np.argsort(-sums, kind="stable")[:TOP]
    return [
        {
            "address": format_address(hi[order[starts[i]]], lo[order[starts[i]]]),
            "flows": int(counts[i]),
            "value": float(sums[i]),
        }
        for i in top
    ]


def _top_ports(ports: U64, weight: F64) -> list[dict[str, Any]]:
    if ports.size == 0:
        return []
    sums = np.bincount(ports.astype(np.intp), weight, 65536)
    top = np.argsort(-sums, kind="stable")[:TOP]
    return [{"port": int(p), "flows": int(sums[p])} for p in top if sums[p] > 0]


def _biggest(keys: U64, counts: npt.NDArray[Any], threshold: float) -> list[tuple[int, float]]:
    over = np.flatnonzero(counts >= threshold)
    over = over[np.argsort(-counts[over], kind="stable")][:MAX_SUBJECTS]
    return [(int(keys[i]), float(counts[i])) for i in over]


PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmp6", 132: "sctp"}


@dataclass
class Partial:
    """One worker's report to the detector (:mod:`lanalyze.alarms.partial`), in place of
    its stored flows: what the parent needs of them."""

    now_ms: int
    rows: pa.Table
    """The flows an algorithm may count or describe (probe-shaped, port 25, listed
    networks, flood candidates; every flow when baseline deviation is on), :data:`COLUMNS`."""
    flows: int
    """Flows the worker looked at."""
    exporters: list[str]
    floods: list[SketchDelta | None] | None
    """Flood, SYN-flood and reflection sketch counts (None: floods off)."""
    candidates: pa.Table | None = None
    """The flows of destinations at 1/workers of a flood limit in the worker's sketches."""

    @property
    def nbytes(self) -> int:
        sketches = sum(
            a.nbytes
            for d in self.floods or []
            if d is not None
            for a in (d.sums, d.tail)
            if a is not None
        )
        extra = int(self.candidates.nbytes) if self.candidates is not None else 0
        return int(self.rows.nbytes) + sketches + extra


# --- the detector ---------------------------------------------------------------------------


class Detector:
    """Every flow algorithm over one stream of batches, and the exporters heard."""

    MAX_EXPORTERS = 4096

    def __init__(self, config: AlarmsConfig, mail_servers: Iterable[str] = ()) -> None:
        self.config = config
        budget = config.state_memory
        scan, flood = config.scan, config.flood
        self.inside = Networks.of(config.inside)
        self.allow = Networks.of(config.allow)
        self.scan_allow = Networks.of([*config.allow, *scan.allow])
        self.flood_allow = Networks.of([*config.allow, *flood.allow])
        self.mail_servers = Networks.of([*config.mass_mailer.mail_servers, *mail_servers])
        self.reflection_ports = np.array(sorted(set(flood.reflection_ports)), np.uint64)
        self.horizontal = DistinctWindow(scan.window, budget * 4 // 10)
        self.vertical = DistinctWindow(scan.window, budget * 4 // 10)
        self.mailer = DistinctWindow(config.mass_mailer.window, budget * 2 // 10)
        self.flood = WindowSums(flood.window, flood.sketch_width, 2)
        self.syn = WindowSums(flood.window, flood.sketch_width, 1)
        self.reflection = WindowSums(flood.window, flood.sketch_width, 1)
        self.baseline = Baseline(flood.sketch_width)
        self.exporters: dict[str, int] = {}
        """Exporter address -> last time (ms) one of its flows was stored."""
        self.bad: BadNetworks | None = None
        self.deviation = HostDeviation(config.deviation) if config.deviation.enabled else None
        self._candidates: pa.Table | None = None
        self._candidates_window = 0
        """The listed networks (``alarms.bad_networks``), set by whoever reads the file."""

    @property
    def nbytes(self) -> int:
        windows = (self.horizontal, self.vertical, self.mailer, self.flood, self.syn)
        held = sum(w.nbytes for w in windows) + self.reflection.nbytes + self.baseline.nbytes
        return held + (self.deviation.nbytes if self.deviation is not None else 0)

    def process(self, now_ms: int, table: pa.Table) -> list[Finding]:
        """The findings of one stored batch (``now_ms``: when it is looked at)."""
        if table.num_rows == 0:
            return []
        batch = Batch(table)
        self._heard(now_ms, batch)
        findings: list[Finding] = []
        if self.config.scan.enabled:
            findings += self._scans(now_ms, batch)
        if self.config.flood.enabled:
            findings += self._floods(now_ms, batch)
        if self.config.mass_mailer.enabled:
            findings += self._mass_mailer(now_ms, batch)
        if self.bad is not None and self.bad.size:
            findings += bad_network_findings(self.bad, batch, now_ms)
        if self.deviation is not None:
            findings += self.deviation.add(now_ms, batch)
        return findings

    def merge(self, now_ms: int, partial: Partial) -> list[Finding]:
        """The findings of a worker's report (:mod:`lanalyze.alarms.partial`): the exporters
        it heard, its flood sketches' counts, and the flows the other algorithms look at
        (the same findings as :meth:`process` of the worker's flows)."""
        now_ms = max(now_ms, partial.now_ms)
        self.note_heard(now_ms, partial.exporters)
        batch = Batch(partial.rows)
        findings: list[Finding] = []
        if self.config.scan.enabled:
            findings += self._scans(now_ms, batch)
        if self.config.flood.enabled and partial.floods is not None:
            candidates = self._flood_candidates(now_ms, partial)
            findings += self._floods(now_ms, candidates, partial.floods)
        if batch.size == 0:
            return findings
        if self.config.mass_mailer.enabled:
            findings += self._mass_mailer(now_ms, batch)
        if self.bad is not None and self.bad.size:
            findings += bad_network_findings(self.bad, batch, now_ms)
        if self.deviation is not None:
            findings += self.deviation.add(now_ms, batch)
        return findings

    FLOOD_CANDIDATES = EVIDENCE_ROWS
    """Flood candidate flows kept for the window: a destination may cross its limit in the
    sum of the workers with the report of a worker that did not send its flows (another
    did, earlier)."""

    def _flood_candidates(self, now_ms: int, partial: Partial) -> Batch:
        """This report's flood candidates with the window's earlier ones (the newest
        ``FLOOD_CANDIDATES``; forgotten when the flood window rolls)."""
        new = partial.candidates if partial.candidates is not None else partial.rows.slice(0, 0)
        window = _aligned(now_ms, self.flood.window_ms)
        kept = self._candidates
        if kept is not None and kept.num_rows and self._candidates_window == window:
            new = pa.concat_tables([kept, new])
        if new.num_rows > self.FLOOD_CANDIDATES:
            new = new.slice(new.num_rows - self.FLOOD_CANDIDATES)
        self._candidates, self._candidates_window = new, window
        return Batch(new)

    # -- scans --

    def _scans(self, now_ms: int, b: Batch) -> list[Finding]:
        cfg = self.config.scan
        # Only flows shaped like probes count: TCP without ACK (a SYN unanswered or reset,
        # the scanner's side of a closed or filtered port), other protocols of at most two
        # packets toward a port not above the source port (answers go the other way).
        # Conversations have ACK: a mail server's deliveries are no port-25 scan.
        rows = b.syn_only.copy()
        other = ~b.tcp
        if other.any():
            # Compared in the columns' own types: no conversion of whole columns.
            ports = b.native("dst_port") <= b.native("src_port")
            rows |= other & (b.native("packets") <= 2) & ports
        if rows.any() and self.scan_allow.nets:
            rows &= ~self.scan_allow.contains(b.src_hi, b.src_lo)
        if not rows.any():
            self.horizontal.add(now_ms, _EMPTY_U64, _EMPTY_U64)
            self.vertical.add(now_ms, _EMPTY_U64, _EMPTY_U64)
            return []
        out: list[Finding] = []
        idx = np.flatnonzero(rows)
        src, dst, proto, port = b.src[idx], b.dst[idx], b.protocol[idx], b.dst_port[idx]
        key = combine(src, proto, port)
        keys, counts = self.horizontal.add(now_ms, key, dst)
        short = DistinctWindow.key_of(key)
        for key_value, count in _biggest(keys, counts, cfg.horizontal_hosts):
            mine = idx[short == np.uint64(key_value)][:EVIDENCE_ROWS]
            row = int(mine[0])
            text = b.src_text(row)
            name = PROTOCOLS.get(int(b.protocol[row]), str(int(b.protocol[row])))
            number = int(b.dst_port[row])
            out.append(
                Finding(
                    "scan_horizontal",
                    f"{text} {name}/{number}",
                    count,
                    cfg.horizontal_hosts,
                    "hosts",
                    {"targets": _top_addresses(b.dst_hi[mine], b.dst_lo[mine], b.flows[mine])},
                    f"src ip {text} and proto {name} and dst port {number}",
                    self.horizontal.started,
                    text,
                )
            )
        key = combine(src, dst)
        keys, counts = self.vertical.add(now_ms, key, combine(proto, port))
        short = DistinctWindow.key_of(key)
        for key_value, count in _biggest(keys, counts, cfg.vertical_ports):
            mine = idx[short == np.uint64(key_value)][:EVIDENCE_ROWS]
            row = int(mine[0])
            text, target = b.src_text(row), b.dst_text(row)
            out.append(
                Finding(
                    "scan_vertical",
                    f"{text} -> {target}",
                    count,
                    cfg.vertical_ports,
                    "ports",
                    {"ports": _top_ports(b.dst_port[mine], b.flows[mine])},
                    f"src ip {text} and dst ip {target}",
                    self.vertical.started,
                    text,
                )
            )
        return out

    # -- floods --

    def flood_inputs(
        self, b: Batch
    ) -> list[tuple[WindowSums, Mask, list[I64], list[F64], tuple[float, ...]]]:
        """Per flood sketch (flood, SYN flood, reflection): the sketch, the batch's flows it
        counts (a mask), their buckets and values, and its limits per window. The same for
        the parent's detector and a worker's (:mod:`lanalyze.alarms.partial`)."""
        cfg = self.config.flood
        seconds = cfg.window
        # Every flow's counters in the sketches, computed once: flood, SYN flood, reflection
        # and the baseline share one width (a subset takes its rows' buckets).
        every = self.flood.buckets(b.dst)
        rows = np.ones(b.size, np.bool_)
        if self.flood_allow.nets:
            rows = ~self.flood_allow.contains(b.dst_hi, b.dst_lo)
            kept = np.flatnonzero(rows)
            buckets = [r[kept] for r in every]
            values = [b.packets[kept], b.flows[kept]]
        else:
            buckets, values = every, [b.packets, b.flows]  # no copy of the whole batch
        syn_rows = rows & b.syn_only
        syn = np.flatnonzero(syn_rows)
        refl_rows = rows & (b.protocol == 17)
        udp = np.flatnonzero(refl_rows)
        if udp.size:
            # The UDP flows' own ports and bytes, not whole columns: most flows are not UDP
            # from a reflector port.
            udp = udp[np.isin(b.take("src_port", udp), self.reflection_ports)]
            raw = b.take("bytes", udp)
            udp = udp[raw >= cfg.reflection_min_packet * np.maximum(b.raw_packets[udp], 1)]
            refl_rows[:] = False
            refl_rows[udp] = True
        return [
            (self.flood, rows, buckets, values, (cfg.pps * seconds, cfg.fps * seconds)),
            (
                self.syn,
                syn_rows,
                [r[syn] for r in every],
                [b.flows[syn]],
                (cfg.syn_fps * seconds,),
            ),
            (
                self.reflection,
                refl_rows,
                [r[udp] for r in every],
                [b.take("bytes", udp) * b.sampling[udp]],
                (cfg.reflection_bps * seconds,),
            ),
        ]

    def _floods(
        self, now_ms: int, b: Batch, deltas: list[SketchDelta | None] | None = None
    ) -> list[Finding]:
        """Flood findings of a batch; with ``deltas`` (a worker's report) the sketches take
        the worker's counts whole and ``b`` holds only its candidate flows."""
        cfg = self.config.flood
        seconds = cfg.window
        previous = self.flood.closed
        inputs = self.flood_inputs(b)
        looks = []
        for i, (sketch, _, buckets, values, limits) in enumerate(inputs):
            if deltas is None:
                looks.append(sketch.add(now_ms, buckets, values, limits))
                continue
            delta = deltas[i]
            if delta is not None:
                sketch.merge(now_ms, delta)
            else:
                sketch.merge(now_ms, SketchDelta(0, None))  # the roll alone
            looks.append(sketch.hot(now_ms, buckets, limits))
        rows, syn_rows, refl_rows = (part[1] for part in inputs)
        out: list[Finding] = []
        where, estimate = looks[0]
        closed = self.flood.closed
        if closed is not None and closed is not previous:
            rates = closed[0] / seconds
            self.baseline.learn(rates, rates < cfg.pps)
        pps, fps = estimate[:, 0] / seconds, estimate[:, 1] / seconds
        base = self.baseline.get([r[where] for r in inputs[0][2]]) * cfg.baseline_factor
        hot = ((pps >= cfg.pps) & (pps > base)) | ((fps >= cfg.fps) & (fps > base))
        out += self._targets(
            "flood",
            b,
            rows,
            where,
            hot,
            np.maximum(pps / cfg.pps, fps / cfg.fps),
            lambda i: {"pps": float(pps[i]), "fps": float(fps[i]), "baseline_pps": float(base[i])},
            "",
            self.flood.started,
        )
        where, estimate = looks[1]
        syn_fps = estimate[:, 0] / seconds
        out += self._targets(
            "syn_flood",
            b,
            syn_rows,
            where,
            syn_fps >= cfg.syn_fps,
            syn_fps / cfg.syn_fps,
            lambda i: {"fps": float(syn_fps[i])},
            " and proto tcp",
            self.syn.started,
        )
        where, estimate = looks[2]
        bps = estimate[:, 0] / seconds
        found = self._targets(
            "udp_reflection",
            b,
            refl_rows,
            where,
            bps >= cfg.reflection_bps,
            bps / cfg.reflection_bps,
            lambda i: {"bytes_per_second": float(bps[i])},
            " and proto udp",
            self.reflection.started,
        )
        for finding in found:
            mine = _rows_of(refl_rows & (b.dst == np.uint64(finding.evidence.pop("key"))))
            finding.evidence["reflectors"] = _top_addresses(
                b.src_hi[mine], b.src_lo[mine], b.bytes[mine]
            )
            finding.evidence["reflector_ports"] = _top_ports(b.src_port[mine], b.flows[mine])
        out += found
        for finding in out:
            finding.evidence.pop("key", None)
        return out

    def _targets(  # noqa: PLR0917 - one algorithm's parts, named at the calls
        self,
        algorithm: str,
        b: Batch,
        rows: Mask,
        candidates: npt.NDArray[np.intp],
        hot: Mask,
        ratio: F64,
        evidence: Any,
        extra_filter: str,
        started: int,
    ) -> list[Finding]:
        """One finding per destination among the ``hot`` ones of the ``candidates`` (indices
        into the flows of ``rows``; ``hot``, ``ratio`` per candidate), the biggest first."""
        if not hot.any():
            return []
        where = np.flatnonzero(rows)[candidates[hot]]
        keys, first = _runs_first(b.dst[where])
        best = np.zeros(keys.size)
        np.maximum.at(best, np.searchsorted(keys, b.dst[where]), ratio[hot])
        out = []
        for i in np.argsort(-best, kind="stable")[:MAX_SUBJECTS]:
            row = int(where[first[i]])
            index = int(np.flatnonzero(hot)[first[i]])
            mine = _rows_of(rows & (b.dst == keys[i]))
            dst = b.dst_text(row)
            details = evidence(index) | {
                "sources": _top_addresses(b.src_hi[mine], b.src_lo[mine], b.packets[mine]),
                "ports": _top_ports(b.dst_port[mine], b.flows[mine]),
                "key": int(keys[i]),
            }
            out.append(
                Finding(
                    algorithm,
                    dst,
                    float(best[i]),
                    1.0,
                    "x threshold",
                    details,
                    f"dst ip {dst}{extra_filter}",
                    started,
                    dst,
                )
            )
        return out

    # -- mass mailer --

    def _mass_mailer(self, now_ms: int, b: Batch) -> list[Finding]:
        cfg = self.config.mass_mailer
        idx = np.flatnonzero(b.tcp & (b.native("dst_port") == 25))
        if idx.size:
            src_hi, src_lo = b.src_hi[idx], b.src_lo[idx]
            keep = is_inside(src_hi, src_lo, self.inside)
            keep &= ~is_inside(b.dst_hi[idx], b.dst_lo[idx], self.inside)
            keep &= ~self.mail_servers.contains(src_hi, src_lo)
            keep &= ~self.allow.contains(src_hi, src_lo)
            idx = idx[keep]
        # Hash only the port-25 flows' addresses (``b.src`` would hash the whole batch's).
        key = address_hash(b.src_hi[idx], b.src_lo[idx]) if idx.size else _EMPTY_U64
        dst = address_hash(b.dst_hi[idx], b.dst_lo[idx]) if idx.size else _EMPTY_U64
        keys, counts = self.mailer.add(now_ms, key, dst)
        short = DistinctWindow.key_of(key)
        out = []
        for key_value, count in _biggest(keys, counts, cfg.hosts):
            mine = idx[short == np.uint64(key_value)][:EVIDENCE_ROWS]
            src = b.src_text(int(mine[0]))
            out.append(
                Finding(
                    "mass_mailer",
                    src,
                    count,
                    cfg.hosts,
                    "hosts",
                    {"targets": _top_addresses(b.dst_hi[mine], b.dst_lo[mine], b.flows[mine])},
                    f"src ip {src} and proto tcp and dst port 25",
                    self.mailer.started,
                    src,
                )
            )
        return out

    # -- exporters --

    def _heard(self, now_ms: int, b: Batch) -> None:
        self.note_heard(now_ms, heard_exporters(b))

    def note_heard(self, now_ms: int, names: Iterable[str]) -> None:
        """Exporters whose flows were stored at ``now_ms``."""
        for name in names:
            self.exporters.pop(name, None)
            self.exporters[name] = now_ms
        while len(self.exporters) > self.MAX_EXPORTERS:
            self.exporters.pop(next(iter(self.exporters)))

    def tick(self, now_ms: int) -> list[Finding]:
        """Findings that depend on time passing, not on flows: silent exporters."""
        cfg = self.config.exporter
        if not cfg.enabled:
            return []
        limit = cfg.silent_after * 1000
        out = []
        for name, last in self.exporters.items():
            silent = now_ms - last
            if silent >= limit:
                out.append(
                    Finding(
                        "exporter_silent",
                        name,
                        silent / 1000,
                        cfg.silent_after,
                        "seconds silent",
                        {"last_flow_ms": last},
                        "",
                        last,
                        name,
                    )
                )
        return out

    # -- state --

    def snapshot(self) -> dict[str, npt.NDArray[Any]]:
        data: dict[str, npt.NDArray[Any]] = {}
        data |= self.horizontal.state("horizontal")
        data |= self.vertical.state("vertical")
        data |= self.mailer.state("mailer")
        data |= self.flood.state("flood")
        data |= self.syn.state("syn")
        data |= self.reflection.state("reflection")
        data["baseline.values"] = self.baseline.values
        if self.deviation is not None:
            data |= self.deviation.state()
        names = list(self.exporters)
        data["exporters.names"] = np.array(names, dtype=np.str_) if names else np.zeros(0, "U1")
        data["exporters.last"] = np.array([self.exporters[n] for n in names], np.int64)
        return data

    def restore(self, data: dict[str, npt.NDArray[Any]]) -> None:
        self.horizontal.restore("horizontal", data)
        self.vertical.restore("vertical", data)
        self.mailer.restore("mailer", data)
        self.flood.restore("flood", data)
        self.syn.restore("syn", data)
        self.reflection.restore("reflection", data)
        if self.deviation is not None:
            self.deviation.restore(data)
        values = data.get("baseline.values")
        if values is not None and values.shape == self.baseline.values.shape:
            self.baseline.values = values.astype(np.float64)
        if "exporters.names" in data:
            names = [str(n) for n in data["exporters.names"]]
            lasts = [int(v) for v in data["exporters.last"]]
            self.exporters = dict(zip(names, lasts, strict=True))

    def evicted(self) -> int:
        return self.horizontal.evicted + self.vertical.evicted + self.mailer.evicted


def heard_exporters(b: Batch) -> list[str]:
    """The exporters of a batch's flows (at most ``Detector.MAX_EXPORTERS`` beyond 64)."""
    # Exporters are few: peel them off one at a time (no sort of the batch), comparing
    # the raw 16 bytes (no byte swap of the column: most batches hold one exporter, a
    # worker's, and cost one comparison a flow), each address seen as one complex128: one
    # contiguous comparison, where the two words compared apart were two strided passes.
    # Equal numbers are equal bytes but for -0.0 == 0.0 (a half 0x8000000000000000, never
    # an IPv4-mapped one's); a NaN pattern (an IPv4 exporter x.x.240-255.255) never equals
    # itself: its rows stay left and go to the hashed fallback below.
    words = b.raw_words("exporter")
    values = words.reshape(-1).view(np.complex128)
    rows: list[int] = []
    left: npt.NDArray[np.intp] | None = None  # None: every row
    while len(rows) < 64:
        row = 0 if left is None else int(left[0])
        rows.append(row)
        first = values[row]
        left = np.flatnonzero(values != first) if left is None else left[values[left] != first]
        if left.size == 0:
            break
    if left is not None and left.size:
        hi, lo = b.exp_hi[left], b.exp_lo[left]
        _, first = _runs_first(address_hash(hi, lo))
        rows += [int(left[r]) for r in first[: Detector.MAX_EXPORTERS]]
    return [format_address(b.exp_hi[row], b.exp_lo[row]) for row in rows]


def _runs_first(values: U64) -> tuple[U64, npt.NDArray[np.intp]]:
    """The distinct values (sorted) and the index of a row holding each."""
    order = np.argsort(values, kind="stable")
    unique, counts = _runs(values[order])
    starts = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.intp)
    first: npt.NDArray[np.intp] = order[starts]
    return unique, first


# --- bad networks ---------------------------------------------------------------------------

_V4_MAPPED = np.uint64(0xFFFF)


class BadNetworks:
    """A list of CIDRs as merged intervals: IPv4 over the 32-bit address, IPv6 over the
    top 64 bits (a prefix longer than /64 is widened to its /64). Matching is two
    ``searchsorted`` over the batch."""

    def __init__(self, cidrs: Iterable[str]) -> None:
        v4: list[tuple[int, int, str]] = []
        v6: list[tuple[int, int, str]] = []
        for text in cidrs:
            net = ipaddress.ip_network(text, strict=False)
            if isinstance(net, ipaddress.IPv4Network):
                v4.append((int(net.network_address), int(net.broadcast_address), str(net)))
            else:
                top = int(net.network_address) >> 64
                span = (1 << max(0, 64 - net.prefixlen)) - 1
                v6.append((top, top + span, str(net)))
        self.v4 = _intervals(v4)
        self.v6 = _intervals(v6)
        self.size = len(v4) + len(v6)

    def match(self, hi: U64, lo: U64) -> npt.NDArray[np.intp]:
        """Per address, the index of its interval (v4 first, then v6), or -1."""
        out = np.full(hi.shape, -1, np.intp)
        mapped = (hi == 0) & ((lo >> np.uint64(32)) == _V4_MAPPED)
        starts, ends, _ = self.v4
        if starts.size:
            value = lo & np.uint64(0xFFFFFFFF)
            i = np.searchsorted(starts, value, side="right") - 1
            hit = mapped & (i >= 0) & (value <= ends[np.maximum(i, 0)])
            out[hit] = i[hit]
        starts6, ends6, _ = self.v6
        if starts6.size:
            i = np.searchsorted(starts6, hi, side="right") - 1
            hit = ~mapped & (i >= 0) & (hi <= ends6[np.maximum(i, 0)])
            out[hit] = i[hit] + starts.size
        return out

    def label(self, index: int) -> str:
        v4 = self.v4[2]
        return v4[index] if index < len(v4) else self.v6[2][index - len(v4)]


def _intervals(items: list[tuple[int, int, str]]) -> tuple[U64, U64, list[str]]:
    """Sorted, merged (start, end) with the first CIDR of each merged run as its label."""
    starts: list[int] = []
    ends: list[int] = []
    labels: list[str] = []
    for start, end, text in sorted(items):
        if ends and start <= ends[-1] + 1:
            ends[-1] = max(ends[-1], end)
            continue
        starts.append(start)
        ends.append(end)
        labels.append(text)
    return np.array(starts, np.uint64), np.array(ends, np.uint64), labels


def bad_network_findings(bad: BadNetworks, b: Batch, started_ms: int) -> list[Finding]:
    """One finding per listed address seen in the batch (either side of a flow)."""
    src = bad.match(b.src_hi, b.src_lo)
    dst = bad.match(b.dst_hi, b.dst_lo)
    rows = np.flatnonzero((src >= 0) | (dst >= 0))
    if rows.size == 0:
        return []
    out_side = src[rows] >= 0
    hi = np.where(out_side, b.src_hi[rows], b.dst_hi[rows])
    lo = np.where(out_side, b.src_lo[rows], b.dst_lo[rows])
    keys, first = _runs_first(address_hash(hi, lo))
    findings = []
    counts = np.bincount(np.searchsorted(keys, address_hash(hi, lo)), minlength=keys.size)
    for i in np.argsort(-counts, kind="stable")[:MAX_SUBJECTS]:
        j = int(first[i])
        row = int(rows[j])
        address = format_address(hi[j], lo[j])
        mine = rows[(hi == hi[j]) & (lo == lo[j])][:EVIDENCE_ROWS]
        as_source = bool(out_side[j])
        network = bad.label(int(src[row] if as_source else dst[row]))
        peer_hi = b.dst_hi[mine] if as_source else b.src_hi[mine]
        peer_lo = b.dst_lo[mine] if as_source else b.src_lo[mine]
        findings.append(
            Finding(
                "bad_network",
                address,
                float(counts[i]),
                1.0,
                "flows",
                {"network": network, "peers": _top_addresses(peer_hi, peer_lo, b.flows[mine])},
                f"ip {address}",
                started_ms,
                address,
            )
        )
    return findings


# --- baseline deviation ---------------------------------------------------------------------

HOUR_MS = 3_600_000
WEEK_HOURS = 168


class HostDeviation:
    """Bytes per host (either side of a flow) in the current hour, in a count-min sketch, and
    per hour of the week an EWMA (alpha 0.2) of the hours that were not alarming: a host
    whose hour reaches ``factor`` times its baseline for that hour (and ``min_bytes``) is
    reported. Memory is fixed by ``sketch_width``, whatever the number of hosts."""

    ALPHA = 0.2

    def __init__(self, config: DeviationConfig) -> None:
        self.config = config
        self.width = 1 << (config.sketch_width - 1).bit_length()
        self.hour = 0
        self.current: F64 = np.zeros((SKETCH_ROWS, self.width))
        self.baseline: F64 = np.zeros((WEEK_HOURS, SKETCH_ROWS, self.width))
        self.learnt = np.zeros(WEEK_HOURS, np.int64)

    @property
    def nbytes(self) -> int:
        return self.current.nbytes + self.baseline.nbytes

    def _buckets(self, key: U64) -> npt.NDArray[np.intp]:
        mask = np.uint64(self.width - 1)
        return np.stack([(key >> np.uint64(32 * r)) & mask for r in range(SKETCH_ROWS)]).astype(
            np.intp
        )

    def _roll(self, now_ms: int) -> None:
        hour = now_ms // HOUR_MS
        if hour == self.hour:
            return
        if self.hour and hour - self.hour == 1:
            slot = self.hour % WEEK_HOURS
            old = self.baseline[slot]
            learnt = (
                (1 - self.ALPHA) * old + self.ALPHA * self.current
                if self.learnt[slot]
                else self.current
            )
            # An hour that alarmed does not teach its hosts' baseline.
            calm = self.current < np.maximum(old * self.config.factor, self.config.min_bytes)
            self.baseline[slot] = np.where(calm | (self.learnt[slot] == 0), learnt, old)
            self.learnt[slot] += 1
        self.hour = hour
        self.current = np.zeros((SKETCH_ROWS, self.width))

    def add(self, now_ms: int, b: Batch) -> list[Finding]:
        self._roll(now_ms)
        cfg = self.config
        keys = np.concatenate((b.src, b.dst))
        weight = np.concatenate((b.bytes, b.bytes))
        buckets = self._buckets(keys)
        for r in range(SKETCH_ROWS):
            self.current[r] += np.bincount(buckets[r], weight, self.width)
        slot = self.hour % WEEK_HOURS
        if self.learnt[slot] < cfg.weeks:
            return []
        limit = np.maximum(self.baseline[slot] * cfg.factor, cfg.min_bytes)
        hot = self.current >= limit
        if not hot[0].any():
            return []
        rows = np.ones(keys.size, np.bool_)
        for r in range(SKETCH_ROWS):
            rows &= hot[r][buckets[r]]
        where = np.flatnonzero(rows)
        if where.size == 0:
            return []
        unique, first = _runs_first(keys[where])
        out = []
        for i in range(min(unique.size, MAX_SUBJECTS)):
            j = int(where[first[i]])
            row = j % b.size
            is_src = j < b.size
            address = b.src_text(row) if is_src else b.dst_text(row)
            value = float(np.min([self.current[r][buckets[r][j]] for r in range(SKETCH_ROWS)]))
            base = float(
                np.min([self.baseline[slot][r][buckets[r][j]] for r in range(SKETCH_ROWS)])
            )
            out.append(
                Finding(
                    "host_deviation",
                    address,
                    value,
                    max(base * cfg.factor, float(cfg.min_bytes)),
                    "bytes this hour",
                    {"baseline_bytes": base, "hour_of_week": int(slot)},
                    f"ip {address}",
                    self.hour * HOUR_MS,
                    address,
                )
            )
        return out

    def state(self) -> dict[str, npt.NDArray[Any]]:
        return {
            "deviation.hour": np.array([self.hour], np.int64),
            "deviation.current": self.current,
            "deviation.baseline": self.baseline,
            "deviation.learnt": self.learnt,
        }

    def restore(self, data: dict[str, npt.NDArray[Any]]) -> None:
        baseline = data.get("deviation.baseline")
        if baseline is None or baseline.shape != self.baseline.shape:
            return
        self.hour = int(data["deviation.hour"][0])
        self.current = data["deviation.current"].astype(np.float64)
        self.baseline = baseline.astype(np.float64)
        self.learnt = data["deviation.learnt"].astype(np.int64)
