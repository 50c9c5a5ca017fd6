"""The attention-cost lab: the memory tracker counts what it should, the explicit path's memory
grows as T² and the fused kernel's as T, the FLOP model matches torch's counter, and the lab runs."""

from __future__ import annotations

import json
import math

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


def test_fits_recover_known_exponents_and_the_crossover():
    T = [64, 128, 256, 512, 1024]
    assert ac.fit_exponent(T, [3 * t**1.5 for t in T]) == pytest.approx(1.5)
    a, b = ac.fit_linear_quadratic(T, [3e-6 * t + 1e-8 * t * t for t in T])
    assert a == pytest.approx(3e-6, rel=1e-6) and b == pytest.approx(1e-8, rel=1e-6)  # crossover at T = 300
    a, b = ac.fit_linear_quadratic(T, [2e-9 * t * t for t in T])
    assert a == pytest.approx(0, abs=1e-12) and b == pytest.approx(2e-9, rel=1e-6)


def test_quick_lab_writes_results_and_plots(tmp_path):
    out = tmp_path / "ac"
    result = run_cli("lab", "attention-cost", "--quick", "--lengths", "64,128,256,512", "--out", str(out))
    assert result.returncode == 0, result.stderr
    data = json.loads((out / "results.json").read_text())
    assert data["seeds"] == [0]  # --quick: one seed
    assert len(data["per_seed"][0]["results"]["rows"]) == 8
    a = data["per_seed"][0]["results"]["analysis"]
    assert all(math.isfinite(a[p]["time_exponent"]) and math.isfinite(a[p]["memory_exponent"]) for p in ac.PATHS)
    assert a["memory_ratio_at_longest"] > 4  # math stores the 512×512 scores per head; sdpa doesn't
    assert data["aggregate"]["analysis"]["math"]["memory_exponent"]["ci95"] is None  # one seed: no interval
    for name in ("attention_time.png", "attention_memory.png", "report.md"):
        assert (out / name).stat().st_size > 0
    assert "memory" in result.stdout
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
