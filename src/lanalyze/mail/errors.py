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
