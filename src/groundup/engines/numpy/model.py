"""The GPT of groundup.model.gpt, built from the hand-written layers of layers.py.

    forward:  ids → E[ids]·s (+ positions) → n_layer × Block → final LN (pre-norm) → logits = x Eᵀ → L
    backward: the same steps in reverse, each layer's backward turning ∂L/∂(its output) into
              ∂L/∂(its input) and adding ∂L/∂(its weights) into their .grad

Weights have the PyTorch engine's names and shapes (token_embedding.weight, blocks.0.attention.qkv.
weight, …), so checkpoints move freely between the engines. All weights live in one flat buffer
(`GPT.flat`), and so do all gradients: each named parameter is a view into it, so zeroing the
gradients, clipping their global norm and the optimiser step are each a few whole-buffer operations.

A sparse block's FFN is a SparseFeedForward (moe.py) whose experts are views of the stacked (E, …)
weights; the training objective is then CE + aux_loss() (balance and z terms), and backward adds both.
"""

from __future__ import annotations

import math

import numpy as np

from groundup.config import ModelConfig
from groundup.errors import CheckpointError, ConfigError
from groundup.engines.numpy.layers import (
    Block, CausalSelfAttention, Embedding, LayerNorm, LearnedPositions, Linear, Parameter, RotaryPositions,
    SinusoidalPositions, SoftmaxCrossEntropy, feed_forward,
)
from groundup.engines.numpy.moe import Router, SparseFeedForward


def parameter_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every trainable tensor by name, in the PyTorch engine's order (GPT.weights(): a tied LM head
    is the token embedding, listed once)."""
    V, C, E = config.vocab_size, config.n_embd, config.n_experts
    shapes: dict[str, tuple[int, ...]] = {"token_embedding.weight": (V, C)}
    if config.positional == "learned":
        shapes["position_embedding.weight"] = (config.block_size, C)

    def linear(name: str, n_in: int, n_out: int, stacked: tuple[int, ...] = ()) -> None:
        shapes[f"{name}.weight"] = (*stacked, n_out, n_in)  # stacked = (E,): one matrix per expert
        if config.bias:
            shapes[f"{name}.bias"] = (*stacked, n_out)

    def norm(name: str) -> None:
        shapes[f"{name}.weight"] = (C,)
        if config.bias:
            shapes[f"{name}.bias"] = (C,)

    for i in range(config.n_layer):
        norm(f"blocks.{i}.norm_attention")
        linear(f"blocks.{i}.attention.qkv", C, 3 * C)
        linear(f"blocks.{i}.attention.output", C, C)
        norm(f"blocks.{i}.norm_ffn")
        ffn = f"blocks.{i}.ffn"
        if config.is_sparse(i):  # groundup.model.moe.MixtureOfExperts: router, up, (gate,) down
            H = config.expert_size
            shapes[f"{ffn}.router.weight"] = (E, C)
            linear(f"{ffn}.up", C, H, (E,))
            if config.activation == "swiglu":
                linear(f"{ffn}.gate", C, H, (E,))
            linear(f"{ffn}.down", H, C, (E,))
        else:  # groundup.model.feedforward.FeedForward: up, down, (gate)
            linear(f"{ffn}.up", C, config.hidden_size)
            linear(f"{ffn}.down", config.hidden_size, C)
            if config.activation == "swiglu":
                linear(f"{ffn}.gate", C, config.hidden_size)
    if config.norm == "pre":
        norm("final_norm")
    if not config.tie_embeddings:
        shapes["lm_head.weight"] = (V, C)
    return shapes


def check_supported(config: ModelConfig) -> None:
    """The NumPy engine implements every architecture option (mixtures of experts and SwiGLU included)
    except dropout."""
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
                  self._feed_forward(i), pre_norm=config.norm == "pre")
            for i in range(config.n_layer)
        ]
        self.moe_layers = {i: b.ffn for i, b in enumerate(self.blocks) if isinstance(b.ffn, SparseFeedForward)}
        self.final_norm = norm("final_norm") if config.norm == "pre" else None  # post-norm blocks end in one
        # Weight tying: the LM head *is* the token embedding — the same Parameter, so its .grad
        # collects ∂L/∂E from the lookup and from the head.
        head = p("token_embedding.weight") if config.tie_embeddings else p("lm_head.weight")
        self.lm_head = Linear(head)
        self.loss = SoftmaxCrossEntropy()

    def _feed_forward(self, i: int):
        """Block i's FFN: dense (FeedForward or SwiGLUFeedForward), or, in a sparse block, a
        SparseFeedForward whose expert e is the same dense FFN on slice e of the stacked weights."""
        c, p, name = self.config, self.params.get, f"blocks.{i}.ffn"

        def linear(part: str, e: int | None = None) -> Linear | None:
            weight, bias = p(f"{name}.{part}.weight"), p(f"{name}.{part}.bias")
            if weight is None:
                return None
            if e is not None:  # expert e's view of the stacked (E, …) tensors: its gradients land in the slices
                weight = Parameter(weight.data[e], weight.grad[e])
                bias = None if bias is None else Parameter(bias.data[e], bias.grad[e])
            return Linear(weight, bias)

        if not c.is_sparse(i):
            return feed_forward(c.activation, linear("up"), linear("down"), linear("gate"))
        experts = [feed_forward(c.activation, linear("up", e), linear("down", e), linear("gate", e))
                   for e in range(c.n_experts)]
        router = Router(p(f"{name}.router.weight"), c.experts_per_token, c.normalize_gates, c.balance_loss, c.router_z_loss)
        return SparseFeedForward(router, experts, None if c.dropless else c.capacity_factor)

    # ---- forward and backward ------------------------------------------------------------------
    def forward(self, ids: np.ndarray, targets: np.ndarray | None = None) -> tuple[np.ndarray, float | None]:
        """ids: (B, T) token ids → (logits (B, T, V), mean cross-entropy against targets, or None).
        A mixture of experts also leaves its auxiliary losses in aux_loss()."""
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

    def aux_loss(self) -> float | None:
        """Σ over the sparse blocks of their balance + z losses, from the last forward; None for a
        dense model (as groundup.model.GPT.aux_loss). The training objective is the cross-entropy
        forward returns plus this; evaluation reports the cross-entropy alone."""
        return sum(m.aux_loss for m in self.moe_layers.values()) if self.moe_layers else None

    def routing_summary(self) -> dict[str, float]:
        """The last forward's routing in the PyTorch engine's few numbers for the metrics line ({} when
        dense; groundup.model.GPT.routing_summary): aux_loss, dropped (fraction of assignments),
        router_entropy (nats, mean over sparse blocks), max_load (busiest expert over the mean, worst block)."""
        layers = list(self.moe_layers.values())
        if not layers:
            return {}
        return {"aux_loss": float(self.aux_loss()),
                "dropped": sum(m.dropped for m in layers) / sum(m.expert_indices.size for m in layers),
                "router_entropy": sum(m.router_entropy for m in layers) / len(layers),
                "max_load": max(float(m.tokens_per_expert.max() / m.tokens_per_expert.mean()) for m in layers)}

    def backward(self, dloss: float = 1.0, daux: float | None = None) -> None:
        """Add ∂(dloss · CE + daux · aux)/∂θ into every parameter's .grad, for the cross-entropy and the
        auxiliary losses of the last forward. daux = None: dloss, i.e. the gradient of dloss times the
        training objective CE + aux (a dense model has no aux)."""
        for moe in self.moe_layers.values():
            moe.daux = dloss if daux is None else daux  # each sparse layer adds its aux loss's gradient
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
