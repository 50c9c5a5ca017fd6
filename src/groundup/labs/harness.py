"""The lab harness: run an experiment over seeds, aggregate, write results.json, report from it.

Every lab follows one shape:

    per_seed = run_seeds(experiment, seeds)          # experiment(seed) -> nested dict of numbers
    results  = make_results(lab, version, config, per_seed, mode, wall_seconds, extra)
    write_outputs(lab_module, results, out)          # results.json, then report.md + PNGs from it alone

`results.json` holds every number a report quotes, with the config, seeds, lab version, date and
wall time that produced it. A lab's report is a pure function `report(results) -> markdown` and its
plots `plots(results, out) -> [paths]`, so `groundup lab NAME --report-from results.json --out DIR`
regenerates both without training.

Aggregation over n seeds, for every number in the per-seed results:

    mean  x̄ = Σ xᵢ / n
    sd    s = √(Σ (xᵢ − x̄)² / (n − 1))                    (sample standard deviation)
    95% interval  x̄ ± t₀.₉₇₅,ₙ₋₁ · s / √n                 (Student t over seeds)

With one seed there is no spread to estimate: sd and the interval are None ("unavailable"), never a
zero-width interval.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import time
from pathlib import Path
from typing import Callable

from groundup.errors import GroundupError
from groundup.util.files import atomic_write_json, atomic_write_text

SCHEMA = 1
INTERVAL = "95% Student t interval over seeds"

# Student t quantiles t₀.₉₇₅,ν for ν = 1 … 30 (two-sided 95%), from the standard tables.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
         2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile_975(df: int) -> float:
    """t₀.₉₇₅ with `df` degrees of freedom (tabulated to 30; beyond, the normal 1.960 plus the
    first-order correction z + (z³ + z)/(4·df), within 0.001 of the table)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be ≥ 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df)


def summarize(values: list[float]) -> dict:
    """{mean, sd, ci95: [lo, hi] | None, n} of one number measured once per seed."""
    n = len(values)
    if n == 0:
        raise ValueError("no values to summarize")
    mean = sum(values) / n
    if n == 1 or not all(math.isfinite(v) for v in values):
        return {"mean": mean, "sd": None, "ci95": None, "n": n}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile_975(n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "sd": sd, "ci95": [mean - half, mean + half], "n": n}


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def aggregate(per_seed: list):
    """The per-seed results (same structure each) with every number replaced by its summary, every
    boolean by {all, any, n}; lists are aggregated element by element when every seed has the same
    length. Anything else (strings, lists of differing lengths) is left out: it stays in per_seed."""
    first = per_seed[0]
    if all(_is_number(v) for v in per_seed):
        return summarize([float(v) for v in per_seed])
    if all(isinstance(v, bool) for v in per_seed):
        return {"all": all(per_seed), "any": any(per_seed), "n": len(per_seed)}
    if all(isinstance(v, dict) for v in per_seed):
        out = {}
        for key in first:
            if all(key in v for v in per_seed):
                agg = aggregate([v[key] for v in per_seed])
                if agg is not None:
                    out[key] = agg
        return out
    if all(isinstance(v, list) for v in per_seed) and len({len(v) for v in per_seed}) == 1:
        items = [aggregate([v[i] for v in per_seed]) for i in range(len(first))]
        return items if all(item is not None for item in items) else None
    return None


def run_seeds(experiment: Callable[[int], dict], seeds: list[int], say: Callable = print,
              after_each: Callable[[list[dict]], None] | None = None) -> list[dict]:
    """experiment(seed) for each seed → [{seed, seconds, results}, …]. `after_each(done_so_far)` runs
    after every seed (a lab writes its results so far: a long run stopped early keeps what it has)."""
    out = []
    for k, seed in enumerate(seeds):
        say(f"--- seed {seed} ({k + 1} of {len(seeds)})")
        start = time.perf_counter()
        results = experiment(seed)
        out.append({"seed": seed, "seconds": time.perf_counter() - start, "results": results})
        if after_each is not None:
            after_each(out)
    return out


def seed_list(first: int, n: int) -> list[int]:
    """n seeds from `first`: first, first + 1, …"""
    if n < 1:
        raise GroundupError(f"--seeds must be at least 1, got {n}")
    return [first + k for k in range(n)]


def lab_seeds(args, default: int) -> list[int]:
    """The seeds a lab's command line asks for: --seeds N (else 1 with --quick, else `default`) counted
    from --seed. `--seeds 0` is an error, not the default."""
    return seed_list(args.seed, args.seeds if args.seeds is not None else (1 if args.quick else default))


def make_results(lab: str, version: int, config: dict, per_seed: list[dict], mode: str, wall_seconds: float,
                 extra: dict | None = None) -> dict:
    """The results.json document."""
    import platform

    import torch

    return {
        "schema": SCHEMA, "lab": lab, "lab_version": version, "mode": mode,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "wall_seconds": wall_seconds, "seeds": [r["seed"] for r in per_seed], "interval": INTERVAL,
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "machine": platform.machine(), "cpus": os.cpu_count()},
        "config": config, "per_seed": per_seed,
        "aggregate": aggregate([r["results"] for r in per_seed]), **(extra or {}),
    }


