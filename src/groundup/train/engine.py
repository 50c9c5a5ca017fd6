"""The two engines, seen from the training step (groundup.train.step) and loop (groundup.train.loop).

The engine is chosen here, above both engines. Each supplies its model, its optimizer and the
arithmetic of a step; the step, the loop, checkpoints, guards and metrics are shared:

    TorchEngine   groundup.model (PyTorch; autograd computes the gradients), with the fused CPU
                  kernels swapped in where they apply, DDP/FSDP under torchrun, autocast on GPUs
    NumpyEngine   groundup.engines.numpy (NumPy; every gradient written out by hand)

Both read and write the same checkpoint tensors (weights by name; Adam's moments as
exp_avg.NAME / exp_avg_sq.NAME), so a run of one engine can be resumed or sampled by the other.
"""

from __future__ import annotations

import base64
import contextlib
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from groundup.config import RunConfig
from groundup.engines.numpy import model as numpy_model
from groundup.engines.numpy import training as numpy_training
from groundup.engines.numpy.optim import AdamW as NumpyAdamW, clip_grads_with_norm, grad_norm
from groundup.engines.torch.kernels import use_kernels
from groundup.errors import CheckpointError, ConfigError
from groundup.model import GPT
from groundup.model.weights import check_weights
from groundup.train import checkpoint as ckpt
from groundup.train.distributed import (DistInfo, all_reduce_mean, gather, is_sharded, shard_like, shard_model,
                                        skip_gradient_sync)
from groundup.train.optim import (clip_gradients_, configure_adamw, gradient_norm, load_optimizer_state_tensors,
                                  named_parameters, optimizer_state_tensors)
from groundup.util.device import autocast, autocast_dtype, param_dtype


def _tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(np.ascontiguousarray(a)) for name, a in arrays.items()}


def _check_state(directory: Path, state: dict) -> None:
    for key, kind in (("optimizer_step", int), ("sampler", dict), ("rng", dict)):
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            raise CheckpointError(f"{directory / ckpt.STATE}: {key!r} is missing or not a{'n' if kind is int else ''} "
                                  f"{kind.__name__}; the checkpoint is incomplete")


def evaluate(model: torch.nn.Module, batches, amp, device) -> float:
    """Mean cross-entropy of a PyTorch model over fixed batches (dropout off, no gradients)."""
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


