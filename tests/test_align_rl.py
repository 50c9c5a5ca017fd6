"""KL estimators, the policy-gradient loss, RL with a KL penalty and best-of-n (groundup.align.kl,
groundup.train.policy, groundup.align.rl, groundup.align.best_of_n), checked against exact values on
settings small enough to enumerate."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

from conftest import assert_clean_error
from helpers import tiny_config
from groundup.align.best_of_n import analytic_kl, best_of_n, exact_best_of_n, exact_kl, select_best, tied_fraction
from groundup.align.kl import categorical_kl, kl_k1, kl_k3, mean_and_se
from groundup.align.rl import RLSettings, load_reward, rl_optimize
from groundup.align.runs import load_policy, weights_sha256
from groundup.cli import main
from groundup.config import ModelConfig, RunConfig, TrainConfig
from groundup.errors import ConfigError, GroundupError
from groundup.model import GPT
from groundup.train import checkpoint as ckpt
from groundup.train.align import sequence_logprobs
from groundup.train.policy import kl_penalised_return, leave_one_out_advantages, reinforce_loss
from groundup.train.trainer import train


# ---- KL estimators ----------------------------------------------------------------------------
def test_kl_estimators_are_unbiased_on_two_categoricals():
    """KL(p ‖ q) of two categorical distributions, exactly, against the mean of k1 and k3 over
    200,000 draws from p: each within 4 standard errors (its own s/√n). The wrong ratio in k3
    (r = p/q instead of q/p) or a flipped k1 lands dozens of standard errors away."""
    p = torch.tensor([0.05, 0.10, 0.15, 0.20, 0.50], dtype=torch.float64)
    q = torch.tensor([0.30, 0.25, 0.20, 0.15, 0.10], dtype=torch.float64)
    exact = categorical_kl(p, q)
    assert exact == pytest.approx(float((p * (p / q).log()).sum()), rel=1e-12)
    y = torch.multinomial(p, 200_000, replacement=True, generator=torch.Generator().manual_seed(0))
    logp, logq = p.log()[y], q.log()[y]
    for estimator in (kl_k1, kl_k3):
        mean, se = mean_and_se(estimator(logp, logq))
        assert abs(mean - exact) <= 4 * se, (estimator.__name__, mean, exact, se)
    assert bool((kl_k3(logp, logq) >= 0).all())
    assert float(kl_k3(torch.tensor(-1.0), torch.tensor(-1.0))) == 0.0


def test_k3_is_exact_per_token_summed():
    """Σ_t k3_t is unbiased for a sequence's KL too (chain rule): on two-token sequences of two
    categorical steps the sum's mean matches the exact sequence KL within 4 standard errors."""
    gen = torch.Generator().manual_seed(1)
    p1, q1 = torch.tensor([0.7, 0.3], dtype=torch.float64), torch.tensor([0.4, 0.6], dtype=torch.float64)
    p2 = torch.tensor([[0.2, 0.8], [0.9, 0.1]], dtype=torch.float64)  # second token given the first
    q2 = torch.tensor([[0.5, 0.5], [0.3, 0.7]], dtype=torch.float64)
    joint_p = (p1[:, None] * p2).flatten()
    exact = categorical_kl(joint_p, (q1[:, None] * q2).flatten())
    a = torch.multinomial(p1, 100_000, replacement=True, generator=gen)
    b = torch.multinomial(p2[a], 1, generator=gen).squeeze(1)
    lp = torch.stack([p1.log()[a], p2.log()[a, b]], 1)
    lq = torch.stack([q1.log()[a], q2.log()[a, b]], 1)
    mean, se = mean_and_se(kl_k3(lp, lq).sum(1))
    assert abs(mean - exact) <= 4 * se, (mean, exact, se)


# ---- the policy-gradient pieces ---------------------------------------------------------------
def test_leave_one_out_and_penalised_return_by_hand():
    R = torch.tensor([[1.0, 2.0, 6.0], [0.0, 0.0, 3.0]])
    assert leave_one_out_advantages(R).tolist() == [[1 - 4, 2 - 3.5, 6 - 1.5], [0 - 1.5, 0 - 1.5, 3 - 0]]
    with pytest.raises(ConfigError, match="at least 2 samples"):
        leave_one_out_advantages(torch.ones(3, 1))
    logp = torch.tensor([[0.0, -1.0, -2.0]])
    logp_ref = torch.tensor([[0.0, -1.5, -1.0]])
    # R = r − β·Σ(log π − log π_ref) = 1 − 0.5·(0.5 − 1.0)
    assert kl_penalised_return(torch.tensor([1.0]), logp, logp_ref, 0.5).tolist() == [1.25]
    for beta in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="beta"):
            kl_penalised_return(torch.tensor([1.0]), logp, logp_ref, beta)


