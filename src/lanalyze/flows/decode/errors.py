"""Who is at fault: :class:`PeerDataError` is the exporter's bad bytes, anything else is ours.

The decoders raise :class:`PeerDataError` internally while walking a datagram; the
:class:`~lanalyze.flows.decode.FlowDecoder` catches exactly that type, counts it as a decode
error of the exporter, records a :class:`~lanalyze.flows.decode.DecodeProblem` and drops the
datagram (or only the bad set). Any other exception escaping the decoder is a bug of ours.
"""

from __future__ import annotations


class PeerDataError(ValueError):
    """The export packet is malformed; the message says how (for the exporter's operator)."""
