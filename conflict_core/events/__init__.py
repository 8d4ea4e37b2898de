"""Sync events in and out of the store, by responsibility.

* :mod:`.validation` — the one validator of the import format (files and JSON bodies);
* :mod:`.readers` — Parquet and CSV files as validated, bounded chunks;
* :mod:`.store_writes` — all-or-nothing imports and inserts of validated events;
* :mod:`.store_reads` — events read back from the store (history windows, incremental tails);
* :mod:`.export` — hive-partitioned Parquet exports.
"""
