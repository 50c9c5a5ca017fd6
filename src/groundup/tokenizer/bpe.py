"""Byte-level BPE, as in GPT-2 and GPT-4.

Training (Sennrich et al. 2016, over UTF-8 bytes as in GPT-2):
  1. split the text into chunks with a regex pre-tokenizer; count each distinct chunk once;
  2. start from the 256 single bytes; count every adjacent pair, weighted by chunk frequency;
  3. repeatedly merge the most frequent pair into a new token, updating only the counts of the
     chunks that contain it (never recounting the corpus).

Encoding follows tiktoken's rule, so the fast path can hand our ranks to tiktoken: within a chunk,
repeatedly merge the adjacent pair whose concatenated bytes have the lowest rank (leftmost on ties);
a chunk that is itself a token is that token.
"""

from __future__ import annotations

import base64
import heapq
from collections import Counter, defaultdict
from functools import cached_property
from typing import Iterable

import regex

from groundup.errors import TokenizerError
from groundup.tokenizer.base import ENDOFTEXT, FORMAT_VERSION, Tokenizer
from groundup.tokenizer.patterns import pattern_name, resolve_pattern


class BPETokenizer(Tokenizer):
    """Byte-level BPE: `ranks` maps each token's bytes to its id (= its merge rank)."""

    kind = "bpe"

    def __init__(
        self,
        ranks: dict[bytes, int],
        pattern: str,
        special_tokens: dict[str, int] | None = None,
        merges: list[tuple[int, int]] | None = None,
    ):
        self.ranks = ranks
        self.pattern = resolve_pattern(pattern)
        self.special_tokens = dict(special_tokens or {})
        self.merges = merges  # known for tokenizers trained here; None for loaded rank files
        self._decoder: dict[int, bytes] = {i: b for b, i in ranks.items()}
        for text, i in self.special_tokens.items():
            if i in self._decoder:
                raise TokenizerError(f"special token {text!r} has id {i}, which is already an ordinary token")
            self._decoder[i] = text.encode("utf-8")
        self._vocab_size = max(self._decoder) + 1
        self._chunker = regex.compile(self.pattern)

    # ---- the interface -------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def token_bytes(self, token_id: int) -> bytes:
        try:
            return self._decoder[token_id]
        except KeyError:
            raise self._out_of_range(token_id) from None

    def encode(self, text: str, allowed_special: str | set[str] = "none") -> list[int]:
        """Fast path: the same ranks, pattern and specials, encoded by tiktoken (Rust).
        Specials in the text are plain text unless `allowed_special` names them (see Tokenizer)."""
        allowed = self.allowed_specials(allowed_special)
        return self._tiktoken.encode(text, allowed_special=allowed, disallowed_special=())

    def encode_batch(self, texts: list[str], allowed_special: str | set[str] = "none", num_threads: int = 1):
        allowed = self.allowed_specials(allowed_special)
        return self._tiktoken.encode_batch(
            texts, allowed_special=allowed, disallowed_special=(), num_threads=num_threads
        )

    def decode_bytes(self, ids) -> bytes:
        decoder = self._decoder
        try:
            return b"".join([decoder[int(i)] for i in ids])
        except KeyError:
            bad = next(int(i) for i in ids if int(i) not in decoder)
            raise self._out_of_range(bad) from None

    # ---- the readable reference encoder --------------------------------------------------
    def encode_reference(self, text: str, allowed_special: str | set[str] = "none") -> list[int]:
        """Pure Python, step by step: split out special tokens, chunk with the regex, BPE each chunk."""
        ids: list[int] = []
        for segment, is_special in self.split_specials(text, self.allowed_specials(allowed_special)):
            if is_special:
                ids.append(self.special_tokens[segment])
                continue
            for chunk in self._chunker.findall(segment):
                ids.extend(self._bpe_chunk(chunk.encode("utf-8")))
        return ids

    def _bpe_chunk(self, piece: bytes) -> list[int]:
        """Merge the lowest-ranked adjacent pair until no adjacent pair is a token."""
        ranks = self.ranks
        if piece in ranks:
            return [ranks[piece]]
        parts = [piece[i : i + 1] for i in range(len(piece))]
        while len(parts) > 1:
            best_rank, best_i = None, -1
            for i in range(len(parts) - 1):
                rank = ranks.get(parts[i] + parts[i + 1])
                if rank is not None and (best_rank is None or rank < best_rank):
                    best_rank, best_i = rank, i
            if best_rank is None:
                break
            parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
        return [ranks[p] for p in parts]

    @cached_property
    def _tiktoken(self):
        import tiktoken

        return tiktoken.Encoding(
            name=f"groundup-{self.fingerprint[:12]}",
            pat_str=self.pattern,
            mergeable_ranks=self.ranks,
            special_tokens=self.special_tokens,
        )

    # ---- saving ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = {
            "type": "bpe",
            "version": FORMAT_VERSION,
            "pattern_name": pattern_name(self.pattern),
            "pattern": self.pattern,
            "special_tokens": self.special_tokens,
        }
        if self.merges is not None:
            # Token 256 + k is merges[k] = [left id, right id]; bytes 0..255 are tokens 0..255.
            d["merges"] = [list(m) for m in self.merges]
            d["tokens_readable"] = [  # for people reading the file; the loader ignores it
                self._decoder[256 + k].decode("utf-8", errors="backslashreplace") for k in range(len(self.merges))
            ]
        else:
            # Rank files (e.g. cl100k_base.tiktoken): token bytes, base64, in id order.
            d["ranks"] = [base64.b64encode(b).decode("ascii") for b, _ in sorted(self.ranks.items(), key=lambda kv: kv[1])]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "BPETokenizer":
        specials = {str(k): int(v) for k, v in d.get("special_tokens", {}).items()}
        pattern = d.get("pattern") or d.get("pattern_name")
        if not isinstance(pattern, str):
            raise TokenizerError("tokenizer file has no 'pattern'")
        if "merges" in d:
            merges = [(int(a), int(b)) for a, b in d["merges"]]
            return cls(ranks_from_merges(merges), pattern, specials, merges)
        if "ranks" in d:
            ranks = {base64.b64decode(t): i for i, t in enumerate(d["ranks"])}
            if len(ranks) != len(d["ranks"]):
                raise TokenizerError("tokenizer file is corrupt: 'ranks' holds the same token twice")
            return cls(ranks, pattern, specials)
        raise TokenizerError("tokenizer file has neither 'merges' nor 'ranks'")


