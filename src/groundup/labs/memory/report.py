"""The memory lab's verdicts, report.md and plots, computed from results.json alone.

`report(results) -> markdown` and `plots(results, out) -> [paths]` read nothing but the results
document (the harness's: config, seeds, per-seed results, their aggregate), so
`groundup lab memory --report-from results.json` rebuilds both without training.

Every verdict names its effect size with the seed-to-seed interval, the threshold it is judged
against (on the interval's near end, or on the single value when there is one seed), and the
result that would have refuted it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from groundup.labs.harness import lower, setup_line, short, stat, upper
from groundup.report.markdown import table
from groundup.report.plots import new_figure, save_figure

PLOTS = {"in_context_lookup": "memory_in_context_lookup.png", "in_context_copy": "memory_in_context_copy.png",
         "forgetting": "memory_forgetting.png", "edit_tradeoff": "memory_edit_tradeoff.png",
         "edit_layers": "memory_edit_layers.png"}


ABOUT = """**Claims.** (1) Once trained, the weights are frozen: a chat cannot teach the model anything.
(2) In-context "learning" is conditioning that is gone when the context is. (3) Learning new things
by updating weights overwrites old knowledge (catastrophic forgetting). (4) LoRA helps, but does not
isolate the new knowledge. (5) A targeted edit of one fact ripples into unrelated behaviour.

```
groundup lab memory                 # 3 seeds (Setup below: this run's wall time)
groundup lab memory --quick         # 1 seed, tiny models: a minute or two
groundup lab memory --run runs/shakespeare_char --only forgetting,lora --steps 500
groundup lab memory --report-from runs/memory/results.json --out DIR
```

Each seed pretrains its own base model on domain A (Shakespeare) through the trainer, with one
character vocabulary built over both domains so nothing of domain B (python-docs) is dropped. Then:
(1) generate from held-out prompts and compare every weight tensor's SHA-256, the weights file,
grad mode, gradients and live optimizers before and after; (2) train one-layer models for two
synthetic tasks whose answers exist only in the context — a key=value lookup (one token per fact,
so reading it is one attention step) and a repeated random sequence — then take the context away;
(3) fine-tune every weight on B and follow held-out loss on A and B; (4) the same with LoRA
adapters (groundup.model.lora) on every attention and feed-forward projection; (5) teach one
sentence by gradient steps (full and LoRA, a gentle and a fast learning rate) until its answer is
learned, and measure held-out loss, changed predictions and which weights moved. Every training
step goes through the project's one training loop (groundup.train.loop.fit).
"""


def _half(summary: dict) -> float:
    """Half-width of the interval, for error bars (0 with one seed: no bar drawn, none claimed)."""
    return 0.0 if summary["ci95"] is None else (summary["ci95"][1] - summary["ci95"][0]) / 2


def _means(summaries: list[dict]) -> list[float]:
    return [s["mean"] for s in summaries]


def _first(results: dict) -> dict:
    """The first seed's results: for what does not average (strings, kinds, learning rates)."""
    return results["per_seed"][0]["results"]


