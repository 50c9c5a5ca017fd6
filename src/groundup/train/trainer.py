"""`groundup train`: a run directory trained by the one loop (loop.py) and step (step.py), either engine.

    build the engine the config names (PyTorch or NumPy: engine.py), the data and the batch sampler
    for each step (loop.fit → step.train_step):
        lr ← warmup + cosine schedule (× lr_scale, lowered by each rollback)
        for each micro-batch:  loss = CE(model(x), y) / accum;  backward   (autograd, or by hand)
            (or the caller's loss(model, batch), e.g. distillation: groundup.train.distill)
        guard (guards.py): loss or ‖g‖ non-finite → skip the update; repeated NaNs, a spike or
            divergence → roll back to the last good checkpoint; too many rollbacks → stop
        clip the global gradient norm;  AdamW step;  zero the gradients
      and around it (_Run, the loop's hooks):
        every log_interval: metrics.jsonl + progress bar (loss, lr, tokens/s, MFU)
        every eval_interval: loss on fixed train and val batches
        every checkpoint_interval: atomic checkpoint (weights, optimizer, RNG, sampler position)

The same function runs one process on a CPU, a GPU, or N processes under torchrun (DDP, or FSDP
with `parallel = "fsdp"`; PyTorch engine only).
SIGINT/SIGTERM finish the step, save and exit cleanly; after any crash `--resume` continues from
the last good checkpoint (see docs/fault-tolerance.md).
"""

from __future__ import annotations

import signal
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from groundup.accounting import model_flops_utilization
from groundup.config import RunConfig
from groundup.data import BatchSampler, TokenData, prepare_cached
from groundup.engines.numpy import training as numpy_training
from groundup.errors import CheckpointError, ConfigError
from groundup.hardware import peak_flops
from groundup.model import GPT
from groundup.report.plots import plot_loss_curves
from groundup.train import checkpoint as ckpt
from groundup.train.distributed import DistInfo, barrier, init_distributed, shutdown, weights_in_sync
from groundup.train.engine import build_engine
from groundup.train.guards import FaultInjector, Guard, parse_faults
from groundup.train.loop import Hooks, fit
from groundup.train.schedule import lr_at
from groundup.train.step import Loss, StepResult
from groundup.util.device import keep_freed_memory, pick_device
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


def fixed_batches(tokens, config: RunConfig, seed: int, device, n: int) -> list:
    """`n` fixed batches drawn from `tokens` (for evaluation): torch tensors on `device`, or, when
    `device` is an engine, in that engine's own format."""
    sampler = BatchSampler(tokens, config.model.block_size, config.train.batch_size, seed=seed, split="val")
    to_batch = device.batch if hasattr(device, "batch") else (
        lambda x, y: tuple(torch.from_numpy(a).to(device) for a in (x, y)))
    return [to_batch(*sampler.batch(k)) for k in range(n)]


