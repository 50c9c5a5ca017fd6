"""The alignment lab: its probes on planted cases where they must succeed and where they must fail
(a reward model on shuffled labels is at chance; a policy at a huge β does not move), the verdicts
on doctored results, and a tiny run end to end (results, report, --report-from, docs)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from groundup.align import exact
from groundup.align.preferences import PreferencePair
from groundup.cli import main
from groundup.labs import docs as lab_docs
from groundup.labs import harness
from groundup.labs.alignment import lab, report

TINY = dict(base_steps=30, n_pairs=48, rm_steps=4, rl_steps=4, curve_every=2, dpo_steps=3, eval_prompts=4,
            exact_rl_steps=3, exact_dpo_steps=3, exact_pairs=16, best_of_n=(1, 2))


@pytest.fixture(scope="module")
def tiny_lab():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield lab.Lab(lab.Settings.quick(base_steps=30), say=lambda *a: None)
    finally:
        torch.set_num_threads(threads)


# ---- the reward-model probe can fail ---------------------------------------------------------------
def planted_pairs(tiny_lab, n: int, seed: int) -> list[PreferencePair]:
    """Random prompts and continuations; the 'gold' prefers a continuation whose last token has an even
    id (a rule a reward model on the last token can learn). Chosen always has the higher gold score."""
    g = torch.Generator().manual_seed(seed)
    V = tiny_lab.tokenizer.vocab_size
    pairs = []
    while len(pairs) < n:
        x, a, b = (torch.randint(0, V, (k,), generator=g).tolist() for k in (4, 6, 6))
        ga, gb = float(a[-1] % 2 == 0), float(b[-1] % 2 == 0)
        if ga != gb:
            w, l = (a, b) if ga > gb else (b, a)
            pairs.append(PreferencePair(x, w, l, max(ga, gb), min(ga, gb)))
    return pairs


def test_reward_model_learns_a_planted_preference_and_is_at_chance_on_shuffled_labels(tiny_lab):
    pairs = planted_pairs(tiny_lab, 600, 0)
    train, test = list(range(400)), list(range(400, 600))
    s = tiny_lab.s
    tiny_lab.s = lab.Settings.quick(rm_lr=3e-3, rm_batch=32)
    try:
        real = lab.reward_model_quality(lab.train_reward_model(tiny_lab, pairs, train, 0, 60, pool="last"), pairs, test)
        shuffled = lab.reward_model_quality(lab.train_reward_model(tiny_lab, pairs, train, 0, 60, shuffle_labels=True,
                                                                   pool="last"), pairs, test)
    finally:
        tiny_lab.s = s
    assert real["gold_decided_pairs"] == 200
    assert real["gold_agreement"] > 0.9
    # no signal left: agreement is a coin flip over 200 pairs (sd 0.035); 4 sd either side
    assert abs(shuffled["gold_agreement"] - 0.5) < 0.14


# ---- the KL probe can fail: a huge β does not move -------------------------------------------------
class PlantedReward(torch.nn.Module):
    """r(x, y) = 1 when the last token's id is even, else 0 (a dummy parameter: model_reward freezes it)."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, ids):
        return (ids[:, -1] % 2 == 0).float() + 0 * self.dummy


def test_rl_moves_toward_the_reward_at_small_beta_and_not_at_huge_beta(tiny_lab):
    """Exactly, on the enumerable setting (L = 1): RL at β = 0.01 raises E[r] and pays KL; at β = 1e4 the
    policy does not move (KL and reward stay at π_ref's, up to the optimizer's jitter). Both below J(π*)."""
    rm = PlantedReward()
    prompts = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    V = tiny_lab.tokenizer.vocab_size
    logp_ref = exact.continuation_logprobs(tiny_lab.ref, prompts, 1)
    rewards = exact.reward_table(rm, prompts, V, 1)
    out = {}
    for beta in (0.01, 1e4):
        policy, _ = lab.train_rl(tiny_lab, rm, prompts, beta, 0, 30, 1, 2, 8, 3e-3)
        out[beta] = exact.exact_objective(policy, prompts, 1, logp_ref, rewards, beta)
        assert out[beta]["J"] <= out[beta]["J_star"] + 1e-12
    ref_reward = (logp_ref.exp() * rewards).sum(-1).mean().item()
    assert out[0.01]["reward"] > ref_reward + 0.1 and out[0.01]["kl"] > 0.05
    # at β = 1e4 only Adam's step-sized jitter around π_ref is left (0.008 nats here vs 0.4 at β = 0.01)
    assert out[1e4]["kl"] < 0.05 * out[0.01]["kl"] and out[1e4]["reward"] < ref_reward + 0.05


