"""What the decoder remembers between datagrams, bounded so no peer can grow it without limit.

Per exporter address: its observation domains (NetFlow v9 source id / IPFIX observation domain
id, separately per version since the two are different streams); per domain: templates by id,
the sampling state from option records, and the sequence-number tracking (RFC 3954 §5.1,
RFC 7011 §3.1). Bounds: ``max_exporters`` exporters (the least recently seen is evicted),
``max_templates_per_exporter`` templates per exporter over all its domains (the oldest is
evicted) and :data:`MAX_DOMAINS` domains per exporter.
"""

from __future__ import annotations

import ipaddress
import json
from collections import OrderedDict
from dataclasses import dataclass, field

from lanalyze.flows.decode.sampling import SamplingState
from lanalyze.flows.decode.templates import Template

MAX_DOMAINS = 256
STATE_VERSION = 1


def address16(exporter: str) -> bytes:
    """The exporter's address as 16 bytes (IPv4-mapped for IPv4); zeros if not an address."""
    try:
        address = ipaddress.ip_address(exporter.split("%", 1)[0])
    except ValueError:
        return bytes(16)
    if address.version == 4:
        return b"\0" * 10 + b"\xff\xff" + address.packed
    return address.packed


@dataclass
class DomainState:
    version: int
    domain: int
    templates: dict[int, Template] = field(default_factory=dict)
    sampling: SamplingState = field(default_factory=SamplingState)
    # Sequence tracking (see .sequence): the last message's sequence and data record count
    # (None: no message yet, or its count unknown), the stream's convention (None: not yet
    # decided; v9 numbers packets, always the RFC's), the evidence streak (> 0 post-, < 0
    # pre-increment) and the gaps deferred under each convention while undecided.
    last_sequence: int = 0
    last_records: int | None = None
    post_increment: bool | None = None
    evidence: int = 0
    deferred_pre: int = 0
    deferred_post: int = 0

    def __post_init__(self) -> None:
        if self.version == 9:
            self.post_increment = False


@dataclass
class ExporterState:
    exporter: str
    address: bytes
    domains: OrderedDict[tuple[int, int], DomainState] = field(default_factory=OrderedDict)
    template_count: int = 0

    def domain(self, version: int, domain: int) -> DomainState:
        key = (version, domain)
        state = self.domains.get(key)
        if state is None:
            if len(self.domains) >= MAX_DOMAINS:
                _, evicted = self.domains.popitem(last=False)
                self.template_count -= len(evicted.templates)
            state = self.domains[key] = DomainState(version, domain)
        return state


class DecoderState:
    """All exporters' state with its bounds; :meth:`evictions` counts what the bounds cost."""

    def __init__(self, max_templates_per_exporter: int, max_exporters: int) -> None:
        self.max_templates = max(1, max_templates_per_exporter)
        self.max_exporters = max(1, max_exporters)
        self.exporters: OrderedDict[str, ExporterState] = OrderedDict()

    def exporter(self, name: str) -> ExporterState:
        state = self.exporters.get(name)
        if state is None:
            if len(self.exporters) >= self.max_exporters:
                self.exporters.popitem(last=False)
            state = self.exporters[name] = ExporterState(name, address16(name))
        else:
            self.exporters.move_to_end(name)
        return state

    def add_template(self, exporter: ExporterState, domain: DomainState, template: Template) -> int:
        """Stores (or refreshes) a template; returns how many templates were evicted for it."""
        previous = domain.templates.get(template.template_id)
        if previous is not None:
            domain.templates[template.template_id] = template
            return 0
        evicted = 0
        while exporter.template_count >= self.max_templates:
            if not self._evict_oldest(exporter):
                break
            evicted += 1
        domain.templates[template.template_id] = template
        exporter.template_count += 1
        return evicted

    def remove_template(
        self, exporter: ExporterState, domain: DomainState, template_id: int
    ) -> None:
        if domain.templates.pop(template_id, None) is not None:
            exporter.template_count -= 1

    def remove_all(self, exporter: ExporterState, domain: DomainState, options: bool) -> None:
        for template_id, template in list(domain.templates.items()):
            if template.options == options:
                self.remove_template(exporter, domain, template_id)

    @staticmethod
    def _evict_oldest(exporter: ExporterState) -> bool:
        for domain in exporter.domains.values():
            if domain.templates:
                domain.templates.pop(next(iter(domain.templates)))
                exporter.template_count -= 1
                return True
        return False

    def save(self) -> bytes:
        exporters = []
        # Sorted, so an unchanged state saves to the same bytes (callers skip rewriting it).
        for exporter in sorted(self.exporters.values(), key=lambda e: e.exporter):
            domains = [
                {
                    "version": d.version,
                    "domain": d.domain,
                    "templates": [t.to_json() for t in d.templates.values()],
                    "sampling": d.sampling.to_json(),
                }
                for d in exporter.domains.values()
            ]
            exporters.append({"exporter": exporter.exporter, "domains": domains})
        return json.dumps({"version": STATE_VERSION, "exporters": exporters}).encode()

    def load(self, blob: bytes) -> None:
        """Replaces the state by a saved one; raises ValueError if it is not one of ours."""
        data = json.loads(blob)
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise ValueError("not a lanalyze template state (or an unknown version of it)")
        self.exporters.clear()
        for item in data["exporters"]:
            exporter = self.exporter(str(item["exporter"]))
            for d in item["domains"]:
                domain = exporter.domain(int(d["version"]), int(d["domain"]))
                domain.sampling = SamplingState.from_json(d.get("sampling", {}))
                for t in d["templates"]:
                    self.add_template(exporter, domain, Template.from_json(t))

    def template_total(self) -> int:
        return sum(e.template_count for e in self.exporters.values())
