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

from conftest import REPO, run_cli

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


# A law of the shape the lab fits, sized for its models (losses 2.5–6.5 nats on the default grid),
# with Besiroglu et al. 2024's exponents.
SMALL_LAW = fits.Chinchilla(E=1.5, A=34.0, alpha=0.35, B=118.0, beta=0.37)
# The seed-to-seed sd of val loss (nats) measured on python-stdlib with the lab's settings: 3 seeds at
# 1x16 and 2x32 × 300 and 1,000 steps gave sds 0.009–0.041, pooled 0.026. Used until a lab-version-3
# default run is committed; then that run's own pooled sd is used.
MEASURED_NOISE = 0.026
# Besiroglu's exponents with E, A, B put through those four points' mean losses (5.04, 4.54, 5.06,
# 4.15): a flatter N term than SMALL_LAW's, so the harder case for identifying α.
MEASURED_LAW = fits.Chinchilla(E=2.9, A=13.0, alpha=0.35, B=147.0, beta=0.37)
# python-stdlib's training split under the lab's tokenizer (BPE, 1,024) on CPython 3.11; the lab
# reports the real count and its epochs, this only keeps the default grid under one pass.
PYTHON_STDLIB_TRAIN_TOKENS = 4_246_926


def _records(sizes, law, noise, seeds=(1, 2, 3), rng_seed=0):
    """Per-seed run records of a grid whose losses come from `law` plus Gaussian noise (nats)."""
    rng = np.random.default_rng(rng_seed)
    return [{"name": s["name"], "seed": seed, "n_layer": 1, "n_embd": 16, "N": s["N"], "N_total": s["N_total"], "D": s["D"],
             "C": 6 * s["N"] * s["D"], "C_total": 6 * s["N_total"] * s["D"], "C_full": 7 * s["N"] * s["D"],
             "val_loss": float(law(s["N"], s["D"]) + noise * rng.standard_normal()), "seconds": 1.0}
            for s in sizes for seed in seeds]


def _sizes(N, D, embedding=1000):
    return [{"name": f"n{n:g}_d{d:g}", "N": int(n), "N_total": int(n) + embedding, "D": int(d)} for n in N for d in D]


def _measured_noise() -> float:
    committed = REPO / "docs" / "labs" / "results" / "scaling.json"
    results = json.loads(committed.read_text()) if committed.exists() else {}
    if results.get("lab_version") == scaling.VERSION:
        return results["analysis"]["noise"]["pooled_sd"]
    return MEASURED_NOISE


def test_analysis_of_synthetic_runs_recovers_the_law_and_extrapolates_the_top_decade():
    law = fits.Chinchilla(E=3.0, A=40.0, alpha=0.4, B=60.0, beta=0.3)
    records = _records(_sizes([3e3, 1e4, 3e4, 1e5, 3e5], [1e5, 2e5, 4e5, 8e5, 1.6e6]), law, noise=0.0)
    a = scaling.analyse(records, n_boot=10)
    c = a["conventions"]["kaplan"]["fit"]
    assert c["alpha"]["value"] == pytest.approx(0.4, rel=1e-3) and c["beta"]["value"] == pytest.approx(0.3, rel=1e-3)
    assert c["E"]["value"] == pytest.approx(3.0, rel=1e-3)
    assert a["n_points"] == 25 and a["n_runs"] == 75 and a["noise"]["pooled_sd"] == pytest.approx(0.0, abs=1e-12)
    # The top decade: every point with C = 6ND above max(C)/10, and only those, predicted from the rest.
    C = {f"n{n:g}_d{d:g}": 6 * n * d for n in [3e3, 1e4, 3e4, 1e5, 3e5] for d in [1e5, 2e5, 4e5, 8e5, 1.6e6]}
    e = a["extrapolation"]
    assert set(e["held_out"]) == {k for k, v in C.items() if v > max(C.values()) / 10} and e["n_fit"] == 25 - len(e["held_out"])
    assert e["laws"]["surface_kaplan"]["rms_error"] < 1e-3 and e["laws"]["surface_kaplan"]["n"] == len(e["held_out"])
    n_opt, d_opt = law.compute_optimal(a["conventions"]["kaplan"]["compute_optimal"]["budget"])
    assert a["conventions"]["kaplan"]["compute_optimal"]["tokens_per_param"]["value"] == pytest.approx(d_opt / n_opt, rel=1e-2)
    assert a["D_decades"] == pytest.approx(math.log10(16)) and a["N_decades"] == pytest.approx(2.0)


