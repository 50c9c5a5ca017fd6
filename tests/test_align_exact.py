"""The exact optimum π* ∝ π_ref·exp(r/β) on enumerable settings: hand-computed cases, the Gibbs
variational principle against random policies, the β limits, the frontier, and best-of-n's exact
distribution against its quoted KL."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from groundup.align import exact
from groundup.config import ModelConfig
from groundup.errors import GroundupError
from groundup.model import GPT
from groundup.train.align import sequence_logprobs


def tiny_model(seed=0, vocab=5, block=8):
    torch.manual_seed(seed)
    model = GPT(ModelConfig(vocab_size=vocab, n_layer=1, n_head=2, n_embd=16, block_size=block))
    for p in model.parameters():  # larger weights than GPT-2's init: a peaked, non-uniform π_ref
        torch.nn.init.normal_(p, 0.0, 0.5)
    return model.eval()


def table(seed, n=3, size=25):
    g = torch.Generator().manual_seed(seed)
    logp = torch.log_softmax(torch.randn(n, size, generator=g, dtype=torch.float64) * 2, -1)
    rewards = torch.randn(n, size, generator=g, dtype=torch.float64)
    return logp, rewards


def test_hand_computed_two_token_vocabulary_one_token_continuation():
    # π_ref = (0.25, 0.75), r = (1, 0), β = 0.5: Z = 0.25·e² + 0.75, π*(0) = 0.25e²/Z
    logp_ref = torch.tensor([[math.log(0.25), math.log(0.75)]], dtype=torch.float64)
    rewards = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    Z = 0.25 * math.e**2 + 0.75
    o = exact.optimum(logp_ref, rewards, 0.5)
    p0 = 0.25 * math.e**2 / Z
    assert o["logp"].exp()[0].tolist() == pytest.approx([p0, 1 - p0], abs=1e-15)
    assert o["J"] == pytest.approx(0.5 * math.log(Z), abs=1e-14)
    assert o["beta_log_z"] == pytest.approx(0.5 * math.log(Z), abs=1e-14)
    assert o["reward"] == pytest.approx(p0, abs=1e-15)
    kl = p0 * math.log(p0 / 0.25) + (1 - p0) * math.log((1 - p0) / 0.75)
    assert o["kl"] == pytest.approx(kl, abs=1e-14)
    assert o["gap"] == pytest.approx(0.0, abs=1e-14) and o["kl_to_optimum"] == pytest.approx(0.0, abs=1e-14)


def test_continuation_logprobs_are_the_product_of_the_models_conditionals():
    """Against one forward per full sequence (log_softmax gathered at each continuation token), and
    each prompt's table sums to 1 (π_ref normalises over V^L)."""
    model = tiny_model()
    prompts = torch.tensor([[1, 2, 3], [4, 0, 0]])
    for L in (1, 2, 3):
        logp = exact.continuation_logprobs(model, prompts, L, chunk=7)  # chunks that do not divide V^(L-1)
        ys = exact.all_continuations(5, L)
        for i, x in enumerate(prompts):
            ids = torch.cat([x.expand(len(ys), 3), ys], 1)
            with torch.no_grad():
                lp = F.log_softmax(model(ids)[0].double(), -1)
            direct = lp[:, 2:-1].gather(2, ids[:, 3:, None]).squeeze(2).sum(1)
            assert torch.allclose(logp[i], direct, atol=1e-6, rtol=0)  # float32 forwards in two batch shapes
        assert torch.allclose(logp.exp().sum(-1), torch.ones(2, dtype=torch.float64), atol=1e-6)


def test_continuation_logprobs_agree_with_sequence_logprobs():
    """The enumeration (one forward per prefix) against train/align.sequence_logprobs (one forward per
    full sequence, align-core's code) on every continuation of length 2."""
    model = tiny_model(2)
    x = torch.tensor([2, 0, 1])
    ys = exact.all_continuations(5, 2)
    ids = torch.cat([x.expand(len(ys), 3), ys], 1)
    with torch.no_grad():
        theirs = sequence_logprobs(model, ids, 3).double()
    assert torch.allclose(exact.continuation_logprobs(model, x, 2)[0], theirs, atol=1e-5, rtol=0)


def test_optimum_normalises_and_beats_every_policy_gibbs():
    """J(π*) ≥ J(π) for π_ref, random policies and perturbations of π*, and J(π*) − J(π) = β·KL(π‖π*)."""
    logp_ref, rewards = table(1)
    for beta in (0.05, 0.3, 1.0, 5.0):
        o = exact.optimum(logp_ref, rewards, beta)
        assert torch.allclose(o["logp"].exp().sum(-1), torch.ones(3, dtype=torch.float64), atol=1e-12)
        policies = [logp_ref, o["logp"] + 1e-3 * torch.randn_like(o["logp"])]
        g = torch.Generator().manual_seed(2)
        policies += [torch.randn(3, 25, generator=g, dtype=torch.float64) * s for s in (0.5, 2, 5)]
        for logits in policies:
            pi = exact.objective(torch.log_softmax(logits, -1), logp_ref, rewards, beta)
            assert pi["J"] <= o["J"] + 1e-12
            assert pi["gap"] == pytest.approx(beta * pi["kl_to_optimum"], abs=1e-10)
            assert pi["gap"] >= -1e-12


