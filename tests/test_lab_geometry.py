"""The geometry lab: each probe on cases with a known answer, including cases where it must fail."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch

from groundup.cli import main
from groundup.config import ModelConfig
from groundup.labs.geometry import embeddings, heads, positions, report
from groundup.model import GPT
from groundup.model.attention import CausalSelfAttention
from groundup.model.positional import sinusoidal_table


# ---- 1. sinusoidal positions -----------------------------------------------------------------------
def test_shift_map_from_the_formula_reproduces_every_shift_in_float64():
    table = positions.sinusoidal_table_f64(256, 32)
    errors = positions.shift_errors(table, lambda k: positions.shift_map(k, 32))
    assert len(errors) == 256  # every offset k in the context, each over every pos
    assert errors.max() <= 1e-10
    # and M_k is a rotation: orthogonal, M_j·M_k = M_{j+k}
    M3, M5, M8 = (positions.shift_map(k, 32) for k in (3, 5, 8))
    np.testing.assert_allclose(M3 @ M3.T, np.eye(32), atol=1e-12)
    np.testing.assert_allclose(M3 @ M5, M8, atol=1e-12)


def test_shift_probe_fails_on_a_random_table():
    table = positions.random_table(256, 32, seed=0)
    assert positions.shift_errors(table, lambda k: positions.shift_map(k, 32))[1:].max() > 100 * 1e-10
    # no linear map at all works for every pos: least squares leaves most of the target unexplained
    assert positions.least_squares_shift_residuals(table, (1, 2, 8, 64)).min() > 0.5
    # while on the sinusoids least squares recovers an exact map
    assert positions.least_squares_shift_residuals(positions.sinusoidal_table_f64(256, 32), (1, 2, 8, 64)).max() < 1e-10


def test_dot_product_depends_only_on_the_offset_for_sinusoids_not_for_a_random_table():
    C = 32
    dots = positions.dot_by_offset(positions.sinusoidal_table_f64(256, C), 100)
    assert max(dots["spread"]) <= 1e-10
    # PE(p)·PE(p+d) = Σ_i cos(d·ω_i), and ‖PE‖² = C/2
    expected = [np.cos(d * positions.frequencies(C)).sum() / (C / 2) for d in range(101)]
    np.testing.assert_allclose(dots["mean"], expected, atol=1e-12)
    random = positions.dot_by_offset(positions.random_table(256, C, seed=0), 100)
    assert min(random["spread"][1:]) > 0.1


def test_the_models_table_is_the_formula():
    np.testing.assert_allclose(sinusoidal_table(128, 32).double().numpy(), positions.sinusoidal_table_f64(128, 32), atol=1e-6)


# ---- 2. head scores ------------------------------------------------------------------------------
def _previous_token_pattern(T: int) -> torch.Tensor:
    A = torch.zeros(1, 1, T, T, dtype=torch.float64)
    A[0, 0, 0, 0] = 1.0
    A[0, 0, torch.arange(1, T), torch.arange(T - 1)] = 1.0
    return A


def _induction_pattern(L: int) -> torch.Tensor:
    """Each t < L attends to itself; each t in the second copy to t − L + 1."""
    T = 2 * L
    A = torch.zeros(1, 1, T, T, dtype=torch.float64)
    A[0, 0, torch.arange(L), torch.arange(L)] = 1.0
    A[0, 0, torch.arange(L, T), torch.arange(1, L + 1)] = 1.0
    return A


def test_scores_of_hand_built_patterns():
    L = 16
    prev = _previous_token_pattern(2 * L)
    assert heads.previous_token_score(prev)[0] == 1.0
    assert heads.induction_score(prev, L)[0] == 0.0
    ind = _induction_pattern(L)
    assert heads.induction_score(ind, L)[0] == 1.0
    assert heads.previous_token_score(ind)[0] == 0.0
    assert heads.sink_score(ind)[0] == 0.0
    sink = torch.zeros(1, 1, 2 * L, 2 * L, dtype=torch.float64)
    sink[..., 0] = 1.0
    assert heads.sink_score(sink)[0] == 1.0 and heads.previous_token_score(sink)[0] == pytest.approx(1 / (2 * L - 1))


def test_uniform_attention_scores_the_computed_chance_values():
    T, L = 64, 32
    A = heads.uniform_attention(T)
    chance = heads.chance_scores(T, L)
    assert heads.previous_token_score(A)[0] == pytest.approx(chance["previous-token"], abs=1e-12)
    assert heads.sink_score(A)[0] == pytest.approx(chance["sink"], abs=1e-12)
    assert heads.induction_score(A, L)[0] == pytest.approx(chance["induction"], abs=1e-12)
    assert chance["induction"] == pytest.approx(sum(1 / t for t in range(L + 1, 2 * L + 1)) / L)


def _forced_previous_token_module(T: int) -> tuple[CausalSelfAttention, torch.Tensor]:
    """One head, no rotary positions, input x_t = e_t (one-hot position): with W_Q = β·I and
    W_K = β·S (S e_s = e_{s+1}), q_t·k_s = β²·[t = s + 1], so every t ≥ 1 attends to t − 1."""
    config = ModelConfig(vocab_size=1, block_size=T, n_layer=1, n_head=1, n_embd=T, positional="learned", attention="math")
    module = CausalSelfAttention(config)
    beta = 8.0
    shift = torch.diag(torch.ones(T - 1), -1)  # S e_s = e_{s+1}
    with torch.no_grad():
        module.qkv.weight.zero_()
        module.qkv.bias.zero_()
        module.qkv.weight[:T] = beta * torch.eye(T)
        module.qkv.weight[T : 2 * T] = beta * shift
        module.qkv.weight[2 * T :] = torch.eye(T)
    return module, torch.eye(T)[None]


def test_a_module_forced_to_attend_to_the_previous_token_scores_one_and_not_induction():
    T = 32
    module, x = _forced_previous_token_module(T)
    A = heads.attention_weights(module, x)
    assert heads.previous_token_score(A)[0] > 0.99
    assert heads.induction_score(A, T // 2)[0] < 0.01
    assert heads.classify({"previous-token": [[0.99]], "induction": [[0.0]], "sink": [[0.0]]}) == [[["previous-token"]]]


@pytest.mark.parametrize("positional", ["rope", "learned"])
def test_recomputed_weights_are_the_modules_own(positional):
    """output(A·V) from the recomputed weights equals what the module computed, in a GPT run."""
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=16, positional=positional, attention="math")
    model = GPT(config)
    outputs = []
    hooks = [b.attention.register_forward_hook(lambda m, a, out: outputs.append(out)) for b in model.blocks]
    idx = torch.randint(0, 11, (3, 16))
    inputs = []
    more = [b.attention.register_forward_pre_hook(lambda m, a: inputs.append(a[0])) for b in model.blocks]
    captured = heads.capture_attention(model, idx)
    for h in hooks + more:
        h.remove()
    assert len(captured) == 2 and captured[0].shape == (3, 2, 16, 16)
    for block, A, x, out in zip(model.blocks, captured, inputs, outputs):
        m = block.attention
        values = m.qkv(x).view(3, 16, 3, 2, 8)[:, :, 2].transpose(1, 2)  # (B, nh, T, d_k)
        recomputed = m.output((A @ values).transpose(1, 2).reshape(3, 16, 16))
        torch.testing.assert_close(recomputed, out, atol=1e-5, rtol=1e-5)
        assert torch.allclose(A.sum(-1), torch.ones(3, 2, 16))


# ---- 3. embeddings -------------------------------------------------------------------------------
def test_token_classes():
    assert [embeddings.token_class(t) for t in (" the", "The", " KING", ",", "\n", " 's", ".\n\n", "d,")] == [
        "␣lowercase", "Capitalised", "␣Capitalised", "punctuation", "whitespace", "␣mixed", "punctuation", "mixed"]


def test_usage_agreement_rewards_neighbours_of_the_same_class_and_only_those():
    ids = np.arange(6)
    classes = np.array(["a", "a", "b", "b", "c", "c"])
    next_sim = np.eye(6)
    # pairs (0,1), (2,3), (4,5) close together: every neighbour shares its class
    E = np.array([[1, 0.1], [1, 0.12], [0, 1], [0.02, 1], [-1, 0.1], [-1, 0.12]], dtype=float)
    good = embeddings.usage_agreement(E, ids, classes, next_sim)
    assert good["class_match"] == 1.0 and good["class_match_random"] == pytest.approx(1 / 5)
    # the same vectors with the classes shuffled across pairs: no neighbour shares its class
    bad = embeddings.usage_agreement(E, ids, np.array(["a", "b", "c", "a", "b", "c"]), next_sim)
    assert bad["class_match"] == 0.0 and bad["class_match_gain"] < 0


# ---- the lab end to end ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("geometry")
    start = time.process_time()  # CPU seconds of this process (all its threads): the work, not the machine's load
    assert main(["lab", "geometry", "--quick", "--out", str(out)]) == 0
    return out, time.process_time() - start


def test_quick_run_end_to_end(quick_run):
    out, seconds = quick_run
    results = json.loads((out / "results.json").read_text())
    assert results["lab"] == "geometry" and results["seeds"] == [1337] and results["mode"] == "quick"
    assert results["aggregate"]["positions"]["shift_max_error"]["mean"] <= 1e-10
    assert set(results["aggregate"]["heads"]["final"]) == set(heads.KINDS)
    for name in report.PLOTS.values():
        assert (out / name).stat().st_size > 0
    text = (out / "report.md").read_text()
    for sentence in report.verdicts(results).values():
        assert sentence in text
    assert seconds < 60, f"--quick took {seconds:.0f} CPU seconds"


def test_report_from_regenerates_the_same_report(quick_run, tmp_path):
    out, _ = quick_run
    assert main(["lab", "geometry", "--report-from", str(out / "results.json"), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "report.md").read_text() == (out / "report.md").read_text()


def test_verdicts_can_fail(quick_run):
    out, _ = quick_run
    results = json.loads((out / "results.json").read_text())
    broken = json.loads(json.dumps(results))
    broken["per_seed"][0]["results"]["positions"]["shift_max_error"] = 1e-6
    broken["per_seed"][0]["results"]["positions"]["dot_spread_sinusoidal_max"] = 1e-6
    for kind in heads.KINDS:
        broken["per_seed"][0]["results"]["heads"]["final"][kind]["count"] = 0
    emb = broken["aggregate"]["embeddings"]["trained"]
    emb["class_match_gain"] = {"mean": 0.0, "sd": None, "ci95": None, "n": 1}
    v = report.verdicts(broken)
    assert all(v[k].startswith("NOT supported") for k in ("shift", "offset-only", "heads", "embeddings")), v


def test_report_from_a_missing_file_is_a_one_line_error(tmp_path, capsys):
    assert main(["lab", "geometry", "--report-from", str(tmp_path / "nope.json"), "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
