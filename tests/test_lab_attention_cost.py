"""The attention-cost lab: the memory tracker counts what it should, the explicit path's memory
grows as T² and the fused kernel's as T, the FLOP model matches torch's counter, and the lab runs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from groundup.accounting import attention_layer_flops
from groundup.labs import attention_cost as ac
from groundup.util.memory import PeakTensorMemory

from conftest import run_cli


def test_peak_memory_counts_live_tensors_and_forgets_freed_ones():
    existing = torch.zeros(10_000)  # allocated before: its views and in-place updates cost nothing new
    with PeakTensorMemory() as tracker:
        existing[:100].add_(1.0)
        existing.view(100, 100).t()
        a = torch.empty(1000, dtype=torch.float32)  # 4,000 bytes
        view = a[:10]  # same storage: not counted again
        del a, view
        b = torch.empty(500, dtype=torch.float64)  # 4,000 bytes, after the first was freed
        c = torch.ones(250, dtype=torch.float32)  # 1,000 bytes, alongside b
    assert tracker.peak == 5000 and tracker.current == 5000
    del b, c
    assert tracker.current == 0


def test_explicit_attention_memory_grows_quadratically_and_fused_linearly():
    rows = [ac.measure_point(path, T, n_embd=32, n_head=2, repeats=1) for path in ac.PATHS for T in (128, 256, 512)]
    exponent = {path: ac.fit_exponent([r["T"] for r in rows if r["path"] == path],
                                      [r["peak_bytes"] for r in rows if r["path"] == path]) for path in ac.PATHS}
    assert 1.7 < exponent["math"] < 2.1, exponent
    assert 0.8 < exponent["sdpa"] < 1.3, exponent
    # The score matrices alone are heads·T² floats: the explicit path holds at least that at T = 512.
    assert next(r for r in rows if r["path"] == "math" and r["T"] == 512)["peak_bytes"] >= 2 * 512 * 512 * 4


@pytest.mark.parametrize("backward", [False, True])
def test_attention_flops_match_torch_flop_counter(backward):
    T, C = 48, 32
    module = ac._module("math", T, C, 4, "cpu")
    x = torch.randn(3, T, C, requires_grad=backward)
    with FlopCounterMode(display=False) as counter:
        ac._one_pass(module, x, backward)
    f = attention_layer_flops(T, C, batch=3, backward=backward)
    assert counter.get_total_flops() == f["linear"] + f["quadratic"]
    assert attention_layer_flops(2 * C, C)["linear"] == attention_layer_flops(2 * C, C)["quadratic"]  # the crossover T = 2C


def test_fits_recover_known_exponents_constant_and_the_crossover():
    T = [64, 128, 256, 512, 1024]
    assert ac.fit_exponent(T, [3 * t**1.5 for t in T]) == pytest.approx(1.5)
    # t = 1 ms + 3 µs·T + 10 ns·T²: the quadratic term passes the linear one at T* = a/b = 300.
    f = ac.fit_time(T, [1e-3 + 3e-6 * t + 1e-8 * t * t for t in T])
    assert f["constant_s"] == pytest.approx(1e-3, rel=1e-6) and f["linear_coef"] == pytest.approx(3e-6, rel=1e-6)
    assert f["quadratic_coef"] == pytest.approx(1e-8, rel=1e-6) and f["crossover_T"] == pytest.approx(300, rel=1e-6)
    assert f["max_relative_misfit"] < 1e-9
    f = ac.fit_time(T, [2e-9 * t * t for t in T])  # pure T²: no constant, no linear term, T* = 0
    assert f["constant_s"] == pytest.approx(0, abs=1e-15) and f["linear_coef"] == pytest.approx(0, abs=1e-15)
    assert f["quadratic_coef"] == pytest.approx(2e-9, rel=1e-6) and f["crossover_T"] == 0


def test_without_a_constant_the_crossover_is_an_artefact():
    """The old fit a·T + b·T² on the same data pushes the 1 ms per call into a·T and puts the
    crossover far from the true 300; the fit with a constant finds it."""
    T = np.array([64, 128, 256, 512, 1024], dtype=float)
    t = 1e-3 + 3e-6 * T + 1e-8 * T * T
    (a, b), *_ = np.linalg.lstsq(np.stack([T, T * T], axis=1) / t[:, None], np.ones_like(t), rcond=None)
    assert a / b > 2 * 300  # the artefact
    assert ac.fit_time(T, t)["crossover_T"] == pytest.approx(300, rel=1e-6)


def test_time_fit_misfit_exposes_a_cost_it_cannot_describe():
    """A cubic cost is no c + a·T + b·T²: the fit's largest relative misfit says so (the probe can fail)."""
    T = [64, 128, 256, 512, 1024, 2048]
    assert ac.fit_time(T, [1e-12 * t**3 for t in T])["max_relative_misfit"] > 0.1


def test_time_exponent_is_flops_exponent_minus_flops_per_s_exponent():
    rows = [ac.measure_point(path, T, n_embd=16, n_head=2, repeats=1) for T in (32, 64, 128, 256) for path in ac.PATHS]
    a = ac.analyse(rows, 16)
    for path in ac.PATHS:
        p = a[path]
        assert p["time_exponent"] == pytest.approx(p["flops_exponent"] - p["flops_per_s_exponent"], abs=1e-9)
        longer_half = (64, 128, 256)  # of four lengths: the last three
        assert p["flops_exponent"] == pytest.approx(ac.fit_exponent(longer_half, [
            sum(attention_layer_flops(t, 16).values()) for t in longer_half]), rel=1e-9)
    assert all(r["flops_per_s"] == pytest.approx(r["flops"] / r["seconds"]) for r in rows)


