"""Analysis: how much of the saliency does cross-attention explain?

``agreement`` (Pearson, Spearman, Kendall, top-k per token, utterance and dataset, bootstrap intervals, split-half
reliability and the noise-corrected correlation), ``maps`` (one utterance's maps from a store, on one grid),
``compare`` (a store's maps → the agreement table and the study's headline), ``faithfulness`` (deletion /
insertion curves), ``timestamps``, ``aligner`` and ``timing_eval`` (word times from attention and from saliency,
against exact word times), ``sanity`` (the model-randomization check of each attribution method), ``evaluation``
(WER, BLEU, chrF) and the plots. Depends on everything below it; nothing below depends on it.
"""