V, L = 3, 2  # the toy: vocabulary 3, one prompt token, continuations of 2 tokens (9 of them)
YS = torch.tensor([[0, *y] for y in itertools.product(range(V), repeat=L)])


def toy_policy(seed=0) -> GPT:
    torch.manual_seed(seed)
    return GPT(ModelConfig(vocab_size=V, block_size=4, n_layer=1, n_head=1, n_embd=8)).double()


def toy_reward(ids, prompt_len):
    return (ids[:, prompt_len:] == 2).to(torch.float64).sum(-1)  # +1 for each token 2


def exact_j(policy, reference, beta):
    """(E_π[r], KL(π ‖ π_ref), J) by enumerating all 9 continuations."""
    with torch.no_grad():
        p = sequence_logprobs(policy, YS, 1).exp()
        q = sequence_logprobs(reference, YS, 1).exp()
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-12)
    reward, kl = float((p * toy_reward(YS, 1)).sum()), categorical_kl(p, q)
    return reward, kl, reward - beta * kl


def test_reinforce_gradient_is_the_exact_gradient_of_j():
    """The loss's gradient, with each continuation weighted by its exact probability and R held
    constant, equals −∇J for J = E_π[r] − β·KL(π ‖ π_ref) computed by autograd on the enumerated
    objective: the −β·E[∇ log π] term that R's own dependence on θ adds is zero. (A flipped sign in
    the loss or +β in the return breaks it.)"""
    beta = 0.3
    reference = toy_policy(0)
    policy = toy_policy(1)
    with torch.no_grad():
        logp_tok = torch.stack([sequence_logprobs(policy, YS, 1)], 1)
        logq_tok = torch.stack([sequence_logprobs(reference, YS, 1)], 1)
        p = logp_tok[:, 0].exp()
        R = kl_penalised_return(toy_reward(YS, 1), logp_tok, logq_tok, beta)
    loss = reinforce_loss(1)(policy, (YS, p * R * len(YS)))  # mean over 9 rows of (9 p_y R_y)·log π(y)
    grads = torch.autograd.grad(loss, list(policy.parameters()))
    logp = sequence_logprobs(policy, YS, 1)
    J = (logp.exp() * (toy_reward(YS, 1) - beta * (logp - logq_tok[:, 0]))).sum()
    exact = torch.autograd.grad(-J, list(policy.parameters()))
    for g, e in zip(grads, exact):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-12)


def _optimize(beta, steps=60, seed=0):
    torch.set_num_threads(1)
    reference = toy_policy(0)
    policy = toy_policy(0)
    before = exact_j(policy, reference, beta)
    ref_hash = weights_sha256(reference)
    settings = RLSettings(beta=beta, steps=steps, prompts_per_step=4, samples_per_prompt=4, prompt_len=1, length=L,
                          lr=1e-2, seed=seed)
    records, _ = rl_optimize(policy, reference, toy_reward, torch.zeros(8, 1, dtype=torch.long), settings,
                             config=RunConfig(model=policy.config, train=TrainConfig(kernels=False)))
    assert weights_sha256(reference) == ref_hash  # π_ref untouched
    return before, exact_j(policy, reference, beta), records


def optimum(beta):
    """J(π*) = β·log E_ref[exp(r/β)] and KL(π* ‖ π_ref) of π* ∝ π_ref·exp(r/β), by enumeration."""
    reference = toy_policy(0)
    with torch.no_grad():
        q = sequence_logprobs(reference, YS, 1).exp()
    w = q * torch.exp(toy_reward(YS, 1) / beta)
    star = w / w.sum()
    return beta * math.log(float(w.sum())), categorical_kl(star, q)


def test_rl_raises_j_on_a_toy_problem():
    """60 steps at β = 0.05: J (exact, by enumeration) rises from π_ref's 0.66 to ≥ 1.8 of the 2
    reachable, never above J(π*) = β·log Z; the step's logged J is the sample mean of R. A flipped
    loss sign drives J down instead."""
    beta = 0.05
    (r0, kl0, j0), (r1, kl1, j1), records = _optimize(beta)
    assert kl0 == 0.0 and j1 >= 1.8 > j0 + 1.0, (j0, j1)
    j_star, _ = optimum(beta)
    assert j1 <= j_star + 1e-12
    assert len(records) == 60 and records[-1]["step"] == 60
    assert {"reward", "kl_k1", "kl_k3", "J", "loss", "grad_norm"} <= set(records[-1])
    assert records[0]["kl_k1"] == records[0]["kl_k3"] == 0.0  # step 1 samples π_θ = π_ref: no divergence yet
    for rec in records:
        assert rec["J"] == pytest.approx(rec["reward"] - beta * rec["kl_k1"], abs=1e-9)