# ---- the exact setting's DPO pairs ------------------------------------------------------------------
def test_pairs_for_the_exact_setting_follow_bradley_terry_on_the_reward(tiny_lab):
    rm = PlantedReward()
    prompts = torch.tensor([[1, 2, 3, 4]])
    chosen, rejected, plen = lab.label_by_reward(tiny_lab, rm, prompts, 2000, 1, 0)
    assert chosen.shape == rejected.shape == (2000, 5) and (plen == 4).all()
    differ = (chosen[:, -1] % 2) != (rejected[:, -1] % 2)
    # where the rewards differ by 1, the higher one wins with probability σ(1) = 0.731
    wins = (chosen[differ, -1] % 2 == 0).double().mean().item()
    assert abs(wins - 0.731) < 0.06


# ---- the tiny run, end to end ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("alignment")
    threads = torch.get_num_threads()
    torch.set_num_threads(3)  # not the lab's 1, so a lab that forgot to restore it shows
    try:
        results = lab.run_lab(lab.Settings.quick(**TINY), [1, 2], out, mode="quick", say=lambda *a: None)
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)
    return out, results, after


@pytest.mark.slow  # the tiny run: ≈ 10 s of CPU
def test_tiny_run_writes_results_report_and_plots(tiny_run):
    out, results, threads_after = tiny_run
    assert results["lab"] == "alignment" and results["schema"] == harness.SCHEMA and results["seeds"] == [1, 2]
    agg = results["aggregate"]
    assert set(agg["rl"]) == set(agg["dpo"]) == {"0.1", "0.01"} and set(agg["best_of_n"]) == {"1", "2"}
    for b, e in agg["exact"]["betas"].items():
        for m in ("rl", "dpo", "ref"):
            assert e[m]["gap"]["mean"] >= 0  # Gibbs: nothing beats π*
    assert agg["reference_unchanged"]["all"]
    assert agg["best_of_n"]["1"]["kl"]["mean"] == 0.0
    assert json.loads((out / "results.json").read_text())["aggregate"] == agg
    text = (out / "report.md").read_text()
    assert set(report.verdicts(results)) == {"reward model", "KL controls the move", "frontier", "over-optimisation",
                                             "exact optimum", "π_ref unchanged"}
    assert results["samples"][0]["texts"]["ref"] and "## Samples before and after" in text
    assert threads_after == 3
    for name in report.PLOTS.values():
        assert (out / name).stat().st_size > 0 and name in text


