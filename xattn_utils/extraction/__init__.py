"""Extraction: decode a hypothesis once, then read the cross-attention under forced decoding of it.

``forced`` holds decoding (greedy, beam) and the batched forced pass (cross-attention, value norms, encoder states)
plus :class:`~xattn_utils.extraction.forced.Seq2SeqScorer`, the forced scorer every attribution method perturbs;
``extract`` runs a manifest through it into the result store, one group per utterance. Depends on ``data`` and
``models``.
"""
