"""The NumPy engine's mixture of experts and SwiGLU, checked against references no one here wrote:
finite differences (every new backward, float64), HF transformers' Mixtral balance loss, and the
PyTorch engine under torch.autograd (same weights: logits, CE, aux losses and every gradient, float64
and float32; a few training steps through the shared train_step)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from groundup.config import ModelConfig
from groundup.engines.numpy import GPT, Parameter
from groundup.engines.numpy.layers import GELU, FeedForward, Linear, ReLU, SiLU, SwiGLUFeedForward
from groundup.engines.numpy.model import parameter_shapes
from groundup.engines.numpy.moe import BalanceLoss, Router, RouterZLoss, SparseFeedForward, TopKGating
from groundup.engines.numpy.training import build, decay_mask
from groundup.model import GPT as TorchGPT
from groundup.model.gpt import decays
from groundup.train.engine import NumpyEngine
from groundup.train.trainer import train
from groundup.util.metrics import read_metrics

from helpers import tiny_config
from test_engine_numpy import check_layer, numerical_gradient, param, relative_error, same_weights, torch_config
from test_engine_numpy_train import logged_losses


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def assert_matches_finite_differences(loss, analytic: dict[str, np.ndarray], arrays: dict[str, np.ndarray]) -> None:
    """Each analytic gradient against central differences of loss() over its array (float64, h = 1e-5),
    per tensor ‖analytic − numerical‖ / max(‖·‖) ≤ 1e-6, as tests/test_engine_numpy.py does."""
    for name, array in arrays.items():
        assert np.linalg.norm(analytic[name]) > 0, f"{name} got no gradient"
        error = relative_error(analytic[name], numerical_gradient(loss, array))
        assert error <= 1e-6, (name, error)


def top_k_gap(probs: np.ndarray, k: int) -> float:
    """The smallest margin between a token's k-th and (k+1)-th probability: a finite-difference step
    far below it cannot change which experts are chosen."""
    ordered = -np.sort(-probs, axis=-1)
    return float(np.min(ordered[:, k - 1] - ordered[:, k])) if k < probs.shape[1] else np.inf


# ---- SwiGLU ------------------------------------------------------------------------------------------
def test_silu_gradient_and_value(rng):
    x = rng.standard_normal((3, 4, 5)) * 3
    check_layer(SiLU(), x, [])
    expected = F.silu(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(SiLU().forward(x), expected, rtol=1e-14, atol=1e-15)
    assert np.all(np.isfinite(SiLU().forward(np.array([-1e4, 1e4], np.float32))))  # σ via tanh: no overflow


@pytest.mark.parametrize("bias", [True, False])
def test_swiglu_feed_forward_gradients(rng, bias):
    C, H = 5, 7
    Wg, Wu, Wd = param(rng, H, C), param(rng, H, C), param(rng, C, H)
    bg, bu, bd = (param(rng, H), param(rng, H), param(rng, C)) if bias else (None, None, None)
    ffn = SwiGLUFeedForward(Linear(Wg, bg), Linear(Wu, bu), Linear(Wd, bd))
    check_layer(ffn, rng.standard_normal((2, 3, C)), [p for p in (Wg, bg, Wu, bu, Wd, bd) if p is not None])


# ---- router: gating, balance loss, z-loss ---------------------------------------------------------------
class GatesOf:
    """TopKGating seen as a layer logits → gates (for check_layer's L = Σ gates ⊙ R)."""

    def __init__(self, gating: TopKGating):
        self.gating = gating

    def forward(self, logits):
        return self.gating.forward(logits)[0]

    def backward(self, dgates):
        return self.gating.backward(dgates)


@pytest.mark.parametrize("normalize", [True, False], ids=["renormalised", "raw-probabilities"])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_top_k_gating_gradient(rng, normalize, k):
    logits = rng.standard_normal((9, 5)) * 2
    gating = TopKGating(k, normalize)
    gates, experts = gating.forward(logits)
    assert top_k_gap(gating.probs, k) > 1e-3  # no near-tie: a step of 1e-5 keeps the same experts
    assert np.all(gates[:, :-1] >= gates[:, 1:])  # largest first, as torch.topk
    if normalize:
        np.testing.assert_allclose(gates.sum(axis=-1), 1.0, rtol=1e-14)
    else:
        np.testing.assert_array_equal(gates, np.take_along_axis(gating.probs, experts, -1))
    if k == 1 and normalize:  # one gate renormalised is always 1: no gradient reaches the router through it
        gating.forward(logits)
        assert np.abs(gating.backward(rng.standard_normal((9, 1)))).max() < 1e-15
        return
    check_layer(GatesOf(gating), logits, [])


def test_balance_loss_gradient_and_that_f_carries_none(rng):
    probs = rng.dirichlet(np.ones(4), size=10)  # (N, E) rows on the simplex
    experts = np.argsort(-probs, axis=-1)[:, :2]
    loss = BalanceLoss(0.3, 4)
    value = loss.forward(probs, experts)
    f = np.bincount(experts.ravel(), minlength=4) / 10
    assert value == pytest.approx(0.3 * 4 * np.sum(f * probs.mean(axis=0)), rel=1e-14)
    assert f.sum() == pytest.approx(2.0)  # Σ f = k
    dprobs = loss.backward(0.7)
    # experts held fixed (f is a count of them): the finite difference sees only P's gradient
    assert_matches_finite_differences(lambda: 0.7 * loss.forward(probs, experts), {"probs": dprobs}, {"probs": probs})


def test_balance_loss_is_hf_mixtrals_load_balancing_loss(rng):
    mixtral = pytest.importorskip("transformers.models.mixtral.modeling_mixtral")
    logits = rng.standard_normal((24, 8)) * 1.5
    for k in (1, 2, 4):
        gating = TopKGating(k, normalize=True)
        _, experts = gating.forward(logits)
        ours = BalanceLoss(0.01, 8).forward(gating.probs, experts)
        theirs = mixtral.load_balancing_loss_func((torch.from_numpy(logits),), num_experts=8, top_k=k).item()
        assert ours == pytest.approx(0.01 * theirs, rel=1e-6)  # theirs counts and averages in float32


def test_router_z_loss_gradient(rng):
    logits = rng.standard_normal((7, 5)) * 3
    z = RouterZLoss(0.25)
    value = z.forward(logits)
    lse = np.log(np.sum(np.exp(logits), axis=-1))
    assert value == pytest.approx(0.25 * np.mean(lse ** 2), rel=1e-13)
    assert_matches_finite_differences(lambda: 1.3 * z.forward(logits), {"logits": z.backward(1.3)}, {"logits": logits})


@pytest.mark.parametrize("normalize", [True, False], ids=["renormalised", "raw-probabilities"])
def test_router_gradient_with_both_auxiliary_losses(rng, normalize):
    N, C, E, k = 10, 6, 4, 2
    W = param(rng, E, C)
    x = rng.standard_normal((N, C))
    router = Router(W, k, normalize, balance_loss=0.5, z_loss=0.2)
    gates, _ = router.forward(x)
    assert top_k_gap(router.probs, k) > 1e-3
    R, daux = rng.standard_normal(gates.shape), 0.8

    def loss():
        g, _ = router.forward(x)
        return float(np.sum(g * R)) + daux * router.aux_loss

    loss()
    W.grad[...] = 0
    dx = router.backward(R.copy(), daux)
    assert router.balance_loss > 0 and router.z_loss > 0
    assert_matches_finite_differences(loss, {"x": dx, "W": W.grad.copy()}, {"x": x, "W": W.data})


# ---- the sparse layer ------------------------------------------------------------------------------------
def experts_of(rng, activation: str, bias: bool, E: int, C: int, H: int):
    """E expert FFNs on slices of stacked (E, H, C) / (E, C, H) weights, as the model builds them;
    returns (experts, the stacked Parameters)."""
    stacked = {"up.weight": param(rng, E, H, C), "down.weight": param(rng, E, C, H)}
    if activation == "swiglu":
        stacked["gate.weight"] = param(rng, E, H, C)
    if bias:
        stacked.update({name.replace("weight", "bias"): param(rng, *p.shape[:2]) for name, p in list(stacked.items())})

    def linear(name, e):
        w, b = stacked[f"{name}.weight"], stacked.get(f"{name}.bias")
        return Linear(Parameter(w.data[e], w.grad[e]), None if b is None else Parameter(b.data[e], b.grad[e]))

    if activation == "swiglu":
        experts = [SwiGLUFeedForward(linear("gate", e), linear("up", e), linear("down", e)) for e in range(E)]
    else:
        experts = [FeedForward(linear("up", e), {"relu": ReLU, "gelu": GELU}[activation](), linear("down", e)) for e in range(E)]
    return experts, stacked


def check_sparse_layer(layer: SparseFeedForward, x: np.ndarray, params: dict[str, Parameter], seed: int = 0,
                       daux: float = 0.7) -> None:
    """L = Σ y ⊙ R + daux · aux against finite differences, for x and every parameter."""
    R = np.random.default_rng(seed).standard_normal(x.shape)
    layer.daux = daux

    def loss():
        return float(np.sum(layer.forward(x) * R)) + daux * layer.aux_loss

    loss()
    for p in params.values():
        p.grad[...] = 0
    dx = layer.backward(R.copy())
    analytic = {"x": dx, **{name: p.grad.copy() for name, p in params.items()}}
    assert_matches_finite_differences(loss, analytic, {"x": x, **{name: p.data for name, p in params.items()}})


@pytest.mark.parametrize("activation, bias", [("relu", True), ("gelu", False), ("swiglu", True), ("swiglu", False)])
@pytest.mark.parametrize("normalize", [True, False], ids=["renormalised", "raw-probabilities"])
def test_sparse_layer_gradients_dropless(rng, activation, bias, normalize):
    B, T, C, H, E, k = 2, 5, 6, 4, 4, 2
    experts, stacked = experts_of(rng, activation, bias, E, C, H)
    router_weight = param(rng, E, C)
    layer = SparseFeedForward(Router(router_weight, k, normalize, balance_loss=0.3, z_loss=0.1), experts)
    x = rng.standard_normal((B, T, C))
    layer.forward(x)
    assert top_k_gap(layer.router.probs, k) > 1e-3
    assert layer.dropped == 0 and layer.tokens_per_expert.sum() == k * B * T
    check_sparse_layer(layer, x, {"router": router_weight, **stacked})


@pytest.mark.parametrize("normalize", [True, False], ids=["renormalised", "raw-probabilities"])
def test_sparse_layer_gradients_with_capacity_drops(rng, normalize):
    B, T, C, H, E, k = 2, 6, 6, 4, 4, 2
    experts, stacked = experts_of(rng, "gelu", True, E, C, H)
    router_weight = param(rng, E, C, scale=1.5)  # a confident, unbalanced router: some experts overflow
    layer = SparseFeedForward(Router(router_weight, k, normalize, balance_loss=0.3, z_loss=0.1), experts,
                              capacity_factor=0.75)
    x = rng.standard_normal((B, T, C))
    layer.forward(x)
    assert top_k_gap(layer.router.probs, k) > 1e-3
    assert layer.dropped > 0, "the test needs drops"
    check_sparse_layer(layer, x, {"router": router_weight, **stacked})


def test_an_expert_that_gets_no_tokens_runs_on_zero_rows_and_gets_a_zero_gradient(rng):
    """W_router = I and x[:, 2] = −5: expert 2 is nobody's top-2 choice. The layer still checks against
    finite differences, and expert 2's slices of the stacked weights get exactly 0 (not a missing
    gradient: the PyTorch engine's DDP/FSDP relies on every expert having one)."""
    experts, stacked = experts_of(rng, "swiglu", True, 3, 3, 4)
    router_weight = Parameter(np.eye(3))
    layer = SparseFeedForward(Router(router_weight, 2, normalize=True, balance_loss=0.2), experts)
    x = rng.standard_normal((2, 4, 3))
    x[..., 2] = -5.0
    layer.forward(x)
    assert layer.tokens_per_expert.tolist() == [8, 8, 0]
    check_sparse_layer(layer, x, {"router": router_weight, **stacked})
    for name, p in stacked.items():
        assert not np.any(p.grad[2]), name
        assert np.all(np.any(p.grad[:2].reshape(2, -1) != 0, axis=1)), name


def test_capacity_keeps_first_choices_first_then_earlier_tokens():
    """A hand-made routing: E = 3, k = 2, N = 4, capacity ⌈0.75 · 2 · 4 / 3⌉ = 2.
    Choices (largest first): t0 → (1, 0), t1 → (0, 2), t2 → (0, 1), t3 → (2, 0).
    Expert 0 is asked for t1, t2 (first choices) and t0, t3 (second): it keeps the first choices
    t1, t2 and drops both second choices — though t0 comes before them in token order (a token-first
    ranking would keep t0, t1 and drop t2's first choice). Experts 1 and 2 get two each: all kept."""
    x = np.array([[2.0, 3.0, 0.0], [3.0, 0.0, 2.0], [3.0, 2.0, 0.0], [2.0, 0.0, 3.0]])
    C = E = 3  # with W_router = I the router's logits are x itself
    rng = np.random.default_rng(0)
    experts, _ = experts_of(rng, "relu", True, E, C, 5)
    layer = SparseFeedForward(Router(Parameter(np.eye(3)), 2, normalize=True), experts, capacity_factor=0.75)
    y = layer.forward(x[None])[0]
    assert layer.expert_indices.tolist() == [[1, 0], [0, 2], [0, 1], [2, 0]]
    assert layer.tokens_per_expert.tolist() == [4, 2, 2] and layer.dropped == 2
    gates = layer.gates
    kept = {(0, 0): 1, (1, 0): 0, (1, 1): 2, (2, 0): 0, (2, 1): 1, (3, 0): 2}  # (token, choice) → expert, computed
    expected = np.zeros((4, C))
    for (t, j), e in kept.items():
        expected[t] += gates[t, j] * experts[e].forward(x[t:t + 1])[0]
    np.testing.assert_allclose(y, expected, rtol=1e-14, atol=1e-15)
    # and dropless computes every assignment
    layer.capacity_factor = None
    layer.forward(x[None])
    assert layer.dropped == 0


# ---- the whole model: names, finite differences, torch.autograd ------------------------------------------
MOE = dict(n_experts=4, experts_per_token=2, expert_hidden=16)
MODEL_VARIANTS = {
    "dense-swiglu": dict(activation="swiglu"),
    "moe-swiglu-renormalised": dict(MOE, activation="swiglu", balance_loss=0.05, router_z_loss=0.01),
    "moe-gelu-raw-gates-capacity-every-other": dict(MOE, normalize_gates=False, dropless=False, capacity_factor=0.75,
                                                   moe_every=2, balance_loss=0.05, router_z_loss=0.01),
    "moe-relu-top1-no-bias-untied-capacity": dict(MOE, activation="relu", experts_per_token=1, bias=False,
                                                  tie_embeddings=False, positional="learned", dropless=False,
                                                  capacity_factor=1.0, balance_loss=0.1),
    "moe-top3-swiglu-no-aux": dict(MOE, activation="swiglu", experts_per_token=3, balance_loss=0.0, bias=False),
}


@pytest.mark.parametrize("variant", MODEL_VARIANTS.values(), ids=MODEL_VARIANTS)
def test_weight_names_shapes_and_decay_are_the_pytorch_engines(variant):
    config = torch_config(**variant)
    expected = {name: tuple(t.shape) for name, t in TorchGPT(config).weights().items()}
    assert list(parameter_shapes(config).items()) == list(expected.items())
    model = GPT(config)
    assert model.num_params() == TorchGPT(config).num_params()
    mask = model.by_name(decay_mask(model, 0.1))
    for name, shape in model.shapes.items():  # biases (E, H) are 2-D but never decay; expert matrices (E, H, C) do
        assert np.all(mask[name] == (0.1 if decays(name, len(shape)) else 0.0)), name
    if config.n_experts:  # block 1 is sparse in every variant
        assert np.all(mask["blocks.1.ffn.up.weight"] == 0.1)  # (E, H, C): decays
        if config.bias:
            assert not np.any(mask["blocks.1.ffn.down.bias"])  # (E, C): does not


def tiny_moe_model(seed: int = 0, **kw) -> GPT:
    config = ModelConfig(vocab_size=11, block_size=6, n_layer=2, n_head=2, n_embd=8, **kw)
    model = GPT(config, np.float64)
    model.flat.data[...] = np.random.default_rng(seed).standard_normal(model.flat.data.size) * 0.3
    return model


@pytest.mark.parametrize("variant", MODEL_VARIANTS.values(), ids=MODEL_VARIANTS)
def test_whole_model_gradient_of_ce_plus_aux_matches_finite_differences(variant):
    model = tiny_moe_model(**{**variant, "expert_hidden": 4} if "n_experts" in variant else variant)
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 11, (2, 6)), rng.integers(0, 11, (2, 6))

    def objective():
        return model.forward(x, y)[1] + (model.aux_loss() or 0.0)

    objective()
    for moe in model.moe_layers.values():
        assert top_k_gap(moe.router.probs, model.config.experts_per_token) > 1e-4
        if not model.config.dropless:
            assert moe.dropped > 0, "the variant should drop assignments"
    if model.moe_layers and (model.config.balance_loss or model.config.router_z_loss):
        assert model.aux_loss() > 0
    model.zero_grad()
    model.backward()
    numerical = numerical_gradient(objective, model.flat.data)
    for name, analytic in model.grads().items():
        error = relative_error(analytic, model.by_name(numerical)[name])
        assert error <= 1e-6, (name, error)
        assert np.linalg.norm(analytic) > 0, name


