"""The failures lab's verdicts, report.md and plots, from results.json alone."""

from __future__ import annotations

import math
from pathlib import Path

from groundup.labs.harness import setup_line, short, stat
from groundup.report.markdown import table
from groundup.report.plots import new_figure, save_figure

PLOTS = {"goodput": "failures_goodput_vs_gpus.png", "interval": "failures_interval_vs_gpus.png",
         "validation": "failures_validation.png", "sdc": "failures_sdc.png"}
TARGETS = ("weight", "grad")
CLASSES = ("sign", "exponent", "mantissa", "30")  # (the strata: "30" = the top exponent bit alone)
LABELS = {"sign": "sign", "exponent": "exponent (random bit)", "mantissa": "mantissa", "30": "exponent bit 30 (top)"}
MECHANISMS = ("guard", "probe", "gnorm", "checksum")
VERSION = 1  # (the lab's version: docs.py skips a results file of another)
AGREEMENT = 0.05  # |measured − predicted goodput| the validation accepts
HARMFUL = 0.01  # nats of val-loss change after the horizon: a flip this harmful must not go unseen
YOUNG_MATCH = 0.005  # goodput at Young's τ within this of the model's optimum (where first order holds)



def validation_verdict(inside: bool, outside: bool) -> str:
    """Three ways, like every lab verdict: all errors' intervals inside ±AGREEMENT → Supported; any
    interval wholly outside → NOT supported; otherwise the seeds cannot tell."""
    if outside:
        return "NOT supported"
    return "Supported" if inside else "Not resolved"

def _ms(summary: dict) -> dict:
    scale = lambda v: None if v is None else v * 1e3  # noqa: E731
    return {**summary, "mean": summary["mean"] * 1e3,
            "ci95": None if summary["ci95"] is None else [scale(v) for v in summary["ci95"]]}


def _flips(results: dict) -> list[dict]:
    return [f for d in results["detail"] for f in d["flips"]]


def _pooled(flips: list[dict], target: str, kind: str) -> dict:
    cell = [f for f in flips if f["target"] == target and f.get("stratum", f["class"]) == kind]
    n = len(cell)
    out = {"n": n}
    for m in MECHANISMS:
        out[m] = sum(f["delay"][m] is not None for f in cell)
    missed = [f for f in cell if f["delay"]["guard"] is None]
    out["guard_missed"] = len(missed)
    out["missed_caught"] = sum(any(f["delay"][m] is not None for m in ("probe", "gnorm")) for f in missed)
    harm = [abs(f["val_loss_change"]) for f in missed if f["val_loss_change"] is not None]
    out["missed_harm_max"] = max(harm) if harm else 0.0
    return out


def _harmful_unseen(flips: list[dict]) -> list[dict]:
    """Flips no guard or semantic detector (probe, gnorm) saw that changed the val loss by > HARMFUL."""
    return [f for f in flips if all(f["delay"][m] is None for m in ("guard", "probe", "gnorm"))
            and (f["val_loss_change"] is None or abs(f["val_loss_change"]) > HARMFUL)]


