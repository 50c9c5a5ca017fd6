"""Part 3: silent data corruption. One flipped bit in a weight (in memory) or a gradient (as backward
produces it), injected through groundup.train.guards (the same code as `--inject bitflip@S:...`);
which flips the training guards catch, which they miss, and two cheap detectors for the rest.

    warm up: train W steps (through train.loop.fit); save a checkpoint (the snapshot)
    clean:   from the snapshot, H_clean steps with every detector on (their false alarms)
    per flip: restore the snapshot, flip one bit at step W + 1 (target weight|grad, bit class
              sign|exponent|mantissa, stratified; element and bit within the class seeded), train H
              steps; record the first step each mechanism fires (delay 0 = the step of the flip) and
              the val-loss change after H steps against the clean continuation (the harm)

Mechanisms, all running in every trial (a firing guard skips that update, so the corruption stays
and the detectors still see it):

    guard     groundup.train.guards.Guard: non-finite loss or ‖g‖, loss spike vs its EMA, loss far
              above ln(vocab): the existing protection
    probe     every step, the loss of a fixed batch (eval mode) is recomputed; flag when it is
              non-finite or |L_t − L_{t−1}| > c · max |ΔL| seen over the last warm-up steps
    gnorm     the gradient norm the step computes anyway, against its running average: flag when
              ‖g‖_t / EMA(‖g‖) > c · (the largest such ratio over the last warm-up steps), or non-finite
    checksum  the integer sum of the parameters' raw bits, taken after each update and checked
              before the next forward: a flip in memory changes it by ±2^bit ≠ 0 (the one-process
              stand-in for DDP's cross-rank comparison, train.distributed.weights_in_sync). A flip
              in a gradient enters the weights through a legitimate update: no checksum sees it,
              and under DDP it is all-reduced to every rank, so the cross-rank check misses it too.
"""

from __future__ import annotations

import math
import random
import tempfile

import torch

from groundup.config import load_config
from groundup.data import BatchSampler
from groundup.train import checkpoint as ckpt
from groundup.train.engine import build_engine
from groundup.train.guards import BIT_CLASSES, FLIP_TARGETS, Fault, FaultInjector, Guard
from groundup.train.loop import Hooks, fit
from groundup.train.schedule import lr_at
from groundup.train.step import Verdict
from groundup.train.trainer import fixed_batches, load_data, resolve_vocab

MECHANISMS = ("guard", "probe", "gnorm", "checksum")
# the flips' strata: a random bit of each class, and float32's top exponent bit alone (the one that
# multiplies a weight below 2 in magnitude by 2^128: 1 in 8 of the exponent class, sampled apart)
STRATA = (*BIT_CLASSES, "30")
EMA_DECAY = 0.9


def param_checksum(model: torch.nn.Module) -> int:
    """Σ over every trainable parameter element of its raw bits read as a signed integer (exact in
    int64): one flipped bit b changes it by ±2^b, never by 0."""
    total = 0
    for p in model.parameters():
        if p.requires_grad:
            ints = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16,
                    torch.float64: torch.int64}[p.dtype]
            total += int(p.detach().reshape(-1).view(ints).to(torch.int64).sum())
    return total


