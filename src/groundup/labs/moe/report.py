"""The MoE lab's verdicts, report.md and plots, from results.json alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from groundup.labs.harness import band, lower, setup_line, short, stat, upper
from groundup.report.markdown import table
from groundup.report.plots import new_figure, save_figure

PLOTS = {"step": "moe_loss_per_step.png", "flops": "moe_loss_per_flop.png", "seconds": "moe_loss_per_second.png",
         "balance": "moe_balance.png", "entropy": "moe_router_entropy.png", "capacity": "moe_capacity.png",
         "domains": "moe_domain_fractions.png", "mi": "moe_mutual_information.png", "k_e": "moe_k_and_e.png",
         "cost": "moe_cost.png"}
COLLAPSE = 0.5  # "collapsed": fewer than half the experts effectively in use (2^H(load) ≤ E/2)
DROP_OK = 0.05  # "few tokens dropped": at most 5% of assignments at capacity factor 1.25
SPEED_OK = 0.8  # "costs like the small model": at least 0.8× the equal-active dense model's tokens/s


def _n(results: dict) -> int:
    return len(results["seeds"])


def _on(n: int) -> str:
    return "95% interval" if n > 1 else "single value (1 seed)"


def direction(summary: dict, better: str = "MoE better", worse: str = "MoE worse") -> str:
    """From a difference (MoE − dense, lower is better): better when the interval lies below 0,
    worse when above, else unresolved."""
    if upper(summary) < 0:
        return better
    if lower(summary) > 0:
        return worse
    return "no difference resolved"


def _first(results: dict, cf: float) -> int | None:
    factors = results["config"]["capacity_factors"]
    return factors.index(cf) if cf in factors else None


def verdicts(results: dict) -> dict[str, str]:
    """One sentence per claim: the measurement, the verdict, and what would have refuted it."""
    agg, cfg, n = results["aggregate"], results["config"], _n(results)
    sizes, E, k = cfg["sizes"], cfg["n_experts"], cfg["experts_per_token"]
    sc = agg["same_compute"]
    out = {}
    for key, label, unit in (("per_step", "per step (same steps, same tokens)", ""),
                             ("per_flop", "per FLOP (at the FLOPs both spent)", ""),
                             ("per_second", "per second of training (at the seconds both spent)", "")):
        parts = [f"{size}: MoE − dense {stat(sc[size][key], '.3f', True)} nats → {direction(sc[size][key])}" for size in sizes]
        outcomes = {direction(sc[size][key]) for size in sizes}
        verdict = ("Supported" if outcomes == {"MoE better"} else "NOT supported" if outcomes == {"MoE worse"}
                   else "Not resolved" if outcomes == {"no difference resolved"} else "Mixed")
        out[f"same compute, {key.replace('_', ' ').replace('flop', 'FLOP')}"] = (
            f"{verdict}: at equal active FLOPs per token (E = {E}, k = {k}, expert width = dense width / {k}), validation loss "
            f"{label}: " + "; ".join(parts) + f". Supported only if the {_on(n)} lies below 0 at every size; refuted by an "
            "interval above 0 (the dense model better).")
    speed = "; ".join(f"{size}: {short(sc[size]['speed_ratio'], '.2f')}× the dense tokens/s, "
                      f"{short(sc[size]['flops_rate_ratio'], '.2f')}× its achieved FLOP/s" for size in sizes)
    wins_step = all(direction(sc[s]["per_step"]) == "MoE better" for s in sizes)
    loses_time = any(direction(sc[s]["per_second"]) == "MoE worse" for s in sizes)
    out["same compute, the trade"] = (
        ("MoE wins per step and loses per second here, as small MoEs often do. " if wins_step and loses_time else "")
        + f"The MoE trains at {speed} (nanochat's anecdote: MFU 46% → 35% with its MoE, which was not merged — karpathy/nanochat PR #798). "
        "A FLOP/s ratio of 1 would mean the sparse layer costs only its FLOPs; below 1 is the routing, sorting and "
        "scatter overhead that FLOP counts leave out.")

    bal = agg["balance"]
    eff_without, eff_with = bal["without"]["effective_experts"], bal["with"]["effective_experts"]
    collapsed = upper(eff_without) <= COLLAPSE * E
    not_collapsed = lower(eff_without) > COLLAPSE * E
    out["balance: collapse without the loss"] = (
        f"{'Supported' if collapsed else 'NOT supported' if not_collapsed else 'Not resolved'}: with α = 0 the "
        f"load is spread over {stat(eff_without, '.2f')} effective experts of {E} (2^H of the load shares, mean over "
        f"layers, on validation batches after training; max/mean load {short(bal['without']['max_over_mean'], '.2f')}). "
        f"Collapse is defined as ≤ {COLLAPSE:g}·E = {COLLAPSE * E:g} effective experts; supported if the {_on(n)} lies at "
        "or below it, refuted if above.")
    d = bal["difference"]["max_over_mean"]
    out["balance: the loss evens the load"] = (
        f"{'Supported' if lower(d) > 0 else 'NOT supported' if upper(d) < 0 else 'Not resolved'}: max/mean load "
        f"{short(bal['with']['max_over_mean'], '.2f')} with α = {cfg['balance_loss']} vs "
        f"{short(bal['without']['max_over_mean'], '.2f')} without (difference {stat(d, '.2f', True)}); effective experts "
        f"{short(eff_with, '.2f')} vs {short(eff_without, '.2f')}; validation loss without − with "
        f"{stat(bal['loss_difference'], '.3f', True)}. Refuted if the imbalance without the loss is not above the "
        "imbalance with it.")

    cap = agg["capacity"]["with"]
    i = _first(results, 1.25)
    if i is not None:
        dropped = cap["dropped"][i]
        out["capacity"] = (
            f"{'Supported' if upper(dropped) <= DROP_OK else 'NOT supported' if lower(dropped) > DROP_OK else 'Not resolved'}: "
            f"with capacity factor 1.25 (Switch's setting) the trained router's layers (α = {cfg['balance_loss']}) drop "
            f"{stat(dropped, '.3f')} of the assignments (perfectly even routing would drop 0); "
            + ", ".join(f"{cf:g}: {short(cap['dropped'][j], '.3f')}" for j, cf in enumerate(cfg['capacity_factors']))
            + f". Claim 'a capacity factor around 1–1.25 drops few tokens' judged against ≤ {DROP_OK:.0%} dropped; "
            "refuted above it. Measured by evaluating the dropless-trained model with capacity.")

    sp = agg["specialisation"]
    tr, init = sp["trained"], sp["init"]
    above = tr["above_null_p99_all_layers"]["all"]
    out["specialisation"] = (
        f"{'Supported' if above else 'NOT supported'} that routing depends on the domain: after training on Shakespeare + "
        f"Python, the expert carries I(expert; domain) = {stat(tr['mi_bits'], '.3f')} bits of the "
        f"{short(tr['layers'][0]['h_domain_bits'], '.2f')} bit of domain entropy (mean over layers; "
        f"{short(tr['mi_fraction'], '.2f')} of it), against a sequence-shuffled null whose 99th percentile is "
        f"{short(tr['null_p99'], '.3f')} bits; above it in every layer of {'every' if above else 'not every'} seed "
        f"(largest p = {max(r['results']['specialisation']['trained']['max_p_value'] for r in results['per_seed']):.3f}). "
        f"{short(tr['specialised_experts'], '.1f')} experts per layer take ≥ 90% of their tokens from one domain. "
        f"The untrained router already carries {stat(init['mi_bits'], '.3f')} bits (training changed the MI by "
        f"{stat(sp['mi_gain_bits'], '.3f', True)} bits): the two domains use different characters, so some routing by "
        "domain needs no training. Refuted by a trained MI within the shuffled null; "
        "tests/test_lab_moe.py shows the probe scoring ~0 on a router that ignores its input.")

    ke = agg["k_and_e"]
    if "most_minus_fewest_experts" in ke:
        d = ke["most_minus_fewest_experts"]
        lo, hi = min(cfg["e_values"]), max(cfg["e_values"])
        out["more experts"] = (
            f"{ {'MoE better': 'Supported', 'MoE worse': 'NOT supported'}.get(direction(d), 'Not resolved') }: at "
            f"fixed active compute (k = {k}), E = {hi} − E = {lo} validation loss {stat(d, '.3f', True)} nats. "
            "Claim (Switch): more experts, same FLOPs, lower loss; refuted by an interval above 0.")
    if "top1_minus_topk" in ke:
        d = ke["top1_minus_topk"]
        verdict = {"no difference resolved": "Consistent with Switch", "MoE better": "Top-1 better here",
                   "MoE worse": f"Top-{k} better here (as GShard and Mixtral choose)"}[direction(d)]
        out["top-1 routing"] = (
            f"{verdict}: at fixed active compute (E = {E}), top-1 − top-{k} validation loss {stat(d, '.3f', True)} nats. "
            f"Switch claims top-1 loses nothing; refuted (for us) by an interval above 0.")

    cost = agg["cost"]
    act = cost["moe_vs_equal_active"]
    speed_ok = lower(act["tokens_per_s_ratio"]) >= SPEED_OK
    sentence = (f"{'Supported' if speed_ok else 'NOT supported'} that an MoE computes like the small model: it trains at "
                f"{short(act['tokens_per_s_ratio'], '.2f')}× (±: 95% CI) the tokens/s of the dense model of equal active parameters "
                f"(threshold {SPEED_OK}×) while holding {short(act['memory_ratio'], '.2f')}× its parameter + optimizer memory")
    if "moe_vs_equal_total" in cost:
        tot = cost["moe_vs_equal_total"]
        sentence += (f"; against the dense model of equal total parameters: {short(tot['tokens_per_s_ratio'], '.2f')}× "
                     f"its tokens/s, {short(tot['memory_ratio'], '.2f')}× its memory, validation loss MoE − it "
                     f"{stat(tot['loss_difference'], '.3f', True)}")
    out["cost"] = sentence + (". The memory is not sparse: every expert is held (and, training, has gradients and Adam "
                              f"state). Refuted if the tokens/s ratio's {_on(n)} falls below {SPEED_OK}.")
    return out


ABOUT = """**Claims.** A router sends each token to k of E expert FFNs, so (1) an MoE beats a dense model of the
same computational cost — Switch Transformer: "up to 7× increases in pre-training speed with the same
computational resources" (Fedus et al. 2021); (2) without a balance loss routing collapses onto a few
experts, and with it (α·E·Σᵢ fᵢ·Pᵢ, α = 0.01) the load is even enough that a capacity factor near 1–1.25
drops few tokens; (3) experts specialise in domains; (4) more experts at the same compute help (Switch),
and top-1 routing is enough (Switch) — Mixtral and GShard use top-2; (5) parameters grow far faster than
compute — Mixtral 8×7B: 46.7B parameters, 12.9B active per token (Jiang et al. 2024).

