"""The errors of the service as a whole: the operator's to fix, reported with an exit status.

Whose fault each is:

- :class:`ConfigError` -- the operator's configuration (TOML syntax, an unknown key, a value
  out of range); the message names the key, the file and the line. ``lanalyze`` exits 2.
- :class:`StartError` -- a component cannot start for a reason the operator can fix; the
  process exits 3. Its kinds: :class:`BindError` (an address is taken or not ours, naming the
  config key) and :class:`DataDirBusy` (another process holds the data directory).
- :class:`MailerError` -- mail lanalyze writes (a scheduled report, an alarm notification)
  could not be handed on: no route configured (mail disabled and no ``mailer.relay_host``),
  the relay host refused it or the login, or the queue could not be written. The operator's
  to fix; the scheduler counts and logs it, ``lanalyze reports run`` exits 1.

The packages keep their own errors next to this one: ``flows/errors.py`` (reports, captures,
SNMP), ``flows/decode/errors.py`` (an exporter's bad bytes), ``mail/errors.py`` (SMTP paths,
queue files, the DNS bridge) and ``web/errors.py`` (API requests). Any other exception that
escapes is a bug of ours.
"""

from __future__ import annotations


class ConfigError(Exception):
    """The configuration is wrong; the message names the key, the file and the line."""


class StartError(Exception):
    """A component could not start for a reason the operator can fix."""


class BindError(StartError):
    """A listener cannot bind its address; names the address and the config key."""

    def __init__(self, address: str, key: str, reason: str) -> None:
        super().__init__(f"cannot listen on {address} (config key {key}): {reason}")
        self.address = address
        self.key = key


class DataDirBusy(StartError):
    """Another process holds the data directory."""


class MailerError(Exception):
    """A generated message could not be handed on (no route, the relay refused, disk)."""
