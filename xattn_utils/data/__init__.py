"""Data: the speech the study runs on.

Audio loading and checks (``audio``), the manifest format and its validation (``manifest``), the synthetic corpus
with exact word times (``corpus``, built from the sentence ``grammar`` and spoken by ``espeak``). Nothing here knows
about models; every later stage reads utterances through the manifest.
"""
