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

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from lanalyze.alarms.config import AlarmsConfig
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
        self._flows = 0
        self._exporters: dict[str, None] = {}
        self._bad: BadNetworks | None = None
        self._bad_seen: object = None
        self.schema: pa.Schema | None = None
        # Per flood window start: the batches' tables and, per sketch, their flows' rows
        # (positions in the window's tables together), flat indices and values.
        self._gathered: dict[int, _Gathered] = {}
        self.reload_bad_networks()

    def reload_bad_networks(self) -> None:
        path = self.config.bad_networks.file
        if path is None:
            return
        path = path.expanduser()
        signature = file_signature(path)
        if signature == self._bad_seen:
            return
        self._bad_seen = signature
        if signature is None:
            self._bad = None
            return
        bad, _ = read_bad_networks(path, self.config.bad_networks.max_networks)
        if bad is not None:
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
        if keep.all():
            self._rows.append(table)
        elif keep.any():
            self._rows.append(table.take(np.flatnonzero(keep)))
        if cfg.flood.enabled:
            start = now_ms - now_ms % self.local.flood.window_ms
            gathered = self._gathered.get(start)
            if gathered is None:
                gathered = self._gathered[start] = _Gathered(len(self._sketches))
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
        rows = pa.concat_tables(self._rows) if self._rows else empty
        partial = Partial(now_ms, rows, self._flows, list(self._exporters), floods, candidates)
        self._rows = []
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
        self._gathered = {}
        candidates = pa.concat_tables(found) if found else empty
        return deltas, candidates


class _Gathered:
    """One flood window's flows of a report, per sketch (see :class:`Reducer`)."""

    def __init__(self, sketches: int) -> None:
        self.tables: list[pa.Table] = []
        self.size = 0
        self.rows: list[list[npt.NDArray[np.intp]]] = [[] for _ in range(sketches)]
        self.buckets: list[list[list[npt.NDArray[np.int64]]]] = [[] for _ in range(sketches)]
        self.values: list[list[list[npt.NDArray[np.float64]]]] = [[] for _ in range(sketches)]
        self.limits: list[tuple[float, ...]] = [() for _ in range(sketches)]

    def add(self, table: pa.Table, inputs: list[FloodInput]) -> None:
        for i, (_, rows, buckets, values, limits) in enumerate(inputs):
            self.limits[i] = limits
            if buckets[0].size == 0:
                continue
            self.rows[i].append(np.flatnonzero(rows) + self.size)
            self.buckets[i].append(buckets)
            self.values[i].append(values)
        self.tables.append(table)
        self.size += table.num_rows

    def table(self) -> pa.Table:
        return pa.concat_tables(self.tables)

    def inputs(
        self, i: int
    ) -> tuple[npt.NDArray[np.intp], list[npt.NDArray[np.int64]], tuple[float, ...]]:
        rows = np.concatenate(self.rows[i])
        buckets = [np.concatenate([b[r] for b in self.buckets[i]]) for r in range(SKETCH_ROWS)]
        return rows, buckets, self.limits[i]

    def counts(self, i: int, sketch: WindowSums) -> npt.NDArray[np.float32] | None:
        """Sketch ``i``'s counts of these flows, (columns, rows, width); None: no flows."""
        if not self.buckets[i]:
            return None
        width = sketch.width
        flat = np.concatenate(
            [
                np.concatenate([b[r] + r * width for r in range(SKETCH_ROWS)])
                for b in self.buckets[i]
            ]
        )
        out = np.empty((sketch.columns, SKETCH_ROWS, width), np.float32)
        for c in range(sketch.columns):
            weights = np.concatenate([np.concatenate([v[c]] * SKETCH_ROWS) for v in self.values[i]])
            out[c] = np.bincount(flat, weights, SKETCH_ROWS * width).reshape(SKETCH_ROWS, width)
        return out
