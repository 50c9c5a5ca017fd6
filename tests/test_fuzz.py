"""Fuzzing with hypothesis: whatever bytes, ids, JSON or TOML a user feeds the tokenizer, the config
loader or the checkpoint reader, the answer is a result or groundup's own error — never another
exception (which the CLI would show as a traceback)."""

from __future__ import annotations

import atexit
import base64
import hashlib
import io
import json
import math
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from safetensors.torch import save as st_save

from groundup import cli
from groundup.config import SECTIONS, RunConfig, load_config, parse_override
from groundup.errors import CheckpointError, ConfigError, TokenizerError
from groundup.tokenizer import CharTokenizer, from_dict, load_tokenizer
from groundup.train import checkpoint as ckpt

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SCRATCH = Path(tempfile.mkdtemp(prefix="groundup-fuzz-"))  # hypothesis reruns a test many times: one scratch dir
atexit.register(shutil.rmtree, SCRATCH, True)


@pytest.fixture(scope="module")
def char_tok():
    return CharTokenizer.train(["hello world, HELLO: é ✓"], special_tokens=["<|endoftext|>"])


any_ids = st.lists(st.integers(min_value=-(2**40), max_value=2**40) | st.integers(min_value=-2, max_value=700), max_size=40)


# ---- tokenizer: decode and encode ---------------------------------------------------------------
@FUZZ
@given(ids=any_ids)
def test_decode_of_any_ids_is_text_or_a_tokenizer_error(small_bpe, char_tok, ids):
    for tok in (small_bpe, char_tok):
        try:
            text = tok.decode(ids)
        except TokenizerError as e:
            assert "out of range" in str(e)
            assert any(not 0 <= i < tok.vocab_size for i in ids)
            continue
        assert all(0 <= i < tok.vocab_size for i in ids)
        # whatever came out is text the tokenizer can encode back to itself
        if tok is small_bpe:
            assert tok.decode(tok.encode(text, allowed_special="none")) == text


@FUZZ
@given(text=st.text(max_size=80))
def test_encode_of_any_text_roundtrips_or_names_the_character(small_bpe, char_tok, text):
    assert small_bpe.decode(small_bpe.encode(text, allowed_special="none")) == text
    try:
        ids = char_tok.encode(text, allowed_special="none")
    except TokenizerError as e:
        assert "is not in this character-level vocabulary" in str(e)
        return
    assert char_tok.decode(ids) == text


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-300, 300) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)
tokenizer_dicts = st.fixed_dictionaries(
    {"type": st.sampled_from(["bpe", "char"]), "version": st.just(1)},
    optional={"chars": json_values | st.text(max_size=10), "special_tokens": json_values,
              "pattern": json_values | st.sampled_from(["gpt2", "cl100k"]), "merges": json_values,
              "ranks": json_values | st.lists(st.sampled_from(["YQ==", "Yg==", "!!", ""]), max_size=3)},
)


@FUZZ
@given(d=tokenizer_dicts | json_values)
def test_any_tokenizer_json_loads_or_is_a_tokenizer_error(d):
    try:
        tok = from_dict(d)
    except TokenizerError:
        return
    assert tok.vocab_size >= 1 and tok.kind == d["type"]
    if tok.kind == "char":
        assert tok.chars == d["chars"] and list(tok.special_tokens) == list(d.get("special_tokens", []))
    again = from_dict(tok.to_dict())  # what loaded is what it says it is: it saves and reloads the same
    assert again.fingerprint == tok.fingerprint and again.vocab_size == tok.vocab_size
    ids = list(range(min(tok.vocab_size, 50)))
    assert again.decode_bytes(ids) == tok.decode_bytes(ids)


rank_lines = st.lists(st.tuples(st.binary(min_size=1, max_size=3), st.integers(0, 300)), max_size=6).map(
    lambda pairs: "".join(f"{base64.b64encode(b).decode()} {r}\n" for b, r in pairs).encode())


@FUZZ
@given(data=st.binary(max_size=200) | st.text(max_size=200).map(str.encode) | rank_lines)
def test_any_tokenizer_file_loads_or_is_a_tokenizer_error(data):
    for suffix in (".json", ".tiktoken"):
        path = SCRATCH / f"tok{suffix}"
        path.write_bytes(data)
        try:
            tok = load_tokenizer(path)
        except TokenizerError:
            continue
        if suffix == ".tiktoken":  # every line's token has its rank
            expected = {base64.b64decode(t): int(r) for t, r in (line.split() for line in data.splitlines() if line.strip())}
            assert tok.ranks == expected
        again = from_dict(tok.to_dict())  # saved and reloaded: the same ids for the same bytes
        assert again.fingerprint == tok.fingerprint and again.ranks == tok.ranks
        assert again.special_tokens == tok.special_tokens


