"""The data-wall lab, run once per seed on the harness. Every model is trained through
groundup.train.loop.fit (the project's one step, cross-entropy loss) on a fixed set of windows fed
epoch by epoch, then measured on held-out real text.

Data as windows: the corpus split is cut into non-overlapping windows of block_size + 1 tokens
(x = the first block_size, y = the last block_size); a model sees `batch_size` windows per step.
A run of S steps therefore trains on D = S·batch_size·block_size predicted tokens. Its data is a
set of windows, shuffled afresh each epoch (`EpochFeeder`): with U unique tokens the run makes
D/U epochs. Synthetic text is sampled window by window (sample.generate_batch: one real-or-previous
token as the prompt, block_size new tokens at temperature 1), so a sampled window is exactly a
training window.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from groundup.config import load_config
from groundup.errors import ConfigError, GroundupError
from groundup.labs import harness
from groundup.labs.data_wall import effective, probes, report
from groundup.sample import generate_batch
from groundup.train.engine import build_engine
from groundup.train.loop import fit
from groundup.train.schedule import lr_at
from groundup.train.trainer import load_data
from groundup.util.device import pick_device

LAB = "data-wall"
VERSION = report.VERSION  # one number, kept in report.py (labs/docs.py reads it there)
DEFAULT_SEEDS = 3
DEFAULT_OUT = "runs/data-wall"
REGIMES = ("replace", "accumulate", "real")
SENSITIVITY_EPOCHS = 16  # R* is also fitted on the repeated runs of at most this many epochs


@dataclass
class Settings:
    """Every knob of the lab. `Settings.quick()` is the tiny version --quick and the tests run.

    The default is sized for ONE core (torch threads 1): 2 layers × 64 wide, 600 steps of 16
    windows of 64 tokens for the repetition runs (D = 614,400 tokens), 400 steps per generation."""

    device: str = "cpu"
    threads: int = 1
    corpus: str = "shakespeare"
    block_size: int = 64
    batch_size: int = 16
    n_layer: int = 2
    n_embd: int = 64
    n_head: int = 4
    lr: float = 3e-3
    eval_windows: int = 512  # held-out real windows every model is scored on
    # 1. repetition
    steps: int = 600  # every repetition run: the token budget D = steps·batch_size·block_size
    epochs: tuple[int, ...] = (1, 2, 4, 8, 16, 40)  # 1 = unique data
    unique_fractions: tuple[float, ...] = (1 / 16, 1 / 8, 1 / 4, 1 / 2)  # smaller unique budgets for L(D)
    n_boot: int = 200
    # 2. synthetic data
    generations: int = 5  # after generation 0
    gen_steps: int = 400
    gen_windows: int = 1000  # windows of real (generation 0) or sampled text per generation
    regimes: tuple[str, ...] = REGIMES
    temperature: float = 1.0
    tail_share: float = 0.02
    ngram: int = 4

    @classmethod
    def quick(cls, **changes) -> "Settings":
        small = dict(n_layer=1, n_embd=32, steps=80, unique_fractions=(1 / 8, 1 / 4, 1 / 2), eval_windows=128,
                     n_boot=100, generations=3, gen_steps=40, gen_windows=200)
        return cls(**{**small, **changes})

    def validate(self) -> None:
        for name in ("steps", "gen_steps", "gen_windows", "generations", "eval_windows", "n_boot", "ngram", "threads"):
            if getattr(self, name) < 1:
                raise GroundupError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if 1 not in self.epochs or any(e < 1 for e in self.epochs) or len(self.epochs) < 2:
            raise GroundupError(f"epochs must include 1 (unique data) and at least one repeated setting ≥ 2, got {self.epochs}")
        if len(set(self.unique_fractions) | {1.0}) < 3 or not all(0 < f < 1 for f in self.unique_fractions):
            raise GroundupError("unique_fractions: at least two budgets in (0, 1) (with the full budget, three points "
                                f"for L(D) = E + B/D^β), got {self.unique_fractions}")
        unknown = set(self.regimes) - set(REGIMES)
        if unknown or not self.regimes:
            raise GroundupError(f"regimes must be some of {', '.join(REGIMES)}, got {', '.join(self.regimes)}")
        if not 0 < self.tail_share < 1:
            raise GroundupError(f"tail_share must be in (0, 1), got {self.tail_share}")
        if self.ngram > self.block_size:
            raise GroundupError(f"ngram {self.ngram} is longer than a window ({self.block_size})")


def run_config(s: Settings, seed: int, steps: int, vocab_size: int = 0):
    overrides = [f"corpus={s.corpus}", "tokenizer=char", f"block_size={s.block_size}", f"batch_size={s.batch_size}",
                 f"n_layer={s.n_layer}", f"n_embd={s.n_embd}", f"n_head={s.n_head}", f"max_steps={steps}",
                 f"learning_rate={s.lr}", f"min_lr={s.lr / 10}", f"warmup_steps={max(1, steps // 10)}",
                 f"seed={seed}", f"device={s.device}", f"threads={s.threads}", f"vocab_size={vocab_size}"]
    try:
        return load_config(None, overrides)
    except ConfigError as e:
        raise GroundupError(f"the lab's model settings are not a valid model: {e}") from None


# ---- data as windows -------------------------------------------------------------------------------
def windows(tokens, block_size: int) -> np.ndarray:
    """Non-overlapping windows (n, block_size + 1) of a token array (the tail that does not fill one is dropped)."""
    L = block_size + 1
    n = len(tokens) // L
    return np.asarray(tokens[: n * L], dtype=np.int64).reshape(n, L)


class EpochFeeder:
    """Batches of `batch_size` windows, every window once per epoch in a fresh random order (an
    epoch's remainder runs on into the next epoch's order, so every step has a full batch)."""

    def __init__(self, rows: np.ndarray, batch_size: int, seed: int):
        if len(rows) == 0:
            raise GroundupError("a training set of zero windows")
        self.rows, self.batch_size = rows, batch_size
        self.rng = np.random.default_rng(seed)
        self.order = np.empty(0, dtype=np.int64)
        self.seen = 0  # windows served

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        while len(self.order) < self.batch_size:
            self.order = np.concatenate([self.order, self.rng.permutation(len(self.rows))])
        take, self.order = self.order[: self.batch_size], self.order[self.batch_size :]
        self.seen += self.batch_size
        batch = self.rows[take]
        return batch[:, :-1], batch[:, 1:]


def train_model(s: Settings, rows: np.ndarray, steps: int, seed: int, vocab_size: int):
    """A fresh model trained for `steps` through fit on the windows `rows` (cosine schedule with 10%
    warmup, as the other labs); returns the model."""
    config = run_config(s, seed, steps, vocab_size)
    engine = build_engine(config, pick_device(s.device))
    feeder = EpochFeeder(rows, s.batch_size, seed)
    fit(engine, lambda: engine.batch(*feeder.next_batch()), steps, lr=lambda step: lr_at(step, config.train),
        grad_clip=config.train.grad_clip)
    return engine.model


@torch.no_grad()
def evaluate(model, rows: np.ndarray, rare: np.ndarray, chunk: int = 64) -> dict:
    """Mean cross-entropy over every position of the held-out windows, and over the positions whose
    target is a rare token (probes.rare_set)."""
    model.eval()
    device = model.lm_head.weight.device
    losses, targets = [], []
    for i in range(0, len(rows), chunk):
        x = torch.from_numpy(rows[i : i + chunk, :-1]).to(device)
        y = torch.from_numpy(rows[i : i + chunk, 1:]).to(device)
        logits, _ = model(x)
        losses.append(F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none").cpu().numpy())
        targets.append(rows[i : i + chunk, 1:].reshape(-1))
    losses, targets = np.concatenate(losses), np.concatenate(targets)
    return {"val_loss": float(losses.mean()), "rare_loss": probes.masked_mean(losses, rare[targets])}


def sample_windows(model, data: np.ndarray, n: int, seed: int, temperature: float, block_size: int) -> np.ndarray:
    """n windows of block_size + 1 tokens: each prompt is the first token of a random window of the
    model's own training data, then block_size tokens sampled at `temperature`."""
    rng = np.random.default_rng(seed)
    prompts = torch.from_numpy(data[rng.integers(0, len(data), n), :1].copy())
    return generate_batch(model, prompts, block_size + 1, seed=seed, temperature=temperature).numpy()


