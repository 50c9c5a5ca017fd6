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
