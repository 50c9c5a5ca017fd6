"""Peak memory of a computation, measured the same way on every device (CPU included)."""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class PeakTensorMemory(TorchDispatchMode):
    """Counts the bytes of every tensor storage an operation creates while active, subtracts them
    when that storage is freed, and remembers the peak: the memory a computation needs beyond what
    existed before it (weights, inputs). torch.cuda.max_memory_allocated does this for CUDA only;
    this sees every operator, so it works on the CPU too (not counting allocator caching or
    operators' internal scratch space that never becomes a tensor).

        with PeakTensorMemory() as tracker:
            loss = model(x, y)[1]; loss.backward()
        tracker.peak  # bytes
    """

    def __init__(self):
        super().__init__()
        self.current = 0
        self.peak = 0
        self._live: set[int] = set()

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key, size = storage.data_ptr(), storage.nbytes()
        if size == 0 or key in self._live:  # empty, or a view of a storage already counted
            return
        self._live.add(key)
        self.current += size
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._free, key, size)  # fires when the storage itself is freed

    def _free(self, key: int, size: int) -> None:
        if key in self._live:
            self._live.discard(key)
            self.current -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out
