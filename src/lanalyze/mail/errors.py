"""The mail side's errors, and whose fault each is.

- :class:`AddressError` -- the SMTP peer's: a malformed path or parameter in MAIL FROM or RCPT
  TO; the sans-IO core answers it with a 5xx reply and counts it, the session goes on.
- :class:`CorruptQueueFile` -- a queue file that does not parse: never one we finished writing
  (a crash or power cut between the data and its trailer, or someone else's file); it is moved
  to ``queue/corrupt/`` and reported, never delivered half.
- :class:`InvalidSRS` -- the peer's: an SRS address of ours with a bad hash, an expired
  timestamp or bad syntax (a forged bounce address); the recipient is refused with 550.
- :class:`LookupNeeded` -- not a fault: the DNS bridge (``mail/auth/dns.py``) raises it inside
  a synchronous library run for an answer not fetched yet; the shell fetches it and runs the
  library again.
- :class:`LookupBudgetExceeded` -- the sender's DNS data: it made a library ask for more rounds
  of lookups than any valid evaluation needs; the check ends as a ``permerror``/``fail``.

- :class:`PermanentRoute`, :class:`TemporaryRoute` -- the recipient domain's DNS: no host to
  send to (null MX, no such domain: bounce; a lookup that failed: defer).
- :class:`ReplyError` -- the remote SMTP server's: a reply that is not SMTP (bad line,
  too long, too many lines); the connection is dropped and the attempt counts as deferred.
- :class:`SessionFailed` -- not a fault: the outbound shell's control flow when a connection
  or a reply ends a session (timeout, refused, 4xx/5xx to EHLO); carries the reply text.

Any other exception escaping a check is a bug of ours: counted, logged, reported as that
check's ``temperror``.
"""

from __future__ import annotations


class AddressError(ValueError):
    """The peer sent a malformed path or parameter (the peer's fault)."""


class InvalidSRS(ValueError):
    """Not a valid SRS address of ours (bad syntax, hash or age): the peer's fault."""


class CorruptQueueFile(Exception):
    """A queue file that does not parse (never one we finished writing)."""


class LookupNeeded(Exception):
    """Raised inside a synchronous library run when an answer has not been fetched yet."""

    def __init__(self, name: str, rdtype: str) -> None:
        super().__init__(f"{name}/{rdtype}")
        self.key = (name, rdtype)


class LookupBudgetExceeded(Exception):
    """A library asked for more rounds of lookups than any valid evaluation needs."""


class RouteError(Exception):
    """No host to try for a destination; ``status`` is the RFC 3463 code for the DSN."""

    def __init__(self, status: str, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


class PermanentRoute(RouteError):
    """The destination can never be reached (null MX, domain does not exist): bounce."""


class TemporaryRoute(RouteError):
    """The destination cannot be looked up now (DNS trouble): defer."""


class ReplyError(Exception):
    """The remote server sent something that is not an SMTP reply (its fault)."""


class SessionFailed(Exception):
    """An outbound session ended early; ``permanent`` when the reply was 5xx."""

    def __init__(self, text: str, status: str = "4.4.2", permanent: bool = False) -> None:
        super().__init__(text)
        self.text = text
        self.status = status
        self.permanent = permanent
