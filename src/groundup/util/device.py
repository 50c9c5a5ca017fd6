"""Picking the device and the numeric precision, in one place."""

from __future__ import annotations

import contextlib

import torch

from groundup.errors import ConfigError


def pick_device(spec: str = "auto") -> torch.device:
    """'auto' → cuda if available, else mps, else cpu; otherwise the named device, checked."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"unknown device {spec!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {spec!r} requested but CUDA is not available here; use device=auto or cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {spec!r} requested but MPS is not available here; use device=auto or cpu")
    return device


def autocast_dtype(device: torch.device, dtype: str) -> torch.dtype | None:
    """The autocast dtype for this device and setting, or None for plain fp32/fp64."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if dtype in ("bfloat16", "float16"):
        return getattr(torch, dtype)
    return None


def param_dtype(dtype: str) -> torch.dtype:
    """Weights stay in fp32 under autocast; float64 is for numerical checks."""
    return torch.float64 if dtype == "float64" else torch.float32


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def keep_freed_memory() -> bool:
    """On glibc, stop malloc from handing large freed blocks back to the OS after every step.

    By default glibc serves allocations above a threshold with fresh mmap'd pages and trims the heap
    when freed, so each training step's activations (hundreds of KB each) are page-faulted and
    zeroed by the kernel again: ~780 minor page faults per step on the classic char recipe. Raising
    the mmap and trim thresholds keeps that memory in the process: ~5 faults per step. Returns
    whether it applied (no-op off glibc)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(mallopt(M_MMAP_THRESHOLD, 1 << 30)) and bool(mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1))