def ranks_from_merges(merges: list[tuple[int, int]]) -> dict[bytes, int]:
    """Rebuild the byte strings of every token from the merge list (bytes 0..255, then merges)."""
    vocab = [bytes([i]) for i in range(256)]
    for k, (a, b) in enumerate(merges):
        if not (0 <= a < len(vocab) and 0 <= b < len(vocab)):
            raise TokenizerError(f"tokenizer file is corrupt: merge {k} refers to id {max(a, b)} before it exists")
        vocab.append(vocab[a] + vocab[b])
    ranks = {tok: i for i, tok in enumerate(vocab)}
    if len(ranks) != len(vocab):
        raise TokenizerError("tokenizer file is corrupt: two merges produce the same token")
    return ranks


# ---- training -------------------------------------------------------------------------------
def count_chunks(documents: Iterable[str], pattern: str) -> Counter:
    """How often each regex chunk occurs: BPE only ever looks inside one chunk at a time."""
    chunker = regex.compile(resolve_pattern(pattern))
    counts: Counter = Counter()
    for doc in documents:
        counts.update(chunker.findall(doc))
    return counts


def train_bpe(
    documents: Iterable[str],
    vocab_size: int,
    pattern: str = "cl100k",
    special_tokens: Iterable[str] = (ENDOFTEXT,),
    progress: bool = False,
) -> BPETokenizer:
    """Learn merges until the vocabulary (256 bytes + merges + specials) reaches `vocab_size`."""
    special_tokens = list(special_tokens)
    minimum = 256 + len(special_tokens)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise TokenizerError(f"vocab size must be an integer, got {vocab_size!r}")
    if vocab_size < minimum:
        raise TokenizerError(
            f"vocab size {vocab_size} is too small: byte-level BPE needs 256 byte tokens "
            f"+ {len(special_tokens)} special token(s) = at least {minimum}"
        )
    chunk_counts = count_chunks(documents, pattern)
    words = [list(chunk.encode("utf-8")) for chunk in chunk_counts]  # each chunk as a list of ids
    freqs = list(chunk_counts.values())

    # Pair counts, weighted by chunk frequency, and which chunks hold each pair.
    pair_counts: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)
    for wi, word in enumerate(words):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += freqs[wi]
            where[pair].add(wi)
    heap = [(-count, pair) for pair, count in pair_counts.items()]  # max-heap, stale entries skipped
    heapq.heapify(heap)

    vocab = [bytes([i]) for i in range(256)]
    token_id = {tok: i for i, tok in enumerate(vocab)}
    merges: list[tuple[int, int]] = []
    target = vocab_size - len(special_tokens)
    bar = _progress(target - 256, progress)
    while len(vocab) < target:
        pair = _pop_most_frequent(heap, pair_counts)
        if pair is None:
            break  # every chunk is a single token: the corpus can't support a larger vocabulary
        new_bytes = vocab[pair[0]] + vocab[pair[1]]
        new_id = token_id.get(new_bytes)
        if new_id is None:  # a genuinely new token (the same bytes can rarely arise from another pair)
            new_id = len(vocab)
            vocab.append(new_bytes)
            token_id[new_bytes] = new_id
            merges.append(pair)
            bar.update(1)
        touched: set[tuple[int, int]] = set()
        for wi in where.pop(pair):
            old = words[wi]
            new = _merge(old, pair, new_id)
            if len(new) == len(old):
                continue  # stale index entry: an earlier merge already consumed this pair here
            f = freqs[wi]
            for p in zip(old, old[1:]):
                pair_counts[p] -= f
                touched.add(p)
            for p in zip(new, new[1:]):
                pair_counts[p] += f
                where[p].add(wi)
                touched.add(p)
            words[wi] = new
        for p in touched:
            if pair_counts[p] > 0:
                heapq.heappush(heap, (-pair_counts[p], p))
            else:
                del pair_counts[p]
    bar.close()
    specials = {s: len(vocab) + k for k, s in enumerate(special_tokens)}
    return BPETokenizer(token_id, pattern, specials, merges)


