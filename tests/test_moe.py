"""Mixture of experts (groundup/model/moe.py, issue #17): the sparse block against HF transformers'
Mixtral block and its balance loss, gradients against finite differences (float64 gradcheck),
capacity and drop priority on a hand-built case, fp32 routing under bf16 autocast, parameter and
FLOP counts against torch's FlopCounterMode, idle experts' gradients, training, resume, guards and
the CLI's errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from groundup import cli
from groundup.config import ModelConfig
from groundup.errors import ConfigError
from groundup.model import GPT
from groundup.model.feedforward import FeedForward, gelu
from groundup.model.moe import MixtureOfExperts, RoutingStats
from groundup.train import checkpoint as ckpt
from groundup.train.optim import configure_adamw
from groundup.train.trainer import train
from groundup.util.metrics import read_metrics

from conftest import assert_clean_error, run_cli
from helpers import events, tiny_config


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def moe_config(**kw) -> ModelConfig:
    base = dict(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16, n_experts=4, experts_per_token=2,
                expert_hidden=32)
    return ModelConfig(**{**base, **kw})


def moe_layer(seed=0, **kw) -> MixtureOfExperts:
    """A sparse block with random (not GPT-initialised) weights of a useful size."""
    torch.manual_seed(seed)
    layer = MixtureOfExperts(moe_config(**kw))
    with torch.no_grad():
        for name, p in layer.named_parameters():
            p.normal_(0.0, 0.5 if "router" in name else 0.2)
    return layer


def assert_no_near_ties(layer: MixtureOfExperts, x: torch.Tensor, margin: float):
    """The k-th and (k+1)-th router probabilities of every token differ by more than `margin`,
    so small perturbations (gradcheck's) cannot change the routing."""
    _, probs, _, _ = layer.route(x.reshape(-1, x.shape[-1]))
    top = probs.topk(min(layer.top_k + 1, layer.n_experts), dim=-1).values
    gaps = top[:, :-1] - top[:, 1:]
    assert gaps.min().item() > margin


# ---- the reference nobody here wrote: HF transformers' Mixtral ------------------------------------
def hf_mixtral_block(layer: MixtureOfExperts):
    """transformers' MixtralSparseMoeBlock (built from a MixtralConfig, nothing downloaded) holding
    `layer`'s weights: router (E, C); gate_up_proj (E, 2H, C) = [gate; up]; down_proj (E, C, H)."""
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    E, H, C = layer.up.weight.shape
    config = MixtralConfig(hidden_size=C, intermediate_size=H, num_local_experts=E, num_experts_per_tok=layer.top_k,
                           hidden_act="silu", router_jitter_noise=0.0)
    block = MixtralSparseMoeBlock(config)
    with torch.no_grad():
        block.gate.weight.copy_(layer.router.weight)
        block.experts.gate_up_proj.copy_(torch.cat([layer.gate.weight, layer.up.weight], dim=1))
        block.experts.down_proj.copy_(layer.down.weight)
    return block


@pytest.mark.parametrize("method", ["grouped", "padded"])
def test_sparse_block_equals_hf_mixtral_sparse_moe_block_and_its_balance_loss(method):
    """swiglu, no bias, top-2 of 8, renormalised gates, dropless: the output, the input and weight
    gradients equal transformers' Mixtral block within 1e-5 (fp32), and the balance loss equals its
    load_balancing_loss_func on this layer's router logits, times α."""
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    layer = moe_layer(n_experts=8, activation="swiglu", bias=False, balance_loss=0.02)
    layer.method = method
    hf = hf_mixtral_block(layer)
    x = torch.randn(3, 10, 16)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours, theirs = layer(xa), hf(xb)
    assert (ours - theirs).abs().max().item() < 1e-5
    weights = torch.randn_like(ours)
    (ours * weights).sum().backward()
    (theirs * weights).sum().backward()
    assert (xa.grad - xb.grad).abs().max().item() < 1e-5
    assert (layer.router.weight.grad - hf.gate.weight.grad).abs().max().item() < 1e-5
    gate_up = torch.cat([layer.gate.weight.grad, layer.up.weight.grad], dim=1)
    assert (gate_up - hf.experts.gate_up_proj.grad).abs().max().item() < 1e-5
    assert (layer.down.weight.grad - hf.experts.down_proj.grad).abs().max().item() < 1e-5

    logits = F.linear(x.reshape(-1, 16), layer.router.weight)
    expected = 0.02 * load_balancing_loss_func((logits,), num_experts=8, top_k=2)
    assert layer.aux_loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_router_z_loss_is_the_mean_squared_logsumexp():
    layer = moe_layer(balance_loss=0.0, router_z_loss=0.001)
    x = torch.randn(2, 5, 16)
    layer(x)
    logits = x.reshape(-1, 16) @ layer.router.weight.t()
    expected = 0.001 * (torch.logsumexp(logits, dim=-1) ** 2).mean()
    assert layer.aux_loss.item() == pytest.approx(expected.item(), rel=1e-6)


# ---- gradients ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [
    dict(activation="gelu", bias=True, balance_loss=0.1, router_z_loss=0.01),
    dict(activation="swiglu", bias=True, normalize_gates=False, balance_loss=0.1, router_z_loss=0.01),
    dict(activation="relu", bias=False, experts_per_token=1, balance_loss=0.1),
    dict(activation="gelu", bias=True, dropless=False, capacity_factor=0.75, router_z_loss=0.01),
], ids=["gelu-bias", "swiglu-raw-gates", "relu-top1", "capacity-drops"])
def test_sparse_block_gradients_pass_gradcheck_in_float64(kw):
    """torch.autograd.gradcheck (central differences vs. autograd) through the router, the top-k
    gates, the experts and the balance and z losses, with respect to the input and every weight."""
    layer = moe_layer(seed=1, n_embd=8, expert_hidden=6, **kw).double()
    x = torch.randn(2, 4, 8, dtype=torch.float64)
    assert_no_near_ties(layer, x, margin=1e-3)
    names = [n for n, _ in layer.named_parameters()]

    def f(x, *params):
        out = torch.func.functional_call(layer, dict(zip(names, params)), (x,))
        return out, layer.aux_loss

    params = [p.detach().clone().requires_grad_() for p in layer.parameters()]
    assert torch.autograd.gradcheck(f, (x.requires_grad_(), *params), eps=1e-6, atol=1e-6, rtol=1e-5)
    if not layer.dropless:
        assert layer.stats.dropped.item() > 0  # the case really drops assignments