# ---- verdicts ------------------------------------------------------------------------------------
def verdicts(results: dict) -> dict[str, str]:
    """One sentence per claim, computed from the aggregated numbers."""
    agg, first, n = results["aggregate"], _first(results), len(results["seeds"])
    on = "its lower 95% bound" if n > 1 else "its single value (1 seed: no interval)"
    v = {}
    if "frozen" in agg:
        r = agg["frozen"]
        ok = (r["hashes_equal"]["all"] and not r["grad_enabled_during_generation"]["any"]
              and r["optimizers_holding_the_weights"]["mean"] == 0 and r["tensors_with_grad"]["mean"] == 0)
        changed = max(len(s["results"]["frozen"]["changed_tensors"]) for s in results["per_seed"])
        v["frozen"] = (f"{'Supported' if ok else 'NOT supported'}: in {n} of {n} seeds, after generating "
                       f"{r['tokens_generated']['mean']:.0f} tokens from {r['prompts']['mean']:.0f} prompts, "
                       f"{changed} of {r['tensors']['mean']:.0f} weight tensors changed their SHA-256 (at most, over seeds); "
                       f"gradients were {'on' if r['grad_enabled_during_generation']['any'] else 'off'} in every forward "
                       f"and {r['optimizers_holding_the_weights']['mean']:.0f} optimizers held the weights. "
                       "Refuted by any changed hash, any gradient, or an optimizer holding the weights; "
                       "tests/test_lab_memory.py shows a one-ulp change of one weight changes its hash.")
    if "in-context" in agg:
        lk, c, e = agg["in-context"]["lookup"], agg["in-context"]["copy"], agg["effects"]
        chance = lk["chance"]["mean"]
        rises = lower(e["lookup_rise"]) > 0.3
        gone = upper(lk["cleared_context_accuracy"]) < chance + 0.1 and lower(e["copy_loss_rise_without_first_copy"]) > 1.0
        ok = rises and gone and lk["weights_unchanged"]["all"] and c["weights_unchanged"]["all"]
        v["in-context"] = (f"{'Supported' if ok else 'NOT supported'}: lookup accuracy with "
                           f"{lk['facts_in_context'][-1]['mean']:.0f} facts in context minus with none, "
                           f"Δ = {stat(e['lookup_rise'], signed=True)} (threshold: {on} above +0.3); with the context "
                           f"cleared it is {stat(lk['cleared_context_accuracy'])} (chance {chance:.3f}; threshold: below "
                           f"chance + 0.1); the copy model's loss rises by {stat(e['copy_loss_rise_without_first_copy'], signed=True)} "
                           f"nats when the first copy is cut (threshold: above +1.0); weights hashed the same throughout. "
                           f"Refuted if accuracy did not rise with the facts, or stayed above chance with the context "
                           f"gone (the model had stored the facts); tests/test_lab_memory.py shows an untrained model "
                           f"stays near chance.")
    if "forgetting" in agg:
        r = agg["forgetting"]
        ok = lower(r["A_increase"]) > 0.05 and lower(r["B_decrease"]) > 0
        v["forgetting"] = (f"{'Supported' if ok else 'NOT supported'}: {first['forgetting']['steps']} steps of "
                           f"fine-tuning on B lower B's loss by {stat(r['B_decrease'])} and raise A's by "
                           f"Δ = {stat(r['A_increase'], signed=True)} nats/token (threshold: {on} above +0.05). "
                           "Refuted if A's loss had not risen (Δ ≤ 0.05) while B's fell.")
    if "lora" in agg:
        r, f, d = agg["lora"], agg["forgetting"], agg["effects"]["forgetting_full_minus_lora"]
        if upper(f["A_increase"]) <= 0.01:
            verdict, tail = "Not testable here", "full fine-tuning did not raise A's loss either."
        elif upper(r["A_increase"]) <= 0.01:
            verdict, tail = "NOT supported", "LoRA left A's loss where it was: no forgetting here."
        elif lower(d) > 0:
            verdict, tail = "Supported", "less forgetting than full fine-tuning, but not none."
        elif upper(d) < 0:
            verdict, tail = "NOT supported", "more forgetting than full fine-tuning here."
        else:
            verdict, tail = "Not decided", "the interval of the difference includes zero."
        fr = first["lora"]
        v["lora"] = (f"{verdict}: LoRA trains {fr['trainable_parameters']:,} parameters "
                     f"({100 * fr['trainable_parameters'] / fr['full_trainable_parameters']:.1f}% of full), its adapter is "
                     f"{fr['adapter_bytes'] / 1024:.0f} KiB vs {fr['full_weights_bytes'] / 1024:.0f} KiB; it raises A's loss "
                     f"by {stat(r['A_increase'], signed=True)} against full fine-tuning's {stat(f['A_increase'], signed=True)}, "
                     f"a difference of {stat(d, signed=True)} (Supported needs {on} above 0 and LoRA's own rise above "
                     f"0.01), and lowers B's by {stat(r['B_decrease'])} (full: {stat(f['B_decrease'])}): {tail} "
                     "Refuted by LoRA forgetting as much as full fine-tuning, or not at all.")
    if "edit" in agg:
        runs, kinds = agg["edit"]["runs"], first["edit"]["runs"]
        learned = [a for a, k in zip(runs, kinds) if upper(a["after"]["fact_answer_loss"]) < lower(a["before"]["fact_answer_loss"])]
        ok = bool(learned) and all(lower(a["changed_predictions_A"]) > 0.01 for a in learned)
        parts = [f"{k['kind']} at lr {k['lr']:g}: the answer's loss {a['before']['fact_answer_loss']['mean']:.2f} → "
                 f"{a['after']['fact_answer_loss']['mean']:.3f} in {a['steps']['mean']:.0f} steps, "
                 f"held-out A loss {stat(dA, signed=True)}, A's predictions changed (percent) {stat(_percent(a['changed_predictions_A']), '.1f')}"
                 for a, k, dA in zip(runs, kinds, agg["effects"]["edit_A_loss_change"])]
        v["edit"] = (f"{'Supported' if ok else 'NOT supported'}: " + "; ".join(parts)
                     + f". Supported needs every edit that learned the fact to change more than 1% of held-out "
                       f"predictions ({on}). Refuted if the fact were learned with held-out predictions left alone.")
    return v


