"""cluster.py: the ring model against hand-computed cases and nccl-tests' bus-bandwidth definition,
the step-time and scaling arithmetic, and the goodput model against Young's interval."""

from __future__ import annotations

import math

import numpy as np
import pytest

from groundup import cluster
from groundup.errors import ConfigError


def test_ring_allreduce_by_hand():
    # 1 GB over 4 ranks at 100 GB/s bus bandwidth: 2·3/4 of the buffer through each link, + 1 ms
    assert cluster.ring_allreduce_seconds(1e9, 4, 100e9, latency=1e-3) == pytest.approx(1e-3 + 0.015, rel=1e-12)
    assert cluster.ring_allreduce_seconds(1e9, 2, 100e9) == pytest.approx(0.010, rel=1e-12)
    assert cluster.ring_allreduce_seconds(1e9, 1, 100e9, latency=1.0) == 0.0  # one rank: nothing to send


def test_reduce_scatter_and_all_gather_by_hand():
    # each sends or receives (n − 1)/n of the full buffer: half an all-reduce
    assert cluster.reduce_scatter_seconds(1e9, 4, 100e9) == pytest.approx(0.0075, rel=1e-12)
    assert cluster.all_gather_seconds(1e9, 4, 100e9, latency=2e-3) == pytest.approx(0.0095, rel=1e-12)
    assert cluster.all_gather_seconds(1e9, 1, 100e9, latency=2e-3) == 0.0
    rs_ag = cluster.reduce_scatter_seconds(3e8, 8, 5e10) + cluster.all_gather_seconds(3e8, 8, 5e10)
    assert rs_ag == pytest.approx(cluster.ring_allreduce_seconds(3e8, 8, 5e10), rel=1e-12)


def test_bus_bandwidth_is_the_nccl_tests_definition_and_round_trips():
    # nccl-tests: busbw = algbw · 2(n − 1)/n; 8 ranks → 1.75 × S/t
    assert cluster.bus_bandwidth(1e9, 0.01, 8) == pytest.approx(1.75e11, rel=1e-12)
    for n in (2, 3, 8, 1024):
        for size in (1e3, 2.5e8, 7e10):
            t = cluster.ring_allreduce_seconds(size, n, 4.5e11)
            assert cluster.bus_bandwidth(size, t, n) == pytest.approx(4.5e11, rel=1e-12)


def test_comm_per_step_ddp_and_fsdp_by_hand():
    # 1e9 bf16 gradients on 8 GPUs at 100 GB/s: all-reduce of 2 GB → 2e9/1e11 · 14/8 = 35 ms
    assert cluster.comm_seconds_per_step(1e9, 8, "ddp", 1e11) == pytest.approx(0.035, rel=1e-12)
    # FSDP: two all-gathers of 2 GB of parameters + one reduce-scatter of 2 GB of gradients
    #   = 6e9/1e11 · 7/8 = 52.5 ms, 1.5× DDP (ZeRO §7.2.2), and three latencies
    assert cluster.comm_seconds_per_step(1e9, 8, "fsdp", 1e11) == pytest.approx(0.0525, rel=1e-12)
    assert cluster.comm_seconds_per_step(1e9, 8, "fsdp", 1e11, latency=1e-3) == pytest.approx(0.0555, rel=1e-12)
    assert cluster.comm_seconds_per_step(1e9, 8, "ddp", 1e11, grad_bytes=4) == pytest.approx(0.070, rel=1e-12)
    assert cluster.comm_seconds_per_step(1e9, 1, "fsdp", 1e11, latency=1.0) == 0.0