def test_a_rank_file_with_a_gap_or_a_repeated_rank_is_a_clear_error():
    """Ids are ranks; saving re-numbers them 0..N-1, so a gap would silently shift every id after it."""
    for lines, what in (("YQ== 0\nYg== 2\n", "gap"), ("YQ== 0\nYg== 0\n", "repeat"), ("YQ== 0\nYQ== 1\n", "token twice")):
        path = SCRATCH / "gap.tiktoken"
        path.write_text(lines)
        with pytest.raises(TokenizerError, match="each token once and each rank once"):
            load_tokenizer(path)


@FUZZ
@given(stdin=st.text(max_size=60) | any_ids.map(json.dumps))
def test_cli_decode_of_any_stdin_exits_0_or_2(char_tok, monkeypatch, capsys, stdin):
    path = SCRATCH / "char.json"
    if not path.exists():
        char_tok.save(path)
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = cli.main(["tokenizer", "decode", "--tokenizer", str(path)])
    err = capsys.readouterr().err
    assert code in (0, 2) and (code == 0 or err.startswith("error: "))


# ---- config loader ------------------------------------------------------------------------------
FIELDS = sorted({name for klass in SECTIONS.values() for name in klass.__dataclass_fields__})


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    return "[" + ", ".join(toml_value(x) for x in v) + "]"


scalars = (st.integers(-5, 5000) | st.integers() | st.floats() | st.booleans() | st.text(max_size=12)
           | st.sampled_from(["rope", "gelu", "pre", "cpu", "char", "bpe", "shakespeare", "torch", "float64"]))
values = scalars | st.lists(st.integers(-3, 3), max_size=3)
keys = st.sampled_from(FIELDS) | st.text(min_size=1, max_size=10)
DEFAULTS = {name: getattr(getattr(RunConfig(), section), name) for section, klass in SECTIONS.items()
            for name in klass.__dataclass_fields__}
CHOICES = {"positional": ["sinusoidal", "learned"], "activation": ["relu"], "norm": ["post"], "attention": ["math"],
           "tokenizer": ["bpe"], "engine": ["numpy"], "device": ["cpu"], "dtype": ["float64", "bfloat16"],
           "errors": ["replace"], "pattern": ["gpt2"]}


def plausible(name: str):
    """Values of the field's own type, mostly in range: so that fuzzing also reaches configs that load."""
    default = DEFAULTS[name]
    if isinstance(default, bool):
        return st.booleans()
    if isinstance(default, int):
        return st.just(default) | st.integers(0, 600)
    if isinstance(default, float):
        return st.just(default) | st.floats(0, 1) | st.floats(0, 10)
    return st.sampled_from([default, *CHOICES.get(name, [])])


def section_table(section: str):
    names = sorted(SECTIONS[section].__dataclass_fields__)
    return st.lists(st.sampled_from(names).flatmap(lambda n: st.tuples(st.just(n), plausible(n))), max_size=5).map(dict)


config_docs = (st.dictionaries(st.sampled_from([*SECTIONS, "optimizer"]), st.dictionaries(keys, values, max_size=6), max_size=4)
               | st.fixed_dictionaries({}, optional={s: section_table(s) for s in SECTIONS}))
overrides_text = (st.text(max_size=30) | st.tuples(keys, values).map(lambda kv: f"{kv[0]}={toml_value(kv[1])}")
                  | st.sampled_from(FIELDS).flatmap(lambda n: plausible(n).map(lambda v: f"{n}={toml_value(v)}")))


def toml_document(doc: dict) -> str:
    return "".join(f"[{section}]\n" + "".join(f"{json.dumps(k, ensure_ascii=False)} = {toml_value(v)}\n" for k, v in table.items())
                   for section, table in doc.items())


def _check_config(config: RunConfig) -> None:
    assert RunConfig.from_dict(config.to_dict()) == config  # what loads, saves and reloads the same
    assert config.model.n_embd % config.model.n_head == 0 and config.train.min_lr <= config.train.learning_rate


@FUZZ
@given(doc=config_docs)
def test_any_toml_config_loads_or_is_a_config_error(doc):
    path = SCRATCH / "c.toml"
    path.write_text(toml_document(doc), encoding="utf-8")
    try:
        config = load_config(path)
    except ConfigError as e:
        assert str(e)
        return
    _check_config(config)


