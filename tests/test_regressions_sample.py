"""Sampling guarantees a one-line change could break with the older tests still green:

- temperature divides the logits: tokens drawn by `generate` at T = 0.5 and T = 2 follow
  softmax(logits / T), computed here independently in float64 (a chi-square goodness-of-fit test);
- greedy decoding (T = 0) picks the argmax of the full, uncached forward pass at every step;
- an empty prompt starts from <|endoftext|> when the tokenizer has it, else from a newline, as
  `groundup sample --help` and docs/errors.md say.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from groundup.config import ModelConfig
from groundup.model import GPT
from groundup.sample import SamplingSettings, generate, load_run, sample_text
from groundup.train.trainer import train

from helpers import tiny_config

V = 9  # vocabulary: a chi-square test over 9 bins has 8 degrees of freedom (closed-form tail below)
PROMPT = [1, 4, 2, 7]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Thousands of tiny forward passes: one thread is ~50x faster than two on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = GPT(ModelConfig(vocab_size=V, block_size=16, n_layer=1, n_head=2, n_embd=32, tie_embeddings=False))
    with torch.no_grad():  # logits with a spread of ~±3, so temperature visibly reshapes them
        m.lm_head.weight.normal_(0.0, 0.25)
    return m.eval()


def _full_logits(model, ids: list[int]) -> np.ndarray:
    """The last position's logits from one uncached forward pass over the whole context."""
    with torch.no_grad():
        return model(torch.tensor([ids]))[0][0, -1].double().numpy()


def _chi_square_p_value(observed: np.ndarray, expected: np.ndarray) -> tuple[float, int]:
    """Pearson's χ² with bins of expected count < 5 pooled; P(χ²_k ≥ x) for even k in closed form:
    e^(−x/2) Σ_{j<k/2} (x/2)^j / j!. Returns (p-value, degrees of freedom)."""
    big = expected >= 5
    obs = np.append(observed[big], observed[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    stat = float(((obs - exp) ** 2 / exp).sum())
    k = len(exp) - 1
    if k % 2:  # odd: merge the two smallest bins to make k even
        order = np.argsort(exp)
        obs = np.append(np.delete(obs, order[:2]), obs[order[:2]].sum())
        exp = np.append(np.delete(exp, order[:2]), exp[order[:2]].sum())
        stat, k = float(((obs - exp) ** 2 / exp).sum()), k - 1
    half = stat / 2
    return math.exp(-half) * sum(half**j / math.factorial(j) for j in range(k // 2)), k


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_drawn_tokens_follow_softmax_of_logits_over_temperature(model, temperature):
    n = 2000
    logits = _full_logits(model, PROMPT)
    z = logits / temperature
    expected_p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()  # softmax(logits / T), float64
    draws = [next(generate(model, PROMPT, SamplingSettings(max_new_tokens=1, temperature=temperature, seed=s)))
             for s in range(n)]
    observed = np.bincount(draws, minlength=V).astype(float)
    p_value, dof = _chi_square_p_value(observed, n * expected_p)
    assert dof >= 2 and p_value > 1e-4, (temperature, observed, n * expected_p)
    # the test has power: the untempered softmax (T = 1) is rejected by the same draws
    z1 = np.exp(logits - logits.max())
    assert _chi_square_p_value(observed, n * z1 / z1.sum())[0] < 1e-6


def test_greedy_picks_the_argmax_of_the_full_logits_every_step():
    """From every one-token prompt, 20 greedy tokens (the 16-token window slides); each equals the
    argmax of an uncached forward pass over its context, and together they use every id, the first
    and the last included (so an argmax over part of the vocabulary cannot pass)."""
    torch.manual_seed(1)
    model = GPT(ModelConfig(vocab_size=V, block_size=16, n_layer=1, n_head=2, n_embd=32)).eval()
    with torch.no_grad():  # tied embeddings, large: a token's own logit is its largest at first
        model.token_embedding.weight.normal_(0.0, 1.0)
    chosen = set()
    for first in range(V):
        context = [first]
        for token in generate(model, [first], SamplingSettings(max_new_tokens=20, temperature=0.0)):
            assert token == int(np.argmax(_full_logits(model, context[-16:]))), context
            context.append(token)
            chosen.add(token)
    assert chosen == set(range(V))


# ---- the empty prompt --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory, shakespeare):
    """Two tiny runs of 2 steps: a BPE one (with <|endoftext|>) and a char one (without)."""
    root = tmp_path_factory.mktemp("empty-prompt")
    corpus = root / "c.txt"
    corpus.write_text(shakespeare.documents[0][:6000])
    small = ["n_layer=1", "max_steps=2", "eval_interval=2", "checkpoint_interval=0", f"corpus={corpus}"]
    threads = torch.get_num_threads()
    train(tiny_config(*small, "tokenizer=bpe", "bpe_vocab_size=300"), root / "bpe", progress=False)
    train(tiny_config(*small), root / "char", progress=False)
    torch.set_num_threads(threads)
    return root


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_empty_prompt_starts_from_endoftext_or_a_newline(runs, kind):
    model, tokenizer, _ = load_run(runs / kind)
    if kind == "bpe":
        assert tokenizer.eot_id == 299
        start = [tokenizer.eot_id]
    else:
        assert tokenizer.eot_id is None
        start = [tokenizer.chars.index("\n")]
    for settings in (SamplingSettings(max_new_tokens=12, temperature=1.0, seed=7),
                     SamplingSettings(max_new_tokens=12, temperature=0.0)):
        expected = tokenizer.decode(list(generate(model, start, settings)))
        assert sample_text(runs / kind, "", settings) == expected
    other = tokenizer.encode(" ") if kind == "bpe" else [tokenizer.chars.index(" ")]
    assert other != start and tokenizer.decode(list(generate(model, other, settings))) != expected  # start matters
