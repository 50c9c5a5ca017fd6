"""The scaling lab: train a grid of models, then fit how loss falls with compute.

The claims: loss falls as a smooth power law of compute, L ∝ C^-α with α small (≈ 0.05, Kaplan et
al. 2020), so every 10× of compute buys less; and for a fixed budget there is a best split between
model size N and data D (Hoffmann et al. 2022 find D ≈ 20·N).

    groundup lab scaling                      # the default grid, ≤ 20 min on 2 CPU cores
    groundup lab scaling --quick              # 6 tiny runs in well under a minute
    groundup lab scaling --grid "models=2x16,2x32,2x64 steps=100,400" --set corpus=python-docs

Every grid point is an ordinary training run in OUT/points/NAME: a finished point is never
retrained, an interrupted one resumes (so Ctrl-C and rerun loses at most one point's progress).
Under `torchrun --nproc_per_node=K -m groundup lab scaling …` every point trains data-parallel.

Definitions, as in Kaplan et al.: N = non-embedding parameters, D = training tokens, and
C = 6·N·D FLOPs (forward + backward ≈ 6 FLOPs per parameter per token). `C_full` also counts what
6·N·D leaves out: the tied LM head's matmul (6·V·d per token) and attention's 12·n_layer·T·d
(GPT.flops_per_token). The fits:

    frontier:  for each compute, the lowest loss any run reached;  L(C) = a·C^-α  (+ E)
    surface:   every run;                                          L(N, D) = E + A/N^α + B/D^β
"""

from __future__ import annotations

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
BASE_OVERRIDES = [
    "corpus=shakespeare", "tokenizer=bpe", "bpe_vocab_size=1024",
    "block_size=64", "batch_size=16", "positional=learned", "weight_decay=0.1",
    "eval_iters=20", "log_interval=25", "threads=1", "seed=1337",
]
BASE_LR = 1e-2  # at width ≤ 32; wider models get BASE_LR·√(32/width) (a small sweep: docs/labs/scaling.md)
DEFAULT_GRID = "models=1x16,2x16,2x32,2x48,2x64,2x96 steps=100,200,400,800,1600"
QUICK_GRID = "models=1x16,2x16,2x32 steps=100,200"
QUICK_OVERRIDES = ["batch_size=8", "eval_iters=10"]  # more updates per second: tiny models leave the unigram plateau sooner
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


