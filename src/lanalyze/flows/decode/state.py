"""What the decoder remembers between datagrams, bounded so no peer can grow it without limit.

Per exporter address: its observation domains (NetFlow v9 source id / IPFIX observation domain
id, separately per version since the two are different streams); per domain: templates by id,
the sampling state from option records, and the sequence-number tracking (RFC 3954 §5.1,
RFC 7011 §3.1).

Everything here is created by the peers' datagrams (the source address can be forged), so it
is bounded twice. In counts: ``max_exporters`` exporters (the least recently seen is evicted),
``max_templates_per_exporter`` templates per exporter over all its domains and
:data:`MAX_DOMAINS` domains per exporter. In bytes (RFC 7011 §8 lets an exporter define up to
65,280 templates per domain, each of up to 65,535 fields, so counts alone bound nothing):
every exporter, domain and template is charged an estimate of its footprint (measured with
tracemalloc, rounded up: :data:`EXPORTER_BYTES`, :data:`DOMAIN_BYTES`,
:attr:`Template.footprint`) against ``memory_budget`` bytes per decoder (one per worker), of
which an exporter may hold at most ``exporter_share``. A template that does not fit evicts,
in this order: the same exporter's least recently defined or refreshed templates while it is
over its share or over its fair share of a full budget (budget / exporters holding
templates); else the least recently seen other exporter's. So one address flooding templates
only ever evicts its own, and an exporter that sent a datagram more recently than a flood of
new addresses keeps its templates. A template that still does not fit is refused. Every
refusal and eviction is counted in :class:`DecoderCounters`.
"""

from __future__ import annotations

import ipaddress
import json
from collections import OrderedDict
from dataclasses import dataclass, field

from lanalyze.flows.decode import ipfix, v9
from lanalyze.flows.decode.applications import ApplicationNames
from lanalyze.flows.decode.sampling import SamplingState
from lanalyze.flows.decode.templates import Template

MAX_DOMAINS = 256
STATE_VERSION = 1
EXPORTER_BYTES = 512
"""Charged per exporter: its ExporterState and dict entries (~350 bytes measured)."""
DOMAIN_BYTES = 1024
"""Charged per observation domain: DomainState and SamplingState (~700 bytes measured)."""
COMPILE_CACHE_SHARE = 8
"""1/8 of the budget is the compiled-template cache's, the rest the exporters'."""

TemplateKey = tuple[int, int, int]
"""(version, observation domain, template id) within one exporter."""


@dataclass
class DecoderCounters:
    """What the bounds cost, cumulative (the worker reports them on /metrics)."""

    datagrams_not_allowed: int = 0
    """Datagrams dropped unread: their source is outside ``flows.exporters_allowed``."""
    datagrams_capped: int = 0
    """Datagrams with more records than ``flows.max_records_per_datagram``: the rest dropped."""

    templates_refused: int = 0
    """Templates not stored: larger than an exporter's share, or no room could be made."""
    templates_evicted: int = 0
    """Templates dropped to make room (bytes or ``max_templates_per_exporter``)."""
    exporters_evicted: int = 0
    """Exporters forgotten whole (``max_exporters``, or their state alone over the budget)."""
    interface_counters: int = 0
    """sFlow generic interface counter records decoded."""
    interface_counters_dropped: int = 0
    """sFlow interface counter records over the per-batch bound (:mod:`.sflow`)."""
    application_names_learned: int = 0
    """Application names learned (or changed) from option records (:mod:`.applications`)."""
    application_names_refused: int = 0
    """Announced application names not kept: not printable UTF-8, or too long."""
    application_names_evicted: int = 0
    """Application names dropped to make room (``applications.MAX_NAMES``)."""


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
    lru: OrderedDict[TemplateKey, int] = field(default_factory=OrderedDict)
    """Templates held, least recently defined or refreshed first -> bytes charged."""
    template_bytes: int = 0
    nbytes: int = EXPORTER_BYTES
    """Bytes charged for this exporter: itself, its domains and its templates."""
    attached: bool = True
    """False once evicted: a batch may still hold it, but nothing more is charged or kept."""


