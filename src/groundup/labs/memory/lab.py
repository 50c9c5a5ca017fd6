"""The memory lab's experiment for one seed, and the whole lab run over seeds on the harness."""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from groundup.errors import ConfigError
from groundup.labs import harness
from groundup.labs.memory import report as report_module
from groundup.labs.memory.common import EXPERIMENTS, Settings, build_base, val_batches
from groundup.labs.memory.edit import check_fact, targeted_edit
from groundup.labs.memory.forgetting import forgetting
from groundup.labs.memory.frozen import frozen_weights
from groundup.labs.memory.in_context import in_context
from groundup.labs.memory.lora import lora_vs_full
from groundup.train import checkpoint as ckpt
from groundup.util.device import pick_device

LAB = "memory"
VERSION = 2  # 2: run over seeds on the harness; training through groundup.train.loop.fit


def validate(settings: Settings, only: list[str], corpus_b: str | None) -> list[str]:
    """The chosen experiments in lab order; a clear error for a bad choice or a missing domain B."""
    unknown = sorted(set(only) - set(EXPERIMENTS))
    if unknown or not only:
        raise ConfigError(f"unknown experiment(s) {unknown}; choose from {', '.join(EXPERIMENTS)}")
    if "edit" in only and not (settings.fact.endswith(settings.fact_answer) and settings.fact_answer.strip()):
        raise ConfigError(f"the answer {settings.fact_answer!r} must be the end of the fact sentence {settings.fact!r}")
    if any(e in only for e in ("forgetting", "lora", "edit")) and not corpus_b:
        raise ConfigError("the forgetting, lora and edit experiments need a second domain: pass --corpus-b")
    return [e for e in EXPERIMENTS if e in set(only)]


def effects(results: dict) -> dict:
    """The effect sizes the verdicts test, per seed (so the harness gives each an interval)."""
    e = {}
    if "in-context" in results:
        lk, c = results["in-context"]["lookup"], results["in-context"]["copy"]
        e["lookup_rise"] = lk["accuracy"][-1] - lk["accuracy"][0]  # accuracy with every fact minus with none
        e["lookup_drop_when_cleared"] = lk["accuracy"][-1] - lk["cleared_context_accuracy"]
        e["copy_loss_rise_without_first_copy"] = c["second_copy_alone"] - c["second_copy"]
    if "lora" in results:
        e["forgetting_full_minus_lora"] = results["forgetting"]["A_increase"] - results["lora"]["A_increase"]
    if "edit" in results:  # per edit run: how far held-out loss moved
        e["edit_A_loss_change"] = [r["after"]["A_loss"] - r["before"]["A_loss"] for r in results["edit"]["runs"]]
        e["edit_B_loss_change"] = [r["after"]["B_loss"] - r["before"]["B_loss"] for r in results["edit"]["runs"]]
    return e


