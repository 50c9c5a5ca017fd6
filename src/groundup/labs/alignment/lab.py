"""The alignment lab, on the harness: π_ref trained once per run, then per seed the preferences, the
reward model, RL, DPO and best-of-n on the main setting, and the exact setting (π* by enumeration).
Every weight update goes through groundup.train.loop.fit (the methods are losses of the one step)."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from groundup.align import exact
from groundup.align.best_of_n import analytic_kl
from groundup.align.gold import DEFAULT_LENGTH, GoldJudge
from groundup.align.kl import kl_k1, kl_k3
from groundup.align.preferences import DEFAULT_BT_SCALE, PreferencePair, draw_labels, pairs_from_model
from groundup.align.rl import RLSettings, model_reward, rl_optimize
from groundup.align.runs import (AlignSettings, PairBatches, build_engine as align_engine, pair_tensors,
                                 prompts_from_corpus, run_config as align_run_config, sample_continuations,
                                 split_pairs, weights_sha256)
from groundup.config import load_config
from groundup.data import BatchSampler
from groundup.errors import GroundupError
from groundup.labs import harness
from groundup.labs.alignment import report
from groundup.model.reward import RewardModel
from groundup.train.align import dpo_step_loss, reward_model_loss, token_logprobs
from groundup.train.engine import build_engine, evaluate
from groundup.train.loop import fit
from groundup.train.schedule import lr_at
from groundup.train.trainer import fixed_batches, load_data, resolve_vocab
from groundup.util.device import pick_device

LAB = "alignment"
VERSION = report.VERSION
DEFAULT_SEEDS = 3
DEFAULT_OUT = "runs/alignment"
BASE_SEED = 0  # π_ref is the same model for every seed: the seeds vary the data, r_φ and the policies


@dataclass
class Settings:
    """Every knob of the lab. `Settings.quick()` is the tiny version the tests run."""

    device: str = "cpu"
    threads: int = 1  # torch threads (the budget is stated for 1)
    corpus: str = "shakespeare"
    # π_ref: a small char model trained by the lab (no download)
    base_layers: int = 2
    base_heads: int = 4
    base_embd: int = 64
    block_size: int = 64
    base_steps: int = 1500
    base_batch: int = 32
    base_lr: float = 3e-3
    prompt_len: int = 16
    length: int = DEFAULT_LENGTH  # continuation characters the gold judge reads (align.gold: long enough for words)
    # preferences and the reward model r_φ
    n_pairs: int = 20000  # about 45% tie on gold (no sentiment word in either): the rest carry the signal
    held_out: float = 0.1
    bt_scale: float = DEFAULT_BT_SCALE
    rm_pool: str = "mean"  # the head on the mean over positions; a last-token head is trained beside it (ablation)
    rm_steps: int = 1500
    rm_batch: int = 32
    rm_lr: float = 3e-4
    # the policies: one β grid for RL and DPO
    betas: tuple = (1.0, 0.3, 0.1, 0.03)
    rl_steps: int = 150
    rl_prompts: int = 8  # G prompts per step
    rl_samples: int = 4  # k samples per prompt (leave-one-out baseline)
    rl_lr: float = 3e-4
    curve_every: int = 25  # RL steps between over-optimisation measurements (proxy, gold, KL)
    dpo_steps: int = 150
    dpo_batch: int = 32
    dpo_lr: float = 1e-4
    best_of_n: tuple = (1, 2, 4, 8, 16, 32, 64)  # KL up to log 64 − 63/64 = 3.17 nats
    eval_prompts: int = 128
    eval_samples: int = 2  # continuations per evaluation prompt
    n_samples_shown: int = 3
    # the exact setting: continuations of exact_length tokens, V^L of them, enumerated
    exact_length: int = 2
    exact_prompts: int = 4
    exact_betas: tuple = (1.0, 0.3, 0.1)
    exact_frontier: tuple = (10.0, 5.0, 3.0, 2.0, 1.0, 0.7, 0.5, 0.3, 0.2, 0.15, 0.1, 0.07, 0.05, 0.03, 0.01)
    exact_rl_steps: int = 150
    exact_rl_samples: int = 16
    exact_pairs: int = 512
    exact_dpo_steps: int = 150
    exact_lr: float = 1e-3

    @classmethod
    def quick(cls, **changes) -> "Settings":
        small = dict(base_layers=1, base_embd=32, base_heads=2, block_size=48, base_steps=60, base_batch=16, length=24,
                     n_pairs=96, rm_steps=15, rm_batch=16, betas=(0.1, 0.01), rl_steps=8, rl_prompts=4, rl_samples=2,
                     curve_every=4, dpo_steps=8, dpo_batch=16, best_of_n=(1, 4), eval_prompts=8, eval_samples=2,
                     exact_prompts=2, exact_betas=(0.3,), exact_frontier=(3.0, 0.3, 0.03), exact_rl_steps=8,
                     exact_rl_samples=4, exact_pairs=32, exact_dpo_steps=8)
        return cls(**{**small, **changes})

    def validate(self) -> None:
        for name in ("base_steps", "rm_steps", "rl_steps", "dpo_steps", "eval_prompts", "exact_prompts",
                     "exact_rl_steps", "exact_dpo_steps", "curve_every", "n_pairs", "exact_pairs"):
            if getattr(self, name) < 1:
                raise GroundupError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("betas", "exact_betas", "exact_frontier"):
            if not getattr(self, name) or not all(b > 0 for b in getattr(self, name)):
                raise GroundupError(f"{name}: every β must be positive, and at least one is needed")
        if self.prompt_len + self.length > self.block_size:
            raise GroundupError(f"prompt ({self.prompt_len}) + continuation ({self.length}) exceed the context "
                                f"{self.block_size}")
        if self.eval_samples < 1 or self.rl_samples < 2 or self.exact_rl_samples < 2:
            raise GroundupError("RL needs at least 2 samples per prompt (leave-one-out) and evaluation at least 1")

    def base_config(self, steps: int | None = None):
        return load_config(None, [f"corpus={self.corpus}", "tokenizer=char", f"n_layer={self.base_layers}",
                                  f"n_head={self.base_heads}", f"n_embd={self.base_embd}",
                                  f"block_size={self.block_size}", f"batch_size={self.base_batch}",
                                  f"max_steps={steps or self.base_steps}", f"learning_rate={self.base_lr}",
                                  f"min_lr={self.base_lr / 10}", f"warmup_steps={max(1, (steps or self.base_steps) // 10)}",
                                  "dropout=0.0", f"seed={BASE_SEED}", f"device={self.device}", f"threads={self.threads}"])


def key(beta: float) -> str:
    return f"{beta:g}"


class Lab:
    """The data, π_ref (trained once), the gold judge."""

    def __init__(self, s: Settings, say=print):
        self.s = s
        self.device = pick_device(s.device)
        config = s.base_config()
        self.data = load_data(config)
        self.config = resolve_vocab(config, self.data)
        self.tokenizer = self.data.tokenizer
        self.judge = GoldJudge()
        start = time.perf_counter()
        engine = build_engine(self.config, self.device)
        sampler = BatchSampler(self.data.train, s.block_size, s.base_batch, seed=BASE_SEED)
        fit(engine, lambda: engine.batch(*sampler.next_batch()), s.base_steps,
            lr=lambda step: lr_at(step, self.config.train), grad_clip=self.config.train.grad_clip)
        self.ref = engine.model.eval()
        val = fixed_batches(self.data.val, self.config, BASE_SEED, self.device, 8)
        self.base = {"val_loss": float(evaluate(self.ref, val, None, self.device)),
                     "train_seconds": time.perf_counter() - start, "n_params": self.ref.num_params(),
                     "vocab_size": self.tokenizer.vocab_size, "weights_sha256": weights_sha256(self.ref)}
        say(f"  π_ref: {self.base['n_params']:,} parameters, val loss {self.base['val_loss']:.3f} nats/char "
            f"({self.base['train_seconds']:.0f} s)")

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(t) for t in ids])

    def gold(self, continuations) -> torch.Tensor:
        return torch.tensor(self.judge.score_ids(self.tokenizer, continuations), dtype=torch.float64)


# ---- measuring a policy --------------------------------------------------------------------------
@torch.no_grad()
def measure(lab: Lab, policy, rm, prompts: torch.Tensor, seed: int, samples: int, keep_text: int = 0) -> dict:
    """On the policy's own samples (`samples` per prompt): mean proxy reward r_φ, mean gold reward, and
    KL(π ‖ π_ref) per sequence by k1 and k3 (groundup.align.kl), with their spread over samples."""
    P = prompts.shape[1]
    ids = sample_continuations(policy, prompts.repeat_interleave(samples, dim=0), lab.s.length, seed)
    logp = token_logprobs(policy, ids, P).double()
    logp_ref = token_logprobs(lab.ref, ids, P).double()
    k1 = kl_k1(logp, logp_ref).sum(-1)
    k3 = kl_k3(logp, logp_ref).sum(-1)
    proxy = rm(ids).double()
    gold = lab.gold(ids[:, P:])
    out = {"proxy": proxy.mean().item(), "gold": gold.mean().item(), "kl_k1": k1.mean().item(),
           "kl_k3": k3.mean().item(), "kl_k1_se": (k1.std() / math.sqrt(len(k1))).item(),
           "gold_nonzero": (gold != 0).double().mean().item()}
    if keep_text:
        out["text"] = [{"prompt": lab.decode(ids[i, :P]), "continuation": lab.decode(ids[i, P:]),
                        "gold": gold[i].item(), "proxy": proxy[i].item()} for i in range(0, keep_text * samples, samples)]
    return out


# ---- the reward model ----------------------------------------------------------------------------
def train_reward_model(lab: Lab, pairs: list[PreferencePair], train_idx, seed: int, steps: int, shuffle_labels=False,
                       pool: str | None = None):
    """r_φ: RewardModel(π_ref) trained on the pairs with the Bradley–Terry loss (train/align), through fit.
    shuffle_labels swaps chosen and rejected at random (a control: no signal left to learn).
    pool: the head's input (groundup.model.reward); None = the settings' rm_pool."""
    s = lab.s
    chosen, rejected, _ = pair_tensors([pairs[i] for i in train_idx], lab.tokenizer.vocab_size)
    if shuffle_labels:
        flip = torch.from_numpy(np.random.default_rng(seed + 99).random(len(chosen)) < 0.5)
        chosen, rejected = torch.where(flip[:, None], rejected, chosen), torch.where(flip[:, None], chosen, rejected)
    rm = RewardModel(lab.ref, pool=pool or s.rm_pool)
    settings = AlignSettings(steps=steps, lr=s.rm_lr, batch_size=s.rm_batch, seed=seed, device=s.device)
    engine = align_engine(rm, align_run_config(lab.config, settings), lab.device)
    torch.manual_seed(seed)
    fit(engine, PairBatches((chosen, rejected), s.rm_batch, seed, lab.device), steps, lr=s.rm_lr,
        grad_clip=settings.grad_clip, loss=reward_model_loss())
    return rm.eval()


@torch.no_grad()
def reward_model_quality(rm, pairs: list[PreferencePair], idx) -> dict:
    """On held-out pairs: accuracy on the (noisy) labels, and agreement with the gold judge where the
    gold scores differ: sign(r_w − r_l) = sign(g_w − g_l)."""
    chosen, rejected, _ = pair_tensors([pairs[i] for i in idx])
    margin = (rm(chosen) - rm(rejected)).double()
    gold = torch.tensor([pairs[i].gold_chosen - pairs[i].gold_rejected for i in idx], dtype=torch.float64)
    decided = gold != 0
    agree = ((margin > 0) == (gold > 0))[decided].double()
    return {"label_accuracy": (margin > 0).double().mean().item(),
            "gold_agreement": agree.mean().item() if decided.any() else 0.5,
            "gold_decided_pairs": int(decided.sum()), "held_out_pairs": len(idx)}


# ---- the policies ----------------------------------------------------------------------------------
def fresh_policy(lab: Lab):
    """π_θ = a trainable copy of π_ref (the methods freeze π_ref itself: the copy's flags are reset)."""
    policy = copy.deepcopy(lab.ref)
    for p in policy.parameters():
        p.requires_grad_(True)
    return policy


def train_rl(lab: Lab, rm, pool: torch.Tensor, beta: float, seed: int, steps: int, length: int, prompts_per_step: int,
             samples: int, lr: float, on_step=None):
    """π_θ from π_ref by align.rl.rl_optimize (REINFORCE, leave-one-out baseline, KL folded into the
    return) toward r_φ; on_step(policy, record) after every step (the over-optimisation curve)."""
    policy = fresh_policy(lab)
    settings = RLSettings(beta=beta, steps=steps, prompts_per_step=prompts_per_step, samples_per_prompt=samples,
                          prompt_len=pool.shape[1], length=length, lr=lr, seed=seed)
    hook = None if on_step is None else (lambda record: on_step(policy, record))
    records, _ = rl_optimize(policy, lab.ref, model_reward(rm), pool, settings, config=lab.config,
                             on_step=hook)
    return policy.eval(), records


def train_dpo(lab: Lab, pairs_tensors, beta: float, seed: int, steps: int, batch: int, lr: float):
    """π_θ from π_ref by DPO (train/align.dpo_step_loss against the frozen π_ref) on the pairs, through fit."""
    policy = fresh_policy(lab)
    settings = AlignSettings(steps=steps, lr=lr, batch_size=batch, seed=seed, device=lab.s.device)
    engine = align_engine(policy, align_run_config(lab.config, settings), lab.device)
    torch.manual_seed(seed)
    fit(engine, PairBatches(pairs_tensors, batch, seed, lab.device), steps, lr=lr, grad_clip=settings.grad_clip,
        loss=dpo_step_loss(lab.ref, beta))
    return policy.eval()


@torch.no_grad()
def best_of_n_sweep(lab: Lab, rm, prompts: torch.Tensor, seed: int) -> dict:
    """n_max samples per prompt from π_ref; best-of-n keeps the first n's argmax of r_φ. Its KL is the
    analytic log n − (n − 1)/n (checked exactly on the enumerable setting)."""
    s = lab.s
    n_max = max(s.best_of_n)
    P = prompts.shape[1]
    ids = sample_continuations(lab.ref, prompts.repeat_interleave(n_max, dim=0), s.length, seed)
    proxy = rm(ids).double().view(len(prompts), n_max)
    gold = lab.gold(ids[:, P:]).view(len(prompts), n_max)
    out = {}
    for n in s.best_of_n:
        pick = proxy[:, :n].argmax(1, keepdim=True)
        out[str(n)] = {"n": n, "proxy": proxy.gather(1, pick).mean().item(), "gold": gold.gather(1, pick).mean().item(),
                       "kl": analytic_kl(n)}
    return out


def label_by_reward(lab: Lab, rm, prompts: torch.Tensor, n: int, length: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Pairs for DPO on the exact setting: two continuations of a prompt from π_ref, the label drawn by
    Bradley–Terry on r_φ itself with scale 1 (P(a ≻ b) = σ(r_a − r_b)), so that DPO's optimum is π* for
    r_φ exactly. Returns (chosen_ids, rejected_ids, prompt_len)."""
    x = prompts[torch.from_numpy(np.random.default_rng(seed).integers(0, len(prompts), n))]
    ids = sample_continuations(lab.ref, x.repeat_interleave(2, dim=0), length, seed)
    with torch.no_grad():
        r = rm(ids).double().view(n, 2).numpy()
    a_wins = torch.from_numpy(draw_labels(r[:, 0], r[:, 1], 1.0, np.random.default_rng(seed + 1)))
    a, b = ids[0::2], ids[1::2]
    chosen = torch.where(a_wins[:, None], a, b)
    rejected = torch.where(a_wins[:, None], b, a)
    return chosen, rejected, torch.full((n,), prompts.shape[1], dtype=torch.long)


def exact_setting(lab: Lab, rm, seed: int, say=print) -> dict:
    """π* by enumeration of the V^L continuations of a few prompts under r_φ, its frontier over β, and
    RL, DPO and best-of-n trained/evaluated on the same prompts: each one's exact J and gap to J(π*)."""
    s = lab.s
    L = s.exact_length
    prompts = prompts_from_corpus(lab.tokenizer, s.corpus, s.exact_prompts, s.prompt_len, 5000 + seed)
    V = lab.tokenizer.vocab_size
    logp_ref = exact.continuation_logprobs(lab.ref, prompts, L)
    rewards = exact.reward_table(lambda ids: rm(ids), prompts, V, L)
    out = {"continuations": V**L, "frontier": exact.frontier(logp_ref, rewards, s.exact_frontier), "betas": {}}
    pairs = label_by_reward(lab, rm, prompts, s.exact_pairs, L, seed)
    for beta in s.exact_betas:
        star = exact.optimum(logp_ref, rewards, beta)
        row = {"J_star": star["J"], "reward_star": star["reward"], "kl_star": star["kl"],
               "ref": exact.objective(logp_ref, logp_ref, rewards, beta)}
        rl, _ = train_rl(lab, rm, prompts, beta, seed, s.exact_rl_steps, L, s.exact_prompts, s.exact_rl_samples, s.exact_lr)
        row["rl"] = exact.exact_objective(rl, prompts, L, logp_ref, rewards, beta)
        dpo = train_dpo(lab, pairs, beta, seed, s.exact_dpo_steps, s.dpo_batch, s.exact_lr)
        row["dpo"] = exact.exact_objective(dpo, prompts, L, logp_ref, rewards, beta)
        for name in ("ref", "rl", "dpo"):
            row[name].pop("per_prompt")
        bon = {}
        for n in s.best_of_n:
            logp_bon = exact.best_of_n_distribution(logp_ref, rewards, n)
            o = exact.objective(logp_bon, logp_ref, rewards, beta)
            bon[str(n)] = {"J": o["J"], "reward": o["reward"], "kl": o["kl"], "gap": o["gap"],
                           "kl_bound": analytic_kl(n)}
        row["best_of_n"] = bon
        best = max(bon.values(), key=lambda b: b["J"])
        row["best_of_n_best_J"] = best["J"]
        row["best_of_n_best_gap"] = best["gap"]
        out["betas"][key(beta)] = row
        say(f"  exact β={beta:g}: J* {star['J']:+.4f}; gap RL {row['rl']['gap']:.4f}, DPO {row['dpo']['gap']:.4f}, "
            f"best-of-n {best['gap']:.4f}, π_ref {row['ref']['gap']:.4f}")
    return out


def overoptimisation(curve: dict) -> dict:
    """Along RL training at the smallest β (Gao et al. 2022's x-axis: KL grows with the steps): the gold
    and proxy rewards at the middle measurement and at the last one. gold_drop > 0 with proxy_rise > 0
    is the proxy still climbing while the gold reward turned down."""
    mid, last = (len(curve["step"]) - 1) // 2, len(curve["step"]) - 1
    return {"mid_step": curve["step"][mid], "last_step": curve["step"][last],
            "gold_mid": curve["gold"][mid], "gold_last": curve["gold"][last],
            "proxy_mid": curve["proxy"][mid], "proxy_last": curve["proxy"][last],
            "kl_mid": curve["kl"][mid], "kl_last": curve["kl"][last],
            "gold_drop": curve["gold"][mid] - curve["gold"][last], "proxy_rise": curve["proxy"][last] - curve["proxy"][mid],
            "gold_peak_step": curve["step"][int(np.argmax(curve["gold"]))]}


# ---- one seed --------------------------------------------------------------------------------------
def run_seed(lab: Lab, seed: int, say=print) -> dict:
    s = lab.s
    ref_hash = weights_sha256(lab.ref)
    P = s.prompt_len
    pref_prompts = prompts_from_corpus(lab.tokenizer, s.corpus, s.n_pairs, P, 1000 + seed, split="val")
    pairs = pairs_from_model(lab.ref, lab.tokenizer, pref_prompts, s.length, seed, bt_scale=s.bt_scale, judge=lab.judge)
    train_idx, test_idx = split_pairs(len(pairs), s.held_out, seed)
    rm = train_reward_model(lab, pairs, train_idx, seed, s.rm_steps)
    out = {"preferences": {"pairs": len(pairs),
                           "gold_tied": float(np.mean([p.gold_chosen == p.gold_rejected for p in pairs])),
                           "label_agrees_with_gold": float(np.mean([p.gold_chosen > p.gold_rejected for p in pairs
                                                                     if p.gold_chosen != p.gold_rejected]))},
           "reward_model": reward_model_quality(rm, pairs, test_idx)}
    say(f"  r_φ: held-out label accuracy {out['reward_model']['label_accuracy']:.3f}, gold agreement "
        f"{out['reward_model']['gold_agreement']:.3f}")
    if s.rm_pool != "last":  # the usual reward model, on the same pairs and steps: what the pooling buys
        last = train_reward_model(lab, pairs, train_idx, seed, s.rm_steps, pool="last")
        out["reward_model_last_token"] = reward_model_quality(last, pairs, test_idx)
        say(f"  r_φ with the head on the last token instead: gold agreement "
            f"{out['reward_model_last_token']['gold_agreement']:.3f}")

    eval_prompts = prompts_from_corpus(lab.tokenizer, s.corpus, s.eval_prompts, P, 2000 + seed, split="val")
    pool = prompts_from_corpus(lab.tokenizer, s.corpus, 4096, P, 3000 + seed, split="train")
    eval_seed = 4000 + seed

    def evaluate_policy(policy, text=0):
        return measure(lab, policy, rm, eval_prompts, eval_seed, s.eval_samples, text)

    out["ref"] = evaluate_policy(lab.ref, s.n_samples_shown)
    out["rl"], out["dpo"], out["rl_curves"] = {}, {}, {}
    for beta in s.betas:
        curve = {"step": [], "proxy": [], "gold": [], "kl": []}

        def on_step(policy, record, curve=curve):
            if record["step"] % s.curve_every == 0:
                m = measure(lab, policy, rm, eval_prompts, eval_seed + record["step"], 1)
                for name, k in (("proxy", "proxy"), ("gold", "gold"), ("kl", "kl_k1")):
                    curve[name].append(m[k])
                curve["step"].append(record["step"])

        policy, records = train_rl(lab, rm, pool, beta, seed, s.rl_steps, s.length, s.rl_prompts, s.rl_samples,
                                   s.rl_lr, on_step)
        out["rl"][key(beta)] = {**evaluate_policy(policy, s.n_samples_shown),
                                "train_reward_last": records[-1]["reward"], "train_kl_k1_last": records[-1]["kl_k1"]}
        out["rl_curves"][key(beta)] = curve
        chosen, rejected, plen = pair_tensors([pairs[i] for i in train_idx], lab.tokenizer.vocab_size)
        dpo = train_dpo(lab, (chosen, rejected, plen), beta, seed, s.dpo_steps, s.dpo_batch, s.dpo_lr)
        out["dpo"][key(beta)] = evaluate_policy(dpo, s.n_samples_shown)
        say(f"  β={beta:g}: RL proxy {out['rl'][key(beta)]['proxy']:+.3f} gold {out['rl'][key(beta)]['gold']:+.3f} "
            f"KL {out['rl'][key(beta)]['kl_k1']:.2f}; DPO proxy {out['dpo'][key(beta)]['proxy']:+.3f} gold "
            f"{out['dpo'][key(beta)]['gold']:+.3f} KL {out['dpo'][key(beta)]['kl_k1']:.2f}")
    out["best_of_n"] = best_of_n_sweep(lab, rm, eval_prompts, eval_seed)
    for method in ("rl", "dpo", "best_of_n"):  # paired with π_ref: the same prompts, the same r_φ and judge
        for m in out[method].values():
            m["proxy_gain"] = m["proxy"] - out["ref"]["proxy"]
            m["gold_gain"] = m["gold"] - out["ref"]["gold"]
    out["overoptimisation"] = overoptimisation(out["rl_curves"][key(min(s.betas))])
    out["exact"] = exact_setting(lab, rm, seed, say)
    out["reference_unchanged"] = weights_sha256(lab.ref) == ref_hash == lab.base["weights_sha256"]
    if not out["reference_unchanged"]:
        raise GroundupError("π_ref's weights changed during the run (they must not): this is a bug")
    return out


def make_results(settings: Settings, lab: Lab, seeds: list[int], per_seed: list[dict], mode: str,
                 wall_seconds: float) -> dict:
    """results.json: sample texts go to "samples" (strings are not aggregated), out of per_seed."""
    samples, plain = [], []
    for r in per_seed:
        res = copy.deepcopy(r["results"])
        texts = {"ref": res["ref"].pop("text", [])}
        for method in ("rl", "dpo"):
            for b, m in res[method].items():
                texts[f"{method} β={b}"] = m.pop("text", [])
        samples.append({"seed": r["seed"], "texts": texts})
        plain.append({**r, "results": res})
    config = {**asdict(settings), "seeds_requested": seeds, "base_seed": BASE_SEED, "gold": GoldJudge.name}
    return harness.make_results(LAB, VERSION, config, plain, mode, wall_seconds,
                                {"base": lab.base, "samples": samples})


def run_lab(settings: Settings, seeds: list[int], out: str | Path, mode: str = "default", say=print) -> dict:
    """π_ref, then every seed; results.json, report.md and the plots in `out` (rewritten after each seed)."""
    settings.validate()
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    start = time.perf_counter()
    try:
        lab = Lab(settings, say)

        def write(done: list[dict]) -> dict:
            results = make_results(settings, lab, seeds, done, mode, time.perf_counter() - start)
            harness.write_outputs(report, results, out)
            return results

        per_seed = harness.run_seeds(lambda seed: run_seed(lab, seed, say), seeds, say, after_each=write)
        return write(per_seed)
    finally:
        torch.set_num_threads(threads)  # the caller's setting back (a test session, a notebook)


# ---- the command line -----------------------------------------------------------------------------
def add_arguments(parser) -> None:
    parser.add_argument("--quick", action="store_true", help="1 seed, tiny models, a few steps: under 2 minutes")
    harness.add_arguments(parser, DEFAULT_SEEDS, DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=1337, help="the first seed; seed k is SEED + k")
    parser.add_argument("--device", default="cpu", help="cpu (default), auto, cuda, cuda:N, mps")
    parser.add_argument("--base-steps", type=int, help="training steps of π_ref (default 1500)")
    parser.add_argument("--rl-steps", type=int, help="RL steps per β (default 150)")
    parser.add_argument("--dpo-steps", type=int, help="DPO steps per β (default 150)")
    parser.add_argument("--threads", type=int, help="torch threads (default 1)")


def run(args) -> int:
    if args.report_from:
        return harness.report_from(report, LAB, args, DEFAULT_OUT)
    changes = {"device": args.device,
               **harness.positive_options(args, ("base_steps", "rl_steps", "dpo_steps", "threads"))}
    settings = Settings.quick(**changes) if args.quick else Settings(**changes)
    seeds = harness.lab_seeds(args, DEFAULT_SEEDS)
    out = args.out or DEFAULT_OUT
    results = run_lab(settings, seeds, out, mode="quick" if args.quick else "default")
    harness.print_verdicts(report.verdicts(results), out, results["wall_seconds"])
    return 0
