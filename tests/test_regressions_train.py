"""Training guarantees a one-line change could break with the older tests still green. Each test
goes through the public entry points — `train(config, run_dir, resume=..., faults=...)`, the CLI,
the files of the run directory — so it survives a restructuring of the loop.

- every file a checkpoint lists (the optimizer state too) is checked on resume;
- the guard's lowered learning rate and rollback count survive a restart;
- gradients are clipped to the default global norm 1.0 on the update path (and left alone below it);
- the divergence ceiling (loss > spike_factor · ln V) rolls back even before the spike EMA exists;
- a second Ctrl-C stops at once with exit status 130;
- under DDP rank 0's clock alone decides the time budget.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from groundup.train import checkpoint as ckpt
from groundup.train.guards import Guard
from groundup.train.schedule import lr_at
from groundup.train.trainer import train
from groundup.util.metrics import read_metrics

from conftest import REPO
from helpers import TINY, events, tiny_config

SMALL = ["n_layer=1", "lr_decay_steps=40"]
TORCHRUN = shutil.which("torchrun", path=os.path.dirname(sys.executable))


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# ---- every checkpoint file's checksum is verified on resume -------------------------------------
def test_a_corrupt_optimizer_file_is_named_and_resume_falls_back_to_the_previous_checkpoint(tmp_path, capsys):
    run_dir = tmp_path / "r"
    config = tiny_config(*SMALL, "max_steps=20", "checkpoint_interval=10")
    train(config, run_dir, progress=False)
    optimizer_file = run_dir / "checkpoints" / "step_00000020" / ckpt.OPTIMIZER
    data = bytearray(optimizer_file.read_bytes())
    data[-5] ^= 0x01  # one bit of one Adam moment: still valid safetensors, silently wrong values
    optimizer_file.write_bytes(bytes(data))
    capsys.readouterr()
    result = train(config, run_dir, resume=True, progress=True)
    out = capsys.readouterr()
    assert f"{optimizer_file} is corrupt or truncated (checksum mismatch)" in out.err
    assert "resuming" in out.out and "from step 10 (step_00000010)" in out.out
    assert result.step == 20
    directory, state = ckpt.find_checkpoint(run_dir)  # step 20 written again, from good state
    assert directory.name == "step_00000020" and state["optimizer_step"] == 20


# ---- the guard's state survives a restart --------------------------------------------------------
def test_lowered_learning_rate_and_rollback_count_survive_a_restart(tmp_path, capsys):
    """Three NaN steps (13-15) roll back to step 10 with lr × 0.5; the run stops at 18; resumed to
    30, it keeps lr × 0.5 and its one rollback (not reset to 1.0 and 0)."""
    run_dir = tmp_path / "r"
    first = train(tiny_config(*SMALL, "max_steps=18", "checkpoint_interval=10"), run_dir, progress=False,
                  faults=["nan@13-15"])
    assert first.rollbacks == 1
    saved = json.loads((run_dir / "state.json").read_text())["guard"]
    assert saved["lr_scale"] == 0.5 and len(saved["rollbacks"]) == 1
    capsys.readouterr()
    config = tiny_config(*SMALL, "max_steps=30", "checkpoint_interval=10")
    resumed = train(config, run_dir, resume=True, progress=True)
    assert "learning rate × 0.5 after 1 rollback(s)" in capsys.readouterr().out
    assert resumed.rollbacks == 1
    guard = json.loads((run_dir / "state.json").read_text())["guard"]
    assert guard == saved
    logged = [r for r in read_metrics(run_dir / "metrics.jsonl") if "lr" in r and r["step"] > 18]
    assert [r["step"] for r in logged] == [20, 25, 30]
    for r in logged:  # the lr applied after the restart: the schedule × the saved lr_scale
        assert r["lr"] == pytest.approx(0.5 * lr_at(r["step"] - 1, config.train), rel=1e-12)


# ---- gradient clipping at the default threshold -------------------------------------------------
def _gradient_norms_at_update(config, run_dir: Path) -> tuple[list[float], list[list[torch.Tensor]]]:
    """Train; before every optimizer update record the global gradient norm and the gradients the
    update is about to apply (a global optimizer hook: whatever the loop looks like)."""
    norms, grads = [], []

    def before_update(optimizer, args, kwargs):
        g = [p.grad.detach().clone() for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        grads.append(g)
        norms.append(float(torch.linalg.vector_norm(torch.cat([t.flatten().double() for t in g]))))

    handle = register_optimizer_step_pre_hook(before_update)
    try:
        train(config, run_dir, progress=False)
    finally:
        handle.remove()
    return norms, grads


def test_gradients_are_clipped_to_the_default_global_norm_and_left_alone_below_it(tmp_path):
    """Step 1 is the same computation in every run (same seed, weights, batch): its raw gradient norm
    comes from a run without clipping. With the default grad_clip = 1.0 the update sees norm 1 (the
    same direction); with a threshold above the raw norm it sees the raw gradients untouched."""
    from groundup.config import TrainConfig

    assert TrainConfig().grad_clip == 1.0
    steps = [*SMALL, "max_steps=1", "checkpoint_interval=0", "eval_interval=1", "learning_rate=0.01"]
    (raw,), (raw_grads,) = _gradient_norms_at_update(tiny_config(*steps, "grad_clip=0"), tmp_path / "off")
    assert raw > 1.5  # the default threshold has work to do
    (clipped,), (clipped_grads,) = _gradient_norms_at_update(tiny_config(*steps), tmp_path / "default")
    assert clipped <= 1.0 + 1e-6 and clipped == pytest.approx(1.0, abs=1e-5)
    for a, b in zip(clipped_grads, raw_grads):  # scaled, not reshaped: g · 1/‖g‖
        torch.testing.assert_close(a, b / raw, rtol=1e-5, atol=1e-9)
    (above,), (above_grads,) = _gradient_norms_at_update(tiny_config(*steps, f"grad_clip={2 * raw}"), tmp_path / "above")
    assert above == raw and all(torch.equal(a, b) for a, b in zip(above_grads, raw_grads))


# ---- the divergence ceiling ----------------------------------------------------------------------
def test_divergence_ceiling_is_spike_factor_times_ln_vocab():
    g = Guard.from_config(tiny_config().train, vocab_size=100)  # spike_factor 3: ceiling 3 ln 100 = 13.8155
    ceiling = 3 * math.log(100)
    assert g.check(1, ceiling - 1e-3, 1.0).action == "ok"  # the first step: no spike average yet
    verdict = g.check(2, ceiling + 1e-3, 1.0)
    assert verdict.action == "rollback" and "ln(vocab)" in verdict.reason


def test_a_loss_above_the_ceiling_before_any_spike_average_rolls_back(tmp_path):
    """Step 3's loss is ×30 (an injected spike): too early for the EMA spike check (10 good steps
    first), so only the ceiling spike_factor · ln V can catch it: roll back to step 0."""
    result = train(tiny_config(*SMALL, "max_steps=6", "checkpoint_interval=0"), tmp_path / "r", progress=False,
                   faults=["spike@3"])
    [rollback] = events(tmp_path / "r", "rollback")
    assert (rollback["from_step"], rollback["step"]) == (3, 0)
    assert "far worse than uniform guessing" in rollback["reason"]
    assert result.rollbacks == 1 and result.step == 6


# ---- a second Ctrl-C ---------------------------------------------------------------------------
def test_a_second_sigint_stops_at_once_with_exit_130(tmp_path):
    run_dir = tmp_path / "r"
    corpus = tmp_path / "c.txt"
    corpus.write_text("To be, or not to be, that is the question.\n" * 200)
    args = [a for s in TINY + SMALL + ["max_steps=100000", "log_interval=1", "checkpoint_interval=0",
                                       "eval_interval=100000", f"corpus={corpus}"] for a in ("--set", s)]
    proc = subprocess.Popen([sys.executable, "-m", "groundup", "train", *args, "--out", str(run_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:  # training is under way: step 3 logged
        if metrics.exists() and any(r.get("step", 0) >= 3 and "loss" in r for r in read_metrics(metrics)):
            break
        time.sleep(0.01)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)  # the first: finish the step, evaluate, save, exit 0 …
    seen = []  # (two signals sent before Python runs its handler would arrive as one: wait until it has)
    while not any("SIGINT received" in line for line in seen) and (line := proc.stderr.readline()):
        seen.append(line)
    assert any("SIGINT received: finishing this step" in line for line in seen), seen
    proc.send_signal(signal.SIGINT)  # … unless a second one comes: stop now
    out, err = proc.communicate(timeout=120)
    err = "".join(seen) + err
    assert proc.returncode == 130, (proc.returncode, out[-1000:], err[-2000:])
    assert "interrupted" in err and "Traceback" not in err
    assert "done:" not in out  # it did not finish the orderly stop the first signal asked for


def test_a_second_sigint_inside_a_c_extension_is_still_an_interrupt(tmp_path, monkeypatch):
    """The second Ctrl-C can land inside a C extension that reports it as its own error (matplotlib's
    Agg backend, imported for the loss plot: "ImportError: initialization failed"); train() must
    still raise KeyboardInterrupt (the CLI's exit 130), not that error."""
    import groundup.train.trainer as trainer

    def plot_interrupted_twice(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # the first: finish and save …
        try:
            os.kill(os.getpid(), signal.SIGINT)  # … the second: stop now, raised here …
            time.sleep(1)
        except KeyboardInterrupt:
            raise ImportError("initialization failed") from None  # … and swallowed as pybind11 does

    monkeypatch.setattr(trainer, "plot_loss_curves", plot_interrupted_twice)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config("max_steps=2", "n_layer=1"), tmp_path / "r", progress=False)


# ---- DDP: rank 0's clock decides the time budget -------------------------------------------------
@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not installed beside this Python")
def test_rank_0_clock_decides_the_time_budget_for_every_rank(tmp_path):
    """Rank 1's clock runs 10,000× fast (tests/clock_driver.py): by it the 60 s budget is spent
    after the first step. Rank 0's real clock says go on, so both ranks run to max_steps together;
    if each rank read its own clock, rank 1 would leave the loop alone and the ranks would hang."""
    args = [a for s in TINY + SMALL + ["max_steps=6", "eval_interval=6", "checkpoint_interval=0"] for a in ("--set", s)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "GROUNDUP_TEST_FAST_CLOCK_RANK": "1"}
    r = subprocess.run([TORCHRUN, "--nproc_per_node=2", "--master_port=29557", str(REPO / "tests" / "clock_driver.py"),
                        "train", *args, "--time-budget", "60", "--out", str(tmp_path / "ddp")],
                       capture_output=True, text=True, env=env, timeout=180)  # the driver's watchdog: 60 s
    out, err = r.stdout, r.stderr
    assert r.returncode == 0, out[-2000:] + err[-3000:]  # a hang ends by the watchdog's SIGALRM: ≠ 0
    assert "rank 1: fast clock" in out + err  # the driver really skewed rank 1
    assert "done: step 6 (reached max_steps)" in out and "weights identical on all 2 ranks" in out
