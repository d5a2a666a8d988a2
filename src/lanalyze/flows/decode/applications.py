"""Application names an exporter announces in options data (its "option table").

Exporters that classify traffic (Cisco NBAR, and others following RFC 6759) export flows with
an application id (IE 95 applicationId: one byte classification engine id, then the
selector; RFC 6759 §4) and, in options data records, the table of the names behind those ids:
applicationId (IE 95, a scope field in IPFIX, an ordinary one in NetFlow v9's NBAR option
template) with applicationName (IE 96, RFC 6759 §5.1; NetFlow v9 sends it fixed-length,
NUL-padded). The ids are the exporter's own (engine 13, "Cisco NBAR2", numbers differ between
releases), so names are kept per exporter address: the enricher names a flow's ``app_id``
from its exporter's table (:mod:`lanalyze.flows.enrich`).

Trust: everything here is the peer's (the source address can be forged). A name is kept only
when it is valid UTF-8, printable, and at most :data:`MAX_NAME` characters (else counted and
the record reported as a problem naming the peer); the table holds at most
:data:`MAX_NAMES` names over all exporters (least recently announced dropped first), so a
flood of announcements costs a bounded ~:data:`MAX_NAMES` x 300 bytes per decoder.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lanalyze.flows.decode.state import DecoderCounters

MAX_NAMES = 16384
"""Names kept per decoder (one per worker), over all exporters. NBAR2 knows ~1,500
applications, so ten routers' tables fit."""
MAX_NAME = 128
"""Characters of a kept name (the enrichment names' bound, ``flows.enrich.config.MAX_LABEL``)."""
APPLICATION_ID = 95
APPLICATION_NAME = 96


def name_of(raw: bytes) -> str | None:
    """An announced name, or None when it is not one we keep (empty, not UTF-8, not
    printable, too long). NetFlow v9 pads fixed-length strings with NULs: cut there."""
    text_bytes = raw.split(b"\0", 1)[0].strip()
    if not text_bytes:
        return None
    try:
        text = text_bytes.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if len(text) > MAX_NAME or not text.isprintable():
        return None
    return text


class ApplicationNames:
    """(exporter address, application id) -> name, bounded; :attr:`version` changes whenever a
    name is added, changed or dropped, so a reader can keep answers until then."""

    def __init__(self, counters: DecoderCounters, limit: int = MAX_NAMES) -> None:
        self.limit = max(1, limit)
        self.counters = counters
        """The decoder's counters (``application_names_*``), reported on /metrics."""
        self._names: OrderedDict[tuple[bytes, int], str] = OrderedDict()
        self.version = 0

    def __len__(self) -> int:
        return len(self._names)

    def learn(self, exporter: bytes, app_id: int, raw_name: bytes, restored: bool = False) -> bool:
        """Keep the name ``exporter`` announced for ``app_id``; False when it was refused.
        ``restored``: read back from the saved state (checked the same, not counted)."""
        name = name_of(raw_name)
        if name is None:
            if not restored:
                self.counters.application_names_refused += 1
            return False
        key = (exporter, app_id)
        if self._names.get(key) == name:
            self._names.move_to_end(key)
            return True
        if key not in self._names and len(self._names) >= self.limit:
            self._names.popitem(last=False)
            if not restored:
                self.counters.application_names_evicted += 1
        self._names[key] = name
        self._names.move_to_end(key)
        if not restored:
            self.counters.application_names_learned += 1
        self.version += 1
        return True

    def get(self, exporter: bytes, app_id: int) -> str | None:
        return self._names.get((exporter, app_id))

    def by_exporter(self) -> dict[bytes, list[list[int | str]]]:
        """Every exporter's names as ``[[app_id, name], ...]``, oldest first (for the saved
        decoder state, so a restart does not leave flows unnamed until the next table)."""
        grouped: dict[bytes, list[list[int | str]]] = {}
        for (exporter, app_id), name in self._names.items():
            grouped.setdefault(exporter, []).append([app_id, name])
        return grouped

    def clear(self) -> None:
        self._names.clear()
        self.version += 1
