"""The MoE lab, run once per seed on the harness: every model trained through groundup.train.loop.fit
(the project's one step: cross-entropy plus the model's balance loss, GPT.aux_loss), then measured."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from groundup.accounting import state_memory
from groundup.config import load_config
from groundup.data import BatchSampler
from groundup.errors import ConfigError, GroundupError
from groundup.labs import harness
from groundup.labs.moe import mixed, probes, report
from groundup.model import GPT
from groundup.train.engine import build_engine
from groundup.train.loop import Hooks, fit
from groundup.train.schedule import lr_at
from groundup.train.trainer import fixed_batches, load_data
from groundup.util.device import pick_device

LAB = "moe"
VERSION = 1
DEFAULT_SEEDS = 3
DEFAULT_OUT = "runs/moe"


@dataclass
class Settings:
    """Every knob of the lab. `Settings.quick()` is the tiny version the tests run.

    Equal active compute: an MoE with E experts, k per token, each expert of hidden width
    H = ffn_mult·C / k does the FFN matmuls of the dense model (k·2·C·H = 2·C·ffn_mult·C per token),
    plus a router of E·C. The dense model of equal *total* parameters has ffn_mult·E/k."""

    device: str = "cpu"
    threads: int = 1  # torch threads (the default run is sized for 2 cores, one thread each)
    corpus: str = "shakespeare"
    block_size: int = 64
    batch_size: int = 16
    n_head: int = 4
    sizes: tuple[str, ...] = ("2x64", "2x128")  # LAYERSxWIDTH; the first is the small model of 2–5
    ffn_mult: int = 4
    n_experts: int = 8
    experts_per_token: int = 2
    balance_loss: float = 0.01  # α of the Switch balance loss (the no-balance control has 0)
    steps: int = 600
    lr: float = 3e-3
    eval_every: int = 50
    eval_batches: int = 4
    k_values: tuple[int, ...] = (1, 2, 4)  # with E = n_experts
    e_values: tuple[int, ...] = (4, 8, 16)  # with k = experts_per_token
    capacity_factors: tuple[float, ...] = (0.5, 1.0, 1.25, 2.0)
    equal_total_steps: int = 600  # the dense model with as many parameters as the MoE (0 = skip)
    mixed_chars: int = 400_000  # characters from each domain of the mixed corpus
    chunk_chars: int = 2_000
    mixed_steps: int = 600
    mi_sequences: int = 64
    permutations: int = 200

    @classmethod
    def quick(cls, **changes) -> "Settings":
        small = dict(sizes=("2x32", "1x48"), block_size=32, batch_size=8, steps=8, eval_every=4, eval_batches=1,
                     k_values=(1, 2), e_values=(4, 8), capacity_factors=(0.5, 1.25), equal_total_steps=8,
                     mixed_chars=40_000, chunk_chars=1_000, mixed_steps=8, mi_sequences=16, permutations=20)
        return cls(**{**small, **changes})

    def validate(self) -> None:
        for name in ("steps", "eval_every", "eval_batches", "mixed_steps", "mi_sequences", "permutations"):
            if getattr(self, name) < 1:
                raise GroundupError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not self.sizes:
            raise GroundupError("--sizes needs at least one LAYERSxWIDTH model")
        for size in self.sizes:
            parse_size(size)
        for k in (*self.k_values, self.experts_per_token):
            if any((self.ffn_mult * parse_size(size)[1]) % k for size in self.sizes):
                raise GroundupError(f"k = {k} does not divide the dense hidden width ffn_mult·C: experts of equal "
                                    "active compute need an integer width; pick widths divisible by every k")


def parse_size(text: str) -> tuple[int, int]:
    try:
        layers, width = (int(p) for p in text.lower().split("x"))
    except ValueError:
        raise GroundupError(f"--sizes: a model is LAYERSxWIDTH such as 2x64, got {text!r}") from None
    if layers < 1 or width < 1:
        raise GroundupError(f"--sizes: layers and width must be positive, got {text!r}")
    return layers, width


# ---- the models ------------------------------------------------------------------------------------
def moe_fields(s: Settings, width: int, n_experts: int, k: int, balance: float) -> dict:
    """Model fields of an MoE whose active FFN compute equals the dense model's (H = ffn_mult·C/k)."""
    return {"n_experts": n_experts, "experts_per_token": k, "expert_hidden": s.ffn_mult * width // k,
            "balance_loss": balance, "dropless": True, "moe_every": 1}


