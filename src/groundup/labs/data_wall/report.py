"""The data-wall lab's verdicts, report.md and plots, from results.json alone."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from groundup.labs.data_wall.effective import R_STAR_BOUNDS, DataLaw, effective_data
from groundup.labs.harness import band, lower, setup_line, short, stat, upper
from groundup.report.markdown import table
from groundup.report.plots import new_figure, save_figure

VERSION = 1  # the lab's version (labs/docs.py skips a results file written by another)
PLOTS = {"repetition": "data_wall_repetition.png", "effective": "data_wall_effective_data.png",
         "law": "data_wall_loss_vs_data.png", "loss": "data_wall_collapse_loss.png",
         "tail": "data_wall_collapse_tail.png", "diversity": "data_wall_collapse_diversity.png"}
# Muennighoff et al. 2023's fitted R_D* (their eq. 5 fit over 400+ runs). Quoted from memory of the
# paper's fitted constants (R_D* ≈ 15.4, R_N* ≈ 5.3): NOT confirmed against the paper here.
MUENNIGHOFF_R_STAR = 15.4
NEARLY_AS_GOOD = 0.5  # "nearly as good as unique": costs less than half of what halving the unique data costs

ABOUT = """Two claims about running out of data, measured on one small model.

1. **Repetition** (Muennighoff et al. 2023, *Scaling Data-Constrained Language Models*): at a fixed
   token budget D, training on U = D/E unique tokens for E epochs is "nearly as good as" unique data
   up to ~4 epochs, with returns vanishing around 16. Their effective-data model (eq. 5):
   D' = U + U·R*·(1 − e^(−R/R*)), where R = E − 1 is the number of *repetitions beyond the first
   epoch* (the paper's R_D; one epoch has R = 0 and D' = D). R* is the repetition count after which
   repeats carry 1 − 1/e of all the value they can add; D' saturates at U·(1 + R*).
2. **Synthetic data** (Shumailov et al. 2024, Nature; Gerstgrasser et al. 2024): a model trained on
   text sampled from its predecessor, generation after generation, degrades ("model collapse") when
   each generation's data *replace* the previous ones, the tails of the distribution first; when the
   data *accumulate* (real + every earlier generation), the error stays bounded.
