"""The training loop (PyTorch engine).

    for each step:
        lr ← warmup + cosine schedule (× lr_scale, lowered by each rollback)
        for each micro-batch:  loss = CE(model(x), y) / accum;  loss.backward()   (chain rule)
        guard (guards.py): loss or ‖g‖ non-finite → skip the update; repeated NaNs, a spike or
            divergence → roll back to the last good checkpoint; too many rollbacks → stop
        clip the global gradient norm;  AdamW step;  zero the gradients
        every log_interval: metrics.jsonl + progress bar (loss, lr, tokens/s, MFU)
        every eval_interval: loss on fixed train and val batches
        every checkpoint_interval: atomic checkpoint (weights, optimizer, RNG, sampler position)

The same function runs one process on a CPU, a GPU, or N processes under torchrun (DDP, or FSDP
with `parallel = "fsdp"`).
SIGINT/SIGTERM finish the step, save and exit cleanly; after any crash `--resume` continues from
the last good checkpoint (see docs/fault-tolerance.md).
"""

from __future__ import annotations

import base64
import math
import signal
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from groundup.config import RunConfig
from groundup.data import BatchSampler, TokenData, prepare_cached
from groundup.engines.torch.kernels import use_kernels
from groundup.errors import CheckpointError, ConfigError
from groundup.hardware import peak_flops
from groundup.model import GPT
from groundup.report.plots import plot_loss_curves
from groundup.train import checkpoint as ckpt
from groundup.train.distributed import (
    DistInfo, all_reduce_mean, barrier, gather, init_distributed, is_sharded, shard_like, shard_model, shutdown,
    skip_gradient_sync, weights_in_sync,
)
from groundup.train.guards import FaultInjector, Guard, parse_faults
from groundup.train.optim import (clip_gradients_, configure_adamw, gradient_norm, load_optimizer_state_tensors,
                                  named_parameters, optimizer_state_tensors)
from groundup.train.schedule import lr_at
from groundup.util.device import autocast, autocast_dtype, keep_freed_memory, param_dtype, pick_device
from groundup.util.metrics import MetricsLogger, read_metrics
from groundup.util.progress import Progress, warn as progress_warn


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    val_loss: float | None
    train_loss: float | None
    tokens_per_s: float
    seconds: float
    model: GPT
    config: RunConfig
    stopped_by: str  # "max_steps" | "time_budget" | "signal" | "diverged"
    report: str | None = None  # why training stopped, when it diverged
    rollbacks: int = 0  # rollbacks to the last good checkpoint (over the run's whole life)


def load_data(config: RunConfig) -> TokenData:
    d = config.data
    return prepare_cached(d.corpus, d.tokenizer, d.bpe_vocab_size, d.pattern, d.val_fraction, d.errors)


def resolve_vocab(config: RunConfig, data: TokenData) -> RunConfig:
    """Take the model's vocab_size from the tokenizer (or check a configured one is big enough)."""
    vocab = data.tokenizer.vocab_size
    if config.model.vocab_size == 0:
        return replace(config, model=replace(config.model, vocab_size=vocab))
    if config.model.vocab_size < vocab:
        raise ConfigError(f"model.vocab_size {config.model.vocab_size} is smaller than the tokenizer's {vocab}; "
                          "leave it at 0 to take it from the tokenizer")
    return config


def evaluate(model: GPT, batches: list[tuple[torch.Tensor, torch.Tensor]], amp, device) -> float:
    """Mean cross-entropy over fixed batches (dropout off, no gradients)."""
    was_training = model.training
    model.eval()
    total = 0.0
    with torch.no_grad():
        for x, y in batches:
            with autocast(device, amp):
                _, loss = model(x, y)
            total += loss.item()
    model.train(was_training)
    return total / len(batches)


def fixed_batches(tokens, config: RunConfig, seed: int, device, n: int):
    sampler = BatchSampler(tokens, config.model.block_size, config.train.batch_size, seed=seed, split="val")
    return [tuple(torch.from_numpy(a).to(device) for a in sampler.batch(k)) for k in range(n)]