def run_specs(s: Settings) -> dict[str, dict]:
    """name → model fields of every model a seed trains on the main corpus, in training order
    (dense and MoE of each size side by side, so both see the same machine load)."""
    E, k = s.n_experts, s.experts_per_token
    out = {}
    for size in s.sizes:
        layers, width = parse_size(size)
        shape = {"n_layer": layers, "n_embd": width, "ffn_mult": s.ffn_mult}
        out[f"dense-{size}"] = {**shape, "n_experts": 0}
        out[f"moe-{size}"] = {**shape, **moe_fields(s, width, E, k, s.balance_loss)}
    size = s.sizes[0]
    layers, width = parse_size(size)
    shape = {"n_layer": layers, "n_embd": width, "ffn_mult": s.ffn_mult}
    out["moe-no-balance"] = {**shape, **moe_fields(s, width, E, k, 0.0)}
    for kk in s.k_values:
        if kk != k:
            out[f"moe-k{kk}"] = {**shape, **moe_fields(s, width, E, kk, s.balance_loss)}
    for EE in s.e_values:
        if EE != E:
            out[f"moe-E{EE}"] = {**shape, **moe_fields(s, width, EE, k, s.balance_loss)}
    if s.equal_total_steps:
        out["dense-equal-total"] = {**shape, "n_experts": 0, "ffn_mult": s.ffn_mult * E // k}
    return out


def base_name(s: Settings) -> str:
    return f"moe-{s.sizes[0]}"


def run_config(s: Settings, fields: dict, seed: int, steps: int, vocab_size: int = 0, corpus: str | None = None):
    overrides = [f"corpus={corpus or s.corpus}", "tokenizer=char", f"block_size={s.block_size}",
                 f"batch_size={s.batch_size}", f"n_head={s.n_head}", f"max_steps={steps}",
                 f"learning_rate={s.lr}", f"min_lr={s.lr / 10}", f"warmup_steps={max(1, steps // 10)}",
                 f"seed={seed}", f"device={s.device}", f"threads={s.threads}", f"vocab_size={vocab_size}"]
    overrides += [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in fields.items()]
    try:
        return load_config(None, overrides)
    except ConfigError as e:
        raise GroundupError(f"the lab's model settings are not a valid model: {e}") from None


@torch.no_grad()
def evaluate_routing(model: GPT, batches) -> tuple[float, dict[int, dict]]:
    """Mean cross-entropy over `batches` (the validation loss, without the auxiliary terms) and each
    sparse block's routing over them: {layer: {indices (n·B·T, k), dropped, assignments, entropy_nats}}."""
    was = model.training
    model.eval()
    total, routing = 0.0, {}
    for x, y in batches:
        logits, _ = model(x)
        total += F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1)).item()
        for layer, st in model.routing_stats().items():
            r = routing.setdefault(layer, {"indices": [], "dropped": 0, "assignments": 0, "entropy_nats": []})
            r["indices"].append(st.expert_indices.cpu().numpy())
            r["dropped"] += int(st.dropped)
            r["assignments"] += st.assignments
            r["entropy_nats"].append(float(st.entropy))
    model.train(was)
    for r in routing.values():
        r["entropy_nats"] = float(np.mean(r["entropy_nats"]))
    return total / len(batches), routing


