"""The adapters: one door per external system, each taking explicit configuration.

:mod:`.rucio` (rucio-clients), :mod:`.butler` (daf_butler: repositories, queries, dimension
records, the datastore shim, the campaign's lock), :mod:`.workflow` (pipetask and BPS executors,
registered by entry point), and the local machine: atomic files (:mod:`.files`), Parquet file
tables (:mod:`.tables`), a run folder's records (:mod:`.results`), child processes
(:mod:`.processes`). They import only the domain (and each other).
"""
