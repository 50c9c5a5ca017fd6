"""The comms lab: the α–β ring fit recovers known constants (and notices a wrong ring factor), a real
gloo measurement on 2 spawned processes works, the report regenerates from results alone, the
verdicts turn with the numbers, and bad options get one line."""

from __future__ import annotations

import copy
import json
import math
import os
import time

import numpy as np
import pytest

from groundup import cluster
from groundup.cli import main
from groundup.labs import docs as lab_docs
from groundup.labs import harness
from groundup.labs.comms import fit, lab, measure, report

ALPHA, BUS = 150e-6, 2.5e9  # the "true" constants of the synthetic data: 150 µs, 2.5 GB/s
RANKS = (2, 3, 4, 6, 8)
SIZES = [4096 * 4**k for k in range(8)]  # 4 KiB … 64 MiB


def synthetic(noise: float = 0.02, seed: int = 0, ranks=RANKS, sizes=SIZES) -> list[tuple[int, int, float]]:
    """Times from groundup.cluster's ring formula (not the lab's code), times (1 + ε), ε ~ N(0, noise)."""
    rng = np.random.default_rng(seed)
    return [(s, n, cluster.ring_allreduce_seconds(s, n, BUS, ALPHA) * (1 + rng.normal(0, noise)))
            for n in ranks for s in sizes]


# ---- the fit ------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_joint_fit_recovers_alpha_and_the_bus_bandwidth_from_noisy_ring_data(seed):
    f = fit.fit_alpha_beta(synthetic(seed=seed))
    assert f["alpha"] == pytest.approx(ALPHA, rel=0.05)
    assert f["bus_bandwidth"] == pytest.approx(BUS, rel=0.03)
    assert f["rms_misfit"] < 0.03  # the noise is 2%


@pytest.mark.parametrize("n", RANKS)
def test_each_per_n_fit_recovers_them_too(n):
    f = fit.fit_alpha_beta(synthetic(ranks=(n,)))
    assert f["alpha"] == pytest.approx(ALPHA, rel=0.08)
    assert f["bus_bandwidth"] == pytest.approx(BUS, rel=0.05)


def test_without_the_ring_factor_the_joint_fit_misfits_and_gets_the_bandwidth_wrong():
    """The probe can fail: the same data fitted with bus bytes = S (the 2(n − 1)/n dropped) cannot
    put n = 2 and n = 8 on one line."""
    points = synthetic()
    right, wrong = fit.fit_alpha_beta(points), fit.fit_alpha_beta(points, factor=lambda n: 1.0)
    assert wrong["rms_misfit"] > 0.10 and wrong["rms_misfit"] > 4 * right["rms_misfit"]
    assert abs(wrong["bus_bandwidth"] / BUS - 1) > 0.2


def test_the_fit_on_exact_data_is_exact_and_misfit_is_relative():
    points = [(s, 4, ALPHA + s * fit.ring_factor(4) / BUS) for s in SIZES]
    f = fit.fit_alpha_beta(points)
    assert f["alpha"] == pytest.approx(ALPHA, rel=1e-9) and f["beta"] == pytest.approx(1 / BUS, rel=1e-9)
    assert max(abs(m) for m in f["misfit"]) < 1e-9
    doubled = points[:-1] + [(points[-1][0], 4, points[-1][2] / 2)]  # one point measured at half the time
    m = fit.fit_alpha_beta(doubled)["misfit"]  # (fitted − measured)/measured: the fit lies above that point
    assert m[-1] > 0.3 and abs(m[-1]) == max(abs(x) for x in m)


def test_ring_factor_and_prediction_by_hand():
    assert [fit.ring_factor(n) for n in (1, 2, 4, 8)] == [0.0, 1.0, 1.5, 1.75]
    f = {"alpha": 1e-3, "beta": 1e-9}
    assert fit.predict(f, 1e6, 4, calls=3) == pytest.approx(3e-3 + 1.5e-3)  # 3α + β·S·1.5
    assert fit.predict(f, 1e6, 1) == 0.0  # one rank: nothing to reduce
    # the lab's model and groundup.cluster's formula agree
    assert fit.predict({"alpha": ALPHA, "beta": 1 / BUS}, 5e7, 6) == pytest.approx(cluster.ring_allreduce_seconds(5e7, 6, BUS, ALPHA))