@pytest.mark.slow  # the tiny run: ≈ 10 s of CPU
def test_report_regenerates_from_results_alone(tiny_run, tmp_path):
    out, _, _ = tiny_run
    assert main(["lab", "alignment", "--report-from", str(out / "results.json"), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "report.md").read_text() == (out / "report.md").read_text()
    results_dir = tmp_path / "results"
    results_dir.mkdir()
    (results_dir / "alignment.json").write_text((out / "results.json").read_text())
    pages = lab_docs.regenerate_docs(results_dir, tmp_path / "docs", labs=("alignment",))
    assert pages[0].name == "alignment.md" and "do not edit by hand" in pages[0].read_text()


@pytest.mark.slow  # the tiny run: ≈ 10 s of CPU
def test_verdicts_turn_when_the_numbers_do(tiny_run):
    """Each verdict can fail: doctored results flip it."""
    _, results, _ = tiny_run
    bad = copy.deepcopy(results)
    agg = bad["aggregate"]
    agg["reward_model"]["gold_agreement"] = harness.summarize([0.45, 0.55, 0.5])
    small, large = report._betas(bad)[-1], report._betas(bad)[0]
    agg["rl"][small]["proxy_gain"] = harness.summarize([-0.1, 0.1, 0.0])
    b = report._exact_betas(bad)[0]
    bad["per_seed"][0]["results"]["exact"]["betas"][b]["rl"]["gap"] = -0.01  # a policy above J(π*) in one seed
    agg["reference_unchanged"] = {"all": False, "any": True, "n": 2}
    v = report.verdicts(bad)
    for claim in ("reward model", "KL controls the move", "exact optimum", "π_ref unchanged"):
        assert v[claim].startswith("NOT supported"), claim
    good = copy.deepcopy(results)
    agg = good["aggregate"]
    agg["reward_model"]["gold_agreement"] = harness.summarize([0.7, 0.72, 0.71])
    agg["rl"][small]["proxy_gain"] = harness.summarize([0.5, 0.52, 0.51])
    agg["rl"][small]["kl_k1"] = harness.summarize([5.0, 5.0, 5.0])
    agg["rl"][large]["kl_k1"] = harness.summarize([1.0, 1.0, 1.0])
    v = report.verdicts(good)
    assert v["reward model"].startswith("Supported") and v["KL controls the move"].startswith("Supported")
    agg["rl"][large]["kl_k1"] = harness.summarize([9.0, 9.0, 9.0])  # the larger β moved further: refuted
    assert report.verdicts(good)["KL controls the move"].startswith("NOT supported")
    # over-optimisation: the gold drop's interval above 0 while the proxy rose → "turned down"
    agg["overoptimisation"]["gold_drop"] = harness.summarize([0.1, 0.12, 0.11])
    agg["overoptimisation"]["proxy_rise"] = harness.summarize([0.3, 0.3, 0.3])
    assert report.verdicts(good)["over-optimisation"].startswith("Gold turned down")
    agg["overoptimisation"]["gold_drop"] = harness.summarize([-0.1, 0.12, 0.0])
    agg["rl"][small]["gold_gain"] = harness.summarize([-0.1, 0.1, 0.0])
    assert report.verdicts(good)["over-optimisation"].startswith("Gold did NOT turn down")
    agg["rl"][small]["gold_gain"] = harness.summarize([-0.1, -0.11, -0.12])  # ended below π_ref, proxy up
    assert report.verdicts(good)["over-optimisation"].startswith("Gold turned down")


def test_frontier_comparison_on_hand_made_points():
    rl = [(1.0, 0.1), (2.0, 0.3), (4.0, 0.5)]
    assert report._compare([(1.5, 0.3), (3.0, 0.45)], rl) == (2, 0)  # above 0.2 and 0.4
    assert report._compare([(1.5, 0.1), (3.0, 0.45), (9.0, 1.0)], rl) == (1, 1)  # 9.0 is outside RL's range
    assert report._compare([(0.5, 1.0)], rl) == (0, 0)


def test_bad_arguments_get_one_clear_line(capsys, tmp_path):
    assert main(["lab", "alignment", "--rl-steps", "0", "--out", str(tmp_path)]) == 2
    assert "--rl-steps must be at least 1" in capsys.readouterr().err
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"schema": harness.SCHEMA, "lab": "geometry"}))
    assert main(["lab", "alignment", "--report-from", str(other), "--out", str(tmp_path)]) == 2
    assert "not a results.json of the alignment lab" in capsys.readouterr().err


def test_the_over_optimisation_verdict_says_when_gold_hit_its_ceiling():
    """A gold reward that ends at the judge's maximum means RL optimised the judge itself: the verdict
    says so (from the committed default run), and says nothing of it when gold stays low."""
    committed = json.loads((Path(__file__).resolve().parents[1] / "docs/labs/results/alignment.json").read_text())
    small = min(committed["aggregate"]["rl"], key=float)
    assert committed["aggregate"]["rl"][small]["gold"]["ci95"][0] >= 0.9  # the committed run did saturate
    assert "judge's ceiling of 1" in report.verdicts(committed)["over-optimisation"]
    low = copy.deepcopy(committed)
    low["aggregate"]["rl"][small]["gold"] = {"mean": 0.2, "sd": 0.01, "ci95": [0.18, 0.22], "n": 3}
    assert "ceiling" not in report.verdicts(low)["over-optimisation"]
