"""The memory lab: each claim's measurement, on models small enough for a unit test.

Frozen weights (hashes equal after generation), in-context accuracy that rises with the facts in
context on a model trained for it and vanishes with the context, forgetting (A's loss rises while
fine-tuning on B), LoRA inside the lab (adapters only, exact unmerge), a targeted edit, the CLI.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from groundup.labs.memory import (
    CopyTask, LookupTask, Settings, build_base, extend_char_vocabulary, forgetting, frozen_weights,
    lookup_accuracy, lora_vs_full, targeted_edit, train_task_model, weight_hashes,
)
from groundup.model import GPT
from groundup.config import ModelConfig
from groundup.sample import load_run
from groundup.tokenizer import CharTokenizer
from groundup.train.trainer import train

from conftest import assert_clean_error, run_cli
from helpers import tiny_config

# Smaller than --quick: enough for the effects to be far outside noise, seeded.
TEST_SETTINGS = Settings.quick(pretrain_steps=150, finetune_steps=60, eval_every=20, eval_iters=4, edit_steps=40,
                               edit_lrs=(1e-3,), edit_lora_lrs=(1e-2,), device="cpu")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("memory") / "tiny"
    train(tiny_config("max_steps=20"), run_dir, progress=False)
    return run_dir


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Pretrained on Shakespeare through the trainer, with a vocabulary covering python-docs too."""
    return build_base(TEST_SETTINGS, tmp_path_factory.mktemp("memory-base"), "shakespeare", "python-docs", progress=False)


@pytest.fixture(scope="module")
def full_fine_tune(base):
    return forgetting(base, TEST_SETTINGS, progress=False)


def test_generation_leaves_every_weight_hash_unchanged(tiny_run):
    model, tokenizer, config = load_run(tiny_run, "cpu")
    val = tokenizer.encode("ROMEO:\nBut soft, what light through yonder window breaks?\n" * 3)
    r = frozen_weights(model, tokenizer, np.array(val), n_prompts=5, new_tokens=20, seed=0,
                       weights_file=tiny_run / "model.safetensors")
    assert r["tokens_generated"] == 100
    assert r["hashes_equal"] and r["changed_tensors"] == [] and r["tensors"] == len(model.weights())
    assert r["weights_file_sha256_equal"] is True
    assert r["tensors_with_grad"] == 0
    assert r["grad_enabled_during_generation"] is False and r["inference_mode_during_generation"] is True
    assert r["optimizers_holding_the_weights"] == 0

    # The check can fail: one weight nudged by one float step changes its hash and only its hash.
    before = weight_hashes(model)
    with torch.no_grad():
        w = model.blocks[0].ffn.up.weight
        w[0, 0] = torch.nextafter(w[0, 0], torch.tensor(1.0))
    after = weight_hashes(model)
    assert [n for n in before if before[n] != after[n]] == ["blocks.0.ffn.up.weight"]


def test_in_context_accuracy_rises_with_facts_and_vanishes_with_the_context():
    task = LookupTask()
    assert [round(task.best_accuracy(n), 3) for n in (0, 1, 16)] == [0.125, 0.234, 0.897]
    cpu = torch.device("cpu")
    untrained, _ = train_task_model(task, 0, 32, 128, seed=1337, device=cpu, progress=False)
    assert max(lookup_accuracy(untrained, task, 1000, seed=7)["accuracy"]) < 0.3  # it does not read the list

    model, steps = train_task_model(task, 1000, 32, 128, seed=1337, device=cpu, progress=False,
                                    learned=lambda m: lookup_accuracy(m, task, 300, seed=3, points=(16,))["accuracy"][0] > 0.8)
    before = weight_hashes(model)
    r = lookup_accuracy(model, task, 1000, seed=7)
    acc = r["accuracy"]
    assert r["facts_in_context"] == [0, 1, 2, 4, 8, 16]
    assert acc[0] < 0.2  # nothing in context: chance (1/8)
    assert all(b > a for a, b in zip(acc, acc[1:])), acc  # every added fact helps
    assert acc[-1] > 0.75 and acc[-1] > acc[0] + 0.55, (steps, acc)
    assert r["cleared_context_accuracy"] < 0.2  # the same queries, the list gone: back to chance
    assert r["other_context_accuracy_vs_new_answers"] > 0.75  # answers follow whatever list is in context
    assert r["other_context_accuracy_vs_old_answers"] < 0.2
    assert weight_hashes(model) == before


