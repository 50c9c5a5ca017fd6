"""Weight-only quantization: formats against hand-computed cases and torchao, the low-bit kernels
against dequantize-then-matmul, GPTQ against round-to-nearest, and quantized runs end to end
(written, loaded by sample and serve, refused by the trainer, reported when corrupt)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from groundup.cli import main
from groundup.config import load_config
from groundup.engines.torch.kernels import use_kernels
from groundup.errors import CheckpointError, ConfigError, GroundupError
from groundup.model import GPT
from groundup.quantize import (QuantizedLinear, hessian, load_model, pack_int4, quantize_gptq, quantize_int4, quantize_int8,
                               quantize_model, quantize_rtn, quantize_run, unpack_int4, weight_bytes)
from groundup.quantize.formats import dequantize_int4
from groundup.sample import SamplingSettings, generate, load_run
from groundup.train import checkpoint as ckpt
from groundup.train.trainer import train

from helpers import tiny_config

TINY_Q = ["n_embd=64", "max_steps=20"]  # widths 64 and 256: group sizes 32 and 64 divide both, 128 does not


# ---- formats: hand-computed cases -----------------------------------------------------------------
def test_int8_per_channel_hand_computed():
    w = torch.tensor([[0.5, -1.27, 0.01, 0.0],
                      [0.0, 0.0, 0.0, 0.0],  # an all-zero row: scale 1, codes 0
                      [2.54, 1.0, -0.02, 0.03]])
    q = quantize_int8(w)
    torch.testing.assert_close(q.scales, torch.tensor([0.01, 1.0, 0.02]))  # max|w_row| / 127
    assert q.qweight.dtype == torch.int8
    assert q.qweight.tolist() == [[50, -127, 1, 0], [0, 0, 0, 0], [127, 50, -1, 2]]  # 1.5 → 2 (half to even)


def test_int4_group_hand_computed():
    # one row, two groups of 32: group 0 spans [−0.3, 1.2] → s = 0.1, z = 3; group 1 is ≥ 0 → lo = 0, z = 0
    g0 = torch.full((32,), 0.5)
    g0[0], g0[1], g0[2] = -0.3, 1.2, 0.0
    g1 = torch.full((32,), 0.2)
    g1[0] = 1.5
    q = quantize_int4(torch.cat([g0, g1])[None], 32)
    torch.testing.assert_close(q.scales, torch.tensor([[0.1, 0.1]]))
    assert q.zeros.tolist() == [[3, 0]]
    codes = unpack_int4(q.qweight)[0]
    assert codes[:3].tolist() == [0, 15, 3] and codes[3].item() == 8  # −0.3 → 0, 1.2 → 15, 0 → z, 0.5 → 5 + 3
    assert codes[32].item() == 15 and codes[33].item() == 2
    torch.testing.assert_close(q.dequantize()[0, :4], torch.tensor([-0.3, 1.2, 0.0, 0.5]))


def test_int4_nibble_order_and_round_trip():
    codes = torch.tensor([[1, 2, 3, 4], [15, 0, 0, 15]], dtype=torch.uint8)
    packed = pack_int4(codes)
    assert packed.dtype == torch.uint8 and packed.tolist() == [[0x21, 0x43], [0x0F, 0xF0]]  # even column: low nibble
    assert torch.equal(unpack_int4(packed), codes)
    g = torch.Generator().manual_seed(0)
    random_codes = torch.randint(0, 16, (7, 64), generator=g, dtype=torch.uint8)
    assert torch.equal(unpack_int4(pack_int4(random_codes)), random_codes)
    random_bytes = torch.randint(0, 256, (7, 32), generator=g, dtype=torch.uint8)
    assert torch.equal(pack_int4(unpack_int4(random_bytes)), random_bytes)


def test_rtn_error_is_within_half_a_step():
    w = torch.randn(16, 128, generator=torch.Generator().manual_seed(1))
    q8 = quantize_int8(w)
    assert bool(((w - q8.dequantize()).abs() <= q8.scales[:, None] / 2 + 1e-7).all())
    q4 = quantize_int4(w, 32)
    step = q4.scales.repeat_interleave(32, dim=1)
    assert bool(((w - q4.dequantize()).abs() <= step / 2 + 1e-6).all())


# ---- formats: an independent implementation (torchao) ----------------------------------------------
def test_int8_and_int4_equal_torchao():
    qp = pytest.importorskip("torchao.quantization.quant_primitives")
    w = torch.randn(24, 256, generator=torch.Generator().manual_seed(2)) * 0.05
    # int8, per output channel (block (1, K)), symmetric with range −127..127
    scale, zero = qp.choose_qparams_affine(w, qp.MappingType.SYMMETRIC, (1, 256), torch.int8, -127, 127)
    codes = qp.quantize_affine(w, (1, 256), scale, zero, torch.int8, -127, 127)
    ours = quantize_int8(w)
    torch.testing.assert_close(ours.scales, scale.reshape(-1), rtol=0, atol=0)
    assert torch.equal(ours.qweight, codes)
    # int4, groups of 64 along the input dimension, asymmetric 0..15 with an integer zero point
    scale, zero = qp.choose_qparams_affine(w, qp.MappingType.ASYMMETRIC, (1, 64), torch.uint8, 0, 15)
    codes = qp.quantize_affine(w, (1, 64), scale, zero, torch.uint8, 0, 15)
    ours = quantize_int4(w, 64)
    torch.testing.assert_close(ours.scales, scale.reshape(24, 4), rtol=1e-6, atol=0)
    assert torch.equal(ours.zeros.long(), zero.reshape(24, 4).long())
    assert torch.equal(unpack_int4(ours.qweight), codes)


# ---- the kernels read the codes: same result as dequantize-then-matmul -----------------------------
def quantized_layer(bits, group, seed=3, n=96, k=256):
    g = torch.Generator().manual_seed(seed)
    w, b = torch.randn(n, k, generator=g), torch.randn(n, generator=g)
    return QuantizedLinear.from_quantized(quantize_rtn(w, bits, group), b), b, g


@pytest.mark.parametrize("bits,group", [(8, None), (4, 32), (4, 64), (4, 128)])
def test_torch_low_bit_kernels_match_dequantized_matmul(bits, group):
    """PyTorch's own ops (torch._weight_int8pack_mm, aten._weight_int4pack_mm_for_cpu with the layout
    and zero-point convention built at load time) compute x·Ŵᵀ for Ŵ dequantized from our storage."""
    layer, _, g = quantized_layer(bits, group)
    x = torch.randn(7, 256, generator=g)
    reference = x.double() @ layer.dequantize().double().T
    torch.testing.assert_close(layer.torch_kernel(x).double(), reference, rtol=1e-5, atol=1e-4)
    # bfloat16 (the path `forward` gives bf16 inputs): x and y rounded to bf16, nothing else
    xb = x.bfloat16()
    y = layer(xb)
    assert y.dtype == torch.bfloat16
    reference = F.linear(xb.double(), layer.dequantize().double(), layer.bias.double())
    torch.testing.assert_close(y.double(), reference, rtol=2 ** -7, atol=2 ** -7 * float(reference.abs().max()))


@pytest.mark.parametrize("bits,group", [(8, None), (4, 32), (4, 64), (4, 128)])
def test_quantized_linear_matches_dequantized_matmul_on_every_path(bits, group, monkeypatch):
    from groundup import kernels

    layer, b, g = quantized_layer(bits, group)
    used = []
    for name in ("int8_linear", "int4_linear"):
        real = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *a, _real=real, _name=name: used.append(_name) or _real(*a))
    for rows in (1, 5, 40):  # decoding (the code-reading kernels), and a prompt (dequantize once)
        x = torch.randn(rows, 256, generator=g)
        reference = F.linear(x.double(), layer.dequantize().double(), b.double())
        y = layer(x[None])[0]
        assert y.dtype == torch.float32
        torch.testing.assert_close(y.double(), reference, rtol=1e-5, atol=1e-4)
    if kernels.enabled():
        assert used == [f"int{bits}_linear"] * 2, used  # 1 and 5 rows: the kernel; 40 rows: dequantized
    torch.testing.assert_close(layer(x.double()), reference, rtol=1e-12, atol=1e-12)  # float64: dequantized


def test_int4_kernel_layout_is_rebuilt_when_the_codes_change():
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(4))
    layer = QuantizedLinear.from_quantized(quantize_int4(w, 32), None)
    x = torch.randn(1, 64)
    layer(x)
    other = quantize_int4(-w, 32)
    layer.load_state_dict({"qweight": other.qweight, "scales": other.scales, "zeros": other.zeros})
    torch.testing.assert_close(layer(x), x @ other.dequantize().T, rtol=1e-5, atol=1e-5)


# ---- GPTQ ----------------------------------------------------------------------------------------------
def correlated_layer(seed: int = 5, n: int = 64, k: int = 128, tokens: int = 2048):
    """A layer W (n, k) and inputs X (tokens, k) whose features are strongly correlated (low-rank
    plus noise), as a transformer's activations are."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.1
    x = torch.randn(tokens, 8, generator=g) @ torch.randn(8, k, generator=g) + 0.05 * torch.randn(tokens, k, generator=g)
    return w, x