def routing_summary(routing: dict[int, dict], n_experts: int) -> dict:
    """Balance of each layer's load on the evaluation batches, and the mean over layers."""
    layers = []
    for layer in sorted(routing):
        r = routing[layer]
        bal = probes.load_balance(probes.counts_per_expert(np.concatenate(r["indices"]), n_experts))
        layers.append({**bal, "entropy_bits": r["entropy_nats"] / math.log(2),
                       "entropy_fraction": r["entropy_nats"] / math.log(n_experts)})
    keys = ("max_over_mean", "cv", "effective_experts", "entropy_bits", "entropy_fraction")
    return {"mean": {k: float(np.mean([l[k] for l in layers])) for k in keys}, "layers": layers}


class _Clock(Hooks):
    """Seconds spent inside training steps (evaluation and measurement excluded)."""

    def __init__(self):
        self.seconds, self._start = 0.0, None

    def before_step(self, step: int) -> None:
        self._start = time.perf_counter()

    def after_step(self, step: int, result) -> int:
        self.seconds += time.perf_counter() - self._start
        return step


def train_run(s: Settings, fields: dict, seed: int, steps: int, train_tokens: np.ndarray, val_tokens: np.ndarray,
              vocab_size: int, corpus: str | None = None, at_start=None) -> tuple[dict, GPT, list]:
    """One model trained for `steps` through fit (the project's step and its default loss: cross-
    entropy + the balance loss), evaluated at step 0 and every eval_every steps. Every model of a seed
    sees the same batches (BatchSampler seeded by the seed). Returns (record, model, val batches)."""
    config = run_config(s, fields, seed, steps, vocab_size, corpus)
    device = pick_device(s.device)
    engine = build_engine(config, device)
    model = engine.model
    val = fixed_batches(val_tokens, config, seed, engine, s.eval_batches)
    sampler = BatchSampler(train_tokens, config.model.block_size, config.train.batch_size, seed=seed)
    tokens_per_step = config.train.batch_size * config.model.block_size
    flops_per_token = model.flops_per_token()
    E = config.model.n_experts
    clock = _Clock()
    curve = {"step": [], "val_loss": [], "seconds": [], "flops": []}
    balance = {k: [] for k in ("max_over_mean", "cv", "effective_experts", "entropy_bits", "entropy_fraction")}

    def measure(step: int) -> None:
        loss, routing = evaluate_routing(model, val)
        curve["step"].append(step)
        curve["val_loss"].append(loss)
        curve["seconds"].append(clock.seconds)
        curve["flops"].append(flops_per_token * tokens_per_step * step)
        if E:
            for k, v in routing_summary(routing, E)["mean"].items():
                balance[k].append(v)

    if at_start is not None:
        at_start(model)
    measure(0)
    fit(engine, lambda: engine.batch(*sampler.next_batch()), steps, lr=lambda step: lr_at(step, config.train),
        grad_clip=config.train.grad_clip, hooks=clock, every=s.eval_every, on_every=measure)
    if curve["step"][-1] != steps:
        measure(steps)
    tokens_per_s = tokens_per_step * steps / clock.seconds
    record = {"val_loss": curve["val_loss"][-1], "train_seconds": clock.seconds, "tokens_per_s": tokens_per_s,
              "flops_per_token": flops_per_token, "achieved_flops_per_s": flops_per_token * tokens_per_s,
              "params_total": model.num_params(), "params_active": model.num_params(active=True),
              "state_bytes": state_memory(model.num_params(), mixed_precision=False).state, "curve": curve}
    if E:
        record["balance"] = balance
    return record, model, val


# ---- the analyses ------------------------------------------------------------------------------------
def loss_at(curve: dict, x_key: str, x: float) -> float:
    """Validation loss at x (steps, FLOPs or seconds) by linear interpolation between evaluations."""
    return float(np.interp(x, curve[x_key], curve["val_loss"]))


