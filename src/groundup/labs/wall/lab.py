"""The wall lab on the harness: one 'seed' per seed of the scaling lab's committed run.

For each seed of docs/labs/results/scaling.json, the frontier law L = a·C^−α is refitted on that
seed's runs alone (scaling.compute_frontier, fit.fit_power_law: the scaling lab's own code), and
every scenario's money multiplier is computed with that α; the harness aggregates them (Student t
over the seeds). The scaling lab's 200 two-level bootstrap samples of α give a second interval,
stored beside (results["bootstrap"]). Nothing is trained: the run takes seconds.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from groundup.errors import GroundupError
from groundup.labs import fit as fits
from groundup.labs import harness
from groundup.labs.scaling import compute_frontier
from groundup.labs.wall import model, report

LAB = report.LAB
VERSION = report.VERSION
DEFAULT_OUT = "runs/wall"
DEFAULT_SCALING = "docs/labs/results/scaling.json"


def seed_alpha(runs: list[dict]) -> float:
    """α of L = a·C^−α on one seed's compute frontier (C = 6·N·D, non-embedding N, as the scaling lab)."""
    C = np.array([r["C"] for r in runs], dtype=float)
    L = np.array([r["val_loss"] for r in runs], dtype=float)
    f = compute_frontier(C, L)
    if len(np.unique(C[f])) < 2:
        raise GroundupError("a seed of the scaling results has fewer than two frontier points; rerun the scaling lab")
    return float(fits.fit_power_law(C[f], L[f]).alpha)


def multipliers(alpha: float, alpha_hat: float) -> dict:
    """Every number the report quotes for one value of α: the named scenarios (each factor) and the sweep."""
    named = [{d: model.money_multiplier(d, a, alpha, alpha_hat) for d in model.CAPABILITY}
             for a in model.named_scenarios().values()]
    sweep = [{d: model.money_multiplier(d, a, alpha, alpha_hat)["multiplier"] for d in model.CAPABILITY}
             for _, a in model.sweep_scenarios()]
    return {"alpha": alpha, "alpha_hat": alpha_hat, "named": named, "sweep": sweep}


def bootstrap_intervals(alphas: list[float], alpha_hat: float) -> dict:
    """The loss definition's multiplier under each bootstrap sample of α: median and 95% percentile
    interval per named scenario (the other definitions do not depend on α)."""
    rows = []
    for a in model.named_scenarios().values():
        values = np.array([model.money_multiplier("loss", a, al, alpha_hat)["multiplier"] for al in alphas])
        lo, hi = fits.interval(values)
        rows.append({"median": float(np.median(values)), "ci95": [lo, hi]})
    ratios = np.array([model.compute_ratio("loss", al, alpha_hat) for al in alphas])
    lo, hi = fits.interval(ratios)
    return {"n": len(alphas), "compute_ratio": {"median": float(np.median(ratios)), "ci95": [lo, hi]}, "named": rows}


def run_lab(scaling_path: str = DEFAULT_SCALING, out: str = DEFAULT_OUT, n_boot: int | None = None,
            mode: str = "default") -> dict:
    start = time.perf_counter()
    scaling = harness.load_results(scaling_path, "scaling")
    alpha_hat = scaling["analysis"]["power_law"]["alpha"]["value"]
    per_seed_runs = {r["seed"]: r["results"]["runs"] for r in scaling["per_seed"]}
    per_seed = harness.run_seeds(lambda seed: multipliers(seed_alpha(per_seed_runs[seed]), alpha_hat), list(per_seed_runs))
    boot_alphas = scaling["analysis"]["power_law"]["bootstrap"]["alpha"][:n_boot]
    config = {"scaling_results": scaling_path, "scaling_date": scaling["date"], "scaling_lab_version": scaling["lab_version"],
              "alpha_hat": alpha_hat, "alpha_hat_ci95": scaling["analysis"]["power_law"]["alpha"]["ci95"],
              "capability_step": model.CAPABILITY_STEP, "definitions": model.CAPABILITY,
              "base": {"params": model.BASE_PARAMS, "tokens": model.BASE_TOKENS, "gpus": model.BASE_GPUS,
                       "model_parallel": model.BASE_MODEL_PARALLEL, "batch_tokens": model.BASE_BATCH_TOKENS,
                       "mfu": model.BASE_MFU, "llama3_mfu_drop_per_decade": model.LLAMA3_MFU_DROP_PER_DECADE, "peak_flops": model.PRESETS["H100"].peak_flops,
                       "failures_per_gpu_hour": model.cluster.LLAMA3_FAILURES_PER_GPU_HOUR,
                       "bus_bandwidth": model.cluster.INFINIBAND.bus_bandwidth, "latency": model.cluster.INFINIBAND.latency},
              "named": [{"name": name, **model.describe(a)} for name, a in model.named_scenarios().items()],
              "sweep": [labels for labels, _ in model.sweep_scenarios()],
              "failure_settings": {k: list(v) if v else None for k, v in model.FAILURE_SETTINGS.items()},
              "target": list(report.TARGET)}
    extra = {"bootstrap": bootstrap_intervals(boot_alphas, alpha_hat)}
    results = harness.make_results(LAB, VERSION, config, per_seed, mode, time.perf_counter() - start, extra)
    harness.write_outputs(report, results, out)
    return results


def add_arguments(p) -> None:
    p.add_argument("--scaling-results", default=DEFAULT_SCALING,
                   help=f"the scaling lab's results.json whose fitted law this uses (default {DEFAULT_SCALING})")
    p.add_argument("--quick", action="store_true", help="50 bootstrap samples of α instead of all of them")
    p.add_argument("--out", default=None, help=f"where results.json, report.md and the plots go (default {DEFAULT_OUT})")
    p.add_argument("--report-from", metavar="RESULTS_JSON",
                   help="regenerate report.md and the plots from this results.json into --out, without computing")


def run(args) -> int:
    if args.report_from:
        return harness.report_from(report, LAB, args, DEFAULT_OUT)
    out = args.out or DEFAULT_OUT
    if not Path(args.scaling_results).is_file():
        raise GroundupError(f"{args.scaling_results} does not exist; run `groundup lab scaling` or pass "
                            "--scaling-results PATH")
    results = run_lab(args.scaling_results, out, 50 if args.quick else None, "quick" if args.quick else "default")
    harness.print_verdicts(report.verdicts(results), out, results["wall_seconds"])
    return 0