def test_copy_task_sequences_repeat_and_targets_are_next_tokens():
    task = CopyTask(n_symbols=16, length=24)
    x, y = task.train_batch(np.random.default_rng(0), 3)
    assert x.shape == y.shape == (3, 48) and (x[:, 0] == task.copy_token).all()
    assert (x[:, 1:25] == y[:, 24:48]).all()  # the second copy (as targets) repeats the first
    assert (y[:, :-1] == x[:, 1:]).all()


def test_shared_vocabulary_covers_both_domains(base):
    from groundup.data import load_corpus

    text_b = load_corpus("python-docs").text
    assert len(base.tokenizer.encode(text_b)) == len(text_b)  # every character has an id: nothing dropped
    assert base.tokenizer.vocab_size == len(set(load_corpus("shakespeare").text) | set(text_b))
    assert len(base.data_b.train) + len(base.data_b.val) == len(text_b)


def test_fine_tuning_on_b_raises_validation_loss_on_a(full_fine_tune):
    r = full_fine_tune
    assert [p["step"] for p in r["curve"]] == [0, 20, 40, 60]
    assert r["B_after"] < r["B_before"] - 0.1  # it learns B …
    assert r["A_after"] > r["A_before"] + 0.05  # … and forgets A
    assert r["trainable_parameters"] == r["model"].num_params()


def test_lora_in_the_lab_trains_adapters_only_and_unmerges_exactly(base, full_fine_tune, tmp_path):
    before = weight_hashes(base.model)
    r = lora_vs_full(base, TEST_SETTINGS, full_fine_tune, tmp_path, progress=False)
    assert r["unmerge_restores_weights_exactly"] is True
    assert r["merge_max_abs_logit_difference"] < 1e-3
    assert r["trainable_parameters"] < 0.2 * r["full_trainable_parameters"]
    assert r["adapter_bytes"] < r["full_weights_bytes"] / 3
    assert r["B_after"] < r["B_before"]
    assert (tmp_path / "adapter" / "adapter.safetensors").exists()
    assert weight_hashes(base.model) == before  # the lab worked on a copy


def test_targeted_edit_lowers_the_fact_loss_and_moves_unrelated_predictions(base, full_fine_tune):
    r = targeted_edit(base, TEST_SETTINGS, full_fine_tune["watch"], progress=False)
    full, lora = r["runs"]
    assert (full["kind"], full["lr"], lora["kind"], lora["lr"]) == ("full", 1e-3, "lora", 1e-2)
    assert full["after"]["fact_answer_loss"] < 0.5 * full["before"]["fact_answer_loss"]
    assert lora["after"]["fact_answer_loss"] < lora["before"]["fact_answer_loss"] - 1.0  # slower, r = 8
    for run in (full, lora):
        assert run["changed_predictions_A"] > 0.01  # held-out text the edit never saw now reads differently
        assert set(run["relative_change_by_layer"]) >= {"blocks.0.attention", "blocks.1.ffn", "blocks.1.norms"}
    assert lora["relative_change_by_layer"]["token_embedding"] == 0.0  # LoRA leaves the embeddings alone
    assert full["relative_change_by_layer"]["token_embedding"] > 0.0


def test_extending_a_char_vocabulary_keeps_every_old_row():
    tok = CharTokenizer("abc")
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=3, block_size=8, n_layer=1, n_head=2, n_embd=8))
    grown, new_tok, added = extend_char_vocabulary(model, tok, ["abc{x}"])
    assert added == "x{}" and new_tok.vocab_size == 6 and new_tok.encode("abc") == [0, 1, 2]
    assert torch.equal(grown.token_embedding.weight[:3], model.token_embedding.weight)
    x = torch.tensor([[0, 1, 2, 1]])
    torch.testing.assert_close(grown(x)[0][..., :3], model(x)[0], rtol=0, atol=1e-6)


