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
    BadNetworks,
    Batch,
    Detector,
    Partial,
    SketchDelta,
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
    report at each flush."""

    def __init__(self, config: AlarmsConfig, workers: int) -> None:
        self.config = config
        self.workers = max(1, workers)
        # The flood sketches of this worker's flows (the rest of it stays empty).
        self.local = Detector(config)
        self._sketches = (self.local.flood, self.local.syn, self.local.reflection)
        self._base: list[tuple[int, npt.NDArray[np.float64] | None]] = [
            (0, None) for _ in self._sketches
        ]
        self._touched = [False] * len(self._sketches)
        self._rows: list[pa.Table] = []
        self._candidates: list[pa.Table] = []
        self._flows = 0
        self._exporters: dict[str, None] = {}
        self._bad: BadNetworks | None = None
        self._bad_seen: object = None
        self.schema: pa.Schema | None = None
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
            candidate = np.zeros(b.size, np.bool_)
            inputs = self.local.flood_inputs(b)
            for i, (sketch, rows, buckets, values, limits) in enumerate(inputs):
                if buckets[0].size == 0:
                    sketch.add(now_ms, buckets, values, limits)  # the roll alone
                    continue
                self._touched[i] = True
                share = tuple(limit / self.workers for limit in limits)
                where, _ = sketch.add(now_ms, buckets, values, share)
                if where.size:
                    candidate[np.flatnonzero(rows)[where]] = True
            if candidate.any():
                self._candidates.append(table.take(np.flatnonzero(candidate)))

    def _delta(self, i: int) -> SketchDelta | None:
        """What sketch ``i`` gained since the last report."""
        sketch = self._sketches[i]
        base_started, base = self._base[i]
        if not self._touched[i] and sketch.started == base_started:
            return None
        self._touched[i] = False
        tail = None
        if sketch.started == base_started:
            gained = sketch.sums - base if base is not None else sketch.sums
        else:
            gained = sketch.sums
            if base_started == sketch.started - sketch.window_ms and sketch.closed is not None:
                tail = sketch.closed - base if base is not None else sketch.closed
        self._base[i] = (sketch.started, sketch.sums.copy())
        return SketchDelta(
            sketch.started,
            gained.astype(np.float32),
            tail.astype(np.float32) if tail is not None else None,
        )

    def take(self, now_ms: int) -> Partial | None:
        """The report of the flows added since the last one (None: none were)."""
        if self._flows == 0:
            return None
        floods = None
        if self.config.flood.enabled:
            floods = [self._delta(i) for i in range(len(self._sketches))]
        assert self.schema is not None
        empty = self.schema.empty_table()
        rows = pa.concat_tables(self._rows) if self._rows else empty
        candidates = pa.concat_tables(self._candidates) if self._candidates else empty
        partial = Partial(now_ms, rows, self._flows, list(self._exporters), floods, candidates)
        self._rows = []
        self._candidates = []
        self._flows = 0
        self._exporters = {}
        return partial
