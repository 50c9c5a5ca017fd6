"""The geometry lab, run once per seed on the harness: positions, heads, embeddings."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from groundup.config import load_config
from groundup.data import BatchSampler
from groundup.labs import harness
from groundup.labs.geometry import embeddings, heads, positions, report
from groundup.train.engine import build_engine
from groundup.train.loop import Hooks, fit
from groundup.train.schedule import lr_at
from groundup.train.trainer import fixed_batches, load_data, resolve_vocab
from groundup.util.device import pick_device

LAB = "geometry"
VERSION = 1
DEFAULT_SEEDS = 3
DEFAULT_OUT = "runs/geometry"


@dataclass
class Settings:
    """Every knob of the lab. `Settings.quick()` is the tiny version the tests run."""

    device: str = "cpu"
    # 1. sinusoidal positions: a table of T positions × C dimensions (T − k > C for the least-squares control)
    pe_positions: int = 512
    pe_dims: int = 64
    pe_max_offset: int = 128
    # 2. heads: a character-level Shakespeare model (configs/shakespeare_char.toml, smaller and shorter)
    head_layers: int = 2
    head_heads: int = 4
    head_embd: int = 64
    head_block: int = 64
    head_batch: int = 16
    head_steps: int = 2000
    head_lr: float = 3e-3
    head_checkpoints: int = 5  # scores measured at step 0 and this many times during training
    head_eval_sequences: int = 32
    # 3. embeddings: a BPE Shakespeare model (configs/shakespeare_bpe.toml, smaller vocabulary and model)
    bpe_vocab: int = 512
    emb_layers: int = 2
    emb_heads: int = 4
    emb_embd: int = 64
    emb_block: int = 64
    emb_batch: int = 16
    emb_steps: int = 1000
    emb_lr: float = 3e-3
    min_count: int = 20  # tokens seen fewer times in the training split are left out of the usage measures
    eval_batches: int = 8

    @classmethod
    def quick(cls, **changes) -> "Settings":
        small = dict(head_embd=32, head_batch=16, head_steps=30, head_checkpoints=2, head_eval_sequences=8,
                     bpe_vocab=300, emb_embd=32, emb_batch=16, emb_steps=30, eval_batches=2, pe_positions=256,
                     pe_max_offset=64)
        return cls(**{**small, **changes})


class _MeasureAtStart(Hooks):
    """Measure the untrained model just before the first step (fit's on_every runs only after steps)."""

    def __init__(self, measure):
        self.measure = measure

    def before_step(self, step: int) -> None:
        if step == 0:
            self.measure(0)


def train_model(overrides: list[str], seed: int, steps: int, device: str, eval_batches: int, every: int, measure):
    """A model of the given config trained for `steps` through the project's loop (fit → train_step),
    with measure(step, model) at step 0 and after every `every` steps. Returns (model, config, val_loss)."""
    config = load_config(None, overrides + [f"seed={seed}", f"max_steps={steps}", f"device={device}",
                                            f"warmup_steps={max(1, min(100, steps // 10))}"])
    data = load_data(config)
    config = resolve_vocab(config, data)
    engine = build_engine(config, pick_device(device))
    sampler = BatchSampler(data.train, config.model.block_size, config.train.batch_size, seed=seed)
    fit(engine, lambda: engine.batch(*sampler.next_batch()), steps, lr=lambda step: lr_at(step, config.train),
        grad_clip=config.train.grad_clip, hooks=_MeasureAtStart(lambda step: measure(step, engine.model)),
        every=every, on_every=lambda step: measure(step, engine.model))
    val_loss = engine.evaluate(fixed_batches(data.val, config, seed, engine, eval_batches))
    return engine.model, config, float(val_loss)


def heads_experiment(s: Settings, seed: int) -> dict:
    """Train the character model; score every head at step 0 and at each checkpoint."""
    overrides = ["corpus=shakespeare", "tokenizer=char", f"n_layer={s.head_layers}", f"n_head={s.head_heads}",
                 f"n_embd={s.head_embd}", f"block_size={s.head_block}", f"batch_size={s.head_batch}",
                 f"learning_rate={s.head_lr}", f"min_lr={s.head_lr / 10}"]
    data = load_data(load_config(None, overrides))
    L = s.head_block // 2
    text_x, _ = BatchSampler(data.val, s.head_block, s.head_eval_sequences, seed=seed, split="val").batch(0)
    text = torch.from_numpy(text_x)
    letters = [i for i in range(data.tokenizer.vocab_size) if data.tokenizer.decode([i]).isalpha()]
    repeated = heads.repeated_random_tokens(letters, L, s.head_eval_sequences, seed)  # random letters, twice
    checkpoints = []

    def measure(step: int, model) -> None:
        device = model.lm_head.weight.device
        scores = heads.head_scores(model, text.to(device), repeated.to(device))
        kinds = heads.classify(scores)
        checkpoints.append({"step": step, "scores": scores, "kinds": kinds, "summary": heads.summarize_heads(scores, kinds)})

    every = max(1, s.head_steps // s.head_checkpoints)
    model, _, val_loss = train_model(overrides, seed, s.head_steps, s.device, s.eval_batches, every, measure)
    return {"val_loss": val_loss, "steps": [c["step"] for c in checkpoints],
            "over_training": [c["summary"] for c in checkpoints], "final": checkpoints[-1]["summary"],
            "chance": heads.chance_scores(s.head_block, L), "n_params": model.num_params(),
            "detail": {"checkpoints": [{"step": c["step"], "scores": c["scores"], "kinds": c["kinds"]} for c in checkpoints]}}


def embeddings_experiment(s: Settings, seed: int) -> dict:
    """Train the BPE model; measure its token embeddings against their untrained initialisation."""
    overrides = ["corpus=shakespeare", "tokenizer=bpe", f"bpe_vocab_size={s.bpe_vocab}", "pattern=cl100k",
                 f"n_layer={s.emb_layers}", f"n_head={s.emb_heads}", f"n_embd={s.emb_embd}",
                 f"block_size={s.emb_block}", f"batch_size={s.emb_batch}", f"learning_rate={s.emb_lr}",
                 f"min_lr={s.emb_lr / 10}"]
    data = load_data(load_config(None, overrides))
    initial = {}

    def keep_initial(step: int, model) -> None:
        if step == 0:
            initial["E"] = model.token_embedding.weight.detach().double().cpu().numpy().copy()

    model, config, val_loss = train_model(overrides, seed, s.emb_steps, s.device, s.eval_batches, s.emb_steps, keep_initial)
    E = model.token_embedding.weight.detach().double().cpu().numpy()
    tok = data.tokenizer
    result = embeddings.measure(E, initial["E"], data.train, lambda i: tok.token_bytes(i).decode("utf-8", "replace"),
                                s.min_count)
    return {"val_loss": val_loss, "vocab_size": config.model.vocab_size, **result}


def run_seed(s: Settings, seed: int) -> dict:
    """Every measurement once, with this seed."""
    return {"positions": positions.measure(seed, s.pe_positions, s.pe_dims, s.pe_max_offset),
            "heads": heads_experiment(s, seed), "embeddings": embeddings_experiment(s, seed)}


def make_results(settings: Settings, seeds: list[int], per_seed: list[dict], mode: str, wall_seconds: float) -> dict:
    """results.json: each seed's per-head scores, neighbour lists and projection go to "detail", out
    of what the harness aggregates (head k of one seed is not head k of another)."""
    detail, plain = [], []
    for r in per_seed:
        parts = {part: {k: v for k, v in r["results"][part].items() if k != "detail"} for part in r["results"]}
        plain.append({**r, "results": parts})
        detail.append({"seed": r["seed"], **{part: r["results"][part]["detail"] for part in ("heads", "embeddings")}})
    config = {**asdict(settings), "thresholds": heads.THRESHOLDS, "seeds_requested": seeds}
    return harness.make_results(LAB, VERSION, config, plain, mode, wall_seconds, {"detail": detail})


def run_lab(settings: Settings, seeds: list[int], out: str | Path, mode: str = "default", say=print) -> dict:
    """Every seed, then results.json, report.md and the plots in `out` (rewritten after each seed, so
    a run stopped early keeps the seeds it finished)."""
    start = time.perf_counter()

    def write(done: list[dict]) -> dict:
        results = make_results(settings, seeds, done, mode, time.perf_counter() - start)
        harness.write_outputs(report, results, out)
        return results

    per_seed = harness.run_seeds(lambda seed: run_seed(settings, seed), seeds, say, after_each=write)
    return write(per_seed)


# ---- the command line -----------------------------------------------------------------------------
def add_arguments(parser) -> None:
    parser.add_argument("--quick", action="store_true", help="1 seed, tiny models: well under a minute")
    harness.add_arguments(parser, DEFAULT_SEEDS, DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=1337, help="the first seed; seed k is SEED + k")
    parser.add_argument("--device", default="cpu", help="cpu (default), auto, cuda, cuda:N, mps")
    parser.add_argument("--head-steps", type=int, help="training steps of the character model whose heads are scored")
    parser.add_argument("--emb-steps", type=int, help="training steps of the BPE model whose embeddings are measured")


def run(args) -> int:
    if args.report_from:
        return harness.report_from(report, LAB, args, DEFAULT_OUT)
    changes = {"device": args.device, **harness.positive_options(args, ("head_steps", "emb_steps"))}
    settings = Settings.quick(**changes) if args.quick else Settings(**changes)
    seeds = harness.lab_seeds(args, DEFAULT_SEEDS)
    out = args.out or DEFAULT_OUT
    results = run_lab(settings, seeds, out, mode="quick" if args.quick else "default")
    harness.print_verdicts(report.verdicts(results), out, results["wall_seconds"])
    return 0
