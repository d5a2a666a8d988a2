"""The queue file format and the data directory layout of the mail pipeline.

A queue file is the message exactly as received (CRLF line ends, dot-stuffing undone),
followed by a trailer: one JSON object (the envelope, the headers to prepend at delivery,
the authentication verdict, the delivery state) and the message length as 10 ASCII digits
and a newline. The message comes first so it can be spooled to disk as it arrives, before
the envelope is final; the length at the very end finds the trailer without parsing.

A file is written under ``queue/incoming/`` and renamed into ``queue/active/``; the moment of
acceptance is when its data and its name are both on stable storage (:class:`Syncer`). With
``fsync`` the data is flushed before the rename, so a file in ``active/`` is only ever
complete. With ``syncfs`` the whole batch is renamed first and one ``syncfs`` then flushes
data and names together (one journal commit per batch instead of two); a power cut inside
that window may leave an unacknowledged file in ``active/`` with missing data, which the
CRC-32 of the message in the trailer (``crc32``) and the footer reveal: it is moved to
``corrupt/``, never delivered. Files left in ``incoming/`` by a crash were never
acknowledged and are removed at start.

Queue files are recycled, not unlinked: a delivered file is renamed into ``queue/free/`` and
the next message's spool takes it over (:class:`Recycler`), overwriting it and truncating
what is left. On ext4 without a journal (this machine's disk) every file creation scans past
all inodes deleted in the last 30 seconds (``recently_deleted()`` in the kernel's inode
allocator), which at a thousand messages per second was a third of all the CPU the server
used; a rename costs none of that. A recycled file that a power cut left with its previous
contents is recognised by its trailer's queue ID, which is not its name (:func:`verify_message`).
Until the commit truncates it, a recycled file is longer than what has been written to it:
readers take exactly the message's recorded length (:func:`read_message`,
:meth:`~lanalyze.mail.cleanup.Spool.message`), never "the whole file".

Trust: queue files are written by us; a damaged one (disk error, an operator's edit) is
reported and moved to ``queue/corrupt/``, never delivered half. A queue id that comes from an
operator (CLI, console) is checked with :func:`valid_queue_id` before it is joined to a path.

Files hold senders, recipients and message text: directories are created 0700 and files 0600
whatever the umask (:mod:`lanalyze.datadir`, ``os.open(..., 0o600)``), and
:meth:`Layout.create` tightens what an older version left more open.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import fcntl
import json
import os
import random
import re
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lanalyze.datadir import DIR_MODE, FILE_MODE, fsync_dir, make_private_dirs, tighten
from lanalyze.mail.errors import CorruptQueueFile

FOOTER_LEN = 11  # b"%010d\n"
QUEUE_DIRS = ("incoming", "active", "deferred", "hold", "corrupt", "free")
# Queues a message can be found in (incoming/ is never acknowledged, free/ holds no message).
MESSAGE_QUEUES = ("active", "deferred", "hold", "corrupt")
_QUEUE_ID = re.compile(r"[A-Za-z0-9]{1,64}\Z")


def valid_queue_id(text: str) -> bool:
    """The one rule for a queue id given by an operator: 1-64 ASCII letters and digits (ours
    are hex digits and letters), so it can never name another directory (``..``, ``/``) or a
    spool's temporary (``.rw``). ``str.isalnum`` would also let Unicode letters through."""
    return _QUEUE_ID.match(text) is not None


