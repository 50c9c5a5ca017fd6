"""The preference losses (groundup.train.align) and the reward model (groundup.model.reward), against
hand-computed cases, a direct log-softmax gather, finite differences, and trl's DPOTrainer."""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from torch.func import functional_call

from groundup.config import ModelConfig
from groundup.errors import ConfigError
from groundup.model import GPT
from groundup.model.reward import RewardModel
from groundup.train.align import (bradley_terry_loss, check_beta, dpo_loss, dpo_step_loss, reward_model_loss,
                                  sequence_logprobs, token_logprobs)



@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matmuls: one thread is faster and steadier on a shared machine (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_gpt(seed: int, vocab: int = 13, block: int = 12, dtype=torch.float32) -> GPT:
    torch.manual_seed(seed)
    return GPT(ModelConfig(vocab_size=vocab, block_size=block, n_layer=1, n_head=2, n_embd=16, dropout=0.0)).to(dtype).eval()


def random_ids(seed: int, batch: int = 3, length: int = 9, vocab: int = 13) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


# ---- hand-computed cases ------------------------------------------------------------------------
def test_bradley_terry_loss_hand_computed():
    # pairs: r_w − r_l = 1, 0, −2  →  −log σ(1) = log(1 + e^−1), −log σ(0) = log 2, −log σ(−2) = log(1 + e^2)
    loss = bradley_terry_loss(torch.tensor([1.0, 0.5, -1.0]), torch.tensor([0.0, 0.5, 1.0]))
    expected = (math.log(1 + math.exp(-1)) + math.log(2) + math.log(1 + math.exp(2))) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx((0.31326169 + 0.69314718 + 2.12692801) / 3, rel=1e-7)


def test_bradley_terry_loss_gradient_is_sigmoid_of_minus_margin():
    # ∂/∂r_w of −log σ(r_w − r_l) = −σ(r_l − r_w) = −(1 − σ(r_w − r_l)); here margin 1, one pair
    r_w, r_l = torch.tensor([2.0], requires_grad=True), torch.tensor([1.0], requires_grad=True)
    bradley_terry_loss(r_w, r_l).backward()
    assert r_w.grad.item() == pytest.approx(-1 / (1 + math.e), rel=1e-6)
    assert r_l.grad.item() == pytest.approx(1 / (1 + math.e), rel=1e-6)


def test_dpo_loss_hand_computed():
    # β = 0.5; pair 1: π_w − ref_w = 1, π_l − ref_l = −1 → β·2 = 1 → log(1 + e^−1)
    #          pair 2: π_w − ref_w = −3, π_l − ref_l = 1 → β·(−4) = −2 → log(1 + e^2)
    loss = dpo_loss(torch.tensor([-1.0, -6.0]), torch.tensor([-3.0, -1.0]), torch.tensor([-2.0, -3.0]),
                    torch.tensor([-2.0, -2.0]), beta=0.5)
    assert loss.item() == pytest.approx((math.log(1 + math.exp(-1)) + math.log(1 + math.exp(2))) / 2, rel=1e-6)
    # at π = π_ref every margin is 0: the loss is log 2 whatever β
    z = torch.tensor([-4.0, -7.0])
    assert dpo_loss(z, z - 1, z, z - 1, beta=3.0).item() == pytest.approx(math.log(2), rel=1e-7)


def test_dpo_loss_is_bradley_terry_on_the_implicit_reward():
    # r(x, y) = β·log π(y|x)/π_ref(y|x) (Rafailov et al. eq. 5, the log Z term cancels in the difference)
    g = torch.Generator().manual_seed(0)
    pi_w, pi_l, ref_w, ref_l = (torch.randn(7, generator=g, dtype=torch.float64) * 5 for _ in range(4))
    beta = 0.3
    assert dpo_loss(pi_w, pi_l, ref_w, ref_l, beta).item() == pytest.approx(
        bradley_terry_loss(beta * (pi_w - ref_w), beta * (pi_l - ref_l)).item(), rel=1e-12)


def test_dpo_loss_stays_finite_at_large_margins():
    big = torch.tensor([400.0], dtype=torch.float64)
    zero = torch.zeros(1, dtype=torch.float64)
    assert dpo_loss(zero, big, zero, zero, 1.0).item() == pytest.approx(400.0, rel=1e-12)  # −log σ(−400) = 400 + log(1 + e^−400)
    assert dpo_loss(big, zero, zero, zero, 1.0).item() == pytest.approx(0.0, abs=1e-150)


@pytest.mark.parametrize("beta", [0, -0.1, float("nan"), float("inf"), True, "0.1"])
def test_bad_beta_is_a_config_error(beta):
    with pytest.raises(ConfigError, match="beta"):
        check_beta(beta)
    with pytest.raises(ConfigError, match="beta"):
        dpo_loss(torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.zeros(1), beta)
    with pytest.raises(ConfigError, match="beta"):
        dpo_step_loss(tiny_gpt(0), beta)


# ---- log-probabilities ---------------------------------------------------------------------------
def test_token_logprobs_match_a_direct_gather_one_prefix_at_a_time():
    """log π(ids[t+1] | ids[:t+1]) from a separate forward of each prefix (so causality is checked
    too), log_softmax and gather by hand; 0 for the prompt's tokens."""
    model = tiny_gpt(1, dtype=torch.float64)
    ids = random_ids(2)
    P = 4
    got = token_logprobs(model, ids, P)
    assert got.shape == (3, 8)
    for b in range(3):
        for t in range(8):
            logits = model(ids[b:b + 1, :t + 1])[0][0, -1]
            direct = torch.log_softmax(logits, dim=-1)[ids[b, t + 1]]
            expected = direct.item() if t + 1 >= P else 0.0
            assert got[b, t].item() == pytest.approx(expected, abs=1e-12), (b, t)


def test_sequence_logprobs_sum_the_continuation_with_a_prompt_length_per_row():
    model = tiny_gpt(3, dtype=torch.float64)
    ids = random_ids(4)
    P = torch.tensor([1, 4, 9])  # the whole sequence is continuation; 5 tokens; none
    full = torch.log_softmax(model(ids)[0][:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    got = sequence_logprobs(model, ids, P)
    assert got[0].item() == pytest.approx(full[0].sum().item(), abs=1e-12)
    assert got[1].item() == pytest.approx(full[1, 3:].sum().item(), abs=1e-12)
    assert got[2].item() == 0.0
    with pytest.raises(ConfigError, match="prompt_len"):
        sequence_logprobs(model, ids, 0)


# ---- trl: the same loss on the same log-probabilities ------------------------------------------------
def trl_dpo_loss(per_token_logps: torch.Tensor, completion_mask: torch.Tensor, ref_chosen: torch.Tensor,
                 ref_rejected: torch.Tensor, beta: float, tmp_path) -> torch.Tensor:
    """trl 1.16's DPOTrainer._compute_loss (loss_type="sigmoid") run on given per-token log-probs:
    the real method, on a trainer object carrying the attributes its __init__ sets from a real
    DPOConfig (dpo_trainer.py: self.beta = args.beta, …), a model that returns the log-probs
    (its fused LM head's `log_probs`, 0 off the completion), and the reference log-probs
    precomputed (precompute_ref_log_probs=True). Bookkeeping (accelerator gathers) is identity."""
    dpo = pytest.importorskip("trl.trainer.dpo_trainer")
    from trl import DPOConfig

    args = DPOConfig(output_dir=str(tmp_path / "trl"), beta=beta, loss_type="sigmoid", precompute_ref_log_probs=True,
                     report_to=[], use_cpu=True)
    trainer = dpo.DPOTrainer.__new__(dpo.DPOTrainer)
    trainer.args = args
    trainer.beta = args.beta
    trainer.precompute_ref_logps = args.precompute_ref_log_probs
    trainer.loss_types = args.loss_type
    trainer.loss_weights = args.loss_weights or [1.0] * len(trainer.loss_types)
    trainer.ld_alpha = args.ld_alpha
    trainer.f_divergence_type = args.f_divergence_type
    trainer.f_alpha_divergence_coef = args.f_alpha_divergence_coef
    trainer.use_weighting = args.use_weighting  # False by default: WPO's weights off
    trainer.label_smoothing = args.label_smoothing
    assert args.f_divergence_type == "reverse_kl" and trainer.loss_types == ["sigmoid"]  # the standard DPO loss
    trainer.aux_loss_enabled = False
    trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    trainer._total_train_tokens, trainer._tp_size = 0, 1
    trainer.model = torch.nn.Module()  # (only .training is read: train mode)
    identity = lambda x: x  # noqa: E731
    trainer.accelerator = SimpleNamespace(device=torch.device("cpu"), gather=identity, gather_for_metrics=identity)

    def model(**kwargs):
        zeros = torch.zeros_like(per_token_logps)
        return SimpleNamespace(log_probs=per_token_logps, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())

    n, T = completion_mask.shape
    inputs = {"input_ids": torch.zeros(n, T, dtype=torch.long), "attention_mask": torch.ones(n, T, dtype=torch.long),
              "completion_mask": completion_mask, "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
    loss = dpo.DPOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)
    assert trainer._metrics["train"]["rewards/margins"], "trl's loss did not run its sigmoid branch"
    return loss


@pytest.mark.slow  # importing trl (transformers, accelerate) takes ~10 s
@pytest.mark.parametrize("beta", [0.05, 0.5, 4.0])
def test_dpo_loss_equals_trl_sigmoid_loss_and_gradient(beta, tmp_path):
    policy, reference = tiny_gpt(5), tiny_gpt(6)
    chosen, rejected = random_ids(7, batch=4), random_ids(8, batch=4)
    P = 3
    ids = torch.cat([chosen, rejected])  # trl's batch order: chosen rows, then rejected rows
    with torch.no_grad():
        ref = sequence_logprobs(reference, ids, P)
    ref_w, ref_l = ref[:4], ref[4:]

    ours = dpo_step_loss(reference, beta)(policy, (chosen, rejected, P))
    ours_grads = torch.autograd.grad(ours, list(policy.parameters()))

    completion_mask = (torch.arange(ids.shape[1]) >= P).long().expand_as(ids)
    theirs = trl_dpo_loss(token_logprobs(policy, ids, P), completion_mask, ref_w, ref_l, beta, tmp_path)
    theirs_grads = torch.autograd.grad(theirs, list(policy.parameters()))

    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6, abs=1e-7)
    assert ours.item() != pytest.approx(math.log(2), rel=1e-3)  # the two policies differ: not the trivial point
    for a, b in zip(ours_grads, theirs_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_dpo_loss_equals_trl_on_hand_picked_log_probs(tmp_path):
    """Sequence log-probs given directly (one completion token per row carries the whole sum)."""
    pi_w, pi_l = torch.tensor([-10.0, -3.5, -60.0]), torch.tensor([-12.0, -2.0, -1.0])
    ref_w, ref_l = torch.tensor([-11.0, -3.0, -2.0]), torch.tensor([-11.0, -3.0, -50.0])
    per_token = torch.cat([pi_w, pi_l]).unsqueeze(1)  # (2B, 1): T = 2, one completion token
    mask = torch.tensor([[0, 1]] * 6)
    for beta in (0.1, 1.0):
        assert dpo_loss(pi_w, pi_l, ref_w, ref_l, beta).item() == pytest.approx(
            trl_dpo_loss(per_token, mask, ref_w, ref_l, beta, tmp_path).item(), rel=1e-6)


# ---- the reward model ------------------------------------------------------------------------------
def test_reward_model_is_a_head_on_the_last_tokens_final_hidden_state():
    """r = w·h_T + b with h_T what the LM head of the trunk reads at the last position (a forward
    hook on GPT.lm_head, i.e. through GPT.forward, not GPT.hidden)."""
    gpt = tiny_gpt(9)
    rm = RewardModel(gpt).eval()
    ids = random_ids(10)
    seen = {}
    rm.trunk.lm_head.register_forward_hook(lambda module, args, out: seen.__setitem__("h", args[0]))
    rm.trunk(ids)
    expected = seen["h"][:, -1] @ rm.head.weight[0] + rm.head.bias[0]
    torch.testing.assert_close(rm(ids), expected, rtol=1e-6, atol=1e-6)
    assert rm(ids).shape == (3,)
    # the trunk is a copy of π_ref's weights, and training it does not touch π_ref
    for (name, a), b in zip(gpt.state_dict().items(), rm.trunk.state_dict().values()):
        assert torch.equal(a, b), name
    assert rm.trunk.token_embedding.weight.data_ptr() != gpt.token_embedding.weight.data_ptr()


def test_mean_pooled_reward_model_averages_a_per_position_reward():
    """pool="mean": r = (1/T) Σ_t (w·h_t + b), h_t what the LM head reads at position t; and the prompt
    positions a pair shares cancel from r_w − r_l only through that average (checked by hand here)."""
    gpt = tiny_gpt(9)
    rm = RewardModel(gpt, pool="mean").eval()
    ids = random_ids(10)
    seen = {}
    rm.trunk.lm_head.register_forward_hook(lambda module, args, out: seen.__setitem__("h", args[0]))
    rm.trunk(ids)
    per_position = seen["h"] @ rm.head.weight[0] + rm.head.bias[0]  # (B, T)
    torch.testing.assert_close(rm(ids), per_position.mean(dim=1), rtol=1e-6, atol=1e-6)
    with pytest.raises(ConfigError, match="pooling 'max'"):
        RewardModel(gpt, pool="max")


def test_reward_model_gradient_matches_finite_differences():
    """∂L_BT/∂θ by autograd against central finite differences (torch.autograd.gradcheck, float64)
    for the head and one matrix of each kind in the trunk."""
    torch.manual_seed(0)
    rm = RewardModel(tiny_gpt(11, dtype=torch.float64)).eval()
    chosen, rejected = random_ids(12, batch=2, length=6), random_ids(13, batch=2, length=6)
    names = ["head.weight", "head.bias", "trunk.blocks.0.attention.qkv.weight", "trunk.blocks.0.ffn.up.weight",
             "trunk.token_embedding.weight", "trunk.final_norm.weight"]
    params = dict(rm.named_parameters())
    loss = reward_model_loss()

    def f(*values):  # the loss of a reward model whose selected parameters are the gradcheck inputs
        call = lambda ids: functional_call(rm, {**params, **dict(zip(names, values))}, (ids,))  # noqa: E731
        return loss(call, (chosen, rejected))

    inputs = tuple(params[n].detach().clone().requires_grad_(True) for n in names)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_preference_losses_are_fp32_under_bf16_autocast_and_fp64_stays():
    """As the model's own loss: bf16 outputs of an autocast forward are upcast before the log-sigmoid."""
    rm, gpt = RewardModel(tiny_gpt(14)).eval(), tiny_gpt(15)
    chosen, rejected = random_ids(16), random_ids(17)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert rm(chosen).dtype == torch.bfloat16  # (the head's matmul runs in bf16)
        assert reward_model_loss()(rm, (chosen, rejected)).dtype == torch.float32
        assert token_logprobs(gpt, chosen, 2).dtype == torch.float32
    rm64 = RewardModel(tiny_gpt(14, dtype=torch.float64)).eval()
    assert reward_model_loss()(rm64, (chosen, rejected)).dtype == torch.float64