def test_the_fit_refuses_too_few_points_and_non_positive_times():
    with pytest.raises(ValueError, match="two points"):
        fit.fit_alpha_beta([(4096, 2, 1e-4)])
    with pytest.raises(ValueError, match="positive"):
        fit.fit_alpha_beta([(4096, 2, 1e-4), (8192, 2, 0.0)])


def test_ddp_buckets_and_step_times_by_hand():
    MiB = 2**20
    assert lab.ddp_buckets(MiB) == 1 and lab.ddp_buckets(12_700_000) == 2 and lab.ddp_buckets(30 * MiB) == 3
    records = [{"step": s, "loss": 1.0, "time_s": t} for s, t in ((1, 0.5), (2, 0.6), (3, 0.7), (4, 0.9), (5, 1.0))]
    records.insert(2, {"step": 2, "val_loss": 1.0, "time_s": 9.0})  # evaluations are not steps
    times = measure.step_seconds(records, skip_steps=2)
    assert times["steps"] == pytest.approx([0.1, 0.2, 0.1]) and times["median"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="max_steps"):
        measure.step_seconds(records[:2], skip_steps=2)


# ---- a real measurement ------------------------------------------------------------------------------
def test_a_real_gloo_all_reduce_on_two_spawned_processes():
    times = measure.allreduce_times(2, [4096, 262144], warmup=1, repeats=2, seed=0, min_block=0.002)
    assert set(times) == {4096, 262144}
    for t in times.values():
        assert 0 < t["seconds"] < 1 and len(t["blocks"]) == 2 and t["calls"] >= 1
        assert t["seconds"] == pytest.approx(sorted(t["blocks"])[0] / 2 + sorted(t["blocks"])[1] / 2)


@pytest.mark.slow
def test_a_tiny_real_run_of_the_lab_through_the_trainer(tmp_path):
    """All of it for real, as small as it goes: 2 gloo ranks, two sizes, the trainer at n = 1 and under DDP at 2."""
    s = lab.Settings.quick(process_counts=(2,), sizes=(4096, 65536), repeats=2, ddp_ranks=(2,), n_layer=1, n_head=1,
                           n_embd=32, ddp_steps=7, skip_steps=3)
    results = lab.run_lab(s, [5], tmp_path, mode="quick", say=lambda *a: None)
    r = results["aggregate"]["ddp"]["ranks"]["2"]
    assert results["aggregate"]["ddp"]["compute_s"]["mean"] > 0 and r["measured_s"]["mean"] > 0
    assert (tmp_path / "report.md").exists() and results["config"]["ddp_params"] > 0


# ---- the lab on synthetic measurements: report, regeneration, verdicts ------------------------------------
COMPUTE = 0.030  # s: the fake trainer's step at n = 1


def _fakes(state: dict) -> dict:
    """The lab's two measurements replaced by the ring formula (2% noise by seed) and a DDP step that
    is compute + the exact all-reduce × state["ddp_factor"] (to move the measured step time)."""

    def allreduce_times(n, sizes, warmup, repeats, seed, min_block=0.02):
        rng = np.random.default_rng([seed, n])
        return {s: {"seconds": cluster.ring_allreduce_seconds(s, n, BUS, ALPHA) * (1 + rng.normal(0, 0.02)),
                    "blocks": [], "calls": 1} for s in sizes}

    def trainer_step_time(n, overrides, skip_steps):
        if n == 1:
            return {"median": COMPUTE, "steps": []}
        comm = (lab.ddp_buckets(state["grad_bytes"]) + 1) * ALPHA + state["grad_bytes"] * fit.ring_factor(n) / BUS
        return {"median": (COMPUTE + comm) * state["ddp_factor"], "steps": []}

    return {"allreduce_times": allreduce_times, "trainer_step_time": trainer_step_time}


