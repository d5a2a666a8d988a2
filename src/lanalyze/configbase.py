"""The pieces every config section is built from: the strict base model and address types.

Kept apart from :mod:`lanalyze.config` so section modules can import it without a cycle.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


AUTO_PROCESSES_MAX = 8
"""What "0: one per core" gives at most: each process costs its own interpreter and buffers,
so a large machine does not get dozens by default."""


def per_core(requested: int, at_most: int = AUTO_PROCESSES_MAX) -> int:
    """A process-count setting's value: ``requested``, or for 0 one per CPU core (at most
    ``at_most``). The one rule behind ``flows.workers`` and ``mail.acceptors``."""
    return requested or max(1, min(os.cpu_count() or 1, at_most))


def parse_listen(value: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` / ``[V6]:PORT`` into a host and a port, validating both."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError(f"unbalanced brackets in {value!r}")
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"IPv6 addresses need brackets: [{host}]:{port_text}")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IP address (or 'localhost')") from None
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port must be a number from 0 to 65535, got {port_text!r}")
    return host, int(port_text)


def _check_listen(value: str) -> str:
    parse_listen(value)
    return value


ListenAddress = Annotated[str, AfterValidator(_check_listen)]
"""A ``HOST:PORT`` string (IPv6 in brackets); port 0 asks the kernel for a free port."""


def _one_or_many(value: object) -> object:
    return [value] if isinstance(value, str) else value


ListenAddresses = Annotated[list[ListenAddress], BeforeValidator(_one_or_many)]
"""One ``HOST:PORT`` or a list of them (``listen = "a:1"`` or ``listen = ["a:1", "b:2"]``);
a list once validated."""


def listen_list(value: str | list[str]) -> list[str]:
    """The addresses of a setting that may hold one ``HOST:PORT`` or a list, each validated."""
    addresses = [value] if isinstance(value, str) else list(value)
    for address in addresses:
        parse_listen(address)
    return addresses


def is_loopback(address: str) -> bool:
    """Whether ``HOST:PORT`` is reachable from this machine only (``0.0.0.0`` and ``::`` are
    every address, so not)."""
    host, _ = parse_listen(address)
    if host == "localhost":
        return True
    ip = ipaddress.ip_address(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback
