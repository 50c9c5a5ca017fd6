"""`groundup supervise`: a training run SIGKILLed at random (Poisson) times and restarted with
`--resume` by the supervisor ends with the same weights, optimizer state and loss curve, bit for
bit, as a run nobody killed; the restarts and kills it reports are the ones that happened; it gives
up after --max-restarts, passes on errors a restart cannot fix, and rejects bad arguments in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from groundup.errors import GroundupError
from groundup.supervise import run_dir_of, supervise
from groundup.train import checkpoint as ckpt
from groundup.util.metrics import read_metrics

from conftest import assert_clean_error, run_cli
from helpers import TINY

# ~1,500 tiny steps (a few seconds), a checkpoint every 25, dropout on (the RNG state must survive too)
RUN = ["max_steps=1500", "checkpoint_interval=25", "dropout=0.1", "log_interval=1", "eval_interval=500", "threads=1"]


def _train_argv(corpus: Path, out: Path) -> list[str]:
    return ["train", *[a for s in TINY + RUN + [f"corpus={corpus}"] for a in ("--set", s)], "--out", str(out)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shakespeare) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "play.txt"
    path.write_text(shakespeare.documents[0])
    return path


def _losses(run_dir: Path) -> list[tuple]:
    return [(r["step"], r.get("loss"), r.get("val_loss")) for r in read_metrics(run_dir / "metrics.jsonl")
            if "loss" in r or "val_loss" in r]


def _assert_same_run(run_dir: Path, reference: Path) -> None:
    for name in (ckpt.WEIGHTS, ckpt.OPTIMIZER):
        ours, theirs = ckpt.read_tensors(run_dir / name), ckpt.read_tensors(reference / name)
        assert ours.keys() == theirs.keys()
        for key in theirs:
            assert torch.equal(ours[key], theirs[key]), (name, key)
    state, ref_state = (json.loads((d / "state.json").read_text()) for d in (run_dir, reference))
    assert state["step"] == ref_state["step"] == 1500
    assert state["sampler"] == ref_state["sampler"] and state["optimizer_step"] == ref_state["optimizer_step"]
    assert _losses(run_dir) == _losses(reference)  # every logged loss and evaluation, bit for bit


@pytest.mark.slow
def test_a_run_killed_several_times_and_restarted_ends_bit_identical_to_an_uninterrupted_one(tmp_path, corpus):
    reference = supervise(_train_argv(corpus, tmp_path / "ref"), stdout=open(tmp_path / "ref.log", "w"), say=None)
    assert reference.exit_code == 0 and reference.restarts == 0 and reference.kills == 0
    # The first attempt SIGKILLs itself after step 40 (--inject kill@40: after checkpoint 25, so the
    # restart really resumes mid-run); from the second attempt on, two simulated failures land at
    # Poisson times: in a start-up, between checkpoints or inside a checkpoint write, wherever the clock says.
    out = tmp_path / "killed"
    result = supervise(_train_argv(corpus, out) + ["--inject", "kill@40"], kill_rate=0.5, seed=0, max_kills=2,
                       kills_from_attempt=2, stdout=open(tmp_path / "killed.log", "w"), say=None)
    k = result.kills  # 2 unless a machine restarts and trains faster than the drawn gaps (3.1 s, then 2.4 s)
    assert result.exit_code == 0 and k >= 1 and result.restarts == k + 1, result.to_dict()
    assert [a.signal for a in result.attempts] == ["SIGKILL"] * (k + 1) + [None] and result.attempts[-1].exit == 0
    assert [a.killed for a in result.attempts] == [False] + [True] * k + [False]
    assert result.attempts[0].last_step == 40 and result.attempts[1].start_step == 25  # resumed from checkpoint 25
    assert all(a.argv == ["train", "--resume", str(out)] for a in result.attempts[1:])  # (--inject not repeated)
    log = [json.loads(line) for line in (out / "supervise.jsonl").read_text().splitlines()]
    assert [e["event"] for e in log] == ["supervise", "start", "end"] + ["start", "kill", "end"] * k + ["start", "end", "done"]
    assert log[-1]["restarts"] == k + 1 and log[-1]["kills"] == k and log[-1]["exit_code"] == 0
    assert all(e["time"].startswith("20") for e in log) and [e["t"] for e in log] == sorted(e["t"] for e in log)
    assert "Traceback" not in (tmp_path / "killed.log").read_text()
    _assert_same_run(out, tmp_path / "ref")


def test_it_gives_up_after_max_restarts(tmp_path, corpus):
    """Failures far faster than a start-up: every attempt dies; after 2 restarts it stops with exit 1."""
    result = supervise(_train_argv(corpus, tmp_path / "r"), kill_rate=50.0, seed=0, max_restarts=2,
                       stdout=open(tmp_path / "r.log", "w"), say=None)
    assert result.exit_code == 1 and result.restarts == 2 and len(result.attempts) == 3
    assert all(a.signal == "SIGKILL" and a.killed for a in result.attempts)
    assert "gave up after 2 restart(s)" in result.reason
    assert result.kills == 3


def test_an_error_a_restart_cannot_fix_is_passed_on_not_retried(tmp_path):
    r = run_cli("supervise", "--", "train", "--set", "no_such_field=1", "--out", str(tmp_path / "r"))
    assert_clean_error(r, "no_such_field")
    assert r.stderr.count("attempt 1:") == 1 and "attempt 2" not in r.stderr and "a usage error" in r.stderr


@pytest.mark.parametrize("args, message", [
    (["--kill-rate", "-1", "--", "train", "--out", "x"], "--kill-rate must be a finite rate ≥ 0"),
    (["--kill-rate", "nan", "--", "train", "--out", "x"], "--kill-rate must be a finite rate ≥ 0"),
    (["--max-restarts", "-2", "--", "train", "--out", "x"], "--max-restarts must be ≥ 0"),
    (["--", "sample", "--run", "x"], "supervise runs a training command"),
    ([], "supervise runs a training command"),
    (["--", "train", "--set", "max_steps=3"], "give the train command --out RUN_DIR"),
])
def test_bad_arguments_are_one_clear_line(args, message, capsys, tmp_path, monkeypatch):
    from groundup.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["supervise", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_the_run_directory_is_read_from_the_command():
    assert run_dir_of(["train", "--set", "a=1", "--out", "runs/x"]) == Path("runs/x")
    assert run_dir_of(["train", "--resume=runs/y"]) == Path("runs/y")
    with pytest.raises(GroundupError, match="--out RUN_DIR"):
        run_dir_of(["train", "--out"])


def test_the_cli_runs_it(tmp_path, corpus):
    """As a user would: `groundup supervise -- train ...` with no failures: one attempt, exit 0, the log line."""
    argv = _train_argv(corpus, tmp_path / "r")
    argv[argv.index("max_steps=1500")] = "max_steps=20"
    r = run_cli("supervise", "--kill-rate", "0", "--", *argv)
    assert r.returncode == 0, r.stderr
    assert "attempt 1 exited with status 0" in r.stderr and "0 restart(s)" in r.stderr
    assert (tmp_path / "r" / "supervise.jsonl").exists()
