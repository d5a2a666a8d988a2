"""Vectorised conversion of a template's records (a numpy structured array) to catalogue columns.

Each :class:`~lanalyze.flows.decode.templates.FieldOp` of the template is applied to a whole
column of records at once. Timestamps become UTC milliseconds: absolute IPFIX times
(IEs 150-157, RFC 7011 §6.1.7-6.1.10: seconds, milliseconds, and NTP-format micro/nanoseconds),
deltas from the export time (IEs 158/159), and sysUpTime-relative times (IEs 21/22: NetFlow v9
against the header's sysUpTime and unix_secs, RFC 3954 §5.1; IPFIX against IE 160
systemInitTimeMilliseconds from the record or from option records, else the export time).
A record with no time at all gets its receive time.

Only the ``extra`` column (unmapped and enterprise elements, JSON) is built per record, with a
precompiled format string; templates whose elements all have columns never pay for it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from lanalyze.flows import catalogue
from lanalyze.flows.decode.frames import FRAME_KEY, apply_frames
from lanalyze.flows.decode.templates import Template

Array = npt.NDArray[Any]
NTP_EPOCH_OFFSET = 2208988800
UNKNOWN_UPTIME = -(2**62)
"""sysUpTime of an IPFIX export whose systemInitTimeMilliseconds is not known. (A known one
can be slightly negative: the export time has only second resolution.)"""


@dataclass
class RowContext:
    """Per-record values that come from the datagram header, repeated over its records."""

    exporter: Array  # S16
    domain: Array  # u32
    received_ms: Array  # u64
    export_ms: Array  # i64
    uptime_ms: Array  # i64, sysUpTime at export, UNKNOWN_UPTIME if unknown
    rate: Array  # u32, rate that applies to records with no sampler id
    sampler_chunks: list[tuple[int, int, dict[int, int]]]
    """(start, stop, sampler id -> rate) of the sets whose domain announced samplers."""


_MAPPED_PREFIX = np.frombuffer(b"\0\0\xff\xff", dtype=np.uint32)[0]


def ipv4_mapped(raw: Array) -> Array:
    """IPv4 addresses (their 4 wire bytes read as native uint32) as 16-byte ``::ffff:a.b.c.d``."""
    out = np.zeros((len(raw), 4), dtype=np.uint32)
    out[:, 2] = _MAPPED_PREFIX
    out[:, 3] = raw
    return out.view("S16").reshape(len(raw))


_CONSTANTS: dict[tuple[str, int], Array] = {}


def constant(n: int, dtype: np.dtype[Any], value: int) -> Array:
    """``n`` copies of ``value``, read-only: a slice of one cached array per (dtype, value).

    A v5 batch leaves about half of the catalogue's columns at their default; sharing them
    saves allocating and zero-filling a few MiB a batch, and the Arrow conversion shares
    them too (zero-copy). Read-only, so a writer that forgot to allocate fails loudly."""
    key = (dtype.str, value)
    cached = _CONSTANTS.get(key)
    if cached is None or len(cached) < n:
        size = max(n, 2 * len(cached) if cached is not None else 65536)
        cached = np.full(size, value, dtype=dtype) if dtype.kind != "S" else np.zeros(size, dtype)
        cached.flags.writeable = False
        _CONSTANTS[key] = cached
    return cached[:n]


def new_columns(
    n: int, filled: frozenset[str] | set[str] = frozenset(), *, shared: bool = False
) -> dict[str, Array]:
    """Catalogue columns for ``n`` rows: uninitialised where the caller writes every row
    (``filled``), zero elsewhere; ``flows`` and ``sampling_rate`` default to 1. With
    ``shared`` the default columns are read-only shared arrays (:func:`constant`): the caller
    replaces, never writes into, any of them it sets."""
    columns: dict[str, Array] = {}
    for column in catalogue.COLUMNS:
        if column.kind == "str":
            continue
        default = 1 if column.name in ("flows", "sampling_rate") else 0
        if column.name in filled:
            columns[column.name] = np.empty(n, dtype=column.numpy_dtype)
        elif shared:
            columns[column.name] = constant(n, column.numpy_dtype, default)
        elif default:
            columns[column.name] = np.ones(n, dtype=column.numpy_dtype)
        else:
            columns[column.name] = np.zeros(n, dtype=column.numpy_dtype)
    return columns


class _LazyColumns(dict[str, Array]):
    """Catalogue columns made on first use (zeros; ones for ``flows`` and ``sampling_rate``).

    A template carries a third to a half of the catalogue: zero-filling every column of every
    batch was the largest numpy cost of the IPFIX path (``bench/worker_profile.py``), so the
    columns no element writes end up as the shared read-only defaults of :func:`constant`."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def __missing__(self, name: str) -> Array:
        column = catalogue.BY_NAME[name]
        maker = np.ones if name in ("flows", "sampling_rate") else np.zeros
        array: Array = maker(self.n, dtype=column.numpy_dtype)
        self[name] = array
        return array

    def done(self) -> dict[str, Array]:
        """Every catalogue column, in catalogue order; the untouched ones shared defaults."""
        out: dict[str, Array] = {}
        for column in catalogue.COLUMNS:
            if column.kind == "str":
                continue
            name = column.name
            if name in self:
                out[name] = self[name]
            else:
                default = 1 if name in ("flows", "sampling_rate") else 0
                out[name] = constant(self.n, column.numpy_dtype, default)
        return out


