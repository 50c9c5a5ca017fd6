"""The efficiency lab's verdicts, report.md and plots, from results.json alone."""

from __future__ import annotations

import math
from pathlib import Path

from groundup.labs.harness import lower, setup_line, short, stat, upper
from groundup.report.format import human_bytes, plural
from groundup.report.markdown import table
from groundup.report.plots import new_figure, save_figure

PLOTS = {"frontier": "efficiency_frontier.png", "distill": "efficiency_distill.png",
         "bytes": "efficiency_loss_vs_bytes.png"}
INT8_NEAR_LOSSLESS = 0.01  # nats/token: a 1% perplexity increase
MODELS = {"bpe": "shipped BPE recipe", "large": "larger model"}

# Published figures (docs: /work/shared/REFERENCES.md; the sources named in each sentence)
LLAMA_CPP = ("llama.cpp `tools/quantize` (Llama-3-8B, wikitext-2 perplexity vs F16): Q8_0 +0.0026, "
             "Q4_K_M +0.18, Q4_0 +0.47")
TORCHAO = "torchao benchmarks README (Llama 3.1 8B perplexity): bf16 7.33, int8 weight-only 7.34, int4 weight-only g128 8.25"
SWITCH = ("Fedus et al. 2022 (Switch Transformers, §4.2): distilling a sparse teacher into a dense student kept "
          "≈ 30% of the teacher's quality gain")
DISTILBERT = "Sanh et al. 2019 (DistilBERT): 40% smaller, 60% faster, 97% of BERT's GLUE score"


def _on(n: int) -> str:
    return "95% interval over seeds" if n > 1 else "single value (1 seed: no interval)"


def _variants(results: dict, model: str) -> dict:
    return results["aggregate"]["frontier"][model]["variants"]


def _int4(results: dict) -> list[str]:
    return [v for v in results["config"]["variants"] if v.startswith("int4")]


