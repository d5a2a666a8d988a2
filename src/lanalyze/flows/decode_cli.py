"""``lanalyze flows decode FILE.pcap ...``: the decoded flows of captures, as NDJSON or a table.

The files are read in the order given through one :class:`FlowDecoder`, so templates captured
in one file decode the data of the next. NDJSON records use the catalogue's column names;
addresses are text (IPv4-mapped addresses as dotted quads; ``::`` means absent), MAC addresses
``aa:bb:cc:dd:ee:ff``, times ISO 8601 UTC with milliseconds (``2023-02-28T09:46:39.123Z``),
``extra`` an object. The receive time of a flow is its capture time.

Exit status: 0 when every file was read (the peers' bad datagrams are reported on stderr with
the file name and counted in the summary, they are not an error of the command); 1 when a file
could not be read (missing, not a capture, truncated).
"""

from __future__ import annotations

import ipaddress
import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import click

# The decoder, numpy and the catalogue are imported when the command runs: every other
# `lanalyze` command builds this one's definition and should not pay for them.
if TYPE_CHECKING:
    from lanalyze.flows.decode import DecodedBatch, Packet
    from lanalyze.flows.pcap import PcapReader

BATCH = 1000
TABLE_COLUMNS = (
    ("time_start", 24),
    ("exporter", 16),
    ("src_addr", 26),
    ("src_port", 6),
    ("dst_addr", 26),
    ("dst_port", 6),
    ("protocol", 5),
    ("packets", 10),
    ("bytes", 12),
    ("sampling_rate", 6),
)


def _address(raw: bytes) -> str:
    address = ipaddress.IPv6Address(raw)
    mapped = address.ipv4_mapped
    return str(mapped) if mapped is not None else str(address)


def _time(ms: int) -> str:
    stamp = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def _mac(value: int) -> str:
    return ":".join(f"{b:02x}" for b in value.to_bytes(6, "big"))


def records(batch: DecodedBatch) -> Iterator[dict[str, Any]]:
    """The rows of a batch as JSON-ready dicts (per-record Python: for the CLI only)."""
    import numpy as np

    from lanalyze.flows import catalogue

    columns: dict[str, list[Any]] = {}
    for column in catalogue.COLUMNS:
        if column.kind == "str":
            continue
        values = batch.columns[column.name]
        if column.kind == "ip":
            raw = np.ascontiguousarray(values).view(np.uint8).reshape(-1, 16)
            columns[column.name] = [_address(row.tobytes()) for row in raw]
        elif column.kind == "time_ms":
            columns[column.name] = [_time(v) for v in values.tolist()]
        elif column.kind == "mac":
            columns[column.name] = [_mac(v) for v in values.tolist()]
        else:
            columns[column.name] = values.tolist()
    extra = batch.extra
    for index in range(batch.rows):
        row = {name: values[index] for name, values in columns.items()}
        text = extra[index] if extra is not None else None
        row["extra"] = json.loads(text) if text else {}
        yield row


def _packets(reader: PcapReader) -> Iterator[list[Packet]]:
    from lanalyze.flows.decode import Packet

    batch: list[Packet] = []
    for datagram in reader:
        batch.append(Packet(datagram.payload, datagram.source, datagram.time_ms))
        if len(batch) >= BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _write_table_header(out: TextIO) -> None:
    out.write(" ".join(name[:width].ljust(width) for name, width in TABLE_COLUMNS).rstrip() + "\n")


def _write(out: TextIO, batch: DecodedBatch, output_format: str) -> None:
    for row in records(batch):
        if output_format == "json":
            out.write(json.dumps(row, separators=(",", ":")) + "\n")
        else:
            cells = [str(row[name]).ljust(width) for name, width in TABLE_COLUMNS]
            out.write(" ".join(cells).rstrip() + "\n")


@click.command("decode")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["json", "table"]),
    default="json",
    show_default=True,
    help="NDJSON (one flow a line) or a fixed-width table.",
)
def decode(files: tuple[Path, ...], output_format: str) -> None:
    """Print the NetFlow v5/v9/IPFIX flows found in pcap/pcapng FILES (read in order)."""
    from lanalyze.flows.decode import FlowDecoder
    from lanalyze.flows.errors import PcapError
    from lanalyze.flows.pcap import PcapReader

    decoder = FlowDecoder()
    out = sys.stdout
    flows = datagrams = problems = unknown = 0
    unreadable = 0
    if output_format == "table":
        _write_table_header(out)
    for path in files:
        reader = PcapReader(path)
        try:
            for packets in _packets(reader):
                datagrams += len(packets)
                batch = decoder.decode(packets)
                flows += batch.rows
                for item in batch.stats:
                    problems += item.decode_errors
                    unknown += item.unknown_template_records
                for problem in batch.problems:
                    click.echo(f"{path}: exporter {problem.exporter}: {problem.reason}", err=True)
                _write(out, batch, output_format)
        except PcapError as exc:
            unreadable += 1
            click.echo(f"error: {exc}", err=True)
    click.echo(
        f"{flows} flows from {datagrams} datagrams in {len(files)} files; "
        f"{problems} decode errors, {unknown} data sets before their template, "
        f"{unreadable} unreadable files",
        err=True,
    )
    if unreadable:
        sys.exit(1)
