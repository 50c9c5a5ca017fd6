"""What the NumPy engine brings to groundup's one training loop (groundup.train): its dtype, the
settings it supports, the PyTorch engine's initial weights and the weight-decay mask of its flat
parameter buffer. The loop, the step, checkpoints and metrics are shared with the PyTorch engine,
so a run of one engine can be sampled, or resumed, by the other.

Not implemented here (refused by name): dropout, bfloat16/float16, GPUs, torch.compile, torchrun.
train.threads sets torch's threads only; NumPy's matmuls use as many as OPENBLAS_NUM_THREADS allows.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from groundup.config import RunConfig
from groundup.engines.numpy.model import GPT, check_supported
from groundup.engines.numpy.optim import AdamW
from groundup.errors import ConfigError
from groundup.model import GPT as TorchGPT
from groundup.model.gpt import decays

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
    """λ for the elements of the weight matrices that get weight decay (groundup.model.gpt.decays), 0 elsewhere."""
    mask = np.zeros_like(model.flat.data)
    views = model.by_name(mask)
    for name, shape in model.shapes.items():
        if decays(name, len(shape)):
            views[name][...] = weight_decay
    return mask


def build(config: RunConfig) -> tuple[GPT, AdamW]:
    """The model (with the PyTorch engine's initial weights for the seed) and its AdamW."""
    check_train_config(config)
    t = config.train
    model = GPT(config.model, numpy_dtype(t.dtype))
    model.load_weights(initial_weights(config))
    optimizer = AdamW([model.flat], betas=(t.beta1, t.beta2), eps=t.eps, weight_decay=[decay_mask(model, t.weight_decay)])
    return model, optimizer