def test_beta_limits_reference_and_argmax():
    logp_ref, rewards = table(3)
    huge = exact.optimum(logp_ref, rewards, 1e6)
    assert torch.allclose(huge["logp"], logp_ref, atol=1e-5) and huge["kl"] < 1e-10
    tiny = exact.optimum(logp_ref, rewards, 1e-4)
    best = rewards.argmax(-1)
    assert torch.allclose(tiny["logp"].exp().gather(1, best[:, None]).squeeze(1), torch.ones(3, dtype=torch.float64), atol=1e-9)
    assert tiny["reward"] == pytest.approx(rewards.max(-1).values.mean().item(), abs=1e-9)
    # β → 0: KL → −log π_ref(argmax)
    assert tiny["kl"] == pytest.approx((-logp_ref.gather(1, best[:, None])).mean().item(), abs=1e-6)


def test_frontier_is_monotone_in_beta():
    logp_ref, rewards = table(4)
    betas = [10.0, 3.0, 1.0, 0.5, 0.2, 0.1, 0.03, 0.01]
    f = exact.frontier(logp_ref, rewards, betas)
    assert all(a < b for a, b in zip(f["reward"], f["reward"][1:]))  # β falls: reward rises
    assert all(a < b for a, b in zip(f["kl"], f["kl"][1:]))  # …and so does the KL
    assert f["reward_ref"] < f["reward"][0] < f["reward"][-1] <= f["reward_max"]


def test_exact_objective_of_a_model_and_a_policy_that_did_not_move():
    """The reference model itself has KL 0 and J = E_ref[r]; a different model has a positive gap."""
    ref, other = tiny_model(0), tiny_model(1)
    prompts = torch.tensor([[1, 2], [3, 3]])
    logp_ref = exact.continuation_logprobs(ref, prompts, 2)
    rewards = exact.reward_table(lambda ids: (ids[:, -2:] == 4).sum(1).double(), prompts, 5, 2)  # planted: count of 4s
    assert rewards.max() == 2 and rewards.min() == 0
    same = exact.exact_objective(ref, prompts, 2, logp_ref, rewards, 0.5)
    assert same["kl"] == pytest.approx(0.0, abs=1e-12) and same["gap"] > 0
    moved = exact.exact_objective(other, prompts, 2, logp_ref, rewards, 0.5)
    assert moved["kl"] > 0.01 and moved["J"] < moved["J_star"]


def test_best_of_n_distribution_hand_computed_and_against_the_quoted_kl():
    # π_ref = (0.5, 0.3, 0.2) with rewards (0, 1, 2), n = 2: P(best = top) = 1 − 0.8² = 0.36,
    # P(middle) = 0.8² − 0.5² = 0.39, P(bottom) = 0.25
    logp_ref = torch.tensor([[0.5, 0.3, 0.2]], dtype=torch.float64).log()
    rewards = torch.tensor([[0.0, 1.0, 2.0]], dtype=torch.float64)
    assert exact.best_of_n_distribution(logp_ref, rewards, 2).exp()[0].tolist() == pytest.approx([0.25, 0.39, 0.36], abs=1e-15)
    # ties: rewards (0, 1, 1): the top group wins with 1 − 0.5² = 0.75, split ∝ π_ref (0.45, 0.30)
    tied = torch.tensor([[0.0, 1.0, 1.0]], dtype=torch.float64)
    assert exact.best_of_n_distribution(logp_ref, tied, 2).exp()[0].tolist() == pytest.approx([0.25, 0.45, 0.30], abs=1e-15)
    assert exact.best_of_n_distribution(logp_ref, rewards, 1).exp()[0].tolist() == pytest.approx([0.5, 0.3, 0.2], abs=1e-15)
    # many equally likely outcomes with distinct rewards: the exact KL approaches log n − (n−1)/n from below
    N = 20_000
    flat = torch.full((1, N), -math.log(N), dtype=torch.float64)
    ranks = torch.arange(N, dtype=torch.float64)[None]
    for n in (2, 4, 16, 64):
        b = exact.best_of_n(flat, ranks, n)
        assert b["kl"] <= b["kl_bound"] + 1e-12
        assert b["kl"] == pytest.approx(b["kl_bound"], abs=5e-3)
    # a peaked π_ref (one atom of mass 0.9 at the top reward): the exact KL is far below the bound
    peaked = torch.tensor([[0.05, 0.05, 0.9]], dtype=torch.float64).log()
    b = exact.best_of_n(peaked, rewards, 16)
    assert b["kl"] < 0.2 * b["kl_bound"]


def test_best_of_n_distribution_matches_simulation():
    logp_ref, rewards = table(5, n=1, size=6)
    n = 3
    g = torch.Generator().manual_seed(0)
    draws = torch.multinomial(logp_ref[0].exp().float(), 200_000 * n, replacement=True, generator=g).view(-1, n)
    winners = draws.gather(1, rewards[0][draws].argmax(1, keepdim=True)).squeeze(1)
    freq = torch.bincount(winners, minlength=6).double() / winners.shape[0]
    assert torch.allclose(freq, exact.best_of_n_distribution(logp_ref, rewards, n).exp()[0], atol=4e-3)  # ~4 sd


def test_bad_inputs_get_clear_errors():
    logp_ref, rewards = table(6)
    for beta in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(GroundupError, match="must be a positive number"):
            exact.optimum(logp_ref, rewards, beta)
    with pytest.raises(GroundupError, match="too many to enumerate"):
        exact.all_continuations(65, 4)
    with pytest.raises(GroundupError, match="context window"):
        exact.continuation_logprobs(tiny_model(block=4), torch.tensor([[1, 2, 3, 4]]), 2)
    with pytest.raises(GroundupError, match="n ≥ 1"):  # align.best_of_n.check_n
        exact.best_of_n_distribution(logp_ref, rewards, 0)
    with pytest.raises(GroundupError, match="non-finite"):
        exact.reward_table(lambda ids: torch.full((ids.shape[0],), float("nan")), [[1]], 3, 1)