class StopSignal:
    """SIGINT/SIGTERM set a flag; the loop finishes its step, saves, and exits cleanly. A second one
    stops at once (KeyboardInterrupt: the CLI exits 130)."""

    def __init__(self, announce: bool = True):
        self.received: str | None = None
        self.interrupted = False  # a second signal came
        self.announce = announce
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
            self.interrupted = True
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        if self.announce:
            print(f"\n{self.received} received: finishing this step, then saving; send it again to stop at once",
                  file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def train(config: RunConfig, run_dir: str | Path, resume: bool = False, progress: bool = True,
          faults=(), *, loss: Loss | None = None, data: TokenData | None = None) -> TrainResult:
    """Train (or resume) the run in `run_dir` with the engine the config names. Returns the trained
    model and final losses.

    `faults`: fault injections for tests, e.g. ["nan@12", "spike@20"] (see groundup.train.guards);
    never saved in the run directory.
    `loss`: the training loss, loss(model, batch = (x, y)) → scalar (groundup.train.step); None =
    next-token cross-entropy. Evaluation is always cross-entropy on the val split.
    `data`: the token data to train on instead of the config's corpus (e.g. a teacher's samples for
    sequence-level distillation); its tokenizer is the run's."""
    faults = parse_faults(faults)
    t = config.train
    if t.engine == "numpy":
        if faults:
            raise ConfigError("--inject (fault injection) works with the torch engine only")
    if t.parallel == "fsdp" and any(f.kind == "bitflip" for f in faults):
        raise ConfigError("--inject bitflip works on one process or under DDP, not FSDP (its parameters are shards)")
        numpy_training.check_train_config(config)
    run_dir = Path(run_dir)
    if resume and ckpt.is_quantized(run_dir):
        raise CheckpointError(f"{run_dir} is a quantized run (written by `groundup quantize`): its weights are integer "
                              "codes and cannot be trained; resume the float run it was made from (its state.json names it)")
    if not resume and (run_dir / ckpt.STATE).exists():
        raise CheckpointError(f"{run_dir} already holds a trained run; continue it with `groundup train --resume {run_dir}` "
                              "or choose another --out")
    info, device = init_distributed(pick_device(t.device) if t.engine == "torch" else torch.device("cpu"))
    try:
        with StopSignal(announce=info.is_main) as stop:
            try:
                return _train(config, run_dir, resume, progress, info, device, faults, stop, loss, data)
            except Exception:
                # The KeyboardInterrupt can land inside a C extension that turns it into its own error
                # (matplotlib's Agg backend, imported for the loss plot, reports "ImportError:
                # initialization failed"): it is still the user stopping the run.
                if stop.interrupted:
                    raise KeyboardInterrupt from None
                raise
    finally:
        shutdown(info)


def _describe(engine, config: RunConfig, device, info: DistInfo, tokens_per_step: int) -> str:
    m, t = config.model, config.train
    if engine.name == "numpy":
        return (f"model: {engine.model.num_params() / 1e6:.2f}M parameters, vocab {m.vocab_size}, context {m.block_size}; "
                f"engine numpy ({numpy_training.numpy_dtype(t.dtype).name}, gradients by hand); "
                f"{tokens_per_step:,} tokens/step")
    model, amp = engine.model, engine.amp
    experts = (f"; {m.n_experts} experts, {m.experts_per_token} per token: {model.num_params(active=True) / 1e6:.2f}M "
               f"active per token" if m.n_experts else "")
    return (f"model: {model.num_params() / 1e6:.2f}M parameters ({model.num_params(non_embedding=True) / 1e6:.2f}M "
            f"non-embedding{experts}), vocab {m.vocab_size}, context {m.block_size}; device {device}"
            + (f" × {info.world_size} ranks" + (" (FSDP)" if t.parallel == "fsdp" else "") if info.enabled else "")
            + (f", autocast {amp}" if amp else "") + f"; {tokens_per_step:,} tokens/step")


class _Run(Hooks):
    """One `groundup train` run and what it does around each step of the loop: guards and rollbacks,
    metrics and the progress bar, evaluation, checkpoints, the time budget, signals and injected faults."""

    def __init__(self, config, run_dir, engine, sampler, data, info, device, faults, stop, progress):
        t, m = config.train, config.model
        self.config, self.run_dir, self.engine, self.sampler, self.info, self.stop = config, run_dir, engine, sampler, info, stop
        self.metrics = MetricsLogger(run_dir / "metrics.jsonl", enabled=info.is_main)
        self.guard = Guard.from_config(t, m.vocab_size)
        self.injector = FaultInjector(faults, info.rank, seed=t.seed)
        self.tokens_per_step = t.batch_size * m.block_size * t.grad_accum_steps * info.world_size
        peak = peak_flops(device)
        self.peak_total = peak * info.world_size if peak else None
        self.flops_per_token = engine.model.flops_per_token() if self.peak_total else None
        self.val_batches = fixed_batches(data.val, config, t.seed + 1, engine, t.eval_iters)
        self.train_eval_batches = fixed_batches(data.train, config, t.seed + 2, engine, t.eval_iters)
        self.last_saved = None
        self.stopped_by, self.report = "max_steps", None
        self.step, self.elapsed_before = 0, 0.0
        self.val_loss = self.train_loss = None
        self.last_eval_step = -1
        self.progress = progress
        self.device = device
        self.corrupt = lambda loss: loss  # this step's injected loss fault (identity when none)

    def should_stop(self) -> bool:
        return bool(self.stop.received)

    def before_step(self, step: int) -> None:
        self.corrupt = self.injector.loss_fault(step + 1, self.config.train.spike_factor)
        self.injector.bitflips(step + 1, self.engine.model)

    def check(self, step: int, loss: float, grad_norm: float):
        return self.guard.check(step, loss, grad_norm)

    def warn(self, message: str) -> None:
        if self.info.is_main:
            progress_warn(message)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0 + self.elapsed_before

    def restore(self, directory: Path, state: dict, data_position: bool) -> int:
        """Load a verified checkpoint into the engine (and the sampler position, unless rolling back:
        then the data keeps going forward). Returns its step."""
        self.engine.load_checkpoint(directory, state)
        if data_position:
            try:
                self.sampler.load_state_dict(state["sampler"])
            except (KeyError, TypeError, ValueError):
                raise CheckpointError(f"{directory / ckpt.STATE}: 'sampler' is corrupt ({state['sampler']!r})") from None
        self.engine.set_rng_state(state["rng"])
        return state["step"]

    def save(self, step_done: int, elapsed: float, final: bool = False, force: bool = False) -> None:
        """Checkpoint `step_done` (rank 0 writes). A failed write keeps the previous checkpoint and
        says so; training goes on and tries again next time, except for the last save, which raises."""
        if step_done == self.last_saved and not force:
            return
        error = None
        weights, opt_tensors, opt_step = self.engine.checkpoint_tensors()  # (every rank takes part under FSDP)
        if self.info.is_main:
            state = {"engine": self.engine.name, "optimizer_step": opt_step, "sampler": self.sampler.state_dict(),
                     "rng": self.engine.rng_state(), "elapsed_s": elapsed,
                     "tokens_seen": step_done * self.tokens_per_step, "guard": self.guard.state_dict()}
            try:
                ckpt.save_checkpoint(self.run_dir, step_done, weights, opt_tensors, state,
                                     keep=self.config.train.keep_checkpoints,
                                     crash=self.injector.checkpoint_hook(step_done))
            except CheckpointError as e:
                error = e
        barrier(self.info)
        if error is None:
            self.last_saved = step_done
        elif final:
            raise CheckpointError(f"{error}; free space (or fix permissions) and resume with "
                                  f"`groundup train --resume {self.run_dir}`")
        else:
            self.warn(f"{error}; training continues and tries again at the next checkpoint")

    def run_eval(self, step_done: int) -> None:
        self.val_loss = self.engine.evaluate(self.val_batches)
        self.train_loss = self.engine.evaluate(self.train_eval_batches)
        self.metrics.log(step=step_done, train_loss=self.train_loss, val_loss=self.val_loss, time_s=round(self.elapsed(), 3))
        self.bar.write(f"step {step_done:>6}: train loss {self.train_loss:.4f}, val loss {self.val_loss:.4f}")
        self.last_eval_step = step_done

    def after_step(self, step: int, result: StepResult) -> int | None:
        t, verdict = self.config.train, result.verdict
        self.step = step
        for flip in self.injector.take_flips():  # silent: recorded, not announced
            self.metrics.log(step=step, event="bitflip", **flip)
        if verdict.action == "skip":
            self.metrics.log(step=step, event="skip", reason=verdict.reason)
            self.warn(f"skipped the update of step {step}: {verdict.reason}")
        elif verdict.action == "rollback":
            directory, state = ckpt.find_checkpoint(self.run_dir, warn=self.warn)
            bad_step, step = step, self.restore(directory, state, data_position=False)
            self.step = step
            self.guard.rolled_back(bad_step, step, verdict.reason)
            self.metrics.truncate_after(step)
            self.metrics.log(step=step, event="rollback", reason=verdict.reason, from_step=bad_step,
                             lr_scale=self.guard.lr_scale)
            self.warn(f"{verdict.reason}; rolled back to step {step} ({directory.name}), learning rate "
                      f"× {self.guard.lr_scale:g} (rollback {len(self.guard.rollbacks)} of at most {t.max_rollbacks})")
            self.bar.update(step - self.bar.n)
            self.last_log_time, self.last_log_step = time.perf_counter(), step
            self.save(step, self.elapsed(), force=True)  # remember the rollback
            return step
        elif verdict.action == "stop":
            self.stopped_by = "diverged"
            directory, _ = ckpt.find_checkpoint(self.run_dir, warn=self.warn)
            self.report = self.guard.report(verdict.reason, directory, self.run_dir)
            return None

        if verdict.action == "ok" and (step % t.log_interval == 0 or step == t.max_steps):
            now = time.perf_counter()
            tokens_per_s = (step - self.last_log_step) * self.tokens_per_step / max(now - self.last_log_time, 1e-9)
            self.last_log_time, self.last_log_step = now, step
            fields = {"loss": result.loss, "lr": self.lr(step - 1), "tok/s": tokens_per_s}
            record = {"step": step, "loss": result.loss, "lr": fields["lr"], "tokens_per_s": round(tokens_per_s, 1),
                      "time_s": round(now - self.t0 + self.elapsed_before, 3)}
            if self.peak_total:
                record["mfu"] = fields["mfu"] = model_flops_utilization(self.flops_per_token * tokens_per_s, self.peak_total)
            routing = getattr(self.engine.model, "routing_summary", None)  # a mixture of experts: its last forward
            record.update({k: round(v, 6) for k, v in (routing() if callable(routing) else {}).items()})
            self.metrics.log(**record)
            self.bar.update(step - self.bar.n, **fields)
        else:
            self.bar.update(step - self.bar.n)
        self.injector.kill_after_step(step)

        if step % t.eval_interval == 0:
            self.run_eval(step)
        if t.checkpoint_interval and step % t.checkpoint_interval == 0 and step < t.max_steps:
            self.save(step, self.elapsed())
        if t.time_budget and _should_stop_for_time(time.perf_counter() - self.t0, t.time_budget, self.info, self.device):
            self.stopped_by = "time_budget"
            return None
        return step

    def lr(self, step: int) -> float:
        """The learning rate of the step taking the weights from `step` to `step + 1`."""
        return lr_at(step, self.config.train) * self.guard.lr_scale


def _train(config: RunConfig, run_dir: Path, resume: bool, progress: bool, info: DistInfo, device,
           faults: list, stop: StopSignal, loss: Loss | None = None, data: TokenData | None = None) -> TrainResult:
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
    if data is None:
        if info.is_main:
            data = load_data(config)  # rank 0 prepares (or reuses) the token files first
        barrier(info)
        if not info.is_main:
            data = load_data(config)
    config = resolve_vocab(config, data)
    m = config.model
    engine = build_engine(config, device, info)
    sampler = BatchSampler(data.train, m.block_size, t.batch_size, seed=t.seed, rank=info.rank, world_size=info.world_size)
    run = _Run(config, run_dir, engine, sampler, data, info, device, faults, stop, progress)

    directory = None
    if resume:
        directory, state = ckpt.find_checkpoint(run_dir, warn=warn)
        run.step = run.restore(directory, state, data_position=True)
        run.elapsed_before = float(state.get("elapsed_s", 0.0))
        run.guard.load_state_dict(state.get("guard", {}))
        run.metrics.truncate_after(run.step)
        run.last_saved = run.step
    if info.rank:
        torch.manual_seed(t.seed + 1_000_003 * info.rank + run.step)  # each rank its own dropout masks
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt.write_run_config(run_dir, config)
        data.tokenizer.save(run_dir / ckpt.TOKENIZER)

    if info.is_main and progress:
        print(_describe(engine, config, device, info, run.tokens_per_step), flush=True)
        if resume:
            print(f"resuming {run_dir} from step {run.step} ({directory.name})"
                  + (f"; learning rate × {run.guard.lr_scale:g} after {len(run.guard.rollbacks)} rollback(s)"
                     if run.guard.rollbacks else ""), flush=True)
    run.bar = Progress(t.max_steps, initial=run.step, desc="train", enabled=progress and info.is_main)
    run.t0 = time.perf_counter()
    run.last_log_time, run.last_log_step = run.t0, run.step
    if resume:  # the checkpoint's own evaluation, if it was logged (a finished run resumed again)
        for r in read_metrics(run_dir / "metrics.jsonl") if info.is_main else []:
            if r.get("step") == run.step and "val_loss" in r:
                run.val_loss, run.train_loss, run.last_eval_step = r["val_loss"], r["train_loss"], run.step
    else:
        run.save(0, 0.0)  # step 0: a rollback target, and `--resume` works from the first moment
    if engine.name == "torch":
        engine.model.train()
    if faults:  # the injected loss faults act on whatever the loss is
        base_loss = loss or engine.default_loss
        loss = lambda model, batch: run.corrupt(base_loss(model, batch))  # noqa: E731
    fit(engine, lambda: engine.batch(*sampler.next_batch()), t.max_steps, lr=run.lr, grad_clip=t.grad_clip,
        loss=loss, n_micro=t.grad_accum_steps, start=run.step, hooks=run)
    step = run.step
    if stop.received and run.stopped_by == "max_steps" and step < t.max_steps:
        run.stopped_by = "signal"
    run.bar.close()

    elapsed = time.perf_counter() - run.t0
    if run.stopped_by == "diverged":  # hand back the last good weights, not the diverged ones
        directory, state = ckpt.find_checkpoint(run_dir, warn=warn)
        step = run.step = run.restore(directory, state, data_position=True)
        run.val_loss, run.train_loss = engine.evaluate(run.val_batches), engine.evaluate(run.train_eval_batches)
        run.metrics.log(step=step, event="stopped", reason=run.report)
    else:
        if info.enabled:
            in_sync = weights_in_sync(engine.checkpoint_tensors()[0], info)
            if info.is_main and progress:
                print(f"ranks in sync: weights identical on all {info.world_size} ranks" if in_sync else
                      f"warning: weights differ between the {info.world_size} ranks", flush=True)
        if run.last_eval_step != step:
            run.run_eval(step)
        run.save(step, elapsed + run.elapsed_before, final=True)
    if info.is_main:
        plot_loss_curves(read_metrics(run_dir / "metrics.jsonl"), run_dir / "loss.png", title=f"{run_dir.name}: learning curves")
        if run.stopped_by == "diverged":
            print(f"error: {run.report}", file=sys.stderr, flush=True)
        elif progress:
            print_done(run_dir, step, run.stopped_by, elapsed, run.val_loss, t.time_budget, stop.received)
    total = elapsed + run.elapsed_before
    return TrainResult(run_dir, step, run.val_loss, run.train_loss,
                       tokens_per_s=(step * run.tokens_per_step / total) if elapsed > 0 else 0.0,
                       seconds=elapsed, model=engine.trained_model(), config=config, stopped_by=run.stopped_by,
                       report=run.report, rollbacks=len(run.guard.rollbacks))


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
        torch.distributed.broadcast(flag, src=0)
    return bool(flag.item())
