"""Hugging Face GPT-2 ⇄ groundup, one explicit mapping.

GPT-2 = our model with learned positions, pre-norm, GELU (tanh form), tied embeddings and biases.
HF's Conv1D stores weights as (in, out); our nn.Linear stores (out, in): every matrix is transposed.
c_attn holds W_Q, W_K, W_V side by side, in the same order as our qkv.
"""

from __future__ import annotations

import torch

from groundup.config import ModelConfig
from groundup.errors import ConfigError

# (ours, HF's, transpose?) for block i
_BLOCK = [
    ("norm_attention.weight", "ln_1.weight", False),
    ("norm_attention.bias", "ln_1.bias", False),
    ("attention.qkv.weight", "attn.c_attn.weight", True),
    ("attention.qkv.bias", "attn.c_attn.bias", False),
    ("attention.output.weight", "attn.c_proj.weight", True),
    ("attention.output.bias", "attn.c_proj.bias", False),
    ("norm_ffn.weight", "ln_2.weight", False),
    ("norm_ffn.bias", "ln_2.bias", False),
    ("ffn.up.weight", "mlp.c_fc.weight", True),
    ("ffn.up.bias", "mlp.c_fc.bias", False),
    ("ffn.down.weight", "mlp.c_proj.weight", True),
    ("ffn.down.bias", "mlp.c_proj.bias", False),
]
_TOP = [
    ("token_embedding.weight", "transformer.wte.weight"),
    ("position_embedding.weight", "transformer.wpe.weight"),
    ("final_norm.weight", "transformer.ln_f.weight"),
    ("final_norm.bias", "transformer.ln_f.bias"),
]


def config_from_hf(hf_config) -> ModelConfig:
    """A GPT2Config → the equivalent ModelConfig."""
    activation = getattr(hf_config, "activation_function", "gelu_new")
    if activation not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ConfigError(f"only GPT-2's tanh GELU is supported for import, got activation_function={activation!r}")
    return ModelConfig(
        vocab_size=hf_config.vocab_size, block_size=hf_config.n_positions, n_layer=hf_config.n_layer,
        n_head=hf_config.n_head, n_embd=hf_config.n_embd,
        ffn_mult=(hf_config.n_inner or 4 * hf_config.n_embd) // hf_config.n_embd,
        activation="gelu", positional="learned", norm="pre", bias=True, dropout=0.0, tie_embeddings=True,
    )


def from_hf(hf_state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """HF GPT2LMHeadModel state dict → our `GPT.weights()` tensors."""
    ours = {name: hf_state[hf].clone() for name, hf in _TOP}
    for i in range(config.n_layer):
        for name, hf, transpose in _BLOCK:
            t = hf_state[f"transformer.h.{i}.{hf}"]
            ours[f"blocks.{i}.{name}"] = (t.t() if transpose else t).contiguous().clone()
    return ours


def to_hf(weights: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Our `GPT.weights()` tensors → an HF GPT2LMHeadModel state dict (lm_head tied to wte)."""
    check_exportable(config)
    hf = {hf_name: weights[name].clone() for name, hf_name in _TOP}
    for i in range(config.n_layer):
        for name, hf_name, transpose in _BLOCK:
            t = weights[f"blocks.{i}.{name}"]
            hf[f"transformer.h.{i}.{hf_name}"] = (t.t() if transpose else t).contiguous().clone()
    hf["lm_head.weight"] = hf["transformer.wte.weight"]
    return hf


def hf_config_kwargs(config: ModelConfig) -> dict:
    """Arguments for transformers.GPT2Config describing the same architecture."""
    check_exportable(config)
    return dict(vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd,
                n_layer=config.n_layer, n_head=config.n_head, n_inner=config.ffn_mult * config.n_embd,
                activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                layer_norm_epsilon=1e-5, tie_word_embeddings=True)


def check_exportable(config: ModelConfig) -> None:
    wanted = dict(positional="learned", norm="pre", activation="gelu", bias=True, tie_embeddings=True, n_experts=0)
    wrong = {k: getattr(config, k) for k, v in wanted.items() if getattr(config, k) != v}
    if wrong:
        raise ConfigError(f"GPT-2 layout needs {wanted}; this model has {wrong}")