def verdicts(results: dict) -> dict[str, str]:
    """One sentence per claim: supported or not, the numbers, and what would have refuted it."""
    agg, cfg, n = results["aggregate"], results["config"], len(results["seeds"])
    fr = agg["frontier"]
    out = {}

    worst8 = max(upper(_variants(results, m)[v]["delta_loss"]) for m in fr for v in ("int8-rtn", "int8-gptq"))
    parts = "; ".join(f"{MODELS[m]} RTN {short(_variants(results, m)['int8-rtn']['delta_loss'], '.4f', True)}, "
                      f"GPTQ {short(_variants(results, m)['int8-gptq']['delta_loss'], '.4f', True)}" for m in fr)
    out["int8"] = (f"{'Supported' if worst8 <= INT8_NEAR_LOSSLESS else 'NOT supported'}: int8 weight-only (per output "
                   f"channel) changes validation loss by {parts} nats/token (upper end of the {_on(n)} at most "
                   f"{worst8:+.4f}; threshold +{INT8_NEAR_LOSSLESS} nats = +1% perplexity) — the direction of {LLAMA_CPP} "
                   f"and {TORCHAO}. Refuted by an upper end above +{INT8_NEAR_LOSSLESS}; tests/test_lab_efficiency.py "
                   "shows the probe failing on a quantizer that zeros the weights.")

    rows, ok_order = [], True
    for m in fr:
        V = _variants(results, m)
        best8 = min(upper(V[v]["delta_loss"]) for v in ("int8-rtn", "int8-gptq"))
        least4 = min(lower(V[v]["delta_loss"]) for v in _int4(results))
        ok_order &= least4 > best8
        rows.append(f"{MODELS[m]}: int4 from {min(V[v]['delta_loss']['mean'] for v in _int4(results)):+.3f} to "
                    f"{max(V[v]['delta_loss']['mean'] for v in _int4(results)):+.3f} nats vs int8 ≤ {best8:+.4f}")
    out["int4"] = (f"{'Supported' if ok_order else 'NOT supported'}: 4 bits cost clearly more than 8 — " + "; ".join(rows)
                   + f" (every int4 lower bound above the best int8 upper bound, {_on(n)}), as in llama.cpp (Q4 vs Q8_0) "
                   "and torchao (int4 g128 vs int8). Refuted if any int4 variant's interval reached down to int8's.")

    wins, total, lines = 0, 0, []
    for m in fr:
        V = _variants(results, m)
        for g in cfg["group_sizes"]:
            r, q = V[f"int4-rtn-g{g}"]["delta_loss"], V[f"int4-gptq-g{g}"]["delta_loss"]
            total += 1
            wins += upper(q) < r["mean"]
            lines.append(f"{MODELS[m]} g{g}: RTN {r['mean']:+.4f}, GPTQ {short(q, '.4f', True)}")
    gptq_ok = wins == total
    out["gptq"] = (f"{'Supported' if gptq_ok else 'Only partly supported' if wins else 'NOT supported'}: GPTQ's error "
                   f"compensation lowers the int4 loss increase below RTN's in {wins} of {total} (model, group size) "
                   f"cases ({'; '.join(lines)}; RTN is deterministic, so its value has no interval; GPTQ's interval is over "
                   f"{n} calibration draws). Frantar et al. 2022 report the same direction at 3–4 bits. Refuted where "
                   "GPTQ's upper bound reaches RTN's value.")

    d = agg["distill"]
    name = f"forward-T{cfg['dq_temperature']:g}"
    g = d["students"][name]["gap_closed"]
    best = max((k for k in d["students"] if k != "scratch"), key=lambda k: d["students"][k]["gap_closed"]["mean"])
    ok = lower(g) > 0
    out["distillation"] = (f"{'Supported' if ok else 'NOT supported'}: a student with {d['param_ratio']['mean']:.1f}× fewer "
                           f"parameters ({d['student_params']['mean']:,.0f} vs {d['teacher_params']['mean']:,.0f}) distilled "
                           f"with forward KL at T = {cfg['dq_temperature']:g} (chosen before the run) closes "
                           f"{stat(g, '.2f')} of the teacher–scratch gap (teacher {d['teacher_loss']['mean']:.3f}, scratch "
                           f"{short(d['students']['scratch']['val_loss'])} nats/token; same steps, batch size and "
                           f"initialisation); the best of all {len(d['students']) - 1} distillations is {best} at "
                           f"{short(d['students'][best]['gap_closed'], '.2f')} (picked after the fact). Compare {SWITCH}; "
                           f"{DISTILBERT}. Refuted by a lower bound at or below 0 (no better than scratch); "
                           "tests/test_lab_efficiency.py shows the measure scoring ≈ 0 for a 'student' that is the scratch model.")

    out["distil-then-quantize"] = _equal_bytes_verdict(results)
    return out


def _points(results: dict) -> dict[str, dict[str, tuple[float, dict]]]:
    """model → precision → (mean bytes, loss summary)."""
    dq = results["aggregate"]["distil_quantize"]
    return {m: {p: (v["weight_bytes"]["mean"], v["val_loss"]) for p, v in dq[m].items()} for m in dq}


EQUAL_BYTES = 1.5  # "roughly equal bytes": within a factor of 1.5 either way


def pareto(results: dict) -> list[tuple[str, str]]:
    """(model, precision) of the points no other point beats on both bytes and mean loss, by bytes."""
    pts = _points(results)
    flat = sorted(((b, loss["mean"], m, p) for m in pts for p, (b, loss) in pts[m].items()))
    front, best = [], math.inf
    for b, loss, m, p in flat:
        if loss < best:
            front.append((m, p))
            best = loss
    return front


# (the larger model at int4, the smaller ones it is weighed against at the nearest size)
PAIRS = (("large", ("teacher",)), ("teacher", ("distilled", "scratch")))
NAMES = {"large": "larger model", "teacher": "teacher (shipped recipe)", "distilled": "distilled student",
         "scratch": "scratch student"}


