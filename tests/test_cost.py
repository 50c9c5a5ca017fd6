"""The accounting and the cost calculator: FLOPs against torch's own counter and the published
figures, the arithmetic of time, money and energy checked by hand, the pre-flight, the projection
from a run, and `groundup cost` (text and --json)."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from groundup.errors import ConfigError, GroundupError
from groundup.hardware import PRESETS, Hardware
from groundup import accounting, cost
from groundup.model import GPT
from groundup.report.format import parse_amount
from groundup.train.plan import plan_training

from helpers import tiny_config


@pytest.mark.parametrize("key", ["gpt3-175b", "chinchilla-70b", "llama3-405b"])
def test_reference_flops_within_10_percent_of_published(key):
    row = next(r for r in cost.reference_table() if r["key"] == key)
    assert abs(row["error_6ND"]) < 0.10, row
    assert abs(row["error_with_attention"]) < 0.10, row


def test_gpt3_is_about_3_1e23_flops():
    r = cost.REFERENCES["gpt3-175b"]
    assert accounting.training_flops(r.n_params, r.n_tokens) == pytest.approx(3.15e23, rel=1e-3)


def test_node_power_per_gpu_is_the_dgx_figure_less_the_board():
    """DGX H100 ≈ 10.2 kW for 8 GPUs of 700 W: 10,200 / 8 = 1,275 W per GPU, 575 W of it the host.
    One H100 for 1,000 hours at PUE 1.2: (700 + 575) W × 1,000 h × 1.2 = 1,530 kWh (840 kWh the board alone)."""
    assert PRESETS["H100"].host_watts == 575 and PRESETS["H200"].host_watts == 575
    assert PRESETS["A100"].host_watts == 6500 / 8 - 400 == 412.5
    flops = 1000 * 3600 * 989e12 * 0.4  # exactly 1,000 H100-hours at 40% MFU
    p = accounting.project(flops, PRESETS["H100"], 1, mfu=0.4, price=2.5, pue=1.2)
    assert p.gpu_hours == pytest.approx(1000) and p.kwh == pytest.approx(1530) and p.kwh_boards == pytest.approx(840)
    hw = cost.hardware_with("h100", host_watts_per_gpu=0)  # --host-watts-per-gpu 0: the boards alone
    assert accounting.project(flops, hw, 1, mfu=0.4, pue=1.2).kwh == pytest.approx(840)


def test_validation_recomputes_llama3_implied_mfu_by_hand():
    """6·N·D = 6 × 405e9 × 15.6e12 = 3.7908e25 FLOPs; 30.84M H100-hours at 989 TFLOP/s peak are
    30.84e6 × 3600 × 989e12 = 1.09802e26 FLOPs of capacity; 3.7908e25 / 1.09802e26 = 34.52%.
    With attention: + 12 × 126 × 8192 × 16384 × 15.6e12 = 3.1653e24 → 4.1073e25 → 37.41%, just
    under the 38–43% Meta measured in steady-state pre-training (Dubey et al. 2024, Table 4)."""
    rows = {r["key"]: r for r in cost.validation()["runs"]}
    llama = rows["llama3-405b"]
    assert llama["implied_mfu_6ND"] == pytest.approx(0.34524, abs=5e-5)
    assert llama["implied_mfu_with_attention"] == pytest.approx(0.37407, abs=5e-5)
    assert llama["reported_mfu"] == [0.38, 0.43]
    # llm.c: (6 × 123.56M + 12 × 12 × 1024 × 768) × 10e9 = 8.546e18 FLOPs over 12 A100-hours at 312 TFLOP/s.
    assert rows["llmc-124m"]["implied_mfu_with_attention"] == pytest.approx(8.546e18 / (12 * 3600 * 312e12), rel=1e-3)
    assert rows["llmc-124m"]["implied_price"] == pytest.approx(20 / 12)
    for r in rows.values():  # every published run implies an MFU a real cluster can reach
        assert 0.2 < r["implied_mfu_6ND"] < r["implied_mfu_with_attention"] < 0.7, r


def test_cli_cost_validate_text_and_json(capsys):
    code, text, err = _cli(capsys, "cost", "--validate")
    assert code == 0, err
    assert "Llama 3.1 405B" in text and "34.5%" in text and "37.4%" in text and "GPT-3 175B" in text
    code, raw, err = _cli(capsys, "cost", "--validate", "--json")
    assert code == 0, err
    _assert_every_printed_figure_is_in_the_json(text, json.loads(raw))


def test_published_gpu_hours_imply_a_plausible_mfu():
    """Llama-2 published GPU-hours, not FLOPs: 6·N·D over those hours must be a believable MFU."""
    rows = {r["key"]: r for r in cost.reference_table()}
    for key in ("llama2-70b", "llama3-405b"):
        assert 0.25 < rows[key]["implied_mfu"] < 0.6, rows[key]


def _matmul_params(model: GPT) -> int:
    """Weights that multiply activations: every matrix in the blocks plus the LM head's V·C (the
    embedding and position tables are lookups, biases and norm gains are not matmuls)."""
    c = model.config
    return sum(p.numel() for name, p in model.named_parameters() if p.dim() == 2 and name.startswith("blocks.")) + c.vocab_size * c.n_embd


@pytest.mark.parametrize("overrides", [
    ("n_layer=3",),
    ("n_layer=1", "n_embd=48", "n_head=3", "tie_embeddings=false", "positional=learned"),
    ("n_layer=2", "block_size=24", "bias=false", "ffn_mult=2", "norm=post", "positional=sinusoidal"),
])
def test_flops_per_token_with_attention_matches_torch_flop_counter(overrides):
    """torch's FlopCounterMode counts every matmul of a real forward + backward pass; the model's
    own count, the accounting formula and the counter must all be the same number."""
    config = tiny_config("attention=math", "vocab_size=97", *overrides).model
    model = GPT(config)
    B, T = 2, config.block_size
    idx = torch.randint(0, 97, (B, T))
    with FlopCounterMode(display=False) as counter:
        _, loss = model(idx, idx)
        loss.backward()
    per_token = accounting.training_flops_per_token(_matmul_params(model), config.n_layer, config.n_embd, T)
    assert counter.get_total_flops() == per_token * B * T
    assert model.flops_per_token() == per_token


@pytest.mark.parametrize("n_layer, n_embd, n_head, block_size, vocab, seq_len", [
    (1, 32, 2, 16, 50, None), (4, 64, 4, 128, 1000, 64), (12, 768, 12, 1024, 50257, None), (96, 12288, 96, 2048, 50257, 2048),
])
def test_model_lab_and_calculator_share_one_flop_formula(n_layer, n_embd, n_head, block_size, vocab, seq_len):
    """The three places that once each wrote 6·N + 12·L·T·C (GPT.flops_per_token, the calculator,
    the attention-cost lab) give the same number, up to GPT-3's size (built on the meta device)."""
    from groundup.config import ModelConfig

    config = ModelConfig(vocab_size=vocab, block_size=block_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd)
    with torch.device("meta"):
        model = GPT(config)
    T = seq_len or block_size
    n = _matmul_params(model)
    assert model.flops_per_token(seq_len) == accounting.training_flops_per_token(n, n_layer, n_embd, T)
    # The lab's quadratic term of one layer, per token, is the model's attention term per layer.
    lab = accounting.attention_layer_flops(T, n_embd)
    assert (model.flops_per_token(seq_len) - 6 * n) / n_layer == lab["quadratic"] / T
    # The lab's linear term is 6·N over the four attention projections W_Q, W_K, W_V, W^O.
    assert lab["linear"] / T == 6 * 4 * n_embd * n_embd


