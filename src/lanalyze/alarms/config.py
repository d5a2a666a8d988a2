"""Settings of detection, the alarm store and notifications (section ``[alarms]``).

Trust: the operator's file, validated completely (networks, thresholds, URLs, paths).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal, get_args

from pydantic import AfterValidator, Field

from lanalyze.configbase import ListenAddress, Section
from lanalyze.mail.config import MailAddress

Severity = Literal["warning", "major", "critical"]
SEVERITIES: tuple[str, ...] = get_args(Severity)  # in rising order
Algorithm = Literal[
    "scan_horizontal",
    "scan_vertical",
    "flood",
    "syn_flood",
    "udp_reflection",
    "mass_mailer",
    "exporter_silent",
    "exporter_loss",
    "template_churn",
    "bad_network",
    "interface_utilisation",
    "host_deviation",
    "mail_user_volume",
    "mail_client_rejections",
    "mail_client_dmarc",
    "mail_forged_domain",
]
ALGORITHMS: tuple[str, ...] = get_args(Algorithm)  # one list: the Literal is the owner


def _check_network(value: str) -> str:
    ipaddress.ip_network(value, strict=False)
    return value


Network = Annotated[str, AfterValidator(_check_network)]

DEFAULT_INSIDE = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"]


class ScanConfig(Section):
    """Port scans (section ``[alarms.scan]``)."""

    enabled: bool = Field(default=True, description="Detect horizontal and vertical port scans.")
    window: int = Field(default=60, ge=5, le=86400, description="Seconds of the counting window.")
    horizontal_hosts: int = Field(
        default=100,
        ge=2,
        description="Distinct destination hosts one source reaches on one port (and protocol) "
        "in a window that make a horizontal scan.",
    )
    vertical_ports: int = Field(
        default=100,
        ge=2,
        description="Distinct destination ports one source reaches on one host in a window "
        "that make a vertical scan.",
    )
    allow: list[Network] = Field(
        default_factory=list, description="Sources never reported as scanners (CIDR)."
    )


class FloodConfig(Section):
    """Floods, SYN floods and UDP reflection toward one target (section ``[alarms.flood]``)."""

    enabled: bool = Field(default=True, description="Detect floods toward one destination.")
    window: int = Field(default=10, ge=1, le=86400, description="Seconds of the counting window.")
    pps: float = Field(
        default=100_000,
        gt=0,
        description="Packets per second (scaled by sampling) to one destination that make a "
        "flood, when also `baseline_factor` times its own baseline.",
    )
    fps: float = Field(
        default=20_000,
        gt=0,
        description="Flows per second to one destination that make a flood (same baseline rule).",
    )
    baseline_factor: float = Field(
        default=10,
        ge=1,
        description="A flood's rate must also exceed this many times the destination's own "
        "baseline (EWMA of its past windows).",
    )
    sketch_width: int = Field(
        default=131_072,
        ge=1024,
        le=16_777_216,
        description="Counters per row of the flood windows' and baseline's count-min "
        "sketches (2 rows; fixed memory whatever the number of destinations).",
    )
    syn_fps: float = Field(
        default=5_000,
        gt=0,
        description="SYN-only TCP flows (SYN without ACK) per second to one destination that "
        "make a SYN flood.",
    )
    reflection_bps: float = Field(
        default=12_500_000,
        gt=0,
        description="Bytes per second (scaled) of large UDP flows from reflector ports to one "
        "destination that make a UDP reflection attack.",
    )
    reflection_ports: list[int] = Field(
        default_factory=lambda: [53, 123, 1900, 11211, 19],
        description="UDP source ports of amplifying services (DNS, NTP, SSDP, memcached, chargen).",
    )
    reflection_min_packet: int = Field(
        default=400,
        ge=0,
        description="Average bytes per packet of a flow for it to count as an amplified answer.",
    )
    allow: list[Network] = Field(
        default_factory=list, description="Destinations never reported as flood targets (CIDR)."
    )


class MassMailerConfig(Section):
    """Inside hosts mailing many outside servers (section ``[alarms.mass_mailer]``)."""

    enabled: bool = Field(default=True, description="Detect mass mailers.")
    window: int = Field(default=600, ge=10, le=86400, description="Seconds of the window.")
    hosts: int = Field(
        default=50,
        ge=2,
        description="Distinct outside hosts an inside host opens TCP/25 to in a window that "
        "make a mass mailer.",
    )
    mail_servers: list[Network] = Field(
        default_factory=list,
        description="Inside hosts that are mail servers (CIDR); the addresses lanalyze's own "
        "SMTP listeners bind are added.",
    )


class ExporterHealthConfig(Section):
    """Exporter health (section ``[alarms.exporter]``)."""

    enabled: bool = Field(
        default=True, description="Detect exporters that went silent or lose export packets."
    )
    silent_after: int = Field(
        default=300,
        ge=1,
        description="Seconds without a flow from an exporter heard before that raise an alarm.",
    )
    loss_percent: float = Field(
        default=5,
        gt=0,
        le=100,
        description="Export packets lost (sequence-number gaps) in % of those sent, over "
        "`loss_window`, that raise an alarm.",
    )
    loss_window: int = Field(
        default=300, ge=10, le=86400, description="Seconds the loss is measured over."
    )
    loss_min_packets: int = Field(
        default=100,
        ge=1,
        description="Export packets (received + lost) in the window below which no loss "
        "alarm is raised (a few packets say little).",
    )


class TemplateChurnConfig(Section):
    """Exporters redefining their templates (section ``[alarms.template_churn]``)."""

    enabled: bool = Field(
        default=True,
        description="Detect exporters that keep redefining their NetFlow v9/IPFIX templates.",
    )
    changes: int = Field(
        default=20,
        ge=1,
        description="Template redefinitions (an id sent again with other fields; a refresh "
        "with the same fields does not count) by one exporter in `window` that raise an alarm.",
    )
    window: int = Field(
        default=300, ge=10, le=86400, description="Seconds the redefinitions are counted over."
    )
    allow: list[Network] = Field(
        default_factory=list,
        description="Exporters (addresses or CIDR networks) never alarmed for template churn.",
    )


class Route(Section):
    """Which alarms a channel gets."""

    min_severity: Severity = Field(default="warning", description="Lowest severity sent.")
    algorithms: list[Algorithm] = Field(
        default_factory=list, description="Only these algorithms (empty: all)."
    )


class WebhookConfig(Route):
    url: str = Field(
        pattern=r"^https?://", max_length=2000, description="URL the JSON is POSTed to."
    )
    secret_file: Path | None = Field(
        default=None,
        description="File holding the HMAC-SHA256 key; the body's signature goes in the "
        "`X-Lanalyze-Signature: sha256=<hex>` header.",
    )
    timeout: float = Field(default=10, gt=0, le=120, description="Seconds per attempt.")
    attempts: int = Field(
        default=5, ge=1, le=20, description="Attempts, 1 s apart and doubling, before giving up."
    )


class SyslogConfig(Route):
    server: ListenAddress = Field(description="`HOST:PORT` of the syslog server (UDP).")
    facility: int = Field(default=16, ge=0, le=23, description="Facility (16: local0).")


class EmailConfig(Route):
    recipients: list[MailAddress] = Field(
        min_length=1,
        max_length=100,
        description="Addresses each notice is mailed to (through `[mailer]`: lanalyze's own "
        "mail server, or `mailer.relay_host`).",
    )


class NotifyConfig(Section):
    """Notification channels and their limits (section ``[alarms.notify]``)."""

    max_per_minute: int = Field(
        default=20,
        ge=1,
        description="Notifications one channel sends a minute at most; more are counted and "
        "dropped.",
    )
    queue: int = Field(
        default=1000, ge=1, description="Notifications waiting to be sent; more are dropped."
    )
    on_close: bool = Field(default=True, description="Also notify when an alarm closes.")
    webhooks: list[WebhookConfig] = Field(default_factory=list, description="Webhook channels.")
    syslog: list[SyslogConfig] = Field(
        default_factory=list, description="Syslog channels (RFC 5424 over UDP)."
    )
    email: list[EmailConfig] = Field(
        default_factory=list,
        description="E-mail channels: one mail per notice (HTML with the alarm's values as an "
        "inline PNG, and plain text).",
    )


class DeviationConfig(Section):
    """A host's traffic far above its own history (section ``[alarms.deviation]``)."""

    enabled: bool = Field(
        default=False,
        description="Compare each host's bytes this hour with its EWMA for the same hour of "
        "the week (off by default: it costs two more passes over every batch).",
    )
    factor: float = Field(
        default=10, ge=1, description="How many times its baseline a host's hour must reach."
    )
    min_bytes: int = Field(
        default=1_000_000_000,
        ge=0,
        description="Bytes (scaled) a host must move in the hour as well: small hosts are noise.",
    )
    weeks: int = Field(
        default=2,
        ge=1,
        description="Weeks an hour of the week must have been learnt before it is judged.",
    )
    sketch_width: int = Field(
        default=4096,
        ge=256,
        le=1_048_576,
        description="Counters per row of the per-host sketches (2 rows; the baselines keep "
        "168 hours of them: 168 x 2 x width x 8 bytes, 11 MiB at 4096). Hosts sharing "
        "counters with busier ones get a higher baseline (fewer alarms, never more).",
    )


