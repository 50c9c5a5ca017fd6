"""The lab harness: mean, sd and the Student-t 95% interval over seeds (hand-computed cases, no
scipy), the one-seed case (no interval, never a zero-width one), aggregation of nested results,
results.json round trip, and clear errors for a bad --report-from."""

from __future__ import annotations

import json
import math

import pytest

from groundup import cli
from groundup.errors import GroundupError
from groundup.labs import harness


def test_summary_of_three_seeds_matches_the_hand_computed_interval():
    s = harness.summarize([1.0, 2.0, 3.0])
    # mean 2, sd √((1 + 0 + 1)/2) = 1, half-width t₀.₉₇₅,₂ · 1/√3 = 4.303 / 1.7320508 = 2.484338
    assert s["mean"] == 2.0 and s["sd"] == pytest.approx(1.0, rel=1e-12) and s["n"] == 3
    assert s["ci95"] == pytest.approx([2.0 - 2.484338, 2.0 + 2.484338], abs=1e-6)


def test_summary_of_two_seeds_uses_t_with_one_degree_of_freedom():
    s = harness.summarize([0.5, 0.7])
    # sd = 0.2/√2 = 0.1414214; half-width 12.706 · 0.1414214/√2 = 1.2706
    assert s["sd"] == pytest.approx(0.1414214, abs=1e-7)
    assert s["ci95"] == pytest.approx([0.6 - 1.2706, 0.6 + 1.2706], abs=1e-6)


def test_t_quantiles_match_the_table_and_the_large_sample_limit():
    assert [harness.t_quantile_975(df) for df in (1, 2, 4, 10, 30)] == [12.706, 4.303, 2.776, 2.228, 2.042]
    assert harness.t_quantile_975(60) == pytest.approx(2.000, abs=0.002)  # tables: 2.000
    assert harness.t_quantile_975(120) == pytest.approx(1.980, abs=0.002)  # tables: 1.980
    with pytest.raises(ValueError):
        harness.t_quantile_975(0)


def test_one_seed_has_no_interval_and_says_so():
    s = harness.summarize([0.71])
    assert s == {"mean": 0.71, "sd": None, "ci95": None, "n": 1}
    assert harness.stat(s) == "0.710 (1 seed: no interval)"
    assert harness.lower(s) == harness.upper(s) == 0.71


def test_stat_states_the_effect_against_the_seed_spread():
    s = harness.summarize([0.66, 0.71, 0.76])  # sd 0.05, half-width 4.303·0.05/√3 = 0.124
    assert harness.stat(s, signed=True) == "+0.710 ± 0.124 (95% CI over 3 seeds)"
    assert harness.short(s, ".2f") == "0.71 ± 0.12"


def test_aggregate_walks_nested_results():
    per_seed = [{"a": 1, "ok": True, "curve": [{"step": 0, "L": 2.0}], "name": "x", "hist": [1, 2]},
                {"a": 3, "ok": False, "curve": [{"step": 0, "L": 4.0}], "name": "y", "hist": [1]}]
    agg = harness.aggregate(per_seed)
    assert agg["a"]["mean"] == 2.0 and agg["a"]["n"] == 2
    assert agg["ok"] == {"all": False, "any": True, "n": 2}
    assert agg["curve"][0]["L"]["mean"] == 3.0 and agg["curve"][0]["step"]["mean"] == 0.0
    assert "name" not in agg and "hist" not in agg  # strings and ragged lists stay per seed only


def test_results_round_trip_and_report_from_errors(tmp_path):
    per_seed = harness.run_seeds(lambda seed: {"x": float(seed)}, [1, 2, 3], say=lambda *a: None)
    results = harness.make_results("demo", 1, {"k": 1}, per_seed, "test", 1.5)
    assert results["seeds"] == [1, 2, 3] and results["aggregate"]["x"]["mean"] == 2.0
    assert set(results) >= {"lab", "lab_version", "date", "wall_seconds", "config", "per_seed", "aggregate", "interval"}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    assert harness.load_results(path, "demo") == results
    with pytest.raises(GroundupError, match="not a results.json of the memory lab"):
        harness.load_results(path, "memory")
    with pytest.raises(GroundupError, match="does not exist"):
        harness.load_results(tmp_path / "missing.json", "demo")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(GroundupError, match="not valid JSON"):
        harness.load_results(tmp_path / "bad.json", "demo")
    with pytest.raises(GroundupError, match="--seeds must be at least 1"):
        harness.seed_list(0, 0)
    assert math.isfinite(results["wall_seconds"])


@pytest.mark.parametrize("lab", ["memory", "attention-cost", "geometry", "moe", "efficiency", "data-wall", "comms",
                                 "failures", "alignment"])
def test_seeds_zero_is_an_error_not_the_default(lab, tmp_path, capsys):
    """`--seeds 0` used to read as "not given" (args.seeds or DEFAULT) and ran the full default run."""
    assert cli.main(["lab", lab, "--seeds", "0", "--out", str(tmp_path / lab)]) == 2
    assert "--seeds must be at least 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / lab / "results.json").exists()
