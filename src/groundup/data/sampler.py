"""Random (x, y) training windows, seeded, resumable and split across data-parallel ranks.

Batch k is drawn from its own generator, RNG(seed, k), so the sampler's whole state is the
counter k: saving and restoring it resumes the exact same stream. Each draw picks
world_size × batch_size windows and rank r keeps its own slice, so N ranks of batch B see exactly
the windows one process of batch N·B would see.

    x = tokens[s : s + T]         the context
    y = tokens[s + 1 : s + T + 1] the next token at every position (the targets)
"""

from __future__ import annotations

import numpy as np

from groundup.errors import DataError


class BatchSampler:
    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, split: str = "train"):
        if len(tokens) <= block_size:
            raise DataError(
                f"the {split} split has {len(tokens)} tokens, not enough for one window of block_size "
                f"{block_size} + 1; use a larger corpus, a smaller block_size, or a larger val_fraction"
            )
        self.tokens = tokens
        self.block_size = block_size
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.position = 0  # how many batches have been drawn
        self._offsets = np.arange(block_size + 1)

    def batch(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k-th batch: x and y of shape (batch_size, block_size), int64."""
        rng = np.random.default_rng([self.seed, k])
        starts = rng.integers(0, len(self.tokens) - self.block_size, size=self.world_size * self.batch_size)
        mine = starts[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        windows = np.asarray(self.tokens[mine[:, None] + self._offsets], dtype=np.int64)
        return windows[:, :-1], windows[:, 1:]

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        x, y = self.batch(self.position)
        self.position += 1
        return x, y

    def state_dict(self) -> dict:
        return {"position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])
        self.seed = int(state.get("seed", self.seed))
