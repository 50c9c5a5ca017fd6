"""The wall lab: the money multiplier is the compute ratio times each factor once — checked against
factors computed here by hand from the published base run — and the fit's exponent propagates."""

from __future__ import annotations

import copy
import json
import math

import pytest

from groundup.labs.wall import lab, model, report

from conftest import REPO

SCALING = REPO / "docs" / "labs" / "results" / "scaling.json"
N0, D0, n0, m0, B0, MFU0, PEAK = 405e9, 15.6e12, 16384, 128, 16e6, 400 / 989, 989e12  # Llama 3, Table 4
LAMBDA = 419 / (16384 * 54 * 24)


def _goodput(n, delta, restart):
    """Daly's exponential model at Young's interval, written out here."""
    mtbf = 3600 / (n * LAMBDA)
    tau = math.sqrt(2 * delta * mtbf)
    return tau / (mtbf * math.exp(restart / mtbf) * (math.exp((tau + delta) / mtbf) - 1))


def _efficiency(n, n_params, batch, mfu, overlap):
    """compute / (compute + (1 − overlap)·ring all-reduce of the bf16 shard over the replicas), by hand."""
    m = m0 * n_params / N0
    d = round(n / m)
    compute = 6 * n_params * batch / n / (PEAK * mfu)
    comm = 20e-6 + 2 * (n_params / m) / 50e9 * 2 * (d - 1) / d
    return compute / (compute + (1 - overlap) * comm)


@pytest.mark.parametrize("definition, r_c", [("compute", 10.0), ("params-chinchilla", 100.0),
                                             ("params-kaplan", 10 ** (1 / 0.73))])
def test_ideal_cluster_costs_exactly_the_compute_ratio(definition, r_c):
    """MFU constant, no communication, no failures: the money multiplier is the compute ratio."""
    r = model.money_multiplier(definition, model.IDEAL)
    assert r["compute_ratio"] == pytest.approx(r_c, rel=1e-12)
    assert r["multiplier"] == pytest.approx(r_c, rel=1e-12)
    assert r["mfu_factor"] == r["comm_factor"] == r["failure_factor"] == 1.0


def test_each_factor_alone_by_hand():
    mfu = model.money_multiplier("compute", model.Assumptions(mfu_drop_per_decade=0.2))
    assert mfu["multiplier"] == pytest.approx(10 / 0.8, rel=1e-12)  # 10× the GPUs: one decade, MFU × 0.8
    fail = model.money_multiplier("compute", model.Assumptions(failures=True, checkpoint_seconds=60.0, restart_seconds=600.0))
    assert fail["multiplier"] == pytest.approx(10 * _goodput(n0, 60, 600) / _goodput(10 * n0, 60, 600), rel=1e-12)
    comm = model.money_multiplier("compute", model.Assumptions(communication=True, batch_exponent=0.0, overlap=0.0))
    e0, e1 = _efficiency(n0, N0, B0, MFU0, 0.0), _efficiency(10 * n0, N0 * math.sqrt(10), B0, MFU0, 0.0)
    assert comm["multiplier"] == pytest.approx(10 * e0 / e1, rel=1e-12)
    assert e1 < e0 < 1  # the fixed batch spreads thinner: more of each step is the all-reduce


def test_all_factors_together_by_hand():
    """The composition: dropping any factor, or counting one twice, breaks this equality."""
    a = model.Assumptions(mfu_drop_per_decade=0.1, communication=True, batch_exponent=0.5, overlap=0.5, failures=True,
                          checkpoint_seconds=60.0, restart_seconds=600.0)
    r = model.money_multiplier("compute", a)
    mfu1 = MFU0 * 0.9
    useful0 = MFU0 * _efficiency(n0, N0, B0, MFU0, 0.5) * _goodput(n0, 60, 600)
    useful1 = mfu1 * _efficiency(10 * n0, N0 * math.sqrt(10), B0 * math.sqrt(10), mfu1, 0.5) * _goodput(10 * n0, 60, 600)
    assert r["multiplier"] == pytest.approx(10 * useful0 / useful1, rel=1e-12)
    assert r["multiplier"] == pytest.approx(10 * r["mfu_factor"] * r["comm_factor"] * r["failure_factor"], rel=1e-12)


def test_llama3_mfu_drop_per_decade_by_hand():
    # 430 → 400 TFLOP/s for 2× GPUs; per 10×: (400/430)^(log₂ 10)
    assert model.LLAMA3_MFU_DROP_PER_DECADE == pytest.approx(1 - (400 / 430) ** (math.log(10) / math.log(2)), rel=1e-12)
    assert 0.20 < model.LLAMA3_MFU_DROP_PER_DECADE < 0.22


