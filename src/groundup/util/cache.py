"""The one groundup cache directory: prepared token files, trained tokenizers, compiled kernels."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """$GROUNDUP_CACHE, else $XDG_CACHE_HOME/groundup, else ~/.cache/groundup."""
    if os.environ.get("GROUNDUP_CACHE"):
        return Path(os.environ["GROUNDUP_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "groundup"
