"""Guards against bad steps: NaN/inf, loss spikes, divergence — and the faults that test them.

Every step the loop asks the guard about the step's loss and gradient norm *before* the update:

    non-finite loss or gradient norm   → skip the update (weights and Adam moments untouched), log it
    max_bad_steps skipped in a row     → roll back
    loss > spike_factor · EMA(loss)    → roll back                     (EMA over recent good steps)
    loss > spike_factor · ln(vocab)    → roll back        (far worse than guessing uniformly: diverged)
    roll back: reload the last good checkpoint, learning rate × lr_backoff; the data sampler keeps
               going forward, so the batches that led to the trouble are not replayed (as PaLM did)
    more than max_rollbacks rollbacks  → stop with a report

Under DDP the loss and the norm are all-reduced first (a NaN on any rank makes the sum NaN), so
every rank sees the same numbers and takes the same decision.

Fault injection, for tests and demonstrations (`groundup train --inject nan@12`):

    nan@S, inf@S     step S's loss (and so its gradients) becomes NaN / inf
    spike@S          step S's loss is multiplied far beyond the spike threshold
    kill@S           SIGKILL the process right after step S's update (before its checkpoint)
    kill@S:PHASE     SIGKILL while the checkpoint of step S (0: the first) is being written; PHASE:
                     write (temp dir half written) | rename (temp dir complete, not yet renamed) |
                     publish (renamed; top-level files half swapped) | prune (before old ones go)
    KIND@A-B         every step from A to B

Each injected fault fires once, so a run rolled back past step S does not meet it again; repeat a
flag to make a fault recur. Injections are never saved in the run directory.
"""

from __future__ import annotations

import math
import os
import re
import signal
from dataclasses import dataclass, field

from groundup.errors import ConfigError
from groundup.train.step import Verdict

KINDS = ("nan", "inf", "spike", "kill")
CHECKPOINT_PHASES = ("write", "rename", "publish", "prune")
SPIKE_WARMUP = 10  # good steps (since start or resume) before spikes are judged
EMA_DECAY = 0.9  # loss reference: ema ← 0.9·ema + 0.1·loss
_SPEC = re.compile(r"^(?P<kind>[a-z]+)@(?P<first>\d+)(?:-(?P<last>\d+))?(?::(?P<phase>[a-z]+))?$")


@dataclass(frozen=True)
class Fault:
    kind: str  # nan | inf | spike | kill
    step: int  # the step (1-based, as logged) it hits
    phase: str | None = None  # kill only: None = after the update, else a CHECKPOINT_PHASES entry

    def __str__(self) -> str:
        return f"{self.kind}@{self.step}" + (f":{self.phase}" if self.phase else "")


def parse_faults(specs) -> list[Fault]:
    """['nan@12', 'spike@20-22', 'kill@30:publish'] → Faults; a bad spec is a ConfigError."""
    faults = []
    for spec in specs or ():
        if isinstance(spec, Fault):
            faults.append(spec)
            continue
        m = _SPEC.match(str(spec).strip())
        if not m or m["kind"] not in KINDS:
            raise ConfigError(f"--inject {spec!r} is not a fault; expected KIND@STEP with KIND one of "
                              f"{', '.join(KINDS)} (e.g. nan@12, spike@20-22, kill@30:publish)")
        first, last, phase = int(m["first"]), int(m["last"] or m["first"]), m["phase"]
        if first < (0 if phase else 1) or last < first:
            raise ConfigError(f"--inject {spec!r}: steps count from 1 (0 only for the first checkpoint, "
                              "kill@0:PHASE) and a range A-B needs A ≤ B")
        if phase is not None and (m["kind"] != "kill" or phase not in CHECKPOINT_PHASES):
            raise ConfigError(f"--inject {spec!r}: only kill takes a phase, one of {', '.join(CHECKPOINT_PHASES)}")
        faults.extend(Fault(m["kind"], s, phase) for s in range(first, last + 1))
    return faults


