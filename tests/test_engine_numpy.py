"""The NumPy engine's hand-written gradients, checked against references no one here wrote:
finite differences (every layer and the whole model, float64) and torch.autograd (same weights,
same batch, float64 and float32)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from groundup.config import ModelConfig
from groundup.engines.numpy import GPT, Parameter
from groundup.engines.numpy.layers import (
    GELU, Block, CausalSelfAttention, Embedding, FeedForward, LayerNorm, LearnedPositions, Linear, ReLU,
    RotaryPositions, SinusoidalPositions, SoftmaxCrossEntropy, scatter_add_rows, sinusoidal_table,
)
from groundup.engines.numpy.model import parameter_shapes
from groundup.errors import ConfigError
from groundup.model import GPT as TorchGPT
from groundup.model.positional import rope_tables as torch_rope_tables
from groundup.model.positional import sinusoidal_table as torch_sinusoidal_table

VARIANTS = [
    dict(), dict(positional="learned"), dict(positional="rope"), dict(norm="post"),
    dict(activation="relu", bias=False, tie_embeddings=False),
]
variant_id = lambda v: "-".join(f"{k}={x}" for k, x in v.items()) or "default"  # noqa: E731


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """‖a − b‖ / max(‖a‖, ‖b‖): one number per tensor, blind to the scale of the gradient."""
    scale = max(np.linalg.norm(a), np.linalg.norm(b))
    return float(np.linalg.norm(a - b) / scale) if scale > 0 else 0.0


def numerical_gradient(f, array: np.ndarray, h: float = 1e-5) -> np.ndarray:
    """∂f/∂array by central differences (f(a + h) − f(a − h)) / 2h, one element at a time, in place.
    In float64, h = 1e-5 balances the truncation error (∝ h²) against rounding (∝ ε/h): ~1e-10 each."""
    grad = np.zeros_like(array)
    for index in np.ndindex(array.shape):
        old = array[index]
        array[index] = old + h
        plus = f()
        array[index] = old - h
        minus = f()
        array[index] = old
        grad[index] = (plus - minus) / (2 * h)
    return grad


def param(rng, *shape, scale=0.5, offset=0.0) -> Parameter:
    return Parameter(offset + scale * rng.standard_normal(shape))


def check_layer(layer, x: np.ndarray, params: list[Parameter], seed: int = 0) -> None:
    """Compare a layer's backward with finite differences of L = Σ y ⊙ R (R random, so dy = R)."""
    rng = np.random.default_rng(seed)
    R = rng.standard_normal(layer.forward(x).shape)
    loss = lambda: float(np.sum(layer.forward(x) * R))  # noqa: E731
    for p in params:
        p.grad[...] = 0.0
    layer.forward(x)
    dx = layer.backward(R.copy())
    analytic = [p.grad.copy() for p in params]
    if x.dtype.kind == "f":
        assert dx.shape == x.shape
        assert relative_error(dx, numerical_gradient(loss, x)) <= 1e-6, "input gradient"
    for i, p in enumerate(params):
        assert np.linalg.norm(analytic[i]) > 0, f"parameter {i} got no gradient"
        assert relative_error(analytic[i], numerical_gradient(loss, p.data)) <= 1e-6, f"parameter {i}"


# ---- every layer against finite differences (float64) ---------------------------------------------
@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def test_linear_gradients(rng):
    W, b = param(rng, 5, 4), param(rng, 5)
    check_layer(Linear(W, b), rng.standard_normal((2, 3, 4)), [W, b])


def test_embedding_gradient_is_a_scatter_add(rng):
    E = param(rng, 7, 4)
    ids = rng.integers(0, 7, (3, 5))  # 15 lookups of 7 rows: repeats guaranteed
    check_layer(Embedding(E), ids, [E])


def test_scatter_add_rows_matches_numpy_add_at(rng):
    ids = rng.integers(0, 50, 500)
    rows = rng.standard_normal((500, 8))
    expected, got = np.zeros((50, 8)), np.zeros((50, 8))
    np.add.at(expected, ids, rows)
    scatter_add_rows(got, ids, rows)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_positional_encodings_gradients(rng):
    P = param(rng, 8, 4)
    check_layer(LearnedPositions(P), rng.standard_normal((2, 6, 4)), [P])
    check_layer(SinusoidalPositions(8, 4, np.float64), rng.standard_normal((2, 6, 4)), [])
    check_layer(RotaryPositions(8, 6, np.float64), rng.standard_normal((2, 3, 8, 6)), [])


