"""The scaling lab: train a grid of models over seeds, then fit how loss falls with compute.

The claims: loss falls as a smooth power law of compute, L ∝ C^-α with α small (≈ 0.05, Kaplan et
al. 2020), so every 10× of compute buys less; and for a fixed budget there is a best split between
model size N and data D (Hoffmann et al. 2022 find D ≈ 20·N, N counting every parameter).

    groundup lab scaling --jobs 2             # the default grid × 3 seeds, ≈ 20 min on 2 quiet CPU cores
    groundup lab scaling --quick              # 6 tiny points × 2 seeds on Shakespeare, for the tests
    groundup lab scaling --grid "models=2x16,2x32,2x64 steps=100,400" --seeds 3 --set corpus=python-docs

Every (grid point, seed) is an ordinary training run in OUT/points/POINT_seedS: a finished run is
never retrained, an interrupted one resumes (so Ctrl-C and rerun loses at most one run's progress).
Under `torchrun --nproc_per_node=K -m groundup lab scaling …` every run trains data-parallel.

Definitions: N = non-embedding parameters (Kaplan et al.) or N_total = all of them (Hoffmann et al.;
Pearce & Song 2024 on why the choice matters), D = training tokens, C = 6·N·D FLOPs (forward +
backward ≈ 6 FLOPs per parameter per token; C_total = 6·N_total·D). `C_full` also counts what
6·N·D leaves out: the tied LM head's matmul (6·V·d per token) and attention's 12·n_layer·T·d
(GPT.flops_per_token). The fits, on each point's mean loss over seeds:

    frontier:  for each compute, the lowest loss any point reached;  L(C) = a·C^-α  (+ E)
    surface:   every point, in both conventions;                     L(N, D) = E + A/N^α + B/D^β

with two-level bootstrap intervals (seeds within points, then points), an identifiability check
(fits.recovery_check at the measured seed noise) that decides whether α and β are quoted, and a
true extrapolation (the top decade of compute held out and predicted).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from groundup.accounting import training_flops
from groundup.config import RunConfig, load_config, parse_override
from groundup.errors import ConfigError, GroundupError
from groundup.labs import fit as fits, harness
from groundup.labs.harness import setup_line
from groundup.model import GPT
from groundup.report.markdown import table
from groundup.report.plots import new_figure, save_figure
from groundup.train import checkpoint as ckpt
from groundup.train.distributed import init_distributed, shutdown
from groundup.train.trainer import load_data, train
from groundup.util.device import pick_device
from groundup.util.metrics import read_metrics
from groundup.util.progress import Progress

# Shared by every grid point. BPE with a small vocabulary (1,024): the token embedding (V·d) of a
# 16-wide model is then 16k parameters rather than 64k with 4,096, so embeddings don't dwarf the
# few thousand non-embedding parameters the smallest models have, and the LM head doesn't
# dominate their compute. Learned positions (GPT-2): with the √d-scaled sinusoids these tiny
# models barely move off the unigram loss in a few hundred steps (docs/labs/scaling.md).
# The corpus is the Python standard library's own source (python-stdlib: 4.2M training tokens with
# this tokenizer), so the largest token budget is still less than one pass over the training text;
# Shakespeare (1.7M BPE tokens) would have to be repeated 1.8× to reach the same D.
BASE_OVERRIDES = [
    "corpus=python-stdlib", "tokenizer=bpe", "bpe_vocab_size=1024",
    "block_size=64", "batch_size=16", "positional=learned", "weight_decay=0.1",
    "eval_iters=20", "log_interval=25", "threads=1",
]
FIRST_SEED = 1337
DEFAULT_SEEDS = 3  # per grid point: the seed-to-seed spread is the noise every fit and check is judged against
BASE_LR = 1e-2  # at width ≤ 32; wider models get BASE_LR·√(32/width) (a small sweep: docs/labs/scaling.md)
DEFAULT_GRID = "models=1x8,1x16,2x32,2x64,2x128,4x128 steps=30,100,300,1000,3000"
QUICK_GRID = "models=1x16,2x16,2x32 steps=20,60"
QUICK_SEEDS = 2
# The quick grid (for tests) reads Shakespeare: its tokenizer trains in a few seconds in a fresh cache.
QUICK_OVERRIDES = ["corpus=shakespeare", "batch_size=8", "eval_iters=5"]
HEAD_SIZE = 16  # n_head = n_embd / 16 unless the grid says LxCxH


@dataclass(frozen=True)
class GridPoint:
    n_layer: int
    n_embd: int
    n_head: int
    steps: int

    @property
    def name(self) -> str:
        return f"L{self.n_layer}_C{self.n_embd}_H{self.n_head}_S{self.steps}"


def parse_grid(text: str) -> list[GridPoint]:
    """'models=2x16,2x32x2 steps=100,400' → every (model, steps) pair. A model is LAYERSxWIDTH or
    LAYERSxWIDTHxHEADS (heads default to width / 16); fields are separated by spaces or ';'."""
    fields = {}
    for part in text.replace(";", " ").split():
        if "=" not in part:
            raise ConfigError(f"--grid: expected key=value fields such as 'models=2x16,2x32 steps=100,400', got {part!r}")
        key, value = part.split("=", 1)
        fields[key.strip()] = [v for v in value.split(",") if v]
    unknown = set(fields) - {"models", "steps"}
    if unknown or not {"models", "steps"} <= set(fields):
        raise ConfigError(f"--grid needs exactly the fields models= and steps=, e.g. {DEFAULT_GRID!r}; got {sorted(fields)}")
    models = []
    for spec in fields["models"]:
        try:
            parts = [int(p) for p in spec.lower().split("x")]
        except ValueError:
            parts = []
        if len(parts) not in (2, 3) or min(parts) <= 0:
            raise ConfigError(f"--grid: a model is LAYERSxWIDTH or LAYERSxWIDTHxHEADS, e.g. 2x32 or 2x32x2; got {spec!r}")
        layers, width = parts[0], parts[1]
        heads = parts[2] if len(parts) == 3 else max(1, width // HEAD_SIZE)
        if width % heads:
            raise ConfigError(f"--grid: model {spec!r}: width {width} is not divisible by {heads} heads; write it as {layers}x{width}xH")
        models.append((layers, width, heads))
    try:
        steps = [int(s) for s in fields["steps"]]
    except ValueError:
        raise ConfigError(f"--grid: steps must be integers, got {fields['steps']}") from None
    if min(steps) <= 0:
        raise ConfigError(f"--grid: steps must be positive, got {steps}")
    return [GridPoint(l, c, h, s) for (l, c, h) in dict.fromkeys(models) for s in sorted(set(steps))]


def learning_rate(n_embd: int) -> float:
    """lr = 1e-2 up to width 32, then ∝ 1/√width: wider Adam-trained models want smaller steps."""
    return BASE_LR * min(1.0, math.sqrt(32 / n_embd))


def point_config(point: GridPoint, overrides: list[str] = (), checkpoint_every: int = 250,
                 seed: int | None = None) -> RunConfig:
    """The run config of one grid point: shared settings, the width's learning rate (unless --set
    gives one), the user's --set, then the point's shape. Warmup is 10% of the steps and the cosine
    decays to lr/10 over the whole run, so every token budget D gets a complete schedule (Hoffmann
    et al.: a schedule cut short overstates the loss). `seed` (default: --set seed=…, else
    FIRST_SEED) seeds the initialisation and the batch order."""
    lr = [] if any(parse_override(o)[0].split(".")[-1] in ("learning_rate", "min_lr") for o in overrides) else \
        [f"learning_rate={learning_rate(point.n_embd)}", f"min_lr={learning_rate(point.n_embd) / 10}"]
    point_fields = {"n_layer": point.n_layer, "n_embd": point.n_embd, "n_head": point.n_head,
                    "max_steps": point.steps, "warmup_steps": max(1, point.steps // 10), "lr_decay_steps": 0,
                    "eval_interval": point.steps, "checkpoint_interval": checkpoint_every if point.steps > checkpoint_every else 0}
    seeded = [f"seed={seed}"] if seed is not None else ([] if any(parse_override(o)[0].split(".")[-1] == "seed" for o in overrides)
                                                         else [f"seed={FIRST_SEED}"])
    return load_config(None, [*BASE_OVERRIDES, *lr, *overrides, *seeded, *(f"{k}={v}" for k, v in point_fields.items())])


def first_seed(overrides: list[str] = ()) -> int:
    """The seed --set gives (seed=…), else FIRST_SEED: the first of the seeds every point runs."""
    seeds = [parse_override(o)[1] for o in overrides if parse_override(o)[0].split(".")[-1] == "seed"]
    return int(seeds[-1]) if seeds else FIRST_SEED


def run_name(point: GridPoint, seed: int) -> str:
    return f"{point.name}_seed{seed}"


# ---- training the grid -------------------------------------------------------------------------
# Settings that change what a run means; any difference and a stored point is a different run.
_MEANINGFUL_TRAIN = ("engine", "batch_size", "grad_accum_steps", "max_steps", "learning_rate", "min_lr", "warmup_steps",
                     "lr_decay_steps", "weight_decay", "beta1", "beta2", "eps", "grad_clip", "seed", "dtype", "eval_iters")


def _differences(stored: RunConfig, wanted: RunConfig) -> list[str]:
    a, b = stored.to_dict(), wanted.to_dict()
    out = [f"{s}.{k}: {a[s][k]!r} (stored) vs {b[s][k]!r}" for s in ("model", "data") for k in a[s]
           if a[s][k] != b[s][k] and not (s == "model" and k == "vocab_size" and b[s][k] == 0)]
    out += [f"train.{k}: {a['train'][k]!r} (stored) vs {b['train'][k]!r}" for k in _MEANINGFUL_TRAIN if a["train"][k] != b["train"][k]]
    return out


def train_point(config: RunConfig, run_dir: Path) -> str:
    """Train one grid point unless it is already done. Returns 'reused', 'resumed' or 'trained'."""
    state_path = run_dir / ckpt.STATE
    if state_path.exists():
        stored = ckpt.read_run_config(run_dir)
        diff = _differences(stored, config)
        if diff:
            raise ConfigError(f"{run_dir} holds a run with different settings ({'; '.join(diff)}); "
                              "delete that directory or pass another --out")
        if json.loads(state_path.read_text())["step"] >= config.train.max_steps:
            return "reused"
        train(config, run_dir, resume=True, progress=False)
        return "resumed"
    if int(os.environ.get("RANK", "0")) == 0:
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)  # from a start that never reached a checkpoint
    train(config, run_dir, progress=False)
    return "trained"


def read_point(run_dir: Path) -> dict:
    """A finished grid point's numbers, from its run directory alone (config, state, metrics)."""
    import torch

    config = ckpt.read_run_config(run_dir)
    state = json.loads((run_dir / ckpt.STATE).read_text())
    with torch.device("meta"):  # shapes only: no memory, no init
        model = GPT(config.model)
    evals = [r for r in read_metrics(run_dir / "metrics.jsonl") if "val_loss" in r and r["step"] == state["step"]]
    if not evals:
        raise GroundupError(f"{run_dir}: no evaluation at step {state['step']} in metrics.jsonl; delete the directory to retrain it")
    m = config.model
    N = model.num_params(non_embedding=True)
    D = int(state["tokens_seen"])
    seconds = float(state.get("elapsed_s", 0.0))
    return {"name": run_dir.name.rsplit("_seed", 1)[0], "seed": config.train.seed, "n_layer": m.n_layer, "n_embd": m.n_embd, "n_head": m.n_head, "steps": state["step"],
            "learning_rate": config.train.learning_rate, "N": N, "N_total": model.num_params(), "D": D,
            "C": training_flops(N, D), "C_total": training_flops(model.num_params(), D), "C_full": model.flops_per_token() * D,
            "val_loss": evals[-1]["val_loss"], "train_loss": evals[-1]["train_loss"],
            "seconds": seconds, "tokens_per_s": D / seconds if seconds > 0 else None}


