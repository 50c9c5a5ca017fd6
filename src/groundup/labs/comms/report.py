"""The comms lab's verdicts, report.md and plots, from results.json alone."""

from __future__ import annotations

from pathlib import Path

from groundup.labs.comms.fit import ring_factor
from groundup.labs.harness import lower, setup_line, short, stat, upper
from groundup.report.format import human, human_bytes, plural
from groundup.report.markdown import table
from groundup.report.plots import new_figure, save_figure

PLOTS = {"allreduce": "comms_allreduce.png", "misfit": "comms_misfit.png", "ddp": "comms_ddp.png",
         "projection": "comms_projection.png"}
FIT_OK = 0.20  # the ring model "fits" an n when the rms relative misfit of its points is at most 20%
PREDICTION_OK = 0.15  # the target for the DDP step-time prediction: within ±15%
SAME_BANDWIDTH = 0.25  # "the same bus bandwidth at every n": within ±25% of n = 2's
NCCL_TESTS = ("nccl-tests (NVIDIA, doc/PERFORMANCE.md): algbw = S/t and busbw = algbw·2(n − 1)/n for all-reduce, "
              "so that busbw can be compared with a link's peak whatever n is")
LLAMA3_MFU = "Llama 3 405B trained at 38–43% BF16 MFU on 8–16K H100s (Dubey et al. 2024, Table 4)"


def _ms(summary: dict) -> str:
    return short({**summary, "mean": summary["mean"] * 1e3,
                  "ci95": None if summary["ci95"] is None else [v * 1e3 for v in summary["ci95"]]}, ".3g")


def _ns(summary: dict) -> str:
    return short({**summary, "mean": summary["mean"] * 1e9,
                  "ci95": None if summary["ci95"] is None else [v * 1e9 for v in summary["ci95"]]}, ".3g")


def _gbs(summary: dict | None, unit: str = "") -> str:
    """B_bus in GB/s; undefined where a seed's fit gave β ≤ 0 (time not growing with size)."""
    if summary is None:
        return "undefined (β ≤ 0 in some seed)"
    return short({**summary, "mean": summary["mean"] / 1e9,
                  "ci95": None if summary["ci95"] is None else [v / 1e9 for v in summary["ci95"]]}, ".3g") + unit


def _ranks(results: dict) -> list[int]:
    return sorted(int(n) for n in results["aggregate"]["allreduce"]["fit"])


def _pct(x: float) -> str:
    return f"{100 * x:+.0f}%"


