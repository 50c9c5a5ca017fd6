"""The attention-cost lab: time and peak memory of self-attention against sequence length.

The claim: attention costs O(n²·d). Per sequence of T tokens and width C, one attention layer does

    projections  Q, K, V, W^O:   8·T·C²  FLOPs   (linear in T)
    scores Q Kᵀ and weights·V:   4·T²·C  FLOPs   (quadratic in T)

so the quadratic term takes over once T > 2·C. The explicit "math" path also materialises the
(B, n_head, T, T) score matrix, so its memory grows as T²; a fused kernel
(`scaled_dot_product_attention`, flash-style on CPU and GPU) never stores it, so its memory grows
as T while its FLOPs stay quadratic.

    groundup lab attention-cost                   # T = 64 … 4096, forward + backward
    groundup lab attention-cost --quick           # what the tests run
    groundup lab attention-cost --forward-only --lengths 128,256,512,1024

Measures the model's own CausalSelfAttention (groundup.model.attention) with attention = "math"
and "sdpa", interleaved so both see the same machine load. Time: the fastest of several repeats.
Memory: the peak of bytes held by tensors created during one pass (CPU: tracked op by op with
groundup.util.memory.PeakTensorMemory; CUDA: torch.cuda.max_memory_allocated). Exponents come
from a straight-line fit in log-log over the longer half of the lengths, and time is also fitted
as a·T + b·T² to find where the quadratic term overtakes the linear one.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from groundup.accounting import attention_layer_flops
from groundup.config import ModelConfig
from groundup.errors import ConfigError
from groundup.labs import harness
from groundup.labs.harness import lower, setup_line, short, stat, upper
from groundup.model.attention import CausalSelfAttention
from groundup.report.markdown import table
from groundup.report.plots import new_figure, save_figure
from groundup.util.device import pick_device
from groundup.util.memory import PeakTensorMemory
from groundup.util.progress import Progress

PATHS = ("math", "sdpa")
DEFAULT_LENGTHS = (64, 128, 256, 512, 1024, 2048, 4096)
QUICK_LENGTHS = (32, 64, 128, 256, 512)


def _module(path: str, T: int, n_embd: int, n_head: int, device, seed: int = 0):
    import torch

    config = ModelConfig(vocab_size=1, block_size=T, n_layer=1, n_head=n_head, n_embd=n_embd, attention=path)
    torch.manual_seed(seed)
    return CausalSelfAttention(config).to(device)


def _one_pass(module, x, backward: bool):
    import torch

    if backward:
        module(x).sum().backward()
    else:
        with torch.no_grad():
            module(x)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_point(path: str, T: int, n_embd: int = 64, n_head: int = 4, batch: int = 1, repeats: int = 5,
                  backward: bool = True, device="cpu", seed: int = 0) -> dict:
    """Seconds (the fastest of `repeats`: interference from other work only ever adds time) and
    peak bytes of one attention pass at sequence length T."""
    import torch

    device = torch.device(device)
    module = _module(path, T, n_embd, n_head, device, seed)
    x = torch.randn(batch, T, n_embd, device=device, requires_grad=backward)  # after _module's manual_seed(seed)
    _one_pass(module, x, backward)  # warm-up
    times = []
    for _ in range(repeats):
        x.grad = None
        module.zero_grad(set_to_none=True)
        _sync(device)
        start = time.perf_counter()
        _one_pass(module, x, backward)
        _sync(device)
        times.append(time.perf_counter() - start)
    x.grad = None
    module.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        _one_pass(module, x, backward)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
    else:
        with PeakTensorMemory() as tracker:
            _one_pass(module, x, backward)
        peak = tracker.peak
    return {"path": path, "T": T, "seconds": min(times), "peak_bytes": int(peak)}


def fit_exponent(T, y) -> float:
    """The slope of log y against log T: y ∝ T^k."""
    slope, _ = np.polyfit(np.log(np.asarray(T, dtype=float)), np.log(np.asarray(y, dtype=float)), 1)
    return float(slope)


def fit_linear_quadratic(T, y) -> tuple[float, float]:
    """y ≈ a·T + b·T², least squares on relative error (each point weighted by 1/y), a, b ≥ 0."""
    T, y = np.asarray(T, dtype=float), np.asarray(y, dtype=float)
    X = np.stack([T, T * T], axis=1) / y[:, None]
    (a, b), *_ = np.linalg.lstsq(X, np.ones_like(y), rcond=None)
    if a < 0:  # refit with one term only
        a, b = 0.0, float(np.sum(T * T * y / y**2) / np.sum((T * T / y) ** 2))
    elif b < 0:
        a, b = float(np.sum(T * y / y**2) / np.sum((T / y) ** 2)), 0.0
    return float(a), float(b)


def measure(lengths=DEFAULT_LENGTHS, n_embd: int = 64, n_head: int = 4, batch: int = 1, repeats: int = 5,
            backward: bool = True, device="cpu", progress: bool = True, seed: int = 0) -> list[dict]:
    """Both paths at every length, interleaved (math, sdpa, math, sdpa, …)."""
    bar = Progress(len(lengths) * len(PATHS), desc="attention cost", unit="point", enabled=progress)
    rows = []
    for T in lengths:
        for path in PATHS:
            rows.append(measure_point(path, T, n_embd, n_head, batch, repeats, backward, device, seed))
            bar.update(1)
    bar.close()
    return rows


def analyse(rows: list[dict], n_embd: int) -> dict:
    """Per path: time and memory exponents over the longer half of the lengths, and the a·T + b·T²
    fit of time with its crossover T* = a/b (where the quadratic term equals the linear one)."""
    result = {}
    for path in PATHS:
        r = sorted((x for x in rows if x["path"] == path), key=lambda x: x["T"])
        T = [x["T"] for x in r]
        tail = slice(len(T) // 2 - (1 if len(T) % 2 == 0 else 0), None)  # the longer half (≥ 3 points when possible)
        a, b = fit_linear_quadratic(T, [x["seconds"] for x in r])
        mem = [x["peak_bytes"] for x in r]
        result[path] = {
            "time_exponent": fit_exponent(T[tail], [x["seconds"] for x in r][tail]),
            "time_exponent_all": fit_exponent(T, [x["seconds"] for x in r]),
            "memory_exponent": fit_exponent(T[tail], mem[tail]) if min(mem) > 0 else math.nan,
            "linear_coef": a, "quadratic_coef": b, "crossover_T": a / b if b > 0 else math.inf,
        }
    result["flops_crossover_T"] = 2 * n_embd  # 8·T·C² = 4·T²·C  ⇔  T = 2C (accounting.attention_layer_flops)
    longest = max(x["T"] for x in rows)
    at = {x["path"]: x for x in rows if x["T"] == longest}
    result["longest_T"] = longest
    result["memory_ratio_at_longest"] = at["math"]["peak_bytes"] / max(at["sdpa"]["peak_bytes"], 1)
    result["time_ratio_at_longest"] = at["math"]["seconds"] / at["sdpa"]["seconds"]
    return result


LAB = "attention-cost"
VERSION = 2  # 2: on the lab harness, repeated over seeds (each seed: new weights and inputs, a full new measurement)
PLOTS = {"time": "attention_time.png", "memory": "attention_memory.png"}


ABOUT = """**Claim.** Self-attention costs O(T²·d): doubling the context quadruples its work.