def _work(point: GridPoint) -> float:
    """Relative cost of a point (matmul FLOPs per token × steps), to start the longest first."""
    return point.steps * (12 * point.n_layer * point.n_embd**2 + 1024 * point.n_embd)


def run_grid(points: list[GridPoint], out: Path, overrides: list[str] = (), checkpoint_every: int = 250,
             progress: bool = True, jobs: int = 1, seeds: list[int] | None = None) -> list[dict]:
    """Train (or reuse) every point with every seed under out/points/POINT_seedS and return one
    record per run (points in the order of `points`, seeds within each). `jobs` > 1 trains that many points at once, each in its own process with
    one thread: these models' matmuls are too small to split well across threads, so on a small
    CPU one point per core keeps every core busy."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if jobs > 1 and world_size > 1:
        raise ConfigError("--jobs trains several points side by side on one machine; under torchrun every point "
                          "already uses all ranks, so drop --jobs")
    is_main = int(os.environ.get("RANK", "0")) == 0
    seeds = list(seeds or [first_seed(overrides)])
    runs = [(p, s) for p in points for s in seeds]
    configs = {(p, s): point_config(p, overrides, checkpoint_every, seed=s) for p, s in runs}
    bar = Progress(sum(p.steps for p, _ in runs), desc="scaling grid", unit="step", enabled=progress and is_main)
    records: dict[tuple, dict] = {}

    def finished(run: tuple, status: str) -> None:
        point, seed = run
        run_dir = out / "points" / run_name(point, seed)
        record = {**read_point(run_dir), "status": status}
        if record["steps"] < point.steps:
            raise GroundupError(f"stopped during {run_dir} (step {record['steps']} of {point.steps}); "
                                "run the same command again to resume it")
        records[run] = record
        bar.update(point.steps)
        if progress and is_main:
            speed = f", {record['tokens_per_s']:,.0f} tok/s" if record["tokens_per_s"] else ""
            bar.write(f"[{len(records)}/{len(runs)}] {run_name(point, seed)}: N {record['N']:,}, D {record['D']:,}, "
                      f"C {record['C']:.2e} → val loss {record['val_loss']:.4f} ({status}, {record['seconds']:.1f} s{speed})")

    if jobs > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        load_data(configs[runs[0]])  # tokenize once, before the workers start
        order = sorted(runs, key=lambda r: _work(r[0]), reverse=True)
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(train_point, configs[r], out / "points" / run_name(*r)): r for r in order}
            for future in as_completed(futures):
                finished(futures[future], future.result())
    else:
        for run in runs:
            finished(run, train_point(configs[run], out / "points" / run_name(*run)))
    bar.close()
    return [records[r] for r in runs]


def training_tokens(overrides: list[str] = ()) -> int:
    """How many tokens the corpus's training split holds (tokenizing it if not cached yet)."""
    return len(load_data(point_config(GridPoint(1, 16, 1, 1), overrides)).train)