"""


def _n(results: dict) -> int:
    return len(results["seeds"])


def _on(n: int) -> str:
    return "95% interval over seeds" if n > 1 else "single value (1 seed)"


def _side(summary: dict, threshold: float = 0.0) -> str:
    """'above' / 'below' / 'overlaps' a threshold, by the interval (one seed has none: 'overlaps',
    so a single run never resolves a claim)."""
    if summary.get("ci95") is None:
        return "overlaps"
    if lower(summary) > threshold:
        return "above"
    if upper(summary) < threshold:
        return "below"
    return "overlaps"


def _epochs_key(results: dict, target: int) -> str | None:
    """The repeated setting with the most epochs ≤ target (None if there is none)."""
    eps = [e for e in results["config"]["epochs"] if 1 < e <= target]
    return f"epochs_{max(eps)}" if eps else None


def r_star_text(fit: dict) -> str:
    boot = fit["bootstrap"]
    ci = boot.get("r_star_ci95")
    censored = " (at the end of the search range: censored)" if fit["censored"] else ""
    if not ci:
        return f"R* = {fit['r_star']:.2f}{censored} (no bootstrap resample could be fitted)"
    return (f"R* = {fit['r_star']:.2f}{censored}, 95% bootstrap interval [{ci[0]:.2f}, {ci[1]:.2f}] "
            f"({boot['fitted']} resamples over seeds and points; {boot['censored_share']:.0%} of them censored)")


def _up_to_text(fit: dict) -> str:
    up = fit.get("up_to")
    if not up:
        return ""
    ci = up.get("r_star_ci95")
    inside = ci is not None and ci[0] <= MUENNIGHOFF_R_STAR <= ci[1]
    return (f" Sensitivity (eq. 5 cannot make the loss rise with repetition, so the runs past {up['max_epochs']} epochs, "
            f"where it may, are left out): R* = {up['r_star']:.2f}"
            + (f", interval [{ci[0]:.2f}, {ci[1]:.2f}] ({'contains' if inside else 'excludes'} {MUENNIGHOFF_R_STAR})." if ci else "."))


def verdicts(results: dict) -> dict[str, str]:
    """One sentence per claim: the measurement, the verdict, and what would have refuted it."""
    agg, cfg, fit, n = results["aggregate"], results["config"], results["fit"], _n(results)
    rep, col = agg["repetition"], agg["collapse"]
    law = DataLaw(**fit["law"])
    D = fit["budget_tokens"]
    out = {}

    key4 = _epochs_key(results, 4)
    if key4 is not None:
        d = rep["vs_unique"][key4]
        gap = float(law(D / 2) - law(D))
        bar = NEARLY_AS_GOOD * gap
        side = _side(d, bar)
        verdict = {"below": "Supported", "above": "NOT supported", "overlaps": "Not resolved"}[side]
        e = int(key4.split("_")[1])
        out["repetition: ~4 epochs ≈ unique data"] = (
            f"{verdict}: at D = {D:,.0f} tokens, {e} epochs of D/{e} unique tokens reach a held-out loss "
            f"{stat(d, '.4f', True)} nats above unique data. 'Nearly as good' is judged against "
            f"{NEARLY_AS_GOOD:g} × the cost of halving the unique data, L(D/2) − L(D) = {gap:.4f} (fitted law): a bar of "
            f"{bar:.4f}. Supported if the {_on(n)} lies below the bar; refuted by an interval above it.")

    ci = fit["bootstrap"].get("r_star_ci95")
    recovered = fit["recovery"]["recovered"]
    if ci:
        side = "inside" if ci[0] <= MUENNIGHOFF_R_STAR <= ci[1] else ("above" if ci[0] > MUENNIGHOFF_R_STAR else "below")
        open_end = ci[1] >= 0.99 * R_STAR_BOUNDS[1] or ci[0] <= 1.01 * R_STAR_BOUNDS[0]
        meaning = {"inside": "Consistent with", "below": "NOT consistent with (repetition loses its value faster here than in",
                   "above": "NOT consistent with (repetition keeps its value longer here than in"}[side]
        tail = ")" if side != "inside" else ""
        if side == "inside" and open_end:  # an interval open at one end is consistent with nearly anything
            meaning, tail = "Not resolved against", " — the interval runs to the end of the search range"
        out["repetition: returns vanish around 16 epochs"] = (
            f"{meaning} Muennighoff et al.'s R* ≈ {MUENNIGHOFF_R_STAR} (their fitted value, quoted unverified){tail}: "
            f"{r_star_text(fit)}. With R* = {fit['r_star']:.1f}, repeats after 15 repetitions (16 epochs) carry "
            f"{1 - math.exp(-15 / fit['r_star']) if fit['r_star'] > 0 else float('nan'):.0%} of all the value repetition "
            f"can add. Refuted by a bootstrap interval that excludes {MUENNIGHOFF_R_STAR}."
            + (" The interval's upper end is censored: these runs cannot rule out repeats as good as fresh data." if
               ci[1] >= 0.99 * R_STAR_BOUNDS[1] else "")
            + _up_to_text(fit)
            + f" Fitted seed by seed (no resampling of points): R* = {stat(agg['repetition']['fit']['r_star'], '.2f')}."
            + " The recovery check on this grid "
            f"at the measured seed noise {'brings R* back' if recovered else 'does NOT bring R* back'} within "
            f"±{fit['recovery']['tolerance']:.0%} (worst {fit['recovery']['max_relative_error']:+.0%})"
            + ("." if recovered else ": the interval, not the point estimate, is what this grid can say."))

    G = cfg["generations"]
    if "replace" in col:
        r = col["replace"]
        side = _side(r["increase"])
        out["collapse under replacement"] = (
            f"{ {'above': 'Supported', 'below': 'NOT supported', 'overlaps': 'Not resolved'}[side] }: replacing the data "
            f"with the previous generation's samples, the held-out REAL loss moves by {stat(r['increase'], '.4f', True)} "
            f"nats from generation 0 to {G} ({short(r['val_loss'][0], '.4f')} → {short(r['val_loss'][-1], '.4f')}). "
            f"Supported if the {_on(n)} lies above 0; refuted by one at or below 0.")
        side = _side(r["tail_first"])
        out["tails vanish first (replacement)"] = (
            f"{ {'above': 'Supported', 'below': 'NOT supported', 'overlaps': 'Not resolved'}[side] }: relative increase "
            f"of the loss on rare tokens minus that on all tokens, generation {G} vs 0: {stat(r['tail_first'], '.4f', True)} "
            f"(rare-token loss {short(r['rare_loss'][0], '.3f')} → {short(r['rare_loss'][-1], '.3f')}); the samples' "
            f"tail mass ratio {short(r['tail_mass_ratio'][0], '.2f')} → {short(r['tail_mass_ratio'][-1], '.2f')} "
            f"(change {stat(r['tail_mass_change'], '.2f', True)}; 1 = the real share). Supported if the {_on(n)} of the "
            "difference lies above 0 (the tail degrades faster than the bulk); refuted by one at or below 0.")
        out["diversity under replacement"] = (
            f"Distinct {cfg['ngram']}-grams per {cfg['ngram']}-gram of the samples, generation 0 → {G}: "
            f"{short(r['distinct'][0], '.3f')} → {short(r['distinct'][-1], '.3f')} (change "
            f"{stat(r['distinct_change'], '.3f', True)}; real text of the same size: {short(col['real_distinct'], '.3f')}). "
            "A loss of diversity is an interval below 0; an interval above 0 means the samples grew *more* varied "
            "(noisier), which refutes 'collapse = less diverse' here.")
    if "accumulate" in col:
        a = col["accumulate"]
        extra = ""
        if "accumulate_minus_replace" in col:
            diff = col["accumulate_minus_replace"]
            side = _side(diff)
            verdict = {"below": "Supported", "above": "NOT supported", "overlaps": "Not resolved"}[side]
            extra = (f"; accumulate − replace: {stat(diff, '.4f', True)}. {verdict} that accumulating holds the loss below "
                     f"replacement: supported if the {_on(n)} of the difference lies below 0, refuted by one at or above 0")
        out["accumulation stays bounded"] = (
            f"With real + every earlier generation's samples (the data grow to {G + 1}× by generation {G}; the "
            f"training steps per generation do not), the held-out real loss moves by {stat(a['increase'], '.4f', True)} "
            f"nats from generation 0 to {G}{extra}. Five generations cannot show a bound; they show the growth.")
    if "real" in col:
        c = col["real"]
        side = _side(c["increase"])
        out["control: fresh real data each generation"] = (
            f"{'No drift resolved' if side == 'overlaps' else 'Drift ' + side + ' 0'}: training every generation on fresh real "
            f"text moves the held-out loss by {stat(c['increase'], '.4f', True)} nats over {G} generations and the tail "
            f"mass ratio by {short(c['tail_mass_change'], '.2f', True)}. This is the probe's null: a 'collapse' the "
            "control shows too would be an artefact of the procedure, not of synthetic data.")
    return out


def report(results: dict) -> str:
    agg, cfg, fit, tail, n = results["aggregate"], results["config"], results["fit"], results["tail"], _n(results)
    rep, col = agg["repetition"], agg["collapse"]
    law = DataLaw(**fit["law"])
    v = verdicts(results)
    D = fit["budget_tokens"]
    tokens_per_step = cfg["batch_size"] * cfg["block_size"]
    lines = ["# Lab: the data wall — repeated data and synthetic data", "", ABOUT, "## Setup", "", setup_line(results), "",
             f"Corpus {cfg['corpus']} (characters: the char tokenizer, {tail['vocab_size']} tokens; "
             f"{tail['train_tokens']:,} train / {tail['val_tokens']:,} validation characters). Model {cfg['n_layer']} layers × "
             f"{cfg['n_embd']} wide, {cfg['n_head']} heads, context {cfg['block_size']}; batch {cfg['batch_size']} windows "
             f"({tokens_per_step:,} predicted tokens per step); AdamW lr {cfg['lr']}, 10% warmup, cosine to lr/10 over each "
             f"run's own steps; torch threads {cfg['threads']}; device {cfg['device']}. The data are non-overlapping windows of "
             f"{cfg['block_size'] + 1} characters, each shown once per epoch in a fresh order. Every model is scored on the same "
             f"{cfg['eval_windows']} held-out windows of real validation text "
             f"({cfg['eval_windows'] * cfg['block_size']:,} predicted characters) it never trained on.", "",
             "## 1. Repetition", "",
             f"Budget D = {cfg['steps']} steps × {tokens_per_step:,} = {D:,.0f} tokens for every run below; U = D/E unique "
             f"tokens (a random subset of the train split, per seed) for E epochs. The loss-vs-data law comes from unique "
             f"data alone: the full budget and {', '.join(f'{f:g}' for f in cfg['unique_fractions'])} of it, each a run of its "
             "own with as many steps as its tokens allow (one epoch).", "",
             table(["epochs E", "R = E − 1", "unique tokens U", "held-out loss", "minus unique", "D'/D measured",
                    "D'/D fitted R*", f"D'/D at R* = {MUENNIGHOFF_R_STAR}"],
                   [[f"{int(r['epochs']['mean'])}", f"{r['actual_epochs']['mean'] - 1:g}", f"{r['unique_tokens']['mean']:,.0f}",
                     short(r["val_loss"], ".4f"),
                     short(rep["vs_unique"][k], ".4f", True) if k in rep["vs_unique"] else "—",
                     short(fit["measured_ratio"][k], ".3f") if k in fit["measured_ratio"] else "1",
                     f"{float(effective_data(r['unique_tokens']['mean'], r['actual_epochs']['mean'] - 1, fit['r_star']) / D):.3f}",
                     f"{float(effective_data(r['unique_tokens']['mean'], r['actual_epochs']['mean'] - 1, MUENNIGHOFF_R_STAR) / D):.3f}"]
                    for k, r in rep["repeated"].items()]), "",
             f"± is the half-width of the {results['interval']}. *D'/D measured* is each seed's loss read through the "
             "inverse of the fitted unique-data law (the unique budget that reaches the same loss, as a share of D: 1 = "
             "as good as fresh data), independent of R*; the last two columns are eq. 5 with the fitted R* and with "
             "Muennighoff et al.'s.", "",
             table(["unique tokens", "steps", "held-out loss", "law L(D)"],
                   [[f"{u['tokens']['mean']:,.0f}", int(u["steps"]["mean"]), short(u["val_loss"], ".4f"),
                     f"{float(law(u['tokens']['mean'])):.4f}"] for u in rep["unique"].values()]
                   + [[f"{D:,.0f}", cfg["steps"], short(rep["repeated"]["epochs_1"]["val_loss"], ".4f"), f"{float(law(D)):.4f}"]]), "",
             f"Fitted on the seed means: L(D) = {law.E:.3f} + {law.B:.4g}/D^{law.beta:.3f} (least squares with E ≥ 0: closed form in E and B for each β, β by BFGS), "
             f"then {r_star_text(fit)}.{_up_to_text(fit)} Per-seed fits: R* = {short(rep['fit']['r_star'], '.2f')}. Identifiability: losses "
             f"drawn from the fitted law and R* on this grid with {fit['recovery']['draws']} draws of the measured seed noise "
             f"({fit['recovery']['noise_sd']:.4f} nats) give R̂*/R* − 1 up to {fit['recovery']['max_relative_error']:+.0%} "
             f"({'within' if fit['recovery']['recovered'] else 'NOT within'} ±{fit['recovery']['tolerance']:.0%}); "
             "tests/test_lab_data_wall.py shows the same check failing when the exponential term is broken.", "",
             f"![held-out loss vs epochs]({PLOTS['repetition']})", "", f"![effective data]({PLOTS['effective']})", "",
             f"![loss vs unique data]({PLOTS['law']})", "",
             "## 2. Synthetic data, generation after generation", "",
             f"Generation 0 trains on {cfg['gen_windows']:,} real windows ({cfg['gen_windows'] * cfg['block_size']:,} "
             f"predicted characters) for {cfg['gen_steps']} steps ({cfg['gen_steps'] * cfg['batch_size'] / cfg['gen_windows']:.1f} "
             f"epochs); each generation then samples {cfg['gen_windows']:,} windows at temperature {cfg['temperature']:g} "
             "(sample.generate_batch; the prompt is the first character of a random window of the model's own training "
             f"data, then {cfg['block_size']} sampled characters). Generation g ≥ 1 trains {cfg['gen_steps']} steps from the "
             "same initial weights on: **replace** — only generation g − 1's samples (the same token count as the real "
             "data); **accumulate** — the real windows plus every earlier generation's samples (the data grow by "
             f"{cfg['gen_windows']:,} windows a generation; the steps do not, so the epochs over the pool shrink — "
             "Gerstgrasser et al. let the budget grow with the data, which this lab does not); **real** (control) — "
             f"{cfg['gen_windows']:,} fresh real windows, no synthetic data. {cfg['generations']} generations after "
             "generation 0.", "",
             f"The tail: the rarest characters of the real train split that together make up at most "
             f"{cfg['tail_share']:.0%} of it — {tail['rare_count']} of {tail['vocab_size']} tokens, "
             f"{tail['real_share']:.2%} of the real text: {' '.join(repr(t) for t in tail['rare_tokens'])}. "
             "Rare-token loss: the held-out loss on positions whose target is in that set; tail mass ratio: the samples' "
             "share of those tokens over the real share (1 = kept, 0 = gone); rare types kept: the share of the rare set "
             f"that occurs in the samples at all; distinct-{cfg['ngram']}: distinct {cfg['ngram']}-grams per "
             f"{cfg['ngram']}-gram within sampled windows (real text of the same size: {short(col['real_distinct'], '.3f')}).", ""]
    for regime in [r for r in ("replace", "accumulate", "real") if r in col]:
        s = col[regime]
        lines += [f"**{regime}**", "",
                  table(["generation", "held-out real loss", "rare-token loss", "tail mass ratio", "rare types kept",
                         f"distinct-{cfg['ngram']}"],
                        [[g, short(s["val_loss"][g], ".4f"), short(s["rare_loss"][g], ".3f"), short(s["tail_mass_ratio"][g], ".2f"),
                          short(s["rare_types_kept"][g], ".2f"), short(s["distinct"][g], ".3f")] for g in range(len(s["val_loss"]))]), ""]
    lines += [f"![held-out real loss by generation]({PLOTS['loss']})", "", f"![tail by generation]({PLOTS['tail']})", "",
              f"![diversity by generation]({PLOTS['diversity']})", "",
              "## Verdicts", ""]
    lines += [f"- **{claim}.** {sentence}" for claim, sentence in v.items()]
    secs = agg["seconds"]
    lines += ["", "## Compared with the published figures", "",
              f"- **Muennighoff et al. 2023** (eq. 5; their abstract: with up to 4 epochs of repeated data the loss changes "
              f"negligibly compared with unique data, and with more repetition the value of added compute eventually decays "
              f"to zero — 'around 16 epochs' in the usual summary, as in this project's REFERENCES.md). Their fitted "
              f"R_D* ≈ {MUENNIGHOFF_R_STAR} is quoted from memory of the paper and was not confirmed against it here (the "
              "search tool found the formula and the definition R = epochs − 1 — in a summary of the paper, "
              "hunterheidenreich.com/notes/natural-language-processing/language-models/scaling-data-constrained-language-models "
              "— but not the constant). "
              "Their models have 10M–9B parameters and their repetition regime is pre-training on web text; ours is "
              "one character-level model with ~10⁵ parameters, so an R* on a different scale is an answer, not a failure.",
              "- **Shumailov et al. 2024** (Nature): fine-tuning OPT-125m on wikitext-2 text sampled from the previous "
              "generation, perplexity on real text rises generation after generation and the tails of the distribution "
              "go first. Our replace regime is the same loop at character level from scratch.",
              "- **Gerstgrasser et al. 2024**: accumulating real and synthetic data keeps the test loss bounded "
              "(proved for linear models, shown for language models on TinyStories), while replacing it makes it grow. "
              "Our accumulate regime keeps the training steps fixed while the data grow, a harder test than theirs.",
              "", "## Notes", "",
              f"- Wall time per seed (mean): repetition {secs['repetition']['mean']:.0f} s, synthetic data "
              f"{secs['collapse']['mean']:.0f} s.",
              "- The unique-data runs at small budgets are also short runs (fewer steps), so L(D) mixes data and "
              "optimisation, as any L(D) measured at a fixed model does; the repeated runs use the full step count.",
              "- Character-level text has a small vocabulary: the 'tail' is a set of rare characters (capitals, "
              "punctuation, rare letters), not rare words; the sampled text keeps them or not one character at a time.", ""]
    return "\n".join(lines)


# ---- plots ---------------------------------------------------------------------------------------------
def plots(results: dict, out: str | Path) -> list[Path]:
    out, agg, cfg, fit = Path(out), results["aggregate"], results["config"], results["fit"]
    rep, col, n = agg["repetition"], agg["collapse"], _n(results)
    note = f"mean of {n} seeds, band: 95% CI" if n > 1 else "1 seed"
    bars = f"mean of {n} seeds, bars: 95% CI" if n > 1 else "1 seed"
    law = DataLaw(**fit["law"])
    D = fit["budget_tokens"]
    paths = []

    runs = list(rep["repeated"].values())
    ep = [r["epochs"]["mean"] for r in runs]
    fig, ax = new_figure(f"Held-out loss at a fixed budget of {D:,.0f} tokens\n({note})", "epochs over U = D/E unique tokens",
                         "held-out loss (nats/char)")
    band(ax, ep, [r["val_loss"] for r in runs], "measured", marker="o")
    grid = np.geomspace(1, max(ep), 100)
    for rs, label, style in ((fit["r_star"], f"eq. 5, fitted R* = {fit['r_star']:.1f}", "--"),
                             (MUENNIGHOFF_R_STAR, f"eq. 5, R* = {MUENNIGHOFF_R_STAR} (Muennighoff)", ":")):
        ax.plot(grid, law(effective_data(D / grid, grid - 1, rs)), style, label=label)
    ax.set_xscale("log")
    ax.legend()
    paths.append(save_figure(fig, out / PLOTS["repetition"]))

    fig, ax = new_figure(f"Effective data D'/D vs epochs ({bars})", "epochs E (R = E − 1)", "D' / D")
    keys = [k for k in rep["repeated"] if k in fit["measured_ratio"]]
    x = [rep["repeated"][k]["epochs"]["mean"] for k in keys]
    m = [fit["measured_ratio"][k] for k in keys]
    ax.errorbar(x, [s["mean"] for s in m], yerr=[[s["mean"] - lower(s) for s in m], [upper(s) - s["mean"] for s in m]],
                fmt="o", capsize=4, label="measured (loss through the law's inverse)")
    for rs, label, style in ((fit["r_star"], f"fitted R* = {fit['r_star']:.1f}", "--"),
                             (MUENNIGHOFF_R_STAR, f"R* = {MUENNIGHOFF_R_STAR} (Muennighoff)", ":")):
        ax.plot(grid, effective_data(1 / grid, grid - 1, rs), style, label=label)
    ax.axhline(1.0, color="gray", lw=0.8, label="fresh data")
    ax.set_xscale("log")
    ax.legend()
    paths.append(save_figure(fig, out / PLOTS["effective"]))

    fig, ax = new_figure(f"Held-out loss vs unique tokens ({bars})", "unique tokens D", "held-out loss (nats/char)")
    uniq = list(rep["unique"].values())
    xs = [u["tokens"]["mean"] for u in uniq] + [D]
    ys = [u["val_loss"] for u in uniq] + [rep["repeated"]["epochs_1"]["val_loss"]]
    ax.errorbar(xs, [s["mean"] for s in ys], yerr=[[s["mean"] - lower(s) for s in ys], [upper(s) - s["mean"] for s in ys]],
                fmt="o", capsize=4, label="unique data (one epoch)")
    dgrid = np.geomspace(min(xs) / 2, D * 1.5, 100)
    ax.plot(dgrid, law(dgrid), "--", label=f"L(D) = {law.E:.2f} + {law.B:.3g}/D^{law.beta:.2f}")
    reps = [r for r in runs if r["epochs"]["mean"] > 1]
    ax.scatter([float(effective_data(r["unique_tokens"]["mean"], r["actual_epochs"]["mean"] - 1, fit["r_star"])) for r in reps],
               [r["val_loss"]["mean"] for r in reps], marker="s", color="C3", label="repeated runs at their fitted D'", zorder=3)
    ax.set_xscale("log")
    ax.legend()
    paths.append(save_figure(fig, out / PLOTS["law"]))

    regimes = [r for r in ("replace", "accumulate", "real") if r in col]
    gens = list(range(cfg["generations"] + 1))
    fig, ax = new_figure(f"Held-out REAL loss by generation ({note})", "generation", "held-out loss (nats/char)")
    for regime in regimes:
        band(ax, gens, col[regime]["val_loss"], regime, marker="o")
    ax.legend()
    paths.append(save_figure(fig, out / PLOTS["loss"]))

    fig, (a1, a2) = _two_panels(f"The tail by generation ({note})")
    for regime in regimes:
        band(a1, gens, col[regime]["tail_mass_ratio"], regime, marker="o")
        band(a2, gens, col[regime]["rare_loss"], regime, marker="o")
    a1.axhline(1.0, color="gray", lw=0.8, ls=":", label="real share")
    a1.set_xlabel("generation")
    a1.set_ylabel("samples' tail mass / real tail mass")
    a2.set_xlabel("generation")
    a2.set_ylabel("held-out loss on rare tokens")
    a1.legend()
    paths.append(save_figure(fig, out / PLOTS["tail"]))

    fig, ax = new_figure(f"Distinct {cfg['ngram']}-grams of each generation's samples\n({note})", "generation",
                         f"distinct {cfg['ngram']}-grams / {cfg['ngram']}-grams")
    for regime in regimes:
        band(ax, gens, col[regime]["distinct"], regime, marker="o")
    ax.axhline(col["real_distinct"]["mean"], color="gray", ls=":", label="real text, same size")
    ax.legend()
    paths.append(save_figure(fig, out / PLOTS["diversity"]))
    return paths


def _two_panels(title: str):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), dpi=110)
    fig.suptitle(title)
    for ax in axes:
        ax.grid(True, alpha=0.3)
    return fig, axes
