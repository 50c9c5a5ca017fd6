"""The alignment lab's verdicts, report.md and plots, from results.json alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from groundup.labs.harness import lower, setup_line, short, stat, upper
from groundup.report.markdown import table
from groundup.report.plots import new_figure, save_figure

VERSION = 2  # 2: r_φ's head on the mean over positions, 20,000 pairs, 1500 steps (version 1: last token, at chance)
PLOTS = {"gold": "alignment_frontier_gold.png", "proxy": "alignment_frontier_proxy.png",
         "over": "alignment_overoptimisation.png", "exact": "alignment_exact.png"}

# Published figures (docs: /work/shared/REFERENCES.md; the sources named in each sentence)
DPO_FIG2 = ("Rafailov et al. 2023 (DPO), §6.1 and Fig. 2 (IMDb sentiment, GPT-2-large, a sentiment classifier "
            "as the ground-truth reward): DPO's reward–KL frontier dominates PPO's, PPO-GT (PPO on the true "
            "reward) included")
OPTIMUM = "Rafailov et al. 2023, eq. 4: π*(y|x) = π_ref(y|x)·exp(r(x, y)/β)/Z(x)"
BON_KL = ("Stiennon et al. 2020 / Gao et al. 2022 quote KL(best-of-n ‖ π_ref) = log n − (n − 1)/n; Beirami et al. "
          "2024 show it is an upper bound (not confirmed here beyond our own exact check)")
AZAR = ("Azar et al. 2023 (IPO) argue that DPO on finite preference data can drift far from π_ref whatever β is "
        "(not in REFERENCES.md: check)")
GAO = ("Gao et al. 2022 (scaling laws for reward-model over-optimisation): as KL from the initial policy grows, the "
       "proxy reward keeps rising while the gold reward rises, peaks and falls, for RL and for best-of-n")


def _agg(results: dict) -> dict:
    return results["aggregate"]


def _on(n: int) -> str:
    return "95% interval over seeds" if n > 1 else "single value (1 seed: no interval)"


def _pool(cfg: dict) -> str:
    if cfg.get("rm_pool", "last") == "mean":
        return "the mean of the final hidden states over positions (a sum of local features)"
    return "the last token's final hidden state"


def _last_token_line(agg: dict) -> str:
    """The ablation: the usual reward model (head on the last token), same pairs, same steps."""
    if "reward_model_last_token" not in agg:
        return ""
    last = agg["reward_model_last_token"]
    return (f" The same training with the head on the last token's hidden state (the usual reward model): label "
            f"accuracy {stat(last['label_accuracy'])}, gold agreement {stat(last['gold_agreement'])} — a two-layer "
            "character model does not carry which words occurred to one position well enough; the mean over "
            "positions scores each place a word can sit.")


GOLD_CEILING = 1.0  # VADER's compound score lies in [−1, 1]
SATURATED = 0.9  # a mean gold reward this close to the ceiling leaves no room to rise and then fall


def _gold_ceiling(gold: dict) -> str:
    """When RL's gold reward ends near the judge's own maximum, the policy has optimised the judge
    itself: the turn-down Gao et al. describe cannot show, whatever r_φ does."""
    if lower(gold) < SATURATED:
        return ""
    return (f" The gold reward ended at {stat(gold)}, against the judge's ceiling of {GOLD_CEILING:g}: RL reached the "
            "gold judge's own optimum (the samples below: repeated positive words), so a lexicon judge is as "
            "hackable as r_φ and left no room to turn down; a judge that also scores fluency would be needed to test "
            "the claim.")


def _betas(results: dict) -> list[str]:
    return [f"{b:g}" for b in results["config"]["betas"]]


def _exact_betas(results: dict) -> list[str]:
    return [f"{b:g}" for b in results["config"]["exact_betas"]]


def _points(results: dict, method: str, y: str) -> list[tuple[float, float]]:
    """(mean KL, mean y) of each point of a method, sorted by KL."""
    agg = _agg(results)
    if method == "best_of_n":
        pts = [(m["kl"]["mean"], m[y]["mean"]) for m in agg["best_of_n"].values()]
    else:
        pts = [(agg[method][b]["kl_k1"]["mean"], agg[method][b][y]["mean"]) for b in _betas(results)]
    return sorted(pts)


def _compare(a: list, b: list) -> tuple[int, int]:
    """How many points of frontier `a` lie above / below frontier `b` (linearly interpolated in KL)
    among a's points inside b's KL range."""
    xs, ys = [p[0] for p in b], [p[1] for p in b]
    above = below = 0
    for x, y in a:
        if xs[0] <= x <= xs[-1]:
            ref = float(np.interp(x, xs, ys))
            above += y > ref
            below += y < ref
    return above, below


def _dominance(results: dict, a: str, b: str, y: str) -> str:
    above, below = _compare(_points(results, a, y), _points(results, b, y))
    if above + below == 0:
        return "no overlap in KL"
    word = "above" if below == 0 else "below" if above == 0 else "mixed"
    return f"{word} ({above} of {above + below} points above)"


def _neg(s: dict) -> dict:
    """The summary of −x from that of x."""
    ci = None if s["ci95"] is None else [-s["ci95"][1], -s["ci95"][0]]
    return {**s, "mean": -s["mean"], "ci95": ci}


NAMES = {"rl": "RL (REINFORCE, leave-one-out)", "dpo": "DPO", "best_of_n": "best-of-n"}


def verdicts(results: dict) -> dict[str, str]:
    """One sentence per claim: supported or not, the numbers, and what would have refuted it."""
    agg, n = _agg(results), len(results["seeds"])
    out = {}
    rm = agg["reward_model"]
    ok = lower(rm["gold_agreement"]) > 0.5
    out["reward model"] = (
        f"{'Supported' if ok else 'NOT supported'}: r_φ, trained on Bradley–Terry labels drawn from the gold judge, "
        f"orders held-out pairs whose gold scores differ the way the gold judge does: agreement "
        f"{stat(rm['gold_agreement'])}; label accuracy {short(rm['label_accuracy'])} (the labels are noisy on purpose). "
        "Refuted by an interval reaching 0.5 (chance); tests/test_lab_alignment.py shows the probe at chance for a "
        "reward model trained on shuffled labels.")

    small, large = _betas(results)[-1], _betas(results)[0]
    rl_s, rl_l = agg["rl"][small], agg["rl"][large]
    moved = lower(rl_s["proxy_gain"]) > 0
    ordered = rl_s["kl_k1"]["mean"] > rl_l["kl_k1"]["mean"]
    out["KL controls the move"] = (
        f"{'Supported' if moved and ordered else 'NOT supported'}: RL toward r_φ raises the proxy reward over π_ref by "
        f"{stat(rl_s['proxy_gain'], signed=True)} at β = {small} with KL {short(rl_s['kl_k1'], '.2f')} nats, against "
        f"{short(rl_l['proxy_gain'], signed=True)} at β = {large} with KL {short(rl_l['kl_k1'], '.2f')}. "
        "Refuted if the smallest β's gain interval reached 0 or a larger β moved the policy further (more KL); "
        "tests/test_lab_alignment.py shows a policy at a huge β staying at KL ≈ 0.")

    dpo_vs_rl = _dominance(results, "dpo", "rl", "gold")
    rl_vs_bon = _dominance(results, "rl", "best_of_n", "proxy")
    dpo_vs_bon = _dominance(results, "dpo", "best_of_n", "proxy")
    out["frontier"] = (
        f"Measured, not a yes/no. Gold reward against KL, DPO's points against RL's frontier: {dpo_vs_rl}. Proxy r_φ "
        f"against best-of-n's frontier: RL {rl_vs_bon}; DPO {dpo_vs_bon} (frontiers interpolated in KL, means over "
        f"seeds; a point outside the other's KL range is not compared). Gold gain over π_ref (paired): DPO "
        + ", ".join(f"β = {b}: {short(agg['dpo'][b]['gold_gain'], '.3f', signed=True)}" for b in _betas(results))
        + "; RL " + ", ".join(f"β = {b}: {short(agg['rl'][b]['gold_gain'], '.3f', signed=True)}" for b in _betas(results))
        + f". {DPO_FIG2}; our DPO "
        f"{'agrees' if dpo_vs_rl.startswith('above') else 'does not reproduce that'} at this scale. Would have "
        "refuted the DPO claim here: DPO's points below RL's frontier."
        + ("" if ok else " Caveat: RL optimises r_φ, which orders pairs barely better than chance here, while DPO learns "
           "from the labels themselves; on gold this comparison says more about r_φ than about the two optimisers."))

    oo = agg["overoptimisation"]
    end = agg["rl"][small]
    along = lower(oo["gold_drop"]) > 0 and oo["proxy_rise"]["mean"] > 0  # (a) along training: fell after the middle
    below_ref = upper(end["gold_gain"]) < 0 and lower(end["proxy_gain"]) > 0  # (b) ended below π_ref's gold
    turned = along or below_ref
    rose = [b for b in _betas(results) if lower(agg["rl"][b]["gold_gain"]) > 0]
    rose_text = (f"rose above π_ref's at β = {', '.join(rose)} first" if rose else
                 "never rose above π_ref's beyond noise at any β (no rise before the fall, unlike Gao et al.: r_φ "
                 f"agrees with gold only {short(agg['reward_model']['gold_agreement'])} of the time)")
    out["over-optimisation"] = (
        f"{'Gold turned down' if turned else 'Gold did NOT turn down'} (plainly). (a) Along RL at β = {small}: from step "
        f"{oo['mid_step']['mean']:.0f} (KL {short(oo['kl_mid'], '.2f')}) to step {oo['last_step']['mean']:.0f} (KL "
        f"{short(oo['kl_last'], '.2f')}) the proxy moved by {short(oo['proxy_rise'], signed=True)} and the gold reward "
        f"by {stat(_neg(oo['gold_drop']), signed=True)} ({'fell' if along else 'no fall beyond noise'}). (b) At the end, "
        f"against π_ref on the same prompts: proxy {stat(end['proxy_gain'], signed=True)}, gold "
        f"{stat(end['gold_gain'], signed=True)} ({'gold below π_ref while the proxy rose' if below_ref else 'gold not below π_ref beyond noise'}). "
        f"Across β, RL's gold reward {rose_text}. {GAO}. 'Turned down' needs (a) the gold drop's interval above 0 while the proxy rose, or (b) the gold gain's "
        "interval below 0 while the proxy gain's is above 0; without either, the claim is not shown at our KL range."
        + _gold_ceiling(end["gold"]))

    ex = agg["exact"]["betas"]
    # per seed: J(π*) − J of every trained policy (each seed's own π*), the smallest one
    least = min(r["results"]["exact"]["betas"][b][m]["gap"] for r in results["per_seed"]
                for b in _exact_betas(results) for m in ("rl", "dpo"))
    gaps = "; ".join(f"β = {b}: RL {short(ex[b]['rl']['gap'], '.4f')}, DPO {short(ex[b]['dpo']['gap'], '.4f')}, "
                     f"best-of-n {short(ex[b]['best_of_n_best_gap'], '.4f')}, π_ref {short(ex[b]['ref']['gap'], '.4f')}"
                     for b in _exact_betas(results))
    L, V = results["config"]["exact_length"], results["base"]["vocab_size"]
    below = least >= -1e-9
    out["exact optimum"] = (
        f"{'Supported' if below else 'NOT supported'}: on {V}^{L} = {V ** L:,} continuations enumerated exactly, "
        f"no trained policy beats J(π*) = β·log Z (gap J(π*) − J = β·KL(π‖π*), exact): {gaps} (nats of reward). "
        f"Smallest gap in any seed: {least:.2e}. {OPTIMUM}. Refuted by any positive gap, which the Gibbs variational "
        "principle forbids: a positive one would be a bug in the enumeration (tests/test_align_exact.py).")

    refs = agg["reference_unchanged"]
    out["π_ref unchanged"] = (
        f"{'Supported' if refs['all'] else 'NOT supported'}: π_ref's weights hash "
        f"({results['base']['weights_sha256'][:12]}…) is the same after every method in {refs['n']} seeds. "
        "Refuted by any seed where it changed (the lab raises).")
    return out


def _row(m: dict, label: str, extra: str) -> list:
    gains = ([short(m["proxy_gain"], ".3f", signed=True), short(m["gold_gain"], ".3f", signed=True)]
             if "proxy_gain" in m else ["—", "—"])
    return [label, extra, short(m["kl_k1"], ".2f"), short(m["kl_k3"], ".2f"), short(m["proxy"], ".3f", signed=True),
            short(m["gold"], ".3f", signed=True), *gains]


def report(results: dict) -> str:
    agg, cfg = _agg(results), results["config"]
    base = results["base"]
    lines = ["# Alignment lab: J(θ) = E[r_φ] − β·KL(π_θ ‖ π_ref), measured end to end", "",
             "Preferences from a gold judge (VADER sentiment of the continuation), a reward model r_φ on them, then "
             "RL with a KL penalty, DPO and best-of-n against r_φ — placed on the reward–KL plane, with the gold "
             "reward that stands in for the human, and on a setting small enough to compute the optimum π* exactly.",
             "", "## Setup", "", setup_line(results), "",
             f"π_ref: a char Shakespeare model trained by the lab ({cfg['base_layers']} layers × {cfg['base_embd']}, "
             f"{base['n_params']:,} parameters, {cfg['base_steps']} steps, validation loss {base['val_loss']:.3f} "
             f"nats/char), the same for every seed (seed {cfg['base_seed']}); the seeds vary the preference data, r_φ "
             f"and the policies. Prompts: {cfg['prompt_len']} characters of the validation text; continuations: "
             f"{cfg['length']} characters at temperature 1. {cfg['n_pairs']} preference pairs per seed "
             f"({cfg['held_out']:.0%} held out), labels drawn with P(a ≻ b) = σ((g_a − g_b)/{cfg['bt_scale']}); r_φ: "
             f"π_ref's trunk + a scalar head on {_pool(cfg)}, {cfg['rm_steps']} steps of the Bradley–Terry loss. RL: REINFORCE with a "
             f"leave-one-out baseline, per-token KL folded into the return, {cfg['rl_steps']} steps of "
             f"{cfg['rl_prompts']}×{cfg['rl_samples']} samples; DPO: {cfg['dpo_steps']} steps of {cfg['dpo_batch']} "
             f"pairs; both at β ∈ {{{', '.join(_betas(results))}}}. Best-of-n: n ∈ {{{', '.join(map(str, cfg['best_of_n']))}}} "
             f"from π_ref, ranked by r_φ, KL = log n − (n − 1)/n. Every policy is measured on its own samples "
             f"({cfg['eval_prompts']} prompts × {cfg['eval_samples']}): mean r_φ (proxy), mean gold, KL by k1 and k3.", ""]
    lines += ["## Verdicts", ""] + [f"- **{k}.** {v}" for k, v in verdicts(results).items()] + [""]

    pref = agg["preferences"]
    lines += ["## Preferences and the reward model", "",
              f"Pairs whose two continuations have the same gold score (mostly: no sentiment word in either): "
              f"{short(pref['gold_tied'])}; where they differ, the drawn label agrees with gold "
              f"{short(pref['label_agrees_with_gold'])} of the time. Held-out r_φ: label accuracy "
              f"{stat(agg['reward_model']['label_accuracy'])}, gold agreement {stat(agg['reward_model']['gold_agreement'])}."
              + _last_token_line(agg), ""]

    rows = [_row(agg["ref"], "π_ref", "—")]
    rows += [_row(agg["rl"][b], "RL", f"β = {b}") for b in _betas(results)]
    rows += [_row(agg["dpo"][b], "DPO", f"β = {b}") for b in _betas(results)]
    for n, m in agg["best_of_n"].items():
        rows.append(["best-of-n", f"n = {n}", f"{m['kl']['mean']:.2f} (analytic)", "—", short(m["proxy"], ".3f", signed=True),
                     short(m["gold"], ".3f", signed=True), short(m["proxy_gain"], ".3f", signed=True),
                     short(m["gold_gain"], ".3f", signed=True)])
    lines += ["## The reward–KL frontier", "",
              "KL(π ‖ π_ref) in nats per continuation (k1 and k3 on the policy's own samples); rewards are means over "
              f"the evaluation samples; ± is the {_on(len(results['seeds']))}.", "",
              "Δ columns: the policy minus π_ref on the same prompts in the same seed (r_φ's offset differs from seed "
              "to seed, so the absolute proxy varies a lot; the differences are the comparable numbers).", "",
              table(["method", "setting", "KL (k1)", "KL (k3)", "proxy r_φ", "gold", "Δ proxy", "Δ gold"], rows), "",
              f"![gold reward vs KL]({PLOTS['gold']})", "", f"![proxy reward vs KL]({PLOTS['proxy']})", ""]

    small = _betas(results)[-1]
    curve = agg["rl_curves"][small]
    crow = [[f"{s['mean']:.0f}", short(k, ".2f"), short(p, ".3f", signed=True), short(g, ".3f", signed=True)]
            for s, k, p, g in zip(curve["step"], curve["kl"], curve["proxy"], curve["gold"])]
    lines += ["## Over-optimisation (Gao et al. 2022)", "",
              f"RL at β = {small}, measured every {cfg['curve_every']} steps on fresh samples "
              f"({cfg['eval_prompts']} prompts × 1).", "",
              table(["step", "KL (k1)", "proxy r_φ", "gold"], crow), "", f"![over-optimisation]({PLOTS['over']})", ""]

    ex = agg["exact"]
    fr = ex["frontier"]
    lines += ["## The exact optimum π*", "",
              f"{cfg['exact_prompts']} prompts, continuations of {cfg['exact_length']} characters: all "
              f"{results['base']['vocab_size']}^{cfg['exact_length']} = {ex['continuations']['mean']:,.0f} of them "
              "enumerated; π_ref(y|x) exactly (product of the model's conditionals); r(x, y) = r_φ(x·y) on every y; "
              "π* = π_ref·exp(r/β)/Z, J(π*) = β·log Z, the gap of any policy J(π*) − J(π) = β·KL(π‖π*). RL and DPO are "
              f"trained on the same prompts ({cfg['exact_rl_steps']} / {cfg['exact_dpo_steps']} steps; DPO's pairs "
              "labelled by Bradley–Terry on r_φ itself at scale 1, so with unlimited pairs its target is exactly this "
              f"π*; with {cfg['exact_pairs']} pairs over {ex['continuations']['mean']:,.0f} continuations most "
              "continuations are never seen, and the loss can be lowered by moving mass anywhere the pairs do not "
              f"pin down — {AZAR}); best-of-n's distribution is exact (the n with the highest J at that β is shown).", "",
              table(["β", "E_π*[r]", "KL(π*‖π_ref)"],
                    [[f"{b['mean']:g}", f"{r['mean']:+.3f}", f"{k['mean']:.3f}"] for b, r, k in zip(fr["beta"], fr["reward"], fr["kl"])]), "",
              f"E_π_ref[r] = {fr['reward_ref']['mean']:+.3f}, max_y r = {fr['reward_max']['mean']:+.3f} (means over prompts and seeds).", ""]
    erows = []
    for b in _exact_betas(results):
        e = ex["betas"][b]
        for name, label in (("ref", "π_ref"), ("rl", "RL"), ("dpo", "DPO")):
            erows.append([b, label, short(e[name]["J"], ".4f", signed=True), short(e["J_star"], ".4f", signed=True), short(e[name]["gap"], ".4f"),
                          short(e[name]["kl"], ".3f"), short(e[name]["reward"], ".3f", signed=True)])
        best = max(e["best_of_n"].items(), key=lambda kv: kv[1]["J"]["mean"])
        erows.append([b, f"best-of-{best[0]}", short(best[1]["J"], ".4f", signed=True), short(e["J_star"], ".4f", signed=True),
                      short(best[1]["gap"], ".4f"), short(best[1]["kl"], ".3f"), short(best[1]["reward"], ".3f", signed=True)])
    lines += [table(["β", "policy", "J", "J(π*)", "gap", "KL", "E[r]"], erows), "", f"![exact]({PLOTS['exact']})", ""]
    b0 = _exact_betas(results)[0]
    bon = ex["betas"][b0]["best_of_n"]
    lines += [f"Best-of-n on the enumerable set, exact KL against the quoted log n − (n − 1)/n: "
              + ", ".join(f"n = {n}: {m['kl']['mean']:.3f} vs {m['kl_bound']['mean']:.3f}" for n, m in bon.items())
              + f". {BON_KL}; with a peaked π_ref (few likely continuations) the exact KL is well below it.", ""]

    lines += ["## Samples before and after (first seed)", ""]
    texts = results["samples"][0]["texts"]
    shown = ["ref", f"rl β={_betas(results)[0]}", f"rl β={small}", f"dpo β={_betas(results)[0]}", f"dpo β={small}"]
    for name in shown:
        if name in texts:
            lines += [f"**{name}**", ""]
            for t in texts[name]:
                lines += [f"    {t['prompt']!r} → {t['continuation']!r}  (gold {t['gold']:+.2f}, r_φ {t['proxy']:+.2f})"]
            lines += [""]

    lines += ["## Against the published figures", "",
              f"- {DPO_FIG2}. Here: DPO's points against RL's frontier on gold — {_dominance(results, 'dpo', 'rl', 'gold')}.",
              f"- {GAO}. Here: see the over-optimisation verdict.",
              f"- {BON_KL}.",
              f"- {OPTIMUM}: the exact section computes it.", "",
              "## What this does not show", "",
              f"- A char model writes few sentiment words in {cfg['length']} characters: the gold judge scores most "
              "continuations 0, "
              "so both the labels and the gold reward are sparse; the gold numbers are small and noisy.",
              "- RL and DPO are run for a fixed number of steps at each β, not to convergence: a point is where a method "
              "got in that budget, not its optimum (the exact section measures that gap).",
              "- How r_φ's quality shapes everything downstream: RL and best-of-n see the gold judge only through r_φ "
              f"(held-out gold agreement {short(agg['reward_model']['gold_agreement'])}), DPO through the labels. A "
              "larger reward model or more pairs is the lever this run does not pull (Gao et al. vary both).",
              "- One π_ref (seed fixed): the intervals cover the preference data, r_φ and the policies, not the base model.",
              "- KL is per continuation (summed over its characters), estimated on the policy's own samples; "
              "best-of-n's is the analytic bound, which the exact section shows overstates it at short lengths.",
              ""]
    return "\n".join(lines)


def _err(s: dict) -> float:
    return 0.0 if s["ci95"] is None else (s["ci95"][1] - s["ci95"][0]) / 2


def plots(results: dict, out: str | Path) -> list[Path]:
    out = Path(out)
    agg = _agg(results)
    paths = []
    for y, title in (("gold", "Gold reward (VADER) vs KL(π ‖ π_ref)"), ("proxy", "Proxy reward r_φ vs KL(π ‖ π_ref)")):
        fig, ax = new_figure(title, "KL(π ‖ π_ref), nats per continuation", f"mean {y} reward")
        for method, colour in (("rl", "C0"), ("dpo", "C1"), ("best_of_n", "C2")):
            if method == "best_of_n":
                ms = list(agg["best_of_n"].values())
                kl, kerr = [m["kl"]["mean"] for m in ms], [0.0] * len(ms)
            else:
                ms = [agg[method][b] for b in _betas(results)]
                kl, kerr = [m["kl_k1"]["mean"] for m in ms], [_err(m["kl_k1"]) for m in ms]
            ax.errorbar(kl, [m[y]["mean"] for m in ms], xerr=kerr, yerr=[_err(m[y]) for m in ms], fmt="o-", color=colour,
                        label=NAMES[method], capsize=2)
        ax.axhline(agg["ref"][y]["mean"], color="grey", lw=0.8, ls=":", label="π_ref")
        ax.legend(fontsize=8)
        paths.append(save_figure(fig, out / PLOTS[y]))

    small = _betas(results)[-1]
    curve = agg["rl_curves"][small]
    fig, ax = new_figure(f"Over-optimisation: RL at β = {small} and best-of-n", "KL(π ‖ π_ref), nats", "reward")
    kl = [0.0] + [k["mean"] for k in curve["kl"]]  # the curve starts at π_ref (step 0)
    for y, style in (("proxy", "s--"), ("gold", "o-")):
        points = [agg["ref"][y]] + curve[y]
        ax.errorbar(kl, [v["mean"] for v in points], yerr=[_err(v) for v in points], fmt=style, color="C0",
                    mfc="none" if y == "proxy" else "C0", label=f"RL {y}", capsize=2)
        ms = list(agg["best_of_n"].values())
        ax.plot([m["kl"]["mean"] for m in ms], [m[y]["mean"] for m in ms], style, color="C2", label=f"best-of-n {y}",
                mfc="none" if y == "proxy" else "C2")
    ax.legend(fontsize=8)
    paths.append(save_figure(fig, out / PLOTS["over"]))

    ex = agg["exact"]
    fr = ex["frontier"]
    fig, ax = new_figure("Exact setting: π*'s frontier and the trained policies", "KL(π ‖ π_ref), nats", "E[r_φ]")
    ax.plot([k["mean"] for k in fr["kl"]], [r["mean"] for r in fr["reward"]], "k-", label="π* over β (exact)")
    markers = {"rl": "o", "dpo": "s"}
    for i, b in enumerate(_exact_betas(results)):
        e = ex["betas"][b]
        ax.plot(e["kl_star"]["mean"], e["reward_star"]["mean"], "k*", ms=10)
        for name in ("rl", "dpo"):
            ax.errorbar(e[name]["kl"]["mean"], e[name]["reward"]["mean"], xerr=_err(e[name]["kl"]),
                        yerr=_err(e[name]["reward"]), fmt=markers[name], color=f"C{i}", capsize=2,
                        label=f"{NAMES[name]} β = {b}")
    bon = ex["betas"][_exact_betas(results)[0]]["best_of_n"]
    ax.plot([m["kl"]["mean"] for m in bon.values()], [m["reward"]["mean"] for m in bon.values()], "^:", color="C7",
            label="best-of-n (exact)")
    ax.legend(fontsize=7)
    paths.append(save_figure(fig, out / PLOTS["exact"]))
    return paths