def verdicts(results: dict) -> dict[str, str]:
    out = {}
    cfg, proj = results["config"], results["projection"]
    llama = [p for p in proj["llama3"] if p["checkpoint_s"] == 60.0] or proj["llama3"]
    p = llama[0]
    need = "; ".join(f"δ = {q['checkpoint_s']:g} s needs R ≤ {q['max_restart_s_for_target']:.0f} s"
                     if q["max_restart_s_for_target"] is not None else f"δ = {q['checkpoint_s']:g} s cannot reach it even with R = 0"
                     for q in proj["llama3"])
    rows = [r for r in proj["sweep"]["rows"] if r["first_order_ok"]]
    worst = max(abs(r["young_interval_s"] / r["argmax_interval_s"] - 1) for r in rows) if rows else float("nan")
    gap = max(r["goodput_argmax"] - r["goodput_young"] for r in rows) if rows else float("nan")
    big = max(proj["sweep"]["rows"], key=lambda r: (r["checkpoint_s"] == p["checkpoint_s"], r["gpus"]))
    out["projection"] = (
        f"At Llama 3's scale ({p['gpus']:,} GPUs, λ = {p['failures_per_gpu_hour']:.3g} failures per GPU-hour from 419 "
        f"unexpected interruptions in 54 days) the job fails every {p['mtbf_s'] / 3600:.2f} h "
        f"({p['interruptions_per_day']:.1f} a day); with δ = {p['checkpoint_s']:g} s and R = {p['restart_s']:g} s "
        f"(assumed) Young's interval is {p['young_interval_s'] / 60:.1f} min and the model's goodput "
        f"{p['goodput']:.3f}; Llama 3 reports > 90% effective training time, which in this model {need}. "
        f"At {big['gpus']:,} GPUs the same δ and R give {big['goodput_young']:.3f}. Wherever τ + δ + R < M/4, Young's "
        f"√(2δM) is within {worst:.1%} of the model's numerical optimum and its goodput within {gap:.2g} of the optimum's "
        f"({'supported' if gap <= YOUNG_MATCH else 'NOT supported'} that Young's interval is as good as optimal: "
        f"refuted by a gap above {YOUNG_MATCH}).")

    v = results["aggregate"]["validation"]
    parts, inside, outside = [], True, False
    for k, run in enumerate(v["runs"]):
        spec = cfg["val_grid"][k]
        err = run["error"]
        if err["ci95"] is None:  # one seed: no interval, nothing resolved
            inside = False
        else:
            lo, hi = err["ci95"]
            inside &= -AGREEMENT <= lo and hi <= AGREEMENT
            outside |= lo > AGREEMENT or hi < -AGREEMENT
        parts.append(f"MTBF {spec[0]}× start-up, checkpoint every {spec[1]} steps: measured "
                     f"{short(run['goodput_measured'])} vs model {short(run['goodput_model'])} (error {short(err, '.3f', True)})")
    out["validation"] = (
        f"{validation_verdict(inside, outside)}: " + "; ".join(parts) + f". δ = {short(v['checkpoint_s'], '.3f')} s, "
        f"R = {short(v['restart_s'], '.2f')} s, step {short(v['step_s'], '.4f')} s (measured, ± over seeds). "
        f"Supported when every error's interval lies within ±{AGREEMENT}; refuted by one entirely outside it; "
        "otherwise not resolved (the intervals are wider than the band: more seeds or longer runs would settle it).")

    flips = _flips(results)
    cells = {(t, c): _pooled(flips, t, c) for t in TARGETS for c in CLASSES}
    caught = "; ".join(f"{t} {LABELS[c]}: {x['guard']}/{x['n']}" for (t, c), x in cells.items() if x["n"])
    out["guards"] = (f"The existing guards caught {sum(x['guard'] for x in cells.values())} of {len(flips)} single-bit flips "
                     f"(pooled over seeds; {caught}). They see only a non-finite or spiking loss/norm: a flip that "
                     "leaves the loss finite and near its average passes. Refuted (guards sufficient) if no flip they "
                     "missed changed the loss measurably — see the harm column.")
    unseen = _harmful_unseen(flips)
    missed = sum(x["guard_missed"] for x in cells.values())
    rescued = sum(x["missed_caught"] for x in cells.values())
    harm_max = max((x["missed_harm_max"] for x in cells.values()), default=0.0)
    alarms = results["aggregate"]["sdc"]["false_alarms"]
    out["detectors"] = (
        f"{'Supported' if not unseen else 'NOT supported'}: of the {missed} flips the guards missed, the fixed-batch "
        f"probe or the gradient-norm check caught {rescued}; no flip that nobody caught changed the val loss by more "
        f"than {HARMFUL} nats after {cfg['sdc_horizon']} steps ({len(unseen)} did; the largest change among all "
        f"guard-missed flips: {harm_max:.2g} nats). False alarms per clean step: probe {short(alarms['probe'], '.3f')}, "
        f"gnorm {short(alarms['gnorm'], '.3f')}. The checksum catches every weight flip and no gradient flip, by "
        f"construction. Refuted by a harmful flip (> {HARMFUL} nats) no detector saw.")
    return out


