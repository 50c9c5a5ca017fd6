"""Text → token ids → text.

    train_tokenizer(documents, vocab_size=4096)      byte-level BPE (GPT-2/GPT-4 style)
    CharTokenizer.train(documents)                   one id per character
    load_tokenizer("tok.json" | "cl100k_base.tiktoken", pattern="cl100k")
    tok.encode(text) / tok.decode(ids) / tok.save(path)
    tok.encode(text, allowed_special="all")          "<|endoftext|>" in the text → the special id
                                                     (by default it is plain text)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from groundup.errors import TokenizerError
from groundup.tokenizer.base import ENDOFTEXT, FORMAT_VERSION, Tokenizer
from groundup.tokenizer.bpe import BPETokenizer, load_tiktoken_file, train_bpe
from groundup.tokenizer.char import CharTokenizer
from groundup.tokenizer.patterns import CL100K_PATTERN, GPT2_PATTERN, PATTERNS

__all__ = [
    "Tokenizer", "BPETokenizer", "CharTokenizer", "train_bpe", "train_tokenizer", "load_tokenizer",
    "from_dict", "ENDOFTEXT", "PATTERNS", "GPT2_PATTERN", "CL100K_PATTERN",
]

train_tokenizer = train_bpe

_KINDS = {"bpe": BPETokenizer, "char": CharTokenizer}


def from_dict(d: dict) -> Tokenizer:
    """Rebuild a tokenizer from its saved JSON object, checking type and version first."""
    if not isinstance(d, dict):
        raise TokenizerError("tokenizer file is not a JSON object")
    kind, version = d.get("type"), d.get("version")
    if kind not in _KINDS:
        raise TokenizerError(f"unknown tokenizer type {kind!r}; expected one of {sorted(_KINDS)}")
    if version != FORMAT_VERSION:
        raise TokenizerError(
            f"tokenizer file version {version!r} is not supported (this groundup reads version {FORMAT_VERSION}); "
            "retrain it with `groundup tokenizer train`"
        )
    try:
        return _KINDS[kind].from_dict(d)
    except TokenizerError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError) as e:  # a field of the wrong JSON type
        raise TokenizerError(f"tokenizer file is corrupt ({type(e).__name__}: {e})") from None


def load_tokenizer(path: str | os.PathLike, pattern: str = "cl100k") -> Tokenizer:
    """Load a tokenizer saved by groundup (.json) or a tiktoken rank file (.tiktoken).

    `pattern` ('gpt2', 'cl100k' or a regex) is used only for .tiktoken files, which carry none.
    """
    path = Path(path)
    if not path.exists():
        raise TokenizerError(f"tokenizer file {path} does not exist; train one with `groundup tokenizer train`")
    if path.is_dir():
        raise TokenizerError(f"{path} is a directory; pass the tokenizer file inside it (e.g. {path}/tokenizer.json)")
    if path.suffix == ".tiktoken":
        return load_tiktoken_file(path, pattern)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerError(f"tokenizer file {path} is corrupt: not valid JSON ({e})") from None
    try:
        return from_dict(d)
    except TokenizerError as e:
        raise TokenizerError(f"{path}: {e}") from None