def same_compute(dense: dict, moe: dict) -> dict:
    """MoE − dense validation loss (negative: MoE better) at the end (per step: the same steps and
    tokens), at the FLOPs both spent (the smaller total), and at the training seconds both spent."""
    out = {"dense_loss": dense["val_loss"], "moe_loss": moe["val_loss"],
           "per_step": moe["val_loss"] - dense["val_loss"],
           "speed_ratio": moe["tokens_per_s"] / dense["tokens_per_s"],
           "flops_rate_ratio": moe["achieved_flops_per_s"] / dense["achieved_flops_per_s"],
           "flops_per_token_ratio": moe["flops_per_token"] / dense["flops_per_token"]}
    for name, key in (("per_flop", "flops"), ("per_second", "seconds")):
        x = min(dense["curve"][key][-1], moe["curve"][key][-1])
        a, b = loss_at(dense["curve"], key, x), loss_at(moe["curve"], key, x)
        out[name] = b - a
        out[f"{name}_at"] = x
        out[f"{name}_dense_loss"], out[f"{name}_moe_loss"] = a, b
    return out


def capacity_sweep(s: Settings, model: GPT, val) -> dict:
    """The trained (dropless) model evaluated with capacity: for each factor, the fraction of
    assignments the layers dropped (their RoutingStats), the same count recomputed by
    probes.dropped_assignments from the routing of that same forward (the indices are recorded
    before drops), and the validation loss."""
    E = model.config.n_experts
    out = {"factors": list(s.capacity_factors), "dropped": [], "dropped_recomputed": [], "val_loss": [],
           "uniform_ideal": [max(0.0, 1.0 - cf) for cf in s.capacity_factors]}
    for cf in s.capacity_factors:
        capped = GPT(replace(model.config, dropless=False, capacity_factor=cf)).to(model.lm_head.weight.device)
        capped.load_weights(model.weights())
        loss, routing = evaluate_routing(capped, val)
        out["val_loss"].append(loss)
        out["dropped"].append(sum(r["dropped"] for r in routing.values()) / sum(r["assignments"] for r in routing.values()))
        recomputed = sum(probes.dropped_assignments(idx, E, cf) for r in routing.values() for idx in r["indices"])
        out["dropped_recomputed"].append(recomputed / sum(r["assignments"] for r in routing.values()))
    return out


_MIXED: dict = {}


def mixed_data(s: Settings) -> mixed.MixedData:
    key = (s.mixed_chars, s.chunk_chars)
    if key not in _MIXED:
        _MIXED.clear()
        _MIXED[key] = mixed.build_mixed(chars_per_domain=s.mixed_chars, chunk_chars=s.chunk_chars)
    return _MIXED[key]


def domain_routing(model: GPT, x: np.ndarray, y: np.ndarray, labels: np.ndarray, s: Settings, seed: int) -> dict:
    """Per sparse layer: the fraction of each domain's assignments to each expert and I(expert; domain)
    against the sequence-shuffled null, on labelled windows x (S, T)."""
    device = model.lm_head.weight.device
    batches = [(torch.from_numpy(x).to(device), torch.from_numpy(y).to(device))]
    loss, routing = evaluate_routing(model, batches)
    E, D = model.config.n_experts, len(mixed.DOMAINS)
    layers = []
    for layer in sorted(routing):
        idx = np.concatenate(routing[layer]["indices"])
        table = probes.contingency(idx, labels.reshape(-1), E, D)
        test = probes.mi_test(idx, labels, E, D, s.permutations, seed=seed + layer)
        layers.append({**test, "specialised_experts": probes.specialised_experts(table),
                       "fractions": probes.domain_fractions(table)})
    return {"val_loss": loss, "layers": layers}


