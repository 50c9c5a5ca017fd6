"""groundup: language models built, trained and studied from first principles.

text → tokens (groundup.tokenizer) → (x, y) windows (groundup.data) → logits (groundup.model)
→ loss → gradients (torch autograd, or by hand in groundup.engines.numpy) → optimizer → sampling.
"""

__version__ = "0.1.0"
