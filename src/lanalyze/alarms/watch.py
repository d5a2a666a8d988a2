"""Detection on counters rather than flows *(core)*: exporters' export-packet loss and template
churn (from the collector's ``exporters.json``) and the mail side (from the message index's
activity).

Both take plain values and return findings; :mod:`lanalyze.alarms.engine` reads the file and
the index.

- **Export loss** (per exporter address, its observation domains summed): the sequence-number
  gaps the decoder counted (``flows/decode/sequence.py``) against the packets received, over
  ``alarms.exporter.loss_window``: loss % = gaps / (packets + gaps). Samples are kept at most
  every tenth of the window (11 per exporter), for at most 4096 exporters; counters that went
  down (a collector restart) start the exporter's history afresh.
- **Template churn** (per exporter address, domains summed): the template redefinitions the
  decoder counted (``template_changes``: an id sent again with other fields; a same-fields
  refresh is not one), over ``alarms.template_churn.window``, kept like the loss samples; an
  exporter first seen counts from the collector's start when that is inside the window (the
  counters are cumulative since then). Exporters in ``alarms.template_churn.allow`` are
  skipped.
- **Mail** (over ``alarms.mail.window``): a submission user over ``user_messages`` messages or
  ``user_recipients`` recipients (a stolen password), a client address over
  ``client_rejections`` rejections or ``client_dmarc_failures`` DMARC failures, and over
  ``forged_domain`` messages whose From: claims one of our domains without a DMARC pass, per
  domain.

Trust: the counters are ours; user names, addresses and From: headers in the index are the
peers' (stored as they came, shown escaped).
"""

from __future__ import annotations

import ipaddress
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from email.utils import parseaddr
from typing import Any

from lanalyze.alarms.config import ExporterHealthConfig, MailWatchConfig, TemplateChurnConfig
from lanalyze.alarms.detect import Finding

MAX_EXPORTERS = 4096
SAMPLES = 10


class ExportLoss:
    def __init__(self, config: ExporterHealthConfig) -> None:
        self.config = config
        self.history: dict[str, deque[tuple[int, int, int]]] = {}

    def observe(self, now_ms: int, rows: Iterable[Mapping[str, Any]]) -> list[Finding]:
        """One look at the exporters' cumulative counters."""
        cfg = self.config
        window = cfg.loss_window * 1000
        totals: dict[str, list[int]] = {}
        for row in rows:
            name = str(row.get("exporter", ""))
            if not name or name == "overflow":
                continue
            total = totals.setdefault(name, [0, 0])
            total[0] += int(row.get("packets", 0))
            total[1] += int(row.get("sequence_gaps", 0))
        out = []
        for name, (packets, gaps) in totals.items():
            history = self.history.pop(name, None) or deque()
            self.history[name] = history
            if history and (packets < history[-1][1] or gaps < history[-1][2]):
                history.clear()
            if not history or now_ms - history[-1][0] >= window // SAMPLES:
                history.append((now_ms, packets, gaps))
            while len(history) > 1 and now_ms - history[1][0] >= window:
                history.popleft()
            first = history[0]
            sent = (packets - first[1]) + (gaps - first[2])
            lost = gaps - first[2]
            if sent < cfg.loss_min_packets or not lost:
                continue
            percent = 100 * lost / sent
            if percent >= cfg.loss_percent:
                out.append(
                    Finding(
                        "exporter_loss",
                        name,
                        percent,
                        cfg.loss_percent,
                        "% export packets lost",
                        {"lost_packets": lost, "received_packets": packets - first[1]},
                        "",
                        first[0],
                        name,
                    )
                )
        while len(self.history) > MAX_EXPORTERS:
            self.history.pop(next(iter(self.history)))
        return out