def equal_bytes_pairs(results: dict) -> list[dict]:
    """For each bigger model at int4 and each smaller model: the smaller model's precision nearest
    in bytes, the byte ratio, whether it is within EQUAL_BYTES, and whether the int4 model is better
    (its interval entirely below the other's)."""
    pts = _points(results)
    out = []
    for big, smalls in PAIRS:
        b_bytes, b_loss = pts[big]["int4"]
        for small in smalls:
            p = min(pts[small], key=lambda k: abs(math.log(pts[small][k][0] / b_bytes)))
            s_bytes, s_loss = pts[small][p]
            out.append({"big": big, "small": small, "precision": p, "ratio": b_bytes / s_bytes,
                        "matched": 1 / EQUAL_BYTES <= b_bytes / s_bytes <= EQUAL_BYTES,
                        "big_better": upper(b_loss) < lower(s_loss), "big_loss": b_loss, "small_loss": s_loss,
                        "big_bytes": b_bytes, "small_bytes": s_bytes})
    return out


def _equal_bytes_verdict(results: dict) -> str:
    pairs = equal_bytes_pairs(results)
    said = []
    for q in pairs:
        said.append(f"{NAMES[q['big']]} at int4 ({human_bytes(q['big_bytes'])}) {short(q['big_loss'])} vs "
                    f"{NAMES[q['small']]} at {q['precision']} ({human_bytes(q['small_bytes'])}; ratio {q['ratio']:.2f}) "
                    f"{short(q['small_loss'])}" + ("" if q["matched"] else " — sizes too far apart to count"))
    matched = [q for q in pairs if q["matched"]]
    front = ", ".join(f"{NAMES[m]} {p}" for m, p in pareto(results))
    tail = f". Points on the loss-vs-bytes frontier (no other point both smaller and better): {front}."
    if any(not q["matched"] for q in pairs if q["big"] == "teacher"):
        tail += (" The quantizer keeps the token embedding (tied to the LM head) in float32, and in these small models "
                 "that matrix alone outweighs a whole student, so no student size matches the teacher at int4.")
    if not matched:
        return ("Not decided: no pair of models comes within " f"{EQUAL_BYTES}× in bytes — " + "; ".join(said) + tail)
    wins = sum(q["big_better"] for q in matched)
    verdict = "Supported" if wins == len(matched) else "NOT supported" if wins == 0 else "Only partly supported"
    return (f"{verdict} that, at roughly equal bytes (within {EQUAL_BYTES}×), the larger model quantized to int4 beats "
            f"the smaller one kept at higher precision ({wins} of {len(matched)} matched pairs): " + "; ".join(said) + tail
            + " The models trained once (seed " f"{results['config']['model_seed']}), so the intervals cover GPTQ's "
            "calibration draws (and the students' seeds), not the models' own training noise. Refuted, for a matched "
            "pair, by the int4 model's interval reaching the other's.")


ABOUT = """**Claims.** (1) Weight-only int8 is close to lossless, int4 costs clearly more, smaller groups cost
less, and GPTQ's error compensation beats round-to-nearest at 4 bits (Frantar et al. 2022). (2) A small
student distilled from a teacher ≥ 8× its size (Hinton et al. 2015; sequence-level: Kim & Rush 2016)
beats the same student trained from scratch on the same tokens and steps. (3) At equal bytes, a large
model quantized to int4 beats a small one kept at higher precision.

```
groundup lab efficiency            # 3 seeds
groundup lab efficiency --quick    # 1 seed, tiny models
groundup lab efficiency --report-from runs/efficiency/results.json --out DIR
```
"""


