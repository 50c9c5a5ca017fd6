"""Speed of the mixture-of-experts layer (groundup.model.moe) against its two baselines, same run.

    python benchmarks/moe.py [--experts 8] [--top-k 2] [--tokens 768] [--n-embd 128] [--ffn-mult 4]
                             [--activation gelu] [--threads 1] [--chunks 20] [--smoke]
    python benchmarks/moe.py --device cuda      # on a GPU: bf16 autocast, bigger default shape, MFU

Forward + backward (gradients for the input and every weight) of one layer on N tokens:

  moe-grouped   MixtureOfExperts, experts applied with torch._grouped_mm over tokens sorted by expert
  moe-padded    the same layer, groups padded to the largest and one torch.bmm per projection
  moe-loop      baseline (a): the same weights and routing, a Python loop over the E experts, each
                gathering its tokens and applying F.linear (what most first implementations do)
  dense         baseline (b): the dense FFN of equal active FLOPs, hidden width k·H (plain PyTorch)
  dense-fused   the same dense FFN with groundup's fused CPU kernels, as `groundup train` runs it

The contenders alternate in short chunks (a slow spell of a shared machine hits all alike); each
one's median chunk gives its time per token. Target (issue #17): moe-grouped (the layer's default on
the CPU) within 1.5× of dense's time per token at E = 8, k = 2 on the CPU. The ratios are printed.
On CUDA the report adds achieved TFLOP/s and MFU: 6 · (router + k experts' weights) FLOPs per token
for the MoE, 6 · (its weights) for the dense FFN, over groundup.hardware's dense BF16 peak.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F


def loop_over_experts(layer, x: torch.Tensor) -> torch.Tensor:
    """Baseline (a): the layer's routing, then for each expert: gather its tokens, apply it, scatter
    back (dropless; biases as in the layer)."""
    shape = x.shape
    x = x.reshape(-1, shape[-1])
    _, _, gates, indices = layer.route(x)
    y = torch.zeros_like(x)
    for e in range(layer.n_experts):
        token, rank = torch.where(indices == e)
        if token.numel() == 0:
            continue
        xs = x[token]
        up = F.linear(xs, layer.up.weight[e], None if layer.up.bias is None else layer.up.bias[e])
        if layer.swiglu:
            up = layer.activation(F.linear(xs, layer.gate.weight[e], None if layer.gate.bias is None else layer.gate.bias[e])) * up
        else:
            up = layer.activation(up)
        out = F.linear(up, layer.down.weight[e], None if layer.down.bias is None else layer.down.bias[e])
        y = y.index_add(0, token, out * gates[token, rank, None].to(out.dtype))
    return y.reshape(shape)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--tokens", type=int, default=0, help="tokens per forward (default 768 on CPU = 12 × 64; 16384 on CUDA)")
    p.add_argument("--n-embd", type=int, default=0, help="model width C (default 128 on CPU, 2048 on CUDA)")
    p.add_argument("--ffn-mult", type=int, default=4, help="expert hidden H = ffn_mult · C; the dense FFN gets k · H")
    p.add_argument("--activation", default="gelu", choices=["relu", "gelu", "swiglu"])
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--chunks", type=int, default=20)
    p.add_argument("--chunk-steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--smoke", action="store_true", help="tiny sizes and few repeats: checks the script runs")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from groundup.config import ModelConfig
    from groundup.engines.torch.kernels import use_kernels
    from groundup.hardware import peak_flops
    from groundup.model.feedforward import FeedForward
    from groundup.model.moe import MixtureOfExperts

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        print("no CUDA device: skipping the GPU measurement")
        return
    C = args.n_embd or (2048 if cuda else 128)
    N = args.tokens or (16384 if cuda else 768)
    if args.smoke:
        C, N, args.chunks, args.chunk_steps, args.warmup = 32, 64, 2, 2, 1
    E, k = args.experts, args.top_k
    common = dict(vocab_size=1, n_head=1, n_embd=C, activation=args.activation, bias=True)
    sparse = ModelConfig(**common, ffn_mult=args.ffn_mult, n_experts=E, experts_per_token=k, balance_loss=0.01)
    dense_config = ModelConfig(**common, ffn_mult=k * args.ffn_mult)  # hidden k·H: the active FLOPs of k experts
    H = sparse.expert_size

    torch.manual_seed(0)
    layers = {}
    for method in ("grouped", "padded"):
        layer = MixtureOfExperts(sparse)
        for name, param in layer.named_parameters():
            torch.nn.init.normal_(param, 0.0, 0.02)
        layer.method = method
        layers[f"moe-{method}"] = layer
    layers["moe-loop"] = layers["moe-padded"]  # same weights, the loop baseline's forward
    layers["dense"] = FeedForward(dense_config)
    if not cuda:
        layers["dense-fused"] = use_kernels(FeedForward(dense_config))
    for layer in layers.values():
        layer.to(device)
    x = torch.randn(N, C, device=device)
    grad = torch.randn(N, C, device=device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)

    def stepper(name, layer):
        forward = (lambda v: loop_over_experts(layer, v)) if name == "moe-loop" else layer

        def step():
            layer.zero_grad(set_to_none=True)
            xi = x.detach().requires_grad_()
            with amp:
                y = forward(xi)
            y.backward(grad.to(y.dtype))

        return step

    contenders = {name: stepper(name, layer) for name, layer in layers.items()}
    if not cuda and not (H % 4 == 0 and C % 4 == 0):
        print("note: torch._grouped_mm needs widths that are multiples of 4 floats; moe-grouped falls back to padded")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    for step in contenders.values():
        for _ in range(args.warmup):
            step()
    sync()
    times = {name: [] for name in contenders}
    for _ in range(args.chunks):
        for name, step in contenders.items():
            sync()
            start = time.perf_counter()
            for _ in range(args.chunk_steps):
                step()
            sync()
            times[name].append(time.perf_counter() - start)
    per_token = {name: statistics.median(ts) / (args.chunk_steps * N) for name, ts in times.items()}

    sparse_layer = layers["moe-grouped"]
    tokens_per_expert = sparse_layer.stats.tokens_per_expert.tolist()
    expert_weights = sum(q.numel() for q in sparse_layer.parameters() if q.dim() == 3)  # up, (gate,) down: E experts
    moe_flops = 6 * (E * C + k * expert_weights / E)  # the router and k experts per token
    dense_flops = 6 * sum(p.numel() for p in layers["dense"].parameters() if p.dim() == 2)
    flops = {name: moe_flops if name.startswith("moe") else dense_flops for name in per_token}
    peak = peak_flops(device) if cuda else None
    print(f"{device} torch {torch.__version__}, threads {torch.get_num_threads()}: N {N} tokens, C {C}, E {E}, k {k}, "
          f"expert hidden H {H}, dense hidden {dense_config.hidden_size}, {args.activation}"
          + (", bf16 autocast" if cuda else ", float32"))
    print(f"tokens per expert in the last forward: {tokens_per_expert}")
    print(f"{'':12s} {'µs/token':>9} {'GFLOP/s':>9} {'× dense':>8}" + ("   MFU" if peak else ""))
    for name, t in per_token.items():
        achieved = flops[name] / t
        line = f"{name:12s} {t * 1e6:9.3f} {achieved / 1e9:9.1f} {t / per_token['dense']:8.2f}"
        if peak:
            line += f" {achieved / peak:6.1%}"
        print(line)
    ratio = per_token["moe-grouped"] / per_token["dense"]
    print(f"moe-grouped / dense = {ratio:.2f}× (target ≤ 1.5×: {'met' if ratio <= 1.5 else 'NOT met'}); "
          f"moe-grouped / moe-loop = {per_token['moe-grouped'] / per_token['moe-loop']:.2f}×; "
          f"moe-padded / dense = {per_token['moe-padded'] / per_token['dense']:.2f}×"
          + (f"; moe-grouped / dense-fused = {per_token['moe-grouped'] / per_token['dense-fused']:.2f}×"
             if "dense-fused" in per_token else ""))


if __name__ == "__main__":
    main()
