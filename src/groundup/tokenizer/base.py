"""The interface every tokenizer shares: text ⇄ token ids, saved as human-readable JSON."""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from pathlib import Path

import regex

from groundup.errors import TokenizerError
from groundup.util.files import atomic_write_text

FORMAT_VERSION = 1
ENDOFTEXT = "<|endoftext|>"


class Tokenizer(ABC):
    """Maps text to a list of integer ids and back.

    Subclasses set `special_tokens` (str → id) and implement `encode`, `token_bytes`,
    `vocab_size` and `to_dict`. Decoding is shared: concatenate each id's bytes, then UTF-8 decode
    with U+FFFD for invalid bytes, so any sequence of valid ids decodes.

    Text is text: by default `encode` treats "<|endoftext|>" inside the input as its characters,
    never as the special token (a user's text must not be able to end a document or inject a
    control token). A caller that means it passes `allowed_special` ("all" or a set), as tiktoken's
    `encode(..., allowed_special=...)`; code that needs a special token inserts its id explicitly.
    """

    kind: str = ""
    special_tokens: dict[str, int]

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """One more than the largest id this tokenizer can produce (the model's vocab_size)."""

    @abstractmethod
    def encode(self, text: str, allowed_special: str | set[str] = "none") -> list[int]:
        """Text → ids. `allowed_special`: "none" (the default: specials in the text are plain
        text), "all", or a set of special-token strings to recognise in the text."""

    @abstractmethod
    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one id stands for (raises TokenizerError when out of range)."""

    @abstractmethod
    def to_dict(self) -> dict:
        """A JSON-serialisable description that `groundup.tokenizer.from_dict` rebuilds."""

    def allowed_specials(self, allowed_special: str | set[str]) -> set[str]:
        """"all" | "none" | a set of special-token strings → the set to recognise in the text."""
        if allowed_special == "all":
            return set(self.special_tokens)
        if allowed_special == "none":
            return set()
        if isinstance(allowed_special, str):  # a single token string, not a set of them
            allowed_special = {allowed_special}
        unknown = set(allowed_special) - set(self.special_tokens)
        if unknown:
            raise TokenizerError(f"unknown special tokens {sorted(unknown)}; this tokenizer has {sorted(self.special_tokens)}")
        return set(allowed_special)

    def split_specials(self, text: str, allowed: set[str]):
        """Yield (segment, is_special), with the `allowed` special tokens cut out of the text
        (longest first, so one special that contains another wins)."""
        if not allowed:
            if text:
                yield text, False
            return
        alternatives = "|".join(regex.escape(s) for s in sorted(allowed, key=len, reverse=True))
        start = 0
        for m in regex.finditer(alternatives, text):
            if m.start() > start:
                yield text[start : m.start()], False
            yield m.group(), True
            start = m.end()
        if start < len(text):
            yield text[start:], False

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
