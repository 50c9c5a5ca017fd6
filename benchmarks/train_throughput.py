"""Training throughput: our GPT against Hugging Face's GPT2LMHeadModel of the same shape, same batch,
same thread count, measured in the same run (alternating, so a slow spell hits both alike).

    python benchmarks/train_throughput.py [--compile] [--threads N] [--no-breakdown]

Each side runs its own full training step (forward, backward, gradient clipping at 1.0, AdamW with
the same hyperparameters and weight-decay groups):
  groundup   what `groundup train` runs: the model with its fused CPU kernels (use_kernels, groundup.kernels),
             gradient_norm + clip_gradients_, groundup's AdamW (one fused pass over all parameters)
  HF         stock PyTorch: torch.nn.utils.clip_grad_norm_ and torch.optim.AdamW(fused=True)
The breakdown also times forward + backward alone, so the model's share and the update's share of
the difference can be told apart.

Default shape: the classic CPU recipe (4 layers, 4 heads, 128 wide, context 64, batch 12, char
vocabulary of the Shakespeare corpus). Target: ours ≥ 1.4× HF tokens/s.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def hf_model(vocab: int, block: int, n_layer: int, n_head: int, n_embd: int, activation: str):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=vocab, n_positions=block, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, activation_function={"gelu": "gelu_new", "relu": "relu"}[activation],
                     bos_token_id=None, eos_token_id=None)
    return GPT2LMHeadModel(cfg)


def ours_model(vocab: int, block: int, n_layer: int, n_head: int, n_embd: int, activation: str, positional: str):
    from groundup.config import ModelConfig
    from groundup.engines.torch.kernels import use_kernels
    from groundup.model import GPT

    model = GPT(ModelConfig(vocab_size=vocab, block_size=block, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                            positional=positional, activation=activation, dropout=0.0))
    return use_kernels(model)  # as groundup train does


def interleaved_tokens_per_s(contenders: dict, chunks: int, chunk_steps: int, warmup: int, tokens_per_step: int) -> dict:
    """Alternate the contenders in short chunks and take each one's median chunk time, so a slow
    spell of a shared machine hits every contender alike."""
    for step in contenders.values():
        for _ in range(warmup):
            step()
    times = {name: [] for name in contenders}
    for _ in range(chunks):
        for name, step in contenders.items():
            start = time.perf_counter()
            for _ in range(chunk_steps):
                step()
            times[name].append(time.perf_counter() - start)
    return {name: chunk_steps * tokens_per_step / statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chunks", type=int, default=30, help="alternating measurement chunks per contender")
    p.add_argument("--chunk-steps", type=int, default=10, help="training steps per chunk")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--block", type=int, default=64)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=128)
    p.add_argument("--vocab", type=int, default=76, help="76 = the char vocabulary of the Shakespeare corpus")
    p.add_argument("--positional", default="learned", help="ours: learned (as HF), sinusoidal or rope")
    p.add_argument("--threads", type=int, default=0, help="torch threads for both (0 = torch's default)")
    p.add_argument("--default-malloc", action="store_true", help="leave glibc malloc's thresholds alone (groundup train raises them)")
    p.add_argument("--compile", action="store_true", help="also measure ours under torch.compile")
    p.add_argument("--no-breakdown", dest="breakdown", action="store_false", help="skip timing forward + backward alone")
    p.add_argument("--activation", default="gelu", choices=["gelu", "relu"], help="both models (gelu = tanh form)")
    args = p.parse_args()
    from groundup.util.device import keep_freed_memory
    if not args.default_malloc:  # process-wide, so it applies to both models alike
        print(f"glibc malloc keeps freed memory, as groundup train does: {keep_freed_memory()}")
    if args.threads:
        torch.set_num_threads(args.threads)

    from groundup.config import TrainConfig
    from groundup.train.optim import clip_gradients_, configure_adamw, gradient_norm

    tokens = args.batch * args.block
    torch.manual_seed(0)
    x = torch.randint(0, args.vocab, (args.batch, args.block))
    y = torch.randint(0, args.vocab, (args.batch, args.block))
    cpu = torch.device("cpu")

    def groundup_step(model, loss_fn):
        opt, params = configure_adamw(model, TrainConfig(), cpu), list(model.parameters())

        def step():
            loss = loss_fn(model)
            loss.backward()
            clip_gradients_(params, 1.0, gradient_norm(params))
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    def torch_step(model, loss_fn):
        opt = torch.optim.AdamW(configure_adamw(model, TrainConfig(), cpu).param_groups, fused=True)

        def step():
            loss = loss_fn(model)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    def forward_backward(model, loss_fn):
        def step():
            loss_fn(model).backward()
            model.zero_grad(set_to_none=True)

        return step

    shape = (args.vocab, args.block, args.n_layer, args.n_head, args.n_embd, args.activation)
    hf = hf_model(*shape)
    hf.config.loss_type = "ForCausalLM"
    ours = ours_model(*shape, args.positional)
    hf_loss, ours_loss = (lambda m: m(input_ids=x, labels=y).loss), (lambda m: m(x, y)[1])
    contenders = {"HF GPT2LMHeadModel": torch_step(hf, hf_loss), "groundup": groundup_step(ours, ours_loss)}
    if args.compile:
        compiled = torch.compile(ours_model(*shape, args.positional))
        contenders["groundup + torch.compile"] = groundup_step(compiled, ours_loss)
    if args.breakdown:
        contenders["HF fwd+bwd only"] = forward_backward(hf, hf_loss)
        contenders["groundup fwd+bwd only"] = forward_backward(ours, ours_loss)
    print(f"shape: {args.n_layer} layers, {args.n_head} heads, {args.n_embd} wide, context {args.block}, batch {args.batch}, "
          f"vocab {args.vocab}, {args.activation}; threads {torch.get_num_threads()}; {tokens} tokens/step")
    print(f"params: HF {sum(p.numel() for p in hf.parameters()):,}, ours {ours.num_params():,}")
    best = interleaved_tokens_per_s(contenders, args.chunks, args.chunk_steps, args.warmup, tokens)
    base = best["HF GPT2LMHeadModel"]
    for name, tps in best.items():
        against = best["HF fwd+bwd only"] if "fwd+bwd" in name else base
        print(f"{name:28s} {tps:10,.0f} tokens/s   {tps / against:5.2f}× HF{' fwd+bwd' if 'fwd+bwd' in name else ''}")
    ratio = best["groundup"] / base
    print(f"target ours ≥ 1.4× HF (full training step): {'PASS' if ratio >= 1.4 else 'FAIL'} ({ratio:.2f}×)")


if __name__ == "__main__":
    main()