```
groundup lab attention-cost           # T = 64 … 4096, forward + backward, 3 seeds (Setup below: wall time)
groundup lab attention-cost --quick   # T = 32 … 512, 1 seed
groundup lab attention-cost --report-from runs/attention-cost/results.json --out DIR
```

It times the model's own CausalSelfAttention with attention = "math" (the (B, n_head, T, T) score
matrix built, masked, softmaxed, multiplied by V) and "sdpa" (the fused scaled_dot_product_attention
kernel), interleaved at every length, the fastest of several repeats; peak memory is the most bytes
held at once by tensors created during one pass (groundup.util.memory.PeakTensorMemory on CPU,
torch.cuda.max_memory_allocated on CUDA). Per sequence one layer does 8·T·C² FLOPs of projections
and 4·T²·C of scores and weighted sums, so in FLOPs the quadratic part wins from T = 2C. Exponents
come from straight-line fits in log-log over the longer half of the lengths; time is also fitted
as a·T + b·T². Each seed repeats the whole measurement with new weights and inputs.
"""


def verdict(analysis: dict, n_seeds: int) -> str:
    """The claim 'attention costs O(T²·d)', judged on the aggregated exponents: the explicit path's
    time and memory must grow at least as T^1.8 over the longer half of the lengths (its 95% lower
    bound, or the value with one seed); the fused kernel's memory growing as T (below T^1.2) shows
    the T² memory belongs to the explicit path, not to attention."""
    m, s = analysis["math"], analysis["sdpa"]
    on = "lower 95% bound" if n_seeds > 1 else "single value (1 seed: no interval)"
    quadratic = lower(m["time_exponent"]) > 1.8 and lower(m["memory_exponent"]) > 1.8
    fused_linear = upper(s["memory_exponent"]) < 1.2
    head = "Supported" if quadratic else "NOT supported"
    return (f"{head}: the explicit path's time grows as T^{stat(m['time_exponent'], '.2f')} and its memory as "
            f"T^{stat(m['memory_exponent'], '.2f')} over the longer half of the lengths (threshold: {on} above 1.8); "
            f"the fused kernel's memory grows as T^{stat(s['memory_exponent'], '.2f')}"
            + (" (below 1.2: it never stores the T×T scores), while its time still grows as "
               f"T^{stat(s['time_exponent'], '.2f')}." if fused_linear else " (not below 1.2: the fused kernel was not shown to avoid the T² memory).")
            + " Refuted by exponents near 1 (cost linear in T); tests/test_lab_attention_cost.py feeds a linear cost "
              "through this verdict and it says NOT supported.")


def plots(results: dict, out: str | Path) -> list[Path]:
    """Time and memory against T for both paths (mean over seeds, bars: 95% CI), from results alone."""
    out, agg, cfg = Path(out), results["aggregate"], results["config"]
    n = len(results["seeds"])
    rows = agg["rows"]
    paths_of_rows = [r["path"] for r in results["per_seed"][0]["results"]["rows"]]
    what = "forward + backward" if cfg["backward"] else "forward"
    paths = []
    for key, title, label, fname in [("seconds", "time", "seconds per pass", PLOTS["time"]),
                                     ("peak_bytes", "memory", "peak tensor memory (bytes)", PLOTS["memory"])]:
        note = f"mean of {n} seeds, bars: 95% CI" if n > 1 else "1 seed"
        fig, ax = new_figure(f"Attention {title} vs sequence length\n({what}, C = {cfg['n_embd']}; {note})",
                             "sequence length T", label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        for k, path in enumerate(PATHS):
            r = [row for row, p in zip(rows, paths_of_rows) if p == path]
            T = np.array([x["T"]["mean"] for x in r])
            a = agg["analysis"][path]
            exponent = a["time_exponent"] if key == "seconds" else a["memory_exponent"]
            ax.errorbar(T, [x[key]["mean"] for x in r],
                        yerr=[0.0 if x[key]["ci95"] is None else (x[key]["ci95"][1] - x[key]["ci95"][0]) / 2 for x in r],
                        fmt="o-", color=f"C{k}", capsize=3, label=f"{path}: ∝ T^{exponent['mean']:.2f} (longer half)")
            if key == "seconds" and a["quadratic_coef"]["mean"] > 0:
                ax.plot(T, a["quadratic_coef"]["mean"] * T * T, ":", color=f"C{k}", lw=1, label=f"{path}: quadratic term b·T²")
                ax.plot(T, a["linear_coef"]["mean"] * T, "--", color=f"C{k}", lw=1, alpha=0.6, label=f"{path}: linear term a·T")
        ax.legend(fontsize=7)
        paths.append(save_figure(fig, out / fname))
    return paths


def report(results: dict) -> str:
    """report.md, from the results document alone."""
    agg, cfg = results["aggregate"], results["config"]
    a, n = agg["analysis"], len(results["seeds"])
    m, s = a["math"], a["sdpa"]
    threads = f" ({cfg['threads']} thread{'s' if cfg['threads'] > 1 else ''})" if cfg.get("threads") else ""
    summary = "\n".join([
        f"Device {cfg['device']}{threads}, width C = {cfg['n_embd']}, {cfg['n_head']} heads, batch {cfg['batch']}, "
        f"{'forward + backward' if cfg['backward'] else 'forward only'}; fastest of {cfg['repeats']} repeats per point.",
        "",
        f"- Verdict on 'attention costs O(T²·d)': {verdict(a, n)}",
        f"- Time over all lengths: math ∝ T^{stat(m['time_exponent_all'], '.2f')}, sdpa ∝ T^{stat(s['time_exponent_all'], '.2f')}.",
        f"- At T = {a['longest_T']['mean']:.0f} math holds {stat(a['memory_ratio_at_longest'], '.1f')}× the memory of sdpa "
        f"and takes {stat(a['time_ratio_at_longest'], '.1f')}× the time.",
        f"- Quadratic takes over: fitting time = a·T + b·T², the T² term passes the T term at T ≈ "
        f"{stat(m['crossover_T'], '.0f')} (math) and {stat(s['crossover_T'], '.0f')} (sdpa); counting FLOPs it does at "
        f"T = 2·C = {a['flops_crossover_T']['mean']:.0f}.",
    ])
    by_path = {}
    for row, first in zip(agg["rows"], results["per_seed"][0]["results"]["rows"]):
        by_path.setdefault(first["T"], {})[first["path"]] = row
    scale = lambda x, k: {**x, "mean": x["mean"] * k, "ci95": None if x["ci95"] is None else [v * k for v in x["ci95"]]}  # noqa: E731
    trows = []
    for T, at in sorted(by_path.items()):
        f = attention_layer_flops(T, cfg["n_embd"], cfg["batch"], cfg["backward"])
        trows.append([T, short(scale(at["math"]["seconds"], 1e3), ".3f"), short(scale(at["sdpa"]["seconds"], 1e3), ".3f"),
                      short(scale(at["math"]["peak_bytes"], 1e-6), ".3f"), short(scale(at["sdpa"]["peak_bytes"], 1e-6), ".3f"),
                      f"{f['quadratic'] / (f['linear'] + f['quadratic']):.0%}"])
    return "\n".join([
        "# Attention cost\n", ABOUT,
        "## Result\n", summary + "\n",
        "## Plots\n", f"![time]({PLOTS['time']})\n\n![memory]({PLOTS['memory']})\n",
        "## Measurements\n",
        ("Mean over seeds ± the half-width of the 95% interval (Student t over seeds). " if n > 1 else "One seed: no interval. ")
        + "Memory is exact and repeats from seed to seed; time is the fastest of the repeats on a shared machine.\n",
        table(["T", "math ms", "sdpa ms", "math MB", "sdpa MB", "quadratic share of FLOPs"], trows) + "\n",
        "## Setup\n", setup_line(results) + "\n",
    ])


def run_lab(lengths=DEFAULT_LENGTHS, out="runs/attention-cost", n_embd: int = 64, n_head: int = 4, batch: int = 1,
            repeats: int = 5, backward: bool = True, device: str = "auto", progress: bool = True, threads: int = 1,
            seeds=(0,), mode: str = "custom") -> dict:
    """Measure both paths at every length once per seed; results.json, plots and report.md into `out`."""
    import sys

    lengths = sorted(set(int(T) for T in lengths))
    if len(lengths) < 3 or min(lengths) < 2:
        raise ConfigError(f"--lengths needs at least three sequence lengths ≥ 2, got {lengths}")
    if n_embd % n_head:
        raise ConfigError(f"--n-embd ({n_embd}) must be divisible by --n-head ({n_head})")
    dev = pick_device(device)
    if dev.type == "cpu" and threads:
        import torch

        torch.set_num_threads(threads)  # one thread by default: steadier timings on a shared machine
    start = time.perf_counter()

    def experiment(seed: int) -> dict:
        rows = measure(lengths, n_embd, n_head, batch, repeats, backward, dev, progress, seed)
        return {"rows": rows, "analysis": analyse(rows, n_embd)}

    per_seed = harness.run_seeds(experiment, list(seeds), print if progress else (lambda *a, **k: None))
    config = {"device": str(dev), "threads": threads if dev.type == "cpu" else None, "n_embd": n_embd, "n_head": n_head,
              "batch": batch, "backward": backward, "repeats": repeats, "lengths": lengths}
    results = harness.make_results(LAB, VERSION, config, per_seed, mode, time.perf_counter() - start)
    harness.write_outputs(sys.modules[__name__], results, out)
    return results


# ---- CLI ---------------------------------------------------------------------------------------
def _lengths(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--lengths expects comma-separated integers such as 128,256,512; got {text!r}") from None


def add_arguments(p) -> None:
    p.add_argument("--quick", action="store_true", help=f"lengths {','.join(map(str, QUICK_LENGTHS))}, 3 repeats")
    p.add_argument("--lengths", type=_lengths, help=f"sequence lengths (default {','.join(map(str, DEFAULT_LENGTHS))})")
    p.add_argument("--n-embd", type=int, default=64, help="model width C (default 64)")
    p.add_argument("--n-head", type=int, default=4, help="attention heads (default 4)")
    p.add_argument("--batch", type=int, default=1, help="sequences per pass (default 1)")
    p.add_argument("--repeats", type=int, help="timed repeats per point; the fastest is kept (default 5, 3 with --quick)")
    p.add_argument("--forward-only", action="store_true", help="time inference (no_grad) instead of forward + backward")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch (default 1: steadier timings; 0 = torch's default)")
    p.add_argument("--seeds", type=int, default=None, help="how many times to repeat the whole measurement, each with "
                   "its own weights and inputs (default 3; 1 with --quick)")
    p.add_argument("--seed", type=int, default=0, help="the first seed (default 0)")
    p.add_argument("--out", default="runs/attention-cost")
    p.add_argument("--report-from", metavar="RESULTS_JSON",
                   help="regenerate report.md and the plots from this results.json into --out, without measuring")


def run(args) -> int:
    import sys

    if args.report_from:
        return harness.report_from(sys.modules[__name__], LAB, args, args.out)
    lengths = args.lengths or (QUICK_LENGTHS if args.quick else DEFAULT_LENGTHS)
    repeats = args.repeats or (3 if args.quick else 5)
    for name in ("n_embd", "n_head", "batch", "repeats"):
        value = repeats if name == "repeats" else getattr(args, name)
        if value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.threads < 0:
        raise ConfigError(f"--threads must be ≥ 0, got {args.threads}")
    seeds = harness.seed_list(args.seed, args.seeds if args.seeds is not None else (1 if args.quick else 3))
    custom = args.lengths or args.repeats or args.forward_only or (args.n_embd, args.n_head, args.batch) != (64, 4, 1)
    results = run_lab(lengths, args.out, args.n_embd, args.n_head, args.batch, repeats, not args.forward_only, args.device,
                      threads=args.threads, seeds=seeds, mode="quick" if args.quick else ("custom" if custom else "default"))
    a = results["aggregate"]["analysis"]
    for path in PATHS:
        print(f"{path}: time ∝ T^{harness.stat(a[path]['time_exponent'], '.2f')}, memory ∝ "
              f"T^{harness.stat(a[path]['memory_exponent'], '.2f')} (longer half)")
    print(verdict(a, len(seeds)))
    print(f"wrote {args.out}/results.json, report.md, {', '.join(PLOTS.values())}")
    return 0

