"""A worker's local spool: batches waiting for ClickHouse, on disk, bounded in bytes.

One directory per worker (:func:`lanalyze.flows.store.paths.spool_dir`), one file per batch::

    spool/worker-<n>/<seq>-<batch id>.arrow      Arrow IPC file (LZ4), catalogue schema

``seq`` orders the batches (oldest first, replayed first); the batch id is the id the batch
was, or will be, inserted under (:mod:`.writer`), so a replay after a crash or a timed-out
insert asks ClickHouse the same question. A file is written under ``.<name>.tmp``, fsynced and
renamed, so a file with its final name is complete; temporaries left by a crash are removed at
start. Files are 0600 in 0700 directories (:mod:`lanalyze.datadir`): flows say who talks to
whom.

Bound: ``max_bytes`` of files in total. A batch that does not fit is dropped and counted
(``dropped_rows``, ``dropped_batches``): the oldest are kept, because they are the ones a
replay inserts first and the gap they would leave is older. Nothing here parses peer bytes;
the files are our own (a file that cannot be read is counted, logged and set aside as
``.bad``, never a crash).

A worker's spool is its own; when ``flows.workers`` is lowered, the collector moves the
batches of the workers gone to a running one's spool before the workers start
(:func:`adopt_orphans`), so nothing spooled is left behind.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from pyarrow import ipc

from lanalyze.datadir import fsync_dir, make_private_dirs, open_private
from lanalyze.flows.catalogue import arrow_schema, as_stored
from lanalyze.log import get_logger

log = get_logger(__name__)

_NAME = re.compile(r"(\d{12})-([0-9a-f]{16})\.arrow")
_OPTIONS = ipc.IpcWriteOptions(compression="lz4")


@dataclass(frozen=True)
class Entry:
    path: Path
    seq: int
    batch_id: int
    size: int


class Spool:
    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._entries: deque[Entry] = deque()
        self.bytes = 0
        self.dropped_rows = 0
        self.dropped_batches = 0
        self.unreadable = 0
        self._seq = 0

    def load(self) -> None:
        """Take up the batches a previous run left (oldest first); drop crash temporaries."""
        if not self.directory.is_dir():
            return
        found = []
        for path in self.directory.iterdir():
            match = _NAME.fullmatch(path.name)
            if match is None:
                if path.name.startswith(".") and path.name.endswith(".tmp"):
                    path.unlink(missing_ok=True)
                continue
            found.append(Entry(path, int(match[1]), int(match[2], 16), path.stat().st_size))
        found.sort(key=lambda entry: entry.seq)
        self._entries = deque(found)
        self.bytes = sum(entry.size for entry in found)
        self._seq = found[-1].seq + 1 if found else 0

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, table: pa.Table, batch_id: int) -> bool:
        """Keep ``table`` for a later insert under ``batch_id``; False when it was dropped."""
        sink = pa.BufferOutputStream()
        with ipc.new_file(sink, arrow_schema(), options=_OPTIONS) as out:
            # The stored types: a batch of the ingest path carries its names as dictionaries.
            out.write_table(as_stored(table))
        data = sink.getvalue()
        if self.bytes + data.size > self.max_bytes:
            self.dropped_rows += table.num_rows
            self.dropped_batches += 1
            return False
        make_private_dirs(self.directory)
        name = f"{self._seq:012d}-{batch_id:016x}.arrow"
        final = self.directory / name
        tmp = self.directory / f".{name}.tmp"
        fd = open_private(tmp)
        try:
            with open(fd, "wb", closefd=False) as handle:
                handle.write(memoryview(data))
                handle.flush()
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, final)
        fsync_dir(self.directory)
        self._entries.append(Entry(final, self._seq, batch_id, data.size))
        self._seq += 1
        self.bytes += data.size
        return True

    def oldest(self) -> Entry | None:
        return self._entries[0] if self._entries else None

    def read(self, entry: Entry) -> pa.Table | None:
        """The batch of ``entry``; None (and the file set aside) when it cannot be read."""
        try:
            with pa.memory_map(str(entry.path)) as source:
                return ipc.open_file(source).read_all()
        except (OSError, pa.ArrowException) as exc:
            self.unreadable += 1
            log.error("flows.spool_unreadable", extra={"file": str(entry.path), "error": str(exc)})
            with contextlib.suppress(OSError):
                os.rename(entry.path, entry.path.with_name(f".{entry.path.name}.bad"))
            self._forget(entry)
            return None

    def remove(self, entry: Entry) -> None:
        entry.path.unlink(missing_ok=True)
        self._forget(entry)

    def _forget(self, entry: Entry) -> None:
        if self._entries and self._entries[0] == entry:
            self._entries.popleft()
        else:
            self._entries.remove(entry)
        self.bytes -= entry.size


def adopt_orphans(spool_root: Path, workers: int) -> int:
    """Move the batches of workers that no longer exist (``flows.workers`` lowered since
    they were spooled) to a running worker's spool, after its own; returns how many.

    Called by the collector before it starts the workers, so no spool is being written."""
    if not spool_root.is_dir():
        return 0
    moved = 0
    for directory in sorted(spool_root.iterdir()):
        match = re.fullmatch(r"worker-(\d+)", directory.name)
        if match is None or int(match[1]) < workers or not directory.is_dir():
            continue
        target = Spool(spool_root / f"worker-{int(match[1]) % workers}", 0)
        target.load()
        orphan = Spool(directory, 0)
        orphan.load()
        make_private_dirs(target.directory)
        while (entry := orphan.oldest()) is not None:
            name = f"{target._seq:012d}-{entry.batch_id:016x}.arrow"
            os.rename(entry.path, target.directory / name)
            target._seq += 1
            orphan._forget(entry)
            moved += 1
        fsync_dir(target.directory)
        with contextlib.suppress(OSError):
            directory.rmdir()
    return moved