def grid_sizes(points: list[GridPoint], overrides: list[str] = ()) -> list[dict]:
    """N (non-embedding), N_total and D = steps·batch·block of every point, without training:
    what the identifiability check needs to know about a grid."""
    import torch

    out = []
    for p in points:
        config = point_config(p, overrides)
        if not config.model.vocab_size and config.data.tokenizer != "bpe":
            raise ConfigError("grid_sizes needs the vocabulary size: use tokenizer=bpe or set vocab_size")
        with torch.device("meta"):
            model = GPT(dataclasses.replace(config.model, vocab_size=config.model.vocab_size or config.data.bpe_vocab_size))
        t = config.train
        out.append({"name": p.name, "N": model.num_params(non_embedding=True), "N_total": model.num_params(),
                    "D": p.steps * t.batch_size * t.grad_accum_steps * config.model.block_size})
    return out


# ---- analysis ----------------------------------------------------------------------------------
# The two ways to count N (Pearce & Song 2024): Kaplan et al. count non-embedding parameters,
# Hoffmann et al. count them all. C = 6·N·D follows the same count.
CONVENTIONS = {"kaplan": ("N", "C", "non-embedding N (Kaplan et al. 2020)"),
               "chinchilla": ("N_total", "C_total", "total N, embeddings included (Hoffmann et al. 2022)")}
RECOVERY_TOLERANCE = 0.05  # |α̂ − α|, |β̂ − β| the identifiability check allows
RECOVERY_DRAWS = 8


def compute_frontier(C, L) -> np.ndarray:
    """Indices of the runs that beat every run with less compute: the compute-efficient frontier,
    in order of increasing C."""
    C, L = np.asarray(C, dtype=float), np.asarray(L, dtype=float)
    best, keep = math.inf, []
    for i in np.lexsort((L, C)):
        if L[i] < best:
            keep.append(i)
            best = L[i]
    return np.array(keep, dtype=int)


def _frontier_fit(C, L, idx) -> fits.PowerLaw | None:
    f = compute_frontier(C[idx], L[idx])
    if len(np.unique(C[idx][f])) < 2:
        return None
    return fits.fit_power_law(C[idx][f], L[idx][f])


def _surface_fit(N, D, L, idx, starts=None, n_best: int = 8) -> fits.Chinchilla | None:
    # Five parameters need more than five distinct points, and at least two sizes and two budgets.
    if len(set(zip(N[idx], D[idx]))) < 6 or len(np.unique(N[idx])) < 2 or len(np.unique(D[idx])) < 2:
        return None
    return fits.fit_chinchilla(N[idx], D[idx], L[idx], starts=starts, n_best=n_best)


def _with_interval(value: float, samples: np.ndarray | None) -> dict:
    """A fitted value with its 95% bootstrap interval (NaN when no resample could be fitted)."""
    lo, hi = fits.interval(samples if samples is not None else np.array([]))
    return {"value": value, "ci95": [lo, hi]}


def group_points(records: list[dict]) -> list[dict]:
    """One entry per grid point from the per-seed runs: its sizes, every seed's val loss, their
    mean, sample sd and count (sd None with one seed). Ordered by compute."""
    by_name: dict[str, list[dict]] = {}
    for r in records:
        by_name.setdefault(r["name"], []).append(r)
    points = []
    for name, runs in by_name.items():
        losses = [float(r["val_loss"]) for r in sorted(runs, key=lambda r: r.get("seed", 0))]
        first = runs[0]
        sd = float(np.std(losses, ddof=1)) if len(losses) > 1 else None
        points.append({"name": name, **{k: first[k] for k in ("n_layer", "n_embd", "N", "N_total", "D", "C", "C_full")},
                       "C_total": first.get("C_total", training_flops(first["N_total"], first["D"])),
                       "seeds": [r.get("seed") for r in sorted(runs, key=lambda r: r.get("seed", 0))],
                       "val_losses": losses, "val_loss": float(np.mean(losses)), "sd": sd, "n": len(losses)})
    return sorted(points, key=lambda p: (p["C"], p["name"]))


def measure_noise(points: list[dict]) -> dict:
    """The seed-to-seed noise: each point's sd of val loss over its seeds, pooled as
    σ = √(Σᵢ (kᵢ − 1)·sᵢ² / Σᵢ (kᵢ − 1)) over the points with ≥ 2 seeds (None if none has)."""
    with_sd = [p for p in points if p["sd"] is not None]
    if not with_sd:
        return {"pooled_sd": None, "points_with_seeds": 0}
    dof = sum(p["n"] - 1 for p in with_sd)
    pooled = math.sqrt(sum((p["n"] - 1) * p["sd"] ** 2 for p in with_sd) / dof)
    sds = [p["sd"] for p in with_sd]
    return {"pooled_sd": pooled, "median_sd": float(np.median(sds)), "min_sd": min(sds), "max_sd": max(sds),
            "points_with_seeds": len(with_sd), "seeds_per_point": sorted({p["n"] for p in points}),
            "relative_pooled_sd": pooled / float(np.mean([p["val_loss"] for p in with_sd]))}


