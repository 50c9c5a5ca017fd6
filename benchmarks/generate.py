"""Generation speed: our KV-cached sampler against Hugging Face `generate` on the same weights.

    python benchmarks/generate.py [--new-tokens 500] [--shapes char,gpt2-small] [--threads N]

Batch 1, greedy, fp32, same prompt; both produce the same tokens (checked). Shapes:
  char        the classic char model (4 layers, 4 heads, 128 wide, vocab 76) with a 1024-token
              context so 500 new tokens fit without sliding (HF can't go past n_positions)
  gpt2-small  GPT-2 small (12 layers, 12 heads, 768 wide, vocab 50257, 124M parameters), random
              weights: bound by reading every weight from memory once per token, so we also report
              the achieved GB/s of weight reads (parameter bytes × tokens/s)
Targets: char ≥ 1.5× HF tokens/s; gpt2-small ≥ parity.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

SHAPES = {
    "char": dict(vocab_size=76, block_size=1024, n_layer=4, n_head=4, n_embd=128),
    "gpt2-small": dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768),
}


def build(shape: dict):
    from transformers import GPT2Config, GPT2LMHeadModel

    from groundup.config import ModelConfig
    from groundup.engines.torch.kernels import use_kernels
    from groundup.interop.hf import hf_config_kwargs, to_hf
    from groundup.model import GPT

    config = ModelConfig(**shape, positional="learned", activation="gelu", norm="pre", bias=True, tie_embeddings=True)
    torch.manual_seed(0)
    ours = use_kernels(GPT(config)).eval()  # as `groundup sample` loads a run
    hf = GPT2LMHeadModel(GPT2Config(**hf_config_kwargs(config), bos_token_id=None, eos_token_id=None)).eval()
    hf.load_state_dict(to_hf(ours.weights(), config), strict=False)
    return ours, hf


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--new-tokens", type=int, default=500)
    p.add_argument("--shapes", default="char,gpt2-small")
    p.add_argument("--repeats", type=int, default=3, help="alternating runs per contender (median reported)")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from groundup.sample import SamplingSettings, generate, store_for_decoding

    n = args.new_tokens
    print(f"batch 1, greedy, fp32, {n} new tokens, threads {torch.get_num_threads()}")
    for name in args.shapes.split(","):
        ours, hf = build(SHAPES[name])
        store_for_decoding(ours)  # as `groundup sample` does
        prompt = [1, 2, 3, 4, 5, 6, 7, 8]
        settings = SamplingSettings(max_new_tokens=n, temperature=0.0)

        def run_ours():
            return list(generate(ours, prompt, settings))

        def run_hf():
            with torch.inference_mode():
                out = hf.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                  pad_token_id=0, use_cache=True)
            return out[0, len(prompt):].tolist()

        same = run_ours() == run_hf()  # also a warm-up
        times = {"ours": [], "hf": []}
        for _ in range(args.repeats):
            for who, fn in (("hf", run_hf), ("ours", run_ours)):
                start = time.perf_counter()
                fn()
                times[who].append(time.perf_counter() - start)
        tps = {who: n / statistics.median(ts) for who, ts in times.items()}
        weight_bytes = sum(t.numel() * t.element_size() for t in ours.weights().values())
        ratio = tps["ours"] / tps["hf"]
        target = 1.5 if name == "char" else 1.0
        print(f"[{name}] {ours.num_params() / 1e6:.1f}M params ({weight_bytes / 1e6:.0f} MB); same tokens as HF: {same}")
        print(f"  HF generate      {tps['hf']:9,.1f} tokens/s   weight reads {weight_bytes * tps['hf'] / 1e9:6.1f} GB/s")
        print(f"  groundup (KV)    {tps['ours']:9,.1f} tokens/s   weight reads {weight_bytes * tps['ours'] / 1e9:6.1f} GB/s")
        print(f"  ratio {ratio:.2f}× HF; target ≥ {target}×: {'PASS' if ratio >= target else 'FAIL'}")


if __name__ == "__main__":
    main()
