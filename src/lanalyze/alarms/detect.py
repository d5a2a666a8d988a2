"""Detection on stored flows *(core)*: Arrow batches in, findings out, no IO.

Every algorithm works on whole batches with numpy (hashing, ``np.unique``, ``searchsorted``,
``bincount``); Python loops run only over the few keys that cross a threshold, to describe
them. State is windows of counters keyed by 64-bit hashes, each charged by bytes against its
share of ``alarms.state_memory``; :meth:`Detector.snapshot` / :meth:`Detector.restore` turn it
into plain arrays so a restart keeps an incident's counts.

Counting distinct targets (scans, mass mailer) is exact up to 64-bit hash collisions (about
one in 10^19 pairs): each window keeps the set of distinct (key, target) pair hashes. When a
window outgrows its byte budget, the keys with the fewest distinct targets are forgotten first
(counted in ``evicted``), so the sources closest to a threshold are the last to lose their
count. Windows are tumbling, aligned to multiples of their length since the epoch.

Floods compare a destination's rate in the current window with a threshold and with its own
baseline: an EWMA (alpha 0.2) of its rate in past windows, kept for the ``baseline_keys``
busiest destinations; a window over the threshold does not teach the baseline, so a long
attack stays an attack.

Trust: the flows are the exporters' (anyone who can send UDP to the collector, unless
``flows.exporters_allowed``): addresses, ports and counters are used only as numbers, and a
flood of distinct keys costs bounded memory.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from lanalyze.alarms.config import AlarmsConfig

U64 = npt.NDArray[np.uint64]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]

COLUMNS = (
    "exporter",
    "sampling_rate",
    "bytes",
    "packets",
    "flows",
    "src_addr",
    "dst_addr",
    "src_port",
    "dst_port",
    "protocol",
    "tcp_flags",
)
"""The flow columns detection reads (the engine reads only these from a segment)."""

_EMPTY_U64: U64 = np.zeros(0, np.uint64)
TOP = 10
"""Evidence rows (targets, ports) kept per finding."""


@dataclass
class Finding:
    """One algorithm's verdict on one subject in the current window."""

    algorithm: str
    subject: str
    value: float
    threshold: float
    unit: str
    evidence: dict[str, Any] = field(default_factory=dict)
    filter: str = ""
    """nfdump filter of the matching flows (the drill-down link)."""
    window_start_ms: int = 0
    address: str = ""
    """The host behind the subject, when there is one (mail-side evidence, links)."""

    @property
    def ratio(self) -> float:
        return self.value / self.threshold if self.threshold else 0.0

    @property
    def severity(self) -> str:
        return severity_for(self.ratio)


def severity_for(ratio: float) -> str:
    """At the threshold a warning, 4 times over major, 16 times over critical."""
    if ratio >= 16:
        return "critical"
    if ratio >= 4:
        return "major"
    return "warning"


# --- addresses ------------------------------------------------------------------------------