GRAD_BYTES = 12_700_000


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    """One 3-seed run of the lab on fake measurements, 4 cores (n = 2 and 4 inside, 8 oversubscribed)."""
    tmp = tmp_path_factory.mktemp("comms")
    state = {"ddp_factor": 1.0, "grad_bytes": GRAD_BYTES}
    with pytest.MonkeyPatch.context() as mp:
        for name, f in _fakes(state).items():
            mp.setattr(measure, name, f)
        mp.setattr(lab, "cores", lambda: 4)
        mp.setattr(lab, "gradient_bytes", lambda s: (GRAD_BYTES // 4, GRAD_BYTES))
        s = lab.Settings(process_counts=(2, 4, 8), sizes=tuple(SIZES))
        results = lab.run_lab(s, [1, 2, 3], tmp / "run", say=lambda *a: None)
    return tmp / "run", results


def test_synthetic_run_writes_results_report_and_plots_and_regenerates(synthetic_run, tmp_path):
    out, results = synthetic_run
    agg = results["aggregate"]
    assert results["lab"] == "comms" and results["schema"] == harness.SCHEMA and len(results["seeds"]) == 3
    assert agg["allreduce"]["fit"]["4"]["alpha"]["ci95"] is not None  # an interval over the 3 seeds
    assert agg["allreduce"]["joint"]["all"]["bus_bandwidth"]["mean"] == pytest.approx(BUS, rel=0.03)
    assert set(agg["ddp"]["ranks"]) == {"2", "4"}
    assert abs(agg["ddp"]["ranks"]["2"]["error"]["mean"]) < 0.05
    text = (out / "report.md").read_text()
    for name in report.PLOTS.values():
        assert (out / name).stat().st_size > 0 and name in text
    assert "oversubscribed" in text and "Assumptions" in text

    assert main(["lab", "comms", "--report-from", str(out / "results.json"), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "report.md").read_text() == text
    results_dir = tmp_path / "results"
    results_dir.mkdir()
    (results_dir / "comms.json").write_text((out / "results.json").read_text())
    pages = lab_docs.regenerate_docs(results_dir, tmp_path / "docs", labs=("comms",))
    assert pages[0].name == "comms.md" and "do not edit by hand" in pages[0].read_text()


def test_the_ddp_prediction_error_is_prediction_over_measurement(monkeypatch):
    """A measured step 40% slower than compute + all-reduce gives an error of 1/1.4 − 1 = −29%."""
    state = {"ddp_factor": 1.4, "grad_bytes": GRAD_BYTES}
    for name, f in _fakes(state).items():
        monkeypatch.setattr(measure, name, f)
    s = lab.Settings(process_counts=(2,), sizes=tuple(SIZES), ddp_ranks=(2, 4))
    allreduce = lab.allreduce_experiment(s, 1, n_cores=2)
    ddp = lab.ddp_experiment(s, 1, allreduce, GRAD_BYTES, n_cores=2)
    assert ddp["ranks"]["2"]["error"] == pytest.approx(1 / 1.4 - 1, abs=0.01)
    four = ddp["ranks"]["4"]  # no fit at n = 4: the joint fit predicts; the shared prediction doubles the compute
    assert four["cpu_share"] == 2.0
    assert four["predicted_shared_s"] - four["predicted_s"] == pytest.approx(ddp["compute_s"])


def test_verdicts_turn_when_the_numbers_do(synthetic_run):
    _, results = synthetic_run
    v = report.verdicts(results)
    assert v["ring-model"].startswith("Supported")  # within the 4 (patched) cores: n = 2 and 4
    assert v["bus-bandwidth"].startswith("Supported")
    assert v["ddp-prediction"].startswith("Supported")

    bad = copy.deepcopy(results)  # the measured DDP steps 40% slower than predicted
    for r in bad["aggregate"]["ddp"]["ranks"].values():
        r["error"] = harness.summarize([1 / 1.4 - 1] * 3)
    assert report.verdicts(bad)["ddp-prediction"].startswith("NOT supported")
    bad = copy.deepcopy(results)  # the per-n misfit of n = 2 above the threshold
    bad["aggregate"]["allreduce"]["fit"]["2"]["rms_misfit"] = harness.summarize([0.4, 0.5, 0.45])
    assert report.verdicts(bad)["ring-model"].startswith("NOT supported")
    bad = copy.deepcopy(results)  # n = 4's bus bandwidth half of n = 2's
    bad["aggregate"]["allreduce"]["fit"]["4"]["bus_bandwidth"] = harness.summarize([BUS / 2] * 3)
    assert report.verdicts(bad)["bus-bandwidth"].startswith("NOT supported")


def test_on_two_cores_only_n_2_is_judged_and_the_bandwidth_claim_is_not_testable(synthetic_run):
    _, results = synthetic_run
    two = copy.deepcopy(results)
    two["config"]["cores"] = 2
    v = report.verdicts(two)
    assert "at n = 2 (the n ≤ 2 cores" in v["ring-model"] and "Oversubscribed" in v["ring-model"]
    assert v["bus-bandwidth"].startswith("Not testable on this machine")
    assert "**With more than 2 ranks the CPU is oversubscribed**" in report.report(two)


def test_projection_rows_by_hand():
    from groundup.labs.comms import project

    p = project.point(project.MODELS["7B"], 16, "ddp", "weak", mfu=0.4)
    tokens = project.SEQUENCES_PER_GPU * 4096
    assert p["tokens_per_gpu"] == tokens and p["link"] == cluster.INFINIBAND.name
    assert p["comm_s"] == pytest.approx(cluster.INFINIBAND.latency + 7e9 * 2 / cluster.INFINIBAND.bus_bandwidth * 2 * 15 / 16)
    assert p["efficiency"] == pytest.approx(p["compute_s"] / (p["compute_s"] + p["comm_s"]))
    assert not p["memory_fits"]  # 7B × 16 bytes = 112 GB > 90% of 80 GB
    assert project.point(project.MODELS["7B"], 16, "fsdp", "weak")["memory_fits"]
    strong = project.point(project.MODELS["7B"], 2048, "ddp", "strong")
    assert strong["tokens_per_gpu"] == 2048 and not strong["whole_sequences"]
    assert project.interconnect(8) is cluster.NVLINK and project.interconnect(9) is cluster.INFINIBAND
    assert math.isclose(project.point(project.MODELS["70B"], 8, "fsdp", "weak")["comm_s"],
                        cluster.comm_seconds_per_step(70e9, 8, "fsdp", cluster.NVLINK.bus_bandwidth, cluster.NVLINK.latency))


# ---- the command line ----------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["--ranks", "1,2"], "at least 2"),
    (["--ranks", "two"], "separated by commas"),
    (["--ddp-ranks", "0"], "at least 2"),
    (["--ddp-steps", "0"], "--ddp-steps must be at least 1"),
    (["--ddp-steps", "5"], "--ddp-steps must exceed"),
    (["--seeds", "0"], "--seeds must be at least 1"),
])
def test_bad_options_get_one_clear_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(lab, "run_lab", lambda *a, **k: pytest.fail("a bad option must stop before anything runs"))
    assert main(["lab", "comms", *argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_report_from_another_labs_results_is_one_line(capsys, tmp_path):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"schema": harness.SCHEMA, "lab": "geometry"}))
    assert main(["lab", "comms", "--report-from", str(other), "--out", str(tmp_path)]) == 2
    assert "not a results.json of the comms lab" in capsys.readouterr().err


def test_busy_cores_sees_a_spinning_process():
    """The quiet-machine check counts cores other processes keep busy (not the load average, which
    remembers the previous seed's ranks for minutes): a spinning child shows up as about one core."""
    import subprocess
    import sys
    idle = lab.busy_cores(0.5)
    assert 0.0 <= idle <= (os.cpu_count() or 1) + 1e-9
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        busy = lab.busy_cores(0.5)
    finally:
        spin.kill()
        spin.wait()
    assert busy >= idle + 0.5
