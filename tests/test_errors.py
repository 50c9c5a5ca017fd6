"""Inputs that can't hurt groundup: every bad input in docs/errors.md ends in one `error: …` line and
exit status 2 — never a traceback — and loading never trusts a file before validating it.

Cases already tested elsewhere are listed in docs/errors.md with their test; this file tests the
rest. The CLI runs in-process (`groundup.cli.main`): an exception escaping it would fail the test,
so a clean exit code here is the same claim as in a subprocess, at a fraction of the cost.
"""

from __future__ import annotations

import ast
import errno
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as st_save

from groundup import cli
from groundup.errors import CheckpointError
from groundup.train import checkpoint as ckpt
from groundup.train.trainer import train

from conftest import REPO
from helpers import TINY, tiny_config

FAST = ["threads=1", "max_steps=10", "checkpoint_interval=5"]


def cli_error(capsys, *argv: str) -> str:
    """Run the CLI in-process; assert exit status 2 with an `error:` line; return stderr."""
    code = cli.main(list(argv))
    err = capsys.readouterr().err
    assert code == 2, (code, err)
    assert "error: " in err and "Traceback" not in err, err
    return err


def argparse_error(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as e:
        cli.main(list(argv))
    err = capsys.readouterr().err
    assert e.value.code == 2 and "error: " in err and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    threads = torch.get_num_threads()
    run = tmp_path_factory.mktemp("errors") / "run"
    train(tiny_config(*FAST), run, progress=False)
    torch.set_num_threads(threads)
    return run


@pytest.fixture
def run_copy(trained, tmp_path):
    """A private copy of the trained run (no hard links shared with it) to damage."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


def _every_checkpoint(run: Path) -> list[Path]:
    return ckpt.list_checkpoints(run) + [run]


def _rewrite_weights(run: Path, edit) -> None:
    """Change the weights of every checkpoint and re-sign them (new checksums): only the tensor
    validation, not the checksum, can catch what `edit` did."""
    for directory in _every_checkpoint(run):
        tensors = ckpt.read_tensors(directory / ckpt.WEIGHTS)
        edit(tensors)
        data = st_save(tensors)
        (directory / ckpt.WEIGHTS).write_bytes(data)
        state = json.loads((directory / ckpt.STATE).read_text())
        state["files"][ckpt.WEIGHTS] = ckpt.sha256_bytes(data)
        state["state_sha256"] = ckpt.state_checksum(state)
        (directory / ckpt.STATE).write_text(json.dumps(state))


def _rewrite_state(run: Path, edit, resign: bool = True) -> None:
    for directory in _every_checkpoint(run):
        state = json.loads((directory / ckpt.STATE).read_text())
        edit(state)
        if resign:
            state["state_sha256"] = ckpt.state_checksum(state)
        (directory / ckpt.STATE).write_text(json.dumps(state))


# ---- no pickle anywhere -------------------------------------------------------------------------
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "joblib", "shelve", "marshal", "cloudpickle"}


def pickle_uses(source: str, filename: str = "<src>") -> list[str]:
    """Every way this source could unpickle (or pickle): pickle-family imports, torch.load without
    weights_only=True, torch.save, np.load(allow_pickle=True), pandas.read_pickle."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            found += [f"{filename}:{node.lineno} import {a.name}" for a in node.names if a.name.split(".")[0] in PICKLE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLE_MODULES:
            found.append(f"{filename}:{node.lineno} from {node.module} import …")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name, kwargs = node.func.attr, {k.arg: k.value for k in node.keywords}
            owner = ast.unparse(node.func.value)
            if name == "load" and owner == "torch":
                weights_only = kwargs.get("weights_only")
                if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                    found.append(f"{filename}:{node.lineno} torch.load without weights_only=True")
            elif name == "save" and owner == "torch":
                found.append(f"{filename}:{node.lineno} torch.save (writes a pickle)")
            elif name == "load" and owner in ("np", "numpy"):
                allow = kwargs.get("allow_pickle")
                if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
                    found.append(f"{filename}:{node.lineno} np.load(allow_pickle=…)")
            elif name in ("read_pickle", "to_pickle"):
                found.append(f"{filename}:{node.lineno} {name}")
    return found


def test_the_pickle_scanner_finds_what_it_looks_for():
    bad = ("import pickle\nfrom dill import loads\nimport torch, numpy as np\ntorch.load('w.pt')\n"
           "torch.load('w.pt', weights_only=False)\ntorch.save(m, 'w.pt')\nnp.load('a.npy', allow_pickle=True)\n")
    assert len(pickle_uses(bad)) == 6
    assert pickle_uses("import torch, numpy as np\ntorch.load('w.pt', weights_only=True)\nnp.load('a.npy')\n") == []


def test_no_pickle_anywhere_in_the_source():
    files = [p for d in ("src", "benchmarks", "scripts", "tests") for p in (REPO / d).rglob("*.py")
             if p.name != Path(__file__).name]
    assert len(files) > 20
    found = [hit for p in files for hit in pickle_uses(p.read_text(encoding="utf-8"), str(p.relative_to(REPO)))]
    assert found == []
    # and in plain text too (a string passed to exec, a shell line in a doc): no pickle loader by name
    text = re.compile(r"\b(pickle\.loads?|allow_pickle\s*=\s*True|weights_only\s*=\s*False)\b")
    hits = [str(p) for p in files if text.search(p.read_text(encoding="utf-8"))]
    assert hits == []


# ---- checkpoints: validated before use ----------------------------------------------------------
def test_every_checkpoint_corrupt_is_a_clean_error_naming_each(run_copy, capsys):
    for directory in _every_checkpoint(run_copy):
        (directory / ckpt.STATE).write_text("{ not json")
    err = cli_error(capsys, "sample", "--run", str(run_copy), "--max-new-tokens", "3")
    assert "no usable checkpoint" in err and "step_00000010/state.json is corrupt (not valid JSON)" in err
    assert "step_00000005/state.json" in err and "step_00000000/state.json" in err


def test_a_checkpoint_from_another_schema_version_is_refused(run_copy, capsys):
    _rewrite_state(run_copy, lambda s: s.update(schema=99))
    err = cli_error(capsys, "sample", "--run", str(run_copy), "--max-new-tokens", "3")
    assert "has schema 99, but this groundup reads schema 1" in err


def test_an_edited_state_json_fails_its_own_checksum(run_copy, capsys):
    _rewrite_state(run_copy, lambda s: s.update(step=7), resign=False)  # valid JSON, wrong content
    err = cli_error(capsys, "train", "--resume", str(run_copy))
    assert "does not match its checksum" in err


def test_state_json_without_required_fields_is_named(run_copy, capsys):
    _rewrite_state(run_copy, lambda s: s.pop("sampler"))
    err = cli_error(capsys, "train", "--resume", str(run_copy))
    assert "'sampler' is missing" in err and "incomplete" in err


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.pop("final_norm.weight"), "tensor 'final_norm.weight' is missing"),
    (lambda t: t.update(extra=torch.zeros(2)), "unexpected tensor 'extra'"),
    (lambda t: t.update({"final_norm.bias": torch.zeros(7)}), "tensor 'final_norm.bias' has shape (7,)"),
    (lambda t: t.update({"final_norm.bias": torch.zeros(32, dtype=torch.int32)}),
     "tensor 'final_norm.bias' has dtype torch.int32, expected a floating-point dtype"),
    (lambda t: t.update({"final_norm.bias": torch.zeros(32, dtype=torch.float16)}), "a checkpoint holds one dtype"),
    (lambda t: t["token_embedding.weight"].__setitem__((3, 4), float("nan")),
     "tensor 'token_embedding.weight' holds NaN or infinite values"),
])
def test_weights_are_validated_tensor_by_tensor_before_use(run_copy, capsys, edit, message):
    _rewrite_weights(run_copy, edit)
    assert message in cli_error(capsys, "sample", "--run", str(run_copy), "--max-new-tokens", "3")


