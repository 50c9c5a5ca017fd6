"""The kernels converter, groundup.engines.torch.kernels.use_kernels: each fused module against its
plain twin (values and gradients) at the shapes real runs use; what it swaps and what it leaves
alone; the switch (train.kernels, GROUNDUP_KERNELS=0) that keeps the model plain."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from groundup import kernels
from groundup.config import ModelConfig, TrainConfig
from groundup.engines.torch.kernels import (FusedCausalSelfAttention, FusedFeedForward, FusedLayerNorm, FusedLinear,
                                            use_kernels)
from groundup.model import GPT, CausalSelfAttention, FeedForward
from groundup.model.lora import LoRALinear, add_lora
from groundup.train.optim import AdamW, clip_gradients_, configure_adamw, gradient_norm

from helpers import count_kernel_calls, tiny_config

pytestmark = pytest.mark.skipif(not kernels.enabled(), reason=f"CPU kernels unavailable: {kernels.unavailable_reason()}")

# The classic CPU recipe's widths (configs/shakespeare_char.toml): 4 heads of 32, 128 wide, context
# 64, batch 12 — an activation is 12 × 64 × 128 = 98,304 numbers, well above MIN_ELEMENTS.
REAL = dict(vocab_size=76, block_size=64, n_layer=2, n_head=4, n_embd=128, dropout=0.0)
BATCH = 12


def outputs_and_gradients(module: nn.Module, x: torch.Tensor, *args):
    """module(x) and the gradients of x and of every parameter, for a fixed random upstream gradient."""
    x = x.detach().clone().requires_grad_(True)
    out = module(x, *args)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    params = [p for p in module.parameters()]
    return out.detach(), torch.autograd.grad(out, [x, *params], upstream)


CASES = {  # name → (plain module, the kernels its fused twin must run)
    "linear (qkv)": (lambda: nn.Linear(128, 384), {"linear"}),
    "linear, no bias (lm head)": (lambda: nn.Linear(128, 76, bias=False), {"linear"}),
    "layer norm": (lambda: nn.LayerNorm(128), {"layer_norm"}),
    "layer norm, no bias": (lambda: nn.LayerNorm(128, bias=False), {"layer_norm"}),
    "feed-forward, gelu": (lambda: FeedForward(ModelConfig(**REAL)), {"linear", "gelu"}),
    "feed-forward, relu": (lambda: FeedForward(ModelConfig(**REAL, activation="relu")), {"linear"}),
    "attention, learned positions": (lambda: CausalSelfAttention(ModelConfig(**REAL, positional="learned")),
                                     {"linear", "causal_attention"}),
    "attention, rope, no bias": (lambda: CausalSelfAttention(ModelConfig(**REAL, positional="rope", bias=False)),
                                 {"linear", "causal_attention"}),
    "attention, head size 64": (lambda: CausalSelfAttention(ModelConfig(**{**REAL, "n_head": 2})),
                                {"linear", "causal_attention"}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_each_fused_module_matches_its_plain_twin_at_real_shapes(name, monkeypatch):
    make, expected_kernels = CASES[name]
    torch.manual_seed(0)
    plain = make()
    with torch.no_grad():  # biases and gains away from their 0 / 1 initial values
        for p in plain.parameters():
            p.add_(0.1 * torch.randn_like(p))
    fused = use_kernels(copy.deepcopy(plain))
    assert type(fused) is not type(plain) and isinstance(fused, type(plain))
    x = torch.randn(BATCH, REAL["block_size"], 128)
    counts = count_kernel_calls(monkeypatch)
    out, grads = outputs_and_gradients(fused, x)
    assert {k for k, n in counts.items() if n} == expected_kernels, counts  # the kernels really ran, only those
    before = dict(counts)
    ref, ref_grads = outputs_and_gradients(plain, x)
    assert counts == before  # the plain twin runs no kernel
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, ref_grads):  # dx, then every parameter's gradient (sums over 768 rows)
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)


def test_fused_attention_takes_the_plain_path_where_the_kernel_does_not_apply(monkeypatch):
    """The math path, active dropout, a head size not a multiple of 16, a KV cache: the parent's forward."""
    counts = count_kernel_calls(monkeypatch)
    for config, training in [(ModelConfig(**REAL, attention="math"), False),
                             (ModelConfig(**{**REAL, "dropout": 0.1}), True),
                             (ModelConfig(**{**REAL, "n_embd": 96, "n_head": 8}), False)]:  # head size 12
        use_kernels(CausalSelfAttention(config)).train(training)(torch.randn(BATCH, 64, config.n_embd))
    assert counts["causal_attention"] == 0
    torch.manual_seed(0)
    model = use_kernels(GPT(ModelConfig(**REAL))).eval()
    idx = torch.randint(0, 76, (BATCH, 64))
    with torch.no_grad():
        cached = model(idx, cache=model.new_cache(BATCH))[0]
        assert counts["causal_attention"] == 0
        uncached = model(idx)[0]
    assert counts["causal_attention"] == REAL["n_layer"]  # the uncached forward: one per layer
    torch.testing.assert_close(cached, uncached, rtol=1e-5, atol=1e-5)


