"""`groundup supervise`: run `groundup train` as a child process and restart it with `--resume`
whenever it dies, as a cluster's job scheduler does; optionally kill it at random times to simulate
failures.

    attempt 1:   python -m groundup train ARGS...                 (the command as given)
    child dies (a signal, or an exit status other than 0, 2, 3, 130)
                 → attempt k+1: python -m groundup train --resume RUN_DIR
                   (the first command again if it died before writing RUN_DIR/config.json)
    exit 0       → done (trained, or stopped cleanly by SIGINT/SIGTERM)
    exit 2 or 3  → stop and pass it on: a usage error or a diverged run, which a restart cannot fix
    more than max_restarts deaths → give up (exit 1)

Simulated failures (`kill_rate` λ > 0): SIGKILL the running child at the times of a Poisson process
of rate λ per second of wall time, seeded: the gaps are exponential, Δt ~ Exp(λ) (mean 1/λ = the
MTBF), drawn from random.Random(seed), and the clock runs across restarts (a failure can land
during a restart, as on a cluster). `max_kills` caps how many.

Every start and death is printed (stderr) and appended to RUN_DIR/supervise.jsonl (or `log`) with
wall-clock times. Per attempt it also follows RUN_DIR/metrics.jsonl and records `startup_s`, the
seconds from the spawn to the first step the child logs beyond its starting point (the restart cost
R of the goodput model, exact with log_interval = 1), `last_step_s`, when it logged its last new
step, and the last step it logged.

Injected faults (`--inject`) belong to the first attempt only: restarts run `train --resume RUN_DIR`.
One process per attempt (not torchrun).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from groundup.errors import GroundupError

NO_RESTART = {0: "finished", 2: "a usage error (a restart cannot fix it)", 3: "training diverged (see its report)",
              130: "interrupted"}
LOG_NAME = "supervise.jsonl"
METRICS = "metrics.jsonl"


@dataclass
class Attempt:
    number: int  # 1, 2, …
    argv: list[str]  # the groundup arguments it ran
    started_s: float  # seconds after the supervisor started
    seconds: float = 0.0  # how long it ran
    exit: int | None = None  # its exit status, or None when a signal ended it
    signal: str | None = None  # e.g. "SIGKILL"
    killed: bool = False  # by the supervisor's simulated failures
    start_step: int = 0  # the step it started from (the checkpoint state.json named at its spawn)
    last_step: int = 0  # the last step it logged in metrics.jsonl
    startup_s: float | None = None  # spawn → first step logged beyond start_step (None: it never got there)
    first_step: int | None = None  # that first step
    last_step_s: float | None = None  # spawn → the last new step it logged


@dataclass
class SuperviseResult:
    run_dir: Path
    exit_code: int  # 0 finished; 2 or 3 passed on from the child; 1 gave up
    wall_seconds: float
    attempts: list[Attempt] = field(default_factory=list)
    kills: int = 0  # simulated failures delivered
    kill_times: list[float] = field(default_factory=list)  # when (seconds after the supervisor started)
    reason: str = ""

    @property
    def restarts(self) -> int:
        return len(self.attempts) - 1

    def to_dict(self) -> dict:
        return {"run_dir": str(self.run_dir), "exit_code": self.exit_code, "wall_seconds": self.wall_seconds,
                "restarts": self.restarts, "kills": self.kills, "kill_times": self.kill_times, "reason": self.reason,
                "attempts": [asdict(a) for a in self.attempts]}


def run_dir_of(train_argv: list[str]) -> Path:
    """The run directory a `train ...` command writes: its --out (or --resume) value."""
    if not train_argv or train_argv[0] != "train":
        shown = " ".join(train_argv) or "nothing"
        raise GroundupError(f"supervise runs a training command: `groundup supervise [OPTIONS] -- train ... --out RUN_DIR` "
                            f"(got {shown!r})")
    for k, arg in enumerate(train_argv):
        for flag in ("--out", "--resume"):
            if arg == flag and k + 1 < len(train_argv):
                return Path(train_argv[k + 1])
            if arg.startswith(flag + "="):
                return Path(arg.split("=", 1)[1])
    raise GroundupError("supervise needs to know the run directory to resume: give the train command --out RUN_DIR "
                        "(or --resume RUN_DIR)")


def _check(kill_rate: float, max_restarts: int, max_kills: int | None) -> None:
    if not (isinstance(kill_rate, (int, float)) and math.isfinite(kill_rate) and kill_rate >= 0):
        raise GroundupError(f"--kill-rate must be a finite rate ≥ 0 (kills per second; 0 = none), got {kill_rate}")
    if max_restarts < 0:
        raise GroundupError(f"--max-restarts must be ≥ 0, got {max_restarts}")
    if max_kills is not None and max_kills < 0:
        raise GroundupError(f"--max-kills must be ≥ 0, got {max_kills}")


def _logged_step(path: Path) -> int:
    """The highest step with a training loss in a metrics.jsonl (0 when none; torn lines skipped)."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return 0
    best = 0
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "loss" in record and isinstance(record.get("step"), int):
            best = max(best, record["step"])
    return best


