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

PATHS = ("math", "sdpa")
DEFAULT_LENGTHS = (64, 128, 256, 512, 1024, 2048, 4096)
QUICK_LENGTHS = (32, 64, 128, 256, 512)


def _module(path: str, T: int, n_embd: int, n_head: int, device):
    import torch

    from groundup.model.attention import CausalSelfAttention

    config = ModelConfig(vocab_size=1, block_size=T, n_layer=1, n_head=n_head, n_embd=n_embd, attention=path)
    torch.manual_seed(0)
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
                  backward: bool = True, device="cpu") -> dict:
    """Seconds (the fastest of `repeats`: interference from other work only ever adds time) and
    peak bytes of one attention pass at sequence length T."""
    import torch

    from groundup.util.memory import PeakTensorMemory

    device = torch.device(device)
    module = _module(path, T, n_embd, n_head, device)
    x = torch.randn(batch, T, n_embd, device=device, requires_grad=backward)
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
            backward: bool = True, device="cpu", progress: bool = True) -> list[dict]:
    """Both paths at every length, interleaved (math, sdpa, math, sdpa, …)."""
    from groundup.util.progress import Progress

    bar = Progress(len(lengths) * len(PATHS), desc="attention cost", unit="point", enabled=progress)
    rows = []
    for T in lengths:
        for path in PATHS:
            rows.append(measure_point(path, T, n_embd, n_head, batch, repeats, backward, device))
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


