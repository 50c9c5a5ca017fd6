"""The MoE lab: each probe on hand-built cases with a known answer (including ones where it must fail),
the capacity count against the layer's own, and the lab end to end in quick mode."""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from groundup.cli import main
from groundup.config import ModelConfig
from groundup.labs import docs, harness
from groundup.labs.moe import lab, mixed, probes, report
from groundup.model import GPT
from groundup.model.moe import MixtureOfExperts


# ---- load balance --------------------------------------------------------------------------------
def test_load_balance_of_even_and_collapsed_routing():
    even = probes.load_balance([5, 5, 5, 5, 5, 5, 5, 5])
    assert even["max_over_mean"] == 1.0 and even["cv"] == 0.0 and even["effective_experts"] == pytest.approx(8.0, abs=1e-12)
    # every token to the same k = 2 of E = 8 experts: max/mean = E/k, 2 effective experts
    collapsed = probes.load_balance([10, 10, 0, 0, 0, 0, 0, 0])
    assert collapsed["max_over_mean"] == 4.0 and collapsed["effective_experts"] == pytest.approx(2.0, abs=1e-12)
    assert collapsed["cv"] == pytest.approx(math.sqrt(3), abs=1e-12)  # counts 10,10,0×6: mean 2.5, sd 2.5·√3
    with pytest.raises(ValueError):
        probes.load_balance([0, 0])


# ---- capacity ------------------------------------------------------------------------------------
def test_dropped_assignments_hand_computed():
    # E = 3, k = 2, N = 3, cf = 0.5 → capacity ⌈0.5·2·3/3⌉ = 1. Expert 0 gets 3 assignments (drops 2),
    # expert 1 gets 2 (drops 1), expert 2 gets 1 (keeps it).
    assert probes.dropped_assignments(np.array([[0, 1], [0, 1], [0, 2]]), 3, 0.5) == 3
    assert probes.dropped_assignments(np.array([[0, 1], [0, 2], [1, 0]]), 3, 1.0) == 1  # capacity 2, expert 0 gets 3
    assert probes.dropped_assignments(np.array([[0, 1], [0, 2], [1, 0]]), 3, 0.9) == 1  # ⌈1.8⌉ = 2 still
    assert probes.dropped_assignments(np.array([[0, 1], [2, 0]]), 3, 100.0) == 0


@pytest.mark.parametrize("cf", [0.3, 0.75, 1.0, 1.25])
def test_dropped_assignments_equal_the_layers_own_count(cf):
    """The lab recomputes drops from the dropless routing; the layer counts them while dropping."""
    config = ModelConfig(vocab_size=8, n_layer=1, n_head=2, n_embd=16, n_experts=4, experts_per_token=2,
                         expert_hidden=8, dropless=False, capacity_factor=cf)
    torch.manual_seed(0)
    layer = MixtureOfExperts(config)
    for p in layer.parameters():
        torch.nn.init.normal_(p, 0.0, 0.5)
    x = torch.randn(4, 25, 16)
    layer(x)
    recomputed = probes.dropped_assignments(layer.stats.expert_indices.numpy(), 4, cf)
    assert recomputed == int(layer.stats.dropped)
    if cf < 1:
        assert recomputed > 0  # capacity below the mean load must drop something


# ---- mutual information --------------------------------------------------------------------------
def test_mutual_information_hand_computed():
    assert probes.mutual_information([[10, 0], [0, 10]]) == pytest.approx(1.0, abs=1e-12)  # expert = domain: 1 bit
    assert probes.mutual_information([[5, 5], [5, 5]]) == 0.0
    # P = [[1/2, 0], [1/4, 1/4]]: I = ½·log₂(½ / (½·¾)) + ¼·log₂(¼ / (½·¾)) + ¼·log₂(¼ / (½·¼)) = 0.3113 bits
    expected = 0.5 * math.log2(4 / 3) + 0.25 * math.log2(2 / 3) + 0.25 * math.log2(2)
    assert probes.mutual_information([[2, 0], [1, 1]]) == pytest.approx(expected, abs=1e-12)


def test_contingency_and_fractions_count_every_assignment():
    idx = np.array([[0, 1], [0, 2], [3, 1]])
    labels = np.array([0, 0, 1])
    t = probes.contingency(idx, labels, 4, 2)
    assert t.tolist() == [[2, 1, 1, 0], [0, 1, 0, 1]]
    assert probes.domain_fractions(t) == [[0.5, 0.25, 0.25, 0.0], [0.0, 0.5, 0.0, 0.5]]
    assert probes.specialised_experts(t) == 3  # e0 only domain 0, e2 only domain 0, e3 only domain 1; e1 is shared


