"""Kill real training processes, then resume them: the driver behind tests/test_faults.py.

    python tests/kill_driver.py SCENARIOS.json  →  prints one JSON line of results

Starting a Python process that imports torch costs seconds, so this driver imports groundup and
torch once, then forks one child process per `groundup ...` command. Each child is a real process
that dies for real: it SIGKILLs itself at an injected point (`--inject kill@S[:phase]`), or the
driver SIGKILLs / SIGINTs / SIGTERMs it from outside, after a delay or once a file appears.

A scenario is {"name", "run_dir", "steps": [step, ...]}; a step runs
    "argv": [...]           a groundup command, or
    "recover": true         `train --resume RUN_DIR` (+ "extra" args), or the scenario's first command
                            again when the killed run had not written its config yet
and is interrupted by "signal" (SIGKILL by default; SIGINT, SIGTERM) after "kill_after" seconds,
or as soon as the file "when_exists" appears, or "delay_after_step" seconds after the run logged
step "when_step" in RUN_DIR/metrics.jsonl (its own progress: a slow or busy machine only shifts
the moment, never past the end of the run). The result per step is {"exit": code} or
{"signal": name}, with the seconds it ran, the argv it ran, and for "when_step" the last step the
run had logged when the signal was sent ("step_seen"). A scenario with "count_kernels": true also
reports, for each step that exits normally, how often each fused CPU kernel really ran
("kernel_calls").
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback

# Imported once, before any fork; no torch op runs in this process (so forking is safe).
import matplotlib.pyplot  # noqa: F401  (the loss plot)
import torch  # noqa: F401
import torch._dynamo  # noqa: F401  (the optimizer imports it lazily: 2 s per child saved)

import groundup.train.trainer  # noqa: F401
from groundup.cli import main
from helpers import count_kernel_calls  # (tests/ is this script's directory, first on sys.path)


def _last_logged_step(metrics_path: str) -> int:
    """The highest step with a logged loss in a metrics.jsonl (0 when none yet; a torn line is skipped)."""
    try:
        with open(metrics_path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return 0
    steps = [0]
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "loss" in record:
            steps.append(record["step"])
    return max(steps)


def run_child(argv: list[str], log_path: str, kill_after: float | None = None, sig: str = "SIGKILL",
              when_exists: str | None = None, when_step: tuple[str, int, float] | None = None,
              timeout: float = 120.0, count_kernels: bool = False) -> dict:
    start = time.perf_counter()
    counts_path = log_path + ".kernel_calls"
    if os.path.exists(counts_path):
        os.unlink(counts_path)
    pid = os.fork()
    if pid == 0:  # the child: run the command as `python -m groundup` would
        code = 1
        try:
            fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            sys.stdout = os.fdopen(1, "w", buffering=1)
            sys.stderr = os.fdopen(2, "w", buffering=1)
            counts = count_kernel_calls() if count_kernels else None
            code = main(argv)
            if counts is not None:
                with open(counts_path, "w") as f:
                    json.dump(counts, f)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    step_seen = None
    if when_step is not None:  # wait until the child has logged step k, then a little longer, then signal it
        metrics_path, k, delay = when_step
        while (step_seen := _last_logged_step(metrics_path)) < k and time.perf_counter() - start < timeout:
            if os.waitpid(pid, os.WNOHANG) != (0, 0):
                return {"error": f"child exited before it logged step {k}", "seconds": time.perf_counter() - start}
            time.sleep(0.002)
        time.sleep(delay)
        step_seen = _last_logged_step(metrics_path)
        os.kill(pid, getattr(signal, sig))
    elif when_exists is not None:  # wait for a file the child writes, then signal it
        while not os.path.exists(when_exists) and time.perf_counter() - start < timeout:
            if os.waitpid(pid, os.WNOHANG) != (0, 0):
                return {"error": f"child exited before {when_exists} appeared", "seconds": time.perf_counter() - start}
            time.sleep(0.005)
        os.kill(pid, getattr(signal, sig))
    elif kill_after is not None:
        time.sleep(kill_after)
        os.kill(pid, getattr(signal, sig))  # harmless if it already exited (a zombie until waited)
    _, status = os.waitpid(pid, 0)
    seconds = round(time.perf_counter() - start, 3)
    result = {"seconds": seconds} if step_seen is None else {"seconds": seconds, "step_seen": step_seen}
    if os.WIFSIGNALED(status):
        return {"signal": signal.Signals(os.WTERMSIG(status)).name, **result}
    result = {"exit": os.WEXITSTATUS(status), **result}
    if os.path.exists(counts_path):
        with open(counts_path) as f:
            result["kernel_calls"] = json.load(f)
    return result


def main_driver(path: str) -> None:
    scenarios = json.loads(open(path).read())
    results = {}
    for sc in scenarios:
        run_dir = sc["run_dir"]
        os.makedirs(os.path.dirname(run_dir), exist_ok=True)
        log = run_dir + ".log"
        first_argv = sc["steps"][0]["argv"]
        out = []
        for st in sc["steps"]:
            argv = st.get("argv")
            if st.get("recover"):  # what a user does after a crash: resume, or start again if nothing was saved
                resumable = os.path.exists(os.path.join(run_dir, "config.json"))
                argv = ["train", "--resume", run_dir, *st.get("extra", [])] if resumable else first_argv
            kill_after = st.get("kill_after")
            when_step = None
            if st.get("when_step") is not None:
                when_step = (os.path.join(run_dir, "metrics.jsonl"), st["when_step"], st.get("delay_after_step", 0.0))
            result = run_child(argv, log, kill_after, st.get("signal", "SIGKILL"), st.get("when_exists"), when_step,
                               count_kernels=sc.get("count_kernels", False))
            result["argv"] = argv
            state = os.path.join(run_dir, "state.json")
            if os.path.exists(state):  # where the run stood when it died (or finished)
                result["checkpoint_step"] = json.loads(open(state).read())["step"]
            if kill_after is not None:
                result["kill_after"] = round(kill_after, 3)
            out.append(result)
        results[sc["name"]] = out
    print(json.dumps(results))


if __name__ == "__main__":
    main_driver(sys.argv[1])