def test_cli_runs_the_frozen_experiment_on_a_given_run(tiny_run, tmp_path):
    out = tmp_path / "lab"
    r = run_cli("lab", "memory", "--quick", "--only", "frozen", "--run", str(tiny_run), "--out", str(out),
                "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert "[frozen] Supported" in r.stdout
    doc = json.loads((out / "results.json").read_text())
    assert doc["per_seed"][0]["results"]["frozen"]["hashes_equal"] is True and doc["config"]["experiments"] == ["frozen"]
    assert doc["seeds"] == [1337] and doc["mode"] == "quick"  # --quick: one seed
    assert doc["aggregate"]["frozen"]["tokens_generated"] == {"mean": 240.0, "sd": None, "ci95": None, "n": 1}
    assert "Frozen weights" in (out / "report.md").read_text()


# Every experiment, two seeds, models too small to learn much: the whole pipeline (seeds → harness →
# results.json → report) in seconds. The lookup model gets 20 steps, far too few to learn to read the
# list (it needs ~200): the in-context verdict must then say NOT supported: the probe can fail.
TINY = Settings.quick(pretrain_steps=30, finetune_steps=20, eval_every=10, eval_iters=2, edit_steps=5, icl_steps=20,
                      icl_eval=200, n_prompts=2, new_tokens=8, edit_lrs=(1e-3,), edit_lora_lrs=(1e-2,), device="cpu",
                      n_layer=1, n_embd=32, icl_width=32, batch_size=8)


def test_every_experiment_runs_over_seeds_and_the_report_regenerates_from_results(tmp_path):
    from groundup.labs.memory import report as memory_report
    from groundup.labs.memory import run_lab

    out = tmp_path / "lab"
    results = run_lab(TINY, [5, 6], out, progress=False, mode="test")
    assert results["seeds"] == [5, 6] and len(results["per_seed"]) == 2
    agg = results["aggregate"]
    assert agg["forgetting"]["A_increase"]["n"] == 2 and agg["forgetting"]["A_increase"]["ci95"] is not None
    assert [p["step"]["mean"] for p in agg["forgetting"]["curve"]] == [0, 10, 20]
    assert agg["frozen"]["hashes_equal"]["all"] is True
    claims = memory_report.verdicts(results)
    assert set(claims) == {"frozen", "in-context", "forgetting", "lora", "edit"}
    assert claims["in-context"].startswith("NOT supported"), claims["in-context"]  # 20 steps: it cannot read the list
    assert "(95% CI over 2 seeds)" in claims["forgetting"] and "Refuted if" in claims["forgetting"]

    regenerated = tmp_path / "again"
    r = run_cli("lab", "memory", "--report-from", str(out / "results.json"), "--out", str(regenerated))
    assert r.returncode == 0, r.stderr
    assert (regenerated / "report.md").read_bytes() == (out / "report.md").read_bytes()
    for name in memory_report.PLOTS.values():
        assert (regenerated / name).stat().st_size > 0  # PNG bytes vary with matplotlib: existence and size only


def test_report_from_a_missing_or_foreign_file_is_a_clear_error(tmp_path):
    assert_clean_error(run_cli("lab", "memory", "--report-from", str(tmp_path / "nope.json")), "does not exist")
    (tmp_path / "other.json").write_text(json.dumps({"schema": 1, "lab": "scaling"}))
    assert_clean_error(run_cli("lab", "memory", "--report-from", str(tmp_path / "other.json")), "not a results.json")


def test_cli_bad_input_is_a_clear_error(tmp_path):
    assert_clean_error(run_cli("lab", "memory", "--only", "telepathy", "--out", str(tmp_path)),
                       "unknown experiment", "frozen")
    assert_clean_error(run_cli("lab", "memory", "--seeds", "0", "--out", str(tmp_path)), "--seeds must be at least 1")
    assert_clean_error(run_cli("lab", "memory", "--run", str(tmp_path / "missing"), "--only", "frozen",
                               "--out", str(tmp_path)), "does not exist")