def test_grouped_and_padded_expert_products_agree():
    """torch._grouped_mm and the padded torch.bmm compute the same layer and gradients (fp32),
    with capacity drops too."""
    for kw in (dict(), dict(dropless=False, capacity_factor=0.5, activation="swiglu")):
        a = moe_layer(seed=2, n_experts=8, **kw)
        b = moe_layer(seed=2, n_experts=8, **kw)
        a.method, b.method = "grouped", "padded"
        x = torch.randn(4, 8, 16)
        ya, yb = a(x), b(x)
        torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-6)
        (ya ** 2).sum().backward()
        (yb ** 2).sum().backward()
        for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
            torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_experts_without_tokens_get_a_zero_gradient_not_none():
    """E = 8, 3 tokens, k = 1: at least 5 experts receive nothing, yet every parameter has a
    gradient (zeros), so DDP and FSDP reduce the same tensors on every rank and step."""
    for method in ("grouped", "padded"):
        layer = moe_layer(n_experts=8, experts_per_token=1)
        layer.method = method
        layer(torch.randn(1, 3, 16)).sum().backward()
        idle = (layer.stats.tokens_per_expert == 0).nonzero().flatten()
        assert len(idle) >= 5
        for name, p in layer.named_parameters():
            assert p.grad is not None, name
        for part in (layer.up, layer.down):
            assert part.weight.grad[idle].abs().max().item() == 0.0
            assert part.weight.grad.abs().max().item() > 0


# ---- routing: hand-built cases ----------------------------------------------------------------------
def expert_by_hand(layer, e, x):
    """y_e(x) = W_down,e · GELU(W_up,e x + b_up,e) + b_down,e, written out."""
    return layer.down.weight[e] @ gelu(layer.up.weight[e] @ x + layer.up.bias[e]) + layer.down.bias[e]


