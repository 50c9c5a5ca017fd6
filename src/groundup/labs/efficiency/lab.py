"""The efficiency lab, on the harness: models trained once, then per seed the calibration draws of
the quantizer and the student runs of distillation."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from groundup.config import load_config
from groundup.data import BatchSampler
from groundup.labs import harness
from groundup.labs.efficiency import measures, methods, report
from groundup.quantize import calibration_batches
from groundup.sample import SamplingSettings, generate
from groundup.train.engine import build_engine, evaluate
from groundup.train.loop import fit
from groundup.train.schedule import lr_at
from groundup.train.trainer import fixed_batches, load_data, resolve_vocab
from groundup.util.device import pick_device

LAB = "efficiency"
VERSION = 1
DEFAULT_SEEDS = 3
DEFAULT_OUT = "runs/efficiency"
EVAL_SEED = 0  # every model is scored on the same validation windows (differences are paired)

# configs/shakespeare_bpe.toml as overrides (tests/test_lab_efficiency.py checks they agree with the file)
BPE_RECIPE = ["corpus=shakespeare", "tokenizer=bpe", "bpe_vocab_size=4096", "pattern=cl100k", "block_size=128",
              "n_layer=4", "n_head=4", "n_embd=128", "ffn_mult=4", "activation=gelu", "positional=rope", "norm=pre",
              "bias=true", "dropout=0.0", "tie_embeddings=true", "batch_size=12", "learning_rate=1e-3", "min_lr=1e-4",
              "weight_decay=0.1", "beta2=0.99", "grad_clip=1.0"]
SHIPPED_STEPS = 2000  # max_steps of configs/shakespeare_bpe.toml


@dataclass
class Settings:
    """Every knob of the lab. `Settings.quick()` is the tiny version the tests run."""

    device: str = "cpu"
    threads: int = 1  # torch threads (the budget is stated for 1)
    bpe_vocab: int = 4096
    # the models: "bpe" is the shipped recipe (fewer steps); "large" is wider and deeper
    bpe_layers: int = 4
    bpe_heads: int = 4
    bpe_embd: int = 128
    bpe_steps: int = 500
    large_layers: int = 4
    large_heads: int = 8
    large_embd: int = 256  # every group size (32, 64, 128) divides the widths
    large_steps: int = 500
    # the student (the teacher is the "bpe" model)
    student_layers: int = 2
    student_heads: int = 2
    student_embd: int = 32
    # 500 as the teacher's: at 250 a scratch student was still near the unigram loss (6.62 vs the teacher's 5.35)
    student_steps: int = 500
    # quantization
    group_sizes: tuple = (32, 64, 128)
    calibration_windows: int = 128
    eval_batches: int = 16
    decode_tokens: int = 64
    # distillation
    temperatures: tuple = (1.0, 2.0, 4.0)
    reverse_temperature: float = 1.0
    alpha: float = 0.5
    sequence_pool: int = 768  # teacher-written windows the sequence-level student trains on (reused)
    sequence_prompt: int = 16  # corpus tokens each teacher window starts from
    # distil then quantize
    dq_temperature: float = 2.0  # the distilled student quantized in part 3 (chosen before any run)
    dq_group_size: int = 32
    block_size: int = 128
    batch_size: int = 12

    @classmethod
    def quick(cls, **changes) -> "Settings":
        small = dict(bpe_vocab=300, bpe_layers=2, bpe_heads=2, bpe_embd=64, bpe_steps=8, large_layers=1, large_heads=2,
                     large_embd=64, large_steps=8, student_layers=1, student_heads=1, student_embd=32, student_steps=6, calibration_windows=4,
                     eval_batches=2, decode_tokens=4, temperatures=(1.0, 2.0), sequence_pool=8, sequence_prompt=4,
                     block_size=16, batch_size=4, group_sizes=(32,), dq_group_size=32)
        return cls(**{**small, **changes})

    def recipe(self, name: str) -> list[str]:
        """The config overrides of the teacher ("bpe"), the larger model ("large") or the student."""
        base = BPE_RECIPE + [f"bpe_vocab_size={self.bpe_vocab}", f"block_size={self.block_size}",
                             f"batch_size={self.batch_size}", f"device={self.device}"]
        shape = {"bpe": [f"n_layer={self.bpe_layers}", f"n_head={self.bpe_heads}", f"n_embd={self.bpe_embd}"],
                 "large": [f"n_layer={self.large_layers}", f"n_head={self.large_heads}", f"n_embd={self.large_embd}"],
                 "student": [f"n_layer={self.student_layers}", f"n_head={self.student_heads}", f"n_embd={self.student_embd}"]}
        return base + shape[name]


class Lab:
    """The data, the fixed evaluation windows and the trained models of one run."""

    def __init__(self, s: Settings):
        self.s = s
        self.device = pick_device(s.device)
        self.data = load_data(load_config(None, s.recipe("bpe")))
        self.models: dict[str, tuple] = {}

    def config(self, name: str, seed: int, steps: int):
        c = load_config(None, self.s.recipe(name) + [f"seed={seed}", f"max_steps={steps}",
                                                     f"warmup_steps={max(1, min(100, steps // 10))}"])
        return resolve_vocab(c, self.data)

    def val_batches(self, config) -> list:
        return fixed_batches(self.data.val, config, EVAL_SEED, self.device, self.s.eval_batches)

    def val_loss(self, model, config) -> float:
        return float(evaluate(model, self.val_batches(config), None, self.device))

    def train(self, name: str, seed: int, steps: int, loss=None, next_batch=None):
        """A model trained through the project's loop (fit → train_step): the recipe's warmup + cosine
        schedule, batches from the training split (or `next_batch`), `loss` (None = cross-entropy)."""
        config = self.config(name, seed, steps)
        engine = build_engine(config, self.device)
        if next_batch is None:
            sampler = BatchSampler(self.data.train, config.model.block_size, config.train.batch_size, seed=seed)
            next_batch = sampler.next_batch
        fit(engine, lambda: engine.batch(*next_batch()), steps, lr=lambda step: lr_at(step, config.train),
            grad_clip=config.train.grad_clip, loss=loss)
        engine.model.eval()
        return engine.model, config

    def trained(self, name: str, seed: int):
        """The "bpe" and "large" models are trained once per run (with the first seed) and shared.
        Returns (model, config, validation loss, training seconds)."""
        if name not in self.models:
            steps = self.s.bpe_steps if name == "bpe" else self.s.large_steps
            start = time.perf_counter()
            model, config = self.train(name, seed, steps)
            self.models[name] = (model, config, self.val_loss(model, config), time.perf_counter() - start)
        return self.models[name]

    def plain_loss(self, model, config) -> float:
        """Validation loss of the model's plain copy (without the fused training kernels): the base
        every quantized copy, also plain, is compared with (their rounding differs by ~1e-6)."""
        return self.val_loss(methods.plain_copy(model), config)

    def calibration(self, config, seed: int) -> list[torch.Tensor]:
        """GPTQ's calibration: `calibration_windows` windows of the training split drawn with `seed`
        (the only randomness in quantization), in batches of up to 32 (as `groundup quantize` draws them)."""
        return [x.to(self.device) for x in calibration_batches(self.data.train, config.model.block_size,
                                                               self.s.calibration_windows, 10_000 + seed, 32)]


def decode_tokens_per_s(model, tokens: int, repeats: int = 3) -> float:
    """Batch-1 greedy decoding with the KV cache (groundup.sample.generate): tokens per second of the
    fastest of `repeats` runs (the least disturbed by whatever else the machine does)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        n = sum(1 for _ in generate(model, [0], SamplingSettings(max_new_tokens=tokens, temperature=0.0)))
        best = min(best, time.perf_counter() - start)
    return n / best