class _Watch(Hooks):
    """The guard and both detectors around each step; flips injected by a FaultInjector."""

    def __init__(self, engine, guard: Guard, injector: FaultInjector | None, probe, probe_threshold: float,
                 probe_start: float, lr, gnorm_threshold: float = math.inf, gnorm_ema: float | None = None):
        self.engine, self.guard, self.injector, self.probe = engine, guard, injector, probe
        self.threshold, self.previous, self.lr = probe_threshold, probe_start, lr
        self.gnorm_threshold, self.gnorm_ema = gnorm_threshold, gnorm_ema
        self.gnorm_ratios: list[float] = []
        self.checksum = param_checksum(engine.model)
        self.fired: dict[str, list] = {m: [] for m in MECHANISMS}
        self.guard_reasons: list[str] = []
        self.probe_deltas: list[float] = []

    def before_step(self, step: int) -> None:
        if self.injector is not None:
            self.injector.bitflips(step + 1, self.engine.model)
        if param_checksum(self.engine.model) != self.checksum:
            self.fired["checksum"].append(step + 1)

    def check(self, step: int, loss: float, grad_norm: float):
        ratio = grad_norm / self.gnorm_ema if self.gnorm_ema else 1.0
        if not math.isfinite(grad_norm) or ratio > self.gnorm_threshold:
            self.fired["gnorm"].append(step)
        else:
            self.gnorm_ratios.append(ratio)
            self.gnorm_ema = grad_norm if self.gnorm_ema is None else EMA_DECAY * self.gnorm_ema + (1 - EMA_DECAY) * grad_norm
        verdict = self.guard.check(step, loss, grad_norm)
        if verdict.action == "ok":
            return None
        self.fired["guard"].append(step)
        self.guard_reasons.append(verdict.reason)
        return Verdict("skip", verdict.reason)  # (a real run would roll back; here the detectors keep watching)

    def after_step(self, step: int, result) -> int:
        self.checksum = param_checksum(self.engine.model)
        value = self.engine.evaluate(self.probe)
        delta = value - self.previous
        if not math.isfinite(value) or abs(delta) > self.threshold:
            self.fired["probe"].append(step)
        if math.isfinite(delta):
            self.probe_deltas.append(delta)
        self.previous = value
        return step


def _config(s, seed: int):
    return load_config(None, [
        "corpus=shakespeare", "tokenizer=char", f"n_layer={s.sdc_layers}", f"n_head={s.sdc_heads}", f"n_embd={s.sdc_embd}",
        f"block_size={s.sdc_block}", f"batch_size={s.sdc_batch}", "dropout=0.0", f"seed={seed}", "threads=1",
        "device=cpu", f"learning_rate={s.sdc_lr}", f"min_lr={s.sdc_lr / 10}", "warmup_steps=20",
        f"max_steps={s.sdc_warmup + s.sdc_clean_steps}", f"lr_decay_steps={s.sdc_warmup + s.sdc_clean_steps}"])


def _flip_plan(s, seed: int) -> list[tuple[str, str]]:
    """(target, stratum) for every flip: the same number of each pair, in a seeded order."""
    plan = [(t, c) for t in FLIP_TARGETS for c in STRATA for _ in range(s.sdc_flips_per_cell)]
    random.Random(seed).shuffle(plan)
    return plan


