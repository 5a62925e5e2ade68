"""Runs: the study as executed notebooks.

``sweep`` expands a sweep file (models × data × parameters) into runs, executes the notebooks with papermill
(resumable, one failing run does not stop the rest) and writes ``collected.*`` and ``report.md``; ``shard`` splits
one SPES map over machines and merges the partial sums; ``study`` is ``make study``: the default sweep over every
model present. The top of the pipeline: imports from any subpackage.
"""
