"""A run's records: the hash-chained ledger (`chain`), its row schemas (`schemas`), a trial folder's
hashes and manifest (`manifest`), results.tsv (`results`) and the git lineage (`lineage`).

The ledger is the record; everything else here is derived from it or checked against it.
"""