def _labels(S: int, T: int, seed: int = 0) -> np.ndarray:
    """Half the sequences domain 0, half domain 1 (whole sequences, as windows of the mixed corpus)."""
    rng = np.random.default_rng(seed)
    return np.repeat(rng.permutation(np.arange(S) % 2)[:, None], T, axis=1)


def test_mi_probe_scores_about_zero_on_a_router_that_ignores_its_input():
    S, T, E, k = 64, 32, 8, 2
    labels = _labels(S, T)
    rng = np.random.default_rng(1)
    random_routing = np.stack([rng.choice(E, size=k, replace=False) for _ in range(S * T)])  # independent of everything
    r = probes.mi_test(random_routing, labels, E, permutations=200, seed=0)
    assert r["mi_bits"] < 0.01 and r["mi_bits"] <= r["null_p99"] and r["p_value"] > 0.01
    constant = np.tile([0, 1], (S * T, 1))  # e.g. an all-zero router: every token to the same experts
    c = probes.mi_test(constant, labels, E, permutations=50)
    assert c["mi_bits"] == 0.0 and c["p_value"] == 1.0


def test_mi_probe_fails_on_a_router_that_follows_the_domain():
    S, T, E = 64, 32, 8
    labels = _labels(S, T)
    rng = np.random.default_rng(2)
    by_domain = np.stack([rng.choice(4, size=2, replace=False) + 4 * d for d in labels.reshape(-1)])  # d=0 → e0–3, d=1 → e4–7
    r = probes.mi_test(by_domain, labels, E, permutations=200, seed=0)
    assert r["mi_bits"] == pytest.approx(1.0, abs=1e-9)
    assert r["p_value"] == pytest.approx(1 / 201) and r["mi_bits"] > 10 * r["null_p99"]
    # a weak dependence (10% of tokens follow the domain) is still caught by the null with this many tokens
    weak = np.where(rng.random((S * T, 1)) < 0.1, by_domain, np.stack([rng.choice(E, 2, replace=False) for _ in range(S * T)]))
    assert probes.mi_test(weak, labels, E, permutations=200, seed=0)["p_value"] < 0.01


def test_domain_routing_of_a_model_whose_router_ignores_its_input_is_zero():
    """Through the lab's own path (a GPT's routing stats → MI): zero router weights route every token alike."""
    config = ModelConfig(vocab_size=20, block_size=16, n_layer=2, n_head=2, n_embd=16, n_experts=4,
                         experts_per_token=2, expert_hidden=8)
    torch.manual_seed(0)
    model = GPT(config)
    with torch.no_grad():
        for block in model.blocks:
            block.ffn.router.weight.zero_()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 10, (16, 16))
    labels = _labels(16, 16)
    x = np.where(labels == 1, x + 10, x)  # the two "domains" use disjoint tokens: a router that looked would tell
    s = lab.Settings.quick(permutations=30)
    r = lab.domain_routing(model, x, x, labels, s, seed=0)
    assert [l["mi_bits"] for l in r["layers"]] == [0.0, 0.0]
    assert all(l["p_value"] == 1.0 for l in r["layers"])
    with torch.no_grad():  # the same model with a router that looks at its input: the probe must see it
        for block in model.blocks:
            block.ffn.router.weight.normal_(0.0, 1.0)
    first = lab.domain_routing(model, x, x, labels, s, seed=0)["layers"][0]  # layer 0's router sees the token itself
    assert first["mi_bits"] > 0.03 and first["mi_bits"] > first["null_p99"] and first["p_value"] < 0.05


# ---- the mixed corpus ----------------------------------------------------------------------------
def test_mixed_corpus_labels_every_token_with_its_domain():
    texts = {"prose": "abcde" * 2000, "code": "xyz(){}\n" * 1000 + "é"}  # the é is not ASCII: dropped
    data = mixed.build_mixed(texts, chars_per_domain=4000, chunk_chars=200, val_fraction=0.1, seed=3)
    for tokens, labels in ((data.train, data.train_labels), (data.val, data.val_labels)):
        text = data.tokenizer.decode(tokens.tolist())
        assert len(text) == len(labels)
        assert all((c in "abcde") == (d == 0) for c, d in zip(text, labels))
        assert (labels == 0).sum() == (labels == 1).sum()  # equal characters from each domain
    assert "é" not in data.tokenizer.chars
    assert len(data.val) == 2 * 2 * 200 and len(data.train) == 2 * 18 * 200
    assert 0 < (np.diff(data.train_labels) != 0).sum()  # domains interleaved, not one block after the other
    x, y, lab_x = mixed.labelled_windows(data.val, data.val_labels, 16, 8, seed=0)
    assert x.shape == y.shape == lab_x.shape == (8, 16)
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])