def address_words(column: pa.ChunkedArray | pa.Array) -> tuple[U64, U64]:
    """A 16-byte address column as its high and low 64-bit halves (big-endian numbers)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(array)
    if n == 0:
        return _EMPTY_U64, _EMPTY_U64
    data = array.buffers()[1]
    assert data is not None
    raw = np.frombuffer(data, dtype=np.uint8)[array.offset * 16 : (array.offset + n) * 16]
    words = raw.view(">u8").reshape(n, 2).astype(np.uint64)
    return np.ascontiguousarray(words[:, 0]), np.ascontiguousarray(words[:, 1])


def format_address(hi: int, lo: int) -> str:
    """``10.0.0.1`` for an IPv4-mapped address, else the IPv6 text."""
    address = ipaddress.IPv6Address(int(hi) << 64 | int(lo))
    return str(address.ipv4_mapped or address)


@dataclass(frozen=True)
class Networks:
    """CIDRs as masks over the 128-bit IPv4-mapped form; ``contains`` works on whole columns."""

    nets: tuple[tuple[int, int, int, int], ...]

    @classmethod
    def of(cls, cidrs: Iterable[str]) -> Networks:
        nets = []
        for text in cidrs:
            net = ipaddress.ip_network(text, strict=False)
            if isinstance(net, ipaddress.IPv4Network):
                base = int(ipaddress.IPv6Address(f"::ffff:{net.network_address}"))
                bits = 96 + net.prefixlen
            else:
                base, bits = int(net.network_address), net.prefixlen
            mask = ((1 << bits) - 1) << (128 - bits) if bits else 0
            nets.append((base >> 64, base & (2**64 - 1), mask >> 64, mask & (2**64 - 1)))
        return cls(tuple(nets))

    def contains(self, hi: U64, lo: U64) -> Mask:
        found = np.zeros(hi.shape, np.bool_)
        for net_hi, net_lo, mask_hi, mask_lo in self.nets:
            found |= ((hi & np.uint64(mask_hi)) == np.uint64(net_hi)) & (
                (lo & np.uint64(mask_lo)) == np.uint64(net_lo)
            )
        return found


def is_inside(hi: U64, lo: U64, inside: Networks) -> Mask:
    """Whether each address is one of ours: the one rule of ``inside`` (``alarms.inside``),
    a single function so it can later defer to the network roles of ``[flows.networks]``."""
    return inside.contains(hi, lo)


# --- hashing --------------------------------------------------------------------------------


def _mix(x: U64) -> U64:
    """splitmix64's finaliser, on a whole array (uint64 arithmetic wraps, as meant)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def combine(*parts: npt.NDArray[Any]) -> U64:
    """One 64-bit hash per row of the given columns."""
    h = np.zeros(parts[0].shape, np.uint64)
    for part in parts:
        h = _mix(h ^ part.astype(np.uint64))
    return h


def _lookup(sorted_keys: U64, keys: U64) -> tuple[npt.NDArray[np.intp], Mask]:
    """Positions of ``keys`` in ``sorted_keys`` and whether each is there."""
    pos = np.searchsorted(sorted_keys, keys)
    if sorted_keys.size == 0:
        return pos, np.zeros(keys.shape, np.bool_)
    found = sorted_keys[np.minimum(pos, sorted_keys.size - 1)] == keys
    return pos, found


def _aligned(now_ms: int, window_ms: int) -> int:
    return now_ms - now_ms % window_ms


# --- windows --------------------------------------------------------------------------------


