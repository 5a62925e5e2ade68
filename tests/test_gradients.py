"""Gradient attributions on the block toy model: known relevance, IG completeness, batched == per-token loop."""
from __future__ import annotations

import pytest
import torch
from captum.attr import IntegratedGradients, Saliency

from xattn_utils.attribution.gradients import (
    GradientConfig,
    attribute_gradients,
    attribute_with,
    canonical_method,
)
from xattn_utils.errors import XattnError

from tolerances import f32
from toy_models import BlockToyScorer

METHODS = ["saliency", "input_x_gradient", "integrated_gradients"]


@pytest.fixture(scope="module")
def toy() -> BlockToyScorer:
    return BlockToyScorer(n_features=32, pad_frames=6)


def _grad_ops(toy: BlockToyScorer, steps: int = 1) -> int:
    """float32 roundings behind one attribution of the toy: its reductions forward and backward (frame pair, features,
    block mean, W1, W2, log-softmax over the vocabulary) and the sum over integration steps."""
    return 2 * (2 + toy.A.shape[1] + toy.block + 2 * toy.W1.shape[0] + toy.W2.shape[0]) + steps


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


@pytest.mark.parametrize("method", METHODS)
def test_x_map_finds_each_tokens_block(toy, method):
    g = attribute_gradients(toy, method, "x")
    assert g.signed.shape == (toy.n_tokens, toy.features.shape[1], toy.features.shape[0])
    r = _pearson(g.absolute.sum(-1), toy.true_map_x())
    assert bool((r > 0.9).all()), r


@pytest.mark.parametrize("method", METHODS)
def test_h_map_finds_each_tokens_block(toy, method):
    g = attribute_gradients(toy, method, "h")
    assert g.map.shape == g.absolute.shape == (toy.n_tokens, toy.features.shape[1] // 2)
    r = _pearson(g.absolute, toy.true_map_h())
    assert bool((r > 0.9).all()), r


@pytest.mark.parametrize("on", ["x", "h"])
def test_padding_is_zero(toy, on):
    g = attribute_gradients(toy, "ixg", on)
    n_valid = toy.n_audio_frames if on == "x" else toy.n_audio_frames // 2
    assert g.signed[:, n_valid:].abs().sum() == 0 and g.absolute[:, n_valid:].abs().sum() == 0


@pytest.mark.parametrize("on", ["x", "h"])
@pytest.mark.parametrize("baseline", ["occlusion", "zero"])
def test_ig_completeness(toy, on, baseline):
    g = attribute_gradients(toy, "ig", on, ig_steps=32, baseline=baseline)
    total = g.signed.flatten(1).sum(1)
    gap = g.log_probs - g.baseline_log_probs
    # float32: every cell's attribution (_grad_ops roundings), summed over its cells, on Σ|attribution|; the
    # 32-point Gauss-Legendre quadrature error of this smooth integrand is below that (measured total gap ≤ 5e-7)
    n_ops = _grad_ops(toy, 32) + g.signed[0].numel()
    tol = f32(n_ops=n_ops, scale=float(g.signed.flatten(1).abs().sum(1).max()))
    assert torch.allclose(total, gap, rtol=0, atol=tol), (total, gap)
    assert g.log_probs.shape == (toy.n_tokens,)


def test_ig_baseline_is_silence_on_x():
    toy = BlockToyScorer(n_features=16)
    toy.occlusion_value = -1.5
    g = attribute_gradients(toy, "ig", "x", baseline="occlusion")
    silent = torch.full_like(toy.features, -1.5)[None]
    ref = toy.log_probs(silent)[0].gather(-1, toy.target_ids[:, None])[:, 0]
    assert torch.allclose(g.baseline_log_probs, ref)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("on", ["x", "h"])
def test_batched_equals_per_token_loop(toy, method, on):
    batched = attribute_gradients(toy, method, on, ig_steps=8)
    looped = attribute_gradients(toy, method, on, ig_steps=8, token_batch=1)
    chunked = attribute_gradients(toy, method, on, ig_steps=8, token_batch=3, internal_batch_size=12)
    # the same gradients in other batch shapes: float32 rounding of one attribution (8 IG steps), on its magnitude
    tol = f32(n_ops=_grad_ops(toy, 8), scale=float(batched.absolute.max()))
    for other in (looped, chunked):
        assert torch.allclose(batched.signed, other.signed, rtol=0, atol=tol)
        assert torch.allclose(batched.absolute, other.absolute, rtol=0, atol=tol)


def test_rows_match_plain_autograd_per_token(toy):
    """Each batched row is the gradient of that token's log-prob alone."""
    g = attribute_gradients(toy, "saliency", "x")
    for i in range(toy.n_tokens):
        x = toy.features[None].clone().requires_grad_(True)
        toy.log_probs(x)[0, i, toy.target_ids[i]].backward()
        ref = x.grad[0].T.clone()
        ref[toy.n_audio_frames:] = 0
        # one gradient, batched or alone: float32 rounding of the toy's forward and backward
        assert torch.allclose(g.signed[i], ref, rtol=0, atol=f32(n_ops=_grad_ops(toy), scale=float(ref.abs().max())))


def test_config_and_aliases(toy):
    a = attribute_with(toy, GradientConfig(method="IG", on="h", ig_steps=4))
    assert a.method == "integrated_gradients" and a.convergence_delta.shape == (toy.n_tokens,)
    assert canonical_method("Input-X-Gradient") == "input_x_gradient"
    with pytest.raises(XattnError, match="use one of"):
        canonical_method("lrp")
    with pytest.raises(XattnError, match="'x'"):
        attribute_gradients(toy, "saliency", "z")


def test_uses_captum_classes(toy):
    """Parity with a direct captum call on one token (guards the batching trick)."""
    fwd = lambda x: toy.log_probs(x)[:, 2, toy.target_ids[2]]
    x = toy.features[None].clone().requires_grad_(True)
    sal = Saliency(fwd).attribute(x, abs=False)[0].T
    ig = IntegratedGradients(fwd).attribute(x, baselines=torch.zeros_like(x), n_steps=8)[0].T
    sal[toy.n_audio_frames:] = 0
    ig[toy.n_audio_frames:] = 0
    # float32 rounding of the toy's forward and backward (and of 8 IG steps), on the attributions' magnitude
    assert torch.allclose(attribute_gradients(toy, "saliency", "x").signed[2], sal, rtol=0,
                          atol=f32(n_ops=_grad_ops(toy), scale=float(sal.abs().max())))
    # zero baseline on X keeps padding at its input value; padding is already 0 in the toy
    assert torch.allclose(attribute_gradients(toy, "ig", "x", ig_steps=8, baseline="zero").signed[2], ig, rtol=0,
                          atol=f32(n_ops=_grad_ops(toy, 8), scale=float(ig.abs().max())))