def test_capacity_drops_by_choice_rank_first_then_token_index():
    """E = 4, k = 2, N = 4, capacity = ⌈0.5 · 2 · 4 / 4⌉ = 1 assignment per expert. The router is
    the identity, so token t's logits are x_t:
        t0 → (e0, e1)   t1 → (e1, e0)   t2 → (e0, e2)   t3 → (e2, e3)
    First choices in token order: t0→e0 kept, t1→e1 kept, t2→e0 dropped (full), t3→e2 kept;
    then second choices: t0→e1, t1→e0, t2→e2 dropped (taken by first choices, even t3's, a later
    token), t3→e3 kept. Kept: (t0,e0) (t1,e1) (t3,e2) (t3,e3); 4 of 8 dropped; t2 gets nothing."""
    layer = moe_layer(n_embd=4, expert_hidden=8, dropless=False, capacity_factor=0.5)
    with torch.no_grad():
        layer.router.weight.copy_(torch.eye(4))
    x = torch.tensor([[3.0, 2, 0, -1], [2, 3, -1, 0], [3, 0, 2, -1], [-1, 0, 3, 2]])
    y = layer(x[None])[0]
    assert layer.capacity(4) == 1 and layer.stats.capacity == 1
    assert layer.stats.dropped.item() == 4
    assert layer.stats.tokens_per_expert.tolist() == [3, 2, 2, 1]  # before drops
    assert layer.stats.expert_indices.tolist() == [[0, 1], [1, 0], [0, 2], [2, 3]]
    gates = torch.softmax(x, -1).topk(2, -1).values
    gates = gates / gates.sum(-1, keepdim=True)
    with torch.no_grad():
        expected = torch.stack([gates[0, 0] * expert_by_hand(layer, 0, x[0]),
                                gates[1, 0] * expert_by_hand(layer, 1, x[1]),
                                torch.zeros(4),
                                gates[3, 0] * expert_by_hand(layer, 2, x[3]) + gates[3, 1] * expert_by_hand(layer, 3, x[3])])
    torch.testing.assert_close(y, expected, rtol=1e-6, atol=1e-6)

    roomy = moe_layer(n_embd=4, expert_hidden=8, dropless=False, capacity_factor=2.0)  # capacity 4: nothing dropped
    dropless = moe_layer(n_embd=4, expert_hidden=8)
    for m in (roomy, dropless):
        with torch.no_grad():
            m.router.weight.copy_(torch.eye(4))
    torch.testing.assert_close(roomy(x[None]), dropless(x[None]))
    assert roomy.stats.dropped.item() == 0 and dropless.stats.capacity is None


def test_identical_experts_with_renormalised_gates_are_the_dense_ffn():
    """Σⱼ gⱼ = 1, so E copies of one FFN routed top-2 compute exactly that FFN."""
    config = moe_config(activation="swiglu", expert_hidden=0, ffn_mult=2)
    torch.manual_seed(0)
    dense, layer = FeedForward(config), MixtureOfExperts(config)
    with torch.no_grad():
        for name in ("up", "gate", "down"):
            getattr(layer, name).weight.copy_(getattr(dense, name).weight.expand_as(getattr(layer, name).weight))
            getattr(layer, name).bias.copy_(getattr(dense, name).bias.expand_as(getattr(layer, name).bias))
        layer.router.weight.normal_()
    x = torch.randn(2, 7, 16)
    torch.testing.assert_close(layer(x), dense(x), rtol=1e-5, atol=1e-6)


def test_switch_gates_are_the_raw_router_probabilities():
    """normalize_gates = false, k = 1 (Switch): y = p_top · y_top(x)."""
    layer = moe_layer(n_embd=4, expert_hidden=8, experts_per_token=1, normalize_gates=False)
    x = torch.randn(5, 4)
    y = layer(x[None])[0]
    p = torch.softmax(x @ layer.router.weight.t(), -1)
    with torch.no_grad():
        expected = torch.stack([p[t].max() * expert_by_hand(layer, int(p[t].argmax()), x[t]) for t in range(5)])
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-6)


