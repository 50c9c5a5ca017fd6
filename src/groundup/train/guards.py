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
    bitflip@S[:weight|:grad][:BIT]
                     silent data corruption: flip one bit of one element of a trainable parameter
                     (weight, the default: in memory, just before step S's forward) or of its
                     gradient (grad: as step S's backward produces it, before the norm and the
                     update). The element is uniform over all parameters' elements and the bit
                     uniform over the dtype's bits, both drawn from a generator seeded by the run's
                     seed and the fault; BIT fixes the bit (0 = lowest mantissa bit, 31 = float32's
                     sign) or its class: sign | exponent | mantissa. Every flip is recorded in
                     metrics.jsonl (event "bitflip": parameter, element, bit, value before and after).
                     Rank 0 only, like a fault in one GPU's memory.
    KIND@A-B         every step from A to B

Each injected fault fires once, so a run rolled back past step S does not meet it again; repeat a
flag to make a fault recur. Injections are never saved in the run directory.
"""

from __future__ import annotations

import math
import os
import random
import re
import signal
from dataclasses import dataclass, field

import torch

from groundup.errors import ConfigError
from groundup.train.step import Verdict

KINDS = ("nan", "inf", "spike", "kill", "bitflip")
CHECKPOINT_PHASES = ("write", "rename", "publish", "prune")
FLIP_TARGETS = ("weight", "grad")
BIT_CLASSES = ("sign", "exponent", "mantissa")
SPIKE_WARMUP = 10  # good steps (since start or resume) before spikes are judged
EMA_DECAY = 0.9  # loss reference: ema ← 0.9·ema + 0.1·loss
_SPEC = re.compile(r"^(?P<kind>[a-z]+)@(?P<first>\d+)(?:-(?P<last>\d+))?(?::(?P<phase>[a-z]+))?(?::(?P<bit>[a-z0-9]+))?$")


@dataclass(frozen=True)
class Fault:
    kind: str  # nan | inf | spike | kill | bitflip
    step: int  # the step (1-based, as logged) it hits
    phase: str | None = None  # kill: None = after the update, else a CHECKPOINT_PHASES entry; bitflip: weight | grad
    bit: str | None = None  # bitflip only: None = any bit, "0".."63" = that bit, or a BIT_CLASSES entry

    def __str__(self) -> str:
        return f"{self.kind}@{self.step}" + (f":{self.phase}" if self.phase else "") + (f":{self.bit}" if self.bit else "")


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
                              f"{', '.join(KINDS)} (e.g. nan@12, spike@20-22, kill@30:publish, bitflip@40:grad)")
        kind, first, last, phase, bit = m["kind"], int(m["first"]), int(m["last"] or m["first"]), m["phase"], m["bit"]
        if first < (0 if phase and kind == "kill" else 1) or last < first:
            raise ConfigError(f"--inject {spec!r}: steps count from 1 (0 only for the first checkpoint, "
                              "kill@0:PHASE) and a range A-B needs A ≤ B")
        if kind == "bitflip":
            phase = phase or "weight"
            if phase not in FLIP_TARGETS:
                raise ConfigError(f"--inject {spec!r}: a bitflip hits a weight or a grad (bitflip@STEP:weight, "
                                  f"bitflip@STEP:grad), not {phase!r}")
            if bit is not None and bit not in BIT_CLASSES and not (bit.isdigit() and int(bit) < 64):
                raise ConfigError(f"--inject {spec!r}: the bit is a number 0-63 (0 = lowest mantissa bit) or one of "
                                  f"{', '.join(BIT_CLASSES)}, e.g. bitflip@40:weight:30 or bitflip@40:grad:exponent")
        else:
            if bit is not None:
                raise ConfigError(f"--inject {spec!r}: only bitflip takes a bit (bitflip@STEP:weight|grad:BIT)")
            if phase is not None and (kind != "kill" or phase not in CHECKPOINT_PHASES):
                raise ConfigError(f"--inject {spec!r}: only kill takes a phase, one of {', '.join(CHECKPOINT_PHASES)}")
        faults.extend(Fault(kind, s, phase, bit) for s in range(first, last + 1))
    return faults


# ---- silent data corruption: one flipped bit ---------------------------------------------------
# IEEE 754 layouts: (total bits, exponent bits, mantissa bits); bit 0 is the lowest mantissa bit,
# the top bit the sign.  value = (−1)^s · 2^(e − bias) · 1.m
FLOAT_LAYOUTS = {torch.float64: (64, 11, 52), torch.float32: (32, 8, 23), torch.float16: (16, 5, 10),
                 torch.bfloat16: (16, 8, 7)}
_INT_VIEWS = {64: torch.int64, 32: torch.int32, 16: torch.int16}


def _layout(dtype: torch.dtype) -> tuple[int, int, int]:
    if dtype not in FLOAT_LAYOUTS:
        raise ConfigError(f"bit flips need a floating-point tensor (float64/32/16, bfloat16), not {dtype}")
    return FLOAT_LAYOUTS[dtype]


def bit_class(bit: int, dtype: torch.dtype = torch.float32) -> str:
    """'sign' | 'exponent' | 'mantissa': which field of `dtype` bit number `bit` (0 = lowest) lies in."""
    total, _, mantissa = _layout(dtype)
    if not 0 <= bit < total:
        raise ConfigError(f"bit {bit} is outside a {total}-bit {dtype}")
    return "sign" if bit == total - 1 else "exponent" if bit >= mantissa else "mantissa"


def bits_of_class(kind: str, dtype: torch.dtype = torch.float32) -> list[int]:
    total, _, mantissa = _layout(dtype)
    return {"sign": [total - 1], "exponent": list(range(mantissa, total - 1)), "mantissa": list(range(mantissa))}[kind]


def flip_bit_(tensor: torch.Tensor, index: int, bit: int) -> tuple[float, float]:
    """XOR bit `bit` of element `index` (flat, row-major) of `tensor`, in place, on its raw bits.
    Returns (value before, value after)."""
    total, _, _ = _layout(tensor.dtype)
    if not 0 <= bit < total:
        raise ConfigError(f"bit {bit} is outside a {total}-bit {tensor.dtype}")
    flat = tensor.detach().view(-1)  # (a view: the parameter itself changes)
    before = float(flat[index])
    mask = (1 << bit) - ((1 << total) if bit == total - 1 else 0)  # the sign bit as a negative signed integer
    with torch.no_grad():
        raw = flat[index : index + 1].view(_INT_VIEWS[total])
        raw.bitwise_xor_(torch.tensor(mask, dtype=raw.dtype, device=raw.device))
    return before, float(flat[index])


def choose_flip(rng: random.Random, sizes: list[tuple[str, int]], dtype: torch.dtype, bit: str | None = None) -> tuple[str, int, int]:
    """(parameter name, flat element index, bit): the element uniform over all elements of `sizes`
    [(name, numel), …], the bit uniform over the dtype's bits (or over the class `bit` names, or that bit)."""
    k = rng.randrange(sum(n for _, n in sizes))
    for name, n in sizes:
        if k < n:
            break
        k -= n
    total, _, _ = _layout(dtype)
    if bit is None:
        chosen = rng.randrange(total)
    elif bit in BIT_CLASSES:
        chosen = rng.choice(bits_of_class(bit, dtype))
    else:
        chosen = int(bit)
        bit_class(chosen, dtype)  # in range for this dtype
    return name, k, chosen


class FaultInjector:
    """Fires each injected fault once, at its step (and phase). `seed` (the run's) seeds the choice
    of element and bit of each bit flip, so a rerun flips the same bit."""

    def __init__(self, faults, rank: int = 0, seed: int = 0):
        self.pending = list(parse_faults(faults))
        self.rank = rank
        self.seed = seed
        self.flips: list[dict] = []  # records of fired bit flips not yet taken by take_flips()

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


    def bitflips(self, step: int, model: torch.nn.Module) -> None:
        """Step `step`'s bit flips in `model`'s trainable parameters: a weight flip now (before the
        step's forward), a gradient flip armed as a hook that fires when backward produces that
        parameter's gradient (so the norm, the guard and the update all see it). Rank 0 only."""
        if self.rank != 0 or not any(f.kind == "bitflip" and f.step == step for f in self.pending):
            return
        params = dict((n, p) for n, p in model.named_parameters() if p.requires_grad)
        sizes = [(n, p.numel()) for n, p in params.items()]
        for fault in [f for f in self.pending if f.kind == "bitflip" and f.step == step]:
            self._take("bitflip", step, fault.phase)
            rng = random.Random(f"{self.seed}:{fault}:{len(self.flips)}")
            name, index, bit = choose_flip(rng, sizes, next(iter(params.values())).dtype, fault.bit)
            param = params[name]
            record = {"target": fault.phase, "name": name, "index": index, "bit": bit,
                      "class": bit_class(bit, param.dtype), "fault": str(fault)}
            if fault.phase == "weight":
                record["before"], record["after"] = flip_bit_(param, index, bit)
                self.flips.append(record)
            else:
                self._arm_grad_flip(param, index, bit, record)

    def _arm_grad_flip(self, param: torch.Tensor, index: int, bit: int, record: dict) -> None:
        handle = None

        def hook(grad: torch.Tensor) -> torch.Tensor:
            handle.remove()  # once: the first micro-batch's gradient
            grad = grad.clone()
            record["before"], record["after"] = flip_bit_(grad, index, bit)
            self.flips.append(record)
            return grad

        handle = param.register_hook(hook)

    def take_flips(self) -> list[dict]:
        """The bit flips fired since the last call (for the run's metrics)."""
        flips, self.flips = self.flips, []
        return flips


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
