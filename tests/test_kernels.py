"""The fused CPU kernels (groundup.kernels) against their plain-PyTorch twins: values and gradients,
odd shapes, extreme inputs, thread-count independence, and the fallback when they are off."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from groundup import kernels

from conftest import REPO

pytestmark = pytest.mark.skipif(not kernels.enabled(), reason=f"CPU kernels unavailable: {kernels.unavailable_reason()}")


@pytest.fixture(autouse=True)
def kernels_for_every_size(monkeypatch):
    """The tests use small shapes; the kernels must be exact at any size, so let every size use them."""
    monkeypatch.setattr(kernels, "MIN_ELEMENTS", 0)


def test_tiny_tensors_take_the_pytorch_op(monkeypatch):
    monkeypatch.setattr(kernels, "MIN_ELEMENTS", 1 << 14)
    x = torch.randn(1, 1, 128, requires_grad=True)  # one token's activations while generating
    assert kernels.gelu(x).grad_fn.name() == "GeluBackward0"
    assert kernels.layer_norm(x, torch.ones(128), None, 1e-5).grad_fn.name() == "NativeLayerNormBackward0"
    assert not kernels.attention_applies(32, x)
    assert kernels.linear(x, torch.randn(384, 128, requires_grad=True)).grad_fn.name() != "_LinearBackward"
    big = torch.randn(12, 64, 128, requires_grad=True)
    assert kernels.gelu(big).grad_fn.name() == "_GeluBackward"
    assert kernels.linear(big, torch.randn(384, 128)).grad_fn.name() == "_LinearBackward"


def grads(fn, *inputs, seed=0):
    """Output and the gradient of every input, for a random upstream gradient."""
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*inputs)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    return out.detach(), torch.autograd.grad(out, inputs, upstream)


def test_gelu_matches_torch_tanh_gelu():
    x = torch.randn(3, 17, 129) * 3  # not a multiple of the vector width
    out, (dx,) = grads(kernels.gelu, x)
    ref, (ref_dx,) = grads(lambda t: F.gelu(t, approximate="tanh"), x)
    assert kernels._usable(x)  # the kernel, not the fallback, produced `out`
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(dx, ref_dx, rtol=1e-5, atol=5e-6)


def test_gelu_with_bias_matches_torch_and_gives_the_bias_gradient():
    x, b = torch.randn(5, 70, 48) * 2, torch.randn(48)
    out, (dx, db) = grads(kernels.gelu, x, b)
    ref, (ref_dx, ref_db) = grads(lambda x, b: F.gelu(x + b, approximate="tanh"), x, b)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(dx, ref_dx, rtol=1e-5, atol=5e-6)
    torch.testing.assert_close(db, ref_db, rtol=1e-5, atol=1e-4)  # a sum over 350 rows


def test_gelu_extreme_inputs():
    x = torch.tensor([-1e30, -1e4, -100.0, -10.0, -1e-30, 0.0, 1e-30, 10.0, 100.0, 1e4, 1e30])
    torch.testing.assert_close(kernels.gelu(x), F.gelu(x, approximate="tanh"), rtol=1e-6, atol=1e-6)
    x = x[1:-1]  # (at ±1e30, x³ overflows: torch's own gradient is nan there)
    _, (dx,) = grads(kernels.gelu, x)
    _, (ref_dx,) = grads(lambda t: F.gelu(t, approximate="tanh"), x)
    assert torch.isfinite(dx).all()
    torch.testing.assert_close(dx, ref_dx, rtol=1e-5, atol=5e-6)


def sdpa_from_qkv(qkv):
    B, T, _, H, d = qkv.shape
    q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
    return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, H * d)


@pytest.mark.parametrize("B,T,H,d", [(2, 64, 4, 32), (3, 37, 2, 16), (1, 1, 1, 16), (2, 130, 3, 64)])
def test_attention_matches_sdpa(B, T, H, d):
    qkv = torch.randn(B, T, 3, H, d) * 2
    out, (g,) = grads(kernels.causal_attention, qkv)
    ref, (ref_g,) = grads(sdpa_from_qkv, qkv)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g, ref_g, rtol=1e-4, atol=1e-5)


def test_attention_with_bias_matches_sdpa_of_biased_projection():
    qkv, bias = torch.randn(3, 40, 3, 2, 16), torch.randn(3 * 2 * 16)
    out, (g, gb) = grads(kernels.causal_attention, qkv, bias)
    ref, (ref_g, ref_gb) = grads(lambda qkv, bias: sdpa_from_qkv(qkv + bias.view(3, 2, 16)), qkv, bias)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g, ref_g, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gb, ref_gb, rtol=1e-4, atol=1e-4)


def test_attention_is_causal_and_handles_large_scores():
    qkv = torch.randn(2, 48, 3, 2, 32, generator=torch.Generator().manual_seed(1)) * 30  # scores ~1e3-1e4:
    # without subtracting each row's max, exp overflows to inf
    out = kernels.causal_attention(qkv)
    exact = sdpa_from_qkv(qkv.double())  # float32 rounding of such scores moves outputs by ~1e-3 (torch's too)
    ours_error = (out - exact).abs().max().item()
    torch_error = (sdpa_from_qkv(qkv) - exact).abs().max().item()
    assert torch.isfinite(out).all() and ours_error <= 2 * torch_error + 1e-3, (ours_error, torch_error)
    changed = qkv.clone()
    changed[:, 30:] = torch.randn_like(changed[:, 30:])  # the future must not move earlier outputs
    torch.testing.assert_close(kernels.causal_attention(changed)[:, :30], out[:, :30], rtol=0, atol=0)


def test_attention_applies_only_to_head_sizes_in_blocks_of_16():
    assert kernels.attention_applies(32, torch.randn(2)) and not kernels.attention_applies(12, torch.randn(2))
    assert not kernels.attention_applies(32, torch.randn(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="multiple of 16"):
        kernels.causal_attention(torch.randn(1, 8, 3, 2, 12))


@pytest.mark.parametrize("bias", [True, False])
def test_layer_norm_matches_torch(bias):
    x = torch.randn(5, 33, 96) * 4 + 3
    w, b = torch.randn(96), torch.randn(96)
    args = (x, w, b) if bias else (x, w)

    def ours(x, w, b=None):
        return kernels.layer_norm(x, w, b, 1e-5)

    def ref(x, w, b=None):
        return F.layer_norm(x, (96,), w, b, 1e-5)

    out, g = grads(ours, *args)
    ref_out, ref_g = grads(ref, *args)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    for a, r in zip(g, ref_g):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-4)


def test_layer_norm_matches_torch_where_eps_matters():
    """Rows whose variance (~1e-6) is below eps = 1e-5, and a constant row (variance 0): there
    1/√(var + eps) is ~3× 1/√var, so an eps that is dropped, or added in the wrong place, shows.
    (Centred inputs: a large common offset would make float32's mean, ours and torch's alike, the
    larger error.)"""
    x = torch.randn(8, 64, 128, generator=torch.Generator().manual_seed(2)) * 1e-3
    x[0, 0] = 0.25
    w, b = torch.randn(128), torch.randn(128)
    assert x.var(-1, unbiased=False).max() < 1e-5 / 5  # (the premise: every row's variance well below eps)
    out, g = grads(lambda x, w, b: kernels.layer_norm(x, w, b, 1e-5), x, w, b)
    ref, ref_g = grads(lambda x, w, b: F.layer_norm(x, (128,), w, b, 1e-5), x, w, b)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for a, r in zip(g, ref_g):  # dx (~√(1/eps) ≈ 300 × dy), dγ, dβ
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape,bias", [
    ((12, 64, 128, 384), True),   # the classic recipe's QKV projection: rows, columns, all whole tiles
    ((5, 7, 33, 76), True),       # nothing a multiple of the 8 × 32 tile: edge rows and columns
    ((3, 1, 1, 1), False),        # one input, one output
    ((2, 9, 512, 128), False),    # a long sum over k
])
def test_linear_matches_f_linear(shape, bias):
    *lead, n_in, n_out = shape
    x, w = torch.randn(*lead, n_in), torch.randn(n_out, n_in) / n_in ** 0.5
    args = (x, w, torch.randn(n_out)) if bias else (x, w)
    out, g = grads(kernels.linear, *args)
    ref, ref_g = grads(F.linear, *args)
    assert kernels.linear(*args).grad_fn is None  # (no grad needed: no graph) …
    assert kernels.linear(*(t.requires_grad_() for t in args)).grad_fn.name() == "_LinearBackward"  # … the kernel's
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for a, r in zip(g, ref_g):  # dx, dW, db
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-4)


def test_a_second_derivative_through_a_kernel_raises_rather_than_being_wrong():
    x, w = torch.randn(8, 32, requires_grad=True), torch.randn(32, 32, requires_grad=True)
    (dx,) = torch.autograd.grad(kernels.gelu(kernels.linear(x, w)).sum(), [x], create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad"):
        torch.autograd.grad(dx.sum(), [w])


def test_linear_takes_any_strides_and_only_the_gradients_asked_for():
    """A strided input and a weight stored column by column (store_for_decoding's layout)."""
    x = torch.randn(6, 40, 256)[..., ::2]
    w = torch.randn(96, 128).t().contiguous().t()
    b = torch.randn(96)
    torch.testing.assert_close(kernels.linear(x, w, b), F.linear(x, w, b), rtol=1e-5, atol=1e-5)
    w.requires_grad_()
    out = kernels.linear(x, w)  # x needs no gradient (the first layer's input, say): only dW is made
    (dw,) = torch.autograd.grad(out, [w], torch.ones_like(out))
    torch.testing.assert_close(dw, torch.ones(6 * 40, 96).t() @ x.reshape(-1, 128), rtol=1e-5, atol=1e-4)


def test_results_do_not_depend_on_thread_count():
    torch.manual_seed(0)
    qkv, qkv_bias, x, w = torch.randn(4, 64, 3, 4, 32), torch.randn(384), torch.randn(256, 128), torch.randn(128)
    results = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            _, ga = grads(kernels.causal_attention, qkv, qkv_bias)
            _, gl = grads(lambda x, w: kernels.layer_norm(x, w, None, 1e-5), x, w)
            _, gg = grads(kernels.gelu, x, w)
            out, gm = grads(kernels.linear, x[:, :100], torch.randn(96, 100, generator=torch.Generator().manual_seed(1)), w[:96])
            results.append([*ga, *gl, *gg, out, *gm])
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_fallbacks_other_dtypes_and_turned_off():
    x64 = torch.randn(4, 8, dtype=torch.float64)
    assert not kernels._usable(x64)
    torch.testing.assert_close(kernels.gelu(x64), F.gelu(x64, approximate="tanh"))
    script = ("from groundup import kernels; import torch; "
              "print(kernels.enabled(), kernels.unavailable_reason(), kernels.attention_applies(16, torch.randn(1)))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env={**os.environ, "GROUNDUP_KERNELS": "0", "PATH": ""})
    assert out.stdout.split() == ["False", "turned", "off", "by", "GROUNDUP_KERNELS=0", "False"], out.stderr


def test_adamw_matches_torch_adamw_and_keeps_its_state_format():
    from groundup.config import TrainConfig
    from groundup.train.optim import AdamW

    def run(optimizer_class, **kw):
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(*shape)) for shape in ((40, 33), (33,), (7, 5, 3))]
        groups = [{"params": params[:1], "weight_decay": 0.1}, {"params": params[1:], "weight_decay": 0.0}]
        opt = optimizer_class(groups, lr=3e-3, betas=(0.9, 0.95), eps=1e-8, **kw)
        for step in range(6):
            for p in params:
                p.grad = torch.randn_like(p)
            if step == 3:
                for g in opt.param_groups:
                    g["lr"] = 1e-3  # a schedule changes lr between steps
            opt.step()
        return params, opt

    ours, ours_opt = run(AdamW)
    ref, ref_opt = run(torch.optim.AdamW)
    assert kernels.applies([p for p in ours])  # the fused kernel, not torch's step, updated `ours`
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        sa, sb = ours_opt.state[a], ref_opt.state[b]
        assert sorted(sa) == sorted(sb) and float(sa["step"]) == float(sb["step"]) == 6
        torch.testing.assert_close(sa["exp_avg"], sb["exp_avg"], rtol=1e-5, atol=1e-6)  # float32 rounding
        torch.testing.assert_close(sa["exp_avg_sq"], sb["exp_avg_sq"], rtol=1e-5, atol=1e-6)
    # a resumed optimizer (state loaded into a fresh one) continues the same way
    resumed = AdamW(ours_opt.param_groups)
    resumed.load_state_dict(ours_opt.state_dict())
    assert float(resumed.state[ours[0]]["step"]) == 6