ABOUT = """**Claims.** (1) As a cluster grows, failures arrive faster (M = 1/(n·λ)) and the optimal checkpoint
interval shrinks as √(2δM) (Young 1974), so goodput falls with size for fixed checkpoint and restart
costs. (2) The first-order goodput model G = [τ/(τ + δ)]·[1 − (R + (τ + δ)/2)/M] (groundup.cluster)
predicts the goodput of a real run killed at random and restarted. (3) One flipped bit (silent data
corruption) is either caught by the training guards (non-finite or spiking loss), or passes unseen; a
cheap detector catches what matters among the rest.

```
groundup lab failures            # 3 seeds by default (each run's wall time: Setup below)
groundup lab failures --quick    # 1 seed, one supervised run, few flips (< 2 min)
groundup lab failures --report-from runs/failures/results.json --out DIR
```

The failure rate comes from the Llama 3 paper (Table 5: 419 unexpected interruptions in 54 days of
pre-training on 16,384 H100 GPUs; REFERENCES.md). The checkpoint write time δ and restart time R at
cluster scale are **assumptions** (the paper gives neither), shown for several δ. The validation
trains a small character model as a child process of `groundup supervise`, which SIGKILLs it at
Poisson-distributed times and restarts it with `--resume`; every quantity the model needs (step time,
δ, R) is measured on the same machine in the same run. The bit flips use `--inject bitflip`'s code
(groundup.train.guards) on a tiny character model after a warm-up, each from the same snapshot.
"""


