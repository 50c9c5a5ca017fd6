"""Part 2: the goodput model against real runs here. A small model trains under the supervisor
(groundup.supervise), which SIGKILLs it at Poisson times and restarts it with `--resume`; we measure
the goodput and compare it with cluster.goodput for the same rates, checkpoint cost and restart cost.

Measured, per seed:
    t_step   seconds per training step: a run without kills or intermediate checkpoints, from its
             metrics.jsonl (time_s of the last step − time_s of the first) / (steps − 1)
    U        useful work = N · t_step (N = max_steps)
    F        fixed cost of one start and one finish (start-up, final evaluation and save): T_ref − U,
             T_ref the wall time of that uninterrupted run
    δ        checkpoint write time: save_checkpoint of this model's weights and Adam state (median of
             several writes, fsync included)
    R        restart cost: spawn of a resumed attempt → its first new step logged (the supervisor's
             startup_s; Python, torch, data and checkpoint loading), mean over all restarts of the seed
Per supervised run (MTBF = m × the measured start-up time, so the experiment scales with the
machine: kill rate λ = 1/(m · S); checkpoint every k steps):
    T        its wall time;  kills → measured rate λ̂ = kills / T
    G_measured = U / (T − F)                 (fraction of the non-fixed wall time that was kept work)
    G_model    = cluster.goodput(τ = k · t_step, δ, R, M = 1/λ̂)   (and with the nominal M = 1/λ)
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from groundup.cluster import goodput
from groundup.config import load_config
from groundup.data import BatchSampler
from groundup.supervise import supervise
from groundup.train import checkpoint as ckpt
from groundup.train.engine import build_engine
from groundup.train.step import train_step
from groundup.train.trainer import load_data, resolve_vocab
from groundup.util.metrics import read_metrics


def overrides(s) -> list[str]:
    return ["corpus=shakespeare", "tokenizer=char", f"n_layer={s.val_layers}", f"n_head={s.val_heads}",
            f"n_embd={s.val_embd}", f"block_size={s.val_block}", f"batch_size={s.val_batch}", "dropout=0.0",
            "threads=1", "device=cpu", f"max_steps={s.val_steps}", "log_interval=1", "eval_interval=1000000",
            "eval_iters=2", "keep_checkpoints=2"]


def _argv(s, seed: int, out: Path, interval: int) -> list[str]:
    sets = overrides(s) + [f"seed={seed}", f"checkpoint_interval={interval}"]
    return ["train", *[a for o in sets for a in ("--set", o)], "--out", str(out)]


def checkpoint_seconds(s, seed: int, directory: Path, repeats: int = 5) -> float:
    """Median time to write one checkpoint of the validation model (weights + Adam moments, fsynced)."""
    torch.set_num_threads(1)
    config = load_config(None, overrides(s) + [f"seed={seed}"])
    data = load_data(config)
    config = resolve_vocab(config, data)
    engine = build_engine(config, torch.device("cpu"))
    sampler = BatchSampler(data.train, config.model.block_size, config.train.batch_size, seed=seed)
    train_step(engine, [engine.batch(*sampler.next_batch())], lr=1e-3, grad_clip=1.0)  # Adam state exists
    weights, opt_tensors, opt_step = engine.checkpoint_tensors()
    state = {"engine": engine.name, "optimizer_step": opt_step, "sampler": sampler.state_dict(), "rng": engine.rng_state()}
    times = []
    for k in range(repeats):
        start = time.perf_counter()
        ckpt.save_checkpoint(directory, k + 1, weights, opt_tensors, state, keep=2)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def step_seconds(run_dir: Path) -> float:
    steps = [r for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r and "time_s" in r]
    return (steps[-1]["time_s"] - steps[0]["time_s"]) / (steps[-1]["step"] - steps[0]["step"])


def run_validation(s, seed: int, say=print) -> dict:
    with tempfile.TemporaryDirectory(prefix="groundup-failures-") as tmp:
        root = Path(tmp)
        delta = checkpoint_seconds(s, seed, root / "checkpoint-timing")
        log = open(root / "train.log", "w")
        ref = supervise(_argv(s, seed, root / "ref", 0), stdout=log, say=None, python=sys.executable)
        if ref.exit_code != 0:
            raise RuntimeError(f"the reference run failed: {(root / 'train.log').read_text()[-2000:]}")
        t_step = step_seconds(root / "ref")
        useful = s.val_steps * t_step
        fixed = ref.wall_seconds - useful
        fresh_startup = ref.attempts[0].startup_s
        say(f"validation: step {t_step * 1e3:.1f} ms, checkpoint {delta * 1e3:.1f} ms, start-up {fresh_startup:.2f} s, "
            f"uninterrupted {ref.wall_seconds:.1f} s")
        runs = []
        for j, (multiple, interval) in enumerate(s.val_grid):
            rate = 1 / (multiple * fresh_startup)
            result = supervise(_argv(s, seed, root / f"run{j}", interval), kill_rate=rate, seed=seed * 1000 + j,
                               max_restarts=s.val_max_restarts, stdout=log, say=None, python=sys.executable)
            if result.exit_code not in (0, 1):  # (1: gave up after max_restarts: recorded, goodput still measured)
                raise RuntimeError(f"a supervised run failed ({result.reason}): {(root / 'train.log').read_text()[-2000:]}")
            restarts = [a.startup_s for a in result.attempts[1:] if a.startup_s is not None]
            runs.append({"mtbf_multiple": multiple, "kill_rate": rate, "interval_steps": interval, "finished": result.exit_code == 0, "interval_s": interval * t_step,
                         "wall_s": result.wall_seconds, "kills": result.kills, "restarts": result.restarts,
                         "measured_rate": result.kills / result.wall_seconds, "restart_times": restarts,
                         "goodput_measured": (useful if result.exit_code == 0 else 0.0) / (result.wall_seconds - fixed)})
            say(f"validation: MTBF {1 / rate:.1f} s, checkpoint every {interval} steps: {result.wall_seconds:.1f} s, "
                f"{result.kills} kills, goodput {runs[-1]['goodput_measured']:.3f}")
    all_restarts = [r for run in runs for r in run["restart_times"]]
    restart = statistics.mean(all_restarts) if all_restarts else fresh_startup
    for run in runs:
        tau = run["interval_s"]
        measured_mtbf = 1 / run["measured_rate"] if run["kills"] else float("inf")
        run["goodput_model"] = goodput(tau, delta, restart, measured_mtbf) if run["kills"] else tau / (tau + delta)
        run["goodput_model_nominal"] = goodput(tau, delta, restart, 1 / run["kill_rate"])
        run["error"] = run["goodput_measured"] - run["goodput_model"]
        run["restart_s"] = statistics.mean(run["restart_times"]) if run["restart_times"] else restart
        del run["restart_times"]
    return {"step_s": t_step, "checkpoint_s": delta, "startup_s": fresh_startup, "restart_s": restart,
            "restart_count": len(all_restarts), "useful_s": useful, "fixed_s": fixed, "reference_wall_s": ref.wall_seconds,
            "runs": runs}
