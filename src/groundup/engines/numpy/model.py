"""The GPT of groundup.model.gpt, built from the hand-written layers of layers.py.

    forward:  ids → E[ids]·s (+ positions) → n_layer × Block → final LN (pre-norm) → logits = x Eᵀ → L
    backward: the same steps in reverse, each layer's backward turning ∂L/∂(its output) into
              ∂L/∂(its input) and adding ∂L/∂(its weights) into their .grad

Weights have the PyTorch engine's names and shapes (token_embedding.weight, blocks.0.attention.qkv.
weight, …), so checkpoints move freely between the engines. All weights live in one flat buffer
(`GPT.flat`), and so do all gradients: each named parameter is a view into it, so zeroing the
gradients, clipping their global norm and the optimiser step are each a few whole-buffer operations.
"""

from __future__ import annotations

import math

import numpy as np

from groundup.config import ModelConfig
from groundup.errors import CheckpointError, ConfigError
from groundup.engines.numpy.layers import (
    ACTIVATIONS, Block, CausalSelfAttention, Embedding, FeedForward, LayerNorm, LearnedPositions, Linear,
    Parameter, RotaryPositions, SinusoidalPositions, SoftmaxCrossEntropy,
)


def parameter_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every trainable tensor by name, in the PyTorch engine's order (GPT.weights(): a tied LM head
    is the token embedding, listed once)."""
    V, C, hidden = config.vocab_size, config.n_embd, config.ffn_mult * config.n_embd
    shapes: dict[str, tuple[int, ...]] = {"token_embedding.weight": (V, C)}
    if config.positional == "learned":
        shapes["position_embedding.weight"] = (config.block_size, C)

    def linear(name: str, n_in: int, n_out: int) -> None:
        shapes[f"{name}.weight"] = (n_out, n_in)
        if config.bias:
            shapes[f"{name}.bias"] = (n_out,)

    def norm(name: str) -> None:
        shapes[f"{name}.weight"] = (C,)
        if config.bias:
            shapes[f"{name}.bias"] = (C,)

    for i in range(config.n_layer):
        norm(f"blocks.{i}.norm_attention")
        linear(f"blocks.{i}.attention.qkv", C, 3 * C)
        linear(f"blocks.{i}.attention.output", C, C)
        norm(f"blocks.{i}.norm_ffn")
        linear(f"blocks.{i}.ffn.up", C, hidden)
        linear(f"blocks.{i}.ffn.down", hidden, C)
    if config.norm == "pre":
        norm("final_norm")
    if not config.tie_embeddings:
        shapes["lm_head.weight"] = (V, C)
    return shapes


def check_supported(config: ModelConfig) -> None:
    """The NumPy engine implements every architecture option except dropout."""
    if config.dropout > 0:
        raise ConfigError(f"the numpy engine does not implement dropout (model.dropout = {config.dropout}); "
                          "set dropout=0 or train with engine=torch")


class GPT:
    def __init__(self, config: ModelConfig, dtype=np.float32):
        check_supported(config)
        if config.vocab_size <= 0:
            raise ConfigError("model.vocab_size must be set (it normally comes from the tokenizer)")
        self.config = config
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ConfigError(f"the numpy engine computes in float32 or float64, not {self.dtype}")
        C = config.n_embd

        # One buffer for all weights and one for all gradients; each parameter views its slice.
        self.shapes = parameter_shapes(config)
        total = sum(math.prod(s) for s in self.shapes.values())
        self.flat = Parameter(np.zeros(total, self.dtype))
        self.params: dict[str, Parameter] = {}
        offset = 0
        for name, shape in self.shapes.items():
            size = math.prod(shape)
            self.params[name] = Parameter(self.flat.data[offset:offset + size].reshape(shape),
                                          self.flat.grad[offset:offset + size].reshape(shape))
            offset += size
        p = self.params.get

        def linear(name: str) -> Linear:
            return Linear(p(f"{name}.weight"), p(f"{name}.bias"))

        def norm(name: str) -> LayerNorm:
            return LayerNorm(p(f"{name}.weight"), p(f"{name}.bias"))

        self.token_embedding = Embedding(p("token_embedding.weight"))
        # The 2017 paper scales embeddings by √C before adding the fixed sinusoids.
        self.embedding_scale = math.sqrt(C) if config.positional == "sinusoidal" else 1.0
        self.positions = None  # rope acts inside attention, on queries and keys
        if config.positional == "sinusoidal":
            self.positions = SinusoidalPositions(config.block_size, C, self.dtype)
        elif config.positional == "learned":
            self.positions = LearnedPositions(p("position_embedding.weight"))
        rope = RotaryPositions(config.block_size, config.head_size, self.dtype) if config.positional == "rope" else None
        self.blocks = [
            Block(norm(f"blocks.{i}.norm_attention"),
                  CausalSelfAttention(linear(f"blocks.{i}.attention.qkv"), linear(f"blocks.{i}.attention.output"),
                                      config.n_head, config.block_size, rope),
                  norm(f"blocks.{i}.norm_ffn"),
                  FeedForward(linear(f"blocks.{i}.ffn.up"), ACTIVATIONS[config.activation](), linear(f"blocks.{i}.ffn.down")),
                  pre_norm=config.norm == "pre")
            for i in range(config.n_layer)
        ]
        self.final_norm = norm("final_norm") if config.norm == "pre" else None  # post-norm blocks end in one
        # Weight tying: the LM head *is* the token embedding — the same Parameter, so its .grad
        # collects ∂L/∂E from the lookup and from the head.
        head = p("token_embedding.weight") if config.tie_embeddings else p("lm_head.weight")
        self.lm_head = Linear(head)
        self.loss = SoftmaxCrossEntropy()

    # ---- forward and backward ------------------------------------------------------------------
    def forward(self, ids: np.ndarray, targets: np.ndarray | None = None) -> tuple[np.ndarray, float | None]:
        """ids: (B, T) token ids → (logits (B, T, V), mean cross-entropy against targets, or None)."""
        B, T = ids.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence of {T} positions exceeds block_size {self.config.block_size}")
        x = self.token_embedding.forward(ids) * self.embedding_scale  # (B, T, C)
        if self.positions is not None:
            x = self.positions.forward(x)
        for block in self.blocks:
            x = block.forward(x)
        if self.final_norm is not None:
            x = self.final_norm.forward(x)
        logits = self.lm_head.forward(x)  # (B, T, V)
        if targets is None:
            return logits, None
        return logits, self.loss.forward(logits.reshape(B * T, -1), targets.reshape(-1))

    def backward(self, dloss: float = 1.0) -> None:
        """Add ∂(dloss · L)/∂θ into every parameter's .grad, for the L of the last forward."""
        dlogits = self.loss.backward(dloss)  # (N, V)
        dx = self.lm_head.backward(dlogits)  # (B, T, C)
        if self.final_norm is not None:
            dx = self.final_norm.backward(dx)
        for block in reversed(self.blocks):
            dx = block.backward(dx)
        if self.positions is not None:
            dx = self.positions.backward(dx)
        self.token_embedding.backward(dx * self.embedding_scale)  # x = E[ids]·s ⇒ ∂L/∂E[ids] += s·∂L/∂x

    def zero_grad(self) -> None:
        self.flat.grad.fill(0)

    # ---- weights --------------------------------------------------------------------------------
    def weights(self) -> dict[str, np.ndarray]:
        """The tensors a checkpoint stores, by the PyTorch engine's names (views, not copies)."""
        return {name: param.data for name, param in self.params.items()}

    def grads(self) -> dict[str, np.ndarray]:
        return {name: param.grad for name, param in self.params.items()}

    def by_name(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """Views of a flat, parameter-shaped buffer (an optimiser moment, say) by parameter name."""
        views, offset = {}, 0
        for name, shape in self.shapes.items():
            size = math.prod(shape)
            views[name] = flat[offset:offset + size].reshape(shape)
            offset += size
        return views

    def load_weights(self, tensors, source: str = "weights") -> None:
        """Copy in weights by name (numpy arrays or CPU torch tensors), converting to this dtype."""
        missing = [n for n in self.shapes if n not in tensors]
        extra = [n for n in tensors if n not in self.shapes]
        if missing or extra:
            raise CheckpointError(f"{source}: tensors do not match the config (missing {missing[:3]}, unexpected {extra[:3]})")
        for name, param in self.params.items():
            value = np.asarray(tensors[name])
            if value.shape != param.shape:
                raise CheckpointError(f"{source}: tensor {name!r} has shape {value.shape}, but the config implies {param.shape}")
            param.data[...] = value

    def num_params(self) -> int:
        return self.flat.data.size
