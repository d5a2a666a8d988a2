"""Detection's share of the flow workers: each decoded batch reduced to what the detector in
the parent needs (:class:`~lanalyze.alarms.detect.Partial`), sent every flush.

Why here: the parent's detector used to read every stored segment back (Parquet decode and
Arrow-to-numpy conversions, a quarter of ingest's CPU) and look at every flow. The workers
already hold each batch's columns in memory; they keep only what an algorithm can count or
describe, so the parent looks at a small fraction of the flows:

- **scans** (probe-shaped flows: TCP without ACK, other protocols of at most two packets to a
  port not above the source port), **mass mailer** (TCP to port 25) and **bad networks**
  (either address in ``alarms.bad_networks.file``, read here too and reloaded when it
  changes) need their flows' addresses: those flows are kept whole (the detector's
  :data:`~lanalyze.alarms.detect.COLUMNS`), and the parent counts distinct targets over all
  workers exactly as before;
- **floods** need every flow's packets and flows per destination: the worker adds them to
  its own copy of the flood sketches (the parent's shape and hash) and sends what it added
  since its last report (:class:`~lanalyze.alarms.detect.SketchDelta`), which the parent adds
  to its sketches. Only the flows whose destination's counters in this worker's sketches
  reach 1/``workers`` of a limit are kept for their evidence: the kernel spreads exporters
  over the workers, but a destination over a limit in the sum of the workers' counts is at
  1/``workers`` of it in at least one worker, which then sends its flows;
- **baseline deviation** (off by default) sends every flow: its sketch is per host hour and
  the evidence is any host's.

Bounded: a report holds one flush's flows at most (``flows.segment_max_rows``) and three
sketches' counters; the parent bounds its queue of reports in bytes.

Trust: the flows are the exporters' (see detect.py); the bad-networks file is the operator's.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from lanalyze.alarms.config import AlarmsConfig, BadNetworksConfig
from lanalyze.alarms.detect import (
    COLUMNS,
    SKETCH_ROWS,
    BadNetworks,
    Batch,
    Detector,
    FloodInput,
    Partial,
    SketchDelta,
    WindowSums,
    heard_exporters,
)
from lanalyze.datadir import file_signature
from lanalyze.log import get_logger

log = get_logger(__name__)


def read_bad_networks(path: Path, limit: int) -> tuple[BadNetworks | None, int]:
    """``alarms.bad_networks.file`` as networks (None: unreadable) and its bad lines."""
    cidrs: list[str] = []
    bad_lines = 0
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        log.warning("alarms.bad_networks_unreadable", extra={"path": str(path), "error": exc})
        return None, 0
    for line in text.splitlines():
        # Spamhaus DROP style: "1.2.3.0/24 ; SBL123"; plain lists; "#" comments.
        word = line.split(";", 1)[0].split("#", 1)[0].strip()
        if not word:
            continue
        try:
            ipaddress.ip_network(word, strict=False)
        except ValueError:
            bad_lines += 1
            continue
        if len(cidrs) < limit:
            cidrs.append(word)
    return BadNetworks(cidrs), bad_lines


class BadNetworksFile:
    """``alarms.bad_networks.file`` re-read when its signature (size, mtime, inode) changes:
    one owner for the engine and the flow workers, which both keep a table of it."""

    def __init__(self, config: BadNetworksConfig) -> None:
        self.config = config
        self._seen: object = None

    def poll(self) -> tuple[bool, BadNetworks | None, int]:
        """(changed, table, bad lines): changed with None is a file gone; an unreadable
        file is no change (the table in use stays)."""
        path = self.config.file
        if path is None:
            return False, None, 0
        path = path.expanduser()
        signature = file_signature(path)
        if signature == self._seen:
            return False, None, 0
        self._seen = signature
        if signature is None:
            return True, None, 0
        bad, bad_lines = read_bad_networks(path, self.config.max_networks)
        return bad is not None, bad, bad_lines


class Reducer:
    """One worker's reduction (see module): :meth:`add` each decoded batch, :meth:`take` a
    report at each flush.

    The flood sketches are filled once a report, not once a batch: each batch leaves its
    flows' counter indices (both sketch rows as one flat index) and values, and
    :meth:`take` sums them with one ``bincount`` per column into the report's counts, which
    are added to this worker's sketches, and only then looks for candidates (``np.add.at``
    a batch cost ~10 times as much per flow here)."""

    def __init__(self, config: AlarmsConfig, workers: int) -> None:
        self.config = config
        self.workers = max(1, workers)
        # The flood sketches of this worker's flows (the rest of it stays empty).
        self.local = Detector(config)
        self._sketches = (self.local.flood, self.local.syn, self.local.reflection)
        self._rows: list[pa.Table] = []
        self._keep: list[npt.NDArray[np.intp]] = []
        self._kept_offset = 0
        self._flows = 0
        self._exporters: dict[str, None] = {}
        self._bad: BadNetworks | None = None
        self._bad_file = BadNetworksFile(config.bad_networks)
        self.schema: pa.Schema | None = None
        # Per flood window start: the batches' tables and, per sketch, their flows' rows
        # (positions in the window's tables together), flat indices and values.
        self._gathered: dict[int, _Gathered] = {}
        self._pool: list[_Gathered] = []
        self.reload_bad_networks()

    def reload_bad_networks(self) -> None:
        changed, bad, _ = self._bad_file.poll()
        if changed:
            self._bad = bad

    def add(self, now_ms: int, batch: pa.RecordBatch) -> None:
        """Look at one decoded batch (the worker's Arrow batch, its columns shared)."""
        if batch.num_rows == 0:
            return
        self.reload_bad_networks()  # a stat a batch (batches are >= 50 ms apart)
        table = pa.Table.from_batches([batch]).select(list(COLUMNS))
        self.schema = table.schema
        b = Batch(table)
        cfg = self.config
        self._flows += b.size
        for name in heard_exporters(b):
            self._exporters[name] = None
        if cfg.deviation.enabled:
            keep = np.ones(b.size, np.bool_)
        else:
            keep = np.zeros(b.size, np.bool_)
            if cfg.scan.enabled:
                keep |= b.syn_only
                other = ~b.tcp
                if other.any():
                    ports = b.native("dst_port") <= b.native("src_port")
                    keep |= other & (b.native("packets") <= 2) & ports
            if cfg.mass_mailer.enabled:
                keep |= b.tcp & (b.native("dst_port") == 25)
            if self._bad is not None and self._bad.size:
                keep |= self._bad.match(b.src_hi, b.src_lo) >= 0
                keep |= self._bad.match(b.dst_hi, b.dst_lo) >= 0
        if keep.any():
            # Taken once a report from all its batches (a take has a fixed cost per column).
            self._rows.append(table)
            self._keep.append(np.flatnonzero(keep) + self._kept_offset)
        self._kept_offset += b.size if keep.any() else 0
        if cfg.flood.enabled:
            start = now_ms - now_ms % self.local.flood.window_ms
            gathered = self._gathered.get(start)
            if gathered is None:
                gathered = self._pool.pop() if self._pool else _Gathered(len(self._sketches))
                self._gathered[start] = gathered
            gathered.add(table, self.local.flood_inputs(b))

    def take(self, now_ms: int) -> Partial | None:
        """The report of the flows added since the last one (None: none were)."""
        if self._flows == 0:
            return None
        assert self.schema is not None
        empty = self.schema.empty_table()
        floods = None
        candidates = empty
        if self.config.flood.enabled:
            floods, candidates = self._floods(now_ms, empty)
        rows = empty
        if self._rows:
            keep = np.concatenate(self._keep)
            rows = pa.concat_tables(self._rows)
            if keep.size < rows.num_rows:
                rows = rows.take(keep)
        partial = Partial(now_ms, rows, self._flows, list(self._exporters), floods, candidates)
        self._rows, self._keep, self._kept_offset = [], [], 0
        self._flows = 0
        self._exporters = {}
        return partial

    def _floods(self, now_ms: int, empty: pa.Table) -> tuple[list[SketchDelta | None], pa.Table]:
        """The report's sketch counts (the newest window's, and the one before's as its
        tail), added to this worker's sketches; the flows of destinations at 1/workers of
        a limit there."""
        current: list[npt.NDArray[np.float32] | None] = [None] * len(self._sketches)
        tail: list[npt.NDArray[np.float32] | None] = [None] * len(self._sketches)
        found: list[pa.Table] = []
        newest = max(self._gathered, default=0)
        for start in sorted(self._gathered):
            gathered = self._gathered[start]
            at = min(now_ms, start + self.local.flood.window_ms - 1)
            for i, sketch in enumerate(self._sketches):
                counts = gathered.counts(i, sketch)
                if counts is None:
                    continue
                sketch.merge(at, SketchDelta(start, counts))
                if start == newest:
                    current[i] = counts
                elif start == newest - sketch.window_ms:
                    tail[i] = counts
                rows, buckets, limits = gathered.inputs(i)
                share = tuple(limit / self.workers for limit in limits)
                where, _ = sketch.hot(at, buckets, share)
                if where.size:
                    found.append(gathered.table().take(rows[where]))
        deltas: list[SketchDelta | None] = [
            SketchDelta(newest, c, t) if c is not None or t is not None else None
            for c, t in zip(current, tail, strict=True)
        ]
        for gathered in self._gathered.values():
            gathered.reset()
        self._pool = list(self._gathered.values())[:1]  # one set of buffers is kept
        self._gathered = {}
        candidates = pa.concat_tables(found) if found else empty
        return deltas, candidates


def _room(buffer: npt.NDArray[Any], used: int, need: int) -> npt.NDArray[Any]:
    """``buffer`` with room for ``need`` values (its first ``used`` kept), doubled as needed."""
    if need <= buffer.size:
        return buffer
    bigger = np.empty(max(need, 2 * buffer.size), buffer.dtype)
    bigger[:used] = buffer[:used]
    return bigger


class _Gathered:
    """One flood window's flows of a report, per sketch (see :class:`Reducer`): their rows,
    counter indices and values copied into buffers kept from report to report (fresh
    arrays of a report's size cost their page faults again each time: concatenating
    a report's batches cost more than counting them)."""

    def __init__(self, sketches: int) -> None:
        self.tables: list[pa.Table] = []
        self.size = 0
        self.used = [0] * sketches
        self.rows: list[npt.NDArray[np.intp]] = [np.empty(0, np.intp) for _ in range(sketches)]
        self.buckets: list[list[npt.NDArray[np.int64]]] = [
            [np.empty(0, np.int64) for _ in range(SKETCH_ROWS)] for _ in range(sketches)
        ]
        self.values: list[list[npt.NDArray[np.float64]]] = [[] for _ in range(sketches)]
        self.limits: list[tuple[float, ...]] = [() for _ in range(sketches)]

    def reset(self) -> None:
        self.tables = []
        self.size = 0
        self.used = [0] * len(self.used)

    def add(self, table: pa.Table, inputs: list[FloodInput]) -> None:
        for i, (_, rows, buckets, values, limits) in enumerate(inputs):
            self.limits[i] = limits
            n = buckets[0].size
            if n == 0:
                continue
            used, need = self.used[i], self.used[i] + n
            self.rows[i] = _room(self.rows[i], used, need)
            if n == rows.size:  # every flow (floods without an allow list): no mask pass
                self.rows[i][used:need] = np.arange(self.size, self.size + n)
            else:
                self.rows[i][used:need] = np.flatnonzero(rows)
                self.rows[i][used:need] += self.size
            for r in range(SKETCH_ROWS):
                self.buckets[i][r] = _room(self.buckets[i][r], used, need)
                self.buckets[i][r][used:need] = buckets[r]
            while len(self.values[i]) < len(values):
                self.values[i].append(np.empty(0, np.float64))
            for c, column in enumerate(values):
                self.values[i][c] = _room(self.values[i][c], used, need)
                self.values[i][c][used:need] = column
            self.used[i] = need
        self.tables.append(table)
        self.size += table.num_rows

    def table(self) -> pa.Table:
        return pa.concat_tables(self.tables)

    def inputs(
        self, i: int
    ) -> tuple[npt.NDArray[np.intp], list[npt.NDArray[np.int64]], tuple[float, ...]]:
        n = self.used[i]
        return self.rows[i][:n], [b[:n] for b in self.buckets[i]], self.limits[i]

    def counts(self, i: int, sketch: WindowSums) -> npt.NDArray[np.float32] | None:
        """Sketch ``i``'s counts of these flows, (columns, rows, width); None: no flows."""
        n = self.used[i]
        if n == 0:
            return None
        width = sketch.width
        out = np.empty((sketch.columns, SKETCH_ROWS, width), np.float32)
        for c in range(sketch.columns):
            for r in range(SKETCH_ROWS):
                out[c, r] = np.bincount(self.buckets[i][r][:n], self.values[i][c][:n], width)
        return out