def output_error(w, w_hat, x) -> float:
    return float(torch.linalg.norm(x @ (w - w_hat).T))  # ‖WX − ŴX‖


@pytest.mark.parametrize("group", [32, 128])
def test_gptq_beats_rtn_on_correlated_inputs(group):
    w, x = correlated_layer()
    rtn = output_error(w, quantize_rtn(w, 4, group).dequantize(), x)
    gptq = output_error(w, quantize_gptq(w, hessian(x), 4, group).dequantize(), x)
    assert gptq < 0.5 * rtn, (gptq, rtn)


def test_gptq_int8_is_no_worse_than_rtn():
    w, x = correlated_layer(6)
    rtn = output_error(w, quantize_int8(w).dequantize(), x)
    gptq = output_error(w, quantize_gptq(w, hessian(x), 8, None).dequantize(), x)
    assert gptq < rtn, (gptq, rtn)


@pytest.mark.parametrize("bits,group", [(8, None), (4, 32)])
def test_gptq_with_uncorrelated_inputs_is_rtn(bits, group):
    """H = c·I: the inverse Hessian has no off-diagonal terms, so no error is passed on and GPTQ
    rounds exactly as round-to-nearest does."""
    w, _ = correlated_layer(7)
    q = quantize_gptq(w, 3.0 * torch.eye(w.shape[1], dtype=torch.float64), bits, group)
    r = quantize_rtn(w, bits, group)
    assert torch.equal(q.qweight, r.qweight) and torch.equal(q.scales, r.scales)


