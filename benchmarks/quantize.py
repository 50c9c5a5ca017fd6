"""Decoding speed and size of quantized weights: fp32 against int8 and int4 in the same run.

    python benchmarks/quantize.py [--shapes gpt2-small] [--new-tokens 200] [--repeats 3] [--threads N]

Batch 1, greedy, KV cache (groundup.sample.generate, as `groundup sample` runs it: fused kernels
and the decoding layout for the float parts). Five models from the same random weights:
  fp32              the plain model
  int8              every block linear int8 per output channel          ┐ LM head (tied to the embedding)
  int4 g128         every block linear int4, groups of 128              ┘ fp32: groundup quantize's default
  int8 +head        … and the LM head as an int8 copy                   ┐ --quantize-head; the embedding
  int4 g128 +head   … and the LM head as an int4 copy                   ┘ lookups stay fp32
(float32 decoding: groundup's code-reading kernels, kernels/cpu.c int8_linear / int4_linear.)
At GPT-2 small's vocabulary the head is 38.6M of the 124M weights, so with it in fp32 a step still
reads 154 MB of float32. Repeats are interleaved (fp32, int8, …, fp32, …) and the median time is
reported. Shapes:
  tiny        2 layers, 128 wide, vocab 256 (a smoke test of the script, not a measurement)
  gpt2-small  12 layers, 12 heads, 768 wide, vocab 50257, context 1024 (124M parameters)
Targets (gpt2-small): int8 ≥ 1.5× and int4 ≥ 2× fp32 tokens/s (checked for both head choices). Also printed: the bytes of the
stored weights (safetensors file sizes, and their ratios) and the bytes of matrices a decoding step
reads, with the GB/s that implies.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from safetensors.torch import save as st_save

SHAPES = {
    "tiny": dict(vocab_size=256, block_size=256, n_layer=2, n_head=4, n_embd=128),
    "gpt2-small": dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768),
}
TARGETS = {"int8": 1.5, "int4 g128": 2.0, "int8 +head": 1.5, "int4 g128 +head": 2.0}


def build(shape: dict):
    from groundup.config import ModelConfig
    from groundup.engines.torch.kernels import use_kernels
    from groundup.model import GPT
    from groundup.quantize import quantize_model
    from groundup.sample import store_for_decoding

    config = ModelConfig(**shape, positional="learned", activation="gelu", norm="pre", bias=True, tie_embeddings=True)
    torch.manual_seed(0)
    base = GPT(config).eval()
    models = {"fp32": copy.deepcopy(base),
              "int8": quantize_model(copy.deepcopy(base), 8),
              "int4 g128": quantize_model(copy.deepcopy(base), 4, 128),
              "int8 +head": quantize_model(copy.deepcopy(base), 8, head=True),
              "int4 g128 +head": quantize_model(copy.deepcopy(base), 4, 128, head=True)}
    for model in models.values():
        store_for_decoding(use_kernels(model))  # as `groundup sample` loads a run
    return models


def bytes_read_per_token(model) -> int:
    """Bytes of the matrices one decoding step multiplies by: every block linear (in its stored
    form) and the LM head; the embeddings contribute one row each (ignored)."""
    from groundup.quantize import QuantizedLinear

    total = 0
    for m in [*model.blocks.modules(), model.lm_head]:
        if isinstance(m, QuantizedLinear):
            total += sum(t.numel() * t.element_size() for t in (m.qweight, m.scales, m.zeros) if t is not None)
        elif isinstance(m, torch.nn.Linear):
            total += m.weight.numel() * m.weight.element_size()
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="gpt2-small", help="comma-separated: tiny, gpt2-small")
    p.add_argument("--new-tokens", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3, help="interleaved runs per model (median reported)")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from groundup.sample import SamplingSettings, generate

    n = args.new_tokens
    print(f"batch 1, greedy, KV cache, {n} new tokens, threads {torch.get_num_threads()}, torch {torch.__version__}")
    for name in args.shapes.split(","):
        models = build(SHAPES[name])
        prompt = [1, 2, 3, 4, 5, 6, 7, 8]
        settings = SamplingSettings(max_new_tokens=n, temperature=0.0)
        tokens = {who: list(generate(m, prompt, settings)) for who, m in models.items()}  # also a warm-up
        times = {who: [] for who in models}
        for _ in range(args.repeats):
            for who, model in models.items():
                start = time.perf_counter()
                list(generate(model, prompt, settings))
                times[who].append(time.perf_counter() - start)
        tps = {who: n / statistics.median(ts) for who, ts in times.items()}
        files = {who: len(st_save({k: v.contiguous() for k, v in m.weights().items()})) for who, m in models.items()}
        print(f"[{name}] {models['fp32'].num_params() / 1e6:.1f}M parameters; token embedding fp32 in all")
        for who, model in models.items():
            read = bytes_read_per_token(model)
            same = sum(a == b for a, b in zip(tokens[who], tokens["fp32"])) / n
            line = (f"  {who:16s} {tps[who]:9,.1f} tokens/s  ({tps[who] / tps['fp32']:.2f}× fp32)   "
                    f"file {files[who] / 1e6:8.1f} MB ({files['fp32'] / files[who]:.2f}× smaller)   "
                    f"reads {read / 1e6:7.1f} MB/token = {read * tps[who] / 1e9:5.1f} GB/s   "
                    f"greedy tokens = fp32's: {same:.0%}")
            if who in TARGETS:
                ok = tps[who] / tps["fp32"] >= TARGETS[who]
                line += f"   target ≥ {TARGETS[who]}×: {'PASS' if ok else 'FAIL'}"
            print(line)


if __name__ == "__main__":
    main()
