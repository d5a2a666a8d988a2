"""Lost-data accounting from export sequence numbers, with the exporter's convention detected.

NetFlow v9 (RFC 3954 §5.1) numbers export packets: the next packet's sequence is this one's
+ 1. IPFIX (RFC 7011 §3.1) numbers data records: a message's sequence is the count sent in
its stream *before* it, so the next is ``sequence + records`` (pre-increment). Some exporters
(softflowd's IPFIX, measured) send the count *including* the message's own records, so a
message should carry ``previous + records`` (post-increment); read with the RFC rule, every
change of the record count looks like a loss. The convention is detected per stream:

* A message whose record count equals its predecessor's fits both conventions equally (the
  gap is the same under both) and is accounted at once.
* Otherwise the message is evidence for a convention when it fits it exactly and not the
  other. :data:`DECIDING_MESSAGES` consecutive such messages for the same convention decide
  the stream for good (a message of the other convention, or fitting neither, restarts the
  count). A real loss would have to equal the record-count change that many times in a row
  to fake the other convention.
* Until the stream is decided, a message's gap is computed under both conventions: the
  smaller (loss under either reading) is counted at once, the difference is deferred per
  convention and counted when (if) that convention is decided. So a loss is never dropped in
  a decided stream, and never over-counted while undecided.

Unknown record counts (a malformed message) or no predecessor: no gap, no evidence for the
next message. Gaps of 2**31 or more (modulo 2**32) are reordering or a restart: not counted.
The walk (:mod:`.templated`) applies :func:`account` per message; the bulk path
(:mod:`.bulk`) reproduces it with numpy for decided streams and for undecided streams whose
record count does not change, and leaves any other message to the walk. Hand-written: no
library tracks export sequence numbers.
"""

from __future__ import annotations

from lanalyze.flows.decode.state import DomainState

DECIDING_MESSAGES = 3
MODULO = 2**32


def clipped_gap(difference: int) -> int:
    """A forward gap in records (or packets); 0 for a backward or wrapped-around jump."""
    gap = difference % MODULO
    return gap if gap < MODULO // 2 else 0


def account(domain: DomainState, sequence: int, records: int | None) -> int:
    """Applies one message (``records`` data records, None if unknown; 1 for a v9 packet)
    to the stream's state; returns the lost records (packets) to count now."""
    previous, previous_records = domain.last_sequence, domain.last_records
    domain.last_sequence = sequence
    domain.last_records = records
    if previous_records is None or records is None:
        return 0
    pre = clipped_gap(sequence - previous - previous_records)
    post = clipped_gap(sequence - previous - records)
    if domain.post_increment is not None:
        return post if domain.post_increment else pre
    if records == previous_records:
        return pre
    fits_pre = (sequence - previous - previous_records) % MODULO == 0
    fits_post = (sequence - previous - records) % MODULO == 0
    if fits_post and not fits_pre:
        domain.evidence = max(domain.evidence, 0) + 1
    elif fits_pre and not fits_post:
        domain.evidence = min(domain.evidence, 0) - 1
    else:
        domain.evidence = 0
    certain = min(pre, post)
    domain.deferred_pre += pre - certain
    domain.deferred_post += post - certain
    if abs(domain.evidence) < DECIDING_MESSAGES:
        return certain
    domain.post_increment = domain.evidence > 0
    deferred = domain.deferred_post if domain.post_increment else domain.deferred_pre
    domain.deferred_pre = domain.deferred_post = 0
    return certain + deferred
