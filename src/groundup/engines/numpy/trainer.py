"""`groundup train --engine numpy`: the training loop of the PyTorch engine, with NumPy doing the math.

    for each step:
        lr ← warmup + cosine schedule                       (groundup.train.schedule, shared)
        for each micro-batch:  L = CE(model(x), y);  model.backward(1/accum)   (the chain rule, by hand)
        clip the global gradient norm;  AdamW step;  zero the gradients
        log, evaluate, checkpoint exactly as the PyTorch engine does

Everything around the math is the PyTorch engine's: the same config, data and batch order
(BatchSampler), the same initial weights for the same seed (GPT-2 init drawn by torch's RNG), the
same weight-decay grouping, checkpoint files, state.json keys, metrics and plots. So a run of one
engine can be sampled, or resumed, by the other.

Not implemented here (refused by name): dropout, bfloat16/float16, GPUs, torch.compile, torchrun.
train.threads sets torch's threads only; NumPy's matmuls use as many as OPENBLAS_NUM_THREADS allows.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from groundup.config import RunConfig
from groundup.data import BatchSampler
from groundup.engines.numpy.model import GPT, check_supported
from groundup.engines.numpy.optim import AdamW, clip_grad_norm
from groundup.errors import CheckpointError, ConfigError
from groundup.model import GPT as TorchGPT
from groundup.report.plots import plot_loss_curves
from groundup.train import checkpoint as ckpt
from groundup.train.optim import decays
from groundup.train.schedule import lr_at
from groundup.train.trainer import StopSignal, TrainResult, fixed_batches, load_data, print_done, resolve_vocab
from groundup.util.metrics import MetricsLogger, read_metrics
from groundup.util.progress import Progress, warn as progress_warn

DTYPES = {"auto": np.float32, "float32": np.float32, "float64": np.float64}


def numpy_dtype(name: str) -> np.dtype:
    """train.dtype → the dtype the NumPy engine computes in (auto = float32)."""
    if name not in DTYPES:
        raise ConfigError(f"the numpy engine computes in float32 or float64, not {name}; "
                          "set dtype=float32 (or auto) or float64, or use engine=torch for mixed precision")
    return np.dtype(DTYPES[name])


def check_train_config(config: RunConfig) -> None:
    """Refuse, with a clear message, the settings only the PyTorch engine implements."""
    t = config.train
    check_supported(config.model)
    numpy_dtype(t.dtype)
    if t.device not in ("auto", "cpu"):
        raise ConfigError(f"the numpy engine runs on the CPU; device={t.device!r} needs engine=torch")
    if t.compile:
        raise ConfigError("compile=true is torch.compile, for engine=torch; drop it for the numpy engine")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("the numpy engine trains in one process; launch it without torchrun (or use engine=torch)")


def initial_weights(config: RunConfig) -> dict[str, torch.Tensor]:
    """The PyTorch engine's initial weights for this seed (GPT-2 init: N(0, 0.02), residual
    projections scaled by 1/√(2·n_layer)), so both engines start from the same point."""
    torch.manual_seed(config.train.seed)
    return TorchGPT(config.model).weights()


def decay_mask(model: GPT, weight_decay: float) -> np.ndarray:
    """λ for the elements of the weight matrices that get weight decay (groundup.train.optim.decays), 0 elsewhere."""
    mask = np.zeros_like(model.flat.data)
    views = model.by_name(mask)
    for name, shape in model.shapes.items():
        if decays(name, len(shape)):
            views[name][...] = weight_decay
    return mask


def train(config: RunConfig, run_dir: str | Path, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train (or resume) the run in `run_dir` with the NumPy engine."""
    run_dir = Path(run_dir)
    t = config.train
    check_train_config(config)
    if not resume and (run_dir / ckpt.STATE).exists():
        raise CheckpointError(f"{run_dir} already holds a trained run; continue it with `groundup train --resume {run_dir}` "
                              "or choose another --out")
    data = load_data(config)
    config = resolve_vocab(config, data)
    m = config.model
    dtype = numpy_dtype(t.dtype)

    model = GPT(m, dtype)
    model.load_weights(initial_weights(config))
    optimizer = AdamW([model.flat], betas=(t.beta1, t.beta2), eps=t.eps, weight_decay=[decay_mask(model, t.weight_decay)])
    sampler = BatchSampler(data.train, m.block_size, t.batch_size, seed=t.seed)
    metrics = MetricsLogger(run_dir / "metrics.jsonl")

    step, elapsed_before = 0, 0.0
    if resume:
        directory, state = ckpt.find_checkpoint(run_dir)
        load_checkpoint(model, optimizer, directory, state)
        sampler.load_state_dict(state["sampler"])
        step, elapsed_before = state["step"], state.get("elapsed_s", 0.0)
        metrics.truncate_after(step)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt.write_run_config(run_dir, config)
    data.tokenizer.save(run_dir / ckpt.TOKENIZER)

    as_numpy = lambda batches: [(x.numpy(), y.numpy()) for x, y in batches]  # noqa: E731
    val_batches = as_numpy(fixed_batches(data.val, config, t.seed + 1, "cpu", t.eval_iters))
    train_eval_batches = as_numpy(fixed_batches(data.train, config, t.seed + 2, "cpu", t.eval_iters))
    tokens_per_step = t.batch_size * m.block_size * t.grad_accum_steps

    def save(step_done: int, elapsed: float) -> None:
        state = {"engine": "numpy", "optimizer_step": optimizer.step_count, "sampler": sampler.state_dict(),
                 "rng": {},  # no randomness to restore: the numpy engine has no dropout
                 "elapsed_s": elapsed, "tokens_seen": step_done * tokens_per_step}
        ckpt.save_checkpoint(run_dir, step_done, _tensors(model.weights()), optimizer_tensors(model, optimizer),
                             state, keep=t.keep_checkpoints)

    def run_eval(step_done: int) -> tuple[float, float]:
        val, train_loss = evaluate(model, val_batches), evaluate(model, train_eval_batches)
        metrics.log(step=step_done, train_loss=train_loss, val_loss=val, time_s=round(time.perf_counter() - t0 + elapsed_before, 3))
        bar.write(f"step {step_done:>6}: train loss {train_loss:.4f}, val loss {val:.4f}")
        return val, train_loss

    if progress:
        n = model.num_params()
        print(f"model: {n / 1e6:.2f}M parameters, vocab {m.vocab_size}, context {m.block_size}; "
              f"engine numpy ({dtype.name}, gradients by hand); {tokens_per_step:,} tokens/step", flush=True)
        if resume:
            print(f"resuming {run_dir} from step {step}", flush=True)
    bar = Progress(t.max_steps, initial=step, desc="train", enabled=progress)
    t0 = time.perf_counter()
    last_log_time, last_log_step = t0, step
    val_loss = train_loss = None
    last_eval_step = -1
    stopped_by = "max_steps"
    with StopSignal() as stop:
        while step < t.max_steps:
            lr = lr_at(step, t)
            loss_sum = 0.0
            for _ in range(t.grad_accum_steps):
                x, y = sampler.next_batch()
                _, loss = model.forward(x, y)
                model.backward(1.0 / t.grad_accum_steps)  # ∂(L / accum)/∂θ, summed over the micro-batches
                loss_sum += loss
            if t.grad_clip > 0:
                clip_grad_norm([model.flat], t.grad_clip)
            optimizer.step(lr)
            model.zero_grad()
            step += 1

            if step % t.log_interval == 0 or step == t.max_steps:
                loss_value = loss_sum / t.grad_accum_steps
                now = time.perf_counter()
                tokens_per_s = (step - last_log_step) * tokens_per_step / max(now - last_log_time, 1e-9)
                last_log_time, last_log_step = now, step
                metrics.log(step=step, loss=loss_value, lr=lr, tokens_per_s=round(tokens_per_s, 1),
                            time_s=round(now - t0 + elapsed_before, 3))
                bar.update(step - bar.n, loss=loss_value, lr=lr, **{"tok/s": tokens_per_s})
                if not np.isfinite(loss_value):
                    progress_warn(f"loss is {loss_value} at step {step}")
            else:
                bar.update(step - bar.n)

            if step % t.eval_interval == 0:
                val_loss, train_loss = run_eval(step)
                last_eval_step = step
            if t.checkpoint_interval and step % t.checkpoint_interval == 0 and step < t.max_steps:
                save(step, time.perf_counter() - t0 + elapsed_before)
            if t.time_budget and time.perf_counter() - t0 >= t.time_budget:
                stopped_by = "time_budget"
                break
            if stop.received:
                stopped_by = "signal"
                break
    bar.close()

    elapsed = time.perf_counter() - t0
    if last_eval_step != step:
        val_loss, train_loss = run_eval(step)
    save(step, elapsed + elapsed_before)
    plot_loss_curves(read_metrics(run_dir / "metrics.jsonl"), run_dir / "loss.png", title=f"{run_dir.name}: learning curves")
    if progress:
        print_done(run_dir, step, stopped_by, elapsed, val_loss, t.time_budget, stop.received)
    return TrainResult(run_dir, step, val_loss, train_loss,
                       tokens_per_s=(step * tokens_per_step / (elapsed + elapsed_before)) if elapsed > 0 else 0.0,
                       seconds=elapsed, model=to_torch(model), config=config, stopped_by=stopped_by)


