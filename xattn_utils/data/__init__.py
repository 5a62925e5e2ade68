"""Data: the speech the study runs on.

Audio loading and checks (``audio``), the manifest format and its validation (``manifest``), the synthetic corpora
with word times (``corpus``: natural ``sentences`` or the template ``grammar``, spoken by the speech ``engines`` —
flite, festival, espeak-ng through ``espeak``). Nothing here knows
about models; every later stage reads utterances through the manifest.
"""
