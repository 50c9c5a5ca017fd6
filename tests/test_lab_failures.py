"""The failures lab: bit-flip injection against an independent bit-level reference (struct), the
detectors on flips whose outcome is known, the projection by hand, and the report from results alone
(including verdicts that must fail on results that refute them)."""

from __future__ import annotations

import json
import math
import struct

import pytest
import torch

from groundup import cli
from groundup.cluster import LLAMA3_FAILURES_PER_GPU_HOUR, goodput
from groundup.config import ModelConfig
from groundup.data import BatchSampler
from groundup.errors import ConfigError
from groundup.labs import harness
from groundup.labs.failures import lab, projection, report, sdc
from groundup.model import GPT
from groundup.train.engine import build_engine
from groundup.train.guards import Fault, FaultInjector, Guard, bit_class, flip_bit_, parse_faults
from groundup.train.loop import fit
from groundup.train.trainer import fixed_batches, load_data, resolve_vocab, train

from helpers import events, tiny_config


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# ---- the flip itself ----------------------------------------------------------------------------
def _reference_flip(value: float, bit: int, fmt: str, int_fmt: str) -> float:
    """The same flip through Python's struct: pack, XOR the integer, unpack (no torch involved)."""
    (raw,) = struct.unpack(int_fmt, struct.pack(fmt, value))
    return struct.unpack(fmt, struct.pack(int_fmt, raw ^ (1 << bit)))[0]


@pytest.mark.parametrize("dtype, fmt, int_fmt, bits", [
    (torch.float32, "<f", "<I", 32), (torch.float64, "<d", "<Q", 64), (torch.float16, "<e", "<H", 16)])
def test_flip_bit_matches_struct_for_every_bit(dtype, fmt, int_fmt, bits):
    values = torch.tensor([0.3, -1.7, 2.5e-3, 1.0], dtype=dtype)
    for bit in range(bits):
        t = values.clone()
        before, after = flip_bit_(t, 2, bit)
        expected = _reference_flip(float(values[2]), bit, fmt, int_fmt)
        assert before == float(values[2])
        assert (math.isnan(after) and math.isnan(expected)) or after == expected, (bit, after, expected)
        assert torch.equal(t[[0, 1, 3]], values[[0, 1, 3]])  # no other element touched


def test_bit_classes_follow_ieee_754():
    assert [bit_class(b) for b in (0, 22, 23, 30, 31)] == ["mantissa", "mantissa", "exponent", "exponent", "sign"]
    assert bit_class(15, torch.bfloat16) == "sign" and bit_class(7, torch.bfloat16) == "exponent"
    assert bit_class(6, torch.bfloat16) == "mantissa"


def _raw(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().reshape(-1).view(torch.int32).clone() for n, p in model.named_parameters()}


def _differing_bits(a: dict, b: dict) -> list[tuple[str, int, int]]:
    """(name, element, bit) of every bit that differs between two raw snapshots."""
    out = []
    for name in a:
        xor = a[name] ^ b[name]
        for index in torch.nonzero(xor).flatten().tolist():
            word = int(xor[index]) & 0xFFFFFFFF
            out += [(name, index, bit) for bit in range(32) if word >> bit & 1]
    return out


def _tiny_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(ModelConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=16))


@pytest.mark.parametrize("spec", ["bitflip@4", "bitflip@4:weight:sign", "bitflip@4:weight:exponent",
                                  "bitflip@4:weight:mantissa", "bitflip@4:weight:30"])
def test_a_weight_flip_changes_exactly_one_bit_the_one_recorded(spec):
    model = _tiny_model()
    before = _raw(model)
    injector = FaultInjector([spec], seed=7)
    injector.bitflips(3, model)  # not its step: nothing happens
    assert _differing_bits(before, _raw(model)) == [] and injector.take_flips() == []
    injector.bitflips(4, model)
    [flip] = injector.take_flips()
    assert _differing_bits(before, _raw(model)) == [(flip["name"], flip["index"], flip["bit"])]
    fault = parse_faults([spec])[0]
    if fault.bit in ("sign", "exponent", "mantissa"):
        assert flip["class"] == fault.bit
    elif fault.bit is not None:
        assert flip["bit"] == int(fault.bit)
    injector.bitflips(4, model)  # it fired once
    assert injector.take_flips() == []