def test_noise_is_the_pooled_seed_sd():
    records = [{"name": name, "seed": s, "n_layer": 1, "n_embd": 16, "N": 10, "N_total": 20, "D": 100, "C": 6000,
                "C_full": 7000, "val_loss": v} for name, vals in {"a": [1.0, 2.0, 3.0], "b": [5.0, 5.0, 8.0]}.items()
               for s, v in zip((1, 2, 3), vals)]
    points = scaling.group_points(records)
    assert [p["sd"] for p in points] == pytest.approx([1.0, math.sqrt(3.0)])  # s² = 1 and (0+0+... )/2 = 3
    assert scaling.measure_noise(points)["pooled_sd"] == pytest.approx(math.sqrt((2 * 1 + 2 * 3) / 4))


def test_the_bootstrap_resamples_seeds_within_points():
    # One point with seeds {0, 1}: the mean of 2 draws with replacement has variance 0.25/2 = 0.125.
    boot = fits.bootstrap_seeds_and_points([np.array([0.0, 1.0])], lambda idx, means: {"m": means[0]}, 4000, seed=0)
    assert boot["m"].var() == pytest.approx(0.125, rel=0.08)
    # Points are resampled too: two points with one seed each, values 0 and 1.
    boot = fits.bootstrap_seeds_and_points([np.array([0.0]), np.array([1.0])], lambda idx, means: {"m": means[idx].mean()},
                                           4000, seed=0)
    assert boot["m"].var() == pytest.approx(0.125, rel=0.08)


@pytest.mark.parametrize("law", [SMALL_LAW, MEASURED_LAW], ids=["small_law", "measured_law"])
def test_alpha_and_beta_are_identifiable_on_the_default_grid_at_the_measured_noise(law):
    """Synthetic L(N, D) on the lab's own default grid and seed count, at the measured noise, fitted
    with the lab's fitter (non-embedding N, Kaplan's convention): α and β come back within ±0.05 in
    every draw."""
    sizes = scaling.grid_sizes(scaling.parse_grid(scaling.DEFAULT_GRID))
    N, D = (np.array([s[k] for s in sizes], dtype=float) for k in ("N", "D"))
    assert math.log10(D.max() / D.min()) >= 2.0 - 1e-9  # the grid spans two decades of D
    check = fits.recovery_check(law, N, D, scaling.DEFAULT_SEEDS, _measured_noise(), n_draws=5, tolerance=0.05, seed=1)
    assert check["identifiable"], check
    assert check["failed_fits"] == 0 and check["max_alpha_error"] <= 0.05 and check["max_beta_error"] <= 0.05


def test_total_n_convention_on_the_default_grid_recovers_beta_but_alpha_only_marginally():
    """Total N (Chinchilla's convention) spans two decades on these tiny models (embeddings dominate the
    small ones) against three for non-embedding N, so α is harder to pin down. At the noise the
    committed default run measured (0.066 nats pooled), β comes back within ±0.05 for both synthetic
    laws but α does not (worst draws ≈ 0.08 and ≈ 0.17): total-N α is identifiable on this grid only
    for some laws, which is why the lab runs the check on its own fit and withholds α and β when it
    fails. (The check's verdict is exactly 'both errors within the tolerance'.)"""
    sizes = scaling.grid_sizes(scaling.parse_grid(scaling.DEFAULT_GRID))
    N, D = (np.array([s[k] for s in sizes], dtype=float) for k in ("N_total", "D"))
    assert math.log10(N.max() / N.min()) < 2.05
    for law in (SMALL_LAW, MEASURED_LAW):
        check = fits.recovery_check(law, N, D, scaling.DEFAULT_SEEDS, _measured_noise(), n_draws=5, seed=1)
        assert check["max_beta_error"] <= 0.05, check
        assert check["identifiable"] == (check["max_alpha_error"] <= 0.05 and check["max_beta_error"] <= 0.05)
    # with a quarter of the noise the same grid does give total-N α back: the grid is not blind to it
    quiet = fits.recovery_check(SMALL_LAW, N, D, scaling.DEFAULT_SEEDS, _measured_noise() / 4, n_draws=5, seed=1)
    assert quiet["identifiable"], quiet