def run_sdc(s, seed: int, say=print) -> dict:
    torch.set_num_threads(1)
    config = _config(s, seed)
    data = load_data(config)
    config = resolve_vocab(config, data)
    t = config.train
    engine = build_engine(config, torch.device("cpu"))
    sampler = BatchSampler(data.train, config.model.block_size, t.batch_size, seed=seed)
    probe = fixed_batches(data.train, config, seed + 7, engine, s.sdc_probe_batches)  # the detector's fixed batch
    val = fixed_batches(data.val, config, seed + 1, engine, s.sdc_eval_batches)
    lr = lambda step: lr_at(step, t)  # noqa: E731
    next_batch = lambda: engine.batch(*sampler.next_batch())  # noqa: E731
    W = s.sdc_warmup

    # warm-up with the guard learning its loss average, the probe loss recorded over the last steps
    warm_guard = Guard.from_config(t, config.model.vocab_size)
    calib = _Watch(engine, warm_guard, None, probe, math.inf, engine.evaluate(probe), lr)
    fit(engine, next_batch, W, lr=lr, grad_clip=t.grad_clip, hooks=calib)
    recent = [abs(d) for d in calib.probe_deltas[-s.sdc_calibration_steps:]]
    threshold = s.sdc_probe_factor * max(recent)
    gnorm_threshold = s.sdc_probe_factor * max(calib.gnorm_ratios[-s.sdc_calibration_steps:])
    probe_at_snapshot = calib.previous
    warm_state = (warm_guard.ema, warm_guard.good_steps)

    with tempfile.TemporaryDirectory(prefix="groundup-sdc-") as tmp:
        weights, opt_tensors, opt_step = engine.checkpoint_tensors()
        state = {"engine": engine.name, "optimizer_step": opt_step, "sampler": sampler.state_dict(), "rng": engine.rng_state()}
        snapshot = ckpt.save_checkpoint(tmp, W, weights, opt_tensors, state, keep=1)

        def continue_from_snapshot(steps: int, fault: Fault | None, flip_seed: int) -> tuple[_Watch, float]:
            engine.load_checkpoint(snapshot, state)  # (the trainer's own restore)
            sampler.load_state_dict(state["sampler"])
            engine.set_rng_state(state["rng"])
            guard = Guard.from_config(t, config.model.vocab_size)
            guard.ema, guard.good_steps = warm_state
            injector = FaultInjector([fault], seed=flip_seed) if fault else None
            watch = _Watch(engine, guard, injector, probe, threshold, probe_at_snapshot, lr, gnorm_threshold, calib.gnorm_ema)
            fit(engine, next_batch, W + steps, lr=lr, grad_clip=t.grad_clip, start=W, hooks=watch)
            return watch, engine.evaluate(val)

        clean, _ = continue_from_snapshot(s.sdc_clean_steps, None, 0)  # false alarms over a longer stretch
        _, clean_val = continue_from_snapshot(s.sdc_horizon, None, 0)  # the val loss each flip is compared with
        flips = []
        for k, (target, kind) in enumerate(_flip_plan(s, seed)):
            watch, val_loss = continue_from_snapshot(s.sdc_horizon, Fault("bitflip", W + 1, target, kind), seed * 100_003 + k)
            [record] = watch.injector.take_flips() or [{"target": target, "class": kind, "bit": None}]
            first = {m: (watch.fired[m][0] - (W + 1)) if watch.fired[m] else None for m in MECHANISMS}
            reason = watch.guard_reasons[0] if watch.guard_reasons else None
            flips.append({**{k2: record.get(k2) for k2 in ("target", "class", "bit", "name", "index", "before", "after")},
                          "stratum": kind,
                          "delay": first, "guard_reason": None if reason is None else
                          ("non-finite" if "non-finite" in reason else "spike" if "spike" in reason else "diverged"),
                          "val_loss_change": (val_loss - clean_val) if math.isfinite(val_loss) else None})
    say(f"sdc: {len(flips)} flips; probe threshold {threshold:.3g} nats")
    clean_steps = s.sdc_clean_steps
    return {"threshold": threshold, "probe_calibration_max": max(recent), "gnorm_threshold": gnorm_threshold, "clean_val_loss": clean_val,
            "false_alarms": {m: len(clean.fired[m]) / clean_steps for m in MECHANISMS},
            "summary": summarize_flips(flips), "detail": flips}


def summarize_flips(flips: list[dict]) -> dict:
    """Per target and stratum (bit class, or the top exponent bit alone): how many flips, the fraction each mechanism caught (within the
    horizon), the fraction the guard missed that the probe caught, and the harm of those nobody caught."""
    out = {}
    for target in FLIP_TARGETS:
        out[target] = {}
        for kind in STRATA:
            cell = [f for f in flips if f["target"] == target and f.get("stratum", f["class"]) == kind]
            n = len(cell)
            if not n:
                continue
            caught = {m: sum(f["delay"][m] is not None for f in cell) / n for m in MECHANISMS}
            missed_guard = [f for f in cell if f["delay"]["guard"] is None]
            missed_all = [f for f in missed_guard if all(f["delay"][m] is None for m in MECHANISMS)]
            delays = {m: [f["delay"][m] for f in cell if f["delay"][m] is not None] for m in MECHANISMS}
            harm = [abs(f["val_loss_change"]) for f in missed_all if f["val_loss_change"] is not None]
            harm_guard = [abs(f["val_loss_change"]) for f in missed_guard if f["val_loss_change"] is not None]
            out[target][kind] = {
                "n": n, **{f"{m}_rate": caught[m] for m in MECHANISMS},
                **{f"{m}_rate_among_guard_missed": (sum(f["delay"][m] is not None for f in missed_guard) / len(missed_guard)
                                                    if missed_guard else 0.0) for m in MECHANISMS if m != "guard"},
                "guard_missed": len(missed_guard) / n,
                **{f"{m}_delay_max": max(delays[m]) if delays[m] else 0 for m in MECHANISMS},
                "undetected": len(missed_all) / n,
                "undetected_harm_max": max(harm) if harm else 0.0,
                "guard_missed_harm_max": max(harm_guard) if harm_guard else 0.0,
            }
    return out