def point_config(point: GridPoint, overrides: list[str] = (), checkpoint_every: int = 250) -> RunConfig:
    """The run config of one grid point: shared settings, the width's learning rate (unless --set
    gives one), the user's --set, then the point's shape. Warmup is 10% of the steps and the cosine
    decays to lr/10 over the whole run, so every token budget D gets a complete schedule (Hoffmann
    et al.: a schedule cut short overstates the loss)."""
    lr = [] if any(parse_override(o)[0].split(".")[-1] in ("learning_rate", "min_lr") for o in overrides) else \
        [f"learning_rate={learning_rate(point.n_embd)}", f"min_lr={learning_rate(point.n_embd) / 10}"]
    point_fields = {"n_layer": point.n_layer, "n_embd": point.n_embd, "n_head": point.n_head,
                    "max_steps": point.steps, "warmup_steps": max(1, point.steps // 10), "lr_decay_steps": 0,
                    "eval_interval": point.steps, "checkpoint_interval": checkpoint_every if point.steps > checkpoint_every else 0}
    return load_config(None, [*BASE_OVERRIDES, *lr, *overrides, *(f"{k}={v}" for k, v in point_fields.items())])


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
    return {"name": run_dir.name, "n_layer": m.n_layer, "n_embd": m.n_embd, "n_head": m.n_head, "steps": state["step"],
            "learning_rate": config.train.learning_rate, "N": N, "N_total": model.num_params(), "D": D,
            "C": training_flops(N, D), "C_full": model.flops_per_token() * D,
            "val_loss": evals[-1]["val_loss"], "train_loss": evals[-1]["train_loss"],
            "seconds": seconds, "tokens_per_s": D / seconds if seconds > 0 else None}


def _work(point: GridPoint) -> float:
    """Relative cost of a point (matmul FLOPs per token × steps), to start the longest first."""
    return point.steps * (12 * point.n_layer * point.n_embd**2 + 1024 * point.n_embd)


def run_grid(points: list[GridPoint], out: Path, overrides: list[str] = (), checkpoint_every: int = 250,
             progress: bool = True, jobs: int = 1) -> list[dict]:
    """Train (or reuse) every point under out/points/ and return one record per point (in the
    order of `points`). `jobs` > 1 trains that many points at once, each in its own process with
    one thread: these models' matmuls are too small to split well across threads, so on a small
    CPU one point per core keeps every core busy."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if jobs > 1 and world_size > 1:
        raise ConfigError("--jobs trains several points side by side on one machine; under torchrun every point "
                          "already uses all ranks, so drop --jobs")
    is_main = int(os.environ.get("RANK", "0")) == 0
    configs = {p: point_config(p, overrides, checkpoint_every) for p in points}
    bar = Progress(sum(p.steps for p in points), desc="scaling grid", unit="step", enabled=progress and is_main)
    records: dict[GridPoint, dict] = {}

    def finished(point: GridPoint, status: str) -> None:
        run_dir = out / "points" / point.name
        record = {**read_point(run_dir), "status": status}
        if record["steps"] < point.steps:
            raise GroundupError(f"stopped during {run_dir} (step {record['steps']} of {point.steps}); "
                                "run the same command again to resume it")
        records[point] = record
        bar.update(point.steps)
        if progress and is_main:
            speed = f", {record['tokens_per_s']:,.0f} tok/s" if record["tokens_per_s"] else ""
            bar.write(f"[{len(records)}/{len(points)}] {point.name}: N {record['N']:,}, D {record['D']:,}, "
                      f"C {record['C']:.2e} → val loss {record['val_loss']:.4f} ({status}, {record['seconds']:.1f} s{speed})")

    if jobs > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        load_data(configs[points[0]])  # tokenize once, before the workers start
        order = sorted(points, key=_work, reverse=True)
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(train_point, configs[p], out / "points" / p.name): p for p in order}
            for future in as_completed(futures):
                finished(futures[future], future.result())
    else:
        for point in points:
            finished(point, train_point(configs[point], out / "points" / point.name))
    bar.close()
    return [records[p] for p in points]


# ---- analysis ----------------------------------------------------------------------------------
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
    # Five parameters need more than five distinct runs, and at least two sizes and two budgets.
    if len(set(zip(N[idx], D[idx]))) < 6 or len(np.unique(N[idx])) < 2 or len(np.unique(D[idx])) < 2:
        return None
    return fits.fit_chinchilla(N[idx], D[idx], L[idx], starts=starts, n_best=n_best)


def _with_interval(value: float, samples: np.ndarray | None) -> dict:
    """A fitted value with its 95% bootstrap interval (NaN when no resample could be fitted)."""
    lo, hi = fits.interval(samples if samples is not None else np.array([]))
    return {"value": value, "ci95": [lo, hi]}


def analyse(records: list[dict], budget: float | None = None, n_boot: int = 200, seed: int = 0) -> dict:
    """Fit both laws (with bootstrap intervals over runs), the compute-optimal split at `budget`
    (default: the largest run's C), and the hold-out check on the largest run."""
    N = np.array([r["N"] for r in records], dtype=float)
    D = np.array([r["D"] for r in records], dtype=float)
    C = np.array([r["C"] for r in records], dtype=float)
    C_full = np.array([r["C_full"] for r in records], dtype=float)
    L = np.array([r["val_loss"] for r in records], dtype=float)
    everything = np.arange(len(records))
    budget = float(budget or C.max())
    result: dict = {"n_runs": len(records), "budget": budget,
                    "N_decades": float(np.log10(N.max() / N.min())), "D_decades": float(np.log10(D.max() / D.min()))}

    frontier = compute_frontier(C, L)
    result["frontier"] = [records[i]["name"] for i in frontier]
    power = _frontier_fit(C, L, everything)
    if power is None:
        raise GroundupError("the compute frontier has fewer than two distinct compute values; the grid needs more "
                            "models or token budgets")

    def refit_frontier(idx):
        f, f_full = _frontier_fit(C, L, idx), _frontier_fit(C_full, L, idx)
        if f is None or f_full is None:
            return None
        return {"a": f.a, "alpha": f.alpha, "alpha_full": f_full.alpha}

    boot = fits.bootstrap(len(records), refit_frontier, n_boot, seed)
    power_full = _frontier_fit(C_full, L, everything)
    result["power_law"] = {"a": power.a, "alpha": _with_interval(power.alpha, boot.get("alpha")),
                           "loss_ratio_per_decade": 10 ** -power.alpha,
                           "bootstrap": {"a": boot.get("a", np.array([])).tolist(), "alpha": boot.get("alpha", np.array([])).tolist()}}
    result["power_law_full_flops"] = {"a": power_full.a, "alpha": _with_interval(power_full.alpha, boot.get("alpha_full"))}
    fC, fL = C[frontier], L[frontier]
    if len(frontier) >= 4:
        floored = fits.fit_power_law_with_floor(fC, fL)
        result["power_law_with_floor"] = floored.to_dict()

    surface = _surface_fit(N, D, L, everything)
    if surface is not None:
        # Each resample starts from the full fit and from the grid's best point for that resample.
        starts = np.vstack([fits.chinchilla_params(surface), fits.chinchilla_starts()])

        def refit_surface(idx):
            s = _surface_fit(N, D, L, idx, starts=starts, n_best=2)
            if s is None:
                return None
            n_opt, d_opt = s.compute_optimal(budget)
            return {**s.to_dict(), "N_opt": n_opt, "D_opt": d_opt, "tokens_per_param": d_opt / n_opt}

        sboot = fits.bootstrap(len(records), refit_surface, n_boot, seed + 1)
        n_opt, d_opt = surface.compute_optimal(budget)
        result["chinchilla"] = {k: _with_interval(v, sboot.get(k)) for k, v in surface.to_dict().items()}
        result["compute_optimal"] = {"budget": budget, "inside_grid": bool(N.min() <= n_opt <= N.max()),
                                     "N": _with_interval(n_opt, sboot.get("N_opt")),
                                     "D": _with_interval(d_opt, sboot.get("D_opt")),
                                     "tokens_per_param": _with_interval(d_opt / n_opt, sboot.get("tokens_per_param")),
                                     "N_exponent": surface.beta / (surface.alpha + surface.beta)}

    # Extrapolation checks. (1) The largest run, predicted by L(N, D) fitted on the others. (2) The
    # largest run on the frontier, predicted by the frontier law fitted on the others: the frontier
    # law gives the best loss reachable at a compute, so it predicts frontier runs only.
    held = int(np.argmax(C))
    rest = everything[everything != held]
    holdout = {"name": records[held]["name"], "C": float(C[held]), "actual": float(L[held]),
               "on_frontier": records[held]["name"] in result["frontier"]}
    rest_surface = _surface_fit(N, D, L, rest)
    if rest_surface is not None:
        holdout["surface_prediction"] = float(rest_surface(N[held], D[held]))
        holdout["surface_error"] = holdout["surface_prediction"] - float(L[held])
    result["holdout"] = holdout
    top = int(frontier[-1])
    rest_power = _frontier_fit(C, L, everything[everything != top])
    if rest_power is not None:
        predicted = float(rest_power(C[top]))
        result["frontier_holdout"] = {"name": records[top]["name"], "C": float(C[top]), "actual": float(L[top]),
                                      "prediction": predicted, "error": predicted - float(L[top])}
    return result


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
    fig, ax = new_figure(f"Loss vs compute: α = {alpha['value']:.3f} [{alpha['ci95'][0]:.3f}, {alpha['ci95'][1]:.3f}]",
                         "compute C = 6·N·D (FLOPs)", "validation loss (nats/token)")
    _log_axes(ax)
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
    h = analysis.get("frontier_holdout")
    if h:
        ax.scatter([h["C"]], [h["prediction"]], marker="x", color="C3", s=80, zorder=5,
                   label=f"{h['name']} predicted without it")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_loss_vs_params(records: list[dict], analysis: dict, path: Path) -> Path:
    fig, ax = new_figure("Loss vs model size, one curve per token budget D", "non-embedding parameters N",
                         "validation loss (nats/token)", figsize=(8, 4.5))
    _log_axes(ax)
    surface = None
    if "chinchilla" in analysis:
        surface = fits.Chinchilla(**{k: v["value"] for k, v in analysis["chinchilla"].items()})
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
    return f"{entry['value']:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"


def verdict(analysis: dict) -> str:
    """What the measured α says about the claim 'α is small, 0.05–0.1'."""
    lo, hi = analysis["power_law"]["alpha"]["ci95"]
    alpha = analysis["power_law"]["alpha"]["value"]
    if not math.isfinite(lo):
        return f"α = {alpha:.3f}; too few bootstrap fits for an interval"
    if lo >= 0.05 and hi <= 0.1:
        return f"supports the claim: α = {alpha:.3f} and its whole 95% interval lies in 0.05–0.1"
    if hi < 0.05 or lo > 0.1:
        return f"does not match the claim: the 95% interval [{lo:.3f}, {hi:.3f}] lies outside 0.05–0.1"
    return f"consistent with the claim but not decisive: the 95% interval [{lo:.3f}, {hi:.3f}] overlaps 0.05–0.1"


def holdout_lines(a: dict) -> list[str]:
    """The extrapolation checks, in words."""
    lines = []
    h = a["holdout"]
    if "surface_prediction" in h:
        lines.append(f"largest run {h['name']} (C = {h['C']:.3g}) held out: val loss {h['actual']:.4f}, L(N, D) fitted "
                     f"on the rest predicts {h['surface_prediction']:.4f} (error {h['surface_error']:+.4f})")
    f = a.get("frontier_holdout")
    if f:
        lines.append(f"largest frontier run {f['name']} (C = {f['C']:.3g}) held out: val loss {f['actual']:.4f}, the "
                     f"frontier law fitted on the rest predicts {f['prediction']:.4f} (error {f['error']:+.4f})")
    return lines


LAB = "scaling"
VERSION = 2  # 2: results.json on the lab harness, report and plots regenerated from it
PLOTS = {"loss_vs_compute": "scaling_loss_vs_compute.png", "loss_vs_params": "scaling_loss_vs_params.png"}


ABOUT = """**Claim.** Language-model loss falls as a smooth power law of training compute, L ∝ C^-α with α
small (Kaplan et al. 2020: α_C ≈ 0.050), so every 10× of compute buys a fixed fraction of the loss;
and for a fixed budget there is a best split between model size N and data D (Hoffmann et al.
2022: D ≈ 20·N).

```
groundup lab scaling                  # the default grid, one seed per point (Setup below: this run's wall time)
groundup lab scaling --quick          # 6 tiny runs
groundup lab scaling --grid "models=2x16,2x32,2x64 steps=200,800" --set corpus=python-docs
groundup lab scaling --report-from runs/scaling/results.json --out DIR
```

Every grid point is an ordinary training run (resumable; a finished point is never retrained).
The fits (groundup.labs.fit, NumPy only): L(C) = a·C^-α by least squares in log-log on the compute
frontier (the runs that beat every cheaper run); L(N, D) = E + A/N^α + B/D^β on every run (Huber
loss on log L, BFGS), and from it the compute-optimal N and D at a budget; bootstrap resamples of
the runs give every fitted figure a 95% percentile interval; the largest run, and the largest
frontier run, are held out and predicted from the rest.
"""


def measured(results: dict) -> tuple[list[dict], dict]:
    """(runs, analysis) of a results document: one seed per grid point, so the first seed's."""
    data = results["per_seed"][0]["results"]
    return data["runs"], data["analysis"]


def plots(results: dict, out: str | os.PathLike) -> list[Path]:
    """Both plots the report shows, into `out`, from the results document alone."""
    records, analysis = measured(results)
    out = Path(out)
    return [plot_loss_vs_compute(records, analysis, out / PLOTS["loss_vs_compute"]),
            plot_loss_vs_params(records, analysis, out / PLOTS["loss_vs_params"])]


def report(results: dict) -> str:
    """report.md, from the results document alone."""
    records, a = measured(results)
    config = results["config"]
    grid, settings = config["grid"], config["settings"]
    p = a["power_law"]
    lines = [f"{a['n_runs']} runs spanning {a['N_decades']:.2f} decades of N and {a['D_decades']:.2f} of D, "
             f"**one seed per grid point** (seed {results['seeds'][0]}): the intervals below are bootstrap intervals "
             "over runs, not over seeds; seeds per grid point are the next step.",
             "",
             f"- Frontier fit L = a·C^-α: **α = {_fmt_ci(p['alpha'])}** (95% bootstrap interval over runs, "
             f"{config['n_boot']} resamples); each 10× of compute multiplies the loss by {p['loss_ratio_per_decade']:.3f}.",
             f"- Counting the LM head and attention FLOPs too (C_full): α = {_fmt_ci(a['power_law_full_flops']['alpha'])}.",
             f"- Claim 'α is 0.05–0.1' (Kaplan et al. 2020 measure α_C ≈ 0.050): {verdict(a)}. It would have been "
             "refuted by a 95% interval lying wholly outside 0.05–0.1."]
    if "power_law_with_floor" in a:
        fl = a["power_law_with_floor"]
        lines.append(f"- With a floor, L = E + a·C^-α: E = {fl['E']:.3f}, a = {fl['a']:.3g}, α = {fl['alpha']:.3f}.")
    if "chinchilla" in a:
        c = a["chinchilla"]
        o = a["compute_optimal"]
        lines += [f"- L(N, D) = E + A/N^α + B/D^β: E = {_fmt_ci(c['E'])}, A = {_fmt_ci(c['A'], '.3g')}, "
                  f"α = {_fmt_ci(c['alpha'])}, B = {_fmt_ci(c['B'], '.3g')}, β = {_fmt_ci(c['beta'])}.",
                  f"- Compute-optimal at C = {o['budget']:.3g} FLOPs: N = {_fmt_ci(o['N'], '.3g')}, D = {_fmt_ci(o['D'], '.3g')}, "
                  f"**{_fmt_ci(o['tokens_per_param'], '.3g')} tokens per parameter** (Hoffmann et al. 2022: ≈ 20); "
                  f"N_opt ∝ C^{o['N_exponent']:.2f}."
                  + ("" if o["inside_grid"] else " **This N lies outside the grid's range of N: an extrapolation of a "
                     "poorly determined fit, not a measurement.**")]
    lines += [f"- Extrapolation: {line}." for line in holdout_lines(a)]
    missing = [point.name for point in parse_grid(grid) if point.name not in {r["name"] for r in records}]
    if missing:
        lines.insert(1, f"\n**Partial grid: {len(records)} of {len(records) + len(missing)} points finished** before the "
                        f"run was stopped; missing: {', '.join(missing)}. The fits use the finished points only.")
    frontier = set(a["frontier"])
    rows = [[r["name"], f"{r['N']:,}", f"{r['D']:,}", f"{r['C']:.3g}", f"{r['C_full']:.3g}", f"{r['val_loss']:.4f}",
             f"{r['seconds']:.1f}", f"{r['tokens_per_s']:,.0f}" if r["tokens_per_s"] else "", "●" if r["name"] in frontier else ""]
            for r in sorted(records, key=lambda r: r["C"])]
    return "\n".join([
        "# Scaling lab\n", ABOUT,
        "## Result\n", "\n".join(lines) + "\n",
        "## Plots\n", f"![loss vs compute]({PLOTS['loss_vs_compute']})\n\n![loss vs N]({PLOTS['loss_vs_params']})\n",
        "## Runs\n", table(["run", "N", "D", "C = 6ND", "C_full", "val loss", "seconds", "tokens/s", "frontier"], rows) + "\n",
        "## Setup\n",
        setup_line(results) + f" {config['jobs']} grid point(s) trained at once.\n",
        f"Grid `{grid}`; shared settings: `{' '.join(settings)}`; learning rate 1e-2·min(1, √(32/width)) unless set; "
        "warmup 10% of steps, cosine to lr/10 over each run. N = non-embedding parameters, D = training tokens, "
        "C = 6·N·D (Kaplan et al. 2020).\n",
    ])


def write_outputs(out: Path, grid: str, records: list[dict], analysis: dict, wall_s: float, overrides: list[str] = (),
                  n_boot: int = 200, jobs: int = 1, mode: str = "custom") -> dict:
    """results.json on the harness (one seed: the grid's), then report.md and the plots from it."""
    import sys

    seed = int(load_config(None, [*BASE_OVERRIDES, *overrides]).train.seed)
    config = {"grid": grid, "settings": [*BASE_OVERRIDES, *overrides], "n_boot": n_boot, "jobs": jobs,
              "seeds_per_point": 1}
    per_seed = [{"seed": seed, "seconds": wall_s, "results": {"runs": records, "analysis": analysis}}]
    results = harness.make_results(LAB, VERSION, config, per_seed, mode, wall_s)
    harness.write_outputs(sys.modules[__name__], results, out)
    return results


def run_lab(grid: str, out: str | os.PathLike, overrides: list[str] = (), budget: float | None = None,
            n_boot: int = 200, checkpoint_every: int = 250, progress: bool = True, jobs: int = 1,
            mode: str = "custom") -> dict | None:
    """Train the grid, fit, plot, report. Returns results.json's content (None on ranks > 0)."""
    import time

    start = time.perf_counter()
    out = Path(out)
    points = parse_grid(grid)
    # Under torchrun, hold one process group for the whole grid: every point's trainer joins it.
    info, _ = init_distributed(pick_device(point_config(points[0], overrides).train.device))
    try:
        records = run_grid(points, out, list(overrides), checkpoint_every, progress, jobs)
    finally:
        shutdown(info)
    if not info.is_main:
        return None
    analysis = analyse(records, budget, n_boot)
    return write_outputs(out, grid, records, analysis, time.perf_counter() - start, list(overrides), n_boot, jobs, mode)


# ---- CLI ---------------------------------------------------------------------------------------
def add_arguments(p) -> None:
    p.add_argument("--quick", action="store_true", help=f"the tiny grid the tests use ({QUICK_GRID!r}, batch 8)")
    p.add_argument("--grid", help=f"models (LAYERSxWIDTH[xHEADS]) and step counts; default {DEFAULT_GRID!r}")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a setting for every grid point, e.g. corpus=python-docs")
    p.add_argument("--out", help="where the grid's runs and the results go (default runs/scaling, or runs/scaling-quick)")
    p.add_argument("--report-from", metavar="RESULTS_JSON",
                   help="regenerate report.md and the plots from this results.json into --out, without training")
    p.add_argument("--seeds", type=int, default=1, help="seeds per grid point: only 1 for now (the default)")
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
    if args.seeds != 1:
        raise ConfigError(f"--seeds {args.seeds}: the scaling lab runs one seed per grid point for now; drop --seeds")
    grid = args.grid or (QUICK_GRID if args.quick else DEFAULT_GRID)
    n_boot = args.bootstrap if args.bootstrap is not None else (50 if args.quick else 200)
    if n_boot < 0:
        raise ConfigError("--bootstrap must be ≥ 0")
    if args.jobs is not None and args.jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {args.jobs}")
    jobs = args.jobs or _default_jobs()
    overrides = [*(QUICK_OVERRIDES if args.quick else []), *(args.set or [])]
    mode = "quick" if args.quick else ("default" if not (args.grid or args.set or args.budget or args.bootstrap) else "custom")
    results = run_lab(grid, out, overrides, args.budget, n_boot, checkpoint_every=0 if args.quick else 250, jobs=jobs,
                      mode=mode)
    if results is None:
        return 0
    _, a = measured(results)
    print(f"α = {_fmt_ci(a['power_law']['alpha'])} (frontier of {len(a['frontier'])} runs; 95% bootstrap interval)")
    print(f"claim 'α is 0.05–0.1': {verdict(a)}")
    if "compute_optimal" in a:
        o = a["compute_optimal"]
        print(f"compute-optimal at {o['budget']:.3g} FLOPs: N ≈ {o['N']['value']:.3g}, D ≈ {o['D']['value']:.3g} "
              f"({o['tokens_per_param']['value']:.3g} tokens/parameter)"
              + ("" if o["inside_grid"] else "; outside the grid's N range, so not to be trusted"))
    for line in holdout_lines(a):
        print(line)
    print(f"wrote {out}/results.json, report.md, {', '.join(PLOTS.values())}")
    return 0

