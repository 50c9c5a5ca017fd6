"""Small configs that train in seconds, for tests."""

from groundup.config import load_config
from groundup.util.metrics import read_metrics

TINY = [
    "n_layer=2", "n_head=2", "n_embd=32", "block_size=32", "batch_size=4", "max_steps=20", "eval_interval=10",
    "eval_iters=2", "log_interval=5", "checkpoint_interval=10", "warmup_steps=5", "seed=3",
    "threads=1",  # tiny matmuls: one thread is faster, and steadier on a shared machine
]


def tiny_config(*overrides: str):
    return load_config(None, [*TINY, *overrides])


def count_kernel_calls(monkeypatch=None) -> dict[str, int]:
    """Count the fused kernels that really run (not their PyTorch fallbacks) until the test ends
    (with pytest's monkeypatch) or for the rest of the process (without: kill_driver's children):
    {'linear', 'layer_norm', 'gelu', 'causal_attention'} → number of forward calls."""
    from groundup import kernels

    counts = {}
    for name, function in (("linear", kernels._Linear), ("layer_norm", kernels._LayerNorm), ("gelu", kernels._Gelu),
                           ("causal_attention", kernels._CausalAttention)):
        counts[name] = 0

        def counted(*args, _apply=function.apply, _name=name):
            counts[_name] += 1
            return _apply(*args)

        if monkeypatch is not None:
            monkeypatch.setattr(function, "apply", counted)
        else:
            function.apply = counted
    return counts


def events(run_dir, kind: str) -> list[dict]:
    """The run's logged events of one kind ("skip", "rollback", "stopped") from its metrics.jsonl."""
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("event") == kind]