def _width(d, b, a=1e-6):
    return {"d": d, **{p: {"quadratic_coef": b, "linear_coef": a} for p in ac.PATHS}}


def test_width_scaling_and_its_verdict_can_fail():
    from groundup.labs.harness import aggregate

    widths = [64, 128, 256]
    proportional = [ac.width_scaling([_width(d, k * 1e-9 * d) for d in widths]) for k in (1.0, 1.1, 0.9)]
    assert proportional[0]["math"]["quadratic_coef_exponent"] == pytest.approx(1.0)
    assert ac.width_verdict(aggregate(proportional), widths, 3).startswith("Supported")
    flat = [ac.width_scaling([_width(d, k * 1e-9) for d in widths]) for k in (1.0, 1.1, 0.9)]  # b does not grow with C
    assert ac.width_verdict(aggregate(flat), widths, 3).startswith("NOT supported")
    assert ac.width_verdict(aggregate(proportional), [64], 3).startswith("Not measured")


def test_flops_verdict_needs_rising_flops_per_s():
    from groundup.labs.harness import summarize

    def sdpa(rate_exponents):
        return {"sdpa": {"flops_exponent": summarize([1.9] * 3), "flops_per_s_exponent": summarize(rate_exponents),
                         "time_exponent": summarize([1.9 - r for r in rate_exponents]),
                         "flops_per_s_shortest": summarize([1e9] * 3), "flops_per_s_longest": summarize([4e9] * 3)}}

    assert ac.flops_verdict(sdpa([0.30, 0.35, 0.32]), 3).startswith("Explained")
    assert ac.flops_verdict(sdpa([0.0, 0.05, -0.04]), 3).startswith("NOT explained")


def test_quick_lab_writes_results_and_plots(tmp_path):
    out = tmp_path / "ac"
    result = run_cli("lab", "attention-cost", "--quick", "--lengths", "64,128,256,512", "--out", str(out))
    assert result.returncode == 0, result.stderr
    data = json.loads((out / "results.json").read_text())
    assert data["seeds"] == [0]  # --quick: one seed
    assert data["config"]["widths"] == list(ac.QUICK_WIDTHS)
    assert len(data["per_seed"][0]["results"]["rows"]) == 2 * 4 * 2  # widths × lengths × paths
    analysis = data["per_seed"][0]["results"]["analysis"]
    a = analysis["by_width"][-1]
    assert a["d"] == 64
    assert all(math.isfinite(a[p]["time_exponent"]) and math.isfinite(a[p]["memory_exponent"]) for p in ac.PATHS)
    assert all(a[p]["constant_s"] >= 0 and a[p]["quadratic_coef"] >= 0 for p in ac.PATHS)
    assert a["memory_ratio_at_longest"] > 4  # math stores the 512×512 scores per head; sdpa doesn't
    assert set(analysis["width_scaling"]) == set(ac.PATHS)
    assert data["aggregate"]["analysis"]["by_width"][0]["math"]["memory_exponent"]["ci95"] is None  # one seed
    for name in list(ac.PLOTS.values()) + ["report.md"]:
        assert (out / name).stat().st_size > 0
    assert "memory" in result.stdout and "T* = a/b" in result.stdout
    again = run_cli("lab", "attention-cost", "--report-from", str(out / "results.json"), "--out", str(tmp_path / "again"))
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "again" / "report.md").read_bytes() == (out / "report.md").read_bytes()


def test_the_quadratic_verdict_fails_on_a_linear_cost():
    from groundup.labs.harness import summarize

    def exponents(time, memory, fused_memory):
        return {"math": {"time_exponent": summarize(time), "memory_exponent": summarize(memory)},
                "sdpa": {"time_exponent": summarize(time), "memory_exponent": summarize(fused_memory)}}

    assert ac.verdict(exponents([2.0, 2.1, 2.2], [1.98, 1.98, 1.98], [1.0, 1.0, 1.0]), 3).startswith("Supported")
    linear = ac.verdict(exponents([1.0, 1.05, 0.98], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]), 3)
    assert linear.startswith("NOT supported"), linear
    # Quadratic on average but too noisy over seeds to clear 1.8 with 95% confidence: not supported either.
    assert ac.verdict(exponents([1.2, 2.4, 2.6], [1.98, 1.98, 1.98], [1.0, 1.0, 1.0]), 3).startswith("NOT supported")


def test_too_few_lengths_is_a_clean_error(capsys):
    from groundup.cli import main

    assert main(["lab", "attention-cost", "--lengths", "64,128"]) == 2
    assert "at least three" in capsys.readouterr().err
    assert main(["lab", "attention-cost", "--widths", "64,66", "--lengths", "8,16,32"]) == 2
    assert "divisible by --n-head" in capsys.readouterr().err
    assert main(["lab", "attention-cost", "--widths", "64,x"]) == 2
    assert "--widths expects" in capsys.readouterr().err


def test_results_from_an_older_lab_version_are_refused_with_one_line(capsys, tmp_path):
    from groundup.cli import main

    old = tmp_path / "v2.json"
    old.write_text(json.dumps({"schema": 1, "lab": "attention-cost", "lab_version": 2, "config": {"n_embd": 64}}))
    assert main(["lab", "attention-cost", "--report-from", str(old), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "lab version 2" in err and "rerun" in err and len(err.strip().splitlines()) == 1
