"""`groundup distill`: train a student run from a trained teacher run, through the normal trainer.

    token level (Hinton et al. 2015), the default:
        L = α · T² · KL(p_teacher^T ‖ p_student^T) + (1 − α) · CE(student, next token)
        (--reverse: KL(p_student^T ‖ p_teacher^T)); the math is groundup.train.distill
    sequence level (Kim & Rush 2016), --sequence-level:
        the student trains with plain cross-entropy on N sequences sampled from the teacher
        (N × block_size new tokens, temperature 1, sample i drawn with seed + i) instead of the corpus

Either way the student is a normal run directory (config, checkpoints, metrics, loss plot,
tokenizer) written by groundup.train.trainer.train, which `groundup sample` and `serve` load like any
other, plus distill.json: the recipe (teacher run, the SHA-256 of the teacher's weights file, T, α,
direction, sequence level). Validation loss is the student's cross-entropy on the teacher's corpus
(its val split), whatever the training loss, so distilled and scratch students compare directly.

The student uses the teacher's tokenizer and data: a student config without [data] settings takes
the teacher's; one with its own must give the same tokenizer (same vocabulary) — the two models'
distributions are compared token by token. Teacher and student may differ in every other size.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from groundup.config import DataConfig, RunConfig
from groundup.data import TokenData
from groundup.errors import CheckpointError, ConfigError, GroundupError
from groundup.model import GPT
from groundup.sample import SamplingSettings, generate, load_run, prompt_ids
from groundup.tokenizer.base import Tokenizer
from groundup.train import checkpoint as ckpt
from groundup.train.distill import check_recipe, distill_loss, freeze
from groundup.train.trainer import TrainResult, load_data, train
from groundup.util.files import atomic_write_json

RECIPE = "distill.json"  # in the student's run directory
SAMPLES = "teacher_samples.bin"  # sequence level: the teacher's samples the student trains on (raw token ids)
DEFAULT_TEMPERATURE = 2.0
DEFAULT_ALPHA = 0.5
DEFAULT_SAMPLES = 512
SAMPLE_TEMPERATURE = 1.0  # sequence level: samples from the teacher's own distribution, not sharpened


@dataclass
class Teacher:
    """A trained run loaded to teach: its frozen model, tokenizer and config, and which weights."""

    run_dir: Path
    model: GPT
    tokenizer: Tokenizer
    config: RunConfig
    step: int  # the checkpoint's step
    weights_sha256: str  # of the checkpoint's model.safetensors (as its state.json records and verifies)


def load_teacher(run_dir: str | Path, device: str = "auto") -> Teacher:
    """The newest good checkpoint of a run, frozen (eval mode, no gradients). A missing or corrupt
    run raises CheckpointError naming the file."""
    run_dir = Path(run_dir)
    try:
        _, state = ckpt.find_checkpoint(run_dir)  # the checkpoint load_run reads: verified, with its checksum
        model, tokenizer, config = load_run(run_dir, device)
    except GroundupError as e:
        raise type(e)(f"teacher: {e}") from None
    return Teacher(run_dir, freeze(model), tokenizer, config, state["step"], state["files"][ckpt.WEIGHTS])


def student_config(config: RunConfig, teacher: Teacher) -> tuple[RunConfig, TokenData]:
    """The student's config and data, checked against the teacher: the teacher's [data] unless the
    student names its own (which must give the same tokenizer), the teacher's vocab_size, a context
    no longer than the teacher's, the torch engine."""
    t_model = teacher.config.model
    if config.train.engine != "torch":
        raise ConfigError("distillation trains with the torch engine (the numpy engine's backward pass is written "
                          "for cross-entropy only); drop engine=numpy")
    if config.data == DataConfig():  # no [data] of its own: the teacher's corpus and tokenizer
        config = dataclasses.replace(config, data=teacher.config.data)
    data = load_data(config)
    mine, theirs = data.tokenizer, teacher.tokenizer
    if mine.fingerprint != theirs.fingerprint:
        raise ConfigError(f"the student's tokenizer ({mine.kind}, vocab {mine.vocab_size}, from data.corpus="
                          f"{config.data.corpus!r}, data.tokenizer={config.data.tokenizer!r}) is not the teacher's "
                          f"({theirs.kind}, vocab {theirs.vocab_size}); distillation compares the two models token by "
                          "token, so the student needs the teacher's tokenizer: drop the [data] settings from the "
                          "student config to take the teacher's")
    vocab = config.model.vocab_size or t_model.vocab_size
    if vocab != t_model.vocab_size:
        raise ConfigError(f"the student's model.vocab_size is {vocab} but the teacher's is {t_model.vocab_size}; "
                          "distillation needs the same vocabulary: leave model.vocab_size at 0 to take the teacher's")
    if config.model.block_size > t_model.block_size:
        raise ConfigError(f"the student's block_size {config.model.block_size} is longer than the teacher's context "
                          f"{t_model.block_size}: the teacher cannot score those positions; use block_size ≤ "
                          f"{t_model.block_size}")
    return dataclasses.replace(config, model=dataclasses.replace(config.model, vocab_size=vocab)), data