class DecoderState:
    """All exporters' state with its bounds; :attr:`counters` counts what the bounds cost."""

    def __init__(
        self,
        max_templates_per_exporter: int,
        max_exporters: int,
        memory_budget: int = 64 * 2**20,
        exporter_share: int = 4 * 2**20,
    ) -> None:
        self.max_templates = max(1, max_templates_per_exporter)
        self.max_exporters = max(1, max_exporters)
        self.exporters: OrderedDict[str, ExporterState] = OrderedDict()
        self.counters = DecoderCounters()
        cache_budget = max(0, memory_budget) // COMPILE_CACHE_SHARE
        self.budget = max(0, memory_budget) - cache_budget
        """Bytes the exporters' state may be charged in all."""
        self.share = max(0, min(exporter_share, self.budget))
        self.used = 0
        """Bytes charged to all exporters (sum of their ``nbytes``)."""
        self.holders = 0
        """Exporters holding at least one template (the fair share divides among them)."""
        self.compiled = CompileCache(cache_budget)
        self.applications = ApplicationNames(self.counters)
        """Application names the exporters announced in option records."""

    # -- exporters and domains ---------------------------------------------------------------

    def exporter(self, name: str) -> ExporterState:
        state = self.exporters.get(name)
        if state is None:
            if len(self.exporters) >= self.max_exporters:
                self._forget(next(iter(self.exporters.values())))
            state = ExporterState(name, address16(name))
            if not self._room_for(EXPORTER_BYTES, state):
                # No room even after evicting every other exporter: decoded, never kept.
                state.attached = False
                return state
            self.exporters[name] = state
            self.used += state.nbytes
        else:
            self.exporters.move_to_end(name)
        return state

    def domain(self, exporter: ExporterState, version: int, domain: int) -> DomainState:
        key = (version, domain)
        state = exporter.domains.get(key)
        if state is None:
            if not exporter.attached:
                return DomainState(version, domain)  # for the rest of this datagram only
            if len(exporter.domains) >= MAX_DOMAINS:
                self._drop_domain(exporter, next(iter(exporter.domains)))
            if not self._room_for(DOMAIN_BYTES, exporter):
                return DomainState(version, domain)  # not kept: it holds no template either
            state = exporter.domains[key] = DomainState(version, domain)
            exporter.nbytes += DOMAIN_BYTES
            self.used += DOMAIN_BYTES
        return state

    def _drop_domain(self, exporter: ExporterState, key: tuple[int, int]) -> None:
        evicted = exporter.domains.pop(key)
        for template_id in list(evicted.templates):
            self._unhold(exporter, (key[0], key[1], template_id))
        evicted.templates.clear()
        exporter.nbytes -= DOMAIN_BYTES
        self.used -= DOMAIN_BYTES

    def _forget(self, exporter: ExporterState) -> None:
        """Drops an exporter and everything it holds."""
        del self.exporters[exporter.exporter]
        if exporter.template_count:
            self.holders -= 1
            self.counters.templates_evicted += exporter.template_count
        self.used -= exporter.nbytes
        exporter.attached = False
        self.counters.exporters_evicted += 1

    # -- templates ---------------------------------------------------------------------------

    def add_template(self, exporter: ExporterState, domain: DomainState, template: Template) -> int:
        """Stores (or replaces) a template; returns how many templates ``max_templates``
        evicted for it (the byte bounds count theirs in :attr:`counters`). A template that
        cannot be given room is refused (counted) and the domain keeps none under its id."""
        if (
            not exporter.attached
            or exporter.domains.get((domain.version, domain.domain)) is not domain
        ):
            # An evicted exporter still in a batch's hands, or a domain there was no room for.
            self.counters.templates_refused += 1
            return 0
        key = (domain.version, domain.domain, template.template_id)
        if template.template_id in domain.templates:
            self._unhold(exporter, key)
            del domain.templates[template.template_id]
        evicted = 0
        while exporter.template_count >= self.max_templates:
            if not self._evict_oldest(exporter):
                break
            evicted += 1
        self.counters.templates_evicted += evicted
        cost = template.footprint
        if cost > self.share:
            self.counters.templates_refused += 1
            return evicted
        # Over its own share, the exporter makes room from its own templates only.
        while exporter.template_bytes + cost > self.share and self._evict_oldest(exporter):
            self.counters.templates_evicted += 1
        if not self._room_for(cost, exporter, template=True):
            self.counters.templates_refused += 1
            return evicted
        domain.templates[template.template_id] = template
        exporter.lru[key] = cost
        if not exporter.template_count:
            self.holders += 1
        exporter.template_count += 1
        exporter.template_bytes += cost
        exporter.nbytes += cost
        self.used += cost
        return evicted

    def touch(self, exporter: ExporterState, domain: DomainState, template_id: int) -> None:
        """A template refreshed unchanged: the most recently defined of its exporter's."""
        key = (domain.version, domain.domain, template_id)
        if key in exporter.lru:
            exporter.lru.move_to_end(key)

    def remove_template(
        self, exporter: ExporterState, domain: DomainState, template_id: int
    ) -> None:
        if domain.templates.pop(template_id, None) is not None:
            self._unhold(exporter, (domain.version, domain.domain, template_id))

    def remove_all(self, exporter: ExporterState, domain: DomainState, options: bool) -> None:
        for template_id, template in list(domain.templates.items()):
            if template.options == options:
                self.remove_template(exporter, domain, template_id)

    def _unhold(self, exporter: ExporterState, key: TemplateKey) -> None:
        """Uncharges a template already taken out of (or about to leave) its domain."""
        cost = exporter.lru.pop(key)
        exporter.template_count -= 1
        exporter.template_bytes -= cost
        exporter.nbytes -= cost
        if exporter.attached:
            self.used -= cost
            if not exporter.template_count:
                self.holders -= 1

    def _evict_oldest(self, exporter: ExporterState) -> bool:
        """Drops the exporter's least recently defined or refreshed template, if any."""
        if not exporter.lru:
            return False
        version, domain_id, template_id = key = next(iter(exporter.lru))
        domain = exporter.domains[(version, domain_id)]
        del domain.templates[template_id]
        self._unhold(exporter, key)
        return True

    def _room_for(self, cost: int, exporter: ExporterState, template: bool = False) -> bool:
        """Evicts until ``cost`` more bytes fit the budget; False if they cannot.

        A template for an exporter at or over its fair share of the budget evicts that
        exporter's own templates; otherwise (and for an exporter's or a domain's own
        bookkeeping) the least recently seen other exporter gives up its oldest template, or
        is forgotten whole when it holds none; an exporter alone gives up its own."""
        while self.used + cost > self.budget:
            if template and exporter.template_count:
                fair = self.budget // max(1, self.holders)
                if exporter.template_bytes + cost > fair:
                    self._evict_oldest(exporter)
                    self.counters.templates_evicted += 1
                    continue
            victim = next((e for e in self.exporters.values() if e is not exporter), None)
            if victim is None:
                # Alone: it makes room from its own templates.
                if self._evict_oldest(exporter):
                    self.counters.templates_evicted += 1
                    continue
                return False
            if self._evict_oldest(victim):
                self.counters.templates_evicted += 1
            else:
                self._forget(victim)
        return True

    def save(self) -> bytes:
        exporters = []
        names = self.applications.by_exporter()
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
            entry: dict[str, object] = {"exporter": exporter.exporter, "domains": domains}
            if exporter.address in names:
                entry["applications"] = names[exporter.address]
            exporters.append(entry)
        return json.dumps({"version": STATE_VERSION, "exporters": exporters}).encode()

    def load(self, blob: bytes) -> None:
        """Replaces the state by a saved one; raises ValueError if it is not one of ours."""
        data = json.loads(blob)
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise ValueError("not a lanalyze template state (or an unknown version of it)")
        for exporter in self.exporters.values():
            exporter.attached = False
        self.exporters.clear()
        self.applications.clear()
        self.used = self.holders = 0
        for item in data["exporters"]:
            exporter = self.exporter(str(item["exporter"]))
            for app_id, name in item.get("applications", []):
                if isinstance(app_id, int) and isinstance(name, str):
                    self.applications.learn(exporter.address, app_id, name.encode(), restored=True)
            for d in item["domains"]:
                domain = self.domain(exporter, int(d["version"]), int(d["domain"]))
                domain.sampling = SamplingState.from_json(d.get("sampling", {}))
                for t in d["templates"]:
                    self.add_template(exporter, domain, self.compiled.restore(t))

    def template_total(self) -> int:
        return sum(e.template_count for e in self.exporters.values())


