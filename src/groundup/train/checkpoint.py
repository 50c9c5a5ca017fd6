"""Checkpoints: the one place that writes and reads a run directory's weights and state.

    runs/NAME/
      config.json             resolved config (model + data + train)
      tokenizer.json          the tokenizer, so the run directory is self-contained
      model.safetensors       latest weights        ┐ hard links to the newest
      optimizer.safetensors   latest optimizer state├ checkpoints/step_XXXXXXXX/
      state.json              latest step, RNG, …   ┘
      checkpoints/step_XXXXXXXX/{model,optimizer}.safetensors + state.json   the last K
      metrics.jsonl, loss.png

A checkpoint is written into a temporary directory (every file fsynced), then renamed into place:
a crash leaves the previous checkpoint untouched. state.json records the SHA-256 of each weights
file; a checkpoint whose files don't match is reported by name and skipped for an older one.
Weights are safetensors (no pickle anywhere); everything else is JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from groundup.config import RunConfig
from groundup.errors import CheckpointError, ConfigError
from groundup.util.files import atomic_write_json, fsync_dir

SCHEMA_VERSION = 1
WEIGHTS = "model.safetensors"
OPTIMIZER = "optimizer.safetensors"
STATE = "state.json"
CONFIG = "config.json"
TOKENIZER = "tokenizer.json"
CHECKPOINTS = "checkpoints"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(run_dir: str | os.PathLike, step: int, weights: dict[str, torch.Tensor],
                    optimizer: dict[str, torch.Tensor], state: dict, keep: int = 3) -> Path:
    """Write checkpoint `step` atomically, point the run directory's top-level files at it, and
    keep only the newest `keep` checkpoints. Returns the checkpoint directory."""
    run_dir = Path(run_dir)
    root = run_dir / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-step_{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        files = {}
        for name, tensors in ((WEIGHTS, weights), (OPTIMIZER, optimizer)):
            data = st_save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata={"format": "pt"})
            _write_synced(tmp / name, data)
            files[name] = sha256_bytes(data)
        full_state = {"schema": SCHEMA_VERSION, "step": step, **state, "files": files}
        _write_synced(tmp / STATE, (json.dumps(full_state, indent=2) + "\n").encode())
        fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _publish_latest(run_dir, final)
    _prune(root, keep)
    return final


def _publish_latest(run_dir: Path, checkpoint: Path) -> None:
    """Make run_dir/{model,optimizer}.safetensors + state.json the files of `checkpoint`
    (hard links, each swapped in atomically; state.json last, so its checksums name the rest)."""
    for name in (WEIGHTS, OPTIMIZER, STATE):
        tmp = run_dir / f".{name}.tmp-{os.getpid()}"
        tmp.unlink(missing_ok=True)
        try:
            os.link(checkpoint / name, tmp)
        except OSError:
            shutil.copyfile(checkpoint / name, tmp)
        os.replace(tmp, run_dir / name)
    fsync_dir(run_dir)


def _prune(root: Path, keep: int) -> None:
    for old in list_checkpoints(root.parent)[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Checkpoint directories, newest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted((p for p in root.glob("step_*") if p.is_dir()), reverse=True)


def verify_checkpoint(directory: Path) -> dict:
    """Read state.json and check every file's checksum; raise CheckpointError naming what is wrong."""
    state_path = directory / STATE
    try:
        state = json.loads(state_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{state_path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{state_path} is corrupt (not valid JSON)") from None
    if not isinstance(state, dict) or state.get("schema") != SCHEMA_VERSION:
        raise CheckpointError(f"{state_path} has schema {state.get('schema') if isinstance(state, dict) else None!r}, "
                              f"expected {SCHEMA_VERSION}")
    for name, expected in state.get("files", {}).items():
        path = directory / name
        if not path.exists():
            raise CheckpointError(f"{path} is missing")
        if sha256_bytes(path.read_bytes()) != expected:
            raise CheckpointError(f"{path} is corrupt or truncated (checksum mismatch)")
    return state


def find_checkpoint(run_dir: str | os.PathLike, warn=None) -> tuple[Path, dict]:
    """The newest checkpoint that verifies: the run directory's top-level files, else the newest
    good one under checkpoints/. Bad ones are reported through `warn` by name and skipped."""
    run_dir = check_run_dir(run_dir)
    warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    candidates = ([run_dir] if (run_dir / STATE).exists() else []) + list_checkpoints(run_dir)
    if not candidates:
        raise CheckpointError(f"{run_dir} holds no checkpoint (no state.json); has training saved one yet?")
    problems = []
    for directory in candidates:
        try:
            return directory, verify_checkpoint(directory)
        except CheckpointError as e:
            problems.append(str(e))
            warn(f"{e}; trying an older checkpoint")
    raise CheckpointError(f"no usable checkpoint in {run_dir}: " + "; ".join(problems))


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return st_load(path.read_bytes())
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} cannot be read as safetensors ({e})") from None


def check_run_dir(run_dir: str | os.PathLike) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise CheckpointError(f"run directory {run_dir} does not exist; train one with `groundup train --out {run_dir}`")
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir} is a file, expected a run directory")
    return run_dir


def read_run_config(run_dir: str | os.PathLike) -> RunConfig:
    path = check_run_dir(run_dir) / CONFIG
    if not path.exists():
        raise CheckpointError(f"{path} is missing; is {run_dir} a groundup run directory?")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise CheckpointError(f"{path} is corrupt (not valid JSON)") from None
    try:
        return RunConfig.from_dict(d, str(path))
    except ConfigError as e:
        raise CheckpointError(str(e)) from None


def write_run_config(run_dir: str | os.PathLike, config: RunConfig) -> None:
    atomic_write_json(Path(run_dir) / CONFIG, config.to_dict())


def check_weights(weights: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], source: str) -> None:
    """Every expected tensor present with the right shape and a float dtype; nothing extra."""
    missing = [k for k in expected if k not in weights]
    if missing:
        raise CheckpointError(f"{source}: tensor {missing[0]!r} is missing ({len(missing)} missing in all); "
                              "the checkpoint does not match its config")
    extra = [k for k in weights if k not in expected]
    if extra:
        raise CheckpointError(f"{source}: unexpected tensor {extra[0]!r}; the checkpoint does not match its config")
    for name, ref in expected.items():
        t = weights[name]
        if tuple(t.shape) != tuple(ref.shape):
            raise CheckpointError(f"{source}: tensor {name!r} has shape {tuple(t.shape)}, but the config implies "
                                  f"{tuple(ref.shape)}; the checkpoint does not match its config")
        if not t.dtype.is_floating_point:
            raise CheckpointError(f"{source}: tensor {name!r} has dtype {t.dtype}, expected a floating-point dtype")
