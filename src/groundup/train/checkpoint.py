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
a crash leaves the previous checkpoint untouched, and a failed write (full disk) says which one is
intact. state.json records its schema version, the SHA-256 of each weights file and of itself; a
checkpoint whose files don't match is reported by name and skipped for an older one. Loading
validates every tensor's name, shape, dtype and values against the config before use.
Weights are safetensors (no pickle anywhere); everything else is JSON. See docs/fault-tolerance.md.
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
from groundup.model.weights import check_weights  # noqa: F401 (re-exported: the checks a checkpoint passes)
from groundup.util.files import atomic_write_json, fsync_dir

SCHEMA_VERSION = 1
WEIGHTS = "model.safetensors"
OPTIMIZER = "optimizer.safetensors"
STATE = "state.json"
CONFIG = "config.json"
TOKENIZER = "tokenizer.json"
CHECKPOINTS = "checkpoints"
QUANTIZATION = "quantization"  # state.json key of a quantized run's recipe (groundup.quantize)
ALIGN = "align.json"  # in every alignment run (groundup.align): the method, β, the reference and its hash


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(run_dir: str | os.PathLike, step: int, weights: dict[str, torch.Tensor],
                    optimizer: dict[str, torch.Tensor], state: dict, keep: int = 3, crash=None) -> Path:
    """Write checkpoint `step` atomically, point the run directory's top-level files at it, and
    keep only the newest `keep` checkpoints. Returns the checkpoint directory.

    A failed write (full disk, read-only directory) raises CheckpointError saying which earlier
    checkpoint is still intact. `crash(phase)`, if given, is called at each point where a crash
    leaves a different picture on disk (write, rename, publish, prune): fault-injection tests kill
    the process there."""
    run_dir = Path(run_dir)
    root = run_dir / CHECKPOINTS
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-step_{step:08d}-{os.getpid()}"
    crash = crash or (lambda phase: None)
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        files = {}
        for name, tensors in ((WEIGHTS, weights), (OPTIMIZER, optimizer)):
            data = st_save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata={"format": "pt"})
            _write_synced(tmp / name, data)
            files[name] = sha256_bytes(data)
            crash("write")  # a half-written temp dir: ignored by readers, removed on resume
        full_state = {"schema": SCHEMA_VERSION, "step": step, **state, "files": files}
        full_state["state_sha256"] = state_checksum(full_state)
        _write_synced(tmp / STATE, (json.dumps(full_state, indent=2) + "\n").encode())
        fsync_dir(tmp)
        crash("rename")  # complete but not in place: the same
        old = None
        if final.exists():  # re-saving a step (e.g. a resumed run that had already finished)
            old = root / f".old-step_{step:08d}-{os.getpid()}"
            os.replace(final, old)
        os.replace(tmp, final)
        fsync_dir(root)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"could not write checkpoint {final} ({_describe(e)}); {_intact(run_dir, step)}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        _publish_latest(run_dir, final, crash)
    except OSError as e:
        raise CheckpointError(f"checkpoint {final} was written, but the run directory's top-level files could not "
                              f"be updated ({_describe(e)}); readers use {final} (the newest good checkpoint)") from None
    crash("prune")  # an extra old checkpoint: pruned by the next save
    _prune(root, keep)
    return final


