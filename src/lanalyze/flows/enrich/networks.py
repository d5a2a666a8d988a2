"""Network names and roles from ``[flows.networks]``: longest prefix wins, vectorised.

The configured prefixes are cut, once, into disjoint address ranges, each labelled with the
longest prefix covering it (:mod:`.ranges`); a batch's addresses are then found with
``np.searchsorted``, no Python per flow.

This is the one owner of "which configured network is this address in": the flow enricher
and the alarm work (``inside``) both call :meth:`NetworkTable.lookup` / :meth:`roles`.

Trust: prefixes and names come from the configuration (validated by
:mod:`lanalyze.flows.enrich.config`); addresses are flow data, used only as numbers.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from lanalyze.flows.enrich.config import NetworkAttributes
from lanalyze.flows.enrich.ranges import AddressKeys, from_intervals

_TOP = 2**128


def _mapped_int(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> tuple[int, int]:
    """First and last address of a network as integers of the 16-byte stored form."""
    first, last = int(network.network_address), int(network.broadcast_address)
    if network.version == 4:
        first, last = first | 0xFFFF_0000_0000, last | 0xFFFF_0000_0000
    return first, last


@dataclass(frozen=True)
class NetworkMatch:
    """Per address, the index of its network in ``names``/``roles`` (-1: none)."""

    index: npt.NDArray[np.int32]
    names: tuple[str, ...]
    roles: tuple[str, ...]


class NetworkTable:
    """Configured networks, ready for vectorised longest-prefix lookups."""

    def __init__(self, networks: Mapping[str, NetworkAttributes]) -> None:
        parsed = [(ipaddress.ip_network(text, strict=False), a) for text, a in networks.items()]
        self.names = tuple(a.name for _, a in parsed)
        self.roles = tuple(a.role for _, a in parsed)
        # Elementary ranges: every prefix's first address and the address after its last.
        spans = [_mapped_int(network) for network, _ in parsed]
        bounds = sorted(
            {0, *(f for f, _ in spans), *(last + 1 for _, last in spans if last + 1 < _TOP)}
        )
        # The longest prefix holding each range's first address holds the whole range.
        by_length: dict[int, dict[int, int]] = {}
        for position, (network, _) in enumerate(parsed):
            length = network.prefixlen + (96 if network.version == 4 else 0)
            first, _last = spans[position]
            by_length.setdefault(length, {})[first] = position
        lengths = sorted(by_length, reverse=True)
        owners: list[int] = []
        for start in bounds:
            owner = -1
            for length in lengths:
                key = start >> (128 - length) << (128 - length) if length else 0
                found = by_length[length].get(key)
                if found is not None:
                    owner = found
                    break
            owners.append(owner)
        ends = [*(b - 1 for b in bounds[1:]), _TOP - 1]
        self.index = from_intervals(
            [(f, t, o) for f, t, o in zip(bounds, ends, owners, strict=True) if o >= 0]
        )

    def __len__(self) -> int:
        return len(self.names)

    def lookup(self, addresses: npt.NDArray[np.bytes_] | AddressKeys) -> NetworkMatch:
        """The network of each address: 16-byte (``S16``, IPv4-mapped for IPv4) or split."""
        keys = addresses if isinstance(addresses, AddressKeys) else AddressKeys.of(addresses)
        return NetworkMatch(self.index.lookup(keys), self.names, self.roles)

    def roles_of(self, addresses: npt.NDArray[np.bytes_] | AddressKeys) -> npt.NDArray[np.object_]:
        """The role of each address ("" outside every configured network)."""
        return _labels(self.lookup(addresses).index, self.roles)

    def names_of(self, addresses: npt.NDArray[np.bytes_] | AddressKeys) -> npt.NDArray[np.object_]:
        """The name of each address ("" outside every configured network)."""
        return _labels(self.lookup(addresses).index, self.names)


def _labels(index: npt.NDArray[np.int32], values: tuple[str, ...]) -> npt.NDArray[np.object_]:
    table = np.array([*values, ""], dtype=object)
    return table[index]  # -1 picks the trailing ""
