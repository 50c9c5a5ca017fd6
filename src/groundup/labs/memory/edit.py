"""5. Targeted edit: teaching one new fact by gradient steps moves unrelated behaviour too. How far
the fact's loss falls against how far held-out text moves (full and LoRA, a gentle and a fast
learning rate each), how many held-out predictions change, which weights moved."""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import torch

from groundup.errors import ConfigError
from groundup.labs.memory.common import Base, Settings
from groundup.model import GPT
from groundup.model.lora import add_lora, merge_lora, trainable_parameters, unmerge_lora
from groundup.sample import SamplingSettings, generate
from groundup.tokenizer import CharTokenizer, Tokenizer
from groundup.train.engine import TorchEngine, evaluate
from groundup.train.loop import fit
from groundup.train.optim import configure_adamw
from groundup.util.progress import Progress


def _sentence_batch(tokenizer: Tokenizer, sentence: str, answer: str, device):
    """(x, y) for one sentence; y is -100 except on the tokens of `answer` (the fact's payload)."""
    ids = tokenizer.encode(sentence)
    answer_ids = tokenizer.encode(answer)
    x, y = torch.tensor([ids[:-1]], device=device), torch.tensor([ids[1:]], device=device)
    answer_mask = torch.zeros_like(y, dtype=torch.bool)
    if sentence.endswith(answer):
        answer_mask[0, len(ids) - 1 - len(answer_ids):] = True
    else:
        answer_mask[:] = True
    return x, y, answer_mask


def _masked_loss(model, x, y, mask) -> float:
    with torch.no_grad():
        logits, _ = model(x)
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2).float(), y, reduction="none")
    return float(nll[mask].mean())


def _layer_of(name: str) -> str:
    """blocks.1.attention.qkv.weight → blocks.1.attention; blocks.1.norm_ffn.bias → blocks.1.norms;
    token_embedding.weight → token_embedding."""
    parts = name.split(".")
    if parts[0] != "blocks":
        return parts[0]
    part = "norms" if parts[2].startswith("norm") else parts[2]
    return f"blocks.{parts[1]}.{part}"


