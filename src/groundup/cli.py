"""The `groundup` command line. Thin: each subcommand parses its arguments and calls one library
function. Errors a user can fix print one message (no traceback) and exit with status 2."""

from __future__ import annotations

import argparse
import json
import sys
import time
import typing

from groundup.config import EngineName
from groundup.errors import GroundupError

EXIT_USAGE = 2  # a problem the user can fix: bad input, missing file, full disk (message on stderr)
EXIT_DIVERGED = 3  # training diverged and stopped after max_rollbacks (report on stderr)


# ---- tokenizer ------------------------------------------------------------------------------
def cmd_tokenizer_train(args) -> int:
    from groundup.data import load_corpus
    from groundup.tokenizer import CharTokenizer, train_bpe

    corpus = load_corpus(args.corpus, errors=args.errors)
    start = time.perf_counter()
    if args.type == "char":
        tok = CharTokenizer.train(corpus.documents)
    else:
        tok = train_bpe(corpus.documents, args.vocab_size, pattern=args.pattern,
                        special_tokens=args.special or ["<|endoftext|>"], progress=sys.stderr.isatty())
    seconds = time.perf_counter() - start
    tok.save(args.out)
    text = corpus.text
    n_tokens = len(tok.encode(text, allowed_special="none"))
    print(f"trained {tok.kind} tokenizer on {args.corpus!r} ({len(text.encode()):,} bytes) in {seconds:.2f} s")
    if tok.vocab_size < args.vocab_size:
        print(f"note: stopped at vocab size {tok.vocab_size:,} < {args.vocab_size:,}: every chunk of this corpus is already one token")
    print(f"vocab size {tok.vocab_size:,}; the corpus is {n_tokens:,} tokens ({len(text.encode()) / n_tokens:.2f} bytes/token)")
    if tok.kind == "bpe":
        first = [tok.token_bytes(i).decode("utf-8", "replace") for i in range(256, min(tok.vocab_size, 256 + 12))]
        print("first merges:", " ".join(repr(t) for t in first))
        longest = sorted(tok.ranks, key=len)[-5:]
        print("longest tokens:", " ".join(repr(t.decode("utf-8", "replace")) for t in longest))
    print(f"saved to {args.out}")
    return 0


def cmd_tokenizer_encode(args) -> int:
    from groundup.tokenizer import load_tokenizer

    tok = load_tokenizer(args.tokenizer, pattern=args.pattern)
    text = _read_text_arg(args.text_file)
    print(json.dumps(tok.encode(text, allowed_special="all" if args.allow_special else "none")))
    return 0


def cmd_tokenizer_decode(args) -> int:
    from groundup.tokenizer import load_tokenizer

    tok = load_tokenizer(args.tokenizer, pattern=args.pattern)
    raw = sys.stdin.read()
    try:
        ids = json.loads(raw)
    except json.JSONDecodeError:
        raise GroundupError("decode reads a JSON list of token ids on stdin, e.g. [72, 105]; the input is not valid JSON") from None
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise GroundupError("decode reads a JSON list of integer token ids on stdin, e.g. [72, 105]")
    text = tok.decode(ids)
    sys.stdout.write(text + ("\n" if sys.stdout.isatty() else ""))
    return 0


def _read_text_arg(path: str | None) -> str:
    if path is None:
        return sys.stdin.read()
    from groundup.data.corpora import read_text_file
    from pathlib import Path

    p = Path(path)
    if not p.exists():
        raise GroundupError(f"text file {path} does not exist")
    return read_text_file(p, "strict")


# ---- data -----------------------------------------------------------------------------------
def cmd_data_prepare(args) -> int:
    from groundup.data import build_tokenizer, load_corpus, prepare

    corpus = load_corpus(args.corpus, errors=args.errors)
    tok = build_tokenizer(args.tokenizer, corpus, args.vocab_size, args.pattern)
    data = prepare(corpus, tok, args.out, val_fraction=args.val_fraction)
    m = data.meta
    print(f"corpus {m['corpus']!r}: {m['characters']:,} characters")
    print(f"tokenizer {m['tokenizer_kind']} (vocab {m['vocab_size']:,}, fingerprint {m['tokenizer_fingerprint'][:12]})")
    print(f"train {m['tokens']['train']:,} tokens, val {m['tokens']['val']:,} tokens ({m['dtype']}) → {data.directory}")
    return 0


