"""Sampling: KV cache = no cache, determinism, greedy, top-k/top-p, cropping and bad settings."""

from __future__ import annotations

import pytest
import torch

from groundup.errors import GroundupError
from groundup.config import ModelConfig
from groundup.model import GPT
from groundup.sample import (SamplingSettings, encode_prompt, generate, generate_batch, load_run, next_token_distribution,
                             sample_text)
from groundup.train.trainer import train

from conftest import assert_clean_error, run_cli
from helpers import tiny_config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sample") / "run"
    train(tiny_config("max_steps=30"), d, progress=False)
    return d


@pytest.mark.parametrize("positional", ["sinusoidal", "learned", "rope"])
def test_cached_and_uncached_generation_agree(positional):
    from groundup.config import ModelConfig
    from groundup.model import GPT

    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=16, positional=positional)).double()
    settings = SamplingSettings(max_new_tokens=40, temperature=1.0, seed=5)  # 40 > 16: the window slides
    prompt = [1, 2, 3]
    assert list(generate(model, prompt, settings, use_cache=True)) == list(generate(model, prompt, settings, use_cache=False))


def test_decoding_layout_changes_strides_not_values_or_tokens():
    from groundup.config import ModelConfig
    from groundup.model import GPT
    from groundup.sample import store_for_decoding

    torch.manual_seed(0)
    config = ModelConfig(vocab_size=50, block_size=32, n_layer=2, n_head=2, n_embd=32, positional="learned")
    plain, laid_out = GPT(config), GPT(config)
    laid_out.load_state_dict(plain.state_dict())
    store_for_decoding(laid_out)
    for (name, a), b in zip(plain.weights().items(), laid_out.weights().values()):
        assert torch.equal(a, b) and a.shape == b.shape, name
    matrices = [m.weight for m in laid_out.modules() if isinstance(m, torch.nn.Linear)]
    assert matrices and all(w.stride() == (1, w.shape[0]) for w in matrices)  # column by column
    assert laid_out.lm_head.weight is laid_out.token_embedding.weight  # still tied
    x = torch.randint(0, 50, (1, 20))
    with torch.no_grad():
        assert torch.allclose(plain(x)[0], laid_out(x)[0], atol=1e-5)
    greedy = SamplingSettings(max_new_tokens=40, temperature=0.0)
    assert list(generate(plain, [1, 2, 3], greedy)) == list(generate(laid_out, [1, 2, 3], greedy))


def test_same_seed_same_text_and_greedy_is_deterministic(run_dir):
    s = SamplingSettings(max_new_tokens=50, temperature=0.9, top_k=20, seed=11)
    a, b = sample_text(run_dir, "ROMEO:", s), sample_text(run_dir, "ROMEO:", s)
    assert a == b and len(a) == 50
    assert sample_text(run_dir, "ROMEO:", SamplingSettings(50, temperature=0.9, top_k=20, seed=12)) != a
    g = SamplingSettings(max_new_tokens=30, temperature=0.0)
    assert sample_text(run_dir, "A", g) == sample_text(run_dir, "A", g)


def test_top_k_and_top_p_keep_the_right_tokens():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    p = next_token_distribution(logits, SamplingSettings(temperature=1.0, top_k=2))
    torch.testing.assert_close(p, torch.tensor([0.625, 0.375, 0.0, 0.0]))
    p = next_token_distribution(logits, SamplingSettings(temperature=1.0, top_p=0.7))  # 0.5 + 0.3 ≥ 0.7
    torch.testing.assert_close(p, torch.tensor([0.625, 0.375, 0.0, 0.0]))
    p = next_token_distribution(logits, SamplingSettings(temperature=1.0, top_p=1.0))
    torch.testing.assert_close(p, torch.tensor([0.5, 0.3, 0.15, 0.05]))


def test_long_prompt_is_cropped_with_a_warning(run_dir):
    model, tok, _ = load_run(run_dir)
    warnings = []
    ids = encode_prompt(tok, "ROMEO: " * 40, model.config.block_size, warn=warnings.append)
    assert len(ids) == model.config.block_size and "keeping the last" in warnings[0]


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=-1), "temperature must be ≥ 0"),
    (dict(top_p=0.0), "top-p must be in"),
    (dict(top_p=1.5), "top-p must be in"),
    (dict(top_k=0), "top-k must be ≥ 1"),
    (dict(max_new_tokens=0), "max-new-tokens"),
    (dict(max_new_tokens=10**9), "max-new-tokens"),
])
def test_bad_sampling_settings(kwargs, message):
    with pytest.raises(GroundupError, match=message):
        SamplingSettings(**kwargs)


def test_cli_sample_streams_and_rejects_bad_settings(run_dir):
    r = run_cli("sample", "--run", str(run_dir), "--prompt", "ROMEO:", "--max-new-tokens", "40", "--seed", "1",
                "--top-k", "10", "--top-p", "0.95")
    assert r.returncode == 0 and r.stdout.startswith("ROMEO:") and len(r.stdout) >= 46
    assert_clean_error(run_cli("sample", "--run", str(run_dir), "--temperature", "-0.5"), "temperature")
    assert_clean_error(run_cli("sample", "--run", str(run_dir), "--prompt", "ROMEO: €"), "not in this character-level vocabulary")
    empty = run_cli("sample", "--run", str(run_dir), "--prompt", "", "--max-new-tokens", "10")
    assert empty.returncode == 0


@pytest.mark.parametrize("positional", ["learned", "rope"])
def test_generate_batch_equals_generate_row_by_row(positional):
    """Batched sampling (one forward per token for all rows, KV cache) continues each prompt exactly
    as `generate` does alone: greedy, every row of a batch; sampled, a batch of one with the same seed."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=16, positional=positional)).double()
    prompts = torch.randint(0, 40, (3, 4), generator=torch.Generator().manual_seed(1))
    greedy = generate_batch(model, prompts, 12, seed=0, temperature=0)
    assert greedy.shape == (3, 12) and torch.equal(greedy[:, :4], prompts)
    for row in range(3):
        alone = list(generate(model, prompts[row].tolist(), SamplingSettings(max_new_tokens=8, temperature=0)))
        assert greedy[row, 4:].tolist() == alone
        sampled = generate_batch(model, prompts[row : row + 1], 12, seed=row, temperature=2.0)
        alone = list(generate(model, prompts[row].tolist(), SamplingSettings(max_new_tokens=8, temperature=2.0, seed=row)))
        assert sampled[0, 4:].tolist() == alone
    assert generate_batch(model, prompts, 17, seed=0).shape == (3, 17)  # the 17th token needs no forward pass
    with pytest.raises(GroundupError, match="context window"):
        generate_batch(model, prompts, 18, seed=0)
