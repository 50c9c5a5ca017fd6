"""The scaling lab: the fits recover laws from data generated with them, and the quick grid runs end
to end, resumes, and never retrains a finished point."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from groundup.errors import ConfigError
from groundup.labs import fit as fits
from groundup.labs import scaling

from conftest import run_cli

# Hoffmann et al. 2022's own fitted constants (eq. 10), the law the synthetic data comes from.
HOFFMANN = fits.Chinchilla(E=1.69, A=406.4, alpha=0.34, B=410.7, beta=0.28)


def _synthetic_grid(noise: float, seed: int = 0):
    N = np.repeat(np.logspace(7, 10, 6), 5)  # 10M … 10B parameters
    D = np.tile(np.logspace(9, 12, 5), 6)  # 1B … 1T tokens
    L = HOFFMANN(N, D) * np.exp(noise * np.random.default_rng(seed).standard_normal(len(N)))
    return N, D, L


def test_chinchilla_fit_recovers_the_constants_it_was_generated_with():
    fit = fits.fit_chinchilla(*_synthetic_grid(noise=0.0))
    for name in ("E", "A", "alpha", "B", "beta"):
        assert getattr(fit, name) == pytest.approx(getattr(HOFFMANN, name), rel=1e-4), name


def test_chinchilla_fit_with_noise_stays_close():
    fit = fits.fit_chinchilla(*_synthetic_grid(noise=0.005, seed=1))  # 0.5% multiplicative noise on L
    assert fit.alpha == pytest.approx(0.34, abs=0.03)
    assert fit.beta == pytest.approx(0.28, abs=0.03)
    assert fit.E == pytest.approx(1.69, rel=0.03)
    assert fit.A == pytest.approx(406.4, rel=0.5) and fit.B == pytest.approx(410.7, rel=0.5)  # A, B trade off with α, β


def test_power_law_fits_recover_alpha_and_floor():
    C = np.logspace(9, 14, 12)
    pure = fits.fit_power_law(C, 20.0 * C**-0.07)
    assert pure.alpha == pytest.approx(0.07, rel=1e-9) and pure.a == pytest.approx(20.0, rel=1e-9)
    floored = fits.fit_power_law_with_floor(C, 2.0 + 50.0 * C**-0.2)
    assert floored.E == pytest.approx(2.0, rel=1e-4)
    assert floored.alpha == pytest.approx(0.2, rel=1e-4)
    assert floored.a == pytest.approx(50.0, rel=1e-3)


def test_bfgs_finds_the_rosenbrock_minimum():
    def rosenbrock(p):
        x, y = p
        return (1 - x) ** 2 + 100 * (y - x * x) ** 2, np.array([-2 * (1 - x) - 400 * x * (y - x * x), 200 * (y - x * x)])

    x, f = fits.minimize_bfgs(rosenbrock, [-1.2, 1.0])
    assert np.allclose(x, [1.0, 1.0], atol=1e-5) and f < 1e-10


def test_compute_optimal_split_matches_a_brute_force_search():
    C = 5.76e23
    n_opt, d_opt = HOFFMANN.compute_optimal(C)
    assert 6 * n_opt * d_opt == pytest.approx(C, rel=1e-9)
    N = np.logspace(9, 12, 200_001)
    brute = N[np.argmin(HOFFMANN(N, C / (6 * N)))]
    assert n_opt == pytest.approx(brute, rel=1e-3)


def test_bootstrap_interval_covers_the_true_exponent():
    rng = np.random.default_rng(3)
    C = np.logspace(9, 13, 15)
    L = 30.0 * C**-0.06 * np.exp(0.01 * rng.standard_normal(len(C)))
    boot = fits.bootstrap(len(C), lambda idx: {"alpha": fits.fit_power_law(C[idx], L[idx]).alpha}, 300, seed=0)
    lo, hi = fits.interval(boot["alpha"])
    assert lo < 0.06 < hi and hi - lo < 0.02


def test_compute_frontier_keeps_runs_that_beat_all_cheaper_ones():
    C = [1, 2, 3, 4, 5]
    L = [5.0, 5.5, 4.0, 4.2, 3.9]
    assert scaling.compute_frontier(C, L).tolist() == [0, 2, 4]


def test_analysis_of_synthetic_runs_recovers_the_law_and_predicts_the_held_out_run():
    N = np.array([3e3, 1e4, 3e4, 1e5, 3e5])
    D = np.array([1e5, 2e5, 4e5, 8e5, 1.6e6])
    law = fits.Chinchilla(E=3.0, A=40.0, alpha=0.4, B=60.0, beta=0.3)
    records = [{"name": f"n{n:g}_d{d:g}", "N": n, "D": d, "C": 6 * n * d, "C_full": 7 * n * d, "val_loss": float(law(n, d))}
               for n in N for d in D]
    a = scaling.analyse(records, n_boot=20)
    c = a["chinchilla"]
    assert c["alpha"]["value"] == pytest.approx(0.4, rel=1e-3) and c["beta"]["value"] == pytest.approx(0.3, rel=1e-3)
    assert c["E"]["value"] == pytest.approx(3.0, rel=1e-3)
    assert abs(a["holdout"]["surface_error"]) < 1e-3
    assert a["power_law"]["alpha"]["value"] > 0 and a["N_decades"] == pytest.approx(2.0)
    n_opt, d_opt = law.compute_optimal(a["budget"])
    assert a["compute_optimal"]["tokens_per_param"]["value"] == pytest.approx(d_opt / n_opt, rel=1e-2)


def test_parse_grid_builds_every_pair_and_names_heads():
    points = scaling.parse_grid("models=2x16,2x48x3 steps=200,100")
    assert [p.name for p in points] == ["L2_C16_H1_S100", "L2_C16_H1_S200", "L2_C48_H3_S100", "L2_C48_H3_S200"]
    for bad in ["models=2x16", "models=2y16 steps=10", "models=2x30x4 steps=10", "models=2x16 steps=0", "steps=1 models=1x16 depth=3"]:
        with pytest.raises(ConfigError):
            scaling.parse_grid(bad)


def test_point_config_scales_the_learning_rate_with_width_unless_set():
    wide = scaling.point_config(scaling.GridPoint(2, 128, 8, 100))
    assert wide.train.learning_rate == pytest.approx(1e-2 * math.sqrt(32 / 128))
    assert wide.train.warmup_steps == 10 and wide.model.positional == "learned" and wide.data.bpe_vocab_size == 1024
    assert scaling.point_config(scaling.GridPoint(2, 128, 8, 100), ["learning_rate=3e-3", "min_lr=3e-4"]).train.learning_rate == 3e-3


def test_an_interrupted_point_resumes_and_a_finished_one_is_never_retrained(tmp_path):
    point = scaling.GridPoint(1, 16, 1, 12)
    config = scaling.point_config(point, ["batch_size=4", "eval_iters=2", "block_size=32"], checkpoint_every=0)
    run_dir = tmp_path / point.name
    from groundup.train.trainer import train

    train(config.replace(time_budget=1e-6), run_dir, progress=False)  # stops after its first step, as if killed
    assert json.loads((run_dir / "state.json").read_text())["step"] < 12
    assert scaling.train_point(config, run_dir) == "resumed"
    assert json.loads((run_dir / "state.json").read_text())["step"] == 12
    weights = (run_dir / "model.safetensors").stat().st_mtime_ns
    assert scaling.train_point(config, run_dir) == "reused"
    assert (run_dir / "model.safetensors").stat().st_mtime_ns == weights
    record = scaling.read_point(run_dir)
    assert record["D"] == 12 * 4 * 32 and record["C"] == 6 * record["N"] * record["D"] and math.isfinite(record["val_loss"])
    with pytest.raises(ConfigError, match="learning_rate"):
        scaling.train_point(config.replace(learning_rate=5e-3), run_dir)


def test_quick_grid_runs_end_to_end_and_measures_a_finite_alpha(tmp_path):
    out = tmp_path / "scaling"
    result = run_cli("lab", "scaling", "--quick", "--out", str(out), "--bootstrap", "20")
    assert result.returncode == 0, result.stderr
    results = json.loads((out / "results.json").read_text())
    runs, a = scaling.measured(results)
    assert results["lab"] == "scaling" and results["seeds"] == [1337] and results["config"]["seeds_per_point"] == 1
    assert len(runs) == 6 and {r["status"] for r in runs} == {"trained"}
    alpha = a["power_law"]["alpha"]["value"]
    assert math.isfinite(alpha) and alpha > 0  # more compute, lower loss
    assert all(r["C"] == 6 * r["N"] * r["D"] and r["C_full"] > r["C"] for r in runs)
    assert math.isfinite(a["frontier_holdout"]["prediction"])
    for name in (*scaling.PLOTS.values(), "report.md"):
        assert (out / name).stat().st_size > 0
    assert "α =" in result.stdout
    assert "one seed per grid point" in (out / "report.md").read_text()

    from groundup.cli import main

    assert main(["lab", "scaling", "--report-from", str(out / "results.json"), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "report.md").read_bytes() == (out / "report.md").read_bytes()
    assert main(["lab", "scaling", "--quick", "--out", str(out), "--bootstrap", "5", "--jobs", "1"]) == 0
    rerun_runs, _ = scaling.measured(json.loads((out / "results.json").read_text()))
    assert {r["status"] for r in rerun_runs} == {"reused"}
    assert [r["val_loss"] for r in rerun_runs] == [r["val_loss"] for r in runs]


def test_the_alpha_verdict_can_fail():
    def analysis(lo, hi):
        return {"power_law": {"alpha": {"value": (lo + hi) / 2, "ci95": [lo, hi]}}}

    assert scaling.verdict(analysis(0.06, 0.09)).startswith("supports the claim")
    assert scaling.verdict(analysis(0.20, 0.30)).startswith("does not match the claim")  # far steeper: refuted
    assert scaling.verdict(analysis(0.001, 0.01)).startswith("does not match the claim")  # flat: refuted
    assert scaling.verdict(analysis(0.03, 0.07)).startswith("consistent with the claim but not decisive")


def test_bad_grid_is_a_clean_error(tmp_path, capsys):
    from groundup.cli import main

    assert main(["lab", "scaling", "--grid", "models=2x16", "--out", str(tmp_path)]) == 2
    assert "steps=" in capsys.readouterr().err
    assert main(["lab", "scaling", "--seeds", "3", "--out", str(tmp_path)]) == 2
    assert "one seed per grid point" in capsys.readouterr().err