@dataclass
class Envelope:
    queue_id: str
    mail_from: str
    recipients: list[str]  # as given in RCPT TO
    local: dict[str, list[str]]  # recipient -> mailboxes, not yet delivered
    relay: list[str]  # non-local recipients waiting for the outbound component
    received_at: float
    client_ip: str
    helo: str
    listener: str
    user: str | None = None
    tls: bool = False
    prepend: str = ""  # header lines (CRLF) added in front at delivery
    action: str = "accept"  # "accept" | "quarantine" (Junk folder)
    auth: dict[str, Any] | None = None
    header_from: str = ""
    subject: str = ""
    message_id: str = ""
    size: int = 0
    attempts: int = 0
    last_error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    crc32: int | None = None  # of the message bytes; None in files written before it existed
    # RFC 3461 (DSN) parameters the client gave; empty when it gave none (issue 13).
    ret: str | None = None  # "FULL" | "HDRS"
    envid: str | None = None  # ENVID, xtext-decoded
    dsn: dict[str, dict[str, Any]] = field(default_factory=dict)
    # ^ recipient -> {"notify": ["SUCCESS", "FAILURE", "DELAY"] or ["NEVER"], "orcpt": "rfc822;a@b"}
    # Per-recipient delivery state, rewritten durably as it changes (local and outbound):
    # recipient -> {"state": "pending" | "deferred" | "sent" | "delivered" | "bounced",
    #               "reply": last reply text, "status": "4.4.1"-style code,
    #               "attempts": int, "next_attempt": unix time, "host": "mx.example.net[ip]"}
    rcpt: dict[str, dict[str, Any]] = field(default_factory=dict)
    delay_warned: bool = False  # a delay DSN was sent for this message (once)

    def trailer(self) -> bytes:
        # vars(), not dataclasses.asdict(): no deep copy (this runs for every message).
        return json.dumps(vars(self), ensure_ascii=True, separators=(",", ":")).encode()


def footer(message_length: int, trailer: bytes) -> bytes:
    return trailer + b"%010d\n" % message_length


def read_envelope(path: Path) -> tuple[Envelope, int]:
    """The envelope and the message length of a queue file."""
    with path.open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size < FOOTER_LEN:
            raise CorruptQueueFile(f"{path}: too short")
        handle.seek(size - FOOTER_LEN)
        tail = handle.read(FOOTER_LEN)
        if not tail[:10].isdigit() or tail[10:] != b"\n":
            raise CorruptQueueFile(f"{path}: no footer")
        length = int(tail[:10])
        if length > size - FOOTER_LEN:
            raise CorruptQueueFile(f"{path}: bad length")
        handle.seek(length)
        raw = handle.read(size - FOOTER_LEN - length)
    try:
        data = json.loads(raw)
        return Envelope(**data), length
    except (ValueError, TypeError) as exc:
        raise CorruptQueueFile(f"{path}: bad trailer: {exc}") from None