# ---- quantized runs ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("quantize") / "run"
    train(tiny_config(*TINY_Q), d, progress=False)
    return d


@pytest.fixture(scope="module")
def int4_run(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("quantized") / "run-int4"
    quantize_run(run_dir, out, 4, 32, "gptq", calibration=6, seed=1, say=lambda m: None)
    return out


def test_quantize_command_writes_a_run_that_samples(run_dir, tmp_path, capsys):
    out = tmp_path / "run-int8"
    assert main(["quantize", "--run", str(run_dir), "--bits", "8", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "weights file" in printed and "× smaller" in printed and "validation loss" in printed and "perplexity ×" in printed
    state = json.loads((out / ckpt.STATE).read_text())
    recipe = state["quantization"]
    assert recipe["bits"] == 8 and recipe["method"] == "rtn" and recipe["group_size"] is None
    assert recipe["source"]["weights_sha256"] == ckpt.sha256_bytes((run_dir / ckpt.WEIGHTS).read_bytes())
    assert "lm_head (tied to the token embedding)" in recipe["kept_float32"]
    assert recipe["weight_bytes"]["after"] < recipe["weight_bytes"]["before"]
    assert main(["sample", "--run", str(out), "--prompt", "To", "--max-new-tokens", "5", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("To")


def test_loaded_quantized_run_computes_what_was_quantized(run_dir, int4_run):
    recipe = json.loads((int4_run / ckpt.STATE).read_text())["quantization"]
    assert (recipe["bits"], recipe["group_size"], recipe["method"]) == (4, 32, "gptq")
    assert recipe["calibration"]["sequences"] == 6 and recipe["calibration"]["seed"] == 1
    model, tokenizer, _ = load_run(int4_run, "cpu")
    layers = [m for m in model.modules() if isinstance(m, QuantizedLinear)]
    assert len(layers) == 8 and all(m.bits == 4 and m.group_size == 32 for m in layers)
    assert model.lm_head.weight is model.token_embedding.weight and model.lm_head.weight.dtype == torch.float32
    # the same weights, quantized again in memory with the same recipe, give the same logits
    float_model, config, _ = load_model(run_dir, "cpu")
    from groundup.quantize.run import calibration_batches
    from groundup.train.trainer import load_data

    data = load_data(config)
    calibration = calibration_batches(data.train, config.model.block_size, 6, 1, config.train.batch_size)
    quantize_model(float_model, 4, 32, "gptq", calibration)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    torch.testing.assert_close(model(ids)[0], float_model(ids)[0], rtol=0, atol=0)
    assert weight_bytes(model) == recipe["weight_bytes"]["after"]
    tokens = list(generate(model, [1, 2], SamplingSettings(8, 0.0)))
    assert len(tokens) == 8


def test_server_inspector_reads_a_quantized_run(int4_run):
    from groundup.serve.inspect import Inspector

    model, tokenizer, _ = load_run(int4_run, "cpu")
    attention, logits = Inspector(model, tokenizer).attention_and_logits([1, 2, 3])
    torch.testing.assert_close(logits, model(torch.tensor([[1, 2, 3]]))[0][0], rtol=1e-5, atol=1e-5)
    assert attention.shape[:2] == (2, 2)


def test_training_a_quantized_run_is_refused(int4_run):
    with pytest.raises(CheckpointError, match="quantized run"):
        train(ckpt.read_run_config(int4_run), int4_run, resume=True, progress=False)


@pytest.mark.parametrize("args,message", [
    (["--bits", "3"], "--bits must be 8 or 4"),
    (["--bits", "4", "--group-size", "128"], "does not divide the input width 64"),
    (["--bits", "4", "--group-size", "48"], "--group-size must be one of 32, 64, 128"),
    (["--bits", "8", "--group-size", "32"], "applies to --bits 4 only"),
    (["--bits", "4", "--method", "awq"], "--method must be one of rtn, gptq"),
    (["--bits", "4", "--method", "gptq", "--calibration", "0"], "--calibration must be between 1"),
])
def test_bad_arguments_exit_2_with_one_line(run_dir, tmp_path, capsys, args, message):
    out = tmp_path / "never"
    assert main(["quantize", "--run", str(run_dir), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_missing_run_existing_out_and_quantized_source(run_dir, int4_run, tmp_path, capsys):
    assert main(["quantize", "--run", str(tmp_path / "nope"), "--bits", "8", "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["quantize", "--run", str(run_dir), "--bits", "8", "--out", str(int4_run)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["quantize", "--run", str(int4_run), "--bits", "8", "--out", str(tmp_path / "o")]) == 2
    assert "already quantized" in capsys.readouterr().err


def rewrite_weights(run: str, change) -> None:
    """Edit a quantized run's weights and re-sign its state.json, so the loader (not the checksum)
    must notice what is wrong."""
    path = run / ckpt.WEIGHTS
    tensors = change(load_file(path))
    path.unlink()  # (a hard link to the checkpoint's copy: write a new file)
    save_file(tensors, path)
    state_path = run / ckpt.STATE
    state = json.loads(state_path.read_text())
    state["files"][ckpt.WEIGHTS] = ckpt.sha256_bytes(path.read_bytes())
    state["state_sha256"] = ckpt.state_checksum(state)
    state_path.unlink()
    state_path.write_text(json.dumps(state))


def quantized_copy(int4_run, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(int4_run, out)
    shutil.rmtree(out / ckpt.CHECKPOINTS)  # the top-level files are the run's only checkpoint
    return out


@pytest.mark.parametrize("change,message", [
    (lambda t: {k: v for k, v in t.items() if k != "blocks.0.ffn.up.scales"}, "'blocks.0.ffn.up.scales' is missing"),
    (lambda t: {**t, "blocks.1.attention.qkv.qweight": t["blocks.1.attention.qkv.qweight"][:, :-1].contiguous()},
     "'blocks.1.attention.qkv.qweight' is torch.uint8 (192, 31)"),
    (lambda t: {**t, "blocks.0.ffn.down.scales": -t["blocks.0.ffn.down.scales"]}, "scale ≤ 0"),
    (lambda t: {**t, "blocks.0.ffn.down.zeros": t["blocks.0.ffn.down.zeros"] + 16}, "zero point above 15"),
    (lambda t: {**t, "blocks.0.ffn.down.weight": torch.zeros(64, 256)}, "unexpected tensor 'blocks.0.ffn.down.weight'"),
])
def test_corrupt_or_mismatched_quantized_weights(int4_run, tmp_path, capsys, change, message):
    run = quantized_copy(int4_run, tmp_path)
    rewrite_weights(run, change)
    with pytest.raises(CheckpointError, match="the quantized weights do not match|corrupt|holds"):
        load_run(run, "cpu")
    assert main(["sample", "--run", str(run), "--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_truncated_file_and_bad_recipe(int4_run, tmp_path, capsys):
    run = quantized_copy(int4_run, tmp_path)
    path = run / ckpt.WEIGHTS
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data[: len(data) // 2])
    assert main(["sample", "--run", str(run), "--max-new-tokens", "2"]) == 2
    assert "corrupt or truncated" in capsys.readouterr().err
    run = quantized_copy(int4_run, tmp_path / "b")
    state_path = run / ckpt.STATE
    state = json.loads(state_path.read_text())
    state["quantization"]["bits"] = 3
    state["state_sha256"] = ckpt.state_checksum(state)
    state_path.unlink()
    state_path.write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match="unsupported quantization recipe bits=3"):
        load_model(run, "cpu")


def test_quantize_model_validates_and_keeps_head_float32():
    model = GPT(tiny_config(*TINY_Q).model.__class__(**{**tiny_config(*TINY_Q).model.__dict__, "vocab_size": 50}))
    with pytest.raises(ConfigError, match="calibration"):
        quantize_model(model, 4, 32, "gptq", [])
    with pytest.raises(GroundupError, match="--bits"):
        quantize_model(model, 2)
    head = model.lm_head.weight.clone()
    quantize_model(model, 4, 64)
    assert torch.equal(model.lm_head.weight, head) and model.quantization == {"bits": 4, "group_size": 64, "method": "rtn", "head": False}


def test_quantize_head_writes_and_loads_a_quantized_copy_of_the_head(run_dir, tmp_path, capsys):
    out = tmp_path / "run-int4-head"
    assert main(["quantize", "--run", str(run_dir), "--bits", "4", "--group-size", "32", "--method", "gptq",
                 "--calibration", "4", "--quantize-head", "--out", str(out)]) == 0
    assert "LM head quantized" in capsys.readouterr().out
    recipe = json.loads((out / ckpt.STATE).read_text())["quantization"]
    assert recipe["head"] is True and "lm_head (tied to the token embedding)" not in recipe["kept_float32"]
    model, _, _ = load_run(out, "cpu")
    assert isinstance(model.lm_head, QuantizedLinear) and model.token_embedding.weight.dtype == torch.float32
    float_model, _, _ = load_model(run_dir, "cpu")
    assert torch.equal(model.token_embedding.weight, float_model.token_embedding.weight)  # lookups stay exact
    assert set(load_file(out / ckpt.WEIGHTS)) >= {"lm_head.qweight", "lm_head.scales", "lm_head.zeros", "token_embedding.weight"}
    assert main(["sample", "--run", str(out), "--prompt", "To", "--max-new-tokens", "5", "--temperature", "0"]) == 0
    from groundup.serve.inspect import Inspector

    _, logits = Inspector(model, load_run(out, "cpu")[1]).attention_and_logits([1, 2, 3])
    torch.testing.assert_close(logits, model(torch.tensor([[1, 2, 3]]))[0][0], rtol=1e-5, atol=1e-5)


def test_serve_answers_from_a_quantized_run(int4_run):
    """`groundup serve` on a quantized run: three requests decoded together (one batched forward per
    step through the QuantizedLinears) give the tokens each gives alone."""
    try:
        import httpx
    except ImportError:  # (as tests/test_serve.py)
        import httpx2 as httpx

    from concurrent.futures import ThreadPoolExecutor

    from groundup.sample import prompt_ids
    from groundup.serve import ServerThread, build_app

    app = build_app(int4_run, device="cpu", max_batch=4)
    model, tokenizer, _ = load_run(int4_run, "cpu")
    prompts = ["To be", "O", "What "]
    with ServerThread(app) as url:
        with httpx.Client(base_url=url, timeout=60) as client:
            def ask(p):
                body = {"model": int4_run.name, "prompt": p, "max_tokens": 6, "temperature": 0}
                return client.post("/v1/completions", json=body).json()["choices"][0]["text"]

            with ThreadPoolExecutor(len(prompts)) as pool:  # at once: decoded in one batch
                texts = list(pool.map(ask, prompts))
    for p, text in zip(prompts, texts):
        alone = list(generate(model, prompt_ids(tokenizer, p), SamplingSettings(6, 0.0)))
        assert text == tokenizer.decode(alone)


def test_gptq_on_a_model_with_the_fused_kernels_equals_gptq_on_the_plain_model():
    """A model from a training engine has groundup's fused CPU kernels swapped in; its fused attention and
    feed-forward read the qkv / up weights past nn.Linear's forward, where GPTQ's input hooks sit.
    quantize_model re-classes them as plain modules first (without_kernels), so the Hessians are the same."""
    torch.manual_seed(0)
    config = load_config(None, ["vocab_size=50", "n_layer=1", "n_embd=128", "n_head=4", "block_size=64"]).model
    plain = GPT(config).eval()
    fused = use_kernels(GPT(config).eval())
    fused.load_weights(plain.weights())
    x = torch.randint(0, 50, (4, 64), generator=torch.Generator().manual_seed(3))
    quantize_model(plain, 4, 32, "gptq", [x])
    quantize_model(fused, 4, 32, "gptq", [x])
    for (name, a), (_, b) in zip(plain.named_buffers(), fused.named_buffers()):
        assert torch.equal(a, b), name
    with torch.no_grad():
        torch.testing.assert_close(fused(x)[0], plain(x)[0])