def test_routing_stats_describe_the_last_forward():
    layer = moe_layer(n_experts=8, experts_per_token=2)
    x = torch.randn(2, 6, 16)
    layer(x)
    s = layer.stats
    assert isinstance(s, RoutingStats) and s.assignments == 24
    assert s.tokens_per_expert.sum().item() == 24 and s.dropped.item() == 0 and s.capacity is None
    assert s.tokens_per_expert.tolist() == torch.bincount(s.expert_indices.flatten(), minlength=8).tolist()
    p = torch.softmax(x.reshape(-1, 16) @ layer.router.weight.t(), -1)
    assert s.expert_indices.tolist() == p.topk(2, -1).indices.tolist()
    assert s.entropy.item() == pytest.approx(-(p * p.log()).sum(-1).mean().item(), rel=1e-5)
    assert not s.tokens_per_expert.requires_grad and not s.entropy.requires_grad


# ---- precision ------------------------------------------------------------------------------------
def test_router_logits_are_float32_under_bf16_autocast():
    """Under CPU bf16 autocast the router still computes fp32 logits from fp32 inputs, so routing
    equals the fp32 model's; the experts run in bf16."""
    layer = moe_layer(n_experts=8)
    x = torch.randn(4, 16, 16)
    reference = layer(x)
    fp32_indices = layer.stats.expert_indices
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, _, _, _ = layer.route(x.reshape(-1, 16))
        y = layer(x)
    assert logits.dtype == torch.float32 and layer.aux_loss.dtype == torch.float32
    assert torch.equal(layer.stats.expert_indices, fp32_indices)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), reference, rtol=0.05, atol=0.02)


# ---- counts -------------------------------------------------------------------------------------------
def test_total_and_active_parameters_by_hand():
    """4 layers, every 2nd sparse (blocks 1 and 3), E = 8, k = 2, swiglu, bias: hand counts."""
    config = moe_config(n_layer=4, moe_every=2, n_experts=8, experts_per_token=2, activation="swiglu", bias=True)
    model = GPT(config)
    C, H, V, E, k, T = 16, 32, 50, 8, 2, 16
    dense_ffn = 3 * (C * 4 * C + 4 * C) + C  # up, gate, down (H = 4C)... plus biases
    dense_ffn = 2 * (4 * C * C + 4 * C) + (C * 4 * C + C)
    expert = 2 * (H * C + H) + (C * H + C)
    attention = (3 * C * C + 3 * C) + (C * C + C) + 4 * C  # qkv, output, two layer norms
    total = V * C + 2 * C + 4 * attention + 2 * dense_ffn + 2 * (E * C + E * expert)
    assert [i for i in range(4) if config.is_sparse(i)] == [1, 3]
    assert model.num_params() == total
    assert model.num_params(active=True) == total - 2 * (E - k) * expert
    assert model.expert_params() == 2 * E * expert
    matmul = V * C + 4 * (4 * C * C) + 2 * (3 * 4 * C * C) + 2 * (E * C + k * 3 * H * C)
    assert model.flops_per_token() == 6 * matmul + 12 * 4 * T * C


@pytest.mark.parametrize("activation", ["gelu", "swiglu"])
def test_flops_per_token_matches_torch_flop_counter_on_the_grouped_path(activation):
    """FlopCounterMode counts a real forward + backward (torch._grouped_mm given the standard
    2·m·k·n formula): the router and exactly k experts per token, as flops_per_token says."""
    config = tiny_config("attention=math", "vocab_size=97", "n_experts=4", "experts_per_token=2", "moe_every=2",
                         f"activation={activation}").model
    model = GPT(config)
    for layer in model.moe_layers().values():
        layer.method = "grouped"
    grouped_mm = lambda a, b, *args, out_shape=None, **kw: 2 * a[-2] * a[-1] * b[-1]  # noqa: E731
    idx = torch.randint(0, 97, (2, config.block_size))
    with FlopCounterMode(display=False, custom_mapping={torch.ops.aten._grouped_mm: grouped_mm}) as counter:
        _, loss = model(idx, idx)
        (loss + model.aux_loss()).backward()
    assert counter.get_total_flops() == model.flops_per_token() * 2 * config.block_size


