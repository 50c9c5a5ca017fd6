"""The memory lab: what a trained model can and cannot learn once training is over.

Five claims, each turned into a measurement (`groundup lab memory`, or the functions below):

  1. frozen      Once trained, the weights are frozen: generating text changes nothing. We hash every
                 weight tensor (SHA-256) before and after generating from many prompts, and look for
                 gradients, grad mode and optimizers during generation.
  2. in-context  In-context "learning" is conditioning: answers that exist only in the context are
                 used while they are there and are gone when the context is. Two synthetic tasks,
                 each with a small model trained for it: a repeated random sequence (loss on the
                 second copy vs the first) and a made-up key=value list followed by queries
                 (accuracy against the number of facts in context: 0, 1, 2, 4, 8, 16).
  3. forgetting  Learning new things by updating weights overwrites old knowledge: pretrain on domain
                 A, fine-tune on domain B, and follow the validation loss on A and on B.
  4. lora        Low-rank adapters (groundup.model.lora) train far fewer parameters: compare them with
                 full fine-tuning at the same number of steps: gain on B, loss on A, size.
  5. edit        Teaching one new fact by gradient steps moves unrelated behaviour too: how far the
                 fact's loss falls against how far held-out text moves (full and LoRA, a gentle and a
                 fast learning rate each), how many held-out predictions change, which weights moved.

Each experiment is one module (frozen, in_context, forgetting, lora, edit); common.py holds what
they share, lab.py runs them once per seed on the lab harness (groundup.labs.harness), report.py
turns results.json into the verdicts, report.md and plots, cli.py is the command line.

    groundup lab memory                  # 3 seeds (≈ 4 min per seed on 2 quiet CPU cores)
    groundup lab memory --quick          # 1 seed, tiny models: about a minute
    groundup lab memory --report-from runs/memory/results.json --out DIR   # the report alone

Results go to runs/memory/ (or --out): results.json, one PNG per plot, report.md, seed_N/ (each
seed's base run and LoRA adapter).
"""

from groundup.labs.memory.cli import add_arguments, run
from groundup.labs.memory.common import (
    EXPERIMENTS, Base, Settings, build_base, extend_char_vocabulary, fine_tune, shared_char_tokenizer, weight_hashes,
)
from groundup.labs.memory.edit import check_fact, relative_change_by_layer, targeted_edit
from groundup.labs.memory.forgetting import forgetting
from groundup.labs.memory.frozen import frozen_weights
from groundup.labs.memory.in_context import CopyTask, LookupTask, copy_losses, in_context, lookup_accuracy, train_task_model
from groundup.labs.memory.lab import run_lab, run_seed
from groundup.labs.memory.lora import lora_vs_full

__all__ = [
    "EXPERIMENTS", "Base", "CopyTask", "LookupTask", "Settings", "add_arguments", "build_base", "check_fact",
    "copy_losses", "extend_char_vocabulary", "fine_tune", "forgetting", "frozen_weights", "in_context",
    "lookup_accuracy", "lora_vs_full", "relative_change_by_layer", "run", "run_lab", "run_seed",
    "shared_char_tokenizer", "targeted_edit", "train_task_model", "weight_hashes",
]