def _percent(summary: dict) -> dict:
    scale = lambda x: None if x is None else 100 * x  # noqa: E731
    return {"mean": 100 * summary["mean"], "sd": scale(summary["sd"]), "n": summary["n"],
            "ci95": None if summary["ci95"] is None else [100 * x for x in summary["ci95"]]}


# ---- report ----------------------------------------------------------------------------------
def report(results: dict) -> str:
    """report.md, from the results document alone."""
    agg, first, claims = results["aggregate"], _first(results), verdicts(results)
    cfg = results["config"]
    seconds = [f"seed {s['seed']}: {s['seconds']:.0f} s" for s in results["per_seed"]]
    parts = ["# Memory lab\n", ABOUT,
             "## Setup\n",
             setup_line(results) + f" Per seed: {', '.join(seconds)}. Device {cfg['device']}.\n",
             (f"Base model (first seed): {first['base']['note']}. Every seed pretrains its own base model, trains its "
              f"own task models and draws its own batches and prompts.\n" if "base" in first else ""),
             "Tables give the mean over seeds ± the half-width of the 95% interval (Student t over seeds).\n"]
    if "frozen" in agg:
        r = agg["frozen"]
        parts += ["## 1. Frozen weights\n", claims["frozen"] + "\n", table(
            ["tensors", "parameters", "prompts", "tokens generated", "hashes equal (all seeds)", "weights file unchanged",
             "grads", "optimizers"],
            [[f"{r['tensors']['mean']:.0f}", f"{r['parameters']['mean']:,.0f}", f"{r['prompts']['mean']:.0f}",
              f"{r['tokens_generated']['mean']:.0f}", r["hashes_equal"]["all"],
              r["weights_file_sha256_equal"]["all"] if "weights_file_sha256_equal" in r else "n/a",
              f"{r['tensors_with_grad']['mean']:.0f}", f"{r['optimizers_holding_the_weights']['mean']:.0f}"]]) + "\n"]
    if "in-context" in agg:
        r = agg["in-context"]
        lk = r["lookup"]
        rows = [[f"{n['mean']:.0f}", short(a), f"{b['mean']:.3f}"]
                for n, a, b in zip(lk["facts_in_context"], lk["accuracy"], lk["best_possible"])]
        copy_rows = [["copy model", short(r["copy"]["first_copy"]), short(r["copy"]["second_copy"]),
                      short(r["copy"]["second_copy_alone"])]]
        if "copy_base_model" in r:
            b = r["copy_base_model"]
            copy_rows.append(["pretrained base", short(b["first_copy"]), short(b["second_copy"]), short(b["second_copy_alone"])])
        m = lk["model"]
        parts += ["## 2. In-context learning\n", claims["in-context"] + "\n",
                  f"Lookup model: 1 layer, {m['n_embd']['mean']:.0f} wide, trained until it reads the list "
                  f"({short(m['steps'], '.0f')} steps, at most {m['max_steps']['mean']:.0f}); "
                  f"{first['in-context']['lookup']['sequences']} test sequences per point.\n",
                  table(["facts in context", "accuracy", "best possible"], rows) + "\n",
                  f"Context cleared: {short(lk['cleared_context_accuracy'])}; another key=value list in context: "
                  f"{short(lk['other_context_accuracy_vs_new_answers'])} against its answers, "
                  f"{short(lk['other_context_accuracy_vs_old_answers'])} against the old ones.\n",
                  table(["model", "loss, first copy", "second copy", "second copy alone"], copy_rows) + "\n",
                  f"![lookup]({PLOTS['in_context_lookup']})\n\n![copy]({PLOTS['in_context_copy']})\n"]
    if "forgetting" in agg:
        r = agg["forgetting"]
        a, b = first["base"]["corpus_a"], first["base"]["corpus_b"]
        rows = [[f"{p['step']['mean']:.0f}", short(p["A"]), short(p["B"])] for p in r["curve"]]
        parts += ["## 3. Fine-tuning and forgetting\n", claims["forgetting"] + "\n",
                  table(["step", f"val loss A ({a})", f"val loss B ({b})"], rows) + "\n",
                  f"![forgetting]({PLOTS['forgetting']})\n"]
    if "lora" in agg:
        r, f, fr = agg["lora"], agg["forgetting"], first["lora"]
        parts += ["## 4. LoRA vs full fine-tuning\n", claims["lora"] + "\n", table(
            ["", "trainable params", "file bytes", "lr", "B loss after", "B gain", "A loss after", "A loss change", "seconds"],
            [["full", f"{fr['full_trainable_parameters']:,}", f"{fr['full_weights_bytes']:,}", f"{first['forgetting']['lr']:g}",
              short(f["B_after"]), short(f["B_decrease"]), short(f["A_after"]), short(f["A_increase"], signed=True),
              short(f["seconds"], ".0f")],
             [f"LoRA r={fr['r']}, α={fr['alpha']:g}", f"{fr['trainable_parameters']:,}", f"{fr['adapter_bytes']:,}",
              f"{fr['lr']:g}", short(r["B_after"]), short(r["B_decrease"]), short(r["A_after"]),
              short(r["A_increase"], signed=True), short(r["seconds"], ".0f")]]) + "\n",
            f"Merged into W + (α/r)·B·A the logits differ by at most {r['merge_max_abs_logit_difference']['mean']:.2e} "
            f"(mean over seeds); unmerging restores every weight exactly in every seed: "
            f"{r['unmerge_restores_weights_exactly']['all']}.\n"]
    if "edit" in agg:
        r, fe = agg["edit"], first["edit"]
        rows = [[k["kind"], f"{k['lr']:g}", short(a["steps"], ".0f"), short(a["before"]["fact_answer_loss"]),
                 short(a["after"]["fact_answer_loss"]), short(a["before"]["paraphrase_loss"]),
                 short(a["after"]["paraphrase_loss"]), short(dA, signed=True),
                 short(dB, signed=True), short(_percent(a["changed_predictions_A"]), ".1f"), repr(k["completion_after"])]
                for a, k, dA, dB in zip(r["runs"], fe["runs"], agg["effects"]["edit_A_loss_change"],
                                        agg["effects"]["edit_B_loss_change"])]
        top = sorted(r["runs"][0]["relative_change_by_layer"].items(), key=lambda kv: -kv[1]["mean"])[:3]
        k0 = fe["runs"][0]
        parts += ["## 5. Targeted edit and ripple damage\n", claims["edit"] + "\n",
                  f"Fact: {fe['fact']!r}; before any edit the first seed's model continues {fe['prompt']!r} with "
                  f"{fe['completion_before']!r}. Each edit stops once the answer costs under {fe['target_loss']:g} "
                  f"nats/token. Held-out losses before the edits: A {short(r['runs'][0]['before']['A_loss'])}, "
                  f"B {short(r['runs'][0]['before']['B_loss'])}.\n",
                  table(["edit", "lr", "steps", "answer loss before", "after", "paraphrase before", "after",
                         "A loss change", "B loss change", "% A predictions changed", "completion after (first seed)"], rows) + "\n",
                  f"Weights changed most by the {k0['kind']} edit at lr {k0['lr']:g} (‖ΔW‖/‖W‖, mean over seeds): "
                  + ", ".join(f"{name} {s['mean']:.2e}" for name, s in top) + ".\n",
                  f"![edit]({PLOTS['edit_tradeoff']})\n\n![layers]({PLOTS['edit_layers']})\n"]
    return "\n".join(parts)