def test_the_converter_swaps_every_eligible_module_in_place_and_keeps_parameters_and_names():
    torch.manual_seed(0)
    model = GPT(ModelConfig(**REAL))
    params = dict(model.named_parameters())
    keys = list(model.state_dict())
    modules = dict(model.named_modules())
    assert use_kernels(model) is model
    for name, module in model.named_modules():
        assert module is modules[name], name  # the same objects, re-classed
    expected = {nn.Linear: FusedLinear, nn.LayerNorm: FusedLayerNorm, FeedForward: FusedFeedForward,
                CausalSelfAttention: FusedCausalSelfAttention}
    kinds = {name: type(m) for name, m in model.named_modules()}
    assert sum(t is FusedLinear for t in kinds.values()) == 4 * REAL["n_layer"] + 1  # qkv, output, up, down; lm head
    assert sum(t is FusedLayerNorm for t in kinds.values()) == 2 * REAL["n_layer"] + 1
    assert sum(t is FusedFeedForward for t in kinds.values()) == sum(t is FusedCausalSelfAttention for t in kinds.values()) == 2
    assert not [n for n, t in kinds.items() if t in expected]  # nothing plain left that has a twin
    assert type(model.token_embedding) is nn.Embedding and type(model) is GPT  # the rest as it was
    assert dict(model.named_parameters()).keys() == params.keys()
    assert all(p is params[n] for n, p in model.named_parameters())
    assert list(model.state_dict()) == keys
    assert model.lm_head.weight is model.token_embedding.weight  # still tied
    use_kernels(model)  # idempotent
    assert {name: type(m) for name, m in model.named_modules()} == kinds


@pytest.mark.parametrize("order", ["lora then kernels", "kernels then lora"])
def test_lora_wrapped_projections_are_left_alone_and_still_train(order, monkeypatch):
    torch.manual_seed(0)
    model = GPT(ModelConfig(**REAL))
    if order == "lora then kernels":
        add_lora(model, r=2, alpha=4)
        use_kernels(model)
    else:
        use_kernels(model)
        add_lora(model, r=2, alpha=4)
    assert all(type(model.get_submodule(f"blocks.{i}.{t}")) is LoRALinear
               for i in range(REAL["n_layer"]) for t in ("attention.qkv", "attention.output", "ffn.up", "ffn.down"))
    assert type(model.lm_head) is FusedLinear and type(model.blocks[0].ffn) is FusedFeedForward
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.fill_(0.1)
    counts = count_kernel_calls(monkeypatch)
    idx = torch.randint(0, 76, (BATCH, 64))
    model(idx, idx)[1].backward()
    assert counts["causal_attention"] == counts["gelu"] == 0  # wrapped qkv / up: the adapter's path
    assert counts["layer_norm"] > 0 and counts["linear"] == 1  # the norms and the LM head still fused
    for name in ("blocks.0.attention.qkv", "blocks.0.ffn.up"):
        assert model.get_submodule(name).lora_A.grad.abs().sum() > 0, name


def test_a_converted_model_trains_as_the_plain_model_does(monkeypatch):
    """Same weights, same batches: 5 AdamW steps, converted + fused AdamW vs plain + torch's AdamW."""
    monkeypatch.setattr(kernels, "MIN_ELEMENTS", 0)  # (a small model: every size takes the kernels)
    for positional, bias, norm in [("learned", True, "pre"), ("rope", False, "post"), ("sinusoidal", True, "pre")]:
        def run(with_kernels):
            torch.manual_seed(0)
            model = GPT(ModelConfig(vocab_size=50, block_size=32, n_layer=2, n_head=2, n_embd=64, dropout=0.0,
                                    positional=positional, bias=bias, norm=norm))
            if with_kernels:
                use_kernels(model)
            opt = configure_adamw(model, TrainConfig(kernels=with_kernels), torch.device("cpu"))
            assert isinstance(opt, AdamW) == with_kernels
            data = torch.randint(0, 50, (5, 4, 33), generator=torch.Generator().manual_seed(1))
            losses = []
            for batch in data:
                _, loss = model(batch[:, :-1], batch[:, 1:])
                loss.backward()
                params = list(model.parameters())
                clip_gradients_(params, 1.0, gradient_norm(params, fused=with_kernels), fused=with_kernels)
                opt.step()
                opt.zero_grad()
                losses.append(loss.item())
            return losses, model.state_dict()

        counts = count_kernel_calls(monkeypatch)
        losses, weights = run(True)
        assert counts["causal_attention"] and counts["layer_norm"] and counts["linear"], counts
        ref_losses, ref_weights = run(False)
        assert losses == pytest.approx(ref_losses, rel=1e-5)
        for name in weights:  # (Adam's m/√v turns float32 rounding of near-zero gradients into up to ~lr/50)
            torch.testing.assert_close(weights[name], ref_weights[name], rtol=1e-4, atol=1e-4)


