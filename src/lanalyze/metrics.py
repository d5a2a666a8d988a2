"""The Prometheus registry every component registers its counters in.

``/metrics`` on the HTTP listener serves it. One registry per process; work done in child
processes (flow workers) is reported to the parent, which exposes it through a collector.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, disable_created_metrics, generate_latest

# `*_created` series double the output and no dashboard of ours reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]
REGISTRY = CollectorRegistry(auto_describe=True)


def render() -> bytes:
    return generate_latest(REGISTRY)