def _model_line(results: dict, m: str) -> str:
    cfg, e = results["config"], results["aggregate"]["frontier"][m]
    shape = ((cfg["bpe_layers"], cfg["bpe_heads"], cfg["bpe_embd"], cfg["bpe_steps"]) if m == "bpe" else
             (cfg["large_layers"], cfg["large_heads"], cfg["large_embd"], cfg["large_steps"]))
    return (f"- {MODELS[m]}: {plural(shape[0], 'layer')} × {plural(shape[1], 'head')}, C = {shape[2]}, {e['n_params']['mean']:,.0f} parameters, "
            f"{shape[3]} steps of batch {cfg['batch_size']} × {cfg['block_size']} tokens (the shipped recipe runs "
            f"{cfg['shipped_steps']}), validation loss {e['val_loss']['mean']:.3f} nats/token, "
            f"{human_bytes(e['weight_bytes']['mean'])} of fp32 weights, batch-1 decode "
            f"{short(e['decode_tokens_per_s'], '.0f')} tokens/s.")


def report(results: dict) -> str:
    agg, cfg, n = results["aggregate"], results["config"], len(results["seeds"])
    v = verdicts(results)
    impl = cfg["implementation"]
    lines = ["# Lab: smaller and faster after training — quantization and distillation", "", ABOUT, "## Setup", "",
             setup_line(results), "",
             f"Corpus shakespeare, byte-level BPE of {cfg['bpe_vocab']} tokens (cl100k split), context {cfg['block_size']}. "
             f"Every loss is the mean cross-entropy on the same {cfg['eval_batches']} validation batches "
             f"({cfg['eval_tokens']:,} tokens), so differences between models are paired. The teacher and the larger model "
             f"train once per run (seed {cfg['model_seed']}); the seeds vary GPTQ's {cfg['calibration_windows']} calibration "
             "windows and the students' initialisation and batches. Torch threads: "
             f"{cfg['threads']}. Quantizer: {impl['quantize']}; distillation loss: {impl['distill']}.", "",
             _model_line(results, "bpe"), _model_line(results, "large"), "", "## Verdicts", ""]
    lines += [f"- **{k}.** {s}" for k, s in v.items()]

    lines += ["", "## 1. The quantization frontier", "",
              "Weight-only quantization of every linear layer in the blocks; the tied token embedding / LM head, norms "
              "and biases stay fp32 (so the embedding bounds the compression: it is a large share of these small models). Δ loss in "
              "nats/token against the fp32 model (relative perplexity = exp(Δ)); ± is the 95% interval over "
              f"{n} calibration draws (RTN ignores them: its spread is 0).", ""]
    for m in agg["frontier"]:
        e = agg["frontier"][m]
        rows = [["fp32", "—", "—", f"{e['val_loss']['mean']:.4f}", human_bytes(e["weight_bytes"]["mean"]),
                 short(e["decode_tokens_per_s"], ".0f")]]
        for name in cfg["variants"]:
            x = e["variants"][name]
            rows.append([name, short(x["delta_loss"], ".4f", True), short(x["relative_ppl"], ".4f"), short(x["val_loss"], ".4f"),
                         human_bytes(x["weight_bytes"]["mean"]), short(x["decode_tokens_per_s"], ".0f")])
        lines += [f"**{MODELS[m]}** ({e['n_params']['mean']:,.0f} parameters):", "",
                  table(["weights", "Δ loss (nats/token)", "perplexity ratio", "val loss", "weight bytes", "decode tokens/s"], rows), ""]
    lines += [f"![the frontier]({PLOTS['frontier']})", "",
              "**Against published figures.** " + LLAMA_CPP + " — on a base perplexity of about 6.1, so +0.04%, +3% and "
              "+8%; " + TORCHAO + " (+0.14% and +12.6%). Ours, as perplexity increases: " + _ours(results) + ". "
              "Where ours differ, the likely reasons are scale and training, not the method: these models are tiny "
              "(rows of 128–512 weights, where one group's rounding is a larger share of a row's signal than in an "
              "8B model's 4096-wide rows), trained for a fraction of the shipped 2000 steps (weights closer to their "
              "random initialisation), and scored on a small validation set; the outlier features that make int8 "
              "hard for large models appear only around 6.7B parameters (Dettmers et al. 2022, LLM.int8()). "
              f"Decode speed: {_speed_note(impl)}"]

    d = agg["distill"]
    rows = [[name, short(x["val_loss"], ".4f"), short(x["gap_closed"], ".2f") if name != "scratch" else "0 (by definition)"]
            for name, x in d["students"].items()]
    lines += ["", "## 2. Distillation", "",
              f"Teacher: the shipped-recipe model above ({d['teacher_params']['mean']:,.0f} parameters, validation loss "
              f"{d['teacher_loss']['mean']:.4f}). Student: {plural(cfg['student_layers'], 'layer')} × {plural(cfg['student_heads'], 'head')}, "
              f"C = {cfg['student_embd']} ({d['student_params']['mean']:,.0f} parameters; the teacher is "
              f"{d['param_ratio']['mean']:.1f}× larger), {cfg['student_steps']} steps of batch {cfg['batch_size']}, the same "
              "windows in the same order and the same initialisation for every student of a seed. Distillation loss "
              f"α·T²·KL + (1 − α)·CE with α = {cfg['alpha']}; forward KL is KL(teacher ‖ student), reverse KL(student ‖ "
              f"teacher); sequence-level trains on {cfg['sequence_pool']} windows of {cfg['sequence_prompt']} corpus tokens "
              f"continued by the teacher (sampled at T = 1), reused across steps. Gap closed = (L_scratch − L_student) / "
              "(L_scratch − L_teacher), paired by seed.", "",
              table(["student", "val loss (nats/token)", "share of the gap closed"], rows), "",
              f"![gap closed]({PLOTS['distill']})", "",
              f"**Against published figures.** {SWITCH}; {DISTILBERT}. The Switch figure is the same measure as ours "
              "(the share of the teacher's gain over the student that distillation keeps); DistilBERT's is a ratio "
              "of scores, not of gaps. Both distil much larger, much longer-trained "
              "teachers on far more tokens than here; our teacher is itself undertrained (its soft targets may carry "
              "less of the 'dark knowledge' Hinton et al. describe than a converged model's), and a student this "
              "small may be limited by its capacity more than by its targets. Neither is measured here."]

    pts = _points(results)
    rows = [[m, p, human_bytes(b), short(loss, ".4f")] for m in pts for p, (b, loss) in pts[m].items()]
    lines += ["", "## 3. Distil, then quantize", "",
              f"The teacher, the larger model (their points from section 1), the scratch student and the forward-KL "
              f"(T = {cfg['dq_temperature']:g}) student at fp32, int8 (RTN, per channel) and int4 (GPTQ, groups of "
              f"{cfg['dq_group_size']}); ± over the seeds' calibration draws (and, for the students, their training).", "",
              table(["model", "weights", "weight bytes", "val loss (nats/token)"], rows), "",
              f"![loss vs bytes]({PLOTS['bytes']})", ""]
    return "\n".join(lines)


