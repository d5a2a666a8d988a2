"""Settings of flow enrichment: ``[flows.enrich]`` and ``[flows.networks]``.

Trust: the configuration is the administrator's; names are still checked for length and
printable characters, since they end up in reports, CSV and the console.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from lanalyze.configbase import Section

MAX_LABEL = 128
"""Characters of a configured name, role or provider."""


def check_label(value: str) -> str:
    if len(value) > MAX_LABEL or not value.isprintable():
        raise ValueError(f"{value[:40]!r}: at most {MAX_LABEL} printable characters")
    return value


def _networks(values: list[str]) -> list[str]:
    normal = []
    for text in values:
        try:
            normal.append(str(ipaddress.ip_network(text, strict=False)))
        except ValueError:
            raise ValueError(f"{text!r} is not an IP network (address/prefix)") from None
    return normal


class NetworkAttributes(Section):
    """Attributes of one network (a table in ``[flows.networks]``)."""

    name: str = Field(default="", description='Name of the network, e.g. "office".')
    role: str = Field(
        default="", description='Role of the network, e.g. "inside", "dmz", "customer".'
    )

    @field_validator("name", "role")
    @classmethod
    def _label(cls, value: str) -> str:
        return check_label(value)


class ExporterRule(Section):
    """Names an exporter (an entry of ``[[flows.enrich.exporters]]``)."""

    match: list[str] = Field(
        description='Exporter addresses or networks the rule applies to, e.g. ["192.0.2.1"].'
    )
    name: str = Field(description="Name stored with the exporter's flows (`exportername`).")

    @field_validator("match")
    @classmethod
    def _match(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("match names no exporter")
        return _networks(value)

    @field_validator("name")
    @classmethod
    def _label(cls, value: str) -> str:
        return check_label(value)


class InterfaceRule(Section):
    """Classifies interfaces (an entry of ``[[flows.enrich.interfaces]]``): the first rule
    whose conditions all hold gives the interface its name, boundary and provider."""

    exporter: list[str] = Field(
        default_factory=list,
        description="Exporter addresses or networks the rule applies to (empty: any).",
    )
    if_index: list[int] = Field(
        default_factory=list, description="ifIndex values the rule applies to (empty: any)."
    )
    if_name: str | None = Field(
        default=None,
        description="Regular expression searched in the interface's SNMP name (unset: any; "
        "an interface with no SNMP name never matches a rule that sets it).",
    )
    name: str | None = Field(
        default=None, description="Interface name stored (unset: the SNMP name, if polled)."
    )
    boundary: Literal["", "internal", "external"] = Field(
        default="", description='Boundary of the interface: "internal" or "external".'
    )
    provider: str = Field(
        default="", description='Provider behind the interface, e.g. "transit-a".'
    )

    @field_validator("exporter")
    @classmethod
    def _exporter(cls, value: list[str]) -> list[str]:
        return _networks(value)

    @field_validator("if_name")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if len(value) > 256:
            raise ValueError("if_name: at most 256 characters")
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"if_name {value!r} is not a regular expression: {exc}") from None
        return value

    @field_validator("name", "provider")
    @classmethod
    def _label(cls, value: str | None) -> str | None:
        return None if value is None else check_label(value)

    @field_validator("if_index")
    @classmethod
    def _indexes(cls, value: list[int]) -> list[int]:
        if any(not 0 <= index <= 2**32 - 1 for index in value):
            raise ValueError("if_index values are 0 to 4294967295")
        return value


class EnrichConfig(Section):
    """Enrichment at ingest (section ``[flows.enrich]``), see lanalyze.flows.enrich."""

    enabled: bool = Field(
        default=True,
        description="Add country, AS, network, interface and application names to flows as "
        "they are stored (each part only when configured).",
    )
    geoip_country: Path | None = Field(
        default=None,
        description="MaxMind-format country database (.mmdb: GeoLite2-Country, DB-IP lite "
        "country); sets srccountry/dstcountry.",
    )
    geoip_asn: Path | None = Field(
        default=None,
        description="MaxMind-format AS database (.mmdb: GeoLite2-ASN, DB-IP lite ASN); sets "
        "the AS numbers (see as_source) and srcasname/dstasname.",
    )
    as_source: Literal["exporter", "geoip"] = Field(
        default="exporter",
        description='Which AS number wins: "exporter" (the flow\'s src_as/dst_as when not 0, '
        "else the database's) or \"geoip\" (the database's when it knows the address).",
    )
    reload_interval: float = Field(
        default=60.0,
        ge=1,
        le=86400,
        description="Seconds between checks of the databases' modification times; a changed "
        "file is reopened.",
    )
    database_memory: int = Field(
        default=256 * 2**20,
        ge=2**20,
        le=2**36,
        description="Bytes one database may take in each worker once read into address "
        "ranges (and its file at most this size); a larger one is refused with a warning.",
    )
    exporters: list[ExporterRule] = Field(
        default_factory=list, description="Exporter names, first matching rule wins."
    )
    interfaces: list[InterfaceRule] = Field(
        default_factory=list,
        description="Interface classification rules (name, boundary, provider), first match "
        "wins; without one the SNMP name is kept.",
    )
    applications: dict[str, str] = Field(
        default_factory=dict,
        description='Names of application ids (IE 95) as "ENGINE:SELECTOR", e.g. '
        '{ "13:453" = "webex" }.',
    )

    @field_validator("applications")
    @classmethod
    def _applications(cls, value: dict[str, str]) -> dict[str, str]:
        for key, name in value.items():
            engine, colon, selector = key.partition(":")
            if not (colon and engine.isdigit() and selector.isdigit()):
                raise ValueError(f"application id {key!r}: expected ENGINE:SELECTOR numbers")
            if int(engine) > 255:
                raise ValueError(f"application id {key!r}: engine is 0 to 255")
            check_label(name)
        return {f"{int(k.split(':')[0])}:{int(k.split(':')[1])}": v for k, v in value.items()}


def check_networks(value: dict[str, NetworkAttributes]) -> dict[str, NetworkAttributes]:
    """``[flows.networks]`` keys in canonical network form."""
    normal: dict[str, NetworkAttributes] = {}
    for text, attributes in value.items():
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(f"network {text!r} is not an IP network (address/prefix)") from None
        normal[str(network)] = attributes
    return normal