# ---- 1. repetition ---------------------------------------------------------------------------------
def repetition(s: Settings, seed: int, train: np.ndarray, val: np.ndarray, rare: np.ndarray, vocab: int, say=print) -> dict:
    """At the fixed budget of s.steps steps: unique data (epochs = 1) vs U = D/epochs unique tokens
    repeated; and unique data at the smaller budgets of s.unique_fractions (their own steps)."""
    pool = train[np.random.default_rng([seed, 1]).permutation(len(train))]
    total = s.steps * s.batch_size
    if total > len(pool):
        raise GroundupError(f"the unique-data run needs {total:,} windows of {s.block_size + 1} tokens, the {s.corpus} "
                            f"train split has {len(pool):,}: lower --steps")
    tokens_per_window = s.block_size
    repeated = {}
    for e in s.epochs:
        U = max(1, round(total / e))
        model = train_model(s, pool[:U], s.steps, seed, vocab)
        ev = evaluate(model, val, rare)
        repeated[f"epochs_{e}"] = {"epochs": e, "actual_epochs": total / U, "unique_tokens": U * tokens_per_window,
                                   "tokens": total * tokens_per_window, **ev}
        say(f"  repetition: {e} epoch(s) of {U * tokens_per_window:,} unique tokens → held-out loss {ev['val_loss']:.4f}")
    unique = {}
    for f in sorted(s.unique_fractions):
        steps = max(1, round(s.steps * f))
        n = steps * s.batch_size
        model = train_model(s, pool[:n], steps, seed, vocab)
        ev = evaluate(model, val, rare)
        unique[f"fraction_{f:g}"] = {"fraction": f, "steps": steps, "tokens": n * tokens_per_window, **ev}
        say(f"  unique data: {n * tokens_per_window:,} tokens ({steps} steps) → held-out loss {ev['val_loss']:.4f}")
    out = {"repeated": repeated, "unique": unique}
    out["vs_unique"] = {k: r["val_loss"] - repeated["epochs_1"]["val_loss"] for k, r in repeated.items() if r["epochs"] > 1}
    pts = unique_points(out)
    rep = repeated_points(out)
    per_seed_fit = effective.fit_effective(pts[0], pts[1], rep[0], rep[1], rep[2])
    out["fit"] = {"r_star": per_seed_fit["r_star"], "censored": per_seed_fit["censored"], **per_seed_fit["law"]}
    return out