def rng_state() -> dict:
    state = {"torch_cpu": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = base64.b64encode(torch.cuda.get_rng_state().numpy().tobytes()).decode()
    return state


def set_rng_state(state: dict) -> None:
    if "torch_cpu" in state:
        torch.set_rng_state(torch.from_numpy(np.frombuffer(base64.b64decode(state["torch_cpu"]), dtype=np.uint8).copy()))
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.from_numpy(np.frombuffer(base64.b64decode(state["torch_cuda"]), dtype=np.uint8).copy()))


class StopSignal:
    """SIGINT/SIGTERM set a flag; the loop finishes its step, saves, and exits cleanly."""

    def __init__(self):
        self.received: str | None = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.received:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def train(config: RunConfig, run_dir: str | Path, resume: bool = False, progress: bool = True,
          faults=()) -> TrainResult:
    """Train (or resume) the run in `run_dir`. Returns the trained model and final losses.

    `faults`: fault injections for tests, e.g. ["nan@12", "spike@20"] (see groundup.train.guards);
    never saved in the run directory."""
    faults = parse_faults(faults)
    if config.train.engine == "numpy":
        if faults:
            raise ConfigError("--inject (fault injection) works with the torch engine only")
        from groundup.engines.numpy.trainer import train as train_numpy

        return train_numpy(config, run_dir, resume=resume, progress=progress)

    run_dir = Path(run_dir)
    t = config.train
    if not resume and (run_dir / ckpt.STATE).exists():
        raise CheckpointError(f"{run_dir} already holds a trained run; continue it with `groundup train --resume {run_dir}` "
                              "or choose another --out")
    info, device = init_distributed(pick_device(t.device))
    try:
        with StopSignal() as stop:
            return _train(config, run_dir, resume, progress, info, device, faults, stop)
    finally:
        shutdown(info)


