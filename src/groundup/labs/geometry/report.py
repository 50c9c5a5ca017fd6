"""The geometry lab's verdicts, report.md and plots, from results.json alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from groundup.labs.harness import lower, setup_line, short, stat, upper
from groundup.report.markdown import table
from groundup.report.plots import new_figure, save_figure

PLOTS = {"dot": "geometry_pe_dot.png", "spread": "geometry_pe_spread.png", "training": "geometry_heads_training.png",
         "heads": "geometry_heads_final.png", "pca": "geometry_embeddings_pca.png"}
EXACT = 1e-10  # float64 identities: rounding leaves ~1e-13; anything above 1e-10 is a real discrepancy
CONTROL = 0.1  # the random table must miss by at least this much (relative) for the probe to count


def _on(n: int) -> str:
    return "lower 95% bound" if n > 1 else "single value (1 seed: no interval)"


def _max_over_seeds(results: dict, part: str, key: str) -> float:
    return max(r["results"][part][key] for r in results["per_seed"])


def verdicts(results: dict) -> dict[str, str]:
    """One sentence per claim: supported or not, the numbers, and what would have refuted it."""
    agg, n = results["aggregate"], len(results["seeds"])
    pos, hd, emb = agg["positions"], agg["heads"], agg["embeddings"]
    out = {}

    err, lsq_sin = _max_over_seeds(results, "positions", "shift_max_error"), _max_over_seeds(results, "positions", "lstsq_residual_sinusoidal_max")
    lsq_rnd = min(r["results"]["positions"]["lstsq_residual_random_min"] for r in results["per_seed"])
    ok = err <= EXACT and lsq_rnd > CONTROL
    out["shift"] = (f"{'Supported' if ok else 'NOT supported'}: PE(pos+k) = M_k·PE(pos) with M_k built from the formula "
                    f"(block-diagonal rotations by k·ω_i) misses by at most {err:.1e} (float64, every pos and k in the "
                    f"context, worst seed; threshold {EXACT:.0e}); a least-squares M_k leaves a relative residual of "
                    f"{lsq_sin:.1e} on the sinusoids and at least {lsq_rnd:.2f} on a random (learned-at-init) table. "
                    "Refuted by an error above 1e-10; tests/test_lab_geometry.py shows the same probe failing on a random table.")

    spread_sin = _max_over_seeds(results, "positions", "dot_spread_sinusoidal_max")
    spread_rnd = min(r["results"]["positions"]["dot_spread_random_min"] for r in results["per_seed"])
    ok = spread_sin <= EXACT and spread_rnd > CONTROL
    out["offset-only"] = (f"{'Supported' if ok else 'NOT supported'}: at each fixed offset q − p the dot product PE(p)·PE(q) "
                          f"varies over p by at most {spread_sin:.1e} of ‖PE‖² (threshold {EXACT:.0e}); for the random table it "
                          f"varies by at least {spread_rnd:.2f} of ‖PE‖² (mean {stat(pos['dot_spread_random_mean'], '.2f')}). "
                          "Refuted by a spread above 1e-10 at any offset; the random table is the test that the probe can fail.")

    fin, chance = hd["final"], results["per_seed"][0]["results"]["heads"]["chance"]
    th = results["config"]["thresholds"]
    parts = []
    for kind in ("previous-token", "induction"):
        counts = [r["results"]["heads"]["final"][kind]["count"] for r in results["per_seed"]]
        formed = sum(c >= 1 for c in counts)
        parts.append(f"{kind} heads (score ≥ {th[kind]}) formed in {formed} of {n} seeds (counts {counts}; best head "
                     f"{stat(fin[kind]['max'])} vs chance {chance[kind]:.3f})")
    all_formed = all(r["results"]["heads"]["final"][k]["count"] >= 1 for r in results["per_seed"] for k in ("previous-token", "induction"))
    any_formed = any(r["results"]["heads"]["final"][k]["count"] >= 1 for r in results["per_seed"] for k in ("previous-token", "induction"))
    head = "Supported" if all_formed else "Only partly supported" if any_formed else "NOT supported"
    out["heads"] = (f"{head}: in the trained {results['config']['head_layers']}-layer "
                    f"character model, " + "; ".join(parts) + ". Refuted if every head stayed near the uniform-attention chance "
                    "scores (as at step 0); tests/test_lab_geometry.py scores hand-built previous-token, induction and uniform "
                    "patterns to show each score separates them.")

    tr, un = emb["trained"], emb["untrained"]
    ok = lower(tr["class_match_gain"]) > 0 and lower(tr["next_similarity_gain"]) > 0
    out["embeddings"] = (f"{'Supported' if ok else 'NOT supported'}: after training, a token's nearest neighbour by cosine "
                         f"shares its surface class {short(tr['class_match'])} of the time against {short(tr['class_match_random'])} "
                         f"for a random token (gain {stat(tr['class_match_gain'], '.3f', True)}), and their next-token "
                         f"distributions have cosine {short(tr['next_similarity'])} against {short(tr['next_similarity_random'])} "
                         f"(gain {stat(tr['next_similarity_gain'], '.3f', True)}); the untrained embedding's gains are "
                         f"{short(un['class_match_gain'], '.3f', True)} and {short(un['next_similarity_gain'], '.3f', True)}. "
                         f"Judged on the {_on(n)} of both trained gains being above 0; refuted by gains indistinguishable "
                         "from 0, as the untrained control shows is possible.")
    return out


ABOUT = """**Claims.** (1) Sinusoidal positions make a shift by k positions one fixed linear map M_k (a rotation
per frequency), and PE(p)·PE(q) depends only on q − p. (2) Trained attention heads specialise into
measurable kinds — previous-token, induction (prefix matching, Olsson et al. 2022), first-token sink —
well above what uniform attention scores by chance. (3) After training, tokens whose embeddings are close
are used alike ("close vectors = similar meanings"), measurably more often than random pairs.