class InterfaceConfig(Section):
    """Interface utilisation against the SNMP speed (section ``[alarms.interface]``)."""

    enabled: bool = Field(
        default=True,
        description="Compare interfaces' traffic with their SNMP speed (needs "
        "`flows.snmp`: without `interfaces.json` nothing is done).",
    )
    percent: float = Field(
        default=90, gt=0, le=1000, description="Utilisation in % of the speed that alarms."
    )
    minutes: int = Field(
        default=5,
        ge=1,
        le=1440,
        description="Minutes the utilisation is averaged over (checked once a minute).",
    )


class BadNetworksConfig(Section):
    """Traffic to or from listed networks (section ``[alarms.bad_networks]``)."""

    file: Path | None = Field(
        default=None,
        description="File of CIDRs, one a line (`#` comments; a list like Spamhaus DROP "
        "works as it is), reloaded when it changes. None: off.",
    )
    max_networks: int = Field(
        default=1_000_000,
        ge=1,
        description="CIDRs read from the file at most (the rest ignored, logged).",
    )


class MailWatchConfig(Section):
    """The mail side (section ``[alarms.mail]``), from the message index."""

    enabled: bool = Field(default=True, description="Watch the mail index for abuse.")
    interval: float = Field(
        default=60, ge=1, le=3600, description="Seconds between looks at the message index."
    )
    window: int = Field(
        default=3600, ge=60, le=86400, description="Seconds the counts below are taken over."
    )
    user_messages: int = Field(
        default=200,
        ge=1,
        description="Messages one submission user sends in a window: a stolen password?",
    )
    user_recipients: int = Field(
        default=1000, ge=1, description="Recipients one submission user sends to in a window."
    )
    client_rejections: int = Field(
        default=100, ge=1, description="Rejections one client address collects in a window."
    )
    client_dmarc_failures: int = Field(
        default=20, ge=1, description="Accepted messages failing DMARC from one client address."
    )
    forged_domain: int = Field(
        default=20,
        ge=1,
        description="Messages whose From: claims one of our domains without a DMARC pass, "
        "per domain in a window: a burst forging it.",
    )


