"""The interface every tokenizer shares: text ⇄ token ids, saved as human-readable JSON."""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from pathlib import Path

from groundup.errors import TokenizerError
from groundup.util.files import atomic_write_text

FORMAT_VERSION = 1
ENDOFTEXT = "<|endoftext|>"


class Tokenizer(ABC):
    """Maps text to a list of integer ids and back.

    Subclasses set `special_tokens` (str → id) and implement `encode`, `token_bytes`,
    `vocab_size` and `to_dict`. Decoding is shared: concatenate each id's bytes, then UTF-8 decode
    with U+FFFD for invalid bytes, so any sequence of valid ids decodes.
    """

    kind: str = ""
    special_tokens: dict[str, int]

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """One more than the largest id this tokenizer can produce (the model's vocab_size)."""

    @abstractmethod
    def encode(self, text: str, allowed_special: str | set[str] = "all") -> list[int]:
        """Text → ids. `allowed_special`: "all", "none", or a set of special-token strings."""

    @abstractmethod
    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one id stands for (raises TokenizerError when out of range)."""

    @abstractmethod
    def to_dict(self) -> dict:
        """A JSON-serialisable description that `groundup.tokenizer.from_dict` rebuilds."""

    def decode_bytes(self, ids) -> bytes:
        return b"".join(self.token_bytes(int(i)) for i in ids)

    def decode(self, ids) -> str:
        """Ids → text; bytes that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def check_ids(self, ids) -> None:
        for i in ids:
            self.token_bytes(int(i))

    def _out_of_range(self, token_id: int) -> TokenizerError:
        return TokenizerError(
            f"token id {token_id} is out of range for this tokenizer (valid ids: 0..{self.vocab_size - 1}); "
            "were these ids produced by a different tokenizer?"
        )

    @property
    def eot_id(self) -> int | None:
        """Id of <|endoftext|>, if this tokenizer has it."""
        return self.special_tokens.get(ENDOFTEXT)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the canonical JSON: two tokenizers with equal fingerprints encode identically."""
        cached = getattr(self, "_fingerprint", None)
        if cached is None:
            canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
            cached = hashlib.sha256(canonical.encode()).hexdigest()
            self._fingerprint = cached
        return cached

    def save(self, path: str | os.PathLike) -> Path:
        """Write the tokenizer as JSON, one list item per line (atomically: temp file + rename)."""
        return atomic_write_text(path, readable_json(self.to_dict()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, specials={list(self.special_tokens)})"


def readable_json(d: dict) -> str:
    """Top-level keys one per line; list values one item per line (merges read as a table)."""

    def value(v) -> str:
        if isinstance(v, list) and v:
            return "[\n  " + ",\n  ".join(json.dumps(x, ensure_ascii=False) for x in v) + "\n ]"
        return json.dumps(v, ensure_ascii=False)

    return "{\n" + ",\n".join(f" {json.dumps(k)}: {value(v)}" for k, v in d.items()) + "\n}\n"