# ---- equal active compute ------------------------------------------------------------------------
def test_the_moe_does_the_dense_models_flops_plus_its_router():
    s = lab.Settings()
    specs = lab.run_specs(s)
    for size in s.sizes:
        layers, width = lab.parse_size(size)
        dense, moe = (GPT(lab.run_config(s, specs[f"{kind}-{size}"], 0, 10, vocab_size=65).model)
                      for kind in ("dense", "moe"))
        # 6 FLOPs per weight per token; the router adds E·C weights per layer; nothing else differs
        assert moe.flops_per_token() - dense.flops_per_token() == 6 * layers * s.n_experts * width
    total = GPT(lab.run_config(s, specs["dense-equal-total"], 0, 10, vocab_size=65).model)
    moe = GPT(lab.run_config(s, specs[f"moe-{s.sizes[0]}"], 0, 10, vocab_size=65).model)
    assert total.expert_params() == 0
    assert abs(total.num_params() - moe.num_params()) / moe.num_params() < 0.01  # equal total (router, biases aside)


def test_same_compute_compares_at_the_budget_both_spent():
    dense = {"val_loss": 2.0, "tokens_per_s": 100.0, "achieved_flops_per_s": 1e6, "flops_per_token": 1e4,
             "curve": {"step": [0, 10], "val_loss": [4.0, 2.0], "seconds": [0.0, 10.0], "flops": [0.0, 1e6]}}
    moe = {"val_loss": 1.8, "tokens_per_s": 50.0, "achieved_flops_per_s": 0.5e6, "flops_per_token": 1e4,
           "curve": {"step": [0, 10], "val_loss": [4.0, 1.8], "seconds": [0.0, 20.0], "flops": [0.0, 1e6]}}
    r = lab.same_compute(dense, moe)
    assert r["per_step"] == pytest.approx(-0.2) and r["per_flop"] == pytest.approx(-0.2)
    # at the 10 s the dense model took, the MoE was halfway: 4.0 + (1.8 − 4.0)/2 = 2.9
    assert r["per_second_at"] == 10.0 and r["per_second"] == pytest.approx(0.9)
    assert r["speed_ratio"] == 0.5


# ---- the lab end to end ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("moe")
    start = time.process_time()  # CPU seconds of this process: the work, not the machine's load
    assert main(["lab", "moe", "--quick", "--out", str(out)]) == 0
    return out, time.process_time() - start


@pytest.mark.slow  # shares the ~10–20 s quick run (every model of the lab, tiny)
def test_quick_run_end_to_end(quick_run):
    out, seconds = quick_run
    results = json.loads((out / "results.json").read_text())
    assert results["schema"] == harness.SCHEMA and results["lab"] == "moe" and results["mode"] == "quick"
    assert results["seeds"] == [1337]
    agg = results["aggregate"]
    assert set(agg) == {"runs", "same_compute", "balance", "capacity", "specialisation", "k_and_e", "cost"}
    assert set(agg["same_compute"]) == set(results["config"]["sizes"])
    for size in results["config"]["sizes"]:
        assert set(agg["same_compute"][size]) >= {"per_step", "per_flop", "per_second", "speed_ratio", "flops_rate_ratio"}
    for name, run in agg["runs"].items():
        assert len(run["curve"]["val_loss"]) == len(run["curve"]["step"]) >= 2
        assert run["params_active"]["mean"] <= run["params_total"]["mean"]
        assert ("balance" in run) == name.startswith("moe")
    first = results["per_seed"][0]["results"]
    # the balance loss reaches the weights through the project's step (its default loss is CE + GPT.aux_loss)
    assert first["runs"]["moe-no-balance"]["val_loss"] != first["runs"][lab.base_name(lab.Settings.quick())]["val_loss"]
    for part in ("with", "without"):  # the layer's drops equal the ones recomputed from its routing
        assert first["capacity"][part]["dropped"] == pytest.approx(first["capacity"][part]["dropped_recomputed"], abs=1e-12)
    assert len(first["specialisation"]["trained"]["layers"]) == lab.parse_size(results["config"]["sizes"][0])[0]
    fractions = results["detail"][0]["specialisation"]["trained_fractions"][0]
    assert all(sum(row) == pytest.approx(1.0) for row in fractions)
    for name in report.PLOTS.values():
        assert (out / name).stat().st_size > 0
    text = (out / "report.md").read_text()
    for sentence in report.verdicts(results).values():
        assert sentence in text
    assert seconds < 60, f"--quick took {seconds:.0f} CPU seconds"