def _train(config: RunConfig, run_dir: Path, resume: bool, progress: bool, info: DistInfo, device,
           faults: list, stop: StopSignal) -> TrainResult:
    t = config.train
    if t.threads:
        torch.set_num_threads(t.threads)
    if device.type == "cpu":
        keep_freed_memory()  # no page faults for every step's activations (see its docstring)

    def warn(message: str) -> None:
        if info.is_main:
            progress_warn(message)

    if resume:
        if info.is_main:
            for note in ckpt.recover(run_dir):
                warn(note)
        barrier(info)
        if not ckpt.has_checkpoint(run_dir):
            warn(f"{run_dir} holds no checkpoint yet (the run stopped before saving one); starting from step 0")
            resume = False
    if info.is_main:
        data = load_data(config)  # rank 0 prepares (or reuses) the token files first
    barrier(info)
    if not info.is_main:
        data = load_data(config)
    config = resolve_vocab(config, data)
    m = config.model
    amp = autocast_dtype(device, t.dtype)

    torch.manual_seed(t.seed)  # identical initial weights on every rank
    try:
        model = GPT(m).to(device=device, dtype=param_dtype(t.dtype))
    except (MemoryError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and "alloc" not in str(e).lower() and "out of memory" not in str(e).lower():
            raise
        raise ConfigError(f"the model does not fit in memory on {device} (n_layer={m.n_layer}, n_embd={m.n_embd}, "
                          f"block_size={m.block_size}, vocab {m.vocab_size}): {str(e).splitlines()[0]}") from None
    if t.kernels:
        use_kernels(model)  # the fused CPU kernels, swapped in where they apply
    sharded = info.enabled and t.parallel == "fsdp"
    if sharded:
        shard_model(model, device)  # before the optimizer: its parameters become this rank's shards
    optimizer = configure_adamw(model, t, device)
    sampler = BatchSampler(data.train, m.block_size, t.batch_size, seed=t.seed, rank=info.rank, world_size=info.world_size)
    metrics = MetricsLogger(run_dir / "metrics.jsonl", enabled=info.is_main)
    guard = Guard.from_config(t, m.vocab_size)
    injector = FaultInjector(faults, info.rank)

    def restore(directory: Path, state: dict, data_position: bool) -> int:
        """Load a verified checkpoint into the model and optimizer (and the sampler position, unless
        rolling back: then the data keeps going forward). Returns its step."""
        source = str(directory / ckpt.WEIGHTS)
        for key, kind in (("optimizer_step", int), ("sampler", dict), ("rng", dict)):
            if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
                raise CheckpointError(f"{directory / ckpt.STATE}: {key!r} is missing or not a{'n' if kind is int else ''} "
                                      f"{kind.__name__}; the checkpoint is incomplete")
        weights = ckpt.read_tensors(directory / ckpt.WEIGHTS)
        ckpt.check_weights(weights, model.weights(), source, dtype=param_dtype(t.dtype))
        with torch.no_grad():
            for name, param in model.weights().items():
                param.copy_(shard_like(param, weights[name]))
        opt_tensors = ckpt.read_tensors(directory / ckpt.OPTIMIZER)
        expected = {f"{moment}.{name}": p for name, p in named_parameters(model) for moment in ("exp_avg", "exp_avg_sq")}
        ckpt.check_weights(opt_tensors, expected if state["optimizer_step"] else {}, str(directory / ckpt.OPTIMIZER),
                           dtype=param_dtype(t.dtype))
        load_optimizer_state_tensors(optimizer, model, opt_tensors, state["optimizer_step"])
        if data_position:
            try:
                sampler.load_state_dict(state["sampler"])
            except (KeyError, TypeError, ValueError):
                raise CheckpointError(f"{directory / ckpt.STATE}: 'sampler' is corrupt ({state['sampler']!r})") from None
        set_rng_state(state["rng"])
        return state["step"]

    step, elapsed_before = 0, 0.0
    if resume:
        directory, state = ckpt.find_checkpoint(run_dir, warn=warn)
        step = restore(directory, state, data_position=True)
        elapsed_before = float(state.get("elapsed_s", 0.0))
        guard.load_state_dict(state.get("guard", {}))
        metrics.truncate_after(step)
    if info.rank:
        torch.manual_seed(t.seed + 1_000_003 * info.rank + step)  # each rank its own dropout masks
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt.write_run_config(run_dir, config)
        data.tokenizer.save(run_dir / ckpt.TOKENIZER)

    train_model = model
    if info.enabled and not sharded:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if t.compile:
        train_model = torch.compile(train_model)

    n_eval = t.eval_iters
    val_batches = fixed_batches(data.val, config, t.seed + 1, device, n_eval)
    train_eval_batches = fixed_batches(data.train, config, t.seed + 2, device, n_eval)
    tokens_per_step = t.batch_size * m.block_size * t.grad_accum_steps * info.world_size
    flops_per_token = model.flops_per_token()
    peak = peak_flops(device)
    peak_total = peak * info.world_size if peak else None
    last_saved = step if resume else None

    def save(step_done: int, elapsed: float, final: bool = False, force: bool = False) -> None:
        """Checkpoint `step_done` (rank 0 writes). A failed write keeps the previous checkpoint and
        says so; training goes on and tries again next time, except for the last save, which raises."""
        nonlocal last_saved
        if step_done == last_saved and not force:
            return
        error = None
        weights = gather(model.weights())  # full tensors from FSDP shards (every rank takes part)
        opt_tensors, opt_step = optimizer_state_tensors(optimizer, model)
        opt_tensors = gather(opt_tensors)
        if info.is_main:
            state = {"engine": "torch", "optimizer_step": opt_step, "sampler": sampler.state_dict(),
                     "rng": rng_state(), "elapsed_s": elapsed, "tokens_seen": step_done * tokens_per_step,
                     "guard": guard.state_dict()}
            try:
                ckpt.save_checkpoint(run_dir, step_done, weights, opt_tensors, state, keep=t.keep_checkpoints,
                                     crash=injector.checkpoint_hook(step_done))
            except CheckpointError as e:
                error = e
        barrier(info)
        if error is None:
            last_saved = step_done
        elif final:
            raise CheckpointError(f"{error}; free space (or fix permissions) and resume with "
                                  f"`groundup train --resume {run_dir}`")
        else:
            warn(f"{error}; training continues and tries again at the next checkpoint")

    def run_eval(step_done: int) -> tuple[float, float]:
        val, train_loss = evaluate(model, val_batches, amp, device), evaluate(model, train_eval_batches, amp, device)
        metrics.log(step=step_done, train_loss=train_loss, val_loss=val, time_s=round(time.perf_counter() - t0 + elapsed_before, 3))
        bar.write(f"step {step_done:>6}: train loss {train_loss:.4f}, val loss {val:.4f}")
        return val, train_loss

    if info.is_main and progress:
        n = model.num_params()
        print(f"model: {n / 1e6:.2f}M parameters ({model.num_params(non_embedding=True) / 1e6:.2f}M non-embedding), "
              f"vocab {m.vocab_size}, context {m.block_size}; device {device}"
              + (f" × {info.world_size} ranks" + (" (FSDP)" if sharded else "") if info.enabled else "")
              + (f", autocast {amp}" if amp else "") + f"; {tokens_per_step:,} tokens/step", flush=True)
        if resume:
            print(f"resuming {run_dir} from step {step} ({directory.name})"
                  + (f"; learning rate × {guard.lr_scale:g} after {len(guard.rollbacks)} rollback(s)" if guard.rollbacks else ""),
                  flush=True)
    bar = Progress(t.max_steps, initial=step, desc="train", enabled=progress and info.is_main)
    t0 = time.perf_counter()
    last_log_time, last_log_step = t0, step
    val_loss = train_loss = None
    last_eval_step = -1
    if resume:  # the checkpoint's own evaluation, if it was logged (a finished run resumed again)
        for r in read_metrics(run_dir / "metrics.jsonl") if info.is_main else []:
            if r.get("step") == step and "val_loss" in r:
                val_loss, train_loss, last_eval_step = r["val_loss"], r["train_loss"], step
    else:
        save(0, 0.0)  # step 0: a rollback target, and `--resume` works from the first moment
    stopped_by, report = "max_steps", None
    parameters = list(model.parameters())
    model.train()
    while step < t.max_steps and not stop.received:
        lr = lr_at(step, t) * guard.lr_scale
        for group in optimizer.param_groups:
            group["lr"] = lr
        corrupt = injector.loss_fault(step + 1, t.spike_factor)
        loss_sum = torch.zeros((), device=device)
        for micro in range(t.grad_accum_steps):
            x, y = (torch.from_numpy(a).to(device, non_blocking=True) for a in sampler.next_batch())
            last_micro = micro == t.grad_accum_steps - 1
            with skip_gradient_sync(train_model, info.enabled and not last_micro):
                with autocast(device, amp):
                    _, loss = train_model(x, y)
                loss = corrupt(loss)
                (loss / t.grad_accum_steps).backward()
            loss_sum += loss.detach()
        # ‖g‖₂ over all parameters; then one all-reduce, so every rank judges the same numbers
        grad_norm = gradient_norm(parameters)
        if is_sharded(grad_norm):  # FSDP: already the global norm, replicated on every rank
            grad_norm = grad_norm.full_tensor()
        stats = all_reduce_mean(torch.stack([loss_sum / t.grad_accum_steps, grad_norm.to(loss_sum.dtype)]), info)
        loss_value, norm_value = stats.tolist()
        verdict = guard.check(step + 1, loss_value, norm_value)
        if verdict.action == "ok":
            if t.grad_clip > 0:
                clip_gradients_(parameters, t.grad_clip, grad_norm)
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)  # a skipped step leaves weights and Adam moments untouched
        step += 1

        if verdict.action == "skip":
            metrics.log(step=step, event="skip", reason=verdict.reason)
            warn(f"skipped the update of step {step}: {verdict.reason}")
        elif verdict.action == "rollback":
            directory, state = ckpt.find_checkpoint(run_dir, warn=warn)
            bad_step, step = step, restore(directory, state, data_position=False)
            guard.rolled_back(bad_step, step, verdict.reason)
            metrics.truncate_after(step)
            metrics.log(step=step, event="rollback", reason=verdict.reason, from_step=bad_step, lr_scale=guard.lr_scale)
            warn(f"{verdict.reason}; rolled back to step {step} ({directory.name}), learning rate "
                 f"× {guard.lr_scale:g} (rollback {len(guard.rollbacks)} of at most {t.max_rollbacks})")
            bar.update(step - bar.n)
            last_log_time, last_log_step = time.perf_counter(), step
            save(step, time.perf_counter() - t0 + elapsed_before, force=True)  # remember the rollback
            continue
        elif verdict.action == "stop":
            stopped_by = "diverged"
            directory, _ = ckpt.find_checkpoint(run_dir, warn=warn)
            report = guard.report(verdict.reason, directory, run_dir)
            break

        if verdict.action == "ok" and (step % t.log_interval == 0 or step == t.max_steps):
            now = time.perf_counter()
            tokens_per_s = (step - last_log_step) * tokens_per_step / max(now - last_log_time, 1e-9)
            last_log_time, last_log_step = now, step
            fields = {"loss": loss_value, "lr": lr, "tok/s": tokens_per_s}
            record = {"step": step, "loss": loss_value, "lr": lr, "tokens_per_s": round(tokens_per_s, 1),
                      "time_s": round(now - t0 + elapsed_before, 3)}
            if peak_total:
                record["mfu"] = fields["mfu"] = flops_per_token * tokens_per_s / peak_total
            metrics.log(**record)
            bar.update(step - bar.n, **fields)
        else:
            bar.update(step - bar.n)
        injector.kill_after_step(step)

        if step % t.eval_interval == 0:
            val_loss, train_loss = run_eval(step)
            last_eval_step = step
        if t.checkpoint_interval and step % t.checkpoint_interval == 0 and step < t.max_steps:
            save(step, time.perf_counter() - t0 + elapsed_before)
        if t.time_budget and _should_stop_for_time(time.perf_counter() - t0, t.time_budget, info, device):
            stopped_by = "time_budget"
            break
    if stop.received and stopped_by == "max_steps" and step < t.max_steps:
        stopped_by = "signal"
    bar.close()

    elapsed = time.perf_counter() - t0
    if stopped_by == "diverged":  # hand back the last good weights, not the diverged ones
        directory, state = ckpt.find_checkpoint(run_dir, warn=warn)
        step = restore(directory, state, data_position=True)
        val_loss, train_loss = evaluate(model, val_batches, amp, device), evaluate(model, train_eval_batches, amp, device)
        metrics.log(step=step, event="stopped", reason=report)
    else:
        if info.enabled:
            in_sync = weights_in_sync(gather(model.weights()), info)
            if info.is_main and progress:
                print(f"ranks in sync: weights identical on all {info.world_size} ranks" if in_sync else
                      f"warning: weights differ between the {info.world_size} ranks", flush=True)
        if last_eval_step != step:
            val_loss, train_loss = run_eval(step)
        save(step, elapsed + elapsed_before, final=True)
    if info.is_main:
        plot_loss_curves(read_metrics(run_dir / "metrics.jsonl"), run_dir / "loss.png", title=f"{run_dir.name}: learning curves")
        if stopped_by == "diverged":
            print(f"error: {report}", file=sys.stderr, flush=True)
        elif progress:
            print_done(run_dir, step, stopped_by, elapsed, val_loss, t.time_budget, stop.received)
    return TrainResult(run_dir, step, val_loss, train_loss,
                       tokens_per_s=(step * tokens_per_step / (elapsed + elapsed_before)) if elapsed > 0 else 0.0,
                       seconds=elapsed, model=model, config=config, stopped_by=stopped_by, report=report,
                       rollbacks=len(guard.rollbacks))


def print_done(run_dir: Path, step: int, stopped_by: str, elapsed: float, val_loss: float,
               time_budget: float, signal_name: str | None) -> None:
    """The last lines of a run (either engine): why it stopped, and how to resume if it can go on."""
    why = {"max_steps": "reached max_steps", "time_budget": f"time budget of {time_budget:g} s used",
           "signal": f"stopped by {signal_name}"}[stopped_by]
    print(f"done: step {step} ({why}) in {elapsed:.1f} s; val loss {val_loss:.4f}; wrote {run_dir}/", flush=True)
    if stopped_by != "max_steps":
        print(f"resume with: groundup train --resume {run_dir}", flush=True)


def _should_stop_for_time(elapsed: float, budget: float, info: DistInfo, device) -> bool:
    """Rank 0's clock decides for every rank, so all stop at the same step."""
    flag = torch.tensor([1.0 if elapsed >= budget else 0.0], device=device)
    if info.enabled:
        import torch.distributed as dist

        dist.broadcast(flag, src=0)
    return bool(flag.item())