def test_the_flip_is_seeded():
    flips = []
    for seed in (1, 1, 2):
        injector = FaultInjector(["bitflip@1"], seed=seed)
        injector.bitflips(1, _tiny_model())
        flips.append({k: v for k, v in injector.take_flips()[0].items()})
    assert flips[0] == flips[1] and flips[0] != flips[2]


def test_a_gradient_flip_changes_exactly_one_bit_of_that_gradient_and_no_weight():
    x = torch.randint(0, 20, (2, 8))
    grads = []
    records = []
    for inject in (False, True):
        model = _tiny_model()
        injector = FaultInjector(["bitflip@1:grad:exponent"], seed=3)
        if inject:
            raw = _raw(model)
            injector.bitflips(1, model)
            assert _differing_bits(raw, _raw(model)) == []  # a gradient flip leaves the weights alone
        model(x, x)[1].backward()
        grads.append({n: p.grad.reshape(-1).view(torch.int32).clone() for n, p in model.named_parameters()})
        records = injector.take_flips()
    [flip] = records
    assert flip["target"] == "grad" and flip["class"] == "exponent"
    assert _differing_bits(*grads) == [(flip["name"], flip["index"], flip["bit"])]


@pytest.mark.parametrize("spec, message", [
    ("bitflip@3:foo", "a bitflip hits a weight or a grad"), ("bitflip@3:weight:64", "the bit is a number 0-63"),
    ("bitflip@3:grad:hi", "the bit is a number 0-63"), ("nan@3:write:2", "only bitflip takes a bit"),
    ("bitflip@0", "steps count from 1"), ("bitflip@5-2", "A ≤ B"),
])
def test_bad_bitflip_specs_are_one_clear_line(spec, message, tmp_path, capsys):
    with pytest.raises(ConfigError, match=message):
        parse_faults([spec])
    code = cli.main(["train", "--set", "max_steps=2", "--inject", spec, "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --inject") and err.count("\n") == 1 and "Traceback" not in err


def test_bitflip_through_groundup_train_is_recorded_and_can_pass_the_guards_silently(tmp_path):
    """`train --inject bitflip@3:weight:30`: the flip is in metrics.jsonl, one bit of the recorded
    element. This seed's flip lands in an attention query/key weight: ×2^128 makes attention a hard
    argmax but the loss stays finite, so no guard fires and the corrupted weight is still there at
    the end: silent data corruption, as the lab measures it."""
    result = train(tiny_config("max_steps=8", "checkpoint_interval=4", "dropout=0.0"), tmp_path / "r", progress=False,
                   faults=["bitflip@3:weight:30"])
    [flip] = events(tmp_path / "r", "bitflip")
    assert (flip["step"], flip["target"], flip["bit"], flip["class"]) == (3, "weight", 30, "exponent")
    assert flip["before"] == _reference_flip(flip["after"], 30, "<f", "<I")  # one bit apart
    assert abs(flip["after"]) > 1e30 > 1 > abs(flip["before"]) > 0 and "attention" in flip["name"]
    assert events(tmp_path / "r", "skip") == events(tmp_path / "r", "rollback") == []  # no guard fired
    final = dict(result.model.named_parameters())[flip["name"]].detach().reshape(-1)[flip["index"]]
    assert abs(float(final)) > 1e30  # still corrupted after training went on


# ---- the detectors --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def warmed():
    """A tiny model warmed 30 steps, with the detectors' thresholds calibrated on its last 15 steps."""
    torch.set_num_threads(1)
    config = tiny_config("dropout=0.0", "batch_size=8", "max_steps=60", "learning_rate=3e-3")
    data = load_data(config)
    config = resolve_vocab(config, data)
    engine = build_engine(config, torch.device("cpu"))
    sampler = BatchSampler(data.train, config.model.block_size, 8, seed=0)
    probe = fixed_batches(data.train, config, 9, engine, 1)
    guard = Guard.from_config(config.train, config.model.vocab_size)
    watch = sdc._Watch(engine, guard, None, probe, math.inf, engine.evaluate(probe), lambda s: 3e-3)
    next_batch = lambda: engine.batch(*sampler.next_batch())  # noqa: E731
    fit(engine, next_batch, 30, lr=3e-3, grad_clip=1.0, hooks=watch)
    thresholds = (3 * max(abs(d) for d in watch.probe_deltas[-15:]), 3 * max(watch.gnorm_ratios[-15:]))
    state = ({k: v.clone() for k, v in engine.model.state_dict().items()}, engine.optimizer.state_dict())
    return engine, next_batch, probe, guard, watch, thresholds, state


def _watch_flip(warmed, spec: str, seed: int = 0) -> tuple[dict, dict]:
    import copy

    engine, next_batch, probe, guard, calib, (probe_threshold, gnorm_threshold), (weights, opt) = warmed
    engine.model.load_state_dict(weights)
    engine.optimizer.load_state_dict(copy.deepcopy(opt))
    watch = sdc._Watch(engine, copy.deepcopy(guard), FaultInjector([spec], seed=seed), probe, probe_threshold,
                       engine.evaluate(probe), lambda s: 3e-3, gnorm_threshold, calib.gnorm_ema)
    fit(engine, next_batch, 33, lr=3e-3, grad_clip=1.0, start=30, hooks=watch)
    [flip] = watch.injector.take_flips()
    return {m: watch.fired[m][:1] for m in sdc.MECHANISMS}, flip


def test_top_exponent_weight_flips_are_caught_at_once_but_not_all_by_the_guard(warmed):
    """Bit 30 of a float32 weight below 2 in magnitude: ×2^128. Where it lands decides what sees it:
    in a feed-forward input or an embedding the loss goes non-finite (the guard); in a feed-forward
    output the next LayerNorm keeps the loss finite but moves it (only the probe); in an attention
    query/key softmax saturates and the loss barely moves, but the gradient norm jumps (only gnorm).
    Every one is caught by some detector in the step it happens, and by the checksum."""
    seen = []
    for seed in range(12):
        fired, flip = _watch_flip(warmed, "bitflip@31:weight:30", seed)
        assert abs(flip["after"]) > 1e30 and fired["checksum"] == [31]
        assert [31] in (fired["guard"], fired["probe"], fired["gnorm"]), (flip["name"], fired)
        seen.append({m for m in ("guard", "probe", "gnorm") if fired[m]})
    assert any(s == {"probe"} for s in seen)  # missed by the guard and the norm check, caught by the probe
    assert any(s == {"gnorm"} for s in seen)  # missed by the guard and the probe, caught by the norm check
    assert any("guard" in s for s in seen)


def test_the_gradient_norm_check_catches_a_top_exponent_gradient_flip_the_guard_misses(warmed):
    """A gradient ×2^128 stays finite: clipping tames it and the guard sees nothing wrong with the
    loss; the norm jumps by many orders of magnitude. No checksum can see a gradient flip."""
    for seed in range(5):  # (an element whose gradient is exactly 0 stays 0: try another)
        fired, flip = _watch_flip(warmed, "bitflip@31:grad:30", seed)
        if flip["before"] != 0:
            break
    assert abs(flip["after"]) > 1e20
    assert fired["gnorm"] == [31] and fired["guard"] == [] and fired["checksum"] == []


def test_a_low_mantissa_flip_is_missed_by_every_semantic_detector_and_seen_by_the_checksum(warmed):
    fired, flip = _watch_flip(warmed, "bitflip@31:weight:0")
    assert abs(flip["after"] - flip["before"]) <= abs(flip["before"]) * 2 ** -22
    assert fired["guard"] == fired["probe"] == fired["gnorm"] == [] and fired["checksum"] == [31]


def test_param_checksum_changes_with_any_single_flip_and_not_otherwise():
    model = _tiny_model()
    base = sdc.param_checksum(model)
    assert sdc.param_checksum(model) == base
    for bit in (0, 22, 23, 30, 31):
        injector = FaultInjector([f"bitflip@1:weight:{bit}"], seed=bit)
        injector.bitflips(1, model)
        assert sdc.param_checksum(model) != base
        base = sdc.param_checksum(model)


# ---- the projection, by hand ----------------------------------------------------------------------
def test_llama3_point_by_hand():
    p = projection.llama3_point(10.0, 600.0, 0.9)
    M = 54 * 24 * 3600 / 419  # seconds between failures of the whole job
    assert p["mtbf_s"] == pytest.approx(M, rel=1e-12)
    assert p["young_interval_s"] == pytest.approx(math.sqrt(2 * 10 * M), rel=1e-12)
    assert p["interruptions_per_day"] == pytest.approx(419 / 54, rel=1e-12)
    R = p["max_restart_s_for_target"]
    assert goodput(p["young_interval_s"], 10.0, R, M) == pytest.approx(0.9, abs=1e-9) and 0 < R < M
    # by hand: G = a·(1 − (R + s/2)/M) = 0.9 with s = τ + δ, a = τ/s  →  R = M·(1 − 0.9/a) − s/2
    tau = math.sqrt(2 * 10 * M)
    assert R == pytest.approx(M * (1 - 0.9 * (tau + 10) / tau) - (tau + 10) / 2, rel=1e-9)
    # at δ = 60 s even R = 0 stays below 90%: G(τ*) = a·(1 − s/(2M)) ≈ 0.899
    assert projection.llama3_point(60.0, 0.0, 0.9)["max_restart_s_for_target"] is None


def test_goodput_falls_with_cluster_size_and_young_is_near_the_argmax():
    rows = projection.sweep([64, 1024, 16384, 131072], [60.0], 600.0, 3600.0)["rows"]
    g = [r["goodput_young"] for r in rows]
    assert g == sorted(g, reverse=True) and g[0] > 0.99 > g[-1]
    for r in rows:
        delta, R, M = 60.0, 600.0, r["mtbf_s"]
        if r["first_order_ok"]:  # the model's exact optimum, by hand: dG/ds = 0 → s* = √(2δ(M − R))
            assert r["argmax_interval_s"] == pytest.approx(math.sqrt(2 * delta * (M - R)) - delta, rel=1e-6)
            assert 0 <= r["goodput_argmax"] - r["goodput_young"] < 0.005  # Young's is as good, to first order
    assert rows[0]["mtbf_s"] / rows[-1]["mtbf_s"] == pytest.approx(131072 / 64)
    assert LLAMA3_FAILURES_PER_GPU_HOUR == 419 / (16384 * 54 * 24)


# ---- the report, from results alone -----------------------------------------------------------------
def _fake_seed(seed: int, error: float = 0.01, harmful_unseen: bool = False) -> dict:
    runs = [{"mtbf_multiple": m, "kill_rate": 0.1, "interval_steps": k, "finished": True, "interval_s": 0.2, "step_s": 0.02, "checkpoint_s": 0.03,
             "wall_s": 20.0 + seed, "window_s": 15.0 + seed, "kills": 2 + seed, "restarts": 2 + seed, "measured_rate": 0.1,
             "goodput_measured": 0.7 + error + 0.01 * seed, "goodput_model": 0.7 + 0.01 * seed,
             "goodput_model_nominal": 0.7, "error": error, "restart_s": 2.0} for m, k in [[4, 10], [10, 100]]]
    flips = []
    for k, (target, kind) in enumerate([(t, c) for t in ("weight", "grad") for c in ("sign", "exponent", "mantissa")]):
        caught = kind == "exponent" and target == "weight"
        flips.append({"target": target, "class": kind, "bit": 30 if kind == "exponent" else 31 if kind == "sign" else 3,
                      "name": "w", "index": k, "before": 0.5, "after": 1e38 if caught else 0.4,
                      "delay": {"guard": 0 if caught else None, "probe": 0 if caught else None,
                                "gnorm": 0 if target == "grad" and kind == "exponent" else None,
                                "checksum": 0 if target == "weight" else None},
                      "guard_reason": "non-finite" if caught else None,
                      "val_loss_change": 0.5 if harmful_unseen and kind == "sign" else 1e-6})
    return {"validation": {"step_s": 0.01, "checkpoint_s": 0.03, "startup_s": 2.5, "restart_s": 2.0, "restart_count": 4,
                           "reference_wall_s": 13.0, "runs": runs},
            "sdc": {"threshold": 0.05, "probe_calibration_max": 0.02, "gnorm_threshold": 4.0, "clean_val_loss": 2.5,
                    "false_alarms": {m: 0.0 for m in sdc.MECHANISMS}, "summary": sdc.summarize_flips(flips), "detail": flips}}


def _fake_results(errors=None, **kwargs) -> dict:
    s = lab.Settings(val_grid=[[4, 10], [10, 100]])
    per_seed = [{"seed": seed, "seconds": 1.0,
                 "results": _fake_seed(seed, **(kwargs if errors is None else {**kwargs, "error": errors[seed]}))}
                for seed in range(3)]
    return lab.make_results(s, [0, 1, 2], per_seed, "default", 10.0)


def test_report_regenerates_from_results_alone(tmp_path, capsys):
    results = _fake_results()
    harness.write_outputs(report, results, tmp_path / "a")
    assert cli.main(["lab", "failures", "--report-from", str(tmp_path / "a" / "results.json"), "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "a" / "report.md").read_text() == (tmp_path / "b" / "report.md").read_text()
    for name in report.PLOTS.values():
        assert (tmp_path / "b" / name).stat().st_size > 0
    text = (tmp_path / "b" / "report.md").read_text()
    assert "Llama 3" in text and "**validation.** Supported" in text and "**detectors.** Supported" in text
    assert json.loads((tmp_path / "a" / "results.json").read_text())["lab"] == "failures"


def test_the_verdicts_can_fail():
    v = report.verdicts(_fake_results(error=0.2))
    assert v["validation"].startswith("NOT supported")
    # Mean error 0, but the seeds spread it over ±0.2: consistent with the model, yet not resolved.
    v = report.verdicts(_fake_results(errors=[-0.2, 0.0, 0.2]))
    assert v["validation"].startswith("Not resolved")
    v = report.verdicts(_fake_results(harmful_unseen=True))
    assert v["detectors"].startswith("NOT supported")


def test_bad_lab_arguments_are_one_line(capsys, tmp_path):
    assert cli.main(["lab", "failures", "--flips", "0", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: --flips must be at least 1")
    assert cli.main(["lab", "failures", "--report-from", str(tmp_path / "none.json")]) == 2
    assert "does not exist" in capsys.readouterr().err


# ---- under DDP: what a cross-rank comparison can and cannot see ------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("target, in_sync", [("weight", False), ("grad", True)])
def test_under_ddp_a_weight_flip_makes_the_ranks_differ_and_a_gradient_flip_does_not(tmp_path, target, in_sync):
    """2 CPU ranks (gloo), one flip on rank 0. A weight flipped in rank 0's memory: the ranks' weights
    differ at the end (train.distributed.weights_in_sync, SHA-256 across ranks). A gradient flipped on
    rank 0 is all-reduced: both ranks apply the same corrupted update and stay identical, so no
    cross-rank check can see it."""
    import os
    import shutil
    import subprocess
    import sys

    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    args = [a for s in ["n_layer=1", "n_head=2", "n_embd=16", "block_size=16", "batch_size=2", "max_steps=4",
                        "eval_iters=1", "checkpoint_interval=0", "threads=1"] for a in ("--set", s)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    r = subprocess.run([torchrun, "--nproc_per_node=2", f"--master_port={29541 + (target == 'grad')}", "-m", "groundup",
                        "train", *args, "--inject", f"bitflip@2:{target}:mantissa", "--out", str(tmp_path / "ddp")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    [flip] = events(tmp_path / "ddp", "bitflip")
    assert flip["target"] == target and flip["step"] == 2
    assert ("weights identical on all 2 ranks" in r.stdout) == in_sync, r.stdout
    assert ("warning: weights differ between the 2 ranks" in r.stdout) == (not in_sync), r.stdout