def verdicts(results: dict) -> dict[str, str]:
    """One sentence per claim: supported or not, the numbers, and what would have refuted it."""
    agg, cfg, nseeds = results["aggregate"], results["config"], len(results["seeds"])
    fits, cores = agg["allreduce"]["fit"], cfg["cores"]
    ranks = _ranks(results)
    inside = [n for n in ranks if n <= cores]
    over = [n for n in ranks if n > cores]
    out = {}

    def rms(n):
        return fits[str(n)]["rms_misfit"]["mean"]

    judged = inside or ranks
    ok = all(rms(n) <= FIT_OK for n in judged)
    over_ok = [n for n in over if rms(n) <= FIT_OK]
    out["ring-model"] = (
        f"{'Supported' if ok else 'NOT supported'}: t = α + β·S·2(n − 1)/n fits the measured gloo all-reduce times "
        f"from {human_bytes(min(cfg['sizes']))} to {human_bytes(max(cfg['sizes']))} with an rms relative misfit of "
        + ", ".join(f"{rms(n):.0%} at n = {n}" for n in judged)
        + (f" (the n ≤ {cores} cores, where each rank has a core)" if inside else " (no n fits within the cores)")
        + f"; threshold {FIT_OK:.0%}, mean over {plural(nseeds, 'seed')}. "
        + (f"Oversubscribed (n > {cores} cores): " + ", ".join(f"{rms(n):.0%} at n = {n}" for n in over)
           + f" — {len(over_ok)} of {len(over)} within the threshold. " if over else "")
        + "Refuted by an rms misfit above the threshold: a straight line in bus bytes would not describe the times.")

    if len(inside) >= 2:
        base = fits[str(inside[0])].get("bus_bandwidth")
        ratios = {n: fits[str(n)]["bus_bandwidth"]["mean"] / base["mean"] for n in inside[1:]
                  if base and fits[str(n)].get("bus_bandwidth")}
        same = bool(ratios) and all(abs(r - 1) <= SAME_BANDWIDTH for r in ratios.values())
        head = (f"{'Supported' if same else 'NOT supported'}: the ring model's bus bandwidth is the same at every n; "
                f"measured (n ≤ {cores}): " + ", ".join(f"{r:.2f}× n = {inside[0]}'s at n = {n}" for n, r in ratios.items())
                + f" (threshold ±{SAME_BANDWIDTH:.0%}). ")
    else:
        head = (f"Not testable on this machine: the ring model says the bus bandwidth is the same at every n, but only "
                f"n = {', '.join(map(str, inside)) or 'none'} fit{'s' if len(inside) == 1 else ''} within its {cores} cores. ")
    tail = ""
    if over:
        tail = ("With more ranks than cores the fit changes instead: " + "; ".join(
            f"n = {n}: α {_ms(fits[str(n)]['alpha'])} ms, B_bus {_gbs(fits[str(n)].get('bus_bandwidth'), ' GB/s')}"
            for n in ranks) + ". Ranks waiting for a core add scheduling "
            "delays to every step of the ring: α grows and the bandwidth falls with n, which the ring model, "
            "written for one rank per link, does not contain. ")
    joint = agg["allreduce"]["joint"]["all"]
    out["bus-bandwidth"] = (head + tail + f"One α and β for all n (joint fit): rms misfit {joint['rms_misfit']['mean']:.0%}, "
                            f"worst point {joint['max_misfit']['mean']:.0%}. Refuted by bus bandwidths differing by more "
                            f"than ±{SAME_BANDWIDTH:.0%} between n within the cores.")

    ddp = agg["ddp"]
    rows, rows_shared = [], []
    for n, r in sorted(ddp["ranks"].items(), key=lambda kv: int(kv[0])):
        rows.append((int(n), r["error"]))
        rows_shared.append((int(n), r["error_shared"]))
    hit = all(abs(e["mean"]) <= PREDICTION_OK for _, e in rows)
    hit_shared = all(abs(e["mean"]) <= PREDICTION_OK for _, e in rows_shared)
    why = []
    load = max(r["results"]["busy_cores_before"] for r in results["per_seed"])
    if not hit and load > QUIET_LOAD:
        why.append(f"the machine was shared (other processes kept up to {load:.2f} cores busy just before a seed "
                   "started): each rank "
                   "waits at every all-reduce for the other to get a core back, time the one-process run never pays")
    if not hit:
        if hit_shared or any(abs(e2["mean"]) < abs(e1["mean"]) for (_, e1), (_, e2) in zip(rows, rows_shared)):
            why.append(f"counting the cores shared by n one-thread ranks on {cores} cores (compute × max(1, n/{cores})) "
                       "brings it to " + ", ".join(f"{stat(e, '+.0%')} at n = {n}".replace("%", "%") for n, e in rows_shared))
        if any(e["mean"] > PREDICTION_OK for _, e in rows):
            why.append("a prediction above the measurement is what DDP's overlap of the bucketed all-reduce with the "
                       "backward pass would give (the model adds the whole all-reduce after the compute)")
        if any(e["mean"] < -PREDICTION_OK for _, e in rows_shared):
            why.append("a prediction below it even with shared cores means the ranks slow each other beyond "
                       "sharing the cores (the all-reduce's own threads compete with compute; memory bandwidth)")
    out["ddp-prediction"] = (
        f"{'Supported' if hit else 'NOT supported'}: the step time of our trainer under DDP, predicted as the step "
        f"time at n = 1 ({_ms(ddp['compute_s'])} ms) plus the fitted all-reduce of its "
        f"{human_bytes(cfg['ddp_grad_bytes'])} of gradients ({cfg['ddp_allreduce_calls']} calls), is off by "
        + ", ".join(f"{_fmt_err(e)} at n = {n}" for n, e in rows)
        + f" of the measured step time (target ±{PREDICTION_OK:.0%}). " + (_sentence("; ".join(why)) if why else "")
        + "Refuted by an error beyond the target.")

    proj = results["projection"]
    a = proj["assumptions"]
    weak, strong = proj["curves"]["weak"], proj["curves"]["strong"]
    w = {m: weak[m]["fsdp"][-1]["efficiency"] for m in weak}
    half = {m: _first_below(strong[m]["fsdp"], 0.5) for m in strong}
    out["projection"] = (
        f"A projection, not a measurement (groundup.cluster at {a['mfu']:.0%} MFU on {a['gpu']}, no overlap): with a fixed "
        f"batch per GPU, FSDP keeps " + ", ".join(f"{m} {e:.0%}" for m, e in w.items())
        + f" of ideal throughput at {plural(a['gpu_counts'][-1], 'GPU')} — the loss comes almost all at the step from "
        "NVLink to InfiniBand, after which 2(n − 1)/n barely grows; with a fixed global batch of "
        f"{human(a['global_batch_tokens'])} tokens the efficiency falls below 50% at "
        + ", ".join(f"{m} {plural(n, 'GPU') if n else 'no count shown'}" for m, n in half.items())
        + ", where each GPU's compute shrinks but the gradient to reduce does not. It would be wrong if the "
        "interconnect figures, the MFU or the absence of overlap are (each is stated below).")
    return out


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:] + ". "