def compare_moe_with_autograd(variant: dict, dtype, loss_tolerance: float, grad_tolerance: float) -> None:
    """Same weights, same batch: logits, CE, aux loss, routing and every gradient of CE + aux."""
    config = torch_config(**variant)
    reference, model = same_weights(config, dtype)
    x, y = torch.randint(0, 50, (3, 16)), torch.randint(0, 50, (3, 16))
    logits, _ = reference(x)
    reference_ce = F.cross_entropy(logits.view(-1, 50), y.view(-1))  # in the model's dtype
    reference_aux = reference.aux_loss()
    (reference_ce + (reference_aux if reference_aux is not None else 0)).backward()
    logits_np, ce = model.forward(x.numpy(), y.numpy())
    aux = model.aux_loss()
    model.backward()
    assert relative_error(logits_np, logits.detach().numpy()) <= loss_tolerance
    assert abs(ce - reference_ce.item()) <= loss_tolerance * abs(reference_ce.item())
    if config.n_experts:
        assert abs(aux - reference_aux.item()) <= loss_tolerance * abs(reference_aux.item()) or config.balance_loss == 0 == config.router_z_loss
        for i, moe in model.moe_layers.items():
            stats = reference.routing_stats()[i]
            np.testing.assert_array_equal(moe.expert_indices, stats.expert_indices.numpy())
            np.testing.assert_array_equal(moe.tokens_per_expert, stats.tokens_per_expert.numpy())
            assert moe.dropped == int(stats.dropped)
            assert moe.dropped > 0 or config.dropless, "a capacity variant should drop assignments"
            assert moe.router_entropy == pytest.approx(float(stats.entropy), rel=loss_tolerance)
        summary, reference_summary = model.routing_summary(), reference.routing_summary()
        assert summary.keys() == reference_summary.keys()
        for key, value in summary.items():  # (the PyTorch engine divides the counts of max_load in float32)
            rel = max(loss_tolerance, 1e-7) if key == "max_load" else loss_tolerance
            assert value == pytest.approx(reference_summary[key], rel=rel, abs=1e-12), key
    else:
        assert aux is None and reference_aux is None
    reference_grads = dict(reference.named_parameters())
    for name, grad in model.grads().items():
        assert grad.dtype == dtype
        error = relative_error(grad, reference_grads[name].grad.numpy())
        assert error <= grad_tolerance, (name, error)