def _surface_analysis(N, D, L, C, per_point, budget, n_boot, seed, noise_sd, seeds_per_point) -> dict | None:
    """One convention's L(N, D) fit, its two-level bootstrap, the compute-optimal split at
    `budget`, and the identifiability check at the measured noise."""
    everything = np.arange(len(N))
    surface = _surface_fit(N, D, L, everything)
    out: dict = {}
    if surface is not None:
        starts = np.vstack([fits.chinchilla_params(surface), fits.chinchilla_starts()])

        def refit(idx, means):
            s = _surface_fit(N, D, means, idx, starts=starts, n_best=2)
            if s is None:
                return None
            n_opt, d_opt = s.compute_optimal(budget)
            return {**s.to_dict(), "N_opt": n_opt, "D_opt": d_opt, "tokens_per_param": d_opt / n_opt}

        boot = fits.bootstrap_seeds_and_points(per_point, refit, n_boot, seed)
        n_opt, d_opt = surface.compute_optimal(budget)
        out["fit"] = {k: _with_interval(v, boot.get(k)) for k, v in surface.to_dict().items()}
        out["bootstrap_fits"] = int(len(boot.get("alpha", [])))
        out["compute_optimal"] = {"budget": budget, "inside_grid": bool(N.min() <= n_opt <= N.max()),
                                  "N": _with_interval(n_opt, boot.get("N_opt")), "D": _with_interval(d_opt, boot.get("D_opt")),
                                  "tokens_per_param": _with_interval(d_opt / n_opt, boot.get("tokens_per_param")),
                                  "N_exponent": surface.beta / (surface.alpha + surface.beta)}
    if noise_sd is None:
        out["identifiability"] = {"identifiable": False, "reason": "no noise measured (one seed per point)"}
    elif surface is None:
        out["identifiability"] = {"identifiable": False,
                                  "reason": "the grid cannot be fitted (needs ≥ 2 sizes N, ≥ 2 budgets D, ≥ 6 points)"}
    else:
        check = fits.recovery_check(surface, N, D, seeds_per_point, noise_sd,
                                    fit=lambda n, d, l: _surface_fit(n, d, l, np.arange(len(n))),
                                    n_draws=RECOVERY_DRAWS, tolerance=RECOVERY_TOLERANCE, seed=seed + 7)
        out["identifiability"] = {**check, "reason": "" if check["identifiable"] else
                                  f"α or β off by more than {RECOVERY_TOLERANCE} in a synthetic draw from the fitted law"}
    return out


def analyse(records: list[dict], budget: float | None = None, n_boot: int = 200, seed: int = 0) -> dict:
    """Every fit the report quotes, from the per-seed runs.

    The fits use each grid point's mean over seeds; every interval is a two-level bootstrap (seeds
    within points, then points). Per convention (CONVENTIONS): L(N, D), the compute-optimal split
    at `budget` (default: the largest run's C in that convention), and the identifiability check.
    The frontier law L(C) and Kaplan's L(N) at the largest D use non-embedding N. Extrapolation:
    every point with C > max(C)/10 is held out, the laws are fitted on the rest and predict them."""
    points = group_points(records)
    col = {k: np.array([p[k] for p in points], dtype=float) for k in ("N", "N_total", "D", "C", "C_total", "C_full", "val_loss")}
    L = col["val_loss"]
    per_point = [np.array(p["val_losses"]) for p in points]
    k = np.array([p["n"] for p in points])
    everything = np.arange(len(points))
    noise = measure_noise(points)
    result: dict = {"n_runs": len(records), "n_points": len(points), "noise": noise,
                    "N_decades": float(np.log10(col["N"].max() / col["N"].min())),
                    "N_total_decades": float(np.log10(col["N_total"].max() / col["N_total"].min())),
                    "D_decades": float(np.log10(col["D"].max() / col["D"].min())),
                    "C_decades": float(np.log10(col["C"].max() / col["C"].min()))}

    frontier = compute_frontier(col["C"], L)
    result["frontier"] = [points[i]["name"] for i in frontier]
    power = _frontier_fit(col["C"], L, everything)
    if power is None:
        raise GroundupError("the compute frontier has fewer than two distinct compute values; the grid needs more "
                            "models or token budgets")

    def refit_frontier(idx, means):
        f, f_full = _frontier_fit(col["C"], means, idx), _frontier_fit(col["C_full"], means, idx)
        if f is None or f_full is None:
            return None
        return {"a": f.a, "alpha": f.alpha, "alpha_full": f_full.alpha}

    boot = fits.bootstrap_seeds_and_points(per_point, refit_frontier, n_boot, seed)
    power_full = _frontier_fit(col["C_full"], L, everything)
    result["power_law"] = {"a": power.a, "alpha": _with_interval(power.alpha, boot.get("alpha")),
                           "loss_ratio_per_decade": 10 ** -power.alpha,
                           "bootstrap": {"a": boot.get("a", np.array([])).tolist(), "alpha": boot.get("alpha", np.array([])).tolist()}}
    result["power_law_full_flops"] = {"a": power_full.a, "alpha": _with_interval(power_full.alpha, boot.get("alpha_full"))}
    if len(frontier) >= 4:
        result["power_law_with_floor"] = fits.fit_power_law_with_floor(col["C"][frontier], L[frontier]).to_dict()

    # Kaplan's L(N) = (N_c/N)^α_N is measured where data does not limit: the largest token budget.
    at_max_d = everything[col["D"] == col["D"].max()]
    if len(np.unique(col["N"][at_max_d])) >= 2:
        def refit_ln(idx, means):
            sel = idx[np.isin(idx, at_max_d)]
            if len(np.unique(col["N"][sel])) < 2:
                return None
            return {"alpha_N": fits.fit_power_law(col["N"][sel], means[sel]).alpha}

        ln = fits.fit_power_law(col["N"][at_max_d], L[at_max_d])
        lboot = fits.bootstrap_seeds_and_points(per_point, refit_ln, n_boot, seed + 3)
        result["kaplan_L_of_N"] = {"D": float(col["D"].max()), "alpha_N": _with_interval(ln.alpha, lboot.get("alpha_N"))}

    result["conventions"] = {}
    for name, (n_key, c_key, _) in CONVENTIONS.items():
        conv_budget = float(budget or col[c_key].max())
        result["conventions"][name] = _surface_analysis(col[n_key], col["D"], L, col[c_key], per_point, conv_budget,
                                                        n_boot, seed + 1, noise["pooled_sd"], k)

    result["extrapolation"] = extrapolation(points, col, L)
    return result


def extrapolation(points: list[dict], col: dict, L: np.ndarray) -> dict:
    """Fit on every point with C ≤ max(C)/10 (C = 6·N·D, non-embedding N), predict the others (the
    top decade of compute), and set each error against that point's seed sd."""
    cut = col["C"].max() / 10
    held = np.flatnonzero(col["C"] > cut)
    rest = np.flatnonzero(col["C"] <= cut)
    out: dict = {"cut_C": float(cut), "held_out": [points[i]["name"] for i in held], "n_fit": int(len(rest)), "laws": {}}
    for name, (n_key, _, _) in CONVENTIONS.items():
        s = _surface_fit(col[n_key], col["D"], L, rest)
        if s is None:
            continue
        rows = []
        for i in held:
            pred = float(s(col[n_key][i], col["D"][i]))
            rows.append({"name": points[i]["name"], "actual": float(L[i]), "prediction": pred, "error": pred - float(L[i]),
                         "sd": points[i]["sd"], "n": points[i]["n"]})
        out["laws"][f"surface_{name}"] = _error_summary(rows)
    f_rest = _frontier_fit(col["C"], L, rest)
    if f_rest is not None:
        frontier_all = set(compute_frontier(col["C"], L).tolist())
        rows = [{"name": points[i]["name"], "actual": float(L[i]), "prediction": float(f_rest(col["C"][i])),
                 "error": float(f_rest(col["C"][i])) - float(L[i]), "sd": points[i]["sd"], "n": points[i]["n"]}
                for i in held if i in frontier_all]
        if rows:
            out["laws"]["frontier"] = _error_summary(rows)
    return out


