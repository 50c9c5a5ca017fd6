"""A mixed corpus with a domain label on every token: Shakespeare (label 0) and Python source (label 1).

Each domain's text (ASCII characters only, so the two share one small character vocabulary) is cut
into `chunk_chars`-character chunks taken evenly across the whole corpus; the last `val_fraction` of
each domain's chunks are held out; the chunks of both domains are shuffled together (seeded) and
concatenated. Character tokens make the labels exact: token i is character i, and its label is the
domain of the chunk it came from. Equal numbers of characters come from each domain.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from groundup.data import load_corpus
from groundup.errors import GroundupError
from groundup.tokenizer.char import CharTokenizer

DOMAINS = ("shakespeare", "python-stdlib")


@dataclass
class MixedData:
    tokenizer: CharTokenizer
    train: np.ndarray  # token ids
    val: np.ndarray
    train_labels: np.ndarray  # domain index of each token (0 = DOMAINS[0], …)
    val_labels: np.ndarray
    domains: tuple[str, ...]


def ascii_only(text: str) -> str:
    return text.encode("ascii", "ignore").decode("ascii")


def even_chunks(text: str, n_chunks: int, chunk_chars: int) -> list[str]:
    """n_chunks chunks of chunk_chars characters starting at evenly spaced offsets across `text`."""
    if len(text) < n_chunks * chunk_chars:
        raise GroundupError(f"a mixed-corpus domain has {len(text):,} characters, fewer than the {n_chunks * chunk_chars:,} "
                            "asked for; lower mixed_chars")
    starts = np.linspace(0, len(text) - chunk_chars, n_chunks).astype(np.int64)
    return [text[s:s + chunk_chars] for s in starts]


def build_mixed(texts: dict[str, str] | None = None, chars_per_domain: int = 400_000, chunk_chars: int = 2_000,
                val_fraction: float = 0.1, seed: int = 0) -> MixedData:
    """The labelled token streams. `texts` maps domain name → text (default: the built-in corpora)."""
    if texts is None:
        texts = {name: load_corpus(name).text for name in DOMAINS}
    texts = {name: ascii_only(t) for name, t in texts.items()}
    n_chunks = max(2, chars_per_domain // chunk_chars)
    n_val = max(1, round(n_chunks * val_fraction))
    chunks = {name: even_chunks(t, n_chunks, chunk_chars) for name, t in texts.items()}
    tokenizer = CharTokenizer.train([c for cs in chunks.values() for c in cs])
    rng = np.random.default_rng(seed)
    split = {"train": [], "val": []}
    for d, cs in enumerate(chunks.values()):
        split["train"] += [(d, c) for c in cs[:-n_val]]
        split["val"] += [(d, c) for c in cs[-n_val:]]
    out = {}
    for part, items in split.items():
        order = rng.permutation(len(items))
        ids = [np.asarray(tokenizer.encode(items[i][1]), dtype=np.int64) for i in order]
        out[part] = np.concatenate(ids)
        out[part + "_labels"] = np.concatenate([np.full(len(a), items[i][0], dtype=np.int64) for a, i in zip(ids, order)])
    return MixedData(tokenizer, out["train"], out["val"], out["train_labels"], out["val_labels"], tuple(texts))


def labelled_windows(tokens: np.ndarray, labels: np.ndarray, block_size: int, n: int, seed: int):
    """n fixed windows (x, y, labels of x), each (n, block_size), from random offsets (seeded)."""
    rng = np.random.default_rng([seed, 17])
    starts = rng.integers(0, len(tokens) - block_size - 1, size=n)
    offsets = np.arange(block_size)
    x = tokens[starts[:, None] + offsets]
    y = tokens[starts[:, None] + offsets + 1]
    return x, y, labels[starts[:, None] + offsets]
