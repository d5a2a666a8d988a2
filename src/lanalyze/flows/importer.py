"""``lanalyze flows import``: pcap files -> one decoder -> the same segment writer.

The capture's UDP payloads (found by :mod:`lanalyze.flows.pcap`) are decoded in file order
through one template cache, in batches, with the capture time as receive time, and stored
exactly as the collector stores them (a writer id of its own, so an import can run beside a
collector on the same data directory). Untrusted bytes go only to the decoder, which counts
and describes bad datagrams instead of raising.

Bad datagrams are summed by reason into :attr:`ImportResult.reasons` for the command's one
summary line; only the first few are logged (rate-limited over the whole import, naming the
exporter), since an ordinary packet capture (no NetFlow in it) makes every UDP datagram bad.
"""

from __future__ import annotations

import re
import secrets
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from lanalyze.flows import catalogue
from lanalyze.flows.config import FlowsConfig
from lanalyze.flows.decode import FlowDecoder, Packet
from lanalyze.flows.enrich import enrich_or_log, make_enricher
from lanalyze.flows.errors import PcapError, PcapImportError
from lanalyze.flows.store.paths import flow_dir
from lanalyze.flows.store.writer import BackgroundWriter, SegmentWriter
from lanalyze.log import RateLimiter, get_logger

log = get_logger(__name__)

BATCH_DATAGRAMS = 4096
SEGMENT_ROWS = 2_000_000
MAX_REASONS = 64
"""Distinct bad-datagram reasons summed (the rest go to "other"): bounded memory."""


@dataclass
class ImportResult:
    datagrams: int = 0
    flows: int = 0
    segments: int = 0
    problems: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    """Described bad datagrams by reason, numbers replaced by N ("unknown export version N (N
    bytes)"). The decoder describes at most 256 a batch; ``problems`` counts them all."""

    def summary(self) -> str:
        """The bad datagrams' reasons in one phrase, the most frequent first (at most 3)."""
        top = "; ".join(reason for reason, _ in self.reasons.most_common(3))
        more = len(self.reasons) - 3
        return top + (f"; {more} other reasons" if more > 0 else "")


def _batches(packets: Iterable[Packet], size: int) -> Iterator[list[Packet]]:
    batch: list[Packet] = []
    for packet in packets:
        batch.append(packet)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def capture_packets(files: list[Path]) -> Iterator[Packet]:
    """The UDP payloads of the captures, in order, as decoder packets."""
    from lanalyze.flows import pcap

    for path in files:
        try:
            for datagram in pcap.read_udp(path):
                yield Packet(datagram.payload, datagram.source, datagram.time_ms)
        except (OSError, PcapError) as exc:
            raise PcapImportError(f"{path}: {exc}") from None


def store_packets(packets: Iterable[Packet], data_dir: Path, config: FlowsConfig) -> ImportResult:
    """Decode and store; everything is written when this returns."""
    decoder = FlowDecoder(
        max_templates_per_exporter=config.max_templates_per_exporter,
        max_exporters=config.max_exporters,
        sampling_rates=config.sampling_rates,
    )
    writer = SegmentWriter(
        flow_dir(data_dir),
        f"imp{secrets.token_hex(3)}",
        compression=config.compression,
        compression_level=config.compression_level,
    )
    store = BackgroundWriter(writer)
    enricher = make_enricher(
        config.enrich, config.networks, flow_dir(data_dir), decoder.application_names
    )
    store.start()
    # One key for the whole import: a capture of ordinary traffic has thousands of "exporters".
    limiter = RateLimiter(interval=10.0, burst=5)
    result = ImportResult()
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    try:
        for batch_packets in _batches(packets, BATCH_DATAGRAMS):
            batch = decoder.decode(batch_packets)
            result.datagrams += len(batch_packets)
            result.problems += sum(s.decode_errors for s in batch.stats)
            for problem in batch.problems:
                reason = _reason_kind(problem.reason)
                if reason in result.reasons or len(result.reasons) < MAX_REASONS:
                    result.reasons[reason] += 1
                else:
                    result.reasons["other"] += 1
                suppressed = limiter.allow("import")
                if suppressed is not None:
                    log.warning(
                        "flows.bad_datagram",
                        extra={
                            "exporter": problem.exporter,
                            "reason": problem.reason,
                            "suppressed": suppressed,
                        },
                    )
            if batch.rows:
                labels = (
                    None if enricher is None else enrich_or_log(enricher, batch.columns, limiter)
                )
                pending.append(catalogue.to_record_batch(batch.columns, batch.extra, labels))
                pending_rows += batch.rows
                result.flows += batch.rows
            if pending_rows >= SEGMENT_ROWS:
                store.submit(pending)
                pending, pending_rows = [], 0
        store.submit(pending)
    finally:
        store.close()
        if enricher is not None:
            enricher.close()
    result.segments = store.stats.segments
    if store.stats.errors:
        raise PcapImportError(
            f"{store.stats.dropped_rows} flows could not be written (see the log)"
        )
    return result


def _reason_kind(reason: str) -> str:
    return re.sub(r"\d+", "N", reason)[:200]


def import_files(files: list[Path], data_dir: Path, config: FlowsConfig) -> ImportResult:
    return store_packets(capture_packets(files), data_dir, config)