def check_samples(n) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"--samples must be a positive number of sequences, got {n!r}")


def teacher_samples(model: GPT, tokenizer: Tokenizer, n: int, length: int, seed: int) -> np.ndarray:
    """N sequences from the teacher for sequence-level distillation (Kim & Rush 2016), one after the
    other as a token stream: each its start token (<|endoftext|>, or a newline) and `length` tokens
    drawn at temperature 1 with seed `seed + i` (groundup.sample.generate: same seed, same tokens)."""
    check_samples(n)
    start = prompt_ids(tokenizer, "")
    stream: list[int] = []
    for i in range(n):
        settings = SamplingSettings(max_new_tokens=length, temperature=SAMPLE_TEMPERATURE, seed=seed + i)
        stream += start + list(generate(model, start, settings))
    return np.asarray(stream, dtype=np.uint16 if model.config.vocab_size <= 2 ** 16 else np.uint32)


def recipe(teacher: Teacher, temperature: float | None, alpha: float | None, reverse: bool, sequence_level: bool,
           samples: int | None, sample_seed: int | None) -> dict:
    """What distill.json records: enough to say which teacher (and which of its weights) taught how."""
    return {
        "method": "sequence-level (Kim & Rush 2016)" if sequence_level else "token-level (Hinton et al. 2015)",
        "loss": ("cross-entropy on the teacher's samples" if sequence_level else
                 "alpha * T^2 * KL(p_student^T || p_teacher^T) + (1 - alpha) * CE" if reverse else
                 "alpha * T^2 * KL(p_teacher^T || p_student^T) + (1 - alpha) * CE"),
        "teacher": str(teacher.run_dir.resolve()),
        "teacher_step": teacher.step,
        "teacher_weights_sha256": teacher.weights_sha256,
        "teacher_params": teacher.model.num_params(),
        "temperature": temperature,
        "alpha": alpha,
        "direction": None if sequence_level else ("reverse" if reverse else "forward"),
        "sequence_level": sequence_level,
        "samples": samples,
        "sample_seed": sample_seed,
        "sample_temperature": SAMPLE_TEMPERATURE if sequence_level else None,
        "samples_file": SAMPLES if sequence_level else None,
    }