def _ours(results: dict) -> str:
    """Our relative perplexity increases, in %, at int8 (RTN) and at int4 with GPTQ and RTN at the largest group."""
    g = max(results["config"]["group_sizes"])
    parts = []
    for m in results["aggregate"]["frontier"]:
        V = _variants(results, m)
        pct = lambda name: f"{100 * (V[name]['relative_ppl']['mean'] - 1):+.2f}%"  # noqa: E731
        parts.append(f"{MODELS[m]} int8 {pct('int8-rtn')}, int4 g{g} GPTQ {pct(f'int4-gptq-g{g}')} / RTN {pct(f'int4-rtn-g{g}')}")
    return "; ".join(parts)


def _speed_note(impl: dict) -> str:
    if "stand-in" in impl["quantize"]:
        return ("the lab's stand-in quantizer stores dequantized fp32 weights, so its tokens/s equal fp32's within "
                "noise; the speed of packed int8/int4 matmuls is measured by benchmarks/quantize.py once `groundup "
                "quantize` lands.")
    return ("batch-1 greedy decoding with the KV cache, the fastest of 3 runs, on the model as the quantizer returns "
            "it (its low-bit matmuls read the codes); the fp32 row is the model with the project's fused CPU kernels, "
            "as `groundup sample` runs it. benchmarks/quantize.py measures the same at GPT-2-small shape.")