def read_queue_file(path: str) -> tuple[Envelope, bytes]:
    """The envelope and the message of a queue file, in one read (the delivery path)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        chunks = []
        remaining = size
        while remaining > 0:
            chunk = os.read(fd, remaining)
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
    finally:
        os.close(fd)
    data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    if len(data) < FOOTER_LEN:
        raise CorruptQueueFile(f"{path}: too short")
    tail = data[-FOOTER_LEN:]
    if not tail[:10].isdigit() or tail[10:] != b"\n":
        raise CorruptQueueFile(f"{path}: no footer")
    length = int(tail[:10])
    if length > len(data) - FOOTER_LEN:
        raise CorruptQueueFile(f"{path}: bad length")
    try:
        envelope = Envelope(**json.loads(data[length:-FOOTER_LEN]))
    except (ValueError, TypeError) as exc:
        raise CorruptQueueFile(f"{path}: bad trailer: {exc}") from None
    # The recorded length, never the file's: see read_message.
    return envelope, data[:length]


def read_message(path: Path | str, length: int) -> bytes:
    """The first ``length`` bytes of a queue or spool file: the message's bytes.

    The one way to read a message from its file (the sender checks, signing, the console's
    raw view; delivery slices the same prefix out of its single read in
    :func:`read_queue_file`). Never more than ``length``: a recycled file holds the previous
    message's tail beyond it until the commit truncates it (:class:`Recycler`), and a
    committed file holds the trailer there.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        offset = 0
        while offset < length:
            chunk = os.pread(fd, length - offset, offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
    finally:
        os.close(fd)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def verify_message(path: Path | str, envelope: Envelope, message: bytes) -> None:
    """Raise :class:`CorruptQueueFile` unless ``message`` is what was acknowledged."""
    if envelope.queue_id != os.path.basename(path):
        # A recycled file whose new contents never reached the disk (see Recycler).
        raise CorruptQueueFile(f"{path}: trailer belongs to {envelope.queue_id}")
    if envelope.crc32 is not None and zlib.crc32(message) != envelope.crc32:
        raise CorruptQueueFile(f"{path}: message does not match its CRC-32")


_libc = ctypes.CDLL(None, use_errno=True)


def syncfs(path: Path) -> None:
    """Flush every dirty page and the journal of the filesystem holding ``path``."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), str(path))
    finally:
        os.close(fd)


class Syncer:
    """How a batch of new files becomes durable before it is renamed into place.

    ``fsync``: each file on its own (one journal commit each, ~3 ms here). ``syncfs``: one
    ``syncfs(2)`` for the whole batch (Linux >= 5.8 reports write-back errors from it), the
    group commit that reaches the throughput target; it also flushes other programs' dirty
    data on the same filesystem, so a data directory on a busy shared disk may prefer fsync.
    Either way the renamed names are then made durable by fsyncing their directories.
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def file(self, fd: int) -> None:
        if self.mode == "fsync":
            os.fsync(fd)

    @property
    def rename_first(self) -> bool:
        """True when one flush after the renames covers data and names (``syncfs``)."""
        return self.mode == "syncfs"

    def batch(self, anchor: Path) -> None:
        if self.mode == "syncfs":
            syncfs(anchor)


def rewrite(path: Path, target: Path, envelope: Envelope, length: int) -> None:
    """Durably replace a queue file's trailer (delivery progress, retry count), moving it."""
    tmp = path.parent.parent / "incoming" / (path.name + ".rw")
    # 0600 even over a temporary an older version or a crash left with a wider mode.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    os.fchmod(fd, FILE_MODE)
    with path.open("rb") as src, os.fdopen(fd, "wb") as dst:
        remaining = length
        while remaining:
            block = src.read(min(remaining, 1 << 20))
            if not block:
                raise CorruptQueueFile(f"{path}: truncated")
            dst.write(block)
            remaining -= len(block)
        dst.write(footer(length, envelope.trailer()))
        dst.flush()
        os.fsync(dst.fileno())
    os.rename(tmp, target)
    fsync_dir(target.parent)
    if path != target:
        path.unlink(missing_ok=True)
        fsync_dir(path.parent)


class Recycler:
    """Old queue files reused for new messages instead of creating and unlinking inodes.

    Delivery releases a finished file into ``queue/free/``; a spool opens
    its new file by renaming a free one to its name (several acceptor processes may race
    for the same file: the loser's rename fails and it takes the next) and the writer
    truncates it to what it wrote. With nothing free it creates a file as before. At most
    ``limit`` files of at most ``max_size`` bytes wait in ``free/`` (a few MiB in the
    common case, 128 MiB at worst); others are unlinked. Old contents stay there until
    reused: same owner and mode as the queue, which holds the same mail anyway.
    """

    STOCK = 256  # names taken from one listing of free/
    EMPTY_RETRY = 0.5  # seconds before listing an empty free/ again

    def __init__(self, layout: Layout, limit: int = 2000, max_size: int = 65536) -> None:
        self.free = str(layout.q("free"))
        self.limit = limit
        self.max_size = max_size
        self._stock: list[str] = []
        self._empty_until = 0.0
        self._released = 0
        self._free_count = -1  # unknown until listed

    def open(self, path: str) -> tuple[int, bool]:
        """A writable descriptor for a new queue file at ``path``, and whether it is a
        recycled file (then longer than what is written to it until truncated)."""
        while True:
            if not self._stock:
                if time.monotonic() < self._empty_until:
                    break
                try:
                    names = os.listdir(self.free)
                except FileNotFoundError:
                    names = []
                if not names:
                    self._empty_until = time.monotonic() + self.EMPTY_RETRY
                    break
                # Acceptor processes list the same directory: start at a random place so
                # they seldom race for the same names.
                start = random.randrange(len(names))
                self._stock = (names[start:] + names[:start])[: self.STOCK]
            try:
                name = self._stock.pop()
            except IndexError:  # another thread of this process took the last name
                continue
            try:
                os.rename(os.path.join(self.free, name), path)
            except FileNotFoundError:
                continue  # another process took it
            return os.open(path, os.O_WRONLY), True
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), False

    def release(self, path: str, size: int) -> None:
        """Dequeue a delivered file: keep it for reuse, or unlink it (large, or enough kept)."""
        if size > self.max_size:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return
        if self._free_count < 0 or self._released >= 1000:
            # Acceptors take files without telling us: count again now and then.
            try:
                self._free_count = len(os.listdir(self.free))
            except FileNotFoundError:
                self._free_count = self.limit
            self._released = 0
        if self._free_count < self.limit:
            try:
                os.rename(path, os.path.join(self.free, os.path.basename(path)))
            except FileNotFoundError:
                return
            except OSError:
                pass  # no free/ (an older layout): unlink as before
            else:
                self._free_count += 1
                self._released += 1
                return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FS_TOPDIR_FL = 0x00020000


