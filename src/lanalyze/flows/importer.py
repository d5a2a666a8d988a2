"""``lanalyze flows import``: pcap files -> one decoder -> the same segment writer.

The capture's UDP payloads (found by :mod:`lanalyze.flows.pcap`) are decoded in file order
through one template cache, in batches, with the capture time as receive time, and stored
exactly as the collector stores them (a writer id of its own, so an import can run beside a
collector on the same data directory). Untrusted bytes go only to the decoder, which counts
and describes bad datagrams instead of raising.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from lanalyze.flows.config import FlowsConfig
from lanalyze.flows.decode import FlowDecoder, Packet
from lanalyze.flows.errors import PcapError, PcapImportError
from lanalyze.flows.store.paths import flow_dir
from lanalyze.flows.store.writer import BackgroundWriter, SegmentWriter
from lanalyze.log import RateLimiter, get_logger

log = get_logger(__name__)

BATCH_DATAGRAMS = 4096
SEGMENT_ROWS = 2_000_000


@dataclass
class ImportResult:
    datagrams: int = 0
    flows: int = 0
    segments: int = 0
    problems: int = 0


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
    store.start()
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
                suppressed = limiter.allow(problem.exporter)
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
                pending.append(batch.to_record_batch())
                pending_rows += batch.rows
                result.flows += batch.rows
            if pending_rows >= SEGMENT_ROWS:
                store.submit(pending)
                pending, pending_rows = [], 0
        store.submit(pending)
    finally:
        store.close()
    result.segments = store.stats.segments
    if store.stats.errors:
        raise PcapImportError(
            f"{store.stats.dropped_rows} flows could not be written (see the log)"
        )
    return result


def import_files(files: list[Path], data_dir: Path, config: FlowsConfig) -> ImportResult:
    return store_packets(capture_packets(files), data_dir, config)