def be_uint(raw: Array) -> Array:
    """(n, L) big-endian bytes, L <= 8, as uint64."""
    n, length = raw.shape
    padded = np.zeros((n, 8), dtype=np.uint8)
    padded[:, 8 - length :] = raw
    return padded.view(">u8").reshape(n).astype(np.uint64)


def _uint(recs: Array, name: str) -> Array:
    value = recs[name]
    if value.ndim == 2:
        return be_uint(value)
    return value.astype(np.uint64)


def _signed32(value: Array) -> Array:
    return ((value + 2**31) % 2**32) - 2**31


def _set(
    columns: dict[str, Array], filled: dict[str, int], name: str, element: int, value: Array
) -> None:
    """The preferred element for a column sets it; other elements fill the rows it left at
    zero. The same element repeated (inner and outer headers of a tunnel) overrides where not
    zero: the last one describes the inner flow, as pmacct reads it."""
    target = columns[name]
    previous = filled.get(name)
    if previous is None:
        target[:] = value
        filled[name] = element
    else:
        mask = value != 0 if previous == element else target == 0
        target[mask] = value[mask]


def ntp_to_ms(value: Array) -> Array:
    seconds = (value >> np.uint64(32)).astype(np.int64) - NTP_EPOCH_OFFSET
    fraction = (value & np.uint64(0xFFFFFFFF)) * np.uint64(1000) >> np.uint64(32)
    return np.maximum(seconds * 1000 + fraction.astype(np.int64), 0)