# ---- train ----------------------------------------------------------------------------------
def _overrides(args, *names: str) -> list[str]:
    """--set NAME=VALUE overrides, then each named shortcut option given (--max-steps 300 → max_steps=300)."""
    return list(args.set or []) + [f"{name}={getattr(args, name)}" for name in names if getattr(args, name) is not None]


def cmd_train(args) -> int:
    from groundup.config import load_config
    from groundup.train.checkpoint import read_run_config
    from groundup.train.guards import parse_faults
    from groundup.train.trainer import train

    overrides = _overrides(args, "max_steps", "time_budget", "engine", "device")
    if args.compile:
        overrides.append("compile=true")
    faults = parse_faults(args.inject)
    if args.resume:
        if args.config:
            raise GroundupError("--resume continues a run with its own config.json; drop --config (use --set to change train settings)")
        from pathlib import Path

        from groundup.config import parse_override
        from groundup.distill import RECIPE

        if (Path(args.resume) / RECIPE).exists():
            raise GroundupError(f"{args.resume} is a distilled student; `groundup train --resume` would continue it with "
                                f"plain cross-entropy: continue it with `groundup distill --resume {args.resume}`")
        from groundup.align.runs import ALIGN

        if (Path(args.resume) / ALIGN).exists():
            raise GroundupError(f"{args.resume} is an alignment run ({ALIGN}); `groundup train --resume` would continue it "
                                "with plain cross-entropy, undoing the alignment: run the `groundup align` command again "
                                "into a new directory")
        config = read_run_config(args.resume).replace(**dict(parse_override(o) for o in overrides))
        result = train(config, args.resume, resume=True, faults=faults)
    elif args.plan:
        from groundup.train.plan import plan_training

        plan_training(load_config(args.config, overrides))
        return 0
    else:
        if not args.out:
            raise GroundupError("say where the run goes: --out runs/NAME (or --resume runs/NAME to continue one)")
        config = load_config(args.config, overrides)
        result = train(config, args.out, faults=faults)
    return EXIT_DIVERGED if result.stopped_by == "diverged" else 0  # the trainer printed the report


# ---- distill --------------------------------------------------------------------------------
def cmd_distill(args) -> int:
    from groundup.config import load_config, parse_override
    from groundup.distill import DEFAULT_ALPHA, DEFAULT_SAMPLES, DEFAULT_TEMPERATURE, distill_run, resume_distill

    overrides = _overrides(args, "max_steps", "device")
    if args.resume:
        given = [flag for flag, value in (("--teacher", args.teacher), ("--config", args.config), ("--out", args.out),
                                          ("--temperature", args.temperature), ("--alpha", args.alpha),
                                          ("--reverse", args.reverse or None), ("--sequence-level", args.sequence_level or None),
                                          ("--samples", args.samples), ("--sample-seed", args.sample_seed)) if value is not None]
        if given:
            raise GroundupError(f"--resume continues a distilled run with the recipe in its distill.json; drop "
                                f"{', '.join(given)} (use --set to change train settings)")
        result = resume_distill(args.resume, dict(parse_override(o) for o in overrides))
        return EXIT_DIVERGED if result.stopped_by == "diverged" else 0
    if not args.teacher or not args.out:
        raise GroundupError("say which teacher and where the student goes: --teacher runs/T --out runs/S "
                            "(or --resume runs/S to continue one)")
    if args.sequence_level:
        given = [flag for flag, value in (("--temperature", args.temperature), ("--alpha", args.alpha),
                                          ("--reverse", args.reverse or None)) if value is not None]
        if given:
            raise GroundupError(f"--sequence-level trains with plain cross-entropy on the teacher's samples; "
                                f"{', '.join(given)} {'apply' if len(given) > 1 else 'applies'} to token-level "
                                f"distillation only: drop {'them' if len(given) > 1 else 'it'}")
    elif args.samples is not None or args.sample_seed is not None:
        raise GroundupError("--samples and --sample-seed go with --sequence-level")
    config = load_config(args.config, overrides)
    result = distill_run(args.teacher, config, args.out,
                         temperature=DEFAULT_TEMPERATURE if args.temperature is None else args.temperature,
                         alpha=DEFAULT_ALPHA if args.alpha is None else args.alpha, reverse=args.reverse,
                         sequence_level=args.sequence_level,
                         samples=DEFAULT_SAMPLES if args.samples is None else args.samples, sample_seed=args.sample_seed)
    return EXIT_DIVERGED if result.stopped_by == "diverged" else 0