def test_expert_weights_decay_and_their_biases_do_not():
    config = tiny_config("n_experts=4", "vocab_size=50").model
    model = GPT(config)
    optimizer = configure_adamw(model, tiny_config().train, torch.device("cpu"))
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    names = {n: id(p) in decayed for n, p in model.named_parameters()}
    assert names["blocks.0.ffn.up.weight"] and names["blocks.0.ffn.down.weight"] and names["blocks.0.ffn.router.weight"]
    assert not names["blocks.0.ffn.up.bias"] and not names["blocks.0.ffn.down.bias"]


# ---- the model and training -----------------------------------------------------------------------
def test_gpt_sums_the_aux_losses_of_its_sparse_blocks_and_dense_models_have_none():
    dense = GPT(moe_config(n_experts=0))
    x = torch.randint(0, 50, (2, 16))
    dense(x, x)
    assert dense.aux_loss() is None and dense.routing_stats() == {} and dense.routing_summary() == {}
    model = GPT(moe_config(n_layer=3, moe_every=1, balance_loss=0.01, router_z_loss=0.001))
    model(x, x)
    layers = model.moe_layers()
    assert list(layers) == [0, 1, 2] and list(model.routing_stats()) == [0, 1, 2]
    assert model.aux_loss().item() == pytest.approx(sum(m.aux_loss.item() for m in layers.values()), rel=1e-6)
    summary = model.routing_summary()
    assert set(summary) == {"aux_loss", "dropped", "router_entropy", "max_load"} and summary["dropped"] == 0.0


def test_explicit_attention_path_works_with_experts():
    """attention = "math" and "sdpa" give the same MoE model (float64)."""
    torch.manual_seed(0)
    a, b = GPT(moe_config(attention="math")).double(), GPT(moe_config(attention="sdpa")).double()
    b.load_state_dict(a.state_dict())
    x = torch.randint(0, 50, (2, 16))
    torch.testing.assert_close(a(x, x)[0], b(x, x)[0], rtol=1e-10, atol=1e-10)
    assert torch.equal(a.routing_stats()[0].expert_indices, b.routing_stats()[0].expert_indices)


MOE = ["n_experts=4", "experts_per_token=2", "activation=swiglu", "router_z_loss=0.001", "dropless=false",
       "capacity_factor=1.0"]


def test_training_an_moe_learns_logs_routing_and_resumes_bit_for_bit(tmp_path):
    """A sparse model trains through the one step with the aux loss added, logs its routing stats,
    and 10 steps + resume to 20 equal 20 straight steps (weights and loss curve)."""
    straight = train(tiny_config(*MOE, "lr_decay_steps=20"), tmp_path / "a", progress=False)
    records = [r for r in read_metrics(tmp_path / "a" / "metrics.jsonl") if "loss" in r]
    assert all({"aux_loss", "dropped", "router_entropy", "max_load"} <= set(r) for r in records)
    assert all(0 < r["dropped"] < 0.5 and r["aux_loss"] > 0 for r in records)
    evals = [r for r in read_metrics(tmp_path / "a" / "metrics.jsonl") if "val_loss" in r]
    assert evals[-1]["val_loss"] < records[0]["loss"] - 0.2  # it learns
    train(tiny_config(*MOE, "lr_decay_steps=20", "max_steps=10"), tmp_path / "b", progress=False)
    config = ckpt.read_run_config(tmp_path / "b").replace(max_steps=20)
    resumed = train(config, tmp_path / "b", resume=True, progress=False)
    losses = lambda d: [(r["step"], r["loss"]) for r in read_metrics(d / "metrics.jsonl") if "loss" in r]  # noqa: E731
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    for name, tensor in straight.model.weights().items():
        assert torch.equal(tensor, resumed.model.weights()[name]), name