def test_same_cluster_keeps_the_gpus_and_so_the_failure_and_mfu_costs():
    a = model.Assumptions(mfu_drop_per_decade=0.3, failures=True, same_days=False)
    r = model.money_multiplier("compute", a)
    assert r["gpus"] == n0 and r["multiplier"] == pytest.approx(10.0, rel=1e-12)


def test_loss_definition_propagates_the_exponent():
    assert model.compute_ratio("loss", 0.05, 0.05) == pytest.approx(10.0, rel=1e-12)
    assert model.compute_ratio("loss", 0.025, 0.05) == pytest.approx(100.0, rel=1e-12)  # half the slope: 10² compute
    with pytest.raises(Exception, match="exponents"):
        model.compute_ratio("loss", None, 0.05)


def test_calibrated_checkpoint_time_gives_ninety_percent_at_the_base():
    delta = model.calibrated_checkpoint_seconds(600.0)
    assert _goodput(n0, delta, 600.0) == pytest.approx(0.90, abs=1e-9)


def _synthetic_scaling(tmp_path, alphas):
    """The committed scaling results with each seed's losses replaced by an exact law L = 20·C^−α_seed."""
    results = json.loads(SCALING.read_text())
    fake = copy.deepcopy(results)
    for seed_result, alpha in zip(fake["per_seed"], alphas):
        for run in seed_result["results"]["runs"]:
            run["val_loss"] = 20.0 * run["C"] ** -alpha
    path = tmp_path / "scaling.json"
    path.write_text(json.dumps(fake))
    return path, fake["analysis"]["power_law"]["alpha"]["value"]


def test_lab_refits_each_seed_and_reports_from_results(tmp_path):
    path, alpha_hat = _synthetic_scaling(tmp_path, [0.04, 0.05, 0.06])
    results = lab.run_lab(str(path), str(tmp_path / "out"), n_boot=20)
    got = [r["results"]["alpha"] for r in results["per_seed"]]
    assert got == pytest.approx([0.04, 0.05, 0.06], rel=1e-9)  # the frontier fit recovers each seed's exponent
    ideal_loss = [r["results"]["named"][0]["loss"]["multiplier"] for r in results["per_seed"]]
    assert ideal_loss == pytest.approx([10 ** (alpha_hat / a) for a in (0.04, 0.05, 0.06)], rel=1e-9)
    agg = results["aggregate"]["named"][0]["loss"]["multiplier"]
    assert agg["ci95"][0] < agg["mean"] < agg["ci95"][1]  # the seeds differ: a real interval
    text = (tmp_path / "out" / "report.md").read_text()
    for image in report.PLOTS.values():
        assert (tmp_path / "out" / image).stat().st_size > 0
    assert "20–40" in text and "Refuted" in text
    regenerated = tmp_path / "again"
    from groundup.labs import harness

    harness.regenerate(report, harness.load_results(tmp_path / "out" / "results.json", "wall"), regenerated)
    assert (regenerated / "report.md").read_text() == text


def test_verdict_can_say_refuted(tmp_path):
    """The probe can fail: results whose every multiplier sits below 20× are reported as refuted, and
    ones inside as not refuted."""
    results = json.loads((REPO / "docs" / "labs" / "results" / "wall.json").read_text())
    low = copy.deepcopy(results)

    def set_all(node, value):
        if isinstance(node, dict):
            if "mean" in node and isinstance(node["mean"], float):
                node["mean"] = value
            for v in node.values():
                set_all(v, value)
        elif isinstance(node, list):
            for v in node:
                set_all(v, value)

    set_all(low["aggregate"], 5.0)
    v = report.verdicts(low)
    assert all(s.endswith("refuted.") and "not refuted" not in s and "always below" in s for s in v.values()), v
    assert report.verdicts(results)["compute"].endswith("not refuted.")


def test_cli_wall_report_from_and_bad_input(tmp_path, capsys):
    from groundup.cli import main

    assert main(["lab", "wall", "--report-from", str(REPO / "docs" / "labs" / "results" / "wall.json"),
                 "--out", str(tmp_path)]) == 0
    assert (tmp_path / "report.md").exists()
    assert main(["lab", "wall", "--scaling-results", str(tmp_path / "missing.json"), "--out", str(tmp_path)]) == 2
    assert "missing.json" in capsys.readouterr().err
