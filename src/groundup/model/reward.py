"""The reward model r_φ(x, y): a GPT trunk and a scalar head on the last token (Ziegler et al. 2019;
Stiennon et al. 2020; Ouyang et al. 2022), or on the mean over positions.

    pool = "last":  h = GPT.hidden(ids)[:, −1]          the final hidden state of the last token   (B, C)
    pool = "mean":  h = (1/T) Σ_t GPT.hidden(ids)[:, t]  the mean over all T positions             (B, C)
    r = w · h + b                                        one number per sequence                    (B,)

"mean" is the average of a per-position reward w·h_t + b: a sum of local features, the shape of a
judge that scores the words present (a sentiment lexicon). The two texts of a preference pair share
their prompt, and a causal trunk gives the prompt positions the same hidden states in both, so under
"mean" the prompt drops out of r_w − r_l exactly. "last" must carry everything through attention to
one position; a two-layer character model did not learn a lexicon judge that way (docs/labs/alignment.md).

The trunk starts as a copy of π_ref (the policy knows the text; the head learns what is preferred),
trained on preference pairs with −log σ(r_w − r_l) (groundup.train.align.bradley_terry_loss). The
head starts at w ~ N(0, 1/(C + 1)), b = 0, as in Stiennon et al.'s code (lm-human-preferences).
The LM head of the copied trunk is kept (it is the tied embedding) but not used.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from groundup.errors import ConfigError
from groundup.model.gpt import GPT
from groundup.model.weights import check_weights

TRUNK, HEAD = "trunk.", "head."  # weight-name prefixes in a reward model's model.safetensors
POOLS = ("last", "mean")


class RewardModel(nn.Module):
    def __init__(self, gpt: GPT, pool: str = "last"):
        super().__init__()
        if pool not in POOLS:
            raise ConfigError(f"reward-model pooling {pool!r} is not one of {', '.join(POOLS)}")
        self.pool = pool
        self.trunk = copy.deepcopy(gpt)  # a copy: training the reward model never touches π_ref
        self.trunk.train(gpt.training)
        for p in self.trunk.parameters():
            p.requires_grad_(True)
        C = gpt.config.n_embd
        p = next(gpt.parameters())
        self.head = nn.Linear(C, 1, device=p.device, dtype=p.dtype)
        with torch.no_grad():
            nn.init.normal_(self.head.weight, 0.0, 1.0 / math.sqrt(C + 1))
            nn.init.zeros_(self.head.bias)

    @property
    def config(self):
        return self.trunk.config

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, T) → r (B,): the head on the final hidden state of each row's last token ("last") or
        on its mean over the positions ("mean")."""
        h = self.trunk.hidden(ids)
        return self.head(h[:, -1] if self.pool == "last" else h.mean(dim=1)).squeeze(-1)

    def weights(self) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint stores: the trunk's (GPT.weights, prefixed trunk.) and the head's."""
        tensors = {TRUNK + name: t for name, t in self.trunk.weights().items()}
        tensors.update({HEAD + name: t for name, t in self.head.state_dict().items()})
        return tensors

    def load_weights(self, tensors: dict[str, torch.Tensor], source: str = "weights") -> None:
        """Load `weights()`-style tensors after checking every name and shape."""
        check_weights(tensors, self.weights(), source)
        with torch.no_grad():
            for name, param in self.weights().items():
                param.copy_(tensors[name])

    def flops_per_token(self, seq_len: int | None = None) -> float:
        return self.trunk.flops_per_token(seq_len)