```
groundup lab moe                 # 3 seeds, the default run (sized for ≤ 15 min on 2 CPU cores, 1 thread)
groundup lab moe --quick         # 1 seed, tiny models, a few steps
groundup lab moe --report-from runs/moe/results.json --out DIR
```

Every model is a character-level GPT trained through groundup.train.loop.fit (the project's one step,
whose default loss is cross-entropy + the model's balance loss), same seed → same initial batches for
every architecture. The MoE layer is groundup.model.moe (top-k of a softmax router, gates renormalised
over the k chosen — Mixtral's choice, not Switch's —, experts in every block, dropless while training).
Equal active compute: each expert has hidden width H = ffn_mult·C / k, so k experts do the dense FFN's
matmuls; the router adds E·C weights per layer (in the FLOP counts, GPT.flops_per_token). Validation
loss is cross-entropy alone (no auxiliary term), on fixed validation batches.
"""


def _curve_table(results: dict, size: str) -> str:
    runs = results["aggregate"]["runs"]
    d, m = runs[f"dense-{size}"]["curve"], runs[f"moe-{size}"]["curve"]
    return table(["step", "dense val loss", "MoE val loss", "dense s", "MoE s"],
                 [[int(s["mean"]), short(a), short(b), f"{x['mean']:.1f}", f"{y['mean']:.1f}"]
                  for s, a, b, x, y in zip(d["step"], d["val_loss"], m["val_loss"], d["seconds"], m["seconds"])])


def report(results: dict) -> str:
    agg, cfg, n = results["aggregate"], results["config"], _n(results)
    runs, sc = agg["runs"], agg["same_compute"]
    E, k, sizes = cfg["n_experts"], cfg["experts_per_token"], cfg["sizes"]
    v = verdicts(results)
    lines = ["# Lab: what a mixture of experts buys", "", ABOUT, "## Setup", "", setup_line(results), "",
             f"Corpus {cfg['corpus']} (characters), context {cfg['block_size']}, batch {cfg['batch_size']}, "
             f"{cfg['steps']} steps (lr {cfg['lr']}, warmup 10%, cosine to lr/10), evaluation every {cfg['eval_every']} "
             f"steps on {cfg['eval_batches']} fixed validation batches; torch threads {cfg['threads']}; device {cfg['device']}. "
             f"Training seconds count the steps only (not evaluation).", "",
             table(["model", "layers × width", "E", "k", "expert width", "parameters", "active", "training FLOPs/token",
                    "tokens/s", "val loss"],
                   [[name, f"{spec['n_layer']}×{spec['n_embd']}", spec.get("n_experts", 0) or "—",
                     spec.get("experts_per_token", "—") if spec.get("n_experts") else "—",
                     spec.get("expert_hidden", "—") if spec.get("n_experts") else f"{spec['ffn_mult'] * spec['n_embd']} (dense)",
                     f"{runs[name]['params_total']['mean']:,.0f}", f"{runs[name]['params_active']['mean']:,.0f}",
                     f"{runs[name]['flops_per_token']['mean']:,.0f}", short(runs[name]["tokens_per_s"], ",.0f"),
                     short(runs[name]["val_loss"])] for name, spec in cfg["runs"].items()]), "",
             "## Verdicts", ""]
    lines += [f"- **{key}.** {sentence}" for key, sentence in v.items()]

    lines += ["", "## 1. Same compute: dense vs MoE", "",
              f"MoE − dense validation loss (negative: the MoE is better), ± the 95% interval over {n} seed(s):", "",
              table(["size", "per step", "per FLOP", "at FLOPs", "per second", "at seconds", "tokens/s MoE ÷ dense",
                     "FLOP/s MoE ÷ dense"],
                    [[size, short(sc[size]["per_step"], '.3f', True), short(sc[size]["per_flop"], '.3f', True),
                      f"{sc[size]['per_flop_at']['mean']:.3g}", short(sc[size]["per_second"], '.3f', True),
                      f"{sc[size]['per_second_at']['mean']:.1f} s", short(sc[size]["speed_ratio"], '.2f'),
                      short(sc[size]["flops_rate_ratio"], '.2f')] for size in sizes]), ""]
    for size in sizes:
        lines += [f"Learning curves, {size} (mean over seeds):", "", _curve_table(results, size), ""]
    lines += [f"![loss per step]({PLOTS['step']})", f"![loss per FLOP]({PLOTS['flops']})",
              f"![loss per second]({PLOTS['seconds']})", ""]

    bal, cap = agg["balance"], agg["capacity"]
    lines += ["## 2. Balance and capacity", "",
              f"Load on the fixed validation batches after training (mean over layers); α = {cfg['balance_loss']} vs 0. "
              "Effective experts = 2^H(load shares): E when even, k when every token picks the same k.", "",
              table(["measure", f"α = {cfg['balance_loss']}", "α = 0", "difference (α=0 − α)"],
                    [[name, short(bal["with"][key], '.3f'), short(bal["without"][key], '.3f'),
                      short(bal["difference"][key], '.3f', True)]
                     for name, key in (("max/mean load", "max_over_mean"), ("coefficient of variation", "cv"),
                                       ("effective experts", "effective_experts"),
                                       ("router entropy (bits)", "entropy_bits"),
                                       ("router entropy / log₂E", "entropy_fraction"))]), "",
              f"![load over training]({PLOTS['balance']})", f"![router entropy]({PLOTS['entropy']})", "",
              "Dropped assignments when the dropless-trained models are evaluated with a capacity of "
              "⌈cf·k·N/E⌉ per expert per forward (N = one validation batch); 'recomputed' counts the drops "
              "from the same forward's routing with the Switch rule (probes.dropped_assignments), independently of "
              "the layer's own count. Drops in one layer change the next layer's input, so neither is the dropless "
              "routing cut at capacity:", "",
              table(["capacity factor", "dropped (α)", "recomputed (α)", "val loss (α)", "dropped (α = 0)",
                     "val loss (α = 0)", "even routing would drop"],
                    [[f"{cf:g}", short(cap["with"]["dropped"][j], '.4f'), short(cap["with"]["dropped_recomputed"][j], '.4f'),
                      short(cap["with"]["val_loss"][j]), short(cap["without"]["dropped"][j], '.4f'),
                      short(cap["without"]["val_loss"][j]), f"{max(0.0, 1 - cf):.2f}"]
                     for j, cf in enumerate(cfg["capacity_factors"])]), "",
              f"![dropped vs capacity]({PLOTS['capacity']})", ""]

    sp = agg["specialisation"]
    tr, init = sp["trained"], sp["init"]
    lines += ["## 3. Specialisation by domain", "",
              f"A {sizes[0]} MoE (E = {E}, k = {k}) trained {cfg['mixed_steps']} steps on {cfg['mixed_chars']:,} ASCII characters "
              f"of each of {', '.join(cfg['domains'])} (chunks of {cfg['chunk_chars']:,} characters shuffled together; every "
              f"token labelled with its domain); measured on {cfg['mi_sequences']} labelled validation windows "
              f"(Python share {short(sp['domain_share'], '.2f')}); validation loss {stat(sp['val_loss'])}. The null "
              f"shuffles the label rows of whole windows across windows, {cfg['permutations']} times.", "",
              table(["layer", "MI trained (bits)", "null mean", "null 99th pct", "p", "MI at init", "experts ≥ 90% one domain"],
                    [[j, short(l["mi_bits"], '.3f'), short(l["null_mean"], '.4f'), short(l["null_p99"], '.4f'),
                      short(l["p_value"], '.3f'), short(init["layers"][j]["mi_bits"], '.3f'),
                      short(l["specialised_experts"], '.1f')] for j, l in enumerate(tr["layers"])]), "",
              f"Fraction of each domain's assignments sent to each expert (seed {results['seeds'][0]}, after training):", ""]
    fr = results["detail"][0]["specialisation"]["trained_fractions"]
    for j, layer in enumerate(fr):
        lines += [table([f"layer {j}"] + [f"e{e}" for e in range(len(layer[0]))],
                        [[dom] + [f"{x:.2f}" for x in row] for dom, row in zip(cfg["domains"], layer)]), ""]
    lines += [f"![domain fractions]({PLOTS['domains']})", f"![mutual information]({PLOTS['mi']})", "",
              "Mixtral's routing analysis (Jiang et al. 2024, §5) found no obvious assignment of experts by topic "
              "(ArXiv, biology, philosophy) but structure by syntax (e.g. Python's indentation and `self`); two domains "
              "with different alphabets of characters, as here, are the easy case for finding a dependence.", ""]

    ke = agg["k_and_e"]
    lines += ["## 4. k and E at fixed active compute", "",
              f"Small model ({sizes[0]}); expert width = dense width / k, so active FFN compute is the dense model's.", "",
              table(["setting", "val loss", "− (k = %d, E = %d)" % (k, E), "parameters", "tokens/s"],
                    [[f"E = {E}, {key.replace('k', 'k = ')}", short(x["val_loss"]), short(x["vs_base"], '.3f', True),
                      f"{x['params_total']['mean']:,.0f}", short(x["tokens_per_s"], ',.0f')] for key, x in ke["k"].items()]
                    + [[f"{key.replace('E', 'E = ')}, k = {k}", short(x["val_loss"]), short(x["vs_base"], '.3f', True),
                        f"{x['params_total']['mean']:,.0f}", short(x["tokens_per_s"], ',.0f')] for key, x in ke["E"].items()]),
              "", f"![k and E]({PLOTS['k_e']})", ""]

    cost = agg["cost"]
    names = [f"dense-{sizes[0]}", f"moe-{sizes[0]}"] + (["dense-equal-total"] if "dense-equal-total" in runs else [])
    lines += ["## 5. Cost", "",
              "Memory: fp32 weights + gradients + AdamW moments, 16 bytes per parameter (accounting.state_memory); "
              "every expert counts, active or not. Speed: training tokens/s of the steps alone.", "",
              table(["model", "parameters", "active", "state memory (MB)", "tokens/s", "FLOP/s achieved", "val loss"],
                    [[name, f"{runs[name]['params_total']['mean']:,.0f}", f"{runs[name]['params_active']['mean']:,.0f}",
                      f"{runs[name]['state_bytes']['mean'] / 1e6:.2f}", short(runs[name]["tokens_per_s"], ',.0f'),
                      f"{runs[name]['achieved_flops_per_s']['mean']:.3g}", short(runs[name]["val_loss"])] for name in names]),
              "", table(["MoE against", "tokens/s ratio", "memory ratio", "val loss difference (MoE − it)"],
                        [[label, short(c["tokens_per_s_ratio"], '.2f'), short(c["memory_ratio"], '.2f'),
                          short(c["loss_difference"], '.3f', True)]
                         for label, c in (("dense, equal active parameters", cost["moe_vs_equal_active"]),
                                          ("dense, equal total parameters", cost.get("moe_vs_equal_total"))) if c]),
              "", f"![cost]({PLOTS['cost']})", ""]

    lines += ["## How this differs from the published results", "",
              "- **Switch Transformer** (Fedus et al. 2021) measured its up-to-7× speed-up with 64–128 experts on T5-Base/"
              "Large-sized models, ~10⁸–10⁹ active parameters, hundreds of thousands of steps over C4 on TPUs, with expert "
              "parallelism spreading the experts over devices. Ours: ≤ 16 experts, dense baselines of "
              + " and ".join(f"{runs[f'dense-{size}']['params_total']['mean']:,.0f}" for size in sizes)
              + f" parameters, {cfg['steps']} steps of {cfg['batch_size'] * cfg['block_size']:,} characters, on CPU "
              "threads, where routing, sorting and scattering tokens are a large share of matmuls this small (the "
              "FLOP/s ratio of section 1). Their gains grow with the number of experts; ours has few, and a short run.",
              "- **Mixtral 8×7B** (Jiang et al. 2024): 46.7B parameters, 12.9B active (top-2 of 8 SwiGLU experts in every "
              f"layer), a ratio of 3.6. Ours at E = {E}, k = {k}: "
              f"{runs[f'moe-{sizes[0]}']['params_total']['mean'] / runs[f'moe-{sizes[0]}']['params_active']['mean']:.2f}; "
              "the ratio is set by E/k and the share of parameters in the FFNs, not by scale. Mixtral's memory is that "
              "of a 47B model, as ours is that of its total, not its active, parameters (section 5).",
              "- **nanochat** (an anecdote, not a paper): its MoE branch is quoted in issue #17 as dropping MFU from 46% "
              "to 35%; the pull request that distils it (karpathy/nanochat PR #798, not merged) concludes that at "
              "nanochat's scale MoE \"improves bpb-per-FLOP but loses on wall clock\" (a ~1.3–1.6× memory-traffic tax "
              "of sparse experts against a ~1.1× compute gain). Our FLOP/s ratio in section 1 is the same kind of "
              "measurement on CPU threads.",
              ""]
    return "\n".join(lines)


# ---- plots ---------------------------------------------------------------------------------------------
def plots(results: dict, out: str | Path) -> list[Path]:
    out, agg, cfg = Path(out), results["aggregate"], results["config"]
    runs, n, sizes, E = agg["runs"], _n(results), cfg["sizes"], cfg["n_experts"]
    note = f"mean of {n} seeds, band: 95% CI" if n > 1 else "1 seed"
    paths = []
    for key, xlabel, scale in (("step", "training step", 1.0), ("flops", "training FLOPs (active, per GPT.flops_per_token)", 1.0),
                               ("seconds", "training seconds (steps only)", 1.0)):
        fig, ax = new_figure(f"Validation loss, dense vs MoE at equal active compute ({note})", xlabel, "validation loss (nats/char)")
        for j, size in enumerate(sizes):
            for name, style in ((f"dense-{size}", "-"), (f"moe-{size}", "--")):
                c = runs[name]["curve"]
                band(ax, [x["mean"] * scale for x in c[key]], c["val_loss"], name, ls=style, color=f"C{j}")
        if key == "flops":
            ax.set_xscale("log")
        ax.legend()
        paths.append(save_figure(fig, out / PLOTS[key if key != "flops" else "flops"]))

    base = f"moe-{sizes[0]}"
    steps = [x["mean"] for x in runs[base]["curve"]["step"]]
    fig, ax = new_figure(f"Expert load over training, validation batches ({note})", "training step", "effective experts 2^H(load)")
    for name, label in ((base, f"α = {cfg['balance_loss']}"), ("moe-no-balance", "α = 0")):
        band(ax, steps, runs[name]["balance"]["effective_experts"], label)
    ax.axhline(E, color="gray", lw=0.8, ls=":", label=f"even ({E})")
    ax.axhline(COLLAPSE * E, color="gray", lw=0.8, ls="--", label="collapse threshold")
    ax.set_ylim(0, E * 1.05)
    ax.legend()
    paths.append(save_figure(fig, out / PLOTS["balance"]))

    fig, ax = new_figure(f"Router entropy over training ({note})", "training step", "mean H(p) / log₂E")
    for name, label in ((base, f"α = {cfg['balance_loss']}"), ("moe-no-balance", "α = 0")):
        band(ax, steps, runs[name]["balance"]["entropy_fraction"], label)
    ax.set_ylim(0, 1.05)
    ax.legend()
    paths.append(save_figure(fig, out / PLOTS["entropy"]))

    cap = agg["capacity"]
    fig, ax = new_figure(f"Dropped assignments vs capacity factor ({note})", "capacity factor", "fraction of assignments dropped")
    cfs = cfg["capacity_factors"]
    band(ax, cfs, cap["with"]["dropped"], f"α = {cfg['balance_loss']}", marker="o")
    band(ax, cfs, cap["without"]["dropped"], "α = 0", marker="s")
    ax.plot(cfs, [max(0.0, 1 - cf) for cf in cfs], ":", color="gray", label="perfectly even routing")
    ax.legend()
    paths.append(save_figure(fig, out / PLOTS["capacity"]))

    fr = results["detail"][0]["specialisation"]["trained_fractions"]
    fig, ax = new_figure(f"Share of each domain's assignments per expert (seed {results['seeds'][0]}, trained)",
                         "expert", "layer · domain", figsize=(7, 1.2 + 0.9 * len(fr)))
    grid = np.array([row for layer in fr for row in layer])
    ax.grid(False)
    im = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0)
    ax.set_yticks(range(len(grid)), [f"L{j} {d}" for j in range(len(fr)) for d in cfg["domains"]])
    ax.set_xticks(range(grid.shape[1]))
    fig.colorbar(im, ax=ax)
    paths.append(save_figure(fig, out / PLOTS["domains"]))

    sp = agg["specialisation"]
    fig, ax = new_figure(f"I(expert; domain) per layer ({note}, bars: 95% CI)", "layer", "bits")
    layers = np.arange(len(sp["trained"]["layers"]))
    for off, (label, part) in zip((-0.2, 0.2), (("trained", sp["trained"]), ("untrained router", sp["init"]))):
        m = [l["mi_bits"] for l in part["layers"]]
        ax.bar(layers + off, [x["mean"] for x in m], width=0.35, label=label,
               yerr=[[x["mean"] - lower(x) for x in m], [upper(x) - x["mean"] for x in m]], capsize=3)
    ax.scatter(layers - 0.2, [l["null_p99"]["mean"] for l in sp["trained"]["layers"]], marker="_", s=400, color="black",
               label="shuffled null, 99th pct", zorder=3)
    ax.set_xticks(layers)
    ax.legend()
    paths.append(save_figure(fig, out / PLOTS["mi"]))

    ke = agg["k_and_e"]
    fig, ax = new_figure(f"Validation loss at fixed active compute ({note}, bars: 95% CI)", "setting", "validation loss")
    labels = [f"k={key[1:]}, E={E}" for key in ke["k"]] + [f"E={key[1:]}, k={cfg['experts_per_token']}" for key in ke["E"]]
    vals = list(ke["k"].values()) + list(ke["E"].values())
    m = [x["val_loss"] for x in vals]
    ax.errorbar(range(len(m)), [x["mean"] for x in m], yerr=[[x["mean"] - lower(x) for x in m], [upper(x) - x["mean"] for x in m]],
                fmt="o", capsize=4)
    ax.axhline(runs[f"dense-{sizes[0]}"]["val_loss"]["mean"], color="gray", ls="--", label="dense, equal active")
    ax.set_xticks(range(len(m)), labels, rotation=20)
    ax.legend()
    paths.append(save_figure(fig, out / PLOTS["k_e"]))

    names = [f"dense-{sizes[0]}", base] + (["dense-equal-total"] if "dense-equal-total" in runs else [])
    fig, ax = new_figure(f"Cost, relative to the dense model of equal active parameters ({note})", "", "ratio")
    ref = runs[names[0]]
    x = np.arange(len(names))
    ax.bar(x - 0.2, [runs[nm]["tokens_per_s"]["mean"] / ref["tokens_per_s"]["mean"] for nm in names], width=0.4, label="tokens/s")
    ax.bar(x + 0.2, [runs[nm]["state_bytes"]["mean"] / ref["state_bytes"]["mean"] for nm in names], width=0.4,
           label="parameter + optimizer memory")
    ax.set_xticks(x, names)
    ax.legend()
    paths.append(save_figure(fig, out / PLOTS["cost"]))
    return paths