class DistinctWindow:
    """Distinct items per key in a tumbling window: exact, bounded by bytes (see module)."""

    def __init__(self, window_s: int, max_bytes: int) -> None:
        self.window_ms = window_s * 1000
        self.max_bytes = max_bytes
        self.started = 0
        self.pairs: U64 = _EMPTY_U64  # sorted pair hashes
        self.pair_keys: U64 = _EMPTY_U64  # the key of each pair
        self.keys: U64 = _EMPTY_U64  # sorted keys
        self.counts: I64 = np.zeros(0, np.int64)
        self.prev_keys: U64 = _EMPTY_U64  # the previous window's keys and counts
        self.prev_counts: I64 = np.zeros(0, np.int64)
        self.evicted = 0

    @property
    def nbytes(self) -> int:
        held = (self.pairs, self.pair_keys, self.keys, self.counts, self.prev_keys)
        return sum(a.nbytes for a in held) + self.prev_counts.nbytes

    def _roll(self, now_ms: int) -> None:
        start = _aligned(now_ms, self.window_ms)
        if start != self.started:
            if start - self.started == self.window_ms:
                self.prev_keys, self.prev_counts = self.keys, self.counts
            else:
                self.prev_keys, self.prev_counts = _EMPTY_U64, np.zeros(0, np.int64)
            self.started = start
            self.pairs = self.pair_keys = self.keys = _EMPTY_U64
            self.counts = np.zeros(0, np.int64)

    def add(self, now_ms: int, key: U64, item: U64) -> tuple[U64, I64]:
        """Count the batch's (key, item) pairs; the keys it touched and their counts."""
        self._roll(now_ms)
        if key.size == 0:
            return _EMPTY_U64, np.zeros(0, np.int64)
        pair, first = np.unique(combine(key, item), return_index=True)
        pair_key = key[first]
        pos, known = _lookup(self.pairs, pair)
        new = ~known
        if new.any():
            self.pairs = np.insert(self.pairs, pos[new], pair[new])
            self.pair_keys = np.insert(self.pair_keys, pos[new], pair_key[new])
            new_keys, new_counts = np.unique(pair_key[new], return_counts=True)
            kpos, kknown = _lookup(self.keys, new_keys)
            self.counts[kpos[kknown]] += new_counts[kknown]
            self.keys = np.insert(self.keys, kpos[~kknown], new_keys[~kknown])
            self.counts = np.insert(self.counts, kpos[~kknown], new_counts[~kknown])
            self._bound()
        touched = np.unique(key)
        tpos, there = _lookup(self.keys, touched)
        touched, counts = touched[there], self.counts[tpos[there]]
        # A sliding window's estimate: the previous window's count, weighted by how much of
        # it the sliding window still covers, so a scan across a boundary is not split in two.
        ppos, before = _lookup(self.prev_keys, touched)
        if before.any():
            weight = 1 - (now_ms - self.started) / self.window_ms
            extra = np.zeros(touched.size, np.int64)
            extra[before] = (self.prev_counts[ppos[before]] * weight).astype(np.int64)
            counts = counts + extra
        return touched, counts

    def _bound(self) -> None:
        if self.nbytes <= self.max_bytes:
            return
        # Forget the keys with the fewest items until a quarter of the budget is free again.
        order = np.argsort(self.counts, kind="stable")
        per_key = 32  # a pair costs 16 bytes, a key 16
        freed = np.cumsum(self.counts[order] * 16 + per_key)
        need = self.nbytes - self.max_bytes * 3 // 4
        cut = int(np.searchsorted(freed, need)) + 1
        drop = np.sort(self.keys[order[:cut]])
        keep_pairs = ~np.isin(self.pair_keys, drop)
        self.pairs = self.pairs[keep_pairs]
        self.pair_keys = self.pair_keys[keep_pairs]
        keep_keys = np.ones(self.keys.size, np.bool_)
        keep_keys[order[:cut]] = False
        self.keys = self.keys[keep_keys]
        self.counts = self.counts[keep_keys]
        self.evicted += cut

    def state(self, prefix: str) -> dict[str, npt.NDArray[Any]]:
        return {
            f"{prefix}.meta": np.array([self.started, self.evicted], np.int64),
            f"{prefix}.pairs": self.pairs,
            f"{prefix}.pair_keys": self.pair_keys,
            f"{prefix}.keys": self.keys,
            f"{prefix}.counts": self.counts,
            f"{prefix}.prev_keys": self.prev_keys,
            f"{prefix}.prev_counts": self.prev_counts,
        }

    def restore(self, prefix: str, data: dict[str, npt.NDArray[Any]]) -> None:
        meta = data.get(f"{prefix}.meta")
        if meta is None:
            return
        self.started, self.evicted = int(meta[0]), int(meta[1])
        self.pairs = data[f"{prefix}.pairs"].astype(np.uint64)
        self.pair_keys = data[f"{prefix}.pair_keys"].astype(np.uint64)
        self.keys = data[f"{prefix}.keys"].astype(np.uint64)
        self.counts = data[f"{prefix}.counts"].astype(np.int64)
        self.prev_keys = data[f"{prefix}.prev_keys"].astype(np.uint64)
        self.prev_counts = data[f"{prefix}.prev_counts"].astype(np.int64)


