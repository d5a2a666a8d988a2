"""``lanalyze mail ...``: the message index, the queue, a test client, TLS and password tools.

``ls`` and ``show`` read the message index (SQLite, read-only, safe while the server runs;
``ls --rejected`` lists what the server refused, from the same index);
``queue`` reads the queue files themselves, like ``mailq``; ``queue hold|release|retry|delete``
are :mod:`lanalyze.mail.queueadmin`'s actions (the console calls the same), whose rules are
documented there (the running server's queue manager picks a message moved to ``active/`` up
within ``mail.queue.scan_interval``). ``send`` is an SMTP client
built on :mod:`smtplib` that prints the whole dialogue with ``->`` / ``<-`` markers, like
swaks, for testing any SMTP server.
"""

from __future__ import annotations

import json
import smtplib
import socket
import ssl
import sys
import time
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from lanalyze.mail.index import VERDICTS
from lanalyze.mail.queuefile import Layout
from lanalyze.passwords import hash_password_command

if TYPE_CHECKING:
    from lanalyze.mail.queueadmin import QueueAdmin, Report


@click.group()
def mail() -> None:
    """SMTP server: messages, queue, verdicts."""


def _layout(ctx: click.Context) -> Layout:
    config = ctx.find_root().obj.config
    return Layout(config.general.data_path)


def _index(ctx: click.Context) -> Any:
    from lanalyze.mail.index import MessageIndex

    layout = _layout(ctx)
    if not layout.index.exists():
        return None
    return MessageIndex(layout.index, readonly=True)