# ---- plots ---------------------------------------------------------------------------------
def plots(results: dict, out: str | Path) -> list[Path]:
    """Every plot the report shows, into `out`, from the results document alone."""
    out, agg, paths = Path(out), results["aggregate"], []
    n = len(results["seeds"])
    if "in-context" in agg:
        paths.append(plot_lookup(agg["in-context"]["lookup"], n, out / PLOTS["in_context_lookup"]))
        paths.append(plot_copy(agg["in-context"], out / PLOTS["in_context_copy"]))
    if "forgetting" in agg:
        base = _first(results)["base"]
        paths.append(plot_forgetting(agg["forgetting"], agg.get("lora"), _first(results).get("lora"),
                                     out / PLOTS["forgetting"], (base["corpus_a"], base["corpus_b"]), n))
    if "edit" in agg:
        paths += plot_edit(results, out / PLOTS["edit_tradeoff"], out / PLOTS["edit_layers"])
    return paths


def _seeds_note(n: int) -> str:
    return f"mean of {n} seeds, bars: 95% CI" if n > 1 else "1 seed: no interval"


def plot_lookup(r: dict, n_seeds: int, path: Path) -> Path:
    fig, ax = new_figure(f"In-context lookup: accuracy vs facts in context\n({_seeds_note(n_seeds)})",
                         "facts (key=value) in context", "accuracy on the query")
    n = _means(r["facts_in_context"])
    ax.errorbar(n, _means(r["accuracy"]), yerr=[_half(a) for a in r["accuracy"]], fmt="o-", capsize=3,
                label="model trained for the task")
    ax.plot(n, _means(r["best_possible"]), "--", color="gray", label="best possible from the context")
    chance = r["chance"]["mean"]
    ax.axhline(chance, color="black", lw=0.8, ls=":", label=f"chance (1/{round(1 / chance)})")
    for key, marker, color, label in [
            ("cleared_context_accuracy", "x", "red", "same queries, context cleared"),
            ("other_context_accuracy_vs_new_answers", "^", "green", "another list in context, its answers"),
            ("other_context_accuracy_vs_old_answers", "s", "orange", "another list in context, the old answers")]:
        ax.errorbar([n[-1]], [r[key]["mean"]], yerr=[_half(r[key])], fmt=marker, color=color, mfc="none", ms=9,
                    capsize=3, label=f"{label} ({r[key]['mean']:.2f})")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xticks(n)
    ax.set_xticklabels([f"{v:.0f}" for v in n])
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8, loc="upper left")
    return save_figure(fig, path)


