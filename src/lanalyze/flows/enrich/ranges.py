"""Address ranges -> values, answered for a whole batch with ``np.searchsorted``.

The one lookup structure of enrichment: the configured networks (:mod:`.networks`) and the
GeoIP/AS databases (:mod:`.geoip`) are both turned into sorted, disjoint ranges, each with
a value index. IPv4 ranges are searched on 32-bit keys (the common case, and several times
faster than 16-byte ones), IPv6 ranges on 16-byte big-endian keys (numpy compares ``S16``
values as bytes: the numeric order of the addresses). Addresses come in the stored form:
16 bytes, IPv4 as IPv4-mapped IPv6. A batch's addresses are split into the two kinds once
(:class:`AddressKeys`) and asked of every table.

Trust: the ranges are built from the configuration or the administrator's databases; the
addresses are flow data, used only as numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

MAPPED_FIRST = 0xFFFF_0000_0000
MAPPED_LAST = 0xFFFF_FFFF_FFFF


@dataclass(frozen=True)
class AddressKeys:
    """A batch's 16-byte addresses split into IPv4 keys and IPv6 keys."""

    count: int
    is_v4: npt.NDArray[np.bool_]
    v4: npt.NDArray[np.uint32]
    v6: npt.NDArray[np.bytes_]

    @classmethod
    def of(cls, addresses: npt.NDArray[Any]) -> AddressKeys:
        flat = np.ascontiguousarray(addresses).view(np.uint8).reshape(-1, 16)
        halves = flat.view(">u8")
        is_v4 = (halves[:, 0] == 0) & ((halves[:, 1] >> np.uint64(32)) == 0xFFFF)
        if is_v4.all():
            v4 = (halves[:, 1] & np.uint64(0xFFFF_FFFF)).astype(np.uint32)
            return cls(len(flat), is_v4, v4, np.zeros(0, dtype="S16"))
        v4 = (halves[is_v4, 1] & np.uint64(0xFFFF_FFFF)).astype(np.uint32)
        v6 = np.ascontiguousarray(flat[~is_v4]).view("S16").reshape(-1)
        return cls(len(flat), is_v4, v4, v6)


BLOCK_BITS = 12
"""IPv4 addresses per block of the direct table: 4096 (a /20), so 2**20 blocks, 4 MiB."""
BLOCK_TABLE_MIN = 1
"""IPv4 ranges from which a direct block table is built: any. Even a dozen configured
networks cost a binary search ~14 ns an address (five dependent steps through numpy's
generic search), the block table 2-3 (docs/performance.md, "Enrichment at ingest")."""
_MIXED = np.int32(-2)


class RangeIndex:
    """Disjoint ranges (inclusive ends) -> value index; -1 outside every range.

    IPv4 ranges are kept gap-filled (every address falls in one entry, gaps valued -1), so
    a lookup is one ``searchsorted`` and one gather; whenever there are IPv4 ranges (a GeoIP
    database, or a few configured networks) a direct table per /20 block (4 MiB) answers
    most addresses with one gather and leaves only the blocks holding several ranges to the
    binary search (a random binary search over 10^5 ranges costs a cache miss per step, and
    even over a dozen costs five times the gather)."""

    def __init__(
        self,
        v4: tuple[npt.NDArray[Any], npt.NDArray[Any], npt.NDArray[Any]],
        v6: tuple[npt.NDArray[Any], npt.NDArray[Any], npt.NDArray[Any]],
    ) -> None:
        start, end, value = v4
        order = np.argsort(start, kind="stable")
        self.v4_start, self.v4_value = _gap_filled(
            np.asarray(start, dtype=np.int64)[order],
            np.asarray(end, dtype=np.int64)[order],
            np.asarray(value, dtype=np.int32)[order],
        )
        self.v4_block: npt.NDArray[np.int32] | None = None
        if len(start) >= BLOCK_TABLE_MIN:
            self.v4_block = self._block_table()
        start6, end6, value6 = v6
        order = np.argsort(start6, kind="stable")
        self.v6_start = np.asarray(start6, dtype="S16")[order]
        self.v6_end = np.asarray(end6, dtype="S16")[order]
        self.v6_value = np.asarray(value6, dtype=np.int32)[order]

    def _block_table(self) -> npt.NDArray[np.int32]:
        blocks = np.arange(1 << (32 - BLOCK_BITS), dtype=np.int64) << BLOCK_BITS
        first = np.searchsorted(self.v4_start, blocks, side="right") - 1
        last = np.searchsorted(self.v4_start, blocks + (1 << BLOCK_BITS) - 1, side="right") - 1
        return np.where(first == last, self.v4_value[first], _MIXED).astype(np.int32)

    def _find_v4(self, keys: npt.NDArray[np.uint32]) -> npt.NDArray[np.int32]:
        if self.v4_block is None:
            position = np.searchsorted(self.v4_start, keys, side="right") - 1
            return self.v4_value[position]
        found: npt.NDArray[np.int32] = self.v4_block[keys >> np.uint32(BLOCK_BITS)]
        mixed = found == _MIXED
        if mixed.any():
            position = np.searchsorted(self.v4_start, keys[mixed], side="right") - 1
            found[mixed] = self.v4_value[position]
        return found

    def __len__(self) -> int:
        return len(self.v4_start) + len(self.v6_start)

    @property
    def nbytes(self) -> int:
        block = self.v4_block.nbytes if self.v4_block is not None else 0
        arrays = (self.v4_start, self.v4_value)
        arrays6 = (self.v6_start, self.v6_end, self.v6_value)
        return int(block + sum(a.nbytes for a in arrays) + sum(a.nbytes for a in arrays6))

    def lookup(self, keys: AddressKeys) -> npt.NDArray[np.int32]:
        """The value index of each address of ``keys`` (-1: in no range)."""
        if keys.is_v4.all():
            return self._find_v4(keys.v4)
        out = np.full(keys.count, -1, dtype=np.int32)
        if len(keys.v4):
            out[keys.is_v4] = self._find_v4(keys.v4)
        if len(keys.v6):
            out[~keys.is_v4] = _find(self.v6_start, self.v6_end, self.v6_value, keys.v6)
        return out


