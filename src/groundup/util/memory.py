"""Peak memory of a computation, measured the same way on every device (CPU included)."""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


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
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        # An output sharing an input's storage (a view, an in-place op) allocated nothing new.
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self._track(t)
        return out
