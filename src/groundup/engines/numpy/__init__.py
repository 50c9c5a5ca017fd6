"""The NumPy engine: the same GPT as `groundup.model`, with no autograd anywhere.

Learning is the chain rule applied backwards through weighted sums and nonlinearities. Every layer
here is a small class whose `forward` keeps what its `backward` needs, and whose `backward(dout)`
takes ∂L/∂(output), accumulates ∂L/∂(parameters) into each Parameter's `.grad`, and returns
∂L/∂(input). The derivations are in docs/backprop.md; tests/test_engine_numpy*.py check every one
against finite differences and torch.autograd.

    layers.py   Linear, Embedding, positions, LayerNorm, ReLU/GELU/SiLU, attention, FFN (and SwiGLU), Block,
                cross-entropy
    moe.py      the mixture-of-experts FFN: router, top-k gating, capacity, balance and z losses
    model.py    GPT: the layers wired as in groundup.model.gpt, one flat buffer of weights and gradients
    optim.py    SGD, Adam/AdamW and gradient clipping, from their formulas
    training.py what the engine brings to groundup's one training loop (groundup.train): dtype, checks, init
"""

from groundup.engines.numpy.layers import Parameter
from groundup.engines.numpy.model import GPT
from groundup.engines.numpy.optim import SGD, Adam, AdamW, clip_grad_norm

__all__ = ["GPT", "Parameter", "SGD", "Adam", "AdamW", "clip_grad_norm"]
