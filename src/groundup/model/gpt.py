"""The GPT model, in the order the explanation goes:

  token ids (B, T)
    → token embedding (+ positional encoding)                      (B, T, C)
    → n_layer × Block: causal self-attention + feed-forward,
                       each with a residual connection and layer norm
    → final layer norm (pre-norm layout only)
    → language-model head: logits over the vocabulary              (B, T, V)
    → softmax + cross-entropy against the next token               scalar loss
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from groundup.accounting import active_params, training_flops_per_token
from groundup.config import ModelConfig
from groundup.errors import ConfigError
from groundup.model.attention import KVCache
from groundup.model.block import Block
from groundup.model.moe import MixtureOfExperts, RoutingStats
from groundup.model.positional import LearnedPositions, SinusoidalPositions
from groundup.model.weights import check_weights


def decays(name: str, ndim: int) -> bool:
    """True for the weight matrices that get weight decay: ndim ≥ 2 (the stacked (E, ·, ·) expert
    matrices too), not embeddings, not biases (a mixture's expert biases are (E, H))."""
    return ndim >= 2 and "embedding" not in name and not name.endswith("bias")


class GPT(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.vocab_size <= 0:
            raise ConfigError("model.vocab_size must be set (it normally comes from the tokenizer)")
        self.config = config
        C = config.n_embd
        self.token_embedding = nn.Embedding(config.vocab_size, C)
        if config.positional == "learned":
            self.position_embedding = LearnedPositions(config.block_size, C)
        elif config.positional == "sinusoidal":
            self.position_embedding = SinusoidalPositions(config.block_size, C)
        else:
            self.position_embedding = None  # rope acts inside attention, on queries and keys
        # The 2017 paper scales embeddings by √C before adding the fixed sinusoids.
        self.embedding_scale = math.sqrt(C) if config.positional == "sinusoidal" else 1.0
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config, i) for i in range(config.n_layer)])
        # Post-norm blocks already end in a layer norm; pre-norm needs one before the head.
        self.final_norm = nn.LayerNorm(C, bias=config.bias) if config.norm == "pre" else nn.Identity()
        self.lm_head = nn.Linear(C, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.token_embedding.weight  # one matrix: id → vector and vector → logits
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 initialisation: N(0, 0.02), residual projections scaled by 1/√(2·n_layer)."""
        std = 0.02
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif "norm" in name:
                nn.init.ones_(p)
            elif name.endswith(("attention.output.weight", "ffn.down.weight")):
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * self.config.n_layer))
            else:
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                cache: KVCache | None = None, start: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx: (B, T) token ids at positions start..start+T-1 → (logits (B, T, V), loss or None).

        Batched decoding (`groundup serve`): `start` may be a (B,) tensor of positions, one per
        row, with T = 1 and a cache: each row is its own sequence at its own length."""
        x = self.hidden(idx, cache, start)
        logits = self.lm_head(x)  # (B, T, V): a score for every possible next token
        loss = None
        if targets is not None:
            # Cross-entropy = −log softmax(logits)[target], averaged over every position.
            # (in at least fp32: under bf16 autocast the logits arrive in bf16; fp64 stays fp64)
            logits_for_loss = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
            loss = F.cross_entropy(logits_for_loss.view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    def hidden(self, idx: torch.Tensor, cache: KVCache | None = None, start: int = 0) -> torch.Tensor:
        """idx (B, T) → the final hidden states (B, T, C): everything before the LM head (after the
        final layer norm). forward turns them into logits; a reward model (groundup.model.reward)
        puts its scalar head on them."""
        B, T = idx.shape
        per_row = isinstance(start, torch.Tensor)
        end = (int(start.max()) if per_row else start) + T  # positions used (the longest row's)
        if end > self.config.block_size:
            raise ValueError(f"sequence of {end} positions exceeds block_size {self.config.block_size}")
        x = self.token_embedding(idx)  # (B, T, C)
        if self.embedding_scale != 1.0:
            x = x * self.embedding_scale
        if self.position_embedding is not None:
            x = x + self.position_embedding(start, T)  # broadcast (T, C) over the batch
        x = self.embedding_dropout(x)
        for layer, block in enumerate(self.blocks):
            x = block(x, cache, layer, start)
        x = self.final_norm(x)
        if cache is not None and not per_row:
            cache.length = start + T
        return x

    # ---- mixture of experts (groundup.model.moe) -------------------------------------------
    def moe_layers(self) -> dict[int, MixtureOfExperts]:
        """The sparse FFNs by block index (empty for a dense model)."""
        return {i: b.ffn for i, b in enumerate(self.blocks) if isinstance(b.ffn, MixtureOfExperts)}

    def aux_loss(self) -> torch.Tensor | None:
        """Σ over sparse blocks of their balance + z losses from the last forward (a scalar with
        gradient, fp32); None for a dense model. The training objective is cross-entropy + this;
        evaluation reports cross-entropy alone."""
        losses = [m.aux_loss for m in self.moe_layers().values() if m.aux_loss is not None]
        return torch.stack(losses).sum() if losses else None

    def routing_stats(self) -> dict[int, RoutingStats]:
        """Each sparse block's RoutingStats from the last forward, by block index."""
        return {i: m.stats for i, m in self.moe_layers().items() if m.stats is not None}

    def routing_summary(self) -> dict[str, float]:
        """The last forward's routing in a few numbers for the metrics line ({} when dense):
        aux_loss (Σ balance + z), dropped (fraction of assignments dropped for capacity),
        router_entropy (nats, mean over sparse blocks), max_load (the busiest expert's assignments
        over the mean, worst block; 1 = perfectly balanced, E/k = everything on k experts)."""
        stats = list(self.routing_stats().values())
        if not stats:
            return {}
        aux = self.aux_loss()
        return {"aux_loss": float(aux.detach()) if aux is not None else 0.0,
                "dropped": sum(int(s.dropped) for s in stats) / sum(s.assignments for s in stats),
                "router_entropy": sum(float(s.entropy) for s in stats) / len(stats),
                "max_load": max(float(s.tokens_per_expert.max() / s.tokens_per_expert.float().mean()) for s in stats)}

    def expert_params(self) -> int:
        """Weights inside the experts (up, gate, down and their biases; not the router)."""
        return sum(p.numel() for m in self.moe_layers().values() for part in (m.up, m.gate, m.down)
                   if part is not None for p in part.parameters())

    # ---- what the labs need ---------------------------------------------------------------
    def num_params(self, non_embedding: bool = False, active: bool = False) -> int:
        """Trainable parameters (a tied matrix counted once). non_embedding: without the token and
        position embeddings and the LM head (Kaplan et al.'s N). active: those that work on each
        token — in a mixture of experts only k of the E experts (accounting.active_params)."""
        n = sum(p.numel() for p in self.parameters())
        if active:
            c = self.config
            n = round(active_params(n, self.expert_params(), c.n_experts, c.experts_per_token))
        if non_embedding:
            n -= self.token_embedding.weight.numel()
            if isinstance(self.position_embedding, LearnedPositions):
                n -= self.position_embedding.weight.numel()
            if not self.config.tie_embeddings:
                n -= self.lm_head.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward): 6·N + 12·n_layer·T·C, the formula in
        groundup.accounting.training_flops_per_token (PaLM appendix B / nanoGPT).

        N = the weights that multiply activations: every matrix in the blocks plus the LM head's
        V·C (biases, norm gains and the embedding lookups are not matmuls). torch's FlopCounterMode
        counts exactly this on a real step (tests/test_cost.py). In a mixture of experts N counts
        the router and only the k experts a token visits: k/E of the stacked expert matrices."""
        c = self.config
        matrices = [(name, p) for name, p in self.blocks.named_parameters() if p.dim() >= 2 and not name.endswith("bias")]
        n_matmul = sum(p.numel() for _, p in matrices) + self.lm_head.weight.numel()
        expert_matrices = sum(p.numel() for _, p in matrices if p.dim() == 3)
        n_active = active_params(n_matmul, expert_matrices, c.n_experts, c.experts_per_token)
        return training_flops_per_token(n_active, c.n_layer, c.n_embd, seq_len or c.block_size)

    def weights(self) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint stores (a tied LM head is the token embedding: stored once)."""
        state = self.state_dict()
        if self.config.tie_embeddings:
            state.pop("lm_head.weight", None)  # (absent when the head was swapped for a quantized copy)
        return state

    def load_weights(self, tensors: dict[str, torch.Tensor], source: str = "weights") -> None:
        """Load `weights()`-style tensors after checking every name and shape against the config."""
        check_weights(tensors, self.weights(), source)
        with torch.no_grad():
            for name, param in self.weights().items():
                param.copy_(tensors[name])

    def new_cache(self, batch_size: int = 1) -> KVCache:
        p = self.token_embedding.weight
        return KVCache(self.config, batch_size, p.device, p.dtype)