def report(results: dict) -> str:
    cfg, agg = results["config"], results["aggregate"]
    v = verdicts(results)
    lines = ["# Lab: the cost of failures, and silent data corruption", "", ABOUT, "## Setup", "", setup_line(results), "",
             "## Verdicts", ""]
    lines += [f"- **{k}.** {s}" for k, s in v.items()]

    proj = results["projection"]
    lines += ["", "## 1. Goodput against cluster size (the model, calibrated on Llama 3)", "",
              f"λ = {cfg['llama3_failures_per_gpu_hour']:.4g} failures per GPU-hour; restart R = {cfg['cluster_restart_s']:g} s "
              f"(assumed); τ* = √(2δM); 'fixed' checkpoints every {cfg['fixed_interval_s']:g} s. 'first order' marks rows "
              "with τ + δ + R < M/4, where the model's approximations hold.", "",
              f"![goodput]({PLOTS['goodput']})", "", f"![interval]({PLOTS['interval']})", "",
              table(["GPUs", "δ (s)", "MTBF", "τ* (min)", "argmax (min)", "goodput at τ*", "goodput, fixed", "first order"],
                    [[f"{r['gpus']:,}", f"{r['checkpoint_s']:g}", f"{r['mtbf_s'] / 3600:.2f} h", f"{r['young_interval_s'] / 60:.1f}",
                      f"{r['argmax_interval_s'] / 60:.1f}", f"{r['goodput_young']:.3f}", f"{r['goodput_fixed']:.3f}",
                      "yes" if r["first_order_ok"] else "no"] for r in proj["sweep"]["rows"]]), "",
              "At Llama 3's scale, the largest restart time R that still gives 90% goodput at τ* (in this model):", "",
              table(["δ (s)", "MTBF (h)", "τ* (min)", f"goodput (R = {cfg['cluster_restart_s']:g} s)", "max R for 90%"],
                    [[f"{p['checkpoint_s']:g}", f"{p['mtbf_s'] / 3600:.2f}", f"{p['young_interval_s'] / 60:.1f}", f"{p['goodput']:.3f}",
                      "unreachable" if p["max_restart_s_for_target"] is None else f"{p['max_restart_s_for_target']:.0f} s"]
                     for p in proj["llama3"]])]

    val = agg["validation"]
    lines += ["", "## 2. The model against real runs here", "",
              f"A {cfg['val_layers']}-layer, {cfg['val_embd']}-wide character model, {cfg['val_steps']} steps, under "
              "`groundup supervise`. Measured per seed (± is the 95% interval over seeds), in the uninterrupted run: step "
              f"{stat(val['step_s'], '.4f')} s; checkpoint write δ timed directly {stat(val['checkpoint_s'], '.4f')} s; fresh start-up "
              f"{stat(val['startup_s'], '.2f')} s; restart R {stat(val['restart_s'], '.2f')} s. All times are read inside each "
              "run's training window, from the first step it logs to its last (one start-up and the final evaluation "
              "and save are outside, alike for every run). Goodput measured = (steps in the window) × step time / window; "
              "the model is cluster.goodput with τ = k × step time, δ and the step time read from the run's own surviving "
              "steps (the median time of a step, and the median extra time of a step that follows a save), the seed's "
              "mean restart time R, and M = window / (kills in it) "
              "('nominal': M = 1/λ, the rate asked for). The MTBF asked for is a multiple of the measured start-up time, "
              "so the experiment keeps its shape on a slower or busier machine.", "",
              f"![validation]({PLOTS['validation']})", "",
              table(["MTBF asked", "checkpoint every", "step (ms)", "δ in run (ms)", "kills", "window (s)", "measured", "model",
                     "model (nominal M)", "error"],
                    [[f"{cfg['val_grid'][k][0]}× start-up", f"{cfg['val_grid'][k][1]} steps", short(_ms(r["step_s"]), ".1f"),
                      short(_ms(r["checkpoint_s"]), ".1f") if "checkpoint_s" in r else "–", short(r["kills"], ".1f"),
                      short(r["window_s"], ".1f"), short(r["goodput_measured"]), short(r["goodput_model"]),
                      short(r["goodput_model_nominal"]), short(r["error"], ".3f", True)] for k, r in enumerate(val["runs"])])]

    flips = _flips(results)
    lines += ["", "## 3. Silent data corruption: one flipped bit", "",
              f"{len(flips)} flips over {len(results['seeds'])} seed(s), after {cfg['sdc_warmup']} warm-up steps, each "
              f"watched for {cfg['sdc_horizon']} steps. Counts pooled over seeds: caught by the guards (non-finite or "
              "spiking loss or norm), the fixed-batch loss probe (threshold "
              f"{short(agg['sdc']['threshold'], '.3g')} nats = {cfg['sdc_probe_factor']:g} × the largest warm-up change), "
              f"the gradient-norm check (ratio to its running average above {short(agg['sdc']['gnorm_threshold'], '.3g')}), "
              "the parameter checksum; 'missed → caught' counts the guard-missed flips the probe or the norm check "
              "caught; 'harm' is the largest |val-loss change| after the horizon among the guard-missed flips.", "",
              f"![sdc]({PLOTS['sdc']})", "",
              table(["target", "bits", "flips", "guard", "probe", "gnorm", "checksum", "missed → caught", "harm (nats)"],
                    [[t, LABELS[c], x["n"], x["guard"], x["probe"], x["gnorm"], x["checksum"],
                      f"{x['missed_caught']}/{x['guard_missed']}", f"{x['missed_harm_max']:.2g}"]
                     for t in TARGETS for c in CLASSES for x in [_pooled(flips, t, c)] if x["n"]]), ""]
    by_bit = {}
    for f in flips:
        if f["class"] == "exponent" and f["bit"] is not None:  # (both strata: the random bits and bit 30)
            by_bit.setdefault((f["target"], f["bit"]), []).append(f)
    lines += ["Exponent flips by bit (bit 30 is float32's top exponent bit: a weight below 2 in magnitude becomes "
              "about 2^128 times larger):", "",
              table(["target", "bit", "flips", "guard", "probe", "gnorm", "largest magnitude after"],
                    [[t, b, len(fs), *[sum(f["delay"][m] is not None for f in fs) for m in ("guard", "probe", "gnorm")],
                      f"{max(abs(f['after']) for f in fs):.3g}"] for (t, b), fs in sorted(by_bit.items())]), "",
              "The checksum is the one-process stand-in for DDP's cross-rank comparison "
              "(train.distributed.weights_in_sync): a weight flipped in one rank's memory makes that rank differ. A "
              "flipped gradient is all-reduced before the update, so every rank applies the same corrupted update and "
              "no comparison between ranks can see it. Llama 3 attributes 6 of its 419 unexpected interruptions to "
              "silent data corruption (Table 5)."]
    return "\n".join(lines) + "\n"