def test_inference_flops_are_a_third_of_training_flops_per_token():
    assert accounting.inference_flops_per_token(1e9, 10, 1000, 2048) * 3 == accounting.training_flops_per_token(1e9, 10, 1000, 2048)


def test_time_money_and_energy_arithmetic():
    hw = Hardware("round numbers", peak_flops=1e15, memory_bytes=80e9, bandwidth=1e12, watts=1000, source="test")
    # 1.8e21 FLOPs at 50% of 1e15 FLOP/s = 3.6e6 GPU-seconds = 1000 GPU-hours.
    p = accounting.project(1.8e21, hw, n_gpus=10, mfu=0.5, price=2.0, pue=1.5)
    assert p.gpu_hours == pytest.approx(1000)
    assert p.days == pytest.approx(100 / 24)  # 1000 GPU-hours on 10 GPUs = 100 hours
    assert p.dollars == pytest.approx(2000)
    assert p.kwh == pytest.approx(1000 * 1.0 * 1.5)  # GPU-hours × kW × PUE (this Hardware has no host power)
    # The whole node: 1000 GPU-hours × (1000 W board + 250 W host) × PUE 1.5 = 1,875 kWh; the boards alone 1,500.
    p = accounting.project(1.8e21, hw, n_gpus=10, mfu=0.5, price=2.0, pue=1.5, host_watts_per_gpu=250)
    assert p.kwh == pytest.approx(1875) and p.kwh_boards == pytest.approx(1500)
    assert accounting.energy_kwh(1000, 1000, 250, 1.5) == pytest.approx(1875)
    assert accounting.gpus_for_days(1.8e21, hw, days=100 / 24, mfu=0.5) == 10
    with pytest.raises(ConfigError):
        accounting.project(1e20, hw, 1, mfu=1.5)


