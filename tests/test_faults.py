"""Training survives faults: SIGKILL anywhere (then --resume is bit-for-bit), SIGINT/SIGTERM, NaN/inf
steps, loss spikes, divergence, and failed checkpoint writes.

The kill tests run real processes: tests/kill_driver.py forks one child per `groundup train` (torch
imported once) and kills it — at injected points inside a checkpoint write, after a step, and at
random moments (seeded) — then resumes it in a fresh process, and we compare the final weights,
optimizer state and loss curve with an uninterrupted run's, bit for bit. One end-to-end test does
the same with `python -m groundup` subprocesses, as a user would.
"""

from __future__ import annotations

import errno
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from groundup import cli
from groundup.errors import CheckpointError, ConfigError
from groundup.train import checkpoint as ckpt
from groundup.train.guards import Fault, Guard, parse_faults
from groundup.train.schedule import lr_at
from groundup.train.trainer import train
from groundup.util.metrics import read_metrics

from conftest import REPO, run_cli
from helpers import TINY, events, tiny_config

# 40 steps, a checkpoint every 5, dropout on (so the RNG state must survive too), one thread
# (deterministic, and fast when other processes share the cores).
KILL_RUN = ["max_steps=40", "checkpoint_interval=5", "dropout=0.1", "threads=1",
            "log_interval=1"]  # every step logged: the random kills wait for the run's own progress
KILL_ARGS = [a for s in TINY + KILL_RUN for a in ("--set", s)]
RANDOM_SEEDS = [0, 1, 2, 3, 4, 5]
# The same, with every fused CPU kernel running: head size 32, activations of 8 × 32 × 64 = 16,384
# numbers (kernels.MIN_ELEMENTS), no dropout (the attention kernel has none).
KERNEL_ARGS = KILL_ARGS + [a for s in ("n_embd=64", "batch_size=8", "dropout=0.0") for a in ("--set", s)]
KERNEL_KILLS = {"kernels: kill after step 17": ["kill@17"], "kernels: kill while writing checkpoint 20": ["kill@20:write"]}

# name → (steps): the first command is killed (or stopped), then `recover` resumes it — once or twice.
INJECTED = {
    "kill after step 7 (between checkpoints)": ["kill@7"],
    "kill while writing checkpoint 10 (temp dir half written)": ["kill@10:write"],
    "kill before renaming checkpoint 15 into place": ["kill@15:rename"],
    "kill while publishing checkpoint 20 (top-level files mixed)": ["kill@20:publish"],
    "kill before pruning at checkpoint 25": ["kill@25:prune"],
    "kill while writing the very first checkpoint (step 0)": ["kill@0:rename"],
    "kill while publishing the final checkpoint (step 40)": ["kill@40:publish"],
}


def _scenarios(root: Path, corpus: Path) -> list[dict]:
    def run(name):
        return str(root / name.replace(" ", "_").replace("(", "").replace(")", "").replace(",", ""))

    train_argv = lambda d, *extra: ["train", *KILL_ARGS, "--set", f"corpus={corpus}", "--out", d, *extra]
    out = [{"name": "reference", "run_dir": run("reference"), "steps": [{"argv": train_argv(run("reference"))}]}]
    for name, faults in INJECTED.items():
        d = run(name)
        out.append({"name": name, "run_dir": d, "steps": [
            {"argv": train_argv(d, *[a for f in faults for a in ("--inject", f)])}, {"recover": True}]})
    d = run("killed twice")
    out.append({"name": "killed twice", "run_dir": d, "steps": [
        {"argv": train_argv(d, "--inject", "kill@12")},
        {"recover": True, "extra": ["--inject", "kill@30:write"]},
        {"recover": True}]})
    for sig, at in (("SIGINT", 10), ("SIGTERM", 20)):
        d = run(f"{sig} then resume")
        out.append({"name": f"{sig} then resume", "run_dir": d, "steps": [
            {"argv": train_argv(d), "signal": sig, "when_exists": f"{d}/checkpoints/step_{at:08d}"},
            {"recover": True}]})
    kernel_argv = lambda d, *extra: ["train", *KERNEL_ARGS, "--set", f"corpus={corpus}", "--out", d, *extra]
    out.append({"name": "kernels reference", "run_dir": run("kernels reference"), "count_kernels": True,
                "steps": [{"argv": kernel_argv(run("kernels reference"))}]})
    for name, faults in KERNEL_KILLS.items():
        d = run(name.replace(":", ""))
        out.append({"name": name, "run_dir": d, "count_kernels": True, "steps": [
            {"argv": kernel_argv(d, *[a for f in faults for a in ("--inject", f)])}, {"recover": True}]})
    for seed in RANDOM_SEEDS:
        d = run(f"random kill seed {seed}")
        out.append({"name": f"random kill seed {seed}", "run_dir": d, "steps": [
            {"argv": train_argv(d), **random_kill_point(seed)}, {"recover": True}]})
    return out


