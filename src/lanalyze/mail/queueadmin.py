"""Queue administration: list, hold, release, requeue and delete queued messages by queue id.

The one implementation behind ``lanalyze mail queue ...`` and the console's queue page, in the
manner of Postfix's postsuper(1) and postqueue(1). The rules, the same for every caller:

========  ==========================  ============  ================
action    takes a message from        moves it to   index status
========  ==========================  ============  ================
hold      ``active``, ``deferred``    ``hold``      ``hold``
release   ``hold``                    ``active``    ``queued``
requeue   ``deferred``, ``hold``      ``active``    ``queued``
flush     ``deferred``                ``active``    ``queued``
delete    ``active``, ``deferred``,   (removed)     ``deleted``
          ``hold``
========  ==========================  ============  ================

- A queue id is checked with :func:`~lanalyze.mail.queuefile.valid_queue_id` (1-64 ASCII
  letters and digits) before it is joined to a path; anything else is ``invalid``.
- Before a message is moved or removed its queue file is read and checked as delivery checks
  it (footer, trailer, CRC-32, the trailer's queue id). A file that does not parse is never
  acted on, whatever was asked: it is moved aside to ``queue/corrupt/`` (as delivery does),
  its index row says ``corrupt``, and the result says so. Files in ``corrupt/`` are listed and
  never delivered; only :meth:`QueueAdmin.delete` with ``corrupt=True`` (``mail queue delete
  --corrupt``) removes them: an operator's explicit choice, never a side effect.
- A move is one ``rename(2)`` inside ``queue/`` (atomic); the running server's queue manager
  picks ``active/`` up at its next scan (``mail.queue.scan_interval``) and ignores a timer for
  a file no longer where it was. A message being delivered at the very moment it is held or
  deleted may still be delivered once (at-least-once, as every MTA).
- The index is updated once per call, in one transaction (:meth:`MessageIndex.record_admin`).
  It is derived data: when it cannot be written the files stay as moved and the failure is in
  the result's ``index_error``; the queue manager's next status update corrects the row.

``release`` is ``requeue`` restricted to held mail; ``--all`` of ``mail queue retry`` takes
the deferred queue only (held mail waits until it is released, as in Postfix). ``flush``
(retry now, Postfix's ``postqueue -f`` / ``-s``) is ``requeue`` of deferred mail that also
sets each deferred recipient's ``next_attempt`` to now: the file is rewritten into
``active/`` in one durable step (:func:`~lanalyze.mail.queuefile.rewrite`), never edited
in place. Selection by destination (``--destination DOMAIN``: messages with a recipient
still to deliver in that domain) is :func:`for_destination`, a predicate for
:meth:`QueueAdmin.select`.

Per-recipient views read ``Envelope.rcpt`` (its fields are documented in
:mod:`~lanalyze.mail.queuefile`): :func:`recipient_states` lists each recipient's state,
last reply and next attempt; :func:`destinations` sums them per destination domain
(deferred recipients, last error, next attempt, and whether it is backing off), computed
from the queue files every time (the queue is the truth; nothing is cached).

Trust: queue ids come from the operator (CLI arguments, console URLs) and are checked as
above; queue files are ours, but a damaged one is expected and handled as described.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lanalyze.log import get_logger
from lanalyze.mail.errors import CorruptQueueFile
from lanalyze.mail.index import MessageIndex
from lanalyze.mail.metrics import QUEUE_ADMIN
from lanalyze.mail.queuefile import (
    MESSAGE_QUEUES,
    Envelope,
    Layout,
    read_envelope,
    read_queue_file,
    rewrite,
    valid_queue_id,
    verify_message,
)

log = get_logger(__name__)

# The index's word for a message in each queue directory.
QUEUE_STATUS = {"active": "queued", "deferred": "deferred", "hold": "hold", "corrupt": "corrupt"}


@dataclass(frozen=True)
class Action:
    name: str
    sources: tuple[str, ...]  # queue directories it takes messages from, in search order
    target: str | None  # queue directory it moves them to; None removes them
    status: str  # the index row's status afterwards
    note: str = ""  # replaces the row's last_error when not empty


HOLD = Action("hold", ("active", "deferred"), "hold", "hold", "held by operator")
RELEASE = Action("release", ("hold",), "active", "queued", "released by operator")
REQUEUE = Action("requeue", ("deferred", "hold"), "active", "queued", "requeued by operator")
FLUSH = Action("flush", ("deferred",), "active", "queued", "flushed by operator")
DELETE = Action("delete", ("active", "deferred", "hold"), None, "deleted", "deleted by operator")
DELETE_CORRUPT = Action(
    "delete", ("active", "deferred", "hold", "corrupt"), None, "deleted", "deleted by operator"
)


@dataclass
class Result:
    """What happened to one queue id."""

    queue_id: str
    outcome: str  # done | invalid | not_found | corrupt | failed
    queue: str = ""  # where the message was
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome == "done"


@dataclass
class Report:
    action: str
    results: list[Result]
    index_error: str = ""

    @property
    def done(self) -> list[str]:
        return [r.queue_id for r in self.results if r.ok]

    @property
    def failed(self) -> list[Result]:
        return [r for r in self.results if not r.ok]


@dataclass
class QueueEntry:
    """One queued message as listed: its envelope, or why it cannot be read."""

    queue_id: str
    queue: str  # active | deferred | hold | corrupt
    envelope: Envelope | None
    length: int = 0  # bytes of the message
    error: str = ""

    @property
    def status(self) -> str:
        return QUEUE_STATUS[self.queue]


class QueueAdmin:
    def __init__(self, layout: Layout) -> None:
        self.layout = layout

    # ---------------------------------------------------------------- reading

    def entries(self, queues: Iterable[str] = MESSAGE_QUEUES) -> list[QueueEntry]:
        """Every message in these queues, by queue then queue id (only trailers are read;
        listing never moves a file)."""
        found = []
        for queue in queues:
            try:
                names = sorted(os.listdir(self.layout.q(queue)))
            except FileNotFoundError:
                continue
            for name in names:
                if not valid_queue_id(name):
                    continue  # a temporary or an operator's stray file: not a message
                entry = QueueEntry(name, queue, None)
                try:
                    entry.envelope, entry.length = read_envelope(self.layout.q(queue) / name)
                except FileNotFoundError:
                    continue  # delivered or moved while listing
                except (CorruptQueueFile, OSError) as exc:
                    entry.error = str(exc)
                found.append(entry)
        return found

    def select(
        self, queues: Iterable[str], where: Callable[[Envelope], bool] | None = None
    ) -> list[str]:
        """Queue ids of readable messages in ``queues`` whose envelope satisfies ``where``."""
        return [
            e.queue_id
            for e in self.entries(queues)
            if e.envelope is not None and (where is None or where(e.envelope))
        ]

    def locate(self, queue_id: str, queues: Iterable[str] = MESSAGE_QUEUES) -> str | None:
        """The queue directory holding ``queue_id``, or None."""
        if not valid_queue_id(queue_id):
            return None
        for queue in queues:
            if (self.layout.q(queue) / queue_id).is_file():
                return queue
        return None

    # ---------------------------------------------------------------- actions

    def hold(self, queue_ids: Iterable[str]) -> Report:
        return self.apply(HOLD, queue_ids)

    def release(self, queue_ids: Iterable[str]) -> Report:
        return self.apply(RELEASE, queue_ids)

    def requeue(self, queue_ids: Iterable[str]) -> Report:
        return self.apply(REQUEUE, queue_ids)

    def flush(self, queue_ids: Iterable[str]) -> Report:
        return self.apply(FLUSH, queue_ids)

    def delete(self, queue_ids: Iterable[str], *, corrupt: bool = False) -> Report:
        return self.apply(DELETE_CORRUPT if corrupt else DELETE, queue_ids)

    def apply(self, action: Action, queue_ids: Iterable[str]) -> Report:
        results = [self._one(action, queue_id) for queue_id in dict.fromkeys(queue_ids)]
        changes = []
        for result in results:
            if result.ok:
                changes.append((result.queue_id, action.status, action.note))
            elif result.outcome == "corrupt" and result.queue != "corrupt":
                changes.append((result.queue_id, "corrupt", result.detail))
        report = Report(action.name, results)
        if changes:
            report.index_error = self._record(changes)
        for outcome in {r.outcome for r in results}:
            QUEUE_ADMIN.labels(action.name, outcome).inc(
                sum(1 for r in results if r.outcome == outcome)
            )
        # One line per call (``retry --all`` may touch thousands); corrupt files have their own.
        log.info(
            "mail.queue.admin",
            extra={
                "action": action.name,
                "done": len(report.done),
                "failed": [f"{r.queue_id}:{r.outcome}" for r in report.failed[:20]],
            },
        )
        return report

    def _one(self, action: Action, queue_id: str) -> Result:
        if not valid_queue_id(queue_id):
            return Result(queue_id, "invalid", detail="not a queue id")
        queue = self.locate(queue_id, action.sources)
        if queue is None:
            where = self.locate(queue_id)
            detail = f"in the {where} queue" if where else "not queued"
            return Result(queue_id, "not_found", where or "", detail)
        path = self.layout.q(queue) / queue_id
        if queue != "corrupt":
            problem = _check(path)
            if problem is None:
                return Result(queue_id, "not_found", "", "not queued")  # gone meanwhile
            if problem:
                return self._set_aside(queue_id, queue, problem)
        try:
            if action is FLUSH:
                _flush_file(path, self.layout.q("active") / queue_id)
            elif action.target is None:
                path.unlink()
            else:
                os.rename(path, self.layout.q(action.target) / queue_id)
        except FileNotFoundError:
            return Result(queue_id, "not_found", "", "not queued")
        except OSError as exc:
            return Result(queue_id, "failed", queue, exc.strerror or str(exc))
        return Result(queue_id, "done", queue)

    def _set_aside(self, queue_id: str, queue: str, problem: str) -> Result:
        try:
            os.rename(self.layout.q(queue) / queue_id, self.layout.q("corrupt") / queue_id)
        except FileNotFoundError:
            return Result(queue_id, "not_found", "", "not queued")
        except OSError as exc:
            return Result(queue_id, "failed", queue, f"corrupt, not moved aside: {exc}")
        log.warning(
            "mail.queue.corrupt", extra={"queue_id": queue_id, "queue": queue, "error": problem}
        )
        return Result(queue_id, "corrupt", queue, f"{problem}; moved to queue/corrupt/")

    def _record(self, changes: list[tuple[str, str, str]]) -> str:
        if not self.layout.index.exists():
            return ""
        try:
            with MessageIndex(self.layout.index) as index:
                index.record_admin(changes)
        except sqlite3.Error as exc:
            log.warning("mail.queue.admin_index_failed", extra={"error": str(exc)})
            return str(exc)
        return ""


def _check(path: Path) -> str | None:
    """'' when the queue file is sound, why not when it is not, None when it is gone."""
    try:
        envelope, message = read_queue_file(str(path))
        verify_message(path, envelope, message)
    except FileNotFoundError:
        return None
    except (CorruptQueueFile, OSError) as exc:
        # The messages name the full path; the result already names the queue and id.
        return str(exc).replace(f"{path}: ", "")
    return ""


# Recipient states after which nothing more is tried (queuefile.Envelope.rcpt).
FINAL_STATES = frozenset({"sent", "delivered", "bounced"})


def _flush_file(path: Path, target: Path) -> None:
    """Deferred -> active with every deferred recipient due now, in one durable rewrite."""
    envelope, length = read_envelope(path)
    now = time.time()
    for state in envelope.rcpt.values():
        if state.get("state") == "deferred":
            state["next_attempt"] = now
    rewrite(path, target, envelope, length)


@dataclass(frozen=True)
class RecipientState:
    """One recipient of a queued message, as ``Envelope.rcpt`` records it."""

    recipient: str
    state: str  # pending | deferred | sent | delivered | bounced
    reply: str = ""
    status: str = ""
    attempts: int = 0
    next_attempt: float | None = None
    host: str = ""

    @property
    def domain(self) -> str:
        return domain_of(self.recipient)

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


def recipient_states(envelope: Envelope) -> list[RecipientState]:
    """Every recipient's state: ``Envelope.rcpt`` where it has one; otherwise ``pending``
    while the recipient still waits (in ``local`` or ``relay``), else ``delivered``
    (local delivery drops delivered recipients from ``local``)."""
    waiting = set(envelope.local) | set(envelope.relay)
    found = []
    for recipient in envelope.recipients:
        data = envelope.rcpt.get(recipient)
        if data is None:
            state = "pending" if recipient in waiting else "delivered"
            found.append(RecipientState(recipient, state))
            continue
        next_attempt = data.get("next_attempt")
        found.append(
            RecipientState(
                recipient,
                str(data.get("state", "pending")),
                str(data.get("reply", "")),
                str(data.get("status", "")),
                int(data.get("attempts", 0) or 0),
                float(next_attempt) if isinstance(next_attempt, int | float) else None,
                str(data.get("host", "")),
            )
        )
    return found


def for_destination(domain: str) -> Callable[[Envelope], bool]:
    """A :meth:`QueueAdmin.select` predicate: a recipient in ``domain`` is still to do."""
    wanted = domain.lower().strip().rstrip(".").lstrip("@")

    def where(envelope: Envelope) -> bool:
        return any(
            r.domain == wanted and r.state not in FINAL_STATES for r in recipient_states(envelope)
        )

    return where


@dataclass
class DestinationStatus:
    """One destination domain over the whole queue."""

    domain: str
    messages: int = 0  # queued messages with a recipient still to do there
    recipients: int = 0  # such recipients
    deferred: int = 0  # of them, deferred after a failed attempt
    last_error: str = ""  # the reply of the most recently tried deferred recipient
    next_attempt: float | None = None  # the earliest next attempt of a deferred recipient
    queues: dict[str, int] = field(default_factory=dict)  # messages per queue directory
    _last_tried: float = field(default=-1.0, repr=False)

    @property
    def status(self) -> str:
        """``backing off`` (deferred, next attempt later), ``retrying`` (deferred, due), or
        ``waiting`` (nothing failed yet)."""
        if not self.deferred:
            return "waiting"
        if self.next_attempt is not None and self.next_attempt > time.time():
            return "backing off"
        return "retrying"

    def as_dict(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "status": self.status,
            "messages": self.messages,
            "recipients": self.recipients,
            "deferred": self.deferred,
            "last_error": self.last_error,
            "next_attempt": self.next_attempt,
            "queues": dict(self.queues),
        }


def destinations(entries: Iterable[QueueEntry]) -> list[DestinationStatus]:
    """Per destination domain, from the queue files: most deferred first, then by name."""
    found: dict[str, DestinationStatus] = {}
    for entry in entries:
        if entry.envelope is None:
            continue
        seen: set[str] = set()
        for rcpt in recipient_states(entry.envelope):
            if rcpt.state in FINAL_STATES:
                continue
            status = found.get(rcpt.domain)
            if status is None:
                status = found[rcpt.domain] = DestinationStatus(rcpt.domain)
            status.recipients += 1
            if rcpt.domain not in seen:
                seen.add(rcpt.domain)
                status.messages += 1
                status.queues[entry.queue] = status.queues.get(entry.queue, 0) + 1
            if rcpt.state == "deferred":
                status.deferred += 1
                when = rcpt.next_attempt
                if when is not None and (status.next_attempt is None or when < status.next_attempt):
                    status.next_attempt = when
                # Backoff grows with attempts: the latest next attempt was tried last.
                tried = when if when is not None else 0.0
                if tried >= status._last_tried and rcpt.reply:
                    status._last_tried = tried
                    status.last_error = rcpt.reply
    return sorted(found.values(), key=lambda d: (-d.deferred, d.domain))
