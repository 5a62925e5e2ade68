"""Runs: the study as executed notebooks.

``sweep`` runs a sweep file (models × data × parameters) through Dask, in parts: ``spec`` parses, validates and
expands the file into runs, ``worker`` executes one run's notebooks with papermill (resumable, one failing run does
not stop the rest), ``report`` writes ``collected.*`` and ``report.md``; ``shard`` splits
one SPES map over machines and merges the partial sums; ``study`` is ``make study``: the default sweep over every
model present. The top of the pipeline: imports from any subpackage.
"""
