"""Attribution: what the model's output depends on, measured by perturbation and by gradients.

``scorer`` is the protocol every method needs (log-probabilities of the forced hypothesis for a batch of inputs);
``segmentation`` (SLIC superpixels) and ``spes`` (SPES occlusion: SMX on the spectrogram, SMH on encoder frames, each
in two independent halves) and ``gradients`` (captum's Saliency, InputXGradient, IntegratedGradients) compute maps;
``grids`` puts any map on the encoder-frame grid the comparison uses; ``mixing`` measures encoder context mixing;
``saliency`` is the pipeline that runs methods over a store, reusing its stored hypotheses. Depends on ``data``,
``models`` and ``extraction``.
"""
