"""One server per data directory: an exclusive lock that names the process holding it.

Two collectors or two mail servers writing one data directory would interleave queue files,
template caches and counters in ways neither expects, and the operator would not know a stray
process exists. ``lanalyze serve`` and ``lanalyze flows collect`` take ``<data_dir>/lanalyze.lock``
with ``flock(2)`` for as long as they run; the kernel drops it when the process dies, even on
``kill -9``, so a stale file never blocks a restart. Readers (reports, the queue commands) take
no lock: the stores are built for concurrent readers.
"""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path

from lanalyze.errors import DataDirBusy

LOCK_NAME = "lanalyze.lock"


class DataDirLock:
    """Held from :meth:`acquire` until :meth:`release` or the process ends."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirBusy(
                f"data directory {self.path.parent} is in use by another lanalyze process "
                f"({holder}); stop it first, or give this one another general.data_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: {' '.join(sys.argv)[:300]}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