def test_default_loss_is_cross_entropy_plus_aux_and_evaluation_is_cross_entropy_alone(tmp_path):
    from groundup.train.engine import build_engine

    config = tiny_config(*MOE, "vocab_size=50", "balance_loss=0.5")
    engine = build_engine(config, torch.device("cpu"))
    x = torch.randint(0, 50, (2, 32))
    value = engine.default_loss(engine.model, (x, x))
    _, ce = engine.model(x, x)
    assert value.item() == pytest.approx(ce.item() + engine.model.aux_loss().item(), rel=1e-6)
    assert engine.model.aux_loss().item() > 0.5  # ≥ α·k = 1 in fact: balance ≥ α·k
    assert engine.evaluate([(x, x)]) == pytest.approx(ce.item(), rel=1e-6)


def test_a_non_finite_step_is_skipped_and_rolled_back_with_experts(tmp_path):
    """The guard works unchanged: a NaN step leaves the weights as they were; three in a row roll back."""
    guarded = [*MOE, "max_steps=14", "checkpoint_interval=5", "lr_decay_steps=14"]
    result = train(tiny_config(*guarded), tmp_path / "r", progress=False, faults=["nan@7-9"])
    [rollback] = events(tmp_path / "r", "rollback")
    assert (rollback["from_step"], rollback["step"]) == (9, 5) and "3 non-finite steps in a row" in rollback["reason"]
    assert result.step == 14 and all(torch.isfinite(w).all() for w in result.model.weights().values())


# ---- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize("override, message", [
    ("n_experts=1", "a router over one expert is a dense FFN"),
    ("n_experts=-2", "n_experts must be ≥ 0"),
    ("experts_per_token=5", "experts_per_token must be between 1 and n_experts (4)"),
    ("experts_per_token=0", "experts_per_token must be between 1"),
    ("capacity_factor=0", "capacity_factor must be > 0"),
    ("moe_every=0", "moe_every must be ≥ 1"),
    ("moe_every=3", "no block would be sparse"),
    ("expert_hidden=-1", "expert_hidden must be ≥ 0"),
    ("balance_loss=-0.1", "balance_loss must be ≥ 0"),
    ("activation=swish", "'relu', 'gelu' or 'swiglu'"),
])
def test_bad_moe_configs_are_one_clear_line(override, message):
    with pytest.raises(ConfigError, match=None) as e:
        tiny_config("n_experts=4", override)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_bad_moe_config_from_the_cli_exits_2_without_a_traceback(tmp_path):
    assert_clean_error(run_cli("train", "--set", "n_experts=4", "--set", "experts_per_token=6", "--out", str(tmp_path / "r")),
                       "experts_per_token must be between 1 and n_experts (4)")
    code = cli.main(["train", "--set", "n_experts=1", "--out", str(tmp_path / "s")])
    assert code == 2 and not (tmp_path / "s").exists()


def test_moe_config_round_trips_through_a_run_directory(tmp_path):
    train(tiny_config(*MOE, "max_steps=2", "eval_interval=2"), tmp_path / "r", progress=False)
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["model"]["n_experts"] == 4 and saved["model"]["activation"] == "swiglu"
    assert math.isclose(ckpt.read_run_config(tmp_path / "r").model.capacity_factor, 1.0)
    from groundup.sample import SamplingSettings, sample_text

    text = sample_text(tmp_path / "r", "To be", SamplingSettings(max_new_tokens=10, seed=1), device="cpu")
    assert len(text) >= 10


def test_generation_with_experts_is_the_same_with_and_without_the_kv_cache():
    from groundup.sample import SamplingSettings, generate

    torch.manual_seed(0)
    model = GPT(moe_config(activation="swiglu")).double()
    settings = SamplingSettings(max_new_tokens=24, temperature=1.0, seed=5)  # 24 > 16: the window slides
    assert list(generate(model, [1, 2, 3], settings, use_cache=True)) == list(generate(model, [1, 2, 3], settings, use_cache=False))


def test_a_sparse_model_cannot_be_exported_as_gpt2():
    from groundup.interop.hf import check_exportable

    with pytest.raises(ConfigError, match="n_experts"):
        check_exportable(ModelConfig(vocab_size=50, positional="learned", n_experts=4))
