"""The ClickHouse flow store (``[flows.store] backend = "clickhouse"``; docs/scale-out.md).

* :mod:`.schema`: the tables, generated from the column catalogue and the rollup tables, on
  every server (no ``ON CLUSTER`` without ZooKeeper); created when missing, refused when they
  differ;
* :mod:`.connect`: clients from ``[flows.store]`` (the password never logged);
* :mod:`.spool` and :mod:`.writer`: the collector's columnar inserts, spooled to local disk
  while ClickHouse is away and replayed exactly once per batch;
* :mod:`.retention`: ``flows.rollup.*_max_age`` as partition drops;
* :mod:`.export`: an embedded store's Parquet files into the cluster
  (``lanalyze flows export --to clickhouse``).
"""
