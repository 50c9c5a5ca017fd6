"""Small configs that train in seconds, for tests."""

from groundup.config import load_config

TINY = [
    "n_layer=2", "n_head=2", "n_embd=32", "block_size=32", "batch_size=4", "max_steps=20", "eval_interval=10",
    "eval_iters=2", "log_interval=5", "checkpoint_interval=10", "warmup_steps=5", "seed=3",
    "threads=1",  # tiny matmuls: one thread is faster, and steadier on a shared machine
]


def tiny_config(*overrides: str):
    return load_config(None, [*TINY, *overrides])
