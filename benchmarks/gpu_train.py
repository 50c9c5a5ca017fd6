"""GPU training throughput and MFU of the GPT-2-small shape: eager fp32, eager bf16, bf16 + compile.

    python benchmarks/gpu_train.py [--steps 30] [--batch 16] [--block 1024]

Random tokens (vocab 50257), AdamW (fused), the same training step as the trainer. MFU = achieved
FLOP/s (model.flops_per_token × tokens/s) / the card's dense BF16 peak (groundup.hardware).
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--block", type=int, default=1024)
    p.add_argument("--modes", default="fp32,bf16,bf16+compile")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")

    from groundup.config import ModelConfig, TrainConfig
    from groundup.hardware import peak_flops
    from groundup.model import GPT
    from groundup.train.optim import configure_adamw
    from groundup.util.device import autocast

    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    peak = peak_flops(device)
    print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}  peak bf16 {peak / 1e12 if peak else float('nan'):.0f} TFLOP/s")
    config = ModelConfig(vocab_size=50257, block_size=args.block, n_layer=12, n_head=12, n_embd=768, positional="learned")
    tokens = args.batch * args.block
    for mode in args.modes.split(","):
        torch.manual_seed(0)
        model = GPT(config).to(device)
        opt = configure_adamw(model, TrainConfig(), device)
        step_model = torch.compile(model) if "compile" in mode else model
        amp = torch.bfloat16 if "bf16" in mode else None
        x = torch.randint(0, config.vocab_size, (args.batch, args.block), device=device)
        y = torch.randint(0, config.vocab_size, (args.batch, args.block), device=device)

        def step():
            with autocast(device, amp):
                _, loss = step_model(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss

        t_compile = time.perf_counter()
        for _ in range(args.warmup):
            step()
        torch.cuda.synchronize()
        t_compile = time.perf_counter() - t_compile
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(args.steps):
            loss = step()
        torch.cuda.synchronize()
        dt = (time.perf_counter() - start) / args.steps
        tps = tokens / dt
        mfu = model.flops_per_token() * tps / peak if peak else float("nan")
        print(f"{mode:14s} {dt * 1000:7.1f} ms/step  {tps:10,.0f} tokens/s  MFU {mfu:6.1%}  "
              f"peak mem {torch.cuda.max_memory_allocated() / 2**30:5.1f} GiB  warm-up {t_compile:5.1f} s  loss {loss.item():.3f}")
        del model, opt, step_model


if __name__ == "__main__":
    main()