def distill_run(teacher_dir: str | Path, config: RunConfig, out: str | Path, *, temperature: float = DEFAULT_TEMPERATURE,
                alpha: float = DEFAULT_ALPHA, reverse: bool = False, sequence_level: bool = False,
                samples: int = DEFAULT_SAMPLES, sample_seed: int | None = None, progress: bool = True) -> TrainResult:
    """Train the student `config` from the teacher run into the new run directory `out` (the
    trainer's run, plus distill.json). Returns the trainer's TrainResult (val_loss: the student's
    cross-entropy on the teacher's val split). Token level by default; sequence_level trains with
    plain cross-entropy on `samples` sequences of block_size tokens from the teacher (seed
    `sample_seed`, default the student's train.seed); temperature, alpha and reverse then do not apply."""
    out = Path(out)
    if out.exists():
        raise GroundupError(f"{out} already exists; distill into a new run directory (--out)")
    if sequence_level:
        check_samples(samples)
        sample_seed = config.train.seed if sample_seed is None else sample_seed
    else:
        check_recipe(temperature, alpha)
    teacher = load_teacher(teacher_dir, config.train.device)
    config, data = student_config(config, teacher)
    if sequence_level:
        if progress:
            print(f"sampling {samples} sequences of {config.model.block_size} tokens from {teacher.run_dir} "
                  f"(seed {sample_seed})", flush=True)
        tokens = teacher_samples(teacher.model, teacher.tokenizer, samples, config.model.block_size, sample_seed)
        data, loss = dataclasses.replace(data, train=tokens), None
        record = recipe(teacher, None, None, False, True, samples, sample_seed)
        record["samples_dtype"] = tokens.dtype.name
    else:
        loss = distill_loss(teacher.model, temperature, alpha, reverse)
        record = recipe(teacher, temperature, alpha, reverse, False, None, None)
    if progress:
        print(f"teacher: {teacher.run_dir} (step {teacher.step}, {teacher.model.num_params() / 1e6:.2f}M parameters); "
              + (f"{record['method']}" if sequence_level else
                 f"{record['method']}: T = {temperature:g}, alpha = {alpha:g}, {record['direction']} KL"), flush=True)
    out.mkdir(parents=True)
    atomic_write_json(out / RECIPE, record)
    if sequence_level:
        data.train.tofile(out / SAMPLES)
    return train(config, out, progress=progress, loss=loss, data=data)


def read_recipe(run_dir: str | Path) -> dict:
    """A distilled run's distill.json (CheckpointError when missing or corrupt)."""
    path = Path(run_dir) / RECIPE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: {run_dir} is not a distilled run (continue a plain run with "
                              f"`groundup train --resume {run_dir}`)")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        keys = {"teacher": str, "teacher_weights_sha256": str, "sequence_level": bool}
        if not isinstance(record, dict) or not all(isinstance(record.get(k), t) for k, t in keys.items()):
            raise ValueError
    except (ValueError, UnicodeDecodeError):
        raise CheckpointError(f"{path} is corrupt (not the JSON object groundup distill writes)") from None
    return record


def resume_distill(run_dir: str | Path, overrides: dict | None = None, progress: bool = True) -> TrainResult:
    """Continue a distilled run from its last good checkpoint with the recipe in its distill.json: the
    same teacher (its weights must still have the recorded SHA-256), loss and data. `overrides`:
    config fields to change, as for `groundup train --resume` (e.g. {"max_steps": 2000})."""
    run_dir = Path(run_dir)
    record = read_recipe(run_dir)
    config = ckpt.read_run_config(run_dir).replace(**(overrides or {}))
    teacher = load_teacher(record["teacher"], config.train.device)
    if teacher.weights_sha256 != record["teacher_weights_sha256"]:
        raise CheckpointError(f"the teacher {record['teacher']} has changed since {run_dir} started (weights SHA-256 "
                              f"{teacher.weights_sha256[:12]}…, recorded {record['teacher_weights_sha256'][:12]}…); "
                              "distill a new student from it instead")
    config, data = student_config(config, teacher)
    if record["sequence_level"]:
        path = run_dir / SAMPLES
        try:
            tokens = np.fromfile(path, dtype=np.dtype(record.get("samples_dtype", "uint16")))
        except (OSError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path} cannot be read ({e}); the run's teacher samples are gone") from None
        if len(tokens) != record.get("samples", 0) * (config.model.block_size + 1) or \
                (len(tokens) and int(tokens.max()) >= config.model.vocab_size):
            raise CheckpointError(f"{path} is corrupt or truncated ({len(tokens)} tokens; expected "
                                  f"{record.get('samples')} samples of {config.model.block_size + 1})")
        data, loss = dataclasses.replace(data, train=tokens), None
    else:
        check_recipe(record.get("temperature"), record.get("alpha"))
        loss = distill_loss(teacher.model, record["temperature"], record["alpha"], record.get("direction") == "reverse")
    return train(config, run_dir, resume=True, progress=progress, loss=loss, data=data)