def plot(rows: list[dict], analysis: dict, out: Path, n_embd: int, backward: bool) -> list[Path]:
    from groundup.report.plots import new_figure, save_figure

    paths = []
    what = "forward + backward" if backward else "forward"
    for key, title, label, fname in [("seconds", "time", "seconds per pass", "attention_time.png"),
                                     ("peak_bytes", "memory", "peak tensor memory (bytes)", "attention_memory.png")]:
        fig, ax = new_figure(f"Attention {title} vs sequence length ({what}, C = {n_embd})", "sequence length T", label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        for k, path in enumerate(PATHS):
            r = sorted((x for x in rows if x["path"] == path), key=lambda x: x["T"])
            T = np.array([x["T"] for x in r], dtype=float)
            a = analysis[path]
            exponent = a["time_exponent"] if key == "seconds" else a["memory_exponent"]
            ax.plot(T, [x[key] for x in r], "o-", color=f"C{k}", label=f"{path}: ∝ T^{exponent:.2f} (longer half)")
            if key == "seconds" and a["quadratic_coef"] > 0:
                ax.plot(T, a["quadratic_coef"] * T * T, ":", color=f"C{k}", lw=1, label=f"{path}: quadratic term b·T²")
                ax.plot(T, a["linear_coef"] * T, "--", color=f"C{k}", lw=1, alpha=0.6, label=f"{path}: linear term a·T")
        ax.legend(fontsize=7)
        paths.append(save_figure(fig, out / fname))
    return paths


def run_lab(lengths=DEFAULT_LENGTHS, out="runs/attention-cost", n_embd: int = 64, n_head: int = 4, batch: int = 1,
            repeats: int = 5, backward: bool = True, device: str = "auto", progress: bool = True, threads: int = 1) -> dict:
    from groundup.report.markdown import table, write_report
    from groundup.util.device import pick_device
    from groundup.util.files import atomic_write_json

    lengths = sorted(set(int(T) for T in lengths))
    if len(lengths) < 3 or min(lengths) < 2:
        raise ConfigError(f"--lengths needs at least three sequence lengths ≥ 2, got {lengths}")
    if n_embd % n_head:
        raise ConfigError(f"--n-embd ({n_embd}) must be divisible by --n-head ({n_head})")
    dev = pick_device(device)
    if dev.type == "cpu" and threads:
        import torch

        torch.set_num_threads(threads)  # one thread by default: steadier timings on a shared machine
    out = Path(out)
    rows = measure(lengths, n_embd, n_head, batch, repeats, backward, dev, progress)
    analysis = analyse(rows, n_embd)
    plot(rows, analysis, out, n_embd, backward)
    results = {"device": str(dev), "threads": threads if dev.type == "cpu" else None, "n_embd": n_embd, "n_head": n_head, "batch": batch, "backward": backward,
               "repeats": repeats, "rows": rows, "analysis": analysis}
    atomic_write_json(out / "results.json", results)
    m, s = analysis["math"], analysis["sdpa"]
    summary = "\n".join([
        f"Device {dev}" + (f" ({threads} thread{'s' if threads > 1 else ''})" if dev.type == "cpu" and threads else "") + f", width C = {n_embd}, {n_head} heads, batch {batch}, {'forward + backward' if backward else 'forward only'}; "
        f"fastest of {repeats} repeats.",
        "",
        f"- Time: math ∝ T^{m['time_exponent']:.2f}, sdpa ∝ T^{s['time_exponent']:.2f} over the longer half of the lengths "
        f"(all lengths: {m['time_exponent_all']:.2f}, {s['time_exponent_all']:.2f}).",
        f"- Memory: math ∝ T^{m['memory_exponent']:.2f}, sdpa ∝ T^{s['memory_exponent']:.2f}; at T = {analysis['longest_T']} "
        f"math holds {analysis['memory_ratio_at_longest']:.1f}× the memory of sdpa and takes {analysis['time_ratio_at_longest']:.1f}× the time.",
        f"- Quadratic takes over: fitting time = a·T + b·T², the T² term passes the T term at T ≈ {m['crossover_T']:.0f} (math) "
        f"and {s['crossover_T']:.0f} (sdpa); counting FLOPs it does at T = 2·C = {analysis['flops_crossover_T']}.",
    ])
    trows = []
    for T in lengths:
        at = {x["path"]: x for x in rows if x["T"] == T}
        f = attention_layer_flops(T, n_embd, batch, backward)
        trows.append([T, f"{at['math']['seconds'] * 1e3:.3f}", f"{at['sdpa']['seconds'] * 1e3:.3f}",
                      f"{at['math']['peak_bytes'] / 1e6:.3f}", f"{at['sdpa']['peak_bytes'] / 1e6:.3f}",
                      f"{f['quadratic'] / (f['linear'] + f['quadratic']):.0%}"])
    write_report(out / "report.md", "Attention cost", [
        ("Result", summary),
        ("Plots", "![time](attention_time.png)\n\n![memory](attention_memory.png)"),
        ("Measurements", table(["T", "math ms", "sdpa ms", "math MB", "sdpa MB", "quadratic share of FLOPs"], trows)),
    ])
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
    p.add_argument("--out", default="runs/attention-cost")


def run(args) -> int:
    lengths = args.lengths or (QUICK_LENGTHS if args.quick else DEFAULT_LENGTHS)
    repeats = args.repeats or (3 if args.quick else 5)
    for name in ("n_embd", "n_head", "batch", "repeats"):
        value = repeats if name == "repeats" else getattr(args, name)
        if value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.threads < 0:
        raise ConfigError(f"--threads must be ≥ 0, got {args.threads}")
    results = run_lab(lengths, args.out, args.n_embd, args.n_head, args.batch, repeats, not args.forward_only, args.device,
                      threads=args.threads)
    a = results["analysis"]
    for path in PATHS:
        print(f"{path}: time ∝ T^{a[path]['time_exponent']:.2f}, memory ∝ T^{a[path]['memory_exponent']:.2f} "
              f"(longer half); quadratic term overtakes the linear one at T ≈ {a[path]['crossover_T']:.0f}")
    print(f"at T = {a['longest_T']}: math uses {a['memory_ratio_at_longest']:.1f}× the memory and {a['time_ratio_at_longest']:.1f}× "
          f"the time of sdpa")
    print(f"wrote {args.out}/results.json, report.md, attention_time.png, attention_memory.png")
    return 0