@pytest.mark.slow  # shares the ~10–20 s quick run (every model of the lab, tiny)
def test_report_from_regenerates_the_same_report(quick_run, tmp_path):
    out, _ = quick_run
    assert main(["lab", "moe", "--report-from", str(out / "results.json"), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "report.md").read_text() == (out / "report.md").read_text()


@pytest.mark.slow  # shares the ~10–20 s quick run (every model of the lab, tiny)
def test_docs_page_regenerates_from_a_results_file(quick_run, tmp_path):
    out, _ = quick_run
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "moe.json").write_text((out / "results.json").read_text())
    [page] = docs.regenerate_docs(tmp_path / "results", tmp_path / "pages", labs=["moe"])
    assert page.name == "moe.md"
    lines = page.read_text().splitlines()
    assert lines[0].startswith("*Generated from `docs/labs/results/moe.json`") and "make docs" in lines[0]
    for name in report.PLOTS.values():
        assert (tmp_path / "pages" / name).stat().st_size > 0


def _summary(mean: float, half: float | None = 0.01) -> dict:
    return {"mean": mean, "sd": None, "ci95": None if half is None else [mean - half, mean + half], "n": 3}


@pytest.mark.slow  # shares the ~10–20 s quick run (every model of the lab, tiny)
def test_verdicts_can_fail(quick_run):
    out, _ = quick_run
    results = json.loads((out / "results.json").read_text())
    b = json.loads(json.dumps(results))
    agg = b["aggregate"]
    for size in b["config"]["sizes"]:
        for key in ("per_step", "per_flop", "per_second"):
            agg["same_compute"][size][key] = _summary(+0.1)
    agg["balance"]["without"]["effective_experts"] = _summary(7.5)
    agg["balance"]["difference"]["max_over_mean"] = _summary(-0.5)
    agg["capacity"]["with"]["dropped"][b["config"]["capacity_factors"].index(1.25)] = _summary(0.3)
    agg["specialisation"]["trained"]["above_null_p99_all_layers"] = {"all": False, "any": False, "n": 1}
    agg["k_and_e"]["most_minus_fewest_experts"] = _summary(+0.1)
    agg["cost"]["moe_vs_equal_active"]["tokens_per_s_ratio"] = _summary(0.5)
    v = report.verdicts(b)
    for key in ("same compute, per step", "same compute, per FLOP", "same compute, per second",
                "balance: collapse without the loss", "balance: the loss evens the load", "capacity",
                "specialisation", "more experts", "cost"):
        assert v[key].startswith("NOT supported"), (key, v[key])
    # and the same verdicts pass when the numbers say so
    g = json.loads(json.dumps(results))
    agg = g["aggregate"]
    for size in g["config"]["sizes"]:
        for key in ("per_step", "per_flop", "per_second"):
            agg["same_compute"][size][key] = _summary(-0.1)
    agg["balance"]["without"]["effective_experts"] = _summary(2.5)
    agg["balance"]["difference"]["max_over_mean"] = _summary(+0.5)
    agg["k_and_e"]["most_minus_fewest_experts"] = _summary(-0.1)
    v = report.verdicts(g)
    for key in ("same compute, per step", "same compute, per second", "balance: collapse without the loss",
                "balance: the loss evens the load", "more experts"):
        assert v[key].startswith("Supported"), (key, v[key])
    assert report.direction(_summary(-0.005, 0.01)) == "no difference resolved"


def test_bad_input_is_a_one_line_error(tmp_path, capsys):
    assert main(["lab", "moe", "--report-from", str(tmp_path / "nope.json"), "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["lab", "moe", "--quick", "--steps", "0", "--out", str(tmp_path)]) == 2
    assert "--steps must be at least 1" in capsys.readouterr().err
    with pytest.raises(Exception, match="does not divide"):
        replace(lab.Settings(), k_values=(3,)).validate()