def unique_points(rep_results: dict) -> tuple[np.ndarray, np.ndarray]:
    """(D, L) of the unique-data runs: the smaller budgets and the full one (epochs = 1)."""
    D = [u["tokens"] for u in rep_results["unique"].values()] + [rep_results["repeated"]["epochs_1"]["tokens"]]
    L = [u["val_loss"] for u in rep_results["unique"].values()] + [rep_results["repeated"]["epochs_1"]["val_loss"]]
    return np.array(D, dtype=float), np.array(L, dtype=float)


def repeated_points(rep_results: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(U, R, L) of the repeated runs, R = actual epochs − 1."""
    runs = [r for r in rep_results["repeated"].values() if r["epochs"] > 1]
    return (np.array([r["unique_tokens"] for r in runs], dtype=float),
            effective.repetitions([r["actual_epochs"] for r in runs]), np.array([r["val_loss"] for r in runs], dtype=float))


# ---- 2. synthetic data -----------------------------------------------------------------------------
def collapse(s: Settings, seed: int, train: np.ndarray, val: np.ndarray, rare: np.ndarray, real_share: float,
             vocab: int, say=print) -> dict:
    """Generation 0 trains on gen_windows real windows; generation g on:
         replace     the windows generation g − 1 sampled (only the newest synthetic data)
         accumulate  the real windows + every earlier generation's samples (the data grow; the steps don't)
         real        gen_windows fresh real windows (the control: no synthetic data at all)
    Every generation trains gen_steps steps from the same initial weights and samples gen_windows
    windows; each is scored on held-out real text and its own samples."""
    T, G = s.gen_windows, s.generations
    pool = train[np.random.default_rng([seed, 2]).permutation(len(train))]
    need = T * (G + 1) if "real" in s.regimes else T
    if need > len(pool):
        raise GroundupError(f"the synthetic-data runs need {need:,} real windows, the {s.corpus} train split has "
                            f"{len(pool):,}: lower --gen-windows or --generations")
    real0 = pool[:T]

    def measure(model, data, g: int, k: int) -> tuple[dict, np.ndarray]:
        ev = evaluate(model, val, rare)
        samples = sample_windows(model, data, T, seed * 100_003 + 1_009 * g + k, s.temperature, s.block_size)
        m = probes.tail_mass(samples[:, 1:], rare)
        return {**ev, "tail_mass": m, "tail_mass_ratio": m / real_share,
                "rare_types_kept": probes.rare_types_kept(samples[:, 1:], rare),
                "distinct": probes.distinct_ngrams(samples, s.ngram)}, samples

    model = train_model(s, real0, s.gen_steps, seed, vocab)
    m0, samples0 = measure(model, real0, 0, 0)
    say(f"  generation 0 (real): held-out loss {m0['val_loss']:.4f}, tail mass ratio {m0['tail_mass_ratio']:.2f}")
    out = {}
    for k, regime in enumerate(s.regimes, start=1):
        series = {key: [v] for key, v in m0.items()}
        sampled, data = [samples0], real0
        for g in range(1, G + 1):
            if regime == "replace":
                data = sampled[-1]
            elif regime == "accumulate":
                data = np.concatenate([real0, *sampled])
            else:
                data = pool[g * T : (g + 1) * T]
            model = train_model(s, data, s.gen_steps, seed, vocab)
            m, samples = measure(model, data, g, k)
            sampled.append(samples)
            for key, v in m.items():
                series[key].append(v)
        say(f"  {regime}: held-out loss by generation " + ", ".join(f"{v:.3f}" for v in series["val_loss"]))
        out[regime] = {**series, **changes(series)}
    if "replace" in out and "accumulate" in out:
        out["accumulate_minus_replace"] = out["accumulate"]["increase"] - out["replace"]["increase"]
    out["real_distinct"] = probes.distinct_ngrams(real0, s.ngram)
    return out


def changes(series: dict) -> dict:
    """Last generation minus generation 0 of each series; `tail_first` = the relative increase of the
    rare-token loss minus that of the loss on all tokens (> 0: the tail degrades first)."""
    first = {k: v[0] for k, v in series.items()}
    last = {k: v[-1] for k, v in series.items()}
    return {"increase": last["val_loss"] - first["val_loss"], "rare_increase": last["rare_loss"] - first["rare_loss"],
            "tail_first": last["rare_loss"] / first["rare_loss"] - last["val_loss"] / first["val_loss"],
            "tail_mass_change": last["tail_mass_ratio"] - first["tail_mass_ratio"],
            "distinct_change": last["distinct"] - first["distinct"]}


# ---- one seed, all seeds -----------------------------------------------------------------------------
def corpus_windows(s: Settings, seed: int):
    data = load_data(run_config(s, seed, s.steps))
    train, val = windows(data.train, s.block_size), windows(data.val, s.block_size)
    if len(val) < s.eval_windows:
        raise GroundupError(f"--eval-windows {s.eval_windows} but the {s.corpus} validation split has {len(val)} windows")
    counts = probes.token_counts(data.train, data.tokenizer.vocab_size)
    rare = probes.rare_set(counts, s.tail_share)
    return data, train, val[: s.eval_windows], counts, rare


def run_seed(s: Settings, seed: int, say=print) -> dict:
    data, train, val, counts, rare = corpus_windows(s, seed)
    vocab = data.tokenizer.vocab_size
    real_share = float(counts[rare].sum() / counts.sum())
    start = time.perf_counter()
    rep = repetition(s, seed, train, val, rare, vocab, say)
    mid = time.perf_counter()
    col = collapse(s, seed, train, val, rare, real_share, vocab, say)
    return {"repetition": rep, "collapse": col,
            "seconds": {"repetition": mid - start, "collapse": time.perf_counter() - mid}}


_TAIL: dict = {}


def tail_info(s: Settings) -> dict:
    """The rare set and its share of the real training text (the same for every seed; computed once
    per corpus and tail share)."""
    key = (s.corpus, s.tail_share)
    if key not in _TAIL:
        _TAIL.clear()
        _TAIL[key] = _tail_info(s)
    return _TAIL[key]


def _tail_info(s: Settings) -> dict:
    data = load_data(run_config(s, 0, s.steps))
    counts = probes.token_counts(data.train, data.tokenizer.vocab_size)
    rare = probes.rare_set(counts, s.tail_share)
    tokens = [data.tokenizer.decode([int(v)]) for v in np.flatnonzero(rare)]
    return {"rare_tokens": tokens, "rare_count": int(rare.sum()), "vocab_size": int(data.tokenizer.vocab_size),
            "real_share": float(counts[rare].sum() / counts.sum()), "train_tokens": int(len(data.train)),
            "val_tokens": int(len(data.val))}


def pooled_fit(s: Settings, per_seed: list[dict]) -> dict:
    """The effective-data fit on the seed means, its two-level bootstrap, and D'/D measured per
    epochs setting (each seed's loss through the pooled law's inverse)."""
    reps = [r["results"]["repetition"] for r in per_seed]
    D, _ = unique_points(reps[0])
    U, R, _ = repeated_points(reps[0])
    unique_losses = [[unique_points(r)[1][i] for r in reps] for i in range(len(D))]
    repeated_losses = [[repeated_points(r)[2][i] for r in reps] for i in range(len(U))]
    fit = effective.fit_effective(D, [np.mean(v) for v in unique_losses], U, R, [np.mean(v) for v in repeated_losses])
    law = effective.DataLaw(**fit["law"])
    boot = effective.bootstrap_effective(D, unique_losses, U, R, repeated_losses, s.n_boot, seed=0)
    budget = float(D[-1])
    measured = {}
    for i, (u, r) in enumerate(zip(U, R)):
        ratios = [float(effective.measured_effective_data(law, L) / budget) for L in repeated_losses[i]]
        measured[f"epochs_{int(round(r + 1))}"] = harness.summarize(ratios)
    noise = float(np.mean([np.std(v, ddof=1) for v in unique_losses + repeated_losses])) if len(per_seed) > 1 else 0.01
    recovery = effective.recover_r_star(law, fit["r_star"] if math.isfinite(fit["r_star"]) else 5.0, D, U, R,
                                        len(per_seed), noise, n_draws=8, tolerance=0.5)
    # Sensitivity: eq. 5 cannot make the loss rise with repetition (overfitting); R* refitted on the
    # repeated runs up to SENSITIVITY_EPOCHS epochs only, the same law.
    keep = (R + 1) <= SENSITIVITY_EPOCHS + 1e-9
    up_to = None
    if keep.any() and not keep.all():
        sub = effective.fit_r_star(law, U[keep], R[keep], [np.mean(v) for v, k in zip(repeated_losses, keep) if k])
        sub_boot = effective.bootstrap_effective(D, unique_losses, U[keep], R[keep],
                                                 [v for v, k in zip(repeated_losses, keep) if k], s.n_boot, seed=0)
        up_to = {"max_epochs": SENSITIVITY_EPOCHS, **sub, "r_star_ci95": sub_boot.get("r_star_ci95"),
                 "censored_share": sub_boot.get("censored_share"), "fitted": sub_boot.get("fitted", 0)}
    return {"r_star": fit["r_star"], "censored": fit["censored"], "law": fit["law"], "bootstrap": boot,
            "up_to": up_to, "budget_tokens": budget, "unique_tokens": [float(x) for x in U], "repetitions": [float(x) for x in R],
            "unique_budgets": [float(x) for x in D], "measured_ratio": measured, "recovery": recovery,
            "predicted_ratio": [float(x) for x in effective.effective_data(U, R, fit["r_star"]) / budget]}


def refit_results(results: dict) -> dict:
    """The same results with the pooled fit recomputed from their per-seed runs (nothing retrained):
    for a results file written before the fit was extended."""
    config = {k: v for k, v in results["config"].items() if k in Settings.__dataclass_fields__}
    s = Settings(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
    return {**results, "fit": pooled_fit(s, results["per_seed"]), "fit_recomputed": True}


def make_results(s: Settings, seeds: list[int], per_seed: list[dict], mode: str, wall_seconds: float) -> dict:
    config = {**asdict(s), "seeds_requested": seeds, "tokens_per_step": s.batch_size * s.block_size}
    extra = {"tail": tail_info(s), "fit": pooled_fit(s, per_seed)}
    return harness.make_results(LAB, VERSION, config, per_seed, mode, wall_seconds, extra)


def run_lab(settings: Settings, seeds: list[int], out: str | Path, mode: str = "default", say=print) -> dict:
    """Every seed, then results.json, report.md and the plots in `out` (rewritten after each seed)."""
    settings.validate()
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    start = time.perf_counter()

    written: list[dict] = []

    def write(done: list[dict]) -> dict:
        results = make_results(settings, seeds, done, mode, time.perf_counter() - start)
        harness.write_outputs(report, results, out)
        written[:] = [results]
        return results

    try:
        per_seed = harness.run_seeds(lambda seed: run_seed(settings, seed, say), seeds, say, after_each=write)
    finally:
        torch.set_num_threads(threads)  # the caller's setting back (a test session, a notebook)
    if written and written[0]["seeds"] == [r["seed"] for r in per_seed]:  # the last seed's write has them all:
        results = {**written[0], "wall_seconds": time.perf_counter() - start}  # no second bootstrap, just the time
        harness.write_outputs(report, results, out)
        return results
    return write(per_seed)


# ---- the command line -----------------------------------------------------------------------------
def add_arguments(parser) -> None:
    parser.add_argument("--quick", action="store_true", help="1 seed, tiny models, a few steps: well under 2 minutes")
    harness.add_arguments(parser, DEFAULT_SEEDS, DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=1337, help="the first seed; seed k is SEED + k")
    parser.add_argument("--device", default="cpu", help="cpu (default), auto, cuda, cuda:N, mps")
    parser.add_argument("--steps", type=int, help="steps of every repetition run (default 600): the token budget")
    parser.add_argument("--gen-steps", type=int, help="training steps per generation (default 400)")
    parser.add_argument("--gen-windows", type=int, help="windows of text per generation (default 1000)")
    parser.add_argument("--generations", type=int, help="generations after the real one (default 5)")
    parser.add_argument("--threads", type=int, help="torch threads (default 1)")


def run(args) -> int:
    if args.report_from:
        return harness.report_from(report, LAB, args, DEFAULT_OUT)
    changes = {"device": args.device,
               **harness.positive_options(args, ("steps", "gen_steps", "gen_windows", "generations", "threads"))}
    settings = Settings.quick(**changes) if args.quick else Settings(**changes)
    seeds = harness.lab_seeds(args, DEFAULT_SEEDS)
    out = args.out or DEFAULT_OUT
    results = run_lab(settings, seeds, out, mode="quick" if args.quick else "default")
    harness.print_verdicts(report.verdicts(results), out, results["wall_seconds"])
    return 0
