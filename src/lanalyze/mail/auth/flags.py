"""The names of the suspicious-sender flags a verdict carries (``AuthVerdict.flags``).

One place for the words, so the authenticator that raises them, the policy that acts on them
and the message index that marks and filters by them cannot drift apart; this module imports
nothing, so the index and its readers stay free of the DNS and DKIM libraries.
"""

from __future__ import annotations

MISMATCH_FLAG = "from_envelope_mismatch"
"""Organisational domains of From: and MAIL FROM differ."""
LOCAL_CLAIM_FLAG = "local_domain_claimed_from_outside"
"""From: in one of our domains without a DMARC pass, or a display name naming one."""
LOOKALIKE_FLAG = "lookalike_domain"
"""A From: domain that reads like a local or well-known domain and is not it."""
DISPLAY_NAME_FLAG = "display_name_spoof"
"""A display name naming another address or domain, or a well-known name, than the From:."""
WELL_KNOWN_FLAG = "well_known_domain_claimed"
"""From: in a well-known domain that DMARC did not confirm."""

FLAG_VERSION = 2
"""Stored in a verdict (``flag_version``) whose flags include the three imitation flags
above; the message index adds them to rows stored before (:meth:`MessageIndex.add_flags`)."""