def plots(results: dict, out) -> list[Path]:
    out = Path(out)
    paths = []
    rows = results["projection"]["sweep"]["rows"]
    deltas = sorted({r["checkpoint_s"] for r in rows})
    fig, ax = new_figure("Goodput at Young's interval vs cluster size", "GPUs", "goodput (useful fraction of wall time)")
    for d in deltas:
        rs = [r for r in rows if r["checkpoint_s"] == d]
        ax.plot([r["gpus"] for r in rs], [r["goodput_young"] for r in rs], "o-", label=f"δ = {d:g} s, τ = τ*")
        ax.plot([r["gpus"] for r in rs], [r["goodput_fixed"] for r in rs], ":", label=f"δ = {d:g} s, τ = 1 h")
    ax.axvline(16384, color="gray", lw=0.8, ls="--", label="Llama 3 (16,384)")
    ax.set_xscale("log")
    ax.legend(fontsize=7)
    paths.append(save_figure(fig, out / PLOTS["goodput"]))

    fig, ax = new_figure("Optimal checkpoint interval vs cluster size", "GPUs", "seconds")
    for d in deltas:
        rs = [r for r in rows if r["checkpoint_s"] == d]
        ax.plot([r["gpus"] for r in rs], [r["young_interval_s"] for r in rs], "o-", label=f"τ* = √(2δM), δ = {d:g} s")
    rs = [r for r in rows if r["checkpoint_s"] == deltas[0]]
    ax.plot([r["gpus"] for r in rs], [r["mtbf_s"] for r in rs], "k--", label="MTBF M")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    paths.append(save_figure(fig, out / PLOTS["interval"]))

    fig, ax = new_figure("Goodput: measured vs first-order model", "model (measured δ, R, kill rate)", "measured")
    for seed_result in results["per_seed"]:
        runs = seed_result["results"]["validation"]["runs"]
        ax.plot([r["goodput_model"] for r in runs], [r["goodput_measured"] for r in runs], "o", alpha=0.6,
                label=f"seed {seed_result['seed']}")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="measured = model")
    ax.fill_between([0, 1], [-AGREEMENT, 1 - AGREEMENT], [AGREEMENT, 1 + AGREEMENT], color="gray", alpha=0.15)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    paths.append(save_figure(fig, out / PLOTS["validation"]))

    flips = _flips(results)
    fig, ax = new_figure("Single-bit flips: fraction caught", "target / bits", "fraction caught within the horizon")
    short_names = {"sign": "sign", "exponent": "exp.\n(random)", "mantissa": "mant.", "30": "exp.\nbit 30"}
    labels = [f"{t}\n{short_names[c]}" for t in TARGETS for c in CLASSES]
    width = 0.2
    for k, m in enumerate(MECHANISMS):
        values = []
        for t in TARGETS:
            for c in CLASSES:
                x = _pooled(flips, t, c)
                values.append(x[m] / x["n"] if x["n"] else math.nan)
        ax.bar([i + (k - 1.5) * width for i in range(len(labels))], values, width, label=m)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylim(0, 1.15)
    ax.legend(fontsize=7, loc="upper left", ncol=4)
    paths.append(save_figure(fig, out / PLOTS["sdc"]))
    return paths