def test_step_seconds_and_scaling_efficiency_by_hand():
    assert cluster.step_seconds(1.0, 0.5) == 1.5
    assert cluster.step_seconds(1.0, 0.5, overlap=0.4) == pytest.approx(1.3, rel=1e-12)
    assert cluster.step_seconds(1.0, 0.5, overlap=1.0) == 1.0
    assert cluster.scaling_efficiency(1, 0.35, 1e9, "ddp", 1e11, latency=1.0) == 1.0
    # compute 0.35 s, comm 0.035 s (above): 0.35 / 0.385; half hidden: 0.35 / 0.3675
    assert cluster.scaling_efficiency(8, 0.35, 1e9, "ddp", 1e11) == pytest.approx(0.35 / 0.385, rel=1e-12)
    assert cluster.scaling_efficiency(8, 0.35, 1e9, "ddp", 1e11, overlap=0.5) == pytest.approx(0.35 / 0.3675, rel=1e-12)


def test_mtbf_from_the_llama3_rate():
    # 419 unexpected interruptions in 54 days on 16,384 GPUs: the job saw one every 54·24/419 h
    m = cluster.mtbf_seconds(16384, cluster.LLAMA3_FAILURES_PER_GPU_HOUR)
    assert m == pytest.approx(54 * 24 * 3600 / 419, rel=1e-12)
    assert m / 3600 == pytest.approx(3.093, abs=1e-3)
    assert cluster.mtbf_seconds(2, 0.5) == 3600.0


def test_young_and_goodput_by_hand():
    assert cluster.young_interval(50.0, 10_000.0) == pytest.approx(1000.0, rel=1e-12)
    # τ = 1000, δ = 50, R = 100, M = 10,000: 1000/1050 · (1 − (100 + 525)/10,000)
    assert cluster.goodput(1000.0, 50.0, 100.0, 10_000.0) == pytest.approx(1000 / 1050 * 0.9375, rel=1e-12)
    assert cluster.goodput(1000.0, 0.0, 0.0, 1e300) == pytest.approx(1.0, rel=1e-12)
    assert cluster.goodput(1000.0, 50.0, 100.0, 300.0) == 0.0  # failures faster than a restart: clipped


@pytest.mark.parametrize("delta, restart, mtbf", [(10.0, 0.0, 1e6), (60.0, 600.0, 3e5), (1.0, 30.0, 4e4)])
def test_young_interval_maximises_goodput_when_checkpoints_are_cheap(delta, restart, mtbf):
    """In this model G = (1 − δ/s)(1 − (R + s/2)/M) with s = τ + δ; dG/ds = 0 gives the exact
    maximiser s* = √(2δ(M − R)), so τ* = √(2δ(M − R)) − δ: Young's √(2δM) to first order
    (relative gap ≈ √(δ/2M) + R/2M when δ, R ≪ M)."""
    young = cluster.young_interval(delta, mtbf)
    taus = np.linspace(0.1 * young, 5 * young, 200_001)
    g = np.array([cluster.goodput(t, delta, restart, mtbf) for t in taus[::100]])
    coarse = taus[::100][int(np.argmax(g))]
    fine = np.linspace(coarse - young * 5e-3, coarse + young * 5e-3, 20_001)
    best = fine[int(np.argmax([cluster.goodput(t, delta, restart, mtbf) for t in fine]))]
    step = fine[1] - fine[0]
    assert abs(best - (math.sqrt(2 * delta * (mtbf - restart)) - delta)) <= 2 * step
    assert abs(best - young) / young <= math.sqrt(delta / (2 * mtbf)) + restart / mtbf + 2 * step / young
    # and it beats intervals 2× shorter or longer
    g_young = cluster.goodput(young, delta, restart, mtbf)
    assert g_young > cluster.goodput(young / 2, delta, restart, mtbf)
    assert g_young > cluster.goodput(young * 2, delta, restart, mtbf)


def test_interconnect_presets_are_unidirectional_per_gpu():
    assert cluster.INTERCONNECTS["nvlink"].bus_bandwidth == 450e9  # 900 GB/s bidirectional / 2
    assert cluster.INTERCONNECTS["infiniband"].bus_bandwidth == 50e9  # 400 Gb/s / 8 bits
    for link in cluster.INTERCONNECTS.values():
        assert link.source and link.latency >= 0


