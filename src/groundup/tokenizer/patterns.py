"""Regex pre-tokenizers: text is split into chunks first, and BPE merges never cross a chunk.

Both patterns use `\\p{L}` (letters) and `\\p{N}` (numbers), so they need the `regex` module,
not `re`.
"""

# GPT-2 (Radford et al. 2019): contractions, optional-space + letters / numbers / punctuation, spaces.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# GPT-4 / cl100k_base: case-insensitive contractions, numbers in runs of at most 3 digits,
# newlines kept apart from other whitespace.
CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)

PATTERNS = {"gpt2": GPT2_PATTERN, "cl100k": CL100K_PATTERN}


def pattern_name(pattern: str) -> str | None:
    """The short name of a shipped pattern, or None for a custom one."""
    for name, value in PATTERNS.items():
        if value == pattern:
            return name
    return None


def resolve_pattern(name_or_regex: str) -> str:
    """'gpt2' or 'cl100k' → the regex; anything else is taken as a regex itself."""
    return PATTERNS.get(name_or_regex, name_or_regex)