def test_the_identifiability_check_fails_where_the_grid_cannot_tell():
    D = np.repeat([3e4, 1e5, 3e5, 1e6, 3e6], 2)
    one_size = fits.recovery_check(SMALL_LAW, np.full(10, 1e5), D, 3, 0.01, n_draws=3,
                                   fit=lambda n, d, l: scaling._surface_fit(n, d, l, np.arange(len(n))))
    assert not one_size["identifiable"] and one_size["failed_fits"] == 3
    close = fits.recovery_check(SMALL_LAW, np.tile([1e5, 1.1e5], 5), D, 3, 0.01, n_draws=3, seed=2)
    assert not close["identifiable"] and close["max_alpha_error"] > 0.05  # two sizes 10% apart: α is noise
    # The default grid itself fails at a noise 10× the measured one: the check reads the noise.
    sizes = scaling.grid_sizes(scaling.parse_grid(scaling.DEFAULT_GRID))
    N, D = (np.array([s[k] for s in sizes], dtype=float) for k in ("N", "D"))
    assert not fits.recovery_check(SMALL_LAW, N, D, scaling.DEFAULT_SEEDS, 10 * MEASURED_NOISE, n_draws=3, seed=1)["identifiable"]


def _report_of(records, n_boot=10):
    a = scaling.analyse(records, n_boot=n_boot)
    results = scaling.make_results("models=1x16 steps=10", records, a, 1.0, [], n_boot, 1, "custom", [1, 2, 3], 10**7)
    return a, scaling.report(results)


def test_the_report_withholds_alpha_and_beta_where_they_are_not_identifiable():
    # One model size: L(N, D) has nothing to fit α from.
    a, text = _report_of(_records(_sizes([1e5], [3e4, 1e5, 3e5, 1e6, 3e6]), SMALL_LAW, 0.01))
    assert not a["conventions"]["kaplan"]["identifiability"]["identifiable"]
    kaplan = next(line for line in text.splitlines() if line.startswith("- **non-embedding N"))
    assert "not identifiable on this grid" in kaplan and "α =" not in kaplan
    # Two sizes 4% apart at the same noise: a fit exists, but the check fails and α, β are withheld.
    a, text = _report_of(_records(_sizes([1e5, 1.04e5], [3e4, 1e5, 3e5, 1e6, 3e6]), SMALL_LAW, 0.01))
    ident = a["conventions"]["kaplan"]["identifiability"]
    assert "fit" in a["conventions"]["kaplan"] and not ident["identifiable"]
    kaplan = next(line for line in text.splitlines() if line.startswith("- **non-embedding N"))
    assert "not identifiable on this grid" in kaplan and "α =" not in kaplan and "β =" not in kaplan
    # A wide grid: the same report quotes them, with intervals.
    a, text = _report_of(_records(_sizes([3e3, 3e4, 3e5, 3e6], [3e4, 1e5, 3e5, 1e6, 3e6]), SMALL_LAW, 0.01))
    kaplan = next(line for line in text.splitlines() if line.startswith("- **non-embedding N"))
    assert a["conventions"]["kaplan"]["identifiability"]["identifiable"] and "**α = 0.3" in kaplan and "check passed" in kaplan
    assert "no token is seen twice" in text


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