def relative_change_by_layer(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> dict[str, float]:
    """‖W_after − W_before‖ / ‖W_before‖ (Frobenius, over all of a layer's tensors) per layer."""
    num, den = {}, {}
    for name, w in before.items():
        layer = _layer_of(name)
        num[layer] = num.get(layer, 0.0) + float((after[name].float() - w.float()).pow(2).sum())
        den[layer] = den.get(layer, 0.0) + float(w.float().pow(2).sum())
    return {layer: math.sqrt(num[layer]) / max(math.sqrt(den[layer]), 1e-12) for layer in num}


@torch.no_grad()
def _changed_predictions(a: GPT, b: GPT, batches) -> float:
    """Fraction of held-out positions whose most likely next token differs between two models."""
    changed = total = 0
    for x, _ in batches:
        pa, pb = a(x)[0].argmax(-1), b(x)[0].argmax(-1)
        changed += int((pa != pb).sum())
        total += pa.numel()
    return changed / total


def _greedy(model, tokenizer, prompt: str, n: int) -> str:
    ids = tokenizer.encode(prompt)
    return tokenizer.decode(list(generate(model, ids, SamplingSettings(max_new_tokens=n, temperature=0.0))))


def check_fact(base: Base, settings: Settings) -> None:
    """The fact and its paraphrase must be writable with the model's vocabulary and fit its context."""
    s = settings
    if not s.fact.endswith(s.fact_answer) or not s.fact_answer.strip():
        raise ConfigError(f"the answer {s.fact_answer!r} must be the end of the fact sentence {s.fact!r}")
    tokenizer = base.tokenizer
    for text in (s.fact, s.paraphrase):
        if isinstance(tokenizer, CharTokenizer):
            missing = sorted({c for c in text if c not in tokenizer.chars})
            if missing:
                raise ConfigError(f"the sentence {text!r} uses characters the model's vocabulary lacks: {missing}; "
                                  "write it with characters from the corpora")
        n = len(tokenizer.encode(text))
        if n - 1 > base.model.config.block_size:
            raise ConfigError(f"the sentence {text!r} is {n} tokens, longer than the model's context "
                              f"({base.model.config.block_size} + 1); use a shorter --fact / --paraphrase")


def targeted_edit(base: Base, settings: Settings, watch: dict[str, list], progress: bool = True) -> dict:
    """Teach one new fact by gradient steps on that one sentence (the loss of its answer, given the
    rest: "The capital of Elbonia is" → "Quixville."), with every weight (full) and with LoRA, until
    the answer costs under `edit_target_loss` nats per token (or `edit_steps`).
    Follow the fact's loss, a paraphrase's, and held-out loss on A and B; then count changed
    predictions on held-out text and measure which layers moved."""
    s = settings
    check_fact(base, s)
    curve_batches = {k: b[: s.edit_eval_batches] for k, b in watch.items()}
    tokenizer = base.tokenizer
    device = base.model.token_embedding.weight.device
    x, y, answer_mask = _sentence_batch(tokenizer, s.fact, s.fact_answer, device)
    y_answer = y.masked_fill(~answer_mask, -100)  # teach the answer, given the rest of the sentence
    px, py, p_mask = _sentence_batch(tokenizer, s.paraphrase, s.paraphrase, device)
    prompt = s.fact[: len(s.fact) - len(s.fact_answer)]
    base_weights = {k: v.detach().clone() for k, v in base.model.weights().items()}

    def measure(model, step: int) -> dict:
        return {"step": step, "fact_answer_loss": _masked_loss(model, x, y, answer_mask),
                "paraphrase_loss": _masked_loss(model, px, py, p_mask),
                **{f"{k}_loss": evaluate(model, b, None, device) for k, b in curve_batches.items()}}

    runs = []
    for kind, lr in [("full", lr) for lr in s.edit_lrs] + [("lora", lr) for lr in s.edit_lora_lrs]:
        model = copy.deepcopy(base.model)
        if kind == "lora":
            add_lora(model, r=s.lora_r, alpha=s.lora_alpha)
        # AdamW with torch's default betas and no weight decay or clipping: an edit of one sentence
        # is a handful of steps, where the trainer's β₂ = 0.99 and decay would change what is measured.
        t = replace(base.config.train, learning_rate=lr, min_lr=lr, weight_decay=0.0, beta1=0.9, beta2=0.999, eps=1e-8)
        engine = TorchEngine(model, configure_adamw(model, t, device))
        history = [measure(model, 0)]
        bar = Progress(s.edit_steps, desc=f"edit ({kind}, lr {lr:g})", enabled=progress)
        step = 0
        while step < s.edit_steps and history[-1]["fact_answer_loss"] > s.edit_target_loss:
            model.train()
            fit(engine, lambda: (x, y_answer), step + 1, start=step, lr=lr, grad_clip=0.0)  # no clipping
            model.eval()
            step += 1
            fact_loss = _masked_loss(model, x, y, answer_mask)
            if step % s.edit_eval_every == 0 or fact_loss <= s.edit_target_loss or step == s.edit_steps:
                history.append(measure(model, step))
            bar.update(1, fact=fact_loss)
        bar.close()
        if kind == "lora":
            merge_lora(model)  # the edit as a change of W, to compare layer by layer
        edited = {name: tensor for name, tensor in model.state_dict().items() if name in base_weights}
        by_layer = relative_change_by_layer(base_weights, edited)
        if kind == "lora":
            unmerge_lora(model)
        runs.append({
            "kind": kind, "lr": lr, "steps": step, "reached_target": history[-1]["fact_answer_loss"] <= s.edit_target_loss,
            "history": history, "before": history[0], "after": history[-1],
            "changed_predictions_A": _changed_predictions(base.model, model, watch["A"]),
            "changed_predictions_B": _changed_predictions(base.model, model, watch["B"]),
            "relative_change_by_layer": by_layer,
            "completion_after": _greedy(model, tokenizer, prompt, len(s.fact_answer)),
            "trainable_parameters": trainable_parameters(model),
        })
    return {"fact": s.fact, "answer": s.fact_answer, "paraphrase": s.paraphrase, "prompt": prompt,
            "target_loss": s.edit_target_loss, "completion_before": _greedy(base.model, tokenizer, prompt, len(s.fact_answer)),
            "runs": runs}