def test_large_beta_keeps_the_policy_near_the_reference():
    """β = 10: the KL to π_ref after training stays within 3× the optimum's own KL(π* ‖ π_ref)
    (≈ 0.0017 nats here: at large β, π* barely moves) and the policy's J still rises; at β = 0.05
    the KL is hundreds of times larger. Ignoring β in the return breaks the first bound."""
    _, (_, kl_large, j_large), _ = _optimize(10.0)
    _, kl_star = optimum(10.0)
    assert kl_large <= 3 * kl_star, (kl_large, kl_star)
    _, (_, kl_small, _), _ = _optimize(0.05)
    assert kl_small > 100 * kl_large


def test_rl_settings_refuse_bad_values():
    for kwargs, fragment in ((dict(beta=0.0), "beta"), (dict(beta=-1.0), "beta"), (dict(samples_per_prompt=1), "at least 2"),
                             (dict(steps=0), "--steps"), (dict(lr=0.0), "--lr")):
        with pytest.raises(ConfigError, match=fragment):
            RLSettings(**kwargs)


def test_unknown_reward_source(tmp_path):
    with pytest.raises(GroundupError, match="unknown reward source 'nonsense'"):
        load_reward("nonsense", None)


# ---- best-of-n -----------------------------------------------------------------------------------
def brute_force_best_of_n(p, r, n):
    """π_bon by enumerating every n-tuple of draws, keeping the first with the highest reward."""
    out = np.zeros(len(p))
    for draw in itertools.product(range(len(p)), repeat=n):
        out[draw[int(np.argmax(r[list(draw)]))]] += np.prod(p[list(draw)])
    return out


@pytest.mark.parametrize("rewards", [[3.0, 1.0, 2.0, 0.0, 5.0], [3.0, 1.0, 1.0, 0.0, 1.0], [0.0] * 5])
def test_exact_best_of_n_matches_enumeration(rewards):
    """The closed form (with ties shared in proportion to π_ref's mass) against every 5³ tuple."""
    p = np.array([0.1, 0.3, 0.2, 0.25, 0.15])
    r = np.array(rewards)
    np.testing.assert_allclose(exact_best_of_n(p, r, 3), brute_force_best_of_n(p, r, 3), rtol=0, atol=1e-15)


