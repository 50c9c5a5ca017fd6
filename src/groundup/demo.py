"""`make demo`: the whole pipeline on the built-in Shakespeare, in about two minutes on a CPU.

text → characters → ids → a 4-layer GPT trained with AdamW → samples before and after training,
the learning curves as a PNG, every logged step in metrics.jsonl.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch

from groundup.config import load_config
from groundup.model import GPT
from groundup.sample import SamplingSettings, encode_prompt, generate, sample_text
from groundup.train.trainer import load_data, resolve_vocab, train

PROMPT = "ROMEO:\n"


def run_demo(out: str = "runs/demo", seconds: float = 120.0, max_steps: int = 2000, new_tokens: int = 300,
             overrides: tuple[str, ...] = ()) -> None:
    run_dir = Path(out)
    if (run_dir / "config.json").exists():
        shutil.rmtree(run_dir)  # the demo's own output from a previous run
    config = load_config(None, [f"max_steps={max_steps}", f"time_budget={seconds}", *overrides])
    settings = SamplingSettings(max_new_tokens=new_tokens, temperature=0.8, top_k=50, seed=1)

    print("== 1. text → tokens: the complete Shakespeare plays, one id per character")
    data = load_data(config)
    m = data.meta
    print(f"{m['characters']:,} characters; vocabulary of {m['vocab_size']} characters; "
          f"{m['tokens']['train']:,} train / {m['tokens']['val']:,} val tokens")
    print(f"'{PROMPT.strip()}' → {data.tokenizer.encode(PROMPT)}")

    print("\n== 2. an untrained model (random weights) continues the prompt:")
    config = resolve_vocab(config, data)
    torch.manual_seed(config.train.seed)
    untrained = GPT(config.model)
    ids = encode_prompt(data.tokenizer, PROMPT, config.model.block_size)
    print(PROMPT + data.tokenizer.decode(list(generate(untrained, ids, settings))))

    print(f"\n== 3. training for up to {max_steps} steps or {seconds:g} s (whichever comes first)")
    result = train(config, run_dir)

    print(f"\n== 4. the trained model (val loss {result.val_loss:.3f} nats/char) continues the prompt:")
    sys.stdout.write(PROMPT)
    sample_text(run_dir, PROMPT, settings, stream=sys.stdout)
    print(f"\n\n== outputs in {run_dir}/: loss.png (learning curves), metrics.jsonl, model.safetensors, config.json")
    print(f"sample more:  groundup sample --run {run_dir} --prompt 'JULIET:' --max-new-tokens 300 --temperature 0.8")