# ---- 1. the quantization frontier ------------------------------------------------------------------
def variants(s: Settings) -> list[dict]:
    """bits × method × group size (int8 is per channel: no group)."""
    out = [{"bits": 8, "method": m, "group_size": None} for m in methods.METHODS]
    out += [{"bits": 4, "method": m, "group_size": g} for g in s.group_sizes for m in methods.METHODS]
    return out


def variant_name(v: dict) -> str:
    return f"int{v['bits']}-{v['method']}" + (f"-g{v['group_size']}" if v["group_size"] else "")


def quantize_and_score(lab: Lab, model, config, base_loss: float, v: dict, seed: int) -> dict:
    calib = lab.calibration(config, seed) if v["method"] == "gptq" else None
    q, nbytes = methods.quantize(model, v["bits"], v["method"], v["group_size"], calib)
    loss = lab.val_loss(q, config)
    return {"val_loss": loss, **measures.delta(loss, base_loss), "weight_bytes": nbytes,
            "decode_tokens_per_s": decode_tokens_per_s(q, lab.s.decode_tokens)}


def frontier_experiment(lab: Lab, seed: int, model_seed: int) -> dict:
    out = {}
    for name in ("bpe", "large"):
        model, config, _, seconds = lab.trained(name, model_seed)
        base = lab.plain_loss(model, config)
        entry = {"n_params": model.num_params(), "val_loss": base, "weight_bytes": methods.weight_bytes(model),
                 "decode_tokens_per_s": decode_tokens_per_s(model, lab.s.decode_tokens), "train_seconds": seconds,
                 "variants": {}}
        for v in variants(lab.s):
            entry["variants"][variant_name(v)] = quantize_and_score(lab, model, config, base, v, seed)
        out[name] = entry
    return out


