"""The efficiency lab: its measures on known cases (including cases where each must fail), the
quantizer and distillation loss it calls, and the quick run end to end (results, report, docs)."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from groundup.cli import main
from groundup.config import load_config
from groundup.labs import docs as lab_docs
from groundup.labs import harness
from groundup.labs.efficiency import lab, measures, methods, report
from groundup.engines.torch.kernels import use_kernels
from groundup.model import GPT
from groundup.train.engine import TorchEngine
from groundup.train.loop import fit


# ---- the figures of merit ---------------------------------------------------------------------------
def test_gap_closed_on_hand_computed_cases():
    assert measures.gap_closed(scratch=5.0, distilled=4.7, teacher=4.0) == pytest.approx(0.3)
    assert measures.gap_closed(5.0, 4.0, 4.0) == pytest.approx(1.0)  # as good as the teacher
    assert measures.gap_closed(5.0, 5.2, 4.0) == pytest.approx(-0.2)  # worse than scratch
    assert math.isnan(measures.gap_closed(5.0, 4.5, 5.1))  # a teacher no better than scratch: no gap


def test_gap_closed_scores_zero_for_a_student_that_is_the_scratch_model():
    """The probe can fail: the 'distilled' student is the scratch model itself → 0, and the verdict says so."""
    assert measures.gap_closed(5.3, 5.3, 4.9) == 0.0


def test_delta_is_nats_and_a_perplexity_ratio():
    d = measures.delta(4.1, 4.0)
    assert d["delta_loss"] == pytest.approx(0.1)
    assert d["relative_ppl"] == pytest.approx(math.exp(4.1) / math.exp(4.0))


# ---- what the lab calls: groundup.quantize and groundup.train.distill (tested in their own files) -------
def _tiny_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    config = load_config(None, ["vocab_size=50", "n_layer=2", "n_head=2", "n_embd=32", "block_size=16"]).model
    return GPT(config).eval()


def test_quantize_leaves_the_original_and_shrinks_the_bytes():
    model = _tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q4, b4 = methods.quantize(model, 4, "rtn", 32)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the original is untouched
    linear = sum(m.weight.numel() for m in methods.quantized_layers(model).values())
    b8 = methods.quantize(model, 8, "rtn")[1]
    fp32 = methods.weight_bytes(model)
    # int8: 1 byte per weight + a float32 scale per row; int4: ½ byte + a float32 scale and a uint8 zero per 32
    assert fp32 - 3 * linear < b8 < fp32 - 3 * linear + linear // 4
    assert b4 == fp32 - 4 * linear + linear // 2 + 5 * (linear // 32)


def test_gptq_on_a_model_with_the_fused_training_kernels(one_thread):
    """The lab's models come out of a training engine with groundup's fused CPU kernels swapped in;
    their attention and feed-forward read the qkv / up weights past the nn.Linear forward, so GPTQ
    must run on a plain copy (else those layers get an empty Hessian and Cholesky fails)."""
    torch.manual_seed(0)
    config = load_config(None, ["vocab_size=50", "n_layer=1", "n_embd=128", "n_head=4", "block_size=64"]).model
    fused = use_kernels(GPT(config).eval())
    plain = GPT(config).eval()
    plain.load_weights(fused.weights())
    x = torch.randint(0, 50, (4, 64), generator=torch.Generator().manual_seed(3))
    q_fused, bytes_fused = methods.quantize(fused, 4, "gptq", 32, [x])
    q_plain, bytes_plain = methods.quantize(plain, 4, "gptq", 32, [x])
    with torch.no_grad():
        torch.testing.assert_close(q_fused(x)[0], q_plain(x)[0])
    assert bytes_fused == bytes_plain


def _counting_model() -> tuple[GPT, tuple]:
    """A tiny model trained (through the project's loop) to count: token t is followed by t + 1 mod 50.
    With a tied embedding that needs its blocks, so breaking their weights must show in the loss."""
    model = _tiny_model()
    g = torch.Generator().manual_seed(1)

    def batch():
        seq = (torch.randint(0, 50, (16, 1), generator=g) + torch.arange(17)) % 50
        return seq[:, :-1], seq[:, 1:]

    engine = TorchEngine(model, torch.optim.AdamW(model.parameters(), lr=1e-2))
    fit(engine, batch, 40, lr=1e-2)
    return model.eval(), batch()


@pytest.fixture
def one_thread():
    """Tiny models train fastest on one thread (and do not fight the other tests for both cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_quantizer_that_zeros_the_weights_gives_a_large_delta_and_int8_does_not(one_thread):
    """The frontier's probe can fail: zeroed linear layers move the loss far more than int8 does."""
    torch.manual_seed(0)
    model, (x, y) = _counting_model()
    with torch.no_grad():
        base = float(model(x, y)[1])
        int8 = float(methods.quantize(model, 8, "rtn")[0](x, y)[1])
        zeroed = copy.deepcopy(model)
        for m in methods.quantized_layers(zeroed).values():
            m.weight.zero_()
        broken = float(zeroed(x, y)[1])
    assert abs(int8 - base) < report.INT8_NEAR_LOSSLESS
    assert broken - base > 100 * report.INT8_NEAR_LOSSLESS, (base, broken)


def test_the_distillation_loss_is_the_projects_and_alpha_zero_is_cross_entropy():
    teacher, student = _tiny_model(0), _tiny_model(1)
    x = torch.randint(0, 50, (4, 17), generator=torch.Generator().manual_seed(2))
    batch = (x[:, :-1], x[:, 1:])
    with torch.no_grad():
        ce = float(student(*batch)[1])
        assert float(methods.distillation_loss(teacher, "forward", 2.0, 0.0)(student, batch)) == pytest.approx(ce)
        forward = float(methods.distillation_loss(teacher, "forward", 2.0, 1.0)(student, batch))
        reverse = float(methods.distillation_loss(teacher, "reverse", 2.0, 1.0)(student, batch))
    assert forward > 0 and reverse > 0 and forward != pytest.approx(reverse)
    with pytest.raises(ValueError, match="kind"):
        methods.distillation_loss(teacher, "sideways")


def test_teacher_samples_keep_the_prompt_and_reach_the_length():
    teacher = _tiny_model()
    prompts = torch.randint(0, 50, (3, 4)).numpy()
    out = methods.teacher_samples(teacher, prompts, 12, seed=0)
    assert out.shape == (3, 12) and (out[:, :4] == prompts).all() and out.max() < 50
    assert (methods.teacher_samples(teacher, prompts, 12, seed=0) == out).all()  # seeded


# ---- the lab's setup ---------------------------------------------------------------------------------
def test_the_bpe_recipe_is_the_shipped_config():
    shipped = load_config("configs/shakespeare_bpe.toml")
    ours = load_config(None, lab.BPE_RECIPE)
    assert ours.model == shipped.model and ours.data == shipped.data
    for name in ("batch_size", "learning_rate", "min_lr", "weight_decay", "beta2", "grad_clip"):
        assert getattr(ours.train, name) == getattr(shipped.train, name), name
    assert shipped.train.max_steps == lab.SHIPPED_STEPS
    s = lab.Settings()
    assert load_config(None, s.recipe("bpe")).model == shipped.model  # the teacher is the shipped shape


def test_default_teacher_has_at_least_8x_the_students_parameters():
    s = lab.Settings()
    n = {name: GPT(load_config(None, s.recipe(name) + ["vocab_size=4096"]).model).num_params() for name in ("bpe", "student")}
    assert n["bpe"] >= 8 * n["student"], n


# ---- the quick run, end to end ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("efficiency")
    threads = torch.get_num_threads()  # the caller's setting just before the run (earlier tests may change it)
    torch.set_num_threads(3)  # not the lab's 1, so a lab that forgot to restore it shows
    try:
        assert main(["lab", "efficiency", "--quick", "--out", str(out)]) == 0
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)
    return out, json.loads((out / "results.json").read_text()), after


def test_quick_run_writes_results_report_and_plots(quick):
    out, results, threads_after = quick
    assert results["lab"] == "efficiency" and results["mode"] == "quick" and results["schema"] == harness.SCHEMA
    agg = results["aggregate"]
    for model in ("bpe", "large"):
        variants = agg["frontier"][model]["variants"]
        assert set(variants) == set(results["config"]["variants"])
        for v in variants.values():
            assert {"delta_loss", "relative_ppl", "val_loss", "weight_bytes", "decode_tokens_per_s"} <= set(v)
        # fewer bytes at 4 bits than at 8, and at 8 than fp32
        e = agg["frontier"][model]
        assert variants["int4-rtn-g32"]["weight_bytes"]["mean"] < variants["int8-rtn"]["weight_bytes"]["mean"] < e["weight_bytes"]["mean"]
    assert set(agg["distill"]["students"]) == set(results["config"]["students"])
    assert agg["distill"]["students"]["scratch"]["gap_closed"]["mean"] == 0.0
    assert set(agg["distil_quantize"]) == {"teacher", "large", "scratch", "distilled"}
    # the teacher's and the larger model's points are the frontier's, not measured twice
    assert agg["distil_quantize"]["teacher"]["int4"]["val_loss"] == agg["frontier"]["bpe"]["variants"]["int4-gptq-g32"]["val_loss"]
    text = (out / "report.md").read_text()
    assert set(report.verdicts(results)) == {"int8", "int4", "gptq", "distillation", "distil-then-quantize"}
    assert threads_after == 3  # the lab's one thread is undone after the run
    for name in report.PLOTS.values():
        assert (out / name).stat().st_size > 0 and name in text


def test_report_regenerates_from_results_alone(quick, tmp_path):
    out, _, _ = quick
    assert main(["lab", "efficiency", "--report-from", str(out / "results.json"), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "report.md").read_text() == (out / "report.md").read_text()
    results_dir = tmp_path / "results"
    results_dir.mkdir()
    (results_dir / "efficiency.json").write_text((out / "results.json").read_text())
    pages = lab_docs.regenerate_docs(results_dir, tmp_path / "docs", labs=("efficiency",))
    assert pages[0].name == "efficiency.md" and "do not edit by hand" in pages[0].read_text()


def test_verdicts_turn_when_the_numbers_do(quick):
    """Each verdict can fail: doctored results flip it to NOT supported."""
    _, results, _ = quick
    bad = copy.deepcopy(results)
    for m in bad["aggregate"]["frontier"].values():
        m["variants"]["int8-rtn"]["delta_loss"] = harness.summarize([0.5, 0.6, 0.7])
    assert report.verdicts(bad)["int8"].startswith("NOT supported")
    students = bad["aggregate"]["distill"]["students"]
    students[f"forward-T{bad['config']['dq_temperature']:g}"]["gap_closed"] = harness.summarize([0.0, 0.01, -0.01])
    assert report.verdicts(bad)["distillation"].startswith("NOT supported")
    good = copy.deepcopy(results)
    students = good["aggregate"]["distill"]["students"]
    students[f"forward-T{good['config']['dq_temperature']:g}"]["gap_closed"] = harness.summarize([0.3, 0.32, 0.31])
    assert report.verdicts(good)["distillation"].startswith("Supported")


def _point(loss: list[float], nbytes: float) -> dict:
    return {"val_loss": harness.summarize(loss), "weight_bytes": harness.summarize([nbytes] * len(loss))}


def test_equal_bytes_verdict_on_hand_made_points(quick):
    _, results, _ = quick
    doctored = copy.deepcopy(results)
    dq = doctored["aggregate"]["distil_quantize"]
    dq["large"] = {"fp32": _point([4.0] * 3, 8e6), "int8": _point([4.0] * 3, 4e6), "int4": _point([4.10, 4.11, 4.12], 2.2e6)}
    dq["teacher"] = {"fp32": _point([4.5] * 3, 2e6), "int8": _point([4.5] * 3, 1e6), "int4": _point([4.6, 4.6, 4.6], 0.6e6)}
    for m in ("scratch", "distilled"):
        dq[m] = {"fp32": _point([5.0, 5.1, 5.2], 0.25e6), "int8": _point([5.0, 5.1, 5.2], 0.07e6),
                 "int4": _point([5.1, 5.2, 5.3], 0.04e6)}
    pairs = report.equal_bytes_pairs(doctored)
    large = next(q for q in pairs if q["big"] == "large")
    assert large["precision"] == "fp32" and large["ratio"] == pytest.approx(1.1) and large["matched"] and large["big_better"]
    assert not any(q["matched"] for q in pairs if q["big"] == "teacher")  # 0.6 MB vs 0.25 MB: 2.4×, too far apart
    assert report.verdicts(doctored)["distil-then-quantize"].startswith("Supported")
    dq["large"]["int4"] = _point([4.2, 4.45, 4.7], 2.2e6)  # better on average, but the interval reaches 4.5
    assert report.verdicts(doctored)["distil-then-quantize"].startswith("NOT supported")
    dq["large"]["int4"] = _point([4.6, 4.7, 4.8], 2.2e6)  # the int4 large model now worse than the fp32 teacher
    assert report.verdicts(doctored)["distil-then-quantize"].startswith("NOT supported")
    # by bytes: each point kept only if its loss beats every smaller point's (ties go to the first by name)
    assert report.pareto(doctored) == [("distilled", "int4"), ("distilled", "int8"), ("teacher", "int4"),
                                       ("teacher", "int8"), ("large", "int8")]


def test_bad_arguments_get_one_clear_line(capsys, tmp_path):
    assert main(["lab", "efficiency", "--student-steps", "0", "--out", str(tmp_path)]) == 2
    assert "--student-steps must be at least 1" in capsys.readouterr().err
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"schema": harness.SCHEMA, "lab": "geometry"}))
    assert main(["lab", "efficiency", "--report-from", str(other), "--out", str(tmp_path)]) == 2
    assert "not a results.json of the efficiency lab" in capsys.readouterr().err