@pytest.mark.parametrize("call, match", [
    (lambda: cluster.ring_allreduce_seconds(1e9, 0, 1e11), "number of GPUs"),
    (lambda: cluster.ring_allreduce_seconds(1e9, 2.5, 1e11), "number of GPUs"),
    (lambda: cluster.all_gather_seconds(1e9, 4, 0.0), "bus bandwidth"),
    (lambda: cluster.reduce_scatter_seconds(-1.0, 4, 1e11), "message bytes"),
    (lambda: cluster.comm_seconds_per_step(1e9, 8, "tp", 1e11), "parallelism"),
    (lambda: cluster.step_seconds(1.0, 1.0, overlap=1.5), "overlap"),
    (lambda: cluster.mtbf_seconds(8, 0.0), "failures per gpu hour"),
    (lambda: cluster.goodput(0.0, 1.0, 1.0, 100.0), "interval"),
])
def test_bad_input_is_one_clear_error(call, match):
    with pytest.raises(ConfigError, match=match):
        call()


# ---- `groundup cost --interconnect`: the projection on a cluster ---------------------------------
def _cli(capsys, *args):
    from groundup.cli import main

    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cluster_figures_by_hand():
    from groundup import cost
    from groundup.hardware import PRESETS

    link = cluster.Interconnect("test link", 50e9, 0.0)
    c = cost.cluster_figures(1e9, 6e9, PRESETS["H100"], 8, 0.4, link, "ddp", 0.0, 32768, 60.0, 600.0)
    compute = 6e9 * 32768 / (989e12 * 0.4)  # 0.497 s per step per GPU
    comm = 2e9 / 50e9 * 2 * 7 / 8  # all-reduce of 1e9 bf16 gradients over 8: 70 ms
    assert c["compute_seconds"] == pytest.approx(compute, rel=1e-12)
    assert [r["gpus"] for r in c["rows"]] == [1, 8]
    here = c["rows"][-1]
    assert here["comm_seconds"] == pytest.approx(comm, rel=1e-12)
    assert here["efficiency"] == pytest.approx(compute / (compute + comm), rel=1e-12)
    mtbf = 3600 / (8 * 419 / (16384 * 54 * 24))
    tau = math.sqrt(2 * 60 * mtbf)
    g = tau / (mtbf * math.exp(600 / mtbf) * (math.exp((tau + 60) / mtbf) - 1))  # Daly's exponential model
    assert here["goodput"] == pytest.approx(g, rel=1e-12)
    assert here["goodput_first_order"] == pytest.approx(tau / (tau + 60) * (1 - (600 + (tau + 60) / 2) / mtbf), rel=1e-12)
    assert c["useful_fraction"] == pytest.approx(compute / (compute + comm) * g, rel=1e-12)
    half = cost.cluster_figures(1e9, 6e9, PRESETS["H100"], 8, 0.4, link, "ddp", 0.5, 32768)
    assert half["rows"][-1]["step_seconds"] == pytest.approx(compute + comm / 2, rel=1e-12)
    assert "goodput" not in half["rows"][-1] and half["useful_fraction"] == half["rows"][-1]["efficiency"]


def test_cli_cost_cluster_divides_the_bill_by_the_useful_fraction(capsys):
    args = ["cost", "--params", "7B", "--gpus", "1024", "--interconnect", "infiniband", "--parallelism", "fsdp",
            "--checkpoint-seconds", "60", "--restart-seconds", "600"]
    code, text, err = _cli(capsys, *args)
    assert code == 0, err
    assert "exposed communication" in text and "scaling efficiency" in text and "goodput" in text and "Young" in text
    code, raw, err = _cli(capsys, *args, "--json")
    import json

    f = json.loads(raw)
    c = f["cluster"]
    comm = 7e9 * 6 / 50e9 * 1023 / 1024 + 3 * 20e-6  # FSDP on InfiniBand NDR: 3 collectives of 14 GB, (n−1)/n
    assert c["rows"][-1]["comm_seconds"] == pytest.approx(comm, rel=1e-12)
    assert c["compute_seconds"] == pytest.approx(6 * 7e9 * 32768 / (989e12 * 0.4), rel=1e-12)  # 6·N·b / (peak·MFU)
    assert c["gpu_hours"] == pytest.approx(f["gpu_hours"] / c["useful_fraction"], rel=1e-12)
    assert c["dollars"] == pytest.approx(f["dollars"] / c["useful_fraction"], rel=1e-12)
    assert 0 < c["useful_fraction"] < 1
    assert [r["gpus"] for r in c["rows"]] == [1, 8, 64, 512, 1024]