def load_results(path: str | os.PathLike, lab: str) -> dict:
    """Read a results.json written by `lab` (a clear error for a missing file or another lab's)."""
    path = Path(path)
    if not path.is_file():
        raise GroundupError(f"--report-from: {path} does not exist; pass a results.json a lab run wrote")
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise GroundupError(f"--report-from: {path} is not valid JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(results, dict) or results.get("schema") != SCHEMA or results.get("lab") != lab:
        found = results.get("lab") if isinstance(results, dict) else None
        raise GroundupError(f"--report-from: {path} is not a results.json of the {lab} lab (schema {SCHEMA}); "
                            f"it names lab {found!r}")
    return results


def write_outputs(lab_module, results: dict, out: str | os.PathLike) -> Path:
    """results.json, then the plots and report.md regenerated from it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", results)
    return regenerate(lab_module, results, out)


def regenerate(lab_module, results: dict, out: str | os.PathLike, name: str = "report.md", header: str = "") -> Path:
    """The lab's plots and report (header + report(results)) into `out`, from `results` alone."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lab_module.plots(results, out)
    return atomic_write_text(out / name, header + lab_module.report(results))


# ---- formatting the numbers the reports quote -------------------------------------------------
def stat(summary: dict, fmt: str = ".3f", signed: bool = False) -> str:
    """'0.710 ± 0.050 (95% CI over 3 seeds)', or '0.710 (1 seed: no interval)'."""
    sign = "+" if signed else ""
    mean = format(summary["mean"], sign + fmt)
    if summary["ci95"] is None:
        return f"{mean} (1 seed: no interval)" if summary["n"] == 1 else f"{mean} (no interval)"
    half = (summary["ci95"][1] - summary["ci95"][0]) / 2
    return f"{mean} ± {format(half, fmt)} (95% CI over {summary['n']} seeds)"


def short(summary: dict, fmt: str = ".3f", signed: bool = False) -> str:
    """'0.710 ± 0.050' (or '0.710' with one seed): for tables whose caption names the interval."""
    sign = "+" if signed else ""
    mean = format(summary["mean"], sign + fmt)
    if summary["ci95"] is None:
        return mean
    return f"{mean} ± {format((summary['ci95'][1] - summary['ci95'][0]) / 2, fmt)}"


def lower(summary: dict) -> float:
    """The interval's lower end (the mean when there is no interval)."""
    return summary["mean"] if summary["ci95"] is None else summary["ci95"][0]


def upper(summary: dict) -> float:
    return summary["mean"] if summary["ci95"] is None else summary["ci95"][1]


def band(ax, x, summaries: list[dict], label: str, **kw):
    """Plot the means of `summaries` against x on a matplotlib axis, with their 95% intervals as a band
    when every point has one (one seed: the line alone). Returns the line."""
    mean = [s["mean"] for s in summaries]
    line, = ax.plot(x, mean, label=label, **kw)
    if all(s["ci95"] is not None for s in summaries):
        ax.fill_between(x, [lower(s) for s in summaries], [upper(s) for s in summaries], alpha=0.2, color=line.get_color())
    return line


def setup_line(results: dict) -> str:
    """Seeds, mode, wall time, date, version: the line every report opens its setup with."""
    seeds = results["seeds"]
    spread = (f"{len(seeds)} seeds ({', '.join(map(str, seeds))}); ± is the half-width of the {INTERVAL}"
              if len(seeds) > 1 else f"1 seed ({seeds[0]}): no seed-to-seed interval is available")
    requested = results["config"].get("seeds_requested", seeds)
    if len(requested) > len(seeds):
        spread += (f" (**{len(seeds)} of the {len(requested)} seeds requested finished** before the run was stopped; "
                   f"missing: {', '.join(str(s) for s in requested if s not in seeds)})")
    return (f"Mode: {results['mode']}; {spread}. Wall time {results['wall_seconds']:.0f} s "
            f"({results['environment']['cpus']} CPUs); lab version {results['lab_version']}; "
            f"run {results['date']}.")


# ---- the CLI pieces every lab shares ----------------------------------------------------------
def add_arguments(parser, default_seeds: int, default_out: str) -> None:
    parser.add_argument("--seeds", type=int, default=None,
                        help=f"how many seeds (default {default_seeds}; 1 with --quick)")
    parser.add_argument("--out", default=None, help=f"where results.json, report.md and the plots go (default {default_out})")
    parser.add_argument("--report-from", metavar="RESULTS_JSON",
                        help="regenerate report.md and the plots from this results.json into --out, without running")


def positive_options(args, names) -> dict:
    """{name: value} of the integer options given on the command line (None = not given), each ≥ 1."""
    out = {}
    for name in names:
        value = getattr(args, name)
        if value is not None:
            if value < 1:
                raise GroundupError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
            out[name] = value
    return out


def print_verdicts(verdicts: dict[str, str], out, wall_seconds: float) -> None:
    """What a lab prints when its run ends: each verdict, then where the outputs went."""
    print()
    for claim, sentence in verdicts.items():
        print(f"[{claim}] {sentence}")
    print(f"\nwrote {out}/results.json, report.md and the plots in {wall_seconds:.0f} s")


def report_from(lab_module, lab: str, args, default_out: str) -> int:
    """`--report-from PATH --out DIR`: the report and plots from a results file, nothing trained."""
    results = load_results(args.report_from, lab)
    out = Path(args.out or default_out)
    path = regenerate(lab_module, results, out)
    print(f"wrote {path} and the plots from {args.report_from}")
    return 0


def doc_header(results_path: str, lab: str) -> str:
    """The first line of a generated docs/labs page: where it comes from and how to regenerate it."""
    return (f"*Generated from `{results_path}` by `make docs` (`python -m groundup.labs.docs`); do not edit by hand. "
            f"Rerun the lab with `groundup lab {lab} --out DIR`, copy DIR/results.json there, and regenerate.*\n\n")