def _fmt_err(e: dict) -> str:
    if e["ci95"] is None:
        return _pct(e["mean"])
    return f"{_pct(e['mean'])} (95% CI {_pct(e['ci95'][0])} … {_pct(e['ci95'][1])})"


def _first_below(curve: list[dict], level: float) -> int | None:
    return next((p["n_gpus"] for p in curve if p["efficiency"] < level), None)


ABOUT = """**Claims.** (1) The time of a ring all-reduce is t = α + β·S·2(n − 1)/n: a latency α per call plus the
bytes each rank must send, S·2(n − 1)/n, over the bus bandwidth B_bus = 1/β, which does not depend on n
(nccl-tests' definitions). (2) Fitted here, it predicts the step time of a real data-parallel run:
compute (measured on one process) plus the all-reduce of the gradients. (3) At cluster scale the same
arithmetic says how much of a step goes to talking, and how that grows with the number of GPUs.

```
groundup lab comms            # 3 seeds
groundup lab comms --quick    # 1 seed, 2 and 4 ranks, messages up to 1 MiB, DDP at 2 ranks
groundup lab comms --report-from runs/comms/results.json --out DIR
```
"""


def report(results: dict) -> str:
    agg, cfg, nseeds = results["aggregate"], results["config"], len(results["seeds"])
    ar, cores, ranks = agg["allreduce"], cfg["cores"], _ranks(results)
    v = verdicts(results)
    lines = ["# Lab: the cost of talking between GPUs — all-reduce, DDP and the cluster", "", ABOUT, "## Setup", "",
             setup_line(results) + _load_note(results), "",
             f"Backend {cfg['backend']}: every rank a process spawned with torchrun's environment, one torch thread each, "
             f"on a machine with **{plural(cores, 'core')}**. "
             + (f"**With more than {cores} ranks the CPU is oversubscribed**: ranks wait for a core, and what is measured "
                "is the scheduler as much as the transport; the report keeps those points and shows what they do to the fit. "
                if max(ranks) > cores else "")
             + f"All-reduce: float32 zeros of {', '.join(human_bytes(s) for s in cfg['sizes'])}, at n = "
             f"{', '.join(map(str, ranks))}; per size {plural(cfg['warmup'], 'untimed call')}, then {cfg['repeats']} timed blocks of "
             f"back-to-back calls (each block ≥ {cfg['min_block'] * 1e3:.0f} ms, the same number of calls on every rank), a "
             "block's time the slowest rank's, the point the median block. A seed is a fresh set of processes that "
             "measures the sizes in its own shuffled order; ± is over seeds.", "",
             "## Verdicts", ""]
    lines += [f"- **{k}.** {s}" for k, s in v.items()]

    rows = []
    for n in ranks:
        f = ar["fit"][str(n)]
        rows.append([n, f"{ring_factor(n):.3f}", _ms(f["alpha"]), _ns(f["beta"]), _gbs(f.get("bus_bandwidth")),
                     f"{f['rms_misfit']['mean']:.1%}", f"{f['max_misfit']['mean']:.1%}",
                     "yes" if n > cores else "no"])
    for name, label in (("all", "joint, all n"), ("within_cores", f"joint, n ≤ {cores}")):
        if name in ar["joint"]:
            f = ar["joint"][name]
            rows.append([label, "—", _ms(f["alpha"]), _ns(f["beta"]), _gbs(f.get("bus_bandwidth")), f"{f['rms_misfit']['mean']:.1%}",
                         f"{f['max_misfit']['mean']:.1%}", "—"])
    lines += ["", "## 1. All-reduce time against message size and ranks", "",
              "Fit: weighted least squares of t = α + β·x on the bus bytes x = S·2(n − 1)/n with relative residuals "
              "(the sizes span four orders of magnitude); bus bandwidth B_bus = 1/β. α, β and B_bus: mean ± 95% interval "
              f"over {plural(nseeds, 'seed')} (each seed fitted on its own); misfit = (fitted − measured)/measured, "
              "mean over seeds.", "",
              table(["n", "2(n−1)/n", "α (ms)", "β (ns/byte)", "B_bus = 1/β (GB/s)", "rms misfit", "worst point",
                     "oversubscribed"], rows), "",
              f"![measured and fitted all-reduce times]({PLOTS['allreduce']})", "",
              "Measured medians (ms; ± over seeds) and the misfit of the per-n fit at each point:", ""]
    head = ["S"] + [f"n = {n}" for n in ranks]
    trows = []
    for i, size in enumerate(cfg["sizes"]):
        row = [human_bytes(size)]
        for n in ranks:
            m = ar["fit"][str(n)]["misfit"][i]["mean"]
            row.append(f"{_ms(ar['times'][str(n)][str(size)])} ({_pct(m)})")
        trows.append(row)
    lines += [table(head, trows), "", f"![misfit per point]({PLOTS['misfit']})", "",
              f"**Against published figures.** {NCCL_TESTS}; the fit uses exactly these definitions (and "
              "groundup.cluster's ring_allreduce_seconds is the same formula). No published figure exists for gloo over "
              "loopback on this machine to compare the constants with: the loopback 'link' is memory copies "
              "through the kernel's TCP stack, so B_bus here is a few GB/s at most, against 450 GB/s per direction "
              "for NVLink 4 and 50 GB/s per GPU for InfiniBand NDR (the presets below)."]

    ddp = agg["ddp"]
    rows = [[1, _ms(ddp["compute_s"]), "—", "—", "—", "—", "—"]]
    for n, r in sorted(ddp["ranks"].items(), key=lambda kv: int(kv[0])):
        rows.append([n, _ms(r["measured_s"]), _ms(r["comm_s"]), _ms(r["predicted_s"]), _fmt_err(r["error"]),
                     _ms(r["predicted_shared_s"]), _fmt_err(r["error_shared"])])
    lines += ["", "## 2. Predicting a DDP step of our trainer", "",
              f"`groundup.train.trainer.train` (the project's loop and train_step; DistributedDataParallel over gloo when "
              f"WORLD_SIZE > 1) on the shakespeare characters: {plural(cfg['n_layer'], 'layer')}, C = {cfg['n_embd']}, "
              f"{cfg['ddp_params']:,} parameters = {human_bytes(cfg['ddp_grad_bytes'])} of fp32 gradients, batch "
              f"{cfg['batch_size']} × {cfg['block_size']} tokens **per rank** at every n, {cfg['ddp_steps']} steps; a run's "
              f"step time is the median over steps {cfg['skip_steps'] + 1}…{cfg['ddp_steps']} of the trainer's own clock "
              "(time_s logged every step). n = 1 is the same run with no process group: the compute. Prediction: "
              f"t(1) + t_comm(n), t_comm = {cfg['ddp_allreduce_calls']}·α_n + β_n·G·2(n − 1)/n ("
              f"{plural(cfg['ddp_allreduce_calls'] - 1, 'gradient bucket')} at DDP's 1 MiB first / 25 MiB caps, plus the "
              "trainer's all-reduce of (loss, norm)), α_n and β_n from the same seed's fit at that n; the 'shared' "
              f"prediction multiplies the compute by max(1, n/{cores}), the slow-down of n one-thread ranks sharing "
              f"{plural(cores, 'core')} (stated before measuring; not fitted). Times in ms, ± over seeds.", "",
              table(["n", "measured step", "t_comm (fit)", "predicted", "error", "predicted (shared cores)", "error"], rows),
              "", f"![DDP step time: measured and predicted]({PLOTS['ddp']})", "",
              "What the prediction leaves out: DDP starts each bucket's all-reduce as soon as its gradients exist, "
              "overlapping it with the rest of the backward pass (the prediction adds it all after the compute: too "
              "high when overlap works); the gloo threads that move the bytes need CPU time too, which on a "
              "machine with fewer cores than ranks is taken from compute (the prediction assumes the fit's "
              "all-reduce speed, measured with nothing else running: too low)."]

    proj = results["projection"]
    a = proj["assumptions"]
    lines += ["", "## 3. Projection to clusters", "", _assumptions(a), "", f"![scaling efficiency]({PLOTS['projection']})", ""]
    for regime, what in (("weak", f"fixed batch per GPU ({a['sequences_per_gpu']} × {a['models']['7B']['seq_len']} tokens)"),
                         ("strong", f"fixed global batch ({human(a['global_batch_tokens'])} tokens)")):
        rows = []
        for m, by in proj["curves"][regime].items():
            for p, curve in by.items():
                for pt in curve:
                    if pt["n_gpus"] in (8, 16, 64, 512, 1024, 4096, 16384):
                        rows.append([m, p.upper(), f"{pt['n_gpus']:,}", f"{pt['tokens_per_gpu']:,.0f}",
                                     f"{pt['compute_s']:.3g}", f"{pt['comm_s']:.3g}", f"{pt['step_s']:.3g}",
                                     f"{pt['efficiency']:.0%}", _flags(pt)])
        lines += [f"**{regime.capitalize()} scaling**, {what}:", "",
                  table(["model", "parallelism", "GPUs", "tokens/GPU", "compute (s)", "comm (s)", "step (s)",
                         "efficiency", "notes"], rows), ""]
    lines += ["Why model size barely matters in the weak-scaling rows: compute per step is ≈ 6·N·T and the gradient "
              "bytes ≈ 2·N, so their ratio depends on the tokens per GPU and the link, not on N (the attention FLOPs "
              "make the 70B slightly better). Where this projection is optimistic: α is one constant per collective "
              "(groundup.cluster), but a flat ring's latency grows with 2(n − 1) hops and real jobs split the "
              "gradient into many buckets, each paying α; the links' peak bandwidth is assumed, and measured busbw "
              "is lower (cluster.py cites ~83% for NVLink). Where it is pessimistic: no overlap of communication "
              "with compute (DDP and FSDP both overlap in practice), and no hierarchical or tensor/pipeline "
              "parallelism, which real runs at thousands of GPUs use precisely to shrink the data-parallel group. "
              "Plain DDP keeps a whole replica of the state (16 bytes per parameter), which does not fit for either "
              "model (marked); ZeRO-1/2 shard the optimizer state and gradients with the same communication volume "
              "as DDP's all-reduce (Rajbhandari et al. 2020, ZeRO's communication analysis: 2Ψ for stages 1–2, 3Ψ for stage 3), so the DDP rows are also theirs."]
    return "\n".join(lines)