def state_checksum(state: dict) -> str:
    """SHA-256 of state.json's content without its own checksum (canonical JSON)."""
    body = {k: v for k, v in state.items() if k != "state_sha256"}
    return sha256_bytes(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def _describe(e: OSError) -> str:
    where = f": {e.filename}" if e.filename else ""
    return f"{e.strerror or e}{where}"


def _intact(run_dir: Path, step: int) -> str:
    previous = [p for p in list_checkpoints(run_dir) if p.name != f"step_{step:08d}"]
    if previous:
        return f"the previous checkpoint {previous[0]} is intact"
    return "no earlier checkpoint exists"


def _publish_latest(run_dir: Path, checkpoint: Path, crash=lambda phase: None) -> None:
    """Make run_dir/{model,optimizer}.safetensors + state.json the files of `checkpoint`
    (hard links, each swapped in atomically; state.json last, so its checksums name the rest)."""
    for name in (WEIGHTS, OPTIMIZER, STATE):
        if (run_dir / name).exists() and os.path.samefile(checkpoint / name, run_dir / name):
            continue  # already this file (and rename() between two links to one file does nothing)
        tmp = run_dir / f".{name}.tmp-{os.getpid()}"
        tmp.unlink(missing_ok=True)
        try:
            os.link(checkpoint / name, tmp)
        except OSError:
            shutil.copyfile(checkpoint / name, tmp)
        os.replace(tmp, run_dir / name)
        if name == WEIGHTS:
            crash("publish")  # new weights beside the old state.json: the top level fails its checksum
    fsync_dir(run_dir)


def _prune(root: Path, keep: int) -> None:
    for old in list_checkpoints(root.parent)[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def remove_partial(run_dir: str | os.PathLike) -> list[str]:
    """Clean up after an interrupted save; returns what was removed or restored, by name.

    Temp dirs/files are deleted; a checkpoint moved aside to be replaced (.old-step_X) whose
    replacement never arrived is moved back."""
    run_dir = Path(run_dir)
    root = run_dir / CHECKPOINTS
    done = []
    for old in sorted(root.glob(".old-step_*")):
        final = root / old.name[len(".old-"):].rsplit("-", 1)[0]
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            done.append(old.name)
        else:
            os.replace(old, final)
            done.append(f"{old.name} (restored as {final.name})")
    for tmp in sorted(root.glob(".tmp-step_*")):
        shutil.rmtree(tmp, ignore_errors=True)
        done.append(tmp.name)
    for tmp in sorted(run_dir.glob(".*.tmp-*")):
        if tmp.name[1:].split(".tmp-")[0] in (WEIGHTS, OPTIMIZER, STATE):
            tmp.unlink(missing_ok=True)
            done.append(tmp.name)
    return done


def recover(run_dir: str | os.PathLike) -> list[str]:
    """After a crash, before resuming: clean up what an interrupted save left behind, and point the
    top-level files at the newest good checkpoint again (a crash while swapping them leaves them
    mixed). Returns one note per thing done."""
    run_dir = Path(run_dir)
    notes = [f"cleaned up {name}, left by an interrupted checkpoint write" for name in remove_partial(run_dir)]
    for directory in list_checkpoints(run_dir):
        try:
            verify_checkpoint(directory)
        except CheckpointError:
            continue
        top = run_dir / STATE
        same = top.is_file() and top.read_bytes() == (directory / STATE).read_bytes() and all(
            (run_dir / n).is_file() and (run_dir / n).stat().st_size == (directory / n).stat().st_size for n in (WEIGHTS, OPTIMIZER))
        if not same:
            _publish_latest(run_dir, directory)
            notes.append(f"the run directory's top-level files did not match {directory.name} (a save was interrupted); "
                         "restored them from it")
        break
    return notes


def has_checkpoint(run_dir: str | os.PathLike) -> bool:
    """True once training has saved anything (good or not) in `run_dir`."""
    return (Path(run_dir) / STATE).exists() or bool(list_checkpoints(run_dir))


def is_quantized(run_dir: str | os.PathLike) -> bool:
    """True when the run's state.json carries a quantization recipe (written by `groundup quantize`)."""
    try:
        state = json.loads((Path(run_dir) / STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and QUANTIZATION in state


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Checkpoint directories, newest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted((p for p in root.glob("step_*") if p.is_dir()), reverse=True)


def verify_checkpoint(directory: Path) -> dict:
    """Read state.json, check its schema and its own checksum, then every file's checksum; raise
    CheckpointError naming what is wrong."""
    state_path = directory / STATE
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{state_path} is missing") from None
    except IsADirectoryError:
        raise CheckpointError(f"{state_path} is a directory, expected a JSON file") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{state_path} is corrupt (not valid JSON)") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{state_path} is corrupt (not a JSON object)")
    if state.get("schema") != SCHEMA_VERSION:
        raise CheckpointError(f"{state_path} has schema {state.get('schema')!r}, but this groundup reads schema "
                              f"{SCHEMA_VERSION}; was it written by another version?")
    if "state_sha256" in state and state["state_sha256"] != state_checksum(state):
        raise CheckpointError(f"{state_path} is corrupt (its content does not match its checksum)")
    step, files = state.get("step"), state.get("files")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{state_path}: 'step' must be a non-negative integer, got {step!r}")
    if not isinstance(files, dict) or WEIGHTS not in files or not all(isinstance(v, str) for v in files.values()):
        raise CheckpointError(f"{state_path}: 'files' must map {WEIGHTS} (and the other files) to SHA-256 checksums")
    for name, expected in files.items():
        path = directory / name
        if Path(name).name != name:
            raise CheckpointError(f"{state_path} names a file outside its checkpoint: {name!r}")
        if not path.is_file():
            raise CheckpointError(f"{path} is missing" if not path.exists() else f"{path} is not a file")
        if sha256_bytes(path.read_bytes()) != expected:
            raise CheckpointError(f"{path} is corrupt or truncated (checksum mismatch)")
    return state


def find_checkpoint(run_dir: str | os.PathLike, warn=None) -> tuple[Path, dict]:
    """The newest checkpoint that verifies: the newest good one under checkpoints/, else the run
    directory's top-level files (runs without checkpoints/). Bad ones are reported through `warn`
    by name and skipped."""
    run_dir = check_run_dir(run_dir)
    warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    candidates = list_checkpoints(run_dir) + ([run_dir] if (run_dir / STATE).exists() else [])
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
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file; is {run_dir} a groundup run directory?")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path} is corrupt (not valid JSON)") from None
    try:
        return RunConfig.from_dict(d, str(path))
    except ConfigError as e:
        raise CheckpointError(str(e)) from None


def write_run_config(run_dir: str | os.PathLike, config: RunConfig) -> None:
    atomic_write_json(Path(run_dir) / CONFIG, config.to_dict())


def align_method(run_dir: str | os.PathLike) -> str | None:
    """The method an alignment run's align.json names ("reward-model", "dpo", "rl"), or None for any
    other run (no align.json, or one that is not a JSON object)."""
    try:
        record = json.loads((Path(run_dir) / ALIGN).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return record.get("method") if isinstance(record, dict) else None
