"""The failures lab, run once per seed on the harness: projection, validation, silent data corruption."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from groundup.cluster import LLAMA3_FAILURES_PER_GPU_HOUR
from groundup.errors import GroundupError
from groundup.labs import harness
from groundup.labs.failures import projection, report, sdc, validation

LAB = "failures"
VERSION = report.VERSION
DEFAULT_SEEDS = 3
DEFAULT_OUT = "runs/failures"


@dataclass
class Settings:
    """Every knob of the lab. `Settings.quick()` is the small version (≤ 2 min)."""

    # 1. projection (assumptions, stated in the report: the Llama 3 paper gives neither δ nor R)
    gpus: list = field(default_factory=lambda: [8, 64, 512, 2048, 8192, 16384, 32768, 65536, 131072])
    cluster_checkpoint_s: list = field(default_factory=lambda: [10.0, 60.0, 300.0])  # δ: write a checkpoint
    cluster_restart_s: float = 600.0  # R: detect, reschedule, reload (10 minutes)
    fixed_interval_s: float = 3600.0  # the comparison: checkpoint every hour regardless of size
    target_goodput: float = 0.9  # Llama 3: "> 90% effective training time"
    # 2. validation: a small character model under the supervisor; grid of (MTBF as a multiple m of the
    #    measured start-up time S, checkpoint every k steps): kill rate λ = 1/(m·S)
    val_layers: int = 2
    val_heads: int = 2
    val_embd: int = 64
    val_block: int = 64
    val_batch: int = 8
    val_steps: int = 1000
    val_grid: list = field(default_factory=lambda: [[4, 10], [4, 100], [8, 10], [8, 100]])
    val_max_restarts: int = 40
    # 3. silent data corruption: a tiny character model, flips after a warm-up
    sdc_layers: int = 2
    sdc_heads: int = 2
    sdc_embd: int = 32
    sdc_block: int = 32
    sdc_batch: int = 8
    sdc_lr: float = 3e-3
    sdc_warmup: int = 200
    sdc_horizon: int = 10  # steps watched after each flip
    sdc_clean_steps: int = 100  # clean steps watched for false alarms
    sdc_flips_per_cell: int = 20  # flips per (weight|grad) × (sign|exponent|mantissa|exponent bit 30)
    sdc_probe_batches: int = 1
    sdc_eval_batches: int = 4
    sdc_calibration_steps: int = 30
    sdc_probe_factor: float = 3.0

    @classmethod
    def quick(cls, **changes) -> "Settings":
        small = dict(val_steps=300, val_grid=[[3, 20]], sdc_warmup=60, sdc_flips_per_cell=4, sdc_clean_steps=40,
                     sdc_calibration_steps=20)
        return cls(**{**small, **changes})


def run_seed(s: Settings, seed: int, say=print) -> dict:
    return {"validation": validation.run_validation(s, seed, say), "sdc": sdc.run_sdc(s, seed, say)}


def make_results(s: Settings, seeds: list[int], per_seed: list[dict], mode: str, wall_seconds: float) -> dict:
    """results.json: the projection once (no seed in it), each seed's flip records in "detail"."""
    detail, plain = [], []
    for r in per_seed:
        res = r["results"]
        plain.append({**r, "results": {"validation": res["validation"],
                                       "sdc": {k: v for k, v in res["sdc"].items() if k != "detail"}}})
        detail.append({"seed": r["seed"], "flips": res["sdc"]["detail"]})
    config = {**asdict(s), "seeds_requested": seeds, "llama3_failures_per_gpu_hour": LLAMA3_FAILURES_PER_GPU_HOUR}
    proj = {"sweep": projection.sweep(s.gpus, s.cluster_checkpoint_s, s.cluster_restart_s, s.fixed_interval_s),
            "llama3": [projection.llama3_point(d, s.cluster_restart_s, s.target_goodput) for d in s.cluster_checkpoint_s]}
    return harness.make_results(LAB, VERSION, config, plain, mode, wall_seconds, {"projection": proj, "detail": detail})


def run_lab(s: Settings, seeds: list[int], out: str | Path, mode: str = "default", say=print) -> dict:
    start = time.perf_counter()

    def write(done: list[dict]) -> dict:
        results = make_results(s, seeds, done, mode, time.perf_counter() - start)
        harness.write_outputs(report, results, out)
        return results

    per_seed = harness.run_seeds(lambda seed: run_seed(s, seed, say), seeds, say, after_each=write)
    return write(per_seed)


# ---- the command line -----------------------------------------------------------------------------
def add_arguments(parser) -> None:
    parser.add_argument("--quick", action="store_true", help="1 seed, one supervised run, few flips: under 2 minutes")
    harness.add_arguments(parser, DEFAULT_SEEDS, DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=0, help="the first seed; seed k is SEED + k")
    parser.add_argument("--flips", type=int, help="bit flips per (weight|grad) × (sign|exponent|mantissa|exponent bit 30) cell (default 20)")
    parser.add_argument("--restart-seconds", type=float, help="the projection's restart time R (default 600)")


def run(args) -> int:
    if args.report_from:
        return harness.report_from(report, LAB, args, DEFAULT_OUT)
    changes = {}
    if args.flips is not None:
        if args.flips < 1:
            raise GroundupError(f"--flips must be at least 1, got {args.flips}")
        changes["sdc_flips_per_cell"] = args.flips
    if args.restart_seconds is not None:
        if not args.restart_seconds >= 0:
            raise GroundupError(f"--restart-seconds must be ≥ 0, got {args.restart_seconds}")
        changes["cluster_restart_s"] = args.restart_seconds
    s = Settings.quick(**changes) if args.quick else Settings(**changes)
    seeds = harness.lab_seeds(args, DEFAULT_SEEDS)
    out = args.out or DEFAULT_OUT
    results = run_lab(s, seeds, out, mode="quick" if args.quick else "default")
    harness.print_verdicts(report.verdicts(results), out, results["wall_seconds"])
    return 0
