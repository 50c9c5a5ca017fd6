"""The PyTorch model: attention paths, positional encodings, KV cache, counts, config validation."""

from __future__ import annotations

import math

import pytest
import torch

from groundup.config import ModelConfig
from groundup.errors import ConfigError
from groundup.model import GPT
from groundup.model.positional import sinusoidal_table

VARIANTS = [
    dict(positional="sinusoidal"), dict(positional="learned"), dict(positional="rope"),
    dict(norm="post"), dict(activation="relu"), dict(bias=False), dict(tie_embeddings=False),
]


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=50, block_size=16, n_layer=2, n_head=4, n_embd=32)
    return ModelConfig(**{**base, **kw})


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(f"{k}={x}" for k, x in v.items()))
def test_explicit_attention_math_agrees_with_sdpa(variant):
    torch.manual_seed(0)
    math_model = GPT(tiny(attention="math", **variant)).double()
    sdpa_model = GPT(tiny(attention="sdpa", **variant)).double()
    sdpa_model.load_state_dict(math_model.state_dict())
    x = torch.randint(0, 50, (3, 16))
    logits_a, loss_a = math_model(x, x)
    logits_b, loss_b = sdpa_model(x, x)
    torch.testing.assert_close(logits_a, logits_b, rtol=1e-10, atol=1e-10)
    loss_a.backward()
    loss_b.backward()
    for (name, pa), (_, pb) in zip(math_model.named_parameters(), sdpa_model.named_parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-9, atol=1e-12, msg=name)


def test_attention_is_causal():
    """Changing a later token never changes the logits at earlier positions."""
    torch.manual_seed(0)
    model = GPT(tiny(attention="math"))
    x = torch.randint(0, 50, (1, 16))
    y = x.clone()
    y[0, 10] = (y[0, 10] + 1) % 50
    a, b = model(x)[0], model(y)[0]
    torch.testing.assert_close(a[0, :10], b[0, :10])
    assert not torch.allclose(a[0, 10:], b[0, 10:])


def test_sinusoidal_table_matches_the_paper_formula():
    table = sinusoidal_table(50, 16)
    for pos in (0, 7, 49):
        for i in range(8):
            angle = pos / 10000 ** (2 * i / 16)
            assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_rope_scores_depend_only_on_relative_position():
    from groundup.model.positional import apply_rope, rope_tables

    cos, sin = rope_tables(32, 8)
    torch.manual_seed(0)
    q, k = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    cos, sin = cos.double(), sin.double()

    def score(m, n):
        qm = apply_rope(q.view(1, 1, 1, 8), cos[m : m + 1], sin[m : m + 1])
        kn = apply_rope(k.view(1, 1, 1, 8), cos[n : n + 1], sin[n : n + 1])
        return (qm * kn).sum().item()

    assert score(5, 2) == pytest.approx(score(20, 17), rel=1e-6)  # tables are float32
    assert score(5, 2) != pytest.approx(score(5, 4), rel=1e-3)


@pytest.mark.parametrize("variant", VARIANTS[:4], ids=str)
def test_kv_cache_matches_full_forward(variant):
    torch.manual_seed(0)
    model = GPT(tiny(**variant)).double().eval()
    x = torch.randint(0, 50, (2, 16))
    full = model(x)[0]
    cache = model.new_cache(batch_size=2)
    prefix = model(x[:, :5], cache=cache, start=0)[0]
    steps = [prefix] + [model(x[:, t : t + 1], cache=cache, start=t)[0] for t in range(5, 12)]
    chunk = model(x[:, 12:], cache=cache, start=12)[0]  # a multi-token chunk after the cache
    torch.testing.assert_close(torch.cat(steps + [chunk], dim=1), full, rtol=1e-10, atol=1e-10)


def test_parameter_counts():
    c = tiny(positional="learned")
    model = GPT(c)
    C, V, T, L = 32, 50, 16, 2
    per_block = (3 * C * C + 3 * C) + (C * C + C) + (4 * C * C + 4 * C) + (4 * C * C + C) + 4 * C
    assert model.num_params(non_embedding=True) == L * per_block + 2 * C
    assert model.num_params() == L * per_block + 2 * C + V * C + T * C  # tied head counted once
    untied = GPT(tiny(positional="learned", tie_embeddings=False))
    assert untied.num_params() == model.num_params() + V * C
    matrices = 3 * C * C + C * C + 4 * C * C + 4 * C * C  # W_QKV, W^O, W₁, W₂ per block
    assert model.flops_per_token() == 6 * (L * matrices + V * C) + 12 * L * T * C
    assert untied.flops_per_token() == model.flops_per_token()  # the lookup is not a matmul


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_embd=30, n_head=4), "divisible by model.n_head"),
        (dict(block_size=0), "block_size must be a positive integer"),
        (dict(n_embd=12, n_head=4, positional="rope"), "head size"),
        (dict(positional="alibi"), "model.positional must be"),
        (dict(activation="swish"), "model.activation"),
        (dict(norm="middle"), "model.norm"),
        (dict(dropout=1.5), "dropout"),
        (dict(n_layer=-1), "n_layer"),
    ],
)
def test_invalid_model_configs_raise_clear_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        tiny(**kwargs)


def test_model_needs_a_vocabulary():
    with pytest.raises(ConfigError, match="vocab_size must be set"):
        GPT(ModelConfig())
