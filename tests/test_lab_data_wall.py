"""The data-wall lab: the effective-data formula by hand, the R* fit recovering a known R* (and
failing once the exponential term is broken), the tail and diversity probes on hand-built samples
(including a uniform sampler that the tail probe cannot call collapsed), the epoch feeder, and the
lab end to end on a tiny setting, with a verdict shown failing on altered results."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest

from groundup.cli import main
from groundup.errors import GroundupError
from groundup.labs import harness
from groundup.labs.data_wall import effective, lab, probes, report

# a law shaped like the lab's measured ones: ~2.5 nats at D/16, ~1.9 at D
LAW = effective.DataLaw(E=1.44, B=25.1, beta=0.3)
D = 614_400.0
UNIQUE = D * np.array([1 / 16, 1 / 8, 1 / 4, 1 / 2, 1])
EPOCHS = np.array([2, 4, 8, 16, 40])
U, R = D / EPOCHS, effective.repetitions(EPOCHS)


# ---- the formula -------------------------------------------------------------------------------------
def test_effective_data_by_hand():
    # one epoch: R = 0 repetitions, D' = U (the paper's R_D counts repetitions beyond the first epoch)
    assert effective.repetitions(1) == 0
    assert effective.effective_data(1000.0, effective.repetitions(1), 7.0) == 1000.0
    # U = 1, R = 2, R* = 2: 1 + 2·(1 − e^−1)
    assert effective.effective_data(1.0, 2.0, 2.0) == pytest.approx(1 + 2 * (1 - math.exp(-1)), abs=1e-15)
    # R ≪ R*: repeats ≈ fresh tokens, D' ≈ U·(1 + R); R ≫ R*: saturates at U·(1 + R*)
    assert effective.effective_data(100.0, 3.0, 1e7) == pytest.approx(400.0, rel=1e-6)
    assert effective.effective_data(100.0, 1e4, 5.0) == pytest.approx(600.0, rel=1e-12)


def test_data_law_inverse_round_trips():
    d = np.array([1e4, 1e5, 1e6])
    assert LAW.inverse(LAW(d)) == pytest.approx(d, rel=1e-9)
    assert LAW.inverse(LAW.E - 0.1) == math.inf  # below the floor: no budget reaches it


# ---- the fit -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("r_star", [3.0, 15.0])
def test_fit_recovers_a_known_r_star_from_noisy_synthetic_losses(r_star):
    check = effective.recover_r_star(LAW, r_star, UNIQUE, U, R, seeds_per_point=3, noise_sd=0.005, n_draws=4,
                                     tolerance=0.25, seed=1)
    assert check["recovered"], check


def test_recovery_fails_when_the_exponential_term_is_broken():
    # repeats counted as fresh (no decay): R* drops out of the model, the fit cannot find it
    no_decay = lambda u, r, rs: u + u * r  # noqa: E731
    check = effective.recover_r_star(LAW, 5.0, UNIQUE, U, R, 3, 0.005, n_draws=4, tolerance=0.25, effective_fit=no_decay)
    assert not check["recovered"]
    # the exponent's argument inverted, e^(−R·R*) instead of e^(−R/R*): fitted, but to the wrong R*
    inverted = lambda u, r, rs: u + u * rs * (1 - np.exp(-r * rs))  # noqa: E731
    check = effective.recover_r_star(LAW, 5.0, UNIQUE, U, R, 3, 0.005, n_draws=4, tolerance=0.25, effective_fit=inverted)
    assert not check["recovered"]


def test_bootstrap_interval_covers_the_true_r_star():
    rng = np.random.default_rng(0)
    unique = [LAW(d) + 0.005 * rng.standard_normal(3) for d in UNIQUE]
    repeated = [LAW(effective.effective_data(u, r, 6.0)) + 0.005 * rng.standard_normal(3) for u, r in zip(U, R)]
    boot = effective.bootstrap_effective(UNIQUE, unique, U, R, repeated, n_boot=40, seed=0)
    lo, hi = boot["r_star_ci95"]
    assert boot["fitted"] > 20 and lo <= 6.0 <= hi and hi / lo < 10


def test_a_censored_fit_says_so():
    # repeated runs exactly as good as fresh data: R* runs to the end of the search range
    L = LAW(U * EPOCHS)
    fit = effective.fit_r_star(LAW, U, R, L)
    assert fit["censored"] and fit["r_star"] > 1e3


# ---- the probes --------------------------------------------------------------------------------------
def test_rare_set_tail_mass_and_types_by_hand():
    counts = np.array([50, 30, 10, 5, 3, 2, 0])  # 100 tokens; token 6 never occurs
    rare = probes.rare_set(counts, 0.10)  # rarest first: 2, 3, 5 → cumulative 0.02, 0.05, 0.10
    assert rare.tolist() == [False, False, False, True, True, True, False]
    assert probes.tail_mass([0, 0, 3, 4], rare) == 0.5
    assert probes.rare_types_kept([0, 5, 5], rare) == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        probes.rare_set(counts, 1.5)


def test_tail_probe_cannot_see_collapse_in_a_uniform_sampler_and_sees_a_tail_cut():
    """The tail mass ratio measures only how much tail there is: a model that samples uniformly (the
    worst model there is) scores far above 1, i.e. 'no tail lost'. So the ratio alone can fail to
    flag a broken model; the lab reads it beside the loss on real text."""
    rng = np.random.default_rng(0)
    counts = np.array([400, 300, 200, 60, 20, 10, 6, 4])
    real = rng.choice(8, size=20_000, p=counts / counts.sum())
    rare = probes.rare_set(counts, 0.015)  # tokens 6, 7: 1% of the text (with token 5 it would be 2%)
    share = probes.tail_mass(real, rare)
    assert share == pytest.approx(0.01, abs=0.002)
    uniform = rng.integers(0, 8, 20_000)
    assert probes.tail_mass(uniform, rare) / share > 20  # 2/8 of the mass on a 1% tail
    cut = real[~rare[real]]  # a sampler that lost the tail
    assert probes.tail_mass(cut, rare) == 0.0 and probes.rare_types_kept(cut, rare) == 0.0


def test_distinct_ngrams_by_hand():
    assert probes.distinct_ngrams(np.array([[1, 2, 1, 2, 1]]), 2) == 0.5  # 12 21 12 21
    assert probes.distinct_ngrams(np.array([[1, 2, 3], [1, 2, 3]]), 3) == 0.5  # one 3-gram, twice
    assert probes.distinct_ngrams(np.array([[1, 2], [2, 1]]), 2) == 1.0  # n-grams do not cross rows
    assert probes.masked_mean([1.0, 2.0, 3.0], [True, False, True]) == 2.0
    assert math.isnan(probes.masked_mean([1.0], [False]))


# ---- data ---------------------------------------------------------------------------------------------
def test_windows_and_the_epoch_feeder_show_every_window_once_per_epoch():
    w = lab.windows(np.arange(23), 3)  # windows of 4 tokens; 3 leftover dropped
    assert w.shape == (5, 4) and w[1].tolist() == [4, 5, 6, 7]
    rows = np.arange(10)[:, None] * np.ones((1, 4), dtype=np.int64)
    feeder = lab.EpochFeeder(rows, 4, seed=0)
    seen = np.concatenate([feeder.next_batch()[0][:, 0] for _ in range(5)])  # 20 windows = 2 epochs
    assert np.bincount(seen, minlength=10).tolist() == [2] * 10
    assert sorted(seen[:10].tolist()) == list(range(10))  # the first epoch is a permutation


# ---- the lab end to end --------------------------------------------------------------------------------
TINY = dict(n_layer=1, n_embd=16, n_head=2, block_size=16, batch_size=4, steps=16, epochs=(1, 2, 4),
            unique_fractions=(1 / 4, 1 / 2), eval_windows=16, n_boot=20, generations=2, gen_steps=8, gen_windows=16)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("data-wall")
    results = lab.run_lab(lab.Settings(**TINY), [1, 2], out, mode="test", say=lambda *_: None)
    return results, out


@pytest.mark.slow  # the tiny lab run: ~10 s of training plus preparing the corpus in a fresh cache
def test_lab_runs_end_to_end_and_reports_from_its_results(tiny_run, tmp_path):
    results, out = tiny_run
    assert results["seeds"] == [1, 2] and results["lab"] == "data-wall"
    col = results["aggregate"]["collapse"]
    for regime in ("replace", "accumulate", "real"):
        assert len(col[regime]["val_loss"]) == TINY["generations"] + 1
        assert col[regime]["val_loss"][0]["ci95"] is not None  # two seeds: an interval
    # generation 0 is one model: every regime starts from the same numbers
    assert col["replace"]["val_loss"][0] == col["accumulate"]["val_loss"][0] == col["real"]["val_loss"][0]
    assert math.isfinite(results["fit"]["r_star"]) and set(results["fit"]["measured_ratio"]) == {"epochs_2", "epochs_4"}
    text = (out / "report.md").read_text()
    for claim in report.verdicts(results):
        assert claim in text
    for name in report.PLOTS.values():
        assert (out / name).stat().st_size > 0
    # --report-from: the same report from results.json alone
    saved = json.loads((out / "results.json").read_text())
    assert main(["lab", "data-wall", "--report-from", str(out / "results.json"), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "report.md").read_text() == report.report(saved)


def _set(summary: dict, lo: float, hi: float) -> None:
    summary.update(mean=(lo + hi) / 2, ci95=[lo, hi], n=2)


@pytest.mark.slow  # the tiny lab run: ~10 s of training plus preparing the corpus in a fresh cache
def test_the_collapse_verdicts_can_fail(tiny_run):
    results = copy.deepcopy(tiny_run[0])
    col = results["aggregate"]["collapse"]
    _set(col["replace"]["increase"], 0.05, 0.10)
    _set(col["accumulate_minus_replace"], -0.08, -0.02)
    v = report.verdicts(results)
    assert v["collapse under replacement"].startswith("Supported")
    assert v["accumulation stays bounded"].count("Supported that")
    _set(col["replace"]["increase"], -0.03, 0.01)  # a replacement run that did not degrade
    _set(col["accumulate_minus_replace"], 0.01, 0.04)  # accumulation worse than replacement
    _set(col["replace"]["tail_first"], -0.2, -0.1)
    v = report.verdicts(results)
    assert v["collapse under replacement"].startswith("Not resolved")
    assert "NOT supported that accumulating" in v["accumulation stays bounded"]
    assert v["tails vanish first (replacement)"].startswith("NOT supported")


@pytest.mark.slow  # the tiny lab run: ~10 s of training plus preparing the corpus in a fresh cache
def test_the_repetition_verdicts_can_fail(tiny_run):
    results = copy.deepcopy(tiny_run[0])
    results["fit"]["bootstrap"]["r_star_ci95"] = [1.0, 3.0]
    assert report.verdicts(results)["repetition: returns vanish around 16 epochs"].startswith("NOT consistent")
    results["fit"]["bootstrap"]["r_star_ci95"] = [8.0, 30.0]
    assert report.verdicts(results)["repetition: returns vanish around 16 epochs"].startswith("Consistent")
    results["fit"]["bootstrap"]["r_star_ci95"] = [8.0, effective.R_STAR_BOUNDS[1]]  # open-ended: says nothing
    assert report.verdicts(results)["repetition: returns vanish around 16 epochs"].startswith("Not resolved")
    _set(results["aggregate"]["repetition"]["vs_unique"]["epochs_4"], 5.0, 6.0)  # 4 epochs far worse than unique
    assert report.verdicts(results)["repetition: ~4 epochs ≈ unique data"].startswith("NOT supported")


def test_bad_settings_get_one_clear_line(capsys):
    with pytest.raises(GroundupError, match="epochs must include 1"):
        lab.Settings(epochs=(2, 4)).validate()
    with pytest.raises(GroundupError, match="regimes"):
        lab.Settings(regimes=("mix",)).validate()
    assert main(["lab", "data-wall", "--quick", "--steps", "0"]) == 2
    assert "--steps must be at least 1" in capsys.readouterr().err
    assert main(["lab", "data-wall", "--report-from", "/nonexistent/results.json"]) == 2


@pytest.mark.slow  # the tiny lab run: ~10 s of training plus preparing the corpus in a fresh cache
def test_results_are_a_harness_document_and_refit_from_it(tiny_run):
    results, out = tiny_run
    loaded = harness.load_results(out / "results.json", "data-wall")
    assert loaded["fit"]["budget_tokens"] == 16 * 4 * 16
    refit = lab.refit_results(loaded)  # the pooled fit again from the per-seed runs alone: the same numbers
    assert refit["fit"]["r_star"] == pytest.approx(loaded["fit"]["r_star"], rel=1e-9)
    assert refit["fit"]["bootstrap"]["r_star_ci95"] == pytest.approx(loaded["fit"]["bootstrap"]["r_star_ci95"], rel=1e-9)
