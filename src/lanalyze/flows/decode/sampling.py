"""Sampling rates announced in option records (RFC 3954 §6.1 / RFC 7011 + RFC 5477 IEs).

An exporter announces its samplers in option data records: a sampler (or selector) id
(IE 48 samplerId / 302 selectorId) with the rate as IE 34 samplingInterval, IE 50
samplerRandomInterval, IE 305/306 samplingPacketInterval/Space (rate = (interval + space) /
interval) or IE 309/310 samplingSize/Population (rate = population / size). Data records name
their sampler with IE 48 / 302 and the rate of that sampler applies; a record without one uses
the rate announced without a sampler id, or the only sampler's rate, or the configured rate
for the exporter, or 1.

The option record values are the peer's: rates are clamped to 1..2**32-1, and the number of
samplers kept per observation domain is bounded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MAX_SAMPLERS = 256
MAX_RATE = 2**32 - 1


@dataclass
class SamplingState:
    """What one observation domain announced. ``samplers`` is replaced, never mutated, so a
    reference taken while walking a datagram keeps the rates of that moment."""

    samplers: dict[int, int] = field(default_factory=dict)
    default_rate: int = 0
    system_init_ms: int = 0

    def apply_option_record(self, values: dict[int, int]) -> None:
        rate = rate_from_values(values)
        sampler = values.get(302, values.get(48))
        if rate:
            if sampler is None:
                self.default_rate = rate
            elif self.samplers.get(sampler) != rate:
                samplers = dict(self.samplers)
                if sampler not in samplers and len(samplers) >= MAX_SAMPLERS:
                    samplers.pop(next(iter(samplers)))
                samplers[sampler] = rate
                self.samplers = samplers
        init = values.get(160)
        if init:
            self.system_init_ms = init

    def rate_without_sampler_id(self) -> int:
        """Rate of records that carry no sampler id (0 if nothing was announced)."""
        if self.default_rate:
            return self.default_rate
        if len(self.samplers) == 1:
            return next(iter(self.samplers.values()))
        return 0

    def to_json(self) -> dict[str, Any]:
        return {
            "samplers": [[k, v] for k, v in self.samplers.items()],
            "default_rate": self.default_rate,
            "system_init_ms": self.system_init_ms,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SamplingState:
        return cls(
            samplers={int(k): int(v) for k, v in data.get("samplers", [])[:MAX_SAMPLERS]},
            default_rate=int(data.get("default_rate", 0)),
            system_init_ms=int(data.get("system_init_ms", 0)),
        )


def rate_from_values(values: dict[int, int]) -> int:
    rate = values.get(34) or values.get(50) or 0
    size = values.get(309)
    if not rate and size:
        rate = values.get(310, 0) // size
    interval = values.get(305)
    if not rate and interval and 306 in values:
        rate = (interval + values[306]) // interval
    return max(0, min(int(rate), MAX_RATE))