def test_best_of_n_kl_formula_is_an_upper_bound_reached_without_ties():
    """log n − (n−1)/n: (1) never below the exact KL (Beirami et al. 2024), over random cases;
    (2) within 1e-4 nats of it when rewards are distinct and no outcome holds more than 0.3 % of the
    mass (3,000 outcomes); (3) with ties — two reward levels of mass ½ each — the exact KL is
    a·log 2a + (1−a)·log 2(1−a), a = 1 − 2⁻ⁿ (hand-computed), far below the formula."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        m = int(rng.integers(2, 40))
        p = rng.dirichlet(np.ones(m))
        r = rng.integers(0, 5, m).astype(float) if rng.random() < 0.5 else rng.normal(size=m)
        for n in (1, 2, 5):
            assert exact_kl(p, r, n) <= analytic_kl(n) + 1e-12
    p = rng.dirichlet(np.ones(3000))
    assert p.max() <= 0.003
    r = rng.permutation(3000).astype(float)
    for n in (2, 4, 16):
        assert 0 <= analytic_kl(n) - exact_kl(p, r, n) <= 1e-4, n
    p, r = np.full(1000, 1e-3), (np.arange(1000) % 2).astype(float)
    for n in (2, 4, 16):
        a = 1 - 0.5 ** n
        by_hand = a * math.log(2 * a) + (1 - a) * math.log(2 * (1 - a))
        assert exact_kl(p, r, n) == pytest.approx(by_hand, rel=1e-9)
        assert analytic_kl(n) - exact_kl(p, r, n) > 0.05
    assert analytic_kl(1) == 0.0 and analytic_kl(4) == pytest.approx(math.log(4) - 0.75)


def test_best_of_n_keeps_the_highest_reward():
    torch.set_num_threads(1)
    model = toy_policy(0)
    assert select_best(torch.tensor([[0.0, 2.0, 2.0], [1.0, 0.0, -1.0]])).tolist() == [1, 0]
    assert tied_fraction(torch.tensor([[0.0, 2.0, 2.0], [1.0, 0.0, -1.0]])) == pytest.approx(2 / 6)
    kept, rewards = best_of_n(model, toy_reward, torch.zeros(6, 1, dtype=torch.long), 5, L, seed=0)
    assert kept.shape == (6, 1 + L) and rewards.shape == (6, 5)
    assert toy_reward(kept, 1).tolist() == rewards.max(dim=1).values.double().tolist()


# ---- the run and the CLI ---------------------------------------------------------------------------
class Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def cli(capsys, *args) -> Result:
    """`groundup ARGS` in this process (no interpreter and torch start-up per call)."""
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return Result(code, out, err)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("align_rl") / "base"
    train(tiny_config("max_steps=10"), run, progress=False)
    return run


def test_cli_rl_writes_a_run(base_run, tmp_path, capsys):
    out = tmp_path / "rl"
    result = cli(capsys, "align", "rl", "--run", str(base_run), "--reward", "gold", "--beta", "0.1", "--steps", "2",
                     "--prompts-per-step", "2", "--samples-per-prompt", "2", "--prompt-len", "8", "--length", "24",
                     "--out", str(out))
    assert result.returncode == 0, result.stderr
    for name in (ckpt.CONFIG, ckpt.WEIGHTS, ckpt.STATE, ckpt.TOKENIZER, "metrics.jsonl", "align.json"):
        assert (out / name).exists(), name
    recipe = json.loads((out / "align.json").read_text())
    base, _, _ = load_policy(base_run)
    assert recipe["method"] == "rl" and recipe["beta"] == 0.1 and recipe["reward"]["source"] == "gold"
    assert recipe["reference_weights_sha256"] == weights_sha256(base)  # π_ref's file untouched too
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    load_policy(out)  # a normal run: sample and serve load it
    assert_clean_error(cli(capsys, "train", "--resume", str(out)), "alignment run")


def test_cli_rl_refuses_an_existing_run(base_run, tmp_path, capsys):
    assert_clean_error(cli(capsys, "align", "rl", "--run", str(base_run), "--reward", "gold", "--beta", "0.1",
                           "--steps", "1", "--out", str(tmp_path)), "already exists")


@pytest.mark.parametrize("args, fragment", [
    (["rl", "--reward", "gold", "--beta", "0"], "beta"),
    (["rl", "--reward", "gold", "--beta", "-0.5"], "beta"),
    (["rl", "--reward", "sentiment-please", "--beta", "0.1"], "unknown reward source"),
    (["best-of-n", "--reward", "gold", "--n", "0"], "n ≥ 1"),
])
def test_cli_bad_inputs(base_run, tmp_path, args, fragment, capsys):
    result = cli(capsys, "align", args[0], "--run", str(base_run), *args[1:], "--out", str(tmp_path / "x"))
    assert_clean_error(result, fragment)
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_cli_best_of_n(base_run, tmp_path, capsys):
    out = tmp_path / "bon.json"
    result = cli(capsys, "align", "best-of-n", "--run", str(base_run), "--reward", "gold", "--n", "3", "--prompts", "4",
                     "--prompt-len", "8", "--length", "24", "--out", str(out))
    assert result.returncode == 0, result.stderr
    summary = json.loads(out.read_text())
    assert summary["kl_analytic"] == pytest.approx(math.log(3) - 2 / 3)
    assert summary["reward_best_of_n"] >= summary["reward_one_sample"]


@pytest.fixture(scope="module")
def reward_run_dir(base_run, tmp_path_factory):
    from groundup.align.preferences import make_preferences, write_preferences
    from groundup.align.reward import reward_run
    from groundup.align.runs import AlignSettings

    where = tmp_path_factory.mktemp("align_rm")
    pairs, meta = make_preferences(base_run, 16, prompt_len=8, length=24, seed=1)
    prefs = write_preferences(pairs, where / "prefs.jsonl", meta)
    reward_run(base_run, prefs, where / "rm", AlignSettings(steps=2, batch_size=4), progress=False)
    return where / "rm"


def test_rl_with_a_reward_model_run(base_run, reward_run_dir, tmp_path, capsys):
    out = tmp_path / "rl"
    result = cli(capsys, "align", "rl", "--run", str(base_run), "--reward", str(reward_run_dir), "--beta", "0.1",
                 "--steps", "1", "--prompts-per-step", "2", "--samples-per-prompt", "2", "--prompt-len", "8",
                 "--length", "24", "--out", str(out))
    assert result.returncode == 0, result.stderr
    reward = json.loads((out / "align.json").read_text())["reward"]
    assert reward["source"] == "reward-model" and reward["run"] == str(reward_run_dir.resolve())


def test_reward_model_with_another_tokenizer_is_refused(base_run, reward_run_dir, tmp_path, capsys):
    import shutil

    from groundup.tokenizer import CharTokenizer

    other = tmp_path / "rm_other"
    shutil.copytree(reward_run_dir, other)
    CharTokenizer.train(["a different alphabet"]).save(other / ckpt.TOKENIZER)
    result = cli(capsys, "align", "rl", "--run", str(base_run), "--reward", str(other), "--beta", "0.1",
                 "--out", str(tmp_path / "x"))
    assert_clean_error(result, "another tokenizer")
    assert not (tmp_path / "x").exists()