def plot_copy(result: dict, path: Path) -> Path:
    fig, ax = new_figure("In-context copying: loss per position of a repeated random sequence\n(mean over seeds)",
                         "position in the sequence (first copy | second copy)", "loss (nats)")
    for key, label in (("copy", "model trained to copy"), ("copy_base_model", "pretrained base model")):
        if key in result:
            r = result[key]
            ax.plot(range(1, len(r["per_position"]) + 1), _means(r["per_position"]), "-", lw=1.2,
                    label=f"{label}: {r['first_copy']['mean']:.2f} → {r['second_copy']['mean']:.2f}; "
                          f"second copy alone {r['second_copy_alone']['mean']:.2f}")
    L = len(result["copy"]["per_position"]) // 2
    ax.axvline(L + 0.5, color="gray", lw=0.8)
    ax.axhline(result["copy"]["uniform_loss"]["mean"], color="black", lw=0.8, ls=":", label="uniform guess (trained task)")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_forgetting(full: dict, lora: dict | None, lora_first: dict | None, path: Path, names: tuple[str, str],
                    n_seeds: int) -> Path:
    fig, ax = new_figure(f"Fine-tuning on B: validation loss on A (old) and B (new)\n({_seeds_note(n_seeds)})",
                         "fine-tuning step", "validation loss (nats/token)")
    steps = [p["step"]["mean"] for p in full["curve"]]
    curves = [(full, "o-", "full fine-tuning", "full")]
    if lora is not None:
        curves.append((lora, "s--", f"LoRA r={lora_first['r']}", "none"))
    for r, style, what, fill in curves:
        for key, color, label in (("A", "C3", f"A = {names[0]}"), ("B", "C0", f"B = {names[1]}")):
            mean = np.array([p[key]["mean"] for p in r["curve"]])
            half = np.array([_half(p[key]) for p in r["curve"]])
            ax.plot(steps, mean, style, color=color, ms=3, mfc=None if fill == "full" else "none", label=f"{label}, {what}")
            if half.any():
                ax.fill_between(steps, mean - half, mean + half, color=color, alpha=0.15, lw=0)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_edit(results: dict, path_tradeoff: Path, path_layers: Path) -> list[Path]:
    fig, ax = new_figure("Teaching one fact: how far it is learned vs how far held-out text moves\n(each seed)",
                         "loss of the fact's answer (nats/token; learned → right)", "change of held-out loss on A (nats/token)")
    first = _first(results)["edit"]
    for k, seed in enumerate(results["per_seed"]):
        for i, run in enumerate(seed["results"]["edit"]["runs"]):
            h = run["history"]
            ax.plot([p["fact_answer_loss"] for p in h], [p["A_loss"] - h[0]["A_loss"] for p in h],
                    "-" if run["kind"] == "full" else "--", marker="o", ms=3, color=f"C{i}", alpha=0.8,
                    label=f"{run['kind']}, lr {run['lr']:g}" if k == 0 else None)
    ax.axvline(first["target_loss"], color="gray", lw=0.8, ls=":", label="target for the fact")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.legend(fontsize=8)
    save_figure(fig, path_tradeoff)

    runs = results["aggregate"]["edit"]["runs"]
    layers = list(runs[0]["relative_change_by_layer"])
    n = len(results["seeds"])
    fig, ax = new_figure(f"Which weights each edit changed (no bar: unchanged)\n({_seeds_note(n)})", "", "‖ΔW‖ / ‖W‖",
                         figsize=(9, 4.8))
    xs = np.arange(len(layers))
    width = 0.8 / len(runs)
    for i, (run, kind) in enumerate(zip(runs, first["runs"])):
        change = run["relative_change_by_layer"]
        ax.bar(xs - 0.4 + (i + 0.5) * width, [change[k]["mean"] for k in layers], width,
               yerr=[_half(change[k]) for k in layers] if n > 1 else None, capsize=2, color=f"C{i}",
               label=f"{kind['kind']}{' (merged)' if kind['kind'] == 'lora' else ''}, lr {kind['lr']:g}")
    ax.set_xticks(xs)
    ax.set_xticklabels(layers, rotation=40, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    save_figure(fig, path_layers)
    return [path_tradeoff, path_layers]