@FUZZ
@given(data=st.binary(max_size=300))
def test_any_bytes_as_a_config_file_load_or_are_a_config_error(data):
    path = SCRATCH / "raw.toml"
    path.write_bytes(data)
    try:
        _check_config(load_config(path))
    except ConfigError:
        pass


@FUZZ
@given(overrides=st.lists(overrides_text, max_size=4))
def test_any_set_overrides_apply_or_are_a_config_error(overrides):
    try:
        config = load_config(None, overrides)
    except ConfigError:
        return
    _check_config(config)
    if len(overrides) == 1:  # the one accepted override is what the config now holds
        key, value = parse_override(overrides[0])
        name = key.split(".")[-1]
        held = next(getattr(getattr(config, s), name) for s, k in SECTIONS.items() if name in k.__dataclass_fields__)
        assert held == value or (isinstance(held, float) and math.isnan(held) and math.isnan(value))


# ---- checkpoint reader --------------------------------------------------------------------------
WEIGHTS_BYTES = b"x"
GOOD_SHA = hashlib.sha256(WEIGHTS_BYTES).hexdigest()
file_maps = (json_values | st.just({"model.safetensors": "00"}) | st.just({"model.safetensors": GOOD_SHA})
             | st.just({"model.safetensors": GOOD_SHA, "optimizer.safetensors": GOOD_SHA})
             | st.just({"model.safetensors": GOOD_SHA, "../model.safetensors": GOOD_SHA}))


def _sealed(state):
    """Half the time add the correct state_sha256 (as the writer does), so the success path is reached."""
    return st.booleans().map(lambda seal: {**state, "state_sha256": ckpt.state_checksum(state)} if seal else state)


def _should_verify(state) -> bool:
    """An independent reading of the rules verify_checkpoint enforces (only model.safetensors = b"x" exists)."""
    if not isinstance(state, dict) or state.get("schema") != 1:
        return False
    if "state_sha256" in state and state["state_sha256"] != ckpt.state_checksum(state):
        return False
    step, files = state.get("step"), state.get("files")
    if type(step) is not int or step < 0 or not isinstance(files, dict) or "model.safetensors" not in files:
        return False
    return all(isinstance(v, str) for v in files.values()) and files == {"model.safetensors": GOOD_SHA}


@FUZZ
@given(state=json_values | st.fixed_dictionaries({"schema": st.just(1)}, optional={
    "step": json_values | st.integers(0, 10**6), "files": file_maps, "state_sha256": json_values,
    "sampler": json_values}).flatmap(_sealed))
@example(state={"schema": 1, "step": 7, "files": {"model.safetensors": GOOD_SHA}})
@example(state={"schema": 1, "step": 7, "files": {"model.safetensors": GOOD_SHA}, "state_sha256": "0" * 64})
@example(state={"schema": 1, "step": 7, "files": {"model.safetensors": "0" * 64}})
def test_any_state_json_verifies_or_is_a_checkpoint_error(state):
    directory = SCRATCH / "ck"
    directory.mkdir(exist_ok=True)
    (directory / "model.safetensors").write_bytes(WEIGHTS_BYTES)
    for stale in directory.glob("optimizer.safetensors"):
        stale.unlink()
    (directory / "state.json").write_text(json.dumps(state))
    try:
        verified = ckpt.verify_checkpoint(directory)
    except CheckpointError as e:
        assert not _should_verify(state), (state, str(e))
        return
    assert _should_verify(state), state
    assert verified == state  # what was read is what was written


small_tensors = st.dictionaries(st.text(alphabet="abc.", min_size=1, max_size=5),
                                st.lists(st.floats(-1e3, 1e3, width=32), min_size=1, max_size=4).map(torch.tensor),
                                min_size=1, max_size=3)


@FUZZ
@given(data=st.binary(max_size=300) | st.integers(0, 2000).map(lambda n: n.to_bytes(8, "little") + b'{"a":')
       | small_tensors.map(lambda t: (st_save(t), t)))
def test_any_bytes_as_safetensors_are_tensors_or_a_checkpoint_error(data):
    data, saved = data if isinstance(data, tuple) else (data, None)
    path = SCRATCH / "w.safetensors"
    path.write_bytes(data)
    try:
        tensors = ckpt.read_tensors(path)
    except CheckpointError:
        assert saved is None  # a file safetensors itself wrote always reads back
        return
    assert all(isinstance(t, torch.Tensor) for t in tensors.values())
    if saved is not None:
        assert tensors.keys() == saved.keys() and all(torch.equal(tensors[k], saved[k]) for k in saved)