class FaultInjector:
    """Fires each injected fault once, at its step (and phase)."""

    def __init__(self, faults, rank: int = 0):
        self.pending = list(parse_faults(faults))
        self.rank = rank

    def _take(self, kind: str, step: int, phase: str | None = None) -> bool:
        for k, f in enumerate(self.pending):
            if f.kind == kind and f.step == step and f.phase == phase:
                del self.pending[k]
                return True
        return False

    def loss_fault(self, step: int, spike_factor: float):
        """loss ↦ the loss of `step` as an injected fault makes it (its gradients follow through
        backward). Applied on rank 0 only: under DDP the other ranks learn of it through the
        all-reduce, as they would of a real fault on one GPU."""
        if self.rank == 0:
            if self._take("nan", step):
                return lambda loss: loss * float("nan")
            if self._take("inf", step):
                return lambda loss: loss * float("inf")
            if self._take("spike", step):
                factor = max(10.0, 10.0 * spike_factor)
                return lambda loss: loss * factor
        return lambda loss: loss

    def kill_after_step(self, step: int) -> None:
        if self._take("kill", step):
            _sigkill()

    def checkpoint_hook(self, step: int):
        """The `crash` callback for save_checkpoint(step), or None when no kill waits there."""
        if not any(f.kind == "kill" and f.step == step and f.phase for f in self.pending):
            return None
        return lambda phase: self._take("kill", step, phase) and _sigkill()


def _sigkill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class Guard:
    """Decides, from a step's (all-reduced) loss and gradient norm, whether to apply the update."""

    max_bad_steps: int = 3
    spike_factor: float = 3.0  # 0 = no spike detection
    max_rollbacks: int = 3
    lr_backoff: float = 0.5
    uniform_loss: float | None = None  # ln(vocab_size): a model this bad, times spike_factor, has diverged
    # persisted in checkpoints (state.json "guard"): they survive restarts
    rollbacks: list[dict] = field(default_factory=list)  # [{"step": S, "to_step": T, "reason": ...}]
    lr_scale: float = 1.0
    # transient: rebuilt after a restart
    bad_in_a_row: int = 0
    ema: float | None = None
    good_steps: int = 0

    @classmethod
    def from_config(cls, t, vocab_size: int | None = None) -> "Guard":
        return cls(t.max_bad_steps, t.spike_factor, t.max_rollbacks, t.lr_backoff,
                   math.log(vocab_size) if vocab_size and vocab_size > 1 else None)

    def check(self, step: int, loss: float, grad_norm: float) -> Verdict:
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            what = f"loss {loss}" if not math.isfinite(loss) else f"gradient norm {grad_norm}"
            self.bad_in_a_row += 1
            reason = f"non-finite {what} at step {step}"
            if self.bad_in_a_row >= self.max_bad_steps:
                return self._escalate(f"{self.bad_in_a_row} non-finite steps in a row (last: {what} at step {step})")
            return Verdict("skip", reason)
        if self.spike_factor:
            if self.ema is not None and self.good_steps >= SPIKE_WARMUP and loss > self.spike_factor * self.ema:
                return self._escalate(f"loss spike at step {step}: {loss:.4g} > {self.spike_factor:g} × recent average "
                                      f"{self.ema:.4g}")
            if self.uniform_loss and loss > self.spike_factor * self.uniform_loss:
                return self._escalate(f"loss {loss:.4g} at step {step} > {self.spike_factor:g} × ln(vocab) = "
                                      f"{self.spike_factor * self.uniform_loss:.4g} (far worse than uniform guessing)")
        self.bad_in_a_row = 0
        self.good_steps += 1
        self.ema = loss if self.ema is None else EMA_DECAY * self.ema + (1 - EMA_DECAY) * loss
        return Verdict("ok")

    def _escalate(self, reason: str) -> Verdict:
        self.bad_in_a_row = 0
        if len(self.rollbacks) >= self.max_rollbacks:
            return Verdict("stop", reason)
        return Verdict("rollback", reason)

    def rolled_back(self, from_step: int, to_step: int, reason: str) -> None:
        self.rollbacks.append({"step": from_step, "to_step": to_step, "reason": reason})
        self.lr_scale *= self.lr_backoff

    def state_dict(self) -> dict:
        return {"rollbacks": list(self.rollbacks), "lr_scale": self.lr_scale}

    def load_state_dict(self, state: dict) -> None:
        self.rollbacks = list(state.get("rollbacks", []))
        self.lr_scale = float(state.get("lr_scale", 1.0))

    def report(self, reason: str, checkpoint, run_dir) -> str:
        """The message when training stops: what happened, what was tried, where the good weights are."""
        tried = "; ".join(f"step {r['step']} → {r['to_step']} ({r['reason']})" for r in self.rollbacks) or "none"
        return (f"training diverged: {reason}. Rolled back {len(self.rollbacks)} time(s) (max_rollbacks = "
                f"{self.max_rollbacks}), learning rate now × {self.lr_scale:g}: {tried}. The last good checkpoint is "
                f"{checkpoint}; lower the learning rate (or raise warmup_steps, grad_clip) and resume from it: "
                f"groundup train --resume {run_dir} --set learning_rate=… --set max_rollbacks=…")