class CompileCache:
    """Compiled templates by their wire bytes, least recently used out, bounded in bytes.

    Exporters that send the same template share one compiled object (never mutated), so the
    bulk path reads their sets together; a refresh or a redefinition back and forth does not
    compile again. Holds at most ``budget`` bytes of :attr:`Template.footprint`."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0
        self._entries: OrderedDict[tuple[int, bytes, bool], Template] = OrderedDict()

    def compile(self, version: int, wire: bytes, options: bool) -> Template:
        """The template record ``wire`` compiled; PeerDataError for absurd templates."""
        key = (version, wire, options)
        template = self._entries.get(key)
        if template is not None:
            self._entries.move_to_end(key)
            return template
        template = compile_template(version, wire, options)
        self._keep(key, template)
        return template

    def restore(self, data: dict[str, object]) -> Template:
        """A saved template (no wire bytes: not shared, not cached)."""
        return Template.from_json(data)

    def _keep(self, key: tuple[int, bytes, bool], template: Template) -> None:
        cost = template.footprint
        if cost > self.budget:
            return
        while self.used + cost > self.budget:
            _, old = self._entries.popitem(last=False)
            self.used -= old.footprint
        self._entries[key] = template
        self.used += cost

    def __len__(self) -> int:
        return len(self._entries)


def compile_template(version: int, wire: bytes, options: bool) -> Template:
    """A template record, as sent (:func:`.v9.parse_template_set`,
    :func:`.ipfix.parse_template_set`), compiled. Raises PeerDataError for absurd ones."""
    parse = v9.template_fields if version == v9.VERSION else ipfix.template_fields
    template_id = int.from_bytes(wire[:2], "big")
    template = Template(template_id, parse(wire, options), options)
    template.wire = wire
    return template