class TemplateChurn:
    def __init__(self, config: TemplateChurnConfig) -> None:
        self.config = config
        self.allow = [ipaddress.ip_network(n, strict=False) for n in config.allow]
        self.history: dict[str, deque[tuple[int, int]]] = {}

    def _allowed(self, name: str) -> bool:
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            return False
        return any(address in network for network in self.allow)

    def observe(
        self, now_ms: int, rows: Iterable[Mapping[str, Any]], started_ms: int = 0
    ) -> list[Finding]:
        """One look at the exporters' cumulative ``template_changes`` counters, counted since
        the collector started at ``started_ms`` (0: unknown)."""
        cfg = self.config
        window = cfg.window * 1000
        totals: dict[str, int] = {}
        for row in rows:
            name = str(row.get("exporter", ""))
            if not name or name == "overflow":
                continue
            totals[name] = totals.get(name, 0) + int(row.get("template_changes", 0))
        out = []
        for name, changes in totals.items():
            history = self.history.pop(name, None) or deque()
            self.history[name] = history
            if history and changes < history[-1][1]:
                history.clear()  # counters went down: a collector restart
            if not history and 0 < started_ms <= now_ms and now_ms - started_ms < window:
                # All of an exporter's changes since the collector started are in the window
                # (a burst before our first look counts); otherwise only what follows does.
                history.append((started_ms, 0))
            if not history or now_ms - history[-1][0] >= window // SAMPLES:
                history.append((now_ms, changes))
            while len(history) > 1 and now_ms - history[1][0] >= window:
                history.popleft()
            first = history[0]
            churn = changes - first[1]
            if churn >= cfg.changes and not self._allowed(name):
                out.append(
                    Finding(
                        "template_churn",
                        name,
                        churn,
                        cfg.changes,
                        "template redefinitions",
                        {"template_changes": churn, "window_seconds": cfg.window},
                        "",
                        first[0],
                        name,
                    )
                )
        while len(self.history) > MAX_EXPORTERS:
            self.history.pop(next(iter(self.history)))
        return out


def mail_findings(
    activity: Mapping[str, Sequence[Mapping[str, Any]]], config: MailWatchConfig, since_ms: int
) -> list[Finding]:
    """Findings from :meth:`MessageIndex.activity` over the window starting ``since_ms``."""
    out = []
    for row in activity.get("users", []):
        user = str(row["user"])
        messages, recipients = int(row["messages"] or 0), int(row["recipients"] or 0)
        ratio = max(messages / config.user_messages, recipients / config.user_recipients)
        if ratio >= 1:
            out.append(
                Finding(
                    "mail_user_volume",
                    user,
                    ratio,
                    1.0,
                    "x threshold",
                    {"messages": messages, "recipients": recipients},
                    "",
                    since_ms,
                )
            )
    checks = (
        ("rejected_clients", "mail_client_rejections", config.client_rejections, "rejections"),
        ("dmarc_failed_clients", "mail_client_dmarc", config.client_dmarc_failures, "messages"),
    )
    for key, algorithm, threshold, unit in checks:
        for row in activity.get(key, []):
            count = int(row["n"])
            if count >= threshold:
                client = str(row["client"])
                out.append(
                    Finding(algorithm, client, count, threshold, unit, {}, "", since_ms, client)
                )
    domains: dict[str, dict[str, Any]] = {}
    for row in activity.get("local_claims", []):
        header = str(row["header_from"])
        domain = parseaddr(header)[1].rpartition("@")[2].lower() or header[:200]
        entry = domains.setdefault(domain, {"count": 0, "from": []})
        entry["count"] += int(row["n"])
        if len(entry["from"]) < 10:
            entry["from"].append(header[:200])
    for domain, entry in domains.items():
        if entry["count"] >= config.forged_domain:
            out.append(
                Finding(
                    "mail_forged_domain",
                    domain,
                    entry["count"],
                    config.forged_domain,
                    "messages",
                    {"from_headers": entry["from"]},
                    "",
                    since_ms,
                )
            )
    return out