def test_positional_tables_equal_the_pytorch_engines():
    np.testing.assert_array_equal(sinusoidal_table(40, 16, np.float32), torch_sinusoidal_table(40, 16).numpy())
    cos, sin = RotaryPositions(40, 16, np.float32).cos, RotaryPositions(40, 16, np.float32).sin
    torch_cos, torch_sin = torch_rope_tables(40, 16)
    np.testing.assert_array_equal(cos, torch_cos.numpy())
    np.testing.assert_array_equal(sin, torch_sin.numpy())


@pytest.mark.parametrize("bias", [True, False])
def test_layer_norm_gradients(rng, bias):
    gamma, beta = param(rng, 6, offset=1.0), (param(rng, 6) if bias else None)
    check_layer(LayerNorm(gamma, beta), rng.standard_normal((2, 3, 6)), [gamma] + ([beta] if bias else []))


def test_activation_gradients(rng):
    x = rng.standard_normal((3, 4, 5)) * 2
    x[np.abs(x) < 1e-3] = 0.5  # keep ReLU's kink away from the finite-difference step
    check_layer(ReLU(), x, [])
    check_layer(GELU(), rng.standard_normal((3, 4, 5)) * 2, [])


def test_gelu_is_the_tanh_form_pytorch_uses(rng):
    x = rng.standard_normal(1000) * 3
    np.testing.assert_allclose(GELU().forward(x), F.gelu(torch.from_numpy(x), approximate="tanh").numpy(), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("rope", [False, True], ids=["no-rope", "rope"])
def test_causal_attention_gradients(rng, rope):
    C, nh, T = 8, 2, 5
    Wqkv, bqkv, Wo, bo = param(rng, 3 * C, C), param(rng, 3 * C), param(rng, C, C), param(rng, C)
    layer = CausalSelfAttention(Linear(Wqkv, bqkv), Linear(Wo, bo), nh, block_size=7,
                                rope=RotaryPositions(7, C // nh, np.float64) if rope else None)
    check_layer(layer, rng.standard_normal((2, T, C)), [Wqkv, bqkv, Wo, bo])


def test_feed_forward_and_block_gradients(rng):
    C = 6
    for pre_norm in (True, False):
        params = [param(rng, C, offset=1.0), param(rng, C), param(rng, 3 * C, C), param(rng, 3 * C), param(rng, C, C),
                  param(rng, C), param(rng, C, offset=1.0), param(rng, C), param(rng, 4 * C, C), param(rng, 4 * C),
                  param(rng, C, 4 * C), param(rng, C)]
        g1, b1, Wqkv, bqkv, Wo, bo, g2, b2, W1, c1, W2, c2 = params
        block = Block(LayerNorm(g1, b1), CausalSelfAttention(Linear(Wqkv, bqkv), Linear(Wo, bo), 2, 4),
                      LayerNorm(g2, b2), FeedForward(Linear(W1, c1), GELU(), Linear(W2, c2)), pre_norm=pre_norm)
        check_layer(block, rng.standard_normal((2, 4, C)), params)


def test_fused_softmax_cross_entropy_gradient(rng):
    logits, targets = rng.standard_normal((6, 9)) * 3, rng.integers(0, 9, 6)
    ce = SoftmaxCrossEntropy()
    loss = ce.forward(logits, targets)
    expected = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(targets)).item()
    assert loss == pytest.approx(expected, rel=1e-14)
    dlogits = ce.backward()
    numerical = numerical_gradient(lambda: ce.forward(logits, targets), logits)
    assert relative_error(dlogits, numerical) <= 1e-6


# ---- the whole model against finite differences (float64) -------------------------------------------
def tiny_numpy_model(seed: int = 0, **kw) -> GPT:
    config = ModelConfig(vocab_size=11, block_size=6, n_layer=2, n_head=2, n_embd=8, **kw)
    model = GPT(config, np.float64)
    model.flat.data[...] = np.random.default_rng(seed).standard_normal(model.flat.data.size) * 0.3
    return model


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_whole_model_gradient_matches_finite_differences(variant):
    model = tiny_numpy_model(**variant)
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 11, (2, 6)), rng.integers(0, 11, (2, 6))
    model.zero_grad()
    model.forward(x, y)
    model.backward()
    numerical = numerical_gradient(lambda: model.forward(x, y)[1], model.flat.data)
    for name, analytic in model.grads().items():
        assert np.linalg.norm(analytic) > 0, name
        assert relative_error(analytic, model.by_name(numerical)[name]) <= 1e-6, name


# ---- the whole model against torch.autograd -------------------------------------------------------------
def torch_config(**kw) -> ModelConfig:
    return ModelConfig(vocab_size=50, block_size=16, n_layer=2, n_head=4, n_embd=32, **kw)


def same_weights(config: ModelConfig, dtype) -> tuple[TorchGPT, GPT]:
    """A PyTorch-engine model with random weights (biases and gains too) and a NumPy one holding the same."""
    torch.manual_seed(0)
    reference = TorchGPT(config).to(torch.float64 if dtype == np.float64 else torch.float32)
    with torch.no_grad():
        for p in reference.parameters():
            p.copy_(torch.randn_like(p) * 0.2 + (p == 1).to(p.dtype))  # norm gains around 1, everything else around 0
    model = GPT(config, dtype)
    model.load_weights({name: t.detach() for name, t in reference.weights().items()})
    return reference, model


def compare_with_autograd(variant: dict, dtype, loss_tolerance: float, grad_tolerance: float) -> None:
    config = torch_config(**variant)
    reference, model = same_weights(config, dtype)
    x, y = torch.randint(0, 50, (3, 16)), torch.randint(0, 50, (3, 16))
    logits, _ = reference(x)
    reference_loss = F.cross_entropy(logits.view(-1, 50), y.view(-1))  # in the model's dtype
    reference_loss.backward()
    logits_np, loss = model.forward(x.numpy(), y.numpy())
    model.backward()
    assert abs(loss - reference_loss.item()) <= loss_tolerance * abs(reference_loss.item())
    assert relative_error(logits_np, logits.detach().numpy()) <= loss_tolerance
    reference_grads = dict(reference.named_parameters())
    for name, grad in model.grads().items():
        assert grad.dtype == dtype
        error = relative_error(grad, reference_grads[name].grad.numpy())
        assert error <= grad_tolerance, (name, error)


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_loss_and_every_gradient_match_torch_autograd_in_float64(variant):
    compare_with_autograd(variant, np.float64, loss_tolerance=1e-10, grad_tolerance=1e-8)


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_loss_and_every_gradient_match_torch_autograd_in_float32(variant):
    compare_with_autograd(variant, np.float32, loss_tolerance=1e-4, grad_tolerance=1e-4)


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_weight_names_and_shapes_are_the_pytorch_engines(variant):
    config = torch_config(**variant)
    expected = {name: tuple(t.shape) for name, t in TorchGPT(config).weights().items()}
    assert list(parameter_shapes(config).items()) == list(expected.items())
    assert GPT(config).num_params() == TorchGPT(config).num_params()


def test_tied_embedding_gradient_is_lookup_plus_lm_head():
    """With tying, ∂L/∂E = (scatter-add from the lookup) + (the LM head's dlogitsᵀ x): check both parts
    against the untied model, whose two matrices get one part each."""
    tied = tiny_numpy_model(positional="learned")
    untied = GPT(dataclasses.replace(tied.config, tie_embeddings=False), np.float64)
    untied.load_weights({**tied.weights(), "lm_head.weight": tied.weights()["token_embedding.weight"]})
    rng = np.random.default_rng(2)
    x, y = rng.integers(0, 11, (2, 6)), rng.integers(0, 11, (2, 6))
    for model in (tied, untied):
        model.zero_grad()
        model.forward(x, y)
        model.backward()
    total = untied.grads()["token_embedding.weight"] + untied.grads()["lm_head.weight"]
    np.testing.assert_allclose(tied.grads()["token_embedding.weight"], total, rtol=1e-12, atol=1e-15)


def test_dropout_is_refused_with_a_clear_error():
    with pytest.raises(ConfigError, match="numpy engine does not implement dropout"):
        GPT(torch_config(dropout=0.1))
