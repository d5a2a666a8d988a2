"""Local delivery into Maildir (the layout of qmail's maildir(5), read by mutt and Dovecot).

Each copy is written to ``tmp/`` under a unique name (time, microseconds, pid, counter, host;
the ``S=`` size Dovecot understands); the batch's files are flushed (``mail.sync``: each
fsynced, or one syncfs), then renamed into ``new/`` and the ``new/`` directories touched are
fsynced once; only then is the queue file removed (moved to ``queue/free/`` for reuse, see
:class:`~lanalyze.mail.queuefile.Recycler`; or rewritten with the recipients still to
do). A crash therefore never loses a message and never shows a
partial one in ``new/``; at worst a message is delivered twice (at-least-once, as every MTA).
Lines are stored with LF endings, ``Return-Path`` and ``Delivered-To`` are added in front
of the ``Received`` and ``Authentication-Results`` lines recorded at acceptance. A message
quarantined by the authentication policy goes to the Maildir++ folder ``.Junk``.
Directories are created 0700 and files 0600 whatever the umask (they hold other people's mail).

Each delivered copy's path (``<folder>/new/<name>``, relative to ``mail/maildirs/``) goes back
in the :class:`Outcome` to the message index, so the console finds a delivered message by its
own path (:func:`find_delivered`), exactly, and never by searching message text a peer wrote.

Runs in worker threads (blocking file I/O). Trust: queue files are ours; mailbox names come
from the configuration, never from a peer.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from lanalyze.datadir import FILE_MODE, fsync_dir, make_private_dirs
from lanalyze.mail.errors import CorruptQueueFile
from lanalyze.mail.queuefile import (
    Envelope,
    Layout,
    Recycler,
    Syncer,
    read_queue_file,
    rewrite,
    verify_message,
)

_counter = itertools.count()
INLINE_RELAY = 65_536  # bytes of a message handed back to the main process with its outcome
_HOST = socket.gethostname().replace("/", "\\057").replace(":", "\\072")


@dataclass
class Outcome:
    queue_id: str
    status: str  # delivered | deferred | hold | relay | corrupt (outbound: also bounced)
    envelope: Envelope | None = None
    error: str = ""
    delivered_to: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # copies written, relative to maildirs/
    path: str = ""  # where the queue file is now (relay, deferred)
    # relay: the message itself when small (INLINE_RELAY), so outbound need not read it again
    message: bytes | None = None


def maildir_name(size: int) -> str:
    now = time.time()
    return (
        f"{int(now)}.M{int(now * 1e6) % 1_000_000}P{os.getpid()}Q{next(_counter)}.{_HOST},S={size}"
    )


def ensure_maildir(path: Path) -> None:
    for sub in ("tmp", "new", "cur"):
        make_private_dirs(path / sub)


def find_delivered(maildirs: Path, relative: str) -> Path | None:
    """The file a copy recorded as ``<folder>/new/<name>`` is now, or None.

    A mail reader moves a message it has seen from ``new/`` to ``cur/`` and appends its
    flags after a colon (``<name>:2,S``, maildir(5)); the unique name before the colon stays,
    so ``cur/`` is searched for exactly that name. Nothing else is matched: a message the
    user moved to another folder or deleted is not found.
    """
    parts = Path(relative).parts
    if len(parts) < 3 or parts[-2] != "new" or ".." in parts or Path(relative).is_absolute():
        return None  # not a path we record
    folder = maildirs.joinpath(*parts[:-2])
    name = parts[-1]
    fresh = folder / "new" / name
    if fresh.is_file():
        return fresh
    try:
        with os.scandir(folder / "cur") as entries:
            for entry in entries:
                if entry.name.split(":", 1)[0] == name and entry.is_file(follow_symlinks=False):
                    return Path(entry.path)
    except OSError:
        return None
    return None


class MaildirDelivery:
    def __init__(
        self, layout: Layout, syncer: Syncer | None = None, outbound: bool = False
    ) -> None:
        self.layout = layout
        # With outbound delivery on, a message whose local part is done and that has relay
        # recipients is handed on ("relay", the file left where it is); else it is held.
        self.outbound = outbound
        self.syncer = syncer or Syncer("fsync")
        # (mailbox, junk) -> the folder's tmp/ and new/, and new/ relative to maildirs/;
        # strings, not Paths, on the per-message path (pathlib costs tens of microseconds
        # per operation).
        self._folders: dict[tuple[str, bool], tuple[str, str, str]] = {}
        self.recycler = Recycler(layout)
        self._corrupt = str(layout.q("corrupt"))

    def folder(self, mailbox: str, junk: bool) -> Path:
        path = self.layout.maildirs / mailbox
        return path / ".Junk" if junk else path

    def _dirs(self, mailbox: str, junk: bool) -> tuple[str, str, str]:
        key = (mailbox, junk)
        dirs = self._folders.get(key)
        if dirs is None:
            path = self.folder(mailbox, junk)
            ensure_maildir(path)
            if junk:
                os.close(os.open(path / "maildirfolder", os.O_WRONLY | os.O_CREAT, FILE_MODE))
            relative = os.path.join(os.path.relpath(path, self.layout.maildirs), "new")
            dirs = self._folders[key] = (str(path / "tmp"), str(path / "new"), relative)
        return dirs

    def deliver_batch(self, names: list[str]) -> list[Outcome]:
        """Deliver each queue file; flush the batch once; then dequeue."""
        staged: list[tuple[str, Envelope, int, Outcome]] = []
        new_dirs: set[str] = set()
        renames: list[tuple[str, str]] = []
        for path in names:
            queue_id = os.path.basename(path)
            try:
                envelope, message = read_queue_file(path)
                verify_message(path, envelope, message)
            except FileNotFoundError:
                continue  # deleted meanwhile (`mail queue delete`)
            except (CorruptQueueFile, OSError) as exc:
                self._quarantine(path)
                staged.append(
                    (
                        path,
                        Envelope(queue_id, "", [], {}, [], 0, "", "", ""),
                        0,
                        Outcome(queue_id, "corrupt", None, str(exc)),
                    )
                )
                continue
            outcome = Outcome(queue_id, "delivered", envelope)
            body = strip_marked(message, envelope).replace(b"\r\n", b"\n")
            head = envelope.prepend.encode("utf-8", "surrogateescape").replace(b"\r\n", b"\n")
            junk = envelope.action == "quarantine"
            done_mailboxes: set[str] = set()
            for recipient in list(envelope.local):
                try:
                    for mailbox in envelope.local[recipient]:
                        if mailbox in done_mailboxes:
                            continue
                        tmp_dir, new_dir, relative = self._dirs(mailbox, junk)
                        lead = (
                            f"Return-Path: <{envelope.mail_from}>\nDelivered-To: {mailbox}\n"
                        ).encode("utf-8", "surrogateescape")
                        tmp, final = self._write(tmp_dir, new_dir, (lead, head, body))
                        renames.append((tmp, final))
                        outcome.files.append(os.path.join(relative, os.path.basename(final)))
                        new_dirs.add(new_dir)
                        done_mailboxes.add(mailbox)
                    del envelope.local[recipient]
                    outcome.delivered_to.append(recipient)
                except OSError as exc:
                    outcome.status = "deferred"
                    outcome.error = f"{recipient}: {exc.strerror or exc}"
            if outcome.status == "delivered" and envelope.relay:
                outcome.status = "relay" if self.outbound else "hold"
                if self.outbound and len(message) <= INLINE_RELAY:
                    outcome.message = message
            staged.append((path, envelope, len(message), outcome))
        dir_error = ""
        try:
            # Contents durable before any name appears in new/: never a partial message.
            if renames:
                self.syncer.batch(self.layout.maildirs)
            for tmp, final in renames:
                os.rename(tmp, final)
            for directory in new_dirs:
                fsync_dir(Path(directory))
        except OSError as exc:
            dir_error = str(exc)
        outcomes = []
        for path, envelope, length, outcome in staged:
            if outcome.status == "corrupt":
                outcomes.append(outcome)
                continue
            if dir_error:
                # Nothing is known to be durable: keep the queue file as it was.
                outcomes.append(Outcome(outcome.queue_id, "deferred", envelope, dir_error))
                continue
            try:
                if outcome.status == "delivered":
                    self.recycler.release(path, length)
                elif outcome.status == "relay":
                    outcome.path = path
                    if outcome.delivered_to:  # the local part changed: write it down
                        rewrite(Path(path), Path(path), envelope, length)
                else:
                    if outcome.status == "deferred":
                        envelope.attempts += 1
                        envelope.last_error = outcome.error
                    target = self.layout.q("hold" if outcome.status == "hold" else "deferred")
                    rewrite(Path(path), target / outcome.queue_id, envelope, length)
                    outcome.path = str(target / outcome.queue_id)
            except OSError as exc:
                outcomes.append(Outcome(outcome.queue_id, "deferred", envelope, str(exc)))
                continue
            outcomes.append(outcome)
        return outcomes

    def _write(self, tmp_dir: str, new_dir: str, parts: tuple[bytes, ...]) -> tuple[str, str]:
        name = maildir_name(sum(len(part) for part in parts))
        tmp = os.path.join(tmp_dir, name)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            pending: list[bytes | memoryview] = [part for part in parts if part]
            while pending:
                written = os.writev(fd, pending)
                while pending and written >= len(pending[0]):
                    written -= len(pending[0])
                    pending.pop(0)
                if written:
                    pending[0] = memoryview(pending[0])[written:]
            self.syncer.file(fd)
        finally:
            os.close(fd)
        return tmp, os.path.join(new_dir, name)

    def _quarantine(self, path: str) -> None:
        with contextlib.suppress(OSError):
            os.rename(path, os.path.join(self._corrupt, os.path.basename(path)))


def strip_marked(message: bytes, envelope: Envelope) -> bytes:
    """Remove the byte ranges the authentication check marked (forged A-R headers)."""
    ranges = envelope.extra.get("strip_ranges") or []
    if not ranges:
        return message
    out, pos = [], 0
    for start, end in sorted((int(a), int(b)) for a, b in ranges):
        if start < pos or end > len(message) or start > end:
            continue
        out.append(message[pos:start])
        pos = end
    out.append(message[pos:])
    return b"".join(out)
