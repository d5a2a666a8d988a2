"""The console's errors, and whose fault each is.

- :class:`BadRequest` -- the client's: an API request with a missing, malformed or out of
  range parameter; answered 400 with a message naming the parameter, counted.

Everything else the handlers raise is a bug of ours (500, logged); report input errors come
from :mod:`lanalyze.flows.errors` and are answered 400 too.
"""

from __future__ import annotations


class BadRequest(ValueError):
    """A request the API refuses: HTTP 400 with this message."""