QUIET_LOAD = 0.25  # cores kept busy by other processes (over 1 s before a seed) below which the machine is quiet


def _load_note(results: dict) -> str:
    loads = [r["results"]["busy_cores_before"] for r in results["per_seed"]]
    worst = max(loads)
    if worst <= QUIET_LOAD:
        return (f" Cores kept busy by other processes in the second before each seed started: at most {worst:.2f} "
                "(a quiet machine).")
    return (f" **Cores kept busy by other processes just before the seeds started: up to {worst:.2f}** (above {QUIET_LOAD}): other "
            "processes competed for the cores, so these timings measure that competition too; rerun on a quiet machine.")


def _flags(pt: dict) -> str:
    notes = []
    if not pt["memory_fits"]:
        notes.append("state does not fit in memory")
    if not pt["whole_sequences"]:
        notes.append("< 1 sequence per GPU")
    return "; ".join(notes) or ""


def _assumptions(a: dict) -> str:
    links = "; ".join(f"{v['name']}: B_bus {v['bus_bandwidth'] / 1e9:.0f} GB/s, α {v['latency'] * 1e6:.0f} µs ({v['source']})"
                      for v in a["links"].values())
    models = "; ".join(f"{k}: {m['n_params'] / 1e9:.0f}B parameters, {m['n_layer']} layers, d {m['d_model']}, "
                       f"context {m['seq_len']} ({m['source']})" for k, m in a["models"].items())
    return ("**Assumptions (every one a choice, not a measurement).** "
            f"GPU {a['gpu']} (groundup.hardware's preset, the one `groundup cost` uses), {a['peak_flops'] / 1e12:.0f} TFLOP/s dense BF16 ({a['gpu_source']}); MFU {a['mfu']:.0%} "
            f"for the compute ({LLAMA3_MFU}); compute per step = training FLOPs per token (6N + attention, "
            "groundup.accounting) × tokens per GPU / (peak × MFU). Models: " + models + ". Pure data parallelism: DDP "
            "= one all-reduce of the gradients per step; FSDP (ZeRO-3) = all-gather of the parameters for the forward "
            f"and again for the backward plus a reduce-scatter of the gradients (groundup.cluster.comm_seconds_per_step), "
            f"{a['bytes_on_wire']} bytes per value on the wire (bf16). Links (groundup.cluster presets): " + links
            + f". NVLink for n ≤ {a['gpus_per_node']} (one node), InfiniBand beyond (a ring through every GPU runs at "
            f"its slowest link). Exposed communication = (1 − overlap)·comm with overlap {a['overlap']:g}. Efficiency = "
            "time of the same tokens at the same MFU without communication ÷ step time. Memory: model state at 16 bytes "
            f"per parameter (accounting.state_memory) must fit in {a['usable_memory']:.0%} of the GPU's memory — whole "
            "under DDP, 1/n under FSDP; activations not counted. Rows where it does not fit are computed anyway and "
            "marked.")


