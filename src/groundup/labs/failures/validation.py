"""Part 2: the goodput model against real runs here. A small model trains under the supervisor
(groundup.supervise), which SIGKILLs it at Poisson times and restarts it with `--resume`; we measure
the goodput and compare it with cluster.goodput for the same rates, checkpoint cost and restart cost.

Every time is read on the supervisor's clock, inside the *training window* of a run: from the
first step any attempt logs to the last step of the run (its one start-up and its final evaluation,
save and plot are outside, the same for every run). Measured, per seed:
    t_step   seconds per step: the window of a run without kills or intermediate checkpoints,
             divided by the steps in it
    δ        checkpoint write time, directly: save_checkpoint of this model's weights and Adam state
             (median of several writes, fsync included); the model uses each run's own δ (below)
    R        restart cost: spawn of a restarted attempt → its first new step logged (the supervisor's
             startup_s: Python, torch, data and checkpoint loading), mean over the seed's restarts
Per supervised run (MTBF = m × the measured start-up time S, so the experiment scales with the
machine: kill rate λ = 1/(m · S); checkpoint every k steps):
    t, δ       its own step and checkpoint times, from the time_s of the steps that survived
               (lineage_timing: median step; median excess of a step that follows a save)
    W          its training window;  kills inside it → measured rate λ̂ = kills / W
    G_measured = (steps in the window) · t / W
    G_model    = cluster.goodput(τ = k · t, δ, R, M = 1/λ̂)   (and with the nominal M = 1/λ)
"""

from __future__ import annotations

import math
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


def training_window(result) -> tuple[float, float, int]:
    """(start, end, steps inside) of a supervised run's training window, in seconds after the
    supervisor started: its first logged step to its last."""
    progressed = [a for a in result.attempts if a.startup_s is not None]
    first, last = progressed[0], progressed[-1]
    start, end = first.started_s + first.startup_s, last.started_s + last.last_step_s
    return start, end, last.last_step - first.first_step


def lineage_timing(run_dir: Path, interval: int) -> tuple[float, float | None]:
    """(step time, checkpoint time) from the run's own metrics.jsonl, the steps that survived: the
    per-step differences of time_s (the run's training clock, carried across resumes); the step time
    is their median, the checkpoint time the median excess of the steps right after a checkpointed
    step (the save runs between them). Read from the run itself, so a machine whose load drifts
    between runs does not skew the comparison."""
    steps = sorted((r["step"], r["time_s"]) for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r and "time_s" in r)
    diffs = {b: tb - ta for (a, ta), (b, tb) in zip(steps, steps[1:]) if b == a + 1}
    t_step = statistics.median(diffs.values())
    after_save = [d for b, d in diffs.items() if interval and (b - 1) % interval == 0 and b > 1]
    return t_step, (statistics.median(after_save) - t_step) if after_save else None


def run_validation(s, seed: int, say=print) -> dict:
    with tempfile.TemporaryDirectory(prefix="groundup-failures-") as tmp:
        root = Path(tmp)
        delta = checkpoint_seconds(s, seed, root / "checkpoint-timing")
        log = open(root / "train.log", "w")
        ref = supervise(_argv(s, seed, root / "ref", 0), stdout=log, say=None, python=sys.executable)
        if ref.exit_code != 0:
            raise RuntimeError(f"the reference run failed: {(root / 'train.log').read_text()[-2000:]}")
        start, end, n = training_window(ref)
        if n < 2:
            raise RuntimeError(f"the validation run is too short to time its steps ({s.val_steps} steps)")
        t_step = (end - start) / n
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
            start, end, n = training_window(result)
            t_run, delta_run = lineage_timing(root / f"run{j}", interval)
            kills = sum(start <= t <= end for t in result.kill_times)
            restarts = [a.startup_s for a in result.attempts[1:] if a.startup_s is not None and a.started_s >= start]
            runs.append({"mtbf_multiple": multiple, "kill_rate": rate, "interval_steps": interval,
                         "finished": result.exit_code == 0, "step_s": t_run, "checkpoint_s": delta_run,
                         "interval_s": interval * t_run, "wall_s": result.wall_seconds,
                         "window_s": end - start, "kills": kills, "restarts": result.restarts,
                         "measured_rate": kills / (end - start), "restart_times": restarts,
                         "goodput_measured": n * t_run / (end - start)})
            say(f"validation: MTBF {1 / rate:.1f} s, checkpoint every {interval} steps: {result.wall_seconds:.1f} s, "
                f"{result.kills} kills, goodput {runs[-1]['goodput_measured']:.3f}")
    all_restarts = [r for run in runs for r in run["restart_times"]]
    restart = statistics.mean(all_restarts) if all_restarts else fresh_startup
    for run in runs:
        tau = run["interval_s"]
        d = max(0.0, run["checkpoint_s"]) if run["checkpoint_s"] is not None else delta  # (a noisy median can dip below 0)
        measured_mtbf = 1 / run["measured_rate"] if run["kills"] else math.inf
        run["goodput_model"] = goodput(tau, d, restart, measured_mtbf) if run["kills"] else tau / (tau + d)
        run["goodput_model_nominal"] = goodput(tau, d, restart, 1 / run["kill_rate"])
        run["error"] = run["goodput_measured"] - run["goodput_model"]
        run["restart_s"] = statistics.mean(run["restart_times"]) if run["restart_times"] else restart
        del run["restart_times"]
    return {"step_s": t_step, "checkpoint_s": delta, "startup_s": fresh_startup, "restart_s": restart,
            "restart_count": len(all_restarts), "reference_wall_s": ref.wall_seconds, "runs": runs}
