"""Character-level tokenizer: one id per distinct character (the classic char-level Shakespeare)."""

from __future__ import annotations

from typing import Iterable

from groundup.errors import TokenizerError
from groundup.tokenizer.base import FORMAT_VERSION, Tokenizer


class CharTokenizer(Tokenizer):
    """Ids 0..len(chars)-1 are the corpus's characters in sorted order; specials follow."""

    kind = "char"

    def __init__(self, chars: str, special_tokens: Iterable[str] = ()):
        if len(set(chars)) != len(chars):
            raise TokenizerError("character tokenizer has a repeated character in its vocabulary")
        self.chars = chars
        self.special_tokens = {s: len(chars) + k for k, s in enumerate(special_tokens)}
        self._ids = {c: i for i, c in enumerate(chars)}
        self._decoder = [c.encode("utf-8") for c in chars] + [s.encode("utf-8") for s in self.special_tokens]

    @classmethod
    def train(cls, documents: Iterable[str], special_tokens: Iterable[str] = ()) -> "CharTokenizer":
        seen: set[str] = set()
        for doc in documents:
            seen.update(doc)
        if not seen:
            raise TokenizerError("cannot build a character vocabulary from an empty corpus")
        return cls("".join(sorted(seen)), special_tokens)

    @property
    def vocab_size(self) -> int:
        return len(self._decoder)

    def encode(self, text: str, allowed_special: str | set[str] = "none") -> list[int]:
        """One id per character; specials in the text only when `allowed_special` names them."""
        out: list[int] = []
        for segment, is_special in self.split_specials(text, self.allowed_specials(allowed_special)):
            out.extend([self.special_tokens[segment]] if is_special else self._encode_chars(segment))
        return out

    def _encode_chars(self, text: str) -> list[int]:
        ids = self._ids
        try:
            return [ids[c] for c in text]
        except KeyError:
            bad = next(c for c in text if c not in ids)
            raise TokenizerError(
                f"character {bad!r} is not in this character-level vocabulary "
                f"({len(self.chars)} characters learned from the training corpus); remove it from the text"
            ) from None

    def token_bytes(self, token_id: int) -> bytes:
        if 0 <= token_id < len(self._decoder):
            return self._decoder[token_id]
        raise self._out_of_range(token_id)

    def to_dict(self) -> dict:
        return {"type": "char", "version": FORMAT_VERSION, "chars": self.chars, "special_tokens": list(self.special_tokens)}

    @classmethod
    def from_dict(cls, d: dict) -> "CharTokenizer":
        chars = d.get("chars")
        if not isinstance(chars, str) or not chars:
            raise TokenizerError("character tokenizer file has no 'chars' string")
        return cls(chars, d.get("special_tokens", []))
