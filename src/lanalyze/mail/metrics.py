"""Prometheus counters of the mail pipeline, registered in :data:`lanalyze.metrics.REGISTRY`.

Labels are bounded on purpose: the listener (``mta``, ``submission``, ``smtps``), the
command verb (a fixed set plus ``unknown``), the rejection reason (a fixed vocabulary from
the protocol core and the shell) and the delivery result. No peer address label: the set of
peers is unbounded, so per-peer detail goes to the (rate-limited) log instead.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from lanalyze.metrics import REGISTRY

CONNECTIONS = Counter(
    "lanalyze_smtp_connections",
    "SMTP connections accepted, by listener and outcome (served, refused by a limit).",
    ["listener", "outcome"],
    registry=REGISTRY,
)
OPEN_CONNECTIONS = Gauge(
    "lanalyze_smtp_open_connections", "SMTP connections open now.", ["listener"], registry=REGISTRY
)
COMMANDS = Counter(
    "lanalyze_smtp_commands", "SMTP commands received.", ["listener", "command"], registry=REGISTRY
)
REJECTIONS = Counter(
    "lanalyze_smtp_rejections",
    "Replies refusing something, by reason (relay_denied, bare_newline, too_big, ...).",
    ["listener", "reason"],
    registry=REGISTRY,
)
WRITE_STALLS = Counter(
    "lanalyze_smtp_write_stalls",
    "Times a client's unread replies reached mail.write_buffer and its input stopped being "
    "read (flow control).",
    ["listener"],
    registry=REGISTRY,
)
AUTH_THROTTLED = Counter(
    "lanalyze_smtp_auth_throttled",
    "AUTH attempts refused unchecked by the failure limits, by limit (client, global).",
    ["listener", "limit"],
    registry=REGISTRY,
)
MESSAGES = Counter(
    "lanalyze_smtp_messages_accepted",
    "Messages accepted durably (queued, 250 sent).",
    ["listener"],
    registry=REGISTRY,
)
BYTES = Counter(
    "lanalyze_smtp_message_bytes", "Bytes of accepted messages.", ["listener"], registry=REGISTRY
)
DELIVERIES = Counter(
    "lanalyze_mail_deliveries",
    "Delivery attempts by result (delivered, deferred, hold, corrupt).",
    ["agent", "result"],
    registry=REGISTRY,
)
COMMIT_BATCHES = Counter(
    "lanalyze_mail_commit_batches",
    "Group-commit batches (one directory fsync each) written by cleanup.",
    registry=REGISTRY,
)
QUEUE_ADMIN = Counter(
    "lanalyze_mail_queue_admin",
    "Queue administration by action (hold, release, requeue, flush, delete) and outcome (done, "
    "invalid, not_found, corrupt, failed); counted in the process that acted (the console's "
    "in `lanalyze serve`, a CLI command's in its own).",
    ["action", "outcome"],
    registry=REGISTRY,
)
PICKUPS = Counter(
    "lanalyze_mail_pickups",
    "Locally generated messages (DSNs, notifications) queued by pickup, by result (queued, "
    "failed).",
    ["result"],
    registry=REGISTRY,
)
DSNS = Counter(
    "lanalyze_mail_dsns",
    "Delivery status notifications queued, by kind (failure, delay, success, double_bounce).",
    ["kind"],
    registry=REGISTRY,
)
DSN_SUPPRESSED = Counter(
    "lanalyze_mail_dsns_suppressed",
    "Notifications not sent, by reason (notify: the recipient's NOTIFY or mail.bounce."
    "delay_warning said no; null_sender: no bounce for a bounce; double_bounce_failed: a failed "
    "double bounce, dropped and logged; already_sent: one delay warning or double bounce per "
    "message).",
    ["reason"],
    registry=REGISTRY,
)
SRS = Counter(
    "lanalyze_mail_srs",
    "SRS (Sender Rewriting Scheme) operations by result (rewritten: a forwarded message's "
    "sender; reversed: a bounce to an SRS address sent on to the original sender; invalid: an "
    "SRS address with a bad hash, an expired timestamp or bad syntax, refused).",
    ["result"],
    registry=REGISTRY,
)
OUTBOUND_RECIPIENTS = Counter(
    "lanalyze_mail_outbound_recipients",
    "Outbound recipient results (delivered, deferred, bounced, expired) by destination class "
    "(mx, transport, relay_host).",
    ["result", "destination"],
    registry=REGISTRY,
)
OUTBOUND_CONNECTIONS = Counter(
    "lanalyze_mail_outbound_connections",
    "Outbound SMTP sessions by outcome (opened, tls, failed: no host of the destination "
    "worked) and destination class.",
    ["outcome", "destination"],
    registry=REGISTRY,
)
OUTBOUND_STATE_BATCHES = Counter(
    "lanalyze_mail_outbound_state_batches",
    "Group commits of outbound per-recipient state (queue files finished or rewritten after "
    "a transaction; one directory fsync per batch).",
    registry=REGISTRY,
)
BOUNCE_REPORTS = Counter(
    "lanalyze_mail_bounce_reports",
    "Recipient results handed to the bouncer, by action (failed, delayed, delivered).",
    ["action"],
    registry=REGISTRY,
)
QUEUE_MESSAGES = Gauge(
    "lanalyze_mail_queue_messages",
    "Messages in the queue by state (active, deferred, hold, corrupt), counted at scrape.",
    ["state"],
    registry=REGISTRY,
)
QUEUE_OLDEST = Gauge(
    "lanalyze_mail_queue_oldest_seconds",
    "Age of the oldest message the queue manager is retrying (0: none).",
    registry=REGISTRY,
)
DELIVERY_LATENCY = Histogram(
    "lanalyze_mail_delivery_latency_seconds",
    "Seconds from acceptance to the final outbound result of a message.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400),
    registry=REGISTRY,
)