def _pop_most_frequent(heap, pair_counts) -> tuple[int, int] | None:
    """Most frequent pair (ties → smallest ids), skipping heap entries whose count went stale."""
    while heap:
        neg_count, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) == -neg_count:
            return pair
    return None


def _merge(word: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every non-overlapping occurrence of `pair` in `word` (left to right) by `new_id`."""
    a, b = pair
    out, i, n = [], 0, len(word)
    while i < n:
        if i < n - 1 and word[i] == a and word[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="BPE merges", unit="merge", disable=not enabled, leave=False)


# ---- .tiktoken rank files ------------------------------------------------------------------
# Special tokens of the published encodings, keyed by their number of ordinary tokens.
KNOWN_SPECIALS = {
    100256: {  # cl100k_base
        "<|endoftext|>": 100257,
        "<|fim_prefix|>": 100258,
        "<|fim_middle|>": 100259,
        "<|fim_suffix|>": 100260,
        "<|endofprompt|>": 100276,
    },
    50256: {"<|endoftext|>": 50256},  # r50k_base / gpt2
}


def load_tiktoken_file(path, pattern: str = "cl100k") -> BPETokenizer:
    """A `.tiktoken` rank file ("<base64 token> <rank>" per line) with the given split pattern.

    Such files carry no pattern and no special tokens: the pattern comes from the caller; the
    specials are those of the published encoding with the same size, else <|endoftext|> after
    the last rank.
    """
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
            except ValueError:
                raise TokenizerError(
                    f"{path}: line {lineno} is not '<base64 token> <rank>'; is this a .tiktoken rank file?"
                ) from None
    if not ranks:
        raise TokenizerError(f"{path}: the rank file is empty")
    if sorted(ranks.values()) != list(range(len(ranks))):  # ids are ranks: a gap or a repeat would shift them on save
        raise TokenizerError(f"{path}: the ranks must be 0..{len(ranks) - 1}, each token once and each rank once "
                             "(as in the published .tiktoken files)")
    specials = KNOWN_SPECIALS.get(len(ranks), {ENDOFTEXT: max(ranks.values()) + 1})
    return BPETokenizer(ranks, pattern, specials)