class AlarmsConfig(Section):
    enabled: bool = Field(
        default=True, description="Run detection beside the flow collector (serve, collect)."
    )
    interval: float = Field(
        default=1.0, gt=0, le=60, description="Seconds between looks for newly stored flows."
    )
    close_after: int = Field(
        default=300, ge=1, description="Seconds without a finding after which an alarm closes."
    )
    inside: list[Network] = Field(
        default_factory=lambda: list(DEFAULT_INSIDE),
        description="Our networks (CIDR); `mail.trusted_networks` are added.",
    )
    allow: list[Network] = Field(
        default_factory=list, description="Addresses never the subject of an alarm (CIDR)."
    )
    state_memory: int = Field(
        default=64 * 2**20,
        ge=2**20,
        description="Bytes the detectors' windows and baselines hold at most (all together).",
    )
    snapshot_interval: float = Field(
        default=30, gt=0, le=3600, description="Seconds between snapshots of detector state."
    )
    scan: ScanConfig = Field(default_factory=ScanConfig)
    flood: FloodConfig = Field(default_factory=FloodConfig)
    mass_mailer: MassMailerConfig = Field(default_factory=MassMailerConfig)
    exporter: ExporterHealthConfig = Field(default_factory=ExporterHealthConfig)
    template_churn: TemplateChurnConfig = Field(default_factory=TemplateChurnConfig)
    mail: MailWatchConfig = Field(default_factory=MailWatchConfig)
    bad_networks: BadNetworksConfig = Field(default_factory=BadNetworksConfig)
    interface: InterfaceConfig = Field(default_factory=InterfaceConfig)
    deviation: DeviationConfig = Field(default_factory=DeviationConfig)
    notify: NotifyConfig = Field(default_factory=NotifyConfig)