def test_off_the_kernels_ground_the_fused_feed_forward_is_the_plain_one():
    """bf16 (as on other devices): up(x) with its bias, then GELU, bit for bit the parent's forward."""
    ffn = use_kernels(FeedForward(ModelConfig(vocab_size=10, n_embd=64, n_head=2, block_size=8)).to(torch.bfloat16))
    assert type(ffn) is FusedFeedForward
    x = torch.randn(4, 64, 64, dtype=torch.bfloat16)
    y = ffn(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y, ffn.down(F.gelu(ffn.up(x), approximate="tanh")), rtol=0, atol=0)


def test_kernels_false_picks_torch_adamw_and_torch_clipping(monkeypatch):
    model = GPT(ModelConfig(**REAL))
    assert type(configure_adamw(model, TrainConfig(), torch.device("cpu"))) is AdamW
    assert type(configure_adamw(model, TrainConfig(kernels=False), torch.device("cpu"))) is torch.optim.AdamW

    def no_kernel(*args):
        raise AssertionError("a fused kernel ran although fused=False")

    monkeypatch.setattr(kernels, "total_norm", no_kernel)
    monkeypatch.setattr(kernels, "clip_", no_kernel)
    params = [nn.Parameter(torch.randn(70_000))]
    params[0].grad = torch.randn(70_000)
    norm = gradient_norm(params, fused=False)
    torch.testing.assert_close(norm, params[0].grad.norm())
    clip_gradients_(params, 1.0, norm, fused=False)
    torch.testing.assert_close(params[0].grad.norm(), torch.tensor(1.0), rtol=1e-5, atol=0)


def test_the_switch_and_the_checkpoints(tmp_path):
    """`groundup train` converts the model unless kernels=false; either way the run directory is the
    same format, so a run trained with the kernels resumes without them (and a sampler loads each
    run as it was trained)."""
    from groundup.sample import load_run
    from groundup.train import checkpoint as ckpt
    from groundup.train.trainer import train

    fused = train(tiny_config("max_steps=10", "lr_decay_steps=20"), tmp_path / "fused", progress=False)
    plain = train(tiny_config("max_steps=20", "kernels=false"), tmp_path / "plain", progress=False)
    assert type(fused.model.lm_head) is FusedLinear and type(fused.model.blocks[0].attention) is FusedCausalSelfAttention
    assert not [n for n, m in plain.model.named_modules() if type(m).__name__.startswith("Fused")]
    config = ckpt.read_run_config(tmp_path / "fused").replace(max_steps=20, kernels=False)
    resumed = train(config, tmp_path / "fused", resume=True, progress=False)
    assert resumed.step == 20 and type(resumed.model.lm_head) is nn.Linear
    for name in (ckpt.WEIGHTS, ckpt.OPTIMIZER):
        a, b = ckpt.read_tensors(tmp_path / "fused" / name), ckpt.read_tensors(tmp_path / "plain" / name)
        assert {k: (v.shape, v.dtype) for k, v in a.items()} == {k: (v.shape, v.dtype) for k, v in b.items()}, name
    assert type(load_run(tmp_path / "plain", "cpu")[0].lm_head) is nn.Linear
    train(tiny_config("max_steps=2"), tmp_path / "fused2", progress=False)
    assert type(load_run(tmp_path / "fused2", "cpu")[0].lm_head) is FusedLinear


def test_groundup_kernels_0_leaves_the_model_plain():
    script = ("from groundup.config import ModelConfig; from groundup.model import GPT; "
              "from groundup.engines.torch.kernels import use_kernels; "
              "m = use_kernels(GPT(ModelConfig(vocab_size=10, n_layer=1, n_head=2, n_embd=32, block_size=8))); "
              "print(sorted({type(x).__name__ for x in m.modules()}))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={**os.environ, "GROUNDUP_KERNELS": "0"}, timeout=120)
    assert out.returncode == 0, out.stderr
    names = eval(out.stdout)  # a printed list of class names
    assert "Linear" in names and "LayerNorm" in names and not [n for n in names if n.startswith("Fused")], names