def _err(summaries: list[dict]) -> list[list[float]]:
    return [[s["mean"] - lower(s) for s in summaries], [upper(s) - s["mean"] for s in summaries]]


def plots(results: dict, out: str | Path) -> list[Path]:
    out, agg, cfg = Path(out), results["aggregate"], results["config"]
    nseeds, cores, ranks = len(results["seeds"]), cfg["cores"], _ranks(results)
    note = f"bars: 95% CI over {nseeds} seeds" if nseeds > 1 else "1 seed"
    sizes = cfg["sizes"]
    paths = []
    ar = agg["allreduce"]

    fig, ax = new_figure(f"gloo all-reduce on {cores} cores: measured and fitted ({note})", "message size (bytes)",
                         "time per all-reduce (s)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    joint = ar["joint"]["all"]
    for k, n in enumerate(ranks):
        color = f"C{k}"
        t = [ar["times"][str(n)][str(s)] for s in sizes]
        ax.errorbar(sizes, [x["mean"] for x in t], yerr=_err(t), fmt="o", color=color, capsize=3,
                    label=f"n = {n}" + (" (oversubscribed)" if n > cores else ""))
        f = ar["fit"][str(n)]
        ax.plot(sizes, [f["alpha"]["mean"] + f["beta"]["mean"] * s * ring_factor(n) for s in sizes], "-", color=color)
        ax.plot(sizes, [joint["alpha"]["mean"] + joint["beta"]["mean"] * s * ring_factor(n) for s in sizes], ":",
                color=color, alpha=0.7)
    ax.plot([], [], "-", color="gray", label="fit at that n")
    ax.plot([], [], ":", color="gray", label="one fit for all n")
    ax.legend(fontsize=8)
    paths.append(save_figure(fig, out / PLOTS["allreduce"]))

    fig, ax = new_figure(f"Misfit of the ring model per point ({note})", "message size (bytes)",
                         "(fitted − measured) / measured")
    ax.set_xscale("log")
    for k, n in enumerate(ranks):
        m = ar["fit"][str(n)]["misfit"]
        ax.errorbar(sizes, [x["mean"] for x in m], yerr=_err(m), fmt="o-", color=f"C{k}", capsize=3, label=f"n = {n}")
    ax.axhspan(-FIT_OK, FIT_OK, color="green", alpha=0.08, label=f"±{FIT_OK:.0%}")
    ax.axhline(0, color="black", lw=0.8)
    ax.legend(fontsize=8)
    paths.append(save_figure(fig, out / PLOTS["misfit"]))

    ddp = agg["ddp"]
    ns = sorted(ddp["ranks"], key=int)
    fig, ax = new_figure(f"DDP step of our trainer: measured and predicted ({note})", "ranks n", "seconds per step")
    xs = list(range(len(ns)))
    width = 0.25
    for j, (key, label) in enumerate((("measured_s", "measured"), ("predicted_s", "predicted: t(1) + all-reduce"),
                                      ("predicted_shared_s", f"predicted, compute × max(1, n/{cores})"))):
        vals = [ddp["ranks"][n][key] for n in ns]
        ax.bar([x + (j - 1) * width for x in xs], [v["mean"] for v in vals], width, yerr=_err(vals), capsize=3, label=label)
    ax.axhline(ddp["compute_s"]["mean"], color="black", ls="--", lw=1, label="t(1): one process, no DDP")
    ax.set_xticks(xs)
    ax.set_xticklabels([f"n = {n}" for n in ns])
    ax.legend(fontsize=8)
    paths.append(save_figure(fig, out / PLOTS["ddp"]))

    proj = results["projection"]
    a = proj["assumptions"]
    fig, axes = new_figure(f"Scaling efficiency, pure data parallelism ({a['mfu']:.0%} MFU, no overlap)",
                           "GPUs", "efficiency", figsize=(11, 4.5))
    fig.clear()
    panels = fig.subplots(1, 2, sharey=True)
    for ax, regime, title in ((panels[0], "weak", f"fixed {a['sequences_per_gpu']} sequences per GPU"),
                              (panels[1], "strong", f"fixed global batch {human(a['global_batch_tokens'])} tokens")):
        for k, (m, by) in enumerate(proj["curves"][regime].items()):
            for p, style in (("ddp", "-"), ("fsdp", "--")):
                curve = by[p]
                ax.plot([pt["n_gpus"] for pt in curve], [pt["efficiency"] for pt in curve], style, color=f"C{k}",
                        label=f"{m} {p.upper()}")
                bad = [pt for pt in curve if not pt["memory_fits"] or not pt["whole_sequences"]]
                ax.plot([pt["n_gpus"] for pt in bad], [pt["efficiency"] for pt in bad], "x", color=f"C{k}")
        ax.axvline(a["gpus_per_node"], color="gray", lw=0.8, ls=":")
        ax.set_xscale("log", base=2)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("GPUs (NVLink ≤ 8, InfiniBand beyond)")
        ax.grid(True, alpha=0.3)
        ax.set_ylim(0, 1.05)
    panels[0].set_ylabel("efficiency (ideal time / step time)")
    panels[1].plot([], [], "x", color="gray", label="state does not fit / < 1 sequence per GPU")
    panels[1].legend(fontsize=8)
    fig.suptitle(f"Scaling efficiency, pure data parallelism ({a['mfu']:.0%} MFU, no overlap)")
    paths.append(save_figure(fig, out / PLOTS["projection"]))
    return paths