@pytest.mark.slow  # 12 tiny training runs: ≈ 10 s on a quiet machine
def test_quick_grid_runs_end_to_end_with_seeds_and_measures_the_noise(tmp_path):
    out = tmp_path / "scaling"
    result = run_cli("lab", "scaling", "--quick", "--out", str(out), "--bootstrap", "10")
    assert result.returncode == 0, result.stderr
    results = json.loads((out / "results.json").read_text())
    points, a = scaling.measured(results)
    assert results["lab"] == "scaling" and results["lab_version"] == scaling.VERSION
    assert results["seeds"] == [1337, 1338] and results["config"]["seeds_per_point"] == 2
    runs = [r for s in results["per_seed"] for r in s["results"]["runs"]]
    assert len(runs) == 12 and {r["status"] for r in runs} == {"trained"} and len(points) == 6
    assert all(p["n"] == 2 and p["sd"] > 0 for p in points)  # different seeds, different losses
    assert a["noise"]["pooled_sd"] > 0 and results["config"]["corpus"] == "shakespeare"
    assert results["config"]["train_tokens"] > results["config"]["max_tokens"]
    alpha = a["power_law"]["alpha"]["value"]
    assert math.isfinite(alpha) and alpha > 0  # more compute, lower loss
    assert all(r["C"] == 6 * r["N"] * r["D"] and r["C_total"] == 6 * r["N_total"] * r["D"] and r["C_full"] > r["C"] for r in runs)
    assert set(a["conventions"]) == {"kaplan", "chinchilla"}
    for name in (*scaling.PLOTS.values(), "report.md"):
        assert (out / name).stat().st_size > 0
    assert "α_C =" in result.stdout and "Noise" in (out / "report.md").read_text()

    from groundup.cli import main

    assert main(["lab", "scaling", "--report-from", str(out / "results.json"), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "report.md").read_bytes() == (out / "report.md").read_bytes()
    assert main(["lab", "scaling", "--quick", "--out", str(out), "--bootstrap", "5", "--jobs", "1"]) == 0
    rerun = json.loads((out / "results.json").read_text())
    assert {r["status"] for s in rerun["per_seed"] for r in s["results"]["runs"]} == {"reused"}
    assert [p["val_losses"] for p in scaling.measured(rerun)[0]] == [p["val_losses"] for p in points]


def test_the_alpha_verdict_can_fail_and_names_the_edge_it_crosses():
    def analysis(lo, hi):
        return {"power_law": {"alpha": {"value": (lo + hi) / 2, "ci95": [lo, hi]}}}

    assert scaling.verdict(analysis(0.06, 0.09)).startswith("supports the claim")
    assert scaling.verdict(analysis(0.20, 0.30)).startswith("does not match the claim")  # far steeper: refuted
    assert scaling.verdict(analysis(0.001, 0.01)).startswith("does not match the claim")  # flat: refuted
    low = scaling.verdict(analysis(0.039, 0.063))  # the v2 report's interval: it crosses 0.05 only
    assert low.startswith("consistent with the claim but not decisive") and "only the band's lower edge, 0.05" in low
    assert "upper edge" not in low and "both" not in low
    assert "only the band's upper edge, 0.1" in scaling.verdict(analysis(0.08, 0.12))
    assert "below 0.05 and above 0.1" in scaling.verdict(analysis(0.03, 0.12))


def test_bad_grid_is_a_clean_error(tmp_path, capsys):
    from groundup.cli import main

    assert main(["lab", "scaling", "--grid", "models=2x16", "--out", str(tmp_path)]) == 2
    assert "steps=" in capsys.readouterr().err
    assert main(["lab", "scaling", "--seeds", "1", "--out", str(tmp_path)]) == 2
    assert "at least 2" in capsys.readouterr().err


def test_the_default_grid_spans_two_decades_of_data_within_one_epoch_of_python_stdlib():
    sizes = scaling.grid_sizes(scaling.parse_grid(scaling.DEFAULT_GRID))
    D = [s["D"] for s in sizes]
    N = [s["N"] for s in sizes]
    assert math.log10(max(D) / min(D)) >= 2.0 and math.log10(max(N) / min(N)) >= 2.0
    assert "corpus=python-stdlib" in scaling.BASE_OVERRIDES and scaling.DEFAULT_SEEDS >= 3
    assert max(D) <= PYTHON_STDLIB_TRAIN_TOKENS  # no silent repetition


def test_the_forecast_verdict_turns_with_the_held_out_errors():
    """The extrapolation verdict says 'extrapolates' only when every held-out point is within 2 seed sds,
    and names the side and size of the miss otherwise (hand-made errors)."""
    def analysis(within, mean_error):
        law = {"rms_error": abs(mean_error), "mean_error": mean_error, "n": 5, "seed_sd": 0.02,
               "ratio": abs(mean_error) / 0.02, "within_2sd": within}
        return {"extrapolation": {"held_out": ["a"] * 5, "cut_C": 1e12, "n_fit": 25, "laws": {"surface_kaplan": law}}}

    good = "\n".join(scaling.extrapolation_lines(analysis(5, 0.01)))
    bad = "\n".join(scaling.extrapolation_lines(analysis(0, 0.6)))
    low = "\n".join(scaling.extrapolation_lines(analysis(2, -0.1)))
    assert "it extrapolates" in good and "does not extrapolate" not in good
    assert "does not extrapolate" in bad and "0.600 nats above" in bad and "30.0×" in bad
    assert "does not extrapolate" in low and "0.100 nats below" in low
