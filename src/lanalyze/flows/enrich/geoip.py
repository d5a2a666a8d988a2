"""Country and AS of addresses from MaxMind-format databases (``.mmdb``), vectorised.

Any MaxMind DB file works: GeoLite2-Country/-City and DB-IP lite country (``country.iso_code``,
else ``registered_country.iso_code``), GeoLite2-ASN and DB-IP lite ASN
(``autonomous_system_number``, ``autonomous_system_organization``); one file holding both is
fine too (MaxMind DB format 2.0: binary search tree of 24/28/32-bit records, then the data
section).

Asking the ``maxminddb`` reader per address costs ~15 µs of Python an address here, 50 times
the whole rest of the ingest path per flow, and a batch of random traffic has almost as many
distinct addresses as flows. So a database is read once, when it is opened, into sorted
address ranges: the search tree is walked breadth-first with numpy (one step per tree
depth for all nodes of that depth), each leaf becomes a range, and each distinct data record
is decoded once (``maxminddb``'s decoder). A batch is then answered with one
``np.searchsorted`` over the ranges (:mod:`.ranges`), no Python per flow or per address.

Files are checked for a new modification time every ``reload_interval`` seconds and read
again; a missing or unreadable file is one warning (again only after it was readable once)
and its columns stay empty until it is usable.

Trust: the databases are the administrator's files, but are read defensively: the walk is
bounded (a tree that is not a tree is refused), the ranges are bounded by
``flows.enrich.database_memory``, and records are checked for type and length (a country
code is 2 letters, an AS name at most 256 printable characters): a wrong file gives empty
columns, never exceptions or huge strings.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from lanalyze.flows.enrich.names import NO_NAMES, NameCodes
from lanalyze.flows.enrich.ranges import AddressKeys, RangeIndex
from lanalyze.flows.errors import GeoDatabaseError
from lanalyze.log import get_logger

log = get_logger(__name__)

MAX_AS_NAME = 256
RANGE_BYTES = 40
"""Bytes of one loaded range, the IPv6 kind (start, end, value; IPv4 ones take 16)."""
_ALL = np.uint64(0xFFFF_FFFF_FFFF_FFFF)


@dataclass(frozen=True)
class GeoAnswer:
    country: str | None
    asn: int
    as_name: str | None


def _country(record: Any) -> str | None:
    if not isinstance(record, dict):
        return None
    for key in ("country", "registered_country"):
        part = record.get(key)
        if isinstance(part, dict):
            code = part.get("iso_code")
            if isinstance(code, str) and len(code) == 2 and code.isascii() and code.isalpha():
                return code.upper()
    return None


def _as(record: Any) -> tuple[int, str | None]:
    if not isinstance(record, dict):
        return 0, None
    number = record.get("autonomous_system_number")
    name = record.get("autonomous_system_organization")
    asn = number if isinstance(number, int) and 0 < number < 2**32 else 0
    text = name if isinstance(name, str) and name.isprintable() else None
    return asn, (text[:MAX_AS_NAME] if text else None)


def answer(record: Any) -> GeoAnswer:
    asn, name = _as(record)
    return GeoAnswer(_country(record), asn, name)


# -- reading a database into ranges -----------------------------------------------------------


def _children(
    tree: npt.NDArray[np.uint8], record_size: int, nodes: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Left and right records of ``nodes`` (MaxMind DB format 2.0, "Search Tree Section")."""
    width = record_size // 4
    b = tree[: len(tree) // width * width].reshape(-1, width)[nodes].astype(np.int64)
    if record_size == 24:
        return b[:, 0] << 16 | b[:, 1] << 8 | b[:, 2], b[:, 3] << 16 | b[:, 4] << 8 | b[:, 5]
    if record_size == 28:
        left = (b[:, 3] & 0xF0) << 20 | b[:, 0] << 16 | b[:, 1] << 8 | b[:, 2]
        right = (b[:, 3] & 0x0F) << 24 | b[:, 4] << 16 | b[:, 5] << 8 | b[:, 6]
        return left, right
    left = b[:, 0] << 24 | b[:, 1] << 16 | b[:, 2] << 8 | b[:, 3]
    return left, b[:, 4] << 24 | b[:, 5] << 16 | b[:, 6] << 8 | b[:, 7]


@dataclass
class _Leaves:
    hi: npt.NDArray[np.uint64]
    lo: npt.NDArray[np.uint64]
    length: npt.NDArray[np.int64]
    pointer: npt.NDArray[np.int64]


@dataclass(frozen=True)
class _Tree:
    data: npt.NDArray[np.uint8]
    record_size: int
    node_count: int


def _walk(tree: _Tree, start: int, bits: int, skip: int | None, budget: int) -> _Leaves:
    """Every data leaf under ``start``: its prefix (``hi``/``lo`` 64-bit halves of a
    ``bits``-bit address, left-aligned in ``hi`` for IPv4's 32), length and data pointer.
    ``skip``: a node not to enter (the IPv4 subtree, walked apart, and its aliases)."""
    record_size, node_count = tree.record_size, tree.node_count
    found: list[tuple[Any, Any, Any, Any]] = []
    if start > node_count:  # the whole space is one record
        one = np.zeros(1, dtype=np.uint64)
        return _Leaves(one, one.copy(), np.zeros(1, np.int64), np.array([start], np.int64))
    nodes = np.array([start], dtype=np.int64)
    hi = np.zeros(1, dtype=np.uint64)
    lo = np.zeros(1, dtype=np.uint64)
    for depth in range(bits):
        if not len(nodes):
            break
        budget -= len(nodes)
        if budget < 0:
            raise GeoDatabaseError("the search tree is not a tree (too many paths)")
        left, right = _children(tree.data, record_size, nodes)
        if depth < 64:
            bit_hi, bit_lo = np.uint64(1 << (63 - depth)), np.uint64(0)
        else:
            bit_hi, bit_lo = np.uint64(0), np.uint64(1 << (127 - depth))
        next_nodes, next_hi, next_lo = [], [], []
        for values, side_hi, side_lo in ((left, hi, lo), (right, hi | bit_hi, lo | bit_lo)):
            data = values > node_count
            if data.any():
                found.append((side_hi[data], side_lo[data], depth + 1, values[data]))
            inner = values < node_count
            if skip is not None:
                inner &= values != skip
            next_nodes.append(values[inner])
            next_hi.append(side_hi[inner])
            next_lo.append(side_lo[inner])
        nodes = np.concatenate(next_nodes)
        hi = np.concatenate(next_hi)
        lo = np.concatenate(next_lo)
    if not found:
        empty_u = np.zeros(0, dtype=np.uint64)
        return _Leaves(empty_u, empty_u, np.zeros(0, np.int64), np.zeros(0, np.int64))
    return _Leaves(
        np.concatenate([f[0] for f in found]),
        np.concatenate([f[1] for f in found]),
        np.concatenate([np.full(len(f[0]), f[2], dtype=np.int64) for f in found]),
        np.concatenate([f[3] for f in found]),
    )


def _low_bits(count: npt.NDArray[np.int64]) -> npt.NDArray[np.uint64]:
    """``2**count - 1`` for counts 0..64, without overflowing numpy's shifts."""
    table = np.array([(1 << n) - 1 for n in range(65)], dtype=np.uint64)
    return table[np.clip(count, 0, 64)]


def _ranges(v4: _Leaves, v6: _Leaves, values: npt.NDArray[np.int32]) -> RangeIndex:
    """Leaves (prefixes) as ranges: IPv4 prefixes are left-aligned in ``hi``'s upper half."""
    v4_start = v4.hi >> np.uint64(32)
    v4_end = v4_start | _low_bits(32 - v4.length)
    hi_end = v6.hi | _low_bits(np.clip(64 - v6.length, 0, 64))
    lo_end = np.where(v6.length <= 64, _ALL, v6.lo | _low_bits(128 - np.maximum(v6.length, 64)))
    return RangeIndex(
        (v4_start, v4_end, values[: len(v4.hi)]),
        (_s16(v6.hi, v6.lo), _s16(hi_end, lo_end), values[len(v4.hi) :]),
    )


def _s16(hi: npt.NDArray[np.uint64], lo: npt.NDArray[np.uint64]) -> npt.NDArray[np.bytes_]:
    both = np.empty((len(hi), 2), dtype=">u8")
    both[:, 0], both[:, 1] = hi, lo
    return both.view("S16").reshape(-1)


@dataclass
class Loaded:
    """A database read into ranges: the index, and the distinct answers it points to."""

    index: RangeIndex
    answers: list[GeoAnswer]
    countries: NameCodes = field(init=False)
    """The answers' country codes: the database's distinct codes, one dictionary."""
    as_names: NameCodes = field(init=False)
    as_numbers: npt.NDArray[np.uint32] = field(init=False)
    """The answers' AS numbers, and a trailing 0 for index -1."""

    def __post_init__(self) -> None:
        self.countries = NameCodes.of([a.country for a in self.answers])
        self.as_names = NameCodes.of([a.as_name for a in self.answers])
        self.as_numbers = np.array([a.asn for a in self.answers] + [0], dtype=np.uint32)


def load_database(path: Path, max_bytes: int) -> Loaded:
    """Read a MaxMind DB file into ranges. Raises GeoDatabaseError (or OSError)."""
    from maxminddb.const import MODE_MMAP
    from maxminddb.decoder import Decoder
    from maxminddb.errors import InvalidDatabaseError
    from maxminddb.reader import Reader

    try:
        # The reference reader validates the file and its metadata (the format's own rules).
        with Reader(str(path), mode=MODE_MMAP) as reader:
            meta = reader.metadata()
    except (InvalidDatabaseError, ValueError, TypeError) as exc:
        raise GeoDatabaseError(f"not a MaxMind database: {exc}") from None
    if path.stat().st_size > max_bytes:
        raise GeoDatabaseError(f"larger than flows.enrich.database_memory ({max_bytes} bytes)")
    buffer = path.read_bytes()
    node_count, record_size = int(meta.node_count), int(meta.record_size)
    tree_size = int(meta.search_tree_size)
    if tree_size + 16 > len(buffer):
        raise GeoDatabaseError("the search tree extends past the end of the file")
    tree = _Tree(np.frombuffer(buffer, dtype=np.uint8, count=tree_size), record_size, node_count)
    budget = 4 * node_count + 1024
    v4_start = 0
    if int(meta.ip_version) == 6:
        for _ in range(96):
            if v4_start >= node_count:
                break
            left, _right = _children(tree.data, record_size, np.array([v4_start], np.int64))
            v4_start = int(left[0])
        v4 = (
            _walk(tree, v4_start, 32, None, budget)
            if v4_start != node_count
            else _walk(tree, node_count, 0, None, 0)
        )
        v6 = _walk(tree, 0, 128, v4_start, budget)
    else:
        v4 = _walk(tree, 0, 32, None, budget)
        v6 = _walk(tree, node_count, 0, None, 0)
    if (len(v4.hi) + len(v6.hi)) * RANGE_BYTES > max_bytes:
        raise GeoDatabaseError(
            f"its ranges take over flows.enrich.database_memory ({max_bytes} bytes)"
        )
    pointers = np.concatenate((v4.pointer, v6.pointer))
    distinct, value_index = np.unique(pointers, return_inverse=True)
    decoder = Decoder(buffer, tree_size + 16)
    answers = []
    for pointer in distinct.tolist():
        offset = pointer - node_count + tree_size
        if not tree_size + 16 <= offset < len(buffer):
            raise GeoDatabaseError("a data pointer points outside the data section")
        try:
            record, _ = decoder.decode(offset)
        except (InvalidDatabaseError, ValueError, IndexError, TypeError) as exc:
            raise GeoDatabaseError(f"a data record cannot be decoded: {exc}") from None
        answers.append(answer(record))
    return Loaded(_ranges(v4, v6, value_index.astype(np.int32).reshape(-1)), answers)


# -- files, reloads ---------------------------------------------------------------------------


class MmdbFile:
    """One database file: read when first needed, read again when its modification time
    changes; unusable files are warned about once and answer nothing."""

    def __init__(self, path: Path, what: str, max_bytes: int) -> None:
        self.path = path
        self.what = what
        self.max_bytes = max_bytes
        self.loaded: Loaded | None = None
        self._stamp: tuple[int, int] | None = None
        self._warned = False
        self.reloads = 0
        self.failures = 0

    def refresh(self) -> bool:
        """Read the file again when it changed; True when the answers may have changed."""
        try:
            stat = os.stat(self.path)
        except OSError as exc:
            return self._fail(f"cannot read the file: {exc.strerror}")
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        started = time.monotonic()
        try:
            loaded = load_database(self.path, self.max_bytes)
        except (OSError, GeoDatabaseError) as exc:
            return self._fail(str(exc))
        if self.loaded is not None:
            self.reloads += 1
        self.loaded = loaded
        self._warned = False
        log.info(
            "flows.enrich.database_loaded",
            extra={
                "file": str(self.path),
                "what": self.what,
                "ranges": len(loaded.index),
                "bytes": loaded.index.nbytes,
                "seconds": round(time.monotonic() - started, 3),
            },
        )
        return True

    def _fail(self, reason: str) -> bool:
        changed = self.loaded is not None
        self.loaded = None
        self.failures += 1
        if not self._warned:
            self._warned = True
            log.warning(
                "flows.enrich.database_unusable",
                extra={"file": str(self.path), "what": self.what, "reason": reason},
            )
        return changed


@dataclass
class GeoCounters:
    lookups: int = 0
    """Addresses looked up in the databases' ranges."""
    reloads: int = 0
    failures: int = 0


@dataclass
class GeoResult:
    """Per address: the country code (index into ``countries``) and the AS database's answer."""

    country: npt.NDArray[np.int32]
    countries: NameCodes
    asn: npt.NDArray[np.uint32]
    as_name: npt.NDArray[np.int32]
    as_names: NameCodes


class GeoIP:
    """Country and AS per address from up to two databases."""

    def __init__(
        self,
        country: Path | None,
        asn: Path | None,
        reload_interval: float = 60.0,
        max_bytes: int = 512 * 2**20,
    ) -> None:
        self.country = MmdbFile(country, "country", max_bytes) if country is not None else None
        self.asn = MmdbFile(asn, "asn", max_bytes) if asn is not None else None
        self.reload_interval = reload_interval
        self._next_check = 0.0
        self.counters = GeoCounters()

    @property
    def enabled(self) -> bool:
        return self.country is not None or self.asn is not None

    def refresh(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if now < self._next_check:
            return
        self._next_check = now + self.reload_interval
        for database in (self.country, self.asn):
            if database is not None:
                database.refresh()
        self.counters.reloads = sum(d.reloads for d in (self.country, self.asn) if d)
        self.counters.failures = sum(d.failures for d in (self.country, self.asn) if d)

    def lookup(self, keys: AddressKeys) -> GeoResult:
        """Country and AS of each address; the caller calls :meth:`refresh` first."""
        self.counters.lookups += keys.count
        none = np.full(keys.count, -1, dtype=np.int32)
        no_names = NO_NAMES
        country, countries = none, no_names
        loaded = self.country.loaded if self.country is not None else None
        if loaded is not None:
            country, countries = loaded.index.lookup(keys), loaded.countries
        asn = np.zeros(keys.count, dtype=np.uint32)
        as_name, as_names = none, no_names
        loaded = self.asn.loaded if self.asn is not None else None
        if loaded is not None:
            as_name, as_names = loaded.index.lookup(keys), loaded.as_names
            asn = loaded.as_numbers[as_name]  # -1: the trailing 0
        return GeoResult(country, countries, asn, as_name, as_names)