# ---- 2. distillation --------------------------------------------------------------------------------
def student_runs(s: Settings) -> list[dict]:
    """The students: trained from scratch, and each distillation (all on the same steps and batch size)."""
    runs = [{"name": "scratch", "kind": "scratch"}]
    runs += [{"name": f"forward-T{t:g}", "kind": "forward", "temperature": t} for t in s.temperatures]
    runs += [{"name": f"reverse-T{s.reverse_temperature:g}", "kind": "reverse", "temperature": s.reverse_temperature}]
    runs += [{"name": "sequence", "kind": "sequence"}]
    return runs


def sequence_batches(lab: Lab, teacher, seed: int):
    """next_batch over a pool of windows the teacher wrote: a corpus prompt, then its own samples."""
    s = lab.s
    starts = np.random.default_rng([seed, 7]).integers(0, len(lab.data.train) - s.sequence_prompt, s.sequence_pool)
    prompts = np.asarray(lab.data.train[starts[:, None] + np.arange(s.sequence_prompt)], dtype=np.int64)
    pool = np.concatenate([methods.teacher_samples(teacher, prompts[i : i + 128], s.block_size + 1, seed + i)
                           for i in range(0, len(prompts), 128)])
    rng = np.random.default_rng([seed, 8])

    def next_batch():
        rows = pool[rng.integers(0, len(pool), s.batch_size)]
        return rows[:, :-1], rows[:, 1:]

    return next_batch


def distill_experiment(lab: Lab, seed: int, model_seed: int) -> dict:
    s = lab.s
    teacher, t_config, teacher_loss, _ = lab.trained("bpe", model_seed)
    students, models = {}, {}
    for run in student_runs(s):
        start = time.perf_counter()
        if run["kind"] == "scratch":
            model, config = lab.train("student", seed, s.student_steps)
        elif run["kind"] == "sequence":
            model, config = lab.train("student", seed, s.student_steps, next_batch=sequence_batches(lab, teacher, seed))
        else:
            loss = methods.distillation_loss(teacher, run["kind"], run["temperature"], s.alpha)
            model, config = lab.train("student", seed, s.student_steps, loss=loss)
        models[run["name"]] = (model, config)
        students[run["name"]] = {"val_loss": lab.val_loss(model, config), "seconds": time.perf_counter() - start}
    scratch = students["scratch"]["val_loss"]
    for name, r in students.items():
        r["gap_closed"] = measures.gap_closed(scratch, r["val_loss"], teacher_loss)
    student = models["scratch"][0]
    return {"teacher_loss": teacher_loss, "teacher_params": teacher.num_params(), "student_params": student.num_params(),
            "param_ratio": teacher.num_params() / student.num_params(), "students": students}, models


# ---- 3. distil, then quantize ---------------------------------------------------------------------
DQ_PRECISIONS = (("int8", 8, "rtn"), ("int4", 4, "gptq"))  # int8: RTN per channel; int4: GPTQ, dq_group_size