def test_training_memory_follows_zero_and_korthikanti():
    # GPT-3 175B: 16 bytes/parameter of state = 2.8 TB.
    m = accounting.training_memory(175e9, 96, 12288, 96, 2048, batch=1, fused_attention=False)
    assert m.state == pytest.approx(16 * 175e9)
    assert (m.weights, m.gradients, m.optimizer) == (2 * 175e9, 2 * 175e9, 12 * 175e9)
    # Korthikanti et al. eq. 2: s·b·h·(34 + 5·a·s/h) bytes per layer; 5·96·2048/12288 = 80.
    per_layer = 2048 * 12288 * (34 + 80)
    assert m.activations == pytest.approx(96 * per_layer)
    fused = accounting.training_memory(175e9, 96, 12288, 96, 2048, batch=1)
    assert fused.activations == pytest.approx(96 * 2048 * 12288 * 34)
    ckpt = accounting.training_memory(175e9, 96, 12288, 96, 2048, batch=1, checkpointing=True)
    assert ckpt.activations == pytest.approx(96 * 2 * 2048 * 12288 + 2048 * 12288 * 34)
    fp32 = accounting.training_memory(1e6, 2, 64, 4, 32, batch=2, vocab=100, mixed_precision=False)
    assert fp32.state == 16e6 and fp32.weights == 4e6
    assert fp32.activations == pytest.approx(2 * 2 * 32 * 2 * 64 * 34 + 4 * 32 * 2 * 100)


def test_min_gpus_shards_the_state_and_keeps_activations_per_gpu():
    m = accounting.TrainingMemory(weights=100e9, gradients=100e9, optimizer=600e9, activations=8e9)  # 800 GB of state
    assert accounting.min_gpus(m, 80e9) == math.ceil(800e9 / (0.9 * 80e9 - 8e9))  # 13
    assert accounting.min_gpus(accounting.TrainingMemory(0, 0, 0, 100e9), 80e9) is None