def specialisation(s: Settings, seed: int) -> dict:
    """An MoE of the small size trained on the mixed corpus; routing by domain at step 0 and at the end."""
    data = mixed_data(s)
    layers, width = parse_size(s.sizes[0])
    fields = {"n_layer": layers, "n_embd": width, "ffn_mult": s.ffn_mult,
              **moe_fields(s, width, s.n_experts, s.experts_per_token, s.balance_loss)}
    x, y, labels = mixed.labelled_windows(data.val, data.val_labels, s.block_size, s.mi_sequences, seed)
    at_init = {}
    record, model, _ = train_run(s, fields, seed, s.mixed_steps, data.train, data.val, data.tokenizer.vocab_size,
                                 corpus="shakespeare",
                                 at_start=lambda m: at_init.update(domain_routing(m, x, y, labels, s, seed)))
    trained = domain_routing(model, x, y, labels, s, seed)

    def summary(r: dict) -> dict:
        ls = r["layers"]
        return {"mi_bits": float(np.mean([l["mi_bits"] for l in ls])),
                "mi_fraction": float(np.mean([l["mi_fraction"] for l in ls])),
                "null_p99": float(np.mean([l["null_p99"] for l in ls])),
                "excess_bits": float(np.mean([l["excess_bits"] for l in ls])),
                "max_p_value": float(max(l["p_value"] for l in ls)),
                "above_null_p99_all_layers": all(l["mi_bits"] > l["null_p99"] for l in ls),
                "specialised_experts": float(np.mean([l["specialised_experts"] for l in ls])),
                "layers": [{k: v for k, v in l.items() if k != "fractions"} for l in ls]}

    trained_summary, init_summary = summary(trained), summary(at_init)
    return {"val_loss": record["val_loss"], "domain_share": float(labels.mean()),
            "trained": trained_summary, "init": init_summary,
            "mi_gain_bits": trained_summary["mi_bits"] - init_summary["mi_bits"],
            "detail": {"trained_fractions": [l["fractions"] for l in trained["layers"]],
                       "init_fractions": [l["fractions"] for l in at_init["layers"]]}}


def paired(runs: dict, a: str, b: str) -> float:
    """Final validation loss of run a minus run b (same seed, same batches)."""
    return runs[a]["val_loss"] - runs[b]["val_loss"]


def run_seed(s: Settings, seed: int, say=print) -> dict:
    """Every model of one seed, then every analysis of them."""
    base_config = run_config(s, {}, seed, s.steps)
    data = load_data(base_config)
    vocab = data.tokenizer.vocab_size
    runs, models = {}, {}
    for name, fields in run_specs(s).items():
        steps = s.equal_total_steps if name == "dense-equal-total" else s.steps
        record, model, val = train_run(s, fields, seed, steps, data.train, data.val, vocab)
        runs[name] = record
        if name in (base_name(s), "moe-no-balance"):
            models[name] = (model, val)
        say(f"  {name}: val loss {record['val_loss']:.4f}, {record['tokens_per_s']:,.0f} tokens/s "
            f"({record['params_total']:,} parameters, {record['params_active']:,} active)")

    base = base_name(s)
    out = {"runs": runs,
           "same_compute": {size: same_compute(runs[f"dense-{size}"], runs[f"moe-{size}"]) for size in s.sizes}}
    out["balance"] = {"with": {k: v[-1] for k, v in runs[base]["balance"].items()},
                      "without": {k: v[-1] for k, v in runs["moe-no-balance"]["balance"].items()}}
    out["balance"]["difference"] = {k: out["balance"]["without"][k] - out["balance"]["with"][k] for k in out["balance"]["with"]}
    out["balance"]["loss_difference"] = paired(runs, "moe-no-balance", base)
    out["capacity"] = {"with": capacity_sweep(s, *models[base]), "without": capacity_sweep(s, *models["moe-no-balance"])}
    name_k = {kk: (base if kk == s.experts_per_token else f"moe-k{kk}") for kk in s.k_values}
    name_e = {EE: (base if EE == s.n_experts else f"moe-E{EE}") for EE in s.e_values}
    out["k_and_e"] = {"k": {f"k{kk}": {"val_loss": runs[n]["val_loss"], "vs_base": paired(runs, n, base),
                                       "params_total": runs[n]["params_total"], "tokens_per_s": runs[n]["tokens_per_s"]}
                            for kk, n in name_k.items()},
                      "E": {f"E{EE}": {"val_loss": runs[n]["val_loss"], "vs_base": paired(runs, n, base),
                                       "params_total": runs[n]["params_total"], "tokens_per_s": runs[n]["tokens_per_s"]}
                            for EE, n in name_e.items()}}
    if len(s.e_values) > 1:
        lo, hi = min(s.e_values), max(s.e_values)
        out["k_and_e"]["most_minus_fewest_experts"] = paired(runs, name_e[hi], name_e[lo])
    if 1 in s.k_values and s.experts_per_token in s.k_values and s.experts_per_token != 1:
        out["k_and_e"]["top1_minus_topk"] = paired(runs, name_k[1], base)
    dense = f"dense-{s.sizes[0]}"
    cost = {"moe_vs_equal_active": {"tokens_per_s_ratio": runs[base]["tokens_per_s"] / runs[dense]["tokens_per_s"],
                                    "memory_ratio": runs[base]["state_bytes"] / runs[dense]["state_bytes"],
                                    "loss_difference": paired(runs, base, dense)}}
    if "dense-equal-total" in runs:
        cost["moe_vs_equal_total"] = {"tokens_per_s_ratio": runs[base]["tokens_per_s"] / runs["dense-equal-total"]["tokens_per_s"],
                                      "memory_ratio": runs[base]["state_bytes"] / runs["dense-equal-total"]["state_bytes"],
                                      "loss_difference": paired(runs, base, "dense-equal-total")}
    out["cost"] = cost
    say("  specialisation: training on the mixed corpus")
    out["specialisation"] = specialisation(s, seed)
    return out