def _error_summary(rows: list[dict]) -> dict:
    """Prediction errors against the seed spread: RMS error, the pooled seed sd of the same points,
    their ratio, and how many errors are within 2 seed sds."""
    errors = np.array([r["error"] for r in rows])
    sds = [r["sd"] for r in rows if r["sd"] is not None]
    seed_sd = math.sqrt(float(np.mean(np.square(sds)))) if sds else None
    within = sum(1 for r in rows if r["sd"] is not None and abs(r["error"]) <= 2 * r["sd"])
    return {"points": rows, "rms_error": float(np.sqrt(np.mean(errors**2))), "mean_error": float(errors.mean()),
            "seed_sd": seed_sd, "ratio": float(np.sqrt(np.mean(errors**2))) / seed_sd if seed_sd else None,
            "within_2sd": within, "n": len(rows)}


# ---- plots and report --------------------------------------------------------------------------
def _log_axes(ax) -> None:
    """Log-log axes with plain numbers on the loss axis (losses span less than a decade)."""
    from matplotlib.ticker import FormatStrFormatter

    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FormatStrFormatter("%.1f"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%.1f"))


def plot_loss_vs_compute(records: list[dict], analysis: dict, path: Path) -> Path:
    from matplotlib.colors import LogNorm

    C = np.array([r["C"] for r in records])
    L = np.array([r["val_loss"] for r in records])
    N = np.array([r["N"] for r in records])
    p = analysis["power_law"]
    alpha = p["alpha"]
    fig, ax = new_figure(f"Loss vs compute (mean ± sd over seeds): α = {alpha['value']:.3f} [{alpha['ci95'][0]:.3f}, {alpha['ci95'][1]:.3f}]",
                         "compute C = 6·N·D (FLOPs)", "validation loss (nats/token)")
    _log_axes(ax)
    sd = np.array([r["sd"] or 0.0 for r in records])
    ax.errorbar(C, L, yerr=sd, fmt="none", ecolor="gray", lw=0.8, zorder=2)
    points = ax.scatter(C, L, c=N, cmap="viridis", norm=LogNorm(), s=28, zorder=3)
    fig.colorbar(points, ax=ax, label="non-embedding parameters N")
    names = [r["name"] for r in records]
    f = [names.index(n) for n in analysis["frontier"]]
    ax.scatter(C[f], L[f], facecolors="none", edgecolors="black", s=90, lw=1.2, zorder=4, label="compute frontier")
    grid = np.logspace(np.log10(C.min()) - 0.1, np.log10(C.max()) + 0.3, 100)
    boot = np.array([a * grid**-al for a, al in zip(p["bootstrap"]["a"], p["bootstrap"]["alpha"])])
    if len(boot):
        lo, hi = np.percentile(boot, [2.5, 97.5], axis=0)
        ax.fill_between(grid, lo, hi, color="C1", alpha=0.2, lw=0, label="95% bootstrap band")
    ax.plot(grid, p["a"] * grid ** -alpha["value"], color="C1", lw=2, label=f"L = {p['a']:.3g}·C^-{alpha['value']:.3f}")
    held = analysis["extrapolation"]["laws"].get("surface_kaplan")
    if held:
        hc = [C[names.index(r["name"])] for r in held["points"]]
        ax.scatter(hc, [r["prediction"] for r in held["points"]], marker="x", color="C3", s=60, zorder=5,
                   label="top compute decade, predicted by L(N, D) fitted without it")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_loss_vs_params(records: list[dict], analysis: dict, path: Path) -> Path:
    fig, ax = new_figure("Loss vs model size, one curve per token budget D", "non-embedding parameters N",
                         "validation loss (nats/token)", figsize=(8, 4.5))
    _log_axes(ax)
    surface = None
    fitted = analysis["conventions"]["kaplan"].get("fit")
    if fitted:
        surface = fits.Chinchilla(**{k: v["value"] for k, v in fitted.items()})
    N_all = np.array([r["N"] for r in records], dtype=float)
    n_grid = np.logspace(np.log10(N_all.min()), np.log10(N_all.max()), 60)
    for k, D in enumerate(sorted({r["D"] for r in records})):
        rows = sorted((r for r in records if r["D"] == D), key=lambda r: r["N"])
        color = f"C{k % 10}"
        ax.plot([r["N"] for r in rows], [r["val_loss"] for r in rows], "o", color=color, label=f"D = {D:,} tokens")
        if surface is not None:
            ax.plot(n_grid, surface(n_grid, D), "-", color=color, lw=1, alpha=0.8)
    if surface is not None:
        ax.plot([], [], "-", color="gray", label="fit E + A/N^α + B/D^β")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save_figure(fig, path)


def _fmt_ci(entry: dict, fmt: str = ".3f") -> str:
    lo, hi = entry["ci95"]
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{entry['value']:{fmt}} (no interval: too few resamples could be fitted)"
    return f"{entry['value']:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"


def verdict(analysis: dict) -> str:
    """What the measured α_C says about the claim 'α is small, 0.05–0.1', naming exactly which
    edge of the band the interval crosses."""
    lo, hi = analysis["power_law"]["alpha"]["ci95"]
    alpha = analysis["power_law"]["alpha"]["value"]
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"α = {alpha:.3f}; too few bootstrap fits for an interval"
    if lo >= 0.05 and hi <= 0.1:
        return f"supports the claim: α = {alpha:.3f} and its whole 95% interval lies in 0.05–0.1"
    if hi < 0.05 or lo > 0.1:
        return f"does not match the claim: the 95% interval [{lo:.3f}, {hi:.3f}] lies outside 0.05–0.1"
    if lo < 0.05 and hi > 0.1:
        where = "contains the whole band and extends below 0.05 and above 0.1"
    elif lo < 0.05:
        where = "crosses only the band's lower edge, 0.05 (part of it lies below the band)"
    else:
        where = "crosses only the band's upper edge, 0.1 (part of it lies above the band)"
    return f"consistent with the claim but not decisive: the 95% interval [{lo:.3f}, {hi:.3f}] {where}"


# Published values each convention is compared with (REFERENCES.md, "Scaling laws").
KAPLAN = {"alpha_N": 0.076, "alpha_C": 0.050, "alpha_D": 0.095}
BESIROGLU = {"E": 1.8172, "A": 482.01, "alpha": 0.3478, "B": 2085.43, "beta": 0.3658}
HOFFMANN = {"E": 1.69, "A": 406.4, "alpha": 0.34, "B": 410.7, "beta": 0.28}
CHINCHILLA_TOKENS_PER_PARAM = 20.0


def _inside(entry: dict, value: float) -> str:
    lo, hi = entry["ci95"]
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "no interval"
    if lo <= value <= hi:
        return "inside our interval"
    return "below our interval" if value < lo else "above our interval"


def convention_lines(a: dict) -> list[str]:
    """Each convention's fit, its identifiability check, and its comparison with its reference."""
    lines = []
    for name, (_, _, label) in CONVENTIONS.items():
        c = a["conventions"][name]
        ident = c["identifiability"]
        head = f"**{label}.**"
        if "fit" not in c:
            lines.append(f"- {head} L(N, D) could not be fitted: {ident['reason']}; **not identifiable on this grid**.")
            continue
        f = c["fit"]
        if ident["identifiable"]:
            check = (f"identifiability check passed: {ident['draws']} synthetic draws from this fitted law on this grid, "
                     f"with σ = {ident['noise_sd']:.4f} nats per seed, gave α and β back within {ident['tolerance']} "
                     f"(worst errors {ident['max_alpha_error']:.3f} and {ident['max_beta_error']:.3f})")
            law = (f"E = {_fmt_ci(f['E'])}, A = {_fmt_ci(f['A'], '.3g')}, **α = {_fmt_ci(f['alpha'])}**, "
                   f"B = {_fmt_ci(f['B'], '.3g')}, **β = {_fmt_ci(f['beta'])}**")
        else:
            why = ident["reason"]
            if "max_alpha_error" in ident:
                why += (f": worst errors α {ident['max_alpha_error']:.3f}, β {ident['max_beta_error']:.3f} over "
                        f"{ident['draws']} draws ({ident['failed_fits']} failed fits) at σ = {ident['noise_sd']:.4f}")
            check = f"identifiability check failed ({why})"
            law = (f"E = {_fmt_ci(f['E'])}; α and β **not identifiable on this grid**, so they are not quoted "
                   f"(nor A, B, which trade off against them)")
        lines.append(f"- {head} L(N, D) = E + A/N^α + B/D^β: {law}. The {check}.")
        if ident["identifiable"]:
            widths = {k: (f[k]["ci95"][1] - f[k]["ci95"][0]) / 2 for k in ("alpha", "beta")}
            wide = [k for k, w in widths.items() if not w <= ident["tolerance"]]
            if wide:
                lines.append(f"  Yet the bootstrap interval of {' and '.join('α' if k == 'alpha' else 'β' for k in wide)} "
                             f"is wider than ±{ident['tolerance']} (half-widths α {widths['alpha']:.3f}, β {widths['beta']:.3f}): "
                             "had the losses followed this law, this grid at this noise would have pinned the exponents "
                             "down, so the width comes from the measured losses departing from the law's shape, not from "
                             "seed noise (the extrapolation below tests the shape directly).")
        o = c["compute_optimal"]
        tpp = o["tokens_per_param"]
        if ident["identifiable"]:
            where = "" if o["inside_grid"] else " **(N_opt lies outside the grid's N: an extrapolation)**"
            lines.append(f"  Compute-optimal at C = {o['budget']:.3g} FLOPs: N = {_fmt_ci(o['N'], '.3g')}, "
                         f"D = {_fmt_ci(o['D'], '.3g')}, {_fmt_ci(tpp, '.3g')} tokens per parameter{where}.")
        if name == "chinchilla" and ident["identifiable"]:
            cmp = ", ".join(f"{k} {BESIROGLU[k]:.3g} ({_inside(f[k], BESIROGLU[k])})" for k in ("E", "alpha", "beta"))
            lines.append(f"  Against Besiroglu et al. 2024's refit of Chinchilla: {cmp}; Hoffmann et al. 2022 as printed: "
                         f"α {HOFFMANN['alpha']} ({_inside(f['alpha'], HOFFMANN['alpha'])}), β {HOFFMANN['beta']} "
                         f"({_inside(f['beta'], HOFFMANN['beta'])}). Tokens per parameter at the optimum: "
                         f"{_fmt_ci(tpp, '.3g')} vs Chinchilla's ≈ {CHINCHILLA_TOKENS_PER_PARAM:.0f} "
                         f"({_inside(tpp, CHINCHILLA_TOKENS_PER_PARAM)}). E, A and B are not comparable across "
                         "corpora and tokenizers (nats per BPE-1024 token of Python source vs per token of "
                         "MassiveText); α, β and D/N are the transferable figures.")
        if name == "kaplan" and ident["identifiable"]:
            lines.append("  Kaplan's joint exponents are not this α and β: his L(N, D) = [(N_c/N)^(α_N/α_D) + D_c/D]^α_D "
                         "has no floor E; with a floor, α and β measure the reducible part only and come out larger.")
    return lines


def kaplan_lines(a: dict) -> list[str]:
    p = a["power_law"]
    lines = [f"- Frontier fit L = a·C^-α (C = 6·N·D, non-embedding N, as Kaplan et al. 2020): **α_C = {_fmt_ci(p['alpha'])}**; "
             f"Kaplan's α_C = {KAPLAN['alpha_C']} is {_inside(p['alpha'], KAPLAN['alpha_C'])}. Each 10× of compute "
             f"multiplies the loss by {p['loss_ratio_per_decade']:.3f}.",
             f"- Counting the LM head and attention FLOPs too (C_full): α = {_fmt_ci(a['power_law_full_flops']['alpha'])}.",
             f"- Claim 'α is 0.05–0.1': {verdict(a)}. It would have been refuted by a 95% interval lying wholly "
             "outside 0.05–0.1."]
    if "power_law_with_floor" in a:
        fl = a["power_law_with_floor"]
        lines.append(f"- The same frontier with a floor, L = E + a·C^-α: E = {fl['E']:.3f}, α = {fl['alpha']:.3f} (a point "
                     "fit, no interval: it shows the shape). Where a floor fits close under the losses, a pure power "
                     "law's α is only the local slope, and it falls as C grows.")
    if "kaplan_L_of_N" in a:
        k = a["kaplan_L_of_N"]
        lines.append(f"- Kaplan's L(N) ∝ N^-α_N at the largest budget D = {k['D']:,.0f} tokens (pure power law, "
                     f"non-embedding N): **α_N = {_fmt_ci(k['alpha_N'])}**; Kaplan's α_N = {KAPLAN['alpha_N']} is "
                     f"{_inside(k['alpha_N'], KAPLAN['alpha_N'])}. Kaplan measured it on models trained to convergence "
                     "(early-stopped, data not limiting); wherever the larger models here are still data-limited at this "
                     "D, the slope is flattened by it.")
    return lines


def extrapolation_lines(a: dict) -> list[str]:
    e = a["extrapolation"]
    lines = [f"- Held out: the top compute decade, {len(e['held_out'])} grid points with C > {e['cut_C']:.3g} "
             f"(= max C / 10); the laws were fitted on the other {e['n_fit']}."]
    names = {"surface_kaplan": "L(N, D), non-embedding N", "surface_chinchilla": "L(N, D), total N",
             "frontier": "frontier law L(C) (held-out frontier points only)"}
    for key, label in names.items():
        if key not in e["laws"]:
            continue
        r = e["laws"][key]
        if r["seed_sd"]:
            spread = (f"the seed sd at those points is {r['seed_sd']:.4f} (RMS), so the error is {r['ratio']:.1f}× the "
                      f"seed spread; {r['within_2sd']} of {r['n']} predictions lie within 2 seed sds")
        else:
            spread = "no seed spread to compare with (one seed)"
        lines.append(f"- {label}: RMS error {r['rms_error']:.4f} nats (mean {r['mean_error']:+.4f}) over {r['n']} points; {spread}.")
    if len(lines) == 1:
        lines.append("- Too few points below the cut to fit anything: no extrapolation.")
    for key, label in names.items():
        r = e["laws"].get(key)
        if r and r["seed_sd"]:
            held = r["within_2sd"] == r["n"]
            side = "above" if r["mean_error"] > 0 else "below"
            lines.append(f"- Verdict on {label} as a forecast: "
                         + ("it extrapolates: every held-out loss lies within 2 seed sds of its prediction."
                            if held else
                            f"it does not extrapolate to within the seed noise: its predictions lie on average "
                            f"{abs(r['mean_error']):.3f} nats {side} the measured losses, {r['ratio']:.1f}× the seed spread "
                            f"({r['within_2sd']} of {r['n']} within 2 sds). A law that describes the lower decades is "
                            "then a description, not a forecast, of the next one.")
                         + " Refuted (as a forecast) by any held-out point beyond 2 seed sds.")
    return lines


LAB = "scaling"
VERSION = 3  # 3: seeds per point, python-stdlib, both N conventions, identifiability, top-decade extrapolation
PLOTS = {"loss_vs_compute": "scaling_loss_vs_compute.png", "loss_vs_params": "scaling_loss_vs_params.png"}


ABOUT = """**Claim.** Language-model loss falls as a smooth power law of training compute, L ∝ C^-α with α
small (Kaplan et al. 2020: α_C ≈ 0.050), so every 10× of compute buys a fixed fraction of the loss;
and for a fixed budget there is a best split between model size N and data D (Hoffmann et al.
2022: D ≈ 20·N, with N counting every parameter).

```
groundup lab scaling --jobs 2         # the default grid, 3 seeds per point (Setup below: this run's wall time)
groundup lab scaling --quick          # 6 tiny points × 2 seeds, on Shakespeare, for the tests
groundup lab scaling --grid "models=2x16,2x32,2x64 steps=200,800" --seeds 3
groundup lab scaling --report-from runs/scaling/results.json --out DIR
```

Every (grid point, seed) is an ordinary training run (resumable; a finished one is never retrained).
The fits (groundup.labs.fit, NumPy only) use each point's mean loss over its seeds: L(C) = a·C^-α by
least squares in log-log on the compute frontier (the points that beat every cheaper point);
L(N, D) = E + A/N^α + B/D^β on every point (Huber loss on log L, BFGS, Hoffmann et al.'s approach 3),
once with non-embedding N (Kaplan's convention) and once with total N (Chinchilla's; Pearce & Song
2024 trace much of the gap between the two papers to this choice). Every interval is a 95%
percentile interval of a two-level bootstrap: the seeds within each point, then the points. α and β
are quoted only where the identifiability check passes: synthetic losses drawn from the fitted law
on the same grid at the measured seed noise must give α and β back within ±0.05. The top decade of
compute is held out and predicted from the rest.
"""


def measured(results: dict) -> tuple[list[dict], dict]:
    """(grid points with their per-seed losses, analysis) of a results document."""
    return results["points"], results["analysis"]


def plots(results: dict, out: str | os.PathLike) -> list[Path]:
    """Both plots the report shows, into `out`, from the results document alone."""
    points, analysis = measured(results)
    out = Path(out)
    return [plot_loss_vs_compute(points, analysis, out / PLOTS["loss_vs_compute"]),
            plot_loss_vs_params(points, analysis, out / PLOTS["loss_vs_params"])]


def _embedding_share(points: list[dict]) -> str:
    p = min(points, key=lambda p: p["N"])
    return f"{100 * (1 - p['N'] / p['N_total']):.0f}%"


def report(results: dict) -> str:
    """report.md, from the results document alone."""
    points, a = measured(results)
    config = results["config"]
    grid, settings = config["grid"], config["settings"]
    noise = a["noise"]
    corpus = f"corpus `{config['corpus']}`"
    if config.get("train_tokens"):
        epochs = config["max_tokens"] / config["train_tokens"]
        corpus += f" ({config['train_tokens']:,} training tokens)"
        corpus += (f"; the largest D is {epochs:.2f} of one pass over it, so no token is seen twice" if epochs <= 1 else
                   f"; **the largest D repeats it {epochs:.2f} times** (more than one epoch)")
    seeds = "/".join(map(str, noise.get("seeds_per_point", [1])))
    lines = [f"{a['n_points']} grid points × {seeds} seeds = {a['n_runs']} runs, spanning {a['N_decades']:.2f} decades of "
             f"non-embedding N ({a['N_total_decades']:.2f} of total N), {a['D_decades']:.2f} of D and {a['C_decades']:.2f} "
             f"of C; {corpus}.", ""]
    if noise["pooled_sd"] is not None:
        lines.append(f"- **Noise**: the sd of val loss across seeds, pooled over {noise['points_with_seeds']} points, is "
                     f"**{noise['pooled_sd']:.4f} nats** ({100 * noise['relative_pooled_sd']:.2f}% of the loss; per point "
                     f"{noise['min_sd']:.4f}–{noise['max_sd']:.4f}, median {noise['median_sd']:.4f}).")
    else:
        lines.append("- **Noise**: not measured (one seed per point).")
    lines += [*kaplan_lines(a), "", "Both parameter conventions:", "", *convention_lines(a),
              f"- Why the conventions differ (Pearce & Song 2024): with a 1,024-token vocabulary the embeddings are "
              f"{_embedding_share(points)} of the smallest model's parameters, so total N spans fewer decades than "
              "non-embedding N and the fits against it differ; Chinchilla's ≈ 20 tokens per parameter holds for total N "
              "at large N, where embeddings are a small share, and is not expected to carry over to models this small.",
              "", "Extrapolation (a true one: beyond the fitted compute range):", "", *extrapolation_lines(a)]
    missing = [pt.name for pt in parse_grid(grid) if pt.name not in {p["name"] for p in points}]
    if missing:
        lines.insert(1, f"\n**Partial grid: {len(points)} of {len(points) + len(missing)} points finished** before the "
                        f"run was stopped; missing: {', '.join(missing)}. The fits use the finished points only.")
    frontier = set(a["frontier"])
    held = set(a["extrapolation"]["held_out"])
    rows = [[p["name"], f"{p['N']:,}", f"{p['N_total']:,}", f"{p['D']:,}", f"{p['C']:.3g}", f"{p['val_loss']:.4f}",
             f"{p['sd']:.4f}" if p["sd"] is not None else "", str(p["n"]),
             "●" if p["name"] in frontier else "", "held out" if p["name"] in held else ""]
            for p in sorted(points, key=lambda p: p["C"])]
    return "\n".join([
        "# Scaling lab\n", ABOUT,
        "## Result\n", "\n".join(lines) + "\n",
        "## Plots\n", f"![loss vs compute]({PLOTS['loss_vs_compute']})\n\n![loss vs N]({PLOTS['loss_vs_params']})\n",
        "## Grid points\n",
        table(["point", "N (non-emb.)", "N (total)", "D", "C = 6ND", "val loss (mean)", "sd over seeds", "seeds",
               "frontier", "extrapolation"], rows) + "\n",
        "## Setup\n",
        setup_line(results) + f" {config['jobs']} run(s) trained at once.\n",
        f"Grid `{grid}`; shared settings: `{' '.join(settings)}`; learning rate 1e-2·min(1, √(32/width)) unless set; "
        "warmup 10% of steps, cosine to lr/10 over each run. N = non-embedding parameters unless said otherwise, "
        f"D = training tokens, C = 6·N·D (Kaplan et al. 2020). {config['n_boot']} bootstrap resamples.\n",
    ])


def write_outputs(out: Path, grid: str, records: list[dict], analysis: dict, wall_s: float, overrides: list[str] = (),
                  n_boot: int = 200, jobs: int = 1, mode: str = "custom", seeds: list[int] = (FIRST_SEED,),
                  train_tokens: int | None = None) -> dict:
    """results.json on the harness (per_seed: each seed's runs; the grid points and the analysis
    beside them), then report.md and the plots from it."""
    import sys

    results = make_results(grid, records, analysis, wall_s, overrides, n_boot, jobs, mode, seeds, train_tokens)
    harness.write_outputs(sys.modules[__name__], results, out)
    return results


def make_results(grid: str, records: list[dict], analysis: dict, wall_s: float, overrides: list[str] = (),
                 n_boot: int = 200, jobs: int = 1, mode: str = "custom", seeds: list[int] = (FIRST_SEED,),
                 train_tokens: int | None = None) -> dict:
    settings = [*BASE_OVERRIDES, *overrides]
    config = {"grid": grid, "settings": settings, "n_boot": n_boot, "jobs": jobs, "seeds_per_point": len(seeds),
              "corpus": load_config(None, settings).data.corpus, "train_tokens": train_tokens,
              "max_tokens": max(r["D"] for r in records)}
    per_seed = [{"seed": s, "seconds": sum(r.get("seconds", 0.0) for r in records if r["seed"] == s),
                 "results": {"runs": [r for r in records if r["seed"] == s]}} for s in seeds]
    return harness.make_results(LAB, VERSION, config, per_seed, mode, wall_s,
                                extra={"points": group_points(records), "analysis": analysis})


def run_lab(grid: str, out: str | os.PathLike, overrides: list[str] = (), budget: float | None = None,
            n_boot: int = 200, checkpoint_every: int = 250, progress: bool = True, jobs: int = 1,
            mode: str = "custom", n_seeds: int = DEFAULT_SEEDS) -> dict | None:
    """Train the grid with every seed, fit, plot, report. Returns results.json's content (None on ranks > 0)."""
    import time

    start = time.perf_counter()
    out = Path(out)
    points = parse_grid(grid)
    seeds = harness.seed_list(first_seed(overrides), n_seeds)
    # Under torchrun, hold one process group for the whole grid: every point's trainer joins it.
    info, _ = init_distributed(pick_device(point_config(points[0], overrides).train.device))
    try:
        records = run_grid(points, out, list(overrides), checkpoint_every, progress, jobs, seeds)
    finally:
        shutdown(info)
    if not info.is_main:
        return None
    analysis = analyse(records, budget, n_boot)
    return write_outputs(out, grid, records, analysis, time.perf_counter() - start, list(overrides), n_boot, jobs, mode,
                         seeds, training_tokens(list(overrides)))


# ---- CLI ---------------------------------------------------------------------------------------
def add_arguments(p) -> None:
    p.add_argument("--quick", action="store_true",
                   help=f"the tiny grid the tests use ({QUICK_GRID!r}, {QUICK_SEEDS} seeds, Shakespeare, batch 8)")
    p.add_argument("--grid", help=f"models (LAYERSxWIDTH[xHEADS]) and step counts; default {DEFAULT_GRID!r}")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a setting for every grid point, e.g. corpus=python-docs")
    p.add_argument("--out", help="where the grid's runs and the results go (default runs/scaling, or runs/scaling-quick)")
    p.add_argument("--report-from", metavar="RESULTS_JSON",
                   help="regenerate report.md and the plots from this results.json into --out, without training")
    p.add_argument("--seeds", type=int, default=None,
                   help=f"seeds per grid point, ≥ 2 (the noise is their spread; default {DEFAULT_SEEDS}, {QUICK_SEEDS} with --quick)")
    p.add_argument("--budget", type=float, help="compute budget (FLOPs) for the compute-optimal N and D (default: the largest run's C)")
    p.add_argument("--jobs", type=int,
                   help="grid points trained at once, one process and one thread each (default: 2 on a CPU with ≥ 2 cores, "
                        "1 with a GPU or under torchrun)")
    p.add_argument("--bootstrap", type=int, help="bootstrap resamples for the intervals (default 200, 50 with --quick)")


def _default_jobs() -> int:
    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or torch.cuda.is_available():
        return 1
    return min(2, os.cpu_count() or 1)


def run(args) -> int:
    import sys

    out = args.out or ("runs/scaling-quick" if args.quick else "runs/scaling")
    if args.report_from:
        return harness.report_from(sys.modules[__name__], LAB, args, out)
    n_seeds = args.seeds if args.seeds is not None else (QUICK_SEEDS if args.quick else DEFAULT_SEEDS)
    if n_seeds < 2:
        raise ConfigError(f"--seeds {n_seeds}: the lab measures its noise as the spread over seeds, so it needs at "
                          f"least 2 per grid point (default {DEFAULT_SEEDS})")
    grid = args.grid or (QUICK_GRID if args.quick else DEFAULT_GRID)
    n_boot = args.bootstrap if args.bootstrap is not None else (50 if args.quick else 200)
    if n_boot < 0:
        raise ConfigError("--bootstrap must be ≥ 0")
    if args.jobs is not None and args.jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {args.jobs}")
    jobs = args.jobs or _default_jobs()
    overrides = [*(QUICK_OVERRIDES if args.quick else []), *(args.set or [])]
    mode = "quick" if args.quick else ("default" if not (args.grid or args.set or args.budget or args.bootstrap
                                                         or args.seeds is not None) else "custom")
    results = run_lab(grid, out, overrides, args.budget, n_boot, checkpoint_every=0 if args.quick else 250, jobs=jobs,
                      mode=mode, n_seeds=n_seeds)
    if results is None:
        return 0
    _, a = measured(results)
    if a["noise"]["pooled_sd"] is not None:
        print(f"noise: sd of val loss over seeds {a['noise']['pooled_sd']:.4f} nats (pooled)")
    print(f"α_C = {_fmt_ci(a['power_law']['alpha'])} (frontier of {len(a['frontier'])} points; 95% bootstrap interval)")
    print(f"claim 'α is 0.05–0.1': {verdict(a)}")
    for line in [*convention_lines(a), *extrapolation_lines(a)]:
        print(line.replace("**", ""))
    print(f"wrote {out}/results.json, report.md, {', '.join(PLOTS.values())}")
    return 0

