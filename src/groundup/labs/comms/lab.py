"""The comms lab, on the harness: per seed, all-reduce times on n gloo ranks and the fit; the DDP
runs of our trainer and the prediction; the cluster projection once (it is arithmetic)."""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from groundup.config import load_config
from groundup.errors import GroundupError
from groundup.labs import harness
from groundup.labs.comms import fit, measure, project, report
from groundup.model import GPT
from groundup.train.trainer import load_data, resolve_vocab

LAB = "comms"
VERSION = 1
DEFAULT_SEEDS = 3
DEFAULT_OUT = "runs/comms"
KIB, MIB = 2**10, 2**20
DDP_BUCKET_BYTES = 25 * MIB  # DistributedDataParallel(bucket_cap_mb=25), the default the trainer uses
DDP_FIRST_BUCKET_BYTES = 1 * MIB  # torch.distributed's _DEFAULT_FIRST_BUCKET_BYTES


def cores() -> int:
    """The CPU cores this process may run on (what the ranks share)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass
class Settings:
    """Every knob of the lab. `Settings.quick()` is the small version (≤ 2 min)."""

    process_counts: tuple = (2, 3, 4, 6, 8)
    sizes: tuple = tuple(4 * KIB * 4**k for k in range(8))  # 4 KiB … 64 MiB
    warmup: int = 2  # untimed all-reduces per size
    repeats: int = 5  # timed blocks per size (the point is their median)
    min_block: float = 0.02  # seconds a timed block lasts at least (small messages: many calls per block)
    ddp_ranks: tuple = (2, 4)
    # the model DDP trains (per-rank batch the same at every n): ~3.2M parameters, ~12.7 MB of fp32 gradients
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    block_size: int = 32
    batch_size: int = 4
    ddp_steps: int = 30
    skip_steps: int = 5  # steps left out of the step time (warm-up, the step-0 checkpoint)

    @classmethod
    def quick(cls, **changes) -> "Settings":
        small = dict(process_counts=(2, 4), sizes=tuple(4 * KIB * 4**k for k in range(5)), warmup=1, repeats=3,
                     ddp_ranks=(2,), n_embd=128, ddp_steps=12, skip_steps=4)
        return cls(**{**small, **changes})

    def overrides(self, seed: int) -> list[str]:
        """The trainer's config: the shakespeare corpus (characters), one torch thread per rank."""
        return [f"n_layer={self.n_layer}", f"n_head={self.n_head}", f"n_embd={self.n_embd}", f"block_size={self.block_size}",
                f"batch_size={self.batch_size}", f"max_steps={self.ddp_steps}", f"eval_interval={self.ddp_steps}",
                "eval_iters=1", "warmup_steps=2", "threads=1", "device=cpu", "engine=torch", f"seed={seed}"]


def check(s: Settings) -> None:
    if any(n < 2 for n in s.process_counts) or any(n < 2 for n in s.ddp_ranks):
        raise GroundupError("--ranks and --ddp-ranks take process counts of at least 2 (one process has nothing to reduce)")
    if len(s.sizes) < 2:
        raise GroundupError("the α–β fit needs at least two message sizes")
    if s.skip_steps + 2 > s.ddp_steps:
        raise GroundupError(f"--ddp-steps must exceed the {s.skip_steps} warm-up steps by at least 2, got {s.ddp_steps}")


def gradient_bytes(s: Settings) -> tuple[int, int]:
    """(parameters, gradient bytes) of the DDP model: every parameter's gradient is all-reduced."""
    config = load_config(None, s.overrides(0))
    model = GPT(resolve_vocab(config, load_data(config)).model)
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() * p.element_size() for p in params)


def ddp_buckets(grad_bytes: int) -> int:
    """All-reduce calls DDP makes for this many gradient bytes: a first bucket of 1 MiB, then buckets of
    up to 25 MiB (an estimate from the bucket caps; parameter boundaries move them a little)."""
    return 1 + math.ceil(max(0, grad_bytes - DDP_FIRST_BUCKET_BYTES) / DDP_BUCKET_BYTES)


def allreduce_experiment(s: Settings, seed: int, n_cores: int) -> dict:
    times, fits = {}, {}
    for n in s.process_counts:
        measured = measure.allreduce_times(n, list(s.sizes), s.warmup, s.repeats, seed, s.min_block)
        times[str(n)] = {str(size): measured[size]["seconds"] for size in s.sizes}
        fits[str(n)] = fit.fit_alpha_beta([(size, n, measured[size]["seconds"]) for size in s.sizes])
    points = [(size, n, times[str(n)][str(size)]) for n in s.process_counts for size in s.sizes]
    joint = {"all": fit.fit_alpha_beta(points)}
    within = [p for p in points if p[1] <= n_cores]
    if len({p[1] for p in within}) >= 1 and len(within) >= 2:
        joint["within_cores"] = fit.fit_alpha_beta(within)
    return {"times": times, "fit": fits, "joint": joint}