# ---- align ------------------------------------------------------------------------------------
def _align_settings(args):
    from groundup.align.runs import AlignSettings

    return AlignSettings(steps=args.steps, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                         grad_clip=args.grad_clip, held_out=args.held_out, device=args.device)


def cmd_align_reward(args) -> int:
    from groundup.align.reward import reward_run

    reward_run(args.run, args.prefs, args.out, _align_settings(args), pool=args.pool)
    return 0


def cmd_align_dpo(args) -> int:
    from groundup.align.dpo import dpo_run

    dpo_run(args.run, args.prefs, args.out, args.beta, _align_settings(args))
    return 0


def _add_align_training_options(p, steps: int, lr: float) -> None:
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="the reference policy π_ref, a trained run (unchanged)")
    p.add_argument("--prefs", required=True, help="preference pairs from `groundup align preferences` (.jsonl)")
    p.add_argument("--out", required=True, help="the new run directory (must not exist)")
    p.add_argument("--steps", type=int, default=steps, help=f"optimizer steps (default {steps})")
    p.add_argument("--lr", type=float, default=lr, help=f"constant AdamW learning rate (default {lr:g})")
    p.add_argument("--batch-size", type=int, default=16, help="pairs per step (default 16)")
    p.add_argument("--held-out", type=float, default=0.1, help="fraction of pairs kept out to evaluate on (default 0.1)")
    p.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm, 0 = off (default 1)")
    p.add_argument("--seed", type=int, default=0, help="the held-out split, the batches, the reward head's init")
    p.add_argument("--device", default="cpu", help="cpu, auto, cuda, cuda:N, mps (default cpu)")


# ---- align: preferences, rl, best-of-n (issue #19) -------------------------------------------
def cmd_align_preferences(args) -> int:
    from pathlib import Path

    if Path(args.out).exists():  # before torch is imported: a quick answer
        raise GroundupError(f"{args.out} already exists; choose a new --out (preference files are not overwritten)")
    from groundup.align.preferences import gold_agreement, make_preferences, write_preferences

    pairs, meta = make_preferences(args.run, args.n, prompt_len=args.prompt_len, length=args.length, seed=args.seed,
                                   temperature=args.temperature, bt_scale=args.bt_scale, device=args.device,
                                   progress=True)
    write_preferences(pairs, args.out, meta)
    agree, ties = gold_agreement(pairs)
    print(f"{len(pairs):,} preference pairs from {args.run} → {args.out} (labels drawn by Bradley–Terry, bt_scale "
          f"{args.bt_scale:g}): {100 * ties:.1f}% tie on the gold score (coin-flip labels); of the rest, "
          f"{100 * agree:.1f}% agree with the gold order")
    return 0


def cmd_align_rl(args) -> int:
    from groundup.align.rl import RLSettings, rl_run

    settings = RLSettings(beta=args.beta, steps=args.steps, prompts_per_step=args.prompts_per_step,
                          samples_per_prompt=args.samples_per_prompt, prompt_len=args.prompt_len, length=args.length,
                          lr=args.lr, seed=args.seed)
    rl_run(args.run, args.reward, args.out, settings, device=args.device)
    return 0


