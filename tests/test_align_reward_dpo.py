"""Reward-model and DPO runs (groundup.align.reward, groundup.align.dpo): they learn a planted
preference, leave π_ref untouched, write run directories, and refuse bad input with one line."""

from __future__ import annotations

import copy
import json
import random

import pytest
import torch

from groundup import cli
from groundup.align import dpo, reward
from groundup.align.preferences import FORMAT, VERSION, PreferencePair, write_preferences
from groundup.align.runs import (AlignSettings, check_reference_unchanged, creating, load_policy, pair_tensors,
                                 prompts_from_corpus, reference_record, sample_continuations, split_pairs,
                                 weights_sha256)
from groundup.data import prepare_cached
from groundup.errors import ConfigError, GroundupError
from groundup.sample import load_run
from groundup.train import checkpoint as ckpt
from groundup.train.align import sequence_logprobs
from groundup.train.trainer import train

from conftest import assert_clean_error, run_cli
from helpers import tiny_config



@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matmuls: one thread is faster and steadier on a shared machine (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SETTINGS = dict(lr=1e-3, batch_size=16, held_out=0.25, seed=0)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """π_ref: a tiny char Shakespeare run (two steps: the tests plant their own preference)."""
    run = tmp_path_factory.mktemp("align") / "base"
    train(tiny_config("max_steps=2", "checkpoint_interval=0"), run, progress=False)
    return run


def planted_pairs(tokenizer, n: int = 200, seed: int = 0, prompt_len: int = 4, length: int = 6):
    """Random prompts and continuations; gold = how many 'e's the continuation holds; the chosen one
    has more (no label noise, no ties)."""
    rng = random.Random(seed)
    V, e = tokenizer.vocab_size, tokenizer.encode("e")[0]
    draw = lambda k: [e if rng.random() < 0.3 else rng.randrange(V) for _ in range(k)]  # noqa: E731
    pairs = []
    while len(pairs) < n:
        prompt, a, b = draw(prompt_len), draw(length), draw(length)
        if a.count(e) != b.count(e):
            w, l = (a, b) if a.count(e) > b.count(e) else (b, a)
            pairs.append(PreferencePair(prompt, w, l, float(w.count(e)), float(l.count(e))))
    return pairs


def meta_for(tokenizer, prompt_len: int = 4, length: int = 6, **changes) -> dict:
    return {"format": FORMAT, "version": VERSION, "tokenizer_fingerprint": tokenizer.fingerprint,
            "tokenizer_kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size, "prompt_len": prompt_len,
            "length": length, **changes}


@pytest.fixture(scope="module")
def prefs(base, tmp_path_factory):
    _, tokenizer, _ = load_policy(base)
    path = tmp_path_factory.mktemp("prefs") / "prefs.jsonl"
    write_preferences(planted_pairs(tokenizer), path, meta_for(tokenizer))
    return path


# ---- learning a planted preference, in memory ------------------------------------------------------------
def test_reward_model_learns_a_planted_preference(base):
    policy, tokenizer, config = load_policy(base)
    before = weights_sha256(policy)
    result = reward.train_reward_model(policy, planted_pairs(tokenizer), AlignSettings(steps=60, **SETTINGS), config=config)
    held = result.held_out
    assert held.n == 50
    # chance is 0.5: ≥ 40 of 50 right has probability < 2e-5 for a coin
    assert held.accuracy >= 0.8, (held, result.before)
    assert held.gold_agreement == pytest.approx(held.accuracy)  # labels follow gold exactly here
    assert held.label_agreement == 1.0
    assert result.losses[-1] < result.losses[0]
    assert weights_sha256(policy) == before  # the reward model trained a copy


def test_dpo_raises_the_chosen_over_rejected_margin(base):
    reference, tokenizer, config = load_policy(base)
    before = weights_sha256(reference)
    result = dpo.train_dpo(reference, planted_pairs(tokenizer), 0.5, AlignSettings(steps=30, **SETTINGS), config=config)
    assert result.before.margin == 0.0 and result.before.loss == pytest.approx(0.6931471805599453)  # π = π_ref
    assert result.train.margin > 1.0, result.train
    assert result.held_out.margin > 0.5 and result.held_out.accuracy >= 0.8, result.held_out
    assert result.held_out.loss < result.before.loss
    assert weights_sha256(reference) == before
    assert weights_sha256(result.reference) == before  # the frozen copy did not move either
    assert weights_sha256(result.policy) != before


def test_a_larger_beta_moves_the_policy_less(base):
    """β is the weight of the KL term: at the same steps, the policy trained at a large β ends with a
    smaller log-ratio margin on the training pairs (the loss saturates sooner)."""
    reference, tokenizer, config = load_policy(base)
    pairs = planted_pairs(tokenizer, n=96)
    margins = [dpo.train_dpo(reference, pairs, beta, AlignSettings(steps=15, **SETTINGS), config=config).train.margin
               for beta in (0.1, 10.0)]
    assert margins[0] > margins[1] > 0, margins


# ---- run directories and the CLI --------------------------------------------------------------------------
@pytest.mark.parametrize("pool", ["last", "mean"])
def test_reward_run_writes_a_run_directory_that_loads_back(base, prefs, tmp_path, pool):
    file_hash = ckpt.find_checkpoint(base)[1]["files"][ckpt.WEIGHTS]
    out = tmp_path / "rm"
    assert cli.main(["align", "reward", "--run", str(base), "--prefs", str(prefs), "--out", str(out), "--steps", "40",
                     "--lr", "1e-3", "--held-out", "0.25", "--pool", pool]) == 0
    record = json.loads((out / "align.json").read_text())
    assert record["pool"] == pool
    assert record["method"] == "reward-model" and record["reference_unchanged"] is True
    assert record["reference_weights_sha256"] == weights_sha256(load_policy(base)[0])
    assert record["reference_file_sha256"] == file_hash == ckpt.find_checkpoint(base)[1]["files"][ckpt.WEIGHTS]
    assert record["held_out"]["n"] == 50 and record["held_out"]["accuracy"] >= 0.8
    assert (out / "metrics.jsonl").read_text().count("\n") == 40
    model, tokenizer, again = reward.load_reward_model(out)
    assert again == record and model.pool == pool  # read back with the pooling it was trained with
    pairs = planted_pairs(tokenizer)
    chosen, rejected, _ = pair_tensors(pairs)
    _, held = split_pairs(len(pairs), 0.25, 0)
    g_w, g_l = reward.gold_tensors(pairs)
    stats = reward.pair_stats(model, chosen[held], rejected[held], g_w[held], g_l[held])
    assert stats.accuracy == pytest.approx(record["held_out"]["accuracy"])  # the saved weights are the trained ones
    with pytest.raises(GroundupError, match="not a reward-model run"):
        reward.load_reward_model(base)  # a plain training run: no align.json
    with pytest.raises(GroundupError, match="is a reward-model run .* no language-model head"):
        load_run(out)  # `groundup sample` on it: one line, not a missing-tensor error


def test_dpo_run_writes_a_policy_run_that_samples(base, prefs, tmp_path, capsys):
    out = tmp_path / "dpo"
    assert cli.main(["align", "dpo", "--run", str(base), "--prefs", str(prefs), "--out", str(out), "--beta", "0.5",
                     "--steps", "20", "--lr", "1e-3", "--held-out", "0.25"]) == 0
    assert "margin" in capsys.readouterr().out
    record = json.loads((out / "align.json").read_text())
    assert record["method"] == "dpo" and record["beta"] == 0.5 and record["reference"] == str(base.resolve())
    assert record["train"]["margin"] > 0.5
    policy, tokenizer, config = load_run(out, "cpu")  # what `groundup sample` loads
    assert weights_sha256(policy) != record["reference_weights_sha256"]
    assert config.train.max_steps == 20 and config.train.learning_rate == 1e-3 and config.train.weight_decay == 0
    # an existing run directory is refused, and left as it was
    listing = sorted(p.name for p in out.iterdir())
    assert cli.main(["align", "dpo", "--run", str(base), "--prefs", str(prefs), "--out", str(out), "--beta", "1"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == listing


# ---- bad input: one line, exit 2, nothing written ---------------------------------------------------------
def test_bad_beta_from_the_command_line(base, prefs, tmp_path):
    out = tmp_path / "never"
    result = run_cli("align", "dpo", "--run", str(base), "--prefs", str(prefs), "--out", str(out), "--beta", "0")
    assert_clean_error(result, "beta", "positive")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("command", ["reward", "dpo"])
def test_bad_inputs_are_one_line_errors(command, base, prefs, tmp_path, capsys):
    _, tokenizer, _ = load_policy(base)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    other = tmp_path / "other-tokenizer.jsonl"
    write_preferences(planted_pairs(tokenizer, n=10), other, meta_for(tokenizer, tokenizer_fingerprint="0" * 64))
    out = tmp_path / "out"
    extra = ["--beta", "0.1"] if command == "dpo" else []
    cases = [(["--prefs", str(empty)], "is empty"),
             (["--prefs", str(other)], "another tokenizer"),
             (["--prefs", str(tmp_path / "missing.jsonl")], "does not exist"),
             (["--prefs", str(prefs), "--steps", "0"], "steps must be a positive integer"),
             (["--prefs", str(prefs), "--held-out", "1"], "held-out fraction"),
             (["--prefs", str(prefs), "--lr", "-1"], "learning rate")]
    if command == "dpo":
        cases.append((["--prefs", str(prefs), "--beta", "-0.5"], "beta"))
    for args, fragment in cases:
        code = cli.main(["align", command, "--run", str(base), "--out", str(out), *extra, *args])
        err = capsys.readouterr().err
        assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1, (args, err)
        assert not out.exists(), args
    assert cli.main(["align", command, "--run", str(tmp_path / "no-run"), "--prefs", str(prefs), "--out", str(out),
                     *extra]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_pairs_that_do_not_fit_the_policy_are_refused():
    pair = lambda prompt, w, l: PreferencePair(prompt, w, l, 1.0, 0.0)  # noqa: E731
    with pytest.raises(GroundupError, match="outside the policy's vocabulary"):
        pair_tensors([pair([1, 2], [3], [70])], vocab_size=65)
    with pytest.raises(GroundupError, match="differ in length"):
        pair_tensors([pair([1, 2], [3], [4]), pair([1], [3], [4])])
    with pytest.raises(GroundupError, match="differ in length"):
        pair_tensors([pair([1, 2], [3, 5], [4])])
    with pytest.raises(GroundupError, match="more than the policy's context of 32"):
        pair_tensors([pair([1] * 20, [3] * 13, [4] * 13)], vocab_size=65, block_size=32)
    with pytest.raises(GroundupError, match="no preference pairs"):
        pair_tensors([])
    with pytest.raises(GroundupError, match="too few"):
        split_pairs(1, 0.1, 0)
    with pytest.raises(ConfigError, match="batch-size"):
        AlignSettings(batch_size=0)


def test_a_reference_that_changes_during_a_run_is_reported(base):
    model, _, _ = load_policy(base)
    record = reference_record(base, model)
    check_reference_unchanged(base, model, record)  # unchanged: silent
    with torch.no_grad():
        model.token_embedding.weight[0, 0] += 1e-3
    with pytest.raises(GroundupError, match="changed during the run"):
        check_reference_unchanged(base, model, record)


def test_a_failed_run_leaves_no_directory(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with creating(out):
            (out / "metrics.jsonl").write_text("{}\n")
            raise RuntimeError("interrupted mid-training")
    assert not out.exists()


# ---- the shared helpers of align/runs.py --------------------------------------------------------------------
def test_sample_continuations_prompts_and_weights_hash(base):
    model, tokenizer, config = load_policy(base)
    prompts = prompts_from_corpus(tokenizer, config.data.corpus, 5, 8, seed=1)
    assert prompts.shape == (5, 8) and prompts.dtype == torch.long
    assert torch.equal(prompts, prompts_from_corpus(tokenizer, config.data.corpus, 5, 8, seed=1))
    val_text = tokenizer.decode(prepare_cached(config.data.corpus, config.data.tokenizer).val.tolist())
    assert all(tokenizer.decode(row.tolist()) in val_text for row in prompts)  # windows of the val split
    ids = sample_continuations(model, prompts, 6, seed=2)
    assert ids.shape == (5, 14) and torch.equal(ids[:, :8], prompts)
    assert torch.equal(ids, sample_continuations(model, prompts, 6, seed=2))
    assert not torch.equal(ids, sample_continuations(model, prompts, 6, seed=3))
    sequence_logprobs(model, ids, 8).sum().backward()  # usable under autograd (not an inference tensor)
    h = weights_sha256(model)
    assert h == weights_sha256(copy.deepcopy(model))
    with torch.no_grad():
        w = model.blocks[0].ffn.up.weight
        w[0, 0] = torch.nextafter(w[0, 0], torch.tensor(1.0))  # one ulp
    assert weights_sha256(model) != h
    with pytest.raises(GroundupError, match="positive"):
        sample_continuations(model, prompts, 0, seed=0)