def test_adamw_off_the_kernels_ground_never_reads_the_step_count():
    """Where the kernel cannot take the parameters (here float64; on a GPU, CUDA tensors) the optimizer
    must decide so before it reads a step count: int() of a CUDA step tensor would sync the GPU."""
    from groundup.train.optim import AdamW

    class Unreadable:
        def __int__(self):
            raise AssertionError("step count read")

    p = torch.nn.Parameter(torch.randn(8, 8, dtype=torch.float64))
    opt = AdamW([p], lr=1e-3)
    p.grad = torch.randn_like(p)
    opt.step()
    opt.state[p]["step"] = Unreadable()
    assert opt._make_plan() is None


def test_gradient_norm_and_clipping_match_torch():
    from groundup.train.optim import clip_gradients_, gradient_norm

    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(n)) for n in (70_000, 33, 1)]
    for p in params:
        p.grad = torch.randn_like(p) * 3
    ref_grads = [p.grad.clone() for p in params]
    norm = gradient_norm(params)
    ref_norm = torch.nn.utils.get_total_norm(ref_grads)
    torch.testing.assert_close(norm, ref_norm, rtol=1e-6, atol=0)
    clip_gradients_(params, 1.0, norm)
    torch.nn.utils.clip_grads_with_norm_([torch.nn.Parameter(g.clone()) for g in ref_grads], 1.0, ref_norm)
    expected = [g * (1.0 / (ref_norm + 1e-6)) for g in ref_grads]
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.grad, e, rtol=1e-6, atol=1e-7)
    assert abs(gradient_norm(params).item() - 1.0) < 1e-5
    before = [p.grad.clone() for p in params]
    clip_gradients_(params, 5.0, gradient_norm(params))  # norm below the limit: nothing changes
    assert all(torch.equal(p.grad, b) for p, b in zip(params, before))


