"""`groundup lab memory …`: arguments → Settings → run_lab (or --report-from → the report alone)."""

from __future__ import annotations

import argparse

from groundup.errors import GroundupError
from groundup.labs import harness
from groundup.labs.memory import report
from groundup.labs.memory.common import EXPERIMENTS, Settings
from groundup.labs.memory.lab import LAB, run_lab

DEFAULT_SEEDS = 3
DEFAULT_OUT = "runs/memory"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="1 seed, tiny models: about a minute on 2 CPU cores")
    harness.add_arguments(parser, DEFAULT_SEEDS, DEFAULT_OUT)
    parser.add_argument("--run", metavar="RUN_DIR", help="use this trained run as the base model instead of pretraining one")
    parser.add_argument("--corpus-a", help="domain A (what the base model knows); default: the run's corpus, else shakespeare")
    parser.add_argument("--corpus-b", default="python-docs", help="domain B to fine-tune on (default python-docs)")
    parser.add_argument("--only", action="append", metavar="EXPERIMENT",
                        help=f"run only these (repeatable or comma-separated): {', '.join(EXPERIMENTS)}")
    parser.add_argument("--seed", type=int, default=1337, help="the first seed; seed k is SEED + k")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    parser.add_argument("--steps", type=int, help="fine-tuning steps (full and LoRA)")
    parser.add_argument("--fact", help=f"the sentence the edit teaches (default {Settings.fact!r})")
    parser.add_argument("--answer", help=f"the end of --fact that is the fact's payload (default {Settings.fact_answer!r})")
    parser.add_argument("--paraphrase", help=f"the fact said another way, only measured (default {Settings.paraphrase!r})")


def _mode(args) -> str:
    """quick, default (nothing changed from the defaults) or custom: recorded in results.json."""
    custom = (args.only, args.run, args.corpus_a, args.steps, args.fact, args.paraphrase, args.device != "auto",
              args.corpus_b != "python-docs", args.seed != 1337)
    return "quick" if args.quick else ("custom" if any(custom) else "default")


def run(args) -> int:
    if args.report_from:
        return harness.report_from(report, LAB, args, DEFAULT_OUT)
    only = [name.strip() for item in (args.only or [",".join(EXPERIMENTS)]) for name in item.split(",") if name.strip()]
    unknown = [name for name in only if name not in EXPERIMENTS]
    if unknown:
        raise GroundupError(f"unknown experiment {unknown[0]!r}; choose from {', '.join(EXPERIMENTS)}")
    changes = {"device": args.device}
    if args.steps is not None:
        if args.steps < 1:
            raise GroundupError(f"--steps must be at least 1, got {args.steps}")
        changes["finetune_steps"] = args.steps
    for name, field_name in (("fact", "fact"), ("answer", "fact_answer"), ("paraphrase", "paraphrase")):
        if getattr(args, name) is not None:
            changes[field_name] = getattr(args, name)
    if args.fact is not None and args.answer is None:
        raise GroundupError("with --fact, say which end of it is the answer: --answer 'WORDS.'")
    settings = Settings.quick(**changes) if args.quick else Settings(**changes)
    seeds = harness.lab_seeds(args, DEFAULT_SEEDS)
    out = args.out or DEFAULT_OUT
    results = run_lab(settings, seeds, out, only, run=args.run, corpus_a=args.corpus_a, corpus_b=args.corpus_b,
                      mode=_mode(args))
    print()
    for claim, sentence in report.verdicts(results).items():
        print(f"[{claim}] {sentence}")
    print(f"\nwrote {out}/results.json, report.md and the plots in {results['wall_seconds']:.0f} s")
    return 0