def ddp_experiment(s: Settings, seed: int, allreduce: dict, grad_bytes: int, n_cores: int) -> dict:
    """Step time of the trainer at n = 1 (compute: no DDP, no all-reduce) and under DDP at each n,
    against two predictions from the fit of the same seed:

        plain   t̂(n) = t(1) + t_comm(n)
        shared  t̂(n) = t(1) · max(1, n / cores) + t_comm(n)   (n one-thread ranks share the cores)

    t_comm(n) = (buckets + 1)·α_n + β_n · G · 2(n − 1)/n, G the gradient bytes, α_n and β_n the fit at
    that n (the joint fit if n was not measured); the + 1 is the trainer's all-reduce of (loss, norm)."""
    overrides = s.overrides(seed)
    compute = measure.trainer_step_time(1, overrides, s.skip_steps)["median"]
    calls = ddp_buckets(grad_bytes) + 1
    out = {"compute_s": compute, "ranks": {}}
    for n in s.ddp_ranks:
        measured = measure.trainer_step_time(n, overrides, s.skip_steps)["median"]
        f = allreduce["fit"].get(str(n), allreduce["joint"]["all"])
        comm = fit.predict(f, grad_bytes, n, calls)
        share = max(1.0, n / n_cores)
        plain, shared = compute + comm, compute * share + comm
        out["ranks"][str(n)] = {"measured_s": measured, "comm_s": comm, "predicted_s": plain, "predicted_shared_s": shared,
                                "error": (plain - measured) / measured, "error_shared": (shared - measured) / measured,
                                "cpu_share": share}
    return out


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs together from /proc/stat (Linux); None elsewhere."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cores(seconds: float = 1.0) -> float:
    """How many cores other processes keep busy just before a seed starts: the busy share of all CPUs
    over `seconds` (from /proc/stat) × the core count. Unlike the load average, it does not remember
    the ranks of the previous seed (the 1-minute average decays over minutes). Elsewhere: the load
    average."""
    first = _cpu_times()
    if first is None:
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    time.sleep(seconds)
    second = _cpu_times()
    busy, total = second[0] - first[0], second[1] - first[1]
    return (busy / total if total > 0 else 0.0) * (os.cpu_count() or 1)


def run_seed(s: Settings, seed: int, grad_bytes: int, n_cores: int) -> dict:
    load = busy_cores()
    allreduce = allreduce_experiment(s, seed, n_cores)
    return {"busy_cores_before": load, "allreduce": allreduce, "ddp": ddp_experiment(s, seed, allreduce, grad_bytes, n_cores)}


def make_results(s: Settings, seeds: list[int], per_seed: list[dict], mode: str, wall_seconds: float,
                 params: int, grad_bytes: int, n_cores: int) -> dict:
    config = {**asdict(s), "seeds_requested": seeds, "cores": n_cores, "threads_per_rank": 1, "backend": "gloo (loopback)",
              "ddp_params": params, "ddp_grad_bytes": grad_bytes, "ddp_allreduce_calls": ddp_buckets(grad_bytes) + 1,
              "ddp_overrides": s.overrides(seeds[0])}
    return harness.make_results(LAB, VERSION, config, per_seed, mode, wall_seconds,
                                extra={"projection": project.projection()})


def run_lab(s: Settings, seeds: list[int], out: str | Path, mode: str = "default", say=print) -> dict:
    """Every seed, then results.json, report.md and the plots in `out` (rewritten after each seed)."""
    check(s)
    start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        n_cores = cores()
        params, grad_bytes = gradient_bytes(s)
        if max(s.process_counts) > n_cores:
            say(f"note: {max(s.process_counts)} ranks on {n_cores} cores oversubscribe the CPU (the report says what it does)")

        def write(done: list[dict]) -> dict:
            results = make_results(s, seeds, done, mode, time.perf_counter() - start, params, grad_bytes, n_cores)
            harness.write_outputs(report, results, out)
            return results

        per_seed = harness.run_seeds(lambda seed: run_seed(s, seed, grad_bytes, n_cores), seeds, say, after_each=write)
        return write(per_seed)
    finally:
        torch.set_num_threads(threads)


# ---- the command line -----------------------------------------------------------------------------
def _counts(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise GroundupError(f"expected process counts separated by commas, e.g. 2,4,8; got {text!r}") from None
    return tuple(sorted(set(values)))


def add_arguments(parser) -> None:
    parser.add_argument("--quick", action="store_true", help="1 seed, 2 and 4 ranks, messages up to 1 MiB, DDP at 2")
    harness.add_arguments(parser, DEFAULT_SEEDS, DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=1337, help="the first seed; seed k is SEED + k")
    parser.add_argument("--ranks", help="process counts of the all-reduce measurement (default 2,3,4,6,8)")
    parser.add_argument("--ddp-ranks", help="process counts of the DDP runs (default 2,4)")
    parser.add_argument("--repeats", type=int, help="timed blocks per message size (default 5)")
    parser.add_argument("--ddp-steps", type=int, help="training steps of each DDP run (default 30)")


def run(args) -> int:
    if args.report_from:
        return harness.report_from(report, LAB, args, DEFAULT_OUT)
    changes = harness.positive_options(args, ("repeats", "ddp_steps"))
    for name in ("ranks", "ddp_ranks"):
        if getattr(args, name):
            changes["process_counts" if name == "ranks" else name] = _counts(getattr(args, name))
    s = Settings.quick(**changes) if args.quick else Settings(**changes)
    check(s)
    seeds = harness.lab_seeds(args, DEFAULT_SEEDS)
    out = args.out or DEFAULT_OUT
    results = run_lab(s, seeds, out, mode="quick" if args.quick else "default")
    harness.print_verdicts(report.verdicts(results), out, results["wall_seconds"])
    return 0