def mark_top_directory(path: Path) -> bool:
    """``chattr +T``: ext4 places this directory's new subdirectories in block groups of
    their own (the Orlov allocator's rule for top-level directories) instead of next to
    the parent. The queue and the Maildirs then do not share a block group with other
    programs' churn: on ext4 without a journal each file creation scans the group's inodes
    deleted in the last 30 seconds, and a neighbour deleting thousands of files (another
    MTA, a test suite in /tmp) made each Maildir file creation cost ~0.5 ms of CPU here.
    Best effort: other filesystems, or no permission, leave it as it was."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False
    try:
        flags = array.array("i", [0])
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, flags, True)
        if not flags[0] & FS_TOPDIR_FL:
            flags[0] |= FS_TOPDIR_FL
            fcntl.ioctl(fd, FS_IOC_SETFLAGS, flags, True)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


class Layout:
    """``<data_dir>/mail/``: queue directories, Maildirs and the index."""

    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir / "mail"
        self.queue = self.root / "queue"
        self.maildirs = self.root / "maildirs"
        self.index = self.root / "index.sqlite"

    def q(self, name: str) -> Path:
        return self.queue / name

    def create(self) -> None:
        """The directories, 0700; directories and queue files an older version made
        group- or world-readable are tightened (Maildir files were always 0600)."""
        make_private_dirs(self.root)
        mark_top_directory(self.root)
        for directory in (self.root, self.queue, self.maildirs):
            make_private_dirs(directory)
            tighten(directory, DIR_MODE)
        for name in QUEUE_DIRS:
            make_private_dirs(self.q(name))
            tighten(self.q(name), DIR_MODE)
            if name != "incoming":  # emptied at start anyway
                with os.scandir(self.q(name)) as entries:
                    for entry in entries:
                        if entry.is_file(follow_symlinks=False):
                            tighten(Path(entry.path), FILE_MODE)
        if self.maildirs.is_dir():
            for mailbox in self.maildirs.iterdir():  # the mailboxes, not every file in them
                if mailbox.is_dir() and not mailbox.is_symlink():
                    tighten(mailbox, DIR_MODE)

    def find(self, queue_id: str) -> Path | None:
        if not valid_queue_id(queue_id):
            return None
        for name in MESSAGE_QUEUES:
            path = self.q(name) / queue_id
            if path.exists():
                return path
        return None