def distil_quantize_experiment(lab: Lab, seed: int, students: dict, frontier: dict) -> dict:
    """Validation loss and weight bytes at fp32, int8 and int4 of the scratch and the distilled
    student, beside the teacher and the larger model (their points taken from the frontier)."""
    s = lab.s
    out = {}
    for name, model in (("teacher", "bpe"), ("large", "large")):
        e = frontier[model]
        points = {"fp32": {"val_loss": e["val_loss"], "weight_bytes": e["weight_bytes"]}}
        for label, bits, method in DQ_PRECISIONS:
            v = e["variants"][variant_name({"bits": bits, "method": method, "group_size": s.dq_group_size if bits == 4 else None})]
            points[label] = {"val_loss": v["val_loss"], "weight_bytes": v["weight_bytes"]}
        out[name] = points
    for name, (model, config) in (("scratch", students["scratch"]), ("distilled", students[f"forward-T{s.dq_temperature:g}"])):
        points = {"fp32": {"val_loss": lab.plain_loss(model, config), "weight_bytes": methods.weight_bytes(model)}}
        for label, bits, method in DQ_PRECISIONS:
            calib = lab.calibration(config, seed) if method == "gptq" else None
            q, nbytes = methods.quantize(model, bits, method, s.dq_group_size, calib)
            points[label] = {"val_loss": lab.val_loss(q, config), "weight_bytes": nbytes}
        out[name] = points
    return out


def run_seed(lab: Lab, seed: int, model_seed: int) -> dict:
    distill, students = distill_experiment(lab, seed, model_seed)
    frontier = frontier_experiment(lab, seed, model_seed)
    return {"frontier": frontier, "distill": distill,
            "distil_quantize": distil_quantize_experiment(lab, seed, students, frontier)}


def make_results(s: Settings, seeds: list[int], per_seed: list[dict], mode: str, wall_seconds: float) -> dict:
    config = {**asdict(s), "seeds_requested": seeds, "model_seed": seeds[0], "shipped_steps": SHIPPED_STEPS,
              "variants": [variant_name(v) for v in variants(s)], "students": [r["name"] for r in student_runs(s)],
              "implementation": methods.IMPLEMENTATION, "eval_tokens": s.eval_batches * s.batch_size * s.block_size}
    return harness.make_results(LAB, VERSION, config, per_seed, mode, wall_seconds)


def run_lab(s: Settings, seeds: list[int], out: str | Path, mode: str = "default", say=print) -> dict:
    """Every seed, then results.json, report.md and the plots in `out` (rewritten after each seed)."""
    start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(s.threads)
    try:
        lab = Lab(s)

        def write(done: list[dict]) -> dict:
            results = make_results(s, seeds, done, mode, time.perf_counter() - start)
            harness.write_outputs(report, results, out)
            return results

        per_seed = harness.run_seeds(lambda seed: run_seed(lab, seed, seeds[0]), seeds, say, after_each=write)
        return write(per_seed)
    finally:
        torch.set_num_threads(threads)


# ---- the command line -----------------------------------------------------------------------------
def add_arguments(parser) -> None:
    parser.add_argument("--quick", action="store_true", help="1 seed, tiny models: seconds")
    harness.add_arguments(parser, DEFAULT_SEEDS, DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=1337, help="the first seed; seed k is SEED + k (the shared "
                        "models train with the first)")
    parser.add_argument("--device", default="cpu", help="cpu (default), auto, cuda, cuda:N, mps")
    parser.add_argument("--threads", type=int, help="torch threads (default 1: the budget is stated for it)")
    for name, what in (("bpe-steps", "the shipped-recipe BPE model (the teacher)"), ("large-steps", "the larger model"),
                       ("student-steps", "every student")):
        parser.add_argument(f"--{name}", type=int, help=f"training steps of {what}")


def run(args) -> int:
    if args.report_from:
        return harness.report_from(report, LAB, args, DEFAULT_OUT)
    changes = {"device": args.device, **harness.positive_options(args, ("bpe_steps", "large_steps", "student_steps", "threads"))}
    s = Settings.quick(**changes) if args.quick else Settings(**changes)
    seeds = harness.lab_seeds(args, DEFAULT_SEEDS)
    out = args.out or DEFAULT_OUT
    results = run_lab(s, seeds, out, mode="quick" if args.quick else "default")
    harness.print_verdicts(report.verdicts(results), out, results["wall_seconds"])
    return 0
