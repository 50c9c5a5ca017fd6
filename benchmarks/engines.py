"""Training speed of the two engines on the same model, same batches, same optimiser, same run.

    python benchmarks/engines.py [--config configs/shakespeare_char.toml] [--chunks 20] [--threads N] [--profile]

One training step = forward, backward, gradient clipping, AdamW step, on a batch drawn by the
trainer's BatchSampler. The engines alternate in short chunks (a slow spell of a shared machine
hits both alike) and each one's median chunk gives its steps/s. Target: the NumPy engine no slower
than 3× the PyTorch engine on the CPU. --profile also prints where the NumPy engine's time goes
(cProfile, by function).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import inspect
import pstats
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def stepper(config, engine_name: str, sampler):
    """One training step of the named engine, as `groundup train` takes it (build_engine + train_step)."""
    import dataclasses

    import torch

    from groundup.train.engine import build_engine
    from groundup.train.schedule import lr_at
    from groundup.train.step import train_step

    t = dataclasses.replace(config.train, engine=engine_name)
    engine = build_engine(dataclasses.replace(config, train=t), torch.device("cpu"))
    state = {"step": 0}

    def step():
        train_step(engine, [engine.batch(*sampler.next_batch())], lr=lr_at(state["step"], t), grad_clip=t.grad_clip)
        state["step"] += 1

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "configs" / "shakespeare_char.toml"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides, as for groundup train")
    p.add_argument("--chunks", type=int, default=20, help="alternating measurement chunks per engine")
    p.add_argument("--chunk-steps", type=int, default=10, help="training steps per chunk")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=0,
                   help="threads for both engines (torch threads and OpenBLAS threads); 0 = each library's default")
    p.add_argument("--profile", action="store_true", help="also profile 50 NumPy-engine steps with cProfile")
    args = p.parse_args()
    if args.threads:  # before NumPy is imported: OpenBLAS reads it once, at load
        os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import numpy as np
    import torch

    from train_throughput import interleaved_tokens_per_s  # benchmarks/ is on sys.path when run as a script

    if args.threads:
        torch.set_num_threads(args.threads)

    from groundup.config import load_config
    from groundup.data import BatchSampler
    from groundup.train.trainer import load_data, resolve_vocab

    config = load_config(args.config, args.set)
    data = load_data(config)
    config = resolve_vocab(config, data)
    m, t = config.model, config.train
    tokens_per_step = t.batch_size * m.block_size

    def sampler():
        return BatchSampler(data.train, m.block_size, t.batch_size, seed=t.seed)

    contenders = {name: stepper(config, name, sampler()) for name in ("torch", "numpy")}
    print(f"config {args.config}: {m.n_layer} layers, {m.n_head} heads, {m.n_embd} wide, context {m.block_size}, "
          f"batch {t.batch_size}, vocab {m.vocab_size}, {m.positional}, {m.activation}; "
          f"numpy {np.__version__}, torch {torch.__version__}; threads: torch {torch.get_num_threads()}, "
          f"OpenBLAS {os.environ.get('OPENBLAS_NUM_THREADS', 'default (one per core)')}")
    rates = interleaved_tokens_per_s(contenders, args.chunks, args.chunk_steps, args.warmup, tokens_per_step)
    steps = {name: r / tokens_per_step for name, r in rates.items()}
    for name, s in steps.items():
        print(f"{name:6s} engine {s:8.1f} steps/s  ({1e3 / s:6.1f} ms/step, {rates[name]:9,.0f} tokens/s)")
    ratio = steps["torch"] / steps["numpy"]
    print(f"numpy engine takes {ratio:.2f}× the PyTorch engine's time per step; "
          f"target ≤ 3×: {'PASS' if ratio <= 3.0 else 'FAIL'}")

    if args.profile:
        profile(contenders["numpy"], steps=50)


def profile(step, steps: int, top: int = 15) -> None:
    """cProfile the NumPy engine's steps; print each function's own time per step, named Class.method."""
    from groundup.engines.numpy import layers, model, optim

    names = {}
    for module in (layers, model, optim):
        for cls_name, cls in inspect.getmembers(module, inspect.isclass):
            for fn_name, fn in vars(cls).items():
                if inspect.isfunction(fn):
                    names[(fn.__code__.co_filename, fn.__code__.co_firstlineno)] = f"{cls_name}.{fn_name}"
        for fn_name, fn in inspect.getmembers(module, inspect.isfunction):
            names[(fn.__code__.co_filename, fn.__code__.co_firstlineno)] = fn_name
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(steps):
        step()
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # (file, line, name) → (calls, _, own time, cumulative, _)
    total = sum(own for _, _, own, _, _ in stats.values())
    rows = sorted(stats.items(), key=lambda kv: -kv[1][2])[:top]
    print(f"\nwhere the numpy engine's time goes ({steps} steps; own time, not counting callees):")
    for (file, line, name), (calls, _, own, _, _) in rows:
        label = names.get((file, line), name if file == "~" else f"{Path(file).name}:{line}({name})")
        print(f"  {label:46s} {1e3 * own / steps:7.2f} ms/step  {100 * own / total:5.1f}%  ({calls // steps} calls/step)")


if __name__ == "__main__":
    main()
