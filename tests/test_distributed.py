"""Data parallelism: torchrun with 2 CPU processes (gloo) equals one process with the same global batch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

from groundup.train.trainer import train
from groundup.util.metrics import read_metrics

from helpers import TINY, tiny_config

TORCHRUN = shutil.which("torchrun", path=os.path.dirname(sys.executable))


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not installed beside this Python")
def test_two_ranks_stay_in_sync_and_match_one_process_with_the_same_global_batch(tmp_path):
    steps = ["max_steps=8", "log_interval=1", "eval_interval=8", "checkpoint_interval=0", "batch_size=4"]
    args = [a for s in TINY + steps for a in ("--set", s)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    r = subprocess.run([TORCHRUN, "--nproc_per_node=2", "--master_port=29517", "-m", "groundup", "train", *args,
                        "--out", str(tmp_path / "ddp")], capture_output=True, text=True, env=env, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "× 2 ranks" in r.stdout
    assert "weights identical on all 2 ranks" in r.stdout  # checked by SHA-256 across ranks at the end
    assert not (tmp_path / "ddp" / "rank1").exists()

    single = train(tiny_config(*steps, "batch_size=8"), tmp_path / "one", progress=False)
    ddp_losses = [r["loss"] for r in read_metrics(tmp_path / "ddp" / "metrics.jsonl") if "loss" in r]
    one_losses = [r["loss"] for r in read_metrics(tmp_path / "one" / "metrics.jsonl") if "loss" in r]
    assert len(ddp_losses) == len(one_losses) == 8
    assert ddp_losses == pytest.approx(one_losses, rel=1e-5)
    assert single.step == 8


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not installed beside this Python")
def test_fsdp_matches_one_process_and_resumes_after_a_kill_bit_identically(tmp_path):
    """parallel=fsdp: weights, gradients and AdamW moments sharded over 2 CPU ranks, with gradient
    accumulation (reduce-scatter only on the last micro-batch). Same losses and weights as one process
    with the same global batch; checkpoints hold full tensors; a SIGKILL at step 6 and a resume give
    bit-identical weights and optimizer state to the uninterrupted sharded run."""
    from safetensors.torch import load_file

    steps = ["max_steps=8", "log_interval=1", "eval_interval=8", "checkpoint_interval=4", "grad_accum_steps=2"]
    args = [a for s in TINY + steps + ["batch_size=2", "parallel=fsdp"] for a in ("--set", s)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

    def torchrun(*extra, port):
        return subprocess.run([TORCHRUN, "--nproc_per_node=2", f"--master_port={port}", "-m", "groundup", "train", *extra],
                              capture_output=True, text=True, env=env, timeout=240)

    r = torchrun(*args, "--out", str(tmp_path / "fsdp"), port=29541)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "× 2 ranks (FSDP)" in r.stdout and "weights identical on all 2 ranks" in r.stdout

    train(tiny_config(*steps, "batch_size=4"), tmp_path / "one", progress=False)  # 2 ranks × 2 = 4 per micro-batch
    losses = {k: [r["loss"] for r in read_metrics(tmp_path / k / "metrics.jsonl") if "loss" in r] for k in ("fsdp", "one")}
    assert len(losses["fsdp"]) == 8 and losses["fsdp"] == pytest.approx(losses["one"], rel=1e-5)
    sharded, single = load_file(tmp_path / "fsdp" / "model.safetensors"), load_file(tmp_path / "one" / "model.safetensors")
    assert sharded.keys() == single.keys()
    for name in single:  # full tensors in the checkpoint, equal to one process's up to float rounding
        assert sharded[name].shape == single[name].shape
        assert (sharded[name] - single[name]).abs().max().item() < 1e-5, name

    killed = torchrun(*args, "--inject", "kill@6", "--out", str(tmp_path / "killed"), port=29542)
    assert killed.returncode != 0
    resumed = torchrun("--resume", str(tmp_path / "killed"), port=29543)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming" in resumed.stdout and "(FSDP)" in resumed.stdout
    for f in ("model.safetensors", "optimizer.safetensors"):
        a, b = load_file(tmp_path / "killed" / f), load_file(tmp_path / "fsdp" / f)
        assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in b), f


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not installed beside this Python")
@pytest.mark.parametrize("parallel, port", [("ddp", 29561), ("fsdp", 29562)])
def test_a_mixture_of_experts_with_idle_experts_trains_in_sync_under_torchrun(tmp_path, parallel, port):
    """E = 8 experts, k = 1, 4 tokens per rank per step: at least 4 experts get no token on each
    rank in every step, yet (stacked expert weights: a zero gradient, never None) DDP and FSDP
    reduce every parameter without find_unused_parameters; the ranks end with identical weights
    and match one process with the same global batch. The balance loss is off here: like Switch's,
    it is computed on each rank's own tokens (f·P is not linear in the batch), so with it on the
    ranks still agree but no longer equal one process exactly; the router z-loss is a mean and is on."""
    from safetensors.torch import load_file

    moe = ["n_experts=8", "experts_per_token=1", "balance_loss=0", "router_z_loss=0.01", "activation=swiglu",
           "block_size=4", "max_steps=6", "log_interval=1", "eval_interval=6", "checkpoint_interval=0"]
    args = [a for s in TINY + moe + ["batch_size=1", f"parallel={parallel}"] for a in ("--set", s)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    r = subprocess.run([TORCHRUN, "--nproc_per_node=2", f"--master_port={port}", "-m", "groundup", "train", *args,
                        "--out", str(tmp_path / parallel)], capture_output=True, text=True, env=env, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "weights identical on all 2 ranks" in r.stdout and "8 experts, 1 per token" in r.stdout

    train(tiny_config(*moe, "batch_size=2"), tmp_path / "one", progress=False)
    losses = {k: [r["loss"] for r in read_metrics(tmp_path / k / "metrics.jsonl") if "loss" in r] for k in (parallel, "one")}
    assert len(losses[parallel]) == 6 and losses[parallel] == pytest.approx(losses["one"], rel=1e-5)
    ranks, single = load_file(tmp_path / parallel / "model.safetensors"), load_file(tmp_path / "one" / "model.safetensors")
    assert ranks.keys() == single.keys() and "blocks.0.ffn.up.weight" in single
    for name in single:
        assert (ranks[name] - single[name]).abs().max().item() < 1e-5, name