class WindowSums:
    """Sums of a few values per key in a tumbling window, bounded by bytes (smallest first
    out). ``closed`` holds the previous window's sums for the baseline."""

    def __init__(self, window_s: int, max_bytes: int, width: int) -> None:
        self.window_ms = window_s * 1000
        self.max_bytes = max_bytes
        self.width = width
        self.started = 0
        self.keys: U64 = _EMPTY_U64
        self.sums: F64 = np.zeros((0, width))
        self.closed: tuple[U64, F64] | None = None
        self.evicted = 0

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.sums.nbytes

    def _roll(self, now_ms: int) -> None:
        start = _aligned(now_ms, self.window_ms)
        if start != self.started:
            if self.started and start - self.started == self.window_ms:
                self.closed = (self.keys, self.sums)
            self.started = start
            self.keys = _EMPTY_U64
            self.sums = np.zeros((0, self.width))

    def add(self, now_ms: int, key: U64, values: F64) -> tuple[U64, F64]:
        self._roll(now_ms)
        if key.size == 0:
            return _EMPTY_U64, np.zeros((0, self.width))
        unique, inverse = np.unique(key, return_inverse=True)
        sums = np.stack(
            [np.bincount(inverse, values[:, i], unique.size) for i in range(self.width)], axis=1
        )
        pos, known = _lookup(self.keys, unique)
        self.sums[pos[known]] += sums[known]
        self.keys = np.insert(self.keys, pos[~known], unique[~known])
        self.sums = np.insert(self.sums, pos[~known], sums[~known], axis=0)
        if self.nbytes > self.max_bytes:
            keep = max(1, self.max_bytes * 3 // 4 // (8 + 8 * self.width))
            top = np.sort(np.argsort(self.sums[:, 0])[-keep:])
            self.evicted += self.keys.size - top.size
            self.keys, self.sums = self.keys[top], self.sums[top]
        tpos, there = _lookup(self.keys, unique)
        return unique[there], self.sums[tpos[there]]

    def state(self, prefix: str) -> dict[str, npt.NDArray[Any]]:
        return {
            f"{prefix}.meta": np.array([self.started, self.evicted], np.int64),
            f"{prefix}.keys": self.keys,
            f"{prefix}.sums": self.sums,
        }

    def restore(self, prefix: str, data: dict[str, npt.NDArray[Any]]) -> None:
        meta = data.get(f"{prefix}.meta")
        if meta is None:
            return
        self.started, self.evicted = int(meta[0]), int(meta[1])
        self.keys = data[f"{prefix}.keys"].astype(np.uint64)
        self.sums = data[f"{prefix}.sums"].astype(np.float64).reshape(-1, self.width)


class Baseline:
    """EWMA of a rate per key, for the ``capacity`` keys with the highest baselines."""

    ALPHA = 0.2

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.keys: U64 = _EMPTY_U64
        self.values: F64 = np.zeros(0)

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes

    def learn(self, keys: U64, rates: F64) -> None:
        """One closed window: every known key decays, the window's keys add their rate."""
        self.values = self.values * (1 - self.ALPHA)
        pos, known = _lookup(self.keys, keys)
        self.values[pos[known]] += self.ALPHA * rates[known]
        self.keys = np.insert(self.keys, pos[~known], keys[~known])
        self.values = np.insert(self.values, pos[~known], self.ALPHA * rates[~known])
        if self.keys.size > self.capacity:
            top = np.sort(np.argsort(self.values)[-self.capacity :])
            self.keys, self.values = self.keys[top], self.values[top]

    def get(self, keys: U64) -> F64:
        pos, known = _lookup(self.keys, keys)
        out = np.zeros(keys.shape)
        out[known] = self.values[pos[known]]
        return out


# --- the batch ------------------------------------------------------------------------------


class Batch:
    """A stored segment's columns as numpy arrays, with the derived ones detection uses."""

    def __init__(self, table: pa.Table) -> None:
        self.size = table.num_rows
        self.src_hi, self.src_lo = address_words(table.column("src_addr"))
        self.dst_hi, self.dst_lo = address_words(table.column("dst_addr"))
        self.exp_hi, self.exp_lo = address_words(table.column("exporter"))

        def column(name: str) -> npt.NDArray[Any]:
            values: npt.NDArray[Any] = table.column(name).to_numpy()
            return values

        sampling = np.maximum(column("sampling_rate").astype(np.float64), 1.0)
        self.bytes = column("bytes").astype(np.float64) * sampling
        self.packets = column("packets").astype(np.float64) * sampling
        self.raw_bytes = column("bytes").astype(np.float64)
        self.raw_packets = column("packets").astype(np.float64)
        self.flows = column("flows").astype(np.float64)
        self.src_port = column("src_port").astype(np.uint64)
        self.dst_port = column("dst_port").astype(np.uint64)
        self.protocol = column("protocol").astype(np.uint64)
        self.tcp_flags = column("tcp_flags").astype(np.uint64)
        self.src = combine(self.src_hi, self.src_lo)
        self.dst = combine(self.dst_hi, self.dst_lo)

    def src_text(self, row: int) -> str:
        return format_address(self.src_hi[row], self.src_lo[row])

    def dst_text(self, row: int) -> str:
        return format_address(self.dst_hi[row], self.dst_lo[row])


def _first_rows(keys: U64, wanted: U64) -> npt.NDArray[np.intp]:
    """For each wanted key, a row of ``keys`` holding it (all wanted keys are there)."""
    unique, first = np.unique(keys, return_index=True)
    rows: npt.NDArray[np.intp] = first[np.searchsorted(unique, wanted)]
    return rows


def _top_addresses(hi: U64, lo: U64, weight: F64) -> list[dict[str, Any]]:
    if hi.size == 0:
        return []
    key = combine(hi, lo)
    unique, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    sums = np.bincount(inverse, weight, unique.size)
    counts = np.bincount(inverse, None, unique.size)
    order = np.argsort(-sums, kind="stable")[:TOP]
    return [
        {
            "address": format_address(hi[first[i]], lo[first[i]]),
            "flows": int(counts[i]),
            "value": float(sums[i]),
        }
        for i in order
    ]


def _top_ports(ports: U64, weight: F64) -> list[dict[str, Any]]:
    if ports.size == 0:
        return []
    unique, inverse = np.unique(ports, return_inverse=True)
    sums = np.bincount(inverse, weight, unique.size)
    order = np.argsort(-sums, kind="stable")[:TOP]
    return [{"port": int(unique[i]), "flows": int(sums[i])} for i in order]


PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmp6", 132: "sctp"}


# --- the detector ---------------------------------------------------------------------------


class Detector:
    """Every flow algorithm over one stream of batches, and the exporters heard."""

    MAX_EXPORTERS = 4096

    def __init__(self, config: AlarmsConfig, mail_servers: Iterable[str] = ()) -> None:
        self.config = config
        budget = config.state_memory
        scan, flood = config.scan, config.flood
        self.inside = Networks.of(config.inside)
        self.allow = Networks.of(config.allow)
        self.scan_allow = Networks.of([*config.allow, *scan.allow])
        self.flood_allow = Networks.of([*config.allow, *flood.allow])
        self.mail_servers = Networks.of([*config.mass_mailer.mail_servers, *mail_servers])
        self.reflection_ports = np.array(sorted(set(flood.reflection_ports)), np.uint64)
        self.horizontal = DistinctWindow(scan.window, budget * 3 // 10)
        self.vertical = DistinctWindow(scan.window, budget * 3 // 10)
        self.mailer = DistinctWindow(config.mass_mailer.window, budget // 10)
        self.flood = WindowSums(flood.window, budget // 10, 2)
        self.syn = WindowSums(flood.window, budget // 20, 1)
        self.reflection = WindowSums(flood.window, budget // 20, 1)
        self.baseline = Baseline(flood.baseline_keys)
        self.exporters: dict[str, int] = {}
        """Exporter address -> last time (ms) one of its flows was stored."""

    @property
    def nbytes(self) -> int:
        windows = (self.horizontal, self.vertical, self.mailer, self.flood, self.syn)
        return sum(w.nbytes for w in windows) + self.reflection.nbytes + self.baseline.nbytes

    def process(self, now_ms: int, table: pa.Table) -> list[Finding]:
        """The findings of one stored batch (``now_ms``: when it is looked at)."""
        if table.num_rows == 0:
            return []
        batch = Batch(table)
        self._heard(now_ms, batch)
        findings: list[Finding] = []
        if self.config.scan.enabled:
            findings += self._scans(now_ms, batch)
        if self.config.flood.enabled:
            findings += self._floods(now_ms, batch)
        if self.config.mass_mailer.enabled:
            findings += self._mass_mailer(now_ms, batch)
        return findings

    # -- scans --

    def _scans(self, now_ms: int, b: Batch) -> list[Finding]:
        cfg = self.config.scan
        rows = ~self.scan_allow.contains(b.src_hi, b.src_lo)
        # Only flows shaped like probes count. A TCP flow that carried data (PSH) is a
        # conversation, not a probe (a mail server's deliveries are not a port-25 scan).
        # Answers (a server's port to a client's) are not probes either: the destination
        # port must not be above the source port, unless it is a bare SYN.
        tcp = b.protocol == 6
        syn_only = tcp & (b.tcp_flags & np.uint64(0x12) == 0x02)
        data = tcp & (b.tcp_flags & np.uint64(0x08) != 0)
        rows &= ~data & ((b.dst_port <= b.src_port) | syn_only)
        out: list[Finding] = []
        key = combine(b.src, b.protocol, b.dst_port)
        keys, counts = self.horizontal.add(now_ms, key[rows], b.dst[rows])
        hits = keys[counts >= cfg.horizontal_hosts]
        for row, key_value in zip(_first_rows(key, hits), hits, strict=True):
            count = int(counts[np.searchsorted(keys, key_value)])
            src = b.src_text(row)
            proto = PROTOCOLS.get(int(b.protocol[row]), str(int(b.protocol[row])))
            port = int(b.dst_port[row])
            mine = rows & (key == key_value)
            out.append(
                Finding(
                    "scan_horizontal",
                    f"{src} {proto}/{port}",
                    count,
                    cfg.horizontal_hosts,
                    "hosts",
                    {"targets": _top_addresses(b.dst_hi[mine], b.dst_lo[mine], b.flows[mine])},
                    f"src ip {src} and proto {proto} and dst port {port}",
                    self.horizontal.started,
                    src,
                )
            )
        key = combine(b.src, b.dst)
        keys, counts = self.vertical.add(now_ms, key[rows], combine(b.protocol, b.dst_port)[rows])
        hits = keys[counts >= cfg.vertical_ports]
        for row, key_value in zip(_first_rows(key, hits), hits, strict=True):
            count = int(counts[np.searchsorted(keys, key_value)])
            src, dst = b.src_text(row), b.dst_text(row)
            mine = rows & (key == key_value)
            out.append(
                Finding(
                    "scan_vertical",
                    f"{src} -> {dst}",
                    count,
                    cfg.vertical_ports,
                    "ports",
                    {"ports": _top_ports(b.dst_port[mine], b.flows[mine])},
                    f"src ip {src} and dst ip {dst}",
                    self.vertical.started,
                    src,
                )
            )
        return out

    # -- floods --

    def _floods(self, now_ms: int, b: Batch) -> list[Finding]:
        cfg = self.config.flood
        seconds = cfg.window
        rows = ~self.flood_allow.contains(b.dst_hi, b.dst_lo)
        out: list[Finding] = []
        previous = self.flood.closed
        keys, sums = self.flood.add(
            now_ms, b.dst[rows], np.stack([b.packets[rows], b.flows[rows]], axis=1)
        )
        if self.flood.closed is not previous and self.flood.closed is not None:
            closed_keys, closed_sums = self.flood.closed
            rates = closed_sums[:, 0] / seconds
            calm = rates < cfg.pps
            self.baseline.learn(closed_keys[calm], rates[calm])
        pps, fps = sums[:, 0] / seconds, sums[:, 1] / seconds
        base = self.baseline.get(keys) * cfg.baseline_factor
        hot = ((pps >= cfg.pps) & (pps > base)) | ((fps >= cfg.fps) & (fps > base))
        for i in np.flatnonzero(hot):
            out.append(
                self._target_finding(
                    "flood",
                    b,
                    rows,
                    b.dst,
                    keys[i],
                    max(pps[i] / cfg.pps, fps[i] / cfg.fps),
                    {"pps": float(pps[i]), "fps": float(fps[i]), "baseline_pps": float(base[i])},
                    "",
                    self.flood.started,
                )
            )
        syn_rows = rows & (b.protocol == 6) & (b.tcp_flags & np.uint64(0x12) == 0x02)
        keys, sums = self.syn.add(now_ms, b.dst[syn_rows], b.flows[syn_rows][:, None])
        fps = sums[:, 0] / seconds
        for i in np.flatnonzero(fps >= cfg.syn_fps):
            out.append(
                self._target_finding(
                    "syn_flood",
                    b,
                    syn_rows,
                    b.dst,
                    keys[i],
                    fps[i] / cfg.syn_fps,
                    {"fps": float(fps[i])},
                    " and proto tcp",
                    self.syn.started,
                )
            )
        per_packet = b.raw_bytes / np.maximum(b.raw_packets, 1)
        refl_rows = (
            rows
            & (b.protocol == 17)
            & np.isin(b.src_port, self.reflection_ports)
            & (per_packet >= cfg.reflection_min_packet)
        )
        keys, sums = self.reflection.add(now_ms, b.dst[refl_rows], b.bytes[refl_rows][:, None])
        bps = sums[:, 0] / seconds
        for i in np.flatnonzero(bps >= cfg.reflection_bps):
            finding = self._target_finding(
                "udp_reflection",
                b,
                refl_rows,
                b.dst,
                keys[i],
                bps[i] / cfg.reflection_bps,
                {"bytes_per_second": float(bps[i])},
                " and proto udp",
                self.reflection.started,
            )
            mine = refl_rows & (b.dst == keys[i])
            finding.evidence["reflectors"] = _top_addresses(
                b.src_hi[mine], b.src_lo[mine], b.bytes[mine]
            )
            finding.evidence["reflector_ports"] = _top_ports(b.src_port[mine], b.flows[mine])
            out.append(finding)
        return out

    def _target_finding(  # noqa: PLR0917 - one finding's parts, named at the call
        self,
        algorithm: str,
        b: Batch,
        rows: Mask,
        keys: U64,
        key: np.uint64,
        ratio: float,
        evidence: dict[str, Any],
        extra_filter: str,
        started: int,
    ) -> Finding:
        mine = rows & (keys == key)
        row = int(np.flatnonzero(mine)[0])
        dst = b.dst_text(row)
        evidence["sources"] = _top_addresses(b.src_hi[mine], b.src_lo[mine], b.packets[mine])
        evidence["ports"] = _top_ports(b.dst_port[mine], b.flows[mine])
        return Finding(
            algorithm,
            dst,
            float(ratio),
            1.0,
            "x threshold",
            evidence,
            f"dst ip {dst}{extra_filter}",
            started,
            dst,
        )

    # -- mass mailer --

    def _mass_mailer(self, now_ms: int, b: Batch) -> list[Finding]:
        cfg = self.config.mass_mailer
        rows = (b.protocol == 6) & (b.dst_port == 25)
        if not rows.any():
            self.mailer.add(now_ms, _EMPTY_U64, _EMPTY_U64)
            return []
        rows &= is_inside(b.src_hi, b.src_lo, self.inside)
        rows &= ~is_inside(b.dst_hi, b.dst_lo, self.inside)
        rows &= ~self.mail_servers.contains(b.src_hi, b.src_lo)
        rows &= ~self.allow.contains(b.src_hi, b.src_lo)
        keys, counts = self.mailer.add(now_ms, b.src[rows], b.dst[rows])
        hits = keys[counts >= cfg.hosts]
        out = []
        for row, key_value in zip(_first_rows(b.src, hits), hits, strict=True):
            count = int(counts[np.searchsorted(keys, key_value)])
            src = b.src_text(row)
            mine = rows & (b.src == key_value)
            out.append(
                Finding(
                    "mass_mailer",
                    src,
                    count,
                    cfg.hosts,
                    "hosts",
                    {"targets": _top_addresses(b.dst_hi[mine], b.dst_lo[mine], b.flows[mine])},
                    f"src ip {src} and proto tcp and dst port 25",
                    self.mailer.started,
                    src,
                )
            )
        return out

    # -- exporters --

    def _heard(self, now_ms: int, b: Batch) -> None:
        unique, first = np.unique(combine(b.exp_hi, b.exp_lo), return_index=True)
        del unique
        for row in first:
            name = format_address(b.exp_hi[row], b.exp_lo[row])
            self.exporters.pop(name, None)
            self.exporters[name] = now_ms
        while len(self.exporters) > self.MAX_EXPORTERS:
            self.exporters.pop(next(iter(self.exporters)))

    def tick(self, now_ms: int) -> list[Finding]:
        """Findings that depend on time passing, not on flows: silent exporters."""
        cfg = self.config.exporter
        if not cfg.enabled:
            return []
        limit = cfg.silent_after * 1000
        out = []
        for name, last in self.exporters.items():
            silent = now_ms - last
            if silent >= limit:
                out.append(
                    Finding(
                        "exporter_silent",
                        name,
                        silent / 1000,
                        cfg.silent_after,
                        "seconds silent",
                        {"last_flow_ms": last},
                        "",
                        last,
                        name,
                    )
                )
        return out

    # -- state --

    def snapshot(self) -> dict[str, npt.NDArray[Any]]:
        data: dict[str, npt.NDArray[Any]] = {}
        data |= self.horizontal.state("horizontal")
        data |= self.vertical.state("vertical")
        data |= self.mailer.state("mailer")
        data |= self.flood.state("flood")
        data |= self.syn.state("syn")
        data |= self.reflection.state("reflection")
        data["baseline.keys"] = self.baseline.keys
        data["baseline.values"] = self.baseline.values
        names = list(self.exporters)
        data["exporters.names"] = np.array(names, dtype=np.str_) if names else np.zeros(0, "U1")
        data["exporters.last"] = np.array([self.exporters[n] for n in names], np.int64)
        return data

    def restore(self, data: dict[str, npt.NDArray[Any]]) -> None:
        self.horizontal.restore("horizontal", data)
        self.vertical.restore("vertical", data)
        self.mailer.restore("mailer", data)
        self.flood.restore("flood", data)
        self.syn.restore("syn", data)
        self.reflection.restore("reflection", data)
        if "baseline.keys" in data:
            self.baseline.keys = data["baseline.keys"].astype(np.uint64)
            self.baseline.values = data["baseline.values"].astype(np.float64)
        if "exporters.names" in data:
            names = [str(n) for n in data["exporters.names"]]
            lasts = [int(v) for v in data["exporters.last"]]
            self.exporters = dict(zip(names, lasts, strict=True))

    def evicted(self) -> int:
        windows = (self.horizontal, self.vertical, self.mailer, self.flood, self.syn)
        return sum(w.evicted for w in windows) + self.reflection.evicted