def evaluate(model: GPT, batches: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """Mean cross-entropy over fixed batches (forward only)."""
    return sum(model.forward(x, y)[1] for x, y in batches) / len(batches)


# ---- checkpoints: the PyTorch engine's format ------------------------------------------------------
def _tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(np.ascontiguousarray(a)) for name, a in arrays.items()}


def optimizer_tensors(model: GPT, optimizer: AdamW) -> dict[str, torch.Tensor]:
    """Adam's moments by parameter name, as groundup.train.optim writes them: exp_avg.NAME, exp_avg_sq.NAME."""
    tensors = {}
    for name, m in model.by_name(optimizer.exp_avg[0]).items():
        tensors[f"exp_avg.{name}"] = m
    for name, v in model.by_name(optimizer.exp_avg_sq[0]).items():
        tensors[f"exp_avg_sq.{name}"] = v
    return _tensors(tensors)


def load_checkpoint(model: GPT, optimizer: AdamW, directory: Path, state: dict) -> None:
    """Weights and AdamW state from a checkpoint of either engine."""
    weights = ckpt.read_tensors(directory / ckpt.WEIGHTS)
    ckpt.check_weights(weights, _tensors(model.weights()), str(directory / ckpt.WEIGHTS))
    model.load_weights({name: t.to(torch.float64).numpy() for name, t in weights.items()})
    moments = ckpt.read_tensors(directory / ckpt.OPTIMIZER)
    step = int(state.get("optimizer_step", 0))
    for prefix, flat in (("exp_avg", optimizer.exp_avg[0]), ("exp_avg_sq", optimizer.exp_avg_sq[0])):
        for name, view in model.by_name(flat).items():
            tensor = moments.get(f"{prefix}.{name}")
            if tensor is None:
                if step:
                    raise CheckpointError(f"optimizer state for parameter {name!r} is missing from {directory / ckpt.OPTIMIZER}")
                continue
            if tuple(tensor.shape) != view.shape:
                raise CheckpointError(f"optimizer state for {name!r} has shape {tuple(tensor.shape)}, expected {view.shape}")
            view[...] = tensor.to(torch.float64).numpy()
    optimizer.step_count = step


def to_torch(model: GPT) -> TorchGPT:
    """A PyTorch-engine GPT holding these weights (for sampling and everything else that takes one)."""
    torch_model = TorchGPT(model.config).to(torch.float64 if model.dtype == np.float64 else torch.float32)
    torch_model.load_weights(_tensors(model.weights()))
    return torch_model
