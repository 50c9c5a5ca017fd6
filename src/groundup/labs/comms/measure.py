"""Measuring on this machine: gloo all-reduce over loopback, and the step time of our trainer under DDP.

Both start their ranks the same way (`launch`): `torch.multiprocessing` spawns n fresh Python
processes, each sets the variables torchrun would set (MASTER_ADDR/PORT, RANK, WORLD_SIZE,
LOCAL_RANK; one torch thread) and calls a module-level function. Rank 0 writes what it measured to
a JSON file the parent reads back.

All-reduce timing, per message size S (float32, bytes), after `warmup` untimed calls:
    one call timed to pick k, the calls per timed block, so a block lasts ≥ min_block_seconds
    (the same k on every rank: the largest any rank asks for);
    `repeats` blocks: barrier, k back-to-back all_reduce(SUM) calls, t = elapsed / k on each rank,
    and the block's time is the slowest rank's (the operation is done when every rank has the sum);
    the point is the median over blocks.
The tensors are zeros, so repeated sums stay finite (no overflow, no denormals).

The DDP step time is the trainer's own clock: `groundup.train.trainer.train` logs time_s after
every step (log_interval = 1); a step's time is the difference between consecutive records, and
the figure is the median over the steps after the first `skip_steps` (warm-up, the step-0
checkpoint).
"""

from __future__ import annotations

import json
import math
import os
import random
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from groundup.config import load_config
from groundup.train.trainer import train
from groundup.util.metrics import read_metrics


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(rank: int, fn, n: int, port: int, args: tuple) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "LOCAL_RANK": str(rank), "WORLD_SIZE": str(n), "OMP_NUM_THREADS": "1"})
    torch.set_num_threads(1)
    fn(rank, n, *args)


def launch(fn, n: int, *args) -> None:
    """fn(rank, n, *args) in n spawned processes with torchrun's environment; waits for all."""
    mp.start_processes(_child, args=(fn, n, free_port(), args), nprocs=n, join=True, start_method="spawn")


# ---- all-reduce ---------------------------------------------------------------------------------------
def _slowest(seconds: float) -> float:
    t = torch.tensor([seconds], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def _allreduce_worker(rank: int, n: int, sizes: list[int], warmup: int, repeats: int, min_block: float,
                      max_calls: int, seed: int, out_path: str) -> None:
    dist.init_process_group("gloo", rank=rank, world_size=n)
    try:
        order = list(sizes)
        random.Random(seed).shuffle(order)  # the seed sets the order the sizes are measured in
        points = {}
        for size in order:
            x = torch.zeros(max(1, size // 4), dtype=torch.float32)
            for _ in range(warmup):
                dist.all_reduce(x)
            dist.barrier()
            start = time.perf_counter()
            dist.all_reduce(x)
            one = _slowest(time.perf_counter() - start)
            calls = int(min(max_calls, max(1, math.ceil(min_block / max(one, 1e-9)))))
            blocks = []
            for _ in range(repeats):
                dist.barrier()
                start = time.perf_counter()
                for _ in range(calls):
                    dist.all_reduce(x)
                blocks.append(_slowest((time.perf_counter() - start) / calls))
            points[str(size)] = {"seconds": statistics.median(blocks), "blocks": blocks, "calls": calls}
        if rank == 0:
            Path(out_path).write_text(json.dumps(points))
    finally:
        dist.destroy_process_group()


def allreduce_times(n: int, sizes: list[int], warmup: int, repeats: int, seed: int, min_block: float = 0.02,
                    max_calls: int = 200) -> dict[int, dict]:
    """{message bytes: {seconds (median over blocks), blocks, calls}} for n gloo ranks on loopback."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "allreduce.json"
        launch(_allreduce_worker, n, list(sizes), warmup, repeats, min_block, max_calls, seed, str(out))
        return {int(k): v for k, v in json.loads(out.read_text()).items()}


# ---- DDP through the trainer ----------------------------------------------------------------------------
def _train_worker(rank: int, n: int, overrides: list[str], run_dir: str) -> None:
    train(load_config(None, overrides), run_dir, progress=False)


def step_seconds(records: list[dict], skip_steps: int) -> dict:
    """Median (and all) per-step times from a metrics.jsonl logged every step."""
    logged = [(r["step"], r["time_s"]) for r in records if "loss" in r and "time_s" in r]
    steps = [(b - a) / (sb - sa) for (sa, a), (sb, b) in zip(logged, logged[1:]) if sa >= skip_steps]
    if not steps:
        raise ValueError(f"no step times after step {skip_steps}: train more steps (max_steps)")
    return {"median": statistics.median(steps), "steps": steps}


def trainer_step_time(n: int, overrides: list[str], skip_steps: int) -> dict:
    """Run `groundup train` with these config overrides on n ranks (n = 1: one plain process, no DDP)
    and return its per-step times (median over the steps after `skip_steps`)."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        launch(_train_worker, n, list(overrides) + ["log_interval=1", "checkpoint_interval=0"], str(run_dir))
        return step_seconds(read_metrics(run_dir / "metrics.jsonl"), skip_steps)
