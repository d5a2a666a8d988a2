"""Enrichment names as Arrow dictionary columns, built from integer codes, never per-flow text.

A name column of a batch is ``pa.DictionaryArray(indices, dictionary)``: the dictionary is
the few distinct names of a table (a database's countries or AS organisations, the
configured network names, the names seen so far), the indices one int32 per flow, gathered
with numpy from the lookup's answer index. Materialising a string per flow (``take``) and
then hashing it again in the Parquet writer cost ~30-80 ns a row and column; the indices
cost ~2 ns, and the Parquet writer writes a dictionary array's dictionary and indices as they
are (docs/performance.md, "Enrichment at ingest").

A dictionary is kept the same from batch to batch (:class:`NameCodes` per table,
:class:`NameRegistry` for names met in the traffic), so the chunks of a segment share it and
the writer neither unifies nor re-encodes them.

Trust: names come from the configuration, the administrator's databases and the SNMP file,
bounded in length by their readers; :class:`NameRegistry` bounds how many are kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

MAX_NAMES = 65536
"""Distinct names a :class:`NameRegistry` keeps (each at most 256 characters) before it
starts a new dictionary."""


def column(codes: npt.NDArray[Any], dictionary: pa.Array) -> pa.DictionaryArray:
    """The dictionary column of per-flow ``codes`` into ``dictionary`` (-1: null)."""
    codes = np.ascontiguousarray(codes, dtype=np.int32)
    valid = codes >= 0
    nulls = len(codes) - int(np.count_nonzero(valid))
    # The validity bitmap packed by numpy (half the cost of pa.array's mask), and 0 under
    # the nulls, not -1: Arrow's dictionary unification reads every index.
    bitmap = pa.py_buffer(np.packbits(valid, bitorder="little")) if nulls else None
    data = pa.py_buffer(np.maximum(codes, 0) if nulls else codes)
    indices = pa.Array.from_buffers(pa.int32(), len(codes), [bitmap, data], null_count=nulls)
    return pa.DictionaryArray.from_arrays(indices, dictionary, safe=False)


@dataclass(frozen=True)
class NameCodes:
    """A fixed list of values (names or None), coded into their distinct names.

    ``codes[i]`` is the dictionary index of value ``i`` and -1 for a missing one; a trailing
    -1 answers the lookups' "none" (index -1), so ``codes[index]`` needs no masking."""

    dictionary: pa.Array
    codes: npt.NDArray[np.int32]

    @classmethod
    def of(cls, values: Sequence[str | None]) -> NameCodes:
        distinct: dict[str, int] = {}
        codes = [distinct.setdefault(v, len(distinct)) if v else -1 for v in values]
        return cls(pa.array(list(distinct), pa.string()), np.array([*codes, -1], np.int32))

    def column(self, index: npt.NDArray[Any]) -> pa.DictionaryArray:
        """The names of ``index`` (value indices, -1 none) as a dictionary column."""
        return column(self.codes[index], self.dictionary)


NO_NAMES = NameCodes.of([])


class NameRegistry:
    """Names met in the traffic (interface, exporter and application names), coded in order
    of arrival, so batch after batch share one dictionary; after :data:`MAX_NAMES` it starts
    again (the writer unifies a segment's differing dictionaries: rare, and correct)."""

    def __init__(self, limit: int = MAX_NAMES) -> None:
        self.limit = limit
        self._codes: dict[str, int] = {}
        self._dictionary: pa.Array | None = None

    def __len__(self) -> int:
        return len(self._codes)

    def codes(self, names: Sequence[str | None]) -> npt.NDArray[np.int32]:
        """The codes of ``names`` (None and "" are -1) and a trailing -1, for index -1."""
        if len(self._codes) + len(names) > self.limit:
            self._codes = {}
            self._dictionary = None
        known = self._codes
        out = []
        for name in names:
            if not name:
                out.append(-1)
                continue
            code = known.get(name)
            if code is None:
                code = known[name] = len(known)
                self._dictionary = None
            out.append(code)
        out.append(-1)
        return np.array(out, dtype=np.int32)

    @property
    def dictionary(self) -> pa.Array:
        if self._dictionary is None:
            self._dictionary = pa.array(list(self._codes), pa.string())
        return self._dictionary

    def column(self, names: Sequence[str | None], index: npt.NDArray[Any]) -> pa.DictionaryArray:
        """``names[index]`` (-1: null) as a dictionary column of this registry."""
        return column(self.codes(names)[index], self.dictionary)