def _find(
    starts: npt.NDArray[Any], ends: npt.NDArray[Any], values: npt.NDArray[np.int32], keys: Any
) -> npt.NDArray[np.int32]:
    if not len(starts):
        return np.full(len(keys), -1, dtype=np.int32)
    position = np.searchsorted(starts, keys, side="right") - 1
    clipped = np.maximum(position, 0)
    inside = (position >= 0) & (keys <= ends[clipped])
    return np.where(inside, values[clipped], np.int32(-1)).astype(np.int32, copy=False)


def _gap_filled(
    start: npt.NDArray[np.int64], end: npt.NDArray[np.int64], value: npt.NDArray[np.int32]
) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.int32]]:
    """Sorted disjoint IPv4 ranges as entry starts covering 0..2**32-1, gaps valued -1."""
    after = end + 1
    gap = np.ones(len(start), dtype=bool)
    gap[:-1] = after[:-1] < start[1:]  # a gap follows unless the next range starts there
    gap &= after <= 0xFFFF_FFFF
    starts = np.concatenate(([0], start, after[gap]))
    values = np.concatenate(([-1], value, np.full(int(gap.sum()), -1))).astype(np.int32)
    order = np.argsort(starts, kind="stable")
    starts, values = starts[order], values[order]
    # Where a range starts at 0 the leading gap entry goes: keep the last entry per start.
    keep = np.ones(len(starts), dtype=bool)
    keep[:-1] = starts[:-1] != starts[1:]
    return starts[keep].astype(np.uint32), values[keep]


def s16(values: list[int]) -> npt.NDArray[np.bytes_]:
    """128-bit integers as 16-byte big-endian keys."""
    return np.array([v.to_bytes(16, "big") for v in values], dtype="S16")


def from_intervals(intervals: list[tuple[int, int, int]]) -> RangeIndex:
    """An index from (first, last, value) over the 128-bit stored address space (config-sized
    lists: Python per interval); pieces inside ``::ffff:0:0/96`` go to the IPv4 side."""
    v4: list[tuple[int, int, int]] = []
    v6: list[tuple[int, int, int]] = []
    for first, last, value in intervals:
        low, high = max(first, MAPPED_FIRST), min(last, MAPPED_LAST)
        if low <= high:
            v4.append((low - MAPPED_FIRST, high - MAPPED_FIRST, value))
        if first < MAPPED_FIRST:
            v6.append((first, min(last, MAPPED_FIRST - 1), value))
        if last > MAPPED_LAST:
            v6.append((max(first, MAPPED_LAST + 1), last, value))
    return RangeIndex(
        (
            np.array([f for f, _, _ in v4], dtype=np.uint32),
            np.array([t for _, t, _ in v4], dtype=np.uint32),
            np.array([v for _, _, v in v4], dtype=np.int32),
        ),
        (
            s16([f for f, _, _ in v6]),
            s16([t for _, t, _ in v6]),
            np.array([v for _, _, v in v6], dtype=np.int32),
        ),
    )