def cmd_align_best_of_n(args) -> int:
    from groundup.align.best_of_n import best_of_n_run

    best_of_n_run(args.run, args.reward, args.n, prompts=args.prompts, prompt_len=args.prompt_len, length=args.length,
                  seed=args.seed, out=args.out, device=args.device)
    return 0


def _add_align_rl_commands(al_sub) -> None:
    """`groundup align preferences | rl | best-of-n` (defaults: groundup.align.gold, .preferences, .rl)."""
    prompt_len, length = 16, 48  # groundup.align.preferences.DEFAULT_PROMPT_LEN, gold.DEFAULT_LENGTH

    def common(p, reward: bool):
        p.add_argument("--run", required=True, help="the reference policy run π_ref, e.g. runs/base")
        if reward:
            p.add_argument("--reward", required=True, help="'gold' (the sentiment judge) or a reward-model run directory")
        p.add_argument("--prompt-len", type=int, default=prompt_len, help=f"prompt tokens (default {prompt_len})")
        p.add_argument("--length", type=int, default=length,
                       help=f"continuation tokens (default {length}: enough characters to hold words)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--device", default="cpu")

    pr = al_sub.add_parser("preferences", help="preference pairs from π_ref, labelled by Bradley–Terry on the gold judge")
    common(pr, reward=False)
    pr.add_argument("--n", type=int, required=True, help="number of pairs")
    pr.add_argument("--bt-scale", type=float, default=0.25, help="label noise: P(a ≻ b) = σ((g_a − g_b)/scale)")
    pr.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of π_ref")
    pr.add_argument("--out", required=True, help="the .jsonl file to write (must not exist)")
    pr.set_defaults(func=cmd_align_preferences)

    rl = al_sub.add_parser("rl", help="REINFORCE (leave-one-out baseline) with a per-token KL penalty toward π_ref")
    common(rl, reward=True)
    rl.add_argument("--beta", type=float, required=True, help="KL weight β > 0, e.g. 0.05")
    rl.add_argument("--steps", type=int, default=100)
    rl.add_argument("--prompts-per-step", type=int, default=8)
    rl.add_argument("--samples-per-prompt", type=int, default=4, help="k ≥ 2 (the leave-one-out baseline)")
    rl.add_argument("--lr", type=float, default=1e-4)
    rl.add_argument("--out", required=True, help="the new run directory, e.g. runs/rl")
    rl.set_defaults(func=cmd_align_rl)

    bo = al_sub.add_parser("best-of-n", help="keep the best of n samples of π_ref under a reward (KL ≤ log n − (n−1)/n)")
    common(bo, reward=True)
    bo.add_argument("--n", type=int, required=True, help="samples per prompt")
    bo.add_argument("--prompts", type=int, default=64)
    bo.add_argument("--out", help="write the summary and kept samples to this JSON file")
    bo.set_defaults(func=cmd_align_best_of_n)


# ---- sample, demo -----------------------------------------------------------------------------
def cmd_sample(args) -> int:
    from groundup.sample import SamplingSettings, sample_text

    settings = SamplingSettings(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed)
    sys.stdout.write(args.prompt)
    sample_text(args.run, args.prompt, settings, device=args.device, stream=sys.stdout)
    sys.stdout.write("\n")
    return 0


def cmd_quantize(args) -> int:
    from groundup.quantize import quantize_run

    quantize_run(args.run, args.out, args.bits, args.group_size, args.method, args.calibration, args.seed, args.device,
                 head=args.quantize_head)
    return 0


def cmd_serve(args) -> int:
    from groundup.serve import serve

    serve(args.run, args.host, args.port, api_key=args.api_key, device=args.device,
          max_batch=args.max_batch, max_waiting=args.max_waiting, threads=args.threads)
    return 0


def cmd_demo(args) -> int:
    from groundup.demo import run_demo

    run_demo(args.out, args.seconds, args.max_steps, args.new_tokens, tuple(args.set or ()))
    return 0