def test_memory_estimate_bounds_what_a_training_step_really_allocates():
    """The plan's fp32 accounting against the bytes a real CPU training step creates."""
    from groundup.util.memory import PeakTensorMemory

    config = tiny_config("vocab_size=97", "batch_size=8").model
    model = GPT(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    idx = torch.randint(0, 97, (8, config.block_size))
    with PeakTensorMemory() as tracker:  # gradients, Adam state and activations are all created in here
        _, loss = model(idx, idx)
        loss.backward()
        optimizer.step()
    n = model.num_params()
    estimate = accounting.TrainingMemory(0, 4 * n, 8 * n, accounting.activation_bytes(config.n_layer, config.n_embd, config.n_head,
                                                                        config.block_size, 8, 97, bytes_per_value=4))
    assert 0.5 * estimate.total < tracker.peak < 1.5 * estimate.total, (tracker.peak, estimate)


def test_cost_bands_put_1e26_flops_in_the_quoted_dollar_range():
    rows = cost.cost_bands(PRESETS["H100"])
    assert [r["flops"] for r in rows] == [1e24, 1e25, 1e26]
    for r in rows:
        assert r["days"] <= 90 and r["dollars"] == pytest.approx(r["gpu_hours"] * accounting.DEFAULT_PRICE)
        assert 6 * r["N"] * r["D"] == pytest.approx(r["flops"]) and r["D"] == pytest.approx(20 * r["N"])
        assert r["mwh"] == pytest.approx(r["gpu_hours"] * (0.7 + 0.575) * accounting.DEFAULT_PUE / 1000)  # board + host
    assert 10e6 < rows[2]["dollars"] < 1e9  # "frontier runs cost $10M–$1B"
    assert rows[1]["gpu_hours"] == pytest.approx(10 * rows[0]["gpu_hours"])


def test_parse_amount_reads_suffixes_and_refuses_nonsense():
    assert parse_amount("70B") == 70e9 and parse_amount("1.4T") == 1.4e12 and parse_amount("3e23") == 3e23
    for bad in ["seventy", "-5B", "0", "1.2X"]:
        with pytest.raises(ConfigError):
            parse_amount(bad)


def test_hardware_figures_can_be_overridden():
    hw = cost.hardware_with("a100", peak_tflops=100, watts=300)
    assert hw.peak_flops == 100e12 and hw.watts == 300 and hw.memory_bytes == PRESETS["A100"].memory_bytes
    with pytest.raises(ConfigError, match="presets"):
        cost.hardware_with("TPU")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from groundup.train.trainer import train

    run_dir = tmp_path_factory.mktemp("cost") / "run"
    return run_dir, train(tiny_config("max_steps=30", "log_interval=5"), run_dir, progress=False)


def test_project_from_a_measured_run(tiny_run):
    run_dir, result = tiny_run
    r = cost.project_from_run(run_dir, hardware=PRESETS["H100"], n_gpus=8, mfu=0.3)
    own, ten, hundred = r["rows"]
    assert own["N"] == result.model.num_params() and own["D"] == 30 * 4 * 32
    assert ten["flops"] == pytest.approx(100 * own["flops"]) and hundred["flops"] == pytest.approx(1e4 * own["flops"])
    assert ten["seconds_here"] == pytest.approx(100 * own["seconds_here"])
    assert own["gpu_hours"] == pytest.approx(own["flops"] / (989e12 * 0.3) / 3600)
    # The measured speed really is this run's: its own size projects to about its measured time.
    measured = r["measured"]["tokens_per_s"]
    assert own["seconds_here"] == pytest.approx(own["flops"] / (r["measured"]["flops_per_token"] * measured))


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    """The CLI in this process (same code path as the console script, without a new interpreter)."""
    from groundup.cli import main

    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_cost_default_prints_references_and_bands(capsys):
    code, out, err = _cli(capsys, "cost")
    assert code == 0, err
    for fragment in ("GPT-3 175B", "Chinchilla 70B", "Llama-2 70B", "Llama-3 405B", "1e+24", "1e+26", "MWh", "implied MFU"):
        assert fragment in out, fragment


def test_cli_cost_for_a_model(capsys):
    code, out, err = _cli(capsys, "cost", "--params", "7B", "--tokens", "2T", "--layers", "32", "--d-model", "4096",
                          "--heads", "32", "--context", "4096", "--gpus", "256", "--gpu", "A100")
    assert code == 0, err
    assert "8.4e+22" in out and "256 GPUs" in out and "activation checkpointing" in out


def test_training_state_alone_decides_the_gpu_count():
    """16 bytes/parameter (bf16 weights 2 + bf16 gradients 2 + fp32 master weights and Adam m, v 12):
    7B parameters hold 112 GB of state, more than 90% of one 80 GB H100, so sharded it needs 2."""
    state = accounting.state_memory(7e9)
    assert state.state == 112e9 and state.activations == 0
    assert accounting.state_memory(7e9, mixed_precision=False).state == 112e9  # fp32: 4 + 4 + 8
    assert accounting.min_gpus(state, PRESETS["H100"].memory_bytes) == 2  # ⌈112 / 72⌉
    e = cost.estimate(7e9, 140e9, PRESETS["H100"])
    assert e.min_gpus == 2 and e.projection.n_gpus == 2 and not e.activations_counted


def test_cli_cost_7b_alone_needs_two_gpus_and_says_why(capsys):
    """The regression: `--params 7B` used to answer "172.0 days on 1 GPUs", skipping the memory check."""
    code, out, err = _cli(capsys, "cost", "--params", "7B")
    assert code == 0, err
    assert "112 GB of state" in out and "on 2 GPUs" in out, out
    assert "activations not counted" in out and "lower bound" in out and "ZeRO-3/FSDP" in out, out
    code, out, err = _cli(capsys, "cost", "--params", "7B", "--gpus", "1")
    assert code == 0, err
    assert "on 1 GPU\n" in out and "1 GPU can't hold this run: it needs at least 2" in out and "training state" in out, out


@pytest.mark.parametrize("args", [["--params", "1B"], ["--params", "7B", "--gpus", "1"], ["--params", "1B", "--days", "30"],
                                  ["--model", "gpt3-175b", "--gpus", "1"]])
def test_cli_cost_counts_gpus_in_english(capsys, args):
    code, out, err = _cli(capsys, "cost", *args)
    assert code == 0, err
    assert not re.search(r"(?<![\d,])1 GPUs", out), out
    assert re.search(r"\b\d[\d,]* GPUs?\b", out), out


# ---- --json: the same figures, full precision ---------------------------------------------------
_SCALE = {"k": 1e3, "M": 1e6, "B": 1e9, "T": 1e12, "kB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "GB/s": 1e9,
          "TFLOP/s": 1e12, "GFLOP/s": 1e9, "%": 1e-2, "min": 60.0, "h": 3600.0, "days": 86400.0}
# A figure: optional sign and $, digits with thousands commas, decimals, exponent, then a unit. Not a
# digit inside a word or formula ("6·N", "ZeRO-3", "batch-1", "6ND").
_FIGURE = re.compile(r"(?<![\w·.\-+])([+-]?)\$?(\d[\d,]*(?:\.(\d+))?(?:e([+-]?\d+))?)\s?"
                     r"(TFLOP/s|GFLOP/s|GB/s|kB|MB|GB|TB|%|k|M|B|T|min|h|days)?(?![\w·])")


def _leaves(obj):
    """Every number and every string in a JSON document."""
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _leaves(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _leaves(v)
    elif isinstance(obj, (int, float, str)) and not isinstance(obj, bool):
        yield obj


def _printed_figures(text: str, data: dict) -> list[tuple[str, float, float, float]]:
    """(as printed, value, half a unit of its last digit, unit scale) for every figure in `text`,
    after removing the strings the JSON carries (names, sources, notes, paths)."""
    for s in sorted((v for v in _leaves(data) if isinstance(v, str)), key=len, reverse=True):
        text = text.replace(s, " ")
    figures = []
    for m in _FIGURE.finditer(text):
        sign, digits, decimals, exponent, unit = m.groups()
        value = float((sign + digits).replace(",", ""))
        half = 0.5 * 10.0 ** (-len(decimals or "") + int(exponent or 0))
        figures.append((m.group(0), value, half, _SCALE.get(unit, 1.0)))
    return figures


def _assert_every_printed_figure_is_in_the_json(text: str, data: dict) -> None:
    numbers = [v for v in _leaves(data) if not isinstance(v, str)]
    figures = _printed_figures(text, data)
    assert len(figures) > 10, figures
    for printed, value, half, scale in figures:
        # The figure is one JSON number rounded as printed (in its unit, or before the unit applies).
        ok = any(abs(v - value * s) <= half * s * (1 + 1e-9) for v in numbers for s in {scale, 1.0})
        assert ok, f"{printed!r} is printed but no JSON figure rounds to it"


@pytest.mark.parametrize("args", [
    [],
    ["--params", "7B"],
    ["--params", "7B", "--gpus", "1", "--gpu", "A100", "--mfu", "0.31", "--price", "1.7", "--pue", "1.1"],
    ["--params", "7B", "--host-watts-per-gpu", "300", "--pue", "1.4"],
    ["--params", "7B", "--tokens", "2T", "--layers", "32", "--d-model", "4096", "--heads", "32", "--context", "4096",
     "--gpus", "256", "--gpu", "A100"],
    ["--model", "llama3-405b", "--gpus", "16384"],
    ["--model", "chinchilla-70b", "--days", "60", "--micro-batch", "2"],
    ["--model", "mixtral-8x7b", "--gpus", "64"],
    ["--model", "gpt4-rumoured"],
    ["--params", "47B", "--active-params", "13B", "--tokens", "1T"],
    ["--params", "7B", "--gpus", "1024", "--interconnect", "infiniband", "--parallelism", "fsdp", "--overlap", "0.5",
     "--checkpoint-seconds", "60", "--restart-seconds", "600"],
    ["--model", "llama3-405b", "--gpus", "16384", "--interconnect", "nvlink", "--bus-bandwidth-gbs", "370",
     "--latency-us", "50", "--checkpoint-seconds", "30", "--restart-seconds", "900", "--failures-per-gpu-hour", "1e-4"],
])
def test_cli_cost_json_holds_every_printed_figure(capsys, args):
    code, text, err = _cli(capsys, "cost", *args)
    assert code == 0, err
    code, raw, err = _cli(capsys, "cost", *args, "--json")
    assert code == 0, err
    _assert_every_printed_figure_is_in_the_json(text, json.loads(raw))


def test_cli_cost_json_is_full_precision_and_matches_the_text(capsys):
    _, text, _ = _cli(capsys, "cost", "--params", "7B")
    _, raw, _ = _cli(capsys, "cost", "--params", "7B", "--json")
    data = json.loads(raw)
    hours = 6 * 7e9 * 140e9 / (989e12 * 0.4) / 3600  # worked here, not read from the code
    assert data["gpu_hours"] == pytest.approx(hours, rel=1e-12) and data["gpu_hours"] != round(data["gpu_hours"])
    assert data["gpus"] == data["min_gpus"] == 2 and data["memory"]["state"] == 112e9
    assert data["memory"]["activations"] is None and data["memory"]["activations_counted"] is False
    assert data["days"] == pytest.approx(hours / 2 / 24, rel=1e-12)
    assert data["dollars"] == pytest.approx(hours * 2.5, rel=1e-12)
    assert data["kwh"] == pytest.approx(hours * (700 + 575) * 1.2 / 1000, rel=1e-12)  # DGX H100: 10.2 kW / 8 GPUs
    assert data["kwh_boards"] == pytest.approx(hours * 700 * 1.2 / 1000, rel=1e-12)
    assert data["decode_tokens_per_s"] == pytest.approx(3350e9 / (2 * 7e9), rel=1e-12)
    _, raw_bands, _ = _cli(capsys, "cost", "--json")
    for row in json.loads(raw_bands)["bands"]["rows"]:
        row_hours = row["flops"] / (989e12 * 0.4) / 3600
        assert row["gpu_hours"] == pytest.approx(row_hours, rel=1e-12)
        assert row["days"] == pytest.approx(row_hours / row["gpus"] / 24, rel=1e-12)
        assert row["dollars"] == pytest.approx(row_hours * 2.5, rel=1e-12)
        assert row["mwh"] == pytest.approx(row_hours * 1.275 * 1.2 / 1000, rel=1e-12)
    for printed in (f"{data['gpu_hours']:,.0f} GPU-hours", f"{data['days']:,.1f} days on 2 GPUs", f"${data['dollars']:,.0f}",
                    f"{data['mwh']:,.1f} MWh"):
        assert printed in text, printed


@pytest.mark.parametrize("args, fragment", [
    (["--params", "lots"], "--params"),
    (["--gpu", "TPU", "--params", "1B"], "TPU"),
    (["--from-run", "/nonexistent/run"], "not a run directory"),
    (["--params", "1B", "--mfu", "0"], "mfu"),
    (["--tokens", "1T"], "--params"),
    (["--params", "1B", "--host-watts-per-gpu", "-5"], "--host-watts-per-gpu"),
])
def test_cli_cost_bad_input_is_a_clean_error(capsys, args, fragment):
    code, _, err = _cli(capsys, "cost", *args)
    assert code == 2 and err.startswith("error:") and fragment in err, err


def test_cli_cost_from_run(tiny_run, capsys):
    code, out, err = _cli(capsys, "cost", "--from-run", str(tiny_run[0]), "--gpus", "8")
    assert code == 0, err
    assert "tokens/s" in out and "100× N, 100× D" in out and "8× NVIDIA H100" in out
    code, raw, err = _cli(capsys, "cost", "--from-run", str(tiny_run[0]), "--gpus", "8", "--json")
    assert code == 0, err
    _assert_every_printed_figure_is_in_the_json(out, json.loads(raw))


def test_train_plan_prints_fit_flops_and_time_without_training(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = _cli(capsys, "train", "--plan", "--set", "n_layer=2", "--set", "n_embd=32", "--set", "n_head=2",
                          "--set", "max_steps=100", "--set", "block_size=32", "--set", "batch_size=4")
    assert code == 0, err
    assert "fits" in out and "FLOPs" in out and "tokens/s" in out and "12,800" in out  # 100 × 4 × 32 tokens
    assert not any(tmp_path.iterdir())  # nothing trained, nothing written


def test_plan_flops_are_the_models_own_count():
    config = tiny_config("vocab_size=65")
    plan = plan_training(config, probe=False, out=open("/dev/null", "w"))
    model = GPT(config.model)
    assert plan["flops"] == model.flops_per_token() * 20 * 4 * 32
    assert plan["fits"] and plan["N"] == model.num_params()
    with pytest.raises(GroundupError):
        cost.measured_speed("/nonexistent/run")


def test_moe_presets_count_total_and_active_parameters_as_published():
    """Mixtral 8×7B from its architecture (Jiang et al. 2024): 46.7B total, 12.9B active per token;
    the rumoured 16-expert model: ~1.8T total, ~280B active, and 6·N_active·D ≈ the reported 2.15e25."""
    mixtral, rumour = cost.MOE_PRESETS["mixtral-8x7b"], cost.MOE_PRESETS["gpt4-rumoured"]
    assert round(mixtral.n_params / 1e9, 1) == 46.7 and round(mixtral.n_active / 1e9, 1) == 12.9
    assert round(rumour.n_params / 1e12, 1) == 1.8 and 270e9 < rumour.n_active < 290e9
    assert accounting.training_flops(rumour.n_active, rumour.n_tokens) == pytest.approx(rumour.published_flops, rel=0.02)
    dense = cost.estimate(mixtral.n_params, 1e12, PRESETS["H100"])
    sparse = cost.estimate(mixtral.n_params, 1e12, PRESETS["H100"], n_active=mixtral.n_active)
    assert sparse.flops == 6 * mixtral.n_active * 1e12 and sparse.flops < dense.flops / 3
    assert sparse.memory.state == dense.memory.state  # every expert is stored and trained
    assert sparse.decode_tokens_per_s == pytest.approx(dense.decode_tokens_per_s * mixtral.n_params / mixtral.n_active)


def test_cli_cost_moe_preset_and_bad_active_params(capsys):
    code, out, err = _cli(capsys, "cost", "--model", "mixtral-8x7b")
    assert code == 0, err
    assert "46.7B parameters (12.9B active per token)" in out and "6·N_active·D" in out and "not published" in out
    code, out, err = _cli(capsys, "cost", "--model", "gpt4-rumoured")
    assert code == 0 and "RUMOUR" in out and "1.83T parameters (277B active per token)" in out
    code, out, err = _cli(capsys, "cost", "--params", "7B", "--active-params", "9B")
    assert code == 2 and "cannot exceed the total" in err and "Traceback" not in err