class _StepWatch:
    """Follows metrics.jsonl while a child appends to it: each new highest step, and when. What the
    file held at the spawn is stale (a resumed child first rewrites it up to its checkpoint, as a new
    file), so it is ignored until the file is replaced."""

    def __init__(self, path: Path, start_step: int):
        self.path, self.step = path, start_step
        try:
            self.stale = path.stat().st_ino
        except FileNotFoundError:
            self.stale = None
        self.inode, self.offset, self.partial = None, 0, b""
        self.first: tuple[int, float] | None = None  # (step, seconds)
        self.last_s: float | None = None

    def poll(self, seconds: float) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return
        if st.st_ino == self.stale:
            return
        if st.st_ino != self.inode or st.st_size < self.offset:
            self.inode, self.offset, self.partial = st.st_ino, 0, b""
        if st.st_size == self.offset:
            return
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        *lines, self.partial = (self.partial + data).split(b"\n")
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and "loss" in record and isinstance(record.get("step"), int) and record["step"] > self.step:
                self.step = record["step"]
                self.first = self.first or (self.step, seconds)
                self.last_s = seconds


def _checkpoint_step(run_dir: Path) -> int:
    try:
        return int(json.loads((run_dir / "state.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def supervise(train_argv: list[str], *, kill_rate: float = 0.0, seed: int = 0, max_restarts: int = 10,
              max_kills: int | None = None, log: str | os.PathLike | None = None, python: str = sys.executable,
              stdout=None, say: Callable[[str], None] | None = _stderr, poll: float = 0.01,
              env: dict | None = None, kills_from_attempt: int = 1) -> SuperviseResult:
    """Run `python -m groundup TRAIN_ARGV…` until it finishes, restarting it with `--resume` after
    each death (see the module docstring). `stdout`: a file for the children's output (None: this
    process's). `kills_from_attempt`: the simulated failures' clock starts with that attempt's spawn
    (default: the first). Returns every attempt, with times."""
    _check(kill_rate, max_restarts, max_kills)
    run_dir = run_dir_of(list(train_argv))
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = Path(log) if log else run_dir / LOG_NAME
    say = say or (lambda message: None)
    rng = random.Random(seed)
    t0 = time.monotonic()
    next_kill = math.inf
    result = SuperviseResult(run_dir, 1, 0.0)

    def record(event: str, **fields) -> None:
        now = time.time()
        entry = {"event": event, "time": datetime.datetime.fromtimestamp(now, datetime.timezone.utc).isoformat(timespec="milliseconds"),
                 "t": round(time.monotonic() - t0, 4), **fields}
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")

    def stamp() -> str:
        return datetime.datetime.now(datetime.timezone.utc).strftime("%H:%M:%S")

    record("supervise", argv=list(train_argv), kill_rate=kill_rate, seed=seed, max_restarts=max_restarts,
           max_kills=max_kills)
    argv = list(train_argv)
    metrics = run_dir / METRICS
    while True:
        attempt = Attempt(len(result.attempts) + 1, argv, round(time.monotonic() - t0, 4),
                          start_step=_checkpoint_step(run_dir) if argv[:2] == ["train", "--resume"] else 0)
        result.attempts.append(attempt)
        say(f"supervise: [{stamp()}] attempt {attempt.number}: groundup {' '.join(argv)}")
        record("start", attempt=attempt.number, argv=argv, start_step=attempt.start_step)
        watch = _StepWatch(metrics, attempt.start_step)
        spawned = time.monotonic()
        if kill_rate > 0 and attempt.number == kills_from_attempt:
            next_kill = spawned - t0 + rng.expovariate(kill_rate)
        child = subprocess.Popen([python, "-m", "groundup", *argv], stdout=stdout, stderr=stdout,
                                 env={**os.environ, **(env or {})})
        while child.poll() is None:
            now = time.monotonic()
            watch.poll(now - spawned)
            if now - t0 >= next_kill:
                if max_kills is None or result.kills < max_kills:
                    child.send_signal(signal.SIGKILL)
                    attempt.killed = True
                    result.kills += 1
                    result.kill_times.append(round(now - t0, 4))
                    record("kill", attempt=attempt.number, kill=result.kills)
                next_kill += rng.expovariate(kill_rate)
            time.sleep(poll)
        code = child.returncode
        attempt.seconds = round(time.monotonic() - spawned, 4)
        watch.poll(attempt.seconds)  # (what it logged just before it ended)
        if watch.first is not None:
            attempt.first_step, attempt.startup_s = watch.first[0], round(watch.first[1], 4)
            attempt.last_step_s = round(watch.last_s, 4)
        attempt.last_step = _logged_step(metrics)
        if code < 0:
            attempt.signal = signal.Signals(-code).name
        else:
            attempt.exit = code
        how = (f"killed ({attempt.signal}{', simulated failure ' + str(result.kills) if attempt.killed else ''})"
               if attempt.signal else f"exited with status {code}")
        record("end", **{k: v for k, v in asdict(attempt).items() if k not in ("argv", "number")}, attempt=attempt.number)
        if attempt.signal is None and code in NO_RESTART:
            result.exit_code, result.reason = code, NO_RESTART[code]
            say(f"supervise: [{stamp()}] attempt {attempt.number} {how} after {attempt.seconds:.1f} s: {NO_RESTART[code]}")
            break
        if result.restarts >= max_restarts:
            result.exit_code = 1
            result.reason = f"gave up after {result.restarts} restart(s) (--max-restarts {max_restarts})"
            say(f"supervise: [{stamp()}] attempt {attempt.number} {how} after {attempt.seconds:.1f} s at step "
                f"{attempt.last_step}; {result.reason}; continue with `groundup train --resume {run_dir}`")
            break
        resumable = (run_dir / "config.json").exists() or train_argv[1:2] == ["--resume"]
        argv = ["train", "--resume", str(run_dir)] if resumable else list(train_argv)
        say(f"supervise: [{stamp()}] attempt {attempt.number} {how} after {attempt.seconds:.1f} s, last logged step "
            f"{attempt.last_step}; restart {result.restarts + 1} of at most {max_restarts}")
    result.wall_seconds = round(time.monotonic() - t0, 4)
    record("done", exit_code=result.exit_code, reason=result.reason, wall_seconds=result.wall_seconds,
           restarts=result.restarts, kills=result.kills)
    say(f"supervise: [{stamp()}] done in {result.wall_seconds:.1f} s: {len(result.attempts)} attempt(s), "
        f"{result.restarts} restart(s), {result.kills} simulated failure(s); log {log_path}")
    return result
