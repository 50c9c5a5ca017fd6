"""Token files: a corpus encoded once into train.bin / val.bin (np.memmap) plus a JSON sidecar.

    out_dir/
      train.bin, val.bin   token ids, uint16 (uint32 when the vocabulary needs it)
      tokenizer.json       the tokenizer that produced them
      meta.json            corpus, corpus SHA-256, tokenizer fingerprint, dtype, token counts

The split is deterministic: the first (1 - val_fraction) of the tokens train, the rest validate.
A directory is reused only when corpus text, tokenizer fingerprint and split all match, so a
changed tokenizer never reuses stale ids.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from groundup.data.corpora import Corpus, load_corpus
from groundup.errors import DataError, GroundupError
from groundup.tokenizer import CharTokenizer, Tokenizer, load_tokenizer, train_bpe
from groundup.util.cache import default_cache_dir  # (still importable from here, as before)
from groundup.util.files import atomic_write_bytes, atomic_write_json

META_VERSION = 1
SPLITS = ("train", "val")


@dataclass
class TokenData:
    """A prepared directory, opened: memmapped splits, the tokenizer and the sidecar."""

    directory: Path
    meta: dict
    tokenizer: Tokenizer
    train: np.ndarray
    val: np.ndarray

    def split(self, name: str) -> np.ndarray:
        return {"train": self.train, "val": self.val}[name]


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def encode_corpus(corpus: Corpus, tokenizer: Tokenizer) -> np.ndarray:
    """The whole corpus as one array of ids (documents separated as in `Corpus.text`). The corpus
    is text: a "<|endoftext|>" written in it stays characters (a separator would be inserted as
    the special id, never parsed out of the text)."""
    ids = tokenizer.encode(corpus.text, allowed_special="none")
    return np.asarray(ids, dtype=token_dtype(tokenizer.vocab_size))


def prepare(
    corpus: Corpus | str,
    tokenizer: Tokenizer,
    out_dir: str | os.PathLike,
    val_fraction: float = 0.1,
    errors: str = "strict",
) -> TokenData:
    """Encode `corpus` with `tokenizer` into `out_dir` (or reuse it if already prepared identically)."""
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if isinstance(corpus, str):
        corpus = load_corpus(corpus, errors=errors)
    out = Path(out_dir)
    corpus_sha = text_sha256(corpus.text)
    key = {"corpus_sha256": corpus_sha, "tokenizer_fingerprint": tokenizer.fingerprint, "val_fraction": val_fraction}
    existing = _read_meta(out)
    if existing is not None and all(existing.get(k) == v for k, v in key.items()):
        try:
            return open_prepared(out)
        except GroundupError:
            pass  # damaged: prepare it again below

    ids = encode_corpus(corpus, tokenizer)
    n_val = int(len(ids) * val_fraction)
    splits = {"train": ids[: len(ids) - n_val], "val": ids[len(ids) - n_val :]}
    out.mkdir(parents=True, exist_ok=True)
    for name, arr in splits.items():
        atomic_write_bytes(out / f"{name}.bin", arr.tobytes())
    tokenizer.save(out / "tokenizer.json")
    meta = {
        "version": META_VERSION,
        "corpus": corpus.name,
        **key,
        "characters": len(corpus.text),
        "tokenizer_kind": tokenizer.kind,
        "vocab_size": tokenizer.vocab_size,
        "dtype": str(ids.dtype),
        "tokens": {name: int(len(arr)) for name, arr in splits.items()},
    }
    atomic_write_json(out / "meta.json", meta)  # written last: its presence means "complete"
    return open_prepared(out)


def open_prepared(directory: str | os.PathLike) -> TokenData:
    """Open a directory written by `prepare`, checking the sidecar against the files."""
    directory = Path(directory)
    meta = _read_meta(directory)
    if meta is None:
        raise DataError(f"{directory} is not a prepared data directory (no meta.json); run `groundup data prepare` first")
    if meta.get("version") != META_VERSION:
        raise DataError(f"{directory}/meta.json has version {meta.get('version')!r}, expected {META_VERSION}; prepare the data again")
    tokenizer = load_tokenizer(directory / "tokenizer.json")
    if tokenizer.fingerprint != meta.get("tokenizer_fingerprint"):
        raise DataError(f"{directory}: tokenizer.json does not match the tokenizer the ids were made with; prepare the data again")
    dtype = np.dtype(meta["dtype"])
    arrays = {}
    for name in SPLITS:
        path = directory / f"{name}.bin"
        expected = meta["tokens"][name]
        if not path.exists() or path.stat().st_size != expected * dtype.itemsize:
            raise DataError(f"{path} is missing or truncated (expected {expected} tokens); prepare the data again")
        arrays[name] = np.memmap(path, dtype=dtype, mode="r", shape=(expected,)) if expected else np.zeros(0, dtype)
    return TokenData(directory, meta, tokenizer, arrays["train"], arrays["val"])


def _read_meta(directory: Path) -> dict | None:
    try:
        meta = json.loads((directory / "meta.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return meta if isinstance(meta, dict) else None


# ---- what `groundup train` calls ----------------------------------------------------------
def build_tokenizer(spec: str, corpus: Corpus, vocab_size: int = 4096, pattern: str = "cl100k",
                    cache_dir: Path | None = None) -> Tokenizer:
    """'char' → character vocabulary of the corpus; 'bpe' → BPE trained on it (cached);
    anything else → a tokenizer file (.json or .tiktoken)."""
    if spec == "char":
        return CharTokenizer.train(corpus.documents)
    if spec == "bpe":
        cache = (cache_dir or default_cache_dir()) / "tokenizers"
        path = cache / f"{corpus.name}-bpe{vocab_size}-{pattern if pattern in ('gpt2', 'cl100k') else 'custom'}-{text_sha256(corpus.text)[:16]}.json"
        if path.exists():
            try:
                return load_tokenizer(path)
            except GroundupError:
                pass  # damaged cache entry: train again
        tokenizer = train_bpe(corpus.documents, vocab_size, pattern=pattern)
        tokenizer.save(path)
        return tokenizer
    return load_tokenizer(spec, pattern=pattern)


def prepare_cached(corpus: str, tokenizer: str = "char", vocab_size: int = 4096, pattern: str = "cl100k",
                   val_fraction: float = 0.1, errors: str = "strict", cache_dir: Path | None = None) -> TokenData:
    """Prepare (or reuse) the token files for a corpus + tokenizer under the cache directory."""
    cache = cache_dir or default_cache_dir()
    text = load_corpus(corpus, errors=errors)
    tok = build_tokenizer(tokenizer, text, vocab_size, pattern, cache)
    return prepare_in_cache(text, tok, val_fraction, cache)


def prepare_in_cache(text, tokenizer, val_fraction: float = 0.1, cache_dir: Path | None = None) -> TokenData:
    """Token files for a loaded corpus and a built tokenizer, kept under the cache directory by
    corpus name + tokenizer fingerprint, so a changed tokenizer never reuses stale ids."""
    cache = cache_dir or default_cache_dir()
    return prepare(text, tokenizer, cache / "data" / f"{text.name}-{tokenizer.kind}-{tokenizer.fingerprint[:16]}", val_fraction)
