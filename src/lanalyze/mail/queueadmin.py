"""Queue administration: list, hold, release, requeue and delete queued messages by queue id.

The one implementation behind ``lanalyze mail queue ...`` and the console's queue page, in the
manner of Postfix's postsuper(1) and postqueue(1). The rules, the same for every caller:

========  ==========================  ============  ================
action    takes a message from        moves it to   index status
========  ==========================  ============  ================
hold      ``active``, ``deferred``    ``hold``      ``hold``
release   ``hold``                    ``active``    ``queued``
requeue   ``deferred``, ``hold``      ``active``    ``queued``
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
the deferred queue only (held mail waits until it is released, as in Postfix). Selection by
something other than ids (a destination domain, for the outbound delivery still to come)
goes through :meth:`QueueAdmin.select` with a predicate on the envelope; new actions (flush
to a destination) are new :class:`Action` values over the same machinery.

Trust: queue ids come from the operator (CLI arguments, console URLs) and are checked as
above; queue files are ours, but a damaged one is expected and handled as described.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

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
            if action.target is None:
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