@pytest.mark.parametrize("variant", MODEL_VARIANTS.values(), ids=MODEL_VARIANTS)
def test_logits_losses_and_gradients_match_torch_autograd_in_float64(variant):
    compare_moe_with_autograd(variant, np.float64, loss_tolerance=1e-10, grad_tolerance=1e-10)


@pytest.mark.parametrize("variant", MODEL_VARIANTS.values(), ids=MODEL_VARIANTS)
def test_logits_losses_and_gradients_match_torch_autograd_in_float32(variant):
    compare_moe_with_autograd(variant, np.float32, loss_tolerance=1e-4, grad_tolerance=1e-4)


# ---- training through the shared step ---------------------------------------------------------------------
def test_numpy_engine_trains_on_ce_plus_aux_and_evaluates_ce_alone():
    """The engine's step objective is CE + Σ aux (what forward_backward returns and differentiates);
    its evaluation is CE alone, so MoE and dense validation losses compare."""
    config = tiny_config("engine=numpy", "dtype=float64", "n_experts=4", "expert_hidden=8", "balance_loss=0.1",
                         "router_z_loss=0.01", "vocab_size=20")
    engine = NumpyEngine(*build(config))
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 20, (2, 8)), rng.integers(0, 20, (2, 8))
    _, ce = engine.model.forward(*batch)
    aux = engine.model.aux_loss()
    assert aux > 0.05  # α·E·Σ f·P ≥ α·k = 0.2 over two sparse blocks… at least well above rounding
    assert engine.forward_backward(batch, None, 1, True) == pytest.approx(ce + aux, rel=1e-15)
    assert engine.evaluate([batch]) == pytest.approx(ce, rel=1e-15)
    # and the gradient is that of CE + aux: without the aux term it differs
    with_aux = engine.model.flat.grad.copy()
    engine.zero_grad()
    engine.model.forward(*batch)
    engine.model.backward(1.0, daux=0.0)
    assert relative_error(with_aux, engine.model.flat.grad) > 1e-3