```
groundup lab geometry            # 3 seeds
groundup lab geometry --quick    # 1 seed, tiny models
groundup lab geometry --report-from runs/geometry/results.json --out DIR
```

Positions: the float64 table PE[pos, 2i] = sin(pos·ω_i), PE[pos, 2i+1] = cos(pos·ω_i), ω_i = 10000^(−2i/C)
(the model's own table, groundup.model.positional, is the same in float32), M_k built from the formula and
applied at every pos and k; the control is a random N(0, 0.02²) table (a learned table at initialisation),
for which M_k is fitted by least squares (T − k > C, so a fit is not automatic). Heads: a character model
(shakespeare, rotary positions) trained through groundup.train.loop.fit; attention weights recomputed from
each attention module's projection, softmax(QKᵀ/√d_k + mask), the arithmetic of its "math" path.
Previous-token and sink scores on validation text, the induction score on L random letters (a–z, A–Z) repeated
twice (t in the second copy → t − L + 1). Embeddings: a byte-level BPE model of Shakespeare, its tied
token-embedding matrix, tokens seen at least `min_count` times in the training split.
"""


def report(results: dict) -> str:
    agg, cfg, n = results["aggregate"], results["config"], len(results["seeds"])
    pos, hd, emb = agg["positions"], agg["heads"], agg["embeddings"]
    v = verdicts(results)
    first = results["per_seed"][0]["results"]
    chance = first["heads"]["chance"]
    lines = ["# Lab: the geometry of positions, heads and embeddings", "", ABOUT, "## Setup", "", setup_line(results), "",
             "## Verdicts", ""]
    lines += [f"- **{k}.** {s}" for k, s in v.items()]

    lines += ["", "## 1. Sinusoidal positions", "",
              f"Table of {cfg['pe_positions']} positions × {cfg['pe_dims']} dimensions; offsets up to {cfg['pe_max_offset']} "
              "for the dot products. ± is the 95% interval over seeds (the sinusoids do not depend on the seed; the random table does).", "",
              table(["measure", "sinusoidal", "random table (control)"], [
                  ["max over pos, k, i of abs(PE(pos+k) − M_k·PE(pos))_i, M_k from the formula (float64)", f"{pos['shift_max_error']['mean']:.2e}",
                   f"{short(pos['formula_map_on_random_table'], '.2f')} (k = 1, relative to the largest entry)"],
                  ["relative residual of the least-squares M_k (worst k / best k)", f"{pos['lstsq_residual_sinusoidal_max']['mean']:.2e}",
                   short(pos['lstsq_residual_random_min'], '.3f')],
                  ["spread over p of PE(p)·PE(p+d) / ‖PE‖² (worst d / least d ≥ 1)", f"{pos['dot_spread_sinusoidal_max']['mean']:.2e}",
                   short(pos['dot_spread_random_min'], '.3f')],
              ]), "",
              f"The model's float32 table differs from the float64 formula by at most {pos['model_table_vs_formula']['mean']:.1e}, "
              f"and M_k applied to it misses by at most {pos['shift_max_error_model_table']['mean']:.1e} (float32 rounding).", "",
              f"![dot product vs offset]({PLOTS['dot']})", f"![spread of the dot product over p]({PLOTS['spread']})"]

    lines += ["", "## 2. Attention heads", "",
              f"{cfg['head_layers']} layers × {cfg['head_heads']} heads, C = {cfg['head_embd']}, context {cfg['head_block']}, "
              f"{cfg['head_steps']} steps of batch {cfg['head_batch']}; validation loss at the end "
              f"{stat(hd['val_loss'])} nats/char. Thresholds: " + ", ".join(f"{k} ≥ {t}" for k, t in cfg["thresholds"].items()) + ".", "",
              table(["kind", "chance (uniform attention)", "best head, step 0", "best head, end", "mean over heads, end",
                     "heads of this kind, end (by layer)"],
                    [[k, f"{chance[k]:.4f}", short(hd['over_training'][0][k]['max']), short(hd['final'][k]['max']),
                      short(hd['final'][k]['mean']), f"{short(hd['final'][k]['count'], '.2f')} ("
                      + ", ".join(short(c, '.2f') for c in hd['final'][k]['count_by_layer']) + ")"]
                     for k in ("previous-token", "induction", "sink")]), "",
              _formation_note(results), "",
              "Scores over training (best head of each kind; mean over seeds ± 95% interval):", "",
              table(["step"] + [f"best {k}" for k in ("previous-token", "induction", "sink")],
                    [[step] + [short(c[k]["max"]) for k in ("previous-token", "induction", "sink")]
                     for step, c in zip(first["heads"]["steps"], hd["over_training"])]), "",
              "Every head of the first seed at the end (scores previous-token / induction / sink; kinds):", "",
              _head_table(results["detail"][0]["heads"]["checkpoints"][-1]), "",
              f"![scores over training]({PLOTS['training']})", f"![every head at the end]({PLOTS['heads']})"]

    tr, un = emb["trained"], emb["untrained"]
    lines += ["", "## 3. Token embeddings", "",
              f"BPE vocabulary {cfg['bpe_vocab']}, {cfg['emb_layers']} layers, C = {cfg['emb_embd']}, {cfg['emb_steps']} steps of "
              f"batch {cfg['emb_batch']}; validation loss {stat(emb['val_loss'])} nats/token; {short(emb['eligible_tokens'], '.0f')} "
              f"tokens seen ≥ {cfg['min_count']} times.", "",
              table(["measure", "nearest neighbour, trained", "random token", "gain, trained", "gain, untrained (control)"], [
                  ["same surface class", short(tr["class_match"]), short(tr["class_match_random"]),
                   short(tr["class_match_gain"], '.3f', True), short(un["class_match_gain"], '.3f', True)],
                  ["cosine of next-token distributions", short(tr["next_similarity"]), short(tr["next_similarity_random"]),
                   short(tr["next_similarity_gain"], '.3f', True), short(un["next_similarity_gain"], '.3f', True)],
              ]), "",
              f"Nearest neighbours (cosine) of frequent word tokens, seed {results['seeds'][0]}:", "",
              table(["token", "5 nearest (cosine)"],
                    [[repr(x["token"]), ", ".join(f"{t!r} ({c:.2f})" for t, c in zip(x["neighbours"], x["cosines"]))]
                     for x in results["detail"][0]["embeddings"]["neighbours"]]), "",
              f"![PCA of the embeddings]({PLOTS['pca']})", ""]
    return "\n".join(lines)


def _formation_note(results: dict) -> str:
    """Which kinds formed in no seed: said plainly, with how long the models trained."""
    steps = results["config"]["head_steps"]
    missing = [k for k in ("previous-token", "induction", "sink")
               if all(r["results"]["heads"]["final"][k]["count"] == 0 for r in results["per_seed"])]
    if not missing:
        return f"Every kind formed in at least one seed within {steps} steps."
    final, chance = results["aggregate"]["heads"]["final"], results["per_seed"][0]["results"]["heads"]["chance"]
    best = "; ".join(f"best {k} head {short(final[k]['max'])} against chance {chance[k]:.3f}" for k in missing)
    return (f"No {' and no '.join(missing)} head formed in any seed within {steps} training steps ({best}). "
            "Whether one forms with longer training is not measured by this run; `--head-steps N` trains longer.")


def _head_table(checkpoint: dict) -> str:
    s, kinds = checkpoint["scores"], checkpoint["kinds"]
    rows = [[f"L{l}H{h}", f"{s['previous-token'][l][h]:.3f} / {s['induction'][l][h]:.3f} / {s['sink'][l][h]:.3f}",
             ", ".join(kinds[l][h]) or "—"] for l in range(len(kinds)) for h in range(len(kinds[l]))]
    return table(["head", "scores", "kinds"], rows)


def plots(results: dict, out: str | Path) -> list[Path]:
    out, agg, n = Path(out), results["aggregate"], len(results["seeds"])
    pos, hd = agg["positions"], agg["heads"]
    note = f"mean of {n} seeds" if n > 1 else "1 seed"
    paths = []

    fig, ax = new_figure("Dot product of position vectors vs offset", "offset q − p", "PE(p)·PE(q) / ‖PE‖² (mean over p)")
    d = np.arange(len(pos["dot_mean_sinusoidal"]))
    ax.plot(d, [x["mean"] for x in pos["dot_mean_sinusoidal"]], label="sinusoidal: Σ cos((q−p)ω_i) / (C/2)")
    ax.plot(d, [x["mean"] for x in pos["dot_mean_random"]], label=f"random table ({note})")
    ax.legend()
    paths.append(save_figure(fig, out / PLOTS["dot"]))

    fig, ax = new_figure("Does the dot product depend on p at a fixed offset?", "offset q − p",
                         "spread over p: (max − min) / ‖PE‖²")
    ax.set_yscale("log")
    ax.plot(d[1:], np.maximum([x["mean"] for x in pos["dot_spread_sinusoidal"][1:]], 1e-17),
            label="sinusoidal (0 drawn at 1e-17)")
    ax.plot(d[1:], [x["mean"] for x in pos["dot_spread_random"][1:]], label=f"random table ({note})")
    ax.axhline(EXACT, color="gray", lw=0.8, label=f"threshold {EXACT:.0e}")
    ax.legend()
    paths.append(save_figure(fig, out / PLOTS["spread"]))

    steps = results["per_seed"][0]["results"]["heads"]["steps"]
    chance = results["per_seed"][0]["results"]["heads"]["chance"]
    fig, ax = new_figure(f"Best head of each kind over training ({note}, bars: 95% CI)", "training step", "score")
    for k in ("previous-token", "induction", "sink"):
        m = [c[k]["max"] for c in hd["over_training"]]
        err = [[x["mean"] - lower(x) for x in m], [upper(x) - x["mean"] for x in m]]
        line = ax.errorbar(steps, [x["mean"] for x in m], yerr=err, marker="o", capsize=3, label=f"{k}")
        ax.axhline(chance[k], ls=":", color=line[0].get_color(), label=f"{k}: chance {chance[k]:.3f}")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    paths.append(save_figure(fig, out / PLOTS["training"]))

    th = results["config"]["thresholds"]
    fig, ax = new_figure("Every head at the end of training (all seeds)", "previous-token score", "induction score")
    for seed_detail in results["detail"]:
        s = seed_detail["heads"]["checkpoints"][-1]["scores"]
        for l in range(len(s["induction"])):
            ax.scatter(s["previous-token"][l], s["induction"][l], marker="os^vD"[l % 5], color=f"C{l}", alpha=0.7,
                       label=f"layer {l}" if seed_detail is results["detail"][0] else None)
    ax.scatter([chance["previous-token"]], [chance["induction"]], marker="x", color="black", s=60, label="uniform attention")
    ax.axvline(th["previous-token"], color="gray", ls="--", lw=0.8)
    ax.axhline(th["induction"], color="gray", ls="--", lw=0.8)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    paths.append(save_figure(fig, out / PLOTS["heads"]))

    pca = results["detail"][0]["embeddings"]["pca"]
    fig, ax = new_figure(f"Token embeddings, first two principal components (seed {results['seeds'][0]}, "
                         f"{len(pca['tokens'])} most frequent tokens)", "PC 1", "PC 2", figsize=(8, 6.5))
    xy = np.asarray(pca["xy"])
    classes = np.asarray(pca["classes"])
    for c in sorted(set(pca["classes"])):
        sel = classes == c
        ax.scatter(xy[sel, 0], xy[sel, 1], s=14, alpha=0.8, label=c)
    for i, t in enumerate(pca["tokens"][:60]):
        ax.annotate(repr(t)[1:-1], xy[i], fontsize=6, alpha=0.8)
    ax.legend(fontsize=7)
    paths.append(save_figure(fig, out / PLOTS["pca"]))
    return paths