def make_results(settings: Settings, seeds: list[int], per_seed: list[dict], mode: str, wall_seconds: float) -> dict:
    """results.json: per-expert shares and domain fractions go to "detail" (expert i of one seed is
    not expert i of another), out of what the harness aggregates."""
    detail, plain = [], []
    for r in per_seed:
        res = dict(r["results"])
        spec = dict(res["specialisation"])
        detail.append({"seed": r["seed"], "specialisation": spec.pop("detail")})
        res["specialisation"] = spec
        plain.append({**r, "results": res})
    config = {**asdict(settings), "seeds_requested": seeds, "runs": run_specs(settings),
              "domains": list(mixed.DOMAINS)}
    return harness.make_results(LAB, VERSION, config, plain, mode, wall_seconds, {"detail": detail})


def run_lab(settings: Settings, seeds: list[int], out: str | Path, mode: str = "default", say=print) -> dict:
    """Every seed, then results.json, report.md and the plots in `out` (rewritten after each seed)."""
    settings.validate()
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    start = time.perf_counter()

    def write(done: list[dict]) -> dict:
        results = make_results(settings, seeds, done, mode, time.perf_counter() - start)
        harness.write_outputs(report, results, out)
        return results

    try:
        per_seed = harness.run_seeds(lambda seed: run_seed(settings, seed, say), seeds, say, after_each=write)
    finally:
        torch.set_num_threads(threads)  # the caller's setting back (a test session, a notebook)
    return write(per_seed)


# ---- the command line -----------------------------------------------------------------------------
def add_arguments(parser) -> None:
    parser.add_argument("--quick", action="store_true", help="1 seed, tiny models, a few steps: seconds")
    harness.add_arguments(parser, DEFAULT_SEEDS, DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=1337, help="the first seed; seed k is SEED + k")
    parser.add_argument("--device", default="cpu", help="cpu (default), auto, cuda, cuda:N, mps")
    parser.add_argument("--steps", type=int, help="training steps of every model on the main corpus (default 600)")
    parser.add_argument("--mixed-steps", type=int, help="training steps of the model on the mixed corpus (default 600)")
    parser.add_argument("--threads", type=int, help="torch threads (default 1)")


def run(args) -> int:
    if args.report_from:
        return harness.report_from(report, LAB, args, DEFAULT_OUT)
    changes = {"device": args.device, **harness.positive_options(args, ("steps", "mixed_steps", "threads"))}
    if "steps" in changes:
        changes["equal_total_steps"] = changes["steps"]
    settings = Settings.quick(**changes) if args.quick else Settings(**changes)
    seeds = harness.lab_seeds(args, DEFAULT_SEEDS)
    out = args.out or DEFAULT_OUT
    results = run_lab(settings, seeds, out, mode="quick" if args.quick else "default")
    harness.print_verdicts(report.verdicts(results), out, results["wall_seconds"])
    return 0