def random_kill_point(seed: int) -> dict:
    """Once the run has logged step k (1 ≤ k ≤ 35 of 40), wait 0-30 ms more and SIGKILL it: any
    point of a step or of a checkpoint write, and always well before the run would finish."""
    rng = random.Random(seed)
    return {"when_step": rng.randint(1, 35), "delay_after_step": round(rng.uniform(0.0, 0.03), 4)}


@pytest.fixture(scope="module")
def killed_runs(tmp_path_factory, shakespeare):
    root = tmp_path_factory.mktemp("kills")
    corpus = root / "corpus.txt"  # one play: the same text for every run, and quick to load
    corpus.write_text(shakespeare.documents[0])
    scenarios = _scenarios(root, corpus)
    (root / "scenarios.json").write_text(json.dumps(scenarios))
    r = subprocess.run([sys.executable, str(REPO / "tests" / "kill_driver.py"), str(root / "scenarios.json")],
                       capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads(r.stdout.strip().splitlines()[-1])
    (root / "results.json").write_text(json.dumps(results, indent=1))  # kill points and timings, for the record
    return {sc["name"]: (Path(sc["run_dir"]), results[sc["name"]]) for sc in scenarios}


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return ckpt.read_tensors(path)


def _curve(run_dir: Path, scheduled_evals_only: bool = False) -> list[tuple]:
    """(step, loss, val_loss) of every logged step and evaluation. A run stopped by a signal also
    evaluates where it stops (step 11, say): `scheduled_evals_only` drops those extra evaluations."""
    return [(r["step"], r.get("loss"), r.get("val_loss")) for r in read_metrics(run_dir / "metrics.jsonl")
            if "loss" in r or ("val_loss" in r and (not scheduled_evals_only or r["step"] % 10 == 0))]


def _assert_same_as_reference(run_dir: Path, reference: Path, stopped_by_signal: bool = False) -> None:
    directory, state = ckpt.find_checkpoint(run_dir)
    assert state["step"] == 40 and directory.name == "step_00000040"
    for name in (ckpt.WEIGHTS, ckpt.OPTIMIZER):
        ours, theirs = _tensors(run_dir / name), _tensors(reference / name)
        assert ours.keys() == theirs.keys()
        for key in theirs:
            assert torch.equal(ours[key], theirs[key]), (run_dir.name, name, key)
    assert state["optimizer_step"] == 40 and state["sampler"] == json.loads((reference / "state.json").read_text())["sampler"]
    assert _curve(run_dir, stopped_by_signal) == _curve(reference)  # every logged loss and evaluation, bit for bit
    ckpt.verify_checkpoint(run_dir)  # the top-level files are consistent again
    leftovers = [p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]
    assert not leftovers and not list(run_dir.glob(".*.tmp-*"))


@pytest.mark.parametrize("name", list(INJECTED) + ["killed twice"])
def test_sigkill_at_an_injected_point_then_resume_is_bit_for_bit(killed_runs, name):
    run_dir, steps = killed_runs[name]
    reference, _ = killed_runs["reference"]
    assert steps[0].get("signal") == "SIGKILL", steps  # it really died
    if name == "killed twice":
        assert steps[1].get("signal") == "SIGKILL", steps
    assert steps[-1].get("exit") == 0, (steps, (run_dir.parent / (run_dir.name + ".log")).read_text()[-2000:])
    log = (run_dir.parent / (run_dir.name + ".log")).read_text()
    assert "Traceback" not in log
    phases = {f.phase for f in parse_faults(INJECTED.get(name, []))}
    if phases & {"write", "rename"}:
        assert "cleaned up .tmp-step_" in log
    if "publish" in phases:
        assert "restored them from" in log
    if "step 0" in name:
        assert "holds no checkpoint yet" in log and "starting from step 0" in log
    _assert_same_as_reference(run_dir, reference)


@pytest.mark.parametrize("name", list(KERNEL_KILLS))
def test_sigkill_then_resume_is_bit_for_bit_with_the_fused_kernels_running(killed_runs, name):
    run_dir, steps = killed_runs[name]
    reference, reference_steps = killed_runs["kernels reference"]
    assert steps[0].get("signal") == "SIGKILL" and steps[-1].get("exit") == 0, steps
    for calls in (reference_steps[0]["kernel_calls"], steps[-1]["kernel_calls"]):  # the kernels really ran
        assert calls["causal_attention"] > 0 and calls["layer_norm"] > 0 and calls["gelu"] > 0, calls
    assert steps[-1]["kernel_calls"]["causal_attention"] < reference_steps[0]["kernel_calls"]["causal_attention"]  # resumed
    log = (run_dir.parent / (run_dir.name + ".log")).read_text()
    assert "Traceback" not in log
    _assert_same_as_reference(run_dir, reference)


@pytest.mark.parametrize("seed", RANDOM_SEEDS)
def test_sigkill_at_a_random_moment_then_resume_is_bit_for_bit(killed_runs, seed):
    run_dir, steps = killed_runs[f"random kill seed {seed}"]
    reference, _ = killed_runs["reference"]
    log = (run_dir.parent / (run_dir.name + ".log")).read_text()
    point = random_kill_point(seed)
    assert steps[0].get("signal") == "SIGKILL", steps  # it really died, before it finished …
    assert point["when_step"] <= steps[0]["step_seen"] < 40, steps  # … after the step it waited for
    assert steps[0].get("checkpoint_step", 0) < 40, steps  # what resume starts from is not the end
    assert steps[-1].get("exit") == 0, (steps, log[-2000:])
    assert "Traceback" not in log
    _assert_same_as_reference(run_dir, reference)


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_sigint_and_sigterm_save_exit_0_and_say_how_to_resume(killed_runs, sig):
    run_dir, steps = killed_runs[f"{sig} then resume"]
    reference, _ = killed_runs["reference"]
    log = (run_dir.parent / (run_dir.name + ".log")).read_text()
    assert steps[0].get("exit") == 0, (steps, log[-2000:])
    assert f"stopped by {sig}" in log and f"resume with: groundup train --resume {run_dir}" in log
    assert "Traceback" not in log
    assert steps[1].get("exit") == 0
    _assert_same_as_reference(run_dir, reference, stopped_by_signal=True)


def test_kill_points_cover_every_phase_of_a_checkpoint_write():
    """The kill tests above hit each place where a crash leaves a different picture on disk."""
    phases = {f.phase for faults in INJECTED.values() for f in parse_faults(faults)}
    assert phases == {None, "write", "rename", "publish", "prune"}


def test_python_m_groundup_killed_by_sigkill_resumes_with_dash_dash_resume(killed_runs, tmp_path):
    """As a user would: `groundup train` SIGKILLed from outside, then `groundup train --resume`."""
    reference, _ = killed_runs["reference"]
    run_dir = tmp_path / "run"
    corpus = reference.parent / "corpus.txt"
    proc = subprocess.Popen([sys.executable, "-m", "groundup", "train", *KILL_ARGS, "--set", f"corpus={corpus}",
                             "--out", str(run_dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run_dir / "checkpoints" / "step_00000015").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    state = json.loads((run_dir / "state.json").read_text())
    assert state["step"] < 40
    r = run_cli("train", "--resume", str(run_dir))
    assert r.returncode == 0 and "resuming" in r.stdout and "Traceback" not in r.stderr, r.stderr
    _assert_same_as_reference(run_dir, reference)


# ---- guards: NaN/inf, spikes, rollbacks ---------------------------------------------------------
GUARDED = ["threads=1", "lr_decay_steps=40", "max_steps=40", "checkpoint_interval=10"]


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def five_and_six_steps(tmp_path_factory):
    root = tmp_path_factory.mktemp("steps")
    threads = torch.get_num_threads()
    for n in (5, 6):
        train(tiny_config(*GUARDED, f"max_steps={n}"), root / str(n), progress=False)
    torch.set_num_threads(threads)
    return root / "5", root / "6"


@pytest.mark.parametrize("kind", ["nan", "inf"])
def test_a_non_finite_step_leaves_weights_and_adam_moments_untouched(tmp_path, kind, five_and_six_steps):
    """Step 6's loss is poisoned: the weights and moments after it equal those after step 5."""
    bad = train(tiny_config(*GUARDED, "max_steps=6"), tmp_path / "bad", progress=False, faults=[f"{kind}@6"])
    for name in (ckpt.WEIGHTS, ckpt.OPTIMIZER):
        poisoned, before, after = (_tensors(d / name) for d in (bad.run_dir, *five_and_six_steps))
        assert all(torch.equal(poisoned[k], before[k]) for k in before), name
        assert not all(torch.equal(after[k], before[k]) for k in before), name  # a real step does change them
    assert json.loads((tmp_path / "bad" / "state.json").read_text())["optimizer_step"] == 5
    [skip] = events(tmp_path / "bad", "skip")
    assert skip["step"] == 6 and f"non-finite loss {kind}" in skip["reason"]
    assert bad.stopped_by == "max_steps" and bad.rollbacks == 0


def test_consecutive_non_finite_steps_roll_back_and_lower_the_learning_rate(tmp_path, capsys):
    result = train(tiny_config(*GUARDED), tmp_path / "r", progress=True, faults=["nan@13-15"])
    [rollback] = events(tmp_path / "r", "rollback")
    assert (rollback["from_step"], rollback["step"], rollback["lr_scale"]) == (15, 10, 0.5)
    assert "3 non-finite steps in a row" in rollback["reason"]
    err = capsys.readouterr()
    assert "skipped the update of step 13" in err.out + err.err and "rolled back to step 10" in err.out + err.err
    t = result.config.train
    logged = [r for r in read_metrics(tmp_path / "r" / "metrics.jsonl") if "lr" in r]
    assert all(r["lr"] == pytest.approx(0.5 * lr_at(r["step"] - 1, t)) for r in logged if r["step"] > 10)
    assert all(r["lr"] == pytest.approx(lr_at(r["step"] - 1, t)) for r in logged if r["step"] <= 10)
    assert result.step == 40 and result.rollbacks == 1
    assert all(torch.isfinite(w).all() for w in result.model.weights().values())
    state = json.loads((tmp_path / "r" / "state.json").read_text())
    assert state["guard"]["lr_scale"] == 0.5 and len(state["guard"]["rollbacks"]) == 1  # survives a restart


def test_a_loss_spike_rolls_back_without_replaying_the_batches_that_caused_it(tmp_path):
    result = train(tiny_config(*GUARDED), tmp_path / "r", progress=False, faults=["spike@25"])
    [rollback] = events(tmp_path / "r", "rollback")
    assert (rollback["from_step"], rollback["step"]) == (25, 20) and "loss spike at step 25" in rollback["reason"]
    assert result.step == 40 and result.stopped_by == "max_steps"
    state = json.loads((tmp_path / "r" / "state.json").read_text())
    assert state["sampler"]["position"] == 45  # 40 steps + the 5 abandoned batches, not replayed


def test_rollbacks_are_capped_then_training_stops_with_a_report(tmp_path, capsys):
    """The same spike three times with max_rollbacks=2: two rollbacks, then a clean stop (exit 3)."""
    args = [a for s in TINY + GUARDED + ["max_rollbacks=2"] for a in ("--set", s)]
    code = cli.main(["train", *args, "--out", str(tmp_path / "r"), *["--inject", "spike@15"] * 3])
    err = capsys.readouterr().err
    assert code == cli.EXIT_DIVERGED == 3
    assert "error: training diverged: loss spike at step 15" in err and "Rolled back 2 time(s)" in err
    assert "checkpoints/step_00000010" in err and "--resume" in err and "Traceback" not in err
    assert len(events(tmp_path / "r", "rollback")) == 2 and len(events(tmp_path / "r", "stopped")) == 1
    directory, state = ckpt.find_checkpoint(tmp_path / "r")  # the last good checkpoint is intact
    assert directory.name == "step_00000010" and state["step"] == 10


def test_a_genuinely_divergent_learning_rate_is_rolled_back_or_stopped(tmp_path):
    """No injection: learning rate 100 (then 1000), no clipping. Without guards the loss reaches the
    thousands; with them every update is finite, the run rolls back with a lower learning rate and
    recovers — or, with too few rollbacks left, stops with a report and the last good weights."""
    common = [*GUARDED, "min_lr=1", "grad_clip=0", "warmup_steps=0", "lr_backoff=0.1"]
    recovered = train(tiny_config(*common, "learning_rate=100"), tmp_path / "a", progress=False)
    assert recovered.rollbacks >= 1 and "loss" in events(tmp_path / "a", "rollback")[0]["reason"]
    assert all(torch.isfinite(w).all() for w in recovered.model.weights().values())
    if recovered.stopped_by == "max_steps":
        assert recovered.val_loss < math.log(76)  # better than guessing: it really recovered
    stopped = train(tiny_config(*common, "learning_rate=1000", "max_rollbacks=1"), tmp_path / "b", progress=False)
    assert stopped.stopped_by == "diverged" and stopped.rollbacks == 1 and "training diverged" in stopped.report
    assert all(torch.isfinite(w).all() for w in stopped.model.weights().values())


def test_guard_decisions():
    g = Guard(max_bad_steps=2, spike_factor=3.0, max_rollbacks=1)
    for s in range(1, 12):
        assert g.check(s, 2.0, 1.0).action == "ok"
    assert g.check(12, float("nan"), 1.0).action == "skip"
    assert g.check(13, 2.0, float("inf")).action == "rollback"  # 2 bad in a row
    g.rolled_back(13, 10, "test")
    assert g.lr_scale == 0.5
    assert g.check(14, 5.9, 1.0).action == "ok"  # below 3 × the average
    assert g.check(15, 100.0, 1.0).action == "stop"  # a spike, and the one rollback is used up
    assert Guard(spike_factor=0).check(1, 1e9, 1.0).action == "ok"


@pytest.mark.parametrize("spec, message", [
    ("nan", "is not a fault"), ("boom@3", "is not a fault"), ("nan@0", "steps count from 1"),
    ("spike@9-3", "A ≤ B"), ("nan@3:write", "only kill takes a phase"), ("kill@3:later", "only kill takes a phase"),
])
def test_bad_fault_specs_are_clear_errors(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_faults([spec])


def test_fault_specs_parse():
    assert parse_faults(["nan@3-5", "kill@0:rename", "spike@7"]) == [
        Fault("nan", 3), Fault("nan", 4), Fault("nan", 5), Fault("kill", 0, "rename"), Fault("spike", 7)]


# ---- disk trouble --------------------------------------------------------------------------------
def _fail_writes(monkeypatch, failing_steps, error: int):
    """Simulate a disk that is full (ENOSPC, half a file written) or read-only (EROFS) while the
    checkpoints of `failing_steps` are written."""
    real = ckpt._write_synced

    def write(path: Path, data: bytes):
        step = int(path.parent.name.split("step_")[1].split("-")[0])
        if step in failing_steps:
            if error == errno.ENOSPC:
                real(path, data[: len(data) // 2])
            raise OSError(error, os.strerror(error), str(path))
        real(path, data)

    monkeypatch.setattr(ckpt, "_write_synced", write)


def test_a_failed_checkpoint_write_keeps_the_previous_one_and_training_goes_on(tmp_path, monkeypatch, capsys):
    _fail_writes(monkeypatch, {20}, errno.ENOSPC)
    result = train(tiny_config(*GUARDED, "max_steps=30"), tmp_path / "r", progress=False)  # 20 fails, 30 works
    err = capsys.readouterr().err
    assert "could not write checkpoint" in err and "step_00000020" in err and "No space left on device" in err
    assert "the previous checkpoint" in err and "step_00000010 is intact" in err and "training continues" in err
    assert result.step == 30
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "r")] == ["step_00000030", "step_00000010", "step_00000000"]
    assert not [p for p in (tmp_path / "r" / "checkpoints").iterdir() if p.name.startswith(".")]


def test_a_read_only_disk_at_the_end_is_a_clean_error_and_the_last_checkpoint_survives(tmp_path, monkeypatch, capsys):
    _fail_writes(monkeypatch, {20}, errno.EROFS)
    args = [a for s in TINY + GUARDED + ["max_steps=20"] for a in ("--set", s)]
    code = cli.main(["train", *args, "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "error: could not write checkpoint" in err and "Read-only file system" in err
    assert "step_00000010 is intact" in err and f"groundup train --resume {tmp_path / 'r'}" in err
    directory, state = ckpt.find_checkpoint(tmp_path / "r")
    assert directory.name == "step_00000010" and state["step"] == 10


def test_ddp_ranks_take_the_same_skip_and_rollback_decisions(tmp_path):
    """2 CPU ranks (gloo); faults hit rank 0's loss only; both ranks skip, both roll back, and the
    weights stay identical on both (checked by SHA-256 across ranks)."""
    import shutil

    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    args = [a for s in TINY + ["max_steps=16", "checkpoint_interval=4", "threads=1"] for a in ("--set", s)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    r = subprocess.run([torchrun, "--nproc_per_node=2", "--master_port=29531", "-m", "groundup", "train", *args,
                        "--inject", "nan@6", "--inject", "spike@14", "--out", str(tmp_path / "ddp")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "weights identical on all 2 ranks" in r.stdout
    assert [e["step"] for e in events(tmp_path / "ddp", "skip")] == [6]
    assert [(e["from_step"], e["step"]) for e in events(tmp_path / "ddp", "rollback")] == [(14, 12)]
