"""Typed configs: TOML loading, --set overrides, and errors that name the field."""

from __future__ import annotations

import dataclasses

import pytest

from groundup.config import RunConfig, load_config, parse_override
from groundup.errors import ConfigError

from conftest import REPO


def test_shipped_char_config_is_the_classic_recipe():
    c = load_config(REPO / "configs" / "shakespeare_char.toml")
    assert (c.model.n_layer, c.model.n_head, c.model.n_embd, c.model.block_size) == (4, 4, 128, 64)
    assert (c.train.batch_size, c.train.learning_rate, c.train.max_steps, c.model.dropout) == (12, 1e-3, 2000, 0.0)
    assert c.model.positional == "rope"  # chosen by measurement; see the config's comments
    # The defaults are the same recipe, so `make demo` needs no config file.
    assert dataclasses.asdict(c.model) == dataclasses.asdict(RunConfig().model)


@pytest.mark.parametrize("name", ["shakespeare_char", "shakespeare_bpe"])
def test_every_shipped_config_loads(name):
    load_config(REPO / "configs" / f"{name}.toml")


def test_overrides_by_name_or_section_and_toml_values():
    c = load_config(None, ["max_steps=300", "train.seed=7", "positional=rope", 'corpus="python-docs"', "dropout=0.1",
                           "compile=true", "learning_rate=3e-4"])
    assert (c.train.max_steps, c.train.seed, c.model.positional, c.data.corpus) == (300, 7, "rope", "python-docs")
    assert c.model.dropout == 0.1 and c.train.compile is True and c.train.learning_rate == 3e-4
    assert load_config(None, ["learning_rate=1"]).train.learning_rate == 1.0  # an int where a float goes


@pytest.mark.parametrize(
    "override, message",
    [
        ("max_stpes=3", "unknown config key 'max_stpes'; did you mean max_steps"),
        ("max_steps=fast", "max_steps must be int, got str"),
        ("max_steps=1.5", "max_steps must be int, got float"),
        ("dropout=true", "dropout must be float, got a boolean"),
        ("n_head=3", "divisible by model.n_head"),
        ("min_lr=1", "must not exceed"),
        ("engine=jax", "train.engine must be"),
        ("parallel=zero3", "train.parallel must be"),
        ("nonsense", "expects key=value"),
    ],
)
def test_bad_overrides_name_the_problem(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_bad_config_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nn_layer = 2")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    bad.write_text("[model]\nn_layers = 2\n")
    with pytest.raises(ConfigError, match="unknown key 'n_layers'; did you mean n_layer"):
        load_config(bad)
    bad.write_text("[optimizer]\nlr = 2\n")
    with pytest.raises(ConfigError, match="unknown section"):
        load_config(bad)


def test_parse_override_keeps_bare_words_as_strings():
    assert parse_override("corpus=../my texts/a.txt") == ("corpus", "../my texts/a.txt")
    assert parse_override("seed = 3") == ("seed", 3)