def test_cli_cost_cluster_where_failures_outpace_restarts(capsys):
    """163,840 GPUs at Llama 3's rate fail every ~19 minutes; with 30-minute restarts the first-order
    goodput is 0, the exponential model's is small but positive, and the bill is finite."""
    import json

    args = ["cost", "--params", "70B", "--gpus", "163840", "--interconnect", "infiniband",
            "--checkpoint-seconds", "300", "--restart-seconds", "1800", "--json"]
    code, raw, err = _cli(capsys, *args)
    assert code == 0, err
    here = json.loads(raw)["cluster"]["rows"][-1]
    assert here["goodput_first_order"] == 0.0 and 0 < here["goodput"] < 0.1


@pytest.mark.parametrize("args, fragment", [
    (["--params", "7B", "--interconnect", "nvlink", "--checkpoint-seconds", "60"], "--restart-seconds"),
    (["--params", "7B", "--checkpoint-seconds", "60", "--restart-seconds", "6"], "--interconnect"),
    (["--params", "7B", "--interconnect", "nvlink", "--overlap", "2"], "overlap"),
    (["--params", "7B", "--interconnect", "nvlink", "--bus-bandwidth-gbs", "0"], "bus bandwidth gbs"),
    (["--params", "7B", "--interconnect", "nvlink", "--latency-us", "-1"], "--latency-us"),
])
def test_cli_cost_cluster_bad_input_is_a_clean_error(capsys, args, fragment):
    code, _, err = _cli(capsys, "cost", *args)
    assert code == 2 and err.startswith("error:") and fragment in err, err


def test_exponential_goodput_matches_a_simulation_and_the_first_order_model():
    """Simulated Poisson failures (numpy's exponential draws, not our formula): each attempt at a
    segment of τ + δ seconds fails after an exponential time; a failure costs the time spent plus a
    restart R, itself open to failures."""
    rng = np.random.default_rng(0)
    tau, delta, restart, mtbf = 300.0, 60.0, 200.0, 900.0  # M comparable to the segment: no first order here
    total, segments = 0.0, 20_000
    for _ in range(segments):
        while True:
            t = rng.exponential(mtbf)
            if t >= tau + delta:
                total += tau + delta
                break
            total += t
            while True:  # the restart, which a failure may interrupt too
                r = rng.exponential(mtbf)
                if r >= restart:
                    total += restart
                    break
                total += r
    simulated = segments * tau / total
    exact = cluster.goodput_exponential(tau, delta, restart, mtbf)
    # E[T] = M e^{R/M} (e^{(τ+δ)/M} − 1) = 900·e^{2/9}·(e^{0.4} − 1)
    assert exact == pytest.approx(tau / (900 * math.exp(200 / 900) * (math.exp(0.4) - 1)), rel=1e-12)
    assert simulated == pytest.approx(exact, rel=0.02)  # ~20k segments: the simulation's sd is < 0.5%
    assert abs(cluster.goodput(tau, delta, restart, mtbf) - simulated) > 0.05  # the first-order model is off here
    # and where failures are rare the two models agree to second order
    g1, ge = cluster.goodput(1000.0, 10.0, 60.0, 1e6), cluster.goodput_exponential(1000.0, 10.0, 60.0, 1e6)
    assert abs(g1 - ge) < ((1010 + 60) / 1e6) ** 2
    assert cluster.goodput_exponential(1000.0, 50.0, 100.0, 300.0) > 0  # never clipped
