"""Proof of correctness by agreement: Hugging Face's GPT-2, given our weights, computes our logits —
and ours, given theirs, computes theirs. Random-init configs built here; nothing is downloaded."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from groundup.interop.hf import config_from_hf, from_hf, hf_config_kwargs, to_hf  # noqa: E402
from groundup.model import GPT  # noqa: E402


def small_hf():
    cfg = transformers.GPT2Config(vocab_size=97, n_positions=32, n_embd=48, n_layer=3, n_head=4,
                                  activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                  bos_token_id=None, eos_token_id=None)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def test_our_model_with_hf_weights_gives_hf_logits():
    hf = small_hf()
    config = config_from_hf(hf.config)
    ours = GPT(config).eval()
    ours.load_weights(from_hf(hf.state_dict(), config))
    x = torch.randint(0, 97, (2, 32))
    with torch.no_grad():
        expected = hf(input_ids=x).logits
        got = ours(x)[0]
    assert (got - expected).abs().max().item() < 1e-5


def test_exported_weights_load_into_hf_with_the_same_logits():
    torch.manual_seed(1)
    hf_template = small_hf()
    config = config_from_hf(hf_template.config)
    ours = GPT(config).eval()
    with torch.no_grad():  # make every tensor distinct from HF's own init
        for p in ours.parameters():
            p.add_(0.05 * torch.randn_like(p))
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_config_kwargs(config), bos_token_id=None,
                                                              eos_token_id=None)).eval()
    missing, unexpected = hf.load_state_dict(to_hf(ours.weights(), config), strict=False)
    assert not unexpected and all("attn.bias" in k or "masked_bias" in k for k in missing), (missing, unexpected)
    x = torch.randint(0, 97, (3, 20))
    with torch.no_grad():
        assert (hf(input_ids=x).logits - ours(x)[0]).abs().max().item() < 1e-5


def test_hf_logits_with_the_fused_kernels_at_real_shapes(monkeypatch):
    """The same agreement with the kernels converter applied, at a shape where they all run: head
    size 32, activations of 4 × 64 × 128 = 32,768 numbers (above kernels.MIN_ELEMENTS)."""
    from groundup import kernels
    from groundup.engines.torch.kernels import use_kernels

    from helpers import count_kernel_calls

    if not kernels.enabled():
        pytest.skip(f"CPU kernels unavailable: {kernels.unavailable_reason()}")
    cfg = transformers.GPT2Config(vocab_size=97, n_positions=64, n_embd=128, n_layer=2, n_head=4,
                                  activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                  bos_token_id=None, eos_token_id=None)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # HF starts biases at 0 and gains at 1: move every tensor, so each one shows
        for p in hf.parameters():
            p.add_(0.02 * torch.randn_like(p))
    config = config_from_hf(hf.config)
    ours = use_kernels(GPT(config)).eval()
    ours.load_weights(from_hf(hf.state_dict(), config))
    x = torch.randint(0, 97, (4, 64))
    counts = count_kernel_calls(monkeypatch)
    with torch.no_grad():
        expected = hf(input_ids=x).logits
        got = ours(x)[0]
    assert counts == {"linear": 2 * 4 + 1, "layer_norm": 2 * 2 + 1, "gelu": 2, "causal_attention": 2}  # every layer fused
    assert (got - expected).abs().max().item() < 1e-5