class TorchEngine:
    """A groundup.model.GPT (or any module whose forward(x, y) returns (logits, loss)) and its
    optimizer. `forward_model` is what runs the forward pass when it differs from `model` (a DDP or
    torch.compile wrapper); `sync(skip)` is the context that skips the gradient all-reduce on all but
    a step's last micro-batch; `all_reduce` averages the loss and norm over ranks; `kernels` picks the
    fused CPU gradient norm and clipping (train.kernels; the optimizer's own kernel is chosen by
    configure_adamw)."""

    name = "torch"

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, device: torch.device | None = None,
                 amp: torch.dtype | None = None, forward_model=None, sync=None, all_reduce=None, kernels: bool = True):
        self.model, self.optimizer = model, optimizer
        self.forward_model = forward_model if forward_model is not None else model
        self.device = device if device is not None else next(model.parameters()).device
        self.amp = amp
        self._sync, self._all_reduce, self.kernels = sync, all_reduce, kernels
        self.parameters = list(model.parameters())

    # ---- the step's arithmetic -------------------------------------------------------------------
    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def forward_backward(self, batch, loss, n_micro: int, last: bool) -> torch.Tensor:
        """L = loss(model, batch); ∂(L / n_micro)/∂θ added to every .grad (autograd). Returns L.

        The default loss (loss=None) is cross-entropy plus the model's auxiliary losses from the same
        forward: a mixture of experts' balance and router-z terms (GPT.aux_loss(); none when dense)."""
        with self._sync(not last) if self._sync is not None else contextlib.nullcontext():
            with autocast(self.device, self.amp):
                value = (loss or self.default_loss)(self.forward_model, batch)
            (value / n_micro).backward()
        return value.detach()

    def default_loss(self, model, batch) -> torch.Tensor:
        """Cross-entropy of model(x, y) plus the auxiliary loss of that same forward, where the model
        has one (GPT.aux_loss(): a mixture of experts' balance and z terms). `model` may be a DDP or
        compile wrapper; the auxiliary loss is read from the unwrapped model, where the forward left it."""
        value = model(*batch)[1]
        aux_loss = getattr(self.model, "aux_loss", None)
        aux = aux_loss() if callable(aux_loss) else None
        return value if aux is None else value + aux

    def gradient_norm(self) -> torch.Tensor:
        norm = gradient_norm(self.parameters, fused=self.kernels)
        return norm.full_tensor() if is_sharded(norm) else norm  # FSDP: the global norm, on every rank

    def loss_and_norm(self, loss_sum: torch.Tensor, n_micro: int, norm: torch.Tensor) -> tuple[float, float]:
        stats = torch.stack([loss_sum / n_micro, norm.to(loss_sum.dtype)])
        if self._all_reduce is not None:  # one all-reduce: every rank judges the same numbers
            stats = self._all_reduce(stats)
        loss, norm_value = stats.tolist()
        return loss, norm_value

    def clip_gradients(self, max_norm: float, norm: torch.Tensor) -> None:
        clip_gradients_(self.parameters, max_norm, norm, fused=self.kernels)

    def update(self) -> None:
        self.optimizer.step()

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    # ---- around the step: batches, evaluation, checkpoints -------------------------------------------
    def batch(self, x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return tuple(torch.from_numpy(a).to(self.device, non_blocking=True) for a in (x, y))

    def evaluate(self, batches) -> float:
        return evaluate(self.model, batches, self.amp, self.device)

    def checkpoint_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], int]:
        """(weights, Adam moments, optimizer step) as full tensors (every rank must call it under FSDP)."""
        opt_tensors, opt_step = optimizer_state_tensors(self.optimizer, self.model)
        return gather(self.model.weights()), gather(opt_tensors), opt_step

    def load_checkpoint(self, directory: Path, state: dict) -> None:
        """Weights and Adam state from a verified checkpoint of either engine."""
        _check_state(directory, state)
        dtype = next(self.model.parameters()).dtype
        weights = ckpt.read_tensors(directory / ckpt.WEIGHTS)
        check_weights(weights, self.model.weights(), str(directory / ckpt.WEIGHTS), dtype=dtype)
        with torch.no_grad():
            for name, param in self.model.weights().items():
                param.copy_(shard_like(param, weights[name]))
        opt_tensors = ckpt.read_tensors(directory / ckpt.OPTIMIZER)
        expected = {f"{moment}.{name}": p for name, p in named_parameters(self.model) for moment in ("exp_avg", "exp_avg_sq")}
        check_weights(opt_tensors, expected if state["optimizer_step"] else {}, str(directory / ckpt.OPTIMIZER), dtype=dtype)
        load_optimizer_state_tensors(self.optimizer, self.model, opt_tensors, state["optimizer_step"])

    def rng_state(self) -> dict:
        state = {"torch_cpu": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["torch_cuda"] = base64.b64encode(torch.cuda.get_rng_state().numpy().tobytes()).decode()
        return state

    def set_rng_state(self, state: dict) -> None:
        decode = lambda s: torch.from_numpy(np.frombuffer(base64.b64decode(s), dtype=np.uint8).copy())  # noqa: E731
        if "torch_cpu" in state:
            torch.set_rng_state(decode(state["torch_cpu"]))
        if "torch_cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(decode(state["torch_cuda"]))

    def trained_model(self) -> torch.nn.Module:
        return self.model


class NumpyEngine:
    """groundup.engines.numpy.GPT and its AdamW: forward, the chain rule backwards by hand, update."""

    name = "numpy"

    def __init__(self, model: numpy_model.GPT, optimizer: NumpyAdamW):
        self.model, self.optimizer = model, optimizer
        self.lr = 0.0

    def set_lr(self, lr: float) -> None:
        self.lr = lr  # (the NumPy optimizers take it as an argument of step)

    def forward_backward(self, batch, loss, n_micro: int, last: bool) -> float:
        if loss is not None:
            raise ConfigError("the numpy engine trains with next-token cross-entropy only (its backward pass is "
                              "written by hand for it); use engine=torch for other losses")
        x, y = batch
        _, value = self.model.forward(x, y)
        self.model.backward(1.0 / n_micro)  # ∂(L / n_micro)/∂θ, summed over the micro-batches
        return value

    def gradient_norm(self) -> float:
        return grad_norm([self.model.flat])

    def loss_and_norm(self, loss_sum: float, n_micro: int, norm: float) -> tuple[float, float]:
        return float(loss_sum / n_micro), float(norm)

    def clip_gradients(self, max_norm: float, norm: float) -> None:
        clip_grads_with_norm([self.model.flat], max_norm, norm)

    def update(self) -> None:
        self.optimizer.step(self.lr)

    def zero_grad(self) -> None:
        self.model.zero_grad()

    def batch(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return x, y

    def evaluate(self, batches) -> float:
        """Mean cross-entropy over fixed batches (forward only)."""
        return sum(self.model.forward(x, y)[1] for x, y in batches) / len(batches)

    def checkpoint_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], int]:
        weights, moments = _tensors(self.model.weights()), {}
        for prefix, flat in (("exp_avg", self.optimizer.exp_avg[0]), ("exp_avg_sq", self.optimizer.exp_avg_sq[0])):
            moments.update({f"{prefix}.{name}": m for name, m in _tensors(self.model.by_name(flat)).items()})
        return weights, moments, self.optimizer.step_count

    def load_checkpoint(self, directory: Path, state: dict) -> None:
        _check_state(directory, state)
        weights = ckpt.read_tensors(directory / ckpt.WEIGHTS)
        check_weights(weights, _tensors(self.model.weights()), str(directory / ckpt.WEIGHTS))
        self.model.load_weights({name: t.to(torch.float64).numpy() for name, t in weights.items()})
        moments = ckpt.read_tensors(directory / ckpt.OPTIMIZER)
        step = int(state["optimizer_step"])
        for prefix, flat in (("exp_avg", self.optimizer.exp_avg[0]), ("exp_avg_sq", self.optimizer.exp_avg_sq[0])):
            for name, view in self.model.by_name(flat).items():
                tensor = moments.get(f"{prefix}.{name}")
                if tensor is None:
                    if step:
                        raise CheckpointError(f"optimizer state for parameter {name!r} is missing from "
                                              f"{directory / ckpt.OPTIMIZER}")
                    continue
                if tuple(tensor.shape) != view.shape:
                    raise CheckpointError(f"optimizer state for {name!r} has shape {tuple(tensor.shape)}, expected {view.shape}")
                view[...] = tensor.to(torch.float64).numpy()
        self.optimizer.step_count = step

    def rng_state(self) -> dict:
        return {}  # nothing random to restore: the numpy engine has no dropout

    def set_rng_state(self, state: dict) -> None:
        pass

    def trained_model(self) -> GPT:
        """A PyTorch-engine GPT holding these weights (for sampling and everything else that takes one)."""
        model = GPT(self.model.config).to(torch.float64 if self.model.dtype == np.float64 else torch.float32)
        model.load_weights(_tensors(self.model.weights()))
        return model


def build_engine(config: RunConfig, device: torch.device, info: DistInfo | None = None) -> TorchEngine | NumpyEngine:
    """The model and optimizer of the configured engine, wrapped for the training step: for PyTorch,
    sharded (FSDP) or replicated (DDP) across ranks under torchrun, and compiled if asked."""
    t, m = config.train, config.model
    info = info or DistInfo()
    if t.engine == "numpy":
        return NumpyEngine(*numpy_training.build(config))
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
    forward_model = model
    if info.enabled and not sharded:
        forward_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if t.compile:
        forward_model = torch.compile(forward_model)
    distributed = dict(sync=lambda skip: skip_gradient_sync(forward_model, skip),
                       all_reduce=lambda stats: all_reduce_mean(stats, info)) if info.enabled else {}
    return TorchEngine(model, optimizer, device=device, amp=autocast_dtype(device, t.dtype), forward_model=forward_model,
                       kernels=t.kernels, **distributed)
