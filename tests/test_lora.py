"""LoRA: our adapter matches Hugging Face peft, starts as the base model, trains only A and B,
merges into W + (α/r)·B·A and unmerges exactly, and round-trips through its files."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from groundup.config import ModelConfig
from groundup.errors import CheckpointError, ConfigError
from groundup.model import GPT
from groundup.model.lora import (
    ADAPTER_WEIGHTS, LoRALinear, add_lora, adapter_tensors, base_fingerprint, load_adapters, lora_modules,
    merge_lora, save_adapters, trainable_parameters, unmerge_lora,
)


class TwoLayer(nn.Module):
    """The smallest module with the shape of a transformer's feed-forward: up, GELU, down."""

    def __init__(self, d=12, hidden=40):
        super().__init__()
        self.up = nn.Linear(d, hidden)
        self.down = nn.Linear(hidden, d)

    def forward(self, x):
        return self.down(F.gelu(self.up(x)))


def _peft_pair(r=4, alpha=8.0, seed=0):
    """(ours, peft's) adapted copies of the same TwoLayer, with the same nonzero A and B."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    base = TwoLayer()
    ours = copy.deepcopy(base)
    add_lora(ours, r=r, alpha=alpha, targets=("up", "down"))
    theirs = get_peft_model(copy.deepcopy(base), LoraConfig(r=r, lora_alpha=alpha, target_modules=["up", "down"],
                                                             lora_dropout=0.0))
    with torch.no_grad():
        for name in ("up", "down"):
            mine = lora_modules(ours)[name]
            mine.lora_B.normal_(0.0, 0.5)  # B = 0 at init would make the comparison trivial
            layer = getattr(theirs.base_model.model, name)
            layer.lora_A["default"].weight.copy_(mine.lora_A)
            layer.lora_B["default"].weight.copy_(mine.lora_B)
    return ours, theirs


def test_lora_matches_peft_outputs_gradients_and_merged_weights():
    ours, theirs = _peft_pair()
    x = torch.randn(5, 7, 12)
    out_ours, out_theirs = ours(x), theirs(x)
    torch.testing.assert_close(out_ours, out_theirs, rtol=1e-6, atol=1e-6)
    assert out_ours.abs().sum() > 0

    (out_ours ** 2).sum().backward()
    (out_theirs ** 2).sum().backward()
    for name in ("up", "down"):
        mine, layer = lora_modules(ours)[name], getattr(theirs.base_model.model, name)
        torch.testing.assert_close(mine.lora_A.grad, layer.lora_A["default"].weight.grad, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(mine.lora_B.grad, layer.lora_B["default"].weight.grad, rtol=1e-5, atol=1e-6)
        assert mine.weight.grad is None  # the base weight is frozen in both
        assert layer.base_layer.weight.grad is None

    merged_theirs = theirs.merge_and_unload()
    merge_lora(ours)
    for name in ("up", "down"):
        torch.testing.assert_close(lora_modules(ours)[name].weight, getattr(merged_theirs, name).weight, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours(x), merged_theirs(x), rtol=1e-6, atol=1e-6)


def test_lora_initialisation_matches_peft_bit_for_bit():
    """A: Kaiming-uniform(a=√5); B: zeros. Same RNG state in, same A out."""
    _, theirs = _peft_pair()
    mine = LoRALinear(nn.Linear(12, 40), r=4, alpha=8.0)
    layer = theirs.base_model.model.up
    torch.manual_seed(123)
    mine.reset_lora_parameters()
    torch.manual_seed(123)
    layer.reset_lora_parameters("default", True)
    assert torch.equal(mine.lora_A, layer.lora_A["default"].weight)
    assert torch.equal(mine.lora_B, torch.zeros(40, 4)) and torch.equal(layer.lora_B["default"].weight, mine.lora_B)
    assert mine.scaling == theirs.base_model.model.up.scaling["default"] == 2.0


def _tiny_gpt(seed=0):
    torch.manual_seed(seed)
    return GPT(ModelConfig(vocab_size=20, block_size=16, n_layer=2, n_head=2, n_embd=16))


def test_fresh_adapters_leave_the_model_unchanged_and_only_a_and_b_train():
    model = _tiny_gpt()
    idx = torch.randint(0, 20, (3, 16))
    before = model(idx)[0]
    base = {k: v.clone() for k, v in model.weights().items()}
    adapted = add_lora(model, r=2, alpha=4)
    assert len(adapted) == 2 * 4  # qkv, output, up, down in each of 2 blocks
    assert torch.equal(model(idx)[0], before)  # B = 0: exactly the base model
    n_adapter = sum(2 * (m.in_features + m.out_features) for m in lora_modules(model).values())
    assert trainable_parameters(model) == n_adapter

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        _, loss = model(idx, idx)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert not torch.equal(model(idx)[0], before)
    for name, tensor in model.weights().items():
        if name in base:
            assert torch.equal(tensor, base[name]), name  # every base tensor untouched
    assert all(adapter_tensors(model)[f"{n}.lora_B"].abs().sum() > 0 for n in adapted)


def test_merge_equals_w_plus_scaled_ba_and_unmerge_restores_w_exactly():
    model = _tiny_gpt()
    add_lora(model, r=3, alpha=5)
    with torch.no_grad():
        for m in lora_modules(model).values():
            m.lora_B.normal_(0, 0.3)
    idx = torch.randint(0, 20, (2, 16))
    unmerged_logits = model(idx)[0]
    originals = {n: m.weight.detach().clone() for n, m in lora_modules(model).items()}
    fingerprint = base_fingerprint(model)

    merge_lora(model)
    for name, m in lora_modules(model).items():
        expected = originals[name] + (m.lora_B @ m.lora_A) * (5 / 3)  # W + (α/r)·B·A
        assert torch.equal(m.weight, expected), name
        assert m.merged
    torch.testing.assert_close(model(idx)[0], unmerged_logits, rtol=1e-5, atol=1e-5)
    assert base_fingerprint(model) == fingerprint  # the fingerprint names the base, merged or not

    unmerge_lora(model)
    for name, m in lora_modules(model).items():
        assert torch.equal(m.weight, originals[name]), name  # bit for bit
    assert torch.equal(model(idx)[0], unmerged_logits)


def test_adapters_round_trip_through_safetensors_and_json(tmp_path):
    model = _tiny_gpt()
    add_lora(model, r=2, alpha=4)
    with torch.no_grad():
        for m in lora_modules(model).values():
            m.lora_B.normal_(0, 0.3)
    save_adapters(model, tmp_path / "adapter", note="test")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 2 and config["alpha"] == 4 and config["note"] == "test" and len(config["modules"]) == 8

    fresh = _tiny_gpt()  # the same base weights (same seed)
    load_adapters(fresh, tmp_path / "adapter")
    idx = torch.randint(0, 20, (2, 16))
    assert torch.equal(fresh(idx)[0], model(idx)[0])

    with pytest.raises(CheckpointError, match="different base weights"):
        load_adapters(_tiny_gpt(seed=1), tmp_path / "adapter")
    (tmp_path / "adapter" / ADAPTER_WEIGHTS).write_bytes(b"truncated")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_adapters(_tiny_gpt(), tmp_path / "adapter")


def test_bad_lora_settings_are_clear_errors():
    with pytest.raises(ConfigError, match="rank"):
        LoRALinear(nn.Linear(4, 4), r=0, alpha=1)
    with pytest.raises(ConfigError, match="no nn.Linear"):
        add_lora(_tiny_gpt(), targets=("attention.nonexistent",))
