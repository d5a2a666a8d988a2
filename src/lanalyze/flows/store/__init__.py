"""The embedded flow store: immutable Parquet files under ``<data_dir>/flows``.

- :mod:`.paths`: where every file lives, and private creation (the only module that knows
  the layout);
- :mod:`.writer`: raw flow segments, written atomically (the collector, ``flows import``);
- :mod:`.layout`: the rollup tables, time buckets, the manifest and raw-file listings that
  the maintainer writes and the reports read;
- :mod:`.rollup`, :mod:`.rollup_aggregate`: the rollup maintainer (rollups, compaction,
  retention) and its per-minute sums;
- :mod:`.synthetic`: seeded random flows for tests and benchmarks, stored through the writer.

The query side (:mod:`lanalyze.flows.query`) only reads what this package writes.
"""
