"""Checking weights before they are used: every tensor a model expects, with its shape and dtype.

One check for every place that loads weights (checkpoints of either engine, LoRA adapters, HF
interop), so a file that does not match its config is reported by name, never half loaded.
"""

from __future__ import annotations

import torch

from groundup.errors import CheckpointError


def check_names(tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], source: str, mismatch: str) -> None:
    """Every expected tensor name present and nothing extra; CheckpointError names the first one
    wrong and ends with `mismatch` (what the file fails to match)."""
    missing = [k for k in expected if k not in tensors]
    if missing:
        raise CheckpointError(f"{source}: tensor {missing[0]!r} is missing ({len(missing)} missing in all); {mismatch}")
    extra = [k for k in tensors if k not in expected]
    if extra:
        raise CheckpointError(f"{source}: unexpected tensor {extra[0]!r}; {mismatch}")


def check_weights(weights: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], source: str,
                  dtype: torch.dtype | None = None) -> None:
    """Validate tensors before use: every expected name present, nothing extra, each with the
    config's shape, one floating-point dtype throughout (`dtype` if given), finite values.
    A mismatch raises CheckpointError naming the tensor."""
    check_names(weights, expected, source, "the checkpoint does not match its config")
    first_dtype = None
    for name, ref in expected.items():
        t = weights[name]
        if tuple(t.shape) != tuple(ref.shape):
            raise CheckpointError(f"{source}: tensor {name!r} has shape {tuple(t.shape)}, but the config implies "
                                  f"{tuple(ref.shape)}; the checkpoint does not match its config")
        if not t.dtype.is_floating_point:
            raise CheckpointError(f"{source}: tensor {name!r} has dtype {t.dtype}, expected a floating-point dtype")
        if dtype is not None and t.dtype != dtype:
            raise CheckpointError(f"{source}: tensor {name!r} has dtype {t.dtype}, but the config implies {dtype}")
        first_dtype = first_dtype or (name, t.dtype)
        if t.dtype != first_dtype[1]:
            raise CheckpointError(f"{source}: tensor {name!r} has dtype {t.dtype} but {first_dtype[0]!r} has "
                                  f"{first_dtype[1]}; a checkpoint holds one dtype")
        if not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{source}: tensor {name!r} holds NaN or infinite values")