def test_attention_with_rope_matches_apply_rope_then_sdpa():
    from groundup.model.positional import apply_rope, rope_tables

    B, T, H, d = 2, 37, 2, 32
    cos, sin = rope_tables(64, d)
    qkv, bias = torch.randn(B, T, 3, H, d), torch.randn(3 * H * d)

    def reference(qkv, bias):
        qkv = qkv + bias.view(3, H, d)
        qk = apply_rope(qkv[:, :, :2], cos[:T, None, None, :], sin[:T, None, None, :])
        return sdpa_from_qkv(torch.cat([qk, qkv[:, :, 2:]], dim=2))

    out, (g, gb) = grads(lambda qkv, bias: kernels.causal_attention(qkv, bias, (cos[:T], sin[:T])), qkv, bias)
    ref, (ref_g, ref_gb) = grads(reference, qkv, bias)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g, ref_g, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gb, ref_gb, rtol=1e-4, atol=1e-4)


def test_without_a_c_compiler_everything_falls_back(tmp_path):
    script = ("from groundup import kernels; import torch, torch.nn.functional as F; "
              "print(kernels.enabled()); print(kernels.unavailable_reason()); "
              "x = torch.randn(64, 512); print(torch.equal(kernels.gelu(x), F.gelu(x, approximate='tanh')))")
    env = {**os.environ, "CC": str(tmp_path / "no-such-compiler"), "GROUNDUP_CACHE": str(tmp_path), "PATH": ""}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    lines = out.stdout.splitlines()
    assert lines[0] == "False" and lines[2] == "True", out.stdout + out.stderr
    assert "could not build the CPU kernels" in lines[1] and "using plain PyTorch ops" in lines[1]


def test_the_kernel_library_is_built_inside_the_test_cache():
    """conftest isolates GROUNDUP_CACHE before collection: the library this session loaded lives there."""
    built = Path(kernels.library()._name).resolve()
    assert built.is_relative_to(Path(os.environ["GROUNDUP_CACHE"]).resolve()), built


def test_collecting_the_tests_writes_nothing_outside_the_test_cache(tmp_path):
    """Collect the whole suite (module-level code such as this file's skipif builds the kernels) with
    a fresh HOME and no GROUNDUP_CACHE: the user's cache must stay empty."""
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k not in ("GROUNDUP_CACHE", "XDG_CACHE_HOME")}
    env.update(HOME=str(home), PYTHONPATH=str(REPO / "src"))
    r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", str(REPO / "tests")],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "test_the_kernel_library_is_built_inside_the_test_cache" in r.stdout
    written = [str(p) for p in home.rglob("*")] if home.exists() else []
    assert not [p for p in written if "groundup" in p], written