# ---- supervise ------------------------------------------------------------------------------
def cmd_supervise(args) -> int:
    from groundup.supervise import supervise

    command = list(args.command or [])
    if command[:1] == ["--"]:
        command = command[1:]
    result = supervise(command, kill_rate=args.kill_rate, seed=args.seed, max_restarts=args.max_restarts,
                       max_kills=args.max_kills, log=args.log)
    return result.exit_code


# ---- labs and the cost calculator ---------------------------------------------------------------
# Each lab lives in its own module with `add_arguments(parser)` and `run(args) -> int`; the CLI only
# registers it here (imported lazily, so `groundup --help` stays fast).
LABS = {
    "memory": ("groundup.labs.memory", "frozen weights, in-context learning, forgetting, LoRA, targeted edits"),
    "scaling": ("groundup.labs.scaling", "train a grid of models over seeds and fit loss = a·C^-α and L(N, D)"),
    "attention-cost": ("groundup.labs.attention_cost", "time and memory of attention against sequence length"),
    "geometry": ("groundup.labs.geometry", "sinusoidal positions as rotations, attention head kinds, embedding neighbours"),
    "moe": ("groundup.labs.moe", "mixture of experts: same-compute loss, balance, specialisation, k and E, cost"),
    "efficiency": ("groundup.labs.efficiency", "quantization frontier, distillation gap closed, distil then quantize"),
    "comms": ("groundup.labs.comms", "all-reduce time vs size and ranks, the α–β ring fit, DDP step prediction, cluster projection"),
    "wall": ("groundup.labs.wall", "does 10× the capability cost 20–40× the money? scaling fit × MFU, comms, failures"),
    "data-wall": ("groundup.labs.data_wall", "repeated data (effective-data R*) and synthetic data (collapse: replace vs accumulate)"),
    "failures": ("groundup.labs.failures", "goodput vs cluster size, Poisson kills under the supervisor, bit flips"),
    "alignment": ("groundup.labs.alignment", "reward–KL frontier of RL, DPO, best-of-n; over-optimisation; exact π*"),
}


def _run_module(args) -> int:
    return int(args.module.run(args) or 0)


def _add_module_command(sub, name: str, module_name: str, helptext: str, load: bool = True) -> None:
    """Register a lab (or the calculator). Its module — torch, matplotlib and all — is imported only
    when its command is the one being run (`load`); otherwise it is listed by name for --help, so
    `groundup tokenizer …` does not pay for every lab's imports."""
    import importlib

    if not load:
        sub.add_parser(name, help=helptext)
        return
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:
            raise
        return  # not built yet
    p = sub.add_parser(name, help=helptext, description=(module.__doc__ or helptext).strip().split("\n\n")[0])
    module.add_arguments(p)
    p.set_defaults(func=_run_module, module=module)