def _when(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


def _verdict(auth: dict[str, Any] | None) -> str:
    if not auth:
        return "-"
    parts = []
    for key in ("spf", "dkim", "dmarc", "arc"):
        value = auth.get(key)
        if isinstance(value, dict):
            value = value.get("result")
        if isinstance(value, list):
            value = ",".join(
                str(v.get("result", v)) if isinstance(v, dict) else str(v) for v in value
            )
        if value:
            parts.append(f"{key}={value}")
    action = auth.get("action")
    if action and action != "accept":
        parts.append(str(action))
    return " ".join(parts) or "-"


def _text(value: Any) -> str:
    """A field for people: lists joined, nothing as ``-`` (not Python's ``[...]``/``None``)."""
    if value is None or value in ("", []):
        return "-"
    if isinstance(value, list | tuple):
        return ", ".join(_text(v) for v in value)
    return str(value)


def _marks(row: dict[str, Any]) -> str:
    """The sender marks the console's list shows, as ``FORGED: lookalike domain, ...``."""
    from lanalyze.mail.index import MARKS

    words = [MARKS.get(m, m) for m in row.get("marks") or [] if m != "dmarc_fail"]
    head = ["FORGED"] if row.get("forged") else []
    if not words:
        return f" {head[0]}" if head else ""
    return " " + ": ".join([*head, ", ".join(words)])


@mail.command("ls")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@click.option(
    "--status",
    type=click.Choice(["queued", "delivered", "deferred", "hold", "deleted", "corrupt", "bounced"]),
)
@click.option(
    "--verdict",
    type=click.Choice(VERDICTS),
    default="any",
    show_default=True,
    help="Messages whose verdict is this (forged: what the console's Forged filter shows).",
)
@click.option(
    "--rejected", is_flag=True, help="List refused recipients, senders and messages instead."
)
@click.option("--sender", default="", help="With --rejected: envelope sender contains this.")
@click.option("--recipient", default="", help="With --rejected: recipient contains this.")
@click.option("--client", default="", help="With --rejected: client address or HELO contains this.")
@click.option("--reason", default="", help="With --rejected: this reason only (unknown_user, ...).")
@click.pass_context
def ls_command(
    ctx: click.Context,
    *,
    fmt: str,
    limit: int,
    status: str | None,
    verdict: str,
    rejected: bool,
    sender: str,
    recipient: str,
    client: str,
    reason: str,
) -> None:
    """Stored and queued messages (or, with --rejected, refusals), newest first."""
    if rejected:
        from lanalyze.mail.index import RejectionQuery

        query = RejectionQuery(sender, recipient, client, reason, page_size=limit)
        _list_rejections(_index(ctx), query, fmt)
        return
    from lanalyze.mail.index import MessageQuery

    index = _index(ctx)
    wanted = MessageQuery(status=status, verdict=verdict, page_size=limit)
    rows = index.search(wanted).rows if index is not None else []
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no messages")
        return
    click.echo(
        f"{'queue id':22} {'time':19} {'status':9} {'size':>7}  from -> to / subject / verdict"
    )
    for row in rows:
        click.echo(
            f"{row['queue_id']:22} {_when(row['received_at'])} {row['status']:9} "
            f"{row['size']:>7}  <{row['mail_from']}> -> {', '.join(row['recipients'])}"
        )
        click.echo(
            f"{'':22} From: {row['header_from'] or '-'}  Subject: {row['subject'] or '-'}"
            f"  [{_verdict(row['auth'])}]{_marks(row)}"
        )


def _list_rejections(index: Any, query: Any, fmt: str) -> None:
    rows = index.rejections(query).rows if index is not None else []
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no rejections")
        return
    click.echo(f"{'time':19} {'client':15} {'code':4} {'reason':23} from -> to / helo / reply")
    for row in rows:
        click.echo(
            f"{_when(row['at'])} {row['client_ip']:15} {row['code']:<4} {row['reason']:23} "
            f"<{row['mail_from']}> -> {row['recipient'] or '-'}"
        )
        click.echo(f"{'':65} HELO {row['helo'] or '-'}  {row['reply']}")


@mail.command("show")
@click.argument("queue_id")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@click.pass_context
def show_command(ctx: click.Context, queue_id: str, fmt: str) -> None:
    """One message: envelope, headers, delivery state and authentication results."""
    index = _index(ctx)
    row = index.get(queue_id) if index is not None else None
    if row is None:
        click.echo(f"no message {queue_id}", err=True)
        sys.exit(1)
    path = _layout(ctx).find(queue_id)
    row["queue_file"] = str(path) if path is not None else None
    if fmt == "json":
        click.echo(json.dumps(row, indent=2))
        return
    for key, value in row.items():
        if key in ("auth", "marks", "forged"):
            continue
        shown = _when(value) if key in ("received_at", "updated_at") else _text(value)
        click.echo(f"{key:13} {shown}")
    auth = row.get("auth")
    click.echo(f"{'auth':13} {_verdict(auth)}{_marks(row)}")
    if auth:
        click.echo(json.dumps(auth, indent=2))


def _admin(ctx: click.Context) -> QueueAdmin:
    from lanalyze.mail.queueadmin import QueueAdmin

    return QueueAdmin(_layout(ctx))


def _queue_entries(admin: QueueAdmin) -> list[dict[str, Any]]:
    from lanalyze.mail.queueadmin import recipient_states

    entries = []
    for found in admin.entries():
        entry: dict[str, Any] = {"queue_id": found.queue_id, "queue": found.queue}
        envelope = found.envelope
        if envelope is None:
            entry["error"] = found.error
        else:
            entry.update(
                size=found.length,
                arrival=envelope.received_at,
                mail_from=envelope.mail_from,
                pending=sorted(envelope.local) + envelope.relay,
                attempts=envelope.attempts,
                last_error=envelope.last_error,
                recipients=[r.as_dict() for r in recipient_states(envelope)],
            )
        entries.append(entry)
    return entries


def _recipient_line(rcpt: dict[str, Any]) -> str:
    """``  carol@remote.test  deferred (3 attempts, next 2026-12-03 15:00:00)  421 busy``"""
    detail = []
    if rcpt["attempts"]:
        detail.append(f"{rcpt['attempts']} attempts")
    if rcpt["state"] == "deferred" and rcpt["next_attempt"]:
        detail.append(f"next {_when(rcpt['next_attempt'])}")
    if rcpt["host"]:
        detail.append(_text(rcpt["host"]))
    state = rcpt["state"] + (f" ({', '.join(detail)})" if detail else "")
    reply = f"  {_text(rcpt['reply'])}" if rcpt["reply"] else ""
    return f"{'':22} {_text(rcpt['recipient'])}  {state}{reply}"


@mail.group("queue", invoke_without_command=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.pass_context
def queue_group(ctx: click.Context, fmt: str) -> None:
    """The mail queue (like mailq): active, deferred, hold and corrupt.

    \b
    Actions (one rule set, the console's too; see lanalyze.mail.queueadmin):
      hold ID...          active or deferred -> hold (not delivered until released)
      release ID...|--all hold -> active
      retry ID...|--all   deferred or hold -> active (--all: every deferred message)
      flush ID...|--all   deferred -> active, every deferred recipient due now
      delete ID...        removed from active, deferred or hold (--corrupt: also corrupt/)
      destinations        per destination domain: deferred count, last error, next attempt
    Every action also takes --destination DOMAIN instead of ids.
    A queue file that does not parse is never acted on: it is moved to queue/corrupt/ and
    reported. Exit status 1 when any named message was not acted on.
    """
    if ctx.invoked_subcommand is not None:
        return
    entries = _queue_entries(_admin(ctx))
    if fmt == "json":
        click.echo(json.dumps(entries, indent=2))
        return
    if not entries:
        click.echo("Mail queue is empty")
        return
    for entry in entries:
        if "error" in entry:
            click.echo(f"{entry['queue_id']:22} {entry['queue']:8} unreadable: {entry['error']}")
            continue
        click.echo(
            f"{entry['queue_id']:22} {entry['queue']:8} {entry['size']:>8} "
            f"{_when(entry['arrival'])}  <{entry['mail_from']}>"
        )
        if entry["last_error"]:
            click.echo(f"{'':22} ({_text(entry['last_error'])}; {entry['attempts']} attempts)")
        for rcpt in entry["recipients"]:
            if rcpt["state"] not in ("sent", "delivered", "bounced"):
                click.echo(_recipient_line(rcpt))
    click.echo(f"-- {len(entries)} messages")


@queue_group.command("destinations")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.pass_context
def queue_destinations(ctx: click.Context, fmt: str) -> None:
    """Per destination domain: queued and deferred recipients, last error, next attempt."""
    from lanalyze.mail.queueadmin import destinations

    found = destinations(_admin(ctx).entries())
    if fmt == "json":
        click.echo(json.dumps([d.as_dict() for d in found], indent=2))
        return
    if not found:
        click.echo("No recipient is waiting")
        return
    click.echo(f"{'destination':30} {'status':12} {'msgs':>5} {'rcpts':>5} {'deferred':>8}  next")
    for d in found:
        next_attempt = _when(d.next_attempt) if d.next_attempt else "-"
        click.echo(
            f"{_text(d.domain):30} {d.status:12} {d.messages:>5} {d.recipients:>5} "
            f"{d.deferred:>8}  {next_attempt}"
        )
        if d.last_error:
            click.echo(f"{'':30} {_text(d.last_error)}")


def _report(report: Report, summary: str, asked: int) -> None:
    """Every id not acted on, on stderr, then the summary; exit 1 if any named id failed."""
    for result in report.failed:
        click.echo(
            f"{result.queue_id}: {result.outcome.replace('_', ' ')}: {result.detail}", err=True
        )
    if report.index_error:
        click.echo(f"message index not updated: {report.index_error}", err=True)
    click.echo(summary.format(len(report.done)))
    if asked and report.failed:
        sys.exit(1)


def _ids(
    queue_ids: tuple[str, ...],
    every: bool,
    ids_of_all: Any,
    *,
    destination: str | None = None,
    admin: QueueAdmin | None = None,
    queues: tuple[str, ...] = (),
) -> list[str]:
    """The ids named, or --all's, or those of --destination's messages in ``queues``."""
    if sum((every, bool(queue_ids), destination is not None)) != 1:
        raise click.UsageError("give queue ids, --all or --destination (one of them)")
    if destination is not None:
        from lanalyze.mail.queueadmin import for_destination

        assert admin is not None
        return admin.select(queues, for_destination(destination))
    return list(ids_of_all()) if every else list(queue_ids)


_DESTINATION = click.option(
    "--destination",
    metavar="DOMAIN",
    help="Every message with a recipient still to deliver in DOMAIN.",
)


@queue_group.command("retry")
@click.argument("queue_ids", nargs=-1)
@click.option("--all", "retry_all", is_flag=True, help="Every deferred message.")
@_DESTINATION
@click.pass_context
def queue_retry(
    ctx: click.Context, queue_ids: tuple[str, ...], retry_all: bool, destination: str | None
) -> None:
    """Move deferred or held messages to the active queue for an immediate attempt."""
    admin = _admin(ctx)
    ids = _ids(
        queue_ids,
        retry_all,
        lambda: admin.select(["deferred"]),
        destination=destination,
        admin=admin,
        queues=("deferred", "hold"),
    )
    _report(admin.requeue(ids), "{} message(s) queued for retry", len(queue_ids))


@queue_group.command("flush")
@click.argument("queue_ids", nargs=-1)
@click.option("--all", "flush_all", is_flag=True, help="Every deferred message.")
@_DESTINATION
@click.pass_context
def queue_flush(
    ctx: click.Context, queue_ids: tuple[str, ...], flush_all: bool, destination: str | None
) -> None:
    """Retry deferred messages now: to the active queue, every deferred recipient due now
    (postqueue -f / -s DOMAIN)."""
    admin = _admin(ctx)
    ids = _ids(
        queue_ids,
        flush_all,
        lambda: admin.select(["deferred"]),
        destination=destination,
        admin=admin,
        queues=("deferred",),
    )
    _report(admin.flush(ids), "{} message(s) flushed", len(queue_ids))


@queue_group.command("hold")
@click.argument("queue_ids", nargs=-1)
@_DESTINATION
@click.pass_context
def queue_hold(ctx: click.Context, queue_ids: tuple[str, ...], destination: str | None) -> None:
    """Put active or deferred messages on hold: kept, not delivered until released."""
    admin = _admin(ctx)
    ids = _ids(
        queue_ids, False, list, destination=destination, admin=admin, queues=("active", "deferred")
    )
    _report(admin.hold(ids), "{} message(s) put on hold", len(queue_ids))


@queue_group.command("release")
@click.argument("queue_ids", nargs=-1)
@click.option("--all", "release_all", is_flag=True, help="Every held message.")
@_DESTINATION
@click.pass_context
def queue_release(
    ctx: click.Context, queue_ids: tuple[str, ...], release_all: bool, destination: str | None
) -> None:
    """Release held messages to the active queue."""
    admin = _admin(ctx)
    ids = _ids(
        queue_ids,
        release_all,
        lambda: admin.select(["hold"]),
        destination=destination,
        admin=admin,
        queues=("hold",),
    )
    _report(admin.release(ids), "{} message(s) released", len(queue_ids))


@queue_group.command("delete")
@click.argument("queue_ids", nargs=-1)
@click.option(
    "--corrupt", is_flag=True, help="Also delete these ids from queue/corrupt/ (else kept there)."
)
@_DESTINATION
@click.pass_context
def queue_delete(
    ctx: click.Context, queue_ids: tuple[str, ...], corrupt: bool, destination: str | None
) -> None:
    """Remove messages from the queue (they are not delivered)."""
    admin = _admin(ctx)
    ids = _ids(
        queue_ids,
        False,
        list,
        destination=destination,
        admin=admin,
        queues=("active", "deferred", "hold"),
    )
    report = admin.delete(ids, corrupt=corrupt)
    _report(report, "{} message(s) deleted", len(queue_ids))


class _TracingSMTP(smtplib.SMTP):
    """smtplib with the dialogue printed: ``->`` what we send, ``<-`` what the server says."""

    def send(self, s: Any) -> None:
        data = s.encode("utf-8", "surrogateescape") if isinstance(s, str) else bytes(s)
        _trace("->", data)
        super().send(s)

    def getreply(self) -> tuple[int, bytes]:
        code, message = super().getreply()
        lines = message.split(b"\n") if message else [b""]
        for number, line in enumerate(lines):
            sep = "-" if number < len(lines) - 1 else " "
            click.echo(f"<- {code}{sep}{line.decode('utf-8', 'replace')}")
        return code, message


class _TracingSMTPSSL(_TracingSMTP, smtplib.SMTP_SSL):
    pass


_DATA_SHOWN = 12  # lines of message data echoed before eliding


def _trace(marker: str, data: bytes) -> None:
    lines = data.split(b"\r\n")
    if lines and lines[-1] == b"":
        lines.pop()
    shown = lines if len(lines) <= _DATA_SHOWN + 2 else [*lines[:_DATA_SHOWN], b"...", *lines[-1:]]
    for line in shown:
        click.echo(f"{marker} {line.decode('utf-8', 'replace')}")


def _message(
    sender: str, recipients: list[str], headers: tuple[str, ...], subject: str, body: str
) -> bytes:
    lines = [
        f"From: {sender}",
        f"To: {', '.join(recipients)}",
        f"Subject: {subject}",
        f"Date: {formatdate(localtime=True)}",
        f"Message-ID: {make_msgid(domain=sender.rpartition('@')[2] or None)}",
        *headers,
        "",
        body,
    ]
    return "\r\n".join(lines).encode("utf-8") + b"\r\n"


@mail.command("send")
@click.option("--server", "server", default="127.0.0.1:2525", show_default=True, help="HOST:PORT")
@click.option("--from", "sender", required=True, help="Envelope sender (and From: if generated).")
@click.option("--to", "recipients", multiple=True, required=True, help="Recipient (repeatable).")
@click.option("--helo", default=socket.gethostname(), show_default=True)
@click.option("--starttls", is_flag=True, help="Upgrade with STARTTLS before MAIL.")
@click.option("--tls", "implicit_tls", is_flag=True, help="Implicit TLS (port 465 style).")
@click.option("--verify/--no-verify", default=False, help="Verify the server's certificate.")
@click.option("--auth", "auth", help="USER:PASSWORD for AUTH (PLAIN, or LOGIN if that is all).")
@click.option("--data", "data_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--header", "headers", multiple=True, help="Extra header line 'Name: value'.")
@click.option("--subject", default="lanalyze test message", show_default=True)
@click.option("--body", default="This is a test message sent by lanalyze mail send.")
@click.option("--timeout", type=float, default=30.0, show_default=True)
def send_command(
    *,
    server: str,
    sender: str,
    recipients: tuple[str, ...],
    helo: str,
    starttls: bool,
    implicit_tls: bool,
    verify: bool,
    auth: str | None,
    data_file: Path | None,
    headers: tuple[str, ...],
    subject: str,
    body: str,
    timeout: float,
) -> None:
    """Send one message and print the SMTP dialogue (exit 1 if it was not accepted)."""
    host, _, port_text = server.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    port = int(port_text)
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if data_file is not None:
        raw = data_file.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        extra = "".join(f"{h}\r\n" for h in headers).encode()
        message = extra + raw
    else:
        message = _message(sender, list(recipients), headers, subject, body)
    client: _TracingSMTP
    try:
        click.echo(f"=== Trying {host}:{port}...")
        if implicit_tls:
            client = _TracingSMTPSSL(
                host, port, local_hostname=helo, timeout=timeout, context=context
            )
        else:
            client = _TracingSMTP(host, port, local_hostname=helo, timeout=timeout)
        with client:
            client.ehlo(helo)
            if starttls:
                client.starttls(context=context)
                client.ehlo(helo)
            if auth:
                user, _, password = auth.partition(":")
                client.login(user, password)
            refused = client.sendmail(sender, list(recipients), message)
            for recipient, (code, text) in refused.items():
                click.echo(f"=== {recipient} refused: {code} {text.decode('utf-8', 'replace')}")
    except (smtplib.SMTPException, OSError) as exc:
        click.echo(f"=== failed: {exc}", err=True)
        sys.exit(1)
    click.echo("=== message accepted")


@mail.command("tls-selfsigned")
@click.option("--cert", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--key", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--hostname", help="Name in the certificate (default: general.hostname).")
@click.option("--days", type=click.IntRange(1, 3650), default=365, show_default=True)
@click.pass_context
def tls_selfsigned(
    ctx: click.Context, cert: Path, key: Path, hostname: str | None, days: int
) -> None:
    """Write a self-signed certificate and key for trying STARTTLS / implicit TLS out."""
    from lanalyze.mail.tls import write_selfsigned

    name = hostname or ctx.find_root().obj.config.general.hostname
    write_selfsigned(cert, key, name, days)
    click.echo(f"wrote {cert} and {key} (CN={name}, {days} days); configure:")
    click.echo(f'[mail]\ntls_cert = "{cert.resolve()}"\ntls_key = "{key.resolve()}"')


mail.add_command(
    hash_password_command(
        "mail.users",
        "addresses = []  # the From/envelope addresses this user may send as; `@domain` for all\n",
    )
)


def _add_dkim_commands() -> None:
    from lanalyze.mail.auth.cli import dkim

    mail.add_command(dkim)


_add_dkim_commands()
