"""The gold judge and preference pairs (groundup.align.gold, groundup.align.preferences): the judge's
sign on obvious texts, Bradley–Terry labels drawn at the rate σ((g_a − g_b)/scale), the file's round
trip, and one clear line for every bad file or argument."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conftest import assert_clean_error, run_cli
from helpers import tiny_config
from groundup.align.gold import GoldJudge
from groundup.align.preferences import (PreferencePair, as_tensors, bradley_terry_probability, draw_labels,
                                        gold_agreement, make_preferences, pairs_from_model, read_preferences,
                                        write_preferences)
from groundup.align.runs import load_policy
from groundup.errors import GroundupError
from groundup.tokenizer import CharTokenizer
from groundup.train.trainer import train

P, L = 8, 24  # the tiny runs' context is 32 tokens


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("align_prefs") / "base"
    train(tiny_config("max_steps=10"), run, progress=False)
    return run


@pytest.fixture(scope="module")
def prefs(base_run, tmp_path_factory):
    pairs, meta = make_preferences(base_run, 12, prompt_len=P, length=L, seed=5)
    path = write_preferences(pairs, tmp_path_factory.mktemp("prefs") / "prefs.jsonl", meta)
    return path, pairs, meta


# ---- the gold judge ----------------------------------------------------------------------------
def test_gold_judge_sign_on_obvious_texts():
    judge = GoldJudge()
    good, bad, neutral = judge.score(["O happy day, I love thee, sweet and gentle friend",
                                      "I hate thee, vile and wretched traitor, die",
                                      "the table stands by the door"])
    assert good > 0.5 and bad < -0.5 and neutral == 0.0
    assert all(-1 <= s <= 1 for s in (good, bad, neutral))


def test_gold_judge_scores_the_decoded_continuation():
    tok = CharTokenizer.train(["abcdefghijklmnopqrstuvwxyz ,"])
    judge = GoldJudge()
    ids = [tok.encode("love and joy"), tok.encode("hate and woe")]
    assert judge.score_ids(tok, ids) == judge.score(["love and joy", "hate and woe"])


# ---- Bradley–Terry labels ----------------------------------------------------------------------
@pytest.mark.parametrize("gap", [-0.6, 0.0, 0.1, 0.3, 1.0])
def test_bradley_terry_label_frequency_matches_sigmoid(gap):
    """The claim: P(a ≻ b) = σ(gap / scale). 40,000 draws: the frequency lands within 4 standard
    errors of it (a chance miss ~6e-5); an argmax label (always the better one) or a flipped sign
    misses by far more."""
    scale, n = 0.25, 40_000
    labels = draw_labels(np.full(n, 0.5 + gap), np.full(n, 0.5), scale, np.random.default_rng(1))
    p = 1 / (1 + math.exp(-gap / scale))
    se = math.sqrt(p * (1 - p) / n)
    assert abs(labels.mean() - p) <= 4 * se, (labels.mean(), p, se)
    assert bradley_terry_probability(0.5 + gap, 0.5, scale) == pytest.approx(p, rel=1e-12)


class CountJudge:
    """A stand-in judge with spread-out scores: the fraction of vowels in the text."""

    name = "vowels"

    def score_ids(self, tokenizer, rows):
        texts = [tokenizer.decode([int(t) for t in row]) for row in rows]
        return [sum(c in "aeiou" for c in t) / max(1, len(t)) * 4 - 1 for t in texts]


def test_pairs_are_labelled_at_the_bradley_terry_rate(base_run):
    """pairs_from_model keeps the drawn winner as `chosen`: over many pairs the labels agree with the
    gold order as often as Σ σ(|Δg|/scale)/N predicts (within 4 standard errors of that sum of
    Bernoullis); swapping chosen and rejected, or labelling by argmax, is far outside it."""
    model, tok, config = load_policy(base_run)
    scale = 0.25
    prompts = torch.randint(0, tok.vocab_size, (600, P), generator=torch.Generator().manual_seed(0))
    pairs = pairs_from_model(model, tok, prompts, L, seed=3, bt_scale=scale, judge=CountJudge())
    untied = [p for p in pairs if p.gold_chosen != p.gold_rejected]
    assert len(untied) > 400
    q = bradley_terry_probability([abs(p.gold_chosen - p.gold_rejected) for p in untied], 0, scale)
    agree = sum(p.gold_chosen > p.gold_rejected for p in untied)
    assert abs(agree - q.sum()) <= 4 * math.sqrt((q * (1 - q)).sum()), (agree, q.sum())
    assert gold_agreement(pairs)[0] == pytest.approx(agree / len(untied))


# ---- the file -------------------------------------------------------------------------------------
def test_preferences_round_trip(base_run, prefs):
    path, pairs, meta = prefs
    _, tok, _ = load_policy(base_run)
    read, read_meta = read_preferences(path, tok)
    assert read == pairs and read_meta == meta
    assert meta["policy_run"] == str(base_run.resolve()) and meta["tokenizer_fingerprint"] == tok.fingerprint
    assert meta["bt_scale"] == 0.25 and meta["gold"] == "vader-compound" and meta["n"] == 12
    for p in pairs:
        assert len(p.prompt) == P and len(p.chosen) == len(p.rejected) == L
        judge = GoldJudge()
        assert [p.gold_chosen, p.gold_rejected] == judge.score_ids(tok, [p.chosen, p.rejected])
    chosen, rejected, prompt_len = as_tensors(pairs)
    assert chosen.shape == rejected.shape == (12, P + L) and prompt_len == P
    again, _ = make_preferences(base_run, 12, prompt_len=P, length=L, seed=5)
    assert again == pairs  # same seed, same pairs


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _one_line_error(path, tok=None):
    with pytest.raises(GroundupError) as e:
        read_preferences(path, tok)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_bad_preference_files_get_one_line(prefs, base_run, tmp_path):
    path, pairs, meta = prefs
    lines = path.read_text(encoding="utf-8").splitlines()
    assert "does not exist" in _one_line_error(tmp_path / "missing.jsonl")
    assert "is empty" in _one_line_error(_write(tmp_path / "empty.jsonl", []))
    assert "header but no pairs" in _one_line_error(_write(tmp_path / "header.jsonl", lines[:1]))
    assert "line 1" in _one_line_error(_write(tmp_path / "noheader.jsonl", lines[1:]))
    assert "line 3: not valid JSON" in _one_line_error(_write(tmp_path / "torn.jsonl", lines[:2] + ['{"prompt": [1,'] + lines[3:]))
    record = json.loads(lines[1])
    bad_id = {**record, "chosen": [meta["vocab_size"]] + record["chosen"][1:]}
    assert "line 2" in (msg := _one_line_error(_write(tmp_path / "id.jsonl", [lines[0], json.dumps(bad_id)]))) \
        and "outside the vocabulary" in msg
    short = {**record, "rejected": record["rejected"][:-1]}
    assert "line 2" in _one_line_error(_write(tmp_path / "short.jsonl", [lines[0], json.dumps(short)]))
    missing = {k: v for k, v in record.items() if k != "gold_rejected"}
    assert "gold_rejected" in _one_line_error(_write(tmp_path / "field.jsonl", [lines[0], json.dumps(missing)]))
    other = CharTokenizer.train(["just a few letters"])
    assert "another tokenizer" in _one_line_error(path, other)


def test_write_refuses_to_overwrite(prefs):
    path, pairs, meta = prefs
    with pytest.raises(GroundupError, match="already exists"):
        write_preferences(pairs, path, meta)


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(n=0), "--n"), (dict(bt_scale=0.0), "--bt-scale"), (dict(length=0), "--length"),
    (dict(prompt_len=20, length=20), "context"),
])
def test_bad_settings(base_run, kwargs, fragment):
    settings = {"n": 4, "prompt_len": P, "length": L, **kwargs}
    n = settings.pop("n")
    with pytest.raises(GroundupError, match=fragment):
        make_preferences(base_run, n, **settings)


def test_cli_preferences(base_run, tmp_path):
    out = tmp_path / "p.jsonl"
    result = run_cli("align", "preferences", "--run", str(base_run), "--n", "6", "--prompt-len", str(P),
                     "--length", str(L), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "6 preference pairs" in result.stdout
    assert len(read_preferences(out)[0]) == 6
    assert_clean_error(run_cli("align", "preferences", "--run", str(base_run), "--n", "6", "--prompt-len", str(P),
                               "--length", str(L), "--out", str(out)), "already exists")
    assert_clean_error(run_cli("align", "preferences", "--run", str(base_run), "--n", "0", "--out",
                               str(tmp_path / "q.jsonl")), "--n")
    with pytest.raises(GroundupError, match="does not exist"):
        make_preferences(tmp_path / "nope", 3)


def test_pair_dataclass_fields_are_the_contract():
    assert [f for f in PreferencePair.__dataclass_fields__] == ["prompt", "chosen", "rejected", "gold_chosen",
                                                                "gold_rejected"]