def _err(summaries: list[dict]) -> list[list[float]]:
    return [[s["mean"] - lower(s) for s in summaries], [upper(s) - s["mean"] for s in summaries]]


def plots(results: dict, out: str | Path) -> list[Path]:
    out, agg, cfg = Path(out), results["aggregate"], results["config"]
    n = len(results["seeds"])
    note = f"bars: 95% CI over {n} seeds" if n > 1 else "1 seed"
    paths = []

    fig, ax = new_figure(f"Quantization frontier ({note})", "weight bytes", "Δ validation loss (nats/token)")
    ax.set_xscale("log")
    for k, m in enumerate(agg["frontier"]):
        e = agg["frontier"][m]
        ax.scatter([e["weight_bytes"]["mean"]], [0.0], marker="*", s=120, color=f"C{k}", label=f"{MODELS[m]}: fp32")
        for j, method in enumerate(("rtn", "gptq")):
            names = [x for x in cfg["variants"] if f"-{method}" in x]
            xs = [e["variants"][x]["weight_bytes"]["mean"] for x in names]
            ys = [e["variants"][x]["delta_loss"] for x in names]
            ax.errorbar(xs, [y["mean"] for y in ys], yerr=_err(ys), fmt="os"[j], color=f"C{k}", capsize=3,
                        alpha=0.9 if method == "gptq" else 0.5, label=f"{MODELS[m]}: {method.upper()}")
            for x, y, name in zip(xs, ys, names):
                ax.annotate(name.replace(f"-{method}", ""), (x, y["mean"]), fontsize=6, alpha=0.7)
    ax.axhline(0, color="gray", lw=0.8)
    ax.legend(fontsize=7)
    paths.append(save_figure(fig, out / PLOTS["frontier"]))

    d = agg["distill"]["students"]
    names = [k for k in d if k != "scratch"]
    fig, ax = new_figure(f"Share of the teacher–scratch gap closed ({note})", "student", "(L_scratch − L) / (L_scratch − L_teacher)")
    gaps = [d[k]["gap_closed"] for k in names]
    ax.bar(names, [g["mean"] for g in gaps], yerr=_err(gaps), capsize=4, color="C0", alpha=0.8)
    ax.axhline(0, color="gray", lw=0.8)
    ax.axhline(0.3, color="C3", ls=":", lw=1, label="Switch distilled students ≈ 0.30 (Fedus 2022)")
    ax.legend(fontsize=8)
    paths.append(save_figure(fig, out / PLOTS["distill"]))

    pts = _points(results)
    fig, ax = new_figure(f"Validation loss against weight bytes ({note})", "weight bytes", "validation loss (nats/token)")
    ax.set_xscale("log")
    for k, m in enumerate(pts):
        precisions = list(pts[m])
        xs = [pts[m][p][0] for p in precisions]
        ys = [pts[m][p][1] for p in precisions]
        ax.errorbar(xs, [y["mean"] for y in ys], yerr=_err(ys), marker="o", capsize=3, color=f"C{k}", label=m)
        for x, y, p in zip(xs, ys, precisions):
            ax.annotate(p, (x, y["mean"]), fontsize=7)
    ax.legend()
    paths.append(save_figure(fig, out / PLOTS["bytes"]))
    return paths