def run_seed(settings: Settings, seed: int, out: Path, only: list[str], run: str | None, corpus_a: str | None,
             corpus_b: str | None, progress: bool) -> dict:
    """Every chosen experiment with one seed: its own base model (unless `run` is given), its own
    task models, batches and samples. Working files go to out/seed_SEED/."""
    s = replace(settings, seed=seed)
    out = out / f"seed_{seed}"
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    say = print if progress else (lambda *a, **k: None)
    needs_b = any(e in only for e in ("forgetting", "lora", "edit"))
    results, seconds = {}, {}
    base = None
    if any(e != "in-context" for e in only):
        t0 = time.perf_counter()
        base = build_base(s, out, corpus_a, corpus_b if needs_b else None, run, progress)
        seconds["base"] = time.perf_counter() - t0
        results["base"] = {"note": base.note, "corpus_a": base.corpus_a, "corpus_b": base.corpus_b,
                           "parameters": base.model.num_params(), "vocab_size": base.tokenizer.vocab_size}
    if "edit" in only:
        check_fact(base, s)  # before spending time on the other experiments
    if "frozen" in only:
        t0 = time.perf_counter()
        results["frozen"] = frozen_weights(base.model, base.tokenizer, base.data_a.val, s.n_prompts, s.new_tokens,
                                           seed, base.run_dir / ckpt.WEIGHTS)
        seconds["frozen"] = time.perf_counter() - t0
        say(f"frozen: hashes equal {results['frozen']['hashes_equal']} after {results['frozen']['tokens_generated']} tokens")
    if "in-context" in only:
        t0 = time.perf_counter()
        results["in-context"] = in_context(s, base, progress)
        seconds["in-context"] = time.perf_counter() - t0
        lk = results["in-context"]["lookup"]
        say("in-context: accuracy vs facts " + ", ".join(f"{n}: {a:.2f}" for n, a in zip(lk["facts_in_context"], lk["accuracy"]))
            + f"; cleared {lk['cleared_context_accuracy']:.2f}")
    full = None
    if "forgetting" in only or "lora" in only:
        t0 = time.perf_counter()
        full = forgetting(base, s, progress)
        seconds["forgetting"] = time.perf_counter() - t0
        results["forgetting"] = {k: v for k, v in full.items() if k not in ("model", "watch")}
        results["forgetting"]["steps"] = s.finetune_steps
        say(f"forgetting: A {full['A_before']:.3f} → {full['A_after']:.3f}, B {full['B_before']:.3f} → {full['B_after']:.3f}")
    if "lora" in only:
        t0 = time.perf_counter()
        results["lora"] = lora_vs_full(base, s, full, out, progress)
        seconds["lora"] = time.perf_counter() - t0
        r = results["lora"]
        say(f"lora: A {r['A_before']:.3f} → {r['A_after']:.3f}, B {r['B_before']:.3f} → {r['B_after']:.3f}")
    if "edit" in only:
        t0 = time.perf_counter()
        watch = full["watch"] if full else {"A": val_batches(base, base.data_a, seed + 11),
                                            "B": val_batches(base, base.data_b, seed + 12)}
        results["edit"] = targeted_edit(base, s, watch, progress)
        seconds["edit"] = time.perf_counter() - t0
        for e in results["edit"]["runs"]:
            say(f"edit ({e['kind']}, lr {e['lr']:g}): fact loss {e['before']['fact_answer_loss']:.2f} → "
                f"{e['after']['fact_answer_loss']:.3f} in {e['steps']} steps, A loss {e['before']['A_loss']:.3f} → "
                f"{e['after']['A_loss']:.3f}")
    results["effects"] = effects(results)
    results["seconds_by_experiment"] = seconds
    return results


def run_lab(settings: Settings, seeds: list[int], out: str | Path = "runs/memory", only=EXPERIMENTS,
            run: str | None = None, corpus_a: str | None = None, corpus_b: str | None = "python-docs",
            progress: bool = True, mode: str = "custom") -> dict:
    """Run the chosen experiments once per seed, aggregate, and write results.json, the plots and
    report.md into `out`. Returns the results document."""
    out = Path(out)
    only = validate(settings, list(only), corpus_b)
    start = time.perf_counter()
    say = print if progress else (lambda *a, **k: None)
    config = {"settings": {k: v for k, v in asdict(settings).items() if k != "seed"}, "experiments": only,
              "run": run, "corpus_a": corpus_a, "corpus_b": corpus_b, "device": str(pick_device(settings.device)),
              "seeds_requested": seeds}

    def write(done: list[dict]) -> dict:  # after every seed: a run stopped early keeps the seeds it finished
        results = harness.make_results(LAB, VERSION, config, done, mode, time.perf_counter() - start)
        harness.write_outputs(report_module, results, out)
        return results

    per_seed = harness.run_seeds(
        lambda seed: run_seed(settings, seed, out, only, run, corpus_a, corpus_b, progress), seeds, say, write)
    return write(per_seed)