def test_a_few_moe_training_steps_match_the_pytorch_engine_in_float64(tmp_path):
    """Both engines through groundup's trainer and the shared train_step (CE + aux, clipping, AdamW with
    the expert matrices decayed and their biases not), same init and batches: the losses and final
    weights agree as in tests/test_engine_numpy_train.py (1e-8), and so do the validation losses (CE)."""
    overrides = ["dtype=float64", "log_interval=1", "checkpoint_interval=0", "max_steps=8", "eval_interval=8",
                 "n_experts=4", "expert_hidden=16", "activation=swiglu", "dropless=false", "capacity_factor=1.0",
                 "balance_loss=0.05", "router_z_loss=0.01", "grad_clip=0.5"]
    runs = {engine: train(tiny_config(f"engine={engine}", *overrides), tmp_path / engine, progress=False)
            for engine in ("numpy", "torch")}
    losses = {engine: [loss for _, loss in logged_losses(tmp_path / engine)] for engine in runs}
    assert len(losses["numpy"]) == 8
    np.testing.assert_allclose(losses["numpy"], losses["torch"], rtol=1e-8, atol=0)
    assert runs["numpy"].val_loss == pytest.approx(runs["torch"].val_loss, rel=1e-8)
    for name, tensor in runs["torch"].model.weights().items():
        got = runs["numpy"].model.weights()[name]
        assert got.dtype == torch.float64
        assert (torch.linalg.norm(got - tensor) / torch.linalg.norm(tensor)).item() <= 1e-8, name
    # the trainer logs each engine's routing_summary: the same routing, step by step
    routing = {engine: [r for r in read_metrics(tmp_path / engine / "metrics.jsonl") if "dropped" in r] for engine in runs}
    assert len(routing["numpy"]) == 8 and any(r["dropped"] > 0 for r in routing["numpy"])
    for ours, theirs in zip(routing["numpy"], routing["torch"]):
        for key in ("aux_loss", "dropped", "router_entropy", "max_load"):
            assert ours[key] == pytest.approx(theirs[key], abs=1.5e-6), key  # (logged rounded to 6 decimals)