def test_resume_checks_the_dtype_the_config_implies(run_copy, capsys):
    _rewrite_weights(run_copy, lambda t: t.update({k: v.double() for k, v in t.items()}))
    err = cli_error(capsys, "train", "--resume", str(run_copy))
    assert "has dtype torch.float64, but the config implies torch.float32" in err


def test_a_run_directory_that_is_a_file_or_not_a_run(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert "is a file, expected a run directory" in cli_error(capsys, "sample", "--run", str(tmp_path / "file"))
    (tmp_path / "empty").mkdir()
    assert "config.json is missing; is" in cli_error(capsys, "train", "--resume", str(tmp_path / "empty"))


def test_corrupt_config_json_is_named(run_copy, capsys):
    (run_copy / "config.json").write_text("[model]\nn_layer = 2")  # TOML, not JSON
    assert "config.json is corrupt (not valid JSON)" in cli_error(capsys, "train", "--resume", str(run_copy))
    (run_copy / "config.json").write_text(json.dumps({"model": {"n_layer": "two"}}))
    assert "n_layer must be int, got str" in cli_error(capsys, "sample", "--run", str(run_copy))


def test_an_unwritable_run_directory_is_a_clean_error(tmp_path, capsys, monkeypatch):
    def read_only(path, obj):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(ckpt, "atomic_write_json", read_only)  # simulated: root ignores chmod
    args = [a for s in TINY + FAST for a in ("--set", s)]
    err = cli_error(capsys, "train", *args, "--out", str(tmp_path / "r"))
    assert "Read-only file system" in err and "config.json" in err


# ---- CLI arguments ------------------------------------------------------------------------------
def test_cli_argument_errors(trained, tmp_path, capsys):
    assert "invalid int value: 'abc'" in argparse_error(capsys, "train", "--max-steps", "abc")
    assert "invalid choice: 'fly'" in argparse_error(capsys, "fly")
    assert "--inject 'nan@x' is not a fault" in cli_error(capsys, "train", "--inject", "nan@x", "--out", str(tmp_path / "r"))
    assert "drop --config" in cli_error(capsys, "train", "--resume", str(tmp_path), "--config", "configs/x.toml")
    tok = str(trained / "tokenizer.json")
    assert "none.txt does not exist" in cli_error(capsys, "tokenizer", "encode", "--tokenizer", tok,
                                                  "--text-file", str(tmp_path / "none.txt"))
    assert "is a directory, expected a .txt file" in cli_error(capsys, "tokenizer", "encode", "--tokenizer", tok,
                                                                "--text-file", str(tmp_path))
    assert "is a directory" in cli_error(capsys, "train", "--config", str(tmp_path), "--out", str(tmp_path / "r"))
    for bad in ("spike_factor=0.5", "lr_backoff=0", "max_bad_steps=0", "max_rollbacks=-1"):
        assert bad.split("=")[0] in cli_error(capsys, "train", "--set", bad, "--out", str(tmp_path / "r"))


# ---- sampling -----------------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--top-p", "0"], "top-p must be in (0, 1]"),
    (["--top-p", "1.5"], "top-p must be in (0, 1]"),
    (["--top-k", "0"], "top-k must be ≥ 1"),
    (["--temperature", "nan"], "temperature must be ≥ 0"),
    (["--max-new-tokens", "1000000000"], "max-new-tokens must be an integer between 1 and 1,000,000"),
    (["--max-new-tokens", "0"], "max-new-tokens must be an integer between 1"),
])
def test_bad_sampling_arguments_from_the_cli(trained, capsys, args, message):
    assert message in cli_error(capsys, "sample", "--run", str(trained), "--prompt", "A", *args)


def test_a_prompt_longer_than_the_context_is_cropped_with_a_warning(trained, capsys):
    code = cli.main(["sample", "--run", str(trained), "--prompt", "ROMEO: " * 20, "--max-new-tokens", "3", "--seed", "1"])
    out, err = capsys.readouterr()
    assert code == 0 and "warning: the prompt is 140 tokens but the model's context is 32" in err
    assert "Traceback" not in err


def test_errors_md_lists_at_least_twenty_cases_each_with_a_test():
    text = (REPO / "docs" / "errors.md").read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| Area")
            and not set(line) <= set("|- ")]
    assert len(rows) >= 20
    areas = {row.split("|")[1].strip() for row in rows}
    assert {"tokenizer", "data", "config", "checkpoint", "CLI", "sampling"} <= areas
    test_names = {m for p in (REPO / "tests").glob("test_*.py") for m in re.findall(r"def (test_\w+)", p.read_text())}
    for row in rows:
        referenced = re.findall(r"`(test_\w+)", row)
        assert referenced, row
        assert all(name in test_names for name in referenced), row
