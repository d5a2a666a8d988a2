"""The alarms package's errors, and whose fault each is.

- :class:`DeliveryError` -- the receiver's or the network's: a notification channel (webhook,
  syslog) could not deliver a notice after its retries; counted per channel, logged
  rate-limited, the alarm itself stays stored.

Configuration problems (thresholds, networks, URLs) are the operator's and are reported by
the configuration's validation (:class:`lanalyze.errors.ConfigError`).
"""

from __future__ import annotations


class DeliveryError(Exception):
    """A notice a channel could not deliver (the receiver's fault, or the network's)."""