def convert(
    template: Template,
    recs: Array,
    ctx: RowContext,
    var_extras: list[dict[str, Any]] | None,
) -> tuple[dict[str, Array], list[str | None] | None]:
    n = len(recs)
    lazy = _LazyColumns(n)
    columns: dict[str, Array] = lazy
    columns["exporter"][:] = ctx.exporter
    columns["observation_domain"][:] = ctx.domain
    columns["time_received"][:] = ctx.received_ms
    filled: dict[str, int] = {}
    ip_present: dict[str, Array] = {}
    times: dict[str, Array] = {}
    relative: list[tuple[str, Array]] = []
    deltas: list[tuple[str, Array]] = []
    init: Array | None = None
    sampler: Array | None = None
    inline_rate: Array | None = None
    inline_unit = ""
    space: Array | None = None
    icmp: Array | None = None
    version_seen = False
    v4_src: Array | None = None
    v6_src: Array | None = None
    version_default = 0
    extra_ops = []
    for op in template.ops:
        kind = op.kind
        if kind == "int":
            raw = recs[op.name]
            if op.column not in filled and raw.ndim == 1:
                # One cast, big-endian wire to native, into a new array (no zero-fill first).
                columns[op.column] = raw.astype(catalogue.BY_NAME[op.column].numpy_dtype)
                filled[op.column] = op.element
            else:
                value = be_uint(raw) if raw.ndim == 2 else raw
                _set(columns, filled, op.column, op.element, value.astype(columns[op.column].dtype))
        elif kind == "ip":
            raw = recs[op.name]
            if op.length == 4:
                out = ipv4_mapped(raw)  # compiled as native uint32: the 4 wire bytes
            else:
                out = np.ascontiguousarray(raw).view("S16").reshape(n)
            previous = filled.get(op.column)
            several = op.column in template.shared_ip_columns
            present: Array | None = None
            if several:
                present = np.asarray(raw != 0) if op.length == 4 else np.asarray(raw.any(axis=1))
            if previous is None:
                columns[op.column] = out
                filled[op.column] = op.element
                if present is not None:
                    ip_present[op.column] = present.copy()
            else:
                # IPv4 is preferred where a record carries both (Huawei's tunnelled flows, as
                # pmacct reads them): IPv6 fills the records without it; a repeated element
                # (inner header) overrides.
                assert present is not None
                mask = present if previous == op.element else present & ~ip_present[op.column]
                columns[op.column][mask] = out[mask]
                ip_present[op.column] |= present
            if op.column == "src_addr" and present is not None:
                if op.length == 4:
                    v4_src = present
                else:
                    v6_src = present
            elif op.column == "src_addr":
                version_default = 4 if op.length == 4 else 6
        elif kind == "mac":
            _set(columns, filled, op.column, op.element, be_uint(recs[op.name]))
        elif kind == "time":
            value = recs[op.name].astype(np.uint64)
            if op.unit == "s":
                ms = value.astype(np.int64) * 1000
            elif op.unit == "ms":
                ms = value.astype(np.int64)
            else:
                ms = ntp_to_ms(value)
            earlier = times.get(op.column)
            times[op.column] = ms if earlier is None else np.where(ms != 0, ms, earlier)
        elif kind == "uptime":
            relative.append((op.column, recs[op.name].astype(np.int64)))
        elif kind == "delta":
            deltas.append((op.column, recs[op.name].astype(np.int64)))
        elif kind == "init":
            init = recs[op.name].astype(np.int64)
        elif kind == "sampler":
            sampler = _uint(recs, op.name)
            columns["sampler_id"][:] = sampler.astype(np.uint32)
        elif kind == "rate":
            inline_rate = _uint(recs, op.name)
            inline_unit = op.unit
        elif kind == "space":
            space = _uint(recs, op.name)
        elif kind == "icmp":
            icmp = recs[op.name].astype(np.uint16)
        elif kind == "version":
            columns["ip_version"][:] = recs[op.name]
            version_seen = True
        elif kind == "extra":
            extra_ops.append(op)

    # Timestamps: absolute first, then sysUpTime-relative and deltas where still unknown.
    export_ms = ctx.export_ms
    for column, value in relative:
        uptime = ctx.uptime_ms if init is None else export_ms - init
        ms = np.where(uptime != UNKNOWN_UPTIME, export_ms - _signed32(uptime - value), export_ms)
        earlier = times.get(column)
        times[column] = ms if earlier is None else np.where(earlier != 0, earlier, ms)
    for column, value in deltas:
        ms = export_ms - value // 1000
        earlier = times.get(column)
        times[column] = ms if earlier is None else np.where(earlier != 0, earlier, ms)
    observed = times.get("observation")
    start = times.get("time_start", observed)
    end = times.get("time_end", observed)
    if start is None and end is None:
        columns["time_start"][:] = ctx.received_ms
        columns["time_end"][:] = ctx.received_ms
    else:
        start = end if start is None else start
        end = start if end is None else end
        assert start is not None and end is not None
        columns["time_start"][:] = np.maximum(start, 0)
        columns["time_end"][:] = np.maximum(end, 0)

    # Sampling: inline rate, else the record's sampler, else the domain's / configured rate.
    rate = ctx.rate.copy()
    if sampler is not None and ctx.sampler_chunks:
        for lo, hi, samplers in ctx.sampler_chunks:
            ids = sampler[lo:hi]
            part = rate[lo:hi]
            for sampler_id in np.unique(ids).tolist():
                known = samplers.get(int(sampler_id))
                if known:
                    part[ids == sampler_id] = known
    if inline_unit == "305" and space is None:
        inline_rate = None  # a packet interval means nothing without its space
    if inline_rate is not None:
        if space is not None:
            interval = np.maximum(inline_rate, 1)
            inline_rate = np.where(inline_rate > 0, (inline_rate + space) // interval, 0)
        inline_rate = np.minimum(inline_rate, 2**32 - 1).astype(np.uint32)
        rate = np.where(inline_rate > 0, inline_rate, rate)
    columns["sampling_rate"][:] = rate

    # ICMP type/code: IEs 176-179 (columns), 32/139 (type << 8 | code), else the destination
    # port, where exporters traditionally put it.
    if "icmp_type" not in filled and "icmp_code" not in filled:
        if icmp is None and "dst_port" in filled:
            proto = columns["protocol"]
            is_icmp = (proto == 1) | (proto == 58)
            icmp = np.where(is_icmp, columns["dst_port"], 0).astype(np.uint16)
        if icmp is not None:
            columns["icmp_type"][:] = icmp >> 8
            columns["icmp_code"][:] = icmp & 0xFF

    if not version_seen:
        if v4_src is not None and v6_src is not None:
            columns["ip_version"][:] = np.where(v4_src | ~v6_src, 4, 6)
        elif v4_src is not None:
            columns["ip_version"][:] = 4
        elif v6_src is not None:
            columns["ip_version"][:] = 6
        elif version_default:
            columns["ip_version"].fill(version_default)

    if var_extras and any(FRAME_KEY in values for values in var_extras):
        apply_frames(columns, [values.pop(FRAME_KEY, {}) for values in var_extras])
    extra = _extra(recs, extra_ops, var_extras, n)
    return lazy.done(), extra


def _extra(
    recs: Array, ops: list[Any], var_extras: list[dict[str, Any]] | None, n: int
) -> list[str | None] | None:
    if not ops and not var_extras:
        return None
    value_lists: list[list[Any]] = []
    parts: list[str] = []
    for op in ops:
        raw = recs[op.name]
        key = json.dumps(op.key)
        if op.text:
            data = np.ascontiguousarray(raw).tobytes() if raw.ndim == 2 else raw.tobytes()
            step = op.length
            value_lists.append(
                [
                    json.dumps(data[i : i + step].rstrip(b"\0").decode("utf-8", "replace"))
                    for i in range(0, len(data), step)
                ]
            )
            parts.append(f"{key}:%s")
        elif raw.ndim == 1:
            value_lists.append(raw.tolist())
            parts.append(f"{key}:%d")
        else:
            text = np.ascontiguousarray(raw).tobytes().hex()
            step = 2 * op.length
            value_lists.append([text[i : i + step] for i in range(0, len(text), step)])
            parts.append(f'{key}:"%s"')
    if not var_extras:
        fmt = "{" + ",".join(parts) + "}"
        return [fmt % values for values in zip(*value_lists, strict=True)]
    keys = [op.key for op in ops]
    result: list[str | None] = []
    for index in range(n):
        merged: dict[str, Any] = {}
        for key, values in zip(keys, value_lists, strict=True):
            value = values[index]
            merged[key] = (
                json.loads(value) if isinstance(value, str) and value[:1] == '"' else value
            )
        merged.update(var_extras[index])
        result.append(json.dumps(merged, separators=(",", ":")) if merged else None)
    return result