# ---- the parser -----------------------------------------------------------------------------
def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The whole command line; `argv` (the arguments to be parsed, if known) says which lab modules
    need importing: only the one being run."""
    words = [a for a in argv if not a.startswith("-")] if argv is not None else None
    parser = argparse.ArgumentParser(prog="groundup", description="Language models from first principles.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    tok = sub.add_parser("tokenizer", help="train, encode and decode with a tokenizer")
    tok_sub = tok.add_subparsers(dest="action", metavar="ACTION", required=True)
    t = tok_sub.add_parser("train", help="learn a byte-level BPE (or char) vocabulary from a corpus")
    t.add_argument("--corpus", default="shakespeare", help="shakespeare, python-docs, python-stdlib, a .txt file or a folder of them")
    t.add_argument("--vocab-size", type=int, default=4096, help="total vocabulary incl. 256 bytes and specials")
    t.add_argument("--type", choices=["bpe", "char"], default="bpe")
    t.add_argument("--pattern", default="cl100k", help="pre-tokenizer regex: gpt2, cl100k, or a regex")
    t.add_argument("--special", action="append", help="special token (repeatable; default <|endoftext|>)")
    t.add_argument("--errors", choices=["strict", "replace"], default="strict", help="non-UTF-8 bytes in .txt files")
    t.add_argument("--out", required=True, help="where to write the tokenizer JSON")
    t.set_defaults(func=cmd_tokenizer_train)
    for name, func, helptext in [("encode", cmd_tokenizer_encode, "text (stdin or --text-file) → JSON list of ids"),
                                 ("decode", cmd_tokenizer_decode, "JSON list of ids on stdin → text")]:
        p = tok_sub.add_parser(name, help=helptext)
        p.add_argument("--tokenizer", required=True, help="a groundup tokenizer .json or a .tiktoken rank file")
        p.add_argument("--pattern", default="cl100k", help="split pattern for .tiktoken files: gpt2 or cl100k")
        if name == "encode":
            p.add_argument("--text-file", help="read the text from this file instead of stdin")
            p.add_argument("--allow-special", action="store_true",
                           help="turn special tokens written in the text (e.g. <|endoftext|>) into their ids; "
                                "by default they are encoded as plain text")
        p.set_defaults(func=func)

    data = sub.add_parser("data", help="prepare token files from a corpus")
    data_sub = data.add_subparsers(dest="action", metavar="ACTION", required=True)
    d = data_sub.add_parser("prepare", help="encode a corpus into train.bin/val.bin + meta.json")
    d.add_argument("--corpus", default="shakespeare")
    d.add_argument("--tokenizer", default="char", help="char, bpe (train one), or a tokenizer file")
    d.add_argument("--vocab-size", type=int, default=4096, help="with --tokenizer bpe")
    d.add_argument("--pattern", default="cl100k")
    d.add_argument("--val-fraction", type=float, default=0.1)
    d.add_argument("--errors", choices=["strict", "replace"], default="strict")
    d.add_argument("--out", required=True)
    d.set_defaults(func=cmd_data_prepare)

    tr = sub.add_parser("train", help="train a model (PyTorch or NumPy engine); torchrun-ready")
    tr.add_argument("--config", help="a TOML config (see configs/); defaults apply without one")
    tr.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config field, e.g. --set max_steps=300")
    tr.add_argument("--out", help="run directory to create, e.g. runs/shakespeare_char")
    tr.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last good checkpoint")
    tr.add_argument("--max-steps", type=int, help="same as --set max_steps=N")
    tr.add_argument("--time-budget", type=float, help="stop after this many seconds (still evaluates and saves)")
    tr.add_argument("--engine", choices=typing.get_args(EngineName), help="same as --set engine=…")
    tr.add_argument("--device", help="auto, cpu, cuda, cuda:N, mps")
    tr.add_argument("--compile", action="store_true", help="torch.compile the model")
    tr.add_argument("--inject", action="append", metavar="FAULT@STEP",
                    help="testing: inject a fault (repeatable): nan@STEP, inf@STEP, spike@STEP, kill@STEP, "
                         "kill@STEP:write|rename|publish|prune (SIGKILL mid-checkpoint), bitflip@STEP[:weight|:grad][:BIT] "
                         "(one flipped bit: silent data corruption); see docs/fault-tolerance.md")
    tr.add_argument("--plan", action="store_true", help="don't train: print whether it fits, its FLOPs and projected time")
    tr.set_defaults(func=cmd_train)

    di = sub.add_parser("distill", help="train a student run from a trained teacher run (knowledge distillation)",
                        description="Train a student from a teacher run: alpha·T²·KL(p_teacher^T ‖ p_student^T) + "
                                    "(1 − alpha)·cross-entropy (Hinton et al. 2015), or plain cross-entropy on the "
                                    "teacher's samples (--sequence-level, Kim & Rush 2016). Writes a normal run "
                                    "directory plus distill.json (the recipe).")
    di.add_argument("--teacher", metavar="RUN_DIR", help="the trained teacher run, e.g. runs/T")
    di.add_argument("--config", help="the student's TOML config (its [data] defaults to the teacher's)")
    di.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a student config field")
    di.add_argument("--out", help="the student's run directory to create, e.g. runs/S")
    di.add_argument("--resume", metavar="RUN_DIR", help="continue a distilled run from its last good checkpoint "
                                                       "(same teacher, loss and data, from its distill.json)")
    di.add_argument("--temperature", type=float, default=None, help="T > 0 softening both distributions (default 2)")
    di.add_argument("--alpha", type=float, default=None, help="weight of the soft term in [0, 1] (default 0.5)")
    di.add_argument("--reverse", action="store_true", help="reverse KL: KL(p_student^T ‖ p_teacher^T)")
    di.add_argument("--sequence-level", action="store_true",
                    help="train with cross-entropy on sequences sampled from the teacher instead of the corpus")
    di.add_argument("--samples", type=int, default=None, help="with --sequence-level: sequences of block_size tokens (default 512)")
    di.add_argument("--sample-seed", type=int, default=None, help="with --sequence-level: seed of the first sample (default: train.seed)")
    di.add_argument("--max-steps", type=int, help="same as --set max_steps=N")
    di.add_argument("--device", help="auto, cpu, cuda, cuda:N, mps (teacher and student)")
    di.set_defaults(func=cmd_distill)

    al = sub.add_parser("align", help="tune a policy run toward a reward while staying near it (KL): reward model, DPO, RL",
                        description="Alignment as an optimisation: J = E[r(x, y)] − β·KL(π ‖ π_ref) (issue #19).")
    al_sub = al.add_subparsers(dest="action", metavar="ACTION", required=True)
    _add_align_rl_commands(al_sub)  # preferences, rl, best-of-n
    ar = al_sub.add_parser("reward", help="train a reward model r(x, y) on preference pairs (Bradley–Terry)",
                           description="A reward model (π_ref's trunk + a scalar head on the last token, or on the mean "
                                       "over positions with --pool mean) trained with "
                                       "−log σ(r_w − r_l) on preference pairs; reports held-out accuracy and agreement "
                                       "with the gold judge. Writes a run directory plus align.json.")
    _add_align_training_options(ar, steps=200, lr=1e-4)
    ar.add_argument("--pool", choices=("last", "mean"), default="last",
                    help="the head reads the last token's hidden state (the usual reward model) or the mean over "
                         "positions (a sum of local features: suits a word-level judge on a small character model)")
    ar.set_defaults(func=cmd_align_reward)
    ad = al_sub.add_parser("dpo", help="Direct Preference Optimisation of a policy run on preference pairs",
                           description="DPO (Rafailov et al. 2023): −log σ(β·[(log π_w − log ref_w) − (log π_l − "
                                       "log ref_l)]) with π starting at π_ref and π_ref frozen. Writes a policy run "
                                       "(sample it with `groundup sample`) plus align.json.")
    ad.add_argument("--beta", type=float, required=True, help="β > 0, the KL weight (e.g. 0.1; larger stays closer to π_ref)")
    _add_align_training_options(ad, steps=200, lr=1e-4)
    ad.set_defaults(func=cmd_align_dpo)

    sa = sub.add_parser("sample", help="generate text from a trained run (streams as it goes)")
    sa.add_argument("--run", required=True, help="a run directory, e.g. runs/shakespeare_char")
    sa.add_argument("--prompt", default="", help="text to continue (empty: start from <|endoftext|> or a newline)")
    sa.add_argument("--max-new-tokens", type=int, default=300)
    sa.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    sa.add_argument("--top-k", type=int, default=None)
    sa.add_argument("--top-p", type=float, default=None)
    sa.add_argument("--seed", type=int, default=None, help="same seed → same text")
    sa.add_argument("--device", default="auto")
    sa.set_defaults(func=cmd_sample)

    qu = sub.add_parser("quantize", help="weight-only int8/int4 post-training quantization (RTN or GPTQ) into a new run")
    qu.add_argument("--run", required=True, help="the trained (float) run, e.g. runs/shakespeare_char")
    qu.add_argument("--bits", type=int, required=True, help="8 (per output channel) or 4 (group-wise, two per byte)")
    qu.add_argument("--group-size", type=int, default=None, help="int4 only: 32, 64 or 128 input columns per scale (default 128)")
    qu.add_argument("--method", default="rtn", help="rtn (round to nearest) or gptq (error compensation on calibration data)")
    qu.add_argument("--calibration", type=int, default=128, help="GPTQ: calibration sequences from the training split")
    qu.add_argument("--seed", type=int, default=0, help="GPTQ: which calibration sequences")
    qu.add_argument("--quantize-head", action="store_true",
                    help="quantize the LM head too (a copy; the tied embedding stays float32). Default: head kept float32")
    qu.add_argument("--device", default="cpu", help="where to quantize and evaluate (cpu, cuda, auto)")
    qu.add_argument("--out", required=True, help="the new run directory, e.g. runs/shakespeare_char-int4 (must not exist)")
    qu.set_defaults(func=cmd_quantize)

    se = sub.add_parser("serve", help="an OpenAI-compatible HTTP API and a web page that shows inside the model")
    se.add_argument("--run", required=True, help="a run directory, e.g. runs/shakespeare_char")
    se.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    se.add_argument("--port", type=int, default=8000)
    se.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (or set GROUNDUP_API_KEY)")
    se.add_argument("--device", default="auto")
    se.add_argument("--max-batch", type=int, default=16, help="sequences decoded together in one forward pass")
    se.add_argument("--max-waiting", type=int, default=64, help="queued requests beyond that answer HTTP 429")
    se.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = torch's default)")
    se.set_defaults(func=cmd_serve)

    de = sub.add_parser("demo", help="the main job: prepare Shakespeare, sample, train ~2 min, sample again")
    de.add_argument("--out", default="runs/demo")
    de.add_argument("--seconds", type=float, default=120.0, help="training time budget")
    de.add_argument("--max-steps", type=int, default=2000)
    de.add_argument("--new-tokens", type=int, default=300)
    de.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field")
    de.set_defaults(func=cmd_demo)

    su = sub.add_parser("supervise", help="run `groundup train`, restart it with --resume when it dies; simulate failures",
                        description="Run `groundup train ...` as a child process and restart it with `--resume` "
                                    "after each death (signal or crash), up to --max-restarts; with --kill-rate, "
                                    "SIGKILL it at Poisson-distributed times to simulate failures. Example: groundup "
                                    "supervise --kill-rate 0.05 --seed 1 -- train --config configs/x.toml --out runs/x")
    su.add_argument("--kill-rate", type=float, default=0.0, metavar="PER_SECOND",
                    help="simulated failures: SIGKILL the run at Poisson times, this many per second on average "
                         "(mean time between failures = 1/rate); default 0 (none)")
    su.add_argument("--seed", type=int, default=0, help="seed of the failure times")
    su.add_argument("--max-restarts", type=int, default=10, help="give up (exit 1) after this many restarts")
    su.add_argument("--max-kills", type=int, default=None, help="deliver at most this many simulated failures")
    su.add_argument("--log", default=None, help="the JSON-lines log of starts and deaths (default RUN_DIR/supervise.jsonl)")
    su.add_argument("command", nargs=argparse.REMAINDER, help="-- train ... --out RUN_DIR (the training command)")
    su.set_defaults(func=cmd_supervise)

    lab = sub.add_parser("lab", help="experiments that turn claims about LLMs into measurements")
    lab_sub = lab.add_subparsers(dest="lab", metavar="LAB", required=True)
    for name, (module_name, helptext) in LABS.items():
        _add_module_command(lab_sub, name, module_name, helptext, load=words is None or words[:2] == ["lab", name])
    _add_module_command(sub, "cost", "groundup.cost", "training FLOPs, memory, GPU-hours, dollars and energy",
                        load=words is None or words[:1] == ["cost"])

    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except GroundupError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except OSError as e:  # the environment: disk full, read-only directory, no permission
        import errno

        where = f": {e.filename}" if e.filename else ""
        hint = {errno.ENOSPC: "; free some disk space", errno.EROFS: "; the file system is read-only, write elsewhere",
                errno.EACCES: "; check the permissions", errno.EDQUOT: "; disk quota exceeded, free some space"}
        print(f"error: {e.strerror or e}{where}{hint.get(e.errno, '')}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
